//! `hookq`: the binary and its operator commands.
//!
//! `hookq worker` runs a worker; `hookq ingest` takes the webhooks realtime
//! servers send and puts them on the queue; `hookq check-config` validates a config;
//! `hookq enqueue` publishes events through the producer; `hookq dlq` lists,
//! replays and purges the dead-letter queue; `hookq endpoints` lists
//! endpoints' health and re-enables one; `hookq demo` runs producer,
//! worker and a receiver in one process on the memory queue; `hookq
//! healthcheck` asks a worker's admin server whether it is healthy (the
//! image's HEALTHCHECK, which so needs no curl).
//!
//! `cli` holds the command line, `run` the worker's and the ingest's
//! start-up, `enqueue` and `dlq` the operator commands, `demo` the demo.

/// `println!` that ends quietly when the reader went away (`hookq … | head`)
/// instead of panicking, and reports other write errors.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::write_out(format_args!("{}\n", format_args!($($arg)*)))?
    };
}

mod cli;
mod demo;
mod dlq;
mod endpoints;
mod enqueue;
mod run;

use anyhow::{Context, bail};
use clap::Parser;
use cli::{Cli, Command};
use hookq_core::Config;
use std::path::Path;

/// mimalloc, not the system's allocator: an unbatched delivery makes about a
/// hundred small allocations across the runtime's two threads, where glibc
/// spent a quarter of the worker's CPU (its arenas' locks and consolidation).
/// Measured by alternating runs: docs/benchmark.md, "Unbatched delivery".
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Writes to standard output; a closed pipe is not an error (the reader has
/// all it wanted).
fn write_out(text: std::fmt::Arguments) -> std::io::Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_fmt(text) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The demo prints its own story; the worker's logs would drown it.
    init_logging(if matches!(cli.command, Command::Demo { .. }) {
        "warn"
    } else {
        "info"
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("HOOKQ_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("HOOKQ_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Reads and validates the config file, logging its warnings.
fn load_config(path: &Path) -> anyhow::Result<Config> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config {}", path.display()))?;
    let (config, diagnostics) = Config::from_str_with_env(&text)
        .with_context(|| format!("config {} is not valid", path.display()))?;
    for w in &diagnostics.warnings {
        tracing::warn!(path = %w.path, "config: {}", w.message);
    }
    Ok(config)
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Worker(c) => run::worker(c.config.clone(), load_config(&c.config)?).await,
        Command::Ingest(c) => {
            let config = load_config(&c.config)?;
            if config.queue.driver == hookq_core::config::QueueDriverKind::Memory {
                bail!(
                    "the memory queue lives inside one process, so a stand-alone `hookq ingest` \
                     would accept jobs no worker can see; set queue.driver to \"redis\" or \"sqs\", \
                     or serve the ingest inside the worker with ingest.enabled: true"
                );
            }
            run::ingest(c.config.clone(), config).await
        }
        Command::CheckConfig(c) => {
            let config = load_config(&c.config)?;
            say!("{} is valid.\n{config}", c.config.display());
            Ok(())
        }
        Command::Enqueue {
            config,
            app,
            event,
            file,
        } => enqueue::run(load_config(&config.config)?, &app, event, file).await,
        Command::Dlq { action } => dlq::run(action).await,
        Command::Endpoints { action } => endpoints::run(action).await,
        Command::Demo { forever } => demo::run(forever).await,
        Command::Healthcheck { url, timeout_ms } => healthcheck(&url, timeout_ms).await,
    }
}

/// Refuses an operator command (`hookq {what}`) on the memory queue, which
/// lives inside one process and so cannot be reached from another.
fn refuse_memory(config: &Config, what: &str) -> anyhow::Result<()> {
    if config.queue.driver == hookq_core::config::QueueDriverKind::Memory {
        bail!(
            "the memory queue lives inside one process, so `hookq {what}` cannot reach it; \
             set queue.driver to \"redis\" or \"sqs\""
        );
    }
    Ok(())
}

async fn healthcheck(url: &str, timeout_ms: u64) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(timeout_ms))
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let response = client
        .get(url)
        .send()
        .await
        .with_context(|| format!("{url}: no answer"))?;
    let status = response.status();
    if !status.is_success() {
        bail!("{url}: HTTP {status}");
    }
    Ok(())
}
