"""conf/broker.service, the systemd unit of ``broker serve``: its settings, and ``systemd-analyze verify``."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from broker.config import Settings

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "conf" / "broker.service"


def unit() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read(UNIT, encoding="utf-8")
    return parser


def test_the_unit_restarts_on_failure_and_drains_on_sigterm_within_its_stop_timeout():
    service = unit()["Service"]
    assert service["ExecStart"].split()[1:] == ["serve", "--config", "/etc/broker/broker.ini"]
    assert service["Type"] == "simple" and service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"
    settings = Settings()
    # the drain, then the relay's last publishing, fit before systemd's SIGKILL
    assert float(service["TimeoutStopSec"]) > settings.api.drain_timeout + settings.events.stop_timeout + 30
    assert service["KillMode"] == "process"  # a stop leaves running payloads for the next start to adopt
    assert service["User"] == "root"  # payloads run as their owners through setpriv
    for binding in ("NoNewPrivileges", "CapabilityBoundingSet", "PrivateTmp", "ProtectHome"):
        assert binding not in service, f"{binding} would bind the payloads too"
    assert service["RestartPreventExitStatus"] == "2"  # a bad configuration is not retried


def test_systemd_analyze_verifies_the_unit(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    # verify checks that ExecStart exists: point it at this checkout's broker
    broker = Path(sys.executable).parent / "broker"
    text = UNIT.read_text(encoding="utf-8").replace("/opt/broker/.venv/bin/broker", str(broker))
    copy = tmp_path / "broker.service"
    copy.write_text(text, encoding="utf-8")
    done = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=120)
    problems = [line for line in (done.stdout + done.stderr).splitlines() if "broker.service" in line]
    assert done.returncode == 0 and not problems, done.stdout + done.stderr
