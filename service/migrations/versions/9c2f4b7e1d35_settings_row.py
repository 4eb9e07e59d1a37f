"""the publication's settings row is inserted by the upgrade, not by the first concurrent requests

Revision ID: 9c2f4b7e1d35
Revises: d4a7c2e9b610
Create Date: 2026-11-26 11:40:00.000000

"""
from alembic import op


# revision identifiers, used by Alembic.
revision = '9c2f4b7e1d35'
down_revision = 'd4a7c2e9b610'
branch_labels = None
depends_on = None


def upgrade():
    # Idempotent: an existing row (made by an earlier first request) is kept as it is.
    op.execute(
        "INSERT INTO publication_settings (id, default_frequency, send_hour, send_weekday, timezone, teaser_words, "
        "blocked_domains, default_visibility, popup_scroll_percent, popup_delay_seconds, popup_snooze_days, "
        "free_articles, digest_content) "
        "SELECT 1, 'weekly', 8, 0, 'UTC', 120, '', 'subscribers', 50, 45, 7, 3, 'full' "
        "WHERE NOT EXISTS (SELECT 1 FROM publication_settings WHERE id = 1)"
    )


def downgrade():
    pass  # the row holds the publisher's settings; settings() would insert it again anyway
