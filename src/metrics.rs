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
    /// Event handling time, by type.
    pub event_handling: HistogramVec,
    /// Send time, by kind.
    pub email_send: HistogramVec,
    /// From an event's emails queued to each accepted, by kind.
    pub event_to_email: HistogramVec,
    /// The name of every metric registered.
    names: Vec<String>,
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
    /// Bounces received, by what they were (hard, soft, complaint, auto_reply, unparsed) and
    /// the kind of email they came back for ("unknown" when they named none); a notification
    /// received again is counted once.
    pub bounces: IntCounterVec,
    /// Bounces that named no email of ours: no genuine return path (forged, altered, or sent
    /// to the bounce address by hand), or an email retention has removed. They change nothing.
    pub bounces_unmatched: IntCounter,
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

/// The registry being filled, and the names of what is registered in it (its families with no
/// series yet do not show in what it gathers).
struct Registering {
    registry: Registry,
    names: std::cell::RefCell<Vec<String>>,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registering, m: T) -> T {
    registry
        .names
        .borrow_mut()
        .extend(m.desc().iter().map(|d| d.fq_name.clone()));
    registry
        .registry
        .register(Box::new(m.clone()))
        .expect("registered once");
    m
}

/// A histogram by `labels` with these `buckets`.
fn histogram(
    registry: &Registering,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    register(
        registry,
        HistogramVec::new(
            HistogramOpts::new(name, help).buckets(buckets.to_vec()),
            labels,
        )
        .expect("a valid metric"),
    )
}

fn gauge(registry: &Registering, name: &str, help: &str) -> IntGauge {
    register(registry, IntGauge::new(name, help).expect("a valid metric"))
}

fn counter(registry: &Registering, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        registry,
        IntCounterVec::new(Opts::new(name, help), labels).expect("a valid metric"),
    )
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registering {
            registry: Registry::new(),
            names: Default::default(),
        };
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
            bounces: counter(
                &registry,
                "rpec_bounces_total",
                "Bounces received after the relay took an email, by what they were (hard, soft, complaint, auto_reply, unparsed) and the email's kind",
                &["kind", "email_kind"],
            ),
            bounces_unmatched: register(
                &registry,
                IntCounter::new(
                    "rpec_bounces_unmatched_total",
                    "Bounces that named no email of ours (no genuine return path, or the email is gone): nothing changed",
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
            event_handling: histogram(
                &registry,
                "rpec_event_handling_seconds",
                "From an event's delivery to its settling (acknowledged, retried or dead-lettered), by type",
                &["type"],
                &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
            ),
            email_send: histogram(
                &registry,
                "rpec_email_send_seconds",
                "From a sender slot starting an email (composing it included) to the relay's verdict, by kind",
                &["kind"],
                &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
            ),
            event_to_email: histogram(
                &registry,
                "rpec_event_to_email_seconds",
                "From an event's emails being queued (the commit of its handling) to the relay accepting each, by kind",
                &["kind"],
                &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0],
            ),
            names: registry.names.take(),
            registry: registry.registry,
        }
    }

    /// The name of every metric this exports (whether it has a series yet or not).
    pub fn names(&self) -> &[String] {
        &self.names
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
    fn every_expression_of_the_dashboard_names_a_metric_the_worker_exports() {
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../deploy/grafana/rpec-notify.json"))
                .expect("the dashboard is JSON");
        let mut exprs = Vec::new();
        fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(m) => {
                    for (k, v) in m {
                        match (k.as_str(), v) {
                            ("expr" | "definition", serde_json::Value::String(e)) => {
                                out.push(e.clone())
                            }
                            ("query", serde_json::Value::String(e)) if e.contains("rpec_") => {
                                out.push(e.clone())
                            }
                            _ => walk(v, out),
                        }
                    }
                }
                serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
                _ => {}
            }
        }
        walk(&dashboard, &mut exprs);
        let panels = dashboard["panels"].as_array().expect("panels");
        assert!(panels.len() >= 10, "{} panels", panels.len());
        assert!(
            panels
                .iter()
                .all(|p| p["targets"].as_array().is_some_and(|t| !t.is_empty())),
            "every panel has a query"
        );
        let m = Metrics::new();
        let exported: std::collections::BTreeSet<&str> =
            m.names().iter().map(String::as_str).collect();
        let mut named = std::collections::BTreeSet::new();
        for expr in &exprs {
            let mut rest = expr.as_str();
            while let Some(at) = rest.find("rpec_") {
                let tail = &rest[at..];
                let end = tail
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(tail.len());
                let name = &tail[..end];
                // A histogram's series.
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|b| exported.contains(b)))
                    .unwrap_or(name);
                assert!(
                    exported.contains(base),
                    "the dashboard's {expr:?} names {name}, which the worker does not export"
                );
                named.insert(base.to_owned());
                rest = &tail[end..];
            }
        }
        // The latency histograms are on it.
        for h in [
            "rpec_event_handling_seconds",
            "rpec_email_send_seconds",
            "rpec_event_to_email_seconds",
        ] {
            assert!(named.contains(h), "{h} is not on the dashboard");
        }
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
