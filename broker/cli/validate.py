"""``broker validate FILE...``: check descriptions without storing or running anything.

Problems go to stderr, one per line, as ``FILE:LINE:COLUMN: message``; a valid file gets one line on
stdout: ``FILE: valid (N node definitions, M sweeps: K nodes to run)``, K counted as a run counts its nodes (execute
nodes once every sweep has expanded), with a note naming the sweeps driven by upstream outputs, which can add
nodes at run time. Exit codes: 0 when every file
is valid, 1 when any file was rejected (hostile or oversized input included), 2 when a file cannot be read
(that wins over 1) or the command line is wrong. ``-`` reads standard input. The description layer is
imported only when the command runs, so ``broker --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys

from broker.cli import EXIT_INVALID, EXIT_OK, EXIT_USAGE
from broker.printable import printable


def register(subparsers, common: argparse.ArgumentParser) -> None:
    """Add the ``validate`` command."""
    parser = subparsers.add_parser(
        "validate", parents=[common], help="check workflow descriptions (nothing is stored or run)",
        description="Check workflow descriptions: hardened parsing, the XSD, and every semantic rule. "
                    "Prints each problem as FILE:LINE:COLUMN: message. Exit 0: all valid, 1: some rejected, "
                    "2: a file could not be read.")
    parser.add_argument("files", nargs="+", metavar="FILE", help="description file ('-' for standard input)")
    parser.set_defaults(func=run)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def run(args: argparse.Namespace, settings) -> int:
    """Validate every file named on the command line; returns the exit code."""
    from broker.description.counts import planned
    from broker.description.load import check_description, check_description_file, spec_stats

    unreadable = rejected = False
    for name in args.files:
        try:
            if name == "-":
                source = sys.stdin.buffer.read(settings.limits.max_document_bytes + 1)
                checked = check_description(source, settings, filename="<stdin>")
            else:
                checked = check_description_file(name, settings)
        except OSError as exc:
            print(f"{printable(name)}: cannot read: {exc.strerror or exc}", file=sys.stderr)
            unreadable = True
            continue
        if checked.spec is None:
            rejected = True
            for problem in checked.problems:
                print(problem, file=sys.stderr)
            continue
        stats = spec_stats(checked.spec)
        label = "<stdin>" if name == "-" else name
        plan = planned(checked.spec.nodes)
        note = f", {plan.note()}" if plan.output_driven else ""
        print(printable(f"{label}: valid ({_plural(stats.nodes, 'node definition')}, {_plural(stats.sweeps, 'sweep')}: "
                        f"{_plural(plan.nodes, 'node')} to run{note})"))
    if unreadable:
        return EXIT_USAGE
    return EXIT_INVALID if rejected else EXIT_OK
