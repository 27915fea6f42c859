//! Endpoint health (issue 16, items 1 and 2) with worker processes on a
//! real redis-server: a receiver down for a minute gets probes, not
//! traffic, while another endpoint keeps its throughput, and everything is
//! delivered once it is back (requests to it counted with and without the
//! breaker); two workers share one circuit and a restarted worker finds it
//! open; an endpoint failing for `disable_after_ms` is disabled (DLQ
//! entries "endpoint disabled", metric, one signed notification,
//! `hookq endpoints list`) and `hookq endpoints enable` brings it back.

use crate::support::inproc::config;
use crate::support::process::{WorkerProcess, hookq, temp_dir, write_config};
use crate::support::queue::{job_data, producer};
use crate::support::receiver::{Receiver, Reply, hmac_hex};
use crate::support::redis_server::RedisServer;
use crate::support::wait::poll;
use hookq_core::Event;
use hookq_producer::Producer;
use hookq_queue::DlqFilter;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// One app, `app-1`, with endpoints `dead` and `live` under `base`.
fn two_endpoints(r: &Receiver, base: &str) -> Value {
    json!([{"id": "app-1", "key": "key-1", "secret": "secret-1", "webhooks": [
        {"id": "dead", "url": r.url(&format!("{base}/dead")), "event_types": ["client_event"]},
        {"id": "live", "url": r.url(&format!("{base}/live")), "event_types": ["client_event"]}
    ]}])
}

/// A config on `redis` under `prefix`, retries like Sockudo's but shorter
/// (1 s to 10 s, within 5 minutes), with these extra `webhooks` keys.
fn redis_config(redis: &RedisServer, prefix: &str, apps: Value, extra: Value) -> Value {
    let mut webhooks = json!({"request_timeout_ms": 2000,
        "retry": {"initial_backoff_ms": 1000, "max_backoff_ms": 10000, "max_elapsed_time_ms": 300000}});
    for (k, v) in extra.as_object().unwrap() {
        webhooks[k] = v.clone();
    }
    let mut c = config(apps, webhooks);
    c["queue"] = json!({"driver": "redis", "redis": {"url": redis.url(), "prefix": prefix, "lease_ms": 3000}});
    c
}

/// Publishes client event number `n` (its number as `data`) for `app-1`.
async fn publish_one(p: &Producer, n: usize) {
    let e = Event::client_event("private-c", "client-e", n.to_string(), "1.1");
    p.publish_batch("app-1", vec![e]).await.unwrap();
}

/// Publishes one event every `every` until `stop` says so; answers how
/// many went out so far through `count`.
fn publish_steadily(
    p: Producer,
    every: Duration,
    count: Arc<AtomicUsize>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            let n = count.load(Ordering::Relaxed);
            publish_one(&p, n).await;
            count.fetch_add(1, Ordering::Relaxed);
        }
    })
}

/// The distinct `data` delivered (answered 2xx) on `path`.
fn delivered(r: &Receiver, path: &str) -> HashSet<String> {
    r.delivered_events(path)
        .iter()
        .map(|e| e["data"].as_str().unwrap().to_string())
        .collect()
}

/// Requests on `path` that arrived within `[from, to)`.
fn requests_between(r: &Receiver, path: &str, from: Instant, to: Instant) -> usize {
    r.requests(path)
        .iter()
        .filter(|q| q.at >= from && q.at < to)
        .count()
}

async fn wait_all_delivered(r: &Receiver, paths: &[&str], n: usize, limit: Duration) {
    for path in paths {
        poll(
            &format!("all {n} events at {path}"),
            limit,
            Duration::from_millis(200),
            async || {
                let got = delivered(r, path).len();
                if got >= n {
                    Ok(())
                } else {
                    Err(format!("{got} of {n} delivered"))
                }
            },
        )
        .await;
    }
}

/// `hookq endpoints list --json` on `config`: one object per endpoint.
fn endpoints_list(dir: &std::path::Path, config: &Value) -> Vec<Value> {
    let path = write_config(dir, "cli.json", config);
    let (ok, out, err) = hookq(&[
        "endpoints",
        "list",
        "--json",
        "--config",
        path.to_str().unwrap(),
    ]);
    assert!(ok, "endpoints list failed: {err}");
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn state_of<'a>(list: &'a [Value], endpoint: &str) -> &'a Value {
    list.iter()
        .find(|e| e["endpoint"] == endpoint)
        .unwrap_or_else(|| panic!("{endpoint} not listed: {list:?}"))
}

