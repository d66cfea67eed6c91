"""``broker admin archive``: the round trip, what archives keep, selections, targets, reading back."""

from __future__ import annotations

import os
import tarfile

import pytest
from lxml import etree

from broker.admin.reader import read_archive, record_schema
from broker.admin.targets import FileTarget
from tests.admin.helpers import (ACTOR, admin_events, archived_events, example, gated, orphan_attempts,
                                 run_workflows, snapshot, workflow, workflow_rows)

pytestmark = pytest.mark.slow  # every test here archives whole workflows, through `broker` commands


def _outputs(workdir, gid):
    """Bundle path -> content of every stdout/stderr file of a workflow's work directory."""
    root = workdir / gid
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.name in ("stdout", "stderr")}


def test_an_archive_round_trip_gives_back_what_the_database_held_and_then_deletes_it(admin_cli):
    made = run_workflows(admin_cli.url, admin_cli.tmp, {"sweep": (example("output-sweep.xml"), "alice"),
                                                        "failing": (example("failing.xml"), "bob"),
                                                        "other": (example("hello.xml"), "bob")})
    before = {label: snapshot(admin_cli.sessions, made.ids[label]) for label in ("sweep", "failing")}
    outputs = {label: _outputs(admin_cli.workdir, made.gids[label]) for label in ("sweep", "failing")}
    assert outputs["sweep"] and outputs["failing"]
    ids = "".join(f"<id>{made.gids[label]}</id>" for label in ("sweep", "failing"))

    done = admin_cli.archive(ids, delete_after=True)

    assert done.returncode == 0, done.stderr
    target = FileTarget(admin_cli.archives)
    for label in ("sweep", "failing"):
        gid = made.gids[label]
        archive = read_archive(target, f"{gid}.xml")  # validates the document and checks the bundle's digest
        assert archive.descriptor == before[label].descriptor
        assert archive.state_xml == before[label].state_xml
        assert "<attempt " in archive.state_xml  # every node's attempts are archived with its state
        assert archived_events(archive) == before[label].events
        assert {f.path: f for f in archive.bundle.files}.keys() == outputs[label].keys()
        with tarfile.open(admin_cli.archives / f"{gid}.tar.gz") as tar:
            assert {m.name: tar.extractfile(m).read() for m in tar} == outputs[label]
        assert not (admin_cli.workdir / gid).exists(), "the work directory goes with the workflow"
    assert set(workflow_rows(admin_cli.sessions)) == {made.gids["other"]}
    assert orphan_attempts(admin_cli.sessions) == 0
    assert (admin_cli.workdir / made.gids["other"]).is_dir()
    summary = admin_events(admin_cli.sessions)[-1]
    assert summary.workflow_id is None and summary.actor == ACTOR
    assert summary.properties["archived"] == 2 and summary.properties["deleted"] == 2


def test_the_archive_document_validates_against_its_schema_and_the_state_against_workflow_state(sqlite_admin_cli):
    cli = sqlite_admin_cli
    made = run_workflows(cli.url, cli.tmp, {"hello": (example("hello.xml"), "alice")})
    assert cli.archive().returncode == 0
    document = etree.parse(str(cli.archives / f"{made.gids['hello']}.xml"))
    assert record_schema().validate(document), record_schema().error_log
    state = document.find("{urn:workflow-broker:archive-record:1}state")[0]
    assert state.tag == "{urn:workflow-broker:state:1}workflowState" and state.get("state") == "succeeded"
    assert oct(os.stat(cli.archives / f"{made.gids['hello']}.xml").st_mode & 0o777) == "0o600"


def test_archiving_alone_keeps_the_workflow_and_records_an_event_on_it(sqlite_admin_cli):
    cli = sqlite_admin_cli
    made = run_workflows(cli.url, cli.tmp, {"hello": (example("hello.xml"), "alice")})
    rows = workflow_rows(cli.sessions)
    done = cli.archive()
    assert done.returncode == 0, done.stderr
    assert workflow_rows(cli.sessions)[made.gids["hello"]][0] == rows[made.gids["hello"]][0]
    notes = [e for e in admin_events(cli.sessions) if e.workflow_id == made.ids["hello"]]
    assert [n.message for n in notes] == [f"archived to {(cli.archives / made.gids['hello']).as_uri()}.xml"]
    assert notes[0].actor == ACTOR


