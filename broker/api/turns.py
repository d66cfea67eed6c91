"""Requests taken in turns by client: one busy client cannot make another wait behind its queue.

The request threads take whole requests from one queue. First come, first served, a user keeping a hundred
connections busy with valid calls put a hundred requests before every other user's next one: each of theirs
waited for all of his. Here the queue holds one line per client, and the threads take the head of each
line in turn (round robin): whoever has a request waiting is served after at most one request of each other
client with a request waiting, however many that client has queued. And one client holds at most half the
request threads at once: another's request finds a thread free instead of waiting for one of his calls to end.

A client is the connection's address and the user name its request claims (HTTP Basic): the password is
checked later, by a request thread, so the name is only a claim, but claiming another user's name puts a
request in that user's line only from that user's address. Requests without a name (WS-Security elf
pushes, the WSDL) share their address's line.
"""

from __future__ import annotations

import base64
import binascii
import collections
import threading
from typing import Generic, Hashable, TypeVar

from broker.api.intake import Request

T = TypeVar("T")

#: characters of a claimed user name that make the line's key (a longer claim is cut: it is only a key)
NAME_CHARS = 64


def client_key(address: str, request: Request) -> tuple[str, str]:
    """The line a request waits in: its connection's address and the user its Basic credentials name."""
    authorization = request.header("authorization") or ""
    scheme, _, token = authorization.partition(" ")
    name = ""
    if scheme.lower() == "basic" and len(token) <= 4 * NAME_CHARS + 1024:
        try:
            name = base64.b64decode(token.strip(), validate=True).decode("utf-8", "replace").partition(":")[0]
        except (binascii.Error, ValueError):
            name = ""
    return address, name[:NAME_CHARS]


class Turns(Generic[T]):
    """A queue of items in lines by key, taken one line at a time in turn; FIFO within a line.

    ``per_key``: items of one key out at once at most (taken and not yet ``done``): a line at its limit is
    passed over, keeping its place, until one of its items is done. The server sets it to half its request
    threads, so that a client keeping every thread busy leaves some free for the next client's request,
    which then waits for no call of his to end. ``stop(n)`` makes n ``get()`` calls return None once no item
    is left (the request threads' end)."""

    def __init__(self, per_key: int = 0) -> None:
        self.per_key = per_key
        self._changed = threading.Condition(threading.Lock())
        self._lines: dict[Hashable, collections.deque[T]] = {}
        #: the keys of the lines with items, in the order they are served next
        self._turns: collections.deque[Hashable] = collections.deque()
        #: key -> items taken and not done yet
        self._out: collections.Counter[Hashable] = collections.Counter()
        self._stops = 0

    def put(self, key: Hashable, item: T) -> None:
        with self._changed:
            line = self._lines.get(key)
            if line is None:
                line = self._lines[key] = collections.deque()
                self._turns.append(key)
            line.append(item)
            self._changed.notify()

    def stop(self, takers: int = 1) -> None:
        """Make ``takers`` get() calls return None once no item is left."""
        with self._changed:
            self._stops += takers
            self._changed.notify_all()

    def get(self) -> tuple[Hashable, T] | None:
        """(key, item) at the head of the next line that may have one more out (blocking until there is
        one), or None after a stop() once no item is left. Each item taken must be marked ``done``."""
        with self._changed:
            while True:
                for index, key in enumerate(self._turns):
                    if not self.per_key or self._out[key] < self.per_key:
                        break
                else:
                    if self._stops and not self._turns:
                        self._stops -= 1
                        return None
                    self._changed.wait()
                    continue
                del self._turns[index]
                line = self._lines[key]
                item = line.popleft()
                if line:
                    self._turns.append(key)  # its next item waits for every other line's turn
                else:
                    del self._lines[key]  # (no line kept for a client that went quiet)
                self._out[key] += 1
                return key, item

    def done(self, key: Hashable) -> None:
        """An item of ``key`` taken by get() is done."""
        with self._changed:
            self._out[key] -= 1
            if self._out[key] <= 0:
                del self._out[key]
            self._changed.notify()

    def __len__(self) -> int:
        with self._changed:
            return sum(len(line) for line in self._lines.values())


__all__ = ["NAME_CHARS", "Turns", "client_key"]