/// Issue 16, item 1: a receiver down for a minute, with and without the
/// breaker (two queues on one Redis, one worker each, run side by side):
/// with it, requests to the dead endpoint drop to about one probe per
/// `open_ms`, the other endpoint delivers as fast as without, and once the
/// receiver is back everything is delivered on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_gets_probes_while_the_other_keeps_its_throughput() {
    const DOWN: Duration = Duration::from_secs(60);
    const EVERY: Duration = Duration::from_millis(50);
    let redis = RedisServer::start();
    let r = Receiver::start(&[("key-1", "secret-1")]).await;
    let dir = temp_dir("breaker-minute");
    let breaker = json!({"circuit_breaker": {"enabled": true, "failure_ratio": 0.5,
        "window_ms": 10000, "min_requests": 10, "open_ms": 5000}});
    let runs = [
        (
            "off",
            redis_config(&redis, "cb-off", two_endpoints(&r, "/off"), json!({})),
        ),
        (
            "on",
            redis_config(&redis, "cb-on", two_endpoints(&r, "/on"), breaker),
        ),
    ];
    for (name, _) in &runs {
        r.always(&format!("/{name}/dead"), Reply::status(503));
    }
    let mut workers = Vec::new();
    let mut publishers = Vec::new();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for (name, cfg) in &runs {
        workers.push(WorkerProcess::start_ready(&dir, &format!("w-{name}"), cfg).await);
    }
    let start = Instant::now();
    for (_, cfg) in &runs {
        let (p, _) = producer(cfg).await;
        let count = Arc::new(AtomicUsize::new(0));
        publishers.push((
            count.clone(),
            publish_steadily(p, EVERY, count, stop.clone()),
        ));
    }
    tokio::time::sleep(DOWN).await;
    let down_end = Instant::now();
    let published_before: Vec<usize> = publishers
        .iter()
        .map(|(c, _)| c.load(Ordering::Relaxed))
        .collect();
    let mut live_delivered = Vec::new();
    for (name, _) in &runs {
        live_delivered.push(delivered(&r, &format!("/{name}/live")).len());
        r.always(&format!("/{name}/dead"), Reply::status(200));
    }
    stop.store(true, Ordering::Relaxed);
    let mut published = Vec::new();
    for (count, task) in publishers {
        task.await.unwrap();
        published.push(count.load(Ordering::Relaxed));
    }
    let back = Instant::now();
    for ((name, _), n) in runs.iter().zip(&published) {
        let (dead, live) = (format!("/{name}/dead"), format!("/{name}/live"));
        wait_all_delivered(&r, &[&dead, &live], *n, Duration::from_secs(90)).await;
    }
    let recovered_in = back.elapsed();

    let dead_requests: Vec<usize> = runs
        .iter()
        .map(|(name, _)| requests_between(&r, &format!("/{name}/dead"), start, down_end))
        .collect();
    println!(
        "receiver down {} s, one event per {} ms: requests to the dead endpoint: \
         breaker off {}, on {}; live endpoint delivered by the end of the minute: \
         off {} of {}, on {} of {}; everything (off {} events, on {}) delivered on both \
         endpoints {:.1} s after the receiver came back",
        DOWN.as_secs(),
        EVERY.as_millis(),
        dead_requests[0],
        dead_requests[1],
        live_delivered[0],
        published_before[0],
        live_delivered[1],
        published_before[1],
        published[0],
        published[1],
        recovered_in.as_secs_f64()
    );
    // With the breaker: the requests before it opened (about one sync's
    // worth and the window's minimum) and one probe per open_ms.
    let probes = (DOWN.as_millis() / 5000) as usize;
    assert!(
        dead_requests[1] <= probes + 60,
        "breaker on: {} requests to the dead endpoint in a minute, expected about {probes} probes",
        dead_requests[1]
    );
    assert!(
        dead_requests[1] * 10 <= dead_requests[0],
        "the breaker should cut the requests to a dead endpoint tenfold: off {}, on {}",
        dead_requests[0],
        dead_requests[1]
    );
    // The live endpoint kept up: at most a second's events still on their way.
    let per_second = (1000 / EVERY.as_millis()) as usize;
    for (i, (name, _)) in runs.iter().enumerate() {
        assert!(
            live_delivered[i] + per_second >= published_before[i],
            "breaker {name}: the live endpoint fell behind: {} of {} delivered",
            live_delivered[i],
            published_before[i]
        );
    }
    let on = &workers[1];
    assert!(
        on.metric("hookq_endpoint_transitions_total{to=\"closed\"}")
            .await
            >= Some(1.0),
        "the circuit closed"
    );
    assert!(
        on.log_text().contains("circuit opened"),
        "the opening is logged"
    );
}

