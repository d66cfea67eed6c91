"""The dashboard's pure parts and its list query: graph layout, sessions, redirects, forms, keyset paging."""

from __future__ import annotations

import datetime as dt

import pytest

from broker.ui import graph
from broker.ui.app import _local
from broker.ui.sessions import Sessions
from broker.ui.web import multipart


def test_a_diamond_is_drawn_in_three_layers_with_its_four_edges():
    layout = graph.layout([1, 2, 3, 4], [(1, 2), (1, 3), (2, 4), (3, 4)])
    assert [layout.boxes[i].layer for i in (1, 2, 3, 4)] == [0, 1, 1, 2]
    assert layout.boxes[2].y == layout.boxes[3].y != layout.boxes[1].y
    assert len(layout.lines) == 4
    assert all(line.y1 < line.y2 for line in layout.lines)  # parents above their children


def test_a_long_chain_and_a_wide_layer_stay_drawable():
    chain = list(range(5000))
    layout = graph.layout(chain, [(i, i + 1) for i in range(4999)])  # no recursion limit
    assert layout.boxes[4999].layer == 4999
    flat = graph.layout(list(range(100)), [])
    assert flat.width <= 2 * graph.MARGIN + graph.PER_ROW * (graph.BOX_W + graph.GAP_X)
    assert len({box.y for box in flat.boxes.values()}) == 9  # 100 boxes wrapped onto rows of 12


def test_a_session_ends_at_logout_when_idle_and_at_its_lifetime():
    now = [0.0]
    sessions = Sessions(idle=10, lifetime=25, clock=lambda: now[0])
    token = sessions.open("alice")
    assert sessions.get(token).user == "alice"
    now[0] = 9
    assert sessions.get(token) is not None  # each request restarts the idle clock
    now[0] = 18
    assert sessions.get(token) is not None
    now[0] = 26
    assert sessions.get(token) is None  # the lifetime, however active
    idle = sessions.open("bob")
    now[0] = 37
    assert sessions.get(idle) is None
    gone = sessions.open("carol")
    sessions.close(gone)
    assert sessions.get(gone) is None
    assert sessions.get("forged") is None and sessions.get("x" * 1000) is None


def test_sessions_are_bounded_and_csrf_tokens_compared_exactly():
    sessions = Sessions(capacity=3)
    tokens = [sessions.open(f"u{i}") for i in range(5)]
    assert [sessions.get(t) is not None for t in tokens] == [False, False, True, True, True]
    session = sessions.get(tokens[-1])
    assert session.csrf_ok(session.csrf)
    assert not session.csrf_ok(None) and not session.csrf_ok("") and not session.csrf_ok(session.csrf + "x")


@pytest.mark.parametrize("target", ["//evil.example/ui/", "https://evil.example/ui/", "/broker", "/ui/\\evil",
                                    "/ui/\nSet-Cookie: x", None, ""])
def test_redirects_after_a_form_stay_on_the_dashboard(target):
    assert _local(target) == "/ui/workflows"


def test_a_multipart_form_gives_its_fields_and_the_uploaded_files_text():
    body = (b"--B\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\ntok\r\n"
            b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"w.xml\"\r\n"
            b"Content-Type: text/xml\r\n\r\n<workflow/>\r\n--B--\r\n")
    assert multipart("multipart/form-data; boundary=B", body) == {"csrf": "tok", "file": "<workflow/>"}


def test_the_workflows_list_pages_by_key_through_every_row_once(sessions):
    from broker.persistence.models import User, Workflow
    from broker.ui import queries

    base = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    with sessions.begin() as s:
        alice, bob = User(name="alice"), User(name="bob")
        s.add_all([alice, bob])
        s.flush()
        for i in range(23):
            s.add(Workflow(global_id=f"wf-{i:02d}", owner_id=alice.id, name=f"n{i % 4}", descriptor="",
                           descriptor_sha256="0" * 64, plan="{}", event_level=2, state="running" if i % 3 else
                           "succeeded", submitted_at=base + dt.timedelta(minutes=i % 7)))
        s.add(Workflow(global_id="wf-bob", owner_id=bob.id, name="n0", descriptor="", descriptor_sha256="0" * 64,
                       plan="{}", event_level=2, state="running"))
        alice_id = alice.id
    with sessions() as s:
        for sort in queries.SORTS:
            for descending in (False, True):
                seen, cursor = [], None
                while True:
                    page = queries.workflows_page(s, alice_id, queries.Filters(), sort, descending, cursor, 5)
                    seen.extend(row.global_id for row in page.rows)
                    if page.next_cursor is None:
                        break
                    cursor = page.next_cursor
                assert sorted(seen) == [f"wf-{i:02d}" for i in range(23)], (sort, descending)
                assert len(seen) == 23
        only = queries.workflows_page(s, None, queries.Filters(state="succeeded", name="n1"), "id", False, None, 50)
        assert [row.global_id for row in only.rows] == ["wf-09", "wf-21"]
        with pytest.raises(ValueError):
            queries.workflows_page(s, alice_id, queries.Filters(), "submitted", True, "garbage", 5)


