"""The local launcher starting payloads as another account (a root broker): credentials, umask, a clean
environment, the work directory's owner, and the broker still watching, cancelling and recovering them."""

import os
import signal

import pytest

from broker import runas
from broker.elf import elf
from broker.errors import ResourceError
from broker.launchers import base
from broker.launchers.local import LocalLauncher
from tests.fixtures import wait_for
from tests.launchers.helpers import Exits, request, run_to_end

pytestmark = pytest.mark.usefixtures("local_kind")


@pytest.fixture
def launcher(monkeypatch):
    # something of the broker's own environment that must never reach a payload started as an account
    monkeypatch.setenv("BROKER_SECRET_OF_THE_BROKER", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "the broker's")
    with LocalLauncher(kill_grace=0.5) as it:
        yield it


@pytest.mark.parametrize("switch", ["setpriv", "fork"])
def test_a_payload_runs_with_the_accounts_ids_umask_077_and_a_clean_environment(launcher, open_tmp, test_accounts,
                                                                                 monkeypatch, switch, local_kind):
    if switch == "fork":  # a machine without util-linux setpriv: Popen's own switch
        monkeypatch.setattr(runas, "SETPRIV", None)
    else:
        assert runas.SETPRIV is not None
    first = test_accounts.first
    workdir = open_tmp / "wf" / "n1" / "1"
    text = ('echo "@broker output who=\\"$(id -un)\\""; echo "@broker output ids=\\"$(id -u):$(id -g):$(id -G)\\""\n'
            'echo "@broker output umask=\\"$(umask)\\""; touch made; env -0 > env.bin\n')
    hostile = "it's $(touch PWNED) `touch PWNED2` \"x\"\nline 2\\"
    handle = launcher.launch(request(workdir, text, env=(("WB_NODE_ID", "n1"), ("NODE_VAR", hostile))),
                             run_as=first, host_env=(("OMP_NUM_THREADS", "1"),))
    result = run_to_end(launcher, handle)
    assert result.outcome == base.SUCCEEDED, result.message
    groups = " ".join(str(g) for g in sorted(set(first.groups) | {first.gid}))
    assert result.outputs == {"who": first.login, "ids": f"{first.uid}:{first.gid}:{groups}", "umask": "0077"}
    env = dict(item.split("=", 1) for item in (workdir / "env.bin").read_text().split("\0") if item)
    env.pop("PWD", None)  # the shell sets it
    assert env == {"HOME": first.home, "USER": first.login, "LOGNAME": first.login, "SHELL": first.shell,
                   "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1",
                   "WB_NODE_ID": "n1", "NODE_VAR": hostile, "WB_WORKDIR": str(workdir)}
    assert not list(workdir.glob("PWNED*"))  # values are data, never shell code
    st = os.stat(workdir)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (first.uid, first.gid, 0o700)
    # an agent gets the environment with the start request: no env.sh
    for name in ("made", "payload", "stdout") + (("env.sh",) if local_kind == "wrapper" else ()):
        st = os.stat(workdir / name)
        assert (st.st_uid, st.st_mode & 0o777) == (first.uid, 0o600), name
    assert os.stat(workdir.parent).st_mode & 0o777 == 0o711


def test_another_accounts_payload_cannot_read_the_work_directory(launcher, open_tmp, test_accounts):
    first, second = test_accounts.first, test_accounts.second
    mine = open_tmp / "wf" / "n1" / "1"
    result = run_to_end(launcher, launcher.launch(request(mine, "echo secret > secret.txt"), run_as=first))
    assert result.outcome == base.SUCCEEDED
    theirs = open_tmp / "wf" / "n2" / "1"
    text = f'cat "{mine}/secret.txt" || ls "{mine}" || ls "{open_tmp}/wf" || exit 9'
    result = run_to_end(launcher, launcher.launch(request(theirs, text, node_id=2), run_as=second))
    assert (result.outcome, result.exit_code) == (base.FAILED, 9)
    assert "Permission denied" in (theirs / "stderr").read_text()


