//! `rpec-notify run`: the composition root. It loads everything, applies migrations, hands each
//! part (the consumer and its handlers, the sender, the scheduler, the retention sweep, the
//! public pages and the admin listener) only what that part uses, and runs them until
//! `shutdown` resolves; then stops consuming, finishes what is in hand and returns. Nothing
//! imports it.

use crate::bounce::{self, Bounces};
use crate::clock::Clock;
use crate::config::{Problems, Regions, Settings};
use crate::consume::{self, Consumer, Topology};
use crate::db;
use crate::handle::Handlers;
use crate::http::{self, AdminState, PublicState};
use crate::mail::{Relay, RelayUrl, Templates};
use crate::metrics::Metrics;
use crate::retention::{self, Sweeper};
use crate::schedule::{self, Scheduler};
use crate::send::{self, Mailer};
use crate::tokens::{Links, ReturnPaths};
use anyhow::Context;
use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Where the worker serves HTTP (the public pages, and health and metrics apart from them) and,
/// when `RPEC_BOUNCE_SMTP_ADDR` is set, takes bounces over SMTP.
pub struct Listeners {
    pub public: TcpListener,
    pub admin: TcpListener,
    pub bounces: Option<TcpListener>,
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
            bounces: match settings.bounces.smtp_addr {
                Some(addr) => Some(bind(addr).await?),
                None => None,
            },
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
    // What several parts use; each is given only the ones it needs.
    let regions = Arc::new(Regions::load(&settings.regions_path()).map_err(Problems)?);
    let templates =
        Arc::new(Templates::load(&settings.templates_dir, &settings.public_url).map_err(Problems)?);
    let pool = db::connect(&settings).await?;
    if let Some(warning) = regions.bank_holidays_warning(clock.now().date_naive()) {
        tracing::warn!("{warning}");
    }
    db::migrate(&pool).await?;
    let record_pool = db::connect_recorder(&settings, send::RECORDS_IN_FLIGHT as u32).await?;
    let claim_pool = db::connect_claimer(&settings).await?;
    let mail = &settings.mail;
    let relay = Relay::new(
        mail.smtp_url(),
        mail.smtp_pool_max_size,
        mail.send_timeout,
        mail.smtp_ca_file.as_deref(),
    )
    .context("Failed to set up the mail relay")?;
    let metrics = Arc::new(Metrics::new());
    // Set by the consumer, read by /readyz.
    let amqp_ready = Arc::new(AtomicBool::new(false));
    let links = Links::from_settings(&settings);
    let bulk_domain = &mail.bulk_from.domain;
    // Bounces: the listener, when one is bound (settings refuse one without return paths).
    let bounce_listener = match listeners.bounces {
        Some(listener) => {
            let bounces =
                Bounces::from_settings(&settings, pool.clone(), &regions, metrics.clone())
                    .context("the bounce listener needs mail.bounce_address")?;
            Some((listener, bounces))
        }
        None => None,
    };

    let consumer = Consumer {
        amqp_url: settings.amqp_url.clone(),
        topology: Topology::from_settings(&settings),
        prefetch: settings.prefetch,
        max_body_bytes: settings.max_body_bytes,
        retry: settings.consume_retry,
        unknown_session_wait: settings.unknown_session_wait,
        shutdown_grace: settings.shutdown_grace,
        handlers: Handlers {
            pool: pool.clone(),
            regions: regions.clone(),
            clock: clock.clone(),
            links: links.clone(),
            bulk_domain: bulk_domain.clone(),
            mail_dir: match RelayUrl::parse(mail.smtp_url()) {
                Ok(RelayUrl::File(dir)) => Some(dir),
                _ => None,
            },
            dead_letter_ttl: settings.dead_letter_ttl,
            metrics: metrics.clone(),
        },
        metrics: metrics.clone(),
        amqp_ready: amqp_ready.clone(),
    };
    let mailer = Mailer {
        settings: mail.clone(),
        pool: pool.clone(),
        record_pool: record_pool.clone(),
        claim_pool: claim_pool.clone(),
        templates: templates.clone(),
        shells: Default::default(),
        regions: regions.clone(),
        links: links.clone(),
        return_paths: ReturnPaths::from_settings(&settings),
        metrics: metrics.clone(),
        clock: clock.clone(),
    };
    let scheduler = Scheduler {
        pool: pool.clone(),
        regions: regions.clone(),
        clock: clock.clone(),
        metrics: metrics.clone(),
        bulk_domain: bulk_domain.clone(),
        poll_interval: settings.schedule_poll_interval,
    };
    let sweeper = Sweeper {
        pool: pool.clone(),
        clock: clock.clone(),
        retention: settings.retention,
    };
    let pages = PublicState {
        pool: pool.clone(),
        templates,
        regions,
        links,
        clock,
        metrics: metrics.clone(),
    };
    let monitoring = AdminState {
        pool: pool.clone(),
        metrics,
        amqp_ready,
        relay: relay.clone(),
    };

    let stop = CancellationToken::new();
    let mut tasks: tokio::task::JoinSet<anyhow::Result<()>> = tokio::task::JoinSet::new();
    let consumer = consume::run(Arc::new(consumer), stop.clone());
    tasks.spawn(async move { Ok(consumer.await?) });
    tasks.spawn(until_stopped(send::run(
        Arc::new(mailer),
        relay,
        stop.clone(),
    )));
    tasks.spawn(until_stopped(retention::run(sweeper, stop.clone())));
    tasks.spawn(until_stopped(schedule::run(scheduler, stop.clone())));
    let (limits, grace) = (settings.http_limits, settings.shutdown_grace);
    tasks.spawn(until_stopped(http::serve(
        listeners.public,
        http::public_router(pages),
        limits,
        grace,
        stop.clone(),
    )));
    tasks.spawn(until_stopped(http::serve(
        listeners.admin,
        http::admin_router(monitoring),
        limits,
        grace,
        stop.clone(),
    )));
    if let Some((listener, bounces)) = bounce_listener {
        let hostname = bounces.paths.domain().to_owned();
        let limits = bounce::limits(&settings.bounces);
        let stop = stop.clone();
        tasks.spawn(async move {
            bounce::listener::serve(listener, hostname, Arc::new(bounces), limits, stop)
                .await
                .context("the bounce listener")
        });
    }
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
    let grace = settings.shutdown_grace + std::time::Duration::from_secs(1);
    if tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tracing::warn!("tasks still running after the grace period: stopping them");
        tasks.abort_all();
    }
    pool.close().await;
    record_pool.close().await;
    claim_pool.close().await;
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
