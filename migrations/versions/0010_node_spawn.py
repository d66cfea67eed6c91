"""dynamic spawn: the fragment an execute node's attempt spawned, kept with the node

Revision ID: 0010
Revises: 0007
Created: 2026-12-06 20:00:00
"""

from alembic import op
import sqlalchemy as sa

revision = '0010'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('nodes', sa.Column('spawn', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('nodes') as batch:
        batch.drop_column('spawn')
