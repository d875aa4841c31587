#!/usr/bin/env bash
# Prepare this machine for building, running and testing rpec-notify.
#
#   bash scripts/setup.sh [--with-chromium] [--with-test-tools]
#
# Idempotent and quiet when everything is already in place: it prints one line
# for each thing it installs or starts, and never runs `apt-get update` unless
# something actually has to be installed. Works on a fresh Debian 12 machine as
# root (or through sudo when not root).
#
# Ensures:
#   - PostgreSQL server installed, running, reachable on 127.0.0.1:5432 as user
#     postgres without a password (trust auth for local dev), database `rpec`.
#   - RabbitMQ installed and running on 127.0.0.1:5672 (guest/guest).
#   - a Rust toolchain (cargo, rustc >= 1.85), gcc, make, pkg-config and openssl.
#   - promtool (Debian's prometheus package), which checks the alert rules in deploy/prometheus/.
#   - with --with-chromium: Debian's chromium and chromium-driver.
#   - with --with-test-tools: the DKIM verifier the DKIM test checks signatures with (dkimpy,
#     Debian's python3-dkim and python3-nacl) and cargo-deny (built once from crates.io with
#     `cargo install --locked`, which takes a few minutes), for the licence, ban and source checks,
#     and Postfix's smtp-sink (scripts/postfix-tools.sh, unpacked under var/postfix), which the
#     SMTP client's test sends to; and what the event contract's tests (tests/it/schema.rs)
#     check the schemas with: python-jsonschema and PyYAML (Debian's python3-jsonschema and
#     python3-yaml) and the AsyncAPI 3.0.0 specification's JSON Schema, from the npm package
#     @asyncapi/specs (unpacked under var/asyncapi-specs).
set -euo pipefail
# Services are started with setsid, in a session of their own, so that they outlive the shell
# (or test runner) that happened to start them.

readonly MIN_RUST="1.85"
readonly PG_HOST="127.0.0.1"
readonly PG_PORT="5432"
readonly AMQP_PORT="5672"
readonly WAIT_PG_SECS=60
readonly WAIT_RABBIT_SECS=60

with_chromium=0
with_test_tools=0
for arg in "$@"; do
    case "$arg" in
        --with-chromium) with_chromium=1 ;;
        --with-test-tools) with_test_tools=1 ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "setup: unknown argument: $arg (usage: setup.sh [--with-chromium] [--with-test-tools])" >&2
            exit 2
            ;;
    esac
done

say() { echo "setup: $*"; }
warn() { echo "setup: warning: $*" >&2; }
die() {
    echo "setup: error: $*" >&2
    exit 1
}
have() { command -v "$1" >/dev/null 2>&1; }

# Run a command as root: directly when we are root, else through sudo.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif have sudo; then
        sudo -n "$@" || sudo "$@"
    else
        die "need root to run '$*' (not root and no sudo)"
    fi
}

# Install Debian packages; `apt-get update` runs once, and only when needed.
apt_updated=0
apt_install() {
    local log
    log="$(mktemp)"
    export DEBIAN_FRONTEND=noninteractive
    if [ "$apt_updated" -eq 0 ]; then
        if ! as_root apt-get update -q </dev/null >"$log" 2>&1; then
            tail -n 20 "$log" >&2
            rm -f "$log"
            die "apt-get update failed"
        fi
        apt_updated=1
    fi
    if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends -o Dpkg::Use-Pty=0 "$@" </dev/null >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        rm -f "$log"
        die "apt-get install $* failed"
    fi
    rm -f "$log"
    say "installed $*"
}

# Does something accept TCP connections on 127.0.0.1:$1?
port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" >/dev/null 2>&1
}

# version_ge A B: is dotted version A >= B?
version_ge() {
    [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n 1)" = "$2" ]
}

# ---------------------------------------------------------------- basics ----
ensure_build_tools() {
    local missing=()
    have gcc || missing+=(build-essential)
    have make || missing+=(build-essential)
    have pkg-config || missing+=(pkg-config)
    # cargo needs CA certificates to reach crates.io over TLS
    [ -s /etc/ssl/certs/ca-certificates.crt ] || missing+=(ca-certificates)
    # the TLS relay test makes its certificates with the openssl command
    have openssl || missing+=(openssl)
    if [ "${#missing[@]}" -gt 0 ]; then
        # de-duplicate
        mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
        apt_install "${missing[@]}"
    fi
}

