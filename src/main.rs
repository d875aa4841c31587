//! The `rpec-notify` command line: parses the command and hands over to the library. Every
//! command follows one exit-code table (`cli::exit`).

mod cli;

use clap::{CommandFactory, Parser, Subcommand};
use cli::exit::{self, fail};
use cli::help;
use rpec_notify::config::{Problem, Regions, Settings};
use rpec_notify::consume::Topology;
use rpec_notify::mail::Templates;
use rpec_notify::{admin, db, handle, publish, telemetry};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "rpec-notify",
    version,
    about = "Turns RPEC website events into email",
    after_help = exit::TABLE
)]
struct Cli {
    /// Where rpec.toml, the profile file, regions.toml and the rest live (as RPEC_CONFIG_DIR,
    /// which it overrides; default ./config).
    #[arg(long, global = true, value_name = "DIR")]
    config_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply pending migrations, then consume, schedule, send and serve HTTP until SIGTERM/SIGINT.
    #[command(after_help = help::RUN, after_long_help = help::with_table(help::RUN))]
    Run,
    /// Apply pending database migrations and exit.
    #[command(after_help = help::MIGRATE, after_long_help = help::with_table(help::MIGRATE))]
    Migrate,
    /// Check the settings, regions.toml and every template; report every problem.
    #[command(after_help = help::CHECK, after_long_help = help::with_table(help::CHECK))]
    Check,
    /// Publish event files (one event or a JSON array each), with publisher confirms.
    #[command(after_help = help::PUBLISH, after_long_help = help::with_table(help::PUBLISH))]
    Publish {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Say of each event in each file (one event or a JSON array each, as `publish` reads them)
    /// whether the worker would take it, and if not the x-rpec-error code and detail its dead
    /// letter would carry. Publishes nothing. Exits 0 when every event is valid, 1 when some
    /// are not, 2 when a file cannot be read or the settings do not load.
    #[command(after_help = help::VALIDATE, after_long_help = help::with_table(help::VALIDATE))]
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Print one JSON document instead of a line per event.
        #[arg(long)]
        json: bool,
    },
    /// Write example events dated from now: a session in the north-west whose registrant's
    /// reminder and coordinators' briefing are due within minutes, its registration (a
    /// confirmation at once), a contact enquiry, a newsletter subscription and a newsletter.
    #[command(after_help = help::EXAMPLE, after_long_help = help::with_table(help::EXAMPLE))]
    Example {
        /// Events dated relative to now (the only kind of example set).
        #[arg(long, required = true)]
        future: bool,
        /// Where to write the files (1-session-scheduled.json, ...).
        #[arg(long, default_value = "var/example")]
        out: PathBuf,
        /// Minutes from now until the briefing and the first reminder are due: publish the set
        /// before then (an offset already past when the registration arrives is skipped).
        #[arg(long, default_value_t = 3, value_name = "MINUTES",
              value_parser = clap::value_parser!(u32).range(1..=1440))]
        lead: u32,
    },
    /// Print the next weekly digest times of each region, in UK time.
    #[command(after_help = help::SCHEDULE, after_long_help = help::with_table(help::SCHEDULE))]
    Schedule {
        /// Only this region (an id such as north-west).
        #[arg(long)]
        region: Option<String>,
        /// How many times to print per region.
        #[arg(long, default_value_t = 5)]
        count: usize,
    },
    /// Render an email's subject, text and HTML without sending it: from one of the sample
    /// contexts that `check` renders (the first, unless --sample says which), or from a JSON
    /// context file.
    #[command(after_help = help::PREVIEW, after_long_help = help::with_table(help::PREVIEW))]
    Preview {
        /// The email's name: a directory under templates/ (e.g. enquiry_ack).
        template: String,
        /// Which of the email's sample contexts, from 1 (an unknown one lists how many there are).
        #[arg(long, value_name = "N", conflicts_with = "data")]
        sample: Option<usize>,
        /// A JSON file with the context, instead of a sample.
        #[arg(long, value_name = "FILE")]
        data: Option<PathBuf>,
        /// Write subject.txt, body.txt and body.html here instead of printing them.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Open the HTML with xdg-open (skipped, with a message, where there is none).
        #[arg(long)]
        open: bool,
    },
    /// Send one sample email (as `preview` renders it) to one address through the configured
    /// relay (RPEC_SMTP_URL), from the transactional From address, DKIM-signed if it has a key.
    /// Exits 0 sent, 1 the relay refused it, 2 usage or configuration, 3 the relay cannot be
    /// reached.
    #[command(
        name = "send-test",
        after_help = help::SEND_TEST,
        after_long_help = help::with_table(help::SEND_TEST)
    )]
    SendTest {
        /// The email's name: a directory under templates/ (e.g. enquiry_ack).
        template: String,
        /// Which of the email's sample contexts, from 1.
        #[arg(long, value_name = "N", default_value_t = 1)]
        sample: usize,
        /// The one address to send it to.
        #[arg(long, value_name = "ADDR")]
        to: String,
    },
    /// Print a shell completion script for bash, zsh or fish.
    #[command(after_help = help::COMPLETIONS, after_long_help = help::with_table(help::COMPLETIONS))]
    Completions { shell: CompletionShell },
    /// Look at the outbox and put failed emails back.
    #[command(after_help = help::OUTBOX, after_long_help = help::with_table(help::OUTBOX))]
    Outbox {
        /// Print one JSON document instead of a table.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: OutboxCommand,
    },
    /// Look at, replay or delete the dead-letter queue (<queue>.dead-letter).
    #[command(
        name = "dead-letters",
        after_help = help::DEAD_LETTERS,
        after_long_help = help::with_table(help::DEAD_LETTERS)
    )]
    DeadLetters {
        /// Print one JSON document instead of a table.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: DeadLetterCommand,
    },
    /// The effective settings.
    #[command(after_help = help::CONFIG, after_long_help = help::with_table(help::CONFIG))]
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Bounces and complaints that came back after the relay took an email.
    #[command(after_help = help::BOUNCES, after_long_help = help::with_table(help::BOUNCES))]
    Bounces {
        #[command(subcommand)]
        command: BouncesCommand,
    },
    /// Enquiries and their claims.
    #[command(after_help = help::ENQUIRIES, after_long_help = help::with_table(help::ENQUIRIES))]
    Enquiries {
        /// Print one JSON document instead of a table.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: EnquiriesCommand,
    },
    /// The addresses bulk mail must not go to, and lifting a suppression. Prints addresses:
    /// the one operator command that does, since an address is what a suppression is.
    #[command(after_help = help::SUPPRESSIONS, after_long_help = help::with_table(help::SUPPRESSIONS))]
    Suppressions {
        /// Print one JSON document instead of a table.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: SuppressionsCommand,
    },
}

