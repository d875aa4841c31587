//! The `rpec-notify` command line: parses the command and hands over to the library.

use clap::{Parser, Subcommand};
use rpec_notify::config::{Problem, Regions, Settings};
use rpec_notify::consume::Topology;
use rpec_notify::mail::Templates;
use rpec_notify::{admin, db, handle, publish, telemetry};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "rpec-notify",
    version,
    about = "Turns RPEC website events into email"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply pending migrations, then consume, schedule, send and serve HTTP until SIGTERM/SIGINT.
    Run,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Check the settings, regions.toml and every template; report every problem.
    Check,
    /// Publish event files (one event or a JSON array each), with publisher confirms.
    Publish {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Say of each event in each file (one event or a JSON array each, as `publish` reads them)
    /// whether the worker would take it, and if not the x-rpec-error code and detail its dead
    /// letter would carry. Publishes nothing. Exit codes: 0 every event is valid, 1 some are
    /// not, 2 a file cannot be read or the settings do not load.
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Print one JSON document instead of a line per event.
        #[arg(long)]
        json: bool,
    },
    /// Print the next weekly digest times of each region, in UK time.
    Schedule {
        /// Only this region (an id such as north-west).
        #[arg(long)]
        region: Option<String>,
        /// How many times to print per region.
        #[arg(long, default_value_t = 5)]
        count: usize,
    },
    /// Render an email from a template and a JSON context, without sending it.
    Preview {
        /// The email's name: a directory under templates/ (e.g. enquiry_ack).
        template: String,
        /// A JSON file with the context.
        #[arg(long)]
        data: PathBuf,
        /// Write subject.txt, body.txt and body.html here instead of printing them.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Look at the outbox and put failed emails back. Exit codes: 0 done, 1 an id was not a
    /// failed email, 2 usage or configuration, 3 PostgreSQL cannot be reached.
    Outbox {
        /// Print one JSON document instead of a table.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: OutboxCommand,
    },
    /// Look at, replay or delete the dead-letter queue (<queue>.dead-letter). Exit codes: 0 done,
    /// 1 an id was not found or a message was not taken back, 2 usage or configuration, 3
    /// RabbitMQ cannot be reached.
    #[command(name = "dead-letters")]
    DeadLetters {
        /// Print one JSON document instead of a table.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: DeadLetterCommand,
    },
    /// Enquiries and their claims. Exit codes: 0 done, 2 usage or configuration, 3 PostgreSQL
    /// cannot be reached.
    Enquiries {
        /// Print one JSON document instead of a table.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: EnquiriesCommand,
    },
}

#[derive(Subcommand)]
enum EnquiriesCommand {
    /// Enquiries nobody has claimed yet: reference, topic, region, age in working hours and
    /// deadline (UK time), oldest deadline first. No names, addresses or text.
    Open {
        /// Only this region (an id such as north-west).
        #[arg(long)]
        region: Option<String>,
    },
}

