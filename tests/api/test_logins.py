"""Logins: a pair missing from the credential cache is checked once however many threads present it, the
checks are bounded (the gate), and cached logins expire at spread times, not all in the same second.

These drive the Authenticator in process on a real (migrated SQLite) database: what the server does with
them is tested through ``broker serve`` in test_connections.py (a storm of logins)."""

from __future__ import annotations

import threading

import pytest

from tests.api.helpers import add_users


@pytest.fixture
def authenticator(migrated_url, monkeypatch):
    """An Authenticator for 8 request threads whose password checks are counted (and made to overlap)."""
    from broker.api import identity
    from broker.persistence.db import make_engine, session_factory

    add_users(migrated_url)
    engine = make_engine(migrated_url)
    checks, running, most = [], [0], [0]
    lock, release = threading.Lock(), threading.Event()
    real = identity.verify_password

    def counted(password, stored):
        with lock:
            checks.append(password)
            running[0] += 1
            most[0] = max(most[0], running[0])
        release.wait(10)  # held until every thread of the test has arrived, so the checks would overlap
        try:
            return real(password, stored)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(identity, "verify_password", counted)
    auth = identity.Authenticator(session_factory(engine), ttl=60.0, threads=8)
    auth.counted = (checks, most, release)  # type: ignore[attr-defined]
    yield auth
    release.set()
    engine.dispose()


def in_threads(n: int, target) -> list:
    results: list = [None] * n
    barrier = threading.Barrier(n)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = target(i)
        except Exception as exc:  # noqa: BLE001 - the test looks at what each thread got
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    return threads, results


@pytest.mark.slow
def test_threads_presenting_the_same_credentials_share_one_check(authenticator):
    checks, _, release = authenticator.counted
    threads, results = in_threads(8, lambda i: authenticator.user("alice", "alice-pw"))
    from tests.fixtures import wait_for

    wait_for(lambda: len(checks) == 1 and len(authenticator._checks) == 1, what="the first check to start")
    release.set()
    for thread in threads:
        thread.join()
    assert len(checks) == 1
    assert {r.name for r in results} == {"alice"}


@pytest.mark.slow
def test_wrong_passwords_are_checked_at_most_half_the_threads_at_a_time_and_the_rest_are_busy(authenticator):
    from broker.api.passwords import Busy
    from broker.errors import InvalidCredentials

    checks, most, release = authenticator.counted
    threads, results = in_threads(8, lambda i: authenticator.user("bob", f"guess-{i}"))
    from tests.fixtures import wait_for

    # 4 of the 8 threads may enter the gate; the other 4 are refused at once
    wait_for(lambda: sum(isinstance(r, Busy) for r in results) == 4, what="four logins to be refused as busy")
    release.set()
    for thread in threads:
        thread.join()
    assert sum(isinstance(r, InvalidCredentials) for r in results) == 4
    from broker.api.passwords import HASH_SLOTS

    assert most[0] <= HASH_SLOTS and len(checks) == 4


def test_cached_logins_expire_at_spread_times_within_the_ttl():
    import time

    from broker.api.passwords import CredentialCache, Verified

    cache = CredentialCache(ttl=60.0)
    now = time.monotonic()
    for i in range(200):
        cache.put(f"user{i}", "pw", Verified(f"user{i}", "user", i))
    expiries = [expires - now for expires, _ in cache._entries.values()]
    assert all(29.9 <= e <= 60.1 for e in expiries)
    assert max(expiries) - min(expiries) > 10  # not all in the same second
