"""stored workflows: descriptions kept under a name and version, and each workflow's origin (the stored name,
version and arguments it was submitted with)

Revision ID: 0007
Revises: 0006
Created: 2026-12-06 20:20:00
"""

from alembic import op
import sqlalchemy as sa

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'stored_workflows',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('owner_id', sa.Integer(), nullable=True),
        sa.Column('descriptor', sa.Text(), nullable=False),
        sa.Column('descriptor_sha256', sa.String(length=64), nullable=False),
        sa.Column('workflow_name', sa.String(length=200), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['owner_id'], ['users.id'], name=op.f('fk_stored_workflows_owner_id_users'),
                                ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_stored_workflows')),
        sa.UniqueConstraint('name', 'version', name='uq_stored_workflows_name_version'),
    )
    with op.batch_alter_table('stored_workflows', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_stored_workflows_name'), ['name'], unique=False)
    with op.batch_alter_table('workflows', schema=None) as batch_op:
        batch_op.add_column(sa.Column('origin_name', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('origin_version', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('arguments', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('workflows', schema=None) as batch_op:
        batch_op.drop_column('arguments')
        batch_op.drop_column('origin_version')
        batch_op.drop_column('origin_name')
    with op.batch_alter_table('stored_workflows', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_stored_workflows_name'))
    op.drop_table('stored_workflows')
