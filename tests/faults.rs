//! The fault suite: the real binary (built with `--features failpoints`) against the machine's
//! PostgreSQL and RabbitMQ and a programmable relay, one fault per test, each giving one row of
//! a table: events lost, emails lost, duplicate emails (against the one window the design
//! allows), time to recover. Every row is also written to `target/faults/faults.json` (long
//! form) or `target/faults/faults-short.json`.
//!
//!     make faults                                       # long form, release build
//!     cargo test --features failpoints --test faults -- --ignored --test-threads 1 --nocapture
//!
//! `RPEC_FAULTS=long` picks the full sizes; the default is the short form that `make test` runs
//! last. The tests are `#[ignore]`d so that the ordinary test run (`--all-targets`) leaves them
//! out: some stop the shared RabbitMQ. They must run one at a time (`--test-threads 1`).
//! The cluster row (7) starts three more RabbitMQ nodes and is left out of the short form unless
//! `RPEC_FAULTS_CLUSTER=1`; it skips itself, with a note in the table, only if the cluster cannot
//! start on the machine.
//!
//! Counting: events lost = messages published (and confirmed) − events the worker committed
//! (processed_events) − messages dead-lettered on purpose with their code; emails lost = emails
//! the events call for (each enquiry 2, each registration 1, each newsletter reader 1) that the
//! relay never accepted; duplicates = emails accepted − distinct Message-IDs. The duplicate
//! window: a worker that loses its process or its database between the relay accepting a
//! message and the row being recorded sends it again (same Message-ID) once its lease runs out:
//! at most `mail.concurrency` per such interruption.

#[path = "it/binary.rs"]
#[allow(dead_code)]
mod binary;
#[path = "it/helpers.rs"]
#[allow(dead_code)]
mod helpers;
#[path = "it/proxy.rs"]
#[allow(dead_code)]
mod proxy;

#[path = "faults/ledger.rs"]
mod ledger;
#[path = "faults/relay.rs"]
mod relay;

/// What `binary.rs` needs of the CLI tests' module.
mod cli {
    pub fn binary() -> std::process::Command {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_rpec-notify"));
        c.env_remove("RPEC_PROFILE").env("RUST_LOG", "warn");
        c
    }
}

use binary::Deployment;
use helpers::*;
use ledger::*;
use relay::{Mode, Relay};
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Emails sent at once per worker: the duplicate window per interruption.
const CONCURRENCY: usize = 8;

fn long() -> bool {
    std::env::var("RPEC_FAULTS").is_ok_and(|v| v == "long")
}

fn scale() -> &'static str {
    if long() {
        "long"
    } else {
        "short"
    }
}

/// `short` or `long` by the scale.
fn by_scale<T>(short: T, long_form: T) -> T {
    if long() {
        long_form
    } else {
        short
    }
}

/// The tests' fast timings, with the shipped send concurrency, claims of 16, a 15 s lease (a
/// killed worker's rows come back after it; the worker refuses a lease shorter than the work
/// of one claim, ceil(16 / 8) x 5 s + 2 s) and a compressed mail back-off (0.5 s doubling to
/// 10 s, 15 attempts: about 105 s of refusals before an email fails, where the shipped 10 s to
/// 1 h allows hours; a relay that cannot be reached at all counts no attempt).
fn profile() -> String {
    FAST_TIMINGS
        .replace(
            "unknown_session_wait_secs = 30",
            "unknown_session_wait_secs = 5",
        )
        .replace(
            "[mail]\n",
            &format!("[mail]\nconcurrency = {CONCURRENCY}\nbatch_size = 16\n"),
        )
        .replace("lease_secs = 30", "lease_secs = 15")
        .replace("initial_secs = 0.2", "initial_secs = 0.5")
        .replace("max_secs = 1.0", "max_secs = 10.0")
}

/// How long nothing may move before a run is declared stuck (what has not arrived is lost).
fn stall() -> Duration {
    Duration::from_secs(by_scale(45, 90))
}

