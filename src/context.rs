//! What the parts of the worker are given when it starts: the settings, the regions, the
//! templates, the database pool, the metrics and the clock. Built once by `worker` (the
//! composition root, which nothing imports) and handed to each part.
//!
//! Still one context for all parts: each part taking only the few of these it uses is the next
//! step.

use crate::clock::Clock;
use crate::config::{Regions, Settings};
use crate::db;
use crate::mail::{Shells, Templates};
use crate::metrics::Metrics;
use crate::tokens::Links;
use sqlx::PgPool;
use std::sync::atomic::AtomicBool;

/// What every part of the worker shares.
pub struct Shared {
    pub settings: Settings,
    pub regions: Regions,
    pub templates: Templates,
    pub pool: PgPool,
    pub metrics: Metrics,
    /// Whether the consumer holds a working broker connection (for /readyz).
    pub amqp_ready: AtomicBool,
    /// "Now" for planning and for what is due.
    pub clock: Clock,
    /// Bulk emails rendered once, filled in for each reader.
    pub shells: Shells,
    /// Signs links (confirmation, unsubscribe) and checks them.
    pub links: Links,
}

impl Shared {
    /// Loads regions and templates and connects to PostgreSQL (no migrations).
    pub async fn load(settings: Settings, clock: Clock) -> anyhow::Result<Shared> {
        let regions = Regions::load(&settings.regions_path()).map_err(crate::config::Problems)?;
        let templates = Templates::load(&settings.templates_dir, &settings.public_url)
            .map_err(crate::config::Problems)?;
        let pool = db::connect(&settings).await?;
        Ok(Shared {
            links: Links::from_settings(&settings),
            settings,
            regions,
            templates,
            pool,
            metrics: Metrics::new(),
            amqp_ready: AtomicBool::new(false),
            clock,
            shells: Default::default(),
        })
    }
}