#[derive(Subcommand)]
enum SuppressionsCommand {
    /// Suppressed addresses, newest first: address, reason and since when (UK time). Prints the
    /// addresses themselves: for an operator looking up who is suppressed.
    #[command(after_help = help::SUPPRESSIONS_LIST, after_long_help = help::with_table(help::SUPPRESSIONS_LIST))]
    List {
        /// At most this many rows.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Only this address (any case).
        #[arg(long, value_name = "ADDR")]
        address: Option<String>,
    },
    /// Lift suppressions (any case), so that newsletters and digests may go to the addresses
    /// again. Exits 1 when an address was not suppressed; the others are still removed.
    #[command(after_help = help::SUPPRESSIONS_REMOVE, after_long_help = help::with_table(help::SUPPRESSIONS_REMOVE))]
    Remove {
        /// The addresses.
        #[arg(required = true, value_name = "ADDR")]
        addresses: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Every key with its effective value and where it came from (default, a file or an
    /// environment variable); secrets are shown as (hidden).
    #[command(after_help = help::CONFIG_SHOW, after_long_help = help::with_table(help::CONFIG_SHOW))]
    Show {
        /// Print one JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum BouncesCommand {
    /// Read bounces (delivery status notifications, feedback reports) from files, one message
    /// or an mbox each, or one message on standard input, with the same effects as the bounce
    /// listener: a hard bounce suppresses the address and fails the email, a complaint
    /// unsubscribes, soft bounces are counted, auto-replies ignored, the rest kept for an
    /// operator.
    #[command(after_help = help::BOUNCES, after_long_help = help::with_table(help::BOUNCES))]
    Ingest {
        files: Vec<PathBuf>,
        /// The address the message was delivered to (an MTA's envelope recipient, such as
        /// Postfix's ${original_recipient}); may be repeated. Without it the message's own
        /// headers say.
        #[arg(long, value_name = "ADDR")]
        to: Vec<String>,
        /// Print one JSON document instead of a line per message.
        #[arg(long)]
        json: bool,
    },
    /// The mail at the bounce address nobody could understand, kept for an operator: the list
    /// (ids, times, sizes), or one message whole with its ID (which can quote anyone: for the
    /// operator's terminal). Exits 1 for an ID that is not there.
    #[command(after_help = help::BOUNCES_UNPARSED, after_long_help = help::with_table(help::BOUNCES_UNPARSED))]
    Unparsed {
        id: Option<i64>,
        /// At most this many in the list, newest first.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Print one JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum EnquiriesCommand {
    /// Enquiries nobody has claimed yet: reference, topic, region, age in working hours and
    /// deadline (UK time), oldest deadline first. No names, addresses or text.
    #[command(after_help = help::ENQUIRIES_OPEN, after_long_help = help::with_table(help::ENQUIRIES_OPEN))]
    Open {
        /// Only this region (an id such as north-west).
        #[arg(long)]
        region: Option<String>,
    },
}

#[derive(Subcommand)]
enum OutboxCommand {
    /// Counts by status and kind, and the age of the oldest email waiting to be sent.
    #[command(after_help = help::OUTBOX_STATUS, after_long_help = help::with_table(help::OUTBOX_STATUS))]
    Status,
    /// Emails of one status, oldest first: id, kind, attempts, age and why they failed (a code).
    #[command(after_help = help::OUTBOX_LIST, after_long_help = help::with_table(help::OUTBOX_LIST))]
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
    /// One email: kind, stream, status, attempts, times (UTC and UK), why it failed (a code),
    /// how many recipients (never who), its return path, its triage copy and its bounces (kind,
    /// status code and time; never the recipient or the remote server's words). Exits 1 when
    /// the id is no email.
    #[command(after_help = help::OUTBOX_SHOW, after_long_help = help::with_table(help::OUTBOX_SHOW))]
    Show {
        /// An outbox id (from `outbox list`).
        id: i64,
    },
    /// Put failed emails back to be sent now, with a fresh attempt count.
    #[command(after_help = help::OUTBOX_RETRY, after_long_help = help::with_table(help::OUTBOX_RETRY))]
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
    #[command(after_help = help::DEAD_LETTERS_LIST, after_long_help = help::with_table(help::DEAD_LETTERS_LIST))]
    List,
    /// Publish dead letters again to the events exchange, then take them off the queue.
    #[command(after_help = help::DEAD_LETTERS_REPLAY, after_long_help = help::with_table(help::DEAD_LETTERS_REPLAY))]
    Replay {
        /// Dead-letter ids (from `dead-letters list`).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<String>,
        /// Every dead letter.
        #[arg(long)]
        all: bool,
    },
    /// Delete every dead letter, or with --email only those about one person (erasure).
    #[command(after_help = help::DEAD_LETTERS_PURGE, after_long_help = help::with_table(help::DEAD_LETTERS_PURGE))]
    Purge {
        /// Only the dead letters whose event carries this address (`data.email`).
        #[arg(long, value_name = "ADDR")]
        email: Option<String>,
    },
}

/// The shells `completions` writes for.
#[derive(Clone, Copy, clap::ValueEnum)]
enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

fn settings() -> Result<Settings, ExitCode> {
    Settings::load().map_err(|problems| {
        eprintln!("{}", rpec_notify::config::Problems(problems));
        ExitCode::from(exit::EXIT_USAGE)
    })
}

/// The settings, with a `DATABASE_URL` that is at least a PostgreSQL URL (exit 2 otherwise):
/// for the commands that connect to it.
fn settings_with_database() -> Result<Settings, ExitCode> {
    use secrecy::ExposeSecret;
    let settings = settings()?;
    let url = settings.database_url.expose_secret();
    if url.is_empty() {
        return Err(exit::usage("DATABASE_URL is required (a postgres:// URL)"));
    }
    if <sqlx::postgres::PgConnectOptions as std::str::FromStr>::from_str(url).is_err() {
        return Err(exit::usage("DATABASE_URL is not a valid PostgreSQL URL"));
    }
    Ok(settings)
}

#[tokio::main]
async fn main() -> ExitCode {
    telemetry::init();
    telemetry::log_panics_without_payload();
    // Fault points from FAILPOINTS (fault tests only; compiled out of a normal build).
    #[cfg(feature = "failpoints")]
    let _faults = fail::FailScenario::setup();
    let cli = Cli::parse();
    if let Some(dir) = &cli.config_dir {
        // Before anything reads the settings; the runtime's threads have read nothing yet.
        std::env::set_var("RPEC_CONFIG_DIR", dir);
    }
    match cli.command {
        Command::Run => {
            let settings = match settings_with_database() {
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
                let pool = admin::connect_database(&settings).await?;
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
            // An unreadable file is the caller's to fix (2), found before the broker is asked.
            for file in &files {
                if let Err(e) = publish::read_events(file) {
                    return exit::usage(format!("{e:#}"));
                }
            }
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
            sample,
            data,
            out,
            open,
        } => preview(&template, sample, data.as_deref(), out.as_deref(), open),
        Command::Completions { shell } => completions(shell),
        Command::SendTest {
            template,
            sample,
            to,
        } => cli::send_test::send_test(&template, sample, &to).await,
        Command::Schedule { region, count } => schedule(region.as_deref(), count),
        Command::Example {
            future: _,
            out,
            lead,
        } => example(&out, lead),
        Command::Outbox { json, command } => outbox(command, json).await,
        Command::Bounces {
            command: BouncesCommand::Ingest { files, to, json },
        } => cli::bounces::ingest(files, to, json).await,
        Command::Bounces {
            command: BouncesCommand::Unparsed { id, limit, json },
        } => unparsed_bounces(id, limit, json).await,
        Command::DeadLetters { json, command } => dead_letters(command, json).await,
        Command::Enquiries { json, command } => enquiries(command, json).await,
        Command::Suppressions { json, command } => suppressions(command, json).await,
        Command::Config {
            command: ConfigCommand::Show { json },
        } => config_show(json),
    }
}

/// `config show`: 0 with the settings, 2 (with the problems) when they do not load.
fn config_show(json: bool) -> ExitCode {
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    let rows = match Settings::show_from(&env) {
        Ok(rows) => rows,
        Err(problems) => {
            eprintln!("{}", rpec_notify::config::Problems(problems));
            return ExitCode::from(exit::EXIT_USAGE);
        }
    };
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let written = if json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&rows).expect("rows serialize")
        )
    } else {
        let width = rows.iter().map(|r| r.key.len()).max().unwrap_or(0);
        let value_width = rows
            .iter()
            .map(|r| r.value.chars().count())
            .max()
            .unwrap_or(0)
            .min(60);
        rows.iter().try_for_each(|r| {
            writeln!(
                out,
                "{:width$}  {:value_width$}  ({})",
                r.key, r.value, r.source
            )
        })
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        // A reader that stopped early (| head): nothing more to say.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => fail(e.into()),
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
            OutboxCommand::Show { id } => {
                let paths = rpec_notify::tokens::ReturnPaths::from_settings(&settings);
                admin::outbox::show(&pool, id, paths.as_ref()).await
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

async fn suppressions(command: SuppressionsCommand, json: bool) -> ExitCode {
    let settings = match settings() {
        Ok(s) => s,
        Err(code) => return code,
    };
    let result = async {
        let pool = admin::connect_database(&settings).await?;
        let report = match command {
            SuppressionsCommand::List { limit, address } => {
                let filter = admin::suppressions::ListFilter {
                    address,
                    limit: limit.into(),
                };
                admin::suppressions::list(&pool, &filter).await
            }
            SuppressionsCommand::Remove { addresses } => {
                admin::suppressions::remove(&pool, &addresses).await
            }
        };
        pool.close().await;
        report
    };
    admin_exit(result.await, json)
}

async fn unparsed_bounces(id: Option<i64>, limit: u32, json: bool) -> ExitCode {
    let settings = match settings() {
        Ok(s) => s,
        Err(code) => return code,
    };
    let result = async {
        let pool = admin::connect_database(&settings).await?;
        let report = match id {
            Some(id) => admin::bounces::show(&pool, id).await,
            None => admin::bounces::list(&pool, limit.into()).await,
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
        // What `check` is asked to find: problems found (1), even in the settings.
        eprint!("{}", rpec_notify::config::Problems(problems));
        ExitCode::from(exit::EXIT_PROBLEMS)
    }
}

/// Renders one email. Every failure here is the caller's to fix (2): an unknown email or
/// sample, a context file that cannot be read or does not fit the template, an output
/// directory that cannot be written.
fn preview(
    template: &str,
    sample: Option<usize>,
    data: Option<&std::path::Path>,
    out: Option<&std::path::Path>,
    open: bool,
) -> ExitCode {
    let result = (|| -> anyhow::Result<()> {
        let (templates_dir, public_url) = match Settings::load() {
            Ok(s) => (s.templates_dir, s.public_url),
            Err(_) => (PathBuf::from("templates"), "http://127.0.0.1:8080".into()),
        };
        let templates =
            Templates::load(&templates_dir, &public_url).map_err(rpec_notify::config::Problems)?;
        let context: serde_json::Value = match data {
            Some(file) => {
                let text = std::fs::read_to_string(file)
                    .map_err(|e| anyhow::anyhow!("{}: cannot be read: {e}", file.display()))?;
                serde_json::from_str(&text)
                    .map_err(|e| anyhow::anyhow!("{}: not JSON: {e}", file.display()))?
            }
            None => sample_context(template, sample.unwrap_or(1))?,
        };
        let r = templates
            .render(template, &context)
            .map_err(anyhow::Error::msg)?;
        let html_file = match out {
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                std::fs::write(dir.join("subject.txt"), &r.subject)?;
                std::fs::write(dir.join("body.txt"), &r.text)?;
                std::fs::write(dir.join("body.html"), &r.html)?;
                println!(
                    "wrote subject.txt, body.txt and body.html to {}",
                    dir.display()
                );
                dir.join("body.html")
            }
            None => {
                // Not println!: a reader that stops early (`| head`) is not a failure.
                let _ = writeln!(
                    std::io::stdout(),
                    "Subject: {}\n\n----- text -----\n{}\n----- html -----\n{}",
                    r.subject,
                    r.text,
                    r.html
                );
                let file =
                    std::env::temp_dir().join(format!("rpec-notify-preview-{template}.html"));
                if open {
                    std::fs::write(&file, &r.html)?;
                }
                file
            }
        };
        if open {
            open_in_browser(&html_file);
        }
        Ok(())
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => exit::usage(format!("{e:#}")),
    }
}

/// The `n`th (from 1) of the sample contexts `check` renders `template` with.
fn sample_context(template: &str, n: usize) -> anyhow::Result<serde_json::Value> {
    let samples: Vec<serde_json::Value> = handle::samples()
        .into_iter()
        .filter(|(name, _)| *name == template)
        .map(|(_, context)| context)
        .collect();
    if samples.is_empty() {
        let mut names: Vec<&str> = handle::samples().iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        names.dedup();
        anyhow::bail!("{template:?}: no such email (emails: {})", names.join(", "));
    }
    let count = samples.len();
    samples
        .into_iter()
        .nth(n.wrapping_sub(1))
        .ok_or_else(|| anyhow::anyhow!("{template} has {count} sample(s): --sample 1 to {count}"))
}

/// Opens a file with xdg-open where there is one; says so and carries on where there is not.
fn open_in_browser(file: &std::path::Path) {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("xdg-open").is_file()));
    if !found {
        eprintln!(
            "xdg-open not found: not opened; the HTML is in {}",
            file.display()
        );
        return;
    }
    match std::process::Command::new("xdg-open").arg(file).status() {
        Ok(status) if status.success() => eprintln!("opened {}", file.display()),
        Ok(status) => eprintln!("xdg-open {}: {status}", file.display()),
        Err(e) => eprintln!("xdg-open {}: {e}", file.display()),
    }
}

/// Writes the completion script for `shell` to stdout.
fn completions(shell: CompletionShell) -> ExitCode {
    let shell = match shell {
        CompletionShell::Bash => clap_complete::Shell::Bash,
        CompletionShell::Zsh => clap_complete::Shell::Zsh,
        CompletionShell::Fish => clap_complete::Shell::Fish,
    };
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "rpec-notify", &mut script);
    // A reader that stops early (`| head`) is not a failure.
    let _ = std::io::stdout().write_all(&script);
    ExitCode::SUCCESS
}

/// `RPEC_CONFIG_DIR`, for the commands that need only `regions.toml` (not the whole settings).
fn config_dir() -> PathBuf {
    std::env::var("RPEC_CONFIG_DIR")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "config".into())
        .into()
}

fn example(out: &std::path::Path, lead: u32) -> ExitCode {
    let regions = match Regions::load(&config_dir().join("regions.toml")) {
        Ok(r) => r,
        Err(p) => {
            eprint!("{}", rpec_notify::config::Problems(p));
            return ExitCode::from(admin::EXIT_USAGE);
        }
    };
    let now = chrono::Utc::now();
    let set = rpec_notify::example::future(&regions, now, chrono::Duration::minutes(lead.into()));
    let written = (|| -> std::io::Result<()> {
        std::fs::create_dir_all(out)?;
        for (name, event) in &set.files {
            let mut text = serde_json::to_string_pretty(event).map_err(std::io::Error::other)?;
            text.push('\n');
            std::fs::write(out.join(name), text)?;
        }
        Ok(())
    })();
    if let Err(e) = written {
        eprintln!("error: {}: {e}", out.display());
        return ExitCode::from(admin::EXIT_USAGE);
    }
    println!("wrote {} events to {}", set.files.len(), out.display());
    print!("{}", set.describe(now));
    println!(
        "publish them within {lead} min, with `make run` going:\n  rpec-notify publish {}/[1-4]-*.json",
        out.display()
    );
    ExitCode::SUCCESS
}

fn schedule(only: Option<&str>, count: usize) -> ExitCode {
    let regions = match Regions::load(&config_dir().join("regions.toml")) {
        Ok(r) => r,
        Err(p) => {
            eprint!("{}", rpec_notify::config::Problems(p));
            return ExitCode::from(exit::EXIT_USAGE);
        }
    };
    if let Some(id) = only {
        if let Err(e) = id.parse::<rpec_notify::domain::RegionId>() {
            return exit::usage(format!("--region {id}: {e}"));
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
