"""requests: changes any process asks the active writer to make (hand a workflow over, delete, archive...);
writer_info: who that writer is, for the processes that hand it work

Revision ID: 0012
Revises: 0011
Created: 2026-12-06 20:10:00
"""

from alembic import op
import sqlalchemy as sa

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('requests',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('requested_by', sa.String(length=64), nullable=False),
    sa.Column('account', sa.String(length=64), nullable=True),
    sa.Column('payload', sa.Text(), nullable=False),
    sa.Column('workflow_gid', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('result', sa.Text(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('applied_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('applied_by', sa.String(length=300), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_requests'))
    )
    op.create_index('ix_requests_pending', 'requests', ['id'], unique=False,
                    sqlite_where=sa.text("state = 'pending'"), postgresql_where=sa.text("state = 'pending'"))
    op.create_table('writer_info',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('holder', sa.String(length=300), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
    sa.Column('account', sa.String(length=64), nullable=False),
    sa.Column('runs_as', sa.String(length=16), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_writer_info'))
    )


def downgrade() -> None:
    op.drop_table('writer_info')
    op.drop_index('ix_requests_pending', table_name='requests', sqlite_where=sa.text("state = 'pending'"),
                  postgresql_where=sa.text("state = 'pending'"))
    op.drop_table('requests')
