#!/usr/bin/env bash
# An OpenSSH server of its own on a free loopback port, key-only, for the test users. Needs root.
#
#   tests/services/sshd.sh start|stop|status|env
#
# Its own host key, client key, known_hosts and sshd_config live in $DIR; the machine's sshd (if any) and
# /etc/ssh are not touched. Both test users (broker-test, broker-test2) accept the same client key.
# shellcheck source=tests/services/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

DIR=$SERVICES_ROOT/sshd
PIDFILE=$DIR/sshd.pid

load_ports() {
    SSH_PORT=''
    # shellcheck source=/dev/null
    if [ -s "$DIR/ports.env" ]; then source "$DIR/ports.env"; fi
}

running() { live_pid "$PIDFILE" >/dev/null && port_open "$SSH_PORT"; }

ensure_keys() {
    [ -f "$DIR/ssh_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -C broker-test-host -f "$DIR/ssh_host_ed25519_key"
    [ -f "$DIR/client_key" ] || ssh-keygen -q -t ed25519 -N '' -C broker-test-client -f "$DIR/client_key"
}

authorize() {
    local user=$1 home
    home=$(getent passwd "$user" | cut -d: -f6)
    install -d -m 700 -o "$user" -g "$user" "$home/.ssh"
    # Appended, not replaced: several test-service directories (one per worktree or CI run) may each run an
    # sshd for the same test accounts, and replacing the file would lock the others' clients out.
    touch "$home/.ssh/authorized_keys"
    grep -qxF "$(cat "$DIR/client_key.pub")" "$home/.ssh/authorized_keys" \
        || cat "$DIR/client_key.pub" >>"$home/.ssh/authorized_keys"
    chown "$user:$user" "$home/.ssh/authorized_keys"
    chmod 600 "$home/.ssh/authorized_keys"
}

write_config() {
    # MaxSessions/MaxStartups: the broker multiplexes many channels over one connection and opens
    # connections in parallel; the defaults (10 sessions, random drops from 10 unauthenticated) would
    # make such tests flaky rather than fail for a reason.
    cat >"$DIR/sshd_config" <<EOF
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey $DIR/ssh_host_ed25519_key
PidFile none
PubkeyAuthentication yes
AuthorizedKeysFile .ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
AllowUsers $TEST_USER $TEST_USER2
UsePAM no
StrictModes yes
PrintMotd no
PrintLastLog no
MaxSessions 100
MaxStartups 100
Subsystem sftp internal-sftp
EOF
    # Both spellings of the host, with the port, as OpenSSH and paramiko look them up.
    local key
    key=$(cut -d' ' -f1,2 "$DIR/ssh_host_ed25519_key.pub")
    printf '[127.0.0.1]:%s %s\n[localhost]:%s %s\n' "$SSH_PORT" "$key" "$SSH_PORT" "$key" >"$DIR/known_hosts"
}

cmd_start() {
    local t0
    require_root "sshd"
    mkdir -p "$DIR"
    load_ports
    if running; then
        say "sshd already running: port $SSH_PORT"
        return 0
    fi
    [ -x /usr/sbin/sshd ] || apt_install openssh-server
    t0=$(now)
    ensure_user "$TEST_USER"
    ensure_user "$TEST_USER2"
    ensure_keys
    authorize "$TEST_USER"
    authorize "$TEST_USER2"
    stop_pidfile "$PIDFILE"
    if [ -z "$SSH_PORT" ] || port_in_use "$SSH_PORT"; then
        pick_port SSH_PORT
        printf 'SSH_PORT=%s\n' "$SSH_PORT" >"$DIR/ports.env"
    fi
    write_config
    # sshd's privilege-separation directory; normally made by its init script.
    install -d -m 755 /run/sshd
    /usr/sbin/sshd -t -f "$DIR/sshd_config" || die "sshd rejects $DIR/sshd_config"
    daemonize "$PIDFILE" "$DIR/sshd.out" /usr/sbin/sshd -D -f "$DIR/sshd_config" -E "$DIR/sshd.log"
    wait_until "$READY_TIMEOUT" port_open "$SSH_PORT" || fail_with_log "sshd not listening" "$DIR/sshd.log"
    say "sshd ready: port $SSH_PORT, users $TEST_USER $TEST_USER2 ($(since "$t0") s)"
}

cmd_stop() {
    stop_pidfile "$PIDFILE"
    say "sshd stopped"
}

cmd_status() {
    load_ports
    running
}

cmd_env() {
    load_ports
    running || die "sshd is not running (tests/services/sshd.sh start)"
    print_env BROKER_TEST_SSH_HOST 127.0.0.1 \
        BROKER_TEST_SSH_PORT "$SSH_PORT" \
        BROKER_TEST_SSH_USER "$TEST_USER" \
        BROKER_TEST_SSH_USER2 "$TEST_USER2" \
        BROKER_TEST_SSH_KEY "$DIR/client_key" \
        BROKER_TEST_SSH_KNOWN_HOSTS "$DIR/known_hosts"
}

dispatch sshd "$@"
