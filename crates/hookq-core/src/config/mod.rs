//! Configuration: Sockudo's `config.json` shape, read with every default,
//! environment overrides, and validation that reports every problem at once.
//!
//! Loading goes text → [`crate::jsonc::strip`] (comments, trailing commas) →
//! `serde_json::Value` → [`apply_env`] (the `HOOKQ_*` variables) → a walk over
//! the value that builds a [`Config`] and collects [`Problem`]s, each with its
//! JSON path. Any error refuses the whole file; unknown keys only warn, except
//! inside a webhook's `filter`, where an ignored key would widen the filter.
//! docs/configuration.md lists every key.

mod ingest;
mod reader;

pub use ingest::{IngestSettings, ROUTE as INGEST_ROUTE};

use crate::channel::ChannelTypeFilter;
use crate::endpoint::{Endpoint, EndpointTarget, Filter, InvocationType, LambdaTarget, redact_url};
use crate::event::EventName;
use crate::retry::RetryPolicy;
use crate::sign::SigningSecret;
use reader::Obj;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

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

/// Batching of events per (app, endpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// `webhooks.batching.enabled`: when off every event is sent alone (still in an envelope).
    pub enabled: bool,
    /// `webhooks.batching.duration`: how long a batch stays open after its first event.
    pub duration: Duration,
    /// `webhooks.batching.size`: most events in one batch.
    pub size: usize,
    /// `webhooks.batching.max_bytes`: most bytes of one request body.
    pub max_bytes: usize,
}

/// Global webhook settings (`webhooks`).
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Batching.
    pub batching: Batching,
    /// `webhooks.event_ids`: add hookq's per-event `id` to each event sent.
    pub event_ids: bool,
    /// `webhooks.request_timeout_ms`: the default for each endpoint.
    pub request_timeout: Duration,
    /// `webhooks.connect_timeout_ms`.
    pub connect_timeout: Duration,
    /// `webhooks.retry`: the default for each endpoint.
    pub retry: RetryPolicy,
}

/// Which queue the producer and workers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueDriverKind {
    /// In-process; the embedded default.
    Memory,
    /// Redis lists.
    Redis,
    /// Amazon SQS.
    Sqs,
}

impl QueueDriverKind {
    /// The config name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Redis => "redis",
            Self::Sqs => "sqs",
        }
    }
}

/// `queue.memory`.
#[derive(Debug, Clone)]
pub struct MemoryQueueSettings {
    /// Most jobs held (ready, delayed and leased together); a push beyond it fails.
    pub capacity: usize,
    /// How long a received job stays hidden before it returns to the queue.
    pub lease: Duration,
}

/// `queue.redis`.
#[derive(Clone)]
pub struct RedisSettings {
    /// Connection URL; it may hold a password, so `Debug` prints it redacted.
    pub url: String,
    /// Key prefix; every key is `{prefix}:…`, one hash tag for Redis Cluster.
    pub prefix: String,
    /// Sockudo's `concurrency` (default 5): read, warned about when set, not
    /// used (a worker runs one receive loop; see docs/operations.md).
    pub concurrency: usize,
    /// How long a claimed job stays leased before any worker may reclaim it.
    pub lease: Duration,
    /// Connections shared by short commands; also the most idle receive connections kept.
    pub pool_size: usize,
}

impl fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &redact_url(&self.url))
            .field("prefix", &self.prefix)
            .field("concurrency", &self.concurrency)
            .field("lease", &self.lease)
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

/// `queue.sqs`.
#[derive(Debug, Clone)]
pub struct SqsSettings {
    /// The queue's URL; resolved from `queue_name` when absent.
    pub queue_url: Option<String>,
    /// The queue's name, resolved (or created) at start.
    pub queue_name: String,
    /// Sockudo's `queue_url_prefix`: the URL is `{prefix}/{queue_name}`.
    pub queue_url_prefix: Option<String>,
    /// Region.
    pub region: String,
    /// A custom endpoint (an emulator).
    pub endpoint_url: Option<String>,
    /// Seconds a received message stays hidden.
    pub visibility_timeout: Duration,
    /// Long-poll wait, seconds (0–20).
    pub wait_time_seconds: u32,
    /// Messages per receive (1–10).
    pub max_messages: u32,
    /// Receive loops per worker process.
    pub concurrency: usize,
    /// The dead-letter queue's URL; `{queue_name}-dlq` is resolved or created when absent.
    pub dead_letter_queue_url: Option<String>,
    /// A FIFO queue (name ends in `.fifo`).
    pub fifo: bool,
    /// FIFO group id; the app id when absent.
    pub message_group_id: Option<String>,
    /// Receives after which SQS moves a message to the DLQ.
    pub max_receive_count: u32,
}

/// `queue`.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    /// `queue.driver`.
    pub driver: QueueDriverKind,
    /// `queue.memory`.
    pub memory: MemoryQueueSettings,
    /// `queue.redis`.
    pub redis: RedisSettings,
    /// `queue.sqs`.
    pub sqs: SqsSettings,
}

/// `worker`.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Address of `/metrics`, `/health` and `/ready`.
    pub admin_addr: String,
    /// Most jobs held at once; above it the worker stops receiving until deliveries settle.
    pub max_held_jobs: usize,
    /// Default most requests in flight per endpoint.
    pub endpoint_concurrency: usize,
    /// Most open batches; past it the oldest is closed early.
    pub max_open_batches: usize,
    /// How long SIGTERM waits for in-flight deliveries.
    pub shutdown_timeout: Duration,
}

/// Where apps come from (`app_manager.driver` and its `database.*` section).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppManagerSettings {
    /// `memory`: the config file's `app_manager.array.apps`, reloaded live.
    Memory,
    /// `pgsql` / `postgres`: Sockudo's applications table in PostgreSQL (`database.postgres`).
    Postgres(SqlAppsSettings),
    /// `mysql`: Sockudo's applications table in MySQL or MariaDB (`database.mysql`).
    Mysql(SqlAppsSettings),
    /// `dynamodb`: Sockudo's applications table in DynamoDB (`database.dynamodb`).
    DynamoDb(DynamoDbAppsSettings),
}

