//! Per-endpoint rate limits (issue 16, item 3): three `hookq worker`
//! processes on one Redis share one token bucket per endpoint, so the
//! receiver never sees more than `per_second + burst` requests of a
//! rate-limited endpoint in any one-second window; what waits for a token
//! waits in the queue, and an unlimited endpoint of the same app is not held
//! back by it.

use crate::support::inproc::{InProc, config, one_app};
use crate::support::process::{WorkerProcess, temp_dir};
use crate::support::queue::{producer, wait_drained};
use crate::support::receiver::Receiver;
use crate::support::redis_server::RedisServer;
use hookq_core::Event;
use serde_json::json;
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// The most requests among `times` within any window of `width` starting at
/// one of them (a window sliding over the arrival timestamps).
fn max_in_window(times: &[Instant], width: Duration) -> usize {
    let mut times = times.to_vec();
    times.sort();
    let mut most = 0;
    let mut j = 0;
    for i in 0..times.len() {
        while j < times.len() && times[j] - times[i] < width {
            j += 1;
        }
        most = most.max(j - i);
    }
    most
}

/// (distinct `data` values, requests) delivered to `path`.
fn delivered(r: &Receiver, path: &str) -> (usize, usize) {
    let reqs = r.requests(path);
    let ok: Vec<_> = reqs.iter().filter(|q| q.answered == 200).collect();
    let distinct: HashSet<String> = ok
        .iter()
        .flat_map(|q| q.events())
        .map(|e| e["data"].as_str().unwrap_or_default().to_string())
        .collect();
    (distinct.len(), ok.iter().map(|q| q.events().len()).sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_share_one_bucket_and_never_pass_rate_plus_burst() {
    const EVENTS: usize = 300;
    const RATE: usize = 20;
    const BURST: usize = 5;
    let redis = RedisServer::start();
    let r = Receiver::start(&[("key-1", "secret-1")]).await;
    let webhooks = json!([
        {"id": "limited", "url": r.url("/limited"), "event_types": ["client_event"],
         "rate_limit": {"per_second": RATE, "burst": BURST}},
        {"id": "free", "url": r.url("/free"), "event_types": ["client_event"]}
    ]);
    // One event per request, so requests are what the bucket counts.
    let mut cfg = config(one_app(webhooks), json!({"batching": {"enabled": false}}));
    cfg["queue"] = json!({"driver": "redis", "redis": {"url": redis.url(), "prefix": "rate", "lease_ms": 10000}});
    let dir = temp_dir("rate");
    let (p, queue) = producer(&cfg).await;
    let mut workers = Vec::new();
    for name in ["w1", "w2", "w3"] {
        workers.push(WorkerProcess::start_ready(&dir, name, &cfg).await);
    }
    let events: Vec<Event> = (0..EVENTS)
        .map(|i| Event::client_event("private-c", "client-e", i.to_string(), "1.1"))
        .collect();
    let start = Instant::now();
    for chunk in events.chunks(100) {
        p.publish_batch("app-1", chunk.to_vec()).await.unwrap();
    }
    r.wait_for("the free endpoint's events", Duration::from_secs(30), |r| {
        delivered(r, "/free").0 >= EVENTS
    })
    .await;
    let free_done = start.elapsed();
    let limited_then = delivered(&r, "/limited").0;
    r.wait_for(
        "the limited endpoint's events",
        Duration::from_secs(120),
        |r| delivered(r, "/limited").0 >= EVENTS,
    )
    .await;
    let limited_done = start.elapsed();
    let d = wait_drained(&*queue, Duration::from_secs(30)).await;

    let times: Vec<Instant> = r.requests("/limited").iter().map(|q| q.at).collect();
    let most = max_in_window(&times, Duration::from_secs(1));
    let mut deferred = 0.0;
    for w in &workers {
        deferred += w
            .metric("hookq_deferred_total{reason=\"rate\"}")
            .await
            .unwrap_or(0.0);
    }
    eprintln!(
        "rate limit {RATE}/s burst {BURST}, 3 workers: max requests in any 1 s window {most} \
         (bound {}); limited: {EVENTS} events in {limited_done:.1?}; free: {EVENTS} in {free_done:.1?}, \
         when the limited one had {limited_then}; {deferred} rate deferrals",
        RATE + BURST
    );
    assert!(
        most <= RATE + BURST,
        "{most} requests within one second, more than rate + burst"
    );
    assert_eq!(d.dead, 0, "nothing dead-lettered");
    assert_eq!(
        delivered(&r, "/limited"),
        (EVENTS, EVENTS),
        "every event once"
    );
    assert_eq!(delivered(&r, "/free"), (EVENTS, EVENTS), "every event once");
    assert!(
        limited_then < EVENTS / 2,
        "the free endpoint finished only when the limited one had {limited_then} of {EVENTS}"
    );
    assert!(deferred > 0.0, "the excess waited in the queue");
    assert!(r.all().iter().all(|q| q.valid), "every request verifies");
    for w in &mut workers {
        assert!(w.terminate(Duration::from_secs(15)).success());
    }
}

/// On the memory queue the bucket is the worker's own; the bound is the same.
#[tokio::test]
async fn on_the_memory_queue_the_worker_keeps_the_bucket_itself() {
    const EVENTS: usize = 40;
    let r = Receiver::start(&[("key-1", "secret-1")]).await;
    let webhooks = json!([{"id": "limited", "url": r.url("/limited"), "event_types": ["client_event"],
        "rate_limit": {"per_second": 10, "burst": 2}}]);
    let w = InProc::start(config(
        one_app(webhooks),
        json!({"batching": {"enabled": false}}),
    ))
    .await;
    w.publish(
        (0..EVENTS)
            .map(|i| Event::client_event("private-c", "client-e", i.to_string(), "1.1"))
            .collect(),
    )
    .await;
    r.wait_for("the events", Duration::from_secs(30), |r| {
        delivered(r, "/limited").0 >= EVENTS
    })
    .await;
    w.wait_idle(Duration::from_secs(10)).await;
    let times: Vec<Instant> = r.requests("/limited").iter().map(|q| q.at).collect();
    let most = max_in_window(&times, Duration::from_secs(1));
    eprintln!("memory queue, 10/s burst 2: max {most} requests in any 1 s window (bound 12)");
    assert!(most <= 12, "{most} within one second");
    assert_eq!(delivered(&r, "/limited"), (EVENTS, EVENTS));
    w.stop().await;
}
