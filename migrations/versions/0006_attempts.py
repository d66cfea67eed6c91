"""attempts: every attempt of every node (the node row holds only its current one), written by the writer with
the node's transitions; existing nodes get one row for the attempt their node row holds

Revision ID: 0006
Revises: 0005
Created: 2026-12-06 20:20:00
"""

from alembic import op
import sqlalchemy as sa

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

#: the outcome of a node's last attempt, from the node's state; in-flight states leave it open (None) for the
#: broker's recovery to end; a node restarted since (waiting, ready, skipped) lost what its attempt did
OUTCOMES = {'succeeded': 'succeeded', 'failed': 'failed', 'retry_wait': 'failed', 'cancelled': 'cancelled',
            'waiting': 'unknown', 'ready': 'unknown', 'skipped': 'unknown'}
IN_FLIGHT = ('staging_in', 'queued', 'running', 'staging_out')
#: node rows read per batch while filling the table
BATCH = 5000


def upgrade() -> None:
    attempts = op.create_table('attempts',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('node_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('workflow_id', sa.Integer(), nullable=False),
    sa.Column('template', sa.String(length=1024), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('host', sa.String(length=253), nullable=True),
    sa.Column('account', sa.String(length=64), nullable=True),
    sa.Column('job_id', sa.String(length=64), nullable=True),
    sa.Column('workdir', sa.String(length=4096), nullable=True),
    sa.Column('queued_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('exit_code', sa.Integer(), nullable=True),
    sa.Column('outcome', sa.String(length=16), nullable=True),
    sa.Column('message', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['node_id'], ['nodes.id'], name=op.f('fk_attempts_node_id_nodes'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['workflow_id'], ['workflows.id'], name=op.f('fk_attempts_workflow_id_workflows'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_attempts')),
    sa.UniqueConstraint('node_id', 'number', name='uq_attempts_node_number'),
    sqlite_autoincrement=True
    )
    with op.batch_alter_table('attempts', schema=None) as batch_op:
        batch_op.create_index('ix_attempts_history', ['workflow_id', 'template'], unique=False)
    with op.batch_alter_table('workflows', schema=None) as batch_op:
        batch_op.create_index('ix_workflows_name', ['name', 'id'], unique=False)

    bind = op.get_bind()
    nodes = sa.table('nodes', sa.column('id', sa.Integer), sa.column('workflow_id', sa.Integer),
                     sa.column('template', sa.String), sa.column('kind', sa.String), sa.column('state', sa.String),
                     sa.column('attempt', sa.Integer), sa.column('members', sa.Integer),
                     sa.column('host', sa.String), sa.column('job_id', sa.String), sa.column('workdir', sa.String),
                     sa.column('started_at', sa.DateTime(timezone=True)),
                     sa.column('finished_at', sa.DateTime(timezone=True)), sa.column('exit_code', sa.Integer),
                     sa.column('message', sa.Text))
    # execute nodes (and sweeps never expanded) that launched: groups never have attempts
    query = (sa.select(nodes).where(nodes.c.attempt > 0, sa.or_(nodes.c.kind == 'node', sa.and_(
        nodes.c.kind == 'sweep', nodes.c.members.is_(None)))).order_by(nodes.c.id))
    last = 0
    while True:
        rows = bind.execute(query.where(nodes.c.id > last).limit(BATCH)).all()
        if not rows:
            break
        last = rows[-1].id
        op.bulk_insert(attempts, [_row(r) for r in rows])


def _row(r) -> dict:
    outcome = None if r.state in IN_FLIGHT else OUTCOMES.get(r.state)
    host = r.host
    return {'node_id': r.id, 'workflow_id': r.workflow_id, 'template': r.template, 'number': r.attempt,
            'host': host, 'account': host.split('@', 1)[0][:64] if host and '@' in host else None,
            'job_id': r.job_id, 'workdir': r.workdir, 'queued_at': None, 'started_at': r.started_at,
            'finished_at': None if outcome is None else r.finished_at, 'exit_code': r.exit_code,
            'outcome': outcome, 'message': None if outcome is None else r.message}


def downgrade() -> None:
    with op.batch_alter_table('workflows', schema=None) as batch_op:
        batch_op.drop_index('ix_workflows_name')
    with op.batch_alter_table('attempts', schema=None) as batch_op:
        batch_op.drop_index('ix_attempts_history')
    op.drop_table('attempts')
