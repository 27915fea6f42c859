//! Configuration: Sockudo's `config.json` shape, read with every default,
//! environment overrides, and validation that reports every problem at once.
//!
//! Loading goes text → [`crate::jsonc::strip`] (comments, trailing commas) →
//! `serde_json::Value` → [`apply_env`] (the `HOOKQ_*` variables) → a walk over
//! the value that builds a [`Config`] and collects [`Problem`]s, each with its
//! JSON path. Any error refuses the whole file; unknown keys only warn, except
//! inside a webhook's `filter`, where an ignored key would widen the filter.
//! docs/configuration.md lists every key.
//!
//! Each section is read in a file of its own: webhooks.rs (`webhooks`),
//! queue.rs (`queue`, with `database.redis`), worker.rs (`worker`),
//! app_manager.rs (`app_manager`, with `database.postgres`, `mysql` and
//! `dynamodb`), apps.rs (each app and its endpoints) and ingest.rs
//! (`ingest`); env.rs holds the environment overrides, summary.rs what
//! `check-config` prints, reader.rs the walk over JSON values.

mod app_manager;
mod apps;
mod env;
mod event_limits;
mod ingest;
mod queue;
mod reader;
pub mod sqs_limits;
mod summary;
mod webhooks;
mod worker;

pub use app_manager::{AppManagerSettings, DynamoDbAppsSettings, SqlAppsSettings};
pub use apps::{App, app_from_record};
pub use env::{ENV_OVERRIDES, apply_env};
pub use event_limits::{EventLimits, FIELDS_ALLOWANCE};
pub use ingest::{IngestSettings, ROUTE as INGEST_ROUTE};
pub use queue::{
    DEFAULT_SENTINEL_MASTER, MemoryQueueSettings, QueueDriverKind, QueueSettings, RedisSettings,
    SentinelSettings, SqsSettings,
};
pub use webhooks::{
    Batching, BreakerSettings, DEFAULT_MAX_BYTES, Notify, WebhookSettings, sqs_max_batch_bytes,
};
pub use worker::{AdminToken, MIN_ADMIN_TOKEN_LEN, WorkerSettings};

use app_manager::{read_app_databases, read_app_manager};
use queue::{check_lease, read_queue};
use reader::Obj;
use serde_json::Value;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use webhooks::read_webhooks;
use worker::read_worker;

/// One problem found in a config, at a JSON path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where, e.g. `app_manager.array.apps[0].webhooks[1].url`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Errors and warnings collected while reading a config.
#[derive(Debug, Default, Clone)]
pub struct Diagnostics {
    /// Problems that refuse the config.
    pub errors: Vec<Problem>,
    /// Things worth knowing that do not (unknown keys).
    pub warnings: Vec<Problem>,
}

