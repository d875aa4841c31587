//! `enquiry.claimed`: a website or case system that records claims itself says who took an
//! enquiry. It does what a coordinator's claim link does: the first claim wins, and an enquiry
//! claimed before its deadline is never escalated.

use super::{Failure, Handlers};
use crate::domain::event::ErrorCode;
use crate::domain::{EnquiryClaimed, Envelope};
use crate::state::enquiry::{self, Claimed, Via};
use sqlx::PgConnection;

pub(super) async fn handle(
    tx: &mut PgConnection,
    handlers: &Handlers,
    envelope: &Envelope,
    c: &EnquiryClaimed,
) -> Result<(), Failure> {
    let now = handlers.clock.now();
    match enquiry::claim(
        tx,
        &c.enquiry_id,
        Some(c.by.as_str()),
        Via::Event,
        c.note.as_deref(),
        now,
    )
    .await?
    {
        Claimed::Now {
            region,
            topic,
            received_at,
        } => {
            handlers
                .metrics
                .observe_time_to_claim(region.as_deref(), &topic, now - received_at);
            tracing::info!(event_id = %envelope.id, enquiry_id = %c.enquiry_id, "enquiry claimed (event)");
        }
        Claimed::Already(_) => {
            tracing::info!(event_id = %envelope.id, enquiry_id = %c.enquiry_id,
                "enquiry claimed already: the first claim stands");
        }
        // The claim may have overtaken the enquiry on its way: wait for it as a registration
        // waits for its session, then dead-letter.
        Claimed::Unknown => {
            return Err(Failure::Deferred {
                code: ErrorCode::UnknownEnquiry,
                detail: "data.enquiry_id: no such enquiry (yet)".into(),
            })
        }
    }
    Ok(())
}
