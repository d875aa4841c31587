//! Prometheus metrics, served at `/metrics`.

use crate::outbox::{Outcome, KINDS};
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The `kind` label for an outbox kind: one of the known kinds, else "unknown", so that the
/// number of series stays bounded whatever a row says.
pub fn kind_label(kind: &str) -> &'static str {
    KINDS
        .iter()
        .find(|k| **k == kind)
        .copied()
        .unwrap_or("unknown")
}

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
    /// Messages on the dead-letter queue, as the consumer last saw (every few seconds).
    pub dead_letter_depth: IntGauge,
    /// Retries and dead letters the broker did not take (returned, refused, channel gone).
    pub forward_failures: IntCounter,
    /// 1 while the consumer holds its deliveries because PostgreSQL cannot be reached.
    pub consumer_waiting_for_database: IntGauge,
    /// Outcomes a claim could not record because its lease had run out and the row had been
    /// claimed again: a sign that the lease is too short for the work.
    pub stale_outcomes: IntCounter,
    /// Failed emails no operator has resolved yet, by kind (set at each scrape).
    pub emails_failed_unresolved: IntGaugeVec,
    /// Age of the oldest email that is due and not yet sent (set at each scrape).
    pub outbox_oldest_waiting: Gauge,
    /// From a reminder's due time to the relay accepting it.
    pub reminder_lateness: Histogram,
    /// Completed scheduler rounds (reminders, briefings and digests looked at once each): a
    /// test, or an operator, can tell "nothing was due" from "the scheduler is stuck".
    pub scheduler_rounds: IntCounter,
    /// Completed sender rounds (one claim of due outbox rows, sent and recorded).
    pub sender_rounds: IntCounter,
    /// From an enquiry's arrival to its claim (wall-clock seconds), by region and topic.
    pub time_to_claim: HistogramVec,
    /// Enquiries not yet claimed, by region and topic (set at each scrape).
    pub open_unclaimed: IntGaugeVec,
    /// Escalation emails sent, by level (1: national and triage, 2: the second notice).
    pub escalations: IntCounterVec,
}

/// The `region` label for an enquiry's region: a region id, or "triage"; anything else (a bad
/// row) is "unknown", so the number of series stays bounded.
pub fn region_label(region: Option<&str>) -> &'static str {
    match region {
        None => "triage",
        Some(r) => r
            .parse::<crate::domain::RegionId>()
            .map_or("unknown", crate::domain::RegionId::as_str),
    }
}

