//! Domain types. Every value that comes from outside is parsed into one of these at the edge, so
//! an invalid region, address or over-long text cannot exist further in.

mod email;
pub mod event;
pub mod newsletter;
mod region;
mod text;
pub mod url;

pub use email::EmailAddress;
pub use event::{
    ContactSubmitted, EnquiryClaimed, Envelope, Event, EventType, ParseError,
    RegistrationCancelled, RegistrationCreated, SessionCancelled, SessionDetails, Setting, Topic,
};
pub use newsletter::{
    ErasureRequested, NewsletterPublished, Section, SubscriptionCancelled, SubscriptionRequested,
};
pub use region::RegionId;
pub use text::{single_line, FieldError};
