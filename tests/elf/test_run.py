"""``python3 elf.py run`` as a real subprocess: outcomes, reports, environment, timeout and cancel."""

import contextlib
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from broker.elf import ELF_SCRIPT
from broker.elf.elf import claim_verdict, read_int_file, read_status, read_verdict
from tests.elf.helpers import start_elf
from tests.fixtures import wait_for
from tests.launchers.helpers import alive


def _python38():
    pyenv = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.8*/bin/python3.8")))
    candidates = [shutil.which("python3.8"), *pyenv]
    for path in filter(None, candidates):
        if subprocess.run([path, "-c", "pass"], capture_output=True).returncode == 0:
            return path
    return None


PYTHONS = [pytest.param(sys.executable, id="broker-python")]
if _python38():
    PYTHONS.append(pytest.param(_python38(), id="python3.8"))


@pytest.mark.parametrize("python", PYTHONS)
def test_a_successful_payload_records_its_outputs_progress_and_files(tmp_path, python):
    workdir = tmp_path / "w"
    payload = ('echo hello\necho oops >&2\necho \'@broker progress 50 "half"\'\necho \'@broker output rows=12\'\n'
               'echo "@broker output env=\\"$WB_PARAM_x|$BROKER_SECRET|$WB_WORKDIR\\""\n')
    environ = dict(os.environ, BROKER_SECRET="leaked", WB_PARAM_x="stale")
    proc = start_elf(workdir, payload, python=python, env_pairs=[["WB_PARAM_x", "fresh"]], environ=environ)
    assert proc.wait(timeout=30) == 0
    status = read_status(str(workdir), attempt=1, session="wf-test/node")
    assert status["outcome"] == "succeeded" and status["exit_code"] == 0
    assert status["outputs"] == {"rows": 12, "env": f"fresh||{workdir}"}
    assert status["progress"] == [50.0, "half"]
    assert (workdir / "stdout").read_text().startswith("hello\n")
    assert (workdir / "stderr").read_text() == "oops\n"
    assert read_int_file(str(workdir / "pid")) == status["pid"]
    assert read_int_file(str(workdir / "elf.pid")) == proc.pid
    assert os.stat(workdir).st_mode & 0o777 == 0o700


@pytest.mark.parametrize("python", PYTHONS)
def test_a_failing_payload_gives_its_exit_code(tmp_path, python):
    proc = start_elf(tmp_path / "w", "echo '@broker output partial=true'\nexit 3\n", python=python)
    assert proc.wait(timeout=30) == 3
    status = read_status(str(tmp_path / "w"), attempt=1)
    assert (status["outcome"], status["exit_code"], status["message"]) == ("failed", 3, "exit code 3")
    assert status["outputs"] == {"partial": True}


def test_a_python_payload_runs_with_python3(tmp_path):
    proc = start_elf(tmp_path / "w", "import sys\nprint('@broker output v=%d' % sys.version_info[0])\n",
                     kind="python")
    assert proc.wait(timeout=30) == 0
    assert read_status(str(tmp_path / "w"))["outputs"] == {"v": 3}


def test_a_missing_interpreter_fails_with_exit_code_127(tmp_path):
    proc = start_elf(tmp_path / "w", "true\n", extra=["--interpreter", "/no/such/interpreter"])
    assert proc.wait(timeout=30) == 127
    status = read_status(str(tmp_path / "w"))
    assert status["outcome"] == "failed" and "/no/such/interpreter" in status["message"]


@pytest.mark.parametrize("python", PYTHONS)
def test_the_timeout_kills_the_whole_process_group(tmp_path, python):
    workdir = tmp_path / "w"
    payload = "sleep 100 &\necho $! > grandchild.pid\nsleep 100\n"
    started = time.monotonic()
    proc = start_elf(workdir, payload, python=python, timeout=0.5)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert time.monotonic() - started < 10
    status = read_status(str(workdir))
    assert status["outcome"] == "timeout"
    assert status["message"] == "killed after the timeout of 0.5 s"
    grandchild = int((workdir / "grandchild.pid").read_text())
    wait_for(lambda: not alive(grandchild))


@pytest.mark.slow
def test_a_payload_that_ignores_sigterm_is_killed_after_the_grace(tmp_path):
    proc = start_elf(tmp_path / "w", "trap '' TERM\nsleep 100\n", timeout=0.2)
    assert proc.wait(timeout=30) == 128 + signal.SIGKILL
    assert read_status(str(tmp_path / "w"))["outcome"] == "timeout"


def test_sigterm_to_the_elf_after_the_cancel_verdict_cancels_the_payload(tmp_path):
    workdir = tmp_path / "w"
    proc = start_elf(workdir, "echo started > started\nsleep 100\n")
    wait_for(lambda: (workdir / "started").exists())
    assert claim_verdict(str(workdir), "cancelled")  # what the host agent's cancel does before it signals
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    status = read_status(str(workdir))
    assert (status["outcome"], status["message"]) == ("cancelled", "cancelled")
    assert not alive(status["pid"])


