#!/usr/bin/env python3
"""Delivers an example bounce to the worker's bounce listener, as a remote server would.

    python3 scripts/send-bounce.py HOST:PORT RETURN_PATH FILE [RECIPIENT]

FILE's {{RETURN_PATH}} and {{RECIPIENT}} are filled in (examples/bounces/ holds such files);
it goes over SMTP from the null sender to RETURN_PATH. Exits 0 when the listener took it, 1
with its reply when it refused it.
"""
import smtplib
import sys


def main() -> int:
    if len(sys.argv) not in (4, 5):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    address, return_path, path = sys.argv[1:4]
    recipient = sys.argv[4] if len(sys.argv) == 5 else "reader@school.example.org"
    host, _, port = address.rpartition(":")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    text = text.replace("{{RETURN_PATH}}", return_path).replace("{{RECIPIENT}}", recipient)
    message = text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")
    try:
        with smtplib.SMTP(host, int(port), timeout=30) as smtp:
            smtp.sendmail("", [return_path], message)
    except smtplib.SMTPException as e:
        print(f"refused: {e}", file=sys.stderr)
        return 1
    print("taken by the listener")
    return 0


if __name__ == "__main__":
    sys.exit(main())
