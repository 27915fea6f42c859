//! Adaptive concurrency (issue 16, item 4): a receiver whose latency rises
//! with the requests it serves at once — 20 ms up to 8, 20 ms more for
//! each one past 8 — and a `hookq worker` whose endpoint allows 64 at once
//! with `adaptive_concurrency`: hookq settles near the receiver's best point
//! (8) instead of at 64. The receiver counts what is in flight when each
//! request arrives, and checks each request's Pusher signature.

use crate::support::inproc::{config, one_app};
use crate::support::process::{WorkerProcess, temp_dir};
use crate::support::queue::{producer, wait_drained};
use crate::support::receiver::hmac_hex;
use crate::support::redis_server::RedisServer;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hookq_core::Event;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The receiver's best point: up to this many at once cost 20 ms each.
const BEST: usize = 8;

#[derive(Default)]
struct Seen {
    in_flight: AtomicUsize,
    /// (arrival, requests in flight with this one).
    arrivals: Mutex<Vec<(Instant, usize)>>,
    data: Mutex<Vec<String>>,
    invalid: AtomicUsize,
}

async fn handle(State(seen): State<Arc<Seen>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let n = seen.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    seen.arrivals.lock().unwrap().push((Instant::now(), n));
    let signature = headers
        .get("x-pusher-signature")
        .and_then(|v| v.to_str().ok());
    if signature != Some(hmac_hex(b"secret-1", &body).as_str()) {
        seen.invalid.fetch_add(1, Ordering::SeqCst);
    }
    let extra = n.saturating_sub(BEST) as u64;
    tokio::time::sleep(Duration::from_millis(20 + 20 * extra)).await;
    if let Ok(v) = serde_json::from_slice::<Value>(&body) {
        let mut data = seen.data.lock().unwrap();
        for e in v["events"].as_array().into_iter().flatten() {
            data.push(e["data"].as_str().unwrap_or_default().to_string());
        }
    }
    seen.in_flight.fetch_sub(1, Ordering::SeqCst);
    StatusCode::OK
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_concurrency_settles_near_the_receivers_best_point() {
    const EVENTS: usize = 3000;
    const OUTSTANDING: usize = 48;
    let seen = Arc::new(Seen::default());
    let app = axum::Router::new()
        .fallback(handle)
        .with_state(seen.clone());
    let port = crate::support::serve(app).await;
    let redis = RedisServer::start();
    let webhooks = json!([{"id": "slow", "url": format!("http://127.0.0.1:{port}/slow"),
        "event_types": ["client_event"], "max_concurrency": 64, "adaptive_concurrency": true}]);
    let mut cfg = config(one_app(webhooks), json!({"batching": {"enabled": false}}));
    cfg["queue"] = json!({"driver": "redis", "redis": {"url": redis.url(), "prefix": "adaptive"}});
    let dir = temp_dir("adaptive");
    let (p, queue) = producer(&cfg).await;
    let mut w = WorkerProcess::start_ready(&dir, "w", &cfg).await;
    // A closed loop that keeps OUTSTANDING events undelivered: far more
    // than the receiver's best point, so a fixed limit of 64 would put all
    // of them in flight; not so many that batches wait past a second and
    // are deferred to the queue (the lane's rule), which would thin the load.
    let start = Instant::now();
    let mut limits = Vec::new();
    let mut published = 0;
    let mut last_sample = Instant::now();
    while seen.data.lock().unwrap().len() < EVENTS {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{} of {EVENTS} delivered in 120 s",
            seen.data.lock().unwrap().len()
        );
        let delivered = seen.data.lock().unwrap().len();
        let want = (delivered + OUTSTANDING).min(EVENTS);
        if want > published {
            let events: Vec<Event> = (published..want)
                .map(|i| Event::client_event("private-c", "client-e", i.to_string(), "1.1"))
                .collect();
            p.publish_batch("app-1", events).await.unwrap();
            published = want;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        if last_sample.elapsed() >= Duration::from_millis(500) {
            last_sample = Instant::now();
            limits.push(w.metric("hookq_endpoint_concurrency_limit").await);
        }
    }
    let took = start.elapsed();
    let d = wait_drained(&*queue, Duration::from_secs(30)).await;

    let arrivals = seen.arrivals.lock().unwrap().clone();
    let t0 = arrivals[0].0;
    let mut by_second: Vec<Vec<usize>> = Vec::new();
    for (at, n) in &arrivals {
        let s = at.duration_since(t0).as_secs() as usize;
        by_second.resize(by_second.len().max(s + 1), Vec::new());
        by_second[s].push(*n);
    }
    eprintln!("in flight at the receiver as requests arrived, per second (mean / max / requests):");
    for (s, ns) in by_second
        .iter()
        .enumerate()
        .filter(|(_, ns)| !ns.is_empty())
    {
        let mean = ns.iter().sum::<usize>() as f64 / ns.len() as f64;
        eprintln!(
            "  {s:>3} s: {mean:5.1} / {:>3} / {}",
            ns.iter().max().unwrap(),
            ns.len()
        );
    }
    let limits: Vec<u64> = limits.into_iter().flatten().map(|l| l as u64).collect();
    eprintln!("hookq_endpoint_concurrency_limit every 500 ms: {limits:?}");
    // The settled part: the second half of the requests.
    let mut tail: Vec<usize> = arrivals[arrivals.len() / 2..]
        .iter()
        .map(|(_, n)| *n)
        .collect();
    tail.sort();
    let median = tail[tail.len() / 2];
    let p95 = tail[tail.len() * 95 / 100];
    let mean = tail.iter().sum::<usize>() as f64 / tail.len() as f64;
    eprintln!(
        "{EVENTS} events in {took:.1?}; second half: in flight mean {mean:.1}, median {median}, \
         p95 {p95}, max {} (max_concurrency 64, best point {BEST})",
        tail.last().unwrap()
    );
    assert!(
        (BEST / 2..=BEST + 4).contains(&median),
        "median in flight {median}, not near {BEST}"
    );
    assert!(p95 <= 2 * BEST, "p95 in flight {p95}: far above {BEST}");
    assert_eq!(d.dead, 0);
    let distinct: HashSet<String> = seen.data.lock().unwrap().iter().cloned().collect();
    assert_eq!(distinct.len(), EVENTS, "every event delivered");
    assert_eq!(
        seen.invalid.load(Ordering::SeqCst),
        0,
        "every request verifies"
    );
    assert!(w.terminate(Duration::from_secs(15)).success());
}
