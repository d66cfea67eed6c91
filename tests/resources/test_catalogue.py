"""The host catalogue: valid and invalid hosts.xml with exact messages and lines; host resolution rules."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from broker.config import Settings
from broker.description.model import Scheduling
from broker.errors import ConfigError, ResourceError
from broker.resources import catalogue as cat
from broker.resources import placement
from broker.resources.catalogue import CatalogueError, load_catalogue, parse_catalogue
from broker.resources.placement import resolve

REPO = Path(__file__).resolve().parents[2]
NS = 'xmlns="urn:workflow-broker:hosts:1.0"'


def parse(body: str, tmp_path: Path, default: str = "") -> cat.Catalogue:
    """Parse a catalogue whose <hosts> holds ``body``; a known_hosts file exists next to it."""
    (tmp_path / "known_hosts").write_text("")
    attr = f' default="{default}"' if default else ""
    text = f'<?xml version="1.0"?>\n<hosts {NS}{attr}>\n{textwrap.dedent(body).strip()}\n</hosts>\n'
    return parse_catalogue(text.encode(), filename="hosts.xml", base=tmp_path)


def problems(body: str, tmp_path: Path, default: str = "") -> list[str]:
    with pytest.raises(CatalogueError) as caught:
        parse(body, tmp_path, default)
    return [str(p) for p in caught.value.problems]


SSH = '<ssh address="127.0.0.1" port="2222" knownHosts="known_hosts"/>'


def test_the_shipped_example_catalogue_is_valid_and_has_one_host_of_each_kind():
    catalogue = load_catalogue(REPO / "conf" / "hosts.xml", check_files=False)
    assert [(h.name, h.launcher) for h in catalogue.hosts] == [
        ("localhost", "local"), ("lab-server", "ssh"), ("cluster", "slurm"), ("torque", "pbs"), ("moab", "moab")]
    assert catalogue.default == "localhost"
    cluster = catalogue.get("cluster")
    assert cluster.batch.default_queue == "normal" and "qos" in cluster.batch.directives
    assert (cluster.limits.cores, cluster.limits.walltime, cluster.max_jobs) == (128, 48 * 3600.0, 500)
    assert catalogue.get("torque").batch.commands == "/opt/torque/bin"


def test_a_full_host_is_read_with_paths_resolved_against_the_catalogue_directory(tmp_path):
    catalogue = parse(f"""
        <host name="hpc" launcher="slurm" maxJobs="40">
          {SSH}
          <scratch>/scratch</scratch>
          <python>/usr/bin/python3</python>
          <env name="OMP_NUM_THREADS" value="1"/>
          <batch defaultQueue="debug" commands="bin"><queue>debug</queue><directive>qos</directive></batch>
          <limits nodes="2" cores="16" memory="64GiB" walltime="2h"/>
          <account user="alice" login="asmith" key="keys/alice"/>
          <account user="*" login="{{user}}" key="/keys/{{user}}"/>
        </host>""", tmp_path)
    host = catalogue.get("hpc")
    assert host.ssh == cat.SshAccess("127.0.0.1", 2222, str(tmp_path / "known_hosts"))
    assert (host.scratch, host.python, host.env, host.max_jobs, host.line) == (
        "/scratch", "/usr/bin/python3", (("OMP_NUM_THREADS", "1"),), 40, 3)
    assert host.batch == cat.BatchOptions("debug", ("debug",), ("qos",), str(tmp_path / "bin"))
    assert host.limits == cat.HostLimits(2, 16, 64 * 1024**3, 7200.0)
    assert host.accounts == (cat.AccountRule("alice", "asmith", str(tmp_path / "keys" / "alice")),
                             cat.AccountRule("*", "{user}", "/keys/{user}"))
    assert catalogue.default == "hpc"  # no default attribute: the first host


def test_without_a_catalogue_only_the_local_host_exists():
    catalogue = load_catalogue("")
    assert catalogue.names() == ("localhost",) and catalogue.default == "localhost"
    assert catalogue.get("localhost").launcher == "local"


def test_schema_errors_name_the_file_line_and_host(tmp_path):
    found = problems("""
        <host name="a" launcher="local"/>
        <host name="b" launcher="condor" maxJobs="-1"/>""", tmp_path)
    assert found == [
        "hosts.xml:4:0: host 'b': <host> attribute 'launcher': the value 'condor' is not one of "
        "'local', 'ssh', 'slurm', 'pbs', 'moab'",
        "hosts.xml:4:0: host 'b': <host> attribute 'maxJobs': The value '-1' is less than the minimum value "
        "allowed ('0')",
    ]


def test_a_value_that_could_reach_a_command_line_is_refused_by_the_schema(tmp_path):
    found = problems(f"""
        <host name="a" launcher="ssh">
          {SSH}
          <scratch>/scratch; rm -rf ~</scratch>
        </host>""", tmp_path)
    assert len(found) == 1
    assert found[0].startswith("hosts.xml:5:0: host 'a': <scratch>: '/scratch; rm -rf ~' does not match the pattern")


def test_semantic_errors_are_all_reported_in_line_order(tmp_path):
    found = problems(f"""
        <host name="a" launcher="ssh"/>
        <host name="b" launcher="local">
          {SSH}
        </host>
        <host name="c" launcher="ssh">
          <ssh address="h" knownHosts="missing_known_hosts"/>
          <scratch>/s</scratch>
          <batch/>
        </host>
        <host name="a" launcher="slurm">
          <account user="bob" login="{{user}}" key="/keys/bob"/>
        </host>""", tmp_path, default="nowhere")
    missing = tmp_path / "missing_known_hosts"
    assert found == [
        "hosts.xml:2:0: the default host 'nowhere' is not declared (hosts: a, b, c)",
        "hosts.xml:3:0: host 'a': launcher ssh needs an <ssh> element",
        "hosts.xml:3:0: host 'a': launcher ssh needs a <scratch> directory",
        "hosts.xml:5:0: host 'b': launcher local takes no <ssh> (use launcher ssh)",
        f"hosts.xml:8:0: host 'c': known-hosts file {missing} does not exist",
        "hosts.xml:10:0: host 'c': <batch> only applies to slurm, pbs, moab hosts, not ssh",
        "hosts.xml:12:0: host 'a': launcher slurm needs a <scratch> directory",
        "hosts.xml:12:0: host 'a' is declared twice (first at line 3)",
        "hosts.xml:13:0: host 'a': account of user 'bob': {user} is only allowed with user=\"*\"",
        "hosts.xml:13:0: host 'a': account of user 'bob': key applies only to hosts reached over <ssh>",
    ]


def test_a_host_without_ssh_takes_account_entries_of_the_brokers_machine(tmp_path):
    catalogue = parse("""
        <host name="here" launcher="local">
          <account user="alice" login="broker-test"/>
          <account user="*" login="{user}"/>
        </host>
        <host name="queue" launcher="slurm">
          <scratch>/scratch</scratch>
          <account user="bob" login="bsmith"/>
        </host>""", tmp_path)
    assert catalogue.get("here").accounts == (cat.AccountRule("alice", "broker-test"),
                                              cat.AccountRule("*", "{user}"))
    assert catalogue.get("queue").accounts == (cat.AccountRule("bob", "bsmith"),)


def test_the_hardened_parser_refuses_a_doctype(tmp_path):
    text = b'<?xml version="1.0"?>\n<!DOCTYPE hosts [<!ENTITY x "y">]>\n<hosts ' + NS.encode() + b"/>"
    with pytest.raises(CatalogueError) as caught:
        parse_catalogue(text, filename="hosts.xml")
    assert str(caught.value) == "hosts.xml:2:1: DOCTYPE is not allowed (no DTDs, no entity declarations)"


def test_a_wrong_root_element_is_named(tmp_path):
    with pytest.raises(CatalogueError) as caught:
        parse_catalogue(b"<workflow/>", filename="hosts.xml")
    assert str(caught.value) == ("hosts.xml:1:0: the root element must be <hosts> in namespace "
                                 "'urn:workflow-broker:hosts:1.0', not <workflow> without a namespace")


def test_an_unreadable_catalogue_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot read the host catalogue .*nope.xml: No such file"):
        load_catalogue(tmp_path / "nope.xml")


def test_the_settings_name_the_catalogue_and_its_throttle_is_exposed(tmp_path):
    parse('<host name="x" launcher="local" maxJobs="3"/>', tmp_path)
    (tmp_path / "hosts.xml").write_text(f'<hosts {NS}><host name="x" launcher="local" maxJobs="3"/></hosts>')
    settings = Settings().replace("hosts", catalogue=str(tmp_path / "hosts.xml"))
    catalogue = load_catalogue(settings.hosts.catalogue)
    assert catalogue.max_jobs("x") == 3
    with pytest.raises(ResourceError) as caught:
        catalogue.max_jobs("y")
    assert str(caught.value) == f"host 'y' is not in the host catalogue {tmp_path / 'hosts.xml'} (known: x)"
    assert caught.value.retryable is False


def test_hosts_without_max_jobs_get_their_launchers_default_and_an_explicit_zero_means_no_limit(tmp_path):
    catalogue = parse(f"""
        <host name="here" launcher="local"/>
        <host name="lab" launcher="ssh">{SSH}<scratch>/s</scratch></host>
        <host name="hpc" launcher="slurm">{SSH}<scratch>/s</scratch></host>
        <host name="open" launcher="pbs" maxJobs="0">{SSH}<scratch>/s</scratch></host>""", tmp_path)
    assert [catalogue.max_jobs(name) for name in ("here", "lab", "hpc", "open")] == [512, 32, 500, 0]
    # a broker without a catalogue: its local host is sized like any local host, not by one broker-wide 8
    assert cat.builtin_catalogue().max_jobs("localhost") == cat.DEFAULT_MAX_JOBS["local"] == 512
    assert Settings().engine.max_in_flight >= sum(cat.DEFAULT_MAX_JOBS.values())


# ------------------------------------------------------------------------------------------ resolution

@pytest.fixture
def hosts(tmp_path) -> cat.Catalogue:
    return parse(f"""
        <host name="laptop" launcher="local"><limits cores="4"/></host>
        <host name="lab" launcher="ssh">{SSH}<scratch>/s</scratch><limits cores="32" memory="64GiB"/></host>
        <host name="hpc" launcher="slurm">
          {SSH}<scratch>/s</scratch>
          <batch defaultQueue="normal"><queue>normal</queue><queue>gpu</queue><directive>qos</directive></batch>
          <limits nodes="8" cores="128" walltime="48h"/>
        </host>""", tmp_path, default="laptop")


def test_a_node_without_hosts_goes_to_the_default_host(hosts):
    assert resolve((), Scheduling(), hosts).name == "laptop"


def test_the_workflow_resources_restrict_and_the_first_that_fits_wins(hosts):
    assert resolve(("lab", "hpc"), Scheduling(cores=16), hosts).name == "lab"
    assert resolve(("lab", "hpc"), Scheduling(cores=64), hosts).name == "hpc"
    assert [h.name for h in placement.candidates(("laptop", "lab", "hpc"), Scheduling(cores=8), hosts)] == ["lab", "hpc"]


def test_a_node_naming_its_own_hosts_overrides_the_workflow_resources(hosts):
    assert resolve(("lab",), Scheduling(hosts=("hpc",)), hosts).name == "hpc"


def test_queues_and_directives_need_a_batch_host_that_offers_them(hosts):
    assert resolve(("lab", "hpc"), Scheduling(queue="gpu"), hosts).name == "hpc"
    assert resolve(("lab", "hpc"), Scheduling(directives=(("qos", "high"),)), hosts).name == "hpc"
    assert placement.unsatisfied(hosts.get("hpc"), Scheduling(queue="bigmem")) == \
        "has no queue 'bigmem' (queues: normal, gpu)"


def test_when_no_host_can_run_a_node_the_message_says_why_for_each(hosts):
    with pytest.raises(ResourceError) as caught:
        resolve(("laptop", "lab", "hpc"), Scheduling(nodes=2, cores=256, directives=(("gres", "gpu:1"),)), hosts,
                node="sweep[3]/fit")
    assert str(caught.value) == (
        "node 'sweep[3]/fit' cannot run on any host: laptop needs 2 nodes, a local host runs a node on one; "
        "lab needs 2 nodes, a ssh host runs a node on one; hpc needs cores 256, at most 128 there")
    assert caught.value.retryable is False
    with pytest.raises(ResourceError, match=r"^the node cannot run on any host: lab needs memory 128GiB, at most "
                                            r"64GiB there$"):
        resolve(("lab",), Scheduling(memory=128 * 1024**3), hosts)
    with pytest.raises(ResourceError, match=r"hpc does not allow directive 'gres' \(allowed: qos\)$"):
        resolve(("hpc",), Scheduling(directives=(("gres", "gpu:1"),)), hosts)
    with pytest.raises(ResourceError, match=r"hpc needs walltime 259200 s, at most 172800 s there$"):
        resolve(("hpc",), Scheduling(walltime=72 * 3600.0), hosts)


def test_an_unknown_host_name_in_a_workflow_is_an_error_naming_the_known_ones(hosts):
    with pytest.raises(ResourceError, match=r"host 'gpu-box' is not in the host catalogue hosts.xml "
                                            r"\(known: laptop, lab, hpc\)"):
        resolve(("gpu-box",), Scheduling(), hosts)


def test_push_is_read_for_remote_hosts_and_refused_for_the_local_launcher(tmp_path):
    (tmp_path / "known_hosts").write_text("")
    ssh = '<ssh address="h" knownHosts="known_hosts"/>'
    found = parse(f"""
        <host name="far" launcher="ssh" push="true">{ssh}<scratch>/s</scratch></host>
        <host name="near" launcher="ssh">{ssh}<scratch>/s</scratch></host>""", tmp_path, default="far")
    assert (found.get("far").push, found.get("near").push) == (True, False)
    assert problems('<host name="here" launcher="local" push="true"/>', tmp_path) == [
        "hosts.xml:3:0: host 'here': push applies to remote hosts (ssh, slurm, pbs, moab): local payloads are "
        "watched directly"]


# ------------------------------------------------------------------------------------------------- tags

@pytest.fixture
def tagged(tmp_path) -> cat.Catalogue:
    return parse(f"""
        <host name="laptop" launcher="local"/>
        <host name="lab" launcher="ssh" tags="bigmem site-a">{SSH}<scratch>/s</scratch><limits cores="32"/></host>
        <host name="hpc" launcher="slurm" tags="gpu bigmem site-b">{SSH}<scratch>/s</scratch>
          <limits cores="128"/></host>""", tmp_path, default="laptop")


def test_hosts_carry_the_tags_of_the_catalogue_and_the_shipped_example_has_some(tagged):
    assert [h.tags for h in tagged.hosts] == [(), ("bigmem", "site-a"), ("gpu", "bigmem", "site-b")]
    shipped = load_catalogue(REPO / "conf" / "hosts.xml", check_files=False)
    assert "gpu" in shipped.get("cluster").tags


def test_a_node_requiring_tags_runs_only_on_a_host_carrying_all_of_them(tagged):
    assert resolve((), Scheduling(tags=("bigmem",)), tagged).name == "lab"  # no host named: every host may
    assert resolve((), Scheduling(tags=("bigmem", "gpu")), tagged).name == "hpc"
    assert resolve(("hpc", "lab"), Scheduling(tags=("site-a",)), tagged).name == "lab"
    # the tags and today's limits both hold: lab has bigmem but only 32 cores
    assert resolve((), Scheduling(tags=("bigmem",), cores=64), tagged).name == "hpc"
    assert resolve((), Scheduling(), tagged).name == "laptop"


def test_a_node_no_tagged_host_can_satisfy_fails_naming_each_candidate_and_why(tagged):
    with pytest.raises(ResourceError) as caught:
        resolve((), Scheduling(tags=("gpu", "site-a")), tagged, node="train")
    assert str(caught.value) == (
        "node 'train' cannot run on any host: laptop lacks tags 'gpu', 'site-a' (no tags); "
        "lab lacks tag 'gpu' (tags: bigmem site-a); hpc lacks tag 'site-a' (tags: gpu bigmem site-b)")
    with pytest.raises(ResourceError, match=r"^the node cannot run on any host: lab lacks tag 'gpu' \(tags: bigmem "
                                            r"site-a\)$"):
        resolve(("lab",), Scheduling(tags=("gpu",)), tagged)


def test_a_tag_that_could_reach_a_command_line_is_refused_by_the_schema(tmp_path):
    found = problems('<host name="x" launcher="local" tags="gpu Big;rm"/>', tmp_path)
    assert found[0] == ("hosts.xml:3:0: host 'x': <host> attribute 'tags': 'Big;rm' does not match the pattern "
                        "'[a-z0-9][a-z0-9_.\\-]{0,63}'")
