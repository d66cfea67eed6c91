"""``broker user add|list|passwd|remove``: the users of the SOAP API and their passwords (``map``, ``unmap`` and
``accounts``, their accounts on hosts: :mod:`broker.cli.useraccounts`).

Passwords are read from the terminal (asked twice) or, with ``--password-stdin``, from the first line of
standard input (for scripts). Only a salted scrypt hash is stored. A running ``broker serve`` sees a new
password or role within ``[api] credential_ttl`` seconds.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from broker.cli import EXIT_OK, UsageError, add_db_option, useraccounts
from broker.cli.common import database_sessions, not_found_is_usage, plural


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``broker user`` and its actions."""
    parser = subparsers.add_parser("user", help="manage the users of the SOAP API and their accounts on hosts",
                                   description="Manage the users of the SOAP API (names: [a-z][a-z0-9_-]*) and "
                                               "the accounts their nodes run as on each host.")
    actions = parser.add_subparsers(dest="user_action", metavar="ACTION", required=True)
    add = actions.add_parser("add", parents=[common], help="add a user (or set an existing user's password)")
    add.add_argument("name", metavar="NAME")
    add.add_argument("--admin", action="store_true", help="give the admin role")
    add.set_defaults(func=_add)
    passwd = actions.add_parser("passwd", parents=[common], help="change a user's password")
    passwd.add_argument("name", metavar="NAME")
    passwd.add_argument("--admin", action="store_true", default=None, help="also give the admin role")
    passwd.set_defaults(func=_passwd)
    listing = actions.add_parser("list", parents=[common], help="list the users, their roles and workflows")
    listing.set_defaults(func=_list)
    remove = actions.add_parser("remove", parents=[common], help="remove a user who owns no workflows")
    remove.add_argument("name", metavar="NAME")
    remove.set_defaults(func=_remove)
    for action in (add, passwd):
        action.add_argument("--password-stdin", action="store_true",
                            help="read the password from the first line of standard input")
    for action in (add, passwd, listing, remove, *useraccounts.register(actions, common)):
        add_db_option(action)


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        # getpass falls back to reading standard input with a warning when there is no terminal, then fails
        # with EOFError on an empty input: say at once how a script gives the password instead
        if not sys.stdin.isatty():
            raise UsageError("no terminal to ask for the password on: give it on the first line of standard input "
                             f"with --password-stdin (broker user {args.user_action} {args.name} --password-stdin)")
        try:
            password = getpass.getpass("password: ")
            again = getpass.getpass("again: ")
        except EOFError:
            raise UsageError("no password given (end of input); use --password-stdin in scripts") from None
        if again != password:
            raise UsageError("the two passwords differ")
    if not password:
        raise UsageError("a password must not be empty")
    return password


def _add(args: argparse.Namespace, settings: Any) -> int:
    from broker.api.passwords import hash_password
    from broker.persistence import repository

    password = _password(args)
    sessions = database_sessions(settings)
    role = "admin" if args.admin else "user"
    with sessions.begin() as s:
        user = repository.ensure_user(s, args.name, role)
        user.role = role
        user.password_hash = hash_password(password)
    print(f"user {args.name} ({role}) can now log in to the API")
    return EXIT_OK


@not_found_is_usage
def _passwd(args: argparse.Namespace, settings: Any) -> int:
    from broker.api.passwords import hash_password
    from broker.persistence import repository

    password = _password(args)
    sessions = database_sessions(settings)
    with sessions.begin() as s:
        user = repository.get_user(s, args.name)
        user.password_hash = hash_password(password)
        if args.admin:
            user.role = "admin"
    print(f"password of user {args.name} changed")
    return EXIT_OK


def _list(args: argparse.Namespace, settings: Any) -> int:
    from broker.cli.common import print_table
    from broker.persistence import queries

    with database_sessions(settings)() as s:
        infos = queries.users_info(s)
        rows = [(i.name, i.role, "yes" if _has_password(s, i.name) else "no", sum(i.workflows.values()))
                for i in infos]
    print_table(("USER", "ROLE", "PASSWORD", "WORKFLOWS"), rows)
    return EXIT_OK


def _has_password(s: Any, name: str) -> bool:
    from sqlalchemy import select

    from broker.persistence.models import User

    return s.execute(select(User.password_hash).where(User.name == name)).scalar() is not None


@not_found_is_usage
def _remove(args: argparse.Namespace, settings: Any) -> int:
    from sqlalchemy import func, select

    from broker.persistence import repository
    from broker.persistence.models import Workflow

    with database_sessions(settings).begin() as s:
        user = repository.get_user(s, args.name)
        owned = s.execute(select(func.count()).select_from(Workflow).where(Workflow.owner_id == user.id)).scalar_one()
        if owned:
            # the user's own choice to make, not a runtime failure: a usage error (exit 2) saying what to do
            raise UsageError(f"user {args.name} owns {plural(owned, 'workflow')}: delete {'it' if owned == 1 else 'them'} first with "
                             f"`broker admin delete --user {args.name}` (finished ones; cancel running ones "
                             "first) or the API's deleteAllForUser, then remove the user; or keep the user")
        s.delete(user)
    print(f"user {args.name} removed")
    return EXIT_OK
