#!/usr/bin/env bash
# Benchmarks for rpec-notify (run with `make bench`, after scripts/setup.sh).
set -euo pipefail
echo "no benchmarks yet"
