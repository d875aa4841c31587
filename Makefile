# rpec-notify: common tasks. Every variable below can be overridden from the
# environment or the command line (make test TEST_DATABASE_URL=...).

SHELL := /bin/bash
.DEFAULT_GOAL := build

CARGO ?= cargo

# rustup installs into ~/.cargo/bin, which a non-login shell may not have on PATH.
ifneq ($(wildcard $(HOME)/.cargo/bin/cargo),)
ifeq ($(filter $(HOME)/.cargo/bin,$(subst :, ,$(PATH))),)
export PATH := $(HOME)/.cargo/bin:$(PATH)
endif
endif

DATABASE_URL      ?= postgres://postgres@127.0.0.1:5432/rpec
RPEC_SMTP_URL     ?= file://./var/mail
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/postgres
TEST_AMQP_URL     ?= amqp://guest:guest@127.0.0.1:5672/%2f
RUST_BACKTRACE    ?= 1
export DATABASE_URL RPEC_SMTP_URL TEST_DATABASE_URL TEST_AMQP_URL RUST_BACKTRACE

ALERT_RULES ?= deploy/prometheus/rpec-notify.rules.yml

EXAMPLE_EVENT ?= examples/events/contact-complex-case.json

# cargo-deny checks the dependency graph of the platform this machine builds for (see deny.toml).
DENY_TARGET ?= $(shell rustc -vV 2>/dev/null | sed -n 's/^host: //p')

SYSTEMD_UNIT ?= deploy/systemd/rpec-notify.service

.PHONY: setup build run test alert-rules systemd-unit deny bench faults mutants fmt lint clean-mail publish-example

## setup: install/start PostgreSQL, RabbitMQ and the toolchain as needed
setup:
	bash scripts/setup.sh

## build: compile the worker
build: setup
	$(CARGO) build

## run: run the worker (applies migrations itself; mail goes to var/mail/)
run: setup
	mkdir -p var/mail
	$(CARGO) run --quiet -- run

## test: formatting, lints, the alert rules, the dependency checks, then every test target (the
## browser test needs Chromium, so the set-up installs Debian's chromium and chromium-driver too;
## promtool comes from Debian's prometheus package; --with-test-tools adds the DKIM verifier
## and cargo-deny). RPEC_REQUIRE_DKIM_VERIFIER makes the DKIM tests fail, not skip, without
## their verifier. Last, one test at a time, the fault suite's short form (some of its tests
## restart the shared RabbitMQ).
test:
	bash scripts/setup.sh --with-chromium --with-test-tools
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) clippy --all-targets --features failpoints -- -D warnings
	$(MAKE) --no-print-directory alert-rules
	$(MAKE) --no-print-directory systemd-unit
	$(MAKE) --no-print-directory deny
	RPEC_REQUIRE_DKIM_VERIFIER=1 $(CARGO) test --all-targets --features failpoints
	$(CARGO) test --features failpoints --test faults -- --ignored --test-threads 1

## faults: the fault suite in its long form against the release binary (built with the fault
## points); prints one table and writes target/faults/faults.json. It stops and starts the
## machine's RabbitMQ and starts a three-node cluster beside it (scripts/rabbitmq-cluster.sh).
## (The build step compiles exactly what the run uses: a plain `cargo build` would build the
## library with other dependency features than the tests' and so twice.)
faults: setup
	$(CARGO) test --release --features failpoints --test faults --no-run
	RPEC_FAULTS=long $(CARGO) test --release --features failpoints --test faults -- --ignored --test-threads 1 --nocapture
	@# The property tests (hostile envelopes, markdown) at length: 256 cases in make test.
	PROPTEST_CASES=20000 $(CARGO) test --release --lib -- any_

## deny: licences, banned crates and sources of every dependency (cargo-deny, offline: the
## advisories check needs the RustSec database from the internet, see the README)
deny:
	$(CARGO) deny --offline --locked -t $(DENY_TARGET) check licenses bans sources

## alert-rules: check the Prometheus alert rules and run their unit tests (promtool)
alert-rules:
	promtool check rules $(ALERT_RULES)
	cd $(dir $(ALERT_RULES)) && promtool test rules $(notdir $(ALERT_RULES:.yml=.test.yml))

## systemd-unit: check the systemd unit offline (systemd-analyze verify in a scratch root, failing
## on any warning; its exposure score from systemd-analyze security at most the one
## docs/operations.md quotes; and a self-test that broken units fail). Installs Debian's systemd
## package if systemd-analyze is missing; needs no running systemd.
systemd-unit:
	bash scripts/check-systemd-unit.sh $(SYSTEMD_UNIT)

## mutants: mutation testing of the pure modules with their unit tests (.cargo/mutants.toml);
## not part of make test (it rebuilds once per mutant: hours on 2 cores). MUTANTS_ARGS narrows
## it by a regex on the mutants' names, e.g. MUTANTS_ARGS='-F src/uk_time' (-f is overridden by
## the config's examine_globs). Results in mutants.out/; docs/mutants.md.
mutants:
	command -v cargo-mutants >/dev/null || $(CARGO) install --locked cargo-mutants
	$(CARGO) mutants --timeout 300 $(MUTANTS_ARGS)

## bench: the benchmarks (scripts/bench.sh, tests/bench.rs): the release build of the worker as
## its own process against this machine's PostgreSQL and RabbitMQ and Postfix's smtp-sink
## (scripts/postfix-tools.sh unpacks it), each figure beside a ceiling measured in the same run
## (smtp-source into the same sink). Prints one table and writes target/bench/bench.json.
## Full sizes take long; RPEC_BENCH=quick make bench shrinks them (about two minutes); sizes
## and rows by environment (README, Benchmarks). Exits non-zero if a row could not be measured.
## Not part of make test.
bench: setup
	bash scripts/bench.sh

## fmt: format the code
fmt:
	$(CARGO) fmt --all

## lint: clippy with warnings as errors
lint:
	$(CARGO) clippy --all-targets -- -D warnings

## clean-mail: delete the .eml files written by the file:// relay
clean-mail:
	rm -rf var/mail/*

## publish-example: publish one example event to the broker
publish-example: setup
	$(CARGO) run --quiet -- publish $(EXAMPLE_EVENT)
