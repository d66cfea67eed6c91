# wb-run.sh: runs one payload attempt for the broker's local launcher (POSIX sh, started as
#   /bin/sh wb-run.sh WORKDIR INTERPRETER PAYLOAD
# in a session of its own, so it and the payload outlive a broker that is killed).
#
# It writes into WORKDIR:
#   pid     its own pid, which is the id of the attempt's process group
#   stdout  the payload's standard output; stderr: its standard error
#   exit    the payload's exit status once it has ended (128+N when killed by signal N)
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
echo $$ >"$wd/pid"
"$2" "$3" >"$wd/stdout" 2>"$wd/stderr"
echo $? >"$wd/exit"
