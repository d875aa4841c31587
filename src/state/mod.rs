//! The current state that emails show and that decides whether they still go: enquiries and
//! their claims, sessions, and readers of bulk mail. Read by the handlers, the scheduler and the sender alike.

pub mod enquiry;
pub mod reader;
pub mod session;
