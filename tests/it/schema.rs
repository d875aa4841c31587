//! The publisher's contract: the JSON Schemas (`schemas/events/`), the AsyncAPI document
//! (`schemas/asyncapi.yaml`), the README's event table and the worker's own parser say the
//! same thing.
//!
//! The schemas are judged by an independent validator, python-jsonschema (Debian's
//! `python3-jsonschema`, draft 2020-12), through `tests/schema/check.py`; the worker's side is
//! `rpec_notify::validate::judge_file`, which is what `rpec-notify validate` runs and judges
//! with the consumer's own `consume::admit`. The corpora:
//!
//! - `examples/events/`: valid to both, and every event type has one;
//! - `tests/fixtures/invalid-events/`: refused by both, each naming the same field (the file's
//!   `_invalid.field`, also in its name), the worker with the file's `_invalid.code`;
//! - `tests/fixtures/beyond-schema/`: what a JSON Schema cannot say (a relation between two
//!   fields, a total over a list, the calendar): accepted by the schemas, refused by the worker.
//!
//! `_invalid` is an unknown field at the top of the envelope, which both ignore.

use crate::helpers::*;
use rpec_notify::domain::event::ErrorCode;
use rpec_notify::domain::EventType;
use rpec_notify::validate::{judge_file, Verdict};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

/// The contract's body limit, which the shipped settings and the tests' workers use.
const LIMIT: usize = 256 * 1024;

/// The AsyncAPI package whose 3.0.0 JSON Schema `scripts/setup.sh --with-test-tools` unpacks.
const ASYNCAPI_SPECS_VERSION: &str = "6.11.1";

/// The first python that imports python-jsonschema (with draft 2020-12) and PyYAML, in the
/// order `scripts/setup.sh` looks.
fn python() -> &'static str {
    ["python3", "/usr/bin/python3"]
        .into_iter()
        .find(|py| {
            Command::new(py)
                .args([
                    "-c",
                    "import yaml; from jsonschema import Draft202012Validator",
                ])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .unwrap_or_else(|| {
            panic!(
                "no schema validator: neither python3 nor /usr/bin/python3 imports jsonschema and \
                 yaml; `bash scripts/setup.sh --with-test-tools` installs Debian's \
                 python3-jsonschema and python3-yaml"
            )
        })
}

/// Runs `tests/schema/check.py` and reads the JSON it prints.
fn check(args: &[&str]) -> Value {
    let out = Command::new(python())
        .arg(manifest_dir().join("tests/schema/check.py"))
        .args(args)
        .current_dir(manifest_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "check.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn json_files(dir: &str) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(manifest_dir().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            p.strip_prefix(manifest_dir())
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .json files in {dir}");
    files
}

/// The schema validator's verdicts on every event of these files: for each, the fields its
/// errors name.
fn schema_fields(files: &[String]) -> Vec<(String, Vec<String>)> {
    let mut args = vec!["events", "schemas/events"];
    args.extend(files.iter().map(String::as_str));
    check(&args)
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let place = format!("{} {}", r["file"].as_str().unwrap(), r["position"]);
            let fields = r["errors"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["field"].as_str().unwrap().to_owned())
                .collect();
            (place, fields)
        })
        .collect()
}

fn worker_verdicts(file: &str) -> Vec<Verdict> {
    judge_file(&manifest_dir().join(file), LIMIT).unwrap()
}

/// The field and code an invalid fixture says it is refused for.
fn expected(file: &str) -> (String, String) {
    let v: Value =
        serde_json::from_slice(&std::fs::read(manifest_dir().join(file)).unwrap()).unwrap();
    let field = v["_invalid"]["field"].as_str().unwrap().to_owned();
    let code = v["_invalid"]["code"].as_str().unwrap().to_owned();
    assert!(
        file.contains(&format!("--{field}--")),
        "{file}: its name should hold the field it is wrong in, {field}"
    );
    (field, code)
}

/// Whether the worker refused with this code and a detail naming this field first.
fn refused_for(v: &Verdict, field: &str, code: &str) -> Result<(), String> {
    match &v.outcome {
        Ok(e) => Err(format!("accepted as {}", e.event_type.as_str())),
        Err(e) if e.code.as_str() == code && e.detail.starts_with(&format!("{field}: ")) => Ok(()),
        Err(e) => Err(format!("refused as {}: {}", e.code.as_str(), e.detail)),
    }
}

#[test]
fn every_example_is_valid_to_the_schemas_and_to_the_worker_and_every_type_has_one() {
    let files = json_files("examples/events");
    for (place, fields) in schema_fields(&files) {
        assert!(fields.is_empty(), "{place}: the schema refuses {fields:?}");
    }
    let mut types = BTreeSet::new();
    for file in &files {
        for v in worker_verdicts(file) {
            match &v.outcome {
                Ok(e) => {
                    types.insert(e.event_type.as_str());
                }
                Err(e) => panic!("{file}: the worker refuses it: {e}"),
            }
        }
    }
    let all: BTreeSet<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
    assert_eq!(
        types, all,
        "every event type needs an example in examples/events/"
    );
}

