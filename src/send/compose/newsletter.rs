//! A newsletter's copy for one reader, completed just before it is sent.

use crate::domain::RegionId;
use crate::mail::Shell;
use crate::outbox::job::NewsletterCopy;
use crate::outbox::Claimed;
use crate::send::prepare::Prepared;
use crate::send::Mailer;
use crate::state::reader::{bulk_skip_reason, unsubscribe_link, NewsletterEmail};
use anyhow::Context;
use serde_json::Value;

/// Completes a newsletter email just before it is sent, from the current state: the reader's
/// name and a fresh unsubscribe link; or skips it if the reader has unsubscribed, been
/// suppressed or erased since the fan-out.
pub async fn complete(
    mailer: &Mailer,
    row: &Claimed,
    copy: &NewsletterCopy,
) -> anyhow::Result<Prepared> {
    let NewsletterCopy {
        newsletter_id,
        subscription_id,
    } = copy;
    let subscription_id = *subscription_id;
    // Whether it still goes was read with the claim.
    if !row.newsletter_held {
        return Ok(Prepared::Skip("the newsletter is no longer held".into()));
    }
    if let Some(why) = bulk_skip_reason(row.reader_status.as_deref(), row.reader_suppressed) {
        return Ok(Prepared::Skip(why.into()));
    }
    let name = row.reader_name.clone();
    let unsubscribe_url = unsubscribe_link(&mailer.links, subscription_id);
    // Rendered once per newsletter (with and without a name): each reader's copy only fills in
    // their name and their own link. The newsletter itself is read only to make its shell.
    let key = format!("newsletter {newsletter_id} {}", name.is_some());
    if let Some(shell) = mailer.shells.get(&key) {
        return reader_copy(&shell, name.as_deref(), unsubscribe_url);
    }
    type Row = (String, Option<String>, Value, Option<String>, String);
    let found: Option<Row> = sqlx::query_as(
        "SELECT subject, preheader, sections, web_url, region FROM newsletters
         WHERE newsletter_id = $1",
    )
    .bind(newsletter_id)
    .fetch_optional(&mailer.pool)
    .await?;
    let Some((subject, preheader, sections, web_url, region)) = found else {
        return Ok(Prepared::Skip("the newsletter is no longer held".into()));
    };
    let region: RegionId = region
        .parse()
        .map_err(|e: String| anyhow::anyhow!("stored region: {e}"))?;
    let shell = mailer.shells.get_or_make(&key, || {
        let email = NewsletterEmail {
            subject: subject.clone(),
            preheader: preheader.clone(),
            region_name: mailer.regions.region(region).name.clone(),
            name: name.as_ref().map(|_| String::new()),
            sections: serde_json::from_value(sections.clone()).map_err(|e| e.to_string())?,
            web_url: web_url.clone(),
            unsubscribe_url: String::new(),
        };
        let context = serde_json::to_value(email).map_err(|e| e.to_string())?;
        // Without a name there is no hole for it: the template's "Hello," stays.
        let holes: &[&str] = if name.is_some() {
            &["unsubscribe_url", "name"]
        } else {
            &["unsubscribe_url"]
        };
        mailer.templates.shell("newsletter", &context, holes)
    });
    match shell {
        Ok(Some(shell)) => reader_copy(&shell, name.as_deref(), unsubscribe_url),
        // A value that holds a marker character, or a template that does not render: rendered
        // whole for this reader (and a template error is then the sender's, as for any email).
        Ok(None) | Err(_) => {
            let email = NewsletterEmail {
                subject,
                preheader,
                region_name: mailer.regions.region(region).name.clone(),
                name,
                sections: serde_json::from_value(sections).context("stored sections")?,
                web_url,
                unsubscribe_url,
            };
            Ok(Prepared::Send {
                context: serde_json::to_value(email)?,
                attachments: Vec::new(),
            })
        }
    }
}

/// One reader's copy of a newsletter shell: their link in the first hole, their name (when the
/// shell has a hole for it) in the second; the HTML part already quoted-printable encoded.
fn reader_copy(
    shell: &Shell,
    name: Option<&str>,
    unsubscribe_url: String,
) -> anyhow::Result<Prepared> {
    let values: Vec<&str> = std::iter::once(unsubscribe_url.as_str())
        .chain(name)
        .collect();
    Ok(Prepared::Rendered {
        // The HTML part encoded once per shell: only the reader's values are encoded here.
        rendered: shell.fill_encoded(&values).map_err(anyhow::Error::msg)?,
        unsubscribe_url: Some(unsubscribe_url),
    })
}
