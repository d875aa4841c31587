//! The real `rpec-notify` binary as a child process, as `make run` runs it, against a test's own
//! database, broker names and mail relay: for tests that kill it for real or use its CLI.

use crate::cli::binary;
use crate::helpers::*;
use serde_json::Value;
use sqlx::{Connection, PgConnection, PgPool};
use std::process::{ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Everything one deployment of the binary uses; the worker itself is started with [`start`].
///
/// [`start`]: Deployment::start
pub struct Deployment {
    pub db_name: String,
    pub http_port: u16,
    /// Where its `/metrics`, `/readyz` and `/healthz` are.
    pub admin_port: u16,
    envs: Vec<(String, String)>,
    /// Variables taken out of the environment the binary inherits.
    unset: Vec<String>,
    /// Kept so the directory outlives the workers that read it.
    _config_dir: Option<tempfile::TempDir>,
}

/// A running worker process.
pub struct Worker {
    child: tokio::process::Child,
    log: tokio::task::JoinHandle<String>,
}

impl Deployment {
    /// A fresh database and broker names; mail goes to `relay_url`; `profile_toml`, when given,
    /// is laid over the shipped settings as the dev profile.
    pub async fn new(relay_url: &str, profile_toml: Option<&str>) -> Deployment {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let db_name = format!("rpec_test_{id}");
        let mut admin = PgConnection::connect(&database_admin_url()).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE \"{db_name}\""))
            .execute(&mut admin)
            .await
            .unwrap();
        let _ = admin.close().await;
        let free_port = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let (http_port, admin_port) = (free_port(), free_port());
        let mut envs = vec![
            ("DATABASE_URL".to_string(), database_url_for(&db_name)),
            ("RPEC_AMQP_URL".into(), amqp_url()),
            ("RPEC_SMTP_URL".into(), relay_url.to_owned()),
            ("RPEC_EXCHANGE".into(), format!("rpec.events.{id}")),
            ("RPEC_QUEUE".into(), format!("rpec-notify.events.{id}")),
            ("RPEC_HTTP_ADDR".into(), format!("127.0.0.1:{http_port}")),
            ("RPEC_ADMIN_ADDR".into(), format!("127.0.0.1:{admin_port}")),
            (
                "RPEC_PUBLIC_URL".into(),
                format!("http://127.0.0.1:{http_port}"),
            ),
            ("RPEC_TOKEN_SECRET".into(), TEST_TOKEN_SECRET.into()),
            ("RUST_LOG".into(), "info".into()),
        ];
        let config_dir = profile_toml.map(|toml| {
            let dir = tempfile::tempdir().unwrap();
            for f in ["rpec.toml", "regions.toml", "bank-holidays.toml"] {
                std::fs::copy(manifest_dir().join("config").join(f), dir.path().join(f)).unwrap();
            }
            std::fs::write(dir.path().join("dev.toml"), toml).unwrap();
            envs.push(("RPEC_CONFIG_DIR".into(), dir.path().display().to_string()));
            dir
        });
        Deployment {
            db_name,
            http_port,
            admin_port,
            envs,
            unset: Vec::new(),
            _config_dir: config_dir,
        }
    }

    /// Sets (or replaces) one environment variable for what is started from now on.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.unset.retain(|k| k != key);
        self.envs.retain(|(k, _)| k != key);
        self.envs.push((key.to_owned(), value.to_owned()));
    }

    /// Leaves one environment variable out of what is started from now on.
    pub fn unset_env(&mut self, key: &str) {
        self.envs.retain(|(k, _)| k != key);
        self.unset.push(key.to_owned());
    }

    /// One of the deployment's environment variables (its queue name, ...).
    pub fn env(&self, key: &str) -> String {
        self.envs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{key} is not set"))
    }

    /// `rpec-notify run` as [`start`](Deployment::start) runs it, for a worker that should
    /// refuse to start: waits for it to exit (at most `within`) and returns what it printed.
    pub async fn run_to_exit(&self, within: Duration) -> Output {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_rpec-notify"));
        command
            .arg("run")
            .current_dir(manifest_dir())
            .env_remove("RPEC_PROFILE");
        for k in &self.unset {
            command.env_remove(k);
        }
        let child = command
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        tokio::time::timeout(within, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("the worker did not exit within {within:?}"))
            .unwrap()
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// The admin listener: `/metrics`, `/readyz`, `/healthz`.
    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    /// Starts `rpec-notify run` and waits until it answers /healthz (migrations applied).
    pub async fn start(&self) -> Worker {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_rpec-notify"));
        for k in &self.unset {
            command.env_remove(k);
        }
        let mut child = command
            .arg("run")
            .current_dir(manifest_dir())
            .env_remove("RPEC_PROFILE")
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let log = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s).await;
            s
        });
        let url = format!("{}/healthz", self.admin_url());
        eventually(
            Duration::from_secs(30),
            "the worker to answer /healthz",
            || async { reqwest::get(&url).await.ok().filter(|r| r.status() == 200) },
        )
        .await;
        Worker { child, log }
    }

    /// Runs another command of the binary (`publish`, ...) with this deployment's settings.
    pub fn command(&self, args: &[&str]) -> Output {
        self.command_builder(args).output().unwrap()
    }

    /// The command, not yet run (to run it off the test's runtime, or with more settings).
    pub fn command_builder(&self, args: &[&str]) -> std::process::Command {
        let mut command = binary();
        for k in &self.unset {
            command.env_remove(k);
        }
        command
            .args(args)
            .current_dir(manifest_dir())
            .envs(self.envs.iter().map(|(k, v)| (k, v)));
        command
    }

    /// Publishes event files with `rpec-notify publish`.
    pub fn publish(&self, files: &[&std::path::Path]) {
        let mut args = vec!["publish"];
        let paths: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        args.extend(paths.iter().map(String::as_str));
        let out = self.command(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub async fn pool(&self) -> PgPool {
        PgPool::connect(&database_url_for(&self.db_name))
            .await
            .unwrap()
    }

    /// Drops the database and the broker objects.
    pub async fn remove(self) {
        remove_test_resources(&self.db_name).await;
    }
}

impl Worker {
    fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("the worker is running").to_string();
        assert!(std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap()
            .success());
    }

    /// `kill -9`: no drain, no cleanup, as a crash or an OOM kill would stop it.
    pub async fn kill_9(mut self) -> String {
        self.signal("-KILL");
        let _ = self.child.wait().await;
        self.log.await.unwrap_or_default()
    }

    /// Waits for the worker to exit by itself (a fault point that aborts it, a fatal error).
    #[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
    pub async fn exited(mut self, within: Duration) -> (ExitStatus, String) {
        let status = tokio::time::timeout(within, self.child.wait())
            .await
            .expect("the worker exits by itself")
            .unwrap();
        (status, self.log.await.unwrap_or_default())
    }

    /// SIGTERM, then waits for the exit; returns the status and the log.
    pub async fn stop(self) -> (ExitStatus, String) {
        let (status, _, log) = self.stop_with("-TERM").await;
        (status, log)
    }

    /// Sends `signal` (`-TERM`, `-INT`), then waits for the exit; returns the status, how long
    /// the exit took and the log.
    pub async fn stop_with(mut self, signal: &str) -> (ExitStatus, Duration, String) {
        let started = Instant::now();
        self.signal(signal);
        let status = tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("the worker exits within 15 s after {signal}"))
            .unwrap();
        let took = started.elapsed();
        (status, took, self.log.await.unwrap_or_default())
    }
}

