//! HTTP, on two listeners:
//!
//! - public (`RPEC_HTTP_ADDR`): the pages behind the links in emails ([`links`]: confirming a
//!   subscription, unsubscribing, claiming an enquiry);
//! - admin (`RPEC_ADMIN_ADDR`, loopback by default): `/healthz` (alive), `/readyz` (PostgreSQL,
//!   RabbitMQ and the relay reachable; it names what failed, never the raw error), `/metrics`
//!   (Prometheus text format).
//!
//! Both are served by one accept loop ([`serve`]) that defends itself: a cap on connections
//! held at once, a time limit on reading a request's head (a slow client is cut off, so a few
//! hundred of them cannot hold the pages), a time limit on each request and a body limit.

mod links;

pub use links::page_samples;

use crate::clock::Clock;
use crate::config::{HttpLimits, Regions};
use crate::mail::{Relay, Templates};
use crate::metrics::Metrics;
use crate::outbox;
use crate::tokens::Links;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use sqlx::PgPool;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// What the public pages use, and nothing more: built by the composition root (`worker`).
pub struct PublicState {
    /// Subscriptions, confirmed and ended here; enquiries, claimed here.
    pub pool: PgPool,
    /// The pages' templates.
    pub templates: Arc<Templates>,
    /// The region a page names.
    pub regions: Arc<Regions>,
    /// Checks the tokens in the links.
    pub links: Links,
    /// When a claim is made.
    pub clock: Clock,
    /// A claim by link is timed (`rpec_enquiry_time_to_claim_seconds`).
    pub metrics: Arc<Metrics>,
}

/// What the admin listener uses, and nothing more: built by the composition root (`worker`).
pub struct AdminState {
    /// Readiness asks it; `/metrics` reads the outbox's depth from it at each scrape.
    pub pool: PgPool,
    pub metrics: Arc<Metrics>,
    /// Whether the consumer holds a working broker connection (it sets it).
    pub amqp_ready: Arc<AtomicBool>,
    /// Readiness checks that it can be reached.
    pub relay: Relay,
}

/// The public pages.
pub fn public_router(state: PublicState) -> Router {
    Router::new()
        .route(
            "/subscriptions/confirm",
            get(links::confirm_page).post(links::confirm),
        )
        .route(
            "/unsubscribe",
            get(links::unsubscribe_page).post(links::unsubscribe),
        )
        .route(
            "/enquiries/claim",
            get(links::claim_page).post(links::claim),
        )
        .with_state(Arc::new(state))
}

/// Health, readiness and metrics, for the monitoring only.
pub fn admin_router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Arc::new(state))
}

/// Serves `app` on `listener` until `stop`, within `limits`; then finishes the requests in hand
/// (for at most `grace`).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    grace: Duration,
    stop: CancellationToken,
) {
    let (timeout, max_body) = (limits.request_timeout, limits.max_body_bytes);
    let app = app
        // Bodies a handler reads are cut at the limit; one announced larger is refused before
        // any handler runs (some pages answer from the query alone and never read the body).
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn(
            move |request: Request, next: Next| async move {
                let announced = request
                    .headers()
                    .get(header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                if announced.is_some_and(|n| n > max_body as u64) {
                    return StatusCode::PAYLOAD_TOO_LARGE.into_response();
                }
                match tokio::time::timeout(timeout, next.run(request)).await {
                    Ok(response) => response,
                    Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
                }
            },
        ));
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        // At the cap, the next connection waits in the listen backlog until one closes.
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            p = connections.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: wait a moment rather than spin.
                    tracing::warn!(error = %e, "could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let service = TowerToHyperService::new(app.clone());
        let stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    // Every permit back: every connection has finished (or the grace ran out).
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(grace, connections.acquire_many(all)).await;
}

async fn readyz(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    let database =
        match tokio::time::timeout(CHECK_TIMEOUT, sqlx::query("SELECT 1").execute(&state.pool))
            .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                // The raw error is for the log; the page says only what failed.
                tracing::warn!(error = %e, "readiness: PostgreSQL does not answer");
                Err("unreachable".to_string())
            }
            Err(_) => Err("no answer in time".to_string()),
        };
    let broker = if state.amqp_ready.load(Ordering::SeqCst) {
        Ok(())
    } else {
        Err("not connected".to_string())
    };
    let relay = state.relay.check(CHECK_TIMEOUT).await;
    let line = |name: &str, r: &Result<(), String>| match r {
        Ok(()) => format!("{name}: ok\n"),
        Err(e) => format!("{name}: {e}\n"),
    };
    let body = [
        line("postgresql", &database),
        line("rabbitmq", &broker),
        line("mail relay", &relay),
    ]
    .concat();
    let status = if database.is_ok() && broker.is_ok() && relay.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body)
}

async fn metrics(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    // Read from the outbox at each scrape (a gauge kept in memory would be wrong as soon as
    // another worker sends, or an operator resolves a failure); left as last read if slow.
    let pool = &state.pool;
    let m = &state.metrics;
    if let Ok(Ok(n)) = tokio::time::timeout(CHECK_TIMEOUT, outbox::depth(pool)).await {
        m.outbox_depth.set(n);
    }
    if let Ok(Ok(counts)) =
        tokio::time::timeout(CHECK_TIMEOUT, outbox::failed_unresolved(pool)).await
    {
        m.set_failed_unresolved(&counts);
    }
    if let Ok(Ok(secs)) =
        tokio::time::timeout(CHECK_TIMEOUT, outbox::oldest_waiting_secs(pool)).await
    {
        m.outbox_oldest_waiting.set(secs);
    }
    if let Ok(Ok(counts)) =
        tokio::time::timeout(CHECK_TIMEOUT, crate::state::enquiry::open_counts(pool)).await
    {
        m.set_open_unclaimed(&counts);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
