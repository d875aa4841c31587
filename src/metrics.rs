//! Prometheus metrics, served at `/metrics`.

use crate::mail::sender::Outcome;
use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

pub struct Metrics {
    registry: Registry,
    pub events_consumed: IntCounterVec,
    pub events_duplicate: IntCounterVec,
    pub events_retried: IntCounterVec,
    pub events_dead_lettered: IntCounterVec,
    pub emails_sent: IntCounterVec,
    pub emails_retried: IntCounterVec,
    pub emails_failed: IntCounterVec,
    pub emails_cancelled: IntCounterVec,
    pub outbox_depth: IntGauge,
    /// Completed scheduler rounds (reminders, briefings and digests looked at once each): a
    /// test, or an operator, can tell "nothing was due" from "the scheduler is stuck".
    pub scheduler_rounds: IntCounter,
    /// Completed sender rounds (one claim of due outbox rows, sent and recorded).
    pub sender_rounds: IntCounter,
}

fn plain_counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("a valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("registered once");
    c
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("a valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("registered once");
    c
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let outbox_depth = IntGauge::new(
            "rpec_outbox_depth",
            "Emails waiting to be sent (pending or being sent)",
        )
        .expect("a valid metric");
        registry
            .register(Box::new(outbox_depth.clone()))
            .expect("registered once");
        Metrics {
            events_consumed: counter(
                &registry,
                "rpec_events_consumed_total",
                "Events handled and acknowledged, by type",
                &["type"],
            ),
            events_duplicate: counter(
                &registry,
                "rpec_events_duplicate_total",
                "Events delivered again and ignored, by type",
                &["type"],
            ),
            events_retried: counter(
                &registry,
                "rpec_events_retried_total",
                "Events put back for a later attempt after a passing failure, by type",
                &["type"],
            ),
            events_dead_lettered: counter(
                &registry,
                "rpec_events_dead_lettered_total",
                "Events sent to the dead-letter queue, by type and reason",
                &["type", "reason"],
            ),
            emails_sent: counter(
                &registry,
                "rpec_emails_sent_total",
                "Emails accepted by the relay, by kind",
                &["kind"],
            ),
            emails_retried: counter(
                &registry,
                "rpec_emails_retried_total",
                "Sends that failed for a passing reason and will be retried, by kind",
                &["kind"],
            ),
            emails_failed: counter(
                &registry,
                "rpec_emails_failed_total",
                "Emails that will not be sent (permanent failure or retries exhausted), by kind",
                &["kind"],
            ),
            emails_cancelled: counter(&registry, "rpec_emails_cancelled_total", "Emails not sent because their cause went away (a cancelled session, an unsubscribed reader), by kind", &["kind"]),
            outbox_depth,
            scheduler_rounds: plain_counter(
                &registry,
                "rpec_scheduler_rounds_total",
                "Scheduler rounds completed (due reminders, briefings and digests handed over)",
            ),
            sender_rounds: plain_counter(
                &registry,
                "rpec_sender_rounds_total",
                "Sender rounds completed (due outbox rows claimed, sent and recorded)",
            ),
            registry,
        }
    }

    pub fn email_outcome(&self, kind: &str, outcome: Outcome) {
        match outcome {
            Outcome::Sent => &self.emails_sent,
            Outcome::Retry => &self.emails_retried,
            Outcome::Failed => &self.emails_failed,
            Outcome::Cancelled => &self.emails_cancelled,
        }
        .with_label_values(&[kind])
        .inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