def test_keep_leaves_out_the_parts_it_turns_off(sqlite_admin_cli):
    cli = sqlite_admin_cli
    made = run_workflows(cli.url, cli.tmp, {"hello": (example("hello.xml"), "alice")})
    keep = '<keep descriptor="false" events="false" outputs="false"/>'
    assert cli.archive(keep=keep).returncode == 0
    archive = read_archive(FileTarget(cli.archives), f"{made.gids['hello']}.xml")
    assert archive.descriptor is None and archive.events is None and archive.bundle is None
    assert archive.state_xml is not None
    assert not (cli.archives / f"{made.gids['hello']}.tar.gz").exists()


def test_the_selection_picks_by_user_state_finish_time_and_id_and_skips_running_workflows(sqlite_admin_cli, tmp_path):
    cli = sqlite_admin_cli
    made = run_workflows(cli.url, cli.tmp, {"a1": (example("hello.xml"), "alice"),
                                            "a2": (example("failing.xml"), "alice"),
                                            "b1": (example("hello.xml"), "bob")},
                         running={"a3": (gated(tmp_path / "gate"), "alice")})
    try:
        done = cli.archive("<user>alice</user>", extra=("--dry-run",))
        assert done.returncode == 0, done.stderr
        listed = done.stdout
        assert made.gids["a1"] in listed and made.gids["a2"] in listed and made.gids["b1"] not in listed
        assert f"skipped: workflow {made.gids['a3']} is still running" in listed
        assert not cli.archives.exists(), "a dry run writes nothing"
        done = cli.archive("<user>alice</user><state>failed</state>")
        assert sorted(p.name for p in cli.archives.glob("*.xml")) == [f"{made.gids['a2']}.xml"]
        done = cli.archive(f"<finishedBefore>2000-01-01T00:00:00Z</finishedBefore><id>{made.ids['b1']}</id>")
        assert "nothing to archive" in done.stdout
    finally:
        (tmp_path / "gate").touch()


def test_an_invalid_selection_is_refused_with_every_problem_and_its_line(sqlite_admin_cli):
    cli = sqlite_admin_cli
    path = cli.file("bad.xml", '<archive xmlns="urn:workflow-broker:archive:1">\n<select>\n'
                               '<state>running</state>\n</select>\n</archive>\n')
    done = cli("admin", "archive", "--to", cli.archives.as_uri(), "--selection", str(path))
    assert done.returncode == 2
    assert f"{path}:3:0:" in done.stderr and "running" in done.stderr
    hostile = cli.file("hostile.xml", '<!DOCTYPE a [<!ENTITY x "y">]><archive xmlns="urn:workflow-broker:archive:1"/>')
    done = cli("admin", "archive", "--to", cli.archives.as_uri(), "--selection", str(hostile))
    assert done.returncode == 2 and "DOCTYPE" in done.stderr


def test_a_target_outside_the_archive_roots_is_refused(sqlite_admin_cli, tmp_path):
    cli = sqlite_admin_cli
    run_workflows(cli.url, cli.tmp, {"hello": (example("hello.xml"), "alice")})
    done = cli.archive(to=(tmp_path / "elsewhere").as_uri())
    assert done.returncode == 2 and "outside the archive roots" in done.stderr
    assert not (tmp_path / "elsewhere").exists()


def test_a_payload_that_links_its_stdout_to_a_private_file_does_not_get_it_archived(sqlite_admin_cli, tmp_path):
    cli = sqlite_admin_cli
    secret = tmp_path / "secret"
    secret.write_text("the broker's own secret")
    made = run_workflows(cli.url, cli.tmp, {"sneaky": (workflow(
        f'<node id="n"><payload type="sh">echo hi; rm -f stdout; ln -s {secret} stdout</payload></node>'), "bob")})
    assert cli.archive().returncode == 0
    archive = read_archive(FileTarget(cli.archives), f"{made.gids['sneaky']}.xml")
    assert [f.path for f in archive.bundle.files] == ["n/1/stderr"]
    with tarfile.open(cli.archives / f"{made.gids['sneaky']}.tar.gz") as tar:
        assert b"secret" not in b"".join(tar.extractfile(m).read() for m in tar)


