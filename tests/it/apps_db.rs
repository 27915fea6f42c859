//! Apps from Sockudo's applications table (the `pgsql`/`postgres`, `mysql`
//! and `dynamodb` app managers), each against a real server the suite
//! starts: PostgreSQL and MariaDB from Debian's packages in temporary
//! directories, DynamoDB through moto's server.
//!
//! One scenario runs against each, with a worker in-process over a memory
//! queue and `cache_ttl` 1 s: events are delivered to the table's webhooks;
//! an app whose `webhooks` is invalid, and a disabled app, have their jobs
//! dead-lettered with the reason while the others keep flowing; a change in
//! the table takes effect within the TTL; a database stopped mid-run leaves
//! the cached apps serving.

use crate::support::inproc::config;
use crate::support::mariadb::MariaDb;
use crate::support::moto::Moto;
use crate::support::postgres::Postgres;
use crate::support::queue::{open, parse, wait_dlq};
use crate::support::receiver::Receiver;
use crate::support::wait::{poll, retry};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, KeySchemaElement, KeyType, ProvisionedThroughput,
    ScalarAttributeType,
};
use hookq_core::job::{EventJob, Job};
use hookq_core::{Event, LookupError};
use hookq_producer::Producer;
use hookq_queue::{Outgoing, QueueDriver};
use hookq_worker::{Metrics, Worker};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Sockudo's PostgreSQL applications table (the columns hookq reads, plus a few of Sockudo's).
const PG_SCHEMA: &str = r#"CREATE TABLE applications (
    id VARCHAR(255) PRIMARY KEY,
    "key" VARCHAR(255) UNIQUE NOT NULL,
    secret VARCHAR(255) NOT NULL,
    max_connections INTEGER NOT NULL DEFAULT 0,
    enable_client_messages BOOLEAN NOT NULL DEFAULT FALSE,
    enabled BOOLEAN NOT NULL DEFAULT TRUE,
    webhooks JSONB,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
)"#;

/// Sockudo's MySQL applications table (as above).
const MYSQL_SCHEMA: &str = r#"CREATE TABLE applications (
    id VARCHAR(255) PRIMARY KEY,
    `key` VARCHAR(255) UNIQUE NOT NULL,
    secret VARCHAR(255) NOT NULL,
    max_connections INT UNSIGNED NOT NULL DEFAULT 0,
    enable_client_messages BOOLEAN NOT NULL DEFAULT FALSE,
    enabled BOOLEAN NOT NULL DEFAULT TRUE,
    webhooks JSON,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP
)"#;

enum Db {
    Pg(Postgres, sqlx::PgPool),
    My(MariaDb, sqlx::MySqlPool),
    Dynamo(aws_sdk_dynamodb::Client, String),
}

/// A row of the applications table.
struct Row {
    id: String,
    key: String,
    secret: String,
    enabled: bool,
    webhooks: Value,
}

/// App `app-{n}`, key `key-{n}`, secret `secret-{n}`.
fn row(n: usize, enabled: bool, webhooks: Value) -> Row {
    Row {
        id: format!("app-{n}"),
        key: format!("key-{n}"),
        secret: format!("secret-{n}"),
        enabled,
        webhooks,
    }
}

impl Db {
    async fn postgres() -> Db {
        let pg = Postgres::start();
        let url = pg.url();
        let pool = connect_patiently(|| sqlx::PgPool::connect(&url)).await;
        sqlx::query(PG_SCHEMA).execute(&pool).await.unwrap();
        Db::Pg(pg, pool)
    }

    async fn mariadb() -> Db {
        let db = MariaDb::start();
        let url = db.url();
        let root = connect_patiently(|| sqlx::MySqlPool::connect(&url)).await;
        sqlx::query("CREATE DATABASE sockudo")
            .execute(&root)
            .await
            .unwrap();
        let pool = sqlx::MySqlPool::connect(&format!("{}/sockudo", db.url()))
            .await
            .unwrap();
        sqlx::query(MYSQL_SCHEMA).execute(&pool).await.unwrap();
        Db::My(db, pool)
    }

    async fn dynamodb(table: &str) -> Db {
        let client = aws_sdk_dynamodb::Client::new(&Moto::shared().sdk_config().await);
        client
            .create_table()
            .table_name(table)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name("id")
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .unwrap(),
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name("id")
                    .key_type(KeyType::Hash)
                    .build()
                    .unwrap(),
            )
            .provisioned_throughput(
                ProvisionedThroughput::builder()
                    .read_capacity_units(5)
                    .write_capacity_units(5)
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .unwrap();
        Db::Dynamo(client, table.to_string())
    }

