"""access modes: popup and metered posts, the publisher's reading settings, full-text digests

Revision ID: d4a7c2e9b610
Revises: 3b8f2d6e1a47
Create Date: 2026-11-27 09:00:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'd4a7c2e9b610'
down_revision = '3b8f2d6e1a47'
branch_labels = None
depends_on = None

OLD_VISIBILITIES = "visibility IN ('public', 'subscribers')"
NEW_VISIBILITIES = "visibility IN ('public', 'subscribers', 'popup', 'metered')"
SETTINGS_CHECKS = [
    ('ck_settings_default_visibility', "default_visibility IN ('public', 'subscribers', 'popup', 'metered')"),
    ('ck_settings_popup_scroll', 'popup_scroll_percent BETWEEN 1 AND 100'),
    ('ck_settings_popup_delay', 'popup_delay_seconds BETWEEN 0 AND 3600'),
    ('ck_settings_popup_snooze', 'popup_snooze_days BETWEEN 1 AND 365'),
    ('ck_settings_free_articles', 'free_articles BETWEEN 0 AND 100'),
    ('ck_settings_digest_content', "digest_content IN ('full', 'teaser')"),
]


def upgrade():
    with op.batch_alter_table('posts', schema=None) as batch_op:
        batch_op.drop_constraint('ck_posts_visibility', type_='check')
        batch_op.create_check_constraint('ck_posts_visibility', NEW_VISIBILITIES)

    with op.batch_alter_table('publication_settings', schema=None) as batch_op:
        batch_op.add_column(sa.Column('default_visibility', sa.String(length=16), server_default='subscribers', nullable=False))
        batch_op.add_column(sa.Column('popup_scroll_percent', sa.Integer(), server_default='50', nullable=False))
        batch_op.add_column(sa.Column('popup_delay_seconds', sa.Integer(), server_default='45', nullable=False))
        batch_op.add_column(sa.Column('popup_snooze_days', sa.Integer(), server_default='7', nullable=False))
        batch_op.add_column(sa.Column('free_articles', sa.Integer(), server_default='3', nullable=False))
        batch_op.add_column(sa.Column('digest_content', sa.String(length=10), server_default='full', nullable=False))
        for name, condition in SETTINGS_CHECKS:
            batch_op.create_check_constraint(name, condition)


def downgrade():
    with op.batch_alter_table('publication_settings', schema=None) as batch_op:
        for name, _ in SETTINGS_CHECKS:
            batch_op.drop_constraint(name, type_='check')
        for column in ('digest_content', 'free_articles', 'popup_snooze_days', 'popup_delay_seconds',
                       'popup_scroll_percent', 'default_visibility'):
            batch_op.drop_column(column)

    op.execute("UPDATE posts SET visibility = 'subscribers' WHERE visibility IN ('popup', 'metered')")
    with op.batch_alter_table('posts', schema=None) as batch_op:
        batch_op.drop_constraint('ck_posts_visibility', type_='check')
        batch_op.create_check_constraint('ck_posts_visibility', OLD_VISIBILITIES)
