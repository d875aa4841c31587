//! Logging: tracing to stderr, JSON when `LOG_FORMAT=json`. Log lines carry ids only: never an
//! address, a name or the text of an enquiry.

use tracing_subscriber::EnvFilter;

/// lapin's own logs are off by default: the consumer reports every connection loss itself,
/// and lapin reports an "error" when a short-lived publisher's runtime ends.
pub fn init() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,lapin=off,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if std::env::var("LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
}