    /// A test config whose apps come from this database (see [`Db::settings`]).
    fn config(&self) -> Value {
        let mut c = config(json!([]), json!({}));
        let (app_manager, database) = self.settings();
        c["app_manager"] = app_manager;
        c["database"] = database;
        c
    }

    /// The config's `app_manager` and `database` sections for this database, with `cache_ttl` 1 s.
    fn settings(&self) -> (Value, Value) {
        match self {
            Db::Pg(pg, _) => {
                let mut s = pg.settings();
                s["cache_ttl"] = json!(1);
                (json!({"driver": "pgsql"}), json!({"postgres": s}))
            }
            Db::My(db, _) => {
                let mut s = db.settings();
                s["cache_ttl"] = json!(1);
                (json!({"driver": "mysql"}), json!({"mysql": s}))
            }
            Db::Dynamo(_, table) => (
                json!({"driver": "dynamodb"}),
                json!({"dynamodb": {"table_name": table, "region": "us-east-1",
                    "endpoint_url": Moto::shared().endpoint_url(), "cache_ttl": 1}}),
            ),
        }
    }

    async fn upsert(&self, r: Row) {
        let webhooks = r.webhooks.to_string();
        match self {
            Db::Pg(_, pool) => {
                sqlx::query(
                    r#"INSERT INTO applications (id, "key", secret, enabled, webhooks)
                       VALUES ($1, $2, $3, $4, $5::jsonb)
                       ON CONFLICT (id) DO UPDATE SET "key" = $2, secret = $3, enabled = $4,
                         webhooks = $5::jsonb, updated_at = now()"#,
                )
                .bind(&r.id)
                .bind(&r.key)
                .bind(&r.secret)
                .bind(r.enabled)
                .bind(&webhooks)
                .execute(pool)
                .await
                .unwrap();
            }
            Db::My(_, pool) => {
                sqlx::query(
                    "INSERT INTO applications (id, `key`, secret, enabled, webhooks)
                     VALUES (?, ?, ?, ?, ?)
                     ON DUPLICATE KEY UPDATE `key` = VALUES(`key`), secret = VALUES(secret),
                       enabled = VALUES(enabled), webhooks = VALUES(webhooks)",
                )
                .bind(&r.id)
                .bind(&r.key)
                .bind(&r.secret)
                .bind(r.enabled)
                .bind(&webhooks)
                .execute(pool)
                .await
                .unwrap();
            }
            Db::Dynamo(client, table) => {
                client
                    .put_item()
                    .table_name(table)
                    .item("id", AttributeValue::S(r.id))
                    .item("key", AttributeValue::S(r.key))
                    .item("secret", AttributeValue::S(r.secret))
                    .item("enabled", AttributeValue::Bool(r.enabled))
                    .item("webhooks", AttributeValue::S(webhooks))
                    .send()
                    .await
                    .unwrap();
            }
        }
    }

    /// Stops the database server (for DynamoDB: deletes the table, so every read fails).
    async fn stop(&mut self) {
        match self {
            Db::Pg(pg, pool) => {
                pool.close().await;
                pg.stop();
            }
            Db::My(db, pool) => {
                pool.close().await;
                db.stop();
            }
            Db::Dynamo(client, table) => {
                client
                    .delete_table()
                    .table_name(table.as_str())
                    .send()
                    .await
                    .unwrap();
            }
        }
    }
}

/// Connects once the server takes connections, within 30 s.
async fn connect_patiently<P, Fut>(connect: impl FnMut() -> Fut) -> P
where
    Fut: Future<Output = Result<P, sqlx::Error>>,
{
    let (limit, every) = (Duration::from_secs(30), Duration::from_millis(200));
    retry("connect", limit, every, |_| true, connect).await
}

fn hook(url: String) -> Value {
    json!([{"url": url, "event_types": ["channel_occupied"]}])
}

/// A job for `app_id` pushed straight onto the queue, as a producer that knows nothing of the app would.
async fn push_raw(queue: &Arc<dyn QueueDriver>, app_id: &str, channel: &str) {
    let job = EventJob::new(app_id, Event::channel_occupied(channel));
    let id = job.id.clone();
    queue
        .push(vec![Outgoing::now(id, app_id, Job::Event(job).encode())])
        .await
        .unwrap();
}

