"""``broker serve``: run the broker as a service: engine and SOAP API in one process.

``broker serve --write-wsdl DIR`` writes the two WSDLs (``broker-core.wsdl``, ``broker-admin.wsdl``,
pointing at http://localhost:8080) without opening the database: that is how ``wsdl/`` is regenerated.
"""

from __future__ import annotations

import argparse
from typing import Any

from broker.cli import EXIT_OK, add_db_option


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the ``serve`` command."""
    parser = subparsers.add_parser(
        "serve", parents=[common], help="run the broker as a SOAP service (engine and API in one process)",
        description="Run every workflow of the database and serve the SOAP API: IBrokerCore at <url>/broker, "
                    "IBroker (admins) at <url>/admin, WSDLs at ...?wsdl. PostgreSQL must be migrated first "
                    "(`broker db upgrade`); the embedded SQLite database is migrated here. SIGTERM drains "
                    "(no new calls, calls in progress finish, actors stop in order); a second signal exits at "
                    "once. On PostgreSQL, started while another broker is active, it waits as a standby "
                    "(/health answers 503 standby) and takes over once that broker's lease is free. Users: "
                    "`broker user add NAME`.")
    add_db_option(parser)
    parser.add_argument("--listen", metavar="HOST:PORT", help="address to listen on (overrides [api] listen)")
    parser.add_argument("--workdir", metavar="DIR", help="root of the node work directories "
                                                        "(overrides [engine] workdir)")
    parser.add_argument("--write-wsdl", metavar="DIR", help="write the two WSDLs into DIR and exit (no database)")
    # started by broker serve itself for [api] processes > 1: an API-only process forwarding to HOST:PORT
    parser.add_argument("--api-only", metavar="HOST:PORT", help=argparse.SUPPRESS)
    parser.set_defaults(func=serve_command)


def serve_command(args: argparse.Namespace, settings: Any) -> int:
    """``broker serve``: serve until SIGTERM; or write the WSDLs."""
    if args.write_wsdl:
        from broker.api.app import write_wsdls

        for path in write_wsdls(args.write_wsdl):
            print(f"wrote {path}")
        return EXIT_OK
    from broker import cli, memory

    cli.startup_over()  # a service: the collector's usual thresholds, whatever its start-up costs
    if cli.STARTED_AS_COMMAND:  # a long-running process that does big work: see broker.memory
        memory.use_malloc()
    from broker.api.server import Service

    if args.listen:
        settings = settings.replace("api", listen=args.listen)
    from broker.api.remote import check_writes

    if check_writes(settings):  # [api] writes = rows: an API process without an engine, on any machine
        from broker.api.remote import serve_rows

        return serve_rows(settings, on_ready=_announce)
    if args.api_only:
        from broker.api.apionly import serve_api_only
        from broker.api.server import parse_listen

        return serve_api_only(settings, parse_listen(settings.api.listen), parse_listen(args.api_only, "processes"))
    if args.workdir:
        settings = settings.replace("engine", workdir=args.workdir)
    return Service(settings, on_ready=_announce, on_standby=_standing_by).run()


def _announce(bound: str, public: str) -> None:
    # the one line on standard output: scripts and tests wait for it to know the service is ready
    print(f"serving on {bound} (public URL {public})", flush=True)


def _standing_by(bound: str, why: str) -> None:
    # also one line on standard output: the address to ask /health while the other broker is active
    print(f"standby on {bound}: {why}", flush=True)
