//! `hookq`: the worker binary and its operator commands.
//!
//! `hookq worker` runs a worker; `hookq ingest` takes the webhooks realtime
//! servers send and puts them on the queue; `hookq check-config` validates a config;
//! `hookq enqueue` publishes events through the producer; `hookq dlq` lists,
//! replays and purges the dead-letter queue; `hookq demo` runs producer,
//! worker and a receiver in one process on the memory queue; `hookq
//! healthcheck` asks a worker's admin server whether it is healthy (the
//! image's HEALTHCHECK, which so needs no curl).

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use hookq_core::{AppManagerSettings, AppRegistry, Config, Event, StaticApps};
use hookq_ingest::{Ingest, IngestMetrics};
use hookq_queue::{DeadLetters, DlqFilter, QueuePush};
use hookq_worker::{Metrics, Worker, admin, demo, queue};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "hookq",
    version,
    about = "Webhook delivery for Pusher-protocol realtime servers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct ConfigArg {
    /// The config file (Sockudo's config.json shape).
    #[arg(long, short, env = "HOOKQ_CONFIG")]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
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
struct DlqArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Only this app's entries.
    #[arg(long)]
    app: Option<String>,
    /// At most this many entries.
    #[arg(long)]
    limit: Option<usize>,
}

#[derive(Subcommand)]
enum DlqAction {
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
    match runtime.block_on(run(cli)) {
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

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Worker(c) => run_worker(c.config.clone(), load_config(&c.config)?).await,
        Command::Ingest(c) => run_ingest(c.config.clone(), load_config(&c.config)?).await,
        Command::CheckConfig(c) => {
            let config = load_config(&c.config)?;
            print!("{} is valid.\n{config}", c.config.display());
            Ok(())
        }
        Command::Enqueue {
            config,
            app,
            event,
            file,
        } => enqueue(load_config(&config.config)?, &app, event, file).await,
        Command::Dlq { action } => dlq(action).await,
        Command::Demo { forever } => demo::run(forever).await,
        Command::Healthcheck { url, timeout_ms } => healthcheck(&url, timeout_ms).await,
    }
}

/// Cancels the token on SIGTERM or SIGINT.
fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                tracing::error!("cannot listen for signals");
                return;
            };
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        token.cancel();
    });
}

/// Binds `addr`, naming `what` in the error.
async fn bind(addr: &str, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the {what} address {addr}"))
}

/// The app registry `app_manager` names: the config file's apps, reloaded
/// live until `stop` (the task comes back), or a database's.
async fn open_apps(
    path: PathBuf,
    config: &Arc<Config>,
    stop: &CancellationToken,
) -> anyhow::Result<(Arc<dyn AppRegistry>, Option<tokio::task::JoinHandle<()>>)> {
    if config.app_manager == AppManagerSettings::Memory {
        let apps = Arc::new(StaticApps::new(&config.apps));
        let reload = tokio::spawn(reload_apps(path, apps.clone(), stop.clone()));
        return Ok((apps, Some(reload)));
    }
    let registry = hookq_apps::open(config).await?;
    tracing::info!(
        app_manager = config.app_manager.driver(),
        "apps are read from the database"
    );
    Ok((registry, None))
}

/// Starts the ingest on its address, serving until `shutdown` and then
/// draining for at most the shutdown timeout.
async fn start_ingest(
    config: &Config,
    apps: Arc<dyn AppRegistry>,
    queue: Arc<dyn QueuePush>,
    shutdown: &CancellationToken,
) -> anyhow::Result<(Arc<Ingest>, tokio::task::JoinHandle<()>)> {
    let settings = config.ingest.clone();
    let listener = bind(&settings.addr.to_string(), "ingest").await?;
    let ingest = Ingest::new(settings, apps, queue, Arc::new(IngestMetrics::new()));
    tracing::info!(
        addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        route = hookq_core::config::INGEST_ROUTE,
        "ingest started"
    );
    let task = tokio::spawn(hookq_ingest::serve::serve(
        listener,
        ingest.router(),
        config.ingest.header_timeout,
        shutdown.clone(),
        config.worker.shutdown_timeout,
    ));
    Ok((ingest, task))
}

async fn run_worker(path: PathBuf, config: Config) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let shutdown = CancellationToken::new();
    cancel_on_signals(shutdown.clone());
    let addr = config.worker.admin_addr.clone();
    let listener = bind(&addr, "admin").await?;
    let queue = queue::open_patiently(&config, &shutdown).await?;
    tracing::info!(
        queue = queue.name(),
        admin = %listener.local_addr().map(|a| a.to_string()).unwrap_or(addr),
        apps = config.apps.len(),
        "worker started"
    );
    let admin_stop = CancellationToken::new();
    let (apps, reload) = open_apps(path, &config, &admin_stop).await?;
    let ingest = if config.ingest.enabled {
        Some(start_ingest(&config, apps.clone(), queue.clone(), &shutdown).await?)
    } else {
        None
    };
    let worker = Worker::with_apps(config, apps, queue, Arc::new(Metrics::new()))?;
    let admin = tokio::spawn(admin::serve(
        listener,
        worker.shared(),
        ingest.as_ref().map(|(i, _)| i.metrics().clone()),
        admin_stop.clone(),
    ));
    worker.run(shutdown).await?;
    if let Some((_, task)) = ingest {
        let _ = task.await;
    }
    admin_stop.cancel();
    let _ = admin.await;
    if let Some(reload) = reload {
        let _ = reload.await;
    }
    Ok(())
}