/// Publishes `n` events for `app-1`, one at a time, on channels `{prefix}-{i}`.
async fn publish(producer: &Producer, prefix: &str, n: usize) {
    for i in 0..n {
        producer
            .publish("app-1", Event::channel_occupied(format!("{prefix}-{i}")))
            .await
            .unwrap();
    }
}

/// Publishes as [`publish`] does and waits until `path` has `n` more events
/// delivered; returns how many it has then.
async fn publish_and_wait(
    producer: &Producer,
    r: &Receiver,
    path: &str,
    prefix: &str,
    n: usize,
    limit: Duration,
) -> usize {
    let want = r.delivered_events(path).len() + n;
    publish(producer, prefix, n).await;
    r.wait_for(&format!("{n} more events on {path}"), limit, |r| {
        r.delivered_events(path).len() >= want
    })
    .await;
    r.delivered_events(path).len()
}

async fn scenario(mut db: Db) {
    let r = Receiver::start(&[("key-1", "secret-1"), ("key-3", "secret-3")]).await;
    db.upsert(row(1, true, hook(r.url("/a")))).await;
    let invalid = json!([{"url": r.url("/bad"), "event_types": ["channel_occupied"]},
                         {"url": r.url("/bad"), "event_types": ["no_such_event"]}]);
    db.upsert(row(2, true, invalid)).await;
    db.upsert(row(3, false, hook(r.url("/c")))).await;

    let config = Arc::new(parse(&db.config()));
    let registry = hookq_apps::open(&config).await.unwrap();
    let queue = open(&config).await;
    let worker = Worker::with_apps(
        config.clone(),
        registry.clone(),
        queue.clone(),
        Arc::new(Metrics::new()),
    )
    .unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(worker.run(stop.clone()));
    let producer = Producer::with_apps(queue.clone(), registry.clone());

    // Delivery from the table's webhooks, signed with the table's key and secret.
    let wait = Duration::from_secs(15);
    assert_eq!(
        publish_and_wait(&producer, &r, "/a", "first", 5, wait).await,
        5
    );
    let req = &r.requests("/a")[0];
    assert_eq!(req.header("x-pusher-key"), Some("key-1"));
    assert!(registry.is_ready());

    // Invalid webhooks and a disabled app: dead-lettered with the reason; app-1 flows on.
    push_raw(&queue, "app-2", "x").await;
    push_raw(&queue, "app-2", "y").await;
    push_raw(&queue, "app-3", "z").await;
    assert_eq!(
        publish_and_wait(&producer, &r, "/a", "second", 2, wait).await,
        7
    );
    let dlq = wait_dlq(&*queue, 3, wait).await;
    assert_eq!(dlq.len(), 3, "{dlq:?}");
    let invalid: Vec<_> = dlq
        .iter()
        .filter(|e| e.app_id.as_deref() == Some("app-2"))
        .collect();
    assert_eq!(invalid.len(), 2, "{dlq:?}");
    for e in &invalid {
        assert!(e.reason.contains("app-2"), "{}", e.reason);
        assert!(
            e.reason.contains("webhooks[1].event_types[0]"),
            "{}",
            e.reason
        );
    }
    let disabled: Vec<_> = dlq
        .iter()
        .filter(|e| e.app_id.as_deref() == Some("app-3"))
        .collect();
    assert_eq!(disabled.len(), 1, "{dlq:?}");
    assert_eq!(disabled[0].reason, "app disabled");
    assert!(r.requests("/bad").is_empty() && r.requests("/c").is_empty());
    match producer
        .publish("app-2", Event::channel_occupied("p"))
        .await
    {
        Err(e) => assert!(e.to_string().contains("webhooks[1]"), "{e}"),
        Ok(p) => panic!("published for an invalid app: {p:?}"),
    }

    // A change in the table takes effect within cache_ttl (1 s).
    db.upsert(row(1, true, hook(r.url("/b")))).await;
    let changed = Instant::now();
    poll(
        "the change",
        Duration::from_secs(5),
        Duration::ZERO,
        async || {
            publish(&producer, "moved", 1).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            if r.requests("/b").is_empty() {
                Err("the change never took effect".into())
            } else {
                Ok(())
            }
        },
    )
    .await;
    let took = changed.elapsed();
    assert!(took < Duration::from_millis(2500), "change took {took:?}");

    // The database stops: cached apps keep serving, even past their TTL.
    db.stop().await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    publish_and_wait(&producer, &r, "/b", "down", 3, Duration::from_secs(20)).await;
    assert!(
        registry.is_ready(),
        "cached apps resolve, so the worker is ready"
    );
    // An app never seen cannot be resolved: unavailable, and not ready.
    match registry.app("never-seen").await {
        Err(LookupError::Unavailable(_)) => {}
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(!registry.is_ready());

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_apps_deliver_reload_and_survive_an_outage() {
    scenario(Db::postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_apps_deliver_reload_and_survive_an_outage() {
    scenario(Db::mariadb().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_apps_deliver_reload_and_survive_an_outage() {
    let table = format!("apps-{}", hookq_core::new_id("t"));
    scenario(Db::dynamodb(&table).await).await;
}

/// The `hookq worker` binary with `app_manager.driver` `pgsql`: delivers to
/// the table's webhooks, and `/ready` stays 200 while the database is down
/// and every app it is asked for is cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_binary_reads_apps_from_postgres() {
    use crate::support::process::{WorkerProcess, temp_dir};
    use crate::support::redis_server::RedisServer;

    let redis = RedisServer::start();
    let mut db = Db::postgres().await;
    let r = Receiver::start(&[("key-1", "secret-1")]).await;
    db.upsert(row(1, true, hook(r.url("/a")))).await;
    let mut c = db.config();
    c["queue"] = json!({"driver": "redis", "redis": {"url": redis.url(), "prefix": "appsdb"}});
    let dir = temp_dir("apps-db-worker");
    let w = WorkerProcess::start(&dir, "w1", &c).await;

    let pconfig = Arc::new(parse(&c));
    let queue = open(&pconfig).await;
    let producer = Producer::with_apps(queue, hookq_apps::open(&pconfig).await.unwrap());
    let wait = Duration::from_secs(20);
    assert_eq!(
        publish_and_wait(&producer, &r, "/a", "bin", 3, wait).await,
        3
    );
    assert_eq!(w.get("/ready").await.map(|(s, _)| s), Some(200));

    db.stop().await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        publish_and_wait(&producer, &r, "/a", "down", 2, wait).await,
        5
    );
    assert_eq!(
        w.get("/ready").await.map(|(s, _)| s),
        Some(200),
        "{}",
        w.log_text()
    );
}

/// Sockudo and hookq sharing one applications table: Sockudo's `webhooks`
/// column points at hookq's ingest, hookq reads its own endpoints from the
/// column `webhooks_column` names, and an app whose hookq endpoints point
/// back at the ingest is refused with the reason.
#[tokio::test]
async fn a_shared_table_gives_hookq_a_webhooks_column_of_its_own() {
    let mut db = Db::postgres().await;
    let Db::Pg(_, pool) = &db else { unreachable!() };
    sqlx::query("ALTER TABLE applications ADD COLUMN hookq_webhooks JSONB")
        .execute(pool)
        .await
        .unwrap();
    let ingest = "http://127.0.0.1:8080/pusher/webhooks";
    for (id, key, hookq) in [
        ("app-1", "key-1", "https://backend.example.com/hooks"),
        ("app-2", "key-2", ingest),
    ] {
        sqlx::query(
            r#"INSERT INTO applications (id, "key", secret, webhooks, hookq_webhooks)
               VALUES ($1, $2, 's', $3::jsonb, $4::jsonb)"#,
        )
        .bind(id)
        .bind(key)
        .bind(hook(ingest.into()).to_string())
        .bind(hook(hookq.into()).to_string())
        .execute(pool)
        .await
        .unwrap();
    }
    let registry = async |column: Option<&str>| {
        let mut c = db.config();
        if let Some(column) = column {
            c["database"]["postgres"]["webhooks_column"] = json!(column);
        }
        hookq_apps::open(&Arc::new(parse(&c))).await.unwrap()
    };
    let loop_reason = |e: LookupError| match e {
        LookupError::Invalid { reason, .. } => reason,
        other => panic!("expected an invalid app, got {other:?}"),
    };

    let own = registry(Some("hookq_webhooks")).await;
    let app = own.app("app-1").await.unwrap();
    assert_eq!(
        app.endpoints[0].target.describe(),
        "https://backend.example.com/hooks"
    );
    let reason = loop_reason(own.app_by_key("key-2").await.unwrap_err());
    assert!(
        reason.contains("webhooks[0].url: points at hookq's own ingest"),
        "{reason}"
    );
    // Reading Sockudo's column, every app would loop: refused, not delivered.
    let shared = registry(None).await;
    let reason = loop_reason(shared.app("app-1").await.unwrap_err());
    assert!(reason.contains("points at hookq's own ingest"), "{reason}");
    // A fast shutdown: a server that waits for its clients would wait for ever.
    drop((own, shared));
    db.stop().await;
}
