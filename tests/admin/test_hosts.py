"""Hosts with tags through a real ``broker serve``: placement by tags, ``getHosts`` (zeep) and ``broker admin hosts``."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.api.helpers import BROKER, Server, add_users, fault_code, waits_for, workflow
from tests.fixtures import DEADLINE, wait_for

pytestmark = pytest.mark.slow  # every test here talks to a `broker serve` process

CATALOGUE = """<?xml version="1.0"?>
<hosts xmlns="urn:workflow-broker:hosts:1.0" default="plain">
  <host name="plain" launcher="local" maxJobs="4"><limits cores="2"/></host>
  <host name="gpu-box" launcher="local" tags="gpu site-a"><limits nodes="1" cores="16" memory="64GiB" walltime="2h"/></host>
</hosts>
"""


@pytest.fixture(scope="module")
def tagged(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path):
    """A server whose catalogue has a plain default host and a tagged one."""
    tmp = tmp_path_factory.mktemp("serve-hosts")
    shutil.copy(sqlite_template, tmp / "broker.db")
    url = f"sqlite:///{tmp / 'broker.db'}"
    add_users(url)
    (tmp / "hosts.xml").write_text(CATALOGUE, encoding="utf-8")
    srv = Server(url, tmp, {"BROKER_HOSTS_CATALOGUE": str(tmp / "hosts.xml")}).start()
    try:
        yield srv
    finally:
        srv.stop(expect=None)
        srv.close()


def _cli(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BROKER), *args], capture_output=True, text=True, env=server.env, timeout=DEADLINE)


def test_a_node_requiring_tags_runs_on_the_host_carrying_them_and_the_listings_show_it(tagged, tmp_path):
    gate = tmp_path / "go"
    handle = tagged.core().submit({"workflowContent": workflow(
        f'<node id="train"><scheduling><tag>gpu</tag></scheduling>{waits_for(gate)}</node>')})
    wait_for(lambda: tagged.node(handle.id, "train").state == "running", what="the tagged node to run")
    assert tagged.node(handle.id, "train").host == "gpu-box"
    hosts = tagged.admin().getHosts()
    assert [(h.name, h.launcher, h.tags, h.maxJobs, h.inFlight, h.default) for h in hosts] == [
        ("plain", "local", [], 4, 0, True), ("gpu-box", "local", ["gpu", "site-a"], 512, 1, False)]
    box = hosts[1]
    assert (box.limitNodes, box.limitCores, box.limitMemoryBytes, box.limitWalltimeSeconds) == (
        1, 16, 64 * 1024**3, 7200.0)
    assert hosts[0].limitMemoryBytes is None and hosts[0].limitCores == 2

    listed = _cli(tagged, "admin", "hosts", "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == [
        {"name": "plain", "launcher": "local", "tags": [], "maxJobs": 4, "inFlight": 0, "default": True,
         "limits": {"nodes": None, "cores": 2, "memoryBytes": None, "walltimeSeconds": None}},
        {"name": "gpu-box", "launcher": "local", "tags": ["gpu", "site-a"], "maxJobs": 512, "inFlight": 1,
         "default": False, "limits": {"nodes": 1, "cores": 16, "memoryBytes": 64 * 1024**3, "walltimeSeconds": 7200.0}}]
    table = _cli(tagged, "admin", "hosts").stdout.splitlines()
    assert table[0].split() == ["HOST", "LAUNCHER", "TAGS", "LIMITS", "MAX", "JOBS", "IN", "FLIGHT"]
    assert table[1].split()[:3] == ["plain", "(default)", "local"]
    assert table[2].split()[:4] == ["gpu-box", "local", "gpu", "site-a"]
    assert "memory 64GiB, walltime 7200 s" in table[2] and table[2].split()[-2:] == ["512", "1"]
    gate.touch()
    tagged.wait_state(handle.id, "succeeded")
    assert [h.inFlight for h in tagged.admin().getHosts()] == [0, 0]


def test_a_node_no_host_can_satisfy_fails_naming_each_candidate_and_why(tagged):
    handle = tagged.core().submit({"workflowContent": workflow(
        '<node id="huge"><scheduling><tag>gpu</tag><cores>32</cores></scheduling>'
        '<payload type="sh">true</payload></node>')})
    tagged.wait_state(handle.id, "failed")
    assert tagged.node(handle.id, "huge").message == (
        "node 'huge' cannot run on any host: plain lacks tag 'gpu' (no tags); gpu-box needs cores 32, at most 16 "
        "there")


def test_only_admins_list_the_hosts(tagged):
    import zeep

    with pytest.raises(zeep.exceptions.Fault) as caught:
        tagged.admin("bob").getHosts()
    assert fault_code(caught) == "Client.NotAuthorized"
