#!/usr/bin/env bash
# Checks the systemd unit offline, on a machine where systemd need not be running:
#
#   bash scripts/check-systemd-unit.sh [UNIT_FILE]     (default deploy/systemd/rpec-notify.service)
#
# 1. `systemd-analyze verify --root=DIR` in a scratch root that holds a copy of this machine's
#    own unit directory (for sysinit.target and the other units every service needs), the unit,
#    and an empty stand-in executable at its ExecStart path. verify exits non-zero on some
#    errors only: it merely warns about an unknown key, a misspelt section or a value it cannot
#    parse, and then ignores the line, which would leave the service less hardened than it
#    reads. So any line it prints fails the check too (a clean unit prints nothing).
# 2. `systemd-analyze security --offline=true`: the unit's exposure score (0 safest, 10 most
#    exposed) must be at most MAX_EXPOSURE (the score docs/operations.md quotes).
# 3. A self-test: broken copies of the unit (an unknown key, values that do not parse, a wrong
#    path, the hardening removed) must each make step 1 or step 2 fail.
#
# Installs Debian's systemd package (which carries systemd-analyze) if systemd-analyze is
# missing. Exits 0 when every step passes.
set -euo pipefail

readonly MAX_EXPOSURE="${MAX_EXPOSURE:-1.1}"
root_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
unit="${1:-$root_dir/deploy/systemd/rpec-notify.service}"

say() { echo "systemd-unit: $*"; }
die() {
    echo "systemd-unit: error: $*" >&2
    exit 1
}

if ! command -v systemd-analyze >/dev/null 2>&1; then
    say "installing Debian's systemd package for systemd-analyze"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends systemd >/dev/null
fi
[ -f "$unit" ] || die "$unit: no such file"

system_units=""
for d in /usr/lib/systemd/system /lib/systemd/system; do
    if [ -f "$d/sysinit.target" ]; then
        system_units="$d"
        break
    fi
done
[ -n "$system_units" ] || die "no systemd unit directory with sysinit.target on this machine"

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

# A root to verify FILE in: the machine's units, FILE as /etc/systemd/system/NAME, and a
# stand-in for each ExecStart= executable of the unit under test (not of FILE: a broken copy
# may name one that is not there). Prints the root's path.
make_root() {
    local file="$1" name="$2" root
    root="$(mktemp -d "$scratch/root.XXXXXX")"
    mkdir -p "$root/usr/lib/systemd" "$root/etc/systemd/system"
    cp -a "$system_units" "$root/usr/lib/systemd/system"
    cp "$file" "$root/etc/systemd/system/$name"
    local exe
    # The command's path: the first word after ExecStart= and its prefixes (-, @, +, !, :).
    while read -r exe; do
        case "$exe" in
            /*)
                mkdir -p "$root$(dirname "$exe")"
                printf '#!/bin/sh\nexit 0\n' >"$root$exe"
                chmod 755 "$root$exe"
                ;;
        esac
    done < <(sed -n 's/^ExecStart=[-@+!:]*\([^ ]*\).*/\1/p' "$unit")
    echo "$root"
}

# verify FILE: 0 when systemd-analyze verify exits 0 and prints nothing; its output on stdout.
verify() {
    local file="$1" name root out rc=0
    name="$(basename "$unit")"
    root="$(make_root "$file" "$name")"
    out="$(systemd-analyze verify --man=no --root="$root" "$name" 2>&1)" || rc=$?
    printf '%s' "$out"
    [ "$rc" -eq 0 ] && [ -z "$out" ]
}

# exposure FILE: the overall exposure score systemd-analyze security gives it, e.g. 1.1.
exposure() {
    local file="$1" name root
    name="$(basename "$unit")"
    root="$(make_root "$file" "$name")"
    systemd-analyze security --offline=true --root="$root" "$name" 2>&1 |
        sed -n 's/^→ Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p'
}

# at_most A B: is the decimal A <= B?
at_most() {
    awk -v a="$1" -v b="$2" 'BEGIN { exit !(a + 0 <= b + 0) }'
}

# ---------------------------------------------------------------- the unit ----
if ! out="$(verify "$unit")"; then
    printf '%s\n' "$out" >&2
    die "systemd-analyze verify found problems in $unit"
fi
score="$(exposure "$unit")"
[ -n "$score" ] || die "systemd-analyze security gave no exposure score for $unit"
if ! at_most "$score" "$MAX_EXPOSURE"; then
    die "$unit: exposure $score is over $MAX_EXPOSURE (systemd-analyze security --offline=true shows what is missing)"
fi
say "$(basename "$unit"): verify clean, exposure $score (at most $MAX_EXPOSURE)"

# --------------------------------------------------------------- self-test ----
# Each broken copy must fail: a sed expression, @@, and what it breaks.
broken=(
    's/^ProtectSystem=strict/ProtectSytem=strict/ @@ an unknown key'
    's/^ProtectSystem=strict/ProtectSystem=very/ @@ a value that does not parse'
    's/^RestrictAddressFamilies=.*/RestrictAddressFamilies=AF_INETT/ @@ an unknown address family'
    's/^SystemCallFilter=@system-service/SystemCallFilter=@system-servic/ @@ an unknown system call group'
    's/^\[Service\]/[Servce]/ @@ a misspelt section'
    's#^ExecStart=\([^ ]*\)#ExecStart=\1-missing# @@ an executable that is not there'
    's/^Type=.*/Type=simpel/ @@ an unknown service type'
)
n=0
for case in "${broken[@]}"; do
    expr="${case%% @@ *}"
    what="${case#* @@ }"
    copy="$scratch/broken-$n.service"
    sed "$expr" "$unit" >"$copy"
    cmp -s "$copy" "$unit" && die "self-test: '$expr' changed nothing in $unit"
    if verify "$copy" >/dev/null; then
        die "self-test: a unit with $what ($expr) passed verify"
    fi
    n=$((n + 1))
done
# The hardening removed: the unit is still valid, but its exposure is far over the bound.
weak="$scratch/weak.service"
grep -Ev '^(DynamicUser|ProtectSystem|ProtectHome|PrivateTmp|PrivateDevices|PrivateUsers|NoNewPrivileges|CapabilityBoundingSet|SystemCallFilter|RestrictAddressFamilies|ProtectKernel[A-Za-z]*|MemoryDenyWriteExecute)=' \
    "$unit" >"$weak"
verify "$weak" >/dev/null || die "self-test: the unit without its hardening should still verify"
weak_score="$(exposure "$weak")"
if at_most "$weak_score" "$MAX_EXPOSURE"; then
    die "self-test: the unit without its hardening scored $weak_score, within $MAX_EXPOSURE"
fi
say "self-test: $n broken units refused by verify; without its hardening the unit scores $weak_score"
