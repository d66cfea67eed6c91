#!/usr/bin/env bash
# A single-node SLURM 22.05 cluster (slurmctld + slurmd + munge) for the tests. Needs root.
#
#   tests/services/slurm.sh start|stop|status|env
#
# The commands (sbatch, squeue, ...) read /etc/slurm/slurm.conf, also in SSH sessions of the test users,
# so that is where the config goes; it carries a marker line and an unmarked one (a real cluster's) is
# never overwritten. Everything else (spool, state, logs, pids, a shared work directory) is under $DIR.
# Tuned for tests (each found when the cluster was first brought up on a 2-core Debian 12 machine): the node
# advertises 16 CPUs (config_overrides; with the 2 real ones only 2 jobs ran at once), DefMemPerCPU lets jobs
# share the node (without it each job takes the node's whole memory: one job at a time), and the scheduler runs
# at once (batch_sched_delay=0, sched_min_interval=0: by default a new allocation came only every ~3 s).
# shellcheck source=tests/services/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

DIR=$SERVICES_ROOT/slurm
CONF=/etc/slurm/slurm.conf
MARKER='# Written by tests/services/slurm.sh for the test suite; rewritten at each start.'
PARTITION=debug
#: CPUs the node advertises: 2 real cores would run only 2 jobs at a time
CPUS=16

load_ports() {
    CTLD_PORT='' SLURMD_PORT=''
    # shellcheck source=/dev/null
    if [ -s "$DIR/ports.env" ]; then source "$DIR/ports.env"; fi
}

munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

node_ready() { sinfo -h -N -o %T 2>/dev/null | grep -qxE 'idle|mixed|allocated|completing'; }

running() {
    live_pid "$DIR/slurmctld.pid" >/dev/null && live_pid "$DIR/slurmd.pid" >/dev/null && node_ready
}

choose_ports() {
    load_ports
    if [ -z "$CTLD_PORT" ] || port_in_use "$CTLD_PORT" || port_in_use "$SLURMD_PORT"; then
        pick_port CTLD_PORT
        pick_port SLURMD_PORT
        printf 'CTLD_PORT=%s\nSLURMD_PORT=%s\n' "$CTLD_PORT" "$SLURMD_PORT" >"$DIR/ports.env"
    fi
}

write_config() {
    local host
    host=$(hostname -s)
    if [ -f "$CONF" ] && ! grep -qxF "$MARKER" "$CONF"; then
        die "$CONF exists and was not written by this script; refusing to replace a real cluster's config"
    fi
    # 22.05 has no CgroupPlugin=disabled: any cgroup.conf we did not write can only break slurmd here.
    if [ -f /etc/slurm/cgroup.conf ]; then
        say "  moving /etc/slurm/cgroup.conf aside (slurmd 22.05 fails on it in a container)"
        mv /etc/slurm/cgroup.conf /etc/slurm/cgroup.conf.disabled-by-broker-test
    fi
    mkdir -p /etc/slurm
    cat >"$CONF.tmp" <<EOF
$MARKER
ClusterName=broker
SlurmctldHost=$host(127.0.0.1)
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.log
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=100
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,bf_interval=1
ReturnToService=2
MinJobAge=300
MessageTimeout=10
CommunicationParameters=NoInAddrAny
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
StateSaveLocation=$DIR/spool/ctld
SlurmdSpoolDir=$DIR/spool/d
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$host NodeAddr=127.0.0.1 CPUs=$CPUS Boards=1 SocketsPerBoard=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=8000 State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
    chmod 644 "$CONF.tmp"
    mv "$CONF.tmp" "$CONF"
}

prepare_dirs() {
    mkdir -p "$DIR/spool/ctld" "$DIR/spool/d" "$DIR/log" "$DIR/run" "$DIR/work"
    chown slurm:slurm "$DIR/spool/ctld" "$DIR/log" "$DIR/run"
    # Jobs of both test users write here and the tests (root) read their output.
    chmod 1777 "$DIR/work"
}

# Reuse a munged that already answers (someone else's: left alone by `stop`); else start our own.
start_munge() {
    munge_works && return 0
    [ -s /etc/munge/munge.key ] || setpriv --reuid=munge --regid=munge --init-groups mungekey --create
    mkdir -p /run/munge
    chown munge:munge /run/munge
    # --force: a munged that died uncleanly leaves a socket lock behind that would stop this one.
    daemonize "$DIR/munged.pid" "$DIR/log/munged.out" \
        setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged --foreground --force
    wait_until 20 munge_works || fail_with_log "munged did not start" "$DIR/log/munged.out"
}

cmd_start() {
    local t0
    require_root "SLURM"
    mkdir -p "$DIR"
    if running; then
        load_ports
        say "SLURM already running: partition $PARTITION, slurmctld port $CTLD_PORT"
        return 0
    fi
    if [ ! -x /usr/sbin/slurmctld ] || [ ! -x /usr/sbin/munged ]; then apt_install slurm-wlm munge; fi
    ensure_user "$TEST_USER"
    ensure_user "$TEST_USER2"
    t0=$(now)
    prepare_dirs
    start_munge
    # A half-started cluster (one daemon died) is restarted whole, with the config written afresh.
    stop_pidfile "$DIR/slurmd.pid"
    stop_pidfile "$DIR/slurmctld.pid"
    choose_ports
    write_config
    daemonize "$DIR/slurmctld.pid" "$DIR/log/slurmctld.out" /usr/sbin/slurmctld -D
    daemonize "$DIR/slurmd.pid" "$DIR/log/slurmd.out" /usr/sbin/slurmd -D
    wait_until "$READY_TIMEOUT" node_ready || {
        tail -n 10 "$DIR/log/slurmd.log" >&2 2>/dev/null || true
        fail_with_log "SLURM node not idle after $READY_TIMEOUT s" "$DIR/log/slurmctld.log"
    }
    say "SLURM ready: partition $PARTITION, $CPUS CPUs, slurmctld port $CTLD_PORT ($(since "$t0") s)"
}

cmd_stop() {
    stop_pidfile "$DIR/slurmd.pid"
    stop_pidfile "$DIR/slurmctld.pid"
    stop_pidfile "$DIR/munged.pid"
    say "SLURM stopped"
}

cmd_status() { running; }

cmd_env() {
    running || die "SLURM is not running (tests/services/slurm.sh start)"
    print_env BROKER_TEST_SLURM 1 \
        BROKER_TEST_SLURM_PARTITION "$PARTITION" \
        BROKER_TEST_SLURM_USER "$TEST_USER" \
        BROKER_TEST_SLURM_CPUS "$CPUS" \
        BROKER_TEST_SLURM_WORKDIR "$DIR/work" \
        BROKER_TEST_SLURM_JOBCOMP "$DIR/log/jobcomp.log" \
        BROKER_TEST_SLURM_CONF "$CONF"
}

dispatch slurm "$@"
