"""Every command shows user text escaped (issue 12, section 6): a workflow name with a right-to-left override and
a payload's progress message with a zero-width space and a newline come out of `broker run`, `status` and
`events` as ``\\u202e``, ``\\u200b``; the stored event keeps the raw text."""

from __future__ import annotations

import json

from sqlalchemy import select

import pytest

from broker.persistence.models import Event
from tests.cli.helpers import workflow

pytestmark = pytest.mark.slow  # every test here runs `broker` commands as processes

NAME = "report\u202efdp.exe"
MESSAGE = "half\u200b way\nINFO forged line"


def test_run_status_and_events_escape_what_users_and_payloads_wrote(cli):
    progress = f"@broker progress 50 {json.dumps(MESSAGE)}"  # the JSON escapes \\u200b and \\n
    document = workflow(f"""<node id="a"><payload type="sh">printf '%s\\n' '{progress}'</payload></node>""",
                        name=NAME)
    ran = cli("run", str(cli.file("shown.xml", document)))
    assert ran.returncode == 0, ran.stderr
    (wf,) = cli.workflows()
    assert "): report\\u202efdp.exe\n" in ran.stdout and "(report\\u202efdp.exe): succeeded" in ran.stdout

    status = cli("status", wf.global_id)
    listing = cli("status")
    events = cli("events", wf.global_id)
    as_json = cli("status", wf.global_id, "--json")
    for result in (ran, status, listing, events, as_json):
        assert result.returncode == 0, result.stderr
        assert "\u202e" not in result.stdout and "\u200b" not in result.stdout
    assert "report\\u202efdp.exe" in status.stdout and "report\\u202efdp.exe" in listing.stdout
    assert json.loads(as_json.stdout)["name"] == NAME  # JSON reads the escape back as the character
    progress_lines = [line for line in events.stdout.splitlines() if " NODE_PROGRESS " in line]
    assert len(progress_lines) == 1 and progress_lines[0].endswith("half\\u200b way INFO forged line")
    with cli.sessions() as s:  # stored as the payload wrote it
        assert s.scalar(select(Event.message).where(Event.type == "NODE_PROGRESS")) == MESSAGE
