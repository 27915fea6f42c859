//! The `queue` section (`queue.driver`, `queue.max_receives`, `queue.memory`,
//! `queue.redis`, `queue.sqs`, Sockudo's other drivers and `queue.reliability`), with
//! `database.redis`, which Sockudo's Redis queue connects with, and the check
//! that a job's hold outlives its delivery.

use super::apps::check_http_url;
use super::reader::{Obj, join};
use super::sqs_limits::{MAX_RECEIVE_MESSAGES, MAX_VISIBILITY_SECONDS, MAX_WAIT_SECONDS};
use super::{Config, Diagnostics, Problem, ms};
use crate::endpoint::redact_url;
use serde_json::Value;
use std::fmt;
use std::time::Duration;

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
    /// Redis Sentinel: when set, the primary's address is asked of the
    /// sentinels, and `url` gives only the scheme, credentials and database.
    pub sentinel: Option<SentinelSettings>,
    /// Redis Cluster: the seed nodes' URLs (`queue.redis.cluster_mode: true`
    /// seeds with `url`; Sockudo's `queue.driver: "redis-cluster"` with
    /// `queue.redis_cluster.nodes`). The client finds the other nodes.
    pub cluster: Option<Vec<String>>,
    /// `queue.redis.shards`: hash-tagged key sets the queue is split into
    /// (default 16 on a cluster, 1 on one server).
    pub shards: usize,
    /// `queue.redis.replicas_ack`: replicas that must have every push and
    /// ack (`WAIT`) before it counts as done; 0 (the default) waits for none.
    pub replicas_ack: u32,
    /// `queue.redis.replicas_ack_timeout_ms`: how long that `WAIT` may take.
    pub replicas_ack_timeout: Duration,
}

impl Default for RedisSettings {
    /// One local server, the defaults of an empty `queue.redis`, a 60 s lease.
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            prefix: "hookq".into(),
            concurrency: 5,
            lease: Duration::from_secs(60),
            pool_size: 8,
            sentinel: None,
            cluster: None,
            shards: 1,
            replicas_ack: 0,
            replicas_ack_timeout: Duration::from_millis(DEFAULT_REPLICAS_ACK_TIMEOUT_MS),
        }
    }
}

/// `queue.redis.shards` on a cluster when unset.
pub const DEFAULT_CLUSTER_SHARDS: usize = 16;
/// The most `queue.redis.shards`.
pub const MAX_SHARDS: u64 = 1024;
/// `queue.redis.replicas_ack_timeout_ms` when unset.
const DEFAULT_REPLICAS_ACK_TIMEOUT_MS: u64 = 1000;

/// `queue.redis.sentinels` (or Sockudo's `database.redis.sentinels`) and
/// the keys that go with it.
#[derive(Clone)]
pub struct SentinelSettings {
    /// The sentinels' `(host, port)`, asked in this order.
    pub sentinels: Vec<(String, u16)>,
    /// The master name the sentinels monitor (`sentinel monitor <name> …`).
    pub master: String,
    /// The user name the sentinels want (`AUTH <username> <password>`).
    pub username: Option<String>,
    /// The password the sentinels want; `Debug` hides it.
    pub password: Option<String>,
}

impl fmt::Debug for SentinelSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SentinelSettings")
            .field("sentinels", &self.sentinels)
            .field("master", &self.master)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// The master name when none is given, as in Sockudo.
pub const DEFAULT_SENTINEL_MASTER: &str = "mymaster";
/// A sentinel's port when an entry gives none.
const DEFAULT_SENTINEL_PORT: u64 = 26379;

/// A list of sentinels, `[{"host": …, "port": …}, …]` (Sockudo's shape);
/// `None` when absent or empty.
fn read_sentinels(o: &mut Obj, d: &mut Diagnostics) -> Option<Vec<(String, u16)>> {
    let mut out = Vec::new();
    for (path, v) in o.array("sentinels", d) {
        let mut e = Obj::new(path.clone(), Some(v), d);
        let host = e.nonempty_str("host", d);
        let port = e.u64("port", DEFAULT_SENTINEL_PORT, 1, d);
        e.finish(d);
        if port > u64::from(u16::MAX) {
            d.error(
                &join(&path, "port"),
                format!("must be at most {}", u16::MAX),
            );
            continue;
        }
        match host {
            Some(host) => out.push((host, port as u16)),
            None if v.is_object() => d.error(&join(&path, "host"), "a sentinel needs its host"),
            None => {}
        }
    }
    (!out.is_empty()).then_some(out)
}

impl fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &redact_url(&self.url))
            .field("prefix", &self.prefix)
            .field("concurrency", &self.concurrency)
            .field("lease", &self.lease)
            .field("pool_size", &self.pool_size)
            .field("sentinel", &self.sentinel)
            .field(
                "cluster",
                &self
                    .cluster
                    .as_ref()
                    .map(|nodes| nodes.iter().map(|n| redact_url(n)).collect::<Vec<_>>()),
            )
            .field("shards", &self.shards)
            .field("replicas_ack", &self.replicas_ack)
            .field("replicas_ack_timeout", &self.replicas_ack_timeout)
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
    /// The redrive policy's `maxReceiveCount` of a queue the driver
    /// creates: receives after which SQS itself moves a message to the DLQ.
    /// By default one more than `queue.max_receives`, so the worker's rule
    /// dead-letters a job with its reason first and SQS's redrive is only the
    /// backstop.
    pub max_receive_count: u32,
}