# ------------------------------------------------------------------ rust ----
ensure_rust() {
    if ! have cargo && [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
        warn "cargo was not on PATH; using $HOME/.cargo/bin (add it to your PATH)"
    fi
    if ! have cargo; then
        warn "no Rust toolchain found; installing Debian's cargo (rpec-notify needs Rust >= $MIN_RUST, which Debian 12's may not be)"
        apt_install cargo rustc
    fi
    have rustc || die "cargo is present but rustc is not on PATH"

    local ver
    ver="$(rustc --version | awk '{print $2}')"
    ver="${ver%%-*}"
    if ! version_ge "$ver" "$MIN_RUST"; then
        die "Rust $ver is too old: rpec-notify needs Rust >= $MIN_RUST (install a newer toolchain, e.g. with rustup, and put it first on PATH)"
    fi
    if ! cargo fmt --version >/dev/null 2>&1; then
        warn "'cargo fmt' is not available: 'make test' and 'make fmt' need rustfmt"
    fi
    if ! cargo clippy --version >/dev/null 2>&1; then
        warn "'cargo clippy' is not available: 'make test' and 'make lint' need clippy"
    fi
}

# ------------------------------------------------------------ postgresql ----
pg_installed() {
    have pg_ctlcluster && have psql && have pg_isready &&
        compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null
}

pg_ready() {
    pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t 3 >/dev/null 2>&1
}

# psql over TCP as postgres, never prompting for a password.
pg_tcp() {
    PGCONNECT_TIMEOUT=5 psql -w -X -q -At -v ON_ERROR_STOP=1 \
        -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres "$@" </dev/null
}

# psql over the local socket as the postgres OS user (peer auth by default).
pg_local() {
    local cmd=(psql -w -X -q -At -v ON_ERROR_STOP=1 -p "$PG_PORT" -d postgres "$@")
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "${cmd[@]}" </dev/null
    elif [ "$(id -un)" = postgres ]; then
        "${cmd[@]}" </dev/null
    elif have sudo; then
        sudo -u postgres -- "${cmd[@]}" </dev/null
    else
        die "need root or sudo to reach PostgreSQL as user postgres"
    fi
}

ensure_postgres() {
    if ! pg_installed; then
        apt_install postgresql
    fi

    # The server may already be up and fully set up: the fast path.
    local has_db
    if has_db="$(pg_tcp -c "select count(*) from pg_database where datname = 'rpec'" 2>/dev/null)"; then
        if [ "$has_db" != "1" ]; then
            pg_tcp -c "create database rpec owner postgres" >/dev/null
            say "created PostgreSQL database rpec"
        fi
        return 0
    fi

    # A fresh install may come without a cluster.
    if [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
        local pgver
        pgver="$(ls /usr/lib/postgresql | sort -V | tail -n 1)"
        as_root pg_createcluster "$pgver" main >/dev/null
        say "created PostgreSQL cluster $pgver/main"
    fi
    local cluster
    cluster="$(ls /etc/postgresql | head -n 1)"

    if ! pg_ready; then
        # "already running" exits non-zero too: the wait below is the judge.
        as_root setsid pg_ctlcluster --skip-systemctl-redirect "$cluster" main start >/dev/null 2>&1 || true
        local deadline=$((SECONDS + WAIT_PG_SECS))
        until pg_ready; do
            if [ "$SECONDS" -ge "$deadline" ]; then
                as_root pg_lsclusters >&2 || true
                die "PostgreSQL $cluster/main did not accept connections on $PG_HOST:$PG_PORT within ${WAIT_PG_SECS}s (see /var/log/postgresql/)"
            fi
            sleep 1
        done
        say "started PostgreSQL $cluster/main"
    fi

    # Up, but maybe password auth over TCP: trust localhost for local dev.
    if ! pg_tcp -c 'select 1' >/dev/null 2>&1; then
        local hba
        hba="$(pg_local -c 'show hba_file')" || die "cannot reach PostgreSQL through its local socket as user postgres"
        if ! grep -q 'rpec-notify local dev' "$hba"; then
            local tmp
            tmp="$(mktemp)"
            {
                echo "# rpec-notify local dev: trust connections from this machine (added by scripts/setup.sh)"
                echo "host    all             all             127.0.0.1/32            trust"
                echo "host    all             all             ::1/128                 trust"
                as_root cat "$hba"
            } >"$tmp"
            as_root cp "$tmp" "$hba"
            rm -f "$tmp"
            say "added trust auth for 127.0.0.1 and ::1 to $hba"
        fi
        pg_local -c 'select pg_reload_conf()' >/dev/null
        local deadline=$((SECONDS + 10))
        until pg_tcp -c 'select 1' >/dev/null 2>&1; do
            [ "$SECONDS" -lt "$deadline" ] ||
                die "cannot connect with: psql -h $PG_HOST -p $PG_PORT -U postgres (check $hba and listen_addresses)"
            sleep 1
        done
        say "reloaded PostgreSQL configuration"
    fi

    if [ "$(pg_tcp -c "select count(*) from pg_database where datname = 'rpec'")" != "1" ]; then
        pg_tcp -c "create database rpec owner postgres" >/dev/null
        say "created PostgreSQL database rpec"
    fi
}

# -------------------------------------------------------------- rabbitmq ----
ensure_rabbitmq() {
    if ! have rabbitmq-server || ! have rabbitmqctl; then
        apt_install rabbitmq-server
    fi

    # Fast path: the AMQP listener only opens once the broker has booted.
    if port_open "$AMQP_PORT"; then
        return 0
    fi

    local started=0
    if ! timeout 30 rabbitmqctl status >/dev/null 2>&1; then
        # If a node is already booting, this fails; the wait below decides.
        as_root setsid rabbitmq-server -detached >/dev/null 2>&1 || true
        started=1
    fi

    local deadline=$((SECONDS + WAIT_RABBIT_SECS))
    until port_open "$AMQP_PORT"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            die "RabbitMQ did not open port $AMQP_PORT within ${WAIT_RABBIT_SECS}s (see /var/log/rabbitmq/; a node whose app was stopped needs 'rabbitmqctl start_app')"
        fi
        sleep 1
    done
    local left=$((deadline - SECONDS))
    [ "$left" -ge 5 ] || left=5
    if ! timeout "$((left + 5))" rabbitmqctl await_startup --timeout "$left" >/dev/null 2>&1; then
        die "RabbitMQ did not finish starting within ${WAIT_RABBIT_SECS}s ('rabbitmqctl await_startup' failed; see /var/log/rabbitmq/)"
    fi
    if [ "$started" -eq 1 ]; then
        say "started RabbitMQ"
    fi
}

# -------------------------------------------------------------- promtool ----
# Only the promtool command is wanted (make test checks the alert rules with it); Debian ships
# it in the prometheus package. Its install would start a Prometheus server, so a policy-rc.d
# that refuses service starts is put in place for the install when the machine has none.
readonly POLICY_RC=/usr/sbin/policy-rc.d
remove_policy_rc() {
    as_root rm -f "$POLICY_RC"
}
ensure_promtool() {
    have promtool && return 0
    if [ ! -e "$POLICY_RC" ]; then
        printf '#!/bin/sh\n# added by rpec-notify scripts/setup.sh while installing promtool\nexit 101\n' |
            as_root tee "$POLICY_RC" >/dev/null
        as_root chmod 755 "$POLICY_RC"
        trap remove_policy_rc EXIT
        apt_install prometheus
        remove_policy_rc
        trap - EXIT
    else
        apt_install prometheus
    fi
    have promtool || die "the prometheus package was installed but promtool is not on PATH"
}

# -------------------------------------------------------------- chromium ----
ensure_chromium() {
    local missing=()
    have chromium || missing+=(chromium)
    have chromedriver || missing+=(chromium-driver)
    if [ "${#missing[@]}" -gt 0 ]; then
        apt_install "${missing[@]}"
    fi
}

# ---------------------------------------------------------- test tools ----
# A python3 that can import dkimpy and PyNaCl, which dkimpy needs for Ed25519 signatures (the
# DKIM test looks for the same ones, in this order: a python3 first on PATH, such as pyenv's,
# may not see Debian's packages).
dkim_python() {
    local py
    for py in python3 /usr/bin/python3; do
        if have "$py" && "$py" -c 'import dkim, nacl' >/dev/null 2>&1; then
            echo "$py"
            return 0
        fi
    done
    return 1
}
ensure_dkim_verifier() {
    dkim_python >/dev/null && return 0
    if have apt-get; then
        apt_install python3-dkim python3-nacl
    else
        # Not Debian: the same two from PyPI.
        python3 -m pip install --quiet dkimpy pynacl || die "pip could not install dkimpy and pynacl"
        say "installed dkimpy and pynacl (pip)"
    fi
    dkim_python >/dev/null || die "dkimpy and PyNaCl were installed, but neither python3 nor /usr/bin/python3 can import them"
}

ensure_cargo_deny() {
    have cargo-deny && return 0
    say "building cargo-deny from crates.io (once; this takes a few minutes)"
    local log
    log="$(mktemp)"
    if ! cargo install --locked cargo-deny >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        rm -f "$log"
        die "cargo install --locked cargo-deny failed"
    fi
    rm -f "$log"
    have cargo-deny || die "cargo-deny was installed but is not on PATH (add $HOME/.cargo/bin to PATH)"
    say "installed cargo-deny"
}

# The event contract's validators: a python3 that imports jsonschema (with draft 2020-12) and
# yaml, looked for in the same order as dkim_python (tests/it/schema.rs does the same).
schema_python() {
    local py
    for py in python3 /usr/bin/python3; do
        if have "$py" && "$py" -c 'import yaml; from jsonschema import Draft202012Validator' >/dev/null 2>&1; then
            echo "$py"
            return 0
        fi
    done
    return 1
}
ensure_schema_validator() {
    schema_python >/dev/null && return 0
    if have apt-get; then
        apt_install python3-jsonschema python3-yaml
    else
        python3 -m pip install --quiet 'jsonschema>=4' pyyaml || die "pip could not install jsonschema and pyyaml"
        say "installed jsonschema and pyyaml (pip)"
    fi
    schema_python >/dev/null || die "python3-jsonschema and python3-yaml were installed, but neither python3 nor /usr/bin/python3 can import them"
}

# The AsyncAPI specification's own JSON Schema, from its npm package at a fixed version (npm
# checks the tarball against the registry's integrity hash). Only the one file is kept.
readonly ASYNCAPI_SPECS_VERSION="6.11.1"
ensure_asyncapi_spec() {
    local dir
    dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/var/asyncapi-specs"
    local want="$dir/$ASYNCAPI_SPECS_VERSION/3.0.0-without-\$id.json"
    [ -s "$want" ] && return 0
    have npm || apt_install npm
    local tmp
    tmp="$(mktemp -d)"
    if ! (cd "$tmp" && npm pack --silent "@asyncapi/specs@$ASYNCAPI_SPECS_VERSION" >/dev/null 2>&1); then
        rm -rf "$tmp"
        die "npm pack @asyncapi/specs@$ASYNCAPI_SPECS_VERSION failed"
    fi
    tar -xzf "$tmp"/asyncapi-specs-*.tgz -C "$tmp" 'package/schemas/3.0.0-without-$id.json'
    mkdir -p "$(dirname "$want")"
    mv "$tmp/package/schemas/3.0.0-without-\$id.json" "$want"
    rm -rf "$tmp"
    say "unpacked the AsyncAPI 3.0.0 JSON Schema from @asyncapi/specs $ASYNCAPI_SPECS_VERSION into $dir"
}

# Postfix's smtp-sink and smtp-source, unpacked under var/postfix (the script says so on stderr
# when it unpacks them; its stdout, the directory, is not wanted here).
ensure_postfix_tools() {
    bash "$(dirname "${BASH_SOURCE[0]}")/postfix-tools.sh" >/dev/null
}

ensure_build_tools
ensure_rust
ensure_postgres
ensure_rabbitmq
ensure_promtool
if [ "$with_chromium" -eq 1 ]; then
    ensure_chromium
fi
if [ "$with_test_tools" -eq 1 ]; then
    ensure_dkim_verifier
    ensure_cargo_deny
    ensure_postfix_tools
    ensure_schema_validator
    ensure_asyncapi_spec
fi
