#!/usr/bin/env bash
# make bench: tests/bench.rs against the machine's PostgreSQL and RabbitMQ and Postfix's
# smtp-sink, with the release build of the worker running as its own process. Prints one table
# and writes it to target/bench/bench.json (and bench.txt); the workers' and the sink's logs go
# to target/bench/logs/. Not part of `make test`.
#
#   bash scripts/bench.sh                    full sizes (long: the README says how long)
#   RPEC_BENCH=quick bash scripts/bench.sh   every size shrunk, about two minutes
#
# Sizes and the rows to run are set by environment (RPEC_BENCH_READERS, RPEC_BENCH_ROWS, ...:
# see the top of tests/bench.rs). The exit status is non-zero if a row could not be measured.
set -euo pipefail
cd "$(dirname "$0")/.."

# smtp-sink and smtp-source, unpacked from Debian's postfix package on first use.
RPEC_BENCH_POSTFIX_DIR="$(bash scripts/postfix-tools.sh)"
export RPEC_BENCH_POSTFIX_DIR

# Built first, so that the build is not inside the measurements (and its errors show plainly).
cargo test --release --test bench --no-run

# The bench runs as a process group of its own (job control), holding the workers and the sink
# it starts: whatever ends this script (Ctrl-C, SIGTERM, an error) ends that group with it,
# even if the test process itself is killed before it could kill its children.
# A run killed that way cannot drop its databases and queues: the `leftovers` test does (and
# the next run would).
finish() {
    local status=$?
    if [ -n "${bench:-}" ] && kill -0 -- "-$bench" 2>/dev/null; then
        kill -TERM -- "-$bench" 2>/dev/null || true
        sleep 1
        kill -KILL -- "-$bench" 2>/dev/null || true
        cargo test --release --test bench -q -- --ignored --exact leftovers --nocapture \
            2>/dev/null | grep '^bench:' || true
    fi
    exit "$status"
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
set -m
cargo test --release --test bench -- --ignored --exact bench --nocapture --test-threads 1 &
bench=$!
wait "$bench"