async fn deployment(relay: &Relay) -> Deployment {
    let mut d = Deployment::new(&relay.url(), Some(&profile())).await;
    d.set_env("RUST_LOG", "warn");
    d
}

// ---------------------------------------------------------------------------------- events --

fn enquiry(tag: &str, i: usize) -> Item {
    let sub = format!("sub-{tag}-{i}@school.example.org");
    let e = contact_event(json!({"region": "london", "email": sub}));
    Item::event(&e, vec![enquiry_key(&sub), to_key(&sub)])
}

fn session(session_id: &str) -> Item {
    let starts = chrono::Utc::now() + chrono::Duration::days(30);
    let ends = starts + chrono::Duration::hours(1);
    let e = session_event(
        "session.scheduled",
        session_id,
        &starts.to_rfc3339(),
        &ends.to_rfc3339(),
        Some("london"),
    );
    Item::event(&e, vec![])
}

fn registration(tag: &str, i: usize, session_id: &str) -> Item {
    let reg = format!("reg-{tag}-{i}@school.example.org");
    let e = registration_event(&format!("{tag}-r{i}"), session_id, &reg);
    Item::event(&e, vec![to_key(&reg)])
}

/// A stream of enquiries and registrations (for `session_id`, published first), with a new
/// session now and then.
fn mixed(tag: &str, n: usize, session_id: &str) -> Vec<Item> {
    (0..n)
        .map(|i| match i % 25 {
            24 => session(&format!("{tag}-s{i}")),
            k if k % 3 == 2 => registration(tag, i, session_id),
            _ => enquiry(tag, i),
        })
        .collect()
}

async fn add_readers(pool: &sqlx::PgPool, region: &str, n: usize) -> Vec<String> {
    sqlx::query(
        "INSERT INTO subscriptions (region, email, name, status, confirmed_at)
         SELECT $1, 'reader' || g || '@fan.example.org', 'Reader ' || g, 'confirmed', now()
         FROM generate_series(1, $2) AS g",
    )
    .bind(region)
    .bind(n as i64)
    .execute(pool)
    .await
    .unwrap();
    (1..=n)
        .map(|g| to_key(&format!("reader{g}@fan.example.org")))
        .collect()
}

fn newsletter(newsletter_id: &str, region: &str) -> Item {
    let e = json!({
        "id": uuid::Uuid::new_v4().to_string(), "type": "newsletter.published", "version": 1,
        "occurred_at": "2024-11-01T09:00:00Z",
        "data": {
            "newsletter_id": newsletter_id, "region": region, "subject": "Fault suite",
            "sections": [{"heading": "News", "body_markdown": "Some **news** and a [link](https://example.org)."}]
        }
    });
    Item::event(&e, vec![])
}

// ------------------------------------------------------------------------------- the runs --

/// One fault's run: a deployment, its relay and what was published.
struct Run {
    fault: &'static str,
    relay: Relay,
    deployment: Deployment,
    pool: sqlx::PgPool,
    ledger: SharedLedger,
    amqp_url: String,
}

impl Run {
    async fn new(fault: &'static str) -> Run {
        let relay = Relay::start(96).await;
        let deployment = deployment(&relay).await;
        let pool = deployment.pool().await;
        Run {
            fault,
            relay,
            deployment,
            pool,
            ledger: Arc::new(Mutex::new(Ledger::default())),
            amqp_url: amqp_url(),
        }
    }

    fn publisher(&self) -> Publisher {
        Publisher::new(
            &self.amqp_url,
            &self.deployment.env("RPEC_EXCHANGE"),
            self.ledger.clone(),
        )
    }

    /// Waits until everything is accounted for (or nothing moves), and counts: the row.
    async fn count(&self, fault_end: Instant, bound: usize, notes: Vec<String>) -> Row {
        let dead_letter_queue = format!("{}.dead-letter", self.deployment.env("RPEC_QUEUE"));
        let c = settle(
            &self.ledger,
            &self.pool,
            &self.amqp_url,
            &dead_letter_queue,
            &self.relay,
            stall(),
        )
        .await;
        let mut notes = notes;
        notes.extend(self.ledger.lock().unwrap().publishing_note());
        row(self.fault, scale(), &c, fault_end, bound, notes)
    }

