"""elf sessions: per node attempt, the id and hashed secret a remote elf pushes its status with; on SQLite,
workflow and node ids are never reused after a deletion (AUTOINCREMENT)

Revision ID: 0003
Revises: 0002
Created: 2026-11-22 06:34:43.085031
"""

from alembic import op
import sqlalchemy as sa

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def _autoincrement(enabled: bool) -> None:
    """SQLite only: rebuild workflows and nodes with or without AUTOINCREMENT (a table option)."""
    if op.get_bind().dialect.name != "sqlite":
        return
    for table in ("workflows", "nodes"):
        with op.batch_alter_table(table, recreate="always", table_kwargs={"sqlite_autoincrement": enabled}):
            pass


def upgrade() -> None:
    _autoincrement(True)
    op.create_table('elf_sessions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('node_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('secret_hash', sa.String(length=160), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['node_id'], ['nodes.id'], name=op.f('fk_elf_sessions_node_id_nodes'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_elf_sessions')),
    sqlite_autoincrement=True
    )
    with op.batch_alter_table('elf_sessions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_elf_sessions_node_id'), ['node_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('elf_sessions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_elf_sessions_node_id'))

    op.drop_table('elf_sessions')
    _autoincrement(False)
