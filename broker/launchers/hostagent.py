"""The host agent: the broker's helper on remote and batch hosts, installed next to the elf.

Standard library only, Python 3.8+, like the elf. Each call reads one JSON document on stdin and prints
one on stdout, so a launcher does a whole host's work in one command per interval::

    python3 agent-<v>.py start    < {"workdir", "payload", "env", "elf", "args", "record"}
    python3 agent-<v>.py prepare  < {"items": [{"workdir", "files": {name: text}, "record"}]}
    python3 agent-<v>.py probe    < {"elf", "max_value_bytes", "items": [[workdir, attempt, session, offset]]}
    python3 agent-<v>.py cancel   < {"items": [[workdir, reason]], "signal": true}
    python3 agent-<v>.py relay    (start and probe requests, one JSON line each, one answer line each, until EOF;
                                   also {"end": workdir} and {"agent_gone": dir} lines as the agents report)
    python3 agent-<v>.py bundle MANIFEST        (inside a batch job: run the members' elfs)

Work directory files it adds to the elf's: ``launch.json`` (the launch record, created exclusively so an
attempt is never started twice), ``env.json`` (the payload's variables) and, for batch jobs,
``job.sh``/``job.json``. ``cancel`` is the attempt's verdict (see the elf): ``cancel`` claims it with
``cancelled`` before any signal, and signals nothing when the elf's ``exited`` came first.

Under the resident agent (``start`` with ``resident``, ``[hosts] ssh_agent``; not for attempts that push):
``start`` hands the attempt, with its locked launch record, to the account's resident agent on this host
(:mod:`broker.elf.agent`, installed beside this file, started in a session of its own when none runs), which
runs the payload itself and keeps the elf's files and duties (verdict, status file, timeout): one process
per payload. Its launch record names the agent's directory (``agent``); ``cancel`` claims the verdict, then
asks that agent for the SIGTERM (it has not reaped the payload, so the group is the right one). An agent
killed takes its payloads with it (its guardian kills them); the next one kills whatever is left of them
before it accepts a start, and their attempts read as lost: lock free, no status.

Started and alive (SSH attempts): ``start`` takes an exclusive ``flock`` on the launch record before it
spawns the elf and hands it the locked descriptor as its standard input (the elf gives its payload
/dev/null), so the lock is held, from the fork on, exactly as long as the elf lives; ``probe`` reports it
as ``held``. Whether the attempt started and lives therefore never depends on how far the elf has got, nor
on a pid that may have been reused. Batch attempts are started by their scheduler: their scheduler's
record says whether they run. Whatever replaces the elf later must keep both: the lock from before the
spawn to the last write, and the verdict decided by one exclusive creation.
"""

import array
import errno
import fcntl
import importlib.util
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time

LAUNCH_FILE = "launch.json"
ENV_FILE = "env.json"
JOB_FILE = "job.json"
JOBID_FILE = "jobid"
#: the elf's push target (URL, session id, secret), when its host pushes
PUSH_FILE = "push.json"
#: seconds between two looks at the members' cancel files in a bundle
BUNDLE_TICK = 0.5
#: seconds the resident agent may take to start (sweeping a dead one's leftovers) or to answer a request
RESIDENT_PATIENCE = 30.0


_ELFS = {}