    /// Once the workers have stopped: records and prints the row, removes the deployment, and
    /// fails the test if the row failed.
    async fn finish(self, row: Row) {
        record(&row);
        self.pool.close().await;
        self.deployment.remove().await;
        assert!(
            row.passed,
            "{}: events lost {}, emails lost {}, duplicates {} (bound {}), unexpected {}: {:?}",
            row.fault,
            row.events_lost,
            row.emails_lost,
            row.duplicates,
            row.duplicate_bound,
            row.emails_unexpected,
            row.notes
        );
    }
}

/// 1. The worker killed with SIGKILL at random moments during a newsletter fan-out and a stream
///    of mixed events, restarted each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the fault suite: make faults, or the last step of make test"]
async fn f1_worker_killed_at_random_during_a_fan_out() {
    let (readers, kills, events) = by_scale((500, 3, 150), (10_000, 20, 1_500));
    let run = Run::new("1 kill -9 during fan-out").await;
    let mut worker = run.deployment.start().await;
    let expected = add_readers(&run.pool, "north-west", readers).await;
    run.ledger.lock().unwrap().extra_emails = expected;
    let mut p = run.publisher();
    p.publish(session("kill-session")).await;
    p.publish(newsletter("kill-news", "north-west")).await;
    p.close().await;
    let stream = stream(
        run.publisher(),
        mixed("kill", events, "kill-session"),
        Duration::from_millis(by_scale(40, 25)),
    );
    // How many emails the relay had accepted at each kill: the kills fell during the fan-out.
    let mut accepted_at_kill = Vec::new();
    for _ in 0..kills {
        let at = Duration::from_millis(fastrand::u64(300..2_500));
        tokio::time::sleep(at).await;
        worker.kill_9().await;
        accepted_at_kill.push(run.relay.received().len());
        worker = run.deployment.start().await;
    }
    let fault_end = Instant::now();
    stream.await.unwrap();
    let notes = vec![format!(
        "{kills} kills, {readers} readers, {events} mixed events; emails accepted at the kills: {} to {}; bound = kills x mail.concurrency",
        accepted_at_kill.first().unwrap_or(&0),
        accepted_at_kill.last().unwrap_or(&0),
    )];
    let row = run.count(fault_end, kills * CONCURRENCY, notes).await;
    let (status, _) = worker.stop().await;
    assert!(status.success(), "the last worker stops cleanly");
    run.finish(row).await;
}

/// Stops and starts the machine's RabbitMQ; started again whatever happens to the test.
#[derive(Default)]
struct BrokerGuard {
    stopped: bool,
}

async fn rabbitmqctl(args: &[&str]) -> bool {
    tokio::process::Command::new("rabbitmqctl")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success())
}

fn amqp_port_open() -> bool {
    std::net::TcpStream::connect(("127.0.0.1", 5672)).is_ok()
}

impl BrokerGuard {
    async fn stop_app(&mut self) {
        self.stopped = true;
        assert!(rabbitmqctl(&["stop_app"]).await, "rabbitmqctl stop_app");
    }

    async fn start_app(&mut self) {
        assert!(rabbitmqctl(&["start_app"]).await, "rabbitmqctl start_app");
        assert!(
            rabbitmqctl(&["await_startup", "--timeout", "60"]).await,
            "rabbitmqctl await_startup"
        );
        eventually(
            Duration::from_secs(60),
            "RabbitMQ to listen again",
            || async { amqp_port_open().then_some(()) },
        )
        .await;
        self.stopped = false;
    }
}

impl Drop for BrokerGuard {
    fn drop(&mut self) {
        if self.stopped {
            let _ = std::process::Command::new("rabbitmqctl")
                .arg("start_app")
                .status();
            let _ = std::process::Command::new("rabbitmqctl")
                .args(["await_startup", "--timeout", "60"])
                .status();
        }
    }
}

