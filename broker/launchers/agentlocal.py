"""The local launcher with a resident agent: one process per payload instead of a wrapper and the payload.

``[hosts] local_agent = true``. One agent (:mod:`broker.elf.agent`) per account runs that account's local
payloads: started by the broker in a session of its own (as the account, through :mod:`broker.runas`),
reached over a Unix socket in ``<work root>/.agents/<account>``, and left running when the broker stops or
dies; a restarted broker connects to the same agent. Everything else is the local launcher's: the work
directory, its files and their two facts (the launch lock the broker takes and hands to the agent with the
start request, the verdict created exclusively by whichever side comes first), adoption and results by
those files, timeouts and the kill verdict before any signal. What changes:

- the end of an attempt is the agent's ``end`` message (sent once its files are final and the lock is
  released), not a wrapper's pidfd;
- signals go through the agent, which has not reaped the payload yet, so its group id is never a reused one;
- when an agent dies, its payloads die with it (its guardian, the agent's parent, kills every process left of
  them at once); the broker starts a new agent, which can start only once the guardian is done and kills
  whatever is still left before it answers, and only then reads those attempts' files: an attempt without a
  verdict is lost (retried per its policy), one with a verdict keeps it.
"""

from __future__ import annotations

import array
import dataclasses
import itertools
import json
import logging
import os
import pwd
import select
import signal
import socket
import threading
import time
from typing import Any

from broker.elf import agent as agent_program
from broker.errors import ResourceError
from broker.launchers import base
from broker.launchers.adoption import Attempt, is_legacy
from broker.launchers.agentstart import start_agent
from broker.launchers.base import LaunchHandle, LaunchRequest, Recovered
from broker.launchers.local import LocalLauncher
from broker.launchers.workdir import LAUNCH_FILE, is_alive, lock_exclusive, open_if_wrapper, read_exit, read_pid
from broker.runas import RunAs, is_root, lookup, make_workdir, own_login

log = logging.getLogger(__name__)

#: seconds an agent may take to start (and sweep its leftovers), and a request to be answered
AGENT_PATIENCE = 30.0
#: attempts at reaching an agent (one that is on its way out answers "busy" for an instant)
CONNECT_TRIES = 50
#: the longest pause between two looks at an adopted attempt's lock (see _adopt_live)
ADOPTED_RECHECK_MAX = 5.0
#: the directory of a work root where its agents keep their sockets and journals, one directory per account
AGENTS_DIR = ".agents"

class _Agent:
    """The connection to one account's agent."""

    def __init__(self, login: str, sock: socket.socket):
        self.login = login
        self.sock = sock
        self.dead = False
        self.send_lock = threading.Lock()
        #: request id -> [event, reply, what to track once started]
        self.pending: dict[int, list[Any]] = {}