impl AppManagerSettings {
    /// The driver's config name (`postgres` for both `pgsql` and `postgres`).
    pub fn driver(&self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Postgres(_) => "postgres",
            Self::Mysql(_) => "mysql",
            Self::DynamoDb(_) => "dynamodb",
        }
    }
}

/// `database.postgres` or `database.mysql`, as the app manager uses it.
#[derive(Clone, PartialEq, Eq)]
pub struct SqlAppsSettings {
    /// `host`.
    pub host: String,
    /// `port` (5432 for PostgreSQL, 3306 for MySQL).
    pub port: u16,
    /// `username` (or `user`).
    pub username: String,
    /// `password`; none when empty or absent. Never logged.
    pub password: Option<String>,
    /// `database`.
    pub database: String,
    /// `table_name`, default `applications`.
    pub table_name: String,
    /// `webhooks_column`, default `webhooks`: the JSON column hookq reads an
    /// app's endpoints from. When Sockudo shares the table, its own
    /// `webhooks` column points at hookq's ingest, so hookq's endpoints need
    /// a column of their own (e.g. `hookq_webhooks`; docs/senders.md).
    pub webhooks_column: String,
    /// `connection_pool_size`: most open connections.
    pub connection_pool_size: u32,
    /// How long a looked-up app is kept before it is read again
    /// (`cache_ttl`, else `app_manager.cache.ttl`; zero when `app_manager.cache.enabled` is false).
    pub cache_ttl: Duration,
}

impl fmt::Debug for SqlAppsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlAppsSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("database", &self.database)
            .field("table_name", &self.table_name)
            .field("connection_pool_size", &self.connection_pool_size)
            .field("cache_ttl", &self.cache_ttl)
            .finish()
    }
}

/// `database.dynamodb`, as the app manager uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamoDbAppsSettings {
    /// `table_name`, default `sockudo-applications`.
    pub table_name: String,
    /// `region`, default `us-east-1`.
    pub region: String,
    /// `endpoint_url`: a custom endpoint (DynamoDB Local, an emulator).
    pub endpoint_url: Option<String>,
    /// `webhooks_attribute`, default `webhooks`: the attribute hookq reads
    /// an app's endpoints from (as [`SqlAppsSettings::webhooks_column`]).
    pub webhooks_attribute: String,
    /// How long a looked-up app is kept (as for [`SqlAppsSettings::cache_ttl`]).
    pub cache_ttl: Duration,
}

/// An app and its endpoints.
#[derive(Clone)]
pub struct App {
    /// `id`.
    pub id: String,
    /// `key`, sent as `X-Pusher-Key`.
    pub key: String,
    /// `secret`, signing `X-Pusher-Signature`. Never logged.
    pub secret: String,
    /// `enabled`; a disabled app's jobs are dead-lettered.
    pub enabled: bool,
    /// `webhooks`, compiled.
    pub endpoints: Vec<Endpoint>,
}

impl fmt::Debug for App {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("App")
            .field("id", &self.id)
            .field("key", &self.key)
            .field("secret", &"<redacted>")
            .field("enabled", &self.enabled)
            .field("endpoints", &self.endpoints)
            .finish()
    }
}

impl App {
    /// The endpoint with this id.
    pub fn endpoint(&self, id: &str) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.id == id)
    }
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
}

/// Environment variables that override config keys: (variable, JSON path, is a string).
pub const ENV_OVERRIDES: &[(&str, &str, bool)] = &[
    ("HOOKQ_QUEUE_DRIVER", "queue.driver", true),
    ("HOOKQ_REDIS_URL", "queue.redis.url", true),
    ("HOOKQ_REDIS_PREFIX", "queue.redis.prefix", true),
    ("HOOKQ_SQS_QUEUE_URL", "queue.sqs.queue_url", true),
    ("HOOKQ_SQS_QUEUE_NAME", "queue.sqs.queue_name", true),
    ("HOOKQ_SQS_REGION", "queue.sqs.region", true),
    ("HOOKQ_SQS_ENDPOINT_URL", "queue.sqs.endpoint_url", true),
    ("HOOKQ_BATCHING_ENABLED", "webhooks.batching.enabled", false),
    (
        "HOOKQ_BATCHING_DURATION",
        "webhooks.batching.duration",
        false,
    ),
    ("HOOKQ_ADMIN_ADDR", "worker.admin_addr", true),
    ("HOOKQ_INGEST_ADDR", "ingest.addr", true),
    ("HOOKQ_INGEST_ENABLED", "ingest.enabled", false),
];

/// Sets the keys named by [`ENV_OVERRIDES`] from `env`; returns the variables applied.
pub fn apply_env(root: &mut Value, env: impl Fn(&str) -> Option<String>) -> Vec<&'static str> {
    let mut applied = Vec::new();
    for &(var, path, is_string) in ENV_OVERRIDES {
        let Some(raw) = env(var) else { continue };
        let value = if is_string {
            Value::String(raw)
        } else {
            serde_json::from_str(&raw).unwrap_or(Value::String(raw))
        };
        let mut node = &mut *root;
        for part in path.split('.') {
            if !node.is_object() {
                *node = Value::Object(Default::default());
            }
            let Value::Object(map) = node else { break };
            node = map.entry(part).or_insert(Value::Null);
        }
        *node = value;
        applied.push(var);
    }
    applied
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

/// Every `queue.driver` value Sockudo accepts (its `QueueDriver`); hookq has `memory`, `redis` and `sqs`.
const SOCKUDO_QUEUE_DRIVERS: &[&str] = &[
    "memory",
    "redis",
    "redis-cluster",
    "nats",
    "pulsar",
    "rabbitmq",
    "google-pubsub",
    "kafka",
    "iggy",
    "sqs",
    "sns",
    "none",
];

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
    "event_limits",
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