/// 2. RabbitMQ restarted (stop_app / start_app) while events flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the fault suite: make faults, or the last step of make test"]
async fn f2_broker_restarted_while_events_flow() {
    let (restarts, down, events) = by_scale((1, 5, 150), (3, 15, 600));
    let run = Run::new("2 RabbitMQ restarted").await;
    let worker = run.deployment.start().await;
    let mut p = run.publisher();
    p.publish(session("broker-session")).await;
    p.close().await;
    let stream = stream(
        run.publisher(),
        mixed("broker", events, "broker-session"),
        Duration::from_millis(50),
    );
    let mut guard = BrokerGuard::default();
    for _ in 0..restarts {
        tokio::time::sleep(Duration::from_secs(3)).await;
        guard.stop_app().await;
        tokio::time::sleep(Duration::from_secs(down)).await;
        guard.start_app().await;
    }
    let fault_end = Instant::now();
    stream.await.unwrap();
    let notes = vec![format!(
        "{restarts} restart(s), {down}s down each, {events} events"
    )];
    let row = run.count(fault_end, 0, notes).await;
    let (status, _) = worker.stop().await;
    assert!(status.success(), "the worker stops cleanly");
    run.finish(row).await;
}

/// 3. PostgreSQL unreachable (a proxy between the worker and PostgreSQL cut) while events flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the fault suite: make faults, or the last step of make test"]
async fn f3_database_unreachable_while_events_flow() {
    let (outage, events) = by_scale((10u64, 150), (90, 1_000));
    let mut run = Run::new("3 PostgreSQL unreachable").await;
    let admin = url::Url::parse(&database_url_for(&run.deployment.db_name)).unwrap();
    let target: std::net::SocketAddr = format!(
        "{}:{}",
        admin
            .host_str()
            .unwrap_or("127.0.0.1")
            .replace("localhost", "127.0.0.1"),
        admin.port().unwrap_or(5432)
    )
    .parse()
    .unwrap();
    let proxy = proxy::FaultProxy::start(target).await;
    let mut through = admin.clone();
    through.set_port(Some(proxy.port())).unwrap();
    through.set_host(Some("127.0.0.1")).unwrap();
    run.deployment.set_env("DATABASE_URL", through.as_str());
    let worker = run.deployment.start().await;
    let mut p = run.publisher();
    p.publish(session("db-session")).await;
    p.close().await;
    let pace = Duration::from_millis(100);
    let stream = stream(run.publisher(), mixed("db", events, "db-session"), pace);
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(outage)).await;
    proxy.restore();
    let fault_end = Instant::now();
    stream.await.unwrap();
    let notes = vec![format!(
        "{outage}s unreachable, {events} events; bound = mail.concurrency (sends in flight at the cut)"
    )];
    let row = run.count(fault_end, CONCURRENCY, notes).await;
    let (status, _) = worker.stop().await;
    assert!(status.success(), "the worker stops cleanly");
    run.finish(row).await;
}

