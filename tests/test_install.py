"""The quick start from a real (non-editable) install: the wheel must carry what the broker reads at run time.

The schemas and the migration scripts live at the top of the repository, outside the ``broker`` package, so an
install that forgot them would pass every other test (they run from the checkout) and fail for every user.
Here the project is built and installed into a fresh virtualenv, and the commands of the README's quick start
run from a directory outside the checkout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "conf" / "examples"


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_installed_broker_runs_the_quick_start(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # The dependencies come from this test environment (a path line in a .pth file adds its site-packages
    # after the new venv's own): only the project itself is built and installed, as `pip install .` does.
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    new_site = Path(_run([str(venv / "bin" / "python"), "-c", purelib], tmp_path, dict(os.environ)).stdout.strip())
    (new_site / "outer-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "PYTHON"))}
    env.update(HOME=str(tmp_path / "home"), PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    installed = _run([str(venv / "bin" / "pip"), "install", "--no-deps", "-q", str(ROOT)], tmp_path, env)
    assert installed.returncode == 0, installed.stderr[-3000:]

    where = _run([str(venv / "bin" / "python"), "-c", "import broker; print(broker.__file__)"], tmp_path, env)
    assert where.stdout.startswith(str(venv)), f"broker imported from {where.stdout!r}, not the install"

    broker = str(venv / "bin" / "broker")
    validated = _run([broker, "validate", *map(str, sorted(EXAMPLES.glob("*.xml")))], tmp_path, env)
    assert validated.returncode == 0, validated.stdout + validated.stderr

    ran = _run([broker, "run", str(EXAMPLES / "diamond.xml")], tmp_path, env)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "(diamond): succeeded" in ran.stdout
    # the embedded default: a database under the user's state directory, migrated on first use
    assert (tmp_path / "home" / ".local" / "state" / "workflow-broker" / "broker.db").is_file()

    # the dashboard's templates, script and style sheet come from the installed wheel
    serve = subprocess.Popen([broker, "serve", "--listen", "127.0.0.1:0"], cwd=tmp_path,
                             env={**env, "BROKER_ENGINE_RUN_AS_BROKER_ACCOUNT": "true"},
                             stdout=subprocess.PIPE, stderr=open(tmp_path / "serve.log", "w"), text=True)
    try:
        line = _serving_line(serve, tmp_path / "serve.log")
        base = line.split()[2]
        import urllib.request

        for path, expected in (("/ui/login", "Log in"), ("/ui/static/ui.js", "textContent"),
                               ("/ui/static/ui.css", "state-running")):
            with urllib.request.urlopen(base + path, timeout=30) as answer:
                assert answer.status == 200 and expected in answer.read().decode(), path
    finally:
        serve.terminate()
        serve.wait(timeout=60)


def _serving_line(process: subprocess.Popen[str], log: Path) -> str:
    """The ``serving on URL`` line of a starting ``broker serve`` (bounded by the tests' deadline)."""
    import selectors
    import time

    from tests.fixtures import DEADLINE

    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    end = time.monotonic() + DEADLINE
    while time.monotonic() < end and process.poll() is None:
        if selector.select(timeout=0.5):
            line = process.stdout.readline()
            if line.startswith("serving on "):
                return line
    raise AssertionError(f"the installed broker serve did not start: {log.read_text()[-2000:]}")