def test_list_and_show_read_archives_back(sqlite_admin_cli):
    cli = sqlite_admin_cli
    made = run_workflows(cli.url, cli.tmp, {"failing": (example("failing.xml"), "bob")})
    assert cli.archive(delete_after=True).returncode == 0
    gid = made.gids["failing"]
    listing = cli("admin", "archive", "--list", cli.archives.as_uri())
    assert listing.returncode == 0 and gid in listing.stdout and "failed" in listing.stdout
    document = f"{cli.archives.as_uri()}/{gid}.xml"
    shown = cli("admin", "archive", "--show", document)
    assert shown.returncode == 0, shown.stderr
    assert "checksum OK" in shown.stdout and "broken/1/stderr" in shown.stdout
    assert cli("admin", "archive", "--show", document, "--file", "broken/1/stderr").stdout == "about to fail\n"
    assert cli("admin", "archive", "--show", document, "--descriptor").stdout == example("failing.xml").decode()
    assert "WORKFLOW_STATE" in cli("admin", "archive", "--show", document, "--events").stdout


def test_a_bundle_that_does_not_match_its_document_is_reported(sqlite_admin_cli):
    cli = sqlite_admin_cli
    made = run_workflows(cli.url, cli.tmp, {"hello": (example("hello.xml"), "alice")})
    assert cli.archive().returncode == 0
    bundle = cli.archives / f"{made.gids['hello']}.tar.gz"
    bundle.write_bytes(bundle.read_bytes() + b"x")
    shown = cli("admin", "archive", "--show", f"{cli.archives.as_uri()}/{made.gids['hello']}.xml")
    assert shown.returncode == 3 and "does not match its document" in shown.stderr


@pytest.mark.parametrize("point", ["archive-bundle-written", "archive-written", "archive-before-delete",
                                   "delete-committed"])
def test_a_crash_in_archive_and_delete_leaves_every_workflow_intact_or_archived(admin_cli, point):
    cli = admin_cli
    made = run_workflows(cli.url, cli.tmp, {f"w{i}": (example("hello.xml"), "alice") for i in range(3)})
    before = workflow_rows(cli.sessions)
    # the second workflow's archive is where the process dies
    crashed = cli.archive(delete_after=True, env={"BROKER_TEST_CRASH": f"{point}:2"})
    assert crashed.returncode == -9, crashed.stderr
    after = workflow_rows(cli.sessions)
    target = FileTarget(cli.archives)
    for gid in made.gids.values():
        intact = after.get(gid) == before[gid] and (cli.workdir / gid).is_dir()
        archived = (cli.archives / f"{gid}.xml").exists() and read_archive(target, f"{gid}.xml") is not None
        assert intact or archived, f"{gid} is lost after a crash at {point}"
        assert gid in after or archived, f"{gid} was deleted without an archive"
    # running again finishes the work: everything archived, deleted, work directories gone
    again = cli.archive(delete_after=True)
    assert again.returncode == 0, again.stderr
    assert workflow_rows(cli.sessions) == {}
    assert sorted(p.name for p in cli.archives.glob("*.xml")) == sorted(f"{g}.xml" for g in made.gids.values())
    assert not [p for p in cli.workdir.iterdir() if p.name.startswith("wf-")]
    assert not [p for p in cli.archives.iterdir() if ".partial" in p.name]


def test_a_descriptor_over_libxml2s_text_limit_is_archived_in_parts_and_read_back_whole(sqlite_admin_cli):
    from sqlalchemy import update

    from broker.admin.reader import read_archive
    from broker.admin.targets import open_target
    from broker.config import Settings
    from broker.persistence.models import Workflow

    cli = sqlite_admin_cli
    made = run_workflows(cli.url, cli.tmp, {"hello": (example("hello.xml"), "alice")})
    # 12 MB of UTF-8 (descriptions may be up to [limits] max_document_bytes, 64 MiB): set in the database,
    # as building and running a real one of that size would take the test a minute
    big = "<!-- café\r\n -->" * 800_000
    with cli.sessions.begin() as s:
        s.execute(update(Workflow).where(Workflow.id == made.ids["hello"]).values(descriptor=big))
    assert cli.archive().returncode == 0
    document = cli.archives / f"{made.gids['hello']}.xml"
    assert document.read_bytes().count(b"<part>") == 12
    shown = cli("admin", "archive", "--show", document.as_uri(), "--descriptor")
    assert shown.returncode == 0, shown.stderr
    # read through a text pipe (\r\n becomes \n), with the line end the command adds
    assert shown.stdout == big.replace("\r\n", "\n") + "\n"
    target = open_target(cli.archives.as_uri(), Settings().replace("archive", roots=(str(cli.archives),)).archive)
    assert read_archive(target, f"{made.gids['hello']}.xml").descriptor == big
