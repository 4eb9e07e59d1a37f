"""daily counts for the dashboard, subscriber search and timeline indexes

Revision ID: 7c3e9a51d2b4
Revises: bc471d09d1a8
Create Date: 2026-11-26 09:00:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '7c3e9a51d2b4'
down_revision = 'bc471d09d1a8'
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

    if op.get_bind().dialect.name == 'postgresql':
        op.execute('CREATE EXTENSION IF NOT EXISTS pg_trgm')
    with op.batch_alter_table('subscribers', schema=None) as batch_op:
        batch_op.create_index('ix_subscribers_email_trigram', ['email'], unique=False,
                              postgresql_using='gin', postgresql_ops={'email': 'gin_trgm_ops'})


def downgrade():
    with op.batch_alter_table('subscribers', schema=None) as batch_op:
        batch_op.drop_index('ix_subscribers_email_trigram')
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_index('ix_events_subscriber_id')
        batch_op.drop_index('ix_events_created_at')
    op.drop_table('rollup_marks')
    op.drop_table('daily_counts')
