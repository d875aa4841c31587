//! The command line: `check`, `preview` and `validate`.

use crate::helpers::manifest_dir;
use std::path::Path;
use std::process::{Command, Output};

pub fn binary() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rpec-notify"));
    c.env_remove("RPEC_PROFILE").env("RUST_LOG", "warn");
    c
}

/// A copy of the shipped config/ and templates/ that a test may break.
fn copy_of_config() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&manifest_dir().join("config"), &dir.path().join("config"));
    copy_dir(
        &manifest_dir().join("templates"),
        &dir.path().join("templates"),
    );
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

fn check(dir: &Path) -> Output {
    binary()
        .arg("check")
        .env("RPEC_CONFIG_DIR", dir.join("config"))
        .env("RPEC_TEMPLATES_DIR", dir.join("templates"))
        .output()
        .unwrap()
}

#[test]
fn check_passes_on_the_shipped_configuration() {
    let dir = copy_of_config();
    let out = check(dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration OK: 8 regions"));
}

#[test]
fn check_reports_every_problem_in_a_broken_regions_file() {
    let dir = copy_of_config();
    let path = dir.path().join("config/regions.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let broken = text
        .replace("[regions.east-midlands]", "[regions.mid-england]")
        .replace(
            "[regions.east-midlands.aliases]",
            "[regions.mid-england.aliases]",
        )
        .replace("\"Surrey\"", "\"Surrey\", \"Cumbria\"")
        .replace("rpec.london@example.org", "rpec.london(at)example.org")
        .replace(
            "name = \"London\"",
            "name = \"London\"\ndigest_schedule = \"0 0 25 * * Mon\"",
        );
    std::fs::write(&path, broken).unwrap();
    let out = check(dir.path());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("regions.toml: regions.mid-england: unknown region id"),
        "{err}"
    );
    assert!(
        err.contains("regions.toml: regions.east-midlands: missing"),
        "{err}"
    );
    assert!(err.contains("\"Cumbria\" is also listed"), "{err}");
    assert!(
        err.contains(
            "regions.london.coordinators: \"rpec.london(at)example.org\": not an email address"
        ),
        "{err}"
    );
    assert!(
        err.contains(
            "regions.london.digest_schedule: \"0 0 25 * * Mon\" is not a valid cron expression"
        ),
        "{err}"
    );
}

#[test]
fn check_names_a_template_that_uses_a_missing_variable() {
    let dir = copy_of_config();
    let path = dir.path().join("templates/enquiry_ack/html.hbs");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("{{enquiry_id}}", "{{enquiry_number}}")).unwrap();
    let out = check(dir.path());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("enquiry_ack/html"), "{err}");
    assert!(err.contains("enquiry_number"), "{err}");
}

#[test]
fn check_names_a_template_that_does_not_compile() {
    let dir = copy_of_config();
    let path = dir.path().join("templates/enquiry_coordinator/subject.hbs");
    std::fs::write(&path, "{{#if urgent}}URGENT").unwrap();
    let out = check(dir.path());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("enquiry_coordinator/subject.hbs"), "{err}");
}

