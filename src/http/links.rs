//! The pages behind the links in newsletter emails:
//!
//! - `GET /subscriptions/confirm?token=` shows a button; its `POST` confirms the subscription.
//! - `GET /unsubscribe?token=` shows a button; `POST /unsubscribe?token=` unsubscribes. Mail
//!   clients' one-click unsubscribe (RFC 8058) is the same POST, with the body
//!   `List-Unsubscribe=One-Click` and no cookies: the token is the only credential, so the body
//!   is not read at all and any POST with a good token unsubscribes.
//!
//! GET never changes anything: mail scanners open links. A forged, altered or expired token gets
//! a 400 page and changes nothing. Pages carry no personal data (not even the address), only the
//! region's name, and are never cached or sent on as a referrer (the URL holds the token).

use super::PublicState;
use crate::domain::RegionId;
use crate::tokens::{Purpose, TokenError};
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
use std::sync::Arc;

/// What every page may show. One shape for all of them, so that a template naming a field that
/// a page does not use still renders (strict mode).
#[derive(Debug, Default, Serialize)]
struct PageContext {
    /// The region's name, from config.
    region_name: Option<String>,
    /// Where the page's button posts: this same path and token.
    action: Option<String>,
    /// Nothing changed because it was so already.
    already: bool,
    /// The link was genuine but is past its date.
    expired: bool,
    /// The link was an unsubscribe link (the wording of an expired one differs).
    unsubscribe: bool,
}

fn token_of(query: Option<&str>) -> String {
    query
        .and_then(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "token")
                .map(|(_, v)| v.into_owned())
        })
        .unwrap_or_default()
}

fn page(state: &PublicState, status: StatusCode, name: &str, context: PageContext) -> Response {
    let value = serde_json::to_value(&context).unwrap_or(Value::Null);
    let mut response = match state.templates.render_page(name, &value) {
        Ok(html) => (status, html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "a page could not be rendered");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "Sorry, there is a problem with the service.\n",
            )
                .into_response()
        }
    };
    let headers = response.headers_mut();
    if status != StatusCode::INTERNAL_SERVER_ERROR {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
    }
    // The URL holds the token: never cache the page or pass the URL on.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // No scripts, no frames, forms only to ourselves.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
        ),
    );
    response
}

fn refused(state: &PublicState, purpose: Purpose, e: TokenError) -> Response {
    tracing::info!(reason = ?e, purpose = purpose.path(), "link refused");
    page(
        state,
        StatusCode::BAD_REQUEST,
        "invalid",
        PageContext {
            expired: e == TokenError::Expired,
            unsubscribe: purpose == Purpose::Unsubscribe,
            ..PageContext::default()
        },
    )
}

fn problem(state: &PublicState, e: sqlx::Error) -> Response {
    tracing::warn!(error = %e, "a link page could not reach the database");
    page(
        state,
        StatusCode::SERVICE_UNAVAILABLE,
        "problem",
        PageContext::default(),
    )
}

fn region_name(state: &PublicState, region: &str) -> Option<String> {
    region
        .parse::<RegionId>()
        .ok()
        .map(|r| state.regions.region(r).name.clone())
}

/// A 200 page about a subscription to `region`'s newsletter; `already` when the press found
/// nothing left to do.
fn region_page(state: &PublicState, name: &str, region: Option<&str>, already: bool) -> Response {
    page(
        state,
        StatusCode::OK,
        name,
        PageContext {
            region_name: region.and_then(|r| region_name(state, r)),
            already,
            ..PageContext::default()
        },
    )
}

/// A subscription's region and status, or None when it no longer exists (erased).
async fn subscription(state: &PublicState, id: i64) -> sqlx::Result<Option<(String, String)>> {
    sqlx::query_as("SELECT region, status FROM subscriptions WHERE id = $1")
        .bind(id)
        .fetch_optional(&state.pool)
        .await
}

/// A genuine confirmation link whose subscription has ended (or been erased) since: it no
/// longer confirms anything.
fn no_longer_valid(state: &PublicState) -> Response {
    page(
        state,
        StatusCode::BAD_REQUEST,
        "invalid",
        PageContext::default(),
    )
}

pub(super) async fn confirm_page(
    State(state): State<Arc<PublicState>>,
    RawQuery(query): RawQuery,
) -> Response {
    let token = token_of(query.as_deref());
    let id = match state.links.check(&token, Purpose::Confirm) {
        Ok(id) => id,
        Err(e) => return refused(&state, Purpose::Confirm, e),
    };
    match subscription(&state, id).await {
        Err(e) => problem(&state, e),
        Ok(Some((region, status))) if status == "pending" => page(
            &state,
            StatusCode::OK,
            "confirm",
            PageContext {
                region_name: region_name(&state, &region),
                action: Some(format!("{}?token={token}", Purpose::Confirm.path())),
                ..PageContext::default()
            },
        ),
        Ok(Some((region, status))) if status == "confirmed" => {
            region_page(&state, "confirmed", Some(&region), true)
        }
        Ok(_) => no_longer_valid(&state),
    }
}

