"""The dashboard over plain HTTP against a real ``broker serve``: login and sessions, who sees what, the CSRF
check, escaping, the security headers. The browser tests (test_browser.py) drive the same pages in Chromium."""

from __future__ import annotations

import html
import re

import pytest
import requests

from tests.api.helpers import workflow
from tests.fixtures import wait_for
from tests.ui.conftest import csrf_of, login, login_token

pytestmark = pytest.mark.slow

EVIL_NAME = "<img src=x onerror=alert(1)>"


def submit(server, body: str, name: str = "test", user: str = "alice") -> str:
    """The global id of a workflow submitted through the SOAP API."""
    handle = server.core(user).submit({"workflowContent": workflow(body, name)})
    return handle.globalId


def test_pages_need_a_login_and_send_the_browser_to_the_form(server):
    answer = requests.get(server.base + "/ui/workflows", allow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["Location"].startswith("/ui/login?next=%2Fui%2Fworkflows")
    feed = requests.get(server.base + "/ui/workflows/abc/live")
    assert feed.status_code == 401
    root = requests.get(server.base + "/", allow_redirects=False)
    assert root.status_code == 303 and root.headers["Location"] == "/ui/"


def test_a_wrong_password_is_refused_and_no_session_is_opened(server):
    session = requests.Session()
    answer = session.post(server.base + "/ui/login", data={"user": "alice", "password": "nope",
                                                           "login_token": login_token(server, session)},
                          allow_redirects=False)
    assert answer.status_code == 401
    assert "wrong user name or password" in answer.text
    assert "broker_ui=" not in answer.headers.get("Set-Cookie", "")


def test_a_login_posted_from_another_site_is_refused(server):
    # another site can make the browser post the form, but neither read nor set the form's cookie
    answer = requests.post(server.base + "/ui/login", data={"user": "alice", "password": "alice-pw",
                                                            "login_token": "guessed"}, allow_redirects=False)
    assert answer.status_code == 403
    assert "broker_ui=" not in answer.headers.get("Set-Cookie", "")


def test_the_session_cookie_is_httponly_and_samesite_strict_and_logout_ends_it(server):
    import requests as rq

    session = rq.Session()
    answer = session.post(server.base + "/ui/login", data={"user": "alice", "password": "alice-pw",
                                                           "login_token": login_token(server, session)},
                          allow_redirects=False)
    cookie = answer.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/ui" in cookie
    assert "Secure" not in cookie  # plain http here; https public URLs get Secure
    page = session.get(server.base + "/ui/workflows")
    assert page.status_code == 200 and "alice" in page.text
    out = session.post(server.base + "/ui/logout", data={"csrf": csrf_of(page.text)}, allow_redirects=False)
    assert out.status_code == 303
    again = rq.get(server.base + "/ui/workflows", cookies={"broker_ui": cookie.split(";")[0].split("=", 1)[1]},
                   allow_redirects=False)
    assert again.status_code == 303  # the old cookie no longer opens anything


def test_every_page_has_a_csp_without_inline_scripts_and_the_static_files_come_from_the_package(server):
    session = login(server)
    page = session.get(server.base + "/ui/workflows")
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "default-src 'none'" in csp
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert "<script>" not in page.text and " style=" not in page.text  # nothing inline
    for name in ("ui.js", "ui.css"):
        assert session.get(server.base + f"/ui/static/{name}").status_code == 200
    assert session.get(server.base + "/ui/static/..%2Fapp.py").status_code == 404


def test_bob_opening_alices_workflow_gets_404_and_cannot_act_on_it(server):
    gid = submit(server, '<node id="a"><payload type="sh">true</payload></node>')
    alice, bob = login(server, "alice"), login(server, "bob")
    assert alice.get(server.base + f"/ui/workflows/{gid}").status_code == 200
    assert bob.get(server.base + f"/ui/workflows/{gid}").status_code == 404
    assert bob.get(server.base + f"/ui/workflows/{gid}/live").status_code == 404
    assert bob.get(server.base + f"/ui/workflows/{gid}/descriptor").status_code == 404
    assert bob.get(server.base + f"/ui/confirm?action=cancel&target={gid}").status_code == 404
    page = bob.get(server.base + "/ui/workflows")
    assert gid not in page.text
    assert bob.get(server.base + f"/ui/workflows.json?ids={gid}").json() == {"workflows": {}}
    assert gid in alice.get(server.base + f"/ui/workflows.json?ids={gid}").json()["workflows"]
    refused = bob.post(server.base + "/ui/act", data={"csrf": csrf_of(page.text), "action": "cancel",
                                                     "target": gid})
    assert refused.status_code == 404
    root = login(server, "root")
    assert root.get(server.base + f"/ui/workflows/{gid}").status_code == 200  # admins see everyone's


def test_an_action_without_its_csrf_token_is_refused_and_changes_nothing(server, tmp_path):
    from tests.api.helpers import waits_for

    gid = submit(server, f'<node id="slow">{waits_for(tmp_path / "go")}</node>')
    session = login(server)
    for form in ({"action": "cancel", "target": gid}, {"action": "cancel", "target": gid, "csrf": "forged"}):
        answer = session.post(server.base + "/ui/act", data=form)
        assert answer.status_code == 403
        assert "security token" in answer.text
    assert server.core().getStatusInfoForId(gid).state in ("accepted", "running")
    page = session.get(server.base + f"/ui/confirm?action=cancel&target={gid}")
    done = session.post(server.base + "/ui/act", data={"csrf": csrf_of(page.text), "action": "cancel",
                                                      "target": gid, "back": f"/ui/workflows/{gid}"})
    assert done.status_code == 200 and done.url.endswith(f"/ui/workflows/{gid}")
    wait_for(lambda: server.core().getStatusInfoForId(gid).state == "cancelled", what="the cancel")


def test_a_hostile_workflow_name_and_output_are_shown_as_text(server):
    body = ('<node id="out"><payload type="sh">echo \'@broker output x="&lt;script&gt;alert(2)&lt;/script&gt;"\''
            '</payload><output name="x"/></node>')
    gid = submit(server, body, name=html.escape(EVIL_NAME))  # XML-escaped in the attribute; stored as is
    wait_for(lambda: server.core().getStatusInfoForId(gid).state == "succeeded", what="the workflow")
    session = login(server)
    listing = session.get(server.base + "/ui/workflows").text
    page = session.get(server.base + f"/ui/workflows/{gid}").text
    for text in (listing, page):
        assert EVIL_NAME not in text and html.escape(EVIL_NAME, quote=False) in text
    node_id = re.search(r'href="/ui/nodes/(\d+)"', page).group(1)
    node = session.get(server.base + f"/ui/nodes/{node_id}").text
    assert "<script>alert(2)" not in node and "&lt;script&gt;alert(2)" in node


def test_the_workflows_list_filters_sorts_and_pages_by_key(server):
    gids = [submit(server, '<node id="a"><payload type="sh">true</payload></node>', name=f"paged-{i}")
            for i in range(3)]
    session = login(server)
    page = session.get(server.base + "/ui/workflows", params={"name": "paged-", "sort": "name", "dir": "asc"})
    names = re.findall(r">(paged-\d)</a>", page.text)
    assert names == ["paged-0", "paged-1", "paged-2"]
    assert all(g in page.text for g in gids)  # one page here; paging itself: test_units
    none = session.get(server.base + "/ui/workflows", params={"name": "paged-", "state": "failed"})
    assert "No workflows." in none.text


def test_an_invalid_description_shows_its_problems_at_their_lines(server):
    session = login(server)
    form = session.get(server.base + "/ui/submit").text
    bad = workflow('<node id="a"><payload type="sh">true</payload></node>\n'
                   '<node id="b"><dependsOn node="nowhere"/><payload type="sh">true</payload></node>')
    answer = session.post(server.base + "/ui/submit", files={"content": (None, bad), "csrf": (None, csrf_of(form))})
    assert answer.status_code == 422
    assert "nowhere" in answer.text
    assert re.search(r'<li id="line-3" class="bad">', answer.text), answer.text[:3000]
    good = session.post(server.base + "/ui/submit", files={
        "file": ("w.xml", workflow('<node id="a"><payload type="sh">true</payload></node>', "uploaded")),
        "csrf": (None, csrf_of(form))}, allow_redirects=False)
    assert good.status_code == 303 and good.headers["Location"].startswith("/ui/workflows/")


def test_the_admin_page_is_for_admins_only(server):
    assert login(server, "alice").get(server.base + "/ui/admin").status_code == 403
    page = login(server, "root").get(server.base + "/ui/admin")
    assert page.status_code == 200
    for text in ("Outbox backlog", "localhost", "alice", "bob", "active"):
        assert text in page.text


def test_the_descriptor_downloads_as_submitted_and_the_node_page_shows_stdout(server):
    body = '<node id="talk"><payload type="sh">echo "hello &amp; &lt;b&gt;bye&lt;/b&gt;"</payload></node>'
    gid = submit(server, body, name="talker")
    wait_for(lambda: server.core().getStatusInfoForId(gid).state == "succeeded", what="the workflow")
    session = login(server)
    download = session.get(server.base + f"/ui/workflows/{gid}/descriptor")
    assert download.status_code == 200 and "attachment" in download.headers["Content-Disposition"]
    assert download.text == workflow(body, "talker")
    page = session.get(server.base + f"/ui/workflows/{gid}").text
    node_id = re.search(r'href="/ui/nodes/(\d+)"', page).group(1)
    node = session.get(server.base + f"/ui/nodes/{node_id}").text
    assert "hello &amp; &lt;b&gt;bye&lt;/b&gt;" in node  # the last lines of stdout, as text
    assert "NODE_STATE" in node  # its events


def test_the_live_feeds_answer_unchanged_until_an_event_comes(server, tmp_path):
    from tests.api.helpers import waits_for

    gate = tmp_path / "gate"
    gid = submit(server, f'<node id="a">{waits_for(gate)}</node>')
    session = login(server)
    first = wait_for(lambda: (f := session.get(server.base + f"/ui/workflows/{gid}/live?after=0").json())
                     .get("nodes", {}) and "running" in f["nodes"].values() and f, what="a running")
    assert session.get(server.base + f"/ui/workflows/{gid}/live?after={first['last']}").json() == \
        {"last": first["last"]}
    gate.touch()
    later = wait_for(lambda: (f := session.get(server.base + f"/ui/workflows/{gid}/live?after={first['last']}")
                              .json()).get("state") == "succeeded" and f, what="the change")
    assert list(later["nodes"].values()) == ["succeeded"]
    events = session.get(server.base + f"/ui/workflows/{gid}/events.json?after=0&level=DEBUG").json()["events"]
    assert [e[0] for e in events] == sorted(e[0] for e in events) and any(e[5] == "succeeded" for e in events)


def test_behind_tls_the_session_cookie_is_secure(tmp_path, sqlite_template):
    import shutil

    from tests.api.helpers import Server, add_users

    shutil.copy(sqlite_template, tmp_path / "broker.db")
    url = f"sqlite:///{tmp_path / 'broker.db'}"
    add_users(url)
    tls = Server(url, tmp_path, {"BROKER_API_PUBLIC_URL": "https://broker.example.org"}).start()
    try:
        form = requests.get(tls.base + "/ui/login")
        assert "Secure" in form.headers["Set-Cookie"]  # the login form's cookie too
        token = re.search(r'name="login_token" value="([^"]+)"', form.text).group(1)
        # the TLS proxy is not here: the test sends the Secure cookie back over http itself
        answer = requests.post(tls.base + "/ui/login", data={"user": "alice", "password": "alice-pw",
                                                             "login_token": token},
                               headers={"Cookie": f"broker_ui_login={token}"}, allow_redirects=False)
        assert answer.status_code == 303 and "Secure" in answer.headers["Set-Cookie"]
    finally:
        tls.stop(expect=None)
        tls.close()


def test_a_sweep_is_one_box_with_its_members_by_state_and_its_page_lists_them(server):
    from tests.api.helpers import EXAMPLES

    gid = server.core().submit({"workflowContent": (EXAMPLES / "sweep.xml").read_text(encoding="utf-8")}).globalId
    wait_for(lambda: server.core().getStatusInfoForId(gid).state == "succeeded", what="the sweep")
    session = login(server)
    page = session.get(server.base + f"/ui/workflows/{gid}").text
    assert page.count('class="box state-') == 3  # prepare, scan, collect: the members are not boxes
    assert "6 members: 6 succeeded" in page
    sweep_id = re.search(r'href="/ui/nodes/(\d+)" class="box state-succeeded" data-node="\d+" aria-label="scan:',
                         page).group(1)
    members = session.get(server.base + f"/ui/nodes/{sweep_id}").text
    assert all(f">scan[{i}]</a>" in members for i in range(6))


def test_a_form_posted_after_the_session_ended_leads_to_the_login_not_to_an_action(server):
    answer = requests.post(server.base + "/ui/act", data={"action": "cancel", "target": "wf-x", "csrf": "x"},
                           cookies={"broker_ui": "ended"}, allow_redirects=False)
    assert answer.status_code == 303 and answer.headers["Location"] == "/ui/login?next=%2Fui%2Fworkflows"


def test_the_node_page_lists_every_attempt_and_a_rerun_shows_its_estimated_end(server, tmp_path):
    from tests.api.helpers import waits_for

    first_gate, second_gate = tmp_path / "one", tmp_path / "two"
    body = '<node id="step">{}</node>'
    first = submit(server, body.format(waits_for(first_gate)), name="again")
    session = login(server)
    wait_for(lambda: server.core().getStatusInfoForId(f"{first}/step").state == "running", what="step running")
    page = session.get(server.base + f"/ui/workflows/{first}").text
    node_id = re.search(r'href="/ui/nodes/(\d+)"', page).group(1)
    form = session.get(server.base + f"/ui/confirm?action=cancel&target={first}/step").text
    session.post(server.base + "/ui/act", data={"csrf": csrf_of(form), "action": "cancel", "target": f"{first}/step"})
    wait_for(lambda: server.core().getStatusInfoForId(f"{first}/step").state == "cancelled", what="cancelled")
    session.post(server.base + "/ui/act", data={"csrf": csrf_of(form), "action": "restart", "target": f"{first}/step"})
    first_gate.touch()
    wait_for(lambda: server.core().getStatusInfoForId(first).state == "succeeded", what="the first run")
    node = session.get(server.base + f"/ui/nodes/{node_id}").text
    attempts = re.findall(r"<tr><td>(\d+)</td>", node.split('id="attempts"')[1].split("</table>")[0])
    assert attempts == ["2", "1"]  # newest first
    assert "cancelled" in node and "succeeded" in node
    second = submit(server, body.format(waits_for(second_gate)), name="again")
    wait_for(lambda: server.core().getStatusInfoForId(f"{second}/step").state == "running", what="the rerun")
    estimated = re.search(r"<dt>Estimated end</dt><dd id=\"wf-eta\">([^<]*)</dd>",
                          session.get(server.base + f"/ui/workflows/{second}").text).group(1)
    second_gate.touch()
    assert "UTC (p10" in estimated, estimated
