//! Builds the MIME message for one email, DKIM-signed when its From address has a key.

use super::{Rendered, Sender};
use lettre::message::header::ContentType;
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::Message;

/// A file attached to an email (text content: calendar files and the like).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Attachment {
    pub filename: String,
    pub content_type: String,
    pub content: String,
}

/// Everything about one email but its content.
#[derive(Debug, Clone)]
pub struct Draft<'a> {
    /// The left-hand side of its `Message-ID` (the right is the From address's domain).
    pub message_uuid: uuid::Uuid,
    pub recipients: &'a [String],
    pub reply_to: Option<&'a str>,
    /// Marked `Auto-Submitted: auto-generated` (all but newsletters, which people asked for).
    pub auto_submitted: bool,
    /// Extra headers (a JSON object of strings), from trusted code only.
    pub headers: &'a serde_json::Value,
}

/// Builds the message. `unsubscribe_url` (bulk mail only, from our own signed link) becomes the
/// RFC 8058 one-click pair `List-Unsubscribe` + `List-Unsubscribe-Post`.
pub fn build(
    row: &Draft<'_>,
    from: &Sender,
    rendered: &Rendered,
    attachments: &[Attachment],
    unsubscribe_url: Option<&str>,
) -> Result<Message, String> {
    let mut builder = Message::builder()
        .from(from.mailbox.clone())
        .subject(rendered.subject.clone())
        .message_id(Some(format!("<{}@{}>", row.message_uuid, from.domain)))
        .date_now();
    for to in row.recipients {
        let address = to.parse().map_err(|e| format!("recipient: {e}"))?;
        builder = builder.to(Mailbox::new(None, address));
    }
    if let Some(reply_to) = row.reply_to {
        let address = reply_to.parse().map_err(|e| format!("reply-to: {e}"))?;
        builder = builder.reply_to(Mailbox::new(None, address));
    }
    if row.auto_submitted {
        builder = builder.raw_header(raw("Auto-Submitted", "auto-generated")?);
    }
    if let Some(headers) = row.headers.as_object() {
        for (name, value) in headers {
            let value = value
                .as_str()
                .ok_or_else(|| format!("header {name}: not a string"))?;
            builder = builder.raw_header(raw(name, value)?);
        }
    }
    if let Some(url) = unsubscribe_url {
        builder = builder
            .raw_header(raw("List-Unsubscribe", &format!("<{url}>"))?)
            .raw_header(raw("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")?);
    }
    let body = MultiPart::alternative_plain_html(rendered.text.clone(), rendered.html.clone());
    let body = if attachments.is_empty() {
        body
    } else {
        let mut mixed = MultiPart::mixed().multipart(body);
        for a in attachments {
            let content_type = ContentType::parse(&a.content_type)
                .map_err(|e| format!("attachment {}: {e}", a.filename))?;
            mixed = mixed.singlepart(
                lettre::message::Attachment::new(a.filename.clone())
                    .body(a.content.clone(), content_type),
            );
        }
        mixed
    };
    let message = builder
        .multipart(body)
        .map_err(|e| format!("the message could not be built: {e}"))?;
    // Signed last: the signature covers the message exactly as it goes to the relay.
    match &from.dkim {
        Some(signer) => super::dkim::sign(message, signer),
        None => Ok(message),
    }
}

fn raw(name: &str, value: &str) -> Result<HeaderValue, String> {
    if value.contains(['\r', '\n']) {
        return Err(format!("header {name}: a line break in the value"));
    }
    let name = HeaderName::new_from_ascii(name.to_owned())
        .map_err(|_| format!("header {name:?}: not a header name"))?;
    Ok(HeaderValue::new(name, value.to_owned()))
}
