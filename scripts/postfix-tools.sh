#!/usr/bin/env bash
# Postfix's smtp-sink and smtp-source, from Debian's postfix package, unpacked under
# var/postfix (no MTA is installed: nothing is configured or started).
#
#   bash scripts/postfix-tools.sh        prints the directory holding smtp-sink and smtp-source
#
# Run them with LD_LIBRARY_PATH set to var/postfix/usr/lib/postfix (the tests and the bench do),
# and, as root, smtp-sink with `-u nobody`. Idempotent: a second call only prints the directory.
set -euo pipefail
cd "$(dirname "$0")/.."
readonly DEST="var/postfix"
if [ ! -x "$DEST/usr/sbin/smtp-sink" ] || [ ! -x "$DEST/usr/sbin/smtp-source" ]; then
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    # apt-get download writes into the current directory; as root it warns that _apt cannot
    # read it, which is harmless.
    (cd "$work" && apt-get download postfix >/dev/null 2>&1) || {
        # The package lists may be missing on a fresh machine.
        if [ "$(id -u)" -eq 0 ]; then apt-get update -qq; else sudo apt-get update -qq; fi
        (cd "$work" && apt-get download postfix >/dev/null 2>&1)
    } || { echo "postfix-tools: apt-get download postfix failed" >&2; exit 1; }
    mkdir -p "$DEST"
    dpkg -x "$work"/postfix_*.deb "$DEST"
    echo "postfix-tools: unpacked smtp-sink and smtp-source into $DEST" >&2
fi
echo "$PWD/$DEST"