#[derive(Subcommand)]
enum OutboxCommand {
    /// Counts by status and kind, and the age of the oldest email waiting to be sent.
    Status,
    /// Emails of one status, oldest first: id, kind, attempts, age and why they failed (a code).
    List {
        #[arg(long, default_value = "failed", value_parser = admin::outbox::STATUSES)]
        status: String,
        /// Only this kind (enquiry, enquiry_ack, registration_confirmation, ...).
        #[arg(long)]
        kind: Option<String>,
        /// At most this many rows.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Put failed emails back to be sent now, with a fresh attempt count.
    Retry {
        /// Outbox ids (from `outbox list`).
        #[arg(required_unless_present = "all_failed", conflicts_with = "all_failed")]
        ids: Vec<i64>,
        /// Every failed email.
        #[arg(long)]
        all_failed: bool,
    },
}

#[derive(Subcommand)]
enum DeadLetterCommand {
    /// Every dead letter: id, type, error code and age. Nothing is taken off the queue.
    List,
    /// Publish dead letters again to the events exchange, then take them off the queue.
    Replay {
        /// Dead-letter ids (from `dead-letters list`).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<String>,
        /// Every dead letter.
        #[arg(long)]
        all: bool,
    },
    /// Delete every dead letter, or with --email only those about one person (erasure).
    Purge {
        /// Only the dead letters whose event carries this address (`data.email`).
        #[arg(long, value_name = "ADDR")]
        email: Option<String>,
    },
}

fn settings() -> Result<Settings, ExitCode> {
    Settings::load().map_err(|problems| {
        eprintln!("{}", rpec_notify::config::Problems(problems));
        ExitCode::from(2)
    })
}

fn fail(e: anyhow::Error) -> ExitCode {
    eprintln!("error: {e:#}");
    ExitCode::FAILURE
}

#[tokio::main]
async fn main() -> ExitCode {
    telemetry::init();
    telemetry::log_panics_without_payload();
    // Fault points from FAILPOINTS (fault tests only; compiled out of a normal build).
    #[cfg(feature = "failpoints")]
    let _faults = fail::FailScenario::setup();
    let cli = Cli::parse();
    match cli.command {
        Command::Run => {
            let settings = match settings() {
                Ok(s) => s,
                Err(code) => return code,
            };
            let listeners = match rpec_notify::worker::Listeners::bind(&settings).await {
                Ok(l) => l,
                Err(e) => return fail(e),
            };
            match rpec_notify::run(settings, listeners, shutdown_signal()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }
        Command::Migrate => {
            let settings = match settings() {
                Ok(s) => s,
                Err(code) => return code,
            };
            let result = async {
                let pool = db::connect(&settings).await?;
                db::migrate(&pool).await
            };
            match result.await {
                Ok(()) => {
                    println!("migrations applied");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Command::Check => check(),
        Command::Publish { files } => {
            let settings = match settings() {
                Ok(s) => s,
                Err(code) => return code,
            };
            use secrecy::ExposeSecret;
            match publish::publish(
                settings.amqp_url.expose_secret(),
                &rpec_notify::consume::Topology::from_settings(&settings),
                &files,
            )
            .await
            {
                Ok(n) => {
                    println!("published {n} event(s) to {}", settings.exchange);
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Command::Validate { files, json } => validate(&files, json),
        Command::Preview {
            template,
            data,
            out,
        } => preview(&template, &data, out.as_deref()),
        Command::Schedule { region, count } => schedule(region.as_deref(), count),
        Command::Outbox { json, command } => outbox(command, json).await,
        Command::DeadLetters { json, command } => dead_letters(command, json).await,
        Command::Enquiries { json, command } => enquiries(command, json).await,
    }
}

/// Prints a report (or why there is none) and gives its exit code.
fn admin_exit(result: Result<admin::Report, admin::AdminError>, json: bool) -> ExitCode {
    match result {
        Ok(report) => {
            if json {
                println!("{}", report.json);
            } else {
                print!("{}", report.text);
            }
            ExitCode::from(report.exit_code())
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

async fn outbox(command: OutboxCommand, json: bool) -> ExitCode {
    let settings = match settings() {
        Ok(s) => s,
        Err(code) => return code,
    };
    let result = async {
        let pool = admin::connect_database(&settings).await?;
        let report = match command {
            OutboxCommand::Status => admin::outbox::status(&pool).await,
            OutboxCommand::List {
                status,
                kind,
                limit,
            } => {
                let filter = admin::outbox::ListFilter {
                    status,
                    kind,
                    limit: limit.into(),
                };
                admin::outbox::list(&pool, &filter).await
            }
            OutboxCommand::Retry { ids, all_failed } => {
                let selection = if all_failed {
                    admin::outbox::RetrySelection::AllFailed
                } else {
                    admin::outbox::RetrySelection::Ids(ids)
                };
                admin::outbox::retry(&pool, &selection).await
            }
        };
        pool.close().await;
        report
    };
    admin_exit(result.await, json)
}

async fn enquiries(command: EnquiriesCommand, json: bool) -> ExitCode {
    let settings = match settings() {
        Ok(s) => s,
        Err(code) => return code,
    };
    let EnquiriesCommand::Open { region } = command;
    let result = async {
        let region = match region
            .as_deref()
            .map(str::parse::<rpec_notify::domain::RegionId>)
        {
            None => None,
            Some(Ok(r)) => Some(r),
            Some(Err(e)) => return Err(admin::AdminError::Config(format!("--region: {e}"))),
        };
        let regions = Regions::load(&settings.regions_path())
            .map_err(|p| admin::AdminError::Config(rpec_notify::config::Problems(p).to_string()))?;
        let pool = admin::connect_database(&settings).await?;
        let report = admin::enquiries::open(&pool, &regions, region, chrono::Utc::now()).await;
        pool.close().await;
        report
    };
    admin_exit(result.await, json)
}

async fn dead_letters(command: DeadLetterCommand, json: bool) -> ExitCode {
    let settings = match settings() {
        Ok(s) => s,
        Err(code) => return code,
    };
    use secrecy::ExposeSecret;
    let url = settings.amqp_url.expose_secret();
    let topology = Topology::from_settings(&settings);
    let result = match command {
        DeadLetterCommand::List => admin::dead_letters::list(url, &topology).await,
        DeadLetterCommand::Replay { ids, all } => {
            let selection = if all {
                admin::dead_letters::ReplaySelection::All
            } else {
                admin::dead_letters::ReplaySelection::Ids(ids)
            };
            admin::dead_letters::replay(url, &topology, &selection).await
        }
        DeadLetterCommand::Purge { email: None } => {
            admin::dead_letters::purge(url, &topology).await
        }
        DeadLetterCommand::Purge {
            email: Some(address),
        } => admin::dead_letters::purge_about(url, &topology, &address).await,
    };
    admin_exit(result, json)
}

fn validate(files: &[PathBuf], json: bool) -> ExitCode {
    // The settings give the body limit the worker would apply (`[amqp] max_body_bytes`).
    let settings = match settings() {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mut verdicts = Vec::new();
    for file in files {
        match rpec_notify::validate::judge_file(file, settings.max_body_bytes) {
            Ok(v) => verdicts.extend(v),
            Err(e) => {
                eprintln!("error: {}: cannot be read: {e}", file.display());
                return ExitCode::from(admin::EXIT_USAGE);
            }
        }
    }
    admin_exit(Ok(rpec_notify::validate::report(&verdicts)), json)
}

fn check() -> ExitCode {
    let mut problems: Vec<Problem> = Vec::new();
    let env_or = |k: &str, d: &str| {
        std::env::var(k)
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| d.into())
    };
    let (config_dir, templates_dir, public_url) = match Settings::load() {
        Ok(s) => (
            s.config_dir.clone(),
            s.templates_dir.clone(),
            s.public_url.clone(),
        ),
        Err(p) => {
            problems.extend(p);
            (
                PathBuf::from(env_or("RPEC_CONFIG_DIR", "config")),
                PathBuf::from(env_or("RPEC_TEMPLATES_DIR", "templates")),
                "http://127.0.0.1:8080".to_string(),
            )
        }
    };
    let regions = Regions::load(&config_dir.join("regions.toml"))
        .map_err(|p| problems.extend(p))
        .ok();
    let templates = Templates::load(&templates_dir, &public_url)
        .map_err(|p| problems.extend(p))
        .ok();
    if let Some(t) = &templates {
        problems.extend(t.check_samples(&templates_dir, &handle::samples()));
        problems.extend(t.check_pages(&templates_dir, &rpec_notify::http::page_samples()));
    }
    if let Some(warning) = regions
        .as_ref()
        .and_then(|r| r.bank_holidays_warning(chrono::Utc::now().date_naive()))
    {
        eprintln!("warning: {warning}");
    }
    if problems.is_empty() {
        let n = regions.map_or(0, |r| r.iter().count());
        println!("configuration OK: {n} regions, every email template and page renders");
        ExitCode::SUCCESS
    } else {
        eprint!("{}", rpec_notify::config::Problems(problems));
        ExitCode::FAILURE
    }
}

fn preview(template: &str, data: &std::path::Path, out: Option<&std::path::Path>) -> ExitCode {
    let result = (|| -> anyhow::Result<()> {
        let (templates_dir, public_url) = match Settings::load() {
            Ok(s) => (s.templates_dir, s.public_url),
            Err(_) => (PathBuf::from("templates"), "http://127.0.0.1:8080".into()),
        };
        let templates =
            Templates::load(&templates_dir, &public_url).map_err(rpec_notify::config::Problems)?;
        let context: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(data)?)?;
        let r = templates
            .render(template, &context)
            .map_err(anyhow::Error::msg)?;
        match out {
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                std::fs::write(dir.join("subject.txt"), &r.subject)?;
                std::fs::write(dir.join("body.txt"), &r.text)?;
                std::fs::write(dir.join("body.html"), &r.html)?;
                println!(
                    "wrote subject.txt, body.txt and body.html to {}",
                    dir.display()
                );
            }
            None => println!(
                "Subject: {}\n\n----- text -----\n{}\n----- html -----\n{}",
                r.subject, r.text, r.html
            ),
        }
        Ok(())
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

fn schedule(only: Option<&str>, count: usize) -> ExitCode {
    let dir = std::env::var("RPEC_CONFIG_DIR")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "config".into());
    let regions = match Regions::load(&PathBuf::from(dir).join("regions.toml")) {
        Ok(r) => r,
        Err(p) => {
            eprint!("{}", rpec_notify::config::Problems(p));
            return ExitCode::FAILURE;
        }
    };
    if let Some(id) = only {
        if let Err(e) = id.parse::<rpec_notify::domain::RegionId>() {
            eprintln!("error: --region {id}: {e}");
            return ExitCode::from(2);
        }
    }
    let now = chrono::Utc::now();
    for (id, region) in regions
        .iter()
        .filter(|(id, _)| only.is_none_or(|o| o == id.as_str()))
    {
        let Some((expr, schedule)) = &region.digest_schedule else {
            continue;
        };
        println!("{id} ({}): \"{expr}\"", region.name);
        let mut t = now;
        for _ in 0..count {
            let Some(next) = rpec_notify::schedule::plan::next_fire(schedule, t) else {
                println!("  (no further times)");
                break;
            };
            let local = next.with_timezone(&chrono_tz::Europe::London);
            println!(
                "  {}, {} {}",
                rpec_notify::uk_time::date(next),
                rpec_notify::uk_time::clock(next),
                local.format("%Z")
            );
            t = next;
        }
    }
    ExitCode::SUCCESS
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