/// The real `rpec-notify run` binary as `make run` starts it (see [`Deployment`]): its own
/// database and queue, mail written as `.eml` files by the file relay, logs captured.
pub struct RealWorker {
    pub deployment: Deployment,
    pub mail_dir: tempfile::TempDir,
    worker: Worker,
}

impl RealWorker {
    pub async fn start() -> RealWorker {
        Self::start_with(&[]).await
    }

    /// Starts it with extra environment variables.
    pub async fn start_with(extra_env: &[(&str, &str)]) -> RealWorker {
        let mail_dir = tempfile::tempdir().unwrap();
        let mut deployment =
            Deployment::new(&format!("file://{}", mail_dir.path().display()), None).await;
        for (k, v) in extra_env {
            deployment.set_env(k, v);
        }
        let worker = deployment.start().await;
        RealWorker {
            deployment,
            mail_dir,
            worker,
        }
    }

    /// `rpec-notify publish FILE`, as an operator would run it; returns what it printed.
    pub fn publish_file(&self, path: &std::path::Path) -> String {
        let out = self
            .deployment
            .command(&["publish", &path.display().to_string()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes `events` to a file and publishes it.
    pub fn publish_events(&self, events: &[Value]) -> String {
        let file = self
            .mail_dir
            .path()
            .join(format!("events-{}.json", Uuid::new_v4().simple()));
        std::fs::write(&file, serde_json::to_vec(events).unwrap()).unwrap();
        let out = self.publish_file(&file);
        let _ = std::fs::remove_file(file);
        out
    }

    /// The `.eml` files written so far (a file still being written is left for the next look).
    pub fn mails(&self) -> Vec<Mail> {
        self.eml_files().into_iter().map(|(_, m)| m).collect()
    }

    /// Each complete `.eml` file, sorted by name, with its path.
    fn eml_files(&self) -> Vec<(std::path::PathBuf, Mail)> {
        let mut files: Vec<_> = std::fs::read_dir(self.mail_dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .collect();
        files.sort();
        files
            .into_iter()
            .filter_map(|f| {
                let raw = std::fs::read(&f).ok()?;
                // The file relay creates the file, then writes it: an empty or cut-off file is
                // one it has not finished.
                let complete = mail_parser::MessageParser::default()
                    .parse(&raw)
                    .is_some_and(|m| m.body_text(0).is_some() && m.body_html(0).is_some());
                complete.then_some((
                    f,
                    Mail {
                        envelope_from: String::new(),
                        envelope_to: vec![],
                        raw,
                    },
                ))
            })
            .collect()
    }

    /// Waits until `n` emails whose subject starts with `prefix` have been written.
    pub async fn wait_for(&self, prefix: &str, n: usize, timeout: Duration) -> Vec<Mail> {
        eventually(
            timeout,
            &format!("{n} .eml file(s) '{prefix}...'"),
            || async {
                let m: Vec<Mail> = self
                    .mails()
                    .into_iter()
                    .filter(|m| m.subject().starts_with(prefix))
                    .collect();
                (m.len() >= n).then_some(m)
            },
        )
        .await
    }

    /// When the relay accepted each email whose subject starts with `prefix`: the file relay
    /// writes one file per email, so its modification time is the moment of acceptance.
    pub fn accepted_at(&self, prefix: &str) -> Vec<std::time::SystemTime> {
        self.eml_files()
            .into_iter()
            .filter(|(_, m)| m.subject().starts_with(prefix))
            .map(|(path, _)| std::fs::metadata(&path).unwrap().modified().unwrap())
            .collect()
    }

    /// Lets the worker complete two more scheduler rounds, then two more sender rounds (see
    /// [`TestApp::settle`]).
    pub async fn settle(&self) {
        settle_workers(&[self.deployment.admin_url()]).await;
    }

    /// SIGTERM; returns the exit status, how long it took, and the log.
    pub async fn terminate(self) -> (std::process::ExitStatus, Duration, String) {
        let started = Instant::now();
        let (status, log) = self.worker.stop().await;
        let took = started.elapsed();
        self.deployment.remove().await;
        (status, took, log)
    }
}
