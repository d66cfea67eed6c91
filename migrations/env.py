"""Alembic environment: run by broker.persistence.migrate, which hands over an open connection.

There is no alembic.ini and no URL here: ``broker db ...`` (or the functions of broker.persistence.migrate)
opens the database with the broker's own engine settings and passes the connection in
``config.attributes["connection"]``; the migration joins the transaction already open on it.
"""

from typing import Any

from alembic import context
from sqlalchemy.types import TypeDecorator

from broker.persistence import requestrows  # noqa: F401  (its tables join Base.metadata)
from broker.persistence.models import Base

config = context.config


def render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    """Render a model's TypeDecorator (UTCDateTime) as its plain SQL type.

    A revision must not import the models: they change after it is written, and history must not.
    """
    if type_ == "type" and isinstance(obj, TypeDecorator):
        return f"sa.{obj.impl_instance!r}"
    return False


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations through `broker db` (broker.persistence.migrate), "
                           "which passes the database connection")
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        compare_type=True,
        render_item=render_item,
        # SQLite cannot ALTER most things: batch mode rebuilds the table instead
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("offline (--sql) migrations are not supported; run `broker db upgrade`")
run_migrations_online()
