//! Email: templates and rendering, the outbox (written in the event's transaction), the relay
//! (SMTP or `.eml` files) and the sender loop that drains the outbox.

pub mod dkim;
pub mod markdown;
mod message;
pub mod outbox;
pub mod prepare;
mod relay;
pub mod sender;
mod smtp;
pub mod templates;

pub use outbox::{Attachment, NewEmail, Stream};
pub use relay::{install_tls_provider, Relay, RelayUrl, SendError};
pub use templates::{Rendered, Templates};

pub use dkim::DkimSigner;

use lettre::message::Mailbox;
use std::str::FromStr;
use std::sync::Arc;

/// A From address from the configuration ("Name <address>"), its domain for Message-IDs, and
/// how its mail is DKIM-signed (None: not signed).
#[derive(Debug, Clone)]
pub struct Sender {
    pub mailbox: Mailbox,
    pub domain: String,
    pub dkim: Option<Arc<DkimSigner>>,
}

impl Sender {
    pub fn parse(raw: &str) -> Result<Sender, String> {
        let mailbox = Mailbox::from_str(raw.trim())
            .map_err(|e| format!("{raw:?} is not a mailbox (\"Name <address>\"): {e}"))?;
        if raw.contains(['\r', '\n']) {
            return Err(format!("{raw:?} contains a line break"));
        }
        let domain = mailbox.email.domain().to_owned();
        Ok(Sender {
            mailbox,
            domain,
            dkim: None,
        })
    }
}