def test_a_sigterm_no_verdict_explains_kills_the_payload_and_says_so(tmp_path):
    workdir = tmp_path / "w"
    proc = start_elf(workdir, "echo started > started\nsleep 100\n")
    wait_for(lambda: (workdir / "started").exists())
    proc.send_signal(signal.SIGTERM)  # a scheduler at its time limit, an administrator...
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    status = read_status(str(workdir))
    assert (status["outcome"], status["message"]) == ("cancelled", "terminated by a signal the broker did not send")
    assert read_verdict(str(workdir)) == "terminated"
    assert not alive(status["pid"])


def test_a_payload_cancelled_before_its_elf_started_never_runs(tmp_path):
    workdir = tmp_path / "w"
    workdir.mkdir()
    assert claim_verdict(str(workdir), "cancelled")
    assert start_elf(workdir, f"echo ran > {tmp_path}/ran\n").wait(timeout=30) == 0
    status = read_status(str(workdir))
    assert (status["outcome"], status["message"]) == ("cancelled", "cancelled before it started")
    assert not (tmp_path / "ran").exists()


def test_the_elf_needs_nothing_newer_than_python_3_8():
    vermin = shutil.which("vermin") or os.path.join(os.path.dirname(sys.executable), "vermin")
    result = subprocess.run([vermin, "--no-tips", "--eval-annotations", "--violations", "-t=3.8-", ELF_SCRIPT],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    result = subprocess.run([vermin, "--no-tips", "--eval-annotations", ELF_SCRIPT], capture_output=True,
                            text=True)
    minimum = result.stdout.split("Minimum required versions:")[1].split()[0]
    assert tuple(int(p) for p in minimum.split(".")) <= (3, 8)


def _push_file(workdir, url, **more):
    os.makedirs(workdir, exist_ok=True)
    (workdir / "push.json").write_text(json.dumps({"url": url, "session": 17, "secret": "s3cret&<", **more}))


PUSH_NS = {"s": "http://schemas.xmlsoap.org/soap/envelope/", "c": "urn:workflow-broker:core:v1",
           "t": "urn:workflow-broker:types:v1",
           "w": "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"}


@contextlib.contextmanager
def push_receiver():
    """A local HTTP server standing in for the broker: yields (url, the envelopes received, parsed)."""
    import http.server
    import threading

    from lxml import etree

    received = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(etree.fromstring(body))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/broker", received
    finally:
        server.shutdown()


def statuses(calls):
    """The status strings of the envelopes received so far."""
    return [c.findtext(".//c:status", namespaces=PUSH_NS) for c in list(calls)]


def test_with_push_the_elf_pushes_each_new_progress_while_the_payload_runs(tmp_path):
    workdir = tmp_path / "w"
    gate = 'i=0; while [ ! -e {0} ] && [ $i -lt 3000 ]; do sleep 0.01; i=$((i+1)); done\n'
    with push_receiver() as (url, calls):
        _push_file(workdir, url, interval=0.05)
        proc = start_elf(workdir, "echo '@broker progress 25 \"a\"'\n" + gate.format("gate1")
                         + "echo '@broker progress 25 \"a\"'\necho '@broker progress 75 \"b\"'\n" + gate.format("gate2"),
                         extra=("--push", "push.json"))
        wait_for(lambda: "PROGRESS 25.0 a" in statuses(calls))
        (workdir / "gate1").touch()
        wait_for(lambda: "PROGRESS 75.0 b" in statuses(calls))
        (workdir / "gate2").touch()
        assert proc.wait(timeout=30) == 0
    # the repeated line is no news: pushed once
    assert statuses(calls) == ["RUNNING", "PROGRESS 25.0 a", "PROGRESS 75.0 b", "SUCCEEDED 0 exit code 0"]
    assert read_status(str(workdir), attempt=1)["progress"] == [75.0, "b"]


@pytest.mark.parametrize("python", PYTHONS)
def test_with_push_the_elf_reports_running_then_its_result_with_outputs(tmp_path, python):
    workdir = tmp_path / "w"
    with push_receiver() as (url, calls):
        _push_file(workdir, url)
        proc = start_elf(workdir, "test -e push.json && exit 9\necho '@broker output best={\"x\": 1.5}'\n",
                         python=python, extra=("--push", "push.json"))
        assert proc.wait(timeout=30) == 0
    ns = PUSH_NS
    assert statuses(calls) == ["RUNNING", "SUCCEEDED 0 exit code 0"]
    assert {c.findtext(".//w:Password", namespaces=ns) for c in calls} == {"s3cret&<"}
    assert {c.findtext(".//c:sessionId", namespaces=ns) for c in calls} == {"17"}
    last = calls[-1]
    assert [(o.findtext("t:name", namespaces=ns), json.loads(o.findtext("t:value", namespaces=ns)))
            for o in last.iterfind(".//c:output", namespaces=ns)] == [("best", {"x": 1.5})]
    assert "push_failures" not in read_status(str(workdir), attempt=1)


@pytest.mark.slow
def test_a_push_that_cannot_reach_the_broker_is_counted_and_changes_nothing_else(tmp_path):
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    workdir = tmp_path / "w"
    _push_file(workdir, f"http://127.0.0.1:{port}/broker")
    proc = start_elf(workdir, "exit 4\n", extra=("--push", "push.json"))
    assert proc.wait(timeout=30) == 4
    status = read_status(str(workdir), attempt=1)
    assert (status["outcome"], status["exit_code"], status["push_failures"]) == ("failed", 4, 2)
    assert not (workdir / "push.json").exists()
