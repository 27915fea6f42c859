//! Worker processes on one real redis-server: a SIGKILLed worker loses
//! nothing, a flaky receiver gets everything without re-sends to endpoints
//! that succeeded, a Redis restart is survived, a raw `LPUSH` from another
//! language is delivered, and the DLQ commands work from the CLI.

use crate::support::inproc::config;
use crate::support::process::{WorkerProcess, hookq, temp_dir, write_config};
use crate::support::queue::{producer, wait_drained};
use crate::support::receiver::{Receiver, Reply};
use crate::support::redis_server::RedisServer;
use crate::support::wait::{poll, retry};
use hookq_core::Event;
use hookq_producer::Producer;
use hookq_queue::redis::ready_key;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

fn apps(r: &Receiver, n: usize, endpoints_per_app: usize) -> Value {
    let apps: Vec<Value> = (0..n)
        .map(|i| {
            let webhooks: Vec<Value> = (0..endpoints_per_app)
                .map(|e| json!({"url": r.url(&format!("/app-{i}/ep-{e}")), "event_types": ["client_event"], "id": format!("ep-{e}")}))
                .collect();
            json!({"id": format!("app-{i}"), "key": format!("key-{i}"), "secret": format!("secret-{i}"), "webhooks": webhooks})
        })
        .collect();
    Value::Array(apps)
}

async fn receiver(n_apps: usize) -> Receiver {
    let keys: Vec<(String, String)> = (0..n_apps)
        .map(|i| (format!("key-{i}"), format!("secret-{i}")))
        .collect();
    let refs: Vec<(&str, &str)> = keys.iter().map(|(k, s)| (k.as_str(), s.as_str())).collect();
    Receiver::start(&refs).await
}

/// A config on `redis` with a short lease, so a killed worker's jobs return quickly.
fn redis_config(redis: &RedisServer, prefix: &str, apps: Value, max_held: usize) -> Value {
    let mut c = config(
        apps,
        json!({"event_ids": true, "request_timeout_ms": 2000,
        "retry": {"initial_backoff_ms": 100, "max_backoff_ms": 500, "max_elapsed_time_ms": 60000}}),
    );
    c["queue"] = json!({"driver": "redis", "redis": {"url": redis.url(), "prefix": prefix, "lease_ms": 3000}});
    c["worker"]["max_held_jobs"] = json!(max_held);
    c
}

/// Publishes client events numbered `range` round-robin over `n_apps`, each
/// carrying its number as `data`, in chunks.
async fn publish(p: &Producer, n_apps: usize, range: std::ops::Range<usize>, chunk: usize) {
    let mut n = range.start;
    while n < range.end {
        let upto = (n + chunk).min(range.end);
        let mut by_app: HashMap<usize, Vec<Event>> = HashMap::new();
        for i in n..upto {
            by_app
                .entry(i % n_apps)
                .or_default()
                .push(Event::client_event(
                    format!("private-c{}", i % 7),
                    "client-e",
                    i.to_string(),
                    "1.1",
                ));
        }
        for (app, events) in by_app {
            // Redis may be restarting: keep trying, a publish is all or nothing.
            let app = format!("app-{app}");
            let (limit, every) = (Duration::from_secs(30), Duration::from_millis(100));
            retry(
                "publish",
                limit,
                every,
                |_| true,
                || p.publish_batch(&app, events.clone()),
            )
            .await;
        }
        n = upto;
    }
}

/// (distinct events delivered, total deliveries) over every path, from `data`.
fn delivered(r: &Receiver) -> (usize, usize) {
    let mut distinct = HashSet::new();
    let mut total = 0;
    for req in r.all().iter().filter(|q| q.answered == 200) {
        for e in req.events() {
            distinct.insert((req.path.clone(), e["data"].as_str().unwrap().to_string()));
            total += 1;
        }
    }
    (distinct.len(), total)
}

