//! Email, as a leaf of the crate (it imports nothing above it): templates and rendering, MIME
//! messages, DKIM, and the relay (SMTP or `.eml` files). What is sent and when is decided by
//! `outbox` and `send`.

pub mod dkim;
pub mod markdown;
pub mod message;
mod relay;
mod smtp;
pub mod templates;

pub use message::{Attachment, Draft};
pub use relay::{install_tls_provider, Relay, RelayUrl, SendError};
pub use templates::{Rendered, Shell, Shells, Templates};

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
