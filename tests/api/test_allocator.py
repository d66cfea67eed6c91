"""`broker serve` runs with glibc's malloc as CPython's small-object allocator (broker/memory.py use_malloc).

CPython's own allocator gives memory back only by whole 1 MiB arenas, and a few objects that outlive big
work keep whole arenas: `broker serve` grew 25-40 MB per 100,000-node submit/cancel/delete cycle although
the objects alive after each cycle were the same (tests/perf/bench_memory.py, README "Memory after big
work"). The server replaces itself (exec, same pid) with PYTHONMALLOC=malloc, unless the operator chose an
allocator; payloads get the environment the broker was given.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.api.helpers import Server, add_users, workflow

pytestmark = pytest.mark.slow  # every test here starts `broker serve` processes


def environ(pid: int) -> dict[str, str]:
    """The environment process ``pid`` was started (exec'd) with."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode("utf-8", "replace").split("\0") if "=" in item)


def payload_environment(tmp_path: Path, sqlite_template: Path, extra: dict[str, str]) -> tuple[dict, str]:
    """(the server's start-up environment, what a payload of it saw in its environment)."""
    db = tmp_path / "broker.db"
    shutil.copy(sqlite_template, db)
    url = f"sqlite:///{db}"
    add_users(url)
    server = Server(url, tmp_path, extra).start()
    out = tmp_path / "payload-env.txt"
    try:
        started = environ(server.process.pid)
        handle = server.core().submit({"workflowContent": workflow(
            f'<node id="a"><payload type="sh">env &gt; "{out}"</payload></node>')})
        assert server.wait_state(handle.id, "succeeded", "failed") == "succeeded", server.log_text()[-3000:]
    finally:
        server.stop()
        server.close()
    return started, out.read_text()


def test_broker_serve_runs_with_malloc_and_its_payloads_do_not_inherit_the_choice(tmp_path, sqlite_template):
    started, seen = payload_environment(tmp_path, sqlite_template, {})
    assert started.get("PYTHONMALLOC") == "malloc"
    assert "PYTHONMALLOC" not in seen and "_BROKER_CHOSE_PYTHONMALLOC" not in seen


@pytest.mark.parametrize("choice", ["pymalloc", "malloc"])
def test_an_allocator_the_operator_chose_stands(tmp_path, sqlite_template, choice):
    started, seen = payload_environment(tmp_path, sqlite_template, {"PYTHONMALLOC": choice})
    assert started.get("PYTHONMALLOC") == choice and "_BROKER_CHOSE_PYTHONMALLOC" not in started
    assert f"PYTHONMALLOC={choice}\n" in seen  # the operator's environment reaches payloads, as before