/// Waits until `want` distinct events were delivered, polling every `every`.
async fn wait_delivered(r: &Receiver, want: usize, limit: Duration, every: Duration) {
    poll("deliveries", limit, every, async || {
        let got = delivered(r);
        if got.0 >= want {
            Ok(())
        } else {
            Err(format!("delivered {got:?} of {want}"))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_one_sigkilled_lose_nothing() {
    const EVENTS: usize = 20_000;
    const APPS: usize = 10;
    const MAX_HELD: usize = 500;
    let redis = RedisServer::start();
    let r = receiver(APPS).await;
    let dir = temp_dir("kill");
    let cfg = redis_config(&redis, "kill", apps(&r, APPS, 1), MAX_HELD);
    let (p, queue) = producer(&cfg).await;
    let mut workers = vec![
        WorkerProcess::start(&dir, "w1", &cfg).await,
        WorkerProcess::start(&dir, "w2", &cfg).await,
        WorkerProcess::start(&dir, "w3", &cfg).await,
    ];
    // Publish in the background while w2 is killed and replaced.
    let publishing = {
        let p = p.clone();
        tokio::spawn(async move {
            for part in 0..20 {
                let from = part * EVENTS / 20;
                publish(&p, APPS, from..from + EVENTS / 20, 500).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    wait_delivered(
        &r,
        EVENTS / 4,
        Duration::from_secs(60),
        Duration::from_millis(20),
    )
    .await;
    let held = workers[1].metric("hookq_jobs_held").await;
    workers[1].kill();
    eprintln!("killed w2 holding about {held:?} jobs (its cap is {MAX_HELD})");
    workers.push(WorkerProcess::start(&dir, "w4", &cfg).await);
    publishing.await.unwrap();

    wait_delivered(
        &r,
        EVENTS,
        Duration::from_secs(120),
        Duration::from_millis(100),
    )
    .await;
    let d = wait_drained(&*queue, Duration::from_secs(30)).await;
    assert_eq!(d.dead, 0, "nothing dead-lettered");
    let (distinct, total) = delivered(&r);
    let duplicates = total - distinct;
    eprintln!("delivered {distinct} distinct events, {total} deliveries, {duplicates} duplicates");
    assert_eq!(distinct, EVENTS);
    assert!(
        duplicates <= MAX_HELD,
        "{duplicates} duplicates, more than the killed worker could hold"
    );
    assert!(r.all().iter().all(|q| q.valid), "every request verifies");
    for w in &mut workers {
        if w.name != "w2" {
            assert!(w.terminate(Duration::from_secs(15)).success());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_percent_failures_deliver_everything_without_resending_successes() {
    const EVENTS: usize = 3_000;
    const APPS: usize = 3;
    let redis = RedisServer::start();
    let r = receiver(APPS).await;
    for a in 0..APPS {
        for e in 0..2 {
            r.flaky(&format!("/app-{a}/ep-{e}"), 30);
        }
    }
    let dir = temp_dir("flaky");
    let cfg = redis_config(&redis, "flaky", apps(&r, APPS, 2), 2000);
    let (p, queue) = producer(&cfg).await;
    let mut w1 = WorkerProcess::start(&dir, "w1", &cfg).await;
    let mut w2 = WorkerProcess::start(&dir, "w2", &cfg).await;
    publish(&p, APPS, 0..EVENTS, 500).await;
    wait_delivered(
        &r,
        EVENTS * 2,
        Duration::from_secs(90),
        Duration::from_millis(100),
    )
    .await;
    let d = wait_drained(&*queue, Duration::from_secs(30)).await;
    assert_eq!(d.dead, 0);
    let all = r.all();
    let failed = all.iter().filter(|q| q.answered == 500).count();
    assert!(
        failed * 100 >= all.len() * 25,
        "about 30 % failed: {failed} of {}",
        all.len()
    );
    // A batch an endpoint accepted is never sent to it again.
    let mut accepted: HashSet<(String, String)> = HashSet::new();
    for q in all.iter().filter(|q| q.answered == 200) {
        let key = (q.path.clone(), q.header("webhook-id").unwrap().to_string());
        assert!(
            accepted.insert(key.clone()),
            "batch {key:?} re-sent after it was accepted"
        );
    }
    let (distinct, total) = delivered(&r);
    assert_eq!(
        (distinct, total),
        (EVENTS * 2, EVENTS * 2),
        "each event once per endpoint"
    );
    assert!(w1.terminate(Duration::from_secs(15)).success());
    assert!(w2.terminate(Duration::from_secs(15)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_survive_a_redis_restart() {
    const EVENTS: usize = 3_000;
    const APPS: usize = 2;
    let mut redis = RedisServer::start_persistent();
    let r = receiver(APPS).await;
    let dir = temp_dir("restart");
    let cfg = redis_config(&redis, "restart", apps(&r, APPS, 1), 1000);
    let (p, queue) = producer(&cfg).await;
    let mut w1 = WorkerProcess::start(&dir, "w1", &cfg).await;
    let mut w2 = WorkerProcess::start(&dir, "w2", &cfg).await;
    publish(&p, APPS, 0..EVENTS / 2, 250).await;
    redis.restart();
    publish(&p, APPS, EVENTS / 2..EVENTS, 250).await;
    wait_delivered(
        &r,
        EVENTS,
        Duration::from_secs(90),
        Duration::from_millis(100),
    )
    .await;
    let d = wait_drained(&*queue, Duration::from_secs(30)).await;
    assert_eq!(d.dead, 0);
    assert_eq!(w1.get("/ready").await.unwrap().0, 200);
    assert!(w1.terminate(Duration::from_secs(15)).success());
    assert!(w2.terminate(Duration::from_secs(15)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_lpush_from_another_language_is_delivered() {
    let redis = RedisServer::start();
    let r = receiver(1).await;
    let dir = temp_dir("lpush");
    let cfg = redis_config(&redis, "lpush", apps(&r, 1, 1), 100);
    let mut w = WorkerProcess::start(&dir, "w1", &cfg).await;
    let job = r#"{"v":1,"kind":"event","id":"handwritten-1","app_id":"app-0","enqueued_at_ms":0,
        "event":{"name":"client_event","channel":"private-x","event":"client-hi","data":{"hello":"world"},"socket_id":"9.9"}}"#;
    redis.command(&["LPUSH", &ready_key("lpush"), job]).unwrap();
    r.wait_for("the hand-written job", Duration::from_secs(15), |r| {
        !r.delivered_events("/app-0/ep-0").is_empty()
    })
    .await;
    let e = &r.delivered_events("/app-0/ep-0")[0];
    assert_eq!(
        e["data"], "{\"hello\":\"world\"}",
        "an object given as data arrives as a string"
    );
    assert_eq!(e["id"], "handwritten-1");
    assert!(w.terminate(Duration::from_secs(15)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_list_replay_and_purge_from_the_cli() {
    let redis = RedisServer::start();
    let r = receiver(2).await;
    r.script(
        "/app-0/ep-0",
        vec![Reply::status(422).with_body("no such room")],
    );
    r.script("/app-1/ep-0", vec![Reply::status(404), Reply::status(404)]);
    let dir = temp_dir("dlqcli");
    let cfg = redis_config(&redis, "dlqcli", apps(&r, 2, 1), 100);
    let path = write_config(&dir, "cli.json", &cfg);
    let path = path.to_str().unwrap();
    let mut w = WorkerProcess::start(&dir, "w1", &cfg).await;

    let (ok, out, err) = hookq(&[
        "enqueue",
        "--config",
        path,
        "--app",
        "app-0",
        "--event",
        r#"{"name":"client_event","channel":"c","event":"client-e","data":"1","socket_id":"1.1"}"#,
    ]);
    assert!(ok && out.contains("enqueued 1 event"), "{out}{err}");
    let events = dir.join("events.jsonl");
    std::fs::write(&events, "{\"name\":\"client_event\",\"channel\":\"c\",\"event\":\"e\",\"data\":\"2\",\"socket_id\":\"1.1\"}\n\
        {\"name\":\"client_event\",\"channel\":\"c\",\"event\":\"e\",\"data\":\"3\",\"socket_id\":\"1.1\"}\n").unwrap();
    let (ok, out, err) = hookq(&[
        "enqueue",
        "--config",
        path,
        "--app",
        "app-1",
        "--file",
        events.to_str().unwrap(),
    ]);
    assert!(ok && out.contains("enqueued 2 event"), "{out}{err}");

    let list = poll(
        "2 DLQ entries",
        Duration::from_secs(15),
        Duration::from_millis(100),
        async || {
            let (ok, out, err) = hookq(&["dlq", "list", "--config", path]);
            assert!(ok, "{err}");
            if out.contains("2 entries") {
                Ok(out)
            } else {
                Err(format!("DLQ never got 2 entries:\n{out}"))
            }
        },
    )
    .await;
    assert!(
        list.contains("app app-0  endpoint ep-0  attempts 1  HTTP 422  body: no such room"),
        "{list}"
    );
    assert!(
        list.contains("app app-1  endpoint ep-0  attempts 1  HTTP 404"),
        "{list}"
    );

    let (ok, out, _) = hookq(&["dlq", "replay", "--config", path, "--app", "app-0"]);
    assert!(ok && out.contains("replayed 1 entries"), "{out}");
    r.wait_for("the replayed event", Duration::from_secs(15), |r| {
        r.delivered_events("/app-0/ep-0").len() == 1
    })
    .await;
    let (ok, out, _) = hookq(&["dlq", "purge", "--config", path]);
    assert!(ok && out.contains("purged 1 entries"), "{out}");
    let (_, out, _) = hookq(&["dlq", "list", "--config", path]);
    assert!(out.contains("0 entries"), "{out}");
    assert!(w.terminate(Duration::from_secs(15)).success());
}
