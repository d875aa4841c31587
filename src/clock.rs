//! The worker's notion of "now". Planning reminders, deciding what is due and firing digests
//! all ask the clock, never the system directly, so tests can stand on any day of any year
//! (the 2024-25 sessions, both clock changes) and move time forward at will.

use chrono::{DateTime, Duration, Utc};
use std::sync::{Arc, Mutex};

#[derive(Clone, Debug, Default)]
pub enum Clock {
    /// The system clock.
    #[default]
    System,
    /// A clock that stands still until moved (tests).
    Manual(Arc<Mutex<DateTime<Utc>>>),
}

impl Clock {
    pub fn manual(start: DateTime<Utc>) -> Clock {
        Clock::Manual(Arc::new(Mutex::new(start)))
    }

    pub fn now(&self) -> DateTime<Utc> {
        match self {
            Clock::System => Utc::now(),
            Clock::Manual(t) => *t.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }

    /// Sets a manual clock (no effect on the system clock).
    pub fn set(&self, to: DateTime<Utc>) {
        if let Clock::Manual(t) = self {
            *t.lock().unwrap_or_else(|e| e.into_inner()) = to;
        }
    }

    pub fn advance(&self, by: Duration) {
        self.set(self.now() + by);
    }
}
