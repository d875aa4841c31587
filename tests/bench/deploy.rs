//! A deployment of the real binary for one benchmark: its own fresh database, exchange and
//! queues on the machine's PostgreSQL and RabbitMQ, the shipped settings, and one or more
//! `rpec-notify run` processes (the release build) sending to the run's smtp-sink. As in
//! tests/faults.rs, the worker is a process of its own, configured by its environment; here so
//! that its peak memory can be read from /proc/PID/status.
//!
//! Every worker is killed, and the database and broker names removed, on every way out: `stop`
//! at the end of a row, `Drop` when a row panics or runs out of time.

use crate::helpers::{
    amqp_url, database_admin_url, database_url_for, manifest_dir, remove_test_resources,
    wait_for_topology, TEST_TOKEN_SECRET,
};
use anyhow::{bail, Context};
use rpec_notify::consume::topology::{self, Topology};
use sqlx::{Connection, PgConnection, PgPool};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

pub struct Deployment {
    pub label: String,
    pub db_name: String,
    pub topology: Topology,
    pub pool: PgPool,
    relay_url: String,
    config_dir: tempfile::TempDir,
    logs_dir: PathBuf,
    workers: Vec<WorkerProcess>,
    removed: bool,
}

struct WorkerProcess {
    child: tokio::process::Child,
    admin_port: u16,
    log: PathBuf,
}

/// The databases of the deployments not yet removed, one name a line: what a run killed before
/// it could clean up (scripts/bench.sh interrupted) leaves here for `remove_leftovers`.
fn ledger() -> PathBuf {
    crate::report::output_dir().join("deployments")
}

fn ledger_lines() -> Vec<String> {
    std::fs::read_to_string(ledger())
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("rpec_test_bench_"))
        .map(str::to_owned)
        .collect()
}

fn ledger_write(lines: &[String]) {
    let _ = std::fs::create_dir_all(crate::report::output_dir());
    let mut text = lines.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    let _ = std::fs::write(ledger(), text);
}

fn ledger_remove(db_name: &str) {
    let mut lines = ledger_lines();
    lines.retain(|l| l != db_name);
    ledger_write(&lines);
}

/// Removes the databases and broker names of deployments an interrupted run left behind.
pub async fn remove_leftovers() -> usize {
    let lines = ledger_lines();
    for db_name in &lines {
        remove_test_resources(db_name).await;
    }
    ledger_write(&[]);
    lines.len()
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Peak and current resident memory of a process, in KiB, from /proc/PID/status.
pub fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}

