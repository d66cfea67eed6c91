"""The ``broker`` command: one module per command group, one error wrapper, named exit codes.

Each command module exposes ``register(subparsers)``; its handler receives the parsed arguments and the
loaded :class:`~broker.config.Settings` and returns an exit code. Modules import heavy libraries
(SQLAlchemy, alembic, spyne) inside their handlers, so ``broker --help`` and ``broker validate`` stay fast
and never open the database.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from collections.abc import Sequence

from broker import __version__
from broker.errors import BrokerError, ConfigError
from broker.printable import PrintableLogRecord, printable

#: success (for ``run``: the workflow succeeded)
EXIT_OK = 0
#: rejected content (invalid description) or, for ``run``, a workflow that did not succeed
EXIT_INVALID = 1
#: bad usage, bad configuration, or an unreadable file
EXIT_USAGE = 2
#: a runtime error: database unreachable or locked, a resource failed
EXIT_ERROR = 3
#: interrupted by the user
EXIT_INTERRUPTED = 130

#: the values ``[logging] level`` accepts (any case)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

#: libraries that narrate their own work at INFO (alembic's migration steps and its "Detected sequence ...
#: assuming SERIAL" on PostgreSQL, paramiko's lines per connection and sftp transfer, stomp.py's connection
#: steps, spyne's client faults): kept at WARNING unless DEBUG is asked for, so the default level shows the
#: broker's own lines only
QUIET_LIBRARIES = ("alembic", "paramiko", "stomp.py", "spyne", "sqlalchemy", "cheroot", "pykka")

#: command modules, in the order ``--help`` lists them
COMMANDS = ("validate", "workflow", "run", "status", "events", "control", "serve", "user", "admin", "db")
#: the module of each command: ``broker COMMAND ...`` builds the parser of that module only (all of them: a
#: few ms of every start); ``broker``, ``broker --help`` and a command not listed here build them all
COMMAND_MODULES = {"validate": "validate", "workflow": "workflow", "run": "run", "resume": "run",
                   "status": "status", "events": "events", "cancel": "control", "restart": "control",
                   "serve": "serve", "user": "user", "admin": "admin", "db": "db"}

log = logging.getLogger("broker.cli")


class UsageError(BrokerError):
    """Raised when a command is given arguments it cannot use."""


def _load_command(name: str):
    import importlib

    return importlib.import_module(f"broker.cli.{name}")


def named_command(argv: Sequence[str]) -> str | None:
    """The command ``argv`` names, after the options before it; None when there is none, or when help or the
    version is asked for first."""
    args = iter(argv)
    for arg in args:
        if arg == "--config":
            next(args, None)
        elif arg in ("-h", "--help", "--version", "--"):
            return None
        elif not arg.startswith("-"):
            return arg
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The command line's parser: with ``argv``, only the parser of the command it names, when it names one
    (another command's arguments are never parsed: the others need not be built)."""
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a subcommand parser built with parents=[common] would otherwise write its own default over
    # a value given before the subcommand (`broker --config X db current` lost X)
    common.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="configuration file (default: $BROKER_CONFIG, else built-in defaults)")
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback of an error")
    parser = argparse.ArgumentParser(
        prog="broker", parents=[common],
        description="Run XML-described scientific workflows on local hosts, SSH hosts and batch clusters.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    module = COMMAND_MODULES.get(named_command(argv) or "") if argv is not None else None
    for name in (module,) if module else COMMANDS:
        _load_command(name).register(sub, common)
    return parser


def add_db_option(parser: argparse.ArgumentParser) -> None:
    """The ``--db URL`` option, for every command that opens the database."""
    parser.add_argument("--db", metavar="URL", help="database URL (overrides [database] url)")


def settings_for(args: argparse.Namespace):
    from broker.configload import load_settings

    settings = load_settings(getattr(args, "config", None))
    if getattr(args, "db", None):
        settings = settings.replace("database", url=args.db)
    return settings


def _setup_logging(settings) -> None:
    logging.setLogRecordFactory(PrintableLogRecord)  # whatever the configured formatters: one line per record
    if settings.logging.config:
        # not `import logging.config`: that would make `logging` a local name of this whole function
        from logging import config as logging_config

        try:
            logging_config.fileConfig(settings.logging.config, disable_existing_loggers=False)
        except Exception as exc:  # fileConfig fails with KeyError, ValueError, NameError...: all mean a bad file
            raise ConfigError(f"[logging] config {settings.logging.config}: not a usable logging configuration "
                              f"({type(exc).__name__}: {exc})") from exc
    else:
        level = settings.logging.level.strip().upper()
        if level not in LOG_LEVELS:
            raise ConfigError(f"[logging] level: invalid value {settings.logging.level!r} "
                              f"(expected one of {', '.join(LOG_LEVELS)})")
        logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
        if level != "DEBUG":
            quiet = max(logging.WARNING, logging.getLevelName(level))
            for name in QUIET_LIBRARIES:
                logging.getLogger(name).setLevel(quiet)


#: whether this process is the ``broker`` command (console()), not main() called by other code: only then may
#: a command replace the process (``broker serve``: :func:`broker.memory.use_malloc`)
STARTED_AS_COMMAND = False

#: the collector's first threshold while the ``broker`` command starts (Python's default: 700 allocations):
#: importing a command's modules makes some 100,000 objects that live as long as the process, which the
#: collector would otherwise walk again and again (20-40 ms of a `broker run` start-up)
STARTUP_GC_THRESHOLD = 50_000
#: the thresholds before console() raised the first one
_gc_thresholds: tuple[int, ...] | None = None


def startup_over() -> None:
    """A long-running command has started (``run`` follows its workflow, ``serve`` serves): the collector's
    usual thresholds again. Other commands end soon, and keep the start-up's."""
    global _gc_thresholds
    if _gc_thresholds is not None:
        gc.set_threshold(*_gc_thresholds)
        _gc_thresholds = None
        # what exists now (modules, classes, the engine's actors and caches) lives as long as the process:
        # out of the collector's way, a full collection of a long run no longer walks it each time
        gc.freeze()


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        settings = settings_for(args)
        _setup_logging(settings)
        return int(args.func(args, settings))
    except KeyboardInterrupt:
        print("broker: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ConfigError, UsageError) as exc:
        if getattr(args, "debug", False):
            raise
        print(f"broker: {printable(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except BrokerError as exc:
        if getattr(args, "debug", False):
            raise
        print(f"broker: {printable(str(exc))}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:  # the one place an unexpected error becomes one clear line
        if getattr(args, "debug", False):
            raise
        print(f"broker: internal error: {type(exc).__name__}: {printable(str(exc))} (run with --debug for details)",
              file=sys.stderr)
        return EXIT_ERROR


def console() -> None:
    """The ``broker`` command's entry point: ``main()``, then exit without tearing the interpreter down.

    By the time ``main`` returns every command has closed what it opened (the engine is stopped, the
    database disposed); what is left is Python's own teardown of the imported modules, about 0.3 s of a
    `broker run` that needs 0.5 s for everything else. Output is flushed and logging shut down first.
    """
    global STARTED_AS_COMMAND, _gc_thresholds
    STARTED_AS_COMMAND = True
    _gc_thresholds = gc.get_threshold()
    gc.set_threshold(STARTUP_GC_THRESHOLD, *_gc_thresholds[1:])
    code = main()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be written anyway
            pass
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    console()
