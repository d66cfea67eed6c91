"""Requests taken in turns by client (broker.api.turns): the logic alone; the server's use of it is tested
through a real ``broker serve`` in test_connections.py."""

from __future__ import annotations

import base64
import threading

from broker.api.intake import Request
from broker.api.turns import NAME_CHARS, Turns, client_key


def request(authorization: str | None) -> Request:
    fields = [("authorization", authorization)] if authorization is not None else []
    return Request("POST", "/broker", "HTTP/1.1", fields)


def test_lines_are_served_in_turns_and_each_in_the_order_it_came():
    turns: Turns[str] = Turns()
    for i in range(4):
        turns.put("bob", f"b{i}")
    turns.put("alice", "a0")
    turns.put("carol", "c0")
    turns.put("alice", "a1")
    assert len(turns) == 7
    assert [take(turns) for _ in range(7)] == ["b0", "a0", "c0", "b1", "a1", "b2", "b3"]
    # a client that went quiet and comes back waits behind those with work, not before them
    turns.put("bob", "b4")
    turns.put("bob", "b5")
    turns.put("alice", "a2")
    assert [take(turns) for _ in range(3)] == ["b4", "a2", "b5"]


def take(turns: Turns[str]) -> str:
    """The next item, marked done at once."""
    taken = turns.get()
    assert taken is not None
    turns.done(taken[0])
    return taken[1]


def test_a_client_at_its_limit_of_items_out_is_passed_over_keeping_its_place():
    turns: Turns[str] = Turns(per_key=2)
    for i in range(4):
        turns.put("bob", f"b{i}")
    assert turns.get() == ("bob", "b0") and turns.get() == ("bob", "b1")
    turns.put("alice", "a0")
    assert turns.get() == ("alice", "a0")  # bob has two out: passed over
    got: list = []
    taker = threading.Thread(target=lambda: got.append(turns.get()))
    taker.start()  # waits: bob's next may not go out before one of his is done
    turns.put("alice", "a1")
    taker.join(10)
    assert got == [("alice", "a1")]
    taker = threading.Thread(target=lambda: got.append(turns.get()))
    taker.start()
    turns.done("bob")
    taker.join(10)
    assert got[-1] == ("bob", "b2")


def test_stop_ends_a_waiting_taker_once_the_work_is_done():
    turns: Turns[str] = Turns()
    turns.put("bob", "b0")
    turns.stop()
    assert turns.get() == ("bob", "b0") and turns.get() is None
    got: list = []
    taker = threading.Thread(target=lambda: got.append(turns.get()))
    taker.start()
    turns.put("alice", "a0")
    taker.join(10)
    assert got == [("alice", "a0")]
    turns.stop()
    assert turns.get() is None


def test_a_client_is_its_address_and_the_user_its_basic_credentials_claim():
    basic = "Basic " + base64.b64encode(b"alice:secret").decode()
    assert client_key("10.0.0.1", request(basic)) == ("10.0.0.1", "alice")
    assert client_key("10.0.0.2", request(basic)) == ("10.0.0.2", "alice")
    assert client_key("10.0.0.1", request("basic  " + base64.b64encode(b"bob:x").decode())) == ("10.0.0.1", "bob")
    assert client_key("10.0.0.1", request("Basic QQ==")) == ("10.0.0.1", "A")  # no colon: all of it is the name
    # no claim, another scheme, or one that does not decode or is too long to be one: the address's line
    for authorization in (None, "Bearer abc", "Basic !!!", "Basic " + "A" * 10_000):
        assert client_key("10.0.0.1", request(authorization)) == ("10.0.0.1", ""), authorization
    long = "Basic " + base64.b64encode(b"x" * 200 + b":pw").decode()
    assert client_key("10.0.0.1", request(long)) == ("10.0.0.1", "x" * NAME_CHARS)