/// 4. The relay gone (connections refused), then answering 421, then 451, then healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the fault suite: make faults, or the last step of make test"]
async fn f4_relay_gone_then_421_then_451() {
    let (gone, r421, r451, events) = by_scale((10u64, 5u64, 5u64, 200), (120, 30, 30, 900));
    let run = Run::new("4 relay gone, 421, 451").await;
    let worker = run.deployment.start().await;
    let mut p = run.publisher();
    p.publish(session("relay-session")).await;
    p.close().await;
    let stream = stream(
        run.publisher(),
        mixed("relay", events, "relay-session"),
        Duration::from_millis(by_scale(100, 200)),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    run.relay.set_mode(Mode::Gone);
    tokio::time::sleep(Duration::from_secs(gone)).await;
    run.relay.set_mode(Mode::Reply421);
    tokio::time::sleep(Duration::from_secs(r421)).await;
    run.relay.set_mode(Mode::Reply451);
    tokio::time::sleep(Duration::from_secs(r451)).await;
    run.relay.set_mode(Mode::Accept);
    let fault_end = Instant::now();
    stream.await.unwrap();
    let notes = vec![format!(
        "gone {gone}s, 421 {r421}s, 451 {r451}s, {events} events; mail back-off 0.5-10 s x 15 attempts; bound = mail.concurrency"
    )];
    let row = run.count(fault_end, CONCURRENCY, notes).await;
    let (status, _) = worker.stop().await;
    assert!(status.success(), "the worker stops cleanly");
    run.finish(row).await;
}

/// The `i`th poison message: (routing key, body, the code it must be dead-lettered with).
fn poison(i: usize) -> Item {
    let mut e = contact_event(json!({"region": "london"}));
    let key = "contact.submitted";
    let starts = chrono::Utc::now() + chrono::Duration::days(30);
    let ends = starts + chrono::Duration::hours(1);
    let session_with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut s = session_event(
            "session.scheduled",
            &format!("poison-s{i}"),
            &starts.to_rfc3339(),
            &ends.to_rfc3339(),
            Some("london"),
        );
        f(&mut s);
        Item::poison(
            "session.scheduled",
            serde_json::to_vec(&s).unwrap(),
            "invalid_payload",
        )
    };
    let with =
        |e: &serde_json::Value, code| Item::poison(key, serde_json::to_vec(e).unwrap(), code);
    let item = match i % 20 {
        0 => Item::poison(key, format!("not json {i}").into_bytes(), "malformed_json"),
        1 => Item::poison(
            key,
            format!("{{\"id\": \"{}\", \"type\": ", uuid::Uuid::new_v4()).into_bytes(),
            "malformed_json",
        ),
        2 => Item::poison(key, format!("[1, 2, {i}]").into_bytes(), "malformed_json"),
        3 => {
            e["type"] = json!("contact.deleted");
            with(&e, "unknown_type")
        }
        4 => {
            e["version"] = json!(2);
            with(&e, "unsupported_version")
        }
        5 => {
            e.as_object_mut().unwrap().remove("version");
            with(&e, "unsupported_version")
        }
        6 => {
            e["data"].as_object_mut().unwrap().remove("organisation");
            with(&e, "invalid_payload")
        }
        7 => {
            e["data"]["email"] = json!(format!("not-an-address-{i}"));
            with(&e, "invalid_payload")
        }
        8 => {
            e["data"]["email"] = json!(format!("Sam <sam{i}@example.org>"));
            with(&e, "invalid_payload")
        }
        9 => {
            e["data"]["name"] = json!("n".repeat(201));
            with(&e, "invalid_payload")
        }
        10 => {
            e["data"]["message"] = json!("m".repeat(10_001));
            with(&e, "invalid_payload")
        }
        11 => {
            e["data"]["setting"] = json!("x".repeat(200 * 1024));
            with(&e, "invalid_payload")
        }
        12 => {
            e["data"]["message"] = json!("x".repeat(300 * 1024));
            with(&e, "too_large")
        }
        13 => {
            e["data"]["region"] = json!("atlantis");
            with(&e, "invalid_payload")
        }
        14 => session_with(&|s| s["data"]["registration_url"] = json!("http://example.org/r")),
        15 => session_with(&|s| {
            let ends = s["data"]["starts_at"].clone();
            s["data"]["starts_at"] = s["data"]["ends_at"].clone();
            s["data"]["ends_at"] = ends;
        }),
        16 => {
            let r = registration_event(
                &format!("poison-r{i}"),
                &format!("never-scheduled-{i}"),
                &format!("poison{i}@school.example.org"),
            );
            Item::poison(
                "registration.created",
                serde_json::to_vec(&r).unwrap(),
                "unknown_session",
            )
        }
        17 => {
            e["data"]["topic"] = json!("gossip");
            with(&e, "invalid_payload")
        }
        18 => {
            e["id"] = json!(format!("not-a-uuid-{i}"));
            with(&e, "invalid_payload")
        }
        _ => {
            // A handler bug, injected: handling events with this id prefix panics.
            e["id"] = json!(format!(
                "deadbeef-{}",
                &uuid::Uuid::new_v4().to_string()[9..]
            ));
            with(&e, "handler_failed")
        }
    };
    item.labelled(POISON_KINDS[i % 20])
}