#[test]
fn preview_renders_an_email_without_sending_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ack.json");
    std::fs::write(&data, r#"{"enquiry_id": "enq-1", "name": "<Sam>", "topic_label": "Training", "urgent": false, "region_name": "London", "newsletter": false}"#).unwrap();
    let out = binary()
        .current_dir(manifest_dir())
        .args(["preview", "enquiry_ack", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |f: &str| std::fs::read_to_string(dir.path().join("out").join(f)).unwrap();
    assert_eq!(read("subject.txt"), "We have received your enquiry (enq-1)");
    assert!(read("body.txt").contains("Dear <Sam>,"));
    assert!(read("body.html").contains("Dear &lt;Sam&gt;,"));
    assert!(read("body.html").contains("style=\""), "CSS is inlined");

    // A context missing a variable is refused with the variable's template named.
    std::fs::write(&data, r#"{"enquiry_id": "enq-1"}"#).unwrap();
    let out = binary()
        .current_dir(manifest_dir())
        .args(["preview", "enquiry_ack", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("enquiry_ack/"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_reports_an_event_that_no_queue_takes_instead_of_losing_it() {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.json");
    let mut unknown = crate::helpers::contact_event(serde_json::json!({}));
    unknown["type"] = serde_json::json!("contact.archived");
    let events = serde_json::json!([
        crate::helpers::contact_event(serde_json::json!({})),
        unknown
    ]);
    std::fs::write(&file, events.to_string()).unwrap();
    let out = binary()
        .current_dir(manifest_dir())
        .arg("publish")
        .arg(&file)
        .env("RPEC_EXCHANGE", format!("rpec.events.{id}"))
        .env("RPEC_QUEUE", format!("rpec-notify.events.{id}"))
        .env("RPEC_AMQP_URL", crate::helpers::amqp_url())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("1 event(s) published; 1 not"), "{err}");
    assert!(
        err.contains("event 2: no queue takes \"contact.archived\" events"),
        "{err}"
    );
    let conn =
        rpec_notify::consume::topology::connect(&crate::helpers::amqp_url(), "rpec-notify tests")
            .await
            .unwrap();
    let ch = conn.create_channel().await.unwrap();
    for q in ["", ".retry", ".dead-letter"] {
        let _ = ch
            .queue_delete(&format!("rpec-notify.events.{id}{q}"), Default::default())
            .await;
    }
    let _ = ch
        .exchange_delete(&format!("rpec.events.{id}"), Default::default())
        .await;
    let _ = ch
        .exchange_delete(
            &format!("rpec-notify.events.{id}.dead-letter"),
            Default::default(),
        )
        .await;
}

#[test]
fn check_names_an_email_that_no_sample_renders() {
    let dir = copy_of_config();
    let email = dir.path().join("templates/orphan");
    std::fs::create_dir_all(&email).unwrap();
    for part in ["subject", "text", "html"] {
        std::fs::write(email.join(format!("{part}.hbs")), "{{anything}}").unwrap();
    }
    let out = check(dir.path());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("orphan: no sample context renders this email"),
        "{err}"
    );
}

#[test]
fn check_reports_an_unreadable_or_unusable_dkim_key_by_name_without_showing_it() {
    let dir = copy_of_config();
    let key = dir.path().join("dkim.pem");
    let made = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .arg("-out")
        .arg(&key)
        .output()
        .expect("the openssl command");
    assert!(made.status.success());
    let check_with = |vars: &[(&str, &str)]| {
        let mut c = binary();
        c.arg("check")
            .env("RPEC_CONFIG_DIR", dir.path().join("config"))
            .env("RPEC_TEMPLATES_DIR", dir.path().join("templates"))
            .env("RPEC_DKIM_SELECTOR", "rpec1");
        for (k, v) in vars {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let key_path = key.display().to_string();
    let good = check_with(&[("RPEC_DKIM_PRIVATE_KEY_FILE", &key_path)]);
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );

    let pem = std::fs::read_to_string(&key).unwrap();
    // One line of the key body, changed: the file is still PEM but no longer a key.
    let line = pem.lines().nth(3).unwrap().to_owned();
    let first = if line.starts_with('A') { "B" } else { "A" };
    let flipped = format!("{first}{}", &line[1..]);
    std::fs::write(&key, pem.replacen(&line, &flipped, 1)).unwrap();
    let missing = dir.path().join("no-such-key.pem").display().to_string();
    for (path, says) in [
        (
            &key_path,
            "RPEC_DKIM_PRIVATE_KEY(_FILE): not a valid RSA private key",
        ),
        (&missing, "RPEC_DKIM_PRIVATE_KEY_FILE: "),
    ] {
        let out = check_with(&[("RPEC_DKIM_PRIVATE_KEY_FILE", path)]);
        assert!(!out.status.success(), "{path}");
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(all.contains(says), "{all}");
        for shown in [&line[..24], &flipped[..24]] {
            assert!(!all.contains(shown), "the key is shown: {all}");
        }
    }
}

fn validate(args: &[&str]) -> Output {
    binary()
        .arg("validate")
        .args(args)
        .current_dir(manifest_dir())
        .env("RPEC_CONFIG_DIR", manifest_dir().join("config"))
        .output()
        .unwrap()
}

/// Every example is valid, each event of an array on its own line; nothing is published (no
/// broker is named, and none is needed).
#[test]
fn validate_accepts_every_example_event_by_event() {
    let mut files: Vec<String> = std::fs::read_dir(manifest_dir().join("examples/events"))
        .unwrap()
        .map(|e| {
            format!(
                "examples/events/{}",
                e.unwrap().file_name().to_string_lossy()
            )
        })
        .collect();
    files.sort();
    let args: Vec<&str> = files.iter().map(String::as_str).collect();
    let out = validate(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(
        "examples/events/contact-complex-case.json: valid (contact.submitted \
         3b0c8a52-8f43-4a8e-9d0e-5c1f2f6b7a01)\n"
    ));
    assert!(stdout.contains(
        "examples/events/sessions-2024-2025.json: event 2: valid (session.scheduled \
         3a1378a4-4774-5e14-8583-b443fdec9ba5)\n"
    ));
    let sessions = stdout
        .lines()
        .filter(|l| l.starts_with("examples/events/sessions-2024-2025.json: event "))
        .count();
    let in_file: Vec<serde_json::Value> = serde_json::from_slice(
        &std::fs::read(manifest_dir().join("examples/events/sessions-2024-2025.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(sessions, in_file.len());
    assert!(stdout.ends_with(&format!(
        "{} valid, 0 invalid\n",
        stdout.lines().count() - 1
    )));
}

/// An invalid event is reported with the code and detail its dead letter would carry, and the
/// exit code is 1; the other files are still judged. `--json` gives the same as one document.
#[test]
fn validate_reports_the_dead_letter_code_and_detail_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let not_json = dir.path().join("not-json.json");
    std::fs::write(&not_json, "{\"id\": oops").unwrap();
    let mut events: Vec<serde_json::Value> = serde_json::from_slice(
        &std::fs::read(manifest_dir().join("examples/events/sessions-2024-2025.json")).unwrap(),
    )
    .unwrap();
    events.truncate(3);
    events[1]["data"]["ends_at"] = events[1]["data"]["starts_at"].clone();
    let array = dir.path().join("sessions.json");
    std::fs::write(&array, serde_json::to_vec(&events).unwrap()).unwrap();
    let bad_address =
        "tests/fixtures/invalid-events/contact.submitted--data.email--display-name.json";
    let args = [
        bad_address,
        "examples/events/erasure-requested.json",
        not_json.to_str().unwrap(),
        array.to_str().unwrap(),
    ];
    let out = validate(&args);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[0],
        format!("{bad_address}: invalid_payload: data.email: not an email address")
    );
    assert!(lines[1].starts_with("examples/events/erasure-requested.json: valid ("));
    assert!(
        lines[2].starts_with(&format!(
            "{}: malformed_json: not valid JSON: ",
            not_json.display()
        )),
        "{}",
        lines[2]
    );
    assert!(lines[3].starts_with(&format!("{}: event 1: valid (", array.display())));
    assert_eq!(
        lines[4],
        format!(
            "{}: event 2: invalid_payload: data.ends_at: must be after data.starts_at",
            array.display()
        )
    );
    assert!(lines[5].starts_with(&format!("{}: event 3: valid (", array.display())));
    assert_eq!(lines[6], "3 valid, 3 invalid");
    // Nothing of the refused values is shown.
    assert!(!stdout.contains("Sam Okafor"), "{stdout}");

    let mut json_args = vec!["--json"];
    json_args.extend(args);
    let out = validate(&json_args);
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (doc["valid"].as_u64(), doc["invalid"].as_u64()),
        (Some(3), Some(3))
    );
    assert_eq!(
        doc["events"][0],
        serde_json::json!({"file": bad_address, "position": null, "valid": false,
            "code": "invalid_payload", "detail": "data.email: not an email address"})
    );
    assert_eq!(doc["events"][4]["position"], 2);
    assert_eq!(doc["events"][3]["type"], "session.scheduled");
}

/// A file that cannot be read is a usage error (2), as are settings that do not load.
#[test]
fn validate_exits_2_for_a_missing_file_or_broken_settings() {
    let out = validate(&["examples/events/no-such-event.json"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("examples/events/no-such-event.json: cannot be read"));
    let out = binary()
        .args(["validate", "examples/events/erasure-requested.json"])
        .current_dir(manifest_dir())
        .env("RPEC_CONFIG_DIR", "/nonexistent/rpec-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

// ---------------------------------------------------------------------------------------------
// One exit-code table: 0 done, 1 problems found, 2 usage or configuration, 3 a dependency
// cannot be reached.

/// A port on loopback that nothing listens on (bound, then let go).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn code(out: &Output) -> Option<i32> {
    out.status.code()
}

fn show(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn every_command_follows_the_exit_code_table() {
    let config = copy_of_config();
    let config_dir = config.path().join("config");
    let templates_dir = config.path().join("templates");
    let unreachable_db = format!("postgres://postgres@127.0.0.1:{}/rpec", closed_port());
    let unreachable_broker = format!("amqp://guest:guest@127.0.0.1:{}/%2f", closed_port());
    let with_config = |args: &[&str]| {
        let mut c = binary();
        c.current_dir(manifest_dir())
            .args(args)
            .env("RPEC_CONFIG_DIR", &config_dir)
            .env("RPEC_TEMPLATES_DIR", &templates_dir)
            .env("RPEC_DATABASE__ACQUIRE_TIMEOUT_SECS", "1")
            .env("DATABASE_URL", &unreachable_db)
            .env("RPEC_AMQP_URL", &unreachable_broker)
            // Free ports: `run` binds its listeners before it connects.
            .env("RPEC_HTTP_ADDR", format!("127.0.0.1:{}", closed_port()))
            .env("RPEC_ADMIN_ADDR", format!("127.0.0.1:{}", closed_port()));
        c
    };

    // 3: PostgreSQL or RabbitMQ cannot be reached.
    for args in [
        &["migrate"][..],
        &["run"],
        &["outbox", "status"],
        &["enquiries", "open"],
    ] {
        let out = with_config(args).output().unwrap();
        assert_eq!(code(&out), Some(3), "{args:?}: {}", show(&out));
    }
    let example = manifest_dir().join("examples/events/contact-complex-case.json");
    let out = with_config(&["publish"]).arg(&example).output().unwrap();
    assert_eq!(code(&out), Some(3), "publish: {}", show(&out));
    let out = with_config(&["dead-letters", "list"]).output().unwrap();
    assert_eq!(code(&out), Some(3), "dead-letters: {}", show(&out));

    // 2: usage and configuration.
    let out = with_config(&["publish", "no-such-file.json"])
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(2), "{}", show(&out));
    let out = with_config(&["no-such-command"]).output().unwrap();
    assert_eq!(code(&out), Some(2), "{}", show(&out));
    let out = with_config(&["migrate"])
        .env("DATABASE_URL", "not a url")
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(2), "{}", show(&out));
    let out = with_config(&["preview", "no_such_email"]).output().unwrap();
    assert_eq!(code(&out), Some(2), "{}", show(&out));

    // 1: problems found (validate; check below, once the configuration is broken).
    let invalid = config.path().join("invalid.json");
    std::fs::write(
        &invalid,
        r#"{"id": "1b5c8a52-8f43-4a8e-9d0e-5c1f2f6b7a01", "type": "contact.submitted", "version": 1, "occurred_at": "2024-10-03T10:15:00Z", "data": {}}"#,
    )
    .unwrap();
    let out = with_config(&["validate"]).arg(&invalid).output().unwrap();
    assert_eq!(code(&out), Some(1), "{}", show(&out));

    // 0.
    let out = with_config(&["validate"]).arg(&example).output().unwrap();
    assert_eq!(code(&out), Some(0), "{}", show(&out));
    let out = with_config(&["schedule", "--count", "1"]).output().unwrap();
    assert_eq!(code(&out), Some(0), "{}", show(&out));

    // A broken regions.toml: the worker and the commands that need it say 2, check says 1.
    std::fs::write(
        config_dir.join("regions.toml"),
        "[defaults]\nnot = \"this\"\n",
    )
    .unwrap();
    for args in [
        &["run"][..],
        &["schedule"],
        &["enquiries", "open"],
        &["example", "--future"],
    ] {
        let out = with_config(args).output().unwrap();
        assert_eq!(code(&out), Some(2), "{args:?}: {}", show(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("regions.toml"),
            "{args:?}: {}",
            show(&out)
        );
    }
    let out = with_config(&["check"]).output().unwrap();
    assert_eq!(code(&out), Some(1), "{}", show(&out));
    // Settings that do not load (production without its secrets): 2.
    let out = with_config(&["run"])
        .env("RPEC_PROFILE", "production")
        .env_remove("RPEC_TOKEN_SECRET")
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(2), "{}", show(&out));
}

// ---------------------------------------------------------------------------------------------
// --help and completions.

/// Every subcommand, as `--help` lists them (`help` aside).
fn subcommands() -> Vec<String> {
    let out = binary().arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let commands = text
        .split("Commands:")
        .nth(1)
        .expect("a Commands: section")
        .split("\n\n")
        .next()
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_owned)
        .collect::<Vec<_>>();
    assert!(commands.len() >= 12, "{commands:?}");
    commands
}

#[test]
fn help_shows_the_exit_codes_and_every_command_has_examples() {
    let out = binary().arg("--help").output().unwrap();
    let top = String::from_utf8_lossy(&out.stdout);
    for row in [
        "Exit codes",
        "  1  done, problems found",
        "  3  a dependency cannot be reached",
    ] {
        assert!(top.contains(row), "{row}: {top}");
    }
    let mut nested = vec![
        vec!["outbox", "status"],
        vec!["outbox", "list"],
        vec!["outbox", "retry"],
        vec!["outbox", "show"],
        vec!["suppressions", "list"],
        vec!["suppressions", "remove"],
        vec!["dead-letters", "list"],
        vec!["dead-letters", "replay"],
        vec!["dead-letters", "purge"],
        vec!["enquiries", "open"],
    ];
    nested.extend(subcommands().into_iter().map(|c| vec![c.leak() as &str]));
    for command in nested {
        let out = binary().args(&command).arg("--help").output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(code(&out), Some(0), "{command:?}");
        let examples = text.split("Examples:\n").nth(1).unwrap_or_default();
        assert!(
            examples
                .lines()
                .next()
                .is_some_and(|l| l.contains("rpec-notify ")),
            "{command:?}: {text}"
        );
        assert!(text.contains("Exit codes"), "{command:?}: {text}");
    }
}

#[test]
fn completions_for_bash_zsh_and_fish_name_every_command() {
    let commands = subcommands();
    for shell in ["bash", "zsh", "fish"] {
        let out = binary().args(["completions", shell]).output().unwrap();
        assert_eq!(code(&out), Some(0), "{shell}: {}", show(&out));
        let script = String::from_utf8_lossy(&out.stdout);
        for command in &commands {
            assert!(script.contains(command.as_str()), "{shell}: no {command}");
        }
    }
    let out = binary().args(["completions", "bash"]).output().unwrap();
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(script.contains("complete -F"), "{script}");
    let out = binary().args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(code(&out), Some(2));
}

// ---------------------------------------------------------------------------------------------
// preview with the samples check renders.

fn preview(args: &[&str]) -> std::process::Command {
    let mut c = binary();
    c.current_dir(manifest_dir())
        .arg("preview")
        .args(args)
        .env_remove("RPEC_CONFIG_DIR")
        .env_remove("RPEC_TEMPLATES_DIR");
    c
}

#[test]
fn preview_without_data_renders_a_sample() {
    let out = preview(&["enquiry_ack"]).output().unwrap();
    assert_eq!(code(&out), Some(0), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("Subject: We have received your enquiry"),
        "{text}"
    );
    assert!(text.contains("----- text -----") && text.contains("----- html -----"));
    assert!(text.contains("<html"), "{text}");

    // Another sample of the same email differs; one it does not have is a usage error.
    let first = preview(&["session_reminder"]).output().unwrap();
    let second = preview(&["session_reminder", "--sample", "2"])
        .output()
        .unwrap();
    assert_eq!(code(&second), Some(0), "{}", show(&second));
    assert_ne!(first.stdout, second.stdout);
    let out = preview(&["session_reminder", "--sample", "99"])
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(2), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sample(s)"));
    let out = preview(&["enquiry_ack", "--sample", "1", "--data", "x.json"])
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(2), "--sample and --data together");

    // Every email has one: the newsletter, to a directory.
    let dir = tempfile::tempdir().unwrap();
    let out = preview(&["newsletter", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(0), "{}", show(&out));
    for f in ["subject.txt", "body.txt", "body.html"] {
        assert!(!std::fs::read_to_string(dir.path().join(f))
            .unwrap()
            .is_empty());
    }
}

#[test]
fn preview_open_uses_xdg_open_when_there_is_one() {
    use std::os::unix::fs::PermissionsExt;
    let bin = tempfile::tempdir().unwrap();
    let opened = bin.path().join("opened");
    let script = bin.path().join("xdg-open");
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho \"$1\" > '{}'\n", opened.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out_dir = bin.path().join("out");
    let out = preview(&["registration_confirmation", "--open", "--out"])
        .arg(&out_dir)
        .env("PATH", format!("{}:/usr/bin:/bin", bin.path().display()))
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(0), "{}", show(&out));
    let path = std::fs::read_to_string(&opened).unwrap();
    assert_eq!(path.trim(), out_dir.join("body.html").display().to_string());

    // Without one: a message, the preview all the same, exit 0.
    let empty = tempfile::tempdir().unwrap();
    let out = preview(&["registration_confirmation", "--open"])
        .env("PATH", empty.path())
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(0), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("Subject: You are registered"));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("xdg-open not found"),
        "{}",
        show(&out)
    );
}

// ---------------------------------------------------------------------------------------------
// send-test: one sample through the configured relay.

#[test]
fn send_test_sends_one_sample_through_the_relay() {
    let smtp = crate::helpers::SmtpServer::start_new();
    let send_test = |args: &[&str], relay: &str| {
        binary()
            .current_dir(manifest_dir())
            .arg("send-test")
            .args(args)
            .env_remove("RPEC_CONFIG_DIR")
            .env_remove("RPEC_TEMPLATES_DIR")
            .env("RPEC_SMTP_URL", relay)
            .output()
            .unwrap()
    };
    let out = send_test(
        &["enquiry_ack", "--to", "relay-check@example.org"],
        &smtp.url(),
    );
    assert_eq!(code(&out), Some(0), "{}", show(&out));
    let received = smtp.received();
    assert_eq!(received.len(), 1);
    assert!(received[0]
        .subject()
        .starts_with("We have received your enquiry"));
    assert!(received[0]
        .raw_headers()
        .contains("relay-check@example.org"));

    let out = send_test(
        &[
            "session_reminder",
            "--sample",
            "2",
            "--to",
            "relay-check@example.org",
        ],
        &smtp.url(),
    );
    assert_eq!(code(&out), Some(0), "{}", show(&out));
    assert_eq!(smtp.received().len(), 2);

    // Not an address: 2; nobody listening: 3.
    let out = send_test(&["enquiry_ack", "--to", "nobody"], &smtp.url());
    assert_eq!(code(&out), Some(2), "{}", show(&out));
    let closed = format!("smtp://127.0.0.1:{}", closed_port());
    let out = send_test(&["enquiry_ack", "--to", "relay-check@example.org"], &closed);
    assert_eq!(code(&out), Some(3), "{}", show(&out));
    assert_eq!(smtp.received().len(), 2);
}

/// `config show` from the binary, with `--config-dir` and a minimal rpec.toml: each value with
/// its source, secrets hidden; a wrong type in production.toml names the file and key.
#[test]
fn config_show_names_each_source_hides_secrets_and_reads_the_config_dir_given() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rpec.toml"), "[amqp]\nprefetch = 4\n").unwrap();
    let show = |args: &[&str], env: &[(&str, &str)]| {
        binary()
            .env_remove("RPEC_CONFIG_DIR")
            .env_remove("DATABASE_URL")
            .env_remove("RPEC_TOKEN_SECRET")
            .env_remove("RPEC_SMTP_URL")
            .env_remove("RPEC_AMQP_URL")
            .args(args)
            .envs(env.iter().copied())
            .output()
            .unwrap()
    };
    let config_dir = dir.path().to_str().unwrap();
    let out = show(
        &["--config-dir", config_dir, "config", "show", "--json"],
        &[
            ("RPEC_MAIL__CONCURRENCY", "20"),
            ("DATABASE_URL", "postgres://rpec:db-password@127.0.0.1/rpec"),
            (
                "RPEC_TOKEN_SECRET",
                "a-token-secret-of-at-least-32-bytes-long",
            ),
            (
                "RPEC_SMTP_URL",
                "smtps://user:relay-password@relay.example.org",
            ),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    for secret in ["db-password", "a-token-secret", "relay-password"] {
        assert!(!text.contains(secret), "{secret} shown:\n{text}");
    }
    let rows: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    let row = |key: &str| {
        rows.iter()
            .find(|r| r["key"] == key)
            .unwrap_or_else(|| panic!("no {key} in {text}"))
            .clone()
    };
    assert_eq!(row("amqp.prefetch")["value"], "4");
    let rpec_toml = dir.path().join("rpec.toml").display().to_string();
    assert_eq!(row("amqp.prefetch")["source"], rpec_toml.as_str());
    assert_eq!(row("mail.concurrency")["value"], "20");
    assert_eq!(row("mail.concurrency")["source"], "RPEC_MAIL__CONCURRENCY");
    assert_eq!(row("amqp.exchange")["source"], "default");
    assert_eq!(row("mail.smtp_url")["source"], "RPEC_SMTP_URL");
    assert_eq!(row("token_secret")["value"], "(hidden)");
    assert_eq!(row("mail.concurrency")["env"], "RPEC_MAIL__CONCURRENCY");

    // The table, after the command name as well.
    let out = show(&["config", "show", "--config-dir", config_dir], &[]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("amqp.prefetch") && l.contains('4') && l.contains("rpec.toml")),
        "{text}"
    );

    // A wrong type in the profile file: exit 2, naming the file and the key.
    std::fs::write(
        dir.path().join("production.toml"),
        "[mail]\nconcurrency = \"lots\"\n",
    )
    .unwrap();
    let out = show(
        &["--config-dir", config_dir, "config", "show"],
        &[("RPEC_PROFILE", "production")],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("production.toml: mail.concurrency:"), "{err}");
    // `check` reads the same directory.
    let out = binary()
        .env_remove("RPEC_CONFIG_DIR")
        .args(["--config-dir", config_dir, "check"])
        .env("RPEC_PROFILE", "production")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("production.toml: mail.concurrency:"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
