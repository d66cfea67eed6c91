"""Publishers: how the relay hands a window of messages to a bus and learns that the bus has them.

One small interface, two implementations chosen by the URL scheme of ``[events] url``:

- ``stomp://host:port`` (several: ``stomp://h1:61613,h2:61613``, tried in order): STOMP 1.2 with stomp.py
  (broker.events.stompbus); ``stomp+ssl://`` the same over TLS (the bus's certificate is verified, host
  name included, against ``[events] ssl_ca_file`` or the system's CAs);
- ``memory://NAME``: an in-process bus for unit tests (:class:`MemoryBus`), with switches to take it down,
  hold receipts back or refuse a destination.

A window is one bus transaction: BEGIN, one SEND per message, COMMIT asking for a RECEIPT (the SENDs may be
handed over before the COMMIT: :meth:`Publisher.flush`). The bus stores
the window's persistent messages at the COMMIT (one disk sync for the whole window) and its receipt says
it has them all; a window whose commit was not confirmed delivered nothing. ActiveMQ marks a transaction
rollback-only when it refuses one of its messages (not authorized), so the COMMIT then fails with an
ERROR and nothing of the window is delivered; the refusal itself comes as an ERROR frame without a
receipt id. (Per-message receipts would name the refused message, but measured on ActiveMQ 5.17 they
cut a window's throughput about 5 times: 1,400 instead of 6,000-7,300 messages/s with windows of 200.)

A publisher is used by one thread (the relay's); only its receipt bookkeeping is shared with the bus's
receiver thread.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol
from urllib.parse import urlsplit

from broker.errors import BrokerError, ConfigError


class BusError(BrokerError):
    """Raised when the message bus cannot be reached, refuses the connection or drops it."""

    retryable = True


@dataclass(frozen=True, slots=True)
class Message:
    """One message to publish."""

    destination: str
    #: header name -> string value (fixed names; stomp.py escapes the values under STOMP 1.2)
    headers: Mapping[str, str]
    #: UTF-8, without NUL
    body: bytes


@dataclass(frozen=True, slots=True)
class Confirmations:
    """What the bus answered while the relay waited for receipts."""

    #: receipts the bus sent back
    received: frozenset[str]
    #: receipt id -> the bus's error message, for frames it refused (a failed COMMIT)
    rejected: Mapping[str, str] = field(default_factory=dict)
    #: ERROR frames without a receipt id on a live connection (a refused SEND), in order
    errors: tuple[str, ...] = ()
    #: why the connection failed or the wait ended early, if it did
    failure: str | None = None

    def confirmed(self, receipt: str) -> bool:
        """Whether ``receipt`` came back with no refusal of any kind on the way."""
        return receipt in self.received and not self.errors and self.failure is None


class Publisher(Protocol):
    """The relay's view of a bus."""

    def connect(self, timeout: float) -> None:
        """Open a connection; raises BusError."""

    def connected(self) -> bool:
        """Whether the last connection is still usable."""

    def reachable(self, timeout: float) -> bool:
        """A cheap probe of a bus that is down (no login, nothing sent): whether it accepts connections."""

    def begin(self, transaction: str) -> None:
        """Start a transaction; raises BusError (the connection is then unusable)."""

    def send(self, message: Message, transaction: str) -> None:
        """Send one message in a transaction; raises BusError (the connection is then unusable)."""

    def flush(self, transaction: str) -> None:
        """Hand the transaction's messages to the bus now, uncommitted (it holds them until the COMMIT and
        discards them if the connection ends first); raises BusError (the connection is then unusable)."""

    def commit(self, transaction: str, receipt: str) -> None:
        """Commit a transaction (its messages not flushed yet go with it), asking for a receipt; raises BusError."""

    def wait(self, receipts: Sequence[str], timeout: float) -> Confirmations:
        """Wait until every receipt arrived or was refused, or the connection failed, at most ``timeout`` s.

        Forgets the receipts and ERROR frames it reports, so each wait reports what came since the last.
        """

    def close(self) -> None:
        """Disconnect (never raises)."""


def parse_stomp_url(url: str) -> list[tuple[str, int]]:
    """``stomp://h1:61613,h2:61613`` -> [(h1, 61613), (h2, 61613)]. Raises ConfigError."""
    rest = url.partition("://")[2]
    if "@" in rest:
        raise ConfigError("[events] url: put the bus user in [events] login and passcode, not in the URL")
    hosts = []
    for item in rest.rstrip("/").split(","):
        parts = urlsplit("stomp://" + item.strip())
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or port is None or parts.path:
            raise ConfigError(f"[events] url: expected stomp[+ssl]://host:port[,host:port...], got {url!r}")
        hosts.append((parts.hostname, port))
    return hosts


# ----------------------------------------------------------------------------------------------- memory

#: messages a MemoryBus keeps for its readers (the older ones are dropped, still counted)
MEMORY_BUS_KEEP = 50_000


