"""Shared test configuration.

Fixtures for real services live in ``tests/fixtures/`` (one module per service) and are loaded here.
A fixture whose service is missing skips the test on a laptop, and fails it when ``CI=true``: see
:func:`tests.fixtures.require`.
"""

pytest_plugins = [
    "tests.fixtures.database",
    "tests.fixtures.services",
    "tests.fixtures.accounts",
]
