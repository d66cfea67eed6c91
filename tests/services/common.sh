# shellcheck shell=bash
# Shared helpers for the service scripts in tests/services/. Sourced, never run.
#
# Every service keeps all of its state (config, data, logs, pid files) under
# $BROKER_TEST_SERVICES_DIR/<name> (default /tmp/broker-test-services/<name>), so a service is found again
# by the next `start` (idempotent) and `stop` only touches what a script started (its own pid files).
# Progress goes to stderr; stdout is reserved for `env`, which prints BROKER_TEST_* lines.

set -euo pipefail

SERVICES_ROOT=${BROKER_TEST_SERVICES_DIR:-/tmp/broker-test-services}
# shellcheck disable=SC2034  # used by the scripts that source this file
{
    #: the non-root accounts that SSH and SLURM tests log in / submit as
    TEST_USER=broker-test
    TEST_USER2=broker-test2
    #: seconds a daemon may take to become ready before `start` gives up
    READY_TIMEOUT=${BROKER_TEST_READY_TIMEOUT:-90}
}

say() { printf '%s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

now() { printf '%s' "$EPOCHREALTIME"; }
# Seconds since a `now` value, one decimal.
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

is_root() { [ "$(id -u)" = 0 ]; }
require_root() { is_root || die "$1 needs root (it installs packages, adds users and starts system daemons)"; }

# Debian packages of the list that are not installed.
missing_packages() {
    local p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || printf '%s\n' "$p"
    done
}

# Install the packages that are missing; `apt-get update` runs at most once an hour across all scripts.
apt_install() {
    local missing t0 stamp="$SERVICES_ROOT/.apt-updated"
    missing=$(missing_packages "$@" | paste -sd' ')
    [ -n "$missing" ] || return 0
    require_root "installing $missing"
    mkdir -p "$SERVICES_ROOT"
    export DEBIAN_FRONTEND=noninteractive
    if [ -z "$(find "$stamp" -mmin -60 2>/dev/null)" ]; then
        apt-get -o DPkg::Lock::Timeout=900 -qq update >&2 && touch "$stamp"
    fi
    t0=$(now)
    say "  installing $missing (apt-get)..."
    # shellcheck disable=SC2086  # one package name per word
    if ! apt-get -o DPkg::Lock::Timeout=900 -qq install -y --no-install-recommends $missing \
            >"$SERVICES_ROOT/.apt-install.log" 2>&1; then
        tail -n 30 "$SERVICES_ROOT/.apt-install.log" >&2
        die "apt-get install $missing failed (log: $SERVICES_ROOT/.apt-install.log)"
    fi
    say "  installed $missing in $(since "$t0") s"
}

# Set variable $1 to a TCP port on 127.0.0.1 that nothing uses (nor an earlier pick of this script).
# Taken below the kernel's ephemeral range (32768+) so an outgoing connection cannot grab it between a
# `kill` and the restart that must reuse it.
pick_port() {
    local used port
    used=$(ss -Htan | awk '{ n = split($4, a, ":"); print a[n] }' | sort -u)
    for _ in $(seq 200); do
        port=$((20000 + RANDOM % 12000))
        if ! grep -qx "$port" <<<"$used" && ! grep -qx "$port" <<<"${PICKED_PORTS:-}"; then
            PICKED_PORTS="${PICKED_PORTS:-}"$'\n'"$port"
            printf -v "$1" '%s' "$port"
            return 0
        fi
    done
    die "no free TCP port found in 20000-31999"
}

# True when something accepts connections on 127.0.0.1:$1.
port_open() { timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# True when a socket other than a TIME-WAIT leftover holds local port $1. Our daemons bind with SO_REUSEADDR,
# so TIME-WAIT sockets from the previous run (many after a kill) do not stop them reusing their ports.
port_in_use() { ss -Htan exclude time-wait | awk '{ n = split($4, a, ":"); print a[n] }' | grep -qx "$1"; }

# Poll a command every 0.1 s until it succeeds or $1 seconds have passed (then return 1).
wait_until() {
    local deadline=$((EPOCHSECONDS + $1))
    shift
    until "$@"; do
        [ "$EPOCHSECONDS" -lt "$deadline" ] || return 1
        sleep 0.1
    done
}

# True when process $1 exists and is not a zombie: our daemons are re-parented to PID 1, which here reaps
# them only after a while, and `kill -0` succeeds on a zombie. A zombie main thread is not enough: in a
# many-threaded process (a JVM) killed with SIGKILL the main thread can be a zombie while the other threads
# are still exiting, and until the last one has, the process's sockets stay open.
pid_alive() {
    local state tasks
    state=$(ps -o stat= -p "$1" 2>/dev/null) && [[ -n $state ]] || return 1
    [[ $state != Z* ]] && return 0
    tasks=$(find "/proc/$1/task" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
    [ "$tasks" -gt 1 ]
}

# When process $1 started; with the pid it names a process for good, even after the pid is reused.
pid_started() { ps -o lstart= -p "$1" 2>/dev/null; }

# Pid read from a pid file (pid, then its start time), if that very process is still alive.
live_pid() {
    local pid started
    [ -s "$1" ] || return 1
    { read -r pid; read -r started || true; } <"$1"
    [ -n "$pid" ] && pid_alive "$pid" && [ "$(pid_started "$pid")" = "$started" ] && printf '%s' "$pid"
}

# Start a foreground daemon detached from us: its own session (Ctrl-C on tests/run does not reach it),
# stdin from /dev/null, output to a log, and none of our other file descriptors (a daemon holding the
# CI job's pipe open would keep the job from finishing). Writes its pid to the pid file $1.
daemonize() {
    local pidfile=$1 logfile=$2
    shift 2
    (
        cd /
        for fd in "/proc/$BASHPID/fd/"*; do
            fd=${fd##*/}
            if [ "$fd" -gt 2 ] 2>/dev/null; then eval "exec $fd>&-" 2>/dev/null || true; fi
        done
        exec setsid "$@" </dev/null >>"$logfile" 2>&1
    ) &
    printf '%s\n%s\n' "$!" "$(pid_started "$!")" >"$pidfile"
}

pid_gone() { ! pid_alive "$1"; }

# Send signal $2 (default TERM) to the pid in pid file $1 and wait up to 30 s for it to exit.
stop_pidfile() {
    local pidfile=$1 sig=${2:-TERM} pid
    if pid=$(live_pid "$pidfile"); then
        kill "-$sig" "$pid" 2>/dev/null || true
        wait_until 30 pid_gone "$pid" || { kill -KILL "$pid" 2>/dev/null || true; }
        wait_until 5 pid_gone "$pid" || die "pid $pid ($pidfile) does not exit"
    fi
    rm -f "$pidfile"
}

# Print the last lines of a log and fail: used when a daemon dies or never becomes ready.
fail_with_log() {
    say "---- last lines of $2 ----"
    tail -n 25 "$2" >&2 2>/dev/null || true
    die "$1"
}

# Create a test account if missing. `useradd` leaves a locked password ("!"), and sshd with UsePAM no
# refuses locked accounts even for key logins: '*' means "no password" without "locked".
ensure_user() {
    local user=$1
    id -u "$user" >/dev/null 2>&1 || useradd -m -s /bin/bash "$user"
    [ "$(getent shadow "$user" | cut -d: -f2)" = '*' ] || usermod -p '*' "$user"
}

# Print KEY=VALUE lines, values shell-quoted, for `eval` in bash and shlex in Python.
print_env() {
    while [ $# -gt 0 ]; do
        printf '%s=%q\n' "$1" "$2"
        shift 2
    done
}

# Run the subcommand named on the command line: each script defines cmd_start, cmd_stop, cmd_status, cmd_env.
dispatch() {
    local name=$1
    shift
    if [ $# -eq 1 ] && declare -F "cmd_$1" >/dev/null; then
        # One script run at a time per service: two test processes starting it at once get one instance.
        mkdir -p "$SERVICES_ROOT"
        exec 9>"$SERVICES_ROOT/.$name.lock"
        flock -w 900 9 || die "another tests/services/$name.sh is still running after 900 s"
        "cmd_$1"
    else
        die "usage: tests/services/$name.sh $(declare -F | awk '/ cmd_/ { sub("cmd_", "", $3); print $3 }' | paste -sd'|')"
    fi
}