/// App settings of Sockudo that concern the WebSocket server, not webhooks.
const SOCKUDO_APP_KEYS: &[&str] = &[
    "max_connections",
    "enable_client_messages",
    "max_backend_events_per_second",
    "max_client_events_per_second",
    "max_read_requests_per_second",
    "max_presence_members_per_channel",
    "max_presence_member_size_in_kb",
    "max_channel_name_length",
    "max_event_channels_at_once",
    "max_event_name_length",
    "max_event_payload_in_kb",
    "max_event_batch_size",
    "enable_user_authentication",
    "enable_watchlist_events",
    "allowed_origins",
    "channel_delta_compression",
];

fn read_root(root: &Value, d: &mut Diagnostics) -> Option<Config> {
    let mut top = Obj::new(String::new(), Some(root), d);
    if !matches!(root, Value::Object(_)) {
        return None;
    }
    top.ignore(SOCKUDO_SECTIONS);
    let webhooks = read_webhooks(&mut top.obj("webhooks", d), d);
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
    let app_manager = read_app_databases(&mut database, driver, cache_ttl, d);
    database.ignore(&["mongodb", "surrealdb", "scylladb"]);
    database.finish(d);
    let ingest = ingest::read_ingest(&mut top.obj("ingest", d), d);
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
    };
    config.set_apps(apps);
    check_lease(&config, d);
    Some(config)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn read_retry(o: &mut Obj, base: &RetryPolicy, d: &mut Diagnostics) -> RetryPolicy {
    let p = RetryPolicy {
        enabled: o.bool("enabled", base.enabled, d),
        max_attempts: o
            .opt_u64("max_attempts", 1, d)
            .map(|n| n.min(u32::MAX as u64) as u32)
            .or(base.max_attempts),
        max_elapsed: o
            .opt_u64("max_elapsed_time_ms", 1, d)
            .map_or(base.max_elapsed, ms),
        initial_backoff: o
            .opt_u64("initial_backoff_ms", 1, d)
            .map_or(base.initial_backoff, ms),
        max_backoff: o
            .opt_u64("max_backoff_ms", 1, d)
            .map_or(base.max_backoff, ms),
    };
    if o.present() && p.initial_backoff > p.max_backoff {
        d.error(
            &o.at("initial_backoff_ms"),
            format!(
                "{} ms is more than max_backoff_ms ({} ms)",
                p.initial_backoff.as_millis(),
                p.max_backoff.as_millis()
            ),
        );
    }
    p
}

fn read_webhooks(o: &mut Obj, d: &mut Diagnostics) -> WebhookSettings {
    let mut b = o.obj("batching", d);
    let batching = Batching {
        enabled: b.bool("enabled", true, d),
        duration: ms(b.u64("duration", 50, 1, d)),
        size: b.u64("size", 100, 1, d) as usize,
        max_bytes: b.u64("max_bytes", 256 * 1024, 1024, d) as usize,
    };
    b.finish(d);
    let mut r = o.obj("retry", d);
    let retry = read_retry(&mut r, &RetryPolicy::default(), d);
    r.finish(d);
    let settings = WebhookSettings {
        batching,
        event_ids: o.bool("event_ids", false, d),
        request_timeout: ms(o.u64("request_timeout_ms", 10_000, 1, d)),
        connect_timeout: ms(o.u64("connect_timeout_ms", 5_000, 1, d)),
        retry,
    };
    o.finish(d);
    settings
}