const POISON_KINDS: [&str; 20] = [
    "not JSON",
    "truncated JSON",
    "a JSON array",
    "unknown type",
    "version 2",
    "no version",
    "missing field",
    "invalid email",
    "email with a display name",
    "name of 201 chars",
    "message of 10,001 chars",
    "a 200 KB field",
    "a 300 KB body",
    "unknown region",
    "http registration URL",
    "ends before it starts",
    "registration for an unknown session",
    "unknown topic",
    "id not a UUID",
    "handling panics",
];

/// 5. Poison: malformed messages of many kinds, and events whose handling panics, interleaved
///    with valid ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the fault suite: make faults, or the last step of make test"]
async fn f5_poison_mix() {
    let bad = by_scale(100, 1_000);
    let mut run = Run::new("5 poison mix").await;
    run.deployment
        .set_env("FAILPOINTS", "handle::panic=return(deadbeef)");
    let worker = run.deployment.start().await;
    let mut items = Vec::new();
    for i in 0..bad {
        items.push(poison(i));
        if i % 2 == 1 {
            items.push(enquiry("poison", i));
        }
    }
    // And the worker is still consuming at the end.
    items.push(enquiry("poison", bad + 1));
    let stream = stream(run.publisher(), items, Duration::ZERO);
    stream.await.unwrap();
    let fault_end = Instant::now();
    let notes = vec![format!(
        "{bad} bad messages of 20 kinds (incl. {} panics), {} valid",
        bad / 20,
        bad / 2 + 1
    )];
    let row = run.count(fault_end, 0, notes).await;
    let (status, _) = worker.stop().await;
    assert!(status.success(), "the worker stops cleanly");
    run.finish(row).await;
}

/// 6. Three workers at once on one queue and one database: enquiries and a newsletter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the fault suite: make faults, or the last step of make test"]
async fn f6_three_workers_on_one_queue() {
    let (readers, events) = by_scale((300, 150), (5_000, 1_000));
    let mut run = Run::new("6 three workers at once").await;
    let mut workers = Vec::new();
    for _ in 0..3 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let admin = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        run.deployment.http_port = port;
        run.deployment.admin_port = admin;
        run.deployment
            .set_env("RPEC_HTTP_ADDR", &format!("127.0.0.1:{port}"));
        run.deployment
            .set_env("RPEC_ADMIN_ADDR", &format!("127.0.0.1:{admin}"));
        workers.push(run.deployment.start().await);
    }
    let expected = add_readers(&run.pool, "south-west", readers).await;
    run.ledger.lock().unwrap().extra_emails = expected;
    let mut items: Vec<Item> = (0..events).map(|i| enquiry("three", i)).collect();
    items.insert(events / 3, newsletter("three-news", "south-west"));
    let stream = stream(run.publisher(), items, Duration::from_millis(10));
    stream.await.unwrap();
    let fault_end = Instant::now();
    let notes = vec![format!(
        "3 workers, {events} enquiries, a newsletter to {readers} readers; no interruption, so no window"
    )];
    let row = run.count(fault_end, 0, notes).await;
    for w in workers {
        let (status, _) = w.stop().await;
        assert!(status.success(), "every worker stops cleanly");
    }
    run.finish(row).await;
}

const CLUSTER_PORTS: [u16; 3] = [5681, 5682, 5683];
const CLUSTER_NODES: [&str; 3] = ["rpec-a", "rpec-b", "rpec-c"];

fn cluster_script(arg: &str) -> std::process::Command {
    let mut c = std::process::Command::new("bash");
    c.arg(manifest_dir().join("scripts/rabbitmq-cluster.sh"))
        .arg(arg);
    c
}

/// The three-node cluster (scripts/rabbitmq-cluster.sh), removed whatever happens to the test.
struct Cluster;

impl Cluster {
    async fn start() -> Result<Cluster, String> {
        let out = tokio::task::spawn_blocking(|| cluster_script("start").output())
            .await
            .unwrap()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(Cluster)
        } else {
            let _ = cluster_script("stop").output();
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    }

