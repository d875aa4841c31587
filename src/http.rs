//! HTTP: `/healthz` (alive), `/readyz` (PostgreSQL, RabbitMQ and the relay reachable),
//! `/metrics` (Prometheus text format), and the pages behind the links in newsletter emails
//! ([`links`]: confirming a subscription, unsubscribing).

mod links;

pub use links::page_samples;

use crate::mail::{outbox, Relay};
use crate::worker::Shared;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone)]
struct AppState {
    shared: Arc<Shared>,
    relay: Relay,
}

pub fn router(shared: Arc<Shared>, relay: Relay) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(
            "/subscriptions/confirm",
            get(links::confirm_page).post(links::confirm),
        )
        .route(
            "/unsubscribe",
            get(links::unsubscribe_page).post(links::unsubscribe),
        )
        .with_state(AppState { shared, relay })
}

pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    relay: Relay,
    stop: CancellationToken,
) {
    let app = router(shared, relay);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
    {
        tracing::error!(error = %e, "HTTP server failed");
    }
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let database = match tokio::time::timeout(
        CHECK_TIMEOUT,
        sqlx::query("SELECT 1").execute(&state.shared.pool),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("{e}")),
        Err(_) => Err("no answer in time".to_string()),
    };
    let broker = if state.shared.amqp_ready.load(Ordering::SeqCst) {
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

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    // Read from the outbox at each scrape (a gauge kept in memory would be wrong as soon as
    // another worker sends, or an operator resolves a failure); left as last read if slow.
    let pool = &state.shared.pool;
    let m = &state.shared.metrics;
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
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.shared.metrics.render(),
    )
}
