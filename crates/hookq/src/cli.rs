//! The command line: clap's types for every `hookq` command.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "hookq",
    version,
    about = "Webhook delivery for Pusher-protocol realtime servers"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Args)]
pub struct ConfigArg {
    /// The config file (Sockudo's config.json shape).
    #[arg(long, short, env = "HOOKQ_CONFIG")]
    pub config: PathBuf,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run a worker until SIGTERM or SIGINT.
    Worker(ConfigArg),
    /// Take the webhooks Sockudo, Soketi or Pusher send (POST /pusher/webhooks
    /// on ingest.addr) and put them on the queue, until SIGTERM or SIGINT.
    Ingest(ConfigArg),
    /// Validate a config file and print what it configures.
    CheckConfig(ConfigArg),
    /// Publish events for an app (JSON objects, one per line with --file).
    Enqueue {
        #[command(flatten)]
        config: ConfigArg,
        /// The app id.
        #[arg(long)]
        app: String,
        /// One event as JSON, e.g. '{"name":"channel_occupied","channel":"room"}'.
        #[arg(long, conflicts_with = "file")]
        event: Option<String>,
        /// A file of events, one JSON object per line; `-` reads standard input.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Inspect and act on the dead-letter queue.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Endpoint health: list every endpoint's circuit, re-enable a disabled one.
    Endpoints {
        #[command(subcommand)]
        action: EndpointsAction,
    },
    /// Producer, worker and a verifying receiver in one process, on the memory queue.
    Demo {
        /// Keep producing until interrupted.
        #[arg(long)]
        forever: bool,
    },
    /// Exit 0 when a worker's /health answers 2xx within the timeout, else 1.
    Healthcheck {
        /// The URL to ask.
        #[arg(
            long,
            env = "HOOKQ_HEALTH_URL",
            default_value = "http://127.0.0.1:9090/health"
        )]
        url: String,
        /// How long the answer may take, in ms.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
}

#[derive(clap::Args)]
pub struct DlqArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Only this app's entries.
    #[arg(long)]
    pub app: Option<String>,
    /// At most this many entries.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Only this endpoint's entries (its id).
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Only entries whose reason contains this text (ASCII case-insensitive).
    #[arg(long)]
    pub reason: Option<String>,
    /// Only entries dead-lettered at least this many seconds ago.
    #[arg(long, value_name = "SECONDS")]
    pub older_than: Option<u64>,
    /// Only entries dead-lettered at most this many seconds ago.
    #[arg(long, value_name = "SECONDS")]
    pub newer_than: Option<u64>,
    /// Only the entry with this id (as `list --json` prints it); repeat for more.
    #[arg(long = "id", value_name = "ID")]
    pub ids: Vec<String>,
}

#[derive(Subcommand)]
pub enum DlqAction {
    /// Show entries: reason, endpoint, attempts, age.
    List {
        #[command(flatten)]
        args: DlqArgs,
        /// Print each entry as a JSON line.
        #[arg(long)]
        json: bool,
    },
    /// Push entries' jobs back onto the queue.
    Replay(DlqArgs),
    /// Delete entries.
    Purge(DlqArgs),
}

#[derive(Subcommand)]
pub enum EndpointsAction {
    /// Every endpoint's state (healthy, open, half-open, disabled), last
    /// error, last success, failing since.
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// Print each endpoint as a JSON line.
        #[arg(long)]
        json: bool,
    },
    /// Re-enable a disabled endpoint (or close an open circuit); its
    /// dead letters stay in the DLQ (replay them with `hookq dlq replay`).
    Enable {
        #[command(flatten)]
        config: ConfigArg,
        /// The app id.
        app: String,
        /// The endpoint id (as `hookq endpoints list` shows it).
        endpoint: String,
    },
}