pub(super) async fn confirm(
    State(state): State<Arc<PublicState>>,
    RawQuery(query): RawQuery,
) -> Response {
    let token = token_of(query.as_deref());
    let id = match state.links.check(&token, Purpose::Confirm) {
        Ok(id) => id,
        Err(e) => return refused(&state, Purpose::Confirm, e),
    };
    let confirmed: sqlx::Result<Option<(String,)>> = sqlx::query_as(
        "UPDATE subscriptions SET status = 'confirmed', confirmed_at = now()
         WHERE id = $1 AND status = 'pending'
         RETURNING region",
    )
    .bind(id)
    .fetch_optional(&state.pool)
    .await;
    match confirmed {
        Err(e) => problem(&state, e),
        Ok(Some((region,))) => {
            tracing::info!(subscription_id = id, "newsletter subscription confirmed");
            region_page(&state, "confirmed", Some(&region), false)
        }
        // Not pending: confirmed already (a second press), or ended since.
        Ok(None) => match subscription(&state, id).await {
            Err(e) => problem(&state, e),
            Ok(Some((region, status))) if status == "confirmed" => {
                region_page(&state, "confirmed", Some(&region), true)
            }
            Ok(_) => no_longer_valid(&state),
        },
    }
}

pub(super) async fn unsubscribe_page(
    State(state): State<Arc<PublicState>>,
    RawQuery(query): RawQuery,
) -> Response {
    let token = token_of(query.as_deref());
    let id = match state.links.check(&token, Purpose::Unsubscribe) {
        Ok(id) => id,
        Err(e) => return refused(&state, Purpose::Unsubscribe, e),
    };
    match subscription(&state, id).await {
        Err(e) => problem(&state, e),
        Ok(Some((region, status))) if status != "unsubscribed" => page(
            &state,
            StatusCode::OK,
            "unsubscribe",
            PageContext {
                region_name: region_name(&state, &region),
                action: Some(format!("{}?token={token}", Purpose::Unsubscribe.path())),
                ..PageContext::default()
            },
        ),
        Ok(found) => region_page(
            &state,
            "unsubscribed",
            found.as_ref().map(|(region, _)| region.as_str()),
            true,
        ),
    }
}

/// Unsubscribes: the page's button and one-click unsubscribe alike. Answers 200 whenever the
/// token is good, whether or not anything was left to end, as RFC 8058 senders expect.
pub(super) async fn unsubscribe(
    State(state): State<Arc<PublicState>>,
    RawQuery(query): RawQuery,
) -> Response {
    let token = token_of(query.as_deref());
    let id = match state.links.check(&token, Purpose::Unsubscribe) {
        Ok(id) => id,
        Err(e) => return refused(&state, Purpose::Unsubscribe, e),
    };
    let ended: sqlx::Result<Option<(String,)>> = sqlx::query_as(
        "UPDATE subscriptions SET status = 'unsubscribed', unsubscribed_at = now()
         WHERE id = $1 AND status <> 'unsubscribed'
         RETURNING region",
    )
    .bind(id)
    .fetch_optional(&state.pool)
    .await;
    match ended {
        Err(e) => problem(&state, e),
        Ok(Some((region,))) => {
            tracing::info!(
                subscription_id = id,
                "newsletter subscription ended by its reader"
            );
            region_page(&state, "unsubscribed", Some(&region), false)
        }
        Ok(None) => match subscription(&state, id).await {
            Err(e) => problem(&state, e),
            Ok(found) => region_page(
                &state,
                "unsubscribed",
                found.as_ref().map(|(region, _)| region.as_str()),
                true,
            ),
        },
    }
}

/// Every page with sample contexts, for `rpec-notify check`.
pub fn page_samples() -> Vec<(&'static str, Value)> {
    let region = || Some("North-West".to_string());
    let action = || Some("/subscriptions/confirm?token=AQEAAAAAAAAAKgAAAABnCmOg".to_string());
    let samples = vec![
        (
            "confirm",
            PageContext {
                region_name: region(),
                action: action(),
                ..PageContext::default()
            },
        ),
        (
            "confirmed",
            PageContext {
                region_name: region(),
                ..PageContext::default()
            },
        ),
        (
            "confirmed",
            PageContext {
                region_name: region(),
                already: true,
                ..PageContext::default()
            },
        ),
        (
            "unsubscribe",
            PageContext {
                region_name: region(),
                action: action(),
                unsubscribe: true,
                ..PageContext::default()
            },
        ),
        (
            "unsubscribed",
            PageContext {
                region_name: region(),
                ..PageContext::default()
            },
        ),
        (
            "unsubscribed",
            PageContext {
                already: true,
                ..PageContext::default()
            },
        ),
        ("invalid", PageContext::default()),
        (
            "invalid",
            PageContext {
                expired: true,
                ..PageContext::default()
            },
        ),
        (
            "invalid",
            PageContext {
                expired: true,
                unsubscribe: true,
                ..PageContext::default()
            },
        ),
        ("problem", PageContext::default()),
    ];
    samples
        .into_iter()
        .filter_map(|(name, c)| serde_json::to_value(c).ok().map(|v| (name, v)))
        .collect()
}
