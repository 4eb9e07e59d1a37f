"""mailbox budgets in the database, shared by the web and every worker

Revision ID: 3b8f2d6e1a47
Revises: 7c3e9a51d2b4
Create Date: 2026-11-26 11:30:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '3b8f2d6e1a47'
down_revision = '7c3e9a51d2b4'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('mailbox_spends',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('mailbox', sa.String(length=64), nullable=False),
    sa.Column('scope', sa.String(length=10), nullable=False),
    sa.Column('spent_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('mailbox_spends', schema=None) as batch_op:
        batch_op.create_index('ix_mailbox_spends_mailbox_scope', ['mailbox', 'scope', 'spent_at'], unique=False)
        batch_op.create_index('ix_mailbox_spends_spent_at', ['spent_at'], unique=False)


def downgrade():
    with op.batch_alter_table('mailbox_spends', schema=None) as batch_op:
        batch_op.drop_index('ix_mailbox_spends_spent_at')
        batch_op.drop_index('ix_mailbox_spends_mailbox_scope')
    op.drop_table('mailbox_spends')
