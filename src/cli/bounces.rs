//! `rpec-notify bounces ingest [FILE...]`: bounces from a mailbox that another MTA delivers
//! (Postfix's `pipe`, procmail, a script reading an IMAP folder), one message per file, or an
//! mbox of several, or one message on standard input. Each goes to the same function as the
//! bounce listener's (`bounce::ingest`).
//!
//! Exit codes: 0 every message was taken (recorded, already recorded, ignored as an
//! auto-reply, kept as not understood, or naming no email of ours: all of them final); 2 a
//! file cannot be read or the settings do not load (or `mail.bounce_address` is not set); 75
//! (EX_TEMPFAIL, as sendmail's sysexits name it) PostgreSQL cannot be reached, so nothing was
//! recorded: Postfix's `pipe` then keeps the message and tries again, where any other code
//! would make it give the bounce up.

use super::exit;
use rpec_notify::bounce::{self, Bounces};
use rpec_notify::config::Regions;
use rpec_notify::metrics::Metrics;
use serde_json::json;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// Try again later (sysexits.h): what an MTA that pipes mail to us understands as "defer".
pub const EX_TEMPFAIL: u8 = 75;

/// The largest message read (the listener's limit too): a bounce quotes at most the email.
fn read_limited(mut input: impl Read, limit: usize) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    input
        .by_ref()
        .take(limit as u64 + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() > limit {
        return Err(std::io::Error::other(format!(
            "larger than bounces.max_message_bytes ({limit} bytes)"
        )));
    }
    Ok(bytes)
}

/// The messages of one file: an mbox (starting with a `From ` line) split at each `From `
/// line that follows a blank line, with those lines removed; otherwise the file is one message.
pub fn messages(bytes: &[u8]) -> Vec<&[u8]> {
    if !bytes.starts_with(b"From ") {
        return vec![bytes];
    }
    let mut out = Vec::new();
    let mut start = None;
    let mut i = 0;
    let mut previous_blank = true;
    while i < bytes.len() {
        let end = bytes[i..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(bytes.len(), |p| i + p + 1);
        let line = &bytes[i..end];
        if previous_blank && line.starts_with(b"From ") {
            if let Some(s) = start {
                out.push(&bytes[s..i]);
            }
            start = Some(end);
        }
        previous_blank = line == b"\n" || line == b"\r\n";
        i = end;
    }
    if let Some(s) = start {
        out.push(&bytes[s..]);
    }
    out.retain(|m| !m.iter().all(u8::is_ascii_whitespace));
    out
}

pub async fn ingest(files: Vec<PathBuf>, to: Vec<String>, json: bool) -> ExitCode {
    let settings = match rpec_notify::config::Settings::load() {
        Ok(s) => s,
        Err(problems) => {
            eprintln!("{}", rpec_notify::config::Problems(problems));
            return ExitCode::from(exit::EXIT_USAGE);
        }
    };
    let limit = settings.bounces.max_message_bytes;
    // Every input is read before anything is recorded: an unreadable one stops the run (2)
    // with nothing half done.
    let mut inputs: Vec<(String, Vec<u8>)> = Vec::new();
    if files.is_empty() {
        match read_limited(std::io::stdin().lock(), limit) {
            Ok(bytes) => inputs.push(("-".to_owned(), bytes)),
            Err(e) => return exit::usage(format!("standard input: {e}")),
        }
    }
    for file in &files {
        let read =
            std::fs::File::open(file).and_then(|f| read_limited(f, limit.saturating_mul(64)));
        match read {
            Ok(bytes) => inputs.push((file.display().to_string(), bytes)),
            Err(e) => return exit::usage(format!("{}: {e}", file.display())),
        }
    }
    let regions = match Regions::load(&settings.regions_path()) {
        Ok(r) => r,
        Err(problems) => {
            eprintln!("{}", rpec_notify::config::Problems(problems));
            return ExitCode::from(exit::EXIT_USAGE);
        }
    };
    let pool = match rpec_notify::admin::connect_database(&settings).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(match e.exit_code() {
                exit::EXIT_UNAVAILABLE => EX_TEMPFAIL,
                code => code,
            });
        }
    };
    let Some(bounces) =
        Bounces::from_settings(&settings, pool.clone(), &regions, Arc::new(Metrics::new()))
    else {
        return exit::usage(
            "mail.bounce_address (RPEC_MAIL__BOUNCE_ADDRESS) is not set: without it no email \
             carries a return path, and no bounce can be matched to one",
        );
    };
    let mut results = Vec::new();
    for (name, bytes) in &inputs {
        for (n, message) in messages(bytes).into_iter().enumerate() {
            if message.len() > limit {
                eprintln!(
                    "{name} #{}: larger than bounces.max_message_bytes: skipped",
                    n + 1
                );
                continue;
            }
            match bounce::ingest(&bounces, &to, message).await {
                Ok(outcome) => {
                    if !json {
                        println!("{name} #{}: {}", n + 1, outcome.describe());
                    }
                    results.push(
                        json!({"input": name, "message": n + 1, "outcome": outcome.describe()}),
                    );
                }
                Err(e) => {
                    // Nothing of this message was recorded; those before it were, and say
                    // so again harmlessly when the MTA retries the whole input.
                    eprintln!("error: {name} #{}: {e:#}", n + 1);
                    pool.close().await;
                    return ExitCode::from(EX_TEMPFAIL);
                }
            }
        }
    }
    pool.close().await;
    if json {
        println!("{}", json!({ "messages": results }));
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_message_or_an_mbox_of_several() {
        let one = b"From: a@example.org\r\n\r\nbody\r\n";
        assert_eq!(messages(one), vec![&one[..]]);
        let mbox = b"From MAILER-DAEMON Tue Dec  1 10:00:00 2026\nSubject: 1\n\n>From here on\n\nFrom MAILER-DAEMON Tue Dec  1 10:01:00 2026\nSubject: 2\n\nbody\n";
        let got = messages(mbox);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0], b"Subject: 1\n\n>From here on\n\n");
        assert_eq!(got[1], b"Subject: 2\n\nbody\n");
    }

    #[test]
    fn input_beyond_the_limit_is_refused() {
        assert!(read_limited(&b"12345"[..], 5).is_ok());
        assert!(read_limited(&b"123456"[..], 5).is_err());
    }
}
