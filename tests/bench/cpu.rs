//! CPU time over a measured interval, by who spent it: the workers, PostgreSQL (this
//! deployment's backends and the server's own background processes), the sink, and the rest of
//! the machine. Read from /proc (each process's utime + stime, all its threads; the machine's
//! busy time from /proc/stat), so that a row can say what each email cost and what was left.

use crate::report::Row;
use sqlx::PgPool;
use std::collections::HashMap;
use std::time::Instant;

/// Who is counted: process ids by name.
#[derive(Debug, Clone, Default)]
pub struct Parts {
    pub worker: Vec<u32>,
    pub sink: Option<u32>,
    /// Read from `pg_stat_activity` at the start and at the end (a backend that comes in
    /// between is counted whole; one that leaves in between is lost, which a row's long-lived
    /// pools make rare).
    pub postgres: Option<PgPool>,
}

/// Clock ticks of each counted process, and of the machine, at one moment.
struct Snapshot {
    at: Instant,
    ticks: HashMap<u32, u64>,
    busy: u64,
    total: u64,
}

/// An interval being measured.
pub struct Meter {
    parts: Parts,
    start: Snapshot,
    postgres_at_start: Vec<u32>,
}

/// CPU seconds over the interval.
#[derive(Debug, Clone, Copy, Default)]
pub struct Spent {
    pub wall_secs: f64,
    pub cpus: usize,
    pub worker: f64,
    pub postgres: f64,
    pub sink: f64,
    /// Every other process and the kernel's own work (RabbitMQ, the bench itself, whatever
    /// else this shared machine runs).
    pub rest: f64,
    /// Busy share of all CPUs (0 to 1).
    pub busy: f64,
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`; 100 on every Linux build this
/// runs on, and the fallback).
fn ticks_per_sec() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// utime + stime of a process, in ticks (None: it is gone).
fn process_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may hold spaces: fields are counted after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// (busy, total) ticks of the whole machine.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user already).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

async fn postgres_pids(pool: &Option<PgPool>) -> Vec<u32> {
    let Some(pool) = pool else {
        return Vec::new();
    };
    sqlx::query_scalar::<_, i32>(
        "SELECT pid FROM pg_stat_activity
         WHERE datname = current_database() OR backend_type <> 'client backend'",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default()
    .into_iter()
    .map(|p| p as u32)
    .collect()
}

fn snapshot(pids: impl IntoIterator<Item = u32>) -> Snapshot {
    let ticks = pids
        .into_iter()
        .filter_map(|p| process_ticks(p).map(|t| (p, t)))
        .collect();
    let (busy, total) = machine_ticks();
    Snapshot {
        at: Instant::now(),
        ticks,
        busy,
        total,
    }
}

impl Parts {
    fn fixed(&self) -> impl Iterator<Item = u32> + '_ {
        self.worker.iter().copied().chain(self.sink)
    }
}

impl Meter {
    pub async fn start(parts: Parts) -> Meter {
        let postgres_at_start = postgres_pids(&parts.postgres).await;
        let start = snapshot(parts.fixed().chain(postgres_at_start.iter().copied()));
        Meter {
            parts,
            start,
            postgres_at_start,
        }
    }

    pub async fn finish(self) -> Spent {
        let mut postgres = postgres_pids(&self.parts.postgres).await;
        postgres.extend(&self.postgres_at_start);
        postgres.sort_unstable();
        postgres.dedup();
        let end = snapshot(self.parts.fixed().chain(postgres.iter().copied()));
        let hz = ticks_per_sec();
        let spent = |pids: &[u32]| -> f64 {
            let ticks: u64 = pids
                .iter()
                .map(|p| {
                    let before = self.start.ticks.get(p).copied().unwrap_or(0);
                    let after = end.ticks.get(p).copied().unwrap_or(before);
                    after.saturating_sub(before)
                })
                .sum();
            ticks as f64 / hz
        };
        let worker = spent(&self.parts.worker);
        let sink = spent(self.parts.sink.as_slice());
        let postgres = spent(&postgres);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let busy_ticks = end.busy.saturating_sub(self.start.busy) as f64;
        let total_ticks = end.total.saturating_sub(self.start.total) as f64;
        let busy_secs = busy_ticks / hz;
        Spent {
            wall_secs: end.at.duration_since(self.start.at).as_secs_f64(),
            cpus,
            worker,
            postgres,
            sink,
            rest: (busy_secs - worker - postgres - sink).max(0.0),
            busy: if total_ticks > 0.0 {
                busy_ticks / total_ticks
            } else {
                0.0
            },
        }
    }
}

impl Spent {
    /// Microseconds of CPU per message, of `secs` spent over `messages`.
    fn per_message(secs: f64, messages: u64) -> f64 {
        secs * 1e6 / (messages.max(1) as f64)
    }

    /// Adds to `row` what each of `messages` cost, by part, and how busy the machine was: as a
    /// note, and as values (`cpu_us_per_message_*`, `machine_busy_share`).
    pub fn describe(&self, row: &mut Row, messages: u64, parts: &[(&str, &str, f64)]) {
        let mut text = Vec::new();
        for &(key, name, secs) in parts {
            let us = Self::per_message(secs, messages);
            row.value(&format!("cpu_us_per_message_{key}"), us);
            text.push(format!("{name} {us:.0}"));
        }
        row.value("machine_busy_share", self.busy);
        row.note(format!(
            "CPU per message (µs): {}; the machine was {:.0}% busy ({} CPUs, {:.1} s)",
            text.join(", "),
            self.busy * 100.0,
            self.cpus,
            self.wall_secs
        ));
    }
}
