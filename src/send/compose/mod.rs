//! Completing emails from the current state just before they are sent, one module per kind of
//! email whose content or fate can change after it was queued.

pub mod digest;
pub mod enquiry;
pub mod newsletter;
pub mod session;