impl Diagnostics {
    fn error(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(Problem {
            path: path.to_string(),
            message: message.into(),
        });
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The text is not JSON (even allowing comments and trailing commas).
    #[error("not valid JSON")]
    Syntax(#[from] serde_json::Error),
    /// The JSON was read but has problems; every one is listed.
    #[error("{} problem(s) in the config:\n{}", .0.len(), .0.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

/// A loaded, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `app_manager.array.apps`.
    pub apps: Vec<Arc<App>>,
    by_id: HashMap<String, Arc<App>>,
    /// `webhooks`.
    pub webhooks: WebhookSettings,
    /// `queue`.
    pub queue: QueueSettings,
    /// `worker`.
    pub worker: WorkerSettings,
    /// `app_manager.driver` with its settings.
    pub app_manager: AppManagerSettings,
    /// `ingest`.
    pub ingest: IngestSettings,
    /// `event_limits`.
    pub event_limits: EventLimits,
}

impl Config {
    /// Reads a config from text, with the process environment's overrides.
    pub fn from_str_with_env(text: &str) -> Result<(Config, Diagnostics), ConfigError> {
        Self::parse(text, |k| std::env::var(k).ok())
    }

    /// Reads a config from text, with overrides from `env`. Warnings come back beside the config.
    pub fn parse(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(Config, Diagnostics), ConfigError> {
        let mut root: Value = serde_json::from_str(&crate::jsonc::strip(text))?;
        let applied = apply_env(&mut root, env);
        let mut d = Diagnostics::default();
        let config = read_root(&root, &mut d);
        for p in &mut d.errors {
            if let Some((var, _, _)) = ENV_OVERRIDES
                .iter()
                .find(|(v, path, _)| *path == p.path && applied.contains(v))
            {
                p.message.push_str(&format!(" (set by {var})"));
            }
        }
        match config {
            Some(c) if d.errors.is_empty() => Ok((c, d)),
            _ => Err(ConfigError::Invalid(d.errors)),
        }
    }

    /// A config with these apps and every other setting at its default (for tests and embedding).
    pub fn with_apps(apps: Vec<App>) -> Config {
        let mut d = Diagnostics::default();
        let mut c = read_root(&Value::Object(Default::default()), &mut d)
            .unwrap_or_else(|| unreachable!("the empty config is valid"));
        c.set_apps(apps.into_iter().map(Arc::new).collect());
        c
    }

    fn set_apps(&mut self, apps: Vec<Arc<App>>) {
        self.by_id = apps.iter().map(|a| (a.id.clone(), a.clone())).collect();
        self.apps = apps;
    }

    /// The app with this id.
    pub fn app(&self, id: &str) -> Option<&Arc<App>> {
        self.by_id.get(id)
    }

    /// The longest request timeout of any endpoint (or the default when there are none).
    pub fn longest_request_timeout(&self) -> Duration {
        longest_request_timeout(&self.apps, self.webhooks.request_timeout)
    }
}

/// The longest request timeout of any endpoint of `apps`, and at least `default`.
fn longest_request_timeout(apps: &[Arc<App>], default: Duration) -> Duration {
    apps.iter()
        .flat_map(|a| a.endpoints.iter().map(|e| e.request_timeout))
        .fold(default, Duration::max)
}

/// Top-level sections of Sockudo's config that hookq reads nothing from.
const SOCKUDO_SECTIONS: &[&str] = &[
    "activity_timeout",
    "adapter",
    "cache",
    "channel_limits",
    "cluster",
    "cors",
    "database_pooling",
    "debug",
    "host",
    "http_api",
    "instance",
    "logging",
    "metrics",
    "mode",
    "path_prefix",
    "port",
    "presence",
    "rate_limiter",
    "shutdown_grace_period",
    "ssl",
    "unix_socket",
    "user_authentication_timeout",
    "websocket_max_payload_kb",
    "cleanup",
];

fn read_root(root: &Value, d: &mut Diagnostics) -> Option<Config> {
    let mut top = Obj::new(String::new(), Some(root), d);
    if !matches!(root, Value::Object(_)) {
        return None;
    }
    top.ignore(SOCKUDO_SECTIONS);
    let (mut webhooks, max_bytes_set) = read_webhooks(&mut top.obj("webhooks", d), d);
    let worker = read_worker(&mut top.obj("worker", d), d);
    let mut app_manager_obj = top.obj("app_manager", d);
    let (apps, driver, cache_ttl) = read_app_manager(&mut app_manager_obj, &webhooks, &worker, d);
    let longest_request = longest_request_timeout(&apps, webhooks.request_timeout);
    let mut database = top.obj("database", d);
    let queue = read_queue(
        &mut top.obj("queue", d),
        &mut database,
        longest_request + webhooks.batching.duration,
        d,
    );
    webhooks::fit_batches_to_queue(&mut webhooks.batching, max_bytes_set, queue.driver, d);
    let app_manager = read_app_databases(&mut database, driver, cache_ttl, d);
    database.ignore(&["mongodb", "surrealdb", "scylladb"]);
    database.finish(d);
    let ingest = ingest::read_ingest(&mut top.obj("ingest", d), d);
    let event_limits = event_limits::read_event_limits(&mut top.obj("event_limits", d), d);
    top.finish(d);
    for (i, app) in apps.iter().enumerate() {
        let at = |j| format!("app_manager.array.apps[{i}].webhooks[{j}]");
        ingest::check_loops(&app.endpoints, &ingest, at, d);
    }
    let mut config = Config {
        apps: Vec::new(),
        by_id: HashMap::new(),
        webhooks,
        queue,
        worker,
        app_manager,
        ingest,
        event_limits,
    };
    config.set_apps(apps);
    check_lease(&config, d);
    Some(config)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[cfg(test)]
mod tests;
