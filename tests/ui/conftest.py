"""The ``server`` fixture of the dashboard tests: one real ``broker serve`` per module (tests/api/helpers.py),
and ``web``: a logged-in HTTP session of it."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.helpers import USERS, Server, add_users


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("serve-ui")
    db = tmp / "broker.db"
    shutil.copy(sqlite_template, db)
    url = f"sqlite:///{db}"
    add_users(url)
    srv = Server(url, tmp).start()
    try:
        yield srv
    finally:
        srv.stop(expect=None)
        srv.close()


def login(server: Server, user: str = "alice"):
    """A requests session logged in to the dashboard as ``user``."""
    import requests

    session = requests.Session()
    answer = session.post(server.base + "/ui/login", data={"user": user, "password": USERS[user][0],
                                                           "login_token": login_token(server, session)},
                          allow_redirects=False)
    assert answer.status_code == 303, answer.text
    return session


def login_token(server: Server, session) -> str:
    """The login form's token (its cookie goes into ``session``)."""
    form = session.get(server.base + "/ui/login").text
    return re.search(r'name="login_token" value="([^"]+)"', form).group(1)


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)