class AgentLauncher(LocalLauncher):
    """Local payloads started by resident agents (implements :class:`broker.launchers.base.Launcher`)."""

    def __init__(self, state_dir: str, **kwargs: Any):
        """``state_dir``: where each account's agent keeps its socket and journal (``<work root>/.agents``)."""
        self._state_dir = os.path.abspath(state_dir)
        self._agents: dict[str, _Agent] = {}
        self._agent_fds: dict[int, _Agent] = {}
        self._agent_of: dict[tuple[int, int], _Agent] = {}
        self._by_workdir: dict[str, Attempt] = {}
        self._dead: list[_Agent] = []
        self._agents_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._own_login = own_login()
        #: login -> when (monotonic) to try its agent again, for accounts whose agent could not start
        self._no_agent: dict[str, float] = {}
        super().__init__(**kwargs)

    @classmethod
    def of_work_root(cls, root: str | os.PathLike[str], **kwargs: Any) -> AgentLauncher:
        """The launcher of the agents serving the attempts under work root ``root``."""
        return cls(os.path.join(root, AGENTS_DIR), **kwargs)

    # ------------------------------------------------------------------------------- starting attempts

    def _spawn(self, request: LaunchRequest, run_as: RunAs | None, started_at: float, argv: list[str],
               env: dict[bytes, bytes], cwd: str) -> LaunchHandle:
        agent = self._usable_agent(run_as.login if run_as else self._own_login)
        if agent is None:  # the account's agent cannot run here: a wrapper, as without the setting
            return super()._spawn(request, run_as, started_at, argv, env, cwd)
        handle = LaunchHandle(node_id=request.node_id, attempt=request.attempt, workdir=request.workdir,
                              job_id="0", started_at=started_at, timeout=request.timeout)
        message = {"op": "start", "wd": request.workdir, "argv": argv, "cwd": cwd,
                   "env": [[os.fsdecode(k), os.fsdecode(v)] for k, v in env.items()]}
        # locked before the request and handed to the agent with it: see broker.launchers.workdir
        lock = lock_exclusive(os.path.join(request.workdir, LAUNCH_FILE))
        try:
            reply = self._request(agent, message, lock, handle)
        finally:
            os.close(lock)
        if "error" in reply:
            raise ResourceError(f"node {request.node_path} attempt {request.attempt}: {reply['error']}",
                                retryable=reply.get("retryable", True))
        return dataclasses.replace(handle, job_id=str(reply["pid"]))

    def _request(self, agent: _Agent, message: dict, fd: int, handle: LaunchHandle) -> dict:
        """Send a start request with the locked descriptor; wait for the answer (the watcher tracks the attempt)."""
        number = next(self._ids)
        message["id"] = number
        done = threading.Event()
        entry = [done, None, handle]
        with self._lock:
            if agent.dead:
                return {"error": "the local agent died"}
            agent.pending[number] = entry
        try:
            with agent.send_lock:
                agent.sock.sendmsg([json.dumps(message).encode()],
                                   [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
        except OSError as exc:
            with self._lock:
                agent.pending.pop(number, None)
            return {"error": f"cannot reach the local agent: {exc.strerror or exc}"}
        if not done.wait(AGENT_PATIENCE):
            with self._lock:
                agent.pending.pop(number, None)
            return {"error": "the local agent did not answer"}
        return entry[1]

    # ----------------------------------------------------------------------------- the agents themselves

    def _usable_agent(self, login: str) -> _Agent | None:
        """``login``'s agent, or None while it cannot start (no usable Python for that account, say): then its
        payloads start under wrappers, said once, and the agent is tried again after ``base.AGENT_RETRY``."""
        if self._no_agent.get(login, 0.0) > time.monotonic():
            return None
        try:
            agent = self._agent_for(login)
        except ResourceError as exc:
            first = login not in self._no_agent
            self._no_agent[login] = time.monotonic() + base.AGENT_RETRY
            if first:
                log.warning("%s: the payloads of %s start under wb-run.sh wrappers meanwhile (the agent is tried "
                            "again every %.0f minutes)", exc, login, base.AGENT_RETRY / 60)
            return None
        self._no_agent.pop(login, None)
        return agent

    def _agent_for(self, login: str | None) -> _Agent:
        """The connected agent of ``login`` (None: the broker's own account), started if none runs."""
        login = login or self._own_login
        with self._agents_lock:
            agent = self._agents.get(login)
            if agent is not None and not agent.dead:
                return agent
            agent = self._connect(login, start=True)
            assert agent is not None
            return agent

    def _connect(self, login: str, *, start: bool) -> _Agent | None:
        """Connect to ``login``'s agent (``_agents_lock`` held); start one first if ``start`` and none answers."""
        switching = is_root()
        run_as = lookup(login) if switching and login != self._own_login else None
        directory = os.path.join(self._state_dir, login)
        make_workdir(directory, run_as, switching=switching)
        for _ in range(CONNECT_TRIES):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
            sock.settimeout(AGENT_PATIENCE)
            try:
                sock.connect(os.path.join(directory, agent_program.SOCKET_FILE))
                hello = sock.recv(agent_program.MAX_MESSAGE)
            except OSError:
                hello = b""
            if hello:
                sock.settimeout(None)
                agent = _Agent(login, sock)
                with self._lock:
                    self._agents[login] = agent
                    self._agent_fds[sock.fileno()] = agent
                    self._epoll.register(sock.fileno(), select.EPOLLIN)
                return agent
            sock.close()
            if not start:
                return None
            start_agent(directory, run_as)
        raise ResourceError(f"the local agent in {directory} does not answer (see its agent.log)")

    # ----------------------------------------------------------------------------------- the watcher

    def _other_fd(self, fd: int) -> list[tuple[base.ExitCallback, int, int]]:
        agent = self._agent_fds.get(fd)
        if agent is None:
            return []
        fired: list[tuple[base.ExitCallback, int, int]] = []
        while True:
            try:
                data = agent.sock.recv(agent_program.MAX_MESSAGE, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return fired
            except OSError:
                data = b""
            if not data:
                self._lose(agent)
                return fired
            message = json.loads(data)
            if "end" in message:
                attempt = self._by_workdir.get(message["end"])
                if attempt is not None and not attempt.ended:
                    fired.extend(self._ended(attempt))
            elif "id" in message:
                entry = agent.pending.pop(message["id"], None)
                if entry is not None:
                    entry[1] = message
                    if "pid" in message:
                        handle = dataclasses.replace(entry[2], job_id=str(message["pid"]))
                        self._watch_agent(agent, handle)
                    entry[0].set()

    def _lose(self, agent: _Agent) -> None:
        """The agent's connection ended (lock held): it died; its attempts are resolved after the events."""
        agent.dead = True
        self._epoll.unregister(agent.sock.fileno())
        self._agent_fds.pop(agent.sock.fileno(), None)
        for entry in agent.pending.values():
            entry[1] = {"error": "the local agent died"}
            entry[0].set()
        agent.pending.clear()
        self._dead.append(agent)

    def _after_events(self) -> list[tuple[base.ExitCallback, int, int]]:
        """For each agent that died: start its successor (which kills the leftovers), then end its attempts."""
        with self._lock:
            dead, self._dead = self._dead, []
        fired: list[tuple[base.ExitCallback, int, int]] = []
        for agent in dead:
            agent.sock.close()
            with self._lock:
                orphans = [a for k, a in self._attempts.items() if self._agent_of.get(k) is agent and not a.ended]
            successor = None
            if orphans and not self._closing:
                try:
                    with self._agents_lock:
                        successor = self._agents.get(agent.login)
                        if successor is agent:
                            successor = self._connect(agent.login, start=True)
                except Exception:  # the old agent's guardian has ended the payloads all the same
                    log.exception("cannot restart the local agent of %s", agent.login)
            for attempt in orphans:
                # still locked: the agent lives and only dropped this connection (it had too much unread)
                alive = successor is not None and is_alive(attempt.handle.workdir)
                with self._lock:
                    if attempt.ended:
                        continue
                    if alive:
                        self._agent_of[(attempt.handle.node_id, attempt.handle.attempt)] = successor
                    else:
                        fired.extend(self._ended(attempt))
        return fired

    def _watch_agent(self, agent: _Agent, handle: LaunchHandle, on_exit: base.ExitCallback | None = None
                     ) -> Attempt:
        """Track an attempt its agent runs (lock held): its end is the agent's message."""
        attempt = Attempt(handle, -1, None)
        if on_exit is not None:
            attempt.callbacks.append(on_exit)
        key = (handle.node_id, handle.attempt)
        self._attempts[key] = attempt
        self._agent_of[key] = agent
        self._by_workdir[handle.workdir] = attempt
        if handle.timeout:
            delay = handle.started_at + handle.timeout - time.time()
            self._add_timer(time.monotonic() + delay, attempt, "timeout")
        return attempt

    def _ended(self, attempt: Attempt) -> list[tuple[base.ExitCallback, int, int]]:
        key = (attempt.handle.node_id, attempt.handle.attempt)
        agent = self._agent_of.pop(key, None)
        if agent is None:
            return super()._ended(attempt)  # a wrapper's attempt (started before the setting changed)
        self._by_workdir.pop(attempt.handle.workdir, None)
        attempt.ended = True
        return [(callback, key[0], key[1]) for callback in attempt.callbacks]

    def _strike(self, attempt: Attempt) -> None:
        """SIGTERM now, SIGKILL after the grace (lock held): through the agent, which knows its child by its
        work directory even when this broker has not read its pid yet (adopted before the child wrote it)."""
        if (attempt.handle.node_id, attempt.handle.attempt) not in self._agent_of:
            super()._strike(attempt)
            return
        self._signal(attempt, signal.SIGTERM)
        self._add_timer(time.monotonic() + self._kill_grace, attempt, "kill")

    def _signal(self, attempt: Attempt, signum: int) -> None:
        agent = self._agent_of.get((attempt.handle.node_id, attempt.handle.attempt))
        if agent is None:
            super()._signal(attempt, signum)
            return
        try:
            with agent.send_lock:
                agent.sock.send(json.dumps({"op": "kill", "wd": attempt.handle.workdir, "sig": int(signum)}).encode())
        except OSError:
            pass  # the agent is gone, and its payloads with it

    # ------------------------------------------------------------------------------------ adoption

    def recover(self, node_id: int, attempt: int, workdir: str, job_id: str | None) -> Recovered:
        """As the local launcher's; an attempt found lost is returned once its account's agent runs again.

        An agent that died while no broker ran, its guardian with it, left its payloads behind: the agent
        started here kills them before the attempt may be retried.
        """
        found = super().recover(node_id, attempt, workdir, job_id)
        if found.status == "lost" and not is_legacy(workdir):
            try:
                login = pwd.getpwuid(os.stat(workdir).st_uid).pw_name
            except (OSError, KeyError):
                return found
            self._usable_agent(login)
        return found


    def _adopt_live(self, handle: LaunchHandle, on_exit: base.ExitCallback | None, legacy: bool
                    ) -> Attempt | None:
        """An attempt whose lock is held: by an agent (watched through it), else by a wrapper (as before)."""
        pid = read_pid(handle.workdir)
        wrapper = open_if_wrapper(pid, handle.workdir) if pid else None
        if wrapper is not None:
            os.close(wrapper)
        if legacy or wrapper is not None:
            return super()._adopt_live(handle, on_exit, legacy)
        try:
            login = pwd.getpwuid(os.stat(handle.workdir).st_uid).pw_name
        except (OSError, KeyError):
            return super()._adopt_live(handle, on_exit, legacy)
        with self._agents_lock:
            agent = self._agents.get(login)
            if agent is None or agent.dead:
                agent = self._connect(login, start=False)
        if agent is None:
            # no agent runs: a wrapper between its fork and its exec, or a lock kept by a stopped broker (its
            # attempt ended, and its agent after it): looked at until its wrapper is found or its lock is free
            return super()._adopt_live(handle, on_exit, legacy)
        handle = dataclasses.replace(handle, job_id=str(read_pid(handle.workdir) or 0))
        with self._lock:
            attempt = self._watch_agent(agent, handle, on_exit)
            # An end sent before this connection went to no one, and the lock may outlive it: a broker stopped
            # (SIGSTOP) while it started this attempt still holds its copy of the locked descriptor. So the
            # lock is looked at again now and then until it is free, besides the agent's end message.
            self._add_timer(time.monotonic() + attempt.retry, attempt, "identify")
            reason = read_exit(handle.workdir)[1]
            if reason is not None:
                attempt.reason = reason  # a kill the previous broker decided and may not have finished
                self._strike(attempt)
        if not is_alive(handle.workdir):
            # it ended before the watch was in place (its "end" went to no one): its files are final
            with self._lock:
                fired = self._ended(attempt) if not attempt.ended else []
            for callback, node_id, number in fired:
                callback(node_id, number)
        return attempt

    def _identify(self, attempt: Attempt) -> list[tuple[base.ExitCallback, int, int]]:
        """An adopted attempt its agent runs: ended once its lock is free (its files are final by then)."""
        if (attempt.handle.node_id, attempt.handle.attempt) not in self._agent_of:
            return super()._identify(attempt)  # a wrapper's
        alive = is_alive(attempt.handle.workdir)
        with self._lock:
            if attempt.ended or self._closing:
                return []
            if not alive:
                return self._ended(attempt)
            attempt.retry = min(2 * attempt.retry, ADOPTED_RECHECK_MAX)
            self._add_timer(time.monotonic() + attempt.retry, attempt, "identify")
            return []

    def close(self) -> None:
        """Stop watching; the agents keep running their payloads (each exits once it has none)."""
        super().close()
        with self._agents_lock:
            for agent in self._agents.values():
                agent.sock.close()
            self._agents.clear()