/// Issue 16, item 1: two workers share one circuit (one probe per open_ms
/// between them, not one each), and a worker started after both were
/// killed finds it open instead of sending its traffic to the dead
/// endpoint; `hookq endpoints list` shows it; after the receiver is back
/// everything is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_the_circuit_and_a_restarted_one_finds_it_open() {
    const OPEN_MS: u64 = 2000;
    let redis = RedisServer::start();
    let r = Receiver::start(&[("key-1", "secret-1")]).await;
    let dir = temp_dir("breaker-shared");
    let cfg = redis_config(
        &redis,
        "cb-shared",
        two_endpoints(&r, ""),
        json!({"circuit_breaker": {"enabled": true, "window_ms": 5000, "min_requests": 5,
            "open_ms": OPEN_MS}}),
    );
    r.always("/dead", Reply::status(503));
    let mut w1 = WorkerProcess::start_ready(&dir, "w1", &cfg).await;
    let mut w2 = WorkerProcess::start_ready(&dir, "w2", &cfg).await;
    let (p, _) = producer(&cfg).await;
    let (count, stop) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(std::sync::atomic::AtomicBool::new(false)),
    );
    let publishing = publish_steadily(p, Duration::from_millis(50), count.clone(), stop.clone());

    let gauge = "hookq_endpoint_circuit_state{app_id=\"app-1\",endpoint=\"dead\"}";
    for w in [&w1, &w2] {
        poll(
            &format!("{} to see the circuit open", w.name),
            Duration::from_secs(20),
            Duration::from_millis(100),
            async || match w.metric(gauge).await {
                Some(v) if v >= 1.0 => Ok(()),
                v => Err(format!("gauge {v:?}")),
            },
        )
        .await;
    }
    let from = Instant::now();
    tokio::time::sleep(Duration::from_secs(16)).await;
    let shared_probes = requests_between(&r, "/dead", from, Instant::now());
    let opened: f64 = [
        w1.metric("hookq_endpoint_transitions_total{to=\"open\"}")
            .await
            .unwrap_or(0.0),
        w2.metric("hookq_endpoint_transitions_total{to=\"open\"}")
            .await
            .unwrap_or(0.0),
    ]
    .iter()
    .sum();

    // Both killed; a new worker starts while the endpoint is still down.
    w1.kill();
    w2.kill();
    let list = endpoints_list(&dir, &cfg);
    let dead_state = state_of(&list, "dead")["state"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        dead_state == "open" || dead_state == "half-open",
        "listed as {dead_state}: {list:?}"
    );
    assert_eq!(state_of(&list, "live")["state"], "healthy");
    assert_eq!(state_of(&list, "dead")["last_error"], "HTTP 503");
    let w3 = WorkerProcess::start_ready(&dir, "w3", &cfg).await;
    let from = Instant::now();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let after_restart = requests_between(&r, "/dead", from, Instant::now());
    let live_after_restart = requests_between(&r, "/live", from, Instant::now());

    r.always("/dead", Reply::status(200));
    stop.store(true, Ordering::Relaxed);
    publishing.await.unwrap();
    let n = count.load(Ordering::Relaxed);
    wait_all_delivered(&r, &["/dead", "/live"], n, Duration::from_secs(60)).await;
    println!(
        "two workers, open_ms {OPEN_MS}: {shared_probes} requests to the dead endpoint in 16 s \
         ({} open transitions between them); a worker started after both were killed: \
         {after_restart} requests to it in its first 6 s (the live endpoint: {live_after_restart}); \
         all {n} events delivered to both after the receiver came back",
        opened
    );
    // One probe per open_ms between the two (8 in 16 s); one each would be 16.
    assert!(
        shared_probes <= 10,
        "{shared_probes} requests in 16 s: the workers do not share the circuit"
    );
    // The new worker knew: at most the probes of 6 s, not its traffic
    // (about 20 batches a second) until it had seen min_requests fail.
    assert!(
        after_restart <= 4,
        "{after_restart} requests to the dead endpoint after the restart"
    );
    assert!(
        live_after_restart >= 20,
        "the live endpoint got {live_after_restart}"
    );
    drop(w3);
}

