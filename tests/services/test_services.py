"""Smoke tests: each real service the suite uses works through its fixture, over a real connection."""

from __future__ import annotations

import queue
import subprocess
import uuid
from typing import Any

import paramiko
import pytest
import stomp

from tests.fixtures import wait_for
from tests.fixtures.services import ActiveMQ, RabbitMQ, Slurm, Sshd

pytestmark = pytest.mark.services

#: seconds a message, a receipt or a job may take before the test fails
DEADLINE = 30.0
SLURM_TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                  "DEADLINE", "PREEMPTED"}


class Collector(stomp.ConnectionListener):
    """Hands every MESSAGE and RECEIPT frame to a queue the test reads with a timeout."""

    def __init__(self) -> None:
        self.messages: queue.Queue[Any] = queue.Queue()
        self.receipts: queue.Queue[str] = queue.Queue()

    def on_message(self, frame: Any) -> None:
        self.messages.put(frame)

    def on_receipt(self, frame: Any) -> None:
        self.receipts.put(frame.headers["receipt-id"])


def connect(host: str, port: int, user: str | None = None, password: str | None = None,
            vhost: str | None = None) -> tuple[stomp.Connection12, Collector]:
    """A STOMP 1.2 connection with a collecting listener."""
    conn = stomp.Connection12([(host, port)], auto_content_length=False, vhost=vhost)
    collector = Collector()
    conn.set_listener("collector", collector)
    conn.connect(user, password, wait=True)
    return conn, collector


def send_and_receive(host: str, port: int, user: str | None = None, password: str | None = None,
                     vhost: str | None = None) -> Any:
    """Subscribe to a fresh queue, send one message with a custom header, return the frame received."""
    destination = f"/queue/broker-test.smoke.{uuid.uuid4().hex}"
    conn, collector = connect(host, port, user, password, vhost)
    try:
        conn.subscribe(destination, id="smoke", ack="auto")
        conn.send(destination, "hello from the smoke test", headers={"workflowId": "42"})
        return collector.messages.get(timeout=DEADLINE)
    finally:
        conn.disconnect()





def test_activemq_delivers_a_stomp_message_with_its_headers(activemq: ActiveMQ) -> None:
    frame = send_and_receive(activemq.host, activemq.stomp_port)
    assert frame.body == "hello from the smoke test"
    assert frame.headers["workflowId"] == "42"


@pytest.mark.slow
def test_activemq_keeps_a_persistent_message_across_a_kill_and_restart(restartable_activemq: ActiveMQ) -> None:
    broker = restartable_activemq
    if not broker.persistent:
        pytest.skip("ActiveMQ runs without a store (BROKER_TEST_ACTIVEMQ_PERSISTENT=0)")
    destination = f"/queue/broker-test.smoke.{uuid.uuid4().hex}"
    conn, collector = connect(broker.host, broker.stomp_port)
    conn.send(destination, "survivor", headers={"persistent": "true"}, receipt="sent-1")
    assert collector.receipts.get(timeout=DEADLINE) == "sent-1"
    conn.disconnect()

    broker.kill()
    assert not broker.is_running()
    broker.start()
    assert broker.is_running()

    conn, collector = connect(broker.host, broker.stomp_port)
    try:
        conn.subscribe(destination, id="after-restart", ack="auto")
        assert collector.messages.get(timeout=DEADLINE).body == "survivor"
    finally:
        conn.disconnect()


def test_rabbitmq_delivers_a_stomp_message_with_its_headers(rabbitmq: RabbitMQ) -> None:
    frame = send_and_receive(rabbitmq.host, rabbitmq.stomp_port, rabbitmq.user, rabbitmq.password,
                             rabbitmq.vhost)
    assert frame.body == "hello from the smoke test"
    assert frame.headers["workflowId"] == "42"


def slurm_job_state(job_id: str) -> str | None:
    """The job's state from scontrol, or from ``sacct -c`` once the job has left the controller."""
    shown = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True,
                           timeout=30, check=False)
    for field in shown.stdout.split():
        if field.startswith("JobState="):
            return field.removeprefix("JobState=")
    accounted = subprocess.run(["sacct", "-c", "-n", "--parsable2", "-o", "State", "-j", job_id],
                               capture_output=True, text=True, timeout=30, check=False)
    lines = accounted.stdout.split()
    return lines[-1] if lines else None


def test_slurm_runs_a_batch_job_as_the_test_user_to_completion(slurm: Slurm) -> None:
    output = slurm.workdir / f"smoke-{uuid.uuid4().hex}.out"
    submitted = subprocess.run(
        slurm.as_user(["sbatch", "--parsable", "-p", slurm.partition, "--chdir", str(slurm.workdir),
                       "-o", str(output), "--wrap", "id -un"]),
        capture_output=True, text=True, timeout=60, check=True)
    job_id = submitted.stdout.strip().split(";")[0]

    state = wait_for(lambda: (s := slurm_job_state(job_id)) in SLURM_TERMINAL and s, what=f"SLURM job {job_id}")

    assert state == "COMPLETED"
    assert output.read_text().strip() == slurm.user


def ssh_client(sshd: Sshd, known_hosts: str) -> paramiko.SSHClient:
    """A paramiko client that only accepts host keys listed in ``known_hosts``."""
    client = paramiko.SSHClient()
    client.load_host_keys(known_hosts)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(sshd.host, port=sshd.port, username=sshd.user, key_filename=str(sshd.key),
                   look_for_keys=False, allow_agent=False, timeout=DEADLINE)
    return client


def test_sshd_runs_a_command_as_the_test_user_with_a_checked_host_key(sshd: Sshd) -> None:
    client = ssh_client(sshd, str(sshd.known_hosts))
    try:
        _, stdout, _ = client.exec_command("id -un; exit 7", timeout=DEADLINE)
        status = stdout.channel.recv_exit_status()
        assert stdout.read().decode().strip() == sshd.user
    finally:
        client.close()
    assert status == 7


def test_sshd_is_refused_when_its_host_key_is_not_known(sshd: Sshd, tmp_path: Any) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        ssh_client(sshd, str(empty))