fn read_queue(
    o: &mut Obj,
    database: &mut Obj,
    busiest_hold: Duration,
    d: &mut Diagnostics,
) -> QueueSettings {
    let driver = match o.str("driver", d).as_deref() {
        None | Some("memory") => QueueDriverKind::Memory,
        Some("redis") => QueueDriverKind::Redis,
        Some("sqs") => QueueDriverKind::Sqs,
        Some(other) => {
            let message = if other == "none" {
                "Sockudo's \"none\" (no queue) leaves hookq nothing to read; use \"memory\", \"redis\" or \"sqs\"".to_string()
            } else if other == "redis-cluster" {
                "hookq has no Redis Cluster driver (Sockudo's \"redis-cluster\"); use \"redis\" with queue.redis.url naming one Redis server, or \"sqs\"".to_string()
            } else if SOCKUDO_QUEUE_DRIVERS.contains(&other) {
                format!(
                    "Sockudo's queue driver {other:?} is not one hookq has; use \"memory\", \"redis\" or \"sqs\""
                )
            } else {
                format!("unknown queue driver {other:?}; use \"memory\", \"redis\" or \"sqs\"")
            };
            d.error(&o.at("driver"), message);
            QueueDriverKind::Memory
        }
    };
    // Settings of Sockudo's other drivers: unused, as they are by Sockudo
    // when their driver is not the one chosen (choosing one is an error above).
    o.ignore(&[
        "redis_cluster",
        "nats",
        "pulsar",
        "rabbitmq",
        "google_pubsub",
        "kafka",
        "iggy",
        "sns",
    ]);
    if o.has("reliability") {
        o.ignore(&["reliability"]);
        d.warnings.push(Problem {
            path: o.at("reliability"),
            message: "Sockudo's queue reliability settings are not used by hookq: its retries are webhooks.retry, its holds queue.<driver>.lease_ms (SQS: visibility_timeout)".into(),
        });
    }
    // A hold must outlive the longest request plus the batching window, or a
    // job is reclaimed while its delivery is still running and sent twice.
    let default_lease = busiest_hold.max(Duration::from_secs(30)) + Duration::from_secs(30);

    let mut m = o.obj("memory", d);
    let memory = MemoryQueueSettings {
        capacity: m.u64("capacity", 1_000_000, 1, d) as usize,
        lease: m.opt_u64("lease_ms", 1, d).map_or(default_lease, ms),
    };
    m.finish(d);

    let mut r = o.obj("redis", d);
    let mut db = database.obj("redis", d);
    let db_url = {
        let host = db.str("host", d);
        let port = db.opt_u64("port", 1, d);
        let password = db.str("password", d);
        let username = db.str("username", d);
        let db_index = db.opt_u64("db", 0, d);
        db.ignore(&[
            "key_prefix",
            "cluster_nodes",
            "sentinel_password",
            "name",
            "cluster",
        ]);
        host.and_then(|host| {
            // Sockudo lets the host carry the scheme: `rediss://redis.internal` is TLS.
            let (scheme, host) = match host.split_once("://") {
                Some((scheme @ ("redis" | "rediss"), rest)) => (scheme, rest.to_string()),
                _ => ("redis", host),
            };
            let base = format!(
                "{scheme}://{host}:{}/{}",
                port.unwrap_or(6379),
                db_index.unwrap_or(0)
            );
            let mut url = url::Url::parse(&base)
                .map_err(|e| {
                    d.error(
                        &db.at("host"),
                        format!("{host:?} does not make a valid URL: {e}"),
                    )
                })
                .ok()?;
            // The setters percent-encode, so any character may be in a password.
            if password.is_some() || username.is_some() {
                let _ = url.set_username(username.as_deref().unwrap_or(""));
                let _ = url.set_password(password.as_deref());
            }
            Some(url.to_string())
        })
    };
    let sentinels = matches!(db.get("sentinels"), Some(Value::Array(a)) if !a.is_empty());
    let explicit_url = r.str("url", d).or(r.str("url_override", d));
    // Sockudo would go through Sentinel; hookq would connect to `host` directly.
    if sentinels && explicit_url.is_none() && driver == QueueDriverKind::Redis {
        d.error(
            &db.at("sentinels"),
            "hookq cannot connect through Redis Sentinel; set queue.redis.url (or url_override) to the master's redis:// URL",
        );
    }
    db.finish(d);
    let url = explicit_url
        .or(db_url)
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    if !url.starts_with("redis://") && !url.starts_with("rediss://") {
        d.error(&r.at("url"), "must start with redis:// or rediss://");
    }
    let concurrency = r.opt_u64("concurrency", 0, d);
    if concurrency.is_some() {
        d.warnings.push(Problem {
            path: r.at("concurrency"),
            message: "Sockudo's key, not used by hookq: a worker runs one Redis receive loop (up to 500 jobs a call); delivery concurrency is worker.endpoint_concurrency and a webhook's max_concurrency".into(),
        });
    }
    if r.opt_u64("response_timeout_ms", 0, d).is_some() {
        d.warnings.push(Problem {
            path: r.at("response_timeout_ms"),
            message: "Sockudo's key, not used by hookq: its Redis commands time out after 5 s"
                .into(),
        });
    }
    // Ignoring this would talk to a Redis Cluster as to one server.
    if r.bool("cluster_mode", false, d) {
        d.error(
            &r.at("cluster_mode"),
            "hookq has no Redis Cluster client; set it to false and queue.redis.url to one Redis server, or use the \"sqs\" driver",
        );
    }
    let redis = RedisSettings {
        url,
        prefix: r
            .nonempty_str("prefix", d)
            .unwrap_or_else(|| "hookq".into()),
        concurrency: concurrency.unwrap_or(5) as usize,
        lease: r.opt_u64("lease_ms", 1, d).map_or(default_lease, ms),
        pool_size: r.u64("pool_size", 8, 1, d) as usize,
    };
    r.finish(d);

    let mut s = o.obj("sqs", d);
    let secs = |n: u64| Duration::from_secs(n);
    let sqs = SqsSettings {
        queue_url: s.nonempty_str("queue_url", d),
        queue_name: s
            .nonempty_str("queue_name", d)
            .unwrap_or_else(|| "hookq".into()),
        queue_url_prefix: s.nonempty_str("queue_url_prefix", d),
        region: s
            .nonempty_str("region", d)
            .unwrap_or_else(|| "us-east-1".into()),
        endpoint_url: s.nonempty_str("endpoint_url", d),
        visibility_timeout: s.opt_u64("visibility_timeout", 1, d).map_or(
            Duration::from_secs(default_lease.as_secs_f64().ceil() as u64),
            secs,
        ),
        wait_time_seconds: s.u64("wait_time_seconds", 20, 0, d) as u32,
        max_messages: s.u64("max_messages", 10, 1, d) as u32,
        concurrency: s.u64("concurrency", 4, 1, d) as usize,
        dead_letter_queue_url: s.nonempty_str("dead_letter_queue_url", d),
        fifo: s.bool("fifo", false, d),
        message_group_id: s.nonempty_str("message_group_id", d),
        max_receive_count: s.u64("max_receive_count", 10, 1, d) as u32,
    };
    if let Some(u) = &sqs.endpoint_url {
        check_http_url(u, &s.at("endpoint_url"), d);
    }
    if sqs.wait_time_seconds > 20 {
        d.error(
            &s.at("wait_time_seconds"),
            "must be 20 or less (SQS's limit)",
        );
    }
    if sqs.max_messages > 10 {
        d.error(&s.at("max_messages"), "must be 10 or less (SQS's limit)");
    }
    if sqs.visibility_timeout > Duration::from_secs(43_200) {
        d.error(
            &s.at("visibility_timeout"),
            "must be 43200 seconds or less (SQS's limit)",
        );
    }
    s.finish(d);
    o.finish(d);
    QueueSettings {
        driver,
        memory,
        redis,
        sqs,
    }
}

