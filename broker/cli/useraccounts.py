"""``broker user map|unmap|accounts``: the ``accounts`` table, which maps a broker user to an account (and, on an
SSH host, a key file) on one host, ahead of the catalogue's ``<account>`` entries (README "Mapping broker users
to accounts").

Every value is checked as the catalogue checks its own (schemas/hosts.xsd): the host's name, the account's
(``LOGIN_RE``), the key's path; an operator's typo is refused with the rule it broke, before anything is
written. A running broker reads the table when it starts.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from broker.cli import EXIT_OK, UsageError
from broker.cli.common import database_sessions, not_found_is_usage, print_table

#: schemas/hosts.xsd: HostName and Path
HOST_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,252}")
KEY_RE = re.compile(r"/[A-Za-z0-9_./+@~\-]{1,1023}")
#: what a running broker does not see until it starts again
RESTART_NOTE = "a running broker reads the table when it starts"


def register(actions: argparse._SubParsersAction, common: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Add the actions to ``broker user``; returns their parsers (each gets the --db option)."""
    mapping = actions.add_parser("map", parents=[common], help="run a user's nodes on a host as an account",
                                 description="Run a user's nodes on HOST as ACCOUNT (a row of the accounts "
                                             "table, which wins over the catalogue's <account> entries). "
                                             + RESTART_NOTE + ".")
    mapping.add_argument("name", metavar="NAME")
    mapping.add_argument("host", metavar="HOST", help="a host of the catalogue (localhost without one)")
    mapping.add_argument("account", metavar="ACCOUNT", help="the account on that host")
    mapping.add_argument("--key", metavar="PATH", help="the SSH key file of that account (hosts with <ssh>)")
    mapping.set_defaults(func=_map)
    unmap = actions.add_parser("unmap", parents=[common], help="remove a user's account on a host",
                               description="Remove the row of the accounts table for NAME on HOST (the "
                                           "catalogue's <account> entries apply again). " + RESTART_NOTE + ".")
    unmap.add_argument("name", metavar="NAME")
    unmap.add_argument("host", metavar="HOST")
    unmap.set_defaults(func=_unmap)
    listing = actions.add_parser("accounts", parents=[common], help="list the rows of the accounts table")
    listing.set_defaults(func=_accounts)
    return [mapping, unmap, listing]


def _checked(args: argparse.Namespace) -> None:
    from broker.resources.accounts import LOGIN_RE

    if not HOST_RE.fullmatch(args.host):
        raise UsageError(f"invalid host name {args.host!r}: 1 to 253 characters of A-Z, a-z, 0-9, '_', '.' and "
                         "'-', starting with a letter or digit (as in the catalogue)")
    if not LOGIN_RE.fullmatch(args.account):
        raise UsageError(f"invalid account name {args.account!r}: 1 to 32 characters of a-z, 0-9, '_' and '-', "
                         "starting with a letter or '_'")
    if args.key is not None and (not KEY_RE.fullmatch(args.key) or "/../" in args.key + "/"):
        raise UsageError(f"invalid key path {args.key!r}: an absolute path of A-Z, a-z, 0-9 and _ . / + @ ~ - "
                         "without '..' (it goes into ssh's command line)")


@not_found_is_usage
def _map(args: argparse.Namespace, settings: Any) -> int:
    from sqlalchemy import select

    from broker.persistence import repository
    from broker.persistence.models import Account

    _checked(args)
    with database_sessions(settings).begin() as s:
        user = repository.get_user(s, args.name)
        row = s.scalars(select(Account).where(Account.user_id == user.id, Account.host == args.host)).one_or_none()
        if row is None:
            row = Account(user_id=user.id, host=args.host)
            s.add(row)
        row.account, row.key_path = args.account, args.key
    key = f" with key {args.key}" if args.key else ""
    print(f"user {args.name} runs as {args.account} on {args.host}{key}; {RESTART_NOTE}")
    return EXIT_OK


@not_found_is_usage
def _unmap(args: argparse.Namespace, settings: Any) -> int:
    from sqlalchemy import delete

    from broker.persistence import repository
    from broker.persistence.models import Account

    with database_sessions(settings).begin() as s:
        user = repository.get_user(s, args.name)
        gone = s.execute(delete(Account).where(Account.user_id == user.id, Account.host == args.host)).rowcount
    if not gone:
        raise UsageError(f"user {args.name} has no row in the accounts table for host {args.host} (see `broker "
                         "user accounts`)")
    print(f"user {args.name} has no account of the table on {args.host} any more; {RESTART_NOTE}")
    return EXIT_OK


def _accounts(args: argparse.Namespace, settings: Any) -> int:
    from broker.resources.accounts import load_table

    with database_sessions(settings)() as s:
        table = load_table(s)
    print_table(("USER", "HOST", "ACCOUNT", "KEY"),
                [(user, host, account, key or "") for (user, host), (account, key) in sorted(table.items())])
    return EXIT_OK
