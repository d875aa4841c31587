//! Configuration: `settings` (how the worker runs) and `regions` (who gets what), and the
//! `Problem` list that `rpec-notify check` prints.

mod regions;
mod settings;
pub mod working_time;

pub use regions::{
    normalise_area, parse_bank_holidays, ClaimRules, Offset, RegionConfig, Regions, Routing,
    BANK_HOLIDAYS_FILE,
};
pub use settings::{
    BounceSettings, HttpLimits, MailSettings, Profile, RetentionSettings, RetryPolicy, Settings,
    RECORDING_MARGIN_SECS,
};

pub use crate::problem::{Problem, Problems};