def test_a_payload_of_another_account_is_cancelled_and_recovered_by_the_broker(launcher, open_tmp, test_accounts):
    workdir = open_tmp / "wf" / "n1" / "1"
    handle = launcher.launch(request(workdir, "touch started; exec sleep 60"), run_as=test_accounts.first)
    wait_for(lambda: (workdir / "started").exists())
    with LocalLauncher(kill_grace=0.5) as other:  # a restarted broker: adopts the attempt by its files
        found = other.recover(handle.node_id, handle.attempt, str(workdir), handle.job_id)
        assert found.status == "running"
    exits = Exits()
    launcher.watch(handle, exits)
    launcher.cancel(handle)
    exits.next()
    assert launcher.collect(handle).outcome == base.CANCELLED


def test_a_payload_that_cannot_start_as_the_account_fails_with_the_reason(launcher, open_tmp, tmp_path,
                                                                          test_accounts, local_kind):
    # the work root in a directory of root's mode 0700 (tmp_path): the account cannot reach its directory
    workdir = tmp_path / "wf" / "n1" / "1"
    if local_kind == "agent":  # the agent, running as the account, refuses the start itself
        with pytest.raises(ResourceError, match=f"cannot start in {workdir}: Permission denied"):
            launcher.launch(request(workdir, "touch ran"), run_as=test_accounts.first)
        assert not (workdir / "ran").exists() and not (workdir / "pid").exists()
        return
    result = run_to_end(launcher, launcher.launch(request(workdir, "touch ran"), run_as=test_accounts.first))
    assert result.outcome == base.LOST, result.message  # not even its exit status could be written
    assert not (workdir / "ran").exists()


def test_files_a_payload_replaces_with_links_or_fifos_are_never_followed_by_the_broker(launcher, open_tmp,
                                                                                       test_accounts):
    # as root, the broker reads the attempt's files: a link to a file only root may read would leak it, a
    # FIFO would block the reading thread for good
    secret = open_tmp / "root-only"
    secret.write_text('@broker output stolen="yes"\n12\n')
    secret.chmod(0o600)
    workdir = open_tmp / "wf" / "n1" / "1"
    text = f'rm -f stdout; ln -s "{secret}" stdout; mkfifo fifo\n'
    result = run_to_end(launcher, launcher.launch(request(workdir, text), run_as=test_accounts.first))
    assert (result.outcome, result.outputs) == (base.SUCCEEDED, {})
    assert (workdir / "stdout").is_symlink()
    assert elf.read_int_file(str(workdir / "fifo")) is None  # at once: no writer will ever come
    (workdir / "fifo").unlink()
    (workdir / "fifo").symlink_to(secret)
    assert elf.read_int_file(str(workdir / "fifo")) is None and elf.scan(str(workdir / "fifo")).reports == []


def test_an_accounts_attempt_runs_by_its_lock_and_ends_by_the_verdict_the_broker_wrote(launcher, open_tmp,
                                                                                       test_accounts, local_kind):
    workdir = open_tmp / "wf" / "n1" / "1"
    handle = launcher.launch(request(workdir, "exec sleep 60"), run_as=test_accounts.first)
    group = int(handle.job_id)
    if local_kind == "agent":  # the agent's child leads its own group from its first instruction on
        wait_for(lambda: (workdir / "pid").exists())
    os.killpg(group, signal.SIGSTOP)  # at once: setpriv, the account's shell or the wrapper, with little written
    try:
        # the lock was handed on through the switch of account: a restarted broker finds it held
        with LocalLauncher(kill_grace=0.5) as other:
            assert other.recover(handle.node_id, handle.attempt, str(workdir), None).status == "running"
        exits = Exits()
        launcher.watch(handle, exits)
        launcher.cancel(handle)  # root's verdict in the account's directory, before the (pending) signal
    finally:
        os.killpg(group, signal.SIGCONT)
    exits.next()
    assert launcher.collect(handle).outcome == base.CANCELLED
    assert (workdir / "exit").read_text() == "cancelled\n"  # the account's wrapper could not replace it