fn check_lease(c: &Config, d: &mut Diagnostics) {
    let (lease, path) = match c.queue.driver {
        QueueDriverKind::Memory => (c.queue.memory.lease, "queue.memory.lease_ms"),
        QueueDriverKind::Redis => (c.queue.redis.lease, "queue.redis.lease_ms"),
        QueueDriverKind::Sqs => (
            c.queue.sqs.visibility_timeout,
            "queue.sqs.visibility_timeout",
        ),
    };
    let need = c.longest_request_timeout() + c.webhooks.batching.duration;
    if lease <= need {
        d.error(
            path,
            format!(
                "the hold ({} ms) must be longer than the longest request timeout plus the batching window ({} ms), or jobs are delivered twice",
                lease.as_millis(),
                need.as_millis()
            ),
        );
    }
}

fn read_worker(o: &mut Obj, d: &mut Diagnostics) -> WorkerSettings {
    let admin_addr = o
        .nonempty_str("admin_addr", d)
        .unwrap_or_else(|| "0.0.0.0:9090".into());
    if admin_addr.parse::<std::net::SocketAddr>().is_err() {
        d.error(
            &o.at("admin_addr"),
            format!("{admin_addr:?} is not an ip:port address"),
        );
    }
    let w = WorkerSettings {
        admin_addr,
        max_held_jobs: o.u64("max_held_jobs", 20_000, 1, d) as usize,
        endpoint_concurrency: o.u64("endpoint_concurrency", 32, 1, d) as usize,
        max_open_batches: o.u64("max_open_batches", 10_000, 1, d) as usize,
        shutdown_timeout: ms(o.u64("shutdown_timeout_ms", 25_000, 0, d)),
    };
    o.finish(d);
    w
}

/// The app manager drivers hookq knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AppDriver {
    Memory,
    Postgres,
    Mysql,
    DynamoDb,
}

/// Reads `app_manager`: the memory driver's apps, the driver, and the cache
/// TTL `app_manager.cache` sets (`None` when it leaves it to `database.*.cache_ttl`).
fn read_app_manager(
    o: &mut Obj,
    webhooks: &WebhookSettings,
    worker: &WorkerSettings,
    d: &mut Diagnostics,
) -> (Vec<Arc<App>>, AppDriver, Option<Duration>) {
    let driver = match o.str("driver", d).as_deref() {
        None | Some("memory") => AppDriver::Memory,
        Some("pgsql" | "postgres") => AppDriver::Postgres,
        Some("mysql") => AppDriver::Mysql,
        Some("dynamodb") => AppDriver::DynamoDb,
        Some(other) => {
            d.error(
                &o.at("driver"),
                format!(
                    "unknown app manager {other:?}; use \"memory\", \"pgsql\" (or \"postgres\"), \"mysql\" or \"dynamodb\""
                ),
            );
            AppDriver::Memory
        }
    };
    let mut c = o.obj("cache", d);
    let cache_enabled = c.bool("enabled", true, d);
    let cache_ttl = c.opt_u64("ttl", 0, d).map(Duration::from_secs);
    c.finish(d);
    let cache_ttl = if cache_enabled {
        cache_ttl
    } else {
        Some(Duration::ZERO)
    };
    let mut array = o.obj("array", d);
    let mut apps = Vec::new();
    let mut ids = HashSet::new();
    let mut keys = HashSet::new();
    for (path, value) in array.array("apps", d) {
        let mut a = Obj::new(path, Some(value), d);
        let Some(app) = read_app(&mut a, webhooks, worker, d) else {
            continue;
        };
        if !ids.insert(app.id.clone()) {
            d.error(&a.at("id"), format!("duplicate app id {:?}", app.id));
        }
        if !keys.insert(app.key.clone()) {
            d.error(&a.at("key"), format!("duplicate app key {:?}", app.key));
        }
        a.finish(d);
        apps.push(Arc::new(app));
    }
    array.finish(d);
    o.finish(d);
    (apps, driver, cache_ttl)
}

/// Sockudo's database keys that concern its own cache, not hookq.
const SOCKUDO_DB_KEYS: &[&str] = &[
    "cache_cleanup_interval",
    "cache_max_capacity",
    "pool_min",
    "pool_max",
];

/// Sockudo's default cache TTL of a database app manager, in seconds.
const DEFAULT_APP_CACHE_TTL: u64 = 300;

