"""``broker db``: create, migrate and check the database schema.

``upgrade [REV]`` (default: head), ``downgrade REV`` (``base`` drops every table), ``current`` and
``check`` (exit 1 and one line per difference when the models and the migrated database differ). Alembic is
imported inside the handlers, so ``broker --help`` stays fast.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from broker.cli import EXIT_INVALID, EXIT_OK, UsageError, add_db_option


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``broker db`` and its actions (each takes ``--db URL`` and ``--config FILE``)."""
    parser = subparsers.add_parser("db", help="create, migrate and check the database schema",
                                   description="Create, migrate and check the database schema.")
    actions = parser.add_subparsers(dest="db_action", metavar="ACTION", required=True)

    upgrade = actions.add_parser("upgrade", parents=[common], help="migrate up to a revision (default: head)")
    upgrade.add_argument("revision", nargs="?", default="head", metavar="REV")
    upgrade.set_defaults(func=_upgrade)

    downgrade = actions.add_parser("downgrade", parents=[common],
                                   help="migrate down to a revision (base: drop every table)")
    downgrade.add_argument("revision", metavar="REV")
    downgrade.set_defaults(func=_downgrade)

    current = actions.add_parser("current", parents=[common], help="print the database's revision")
    current.set_defaults(func=_current)

    check = actions.add_parser("check", parents=[common],
                               help="compare the models with the database; exit 1 on any difference")
    check.set_defaults(func=_check)

    for action in (upgrade, downgrade, current, check):
        add_db_option(action)


@contextmanager
def _engine(settings: Any) -> Iterator[Any]:
    from broker.persistence.db import make_engine

    engine = make_engine(settings.database_url(), settings)
    try:
        yield engine
    finally:
        engine.dispose()


def _migrate(settings: Any, step: str, revision: str) -> str | None:
    """Run ``migrate.<step>(engine, revision)``; alembic's own errors (unknown revision) are usage errors."""
    from alembic.util import CommandError

    from broker.persistence import migrate

    with _engine(settings) as engine:
        try:
            getattr(migrate, step)(engine, revision)
        except CommandError as exc:
            raise UsageError(str(exc)) from None
        return migrate.current(engine)


def _upgrade(args: argparse.Namespace, settings: Any) -> int:
    from broker.persistence.db import display_url

    revision = _migrate(settings, "upgrade", args.revision)
    print(f"database {display_url(settings.database_url())} is at revision {revision or 'none'}")
    return EXIT_OK


def _downgrade(args: argparse.Namespace, settings: Any) -> int:
    from broker.persistence.db import display_url

    revision = _migrate(settings, "downgrade", args.revision)
    print(f"database {display_url(settings.database_url())} is at revision {revision or 'none (empty)'}")
    return EXIT_OK


def _current(args: argparse.Namespace, settings: Any) -> int:
    from broker.persistence.db import current_revision
    from broker.persistence.schema_version import HEAD_REVISION, REVISIONS

    with _engine(settings) as engine:
        revision = current_revision(engine)
    if revision is None:
        print(f"none (empty database; head is {HEAD_REVISION})")
    elif revision == HEAD_REVISION:
        print(f"{revision} (head)")
    elif revision in REVISIONS:
        print(f"{revision} (head is {HEAD_REVISION}: run `broker db upgrade`)")
    else:
        print(f"{revision} (unknown to this broker, whose head is {HEAD_REVISION})")
    return EXIT_OK


def _check(args: argparse.Namespace, settings: Any) -> int:
    from broker.persistence import migrate

    with _engine(settings) as engine:
        differences = migrate.check(engine)
    if not differences:
        print("no drift")
        return EXIT_OK
    for line in differences:
        print(f"drift: {line}")
    return EXIT_INVALID
