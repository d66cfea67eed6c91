# wb-run.sh: runs one payload attempt for the broker's local launcher (POSIX sh), started as
#   /bin/sh wb-run.sh WORKDIR INTERPRETER PAYLOAD  <launch.json (locked)
# in a session of its own, so it and the payload outlive a broker that is killed.
#
# Its standard input is the attempt's launch record, on which the launcher took an exclusive flock before
# spawning it: this shell holds that lock for as long as it lives, which is how a restarted broker tells
# "started and alive" from "never started or dead" (see broker/launchers/workdir.py). The payload never
# gets it (its standard input is /dev/null), so a payload's leftover children cannot keep an attempt alive.
#
# It writes into WORKDIR:
#   pid     its own pid, which is the id of the attempt's process group (first: without it, no payload ran)
#   stdout  the payload's standard output; stderr: its standard error
#   exit    the verdict: the payload's exit status (128+N when killed by signal N), created only if the
#           launcher has not created it first with "cancelled" or "timeout" (set -C: dash opens with O_EXCL)
#   killed_exit  the payload's exit status when the launcher's kill verdict came first
#
# Readers accept "pid" and "exit" only as one complete line ending with a newline. Each is written by one
# small write of the shell's builtin echo, so a reader sees nothing, a partial line (which it ignores) or
# the whole line. That replaces "write a temporary file, then mv": mv is a separate program, and starting
# it costs about 0.6 ms on the path from a payload's end to the start of the next one.
#
# SIGTERM (timeout, cancel) goes to the whole group: the payload gets it, and this shell, which traps it,
# still records how the payload ended. SIGKILL after the grace period ends both.
trap ':' TERM INT HUP
wd=$1
echo $$ >"$wd/pid" || exit 1
# killed before it could start (a cancel raced with the launch): the payload does not run at all
test -e "$wd/exit" && exit 0
"$2" "$3" </dev/null >"$wd/stdout" 2>"$wd/stderr"
rc=$?
set -C
echo $rc >"$wd/exit" || echo $rc >"$wd/killed_exit"
