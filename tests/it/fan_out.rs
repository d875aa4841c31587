//! The newsletter fan-out at size: 2,000 confirmed subscribers get exactly one copy each, the
//! same event again gives nobody a second, the event back after part of its fan-out reaches
//! only the rest, and a worker killed with `kill -9` in the middle of
//! sending resumes after a restart without skipping anyone.

use crate::binary::Deployment;
use crate::helpers::*;
use crate::newsletter::{newsletter, simple_sections};
use sqlx::PgPool;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

const READERS: i64 = 2_000;
/// Sending 2,000 emails takes seconds; this is only how long to wait before giving up.
const PATIENCE: Duration = Duration::from_secs(180);

/// The test timings with more emails in flight and bigger claims, so 2,000 go quickly. The
/// lease must outlast the claim's sends (ceil(batch / concurrency) x send timeout, plus 2 s to
/// record), or the worker refuses the settings.
fn profile(concurrency: usize, batch: usize, send_timeout_secs: u64, lease_secs: u64) -> String {
    FAST_TIMINGS
        .replace(
            "[mail]\n",
            &format!("[mail]\nconcurrency = {concurrency}\nbatch_size = {batch}\n"),
        )
        .replace("lease_secs = 30", &format!("lease_secs = {lease_secs}"))
        .replace(
            "send_timeout_secs = 5",
            &format!("send_timeout_secs = {send_timeout_secs}"),
        )
}

async fn add_readers(pool: &PgPool, region: &str) {
    sqlx::query(
        "INSERT INTO subscriptions (region, email, name, status, confirmed_at)
         SELECT $1, 'reader' || g || '@school.example.org', 'Reader ' || g, 'confirmed', now()
         FROM generate_series(1, $2) AS g",
    )
    .bind(region)
    .bind(READERS)
    .execute(pool)
    .await
    .unwrap();
}

async fn sent(pool: &PgPool) -> i64 {
    sqlx::query_as::<_, (i64,)>(
        "SELECT count(*) FROM outbox WHERE kind = 'newsletter' AND status = 'sent'",
    )
    .fetch_one(pool)
    .await
    .unwrap()
    .0
}

async fn queued(pool: &PgPool) -> i64 {
    sqlx::query_as::<_, (i64,)>("SELECT count(*) FROM outbox WHERE kind = 'newsletter'")
        .fetch_one(pool)
        .await
        .unwrap()
        .0
}

/// A worker with 16 emails in flight and claims of 200, a relay with as many threads, and the
/// readers of north-west.
async fn app_with_readers() -> TestApp {
    let smtp = SmtpServer::reserve().with_threads(32);
    smtp.start();
    let app = spawn_app_with(Options {
        smtp: Some(smtp),
        profile_toml: profile(16, 200, 5, 90),
        ..Options::default()
    })
    .await;
    add_readers(&app.pool, "north-west").await;
    app
}

