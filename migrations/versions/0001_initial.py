"""initial: users, accounts, workflows, nodes, dependencies, events, outbox

Revision ID: 0001
Revises:
Created: 2026-11-22

Types are spelled out here rather than imported from the models, so later model changes cannot rewrite
this revision. ``BIG_ID`` is a 64-bit integer that is INTEGER (the rowid, so it autoincrements) on SQLite.
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=True),
        sa.Column("created_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
        sa.UniqueConstraint("name", name="uq_users_name"),
    )
    op.create_table(
        "accounts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("host", sa.String(length=253), nullable=False),
        sa.Column("account", sa.String(length=64), nullable=False),
        sa.Column("key_path", sa.String(length=1024), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_accounts_user_id_users", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_accounts"),
        sa.UniqueConstraint("user_id", "host", name="uq_accounts_user_id"),
    )
    op.create_table(
        "workflows",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("global_id", sa.String(length=32), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(length=200), nullable=True),
        sa.Column("request_id", sa.String(length=200), nullable=True),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("experiment_id", sa.String(length=200), nullable=True),
        sa.Column("descriptor", sa.Text(), nullable=False),
        sa.Column("descriptor_sha256", sa.String(length=64), nullable=False),
        sa.Column("plan", sa.Text(), nullable=False),
        sa.Column("event_level", sa.SmallInteger(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("publish_metadata_to", sa.String(length=256), nullable=True),
        sa.Column("max_in_flight", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("event_seq", sa.Integer(), nullable=False),
        sa.Column("submitted_at", TIME, nullable=False),
        sa.Column("started_at", TIME, nullable=True),
        sa.Column("finished_at", TIME, nullable=True),
        sa.ForeignKeyConstraint(["owner_id"], ["users.id"], name="fk_workflows_owner_id_users"),
        sa.PrimaryKeyConstraint("id", name="pk_workflows"),
        sa.UniqueConstraint("global_id", name="uq_workflows_global_id"),
        sa.UniqueConstraint("owner_id", "label", name="uq_workflows_owner_label"),
        sa.UniqueConstraint("owner_id", "request_id", name="uq_workflows_owner_request"),
    )
    op.create_index("ix_workflows_descriptor_sha256", "workflows", ["descriptor_sha256"])
    op.create_index("ix_workflows_owner_id", "workflows", ["owner_id"])
    op.create_index("ix_workflows_state_finished", "workflows", ["state", "finished_at"])

    op.create_table(
        "events",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("workflow_id", sa.Integer(), nullable=True),
        sa.Column("seq", sa.Integer(), nullable=True),
        sa.Column("node_path", sa.String(length=1024), nullable=True),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("level", sa.SmallInteger(), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("time", TIME, nullable=False),
        sa.Column("properties", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(["workflow_id"], ["workflows.id"], name="fk_events_workflow_id_workflows",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
        sa.UniqueConstraint("workflow_id", "seq", name="uq_events_workflow_seq"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_events_workflow_id", "events", ["workflow_id", "id"])

    op.create_table(
        "nodes",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("workflow_id", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(length=1024), nullable=False),
        sa.Column("template", sa.String(length=1024), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("parent_id", BIG_ID, nullable=True),
        sa.Column("member_index", sa.Integer(), nullable=True),
        sa.Column("bindings", sa.JSON(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("host", sa.String(length=253), nullable=True),
        sa.Column("job_id", sa.String(length=64), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("outputs", sa.JSON(), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("retry_at", TIME, nullable=True),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("started_at", TIME, nullable=True),
        sa.Column("finished_at", TIME, nullable=True),
        sa.ForeignKeyConstraint(["parent_id"], ["nodes.id"], name="fk_nodes_parent_id_nodes", ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["workflow_id"], ["workflows.id"], name="fk_nodes_workflow_id_workflows",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_nodes"),
        sa.UniqueConstraint("workflow_id", "path", name="uq_nodes_workflow_path"),
    )
    op.create_index("ix_nodes_parent_id", "nodes", ["parent_id"])
    op.create_index("ix_nodes_state", "nodes", ["state"])
    op.create_index("ix_nodes_workflow_state", "nodes", ["workflow_id", "state"])

    op.create_table(
        "dependencies",
        sa.Column("parent_id", BIG_ID, nullable=False),
        sa.Column("child_id", BIG_ID, nullable=False),
        sa.ForeignKeyConstraint(["child_id"], ["nodes.id"], name="fk_dependencies_child_id_nodes",
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["parent_id"], ["nodes.id"], name="fk_dependencies_parent_id_nodes",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("parent_id", "child_id", name="pk_dependencies"),
    )
    op.create_index("ix_dependencies_child", "dependencies", ["child_id"])

    op.create_table(
        "outbox",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("event_id", BIG_ID, nullable=False),
        sa.Column("destination", sa.String(length=256), nullable=False),
        sa.Column("sent_at", TIME, nullable=True),
        sa.ForeignKeyConstraint(["event_id"], ["events.id"], name="fk_outbox_event_id_events", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
    )
    op.create_index("ix_outbox_event_id", "outbox", ["event_id"])
    # partial: the relay scans only unsent rows, however many were sent before
    op.create_index("ix_outbox_unsent", "outbox", ["id"], sqlite_where=sa.text("sent_at IS NULL"),
                    postgresql_where=sa.text("sent_at IS NULL"))


def downgrade() -> None:
    # dropping a table drops its indexes too
    for table in ("outbox", "dependencies", "nodes", "events", "workflows", "accounts", "users"):
        op.drop_table(table)
