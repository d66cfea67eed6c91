"""the broker lease: on PostgreSQL a broker writes only while it holds this row's epoch unexpired

Revision ID: 0005
Revises: 0004
Created: 2026-12-06 17:10:00
"""

from alembic import op
import sqlalchemy as sa

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    lease = op.create_table('broker_lease',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('epoch', sa.BigInteger(), nullable=False),
    sa.Column('holder', sa.String(length=300), nullable=True),
    sa.Column('machine', sa.String(length=100), nullable=True),
    sa.Column('pid', sa.Integer(), nullable=True),
    sa.Column('pid_start', sa.BigInteger(), nullable=True),
    sa.Column('acquired_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('renewed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_broker_lease'))
    )
    # the one row, free: claiming it is an UPDATE, so two brokers never both insert it
    op.bulk_insert(lease, [{'id': 1, 'epoch': 0}])


def downgrade() -> None:
    op.drop_table('broker_lease')
