"""engine state: retries, members, workdir and progress on nodes; the control table

Revision ID: 0002
Revises: 0001
Created: 2026-11-22 05:49:31.603800
"""

from alembic import op
import sqlalchemy as sa

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('control',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('command', sa.String(length=16), nullable=False),
    sa.Column('target', sa.String(length=1100), nullable=False),
    sa.Column('requested_by', sa.String(length=64), nullable=False),
    sa.Column('requested_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('applied_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('result', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_control'))
    )
    with op.batch_alter_table('control', schema=None) as batch_op:
        batch_op.create_index('ix_control_pending', ['id'], unique=False, sqlite_where=sa.text('applied_at IS NULL'), postgresql_where=sa.text('applied_at IS NULL'))

    with op.batch_alter_table('nodes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('retries', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('members', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('workdir', sa.String(length=4096), nullable=True))
        batch_op.add_column(sa.Column('progress', sa.Float(), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('nodes', schema=None) as batch_op:
        batch_op.drop_column('progress')
        batch_op.drop_column('workdir')
        batch_op.drop_column('members')
        batch_op.drop_column('retries')

    with op.batch_alter_table('control', schema=None) as batch_op:
        batch_op.drop_index('ix_control_pending', sqlite_where=sa.text('applied_at IS NULL'), postgresql_where=sa.text('applied_at IS NULL'))

    op.drop_table('control')
