#!/usr/bin/env bash
# A RabbitMQ node of its own for the tests, with the STOMP plugin, on free loopback ports.
#
#   tests/services/rabbitmq.sh start|stop|status|env
#
# The machine's own node (rabbit@localhost, AMQP 5672, STOMP not enabled) is left alone: this script runs a
# second node, broker-test@localhost, with its own epmd, config, plugins file, Mnesia directory and logs
# under $DIR. Touching the shared node would mean editing /etc/rabbitmq and restarting someone else's broker.
# shellcheck source=tests/services/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

DIR=$SERVICES_ROOT/rabbitmq
NODE=broker-test@localhost
PIDFILE=$DIR/server.pid
LOG=$DIR/server.out

load_ports() {
    STOMP_PORT='' AMQP_PORT='' DIST_PORT='' EPMD_PORT=''
    # shellcheck source=/dev/null
    if [ -s "$DIR/ports.env" ]; then source "$DIR/ports.env"; fi
}

running() { live_pid "$PIDFILE" >/dev/null && port_open "$STOMP_PORT"; }

choose_ports() {
    local port
    load_ports
    for port in "$STOMP_PORT" "$AMQP_PORT" "$DIST_PORT" "$EPMD_PORT"; do
        if [ -z "$port" ] || port_in_use "$port"; then
            pick_port STOMP_PORT
            pick_port AMQP_PORT
            pick_port DIST_PORT
            pick_port EPMD_PORT
            printf 'STOMP_PORT=%s\nAMQP_PORT=%s\nDIST_PORT=%s\nEPMD_PORT=%s\n' \
                "$STOMP_PORT" "$AMQP_PORT" "$DIST_PORT" "$EPMD_PORT" >"$DIR/ports.env"
            return 0
        fi
    done
}

write_config() {
    # guest/guest works from loopback only, which is all we listen on.
    cat >"$DIR/rabbitmq.conf" <<EOF
listeners.tcp.1 = 127.0.0.1:$AMQP_PORT
stomp.listeners.tcp.1 = 127.0.0.1:$STOMP_PORT
stomp.default_user = guest
stomp.default_pass = guest
EOF
    echo '[rabbitmq_stomp].' >"$DIR/enabled_plugins"
    echo '[].' >"$DIR/advanced.config"
    # An empty env file, so /etc/rabbitmq/rabbitmq-env.conf (NODENAME=rabbit@localhost, ...) is not read.
    : >"$DIR/rabbitmq-env.conf"
}

# The node runs as the rabbitmq account when we are root (its files should not be root's), else as us.
run_as() {
    if is_root; then
        RUN_AS=(setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups env "HOME=$DIR")
    else
        RUN_AS=(env "HOME=$DIR")
    fi
}

start_node() {
    export ERL_EPMD_PORT=$EPMD_PORT ERL_EPMD_ADDRESS=127.0.0.1
    export RABBITMQ_NODENAME=$NODE RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT=$AMQP_PORT
    export RABBITMQ_DIST_PORT=$DIST_PORT RABBITMQ_CONF_ENV_FILE=$DIR/rabbitmq-env.conf
    export RABBITMQ_CONFIG_FILE=$DIR/rabbitmq.conf RABBITMQ_ADVANCED_CONFIG_FILE=$DIR/advanced.config
    export RABBITMQ_ENABLED_PLUGINS_FILE=$DIR/enabled_plugins RABBITMQ_MNESIA_BASE=$DIR/mnesia
    export RABBITMQ_LOG_BASE=$DIR/log RABBITMQ_PID_FILE=$DIR/beam.pid
    export RABBITMQ_PLUGINS_EXPAND_DIR=$DIR/plugins-expand
    # Erlang distribution would otherwise listen on every interface.
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
    run_as
    # Our own epmd on our own port: `stop` can then end it without touching the machine's epmd.
    daemonize "$DIR/epmd.pid" "$DIR/epmd.out" "${RUN_AS[@]}" epmd -port "$EPMD_PORT" -address 127.0.0.1
    wait_until 10 port_open "$EPMD_PORT" || fail_with_log "epmd did not start" "$DIR/epmd.out"
    daemonize "$PIDFILE" "$LOG" "${RUN_AS[@]}" /usr/lib/rabbitmq/bin/rabbitmq-server
}

ready_or_dead() { ! live_pid "$PIDFILE" >/dev/null || port_open "$STOMP_PORT"; }

cmd_start() {
    local t0
    mkdir -p "$DIR"
    load_ports
    if running; then
        say "RabbitMQ already running: STOMP $STOMP_PORT, AMQP $AMQP_PORT"
        return 0
    fi
    [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || apt_install rabbitmq-server
    if ! live_pid "$PIDFILE" >/dev/null; then
        stop_pidfile "$DIR/epmd.pid"
        choose_ports
        write_config
        if is_root; then chown -R rabbitmq:rabbitmq "$DIR"; fi
        t0=$(now)
        start_node
    else
        t0=$(now)
    fi
    wait_until "$READY_TIMEOUT" ready_or_dead || fail_with_log "RabbitMQ not ready after $READY_TIMEOUT s" "$LOG"
    running || fail_with_log "RabbitMQ exited during start-up (logs in $DIR/log)" "$LOG"
    say "RabbitMQ ready: STOMP $STOMP_PORT, AMQP $AMQP_PORT, node $NODE ($(since "$t0") s)"
}

cmd_stop() {
    # TERM to the rabbitmq-server wrapper makes it shut the node down cleanly and wait for it.
    stop_pidfile "$PIDFILE" TERM
    stop_pidfile "$DIR/beam.pid" TERM
    stop_pidfile "$DIR/epmd.pid" TERM
    say "RabbitMQ stopped"
}

cmd_status() {
    load_ports
    running
}

cmd_env() {
    load_ports
    running || die "RabbitMQ is not running (tests/services/rabbitmq.sh start)"
    print_env BROKER_TEST_RABBITMQ_STOMP_URL "stomp://127.0.0.1:$STOMP_PORT" \
        BROKER_TEST_RABBITMQ_AMQP_URL "amqp://guest:guest@127.0.0.1:$AMQP_PORT/" \
        BROKER_TEST_RABBITMQ_USER guest \
        BROKER_TEST_RABBITMQ_PASSWORD guest \
        BROKER_TEST_RABBITMQ_VHOST / \
        BROKER_TEST_RABBITMQ_DIR "$DIR"
}

dispatch rabbitmq "$@"
