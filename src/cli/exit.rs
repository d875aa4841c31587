//! One exit-code table for every command, and which code an error deserves.
//!
//! The operator tools' codes (`admin::EXIT_*`) are the first four rows; `4` is for a failure
//! that fits none of them, so that a script can still tell "fix the configuration" (2) from
//! "wait for PostgreSQL, RabbitMQ or the relay" (3).

use rpec_notify::admin;
use std::process::ExitCode;

pub use rpec_notify::admin::{EXIT_PROBLEMS, EXIT_UNAVAILABLE, EXIT_USAGE};

/// Anything else: an unexpected failure (its message says what).
pub const EXIT_FAILED: u8 = 4;

/// The table, as `--help` shows it (the README has the same rows).
pub const TABLE: &str = "\
Exit codes (every command):
  0  done, nothing wrong
  1  done, problems found: `check` found configuration or template problems, `validate` an
     invalid event, an id given to `outbox retry`, `outbox show` or `dead-letters replay`
     matched nothing, an address given to `suppressions remove` was not suppressed
  2  usage or configuration: bad arguments, settings, regions.toml or templates that do not
     load, a file that cannot be read, a database without the tables, an address in use
  3  a dependency cannot be reached: PostgreSQL, RabbitMQ or the mail relay
  4  failed otherwise (the message says why)
  75 `bounces ingest` only: PostgreSQL cannot be reached, nothing was recorded (EX_TEMPFAIL:
     an MTA that pipes bounces to it keeps the message and tries again)";

/// Prints an error with its causes and gives the code its kind deserves.
pub fn fail(e: anyhow::Error) -> ExitCode {
    eprintln!("error: {e:#}");
    ExitCode::from(classify(&e))
}

/// Prints a configuration or usage error and gives 2.
pub fn usage(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(EXIT_USAGE)
}

/// The code for an error, from the first cause in its chain that says something.
pub fn classify(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if cause.is::<rpec_notify::config::Problems>() || cause.is::<serde_json::Error>() {
            return EXIT_USAGE;
        }
        if let Some(e) = cause.downcast_ref::<admin::AdminError>() {
            return e.exit_code();
        }
        if let Some(e) = cause.downcast_ref::<sqlx::Error>() {
            return database(e);
        }
        if let Some(e) = cause.downcast_ref::<sqlx::migrate::MigrateError>() {
            return match e {
                sqlx::migrate::MigrateError::Execute(e) => database(e),
                _ => EXIT_USAGE,
            };
        }
        if cause.is::<lapin::Error>() {
            return EXIT_UNAVAILABLE;
        }
        if let Some(e) = cause.downcast_ref::<std::io::Error>() {
            return io(e);
        }
    }
    EXIT_FAILED
}

fn database(e: &sqlx::Error) -> u8 {
    if rpec_notify::db::unreachable(e) {
        return EXIT_UNAVAILABLE;
    }
    match e {
        sqlx::Error::Configuration(_) => EXIT_USAGE,
        // A server that answers but refuses this database or these credentials, or has no
        // outbox: a configuration to fix, not an outage to wait out.
        sqlx::Error::Database(db)
            if db
                .code()
                .is_some_and(|c| matches!(c.as_ref(), "3D000" | "28000" | "28P01" | "42P01")) =>
        {
            EXIT_USAGE
        }
        _ => EXIT_FAILED,
    }
}

fn io(e: &std::io::Error) -> u8 {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused | ConnectionReset | ConnectionAborted | NotConnected | TimedOut
        | BrokenPipe | UnexpectedEof | HostUnreachable | NetworkUnreachable => EXIT_UNAVAILABLE,
        NotFound | PermissionDenied | AddrInUse | AddrNotAvailable | InvalidInput | InvalidData
        | IsADirectory | NotADirectory => EXIT_USAGE,
        _ => EXIT_FAILED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn errors_are_classified_by_the_first_cause_that_says_something() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let e = anyhow::Error::new(sqlx::Error::Io(refused)).context("Failed to connect");
        assert_eq!(classify(&e), EXIT_UNAVAILABLE);
        let e = anyhow::Error::new(sqlx::Error::PoolTimedOut).context("PostgreSQL");
        assert_eq!(classify(&e), EXIT_UNAVAILABLE);
        let e = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::NotFound))
            .context("events.json: cannot be read");
        assert_eq!(classify(&e), EXIT_USAGE);
        let e = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::AddrInUse));
        assert_eq!(classify(&e), EXIT_USAGE);
        let e = anyhow::Error::new(rpec_notify::config::Problems(Vec::new()));
        assert_eq!(classify(&e), EXIT_USAGE);
        let e = Err::<(), _>(anyhow::anyhow!("something odd"))
            .context("while doing it")
            .unwrap_err();
        assert_eq!(classify(&e), EXIT_FAILED);
    }
}