/// Issue 16, item 2: an endpoint failing without a success for
/// `disable_after_ms` (3 s here) is disabled: its events go to the DLQ with
/// reason "endpoint disabled", `hookq_endpoints_disabled` is 1, the
/// operator's URL gets one notification signed with the configured key and
/// secret and Standard Webhooks secret (and the secret is in no log), `hookq endpoints list` shows it;
/// `hookq endpoints enable` brings it back with its DLQ untouched, and new
/// events are delivered to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_is_disabled_notified_and_enabled_again() {
    const OPS_WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let redis = RedisServer::start();
    let r = Receiver::start(&[("key-1", "secret-1"), ("ops-key", "ops-secret-42")]).await;
    let dir = temp_dir("disable");
    let apps = json!([{"id": "app-1", "key": "key-1", "secret": "secret-1", "webhooks": [
        {"id": "broken", "url": r.url("/broken"), "event_types": ["client_event"]},
        {"id": "fine", "url": r.url("/fine"), "event_types": ["client_event"]}
    ]}]);
    let cfg = redis_config(
        &redis,
        "disable",
        apps,
        json!({"disable_after_ms": 3000,
            "retry": {"initial_backoff_ms": 300, "max_backoff_ms": 1000, "max_elapsed_time_ms": 120000},
            "notify": {"url": r.url("/ops"), "key": "ops-key", "secret": "ops-secret-42",
                "signing_secret": OPS_WHSEC}}),
    );
    r.always("/broken", Reply::status(500));
    let mut cfg = cfg;
    cfg["worker"]["admin_token"] = json!(ADMIN_TOKEN);
    let w = WorkerProcess::start_ready(&dir, "w", &cfg).await;
    let (p, queue) = producer(&cfg).await;
    for n in 0..10 {
        publish_one(&p, n).await;
    }
    poll(
        "the endpoint to be disabled",
        Duration::from_secs(30),
        Duration::from_millis(100),
        async || match w.metric("hookq_endpoints_disabled ").await {
            Some(1.0) => Ok(()),
            v => Err(format!("hookq_endpoints_disabled {v:?}")),
        },
    )
    .await;
    for n in 10..15 {
        publish_one(&p, n).await;
    }
    // Every event of the broken endpoint ends in the DLQ as disabled.
    let entries = poll(
        "15 events dead-lettered",
        Duration::from_secs(30),
        Duration::from_millis(200),
        async || {
            let entries = queue
                .dlq_list(&DlqFilter::default())
                .await
                .map_err(|e| e.to_string())?;
            let events: usize = entries.iter().map(|e| job_data(&e.job).len()).sum();
            if events >= 15 {
                Ok(entries)
            } else {
                Err(format!("{events} events in {} entries", entries.len()))
            }
        },
    )
    .await;
    let mut dead: Vec<String> = entries.iter().flat_map(|e| job_data(&e.job)).collect();
    dead.sort_by_key(|d| d.parse::<usize>().unwrap());
    assert_eq!(dead, (0..15).map(|n| n.to_string()).collect::<Vec<_>>());
    for e in &entries {
        assert_eq!(e.reason, "endpoint disabled");
        assert_eq!(e.endpoint.as_deref(), Some("broken"));
    }
    wait_all_delivered(&r, &["/fine"], 15, Duration::from_secs(10)).await;

    // One notification, signed like a webhook, and no secret in the log.
    r.wait_for("the notification", Duration::from_secs(10), |r| {
        !r.requests("/ops").is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let notes = r.requests("/ops");
    assert_eq!(notes.len(), 1, "one notification per transition");
    let note = &notes[0];
    assert!(note.valid, "the notification's X-Pusher-Signature verifies");
    assert_eq!(note.header("x-pusher-key"), Some("ops-key"));
    // And the Standard Webhooks signature, computed here independently.
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = b64.decode(OPS_WHSEC.trim_start_matches("whsec_")).unwrap();
    let signed = format!(
        "{}.{}.{}",
        note.header("webhook-id").unwrap(),
        note.header("webhook-timestamp").unwrap(),
        String::from_utf8(note.body.clone()).unwrap()
    );
    let expected = format!(
        "v1,{}",
        b64.encode(hex::decode(hmac_hex(&key, signed.as_bytes())).unwrap())
    );
    assert_eq!(note.header("webhook-signature"), Some(expected.as_str()));
    let event = &note.events()[0];
    assert_eq!(
        (
            event["name"].as_str(),
            event["app_id"].as_str(),
            event["endpoint"].as_str()
        ),
        (Some("endpoint_disabled"), Some("app-1"), Some("broken"))
    );
    assert_eq!(event["last_error"], "HTTP 500");
    assert!(event["failing_since_ms"].as_u64() < event["disabled_at_ms"].as_u64());
    let log = w.log_text();
    assert!(
        !log.contains("ops-secret-42") && !log.contains(&OPS_WHSEC[6..]),
        "a notify secret was logged"
    );
    assert_eq!(
        w.metric("hookq_endpoint_transitions_total{to=\"disabled\"}")
            .await,
        Some(1.0)
    );
    assert!(
        w.metric("hookq_dead_lettered_total{reason=\"disabled\"}")
            .await
            >= Some(1.0),
        "dead letters counted as disabled"
    );

    // The admin API shows the circuit as this worker learnt it.
    assert_eq!(circuit_in_api(&w, "broken").await, "disabled");
    assert_eq!(circuit_in_api(&w, "fine").await, "closed");

    let list = endpoints_list(&dir, &cfg);
    let broken = state_of(&list, "broken");
    assert_eq!(broken["state"], "disabled", "{list:?}");
    assert_eq!(broken["last_error"], "HTTP 500");
    assert!(broken["failing_since_ms"].is_u64() && broken["last_success_ms"].is_null());
    assert_eq!(state_of(&list, "fine")["state"], "healthy");
    let path = write_config(&dir, "cli.json", &cfg);
    let (ok, text, err) = hookq(&["endpoints", "list", "--config", path.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(text.contains("endpoint broken  disabled"), "{text}");

    // Enabled again: the DLQ stays, new events go through.
    r.always("/broken", Reply::status(200));
    let (ok, text, err) = hookq(&[
        "endpoints",
        "enable",
        "app-1",
        "broken",
        "--config",
        path.to_str().unwrap(),
    ]);
    assert!(
        ok && text.contains("enabled app app-1 endpoint broken (was disabled)"),
        "{text} {err}"
    );
    let gauge = "hookq_endpoint_circuit_state{app_id=\"app-1\",endpoint=\"broken\"}";
    poll(
        "the worker to learn of the enable",
        Duration::from_secs(10),
        Duration::from_millis(100),
        async || match w.metric(gauge).await {
            Some(0.0) => Ok(()),
            v => Err(format!("{gauge} {v:?}")),
        },
    )
    .await;
    for n in 100..105 {
        publish_one(&p, n).await;
    }
    r.wait_for(
        "new events at the enabled endpoint",
        Duration::from_secs(15),
        |r| delivered(r, "/broken").len() >= 5,
    )
    .await;
    let dlq_after = queue.dlq_list(&DlqFilter::default()).await.unwrap();
    assert_eq!(
        dlq_after.len(),
        entries.len(),
        "enabling does not touch the DLQ"
    );
    poll(
        "hookq_endpoints_disabled back to 0",
        Duration::from_secs(15),
        Duration::from_millis(200),
        async || match w.metric("hookq_endpoints_disabled ").await {
            Some(0.0) => Ok(()),
            v => Err(format!("{v:?}")),
        },
    )
    .await;
    println!(
        "disabled after 3 s of failures: {} DLQ entries (15 events) with reason \"endpoint disabled\", \
         1 notification (Pusher and Standard Webhooks signatures valid), enabled again and 5 new events delivered",
        entries.len()
    );
}

/// The keys' problems are named by their JSON paths, and `hookq endpoints`
/// says why it cannot work on a queue whose health is per worker.
#[test]
fn bad_health_keys_name_their_paths() {
    let dir = temp_dir("health-config");
    let c = config(
        json!([{"id": "a", "key": "k", "secret": "s", "webhooks": [
            {"url": "http://127.0.0.1:9/x", "event_types": ["client_event"],
             "circuit_breaker": {"min_requests": 0}}]}]),
        json!({"circuit_breaker": {"failure_ratio": 1.5, "window_ms": "10s"},
            "disable_after_ms": -1,
            "notify": {"url": "ftp://ops.example/hook", "key": "ops"}}),
    );
    let path = write_config(&dir, "bad.json", &c);
    let (ok, _, err) = hookq(&["check-config", "--config", path.to_str().unwrap()]);
    assert!(!ok, "a bad config is refused");
    for p in [
        "webhooks.circuit_breaker.failure_ratio",
        "webhooks.circuit_breaker.window_ms",
        "webhooks.disable_after_ms",
        "webhooks.notify.url",
        "webhooks.notify.secret",
        "app_manager.array.apps[0].webhooks[0].circuit_breaker.min_requests",
    ] {
        assert!(err.contains(p), "no problem named at {p}:\n{err}");
    }
    let c = config(
        json!([{"id": "a", "key": "k", "secret": "s", "webhooks": [
            {"url": "http://127.0.0.1:9/x", "event_types": ["client_event"]}]}]),
        json!({"circuit_breaker": {"enabled": true}}),
    );
    let path = write_config(&dir, "memory.json", &c);
    let (ok, out, err) = hookq(&["check-config", "--config", path.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        out.contains(
            "circuit breaker: on, opens at 50 % of at least 10 requests in 30000 ms, for 30000 ms"
        ),
        "{out}"
    );
    let (ok, _, err) = hookq(&["endpoints", "list", "--config", path.to_str().unwrap()]);
    assert!(!ok && err.contains("memory queue"), "{err}");
}

/// On the memory queue the circuit is the worker's own: it still opens,
/// defers batches instead of sending them, probes, closes when the
/// receiver is back, and everything is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_memory_queue_each_worker_keeps_its_own_circuit() {
    use crate::support::inproc::InProc;
    let r = Receiver::start(&[("key-1", "secret-1")]).await;
    let cfg = config(
        two_endpoints(&r, ""),
        json!({"circuit_breaker": {"enabled": true, "window_ms": 5000, "min_requests": 5,
            "open_ms": 1000}}),
    );
    r.always("/dead", Reply::status(503));
    let w = InProc::start(cfg).await;
    let render = || w.metrics.render();
    let mut n = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(6) {
        let e = Event::client_event("private-c", "client-e", n.to_string(), "1.1");
        w.publish(vec![e]).await;
        n += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let opened_at_dead = r.requests("/dead").len();
    assert!(
        render().contains("hookq_endpoint_transitions_total{to=\"open\"}"),
        "the circuit opened:\n{}",
        render()
    );
    r.always("/dead", Reply::status(200));
    wait_all_delivered(&r, &["/dead", "/live"], n, Duration::from_secs(30)).await;
    assert!(render().contains("hookq_endpoint_transitions_total{to=\"closed\"} 1"));
    println!(
        "memory queue, breaker on (open_ms 1 s): {opened_at_dead} requests to the dead endpoint \
         in 6 s of one event per 50 ms ({n} events); all delivered after it came back"
    );
    // One event per 50 ms is ~120 batches in 6 s, each retried at 1 s and
    // more without the breaker; with it, the first ones and a probe a second.
    assert!(
        opened_at_dead < 60,
        "{opened_at_dead} requests to the dead endpoint"
    );
    w.stop().await;
}

const ADMIN_TOKEN: &str = "endpoint-health-admin-token";

/// `circuit` of endpoint `id` of app-1 in the worker's admin API.
async fn circuit_in_api(w: &WorkerProcess, id: &str) -> Value {
    let url = format!(
        "http://127.0.0.1:{}/api/v1/endpoints/app-1/{id}",
        w.admin_port
    );
    let resp = reqwest::Client::new()
        .get(url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let view: Value = resp.json().await.unwrap();
    view["circuit"].clone()
}
