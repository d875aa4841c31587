//! `rpec-notify send-test TEMPLATE --to ADDR`: one sample email through the configured relay,
//! to see that the relay, the From address and DKIM work before the worker relies on them.

use super::exit;
use rpec_notify::config::Settings;
use rpec_notify::mail::{message, Draft, Relay, SendError, Templates};
use std::process::ExitCode;

/// Renders `template` with its `sample`th sample context and sends it to `to` alone, from the
/// transactional From address. Exit 0 sent, 1 the relay refused it, 2 usage or configuration,
/// 3 the relay cannot be reached.
pub async fn send_test(template: &str, sample: usize, to: &str) -> ExitCode {
    let settings = match Settings::load() {
        Ok(s) => s,
        Err(p) => return exit::usage(rpec_notify::config::Problems(p)),
    };
    if rpec_notify::domain::EmailAddress::parse(to).is_err() {
        return exit::usage(format!("--to {to:?}: not an email address"));
    }
    let templates = match Templates::load(&settings.templates_dir, &settings.public_url) {
        Ok(t) => t,
        Err(p) => return exit::usage(rpec_notify::config::Problems(p)),
    };
    let context = match crate::sample_context(template, sample) {
        Ok(c) => c,
        Err(e) => return exit::usage(e),
    };
    let rendered = match templates.render(template, &context) {
        Ok(r) => r,
        Err(e) => return exit::usage(e),
    };
    let recipients = [to.to_owned()];
    let headers = serde_json::json!({});
    let draft = Draft {
        message_uuid: uuid::Uuid::new_v4(),
        recipients: &recipients,
        reply_to: None,
        auto_submitted: true,
        headers: &headers,
    };
    let email = match message::build(
        &draft,
        &settings.mail.transactional_from,
        &rendered,
        &[],
        None,
    ) {
        Ok(m) => m,
        Err(e) => return exit::usage(format!("the message: {e}")),
    };
    let relay = match Relay::new(
        settings.mail.smtp_url(),
        1,
        settings.mail.send_timeout,
        settings.mail.smtp_ca_file.as_deref(),
    ) {
        Ok(r) => r,
        Err(e) => return exit::usage(format!("RPEC_SMTP_URL: {e:#}")),
    };
    match relay.send(email, settings.mail.send_timeout).await {
        Ok(()) => {
            println!("sent {template} (sample {sample}) to {to}");
            ExitCode::SUCCESS
        }
        Err(SendError::Unreachable(e)) => {
            eprintln!("error: the relay cannot be reached: {e}");
            ExitCode::from(exit::EXIT_UNAVAILABLE)
        }
        Err(e @ (SendError::Permanent(_) | SendError::Transient(_))) => {
            eprintln!(
                "error: the relay did not take it ({}): {}",
                e.log_summary(),
                e.text()
            );
            ExitCode::from(exit::EXIT_PROBLEMS)
        }
    }
}