def test_the_live_feed_is_computed_once_per_interval_for_every_dashboard_and_keeps_its_scope(sessions):
    from broker.errors import NotFound
    from broker.api.passwords import Verified
    from broker.persistence.models import Event, Node, User, Workflow
    from broker.ui import live

    with sessions.begin() as s:
        alice, bob = User(name="alice"), User(name="bob")
        s.add_all([alice, bob])
        s.flush()
        wf = Workflow(global_id="wf-live", owner_id=alice.id, name="w", descriptor="", descriptor_sha256="0" * 64,
                      plan="{}", event_level=2, state="running")
        s.add(wf)
        s.flush()
        s.add(Node(workflow_id=wf.id, path="a", template="a", kind="node", state="running"))
        s.add(Event(workflow_id=wf.id, seq=1, actor="test", level=2, type="NODE_STATE", state="running"))
        users = Verified("alice", "user", alice.id), Verified("bob", "user", bob.id), Verified("root", "admin", 0)
    now = [0.0]
    computed = []
    feeds = live.LiveFeeds(fresh=1.0, clock=lambda: now[0])
    original = feeds._compute
    feeds._compute = lambda *a: computed.append(1) or original(*a)
    first = feeds.answer(sessions, users[0], "wf-live", 0)
    assert first["nodes"] and list(first["nodes"].values()) == ["running"]
    assert feeds.answer(sessions, users[2], "wf-live", 0) == first  # an admin sees it too
    assert feeds.answer(sessions, users[0], "wf-live", first["last"]) == {"last": first["last"]}
    with pytest.raises(NotFound):
        feeds.answer(sessions, users[1], "wf-live", 0)  # bob: from the cache as from the database
    assert len(computed) == 1
    with sessions.begin() as s:
        s.query(Node).update({"state": "succeeded"})
        s.query(Workflow).update({"state": "succeeded"})
        s.add(Event(workflow_id=wf.id, seq=2, actor="test", level=2, type="NODE_STATE", state="succeeded"))
    assert list(feeds.answer(sessions, users[0], "wf-live", 0)["nodes"].values()) == ["running"]  # still fresh
    now[0] = 1.5
    assert list(feeds.answer(sessions, users[0], "wf-live", 0)["nodes"].values()) == ["succeeded"]
    assert len(computed) == 2
    with pytest.raises(NotFound):
        feeds.answer(sessions, users[0], "wf-none", 0)


def test_the_events_feed_answers_from_a_shared_tail_and_reads_itself_only_when_further_behind(sessions):
    from broker.api.passwords import Verified
    from broker.errors import NotFound
    from broker.persistence.models import Event, User, Workflow
    from broker.ui import live

    with sessions.begin() as s:
        alice, bob = User(name="alice"), User(name="bob")
        s.add_all([alice, bob])
        s.flush()
        wf = Workflow(global_id="wf-ev", owner_id=alice.id, name="w", descriptor="", descriptor_sha256="0" * 64,
                      plan="{}", event_level=2, state="running")
        s.add(wf)
        s.flush()
        s.add_all([Event(workflow_id=wf.id, seq=i + 1, actor="t", level=4 if i % 2 else 2, type="NODE_STATE")
                   for i in range(500)])
        s.flush()
        ids = [e.id for e in s.query(Event).filter(Event.level <= 2).order_by(Event.id)]  # the 250 at level 2
        alice_user, bob_user = Verified("alice", "user", alice.id), Verified("bob", "user", bob.id)
    now = [0.0]
    tails = live.EventTails(fresh=1.0, clock=lambda: now[0])
    row = lambda e: [e.id]  # noqa: E731
    assert [r[0] for r in tails.answer(sessions, alice_user, "wf-ev", 2, None, ids[-3], row)] == ids[-2:]
    assert [r[0] for r in tails.answer(sessions, alice_user, "wf-ev", 2, None, ids[-201], row)] == ids[-200:]
    behind = tails.answer(sessions, alice_user, "wf-ev", 2, None, 0, row)  # beyond the tail: read, oldest first
    assert [r[0] for r in behind] == ids[:live.TAIL]
    with pytest.raises(NotFound):
        tails.answer(sessions, bob_user, "wf-ev", 2, None, 0, row)
    with sessions.begin() as s:
        s.add(Event(workflow_id=wf.id, seq=501, actor="t", level=1, type="NODE_STATE"))
    assert tails.answer(sessions, alice_user, "wf-ev", 2, None, ids[-1], row) == []  # still fresh
    now[0] = 2
    assert len(tails.answer(sessions, alice_user, "wf-ev", 2, None, ids[-1], row)) == 1


def test_the_session_cookie_is_secure_behind_tls_only():
    from broker.ui.web import session_cookie

    assert "Secure" in session_cookie("c", "t", secure=True)[1]
    assert "Secure" not in session_cookie("c", "t", secure=False)[1]
    cleared = session_cookie("c", "", secure=False, max_age=0)[1]
    assert cleared.startswith("c=;") and "Max-Age=0" in cleared


def test_the_pages_estimates_are_kept_as_the_apis_so_a_reload_loop_does_not_recompute_them(monkeypatch):
    from types import SimpleNamespace

    from broker.api.estimated import TTL, EstimateCache
    from broker.ui import pages

    now = [0.0]
    computed = []

    def estimate_workflow(s, workflow_id, slots):
        computed.append((workflow_id, slots))
        now[0] += 3.0  # a huge workflow: three seconds an estimate
        return None

    monkeypatch.setattr(pages, "estimate_workflow", estimate_workflow)
    ui = SimpleNamespace(api=SimpleNamespace(estimates=EstimateCache(clock=lambda: now[0]),
                                             settings=SimpleNamespace(engine=SimpleNamespace(max_in_flight=7))))
    for _ in range(70):  # a page reloaded in a loop, a second apart, for 73 s
        pages.workflow_estimate(ui, None, 42, "wf-big")
        now[0] += 1.0
    assert computed[0] == (42, 7)
    # 3 s an estimate, kept 3 / ESTIMATE_SHARE = 60 s: the first, and one after the 63rd second
    assert len(computed) == 2, computed
    assert TTL < 60
