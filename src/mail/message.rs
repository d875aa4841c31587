//! Builds the MIME message for one email, DKIM-signed when its From address has a key.

use super::{Rendered, Sender};
use lettre::message::header::ContentType;
use lettre::message::header::{ContentTransferEncoding, HeaderName, HeaderValue};
use lettre::message::{Body, Mailbox, MultiPart, SinglePart};
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
    let body = match &rendered.html_qp {
        // Encoded once per newsletter shell: the same part `alternative_plain_html` makes (its
        // HTML part is `SinglePart::html` too), without encoding it again here.
        Some(html_qp) => MultiPart::alternative()
            .singlepart(SinglePart::plain(rendered.text.clone()))
            .singlepart(SinglePart::html(Body::dangerous_pre_encoded(
                html_qp.clone(),
                ContentTransferEncoding::QuotedPrintable,
            ))),
        None => MultiPart::alternative_plain_html(rendered.text.clone(), rendered.html.clone()),
    };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mail::{DkimSigner, Templates};
    use serde_json::json;

    /// A newsletter-like email: long lines after CSS inlining, non-ASCII, line breaks, and
    /// holes for a link and a name.
    fn templates() -> (tempfile::TempDir, Templates) {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, body: &str| {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, body).unwrap();
        };
        write("news/subject.hbs", "News for {{name}}");
        write(
            "news/text.hbs",
            "Hello {{name}},\n\nÜber alles.\n\nUnsubscribe: {{unsubscribe_url}}\n",
        );
        let paragraph = "Naïve café = déjà vu, and a line long enough to be wrapped by any \
                         quoted-printable encoder.   "
            .repeat(6);
        write(
            "news/html.hbs",
            &format!(
                "<html><head><style>p {{ color: #123456; font-family: Arial, sans-serif }}\
                 </style></head><body>\n<p>Hello {{{{name}}}},</p>\n<p>{paragraph}</p>\n\
                 <p><a href=\"{{{{unsubscribe_url}}}}\">Unsubscribe</a></p>\n</body></html>\n"
            ),
        );
        let t = Templates::load(dir.path(), "http://x").unwrap();
        (dir, t)
    }

    fn built(rendered: &Rendered, from: &Sender, url: &str) -> Vec<u8> {
        let recipients = ["reader@example.net".to_owned()];
        let draft = Draft {
            message_uuid: uuid::Uuid::nil(),
            recipients: &recipients,
            reply_to: None,
            auto_submitted: false,
            headers: &json!({}),
        };
        build(&draft, from, rendered, &[], Some(url))
            .unwrap()
            .formatted()
    }

    #[test]
    fn a_pre_encoded_html_part_reads_as_the_filled_one() {
        let (_dir, t) = templates();
        let shell = t
            .shell(
                "news",
                &json!({"name": "", "unsubscribe_url": ""}),
                &["unsubscribe_url", "name"],
            )
            .unwrap()
            .expect("a shell");
        let ed25519 = crate::mail::dkim::tests::openssl_key(&["genpkey", "-algorithm", "ed25519"]);
        let mut signed = Sender::parse("News <news@example.org>").unwrap();
        signed.dkim = Some(std::sync::Arc::new(
            DkimSigner::new("s1", "example.org", &ed25519).unwrap(),
        ));
        let long_url = "https://x.example/u?t=".to_owned() + &"A=".repeat(100);
        for from in [Sender::parse("News <news@example.org>").unwrap(), signed] {
            for (url, name) in [
                ("https://x.example/u?t=a&b=c", "Zoë <b>&\""),
                (long_url.as_str(), "x   "),
            ] {
                let values = [url, name];
                let encoded = shell.fill_encoded(&values).unwrap();
                assert!(encoded.html_qp.is_some() && encoded.html.is_empty());
                let filled = shell.fill(&values).unwrap();
                let (a, b) = (built(&encoded, &from, url), built(&filled, &from, url));
                let wire = String::from_utf8(a.clone()).expect("ASCII on the wire");
                assert!(
                    wire.contains(
                        "Content-Type: text/html; charset=utf-8\r\n\
                         Content-Transfer-Encoding: quoted-printable\r\n"
                    ),
                    "{wire}"
                );
                assert_eq!(
                    from.dkim.is_some(),
                    wire.contains("DKIM-Signature: "),
                    "{wire}"
                );
                let (a, b) = (
                    mail_parser::MessageParser::default().parse(&a).unwrap(),
                    mail_parser::MessageParser::default().parse(&b).unwrap(),
                );
                assert_eq!(a.body_html(0), b.body_html(0));
                assert_eq!(a.body_text(0), b.body_text(0));
                assert!(a.body_html(0).unwrap().contains("Naïve café = déjà vu"));
                for header in ["From", "To", "Subject", "List-Unsubscribe"] {
                    assert!(a.header_raw(header).is_some(), "{header}");
                    assert_eq!(a.header_raw(header), b.header_raw(header), "{header}");
                }
            }
        }
    }
}
