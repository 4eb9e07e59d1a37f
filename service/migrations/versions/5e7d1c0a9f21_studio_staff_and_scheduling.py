"""studio: staff accounts and their sessions, scheduled posts, embed origins as a setting

Revision ID: 5e7d1c0a9f21
Revises: bc471d09d1a8
Create Date: 2026-11-26 09:00:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '5e7d1c0a9f21'
down_revision = 'bc471d09d1a8'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('staff',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('email', sa.String(length=320), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('password_hash', sa.String(length=200), nullable=True),
    sa.Column('link_generation', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_signin_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('email')
    )
    op.create_table('studio_sessions',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('staff_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_seen_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('ip', sa.String(length=64), nullable=True),
    sa.Column('user_agent', sa.String(length=400), nullable=True),
    sa.ForeignKeyConstraint(['staff_id'], ['staff.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('studio_sessions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_studio_sessions_staff_id'), ['staff_id'], unique=False)

    with op.batch_alter_table('posts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('scheduled_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f('ix_posts_scheduled_at'), ['scheduled_at'], unique=False)

    with op.batch_alter_table('publication_settings', schema=None) as batch_op:
        batch_op.add_column(sa.Column('embed_origins', sa.Text(), nullable=True))


def downgrade():
    with op.batch_alter_table('publication_settings', schema=None) as batch_op:
        batch_op.drop_column('embed_origins')

    with op.batch_alter_table('posts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_posts_scheduled_at'))
        batch_op.drop_column('scheduled_at')

    with op.batch_alter_table('studio_sessions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_studio_sessions_staff_id'))

    op.drop_table('studio_sessions')
    op.drop_table('staff')
