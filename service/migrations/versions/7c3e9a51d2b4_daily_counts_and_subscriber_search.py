"""daily counts for the dashboard, indexes for the subscriber list and timelines

Revision ID: 7c3e9a51d2b4
Revises: 5e7d1c0a9f21
Create Date: 2026-11-26 09:00:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '7c3e9a51d2b4'
down_revision = '5e7d1c0a9f21'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('daily_counts',
    sa.Column('metric', sa.String(length=32), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('source', sa.String(length=300), nullable=False),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('metric', 'day', 'source')
    )
    op.create_table('rollup_marks',
    sa.Column('stream', sa.String(length=32), nullable=False),
    sa.Column('position', sa.DateTime(timezone=True), nullable=False),
    sa.Column('rolled_up_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('stream')
    )
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.create_index('ix_events_created_at', ['created_at'], unique=False)
        batch_op.create_index('ix_events_subscriber_id', ['subscriber_id'], unique=False)

    with op.batch_alter_table('subscribers', schema=None) as batch_op:
        batch_op.create_index('ix_subscribers_status_id', ['status', 'id'], unique=False)
        batch_op.create_index('ix_subscribers_status_email', ['status', 'email'], unique=False,
                              postgresql_ops={'email': 'varchar_pattern_ops'})
        batch_op.create_index('ix_subscribers_email_prefix', ['email'], unique=False,
                              postgresql_ops={'email': 'varchar_pattern_ops'})


def downgrade():
    with op.batch_alter_table('subscribers', schema=None) as batch_op:
        batch_op.drop_index('ix_subscribers_email_prefix')
        batch_op.drop_index('ix_subscribers_status_email')
        batch_op.drop_index('ix_subscribers_status_id')
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_index('ix_events_subscriber_id')
        batch_op.drop_index('ix_events_created_at')
    op.drop_table('rollup_marks')
    op.drop_table('daily_counts')