/// Message-IDs received per recipient.
fn by_recipient(mails: &[Mail]) -> HashMap<String, HashSet<String>> {
    let mut map: HashMap<String, HashSet<String>> = HashMap::new();
    for m in mails {
        let id = m.header("Message-ID").expect("a Message-ID");
        for to in &m.envelope_to {
            map.entry(to.clone()).or_default().insert(id.clone());
        }
    }
    map
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_readers_get_one_copy_each_and_the_same_event_again_gives_none() {
    let app = app_with_readers().await;
    // A region's list is only its own.
    sqlx::query("INSERT INTO subscriptions (region, email, status) VALUES ('london', 'other@school.example.org', 'confirmed')")
        .execute(&app.pool)
        .await
        .unwrap();
    let event = newsletter("nw-big", "north-west", simple_sections());
    app.publish(&event).await;
    let pool = app.pool.clone();
    eventually(PATIENCE, "2,000 newsletters sent", || {
        let pool = pool.clone();
        async move { (sent(&pool).await == READERS).then_some(()) }
    })
    .await;

    // The same event delivered again, and the same newsletter under another event id.
    app.publish(&event).await;
    let mut again = event.clone();
    again["id"] = serde_json::json!(uuid::Uuid::new_v4().to_string());
    app.publish(&again).await;
    app.processed(again["id"].as_str().unwrap()).await;
    eventually(
        Duration::from_secs(20),
        "the duplicate to be seen",
        || async {
            (app.metric("rpec_events_duplicate_total{type=\"newsletter.published\"}")
                .await
                == 1.0)
                .then_some(())
        },
    )
    .await;
    assert_eq!(queued(&app.pool).await, READERS);

    let mails = app.smtp.received();
    assert_eq!(mails.len() as i64, READERS);
    let readers = by_recipient(&mails);
    assert_eq!(readers.len() as i64, READERS);
    assert!(readers.values().all(|ids| ids.len() == 1));
    assert!(!readers.contains_key("other@school.example.org"));
    app.stop().await;
}

/// A fan-out is committed batch by batch before its event is recorded as handled, so a crash
/// can leave part of it queued and the event unrecorded. The event then comes back and must
/// queue the newsletter only for the readers the first try did not reach. The state such a
/// crash leaves is made here by handling the event for the first readers, adding the rest, and
/// taking away the record of the event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_back_after_part_of_its_fan_out_queues_only_the_readers_it_did_not_reach() {
    let app = app_with_readers().await;
    let event = newsletter("nw-resumed", "north-west", simple_sections());
    app.publish(&event).await;
    app.processed(event["id"].as_str().unwrap()).await;
    assert_eq!(queued(&app.pool).await, READERS);

    // Readers the interrupted fan-out had not reached yet, and the event unrecorded.
    sqlx::query(
        "INSERT INTO subscriptions (region, email, name, status, confirmed_at)
         SELECT 'north-west', 'late' || g || '@school.example.org', NULL, 'confirmed', now()
         FROM generate_series(1, 500) AS g",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query("DELETE FROM processed_events WHERE event_id = $1")
        .bind(uuid::Uuid::parse_str(event["id"].as_str().unwrap()).unwrap())
        .execute(&app.pool)
        .await
        .unwrap();
    app.publish(&event).await;
    app.processed(event["id"].as_str().unwrap()).await;
    let pool = app.pool.clone();
    eventually(PATIENCE, "every newsletter sent", || {
        let pool = pool.clone();
        async move { (sent(&pool).await == READERS + 500).then_some(()) }
    })
    .await;
    assert_eq!(queued(&app.pool).await, READERS + 500);
    let mails = app.smtp.received();
    assert_eq!(mails.len() as i64, READERS + 500);
    let readers = by_recipient(&mails);
    assert_eq!(readers.len() as i64, READERS + 500);
    assert!(readers.values().all(|ids| ids.len() == 1));
    assert!(readers.contains_key("late1@school.example.org"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_while_sending_resumes_after_a_restart_and_skips_nobody() {
    // A relay that takes a few milliseconds per message, so that the kill lands mid-send.
    let smtp = SmtpServer::reserve()
        .with_threads(32)
        .with_delay(Duration::from_millis(5));
    smtp.start();
    const CONCURRENCY: usize = 8;
    // A short lease: rows claimed by the killed worker come back after 5 s (two rounds of
    // sends of at most 1 s each, and 2 s to record, fit in it).
    let deployment = Deployment::new(&smtp.url(), Some(&profile(CONCURRENCY, 16, 1, 5))).await;
    let worker = deployment.start().await;
    let pool = deployment.pool().await;
    add_readers(&pool, "north-west").await;

    let events = tempfile::tempdir().unwrap();
    let file = events.path().join("newsletter.json");
    std::fs::write(
        &file,
        serde_json::to_vec(&newsletter("nw-kill", "north-west", simple_sections())).unwrap(),
    )
    .unwrap();
    deployment.publish(&[&file]);

    let received = smtp.clone();
    eventually(PATIENCE, "sending to be under way", || {
        let n = received.received().len();
        async move { (n >= 150).then_some(()) }
    })
    .await;
    worker.kill_9().await;
    let recorded_at_kill: HashSet<String> = sqlx::query_scalar(
        "SELECT recipients[1] FROM outbox WHERE kind = 'newsletter' AND status = 'sent'",
    )
    .fetch_all(&pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    let at_kill = smtp.received().len();
    assert!(
        at_kill < READERS as usize,
        "the kill came mid-send ({at_kill})"
    );
    let unsent = READERS - sent(&pool).await;
    assert!(unsent > 0, "rows were left for the restarted worker");
    assert_eq!(queued(&pool).await, READERS, "the fan-out itself was whole");

    let worker = deployment.start().await;
    eventually(PATIENCE, "every newsletter sent after the restart", || {
        let pool = pool.clone();
        async move { (sent(&pool).await == READERS).then_some(()) }
    })
    .await;
    let (status, _) = worker.stop().await;
    assert!(status.success());

    let mails = smtp.received();
    let readers = by_recipient(&mails);
    // Everyone got it, and each reader got one newsletter (one Message-ID).
    assert_eq!(readers.len() as i64, READERS);
    assert!(readers.values().all(|ids| ids.len() == 1));
    // The documented duplicate window (README, "How it works"): a message the relay accepted
    // just before the kill, but whose row was not yet recorded as sent, is sent again once its
    // lease runs out, with the same Message-ID (checked above). Only sends in flight at the
    // kill can be such, and at most `mail.concurrency` are in flight at once.
    let mut copies: HashMap<&str, usize> = HashMap::new();
    for to in mails.iter().flat_map(|m| &m.envelope_to) {
        *copies.entry(to.as_str()).or_default() += 1;
    }
    let twice: Vec<&str> = copies
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(to, _)| *to)
        .collect();
    let repeats = mails.len() - READERS as usize;
    println!(
        "kill -9 mid-send: {repeats} copies sent twice (window: mail.concurrency = {CONCURRENCY})"
    );
    assert!(copies.values().all(|n| *n <= 2), "nobody gets three copies");
    assert!(
        twice.iter().all(|to| !recorded_at_kill.contains(*to)),
        "an email recorded as sent before the kill was sent again: {twice:?}"
    );
    assert!(
        repeats <= CONCURRENCY,
        "{repeats} copies sent twice; at most mail.concurrency = {CONCURRENCY} were in flight"
    );
    pool.close().await;
    deployment.remove().await;
}
