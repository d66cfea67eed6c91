"""STOMP over TLS (stomp+ssl://) to the real ActiveMQ: events arrive; an untrusted or misnamed bus is refused
with the reason, and events wait in the outbox."""

from __future__ import annotations

import pytest

from broker.config import EventsSettings
from broker.errors import ConfigError
from broker.events.buses import open_publisher
from broker.events.publishers import BusError
from broker.events.routing import user_topic
from broker.states import WorkflowState
from tests.events.helpers import (StompConsumer, all_sent, bus_broker, has_sentinel, published_rows, send_sentinel,
                                  sweep_document, unique_user, without_sentinel)
from tests.fixtures import wait_for


@pytest.fixture
def tls_bus(activemq):
    if not activemq.stomp_ssl_url:
        pytest.fail("the test ActiveMQ has no TLS connector (tests/services/activemq.sh env printed no "
                    "BROKER_TEST_ACTIVEMQ_STOMP_SSL_URL)")
    return activemq


@pytest.mark.slow
def test_a_workflows_events_arrive_through_a_tls_connection(tls_bus, migrated_url, tmp_path):
    user = unique_user()
    topic = user_topic(user)
    consumer = StompConsumer(tls_bus.stomp_url, topic).start()  # a plain consumer: the bus is one
    broker = bus_broker(migrated_url, tmp_path, tls_bus.stomp_ssl_url, ssl_ca_file=tls_bus.ca_file).start()
    try:
        wf, state = broker.run(sweep_document(), owner=user)
        assert state is WorkflowState.SUCCEEDED
        wait_for(lambda: all_sent(broker.sessions, wf), what="every outbox row marked sent over TLS")
        send_sentinel(tls_bus.stomp_url, topic)
        consumer.wait(has_sentinel, "the sentinel after the workflow's events")
        rows = published_rows(broker.sessions, topic, wf)
    finally:
        broker.stop()
        consumer.disconnect()
    assert [m.event_id for m in without_sentinel(consumer.messages)] == [str(i) for i, _, _ in rows]
    assert rows and all(sent for _, _, sent in rows)


def _connect(url: str, **settings: str) -> None:
    publisher = open_publisher(EventsSettings(url=url, connect_timeout=5.0, **settings))
    try:
        publisher.connect(5.0)
    finally:
        publisher.close()


def test_a_bus_whose_certificate_is_not_trusted_is_refused_with_the_reason(tls_bus):
    _connect(tls_bus.stomp_ssl_url, ssl_ca_file=tls_bus.ca_file)  # the right CA: connects
    # the server sends the test CA in its chain: a CA the system does not trust
    with pytest.raises(BusError, match="certificate is not accepted: self-signed certificate in certificate chain"
                                       r".*\(\[events\] ssl_ca_file is empty"):
        _connect(tls_bus.stomp_ssl_url)  # the system's CAs do not know the test CA
    # the certificate names localhost, not 127.0.0.1: the same server under a name it does not carry
    misnamed = tls_bus.stomp_ssl_url.replace("localhost", "127.0.0.1")
    with pytest.raises(BusError, match="certificate is not accepted: .*(mismatch|not valid for)"):
        _connect(misnamed, ssl_ca_file=tls_bus.ca_file)


def test_a_tls_file_that_cannot_be_read_is_a_configuration_error(tmp_path):
    with pytest.raises(ConfigError, match=r"\[events\] ssl_ca_file: cannot read .*missing.pem"):
        open_publisher(EventsSettings(url="stomp+ssl://127.0.0.1:1", ssl_ca_file=str(tmp_path / "missing.pem")))


@pytest.mark.slow
def test_events_wait_in_the_outbox_while_the_bus_is_not_trusted(tls_bus, migrated_url, tmp_path, caplog):
    broker = bus_broker(migrated_url, tmp_path, tls_bus.stomp_ssl_url).start()  # no CA configured
    try:
        wf, state = broker.run(sweep_document(), owner=unique_user())
        assert state is WorkflowState.SUCCEEDED
        # the operator's one line says why
        wait_for(lambda: "event relay: cannot connect to localhost" in caplog.text
                 and "certificate is not accepted" in caplog.text, what="the relay's warning")
        assert not all_sent(broker.sessions, wf)
    finally:
        broker.stop()
