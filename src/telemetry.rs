//! Logging: tracing to stderr, JSON when `LOG_FORMAT=json`, coloured only on a terminal (the
//! journal and log files get plain text). Log lines carry ids only: never an address, a name or
//! the text of an enquiry.

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// lapin's own logs are off by default: the consumer reports every connection loss itself,
/// and lapin reports an "error" when a short-lived publisher's runtime ends. mailin's (the bounce
/// listener's SMTP protocol) are off whatever `RUST_LOG` says: it traces every command line,
/// and RCPT lines are addresses.
pub fn init() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,lapin=off,sqlx=warn"))
        .add_directive("mailin=off".parse().expect("a valid directive"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let result = if std::env::var("LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
}

/// Replaces the default panic report (which prints the panic's message, and a message can quote
/// a value from an event: an address, a name) with a log line naming only where it happened.
/// Handling panics are caught and the event dead-lettered; this is what the log says of them.
pub fn log_panics_without_payload() {
    std::panic::set_hook(Box::new(|info| {
        let at = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!(at = %at, "panic (its message is not logged: it may hold personal data)");
    }));
}
