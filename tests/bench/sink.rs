//! Postfix's `smtp-sink` as the relay every worker of the run sends to, and `smtp-source` for the
//! ceiling: how fast that sink takes mail on this machine, measured in the same run.
//!
//! When the sink has accepted a message is read from the sink itself: `smtp-sink -c` prints a
//! running counter (`sess=N quit=N mesg=N`, each update ended by a carriage return) whenever a
//! message's final "." arrives, so the moment its count reaches a target is the moment the last
//! of those messages was accepted, whatever the worker recorded or failed to record. The
//! counter does not say which message it was: per-message latencies (enquiries, the urgent
//! enquiry, reminders) come from the outbox rows' `sent_at` instead (see bench.rs).

use anyhow::{bail, ensure, Context};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

/// Where scripts/postfix-tools.sh unpacked Debian's postfix package.
#[derive(Clone)]
pub struct Postfix {
    dir: PathBuf,
}

impl Postfix {
    /// `RPEC_BENCH_POSTFIX_DIR` (scripts/bench.sh sets it), else what scripts/postfix-tools.sh
    /// prints (it unpacks the package the first time).
    pub fn locate() -> anyhow::Result<Postfix> {
        let dir = match std::env::var("RPEC_BENCH_POSTFIX_DIR") {
            Ok(d) if !d.is_empty() => PathBuf::from(d),
            _ => {
                let script = crate::helpers::manifest_dir().join("scripts/postfix-tools.sh");
                let out = std::process::Command::new("bash")
                    .arg(&script)
                    .output()
                    .with_context(|| format!("running {}", script.display()))?;
                ensure!(
                    out.status.success(),
                    "scripts/postfix-tools.sh failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
            }
        };
        for tool in ["smtp-sink", "smtp-source"] {
            let path = dir.join("usr/sbin").join(tool);
            ensure!(path.exists(), "{} is missing", path.display());
        }
        Ok(Postfix { dir })
    }

    fn command(&self, tool: &str) -> Command {
        let mut c = Command::new(self.dir.join("usr/sbin").join(tool));
        c.env("LD_LIBRARY_PATH", self.dir.join("usr/lib/postfix"))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        c
    }
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// What the reader of the sink's counter has seen.
#[derive(Default)]
struct Counter {
    count: u64,
    /// Targets someone waits for, with the moment the count first reached each.
    marks: Vec<(u64, Option<Instant>)>,
    /// The sink's output ended: it has exited.
    ended: bool,
}

/// A running `smtp-sink -c`; killed when dropped.
pub struct Sink {
    child: Mutex<Child>,
    pub port: u16,
    state: Arc<Mutex<Counter>>,
    changed: tokio::sync::watch::Receiver<u64>,
    log: PathBuf,
}

/// A count of accepted messages someone waits for; see [`Sink::mark`].
pub struct Mark {
    state: Arc<Mutex<Counter>>,
    index: usize,
    pub target: u64,
}

impl Mark {
    /// When the sink's count first reached the target, if it has.
    pub fn at(&self) -> Option<Instant> {
        self.state.lock().unwrap().marks[self.index].1
    }
}

impl Sink {
    pub async fn start(postfix: &Postfix, log: &Path) -> anyhow::Result<Sink> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut c = postfix.command("smtp-sink");
        // As root it must drop its privileges to someone (scripts/postfix-tools.sh says so).
        if running_as_root() {
            c.args(["-u", "nobody"]);
        }
        c.arg("-c")
            .arg(format!("127.0.0.1:{port}"))
            .arg("1024")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log)?);
        let mut child = c.spawn().context("starting smtp-sink")?;
        let mut stdout = child.stdout.take().context("smtp-sink's stdout")?;
        let state = Arc::new(Mutex::new(Counter::default()));
        let (tx, changed) = tokio::sync::watch::channel(0u64);
        let reader_state = state.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            let mut line = Vec::new();
            loop {
                let n = match stdout.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let now = Instant::now();
                let mut latest = None;
                for &b in &buf[..n] {
                    if b == b'\r' || b == b'\n' {
                        if let Some(m) = parse_mesg(&line) {
                            latest = Some(m);
                        }
                        line.clear();
                    } else {
                        line.push(b);
                    }
                }
                if let Some(m) = latest {
                    let mut s = reader_state.lock().unwrap();
                    s.count = s.count.max(m);
                    let count = s.count;
                    for mark in s.marks.iter_mut() {
                        if mark.1.is_none() && count >= mark.0 {
                            mark.1 = Some(now);
                        }
                    }
                    drop(s);
                    let _ = tx.send(count);
                }
            }
            reader_state.lock().unwrap().ended = true;
            let _ = tx.send(u64::MAX);
        });
        let sink = Sink {
            child: Mutex::new(child),
            port,
            state,
            changed,
            log: log.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if Instant::now() > deadline || sink.state.lock().unwrap().ended {
                bail!("smtp-sink did not start: {}", sink.log_text());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(sink)
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Messages accepted so far (every worker and smtp-source of the run together).
    pub fn count(&self) -> u64 {
        self.state.lock().unwrap().count
    }

    /// Whether the sink is still running.
    pub fn alive(&self) -> bool {
        !self.state.lock().unwrap().ended
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .trim()
            .to_owned()
    }

    /// Starts watching for the count to reach `target`; the moment it does is kept exactly,
    /// however rarely the caller looks. Set it before starting what sends the messages.
    pub fn mark(&self, target: u64) -> Mark {
        let mut s = self.state.lock().unwrap();
        let at = (s.count >= target).then(Instant::now);
        s.marks.push((target, at));
        Mark {
            state: self.state.clone(),
            index: s.marks.len() - 1,
            target,
        }
    }

    /// Waits until `mark` is reached or `deadline` passes; the moment, or the count reached.
    pub async fn wait(&self, mark: &Mark, deadline: Instant) -> Result<Instant, u64> {
        let mut changed = self.changed.clone();
        loop {
            if let Some(at) = mark.at() {
                return Ok(at);
            }
            if !self.alive() || Instant::now() >= deadline {
                return Err(self.count());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let _ = tokio::time::timeout(left.min(Duration::from_secs(1)), changed.changed()).await;
        }
    }

    /// `smtp-source -d -s 10 -l 5000 -m N` into this sink: N messages of 5,000 bytes over 10
    /// sessions that each stay connected. Returns the messages per second, from the start of
    /// smtp-source to the sink's count showing all N, and the seconds that took.
    pub async fn ceiling(
        &self,
        postfix: &Postfix,
        messages: u64,
        deadline: Instant,
    ) -> anyhow::Result<(f64, f64)> {
        let mark = self.mark(self.count() + messages);
        let started = Instant::now();
        let mut source = postfix
            .command("smtp-source")
            .args(["-d", "-s", "10", "-l", "5000", "-m", &messages.to_string()])
            .arg(format!("127.0.0.1:{}", self.port))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting smtp-source")?;
        let at = match self.wait(&mark, deadline).await {
            Ok(at) => at,
            Err(reached) => {
                let _ = source.start_kill();
                bail!(
                    "did not finish in {:.0} s: the sink had {} of {messages} messages",
                    started.elapsed().as_secs_f64(),
                    reached.saturating_sub(mark.target - messages)
                );
            }
        };
        let out = tokio::time::timeout(Duration::from_secs(30), source.wait_with_output())
            .await
            .context("smtp-source did not exit")??;
        ensure!(
            out.status.success(),
            "smtp-source: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let secs = at.duration_since(started).as_secs_f64();
        Ok((messages as f64 / secs, secs))
    }
}

/// `mesg=N` out of one counter line of `smtp-sink -c`.
fn parse_mesg(line: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(line).ok()?;
    text.split_whitespace()
        .find_map(|f| f.strip_prefix("mesg="))
        .and_then(|n| n.parse().ok())
}

impl Sink {
    /// Its process id (None once it has exited).
    pub fn pid(&self) -> Option<u32> {
        self.child.lock().ok().and_then(|c| c.id())
    }

    /// Kills the sink (also done when it is dropped).
    pub fn kill(&self) {
        if let Ok(mut c) = self.child.lock() {
            let _ = c.start_kill();
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.kill();
    }
}

#[test]
fn counter_lines() {
    assert_eq!(parse_mesg(b"sess=2 quit=1 mesg=20000"), Some(20000));
    assert_eq!(parse_mesg(b"sess=0 quit=0"), None);
    assert_eq!(parse_mesg(b""), None);
}
