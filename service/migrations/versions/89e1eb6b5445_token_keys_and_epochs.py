"""token keys and epochs: tokens bound to their row, revocable sessions, single-use links

Revision ID: 89e1eb6b5445
Revises: bc471d09d1a8
Create Date: 2026-11-26 09:00:00.000000

Existing subscribers get an empty token key, which fingerprints their tokens exactly as before: the
unsubscribe and article links already mailed keep working. Every row the application creates from now on
gets a random key (the model's default), so no token of a deleted row ever matches a new row under the
same id. Sessions
and confirm/sign-in links of the old shape carry no epoch and are refused: readers sign in again once.
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '89e1eb6b5445'
down_revision = 'bc471d09d1a8'
branch_labels = None
depends_on = None


def upgrade():
    # Plain ADD COLUMNs: on SQLite a batch "move and copy" would drop the old table, and with foreign keys
    # on, that drop cascades to the outbox and deliveries and unlinks the events.
    op.add_column('subscribers', sa.Column('token_key', sa.String(length=32), nullable=False, server_default=''))
    op.add_column('subscribers', sa.Column('session_epoch', sa.Integer(), nullable=False, server_default='0'))
    op.add_column('subscribers', sa.Column('link_epoch', sa.Integer(), nullable=False, server_default='0'))


def downgrade():
    # ALTER TABLE ... DROP COLUMN (SQLite 3.35+), for the same reason: no table copy.
    for column in ('link_epoch', 'session_epoch', 'token_key'):
        op.drop_column('subscribers', column)