/// `queue`.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    /// `queue.driver`.
    pub driver: QueueDriverKind,
    /// `queue.max_receives`: a job received more times than this without
    /// being settled (its worker died on it, or its retry or dead letter
    /// could not be written) is dead-lettered when received again, on every
    /// driver.
    pub max_receives: u32,
    /// `queue.memory`.
    pub memory: MemoryQueueSettings,
    /// `queue.redis`.
    pub redis: RedisSettings,
    /// `queue.sqs`.
    pub sqs: SqsSettings,
}

/// `queue.max_receives` when unset: SQS's usual redrive count.
const DEFAULT_MAX_RECEIVES: u32 = 10;

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

pub(super) fn read_queue(
    o: &mut Obj,
    database: &mut Obj,
    busiest_hold: Duration,
    d: &mut Diagnostics,
) -> QueueSettings {
    let driver_name = o.str("driver", d);
    let driver = match driver_name.as_deref() {
        None | Some("memory") => QueueDriverKind::Memory,
        // Sockudo's Redis Cluster driver is the Redis driver on a cluster.
        Some("redis" | "redis-cluster") => QueueDriverKind::Redis,
        Some("sqs") => QueueDriverKind::Sqs,
        Some(other) => {
            let message = if other == "none" {
                "Sockudo's \"none\" (no queue) leaves hookq nothing to read; use \"memory\", \"redis\" or \"sqs\"".to_string()
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
    let max_receives = o
        .u64("max_receives", DEFAULT_MAX_RECEIVES.into(), 1, d)
        .min(u64::from(u32::MAX - 1)) as u32;
    // Settings of Sockudo's other drivers: unused, as they are by Sockudo
    // when their driver is not the one chosen (choosing one is an error above).
    let sockudo_cluster = driver_name.as_deref() == Some("redis-cluster");
    o.ignore(&[
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
        db.ignore(&["key_prefix", "cluster_nodes", "cluster"]);
        // Through Sentinel the host is only a stand-in: the sentinels name the primary.
        let sentinels = matches!(db.get("sentinels"), Some(Value::Array(a)) if !a.is_empty());
        host.or_else(|| sentinels.then(|| "127.0.0.1".to_string()))
            .and_then(|host| {
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
    let explicit_url = r.str("url", d).or(r.str("url_override", d));
    // Sentinel: hookq's own keys first, then Sockudo's `database.redis`
    // (used, as the rest of that section is, only without an explicit URL).
    let db_sentinels = read_sentinels(&mut db, d);
    let db_master = db.nonempty_str("name", d);
    let db_sentinel_password = db.str("sentinel_password", d).filter(|p| !p.is_empty());
    let db_sentinel_username = db.str("sentinel_username", d).filter(|u| !u.is_empty());
    db.finish(d);
    let q_sentinels = read_sentinels(&mut r, d);
    let q_master = r.nonempty_str("sentinel_master", d);
    let q_sentinel_password = r.str("sentinel_password", d).filter(|p| !p.is_empty());
    let q_sentinel_username = r.str("sentinel_username", d).filter(|u| !u.is_empty());
    let sentinel = match (q_sentinels, db_sentinels) {
        (Some(sentinels), _) => Some(SentinelSettings {
            sentinels,
            master: q_master
                .or(db_master)
                .unwrap_or_else(|| DEFAULT_SENTINEL_MASTER.into()),
            username: q_sentinel_username.or(db_sentinel_username),
            password: q_sentinel_password.or(db_sentinel_password),
        }),
        (None, Some(sentinels)) if explicit_url.is_none() => Some(SentinelSettings {
            sentinels,
            master: db_master.unwrap_or_else(|| DEFAULT_SENTINEL_MASTER.into()),
            username: db_sentinel_username,
            password: db_sentinel_password,
        }),
        _ => {
            for (key, set) in [
                ("sentinel_master", q_master.is_some()),
                ("sentinel_password", q_sentinel_password.is_some()),
                ("sentinel_username", q_sentinel_username.is_some()),
            ] {
                if set {
                    d.warnings.push(Problem {
                        path: r.at(key),
                        message: "not used without queue.redis.sentinels".into(),
                    });
                }
            }
            None
        }
    };
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
    // Redis Cluster: `queue.redis.cluster_mode` seeds with the URL;
    // Sockudo's "redis-cluster" driver reads `queue.redis_cluster`.
    let cluster_mode = r.bool("cluster_mode", false, d);
    if !sockudo_cluster {
        // Sockudo's section for its other driver: unused, as by Sockudo.
        o.ignore(&["redis_cluster"]);
    }
    let mut rc = if sockudo_cluster {
        o.obj("redis_cluster", d)
    } else {
        Obj::new(o.at("redis_cluster"), None, d)
    };
    let rc_nodes: Vec<String> = rc
        .array("nodes", d)
        .into_iter()
        .filter_map(|(path, v)| match v.as_str() {
            Some(n) if n.starts_with("redis://") || n.starts_with("rediss://") => {
                Some(n.to_string())
            }
            Some(_) => {
                d.error(&path, "must start with redis:// or rediss://");
                None
            }
            None => {
                d.error(&path, "must be a node URL, e.g. \"redis://10.0.0.1:6379\"");
                None
            }
        })
        .collect();
    let rc_prefix = rc.nonempty_str("prefix", d);
    rc.ignore(&["concurrency", "request_timeout_ms"]);
    rc.finish(d);
    let cluster = if sockudo_cluster {
        Some(if rc_nodes.is_empty() {
            vec![url.clone()]
        } else {
            rc_nodes
        })
    } else {
        cluster_mode.then(|| vec![url.clone()])
    };
    if cluster.is_some() && sentinel.is_some() {
        d.error(
            &r.at("sentinels"),
            "a Redis Cluster has no sentinels: use either the cluster or queue.redis.sentinels",
        );
    }
    let shards = r.opt_u64("shards", 1, d).map(|n| {
        if n > MAX_SHARDS {
            d.error(&r.at("shards"), format!("must be at most {MAX_SHARDS}"));
        }
        n.min(MAX_SHARDS) as usize
    });
    let replicas_ack = r.u64("replicas_ack", 0, 0, d);
    if replicas_ack > 64 {
        d.error(&r.at("replicas_ack"), "must be at most 64 replicas");
    }
    let replicas_ack_timeout = r.u64(
        "replicas_ack_timeout_ms",
        DEFAULT_REPLICAS_ACK_TIMEOUT_MS,
        1,
        d,
    );
    let redis = RedisSettings {
        url,
        prefix: r
            .nonempty_str("prefix", d)
            .or(if sockudo_cluster { rc_prefix } else { None })
            .unwrap_or_else(|| "hookq".into()),
        concurrency: concurrency.unwrap_or(5) as usize,
        lease: r.opt_u64("lease_ms", 1, d).map_or(default_lease, ms),
        pool_size: r.u64("pool_size", 8, 1, d) as usize,
        shards: shards.unwrap_or(if cluster.is_some() {
            DEFAULT_CLUSTER_SHARDS
        } else {
            1
        }),
        sentinel,
        cluster,
        replicas_ack: replicas_ack.min(64) as u32,
        replicas_ack_timeout: ms(replicas_ack_timeout),
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
        wait_time_seconds: s.u64("wait_time_seconds", MAX_WAIT_SECONDS.into(), 0, d) as u32,
        max_messages: s.u64("max_messages", MAX_RECEIVE_MESSAGES.into(), 1, d) as u32,
        concurrency: s.u64("concurrency", 4, 1, d) as usize,
        dead_letter_queue_url: s.nonempty_str("dead_letter_queue_url", d),
        fifo: s.bool("fifo", false, d),
        message_group_id: s.nonempty_str("message_group_id", d),
        max_receive_count: s
            .opt_u64("max_receive_count", 1, d)
            .map_or(max_receives + 1, |n| n.min(u64::from(u32::MAX)) as u32),
    };
    if driver == QueueDriverKind::Sqs && sqs.max_receive_count <= max_receives {
        d.warnings.push(Problem {
            path: s.at("max_receive_count"),
            message: format!(
                "SQS's redrive moves a job to the DLQ after {} receives, before queue.max_receives ({max_receives}) lets the worker dead-letter it with its reason; leave it unset (queue.max_receives + 1) or set it above queue.max_receives",
                sqs.max_receive_count
            ),
        });
    }
    if let Some(u) = &sqs.endpoint_url {
        check_http_url(u, &s.at("endpoint_url"), d);
    }
    if sqs.wait_time_seconds > MAX_WAIT_SECONDS {
        d.error(
            &s.at("wait_time_seconds"),
            format!("must be {MAX_WAIT_SECONDS} or less (SQS's limit)"),
        );
    }
    if sqs.max_messages > MAX_RECEIVE_MESSAGES {
        d.error(
            &s.at("max_messages"),
            format!("must be {MAX_RECEIVE_MESSAGES} or less (SQS's limit)"),
        );
    }
    if sqs.visibility_timeout > Duration::from_secs(MAX_VISIBILITY_SECONDS) {
        d.error(
            &s.at("visibility_timeout"),
            format!("must be {MAX_VISIBILITY_SECONDS} seconds or less (SQS's limit)"),
        );
    }
    s.finish(d);
    o.finish(d);
    QueueSettings {
        driver,
        max_receives,
        memory,
        redis,
        sqs,
    }
}

pub(super) fn check_lease(c: &Config, d: &mut Diagnostics) {
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