/// Reads `database.postgres`, `database.mysql` and `database.dynamodb`
/// (each checked when present) and builds the chosen driver's settings.
fn read_app_databases(
    database: &mut Obj,
    driver: AppDriver,
    manager_ttl: Option<Duration>,
    d: &mut Diagnostics,
) -> AppManagerSettings {
    let mut sql = |name: &'static str, port: u16, username: &str, d: &mut Diagnostics| {
        let mut o = database.obj(name, d);
        let user = o.nonempty_str("username", d);
        let user_alias = o.nonempty_str("user", d);
        if let (Some(a), Some(b)) = (&user, &user_alias)
            && a != b
        {
            d.error(
                &o.at("user"),
                format!("{b:?} differs from username {a:?}; give one"),
            );
        }
        let port_path = o.at("port");
        let port = match o.opt_u64("port", 1, d) {
            None => port,
            Some(p) => u16::try_from(p).unwrap_or_else(|_| {
                d.error(&port_path, format!("{p} is not a port (1-65535)"));
                port
            }),
        };
        let settings = SqlAppsSettings {
            host: o
                .nonempty_str("host", d)
                .unwrap_or_else(|| "localhost".into()),
            port,
            username: user.or(user_alias).unwrap_or_else(|| username.into()),
            password: o.str("password", d).filter(|p| !p.is_empty()),
            database: o
                .nonempty_str("database", d)
                .unwrap_or_else(|| "sockudo".into()),
            table_name: o
                .nonempty_str("table_name", d)
                .unwrap_or_else(|| "applications".into()),
            webhooks_column: o
                .nonempty_str("webhooks_column", d)
                .unwrap_or_else(|| "webhooks".into()),
            connection_pool_size: o.u64("connection_pool_size", 10, 1, d).min(u32::MAX as u64)
                as u32,
            cache_ttl: o
                .opt_u64("cache_ttl", 0, d)
                .map(Duration::from_secs)
                .unwrap_or(manager_ttl.unwrap_or(Duration::from_secs(DEFAULT_APP_CACHE_TTL))),
        };
        check_table_name(&settings.table_name, &o.at("table_name"), d);
        let column = &settings.webhooks_column;
        let plain = !column.starts_with(|c: char| c.is_ascii_digit())
            && column
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !plain {
            d.error(
                &o.at("webhooks_column"),
                format!("{column:?} is not a plain column name (letters, digits, _)"),
            );
        }
        o.ignore(SOCKUDO_DB_KEYS);
        o.finish(d);
        settings
    };
    let postgres = sql("postgres", 5432, "postgres", d);
    let mysql = sql("mysql", 3306, "root", d);
    let mut o = database.obj("dynamodb", d);
    let dynamodb = DynamoDbAppsSettings {
        table_name: o
            .nonempty_str("table_name", d)
            .unwrap_or_else(|| "sockudo-applications".into()),
        region: o
            .nonempty_str("region", d)
            .unwrap_or_else(|| "us-east-1".into()),
        endpoint_url: o.nonempty_str("endpoint_url", d),
        webhooks_attribute: o
            .nonempty_str("webhooks_attribute", d)
            .unwrap_or_else(|| "webhooks".into()),
        cache_ttl: o
            .opt_u64("cache_ttl", 0, d)
            .map(Duration::from_secs)
            .unwrap_or(manager_ttl.unwrap_or(Duration::from_secs(DEFAULT_APP_CACHE_TTL))),
    };
    if let Some(u) = &dynamodb.endpoint_url {
        check_http_url(u, &o.at("endpoint_url"), d);
    }
    o.ignore(&[
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_profile_name",
    ]);
    o.ignore(SOCKUDO_DB_KEYS);
    o.finish(d);
    match driver {
        AppDriver::Memory => AppManagerSettings::Memory,
        AppDriver::Postgres => AppManagerSettings::Postgres(postgres),
        AppDriver::Mysql => AppManagerSettings::Mysql(mysql),
        AppDriver::DynamoDb => AppManagerSettings::DynamoDb(dynamodb),
    }
}

/// A table name goes into SQL text: letters, digits, `_`, `$` and an optional `schema.` prefix only.
fn check_table_name(name: &str, path: &str, d: &mut Diagnostics) {
    let ok = name.split('.').count() <= 2
        && name.split('.').all(|part| {
            !part.is_empty()
                && !part.starts_with(|c: char| c.is_ascii_digit())
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
        });
    if !ok {
        d.error(
            path,
            format!("{name:?} is not a plain table name (letters, digits, _, and one optional schema. prefix)"),
        );
    }
}

/// Compiles one app from a database record (Sockudo's applications table:
/// `id`, `key`, `secret`, `enabled` and the `webhooks` JSON), with the same
/// rules as an app of `app_manager.array.apps`. Problems come back with
/// paths such as `webhooks[1].event_types`; unknown keys are allowed, except
/// inside a `filter` (an error there too, as in the file).
pub fn app_from_record(
    id: &str,
    key: &str,
    secret: &str,
    enabled: bool,
    webhooks: &Value,
    config: &Config,
) -> Result<App, Vec<Problem>> {
    let mut d = Diagnostics::default();
    for (field, v) in [("id", id), ("key", key), ("secret", secret)] {
        if v.trim().is_empty() {
            d.error(field, "must not be empty");
        }
    }
    let items: &[Value] = match webhooks {
        Value::Null => &[],
        Value::Array(items) => items,
        other => {
            d.error(
                "webhooks",
                format!(
                    "expected an array of webhooks, found {}",
                    reader::type_name(other)
                ),
            );
            &[]
        }
    };
    let mut endpoints: Vec<Endpoint> = Vec::new();
    for (index, value) in items.iter().enumerate() {
        let mut w = Obj::new(format!("webhooks[{index}]"), Some(value), &mut d);
        if let Some(e) = read_endpoint(&mut w, index, &config.webhooks, &config.worker, &mut d) {
            if endpoints.iter().any(|other| other.id == e.id) {
                d.error(
                    &w.at("id"),
                    format!("duplicate endpoint id {:?} in this app", e.id),
                );
            }
            endpoints.push(e);
        }
    }
    ingest::check_loops(
        &endpoints,
        &config.ingest,
        |j| format!("webhooks[{j}]"),
        &mut d,
    );
    if !d.errors.is_empty() {
        return Err(d.errors);
    }
    Ok(App {
        id: id.to_string(),
        key: key.to_string(),
        secret: secret.to_string(),
        enabled,
        endpoints,
    })
}

fn read_app(
    a: &mut Obj,
    webhooks: &WebhookSettings,
    worker: &WorkerSettings,
    d: &mut Diagnostics,
) -> Option<App> {
    let id = a.nonempty_str("id", d);
    let key = a.nonempty_str("key", d);
    let secret = a.nonempty_str("secret", d);
    for (field, v) in [("id", &id), ("key", &key), ("secret", &secret)] {
        if v.is_none() && a.present() && a.get(field).is_none() {
            d.error(&a.at(field), "missing");
        }
    }
    a.ignore(SOCKUDO_APP_KEYS);
    let enabled = a.bool("enabled", true, d);
    let app_secrets = read_signing_secrets(a, d);
    let mut endpoints: Vec<Endpoint> = Vec::new();
    for (index, (path, value)) in a.array("webhooks", d).into_iter().enumerate() {
        let mut w = Obj::new(path, Some(value), d);
        if let Some(mut e) = read_endpoint(&mut w, index, webhooks, worker, d) {
            if e.signing_secrets.is_empty() {
                e.signing_secrets = app_secrets.clone();
            }
            if endpoints.iter().any(|other| other.id == e.id) {
                d.error(
                    &w.at("id"),
                    format!("duplicate endpoint id {:?} in this app", e.id),
                );
            }
            endpoints.push(e);
        }
        w.finish(d);
    }
    Some(App {
        id: id?,
        key: key?,
        secret: secret?,
        enabled,
        endpoints,
    })
}

