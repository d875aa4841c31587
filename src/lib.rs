//! rpec-notify: the background worker behind the Department for Education's regional Prevent
//! education coordinators (RPECs).
//!
//! It consumes events that the website publishes to RabbitMQ (contact enquiries, training sessions,
//! registrations, newsletters), records their effects in PostgreSQL and turns them into email sent
//! over SMTP. It also serves the pages behind the links in those emails (confirming a newsletter
//! subscription, unsubscribing). Every email is written to an outbox in the same transaction as
//! the event's other effects (a newsletter's fan-out in batches, each recording who has it, before
//! the event is recorded), and a message is acknowledged only once that transaction has
//! committed, so nothing is lost and the same event delivered twice causes its effects once.
//!
//! # Layout
//!
//! - [`config`]: layered settings (`config/rpec.toml`, a profile file, environment variables;
//!   `[mail]` and `[retention]` as typed sections, given to the sender and the sweep) and
//!   `config/regions.toml` (regions, areas, coordinators, schedules), with a `check` that reports
//!   every problem at once.
//! - [`domain`]: the types an event is parsed into (parse, don't validate): region ids, email
//!   addresses, bounded text, and the event envelope with errors that name the field.
//! - [`consume`]: the AMQP topology, the consumer loop and the ack / retry / dead-letter decision.
//! - [`handle`]: one module per event kind: `(transaction, event) -> rows and outgoing mail`.
//!   Newsletters: `subscription` (double opt-in), `newsletter` (the set-based fan-out and the
//!   send-time completion of each copy), `erasure` (the one list of erasure statements).
//! - [`mail`]: a leaf that knows nothing of the rest: templates and rendering (a bulk email is
//!   rendered once, as a `Shell`, and filled in per reader), markdown, MIME messages, DKIM and
//!   the SMTP / file relay.
//! - [`outbox`]: the outbox table: the typed jobs it holds (`outbox::job`, one variant per kind
//!   of email), one enqueue path (one email, or a fan-out in one `INSERT … SELECT`), bulk claims,
//!   outcomes recorded in batches, each fenced by its claim's token.
//! - [`send`]: the sender pipeline (claim in bulk, send on `mail.concurrency` slots, record in
//!   batches), and the last look at each email before it goes (`send::compose`: one match over
//!   the job's kind, reading the current state). It suppresses addresses that refuse bulk mail
//!   for good; outages of the relay or PostgreSQL fail no email; a coordinators' copy of an
//!   enquiry that fails for good is passed to the triage mailbox.
//! - [`bounce`]: bounces and complaints that come back after the relay took an email: the
//!   VERP return paths name the email (`tokens::ReturnPaths`), the listener
//!   (`bounce::listener`) or `bounces ingest` hands each message to one `ingest`, which reads
//!   it (`bounce::report`: DSN, feedback report, plain-text bounce, auto-reply) and suppresses,
//!   unsubscribes, fails the email or passes an enquiry to triage, each once.
//! - [`problem`]: what `check` reports.
//! - [`tokens`]: the signed confirmation and unsubscribe links ([`tokens::Links`]: the public
//!   URL and the keys, all that handlers, sender and pages need of the settings for them).
//! - [`schedule`]: reminders, coordinator briefings and digests: plans in UK time, hands what is
//!   due to the outbox.
//! - [`calendar`]: `.ics` files for sessions.
//! - [`clock`]: the worker's "now" (the system clock, or a manual one in tests).
//! - [`config::working_time`]: Monday to Friday working hours in UK time minus bank holidays, in which
//!   the deadlines for claiming an enquiry are counted.
//! - [`http`]: health, readiness, Prometheus metrics, and the confirm and unsubscribe pages.
//! - [`retention`]: the sweep that ends every kind of personal data at the end of its period,
//!   in short batches.
//! - [`worker`]: the composition root (nothing imports it): for `rpec-notify run` it loads the
//!   regions and templates, opens the pool and the relay, gives each part only what it uses
//!   ([`consume::Consumer`] with [`handle::Handlers`], [`send::Mailer`],
//!   [`schedule::Scheduler`], [`retention::Sweeper`], [`http::PublicState`],
//!   [`http::AdminState`]), and shuts them down cleanly.
//! - [`publish`]: `rpec-notify publish`, with publisher confirms.
//! - [`example`]: `rpec-notify example --future`: example events dated from now, whose
//!   reminder and briefing are due within minutes.
//! - [`validate`]: `rpec-notify validate`: each event of a file judged by the consumer's own
//!   first judgement ([`consume::admit`]), without publishing.
//! - [`admin`]: operator tools: `outbox status|list|show|retry`, `dead-letters
//!   list|replay|purge`, `enquiries open` and `suppressions list|remove`, with one exit-code
//!   table and reports that hold ids, codes and counts, never personal data (but for
//!   `suppressions`, whose subject is addresses).

pub mod admin;
pub mod bounce;
pub mod calendar;
pub mod clock;
pub mod config;
pub mod consume;
pub mod db;
pub mod domain;
pub mod example;
pub mod handle;
pub mod http;
pub mod mail;
pub mod metrics;
pub mod outbox;
pub mod problem;
pub mod publish;
pub mod retention;
pub mod schedule;
pub mod send;
pub mod state;
pub mod telemetry;
pub mod tokens;
pub mod uk_time;
pub mod validate;
pub mod worker;

pub use worker::run;
