//! `rpec-notify run`: loads everything, applies migrations, then runs the consumer, the sender,
//! the retention sweep and the HTTP server until `shutdown` resolves; then stops consuming,
//! finishes what is in hand and returns.

use crate::clock::Clock;
use crate::config::Settings;
use crate::context::Shared;
use crate::mail::Relay;
use crate::{consume, db, http, retention, schedule, send};

pub use crate::retention::{sweep_once, Swept};
use anyhow::Context;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Where the worker serves HTTP: the public pages, and health and metrics apart from them.
pub struct Listeners {
    pub public: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds the addresses the settings name.
    pub async fn bind(settings: &Settings) -> anyhow::Result<Listeners> {
        let bind = |addr| async move {
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))
        };
        Ok(Listeners {
            public: bind(settings.http_addr).await?,
            admin: bind(settings.admin_addr).await?,
        })
    }
}

/// Runs the worker on `listeners` until `shutdown` completes.
pub async fn run(
    settings: Settings,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    run_with_clock(settings, listeners, shutdown, Clock::System).await
}

/// `run`, with a clock of the caller's (tests stand on chosen days and move time).
pub async fn run_with_clock(
    settings: Settings,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
    clock: Clock,
) -> anyhow::Result<()> {
    let shared = Arc::new(Shared::load(settings, clock).await?);
    if let Some(warning) = shared
        .regions
        .bank_holidays_warning(shared.clock.now().date_naive())
    {
        tracing::warn!("{warning}");
    }
    db::migrate(&shared.pool).await?;
    let s = &shared.settings;
    let relay = Relay::new(
        s.smtp_url(),
        s.smtp_pool_max_size,
        s.send_timeout,
        s.smtp_ca_file.as_deref(),
    )
    .context("Failed to set up the mail relay")?;

    let stop = CancellationToken::new();
    let mut tasks: tokio::task::JoinSet<anyhow::Result<()>> = tokio::task::JoinSet::new();
    let consumer = consume::run(shared.clone(), stop.clone());
    tasks.spawn(async move { Ok(consumer.await?) });
    tasks.spawn(until_stopped(send::run(
        shared.clone(),
        relay.clone(),
        stop.clone(),
    )));
    tasks.spawn(until_stopped(retention::run(shared.clone(), stop.clone())));
    tasks.spawn(until_stopped(schedule::run(shared.clone(), stop.clone())));
    let (limits, grace) = (shared.settings.http_limits, shared.settings.shutdown_grace);
    tasks.spawn(until_stopped(http::serve(
        listeners.public,
        http::public_router(shared.clone(), relay.clone()),
        limits,
        grace,
        stop.clone(),
    )));
    tasks.spawn(until_stopped(http::serve(
        listeners.admin,
        http::admin_router(shared.clone(), relay),
        limits,
        grace,
        stop.clone(),
    )));
    tracing::info!("worker started");

    // A task that cannot go on (a queue declared differently by an earlier version) stops the
    // worker with its error, rather than leaving it half-working.
    let mut failure = None;
    tokio::select! {
        _ = shutdown => tracing::info!("shutting down: finishing what is in hand"),
        ended = tasks.join_next() => {
            match ended {
                Some(Ok(Err(e))) => failure = Some(e),
                _ => tracing::error!("a worker task ended unexpectedly: shutting down"),
            }
        }
    }
    stop.cancel();
    // Each task bounds its own drain by the grace period; this is the backstop.
    let grace = shared.settings.shutdown_grace + std::time::Duration::from_secs(1);
    if tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tracing::warn!("tasks still running after the grace period: stopping them");
        tasks.abort_all();
    }
    shared.pool.close().await;
    if let Some(e) = failure {
        return Err(e.context("the worker cannot run"));
    }
    tracing::info!("worker stopped");
    Ok(())
}

async fn until_stopped(task: impl Future<Output = ()>) -> anyhow::Result<()> {
    task.await;
    Ok(())
}