/// The `topic` label: a topic id, else "unknown".
pub fn topic_label(topic: &str) -> &'static str {
    crate::domain::Topic::parse(topic).map_or("unknown", crate::domain::Topic::as_str)
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, m: T) -> T {
    registry
        .register(Box::new(m.clone()))
        .expect("registered once");
    m
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    register(registry, IntGauge::new(name, help).expect("a valid metric"))
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        registry,
        IntCounterVec::new(Opts::new(name, help), labels).expect("a valid metric"),
    )
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let outbox_depth = gauge(
            &registry,
            "rpec_outbox_depth",
            "Emails waiting to be sent (pending or being sent)",
        );
        let build_info = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "rpec_build_info",
                    "The running build (always 1), by version",
                ),
                &["version"],
            )
            .expect("a valid metric"),
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        Metrics {
            stale_outcomes: register(
                &registry,
                IntCounter::new(
                    "rpec_emails_stale_outcomes_total",
                    "Send outcomes ignored because the claim's lease had run out and the email was claimed again",
                )
                .expect("a valid metric"),
            ),
            emails_failed_unresolved: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "rpec_emails_failed_unresolved",
                        "Emails that failed for good and that no operator has resolved, by kind",
                    ),
                    &["kind"],
                )
                .expect("a valid metric"),
            ),
            outbox_oldest_waiting: register(
                &registry,
                Gauge::new(
                    "rpec_outbox_oldest_waiting_seconds",
                    "Age of the oldest email that is due (pending or being sent) and not yet sent; 0 when none",
                )
                .expect("a valid metric"),
            ),
            reminder_lateness: register(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "rpec_reminder_lateness_seconds",
                        "From a session reminder's due time to the relay accepting it",
                    )
                    // The contract allows 30 seconds; the buckets show how close that is.
                    .buckets(vec![
                        0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
                    ]),
                )
                .expect("a valid metric"),
            ),
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
            dead_letter_depth: gauge(
                &registry,
                "rpec_dead_letter_depth",
                "Messages waiting on the dead-letter queue for an operator",
            ),
            forward_failures: register(
                &registry,
                IntCounter::new(
                    "rpec_events_forward_failures_total",
                    "Retries and dead letters the broker did not take: the message went back to the queue and the connection was opened anew",
                )
                .expect("a valid metric"),
            ),
            scheduler_rounds: register(
                &registry,
                IntCounter::new(
                    "rpec_scheduler_rounds_total",
                    "Scheduler rounds completed (due reminders, briefings and digests handed over)",
                )
                .expect("a valid metric"),
            ),
            sender_rounds: register(
                &registry,
                IntCounter::new(
                    "rpec_sender_rounds_total",
                    "Sender rounds completed (due outbox rows claimed, sent and recorded)",
                )
                .expect("a valid metric"),
            ),
            time_to_claim: register(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "rpec_enquiry_time_to_claim_seconds",
                        "From an enquiry's arrival to its claim by a coordinator (link or enquiry.claimed), by region and topic",
                    )
                    // Minutes for urgent cases, days for the rest.
                    .buckets(vec![
                        300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0,
                        172800.0, 259200.0, 604800.0,
                    ]),
                    &["region", "topic"],
                )
                .expect("a valid metric"),
            ),
            open_unclaimed: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "rpec_enquiries_open_unclaimed",
                        "Enquiries nobody has claimed yet, by region and topic",
                    ),
                    &["region", "topic"],
                )
                .expect("a valid metric"),
            ),
            escalations: counter(
                &registry,
                "rpec_enquiry_escalations_total",
                "Escalation emails about unclaimed enquiries sent, by level (1: national and triage; 2: the second notice)",
                &["level"],
            ),
            consumer_waiting_for_database: gauge(
                &registry,
                "rpec_consumer_waiting_for_database",
                "1 while the consumer holds its deliveries (no attempt counted) until PostgreSQL answers",
            ),
            registry,
        }
    }

    pub fn email_outcome(&self, kind: &str, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Sent => &self.emails_sent,
            Outcome::Retry => &self.emails_retried,
            Outcome::Failed => &self.emails_failed,
            Outcome::Cancelled => &self.emails_cancelled,
            // Counted in stale_outcomes; the claim that holds the row counts its outcome.
            Outcome::Stale => return,
        };
        counter.with_label_values(&[kind_label(kind)]).inc();
    }

    /// Sets the failed-and-unresolved gauge from `counts` (kind, rows): every known kind is
    /// shown, 0 when it has none, so a kind's series does not vanish once it is resolved.
    pub fn set_failed_unresolved(&self, counts: &[(String, i64)]) {
        for kind in KINDS.iter().chain(std::iter::once(&"unknown")) {
            let n: i64 = counts
                .iter()
                .filter(|(k, _)| kind_label(k) == *kind)
                .map(|(_, n)| n)
                .sum();
            self.emails_failed_unresolved
                .with_label_values(&[kind])
                .set(n);
        }
    }

    /// Records how long an enquiry waited to be claimed.
    pub fn observe_time_to_claim(
        &self,
        region: Option<&str>,
        topic: &str,
        waited: chrono::Duration,
    ) {
        self.time_to_claim
            .with_label_values(&[region_label(region), topic_label(topic)])
            .observe(waited.num_milliseconds().max(0) as f64 / 1000.0);
    }

    /// Sets the open-unclaimed gauge from `counts` (region or None for triage, topic, count):
    /// series not in `counts` go to 0 rather than vanish.
    pub fn set_open_unclaimed(&self, counts: &[(Option<String>, String, i64)]) {
        self.open_unclaimed.reset();
        for (region, topic, n) in counts {
            self.open_unclaimed
                .with_label_values(&[region_label(region.as_deref()), topic_label(topic)])
                .add(*n);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enquiry_labels_come_only_from_regions_and_topics() {
        let m = Metrics::new();
        m.observe_time_to_claim(
            Some("london"),
            "complex-case",
            chrono::Duration::minutes(10),
        );
        m.observe_time_to_claim(Some("x@y.org"), "<script>", chrono::Duration::minutes(10));
        m.set_open_unclaimed(&[
            (None, "training".into(), 2),
            (Some("nowhere".into()), "bogus".into(), 1),
        ]);
        let text = m.render();
        assert!(text.contains("rpec_enquiry_time_to_claim_seconds_count{region=\"london\",topic=\"complex-case\"} 1"), "{text}");
        assert!(
            text.contains(
                "rpec_enquiry_time_to_claim_seconds_count{region=\"unknown\",topic=\"unknown\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("rpec_enquiries_open_unclaimed{region=\"triage\",topic=\"training\"} 2"),
            "{text}"
        );
        assert!(
            !text.contains("x@y.org") && !text.contains("script"),
            "{text}"
        );
    }

    #[test]
    fn kind_labels_come_only_from_the_known_kinds() {
        assert_eq!(kind_label("enquiry"), "enquiry");
        assert_eq!(kind_label("digest"), "digest");
        assert_eq!(kind_label("someone@example.org"), "unknown");
        let m = Metrics::new();
        m.email_outcome("not-a-kind", Outcome::Sent);
        m.set_failed_unresolved(&[("enquiry".into(), 2), ("bogus".into(), 1)]);
        let text = m.render();
        assert!(
            text.contains("rpec_emails_sent_total{kind=\"unknown\"} 1"),
            "{text}"
        );
        assert!(!text.contains("not-a-kind"), "{text}");
        assert!(
            text.contains("rpec_emails_failed_unresolved{kind=\"enquiry\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("rpec_emails_failed_unresolved{kind=\"unknown\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("rpec_emails_failed_unresolved{kind=\"digest\"} 0"),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "rpec_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            )),
            "{text}"
        );
    }
}
