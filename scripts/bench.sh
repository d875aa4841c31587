#!/usr/bin/env bash
# Benchmarks with thresholds; not part of `make test` (timings on a shared machine are noisy).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p var
cargo test --release --test bench -- --ignored --nocapture --test-threads 1 2>&1 | tee var/bench.log | grep -oE 'bench [a-z_]+: .*|test result.*|panicked.*|FAILED.*'
