"""workflow work root: the directory each workflow's attempts are created under, recorded at submission so that a
resume puts new attempts next to the recovered ones; older workflows get it from their nodes' work directories

Revision ID: 0004
Revises: 0003
Created: 2026-12-06 17:05:00
"""

from collections import Counter

from alembic import op
import sqlalchemy as sa

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

#: hosts whose work directories are the broker's own (local launcher): a remote attempt's directory lies under
#: the host's scratch, not under the work root
LOCAL_HOSTS = ("localhost",)


def derive_roots(rows):
    """workflow id -> work root, from ``(workflow id, global id, host, work directory)`` rows.

    An attempt's directory is ``<root>/<global id>/<node>/<attempt>``: the root is what comes before the global id.
    The most common root among local attempts wins (any attempt when none ran locally); a workflow none of
    whose nodes has a directory gets none (it never launched: the next run's root is as good as any).
    """
    local, other = {}, {}
    for workflow_id, global_id, host, workdir in rows:
        marker = f"/{global_id}/"
        if not workdir or marker not in workdir:
            continue
        root = workdir.split(marker, 1)[0] or "/"
        (local if host in LOCAL_HOSTS or host is None else other).setdefault(workflow_id, Counter())[root] += 1
    roots = {wid: counts.most_common(1)[0][0] for wid, counts in other.items()}
    roots.update({wid: counts.most_common(1)[0][0] for wid, counts in local.items()})
    return roots


def upgrade() -> None:
    with op.batch_alter_table('workflows', schema=None) as batch_op:
        batch_op.add_column(sa.Column('work_root', sa.String(length=4096), nullable=True))
    bind = op.get_bind()
    workflows = sa.table('workflows', sa.column('id', sa.Integer), sa.column('global_id', sa.String),
                         sa.column('work_root', sa.String))
    nodes = sa.table('nodes', sa.column('workflow_id', sa.Integer), sa.column('host', sa.String),
                     sa.column('workdir', sa.String))
    rows = bind.execute(sa.select(workflows.c.id, workflows.c.global_id, nodes.c.host, nodes.c.workdir)
                        .join(nodes, nodes.c.workflow_id == workflows.c.id)
                        .where(nodes.c.workdir.is_not(None)))
    roots = derive_roots(rows)
    for workflow_id, root in roots.items():
        bind.execute(workflows.update().where(workflows.c.id == workflow_id).values(work_root=root))


def downgrade() -> None:
    with op.batch_alter_table('workflows', schema=None) as batch_op:
        batch_op.drop_column('work_root')
