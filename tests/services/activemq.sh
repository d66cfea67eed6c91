#!/usr/bin/env bash
# A throwaway ActiveMQ Classic broker for the tests: Debian's `activemq` jars, run as a plain JVM from its
# own directory with OpenWire and STOMP on free loopback ports (no init script, no system instance).
#
#   tests/services/activemq.sh start|stop|kill|status|env
#
# Ports are picked once and kept in $DIR/ports.env, so `kill` (SIGKILL, a crash) followed by `start` brings
# the same broker back on the same ports with the same KahaDB store: the fault tests rely on that.
# BROKER_TEST_ACTIVEMQ_PERSISTENT=0 runs without a store (faster, nothing survives a restart).
# A third connector speaks STOMP over TLS (stomp+ssl) with a server certificate for the name localhost only
# (so that 127.0.0.1 is a name it does not match), signed by a throwaway CA made here ($DIR/tls/ca.pem).
# shellcheck source=tests/services/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

DIR=$SERVICES_ROOT/activemq
PIDFILE=$DIR/broker.pid
LOG=$DIR/broker.out
HOME_DIR=/usr/share/activemq
PERSISTENT=${BROKER_TEST_ACTIVEMQ_PERSISTENT:-1}
#: JMS client jars (Debian's libactivemq-java and its dependencies) for a Java consumer in the tests
JMS_JARS=(activemq-client geronimo-jms_1.1_spec hawtbuf slf4j-api slf4j-nop geronimo-j2ee-management-1.1-spec)

# The JVM as an operator would size and tune it for a small machine: a fixed heap (no resizing while a backlog
# comes in) and the C1 compiler only (-XX:TieredStopAtLevel=1). After a restart the default tiered compilation
# spent 1.8 s of CPU in its compilers while a 10,000-event backlog drained, half of the bus's CPU; C1 alone
# compiles in a few milliseconds at a cost in peak throughput (README "Performance"). Override to compare:
# BROKER_TEST_ACTIVEMQ_JVM="-Xms64M -Xmx256M -XX:+UseSerialGC" (the options before 2026-12-06).
JVM_OPTIONS=${BROKER_TEST_ACTIVEMQ_JVM:--Xms256M -Xmx256M -XX:+UseSerialGC -XX:TieredStopAtLevel=1}

TLS_DIR=$DIR/tls
#: password of the server's PKCS#12 key store (a throwaway key on loopback)
KEYSTORE_PASSWORD=broker-test

load_ports() {
    STOMP_PORT='' OPENWIRE_PORT='' SSL_PORT=''
    # shellcheck source=/dev/null
    if [ -s "$DIR/ports.env" ]; then source "$DIR/ports.env"; fi
}

all_ports_open() { port_open "$STOMP_PORT" && port_open "$OPENWIRE_PORT" && port_open "$SSL_PORT"; }
running() { live_pid "$PIDFILE" >/dev/null && all_ports_open; }

ensure_installed() {
    # The Java JMS consumer in the interop tests is compiled at test time, so a JDK, not just a JRE.
    if ! command -v javac >/dev/null || ! java -version >/dev/null 2>&1; then
        apt_install default-jdk-headless
    fi
    [ -f "$HOME_DIR/bin/activemq.jar" ] || apt_install activemq
    command -v openssl >/dev/null || apt_install openssl
}

# Keep the saved ports unless another process took one while the broker was down.
choose_ports() {
    load_ports
    if [ -z "$STOMP_PORT" ] || [ -z "$SSL_PORT" ] || port_in_use "$STOMP_PORT" || port_in_use "$OPENWIRE_PORT" \
            || port_in_use "$SSL_PORT"; then
        pick_port STOMP_PORT
        pick_port OPENWIRE_PORT
        pick_port SSL_PORT
        printf 'STOMP_PORT=%s\nOPENWIRE_PORT=%s\nSSL_PORT=%s\n' "$STOMP_PORT" "$OPENWIRE_PORT" "$SSL_PORT" \
            >"$DIR/ports.env"
    fi
}

# A CA and a server certificate (localhost) in a PKCS#12 key store; made once, kept.
make_tls() {
    [ -s "$TLS_DIR/server.p12" ] && return 0
    mkdir -p "$TLS_DIR"
    (
        cd "$TLS_DIR"
        openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=broker-test CA" \
            -keyout ca.key -out ca.pem 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr 2>/dev/null
        printf 'subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n' >server.ext
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
            -extfile server.ext -out server.pem 2>/dev/null
        openssl pkcs12 -export -in server.pem -inkey server.key -certfile ca.pem -name broker-test \
            -passout "pass:$KEYSTORE_PASSWORD" -out server.p12.tmp
        mv server.p12.tmp server.p12
    ) || die "could not make the TLS certificates in $TLS_DIR"
}

