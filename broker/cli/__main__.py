"""``python -m broker.cli``: the same as the ``broker`` command."""

from broker.cli import console

console()
