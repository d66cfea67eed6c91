"""Staging transports: sftp:// through the pooled connection of the node owner's account (real sshd), and
http(s):// stage-in from allowed locations only (a real HTTP server on loopback)."""

from __future__ import annotations

import hashlib
import http.server
import os
import pwd
import shutil
import socket
import threading
import uuid
from pathlib import Path

import pytest

from broker import transfers
from broker.config import Settings
from broker.description.model import Stage
from broker.errors import ResourceError
from broker.resources import Resources
from broker.resources.catalogue import parse_catalogue
from broker.resources.transports import HttpTransport
from tests.resources.helpers import server_connections

MAX = 1024**2


@pytest.fixture
def remote_dir(sshd):
    """A directory of the test account (its own files), removed afterwards."""
    home = pwd.getpwnam(sshd.user).pw_dir
    path = Path(home) / f"stage-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    shutil.chown(path, sshd.user, sshd.user)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def resources(sshd, tmp_path):
    xml = f"""<hosts xmlns="urn:workflow-broker:hosts:1.0">
      <host name="sshtest" launcher="ssh">
        <ssh address="{sshd.host}" port="{sshd.port}" knownHosts="{sshd.known_hosts}"/>
        <scratch>scratch</scratch>
        <account user="alice" login="{sshd.user}" key="{sshd.key}"/>
      </host></hosts>"""
    catalogue = parse_catalogue(xml.encode(), filename="hosts.xml")
    it = Resources(Settings(), catalogue=catalogue)
    yield it
    it.close()


def own(path: Path, sshd) -> Path:
    shutil.chown(path, sshd.user, sshd.user)
    return path


def test_sftp_stage_in_and_out_go_through_one_pooled_connection_of_the_owners_account(resources, sshd, remote_dir,
                                                                                   tmp_path):
    data = b"input data\n" * 100
    (remote_dir / "in.txt").write_bytes(data)
    own(remote_dir / "in.txt", sshd)
    checksum = "sha256:" + hashlib.sha256(data).hexdigest()
    workdir = tmp_path / "work"
    workdir.mkdir()
    alice = resources.transports_for("alice")
    for i in range(10):
        transfers.stage_in(Stage(f"sftp://sshtest{remote_dir}/in.txt", f"in/copy{i}.txt", checksum), workdir,
                           (), MAX, transports=alice)
    (workdir / "result.txt").write_text("result\n")
    transfers.stage_out(Stage("result.txt", f"sftp://sshtest/~/{remote_dir.name}/out.txt"), workdir, (), MAX,
                        transports=alice)
    assert server_connections(sshd.port) == 1
    assert [(workdir / "in" / f"copy{i}.txt").read_bytes() for i in range(10)] == [data] * 10
    out = remote_dir / "out.txt"
    assert out.read_text() == "result\n"
    assert (out.stat().st_uid, out.stat().st_mode & 0o777) == (pwd.getpwnam(sshd.user).pw_uid, 0o600)
    assert resources.pool.opened() == 1


def test_sftp_refuses_traversal_symlinks_oversize_and_anonymous_use(resources, sshd, remote_dir, tmp_path):
    (remote_dir / "big.txt").write_bytes(b"x" * 100)
    os.symlink("/etc/hostname", remote_dir / "link")
    workdir = tmp_path / "work"
    workdir.mkdir()
    # without transports (no user given) only file:// is known: sftp:// never runs as anyone
    with pytest.raises(ResourceError, match="unsupported stage-in source"):
        transfers.stage_in(Stage(f"sftp://sshtest{remote_dir}/big.txt", "a"), workdir, (), MAX)
    alice = resources.transports_for("alice")
    for source, target, limit, refusal in [
            (f"sftp://sshtest{remote_dir}/../../etc/passwd", "a", MAX, r"the path must be a file path without '\.\.'"),
            (f"sftp://sshtest{remote_dir}/big.txt", "../escape", MAX, r"must not contain '\.\.'"),
            (f"sftp://sshtest{remote_dir}/link", "a", MAX, "is not a regular file: refused"),
            (f"sftp://sshtest{remote_dir}/big.txt", "a", 10, "over the staging limit of 10"),
            (f"sftp://root@sshtest{remote_dir}/big.txt", "a", MAX, "no user, port or query"),
            ("sftp://elsewhere/tmp/x", "a", MAX, "host 'elsewhere' is not in the host catalogue")]:
        with pytest.raises(ResourceError, match=refusal):
            transfers.stage_in(Stage(source, target), workdir, (), limit, transports=alice)
    with pytest.raises(ResourceError, match="user 'bob' has no account on host 'sshtest'"):
        transfers.stage_in(Stage(f"sftp://sshtest{remote_dir}/big.txt", "a"), workdir, (), MAX,
                           transports=resources.transports_for("bob"))
    assert sorted(os.listdir(workdir)) == []


# ------------------------------------------------------------------------------------------------ http

