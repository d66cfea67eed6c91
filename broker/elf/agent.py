"""wb-agent: the resident agent that runs a host account's local payloads without a wrapper process per node.

Started by the broker (``python -I -S - STATE_DIR``, this text on its standard input) in a session of its
own, as the account whose payloads it runs, one per state directory (``<work root>/.agents/<account>``).
It imports nothing of the broker: a payload's start is one ``vfork`` and ``exec`` (``subprocess``), no Python
runs in the child, and no shell.

What it keeps of the work directory protocol (README "Exactly once"), so every reader of those files, a
restarted broker included, works unchanged:

- **the launch lock**: the broker takes the exclusive ``flock`` on ``launch.json`` and passes that very
  descriptor with its start request (SCM_RIGHTS); the agent holds it until the attempt's last write, and the
  kernel releases it whenever the agent dies. The child is its own session and process group; the agent
  looks for a kill verdict before it starts it (never running the payload when one is there) and writes
  ``pid`` (the child's pid, which is its session and process group id) before it answers. Requests are served
  one at a time, so a kill the broker asks for after its verdict is handled after the start, on the child.
- **the verdict**: ``exit`` is created exclusively (``O_EXCL``) with the payload's exit status, read before
  the child is reaped (``waitid(WNOWAIT)``), so a group id the agent signals is never a reused one; a
  kill verdict the broker wrote first keeps the status in ``killed_exit``.

On SSH hosts (the host agent's ``start``, :mod:`broker.launchers.hostagent`) a start request carries ``elf``
and the agent keeps the elf's protocol instead, so nothing else changes for the readers there: the verdict
``cancel`` claimed exclusively (``exited`` at the payload's end, ``timeout`` at its timeout, before any
signal; the host agent's cancel claims ``cancelled`` then asks for the SIGTERM), the SIGKILL after the
elf's grace, and ``status.json`` written by the elf module's own code (loaded from the path the request
names) before the payload is reaped and the lock released. Such payloads do not push to the broker.

The journal (``journal`` in the state directory, one JSON line per start and per end, fdatasync'ed in
batches) names the attempts it started, each before its start. Payloads die with the agent: the agent's
parent, the guardian (a small process that holds the agent's lock with it and does nothing else), waits for
the agent to end, however it ends, then kills every process left of the attempts the journal shows without an
end (they carry the attempt's ``WB_WORKDIR``: the payloads and whatever they started, in their group or not)
and only then exits and lets the lock go. An agent starting up does the same before it accepts a broker (for
a guardian killed too): a broker that lost its agent starts the next one, which answers only then, and only
then does the broker call those attempts lost. (A parent-death signal would need Python code in each child
between its fork and its exec: the guardian lets the start be a ``vfork``.)

Every connected broker is told of every end (a restarted broker may connect before the old one's connection
is gone); the agent keeps running and recording while none is connected, and exits once no broker is
connected and no payload runs.
"""

import collections
import fcntl
import heapq
import importlib.util
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time

SOCKET_FILE = "agent.sock"
LOCK_FILE = "agent.lock"
JOURNAL_FILE = "journal"
LOG_FILE = "agent.log"
#: the largest request accepted (a payload's environment rides in it)
MAX_MESSAGE = 1 << 20
#: seconds between two fdatasync calls of the journal at most (the batch)
SYNC_EVERY = 0.05
#: messages a broker may leave unread before its connection is dropped (it reads the files when it returns)
MAX_QUEUED = 100000
#: a journal bigger than this is emptied once no payload runs
JOURNAL_MAX = 1 << 20
#: seconds a program found on a PATH is started from there without looking again
PROGRAM_TTL = 5.0
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW


def write_file(path, text, exclusive=False):
    """One small write of ``text`` (mode 0600), never through a symbolic link; FileExistsError if ``exclusive``."""
    fd = os.open(path, _FLAGS | (os.O_EXCL if exclusive else os.O_TRUNC), 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def sweep(journal_path):
    """Kill what is left of the attempts the journal started without an end; returns how many processes.

    Their members are found by the attempt's ``WB_WORKDIR`` in their environment (the payload's children
    inherit it), whatever their pid or group: the start is journaled before the fork, so no payload can run
    unrecorded. Only this account's processes can be read or signalled, which bounds what it can touch.
    """
    unended = set()
    try:
        with open(journal_path, "rb") as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a crash
                if "s" in record:
                    unended.add(os.fsencode(record["s"]))
                elif "e" in record:
                    unended.discard(os.fsencode(record["e"]))
    except FileNotFoundError:
        pass
    killed, found, passes = 0, bool(unended), 0
    while found and passes < 10:  # again while a pass finds some: one may have forked while the last pass ran
        found, passes = False, passes + 1
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == os.getpid():
                continue
            try:
                with open("/proc/%s/environ" % name, "rb") as handle:
                    environ = handle.read().split(b"\0")
            except OSError:
                continue
            if any(item.startswith(b"WB_WORKDIR=") and item[11:] in unended for item in environ):
                try:
                    os.kill(int(name), signal.SIGKILL)
                    killed, found = killed + 1, True
                except OSError:
                    pass
    return killed


class Child:
    __slots__ = ("workdir", "pid", "pidfd", "lock", "elf", "started_at", "reason", "proc")

    def __init__(self, workdir, pid, pidfd, lock, elf=None, proc=None):
        self.workdir, self.pid, self.pidfd, self.lock, self.elf = workdir, pid, pidfd, lock, elf
        self.proc = proc  # its Popen (None for a stand-in): kept until reaped, so subprocess never reaps it
        self.started_at, self.reason = time.time(), None  # reason: the kill verdict it acted on (elf protocol)


class Conn:
    """A broker's connection, with what could not be sent to it yet."""

    __slots__ = ("sock", "outbox", "waiting")

    def __init__(self, sock):
        self.sock, self.outbox, self.waiting = sock, collections.deque(), False


class Agent:
    def __init__(self, state_dir):
        self.state_dir = state_dir
        self.me = os.getpid()
        self.epoll = select.epoll()
        self.children = {}  # pidfd -> Child
        self.by_workdir = {}  # workdir -> Child
        self.conns = {}  # fd -> Conn
        self.dirty = False
        self.synced_at = 0.0
        self.programs = {}  # (name, PATH) -> (file, when found)
        self.timers = []  # heap of (monotonic deadline, workdir, "timeout" or "kill"): elf protocol only
        self.elfs = {}  # path -> the elf module (its protocol's verdicts and status file)
        self.journal = os.open(os.path.join(state_dir, JOURNAL_FILE), os.O_WRONLY | os.O_APPEND | os.O_CREAT
                               | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        path = os.path.join(state_dir, SOCKET_FILE)
        try:
            os.unlink(path)  # a dead agent's: this one holds the directory's lock
        except FileNotFoundError:
            pass
        self.listener.bind(path)
        self.listener.listen(16)
        self.epoll.register(self.listener.fileno(), select.EPOLLIN)

    # ---------------------------------------------------------------------------------------- the loop

    def run(self):
        while True:
            due = [self.synced_at + SYNC_EVERY] if self.dirty else []
            due += [self.timers[0][0]] if self.timers else []
            timeout = max(0.0, min(due) - time.monotonic()) if due else -1
            for fd, events in self.epoll.poll(timeout):
                if fd == self.listener.fileno():
                    self.accept()
                elif fd in self.conns:
                    conn = self.conns[fd]
                    if events & select.EPOLLOUT:
                        self.flush(conn)
                    if events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR) and fd in self.conns:
                        self.receive(conn)
                elif fd in self.children:
                    self.ended(self.children.pop(fd))
            while self.timers and self.timers[0][0] <= time.monotonic():
                self.fire(*heapq.heappop(self.timers)[1:])
            if self.dirty and time.monotonic() - self.synced_at >= SYNC_EVERY:
                os.fdatasync(self.journal)
                self.dirty, self.synced_at = False, time.monotonic()
            if not self.conns and not self.children:
                return  # idle and unwatched: nothing to record; a broker starts another when it needs one

    def accept(self):
        sock, _ = self.listener.accept()
        sock.setblocking(True)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
        conn = self.conns[sock.fileno()] = Conn(sock)
        self.epoll.register(sock.fileno(), select.EPOLLIN)
        self.send(conn, {"hello": self.me, "running": len(self.children)})

    def drop(self, conn):
        fd = conn.sock.fileno()
        if self.conns.pop(fd, None) is not None:
            self.epoll.unregister(fd)
            conn.sock.close()

    def send(self, conn, message):
        """Queue a message to one broker; never blocks (a stopped broker must not stop the recording)."""
        conn.outbox.append(json.dumps(message).encode())
        if len(conn.outbox) > MAX_QUEUED:
            self.drop(conn)  # stopped for too long: it reads the files when it reconnects
        elif len(conn.outbox) == 1:
            self.flush(conn)

    def broadcast(self, message):
        for conn in list(self.conns.values()):
            self.send(conn, message)

    def flush(self, conn):
        while conn.outbox:
            try:
                conn.sock.send(conn.outbox[0], socket.MSG_DONTWAIT)
            except BlockingIOError:
                if not conn.waiting:
                    self.epoll.modify(conn.sock.fileno(), select.EPOLLIN | select.EPOLLOUT)
                    conn.waiting = True
                return
            except OSError:
                self.drop(conn)
                return
            conn.outbox.popleft()
        if conn.waiting:
            self.epoll.modify(conn.sock.fileno(), select.EPOLLIN)
            conn.waiting = False

    def receive(self, conn):
        while conn.sock.fileno() in self.conns:
            fds, message = [], None
            try:
                # received close-on-exec, as every other descriptor of the agent: no payload inherits one
                data, ancillary, _, _ = conn.sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(4),
                                                          socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC)
            except BlockingIOError:
                return
            except OSError:
                data, ancillary = b"", []
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.extend(int.from_bytes(payload[i:i + 4], sys.byteorder) for i in range(0, len(payload) - 3, 4))
            if not data:
                for fd in fds:
                    os.close(fd)
                self.drop(conn)
                return
            try:
                message = json.loads(data)
                if message.get("op") == "start":
                    self.start(conn, message, fds[0] if fds else -1)
                    fds = fds[1:]
                elif message.get("op") == "kill":
                    child = self.by_workdir.get(message["wd"])
                    if child is not None:  # not reaped yet: its group id is still its own
                        self.killpg(child.pid, int(message["sig"]))
                        if child.elf is not None:  # the SIGKILL after the elf protocol's grace, as the elf's
                            self.after_grace(child)
            except Exception as exc:  # one bad request must not stop the agent of every other payload
                self.send(conn, {"id": message.get("id") if isinstance(message, dict) else None,
                                 "error": str(exc)})
            finally:
                for fd in fds:
                    os.close(fd)

    # ----------------------------------------------------------------------------------- the payloads

    def start(self, conn, message, lock):
        """Start a payload. With ``elf`` (options of the elf's protocol, SSH hosts) the agent keeps the elf's
        files and duties instead of the wrapper's: the verdict ``cancel``, ``status.json``, the timeout; then
        ``argv`` is the payload file alone and ``env`` the requester's, which the elf's rules complete."""
        workdir, argv, cwd, elf = message["wd"], message["argv"], message["cwd"], message.get("elf")
        if lock < 0:
            self.send(conn, {"id": message["id"], "error": "no launch lock was passed"})
            return
        where = elf["path"] if elf is not None else cwd
        try:  # nothing has started until the fork: a request refused here leaves no lock held
            module = self.load(elf["path"]) if elf is not None else None
            env = message["env"]
            if module is not None:  # the elf's own rules: its interpreters, the payload's environment
                argv = [elf.get("interpreter") or module.DEFAULT_INTERPRETERS[elf["type"]], argv[0]]
                env = module.payload_environment(dict(env), elf["pairs"], workdir).items()
            env = {os.fsencode(k): os.fsencode(v) for k, v in env}
            where = cwd
            os.stat(os.path.join(cwd, "."))
            where = argv[0]
            program = self.find(argv[0], env)
        except OSError as exc:
            os.close(lock)
            what = ("cannot start in %s" if where == cwd else "cannot start %s") % where
            self.send(conn, {"id": message["id"], "error": "%s: %s" % (what, exc.strerror or exc), "retryable": False})
            return
        except BaseException:
            os.close(lock)
            raise
        self.record({"s": workdir})  # before the start: once the agent is gone, its guardian sweeps this one
        try:
            proc = self.spawn(workdir, argv, cwd, env, program, module.VERDICT_FILE if module else "exit")
        except OSError as exc:  # nothing started (no process could be made): the broker may try again
            os.close(lock)
            self.record({"e": workdir})
            self.send(conn, {"id": message["id"], "error": "cannot start %s: %s" % (argv[0], exc.strerror or exc)})
            return
        pid = proc.pid if isinstance(proc, subprocess.Popen) else proc
        try:
            write_file(os.path.join(workdir, "pid"), "%d\n" % pid)
        except OSError:
            self.killpg(pid, signal.SIGKILL)  # nothing may run that its files do not show: it ends, tracked
        pidfd = os.pidfd_open(pid)
        child = Child(workdir, pid, pidfd, lock, elf, proc if isinstance(proc, subprocess.Popen) else None)
        if elf is not None and elf.get("timeout"):
            heapq.heappush(self.timers, (time.monotonic() + float(elf["timeout"]), workdir, "timeout"))
        self.children[pidfd] = child
        self.by_workdir[workdir] = child
        self.epoll.register(pidfd, select.EPOLLIN)
        self.send(conn, {"id": message["id"], "pid": pid})

    def find(self, name, env):
        """The file execvpe would start for ``name`` under ``env``'s PATH; None: the child searches. In the child
        execvpe imported the warnings module and tried an exec per directory (a millisecond of each start)."""
        if "/" in name:
            return None
        path = env.get(b"PATH", os.defpath.encode())
        found, now = self.programs.get((name, path)), time.monotonic()
        if found is not None and now - found[1] < PROGRAM_TTL:
            return found[0]
        for directory in path.split(b":"):
            candidate = os.path.join(os.fsdecode(directory), name)
            if not directory.startswith(b"/"):
                return None
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                if len(self.programs) > 1000:
                    self.programs.clear()
                self.programs[(name, path)] = (candidate, now)
                return candidate
        return None

    def load(self, path):
        """The elf module at ``path`` (installed beside this agent on a remote host), loaded once."""
        if path not in self.elfs:
            spec = importlib.util.spec_from_file_location("broker_elf_%d" % len(self.elfs), path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            self.elfs[path] = module
        return self.elfs[path]

    def elf(self, child):
        return self.elfs[child.elf["path"]]

    def fire(self, workdir, kind):
        """A timer of an elf-protocol attempt: its timeout (the verdict first, then SIGTERM), or the SIGKILL
        after the grace."""
        child = self.by_workdir.get(workdir)
        if child is None:
            return  # ended meanwhile
        elf = self.elf(child)
        if kind == "kill":
            self.killpg(child.pid, signal.SIGKILL)
        elif child.reason is None:
            verdict = elf.decide(workdir, elf.TIMEOUT)
            if verdict in elf.KILL_VERDICTS:  # a cancel may have come first: that verdict stands
                child.reason = verdict
                self.killpg(child.pid, signal.SIGTERM)
                self.after_grace(child)

    def after_grace(self, child):
        heapq.heappush(self.timers, (time.monotonic() + self.elf(child).KILL_GRACE, child.workdir, "kill"))

    def spawn(self, workdir, argv, cwd, env, program, verdict_file):
        """Start the payload in a session of its own: its Popen, or the pid of a stand-in child that only exits
        with the status a shell would give (0: a kill verdict came first and the payload never runs; 127 or 126:
        its program could not be executed), so every end takes the one path. OSError: nothing started."""
        if os.path.lexists(os.path.join(workdir, verdict_file)):
            return self.stand_in(0)
        null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        out = err = -1
        try:
            out = os.open(os.path.join(workdir, "stdout"), _FLAGS | os.O_TRUNC, 0o600)
            err = os.open(os.path.join(workdir, "stderr"), _FLAGS | os.O_TRUNC, 0o600)
            # where it was found, else (gone since) searched on the PATH as execvpe does
            for executable in (program, None) if program is not None else (None,):
                try:
                    # no Python runs in the child (vfork and exec): every other descriptor of the agent is
                    # close-on-exec (received ones by MSG_CMSG_CLOEXEC); SIGPIPE and SIGXFSZ get their defaults
                    return subprocess.Popen(argv, executable=executable, stdin=null, stdout=out, stderr=err,
                                            cwd=cwd, env=env, close_fds=False, start_new_session=True,
                                            restore_signals=True)
                except OSError as exc:
                    if exc.filename is None:
                        raise  # no process could be made (fork or pipe): nothing started
                    failed = exc
                    self.programs = {key: found for key, found in self.programs.items() if found[0] != program}
            return self.stand_in(127 if isinstance(failed, FileNotFoundError) else 126)
        finally:
            for fd in (null, out, err):
                if fd >= 0:
                    os.close(fd)

    @staticmethod
    def stand_in(code):
        pid = os.fork()
        if pid == 0:
            os._exit(code)
        return pid

    def ended(self, child):
        """The payload ended: its verdict first (before reaping: its group id stays ours), then the journal."""
        self.epoll.unregister(child.pidfd)
        info = os.waitid(os.P_PIDFD, child.pidfd, os.WEXITED | os.WNOWAIT)
        code = info.si_status if info.si_code == os.CLD_EXITED else 128 + info.si_status
        if child.elf is not None:
            try:
                returncode = code if info.si_code == os.CLD_EXITED else -info.si_status
                self.elf(child).agent_end(child.workdir, child.elf, child.pid, child.started_at, returncode,
                                          child.reason)
            except OSError:
                pass  # the directory is gone (the workflow was deleted): nothing to record into
        else:
            self.exit_verdict(child, code)
        os.waitid(os.P_PIDFD, child.pidfd, os.WEXITED)
        if child.proc is not None:
            child.proc.returncode = code  # reaped here: its Popen must not wait for it again
        os.close(child.pidfd)
        self.by_workdir.pop(child.workdir, None)
        self.record({"e": child.workdir})
        os.close(child.lock)  # its files are final: the launch lock goes last
        self.broadcast({"end": child.workdir})
        if not self.children and os.fstat(self.journal).st_size > JOURNAL_MAX:
            os.ftruncate(self.journal, 0)

    def exit_verdict(self, child, code):
        """The wrapper protocol's verdict: ``exit`` created exclusively, unless the broker's kill verdict came first."""
        try:
            write_file(os.path.join(child.workdir, "exit"), "%d\n" % code, exclusive=True)
        except FileExistsError:
            # a kill verdict came first: the attempt is recorded as killed; what is left of its group goes too
            self.killpg(child.pid, signal.SIGKILL)
            try:
                write_file(os.path.join(child.workdir, "killed_exit"), "%d\n" % code)
            except OSError:
                pass
        except OSError:
            pass  # the directory is gone (the workflow was deleted): nothing to record into

    def record(self, entry):
        os.write(self.journal, json.dumps(entry).encode() + b"\n")
        self.dirty = True

    @staticmethod
    def killpg(pgid, signum):
        """Signal the group of a child not reaped yet (its pid is its group id once it has called setsid)."""
        if pgid > 1:
            try:
                os.killpg(pgid, signum)
            except ProcessLookupError:
                try:
                    os.kill(pgid, signum)  # not its group's leader yet: it has run nothing of the payload
                except OSError:
                    pass
            except OSError:
                pass


def main(argv):
    state_dir = argv[1]
    os.umask(0o077)
    if os.fork() > 0:
        os._exit(0)  # the broker reaps this one at once; the guardian and its agent are nobody's to wait for
    lock = os.open(os.path.join(state_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                   0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.write(1, b"busy\n")  # another agent serves this directory (it may be on its way out)
        return 0
    journal = os.path.join(state_dir, JOURNAL_FILE)
    killed = sweep(journal)
    with open(journal, "wb") as handle:  # every start it held has ended now
        os.fsync(handle.fileno())
    log = os.open(os.path.join(state_dir, LOG_FILE), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    # a payload must not inherit an ignored SIGINT (exec resets a handler, not SIG_IGN)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    agent_pid = os.fork()
    if agent_pid > 0:
        return guard(agent_pid, journal, log)
    agent = Agent(state_dir)
    os.write(1, b"ready %d\n" % killed)
    quiet(log)
    try:
        agent.run()
    finally:
        os.unlink(os.path.join(state_dir, SOCKET_FILE))  # before the lock goes: no broker connects to a dead one
    return 0


def guard(agent_pid, journal, log):
    """The agent's parent, holding its lock with it: once the agent has ended, however (``kill -9`` too), kill
    what is left of the attempts its journal shows unended, then exit, letting the lock go. So a payload never
    outlives its agent for longer than this takes, nor can the next agent start before it is done."""
    quiet(log)
    while True:
        try:
            os.waitpid(agent_pid, 0)
            break
        except ChildProcessError:
            break
        except KeyboardInterrupt:
            continue  # a SIGINT: the guard stays until the agent is gone
    killed = sweep(journal)
    if killed:
        os.write(2, b"the agent ended with payloads running: killed %d process(es)\n" % killed)
    return 0


def quiet(log):
    null = os.open(os.devnull, os.O_RDWR)
    for fd, target in ((null, 0), (null, 1), (log, 2)):
        os.dup2(fd, target)
    if null > 2:
        os.close(null)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