fn read_signing_secrets(o: &mut Obj, d: &mut Diagnostics) -> Vec<SigningSecret> {
    let path = o.at("signing_secret");
    o.strings("signing_secret", d)
        .iter()
        .filter_map(|s| {
            SigningSecret::parse(s)
                .map_err(|e| d.error(&path, format!("Standard Webhooks secret {e}")))
                .ok()
        })
        .collect()
}

fn read_endpoint(
    w: &mut Obj,
    index: usize,
    webhooks: &WebhookSettings,
    worker: &WorkerSettings,
    d: &mut Diagnostics,
) -> Option<Endpoint> {
    if !w.present() {
        return None;
    }
    let url = w.str("url", d);
    let lambda_function = w.nonempty_str("lambda_function", d);
    let mut l = w.obj("lambda", d);
    let lambda = if l.present() {
        let function_name = l.nonempty_str("function_name", d);
        if function_name.is_none() && l.get("function_name").is_none() {
            d.error(&l.at("function_name"), "missing");
        }
        let invocation_type = match l.str("invocation_type", d).as_deref() {
            None | Some("Event") => InvocationType::Event,
            Some("RequestResponse") => InvocationType::RequestResponse,
            Some(other) => {
                d.error(
                    &l.at("invocation_type"),
                    format!("{other:?} is not \"Event\" or \"RequestResponse\""),
                );
                InvocationType::Event
            }
        };
        let target = LambdaTarget {
            function_name: function_name.unwrap_or_default(),
            invocation_type,
            qualifier: l.nonempty_str("qualifier", d),
            region: l.nonempty_str("region", d),
            endpoint_url: l.nonempty_str("endpoint_url", d),
        };
        if let Some(u) = &target.endpoint_url {
            check_http_url(u, &l.at("endpoint_url"), d);
        }
        Some(target)
    } else {
        None
    };
    l.finish(d);
    let targets = [url.is_some(), lambda_function.is_some(), lambda.is_some()];
    let target = match (url, lambda_function, lambda) {
        (Some(u), None, None) => check_http_url(&u, &w.at("url"), d).map(EndpointTarget::Http),
        (None, Some(f), None) => Some(EndpointTarget::Lambda(LambdaTarget {
            function_name: f,
            invocation_type: InvocationType::Event,
            qualifier: None,
            region: None,
            endpoint_url: None,
        })),
        (None, None, Some(l)) => Some(EndpointTarget::Lambda(l)),
        _ => {
            let n = targets.iter().filter(|t| **t).count();
            d.error(
                &w.path,
                format!("needs exactly one of url, lambda, lambda_function (found {n})"),
            );
            None
        }
    };

    let mut event_types = 0u8;
    let types_path = w.at("event_types");
    match w.get("event_types") {
        None => d.error(&types_path, "missing; list the events this webhook wants"),
        Some(Value::Array(items)) if items.is_empty() => {
            d.error(&types_path, "is empty; list the events this webhook wants")
        }
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                match item.as_str().map(str::parse::<EventName>) {
                    Some(Ok(n)) => event_types |= n.bit(),
                    _ => d.error(
                        &format!("{types_path}[{i}]"),
                        format!(
                            "unknown event type {item}; known: {}",
                            EventName::ALL.map(EventName::as_str).join(", ")
                        ),
                    ),
                }
            }
        }
        Some(_) => d.error(&types_path, "expected an array of event names"),
    }

    let mut f = w.obj("filter", d);
    let filter = Filter {
        channel_type: f.str("channel_type", d).and_then(|t| {
            let parsed = ChannelTypeFilter::parse(&t);
            if parsed.is_none() {
                d.error(
                    &f.at("channel_type"),
                    format!(
                        "unknown channel type {t:?}; known: {}",
                        ChannelTypeFilter::NAMES.join(", ")
                    ),
                );
            }
            parsed
        }),
        channel_prefix: f.str("channel_prefix", d),
        channel_suffix: f.str("channel_suffix", d),
        channel_pattern: f.str("channel_pattern", d).and_then(|p| {
            regex::Regex::new(&p)
                .map_err(|e| d.error(&f.at("channel_pattern"), format!("invalid regex: {e}")))
                .ok()
        }),
        channel_namespace: f.nonempty_str("channel_namespace", d),
        channel_namespaces: f.string_array("channel_namespaces", d),
    };
    // A namespace never holds `:` and is never empty, so such a value could match no channel.
    let namespaces_path = f.at("channel_namespaces");
    if let Some(ns) = &filter.channel_namespace
        && ns.contains(':')
    {
        d.error(
            &f.at("channel_namespace"),
            format!("{ns:?} cannot be a namespace: a namespace ends at the first ':'"),
        );
    }
    match &filter.channel_namespaces {
        Some(list) if list.is_empty() => d.error(
            &namespaces_path,
            "is empty; it would match no channel (leave it out to match every namespace)",
        ),
        Some(list) => {
            for (i, ns) in list.iter().enumerate() {
                if ns.trim().is_empty() || ns.contains(':') {
                    d.error(
                        &format!("{namespaces_path}[{i}]"),
                        format!("{ns:?} cannot be a namespace: it must be non-empty, without ':'"),
                    );
                }
            }
        }
        None => {}
    }
    // An ignored condition would send this endpoint events it did not ask for.
    f.finish_strict(
        "a filter condition hookq does not know would be ignored and let other channels through",
        d,
    );

    let headers_path = w.at("headers");
    let mut headers = Vec::new();
    for (name, value) in w.string_map("headers", d) {
        let valid_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !valid_name {
            d.error(
                &reader::join(&headers_path, &name),
                "is not a valid header name",
            );
        } else if value.bytes().any(|b| b == b'\r' || b == b'\n') {
            d.error(
                &reader::join(&headers_path, &name),
                "header values cannot hold line breaks",
            );
        } else {
            headers.push((name, value));
        }
    }

    let mut r = w.obj("retry", d);
    let retry = read_retry(&mut r, &webhooks.retry, d);
    r.finish(d);
    let request_timeout = w
        .opt_u64("request_timeout_ms", 1, d)
        .map_or(webhooks.request_timeout, ms);
    let max_concurrency =
        w.u64("max_concurrency", worker.endpoint_concurrency as u64, 1, d) as usize;
    let signing_secrets = read_signing_secrets(w, d);
    let explicit_id = w.nonempty_str("id", d);
    let target = target?;
    Some(Endpoint {
        id: explicit_id.unwrap_or_else(|| Endpoint::derived_id(index, &target)),
        target,
        event_types,
        filter,
        headers,
        retry,
        request_timeout,
        signing_secrets,
        max_concurrency,
    })
}