class _Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (the standard library's name)
        if self.path == "/pub/moved":
            self.send_response(302)
            self.send_header("Location", "http://127.0.0.1/secret")
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def web(tmp_path):
    root = tmp_path / "site"
    (root / "pub").mkdir(parents=True)
    (root / "pub" / "data.txt").write_text("public data\n")
    (root / "secret.txt").write_text("secret\n")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             lambda *a: _Handler(*a, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()
    server.server_close()


def test_http_stage_in_reads_from_an_allowed_location(web, tmp_path):
    fetch = HttpTransport([f"{web}/pub/"], allow_private=True).fetch
    fetch(f"{web}/pub/data.txt", tmp_path / "data.txt", MAX)
    assert (tmp_path / "data.txt").read_text() == "public data\n"


def test_https_stage_in_from_a_server_without_tls_fails_with_one_clear_error(web, tmp_path):
    # the context (the system's CA certificates) is made by the first https:// fetch, not when the engine starts;
    # a server that does not speak TLS is one clear error, not a plain-text read
    port = web.rsplit(":", 1)[1]
    fetch = HttpTransport([f"https://127.0.0.1:{port}/pub/"], allow_private=True).fetch
    for _ in range(2):  # the second fetch reuses the context made by the first
        with pytest.raises(ResourceError, match=rf"https://127.0.0.1:{port}/pub/data.txt: .*SSL"):
            fetch(f"https://127.0.0.1:{port}/pub/data.txt", tmp_path / "x", MAX)
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_http_refuses_loopback_and_private_addresses_unless_configured(web, tmp_path):
    with pytest.raises(ResourceError, match=r"resolves to 127.0.0.1, an internal address \(allowed only with "
                                            r"\[hosts\] http_allow_private\)"):
        HttpTransport([f"{web}/pub/"]).fetch(f"{web}/pub/data.txt", tmp_path / "x", MAX)

    def resolver(addresses):
        return lambda host, port, type: [(socket.AF_INET, type, 6, "", (a, port)) for a in addresses]

    for private in ("10.0.0.5", "192.168.1.1", "169.254.169.254", "0.0.0.0", "::1", "fd00::1"):
        with pytest.raises(ResourceError, match="an internal address"):
            HttpTransport(["https://data.example.org/"], resolver=resolver([private])).check(
                "https://data.example.org/f")
    # one bad address among good ones is enough to refuse (the connection could go to any of them)
    with pytest.raises(ResourceError, match="an internal address"):
        HttpTransport(["https://data.example.org/"], resolver=resolver(["93.184.216.34", "10.1.1.1"])).check(
            "https://data.example.org/f")
    checked = HttpTransport(["https://data.example.org/pub/"], resolver=resolver(["93.184.216.34"])).check(
        "https://data.example.org/pub/f?x=1")
    assert checked == ("https", "data.example.org", 443, "/pub/f?x=1", "93.184.216.34")


def test_http_refuses_locations_outside_the_allowlist_traversal_redirects_and_oversize(web, tmp_path):
    fetch = HttpTransport([f"{web}/pub/"], allow_private=True).fetch
    with pytest.raises(ResourceError, match=r"is not under an allowed location \(allowed: .*/pub/\)"):
        fetch(f"{web}/secret.txt", tmp_path / "x", MAX)
    with pytest.raises(ResourceError, match=r"'\.\.' in the path is refused"):
        fetch(f"{web}/pub/../secret.txt", tmp_path / "x", MAX)
    with pytest.raises(ResourceError, match=r"'\.\.' in the path is refused"):
        fetch(f"{web}/pub/%2e%2e/secret.txt", tmp_path / "x", MAX)
    with pytest.raises(ResourceError, match="HTTP 302 Found .*redirects are not followed"):
        fetch(f"{web}/pub/moved", tmp_path / "x", MAX)
    with pytest.raises(ResourceError, match="over the staging limit of 4"):
        fetch(f"{web}/pub/data.txt", tmp_path / "x", 4)
    with pytest.raises(ResourceError, match="HTTP 404"):
        fetch(f"{web}/pub/none.txt", tmp_path / "x", MAX)
    with pytest.raises(ResourceError, match=r"allowed: none \(\[hosts\] http_allow is empty\)"):
        HttpTransport([]).fetch(f"{web}/pub/data.txt", tmp_path / "x", MAX)
    assert sorted(os.listdir(tmp_path)) == ["site"]


def test_resources_register_nothing_and_give_each_user_transports_bound_to_that_user():
    assert not hasattr(transfers, "TRANSPORTS") and not hasattr(transfers, "PUSHERS")  # no module state
    resources = Resources(Settings())
    try:
        alice, bob = resources.transports_for("alice"), resources.transports_for("bob")
        assert (set(alice.fetch), set(alice.push)) == ({"sftp", "http", "https"}, {"sftp"})
        assert alice.fetch["sftp"].keywords == alice.push["sftp"].keywords == {"user": "alice"}
        assert bob.push["sftp"].keywords == {"user": "bob"}
    finally:
        resources.close()
