//! The current state that emails show and that decides whether they still go: sessions, and
//! readers of bulk mail. Read by the handlers, the scheduler and the sender alike.

pub mod reader;
pub mod session;
