//! The pages behind the links in emails:
//!
//! - `GET /subscriptions/confirm?token=` shows a button; its `POST` confirms the subscription.
//! - `GET /unsubscribe?token=` shows a button; `POST /unsubscribe?token=` unsubscribes. Mail
//!   clients' one-click unsubscribe (RFC 8058) is the same POST, with the body
//!   `List-Unsubscribe=One-Click` and no cookies: the token is the only credential, so the body
//!   is not read at all and any POST with a good token unsubscribes.
//! - `GET /enquiries/claim?token=` (from one coordinator's copy of an enquiry) shows the
//!   enquiry's reference and a button; its `POST` claims the enquiry for that copy's mailbox,
//!   unless someone has it already (the first claim wins), and says who has it and since when.
//!
//! GET never changes anything: mail scanners open links. A forged, altered or expired token gets
//! a 400 page and changes nothing. Pages carry no personal data (not even the address), only the
//! region's name, and are never cached or sent on as a referrer (the URL holds the token).

use super::PublicState;
use crate::domain::RegionId;
use crate::state::enquiry::{self, Claimed, Holder, Via};
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
    /// The link was a claim link (likewise).
    claim: bool,
    /// The enquiry's reference (claim pages).
    enquiry_id: Option<String>,
    /// The mailbox that has claimed the enquiry (a coordinator's, never the enquirer's), and
    /// since when in UK time.
    holder: Option<String>,
    held_since: Option<String>,
    /// The holder is the mailbox this link was sent to.
    mine: bool,
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
            claim: purpose == Purpose::Claim,
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

/// The copy a claim link was made for: its enquiry and mailbox, and who holds the enquiry.
#[derive(sqlx::FromRow)]
struct Copy {
    enquiry_id: String,
    mailbox: Option<String>,
    claimed_by: Option<String>,
    claimed_at: Option<chrono::DateTime<chrono::Utc>>,
}

async fn copy(state: &PublicState, id: i64) -> sqlx::Result<Option<Copy>> {
    sqlx::query_as(
        "SELECT c.enquiry_id, c.mailbox, e.claimed_by, e.claimed_at
         FROM enquiry_copies c JOIN enquiries e ON e.enquiry_id = c.enquiry_id
         WHERE c.id = $1",
    )
    .bind(id)
    .fetch_optional(&state.pool)
    .await
}

/// The page saying who has an enquiry: just now by this link (`already` false), or before.
fn claimed_page(
    state: &PublicState,
    enquiry_id: String,
    mailbox: Option<&str>,
    holder: Holder,
    already: bool,
) -> Response {
    let mine =
        matches!((mailbox, holder.by.as_deref()), (Some(m), Some(h)) if m.eq_ignore_ascii_case(h));
    page(
        state,
        StatusCode::OK,
        "claimed",
        PageContext {
            enquiry_id: Some(enquiry_id),
            held_since: Some(crate::uk_time::date_time(holder.at)),
            holder: holder.by,
            mine,
            already,
            ..PageContext::default()
        },
    )
}

pub(super) async fn claim_page(
    State(state): State<Arc<PublicState>>,
    RawQuery(query): RawQuery,
) -> Response {
    let token = token_of(query.as_deref());
    let id = match state.links.check(&token, Purpose::Claim) {
        Ok(id) => id,
        Err(e) => return refused(&state, Purpose::Claim, e),
    };
    match copy(&state, id).await {
        Err(e) => problem(&state, e),
        Ok(None) => no_longer_valid(&state),
        Ok(Some(c)) => match c.claimed_at {
            Some(at) => claimed_page(
                &state,
                c.enquiry_id,
                c.mailbox.as_deref(),
                Holder {
                    by: c.claimed_by,
                    at,
                },
                true,
            ),
            None => page(
                &state,
                StatusCode::OK,
                "claim",
                PageContext {
                    enquiry_id: Some(c.enquiry_id),
                    action: Some(format!("{}?token={token}", Purpose::Claim.path())),
                    ..PageContext::default()
                },
            ),
        },
    }
}

/// Claims the enquiry for the mailbox the link was sent to; the first claim wins.
pub(super) async fn claim(
    State(state): State<Arc<PublicState>>,
    RawQuery(query): RawQuery,
) -> Response {
    let token = token_of(query.as_deref());
    let id = match state.links.check(&token, Purpose::Claim) {
        Ok(id) => id,
        Err(e) => return refused(&state, Purpose::Claim, e),
    };
    let found = match copy(&state, id).await {
        Err(e) => return problem(&state, e),
        Ok(None) => return no_longer_valid(&state),
        Ok(Some(c)) => c,
    };
    let now = state.clock.now();
    let result = async {
        let mut conn = state.pool.acquire().await?;
        enquiry::claim(
            &mut conn,
            &found.enquiry_id,
            found.mailbox.as_deref(),
            Via::Link,
            None,
            now,
        )
        .await
    };
    match result.await {
        Err(e) => problem(&state, e),
        Ok(Claimed::Now {
            region,
            topic,
            received_at,
        }) => {
            state
                .metrics
                .observe_time_to_claim(region.as_deref(), &topic, now - received_at);
            tracing::info!(enquiry_id = %found.enquiry_id, copy_id = id, "enquiry claimed (link)");
            claimed_page(
                &state,
                found.enquiry_id,
                found.mailbox.as_deref(),
                Holder {
                    by: found.mailbox.clone(),
                    at: now,
                },
                false,
            )
        }
        Ok(Claimed::Already(holder)) => claimed_page(
            &state,
            found.enquiry_id,
            found.mailbox.as_deref(),
            holder,
            true,
        ),
        Ok(Claimed::Unknown) => no_longer_valid(&state),
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
        (
            "claim",
            PageContext {
                enquiry_id: Some("enq-2024-000187".into()),
                action: Some("/enquiries/claim?token=AQMAAAAAAAAAKgAAAABnCmOg".into()),
                ..PageContext::default()
            },
        ),
        (
            "claimed",
            PageContext {
                enquiry_id: Some("enq-2024-000187".into()),
                holder: Some("rpec.north-west@example.org".into()),
                held_since: Some("Thursday 3 October 2024, 11:15am".into()),
                mine: true,
                ..PageContext::default()
            },
        ),
        (
            "claimed",
            PageContext {
                enquiry_id: Some("enq-2024-000187".into()),
                holder: Some("rpec.north-west@example.org".into()),
                held_since: Some("Thursday 3 October 2024, 11:15am".into()),
                already: true,
                ..PageContext::default()
            },
        ),
        (
            "claimed",
            PageContext {
                enquiry_id: Some("enq-2024-000187".into()),
                held_since: Some("Thursday 3 October 2024, 11:15am".into()),
                already: true,
                ..PageContext::default()
            },
        ),
        (
            "invalid",
            PageContext {
                expired: true,
                claim: true,
                ..PageContext::default()
            },
        ),
    ];
    samples
        .into_iter()
        .filter_map(|(name, c)| serde_json::to_value(c).ok().map(|v| (name, v)))
        .collect()
}