fn check_http_url(u: &str, path: &str, d: &mut Diagnostics) -> Option<url::Url> {
    match url::Url::parse(u) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Some(url),
        Ok(_) => {
            let shown = redact_url(u);
            d.error(path, format!("{shown:?} is not an absolute http(s) URL"));
            None
        }
        Err(e) => {
            let shown = redact_url(u);
            d.error(
                path,
                format!("{shown:?} is not an absolute http(s) URL ({e})"),
            );
            None
        }
    }
}

impl fmt::Display for Config {
    /// The summary `hookq check-config` prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.webhooks.batching;
        writeln!(f, "queue: {}", self.queue.driver.as_str())?;
        match self.queue.driver {
            QueueDriverKind::Memory => {}
            QueueDriverKind::Redis => writeln!(
                f,
                "  redis prefix {:?}, lease {} ms",
                self.queue.redis.prefix,
                self.queue.redis.lease.as_millis()
            )?,
            QueueDriverKind::Sqs => writeln!(
                f,
                "  sqs {} in {}, visibility {} s",
                self.queue
                    .sqs
                    .queue_url
                    .as_deref()
                    .unwrap_or(&self.queue.sqs.queue_name),
                self.queue.sqs.region,
                self.queue.sqs.visibility_timeout.as_secs()
            )?,
        }
        if b.enabled {
            writeln!(
                f,
                "batching: on, window {} ms, up to {} events / {} bytes",
                b.duration.as_millis(),
                b.size,
                b.max_bytes
            )?;
        } else {
            writeln!(f, "batching: off (one event per request)")?;
        }
        let r = &self.webhooks.retry;
        writeln!(
            f,
            "retry: {}, backoff {}..{} ms, budget {} ms, attempts {}",
            if r.enabled { "on" } else { "off" },
            r.initial_backoff.as_millis(),
            r.max_backoff.as_millis(),
            r.max_elapsed.as_millis(),
            r.max_attempts
                .map_or("unlimited".to_string(), |n| n.to_string())
        )?;
        match &self.app_manager {
            AppManagerSettings::Memory => {}
            AppManagerSettings::Postgres(s) | AppManagerSettings::Mysql(s) => writeln!(
                f,
                "app manager: {}, table {:?} in {}@{}:{}/{}, cache {} s",
                self.app_manager.driver(),
                s.table_name,
                s.username,
                s.host,
                s.port,
                s.database,
                s.cache_ttl.as_secs()
            )?,
            AppManagerSettings::DynamoDb(s) => writeln!(
                f,
                "app manager: dynamodb, table {:?} in {}{}, cache {} s",
                s.table_name,
                s.region,
                s.endpoint_url
                    .as_deref()
                    .map(|u| format!(" at {}", redact_url(u)))
                    .unwrap_or_default(),
                s.cache_ttl.as_secs()
            )?,
        }
        if self.ingest.enabled {
            writeln!(f, "ingest: on in the worker, {}", self.ingest.addr)?;
        }
        writeln!(f, "apps: {}", self.apps.len())?;
        for app in &self.apps {
            let state = if app.enabled { "" } else { " (disabled)" };
            writeln!(
                f,
                "  {} (key {}){state}: {} endpoint(s)",
                app.id,
                app.key,
                app.endpoints.len()
            )?;
            for e in &app.endpoints {
                writeln!(f, "    [{}] {}", e.id, e.target.describe())?;
                let names: Vec<_> = e.event_names().iter().map(|n| n.as_str()).collect();
                writeln!(f, "      events: {}", names.join(", "))?;
                let ft = &e.filter;
                if !ft.is_empty() {
                    let mut parts = Vec::new();
                    if let Some(t) = ft.channel_type {
                        parts.push(format!("type {}", t.name()));
                    }
                    if let Some(p) = &ft.channel_prefix {
                        parts.push(format!("prefix {p:?}"));
                    }
                    if let Some(s) = &ft.channel_suffix {
                        parts.push(format!("suffix {s:?}"));
                    }
                    if let Some(p) = &ft.channel_pattern {
                        parts.push(format!("pattern {:?}", p.as_str()));
                    }
                    if let Some(ns) = &ft.channel_namespace {
                        parts.push(format!("namespace {ns:?}"));
                    }
                    if let Some(list) = &ft.channel_namespaces {
                        parts.push(format!("namespaces {list:?}"));
                    }
                    writeln!(f, "      filter: {}", parts.join(", "))?;
                }
                if !e.headers.is_empty() {
                    let names: Vec<_> = e.headers.iter().map(|(k, _)| k.as_str()).collect();
                    writeln!(f, "      headers: {}", names.join(", "))?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