    /// The node leading `queue` (asked of any live node).
    async fn leader(queue: &str) -> Option<String> {
        for node in CLUSTER_NODES {
            let out = tokio::process::Command::new("rabbitmqctl")
                .args([
                    "-q",
                    "-n",
                    &format!("{node}@localhost"),
                    "list_queues",
                    "name",
                    "leader",
                ])
                .output()
                .await
                .ok()?;
            if !out.status.success() {
                continue;
            }
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if let Some(leader) = text.lines().find_map(|l| {
                let mut f = l.split_whitespace();
                (f.next() == Some(queue)).then(|| f.next().map(str::to_owned))?
            }) {
                return Some(leader);
            }
        }
        None
    }

    /// `kill -9` of a node's Erlang VM.
    fn kill(node: &str) {
        let short = node.split('@').next().unwrap();
        let pid = std::fs::read_to_string(format!("/var/tmp/rpec-cluster/{short}/pid"))
            .expect("the node's pid file");
        assert!(std::process::Command::new("kill")
            .args(["-9", pid.trim()])
            .status()
            .unwrap()
            .success());
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = cluster_script("stop").output();
    }
}

/// 7. A three-node RabbitMQ cluster; the node leading the worker's quorum queues killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the fault suite: make faults, or the last step of make test"]
async fn f7_cluster_node_leading_the_queues_killed() {
    const FAULT: &str = "7 cluster: queue leader killed";
    if !long() && std::env::var("RPEC_FAULTS_CLUSTER").is_err() {
        println!("{FAULT}: left out of the short form (make faults runs it; RPEC_FAULTS_CLUSTER=1 adds it)");
        return;
    }
    let events = by_scale(150, 600);
    let cluster = match Cluster::start().await {
        Ok(c) => c,
        Err(why) => {
            println!("{FAULT}: SKIPPED, the cluster cannot start on this machine: {why}");
            let row = Row {
                fault: FAULT.into(),
                scale: scale().into(),
                events_published: 0,
                events_lost: 0,
                dead_letters_expected: 0,
                emails_expected: 0,
                emails_received: 0,
                emails_distinct: 0,
                emails_lost: 0,
                duplicates: 0,
                duplicate_bound: 0,
                emails_unexpected: 0,
                recovery_secs: None,
                passed: true,
                notes: vec![format!("SKIPPED: the cluster could not start: {why}")],
                measured_at: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
            };
            record(&row);
            return;
        }
    };
    let balancer = relay::balancer(CLUSTER_PORTS.to_vec()).await;
    let mut run = Run::new(FAULT).await;
    run.amqp_url = format!("amqp://guest:guest@127.0.0.1:{balancer}/%2f");
    run.deployment
        .set_env("RPEC_AMQP_URL", &run.amqp_url.clone());
    let worker = run.deployment.start().await;
    let mut p = run.publisher();
    p.publish(session("cluster-session")).await;
    p.close().await;
    let stream = stream(
        run.publisher(),
        mixed("cluster", events, "cluster-session"),
        Duration::from_millis(50),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let queue = run.deployment.env("RPEC_QUEUE");
    let leader = Cluster::leader(&queue)
        .await
        .expect("the leader of the worker's queue");
    Cluster::kill(&leader);
    let fault_end = Instant::now();
    stream.await.unwrap();
    let new_leader = Cluster::leader(&queue)
        .await
        .unwrap_or_else(|| "(none found)".into());
    let notes = vec![format!(
        "killed {leader}, the leader of the worker's queue (then led by {new_leader}); worker and publisher reach the cluster through a TCP balancer to the first live node; {events} events"
    )];
    let row = run.count(fault_end, 0, notes).await;
    let (status, _) = worker.stop().await;
    drop(cluster);
    assert!(status.success(), "the worker stops cleanly");
    run.finish(row).await;
}

/// Last (tests run in name order): the whole table of this scale's rows.
#[test]
#[ignore = "the fault suite: make faults, or the last step of make test"]
fn z_table() {
    let rows = load(scale());
    println!("\nFault suite ({} form):\n{}", scale(), table(&rows));
}