impl Deployment {
    /// A fresh database and broker names; no worker yet.
    pub async fn new(label: &str, relay_url: &str, logs_dir: PathBuf) -> anyhow::Result<Self> {
        // rpec_test_ is what the test helpers remove (database and broker names alike).
        let id = format!("bench_{}", uuid::Uuid::new_v4().simple());
        let db_name = format!("rpec_test_{id}");
        let mut admin = PgConnection::connect(&database_admin_url())
            .await
            .context("PostgreSQL (TEST_DATABASE_URL)")?;
        sqlx::query(&format!("CREATE DATABASE \"{db_name}\""))
            .execute(&mut admin)
            .await?;
        let _ = admin.close().await;
        let mut lines = ledger_lines();
        lines.push(db_name.clone());
        ledger_write(&lines);
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&database_url_for(&db_name))
            .await?;
        // The shipped settings (config/rpec.toml and regions.toml), copied so that nothing in
        // the checkout's config/ (a dev.toml) changes them; RPEC_BENCH_WORKER_TOML names a file
        // laid over them as the dev profile, to try other settings.
        let config_dir = tempfile::tempdir()?;
        for f in ["rpec.toml", "regions.toml", "bank-holidays.toml"] {
            std::fs::copy(
                manifest_dir().join("config").join(f),
                config_dir.path().join(f),
            )?;
        }
        if let Ok(profile) = std::env::var("RPEC_BENCH_WORKER_TOML") {
            std::fs::copy(&profile, config_dir.path().join("dev.toml"))
                .with_context(|| format!("RPEC_BENCH_WORKER_TOML={profile}"))?;
        }
        Ok(Deployment {
            label: label.to_owned(),
            db_name,
            topology: Topology::new(
                &format!("rpec.events.{id}"),
                &format!("rpec-notify.events.{id}"),
            ),
            pool,
            relay_url: relay_url.to_owned(),
            config_dir,
            logs_dir,
            workers: Vec::new(),
            removed: false,
        })
    }

    /// Starts one more `rpec-notify run` on this database and these queues, and waits until it
    /// answers /healthz (migrations applied, every task started) and its queues exist.
    pub async fn start_worker(&mut self) -> anyhow::Result<()> {
        let (http_port, admin_port) = (free_port()?, free_port()?);
        let n = self.workers.len() + 1;
        let log = self.logs_dir.join(format!("{}-worker{n}.log", self.label));
        let log_file = std::fs::File::create(&log)?;
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_rpec-notify"));
        // Nothing of the caller's own settings (make exports DATABASE_URL and RPEC_SMTP_URL).
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("RPEC_") || k.starts_with("DATABASE_URL") || k == "LOG_FORMAT" {
                c.env_remove(&*k);
            }
        }
        // The worker's own log level unless asked (RPEC_BENCH_RUST_LOG).
        c.env_remove("RUST_LOG");
        if let Ok(filter) = std::env::var("RPEC_BENCH_RUST_LOG") {
            c.env("RUST_LOG", filter);
        }
        c.arg("run")
            .current_dir(manifest_dir())
            .env("DATABASE_URL", database_url_for(&self.db_name))
            .env("RPEC_AMQP_URL", amqp_url())
            .env("RPEC_SMTP_URL", &self.relay_url)
            .env("RPEC_EXCHANGE", &self.topology.exchange)
            .env("RPEC_QUEUE", &self.topology.queue)
            .env("RPEC_HTTP_ADDR", format!("127.0.0.1:{http_port}"))
            .env("RPEC_ADMIN_ADDR", format!("127.0.0.1:{admin_port}"))
            .env("RPEC_PUBLIC_URL", format!("http://127.0.0.1:{http_port}"))
            .env("RPEC_TOKEN_SECRET", TEST_TOKEN_SECRET)
            .env("RPEC_CONFIG_DIR", self.config_dir.path())
            .env("RPEC_TEMPLATES_DIR", manifest_dir().join("templates"))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .kill_on_drop(true);
        let child = c.spawn().context("starting rpec-notify run")?;
        self.workers.push(WorkerProcess {
            child,
            admin_port,
            log: log.clone(),
        });
        let url = format!("http://127.0.0.1:{admin_port}/healthz");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = reqwest::get(&url).await {
                if r.status() == 200 {
                    break;
                }
            }
            let w = self.workers.last_mut().unwrap();
            if let Some(status) = w.child.try_wait()? {
                bail!(
                    "the worker exited ({status}) before it was healthy: {}",
                    tail(&w.log)
                );
            }
            if Instant::now() > deadline {
                bail!("the worker did not answer /healthz in 60 s: {}", tail(&log));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let amqp = topology::connect(&amqp_url(), "rpec-notify bench").await?;
        wait_for_topology(&amqp, &self.topology).await;
        let _ = amqp.close(200, "seen").await;
        Ok(())
    }

    /// The process id of worker `i` (0-based).
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.workers.get(i).and_then(|w| w.child.id())
    }

    /// Whose CPU time a row counts: these workers, this database's PostgreSQL, `sink`.
    pub fn cpu_parts(&self, sink: &crate::sink::Sink) -> crate::cpu::Parts {
        crate::cpu::Parts {
            worker: (0..self.workers.len())
                .filter_map(|i| self.pid(i))
                .collect(),
            sink: sink.pid(),
            postgres: Some(self.pool.clone()),
        }
    }

    /// Peak resident memory (VmHWM) of each worker so far, in KiB.
    pub fn peaks_kib(&self) -> Vec<u64> {
        (0..self.workers.len())
            .filter_map(|i| self.pid(i).and_then(memory_kib).map(|(hwm, _)| hwm))
            .collect()
    }

    /// A counter from worker `i`'s /metrics.
    #[allow(dead_code)]
    pub async fn metric(&self, i: usize, name: &str) -> f64 {
        let port = self.workers[i].admin_port;
        crate::helpers::metric_at(&format!("http://127.0.0.1:{port}"), name).await
    }

    /// Stops every worker (SIGTERM; SIGKILL if one has not exited 20 s later) and removes the
    /// database and the broker names. Returns a note for each worker that did not stop cleanly.
    pub async fn stop(mut self) -> Vec<String> {
        let mut notes = Vec::new();
        for w in &self.workers {
            if let Some(pid) = w.child.id() {
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
            }
        }
        for (i, w) in self.workers.iter_mut().enumerate() {
            match tokio::time::timeout(Duration::from_secs(20), w.child.wait()).await {
                Ok(Ok(s)) if s.success() => {}
                Ok(Ok(s)) => notes.push(format!("worker {} exited with {s}", i + 1)),
                Ok(Err(e)) => notes.push(format!("worker {}: {e}", i + 1)),
                Err(_) => {
                    let _ = w.child.start_kill();
                    let _ = w.child.wait().await;
                    notes.push(format!(
                        "worker {} did not stop within 20 s of SIGTERM: killed",
                        i + 1
                    ));
                }
            }
        }
        self.pool.close().await;
        remove_test_resources(&self.db_name).await;
        ledger_remove(&self.db_name);
        self.removed = true;
        notes
    }
}

/// The last lines of a log, for an error message.
fn tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(5);
    format!("{} (log: {})", lines[from..].join(" | "), path.display())
}

/// A row that panicked or ran out of time: its workers are killed at once (and waited for, so
/// that nothing of theirs reaches the sink during the next row) and its names removed.
impl Drop for Deployment {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        for w in &mut self.workers {
            let _ = w.child.start_kill();
        }
        for w in &mut self.workers {
            let until = Instant::now() + Duration::from_secs(5);
            while matches!(w.child.try_wait(), Ok(None)) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let db_name = self.db_name.clone();
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(remove_test_resources(&db_name));
            }
            ledger_remove(&db_name);
        })
        .join();
    }
}
