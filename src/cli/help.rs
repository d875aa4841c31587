//! The examples at the end of each command's `--help` (clap's `after_help`).

pub const RUN: &str = "\
Examples:
  DATABASE_URL=postgres://postgres@127.0.0.1:5432/rpec rpec-notify run
  RPEC_CONFIG_DIR=/etc/rpec-notify RPEC_PROFILE=production rpec-notify run";

pub const MIGRATE: &str = "\
Examples:
  DATABASE_URL=postgres://postgres@127.0.0.1:5432/rpec rpec-notify migrate";

pub const CHECK: &str = "\
Examples:
  rpec-notify check
  RPEC_CONFIG_DIR=/etc/rpec-notify RPEC_TEMPLATES_DIR=/usr/share/rpec-notify/templates rpec-notify check

Exits 1 when it finds a problem (each is printed with its place), 0 otherwise.";

pub const PUBLISH: &str = "\
Examples:
  rpec-notify publish examples/events/contact-complex-case.json
  rpec-notify publish var/example/[1-4]-*.json";

pub const VALIDATE: &str = "\
Examples:
  rpec-notify validate examples/events/*.json
  rpec-notify validate --json incoming.json";

pub const EXAMPLE: &str = "\
Examples:
  rpec-notify example --future                 # writes var/example/1-session-scheduled.json, ...
  rpec-notify example --future --lead 10 --out /tmp/rpec-example
  rpec-notify publish var/example/[1-4]-*.json  # with `make run` going, within --lead minutes";

pub const SCHEDULE: &str = "\
Examples:
  rpec-notify schedule
  rpec-notify schedule --region north-west --count 10";

pub const PREVIEW: &str = "\
Examples:
  rpec-notify preview enquiry_ack                           # its first sample, to stdout
  rpec-notify preview session_reminder --sample 2           # another of its samples
  rpec-notify preview newsletter --data context.json --out /tmp/newsletter
  rpec-notify preview registration_confirmation --open      # the HTML in a browser";

pub const SEND_TEST: &str = "\
Examples:
  rpec-notify send-test enquiry_ack --to me@example.org
  RPEC_SMTP_URL=smtp://relay.example.org:587?tls=required rpec-notify send-test newsletter --to me@example.org
  rpec-notify send-test session_reminder --sample 2 --to me@example.org";

pub const CONFIG: &str = "\
Examples:
  rpec-notify config show
  rpec-notify --config-dir /etc/rpec-notify config show --json";

pub const CONFIG_SHOW: &str = "\
Examples:
  rpec-notify config show
  RPEC_PROFILE=production rpec-notify --config-dir /etc/rpec-notify config show --json

Exits 0 with the settings, 2 when they do not load (each problem is printed with its place).";

pub const COMPLETIONS: &str = "\
Examples:
  rpec-notify completions bash > /etc/bash_completion.d/rpec-notify
  rpec-notify completions zsh > \"${fpath[1]}/_rpec-notify\"
  rpec-notify completions fish > ~/.config/fish/completions/rpec-notify.fish";

pub const OUTBOX: &str = "\
Examples:
  rpec-notify outbox status
  rpec-notify outbox list --status failed --kind enquiry --json
  rpec-notify outbox show 812
  rpec-notify outbox retry 812 813
  rpec-notify outbox retry --all-failed";

pub const OUTBOX_STATUS: &str = "\
Examples:
  rpec-notify outbox status
  rpec-notify outbox status --json";

pub const OUTBOX_LIST: &str = "\
Examples:
  rpec-notify outbox list
  rpec-notify outbox list --status pending --kind newsletter --limit 10";

pub const OUTBOX_SHOW: &str = "\
Examples:
  rpec-notify outbox show 812
  rpec-notify outbox show 812 --json

Exits 1 when no email has that id.";

pub const OUTBOX_RETRY: &str = "\
Examples:
  rpec-notify outbox retry 812 813
  rpec-notify outbox retry --all-failed";

pub const DEAD_LETTERS: &str = "\
Examples:
  rpec-notify dead-letters list
  rpec-notify dead-letters replay 5d2e7f10-1c2b-4d3e-8f4a-6b7c8d9e0f01
  rpec-notify dead-letters purge --email jo.bloggs@school.example.org";

pub const DEAD_LETTERS_LIST: &str = "\
Examples:
  rpec-notify dead-letters list
  rpec-notify dead-letters list --json";

pub const DEAD_LETTERS_REPLAY: &str = "\
Examples:
  rpec-notify dead-letters replay 5d2e7f10-1c2b-4d3e-8f4a-6b7c8d9e0f01
  rpec-notify dead-letters replay --all";

pub const DEAD_LETTERS_PURGE: &str = "\
Examples:
  rpec-notify dead-letters purge
  rpec-notify dead-letters purge --email jo.bloggs@school.example.org";

pub const ENQUIRIES: &str = "\
Examples:
  rpec-notify enquiries open
  rpec-notify enquiries open --region north-west --json";

pub const ENQUIRIES_OPEN: &str = ENQUIRIES;

pub const SUPPRESSIONS: &str = "\
Examples:
  rpec-notify suppressions list
  rpec-notify suppressions list --address Jo.Bloggs@school.example.org --json
  rpec-notify suppressions remove jo.bloggs@school.example.org

These print addresses (a suppression is nothing else): keep their output out of tickets and logs.";

pub const SUPPRESSIONS_LIST: &str = "\
Examples:
  rpec-notify suppressions list
  rpec-notify suppressions list --limit 200 --json
  rpec-notify suppressions list --address Jo.Bloggs@school.example.org

Prints addresses (a suppression is nothing else): keep its output out of tickets and logs.";

pub const SUPPRESSIONS_REMOVE: &str = "\
Examples:
  rpec-notify suppressions remove jo.bloggs@school.example.org
  rpec-notify suppressions remove A@school.example.org b@school.example.org --json

Exits 1 when an address was not suppressed; the others named with it are still removed.";

/// A command's examples, then the exit-code table (its `--help`; `-h` shows the examples only).
pub fn with_table(examples: &str) -> String {
    format!("{examples}\n\n{}", super::exit::TABLE)
}

pub const BOUNCES: &str = "\
Examples:
  rpec-notify bounces ingest < returned.eml
  rpec-notify bounces ingest var/bounces/*.eml --json
  rpec-notify bounces unparsed                 # what nobody could read, kept for an operator
  # Postfix master.cf, for mail to the bounce domain (transport_maps):
  #   rpec-bounces unix - n n - - pipe
  #     flags=Rq user=rpec argv=/usr/bin/rpec-notify bounces ingest --to ${original_recipient}

Exits 75 (EX_TEMPFAIL) when PostgreSQL cannot be reached: nothing was recorded, and an MTA
that piped the message keeps it and tries again.";

pub const BOUNCES_UNPARSED: &str = "\
Examples:
  rpec-notify bounces unparsed
  rpec-notify bounces unparsed 12 > unparsed-12.eml";