#[test]
fn invalid_events_are_refused_by_the_schemas_and_the_worker_naming_the_same_field() {
    let files = json_files("tests/fixtures/invalid-events");
    assert!(files.len() >= 50, "{}", files.len());
    let by_schema = schema_fields(&files);
    assert_eq!(by_schema.len(), files.len(), "one event per fixture");
    let mut wrong = Vec::new();
    for (file, (place, fields)) in files.iter().zip(&by_schema) {
        let (field, code) = expected(file);
        if fields.is_empty() || fields.iter().any(|f| *f != field) {
            wrong.push(format!(
                "{place}: the schema names {fields:?}, not [{field}]"
            ));
        }
        let verdicts = worker_verdicts(file);
        assert_eq!(verdicts.len(), 1, "{file}");
        if let Err(why) = refused_for(&verdicts[0], &field, &code) {
            wrong.push(format!("{file}: the worker {why}, not {code} at {field}"));
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

#[test]
fn what_a_schema_cannot_say_the_worker_still_refuses() {
    let files = json_files("tests/fixtures/beyond-schema");
    let mut wrong = Vec::new();
    for (file, (place, fields)) in files.iter().zip(schema_fields(&files)) {
        if !fields.is_empty() {
            wrong.push(format!(
                "{place}: the schema refuses it ({fields:?}): move it to invalid-events/"
            ));
        }
        let (field, code) = expected(file);
        if let Err(why) = refused_for(&worker_verdicts(file)[0], &field, &code) {
            wrong.push(format!("{file}: the worker {why}, not {code} at {field}"));
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

/// The event types of the README's "Event contract" table (its first column).
fn readme_event_types() -> BTreeSet<String> {
    let readme = std::fs::read_to_string(manifest_dir().join("README.md")).unwrap();
    let start = readme
        .find("\n## Event contract")
        .expect("README has an \"Event contract\" section");
    let section = &readme[start + 1..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`'))
        .map(|(t, _)| t.to_owned())
        .collect()
}

fn asyncapi_spec_schema() -> PathBuf {
    let path = std::env::var_os("RPEC_ASYNCAPI_SPEC_SCHEMA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            manifest_dir()
                .join("var/asyncapi-specs")
                .join(ASYNCAPI_SPECS_VERSION)
                .join("3.0.0-without-$id.json")
        });
    assert!(
        path.is_file(),
        "{} is missing: `bash scripts/setup.sh --with-test-tools` unpacks it from the npm \
         package @asyncapi/specs",
        path.display()
    );
    path
}

/// The object a local `$ref` (`#/a/b`) points at.
fn resolve<'a>(doc: &'a Value, reference: &Value) -> &'a Value {
    let pointer = reference["$ref"]
        .as_str()
        .and_then(|r| r.strip_prefix('#'))
        .unwrap_or_else(|| panic!("not a local $ref: {reference}"));
    doc.pointer(pointer)
        .unwrap_or_else(|| panic!("{pointer} is not in the document"))
}

#[test]
fn the_schemas_the_asyncapi_document_the_readme_and_the_parser_name_the_same_event_types() {
    let parser: BTreeSet<String> = EventType::ALL
        .iter()
        .map(|t| t.as_str().to_owned())
        .collect();

    // One file per event type, named after it, with an $id of the same name; and the envelope.
    let schemas = check(&["schemas", "schemas/events"]);
    let mut by_schema = BTreeSet::new();
    for (file, s) in schemas.as_object().unwrap() {
        assert!(
            s["id"].as_str().unwrap().ends_with(&format!("/{file}")),
            "{file}: $id {}",
            s["id"]
        );
        match s["type"].as_str() {
            Some(t) => {
                assert_eq!(*file, format!("{t}.schema.json"));
                by_schema.insert(t.to_owned());
            }
            None => assert_eq!(file, "envelope.schema.json"),
        }
    }

    let spec = asyncapi_spec_schema();
    let checked = check(&["asyncapi", spec.to_str().unwrap(), "schemas/asyncapi.yaml"]);
    assert_eq!(
        checked["errors"],
        Value::Array(vec![]),
        "schemas/asyncapi.yaml is not valid AsyncAPI 3.0.0"
    );
    let doc = &checked["document"];
    assert_eq!(doc["asyncapi"], "3.0.0");
    let channel = &doc["channels"]["events"];
    let exchange = &channel["bindings"]["amqp"]["exchange"];
    assert_eq!(
        (
            &exchange["name"],
            &exchange["type"],
            &exchange["durable"],
            &channel["bindings"]["amqp"]["is"]
        ),
        (
            &Value::from("rpec.events"),
            &Value::from("topic"),
            &Value::from(true),
            &Value::from("routingKey")
        )
    );
    let routing_keys: BTreeSet<String> = channel["parameters"]["eventType"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    let mut by_asyncapi = BTreeSet::new();
    for (key, reference) in channel["messages"].as_object().unwrap() {
        let message = resolve(doc, reference);
        let t = message["name"].as_str().unwrap();
        assert_eq!(message["bindings"]["amqp"]["messageType"], t, "{key}");
        assert_eq!(
            message["payload"]["schemaFormat"], "application/schema+json;version=draft-2020-12",
            "{key}"
        );
        let schema_ref = format!("./events/{t}.schema.json");
        assert_eq!(message["payload"]["schema"]["$ref"], schema_ref.as_str());
        assert!(
            manifest_dir().join("schemas").join(&schema_ref).is_file(),
            "{schema_ref}"
        );
        by_asyncapi.insert(t.to_owned());
        // Both sides of the exchange carry every message.
        for operation in ["publishEvent", "consumeEvents"] {
            let want = format!("#/channels/events/messages/{key}");
            assert!(
                doc["operations"][operation]["messages"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|m| m["$ref"] == want.as_str()),
                "operations.{operation} lacks {want}"
            );
        }
    }
    let dead_letter_codes: BTreeSet<&str> = doc["components"]["messages"]["deadLetter"]["headers"]
        ["properties"]["x-rpec-error"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(
        dead_letter_codes,
        ErrorCode::ALL.iter().map(|c| c.as_str()).collect(),
        "the dead-letter codes in schemas/asyncapi.yaml"
    );

    let readme = readme_event_types();
    let what = "to add an event type: schemas/events/<type>.schema.json, its message in \
                schemas/asyncapi.yaml, its row in the README's Event contract table, an \
                example in examples/events/";
    assert_eq!(by_schema, parser, "schemas/events/ vs the parser; {what}");
    assert_eq!(
        by_asyncapi, parser,
        "schemas/asyncapi.yaml vs the parser; {what}"
    );
    assert_eq!(
        routing_keys, parser,
        "the eventType enum in schemas/asyncapi.yaml"
    );
    assert_eq!(
        readme, parser,
        "the README's Event contract table vs the parser"
    );
}

/// `validate` says what the dead-letter queue carries: every invalid fixture, and a body that
/// is not JSON and one that is too large, published to a real worker as `publish` would send
/// them, comes back from the dead-letter queue with exactly the code and detail `validate`
/// gave it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_reports_exactly_what_the_dead_letter_queue_carries() {
    let scratch = tempfile::tempdir().unwrap();
    let not_json = scratch.path().join("not-json.json");
    std::fs::write(&not_json, "{\"id\": oops").unwrap();
    let mut big = example("contact-complex-case.json");
    big["data"]["message"] = Value::from("x".repeat(LIMIT));
    let too_large = scratch.path().join("too-large.json");
    std::fs::write(&too_large, big.to_string()).unwrap();

    let mut files: Vec<PathBuf> = json_files("tests/fixtures/invalid-events")
        .into_iter()
        .chain(json_files("tests/fixtures/beyond-schema"))
        .map(|f| manifest_dir().join(f))
        .collect();
    files.extend([not_json, too_large]);

    let app = spawn_app().await;
    let mut expected = Vec::new();
    for file in &files {
        let bytes = std::fs::read(file).unwrap();
        let bodies: Vec<Vec<u8>> = match rpec_notify::publish::events_in(&bytes) {
            Ok(events) => events.iter().map(rpec_notify::publish::body_of).collect(),
            Err(_) => vec![bytes],
        };
        let verdicts = judge_file(file, LIMIT).unwrap();
        assert_eq!(verdicts.len(), bodies.len());
        for (body, verdict) in bodies.into_iter().zip(verdicts) {
            let Err(e) = verdict.outcome else {
                panic!("{}: accepted", file.display());
            };
            // The worker's queue is bound to the types it handles: anything else is sent as a
            // contact enquiry, as a confused publisher might.
            let key = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v["type"].as_str().and_then(EventType::parse))
                .map_or("contact.submitted", EventType::as_str);
            app.publish_raw(key, &body).await;
            expected.push((body, e.code.as_str().to_owned(), e.detail));
        }
    }
    let mut dead = app.dead_letters(expected.len()).await;
    let mut wrong = Vec::new();
    for (body, code, detail) in &expected {
        match dead.iter().position(|d| &d.body == body) {
            Some(i) => {
                let d = dead.swap_remove(i);
                if (&d.error, &d.detail) != (code, detail) {
                    wrong.push(format!(
                        "validate said {code}: {detail}; the dead letter carries {}: {}",
                        d.error, d.detail
                    ));
                }
            }
            None => wrong.push(format!(
                "no dead letter for the body refused as {code}: {detail}"
            )),
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
    // The worker went on: a valid event after them all is handled.
    app.publish(&example("contact-complex-case.json")).await;
    app.mails(2).await;
    app.stop().await;
}
