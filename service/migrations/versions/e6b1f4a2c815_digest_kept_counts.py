"""digest runs keep their counts when their delivery rows are pruned

Revision ID: e6b1f4a2c815
Revises: 9c2f4b7e1d35
Create Date: 2026-11-26 12:00:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'e6b1f4a2c815'
down_revision = '9c2f4b7e1d35'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('digests', schema=None) as batch_op:
        batch_op.add_column(sa.Column('kept_counts', sa.JSON(), nullable=True))


def downgrade():
    with op.batch_alter_table('digests', schema=None) as batch_op:
        batch_op.drop_column('kept_counts')
