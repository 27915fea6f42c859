//! Live reload of the config file's apps under load: a new endpoint takes
//! effect, a config that fails validation is refused and the old one kept,
//! a removed endpoint's pending retries are dead-lettered, and no event is lost.

use crate::support::inproc::config;
use crate::support::process::{WorkerProcess, temp_dir};
use crate::support::queue::{producer, wait_drained};
use crate::support::receiver::{Receiver, Reply};
use crate::support::redis_server::RedisServer;
use crate::support::wait::poll;
use hookq_core::Event;
use hookq_queue::DlqFilter;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn with_webhooks(base: &Value, webhooks: Value) -> Value {
    let mut c = base.clone();
    c["app_manager"]["array"]["apps"][0]["webhooks"] = webhooks;
    c
}

/// Writes the file the worker watches (write then rename, as editors and
/// config management do, so the worker never reads half a file).
fn rewrite(path: &std::path::Path, config: &Value) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(config).unwrap()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn wait_until(what: &str, limit: Duration, check: impl Fn() -> bool) {
    let every = Duration::from_millis(50);
    poll(what, limit, every, async || {
        check().then_some(()).ok_or_else(String::new)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_reload_under_load_without_losing_events() {
    let redis = RedisServer::start();
    let r = Receiver::start(&[("key-1", "secret-1")]).await;
    r.always("/b", Reply::status(503));
    let dir = temp_dir("reload");
    let a = json!({"url": r.url("/a"), "event_types": ["client_event"], "id": "a"});
    let b = json!({"url": r.url("/b"), "event_types": ["client_event"], "id": "b"});
    let mut base = config(
        json!([{"id": "app-1", "key": "key-1", "secret": "secret-1", "webhooks": [a.clone()]}]),
        json!({"event_ids": true, "request_timeout_ms": 2000,
            "retry": {"initial_backoff_ms": 300, "max_backoff_ms": 600, "max_elapsed_time_ms": 60000}}),
    );
    base["queue"] = json!({"driver": "redis", "redis": {"url": redis.url(), "prefix": "reload"}});
    let w = WorkerProcess::start(&dir, "w1", &base).await;
    let path = dir.join("w1.json");
    // The worker's own copy has its admin address; keep it in every rewrite.
    let base: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();

    let (producer, queue) = producer(&base).await;
    let published = Arc::new(AtomicUsize::new(0));
    let load = {
        let (producer, published) = (producer.clone(), published.clone());
        tokio::spawn(async move {
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(6) {
                let n = published.load(Ordering::SeqCst);
                let e = Event::client_event("private-c", "client-e", n.to_string(), "1.1");
                producer.publish("app-1", e).await.unwrap();
                published.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    // A new endpoint takes effect.
    tokio::time::sleep(Duration::from_millis(500)).await;
    rewrite(&path, &with_webhooks(&base, json!([a.clone(), b.clone()])));
    wait_until(
        "requests at the added endpoint",
        Duration::from_secs(10),
        || !r.requests("/b").is_empty(),
    )
    .await;

    // A config that fails validation is refused; the old apps stay.
    rewrite(
        &path,
        &with_webhooks(
            &base,
            json!([a.clone(), {"url": r.url("/c"), "event_types": []}]),
        ),
    );
    wait_until("the refusal in the log", Duration::from_secs(10), || {
        w.log_text().contains("config reload refused")
    })
    .await;
    let b_before = r.requests("/b").len();
    wait_until(
        "more attempts at /b under the kept config",
        Duration::from_secs(10),
        || r.requests("/b").len() > b_before,
    )
    .await;

    // Removing /b dead-letters its pending retries.
    rewrite(&path, &with_webhooks(&base, json!([a.clone()])));
    load.await.unwrap();
    let total = published.load(Ordering::SeqCst);
    wait_until("every event at /a", Duration::from_secs(30), || {
        let seen: HashSet<String> = r
            .delivered_events("/a")
            .iter()
            .map(|e| e["data"].as_str().unwrap().to_string())
            .collect();
        seen.len() == total
    })
    .await;
    wait_drained(&*queue, Duration::from_secs(30)).await;
    let dead = queue.dlq_list(&DlqFilter::default()).await.unwrap();
    assert!(
        !dead.is_empty(),
        "the retries pending for /b were dead-lettered"
    );
    for e in &dead {
        assert_eq!(e.reason, "endpoint removed: \"b\" is no longer configured");
        assert_eq!(e.endpoint.as_deref(), Some("b"));
    }
    assert!(
        r.requests("/c").is_empty(),
        "the refused config never took effect"
    );
    eprintln!(
        "{total} events published; {} retries of /b dead-lettered after its removal",
        dead.len()
    );
}
