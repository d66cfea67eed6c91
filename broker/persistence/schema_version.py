"""The schema revisions this broker knows, as plain constants.

Start-up compares the database's ``alembic_version`` with :data:`HEAD_REVISION` using plain SQL, so it
never has to import alembic (about 0.1 s) just to learn that nothing needs doing. A test asserts that
these constants equal what alembic reads from ``migrations/versions``: add a revision there, add it here.
"""

from __future__ import annotations

#: every revision in ``migrations/versions``, oldest first
REVISIONS: tuple[str, ...] = ("0001", "0002", "0003", "0004", "0005", "0006", "0007", "0010", "0011", "0012")
#: the revision a database must be at for this broker to use it
HEAD_REVISION: str = REVISIONS[-1]
