//! `hookq worker` and `hookq ingest`: opening the queue and the apps,
//! starting the servers, stopping on SIGTERM or SIGINT, and reloading the
//! config file's apps while running.

use crate::load_config;
use anyhow::Context;
use hookq_core::{AppManagerSettings, AppRegistry, Config, StaticApps};
use hookq_ingest::{Ingest, IngestMetrics};
use hookq_queue::QueuePush;
use hookq_worker::{Metrics, Worker, admin, queue};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

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

/// `hookq worker`: a worker, its probes and metrics on `worker.admin_addr`,
/// and the ingest in the same process when `ingest.enabled`. SIGTERM stops
/// it gracefully within `worker.shutdown_timeout_ms`.
pub async fn worker(path: PathBuf, config: Config) -> anyhow::Result<()> {
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
pub async fn ingest(path: PathBuf, config: Config) -> anyhow::Result<()> {
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
