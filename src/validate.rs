//! `rpec-notify validate FILE...`: says of each event in each file what the worker would make
//! of it, without publishing anything and without a broker or a database.
//!
//! A file is read as `publish` reads it ([`crate::publish::events_in`]: one event, or a JSON
//! array of them), each event becomes the body `publish` would send, and that body is judged
//! by [`crate::consume::admit`], the consumer's own first judgement. So an invalid event is
//! reported with exactly the `x-rpec-error` code and `x-rpec-error-detail` its dead letter
//! would carry. A file that is not JSON at all is judged as one body, as it would be if its
//! bytes were published as they are (`malformed_json`).
//!
//! What only the worker's state can decide (`unknown_session`: a registration for a session it
//! has not heard of yet) is not judged here.

use crate::admin::Report;
use crate::consume::admit;
use crate::domain::{Envelope, ParseError};
use crate::publish::{body_of, events_in};
use serde_json::{json, Value};
use std::fmt::Write;
use std::path::Path;

/// The judgement of one event of one file.
#[derive(Debug)]
pub struct Verdict {
    /// The file, as it was named on the command line.
    pub file: String,
    /// The event's place (from 1) when the file holds an array; None for a file of one event.
    pub position: Option<usize>,
    /// The envelope, or why the worker would dead-letter it.
    pub outcome: Result<Envelope, ParseError>,
}

/// Judges every event of one file. Fails only if the file cannot be read.
pub fn judge_file(path: &Path, max_body_bytes: usize) -> std::io::Result<Vec<Verdict>> {
    let bytes = std::fs::read(path)?;
    let file = path.display().to_string();
    Ok(match events_in(&bytes) {
        Ok(events) if looks_like_an_array(&bytes) => events
            .iter()
            .enumerate()
            .map(|(i, event)| Verdict {
                file: file.clone(),
                position: Some(i + 1),
                outcome: admit(&body_of(event), max_body_bytes),
            })
            .collect(),
        Ok(events) => events
            .iter()
            .map(|event| Verdict {
                file: file.clone(),
                position: None,
                outcome: admit(&body_of(event), max_body_bytes),
            })
            .collect(),
        // Not JSON: the bytes as they are, which the consumer would refuse the same way.
        Err(_) => vec![Verdict {
            file,
            position: None,
            outcome: admit(&bytes, max_body_bytes),
        }],
    })
}

/// Whether a file that parsed as JSON holds an array (its first non-blank byte is `[`).
fn looks_like_an_array(bytes: &[u8]) -> bool {
    bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[')
}

/// The report of every verdict: one line per event (the file, its place in an array, then
/// `valid` with the type and id, or the code and detail a dead letter would carry), and a
/// count. Its exit code is 1 when any event is invalid, else 0. Nothing from an invalid event is shown but
/// its code and detail, which never quote a value.
pub fn report(verdicts: &[Verdict]) -> Report {
    let mut text = String::new();
    let mut items = Vec::with_capacity(verdicts.len());
    let mut invalid = 0usize;
    for v in verdicts {
        let place = match v.position {
            Some(n) => format!("{}: event {n}", v.file),
            None => v.file.clone(),
        };
        match &v.outcome {
            Ok(envelope) => {
                let _ = writeln!(
                    text,
                    "{place}: valid ({} {})",
                    envelope.event_type.as_str(),
                    envelope.id
                );
                items.push(json!({
                    "file": v.file, "position": v.position, "valid": true,
                    "type": envelope.event_type.as_str(), "id": envelope.id,
                }));
            }
            Err(e) => {
                invalid += 1;
                let _ = writeln!(text, "{place}: {}: {}", e.code.as_str(), e.detail);
                items.push(json!({
                    "file": v.file, "position": v.position, "valid": false,
                    "code": e.code.as_str(), "detail": e.detail,
                }));
            }
        }
    }
    let valid = verdicts.len() - invalid;
    let _ = writeln!(text, "{valid} valid, {invalid} invalid");
    Report {
        text,
        json: json!({ "events": Value::Array(items), "valid": valid, "invalid": invalid }),
        problems: invalid > 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 256 * 1024;

    fn file_with(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    fn event(email: &str) -> String {
        json!({
            "id": "6f1c2b3a-4d5e-4f60-8a7b-9c0d1e2f3a4b", "type": "person.erasure_requested",
            "version": 1, "occurred_at": "2025-02-01T09:00:00Z", "data": {"email": email}
        })
        .to_string()
    }

    #[test]
    fn one_event_and_arrays_are_judged_event_by_event() {
        let one = file_with(&event("jo@example.org"));
        let many = file_with(&format!(
            "[{}, {}]",
            event("jo@example.org"),
            event("Jo <jo@example.org>")
        ));
        let mut verdicts = judge_file(one.path(), LIMIT).unwrap();
        verdicts.extend(judge_file(many.path(), LIMIT).unwrap());
        let r = report(&verdicts);
        assert!(r.problems);
        assert_eq!(r.exit_code(), 1);
        let lines: Vec<&str> = r.text.lines().collect();
        assert_eq!(lines.len(), 4, "{}", r.text);
        assert!(lines[0]
            .ends_with(": valid (person.erasure_requested 6f1c2b3a-4d5e-4f60-8a7b-9c0d1e2f3a4b)"));
        assert!(lines[1].ends_with(
            ": event 1: valid (person.erasure_requested 6f1c2b3a-4d5e-4f60-8a7b-9c0d1e2f3a4b)"
        ));
        assert!(lines[2].ends_with(": event 2: invalid_payload: data.email: not an email address"));
        assert_eq!(lines[3], "2 valid, 1 invalid");
        assert_eq!(r.json["events"][2]["code"], "invalid_payload");
        assert_eq!(r.json["events"][2]["position"], 2);
        assert_eq!(r.json["events"][0]["position"], Value::Null);
    }

    #[test]
    fn a_file_that_is_not_json_is_judged_as_the_body_it_would_be() {
        let f = file_with("{\"id\": oops");
        let verdicts = judge_file(f.path(), LIMIT).unwrap();
        assert_eq!(verdicts.len(), 1);
        let e = verdicts[0].outcome.as_ref().unwrap_err();
        assert_eq!(e.code.as_str(), "malformed_json");
        let r = report(&verdicts);
        assert_eq!(r.exit_code(), 1);
    }

    /// The limit applies to the body `publish` sends (compact), not to the file's own layout.
    #[test]
    fn the_size_limit_is_that_of_the_body_publish_would_send() {
        let padded = event("jo@example.org").replace(',', ",                    ");
        let f = file_with(&padded);
        let compact = event("jo@example.org").len();
        assert!(padded.len() > compact + 40);
        assert!(judge_file(f.path(), compact).unwrap()[0].outcome.is_ok());
        let e = judge_file(f.path(), compact - 1)
            .unwrap()
            .remove(0)
            .outcome
            .unwrap_err();
        assert_eq!(e.code.as_str(), "too_large");
        assert!(judge_file(Path::new("/nonexistent/rpec"), LIMIT).is_err());
    }
}
