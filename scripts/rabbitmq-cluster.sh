#!/usr/bin/env bash
# A three-node RabbitMQ cluster on this machine, beside the default broker, for the fault suite
# (`make faults`): nodes rpec-a, rpec-b and rpec-c, AMQP on 127.0.0.1:5681-5683.
#
#   bash scripts/rabbitmq-cluster.sh start|stop|status
#
# start: starts the three nodes (as the rabbitmq user, with the default node's Erlang cookie),
#        joins b and c to a, and waits until all three run; prints one line per node. Idempotent.
# stop:  stops the nodes and removes everything they wrote (/var/tmp/rpec-cluster).
# status: prints each node's state; exits 0 only when all three are running in one cluster.
#
# Each node has its own name, ports, data and log directories under $RPEC_CLUSTER_DIR (default
# /var/tmp/rpec-cluster/<node>) and its own configuration file: the machine's
# /etc/rabbitmq/rabbitmq.conf pins the default broker to 5672, so the nodes cannot read it.
# Needs root (or the rabbitmq user) and Debian's rabbitmq-server.
set -euo pipefail

readonly BASE="${RPEC_CLUSTER_DIR:-/var/tmp/rpec-cluster}"
readonly HOST="${RPEC_CLUSTER_HOST:-localhost}"
readonly NODES=(rpec-a rpec-b rpec-c)
readonly AMQP_PORTS=(5681 5682 5683)
readonly DIST_PORTS=(25681 25682 25683)
readonly COOKIE=/var/lib/rabbitmq/.erlang.cookie
readonly SERVER=/usr/lib/rabbitmq/bin/rabbitmq-server
readonly WAIT_SECS="${RPEC_CLUSTER_WAIT_SECS:-120}"

say() { echo "rabbitmq-cluster: $*"; }
die() {
    echo "rabbitmq-cluster: error: $*" >&2
    exit 1
}

ctl() {
    local node="$1"
    shift
    timeout 60 rabbitmqctl -q -n "$node@$HOST" "$@"
}

as_rabbitmq() {
    if [ "$(id -un)" = rabbitmq ]; then
        "$@"
    else
        runuser -u rabbitmq -- "$@"
    fi
}

port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" >/dev/null 2>&1
}

node_dir() { echo "$BASE/$1"; }

pid_of() {
    local f
    f="$(node_dir "$1")/pid"
    [ -s "$f" ] && cat "$f"
}

running() {
    local pid
    pid="$(pid_of "$1" 2>/dev/null)" || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

start_node() {
    local i="$1" node="${NODES[$1]}" dir
    dir="$(node_dir "$node")"
    if running "$node" && port_open "${AMQP_PORTS[$i]}"; then
        return 0
    fi
    mkdir -p "$dir/mnesia" "$dir/log"
    cat >"$dir/rabbitmq.conf" <<EOF
listeners.tcp.local = 127.0.0.1:${AMQP_PORTS[$i]}
loopback_users = none
EOF
    # Only the distribution settings of the machine's env file (it also names the default node).
    cat >"$dir/rabbitmq-env.conf" <<EOF
ERL_EPMD_ADDRESS=127.0.0.1
export ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"
EOF
    echo '[].' >"$dir/enabled_plugins"
    chown -R rabbitmq:rabbitmq "$BASE"
    (
        cd /var/lib/rabbitmq
        as_rabbitmq env HOME=/var/lib/rabbitmq \
            RABBITMQ_NODENAME="$node@$HOST" \
            RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
            RABBITMQ_NODE_PORT="${AMQP_PORTS[$i]}" \
            RABBITMQ_DIST_PORT="${DIST_PORTS[$i]}" \
            RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" \
            RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf" \
            RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
            RABBITMQ_MNESIA_BASE="$dir/mnesia" \
            RABBITMQ_LOG_BASE="$dir/log" \
            RABBITMQ_PID_FILE="$dir/pid" \
            setsid "$SERVER" -detached >"$dir/log/startup.log" 2>&1
    ) || die "$node did not start (see $dir/log)"
}

wait_node() {
    local i="$1" node="${NODES[$1]}"
    local deadline=$((SECONDS + WAIT_SECS))
    until ctl "$node" await_startup --timeout 10 >/dev/null 2>&1 && port_open "${AMQP_PORTS[$i]}"; do
        [ "$SECONDS" -lt "$deadline" ] || die "$node did not finish starting within ${WAIT_SECS}s (see $(node_dir "$node")/log)"
        sleep 1
    done
}

in_cluster_with_a() {
    ctl "$1" cluster_status --formatter json 2>/dev/null | grep -q "\"${NODES[0]}@$HOST\""
}

cmd_start() {
    command -v rabbitmqctl >/dev/null || die "rabbitmq-server is not installed (scripts/setup.sh installs it)"
    [ -r "$COOKIE" ] || die "no Erlang cookie at $COOKIE (start the default broker once)"
    [ "$(id -u)" -eq 0 ] || [ "$(id -un)" = rabbitmq ] || die "run as root or as the rabbitmq user"
    for i in 0 1 2; do
        start_node "$i"
    done
    for i in 0 1 2; do
        wait_node "$i"
    done
    for i in 1 2; do
        local node="${NODES[$i]}"
        if ! in_cluster_with_a "$node"; then
            # join_cluster prints errors about tables of the node it stopped: noise.
            ctl "$node" stop_app >/dev/null 2>&1 || die "$node: stop_app failed"
            ctl "$node" join_cluster "${NODES[0]}@$HOST" >/dev/null 2>&1 ||
                die "$node could not join ${NODES[0]}@$HOST (see $(node_dir "$node")/log)"
            ctl "$node" start_app >/dev/null 2>&1 || die "$node: start_app failed"
            wait_node "$i"
        fi
    done
    cmd_status
}

cmd_stop() {
    for node in "${NODES[@]}"; do
        local pid
        if pid="$(pid_of "$node" 2>/dev/null)" && [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            ctl "$node" stop >/dev/null 2>&1 || true
            local deadline=$((SECONDS + 30))
            while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.5; done
            kill -9 "$pid" 2>/dev/null || true
            say "stopped $node"
        fi
    done
    rm -rf "$BASE"
}

cmd_status() {
    local ok=0
    for i in 0 1 2; do
        local node="${NODES[$i]}" state
        if running "$node" && port_open "${AMQP_PORTS[$i]}"; then
            if in_cluster_with_a "$node"; then state="running, in the cluster"; else state="running, not clustered"; ok=1; fi
        else
            state="down"
            ok=1
        fi
        say "$node@$HOST amqp://127.0.0.1:${AMQP_PORTS[$i]} pid=$(pid_of "$node" 2>/dev/null || echo -) $state"
    done
    return "$ok"
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *)
        sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
        exit 2
        ;;
esac