class MemoryBus:
    """An in-process bus for unit tests; ``memory://NAME`` names one, shared within the process.

    It behaves as ActiveMQ does: messages are delivered at COMMIT; a refused message makes its whole
    transaction fail at COMMIT, with an ERROR frame for the message and one for the COMMIT. It keeps the
    last :data:`MEMORY_BUS_KEEP` messages for the tests to read, and counts them all: a benchmark's run of a
    100,000-member sweep publishes a million messages, which kept whole held 600 MB of the broker's heap
    and made every full collection walk them.
    """

    _buses: ClassVar[dict[str, MemoryBus]] = {}
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, name: str):
        self.name = name
        self.cond = threading.Condition()
        #: the last MEMORY_BUS_KEEP messages the bus delivered, in order
        self.messages: deque[Message] = deque(maxlen=MEMORY_BUS_KEEP)
        #: how many messages the bus delivered in all
        self.delivered = 0
        #: True: connections are refused and open ones fail
        self.down = False
        #: True: commits are delivered but their receipts held back until :meth:`release`
        self.hold = False
        #: destination -> error message: sends there are refused
        self.refuse: dict[str, str] = {}
        self._generation = 0
        self._held: list[str] = []
        self._received: set[str] = set()
        self._rejected: dict[str, str] = {}
        self._errors: list[str] = []

    @classmethod
    def named(cls, name: str) -> MemoryBus:
        """The bus called ``name`` (created at first use)."""
        with cls._registry_lock:
            bus = cls._buses.get(name)
            if bus is None:
                bus = cls._buses[name] = cls(name)
            return bus

    def set_down(self, down: bool) -> None:
        """Take the bus down (open connections fail, held receipts are lost) or bring it back."""
        with self.cond:
            self.down = down
            if down:
                self._generation += 1
                self._held.clear()
            self.cond.notify_all()

    def release(self) -> None:
        """Send the receipts held back so far."""
        with self.cond:
            self._received.update(self._held)
            self._held.clear()
            self.cond.notify_all()

    def wait_for(self, count: int, timeout: float) -> bool:
        """Wait until the bus delivered at least ``count`` messages."""
        with self.cond:
            return self.cond.wait_for(lambda: self.delivered >= count, timeout)


class MemoryPublisher:
    """A publisher on a :class:`MemoryBus`."""

    def __init__(self, bus: MemoryBus):
        self.bus = bus
        self._generation: int | None = None
        #: open transactions: messages, and whether one was refused (rollback only)
        self._open: dict[str, tuple[list[Message], list[bool]]] = {}

    def _alive(self) -> bool:
        return self._generation is not None and not self.bus.down and self._generation == self.bus._generation

    def _check(self) -> None:
        if not self._alive():
            raise BusError(f"memory bus {self.bus.name!r}: connection lost")

    def connect(self, timeout: float) -> None:
        with self.bus.cond:
            if self.bus.down:
                raise BusError(f"memory bus {self.bus.name!r} is down")
            self._generation = self.bus._generation
            self._open.clear()

    def connected(self) -> bool:
        with self.bus.cond:
            return self._alive()

    def reachable(self, timeout: float) -> bool:
        with self.bus.cond:
            return not self.bus.down

    def begin(self, transaction: str) -> None:
        with self.bus.cond:
            self._check()
            self._open[transaction] = ([], [False])

    def send(self, message: Message, transaction: str) -> None:
        bus = self.bus
        with bus.cond:
            self._check()
            messages, rollback_only = self._open[transaction]
            refused = bus.refuse.get(message.destination)
            if refused is not None:
                bus._errors.append(refused)
                rollback_only[0] = True
            else:
                messages.append(message)
            bus.cond.notify_all()

    def flush(self, transaction: str) -> None:
        with self.bus.cond:
            self._check()  # its sends are held in the open transaction already

    def commit(self, transaction: str, receipt: str) -> None:
        bus = self.bus
        with bus.cond:
            self._check()
            messages, rollback_only = self._open.pop(transaction)
            if rollback_only[0]:
                bus._rejected[receipt] = "COMMIT FAILED: Transaction marked rollback only"
            else:
                bus.messages.extend(messages)
                bus.delivered += len(messages)
                if bus.hold:
                    bus._held.append(receipt)
                else:
                    bus._received.add(receipt)
            bus.cond.notify_all()

    def wait(self, receipts: Sequence[str], timeout: float) -> Confirmations:
        bus = self.bus
        wanted = set(receipts)
        with bus.cond:
            bus.cond.wait_for(lambda: not self._alive() or wanted <= (bus._received | bus._rejected.keys()),
                              timeout)
            received = frozenset(wanted & bus._received)
            rejected = {r: bus._rejected.pop(r) for r in wanted if r in bus._rejected}
            bus._received -= wanted
            errors, bus._errors = tuple(bus._errors), []
            failure = None if self._alive() else "the bus went down"
        if failure is None and len(received) + len(rejected) < len(wanted):
            failure = f"no receipt within {timeout:g} s"
        return Confirmations(received, rejected, errors, failure)

    def close(self) -> None:
        self._generation = None
        self._open.clear()
