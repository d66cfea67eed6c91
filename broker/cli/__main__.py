"""``python -m broker.cli``: the same as the ``broker`` command."""

import sys

from broker.cli import main

sys.exit(main())
