"""workflow node counts: the writer's committed count of a workflow's work-carrying nodes and of those ended,
written in the same transactions as the nodes, so a status read needs neither the engine's memory nor a count
of the nodes; existing workflows are counted once here

Revision ID: 0011
Revises: 0010
Created: 2026-12-06 20:45:00
"""

from alembic import op
import sqlalchemy as sa

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

#: node states that are ended (broker.states.TERMINAL), as of this revision
ENDED = ('succeeded', 'failed', 'cancelled', 'skipped')


def upgrade() -> None:
    with op.batch_alter_table('workflows', schema=None) as batch_op:
        batch_op.add_column(sa.Column('nodes_total', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('nodes_done', sa.Integer(), nullable=True))
    workflows = sa.table('workflows', sa.column('id', sa.Integer), sa.column('nodes_total', sa.Integer),
                         sa.column('nodes_done', sa.Integer))
    nodes = sa.table('nodes', sa.column('workflow_id', sa.Integer), sa.column('kind', sa.String),
                     sa.column('members', sa.Integer), sa.column('state', sa.String))
    # work-carrying nodes, as broker.persistence.queries.counted(): execute nodes, and sweeps not expanded yet
    counted = sa.and_(nodes.c.workflow_id == workflows.c.id,
                      sa.or_(nodes.c.kind == 'node', sa.and_(nodes.c.kind == 'sweep', nodes.c.members.is_(None))))
    total = sa.select(sa.func.count()).select_from(nodes).where(counted).scalar_subquery()
    done = sa.select(sa.func.count()).select_from(nodes).where(counted, nodes.c.state.in_(ENDED)).scalar_subquery()
    op.get_bind().execute(workflows.update().values(nodes_total=total, nodes_done=done))


def downgrade() -> None:
    with op.batch_alter_table('workflows', schema=None) as batch_op:
        batch_op.drop_column('nodes_done')
        batch_op.drop_column('nodes_total')