write_config() {
    local store='' persistent=false
    if [ "$PERSISTENT" = 1 ]; then
        persistent=true
        store="<persistenceAdapter><kahaDB directory=\"$DIR/data/kahadb\"/></persistenceAdapter>"
    fi
    mkdir -p "$DIR/conf" "$DIR/data"
    # The broker logs through log4j 1.2; without this file it logs nothing at all.
    cat >"$DIR/conf/log4j.properties" <<'EOF'
log4j.rootLogger=INFO, stdout
log4j.logger.org.springframework=WARN
log4j.logger.org.apache.xbean=WARN
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=%d | %-5p | %m | %c | %t%n
EOF
    # Small usage limits: the defaults (100 GB store) only produce warnings on a test machine's disk.
    cat >"$DIR/conf/activemq.xml" <<EOF
<beans xmlns="http://www.springframework.org/schema/beans"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
  xsi:schemaLocation="http://www.springframework.org/schema/beans http://www.springframework.org/schema/beans/spring-beans-2.0.xsd
  http://activemq.apache.org/schema/core http://activemq.apache.org/schema/core/activemq-core.xsd">
  <broker xmlns="http://activemq.apache.org/schema/core" brokerName="broker-test" useJmx="false"
          schedulerSupport="false" persistent="$persistent" dataDirectory="$DIR/data">
    $store
    <systemUsage><systemUsage>
      <memoryUsage><memoryUsage limit="64 mb"/></memoryUsage>
      <storeUsage><storeUsage limit="1 gb"/></storeUsage>
      <tempUsage><tempUsage limit="512 mb"/></tempUsage>
    </systemUsage></systemUsage>
    <sslContext>
      <sslContext keyStore="file:$TLS_DIR/server.p12" keyStoreType="pkcs12" keyStorePassword="$KEYSTORE_PASSWORD"/>
    </sslContext>
    <transportConnectors>
      <transportConnector name="openwire" uri="tcp://127.0.0.1:$OPENWIRE_PORT"/>
      <transportConnector name="stomp" uri="stomp://127.0.0.1:$STOMP_PORT"/>
      <transportConnector name="stomp+ssl" uri="stomp+ssl://127.0.0.1:$SSL_PORT"/>
    </transportConnectors>
  </broker>
</beans>
EOF
}

ready_or_dead() { ! live_pid "$PIDFILE" >/dev/null || all_ports_open; }

cmd_start() {
    local t0
    mkdir -p "$DIR"
    load_ports
    if running; then
        say "ActiveMQ already running: STOMP $STOMP_PORT, OpenWire $OPENWIRE_PORT"
        return 0
    fi
    ensure_installed
    if [ -z "$SSL_PORT" ] && live_pid "$PIDFILE" >/dev/null; then
        say "ActiveMQ runs without the TLS connector (started by an older version of this script): restarting it"
        stop_pidfile "$PIDFILE" TERM
    fi
    # A JVM that is still starting (pid alive, ports not open yet) is waited for, not started twice.
    if ! live_pid "$PIDFILE" >/dev/null; then
        choose_ports
        make_tls
        write_config
        t0=$(now)
        # shellcheck disable=SC2086
        daemonize "$PIDFILE" "$LOG" java $JVM_OPTIONS -Djava.awt.headless=true \
            -Djava.io.tmpdir="$DIR/data" -Dactivemq.classpath="$DIR/conf" -Dactivemq.home="$HOME_DIR" \
            -Dactivemq.base="$DIR" -Dactivemq.conf="$DIR/conf" -Dactivemq.data="$DIR/data" \
            -jar "$HOME_DIR/bin/activemq.jar" start "xbean:file:$DIR/conf/activemq.xml"
    else
        t0=$(now)
    fi
    wait_until "$READY_TIMEOUT" ready_or_dead || fail_with_log "ActiveMQ not ready after $READY_TIMEOUT s" "$LOG"
    running || fail_with_log "ActiveMQ exited during start-up" "$LOG"
    say "ActiveMQ ready: STOMP $STOMP_PORT, OpenWire $OPENWIRE_PORT, STOMP+TLS $SSL_PORT, persistent=$PERSISTENT" \
        "($(since "$t0") s)"
}

# Neither port accepts any more: what the fault tests mean by "the bus is down".
ports_closed() { ! port_open "$STOMP_PORT" && ! port_open "$OPENWIRE_PORT" && ! port_open "$SSL_PORT"; }

cmd_stop() {
    load_ports
    stop_pidfile "$PIDFILE" TERM
    wait_until 10 ports_closed || die "ActiveMQ exited but its ports $STOMP_PORT/$OPENWIRE_PORT still accept"
    say "ActiveMQ stopped"
}

# A crash, not a shutdown: the fault tests kill the bus mid-run and start it again.
cmd_kill() {
    load_ports
    stop_pidfile "$PIDFILE" KILL
    wait_until 10 ports_closed || die "ActiveMQ killed but its ports $STOMP_PORT/$OPENWIRE_PORT still accept"
    say "ActiveMQ killed"
}

cmd_status() {
    load_ports
    running
}

cmd_env() {
    local jar classpath=''
    load_ports
    running || die "ActiveMQ is not running (tests/services/activemq.sh start)"
    for jar in "${JMS_JARS[@]}"; do
        [ -f "/usr/share/java/$jar.jar" ] && classpath=${classpath:+$classpath:}/usr/share/java/$jar.jar
    done
    print_env BROKER_TEST_ACTIVEMQ_STOMP_URL "stomp://127.0.0.1:$STOMP_PORT" \
        BROKER_TEST_ACTIVEMQ_STOMP_SSL_URL "stomp+ssl://localhost:$SSL_PORT" \
        BROKER_TEST_ACTIVEMQ_CA "$TLS_DIR/ca.pem" \
        BROKER_TEST_ACTIVEMQ_OPENWIRE_URL "tcp://127.0.0.1:$OPENWIRE_PORT" \
        BROKER_TEST_ACTIVEMQ_DIR "$DIR" \
        BROKER_TEST_ACTIVEMQ_PERSISTENT "$(grep -q 'persistent="true"' "$DIR/conf/activemq.xml" && echo 1 || echo 0)" \
        BROKER_TEST_ACTIVEMQ_CLASSPATH "$classpath"
}

dispatch activemq "$@"