/// `hookq ingest`: the ingest on `ingest.addr`, its probes and metrics on
/// `worker.admin_addr`. SIGTERM stops accepting, finishes the requests in
/// flight (up to `worker.shutdown_timeout_ms`) and exits.
async fn run_ingest(path: PathBuf, config: Config) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let shutdown = CancellationToken::new();
    cancel_on_signals(shutdown.clone());
    let admin_listener = bind(&config.worker.admin_addr, "admin").await?;
    let queue = queue::open_patiently(&config, &shutdown).await?;
    let admin_stop = CancellationToken::new();
    let (apps, reload) = open_apps(path, &config, &admin_stop).await?;
    let (ingest, task) = start_ingest(&config, apps, queue, &shutdown).await?;
    let admin = {
        let stop = admin_stop.clone();
        let routes = ingest.admin_router();
        tokio::spawn(async move {
            axum::serve(admin_listener, routes)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        })
    };
    let _ = task.await;
    tracing::info!("ingest stopped");
    admin_stop.cancel();
    let _ = admin.await;
    if let Some(reload) = reload {
        let _ = reload.await;
    }
    Ok(())
}

/// How often the config file's modification time is checked.
const RELOAD_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// Reloads the apps of the config file when it changes or on SIGHUP. A file
/// that fails validation is refused (its problems logged) and the previous
/// apps stay. Only the apps reload; other settings need a restart.
async fn reload_apps(path: PathBuf, apps: Arc<StaticApps>, stop: CancellationToken) {
    let stamp = |p: &Path| {
        std::fs::metadata(p)
            .and_then(|m| Ok((m.modified()?, m.len())))
            .ok()
    };
    let mut last = stamp(&path);
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(RELOAD_POLL);
    loop {
        #[cfg(unix)]
        let hangup = async {
            match hup.as_mut() {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hangup = std::future::pending::<Option<()>>();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = hangup => tracing::info!("SIGHUP received: reloading apps"),
            _ = tick.tick() => {
                let now = stamp(&path);
                if now == last {
                    continue;
                }
                last = now;
            }
        }
        match load_config(&path) {
            Ok(config) => {
                apps.replace(&config.apps);
                tracing::info!(
                    apps = config.apps.len(),
                    "apps reloaded from {}",
                    path.display()
                );
            }
            Err(e) => tracing::error!("config reload refused, keeping the previous apps: {e:#}"),
        }
    }
}

fn refuse_memory(config: &Config, what: &str) -> anyhow::Result<()> {
    if config.queue.driver == hookq_core::config::QueueDriverKind::Memory {
        bail!(
            "the memory queue lives inside one process, so `hookq {what}` cannot reach it; \
             set queue.driver to \"redis\" or \"sqs\""
        );
    }
    Ok(())
}

async fn enqueue(
    config: Config,
    app: &str,
    event: Option<String>,
    file: Option<PathBuf>,
) -> anyhow::Result<()> {
    refuse_memory(&config, "enqueue")?;
    let lines: Vec<String> = match (event, file) {
        (Some(e), _) => vec![e],
        (None, Some(path)) if path.as_os_str() == "-" => {
            std::io::stdin().lock().lines().collect::<Result<_, _>>()?
        }
        (None, Some(path)) => std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .lines()
            .map(str::to_string)
            .collect(),
        (None, None) => bail!("give --event JSON or --file PATH (`-` for standard input)"),
    };
    let mut events = Vec::new();
    for (n, line) in lines
        .iter()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let e: Event =
            serde_json::from_str(line).with_context(|| format!("line {}: not an event", n + 1))?;
        events.push(e);
    }
    let queue = queue::open(&config).await?;
    let config = Arc::new(config);
    let registry = hookq_apps::open(&config).await?;
    let producer = hookq_producer::Producer::with_apps(queue, registry);
    let mut total = hookq_producer::Published::default();
    for chunk in events.chunks(500) {
        let p = producer.publish_batch(app, chunk.to_vec()).await?;
        total.enqueued += p.enqueued;
        total.skipped += p.skipped;
    }
    println!(
        "enqueued {} event(s) for {app}; {} skipped (no endpoint wants them)",
        total.enqueued, total.skipped
    );
    Ok(())
}

async fn dlq(action: DlqAction) -> anyhow::Result<()> {
    let (args, verb) = match &action {
        DlqAction::List { args, .. } => (args, "dlq list"),
        DlqAction::Replay(args) => (args, "dlq replay"),
        DlqAction::Purge(args) => (args, "dlq purge"),
    };
    let config = load_config(&args.config.config)?;
    refuse_memory(&config, verb)?;
    let queue: Arc<dyn DeadLetters> = queue::open(&config).await?;
    let filter = DlqFilter {
        app_id: args.app.clone(),
        limit: args.limit,
    };
    match action {
        DlqAction::List { json, .. } => {
            let entries = queue.dlq_list(&filter).await?;
            let now = hookq_core::now_ms();
            for e in &entries {
                if json {
                    println!("{}", e.encode());
                    continue;
                }
                let age_s = now.saturating_sub(e.failed_at_ms) / 1000;
                println!(
                    "{:>6}s ago  app {}  endpoint {}  attempts {}  {}{}",
                    age_s,
                    e.app_id.as_deref().unwrap_or("-"),
                    e.endpoint.as_deref().unwrap_or("-"),
                    e.attempts,
                    e.reason,
                    e.body_excerpt
                        .as_deref()
                        .map(|b| format!("  body: {b}"))
                        .unwrap_or_default()
                );
            }
            if !json {
                println!(
                    "{} entr{}",
                    entries.len(),
                    if entries.len() == 1 { "y" } else { "ies" }
                );
            }
        }
        DlqAction::Replay(_) => println!("replayed {} entries", queue.dlq_replay(&filter).await?),
        DlqAction::Purge(_) => println!("purged {} entries", queue.dlq_purge(&filter).await?),
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