def _elf(path):
    """The elf module at ``path``, loaded once per process (a relay probes many times)."""
    if path not in _ELFS:
        spec = importlib.util.spec_from_file_location("broker_elf", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _ELFS[path] = module
    return _ELFS[path]


def _makedirs(path):
    """Create ``path`` and its missing parents, each mode 0700."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent and parent != path:
        _makedirs(parent)
    try:
        os.mkdir(path, 0o700)
    except OSError as exc:
        if exc.errno != errno.EEXIST:
            raise


def _write(path, text, exclusive=False):
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    try:
        os.write(fd, text.encode("utf-8"))
    finally:
        os.close(fd)


def _read(path, limit=65536):
    try:
        with open(path, "rb") as handle:
            return handle.read(limit).decode("utf-8", "replace")
    except OSError:
        return None


def _read_int(path):
    text = _read(path, 64)
    if text is None or not text.endswith("\n"):
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def _record(workdir):
    try:
        record = json.loads(_read(os.path.join(workdir, LAUNCH_FILE)) or "{}")
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _locked(workdir):
    """Whether the attempt was started under the launch lock (its record says so)."""
    return bool(_record(workdir).get("lock"))


def _resident_dir(workdir):
    """The resident agent's directory when the attempt was handed to one (its record says so), else None."""
    found = _record(workdir).get("agent")
    return found if isinstance(found, str) else None


def _held(path):
    """Whether something holds the ``flock`` on ``path`` (the elf of a started attempt, while it lives)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _alive(pid):
    if pid is None or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def _prepare(workdir, files, record, replace=False):
    """Create the work directory and write the launch record (exclusively, unless ``replace``) and ``files``."""
    _makedirs(workdir)
    try:
        _write(os.path.join(workdir, LAUNCH_FILE), json.dumps(record), exclusive=not replace)
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            return "exists"
        raise
    for name, text in files.items():
        _write(os.path.join(workdir, name), text)
    return "ok"


def elf_argv(python, elf, args):
    """The command line that runs the elf for one attempt (``args`` as the launchers build them)."""
    # -I -S: standard library only, no PYTHON* variables or site packages of the account (and a faster start)
    argv = [python, "-I", "-S", elf, "run", "--workdir", args["workdir"], "--payload", "payload", "--type", args["type"],
            "--attempt", str(args["attempt"]), "--session", args["session"], "--env-file", ENV_FILE,
            "--max-value-bytes", str(args["max_value_bytes"])]
    if args.get("timeout"):
        argv += ["--timeout", repr(float(args["timeout"]))]
    if args.get("interpreter"):
        argv += ["--interpreter", args["interpreter"]]
    if args.get("cwd"):
        argv += ["--cwd", args["cwd"]]
    if args.get("push"):
        argv += ["--push", PUSH_FILE]
    return argv


def _create_locked(path, text):
    """Create ``path`` holding ``text`` with an exclusive ``flock`` already on it; its descriptor, None if it exists.

    Written aside, locked, then hard-linked into place: the record never appears unlocked, so a probe can
    never take an attempt being started for one whose elf is gone.
    """
    tmp = "%s.%d" % (path, os.getpid())
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, text.encode("utf-8"))
        os.link(tmp, path)
        return fd
    except FileExistsError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    finally:
        os.unlink(tmp)


def cmd_start(req):
    """Prepare one attempt and start its elf detached (own session, no terminal, no inherited output).

    The launch record is created locked and handed to the elf as its stdin: locked before the spawn, held
    exactly as long as the elf lives.
    """
    workdir = req["workdir"]
    files = dict(req.get("files") or {}, payload=req["payload"])
    files[ENV_FILE] = json.dumps(req["env"])
    _makedirs(workdir)
    resident = req.get("resident") if not req["args"].get("push") else None
    sock, unreachable = None, None
    if resident:
        try:  # before the record, which says who runs the attempt
            sock = _resident(req["python"], resident)
        except OSError as exc:  # no agent can run here (an older Python, no pidfd): this attempt gets an elf
            unreachable = "the resident agent in %s cannot run: %s" % (resident["dir"], exc)
    record = dict(req["record"], lock=1, **({"agent": resident["dir"]} if sock else {}))
    lock = _create_locked(os.path.join(workdir, LAUNCH_FILE), json.dumps(record))
    if lock is None:
        if sock is not None:
            sock.close()
        return {"error": "exists"}
    argv = elf_argv(req["python"], req["elf"], dict(req["args"], workdir=workdir))
    try:
        for name, text in files.items():
            _write(os.path.join(workdir, name), text)
        if sock is not None:
            return _start_resident(req, resident, lock, sock)
        try:
            with open(os.devnull, "r+b") as null:
                proc = subprocess.Popen(argv, stdin=lock, stdout=null, stderr=null, cwd=workdir, close_fds=True,
                                        start_new_session=True)
        except OSError as exc:
            # Nothing started: clear the record so the same attempt can be started once the cause is fixed.
            os.unlink(os.path.join(workdir, LAUNCH_FILE))
            return {"error": "cannot start %s: %s" % (argv[0], exc.strerror or exc)}
    finally:
        os.close(lock)
    return {"pid": proc.pid, **({"agent_error": unreachable} if unreachable else {})}


def _start_resident(req, resident, lock, sock):
    """Hand the attempt to the account's resident agent on this host (``sock``: connected), with its lock.

    The agent runs the payload itself under the elf's protocol (see broker.elf.agent): no elf process.
    """
    workdir, args = req["workdir"], req["args"]
    cwd = os.path.join(workdir, args.get("cwd") or "")
    if not (args.get("cwd") and os.path.isabs(args["cwd"])):
        _makedirs(cwd)
    # the agent completes argv and the environment by the elf's rules (this command does not load the elf)
    message = {"op": "start", "id": 1, "wd": workdir, "cwd": cwd, "argv": [os.path.join(workdir, "payload")],
               "env": list(os.environ.items()),
               "elf": {"path": req["elf"], "session": args["session"], "attempt": args["attempt"],
                       "type": args["type"], "interpreter": args.get("interpreter"), "pairs": req["env"],
                       "timeout": args.get("timeout") or 0, "max_value_bytes": args["max_value_bytes"]}}
    reply = {}
    with sock:
        sock.sendmsg([json.dumps(message).encode("utf-8")],
                     [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [lock]))])
        while "id" not in reply:  # the ends of other attempts are told to every connection, this one too
            try:
                reply = json.loads(sock.recv(1 << 16) or b'{"id": null}')
            except (OSError, ValueError):
                reply = {"id": None}
    if "pid" in reply:
        return {"pid": reply["pid"]}
    if "error" in reply:
        os.unlink(os.path.join(workdir, LAUNCH_FILE))  # refused before its fork: nothing started
        return {"error": "the resident agent in %s: %s" % (resident["dir"], reply["error"])}
    # an agent that died after the request may have started it: the record stays (the attempt reads as lost)
    return {"error": "the resident agent in %s died while starting the attempt" % resident["dir"]}


def _resident(python, resident, start=True, hello=None):
    """A connection to the account's resident agent (``resident``: its ``dir`` and ``program``), started in a
    session of its own when none answers and ``start``; OSError when it cannot be reached. ``hello``: a list
    the agent's greeting is appended to (its pid)."""
    path = os.path.join(resident["dir"], "agent.sock")
    problem = None
    for _ in range(50):  # an agent on its way out answers "busy" to its successor for an instant
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.settimeout(RESIDENT_PATIENCE)
        try:
            sock.connect(path)
            greeting = sock.recv(1 << 16)
            if greeting:
                if hello is not None:
                    hello.append(json.loads(greeting))
                return sock
        except OSError as exc:
            problem = exc
        sock.close()
        if not start:
            break
        _makedirs(resident["dir"])
        with open(os.devnull, "r+b") as null:
            proc = subprocess.Popen([python, "-I", "-S", resident["program"], resident["dir"]], stdin=null,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, close_fds=True,
                                    start_new_session=True)
        line, error = proc.stdout.readline(256), proc.stderr.read(4096)
        proc.wait()  # the agent itself runs on in a process of its own (it forked)
        if line.startswith(b"busy"):
            time.sleep(0.02)  # the one on its way out still holds the directory: let it go before another try
        elif not line.startswith(b"ready"):
            raise OSError("it did not start: %s" % (error.decode("utf-8", "replace").strip()[-300:] or "no message"))
    raise OSError(str(problem or "it does not answer"))


def cmd_prepare(req):
    """Prepare several attempts (batch jobs); each item says "ok" or "exists"."""
    return {"items": [_prepare(i["workdir"], i["files"], i["record"], i.get("replace", False)) for i in req["items"]]}


def cmd_probe(req):
    """Status, liveness, cancel mark and new reports of every item, in one pass."""
    elf = _elf(req["elf"])
    limit = int(req["max_value_bytes"])
    out, swept = [], set()
    for workdir, attempt, session, offset in req["items"]:
        record = _read(os.path.join(workdir, LAUNCH_FILE))
        try:
            item = {"record": json.loads(record) if record is not None else None}
        except ValueError:
            item = {"record": {}}
        item["started"] = record is not None
        # Liveness first, status second: an elf that wrote its final status and exited in between is then
        # seen with its status, never as dead without one. The launch lock says it (SSH attempts since the
        # lock); the elf's pid is for attempts started before it, and for messages.
        if (item["record"] or {}).get("lock"):
            item["held"] = _held(os.path.join(workdir, LAUNCH_FILE))
        elf_pid = _read_int(os.path.join(workdir, elf.ELF_PID_FILE))
        item.update(elf_pid=elf_pid, elf_alive=_alive(elf_pid) if elf_pid is not None else None)
        agent_dir = (item["record"] or {}).get("agent")
        if agent_dir:
            item["pid"] = _read_int(os.path.join(workdir, "pid"))  # under the resident agent: no elf, its payload
        item["status"] = elf.read_status(workdir, attempt, session)
        job_dir = (item["record"] or {}).get("job_dir")
        if job_dir:
            item["submitted"] = _read(os.path.join(job_dir, "submit.out"), 4096)
        item["verdict"] = elf.read_verdict(workdir)
        if agent_dir and not item.get("held") and not (item["status"] or {}).get("outcome") and agent_dir not in swept:
            # its agent died: the next one kills what is left of its payloads' groups before this says "lost"
            swept.add(agent_dir)
            try:
                _resident(sys.executable, {"dir": agent_dir, "program": agent_dir + ".py"}).close()
            except OSError as exc:
                item["sweep_error"] = str(exc)
        item["jobid"] = (_read(os.path.join(workdir, JOBID_FILE), 256) or "").strip() or None
        if offset is not None and not (item["status"] or {}).get("outcome"):
            found = elf.scan(os.path.join(workdir, elf.STDOUT_FILE), offset, limit, budget=elf.SCAN_BUDGET)
            item["reports"] = [list(r) for r in found.reports]
            item["offset"] = found.offset
            item["ignored"] = found.ignored
        out.append(item)
    return {"items": out}


def _killpg(pgid, signum):
    try:
        os.killpg(pgid, signum)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def cmd_cancel(req):
    """Claim each item's verdict ``cancelled``, then SIGTERM its elf (it kills the payload group).

    An item whose verdict is already another one (its payload ended first) gets no signal: "ended".
    """
    elf = _elf(req["elf"])
    out = []
    for workdir, reason in req["items"]:
        try:
            if not elf.claim_verdict(workdir, reason) and elf.read_verdict(workdir) != reason:
                out.append("ended")
                continue
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
        if not req.get("signal", True):
            # Batch jobs: the elf runs on a compute node, where a pid of this host means nothing.
            out.append(None)
            continue
        agent_dir = _resident_dir(workdir)
        if agent_dir and _held(os.path.join(workdir, LAUNCH_FILE)):
            # run by the resident agent: it has not reaped the payload, so it signals the right group
            try:
                with _resident(None, {"dir": agent_dir}, start=False) as sock:
                    sock.send(json.dumps({"op": "kill", "wd": workdir, "sig": int(signal.SIGTERM)}).encode())
                out.append("agent")
                continue
            except OSError:
                pass  # the lock is held but the agent does not answer: its payload's group, as below
        elf_pid = _read_int(os.path.join(workdir, elf.ELF_PID_FILE))
        if _locked(workdir):
            alive = elf_pid is not None and _held(os.path.join(workdir, LAUNCH_FILE))  # so not a reused pid
        else:
            alive = elf_pid is not None and _alive(elf_pid)
        if alive:
            os.kill(elf_pid, signal.SIGTERM)
            out.append("elf")
            continue
        pid = _read_int(os.path.join(workdir, "pid"))
        out.append("payload" if pid is not None and _killpg(pid, signal.SIGKILL) else None)
    return {"items": out}


def cmd_bundle(manifest_path):
    """Run a batch job's members: at most ``parallel`` elfs at once, honouring each member's cancel file."""
    with open(manifest_path) as handle:
        manifest = json.load(handle)
    pending = list(manifest["members"])
    parallel = max(1, int(manifest.get("parallel", 1)))
    running = {}
    stopping = []

    def on_term(signum, frame):
        stopping.append(signum)
        for proc in running.values():
            try:
                proc.send_signal(signal.SIGTERM)
            except OSError:
                pass

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    elf = _elf(manifest["elf"])
    while pending or running:
        while pending and len(running) < parallel and not stopping:
            args = pending.pop(0)
            workdir = args["workdir"]
            if elf.read_verdict(workdir) == elf.CANCELLED:
                elf.write_status(workdir, {"session": args["session"], "attempt": args["attempt"],
                                           "outcome": elf.CANCELLED, "exit_code": None, "signal": None,
                                           "started_at": time.time(), "ended_at": time.time(), "pid": None,
                                           "progress": None, "outputs": {}, "ignored_lines": 0,
                                           "message": "cancelled before it started"})
                continue
            running[workdir] = subprocess.Popen(elf_argv(manifest["python"], manifest["elf"], args), cwd=workdir,
                                                stdin=subprocess.DEVNULL, close_fds=True)
        for workdir, proc in list(running.items()):
            if proc.poll() is not None:
                del running[workdir]
            elif elf.read_verdict(workdir) == elf.CANCELLED and not getattr(proc, "_wb_cancelled", 0):
                proc._wb_cancelled = 1
                proc.send_signal(signal.SIGTERM)
        if stopping and not running:
            break
        if running:
            time.sleep(BUNDLE_TICK)
    return 143 if stopping else 0


COMMANDS = {"start": cmd_start, "prepare": cmd_prepare, "probe": cmd_probe, "cancel": cmd_cancel}


def cmd_relay():
    """Serve ``start`` and ``probe`` requests, one JSON line each, each answered by one line carrying its ``seq``,
    until the end of the input: a launcher keeps one running per host and account, so that a launch costs no
    process start here (the payload is then the only process an attempt starts).

    It also stays connected to each resident agent it handed an attempt to and prints ``{"end": workdir}``
    for every attempt that agent ends, and ``{"agent_gone": dir}`` when the agent's connection ends: the
    launcher then looks at its attempts at once instead of at its next poll (the files stay the truth).
    """
    pending, watches = b"", {}  # watches: the agents' connections, by descriptor

    def say(message):
        data = (json.dumps(message, ensure_ascii=True, separators=(",", ":")) + "\n").encode("ascii")
        while data:
            data = data[os.write(1, data):]

    while True:
        ready = select.select([0] + list(watches), [], [])[0]
        for fd in ready:
            if fd != 0:
                directory, sock, pid = watches[fd]
                try:
                    data = sock.recv(1 << 16)
                    message = json.loads(data) if data else None
                except (OSError, ValueError):
                    data, message = b"", None
                if not data:
                    del watches[fd]
                    sock.close()
                    # its socket closes before all its descriptors have: the launch locks go with the process
                    deadline = time.time() + 2.0
                    while isinstance(pid, int) and _alive(pid) and time.time() < deadline:
                        time.sleep(0.01)
                    say({"agent_gone": directory})
                elif isinstance(message, dict) and "end" in message:
                    say({"end": message["end"]})
                continue
            data = os.read(0, 1 << 16)
            if not data:
                return 0
            pending += data
            while b"\n" in pending:
                line, _, pending = pending.partition(b"\n")
                say(_relayed(line, watches))
        try:  # the elfs it started (attempts that push) and ended: a one-shot command's exit left them to init
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass


def _relayed(line, watches):
    """One relayed request (a start, or a probe with ``"op": "probe"``): its answer, carrying its ``seq``; the
    agent a start went to is watched from then on."""
    seq = None
    try:
        request = json.loads(line.decode("utf-8"))
        seq = request.pop("seq", None)
        starting = request.pop("op", "start") != "probe"
        reply = cmd_start(request) if starting else cmd_probe(request)
        resident = request.get("resident")
        if starting and "pid" in reply and resident and resident["dir"] not in [w[0] for w in watches.values()]:
            try:
                greeting = []
                sock = _resident(None, resident, start=False, hello=greeting)
                watches[sock.fileno()] = (resident["dir"], sock, greeting[0].get("hello"))
            except (OSError, ValueError, AttributeError):
                pass  # gone already: the launcher's poll sees to its attempts
    except OSError as exc:
        reply = _failure(exc)
    except Exception as exc:  # a bad request must not end the relay of every later one
        reply = {"error": "%s: %s" % (type(exc).__name__, exc)}
    reply["seq"] = seq
    return reply


def _failure(exc):
    """The reply to a request that failed with OSError ``exc``."""
    return {"error": "%s: %s" % (getattr(exc, "filename", "") or "", exc.strerror or exc)}


def main(argv):
    if len(argv) == 3 and argv[1] == "bundle":
        return cmd_bundle(argv[2])
    if argv[1:] == ["relay"]:
        os.umask(0o077)
        return cmd_relay()
    if len(argv) != 2 or argv[1] not in COMMANDS:
        sys.stderr.write("usage: agent.py {%s} < request.json | agent.py bundle MANIFEST\n" % ",".join(COMMANDS))
        return 2
    os.umask(0o077)
    request = json.loads(sys.stdin.buffer.read().decode("utf-8"))
    try:
        reply = COMMANDS[argv[1]](request)
    except OSError as exc:
        reply = _failure(exc)
    sys.stdout.write(json.dumps(reply, ensure_ascii=True, separators=(",", ":")) + "\n")
    sys.stdout.flush()
    # Non-zero exits stop a command line chained after the agent (prepare && sbatch): 3 = already prepared.
    if reply.get("error") == "exists" or "exists" in reply.get("items", ()):
        return 3
    return 1 if reply.get("error") else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
