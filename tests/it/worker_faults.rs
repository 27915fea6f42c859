//! Worker faults on a real redis-server (and the SQS emulator), each
//! reproduced before its fix (issue 14): a worker paused past its lease;
//! Redis paused past the response timeout while retries are pushed; a slow
//! endpoint with the whole held-jobs budget; a shutdown during a receive.

use crate::support::inproc::config;
use crate::support::moto::Moto;
use crate::support::process::{WorkerProcess, temp_dir};
use crate::support::queue::{job_data, producer, wait_dlq, wait_drained};
use crate::support::receiver::{Receiver, Reply};
use crate::support::redis_server::RedisServer;
use hookq_core::Event;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;

const PATH: &str = "/app-1/ep";

/// One app on `redis` whose one endpoint gets one event per request,
/// `concurrency` at a time; leases of 3 s.
fn unbatched(redis: &RedisServer, prefix: &str, r: &Receiver, concurrency: usize) -> Value {
    unbatched_with_lease(redis, prefix, r, concurrency, 3000)
}

fn unbatched_with_lease(
    redis: &RedisServer,
    prefix: &str,
    r: &Receiver,
    concurrency: usize,
    lease_ms: u64,
) -> Value {
    let apps = json!([{"id": "app-1", "key": "key-1", "secret": "secret-1", "webhooks": [
        {"id": "ep", "url": r.url(PATH), "event_types": ["client_event"], "max_concurrency": concurrency}
    ]}]);
    let mut c = config(
        apps,
        json!({"event_ids": true, "request_timeout_ms": 2000, "batching": {"enabled": false},
        "retry": {"initial_backoff_ms": 100, "max_backoff_ms": 200, "max_elapsed_time_ms": 60000}}),
    );
    c["queue"] = json!({"driver": "redis", "redis": {"url": redis.url(), "prefix": prefix, "lease_ms": lease_ms}});
    c
}

fn events(range: std::ops::Range<usize>) -> Vec<Event> {
    range
        .map(|i| Event::client_event("private-c", "client-e", i.to_string(), "1.1"))
        .collect()
}

/// Accepted deliveries of each event (by its `data`) on `PATH`.
fn accepted(r: &Receiver) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for q in r.requests(PATH).iter().filter(|q| q.answered == 200) {
        for e in q.events() {
            *seen
                .entry(e["data"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
    }
    seen
}

/// Worker A sends ten requests that the receiver answers `500` only after
/// 1.5 s, and is paused (`SIGSTOP`) while they are in flight, for longer
/// than its lease; worker B reclaims the jobs and delivers them. When A
/// resumes it reads the ten failures: the jobs are no longer its own, so it
/// must not push retries for them (before the fix it did, and each of those
/// events was accepted twice), nor send the ten it held waiting for the
/// endpoint (before the fix it did: accepted twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_paused_past_its_lease_pushes_no_retry_for_jobs_it_lost() {
    const EVENTS: usize = 20;
    let redis = RedisServer::start();
    let r = Receiver::start(&[("key-1", "secret-1")]).await;
    let slow_failure = Reply::status(500).after(Duration::from_millis(1500));
    r.script(PATH, vec![slow_failure; 10]);
    let dir = temp_dir("paused");
    let cfg = unbatched(&redis, "paused", &r, 10);
    let (p, queue) = producer(&cfg).await;
    let mut a = WorkerProcess::start(&dir, "a", &cfg).await;
    p.publish_batch("app-1", events(0..EVENTS)).await.unwrap();
    r.wait_for("A's ten requests", Duration::from_secs(20), |r| {
        r.requests(PATH).len() >= 10
    })
    .await;
    a.signal("STOP");
    let in_flight: Vec<String> = r
        .requests(PATH)
        .iter()
        .flat_map(|q| q.events())
        .map(|e| e["data"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(in_flight.len(), 10, "A had ten events in flight");

    // B takes every job once A's leases lapse, and delivers each.
    let mut b = WorkerProcess::start(&dir, "b", &cfg).await;
    r.wait_for("B delivering all", Duration::from_secs(30), |r| {
        accepted(r).len() >= EVENTS
    })
    .await;
    a.signal("CONT");
    // A reads its ten failures now; give it time to act on them and on the
    // jobs it still thought it held, then let the queue drain.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let d = wait_drained(&*queue, Duration::from_secs(30)).await;
    assert_eq!(d.dead, 0);

    let seen = accepted(&r);
    assert_eq!(seen.len(), EVENTS, "every event delivered: {seen:?}");
    for e in &in_flight {
        assert_eq!(
            seen[e],
            1,
            "event {e} failed on A, which had lost its job, then was delivered by B: \
             A must push no retry for it; accepted {seen:?}\nA's log:\n{}",
            a.log_text()
        );
    }
    // The other ten waited on A for the endpoint past an extension period:
    // A asks before sending and finds them gone.
    assert!(
        seen.values().all(|n| *n == 1),
        "A sent none of the jobs it had lost: {seen:?}"
    );
    let lost = a.metric("hookq_holds_lost_total").await.unwrap_or(0.0);
    assert_eq!(lost, EVENTS as f64, "A counted its lost holds");
    assert!(a.terminate(Duration::from_secs(15)).success());
    assert!(b.terminate(Duration::from_secs(15)).success());
}

/// Every request fails, three attempts each, so each event's retry chain
/// ends in one dead letter. Redis is paused (`SIGSTOP`) for 12 s — longer
/// than the 5 s response timeout — while the worker pushes retry jobs. A
/// push whose answer timed out may have run: it must not be sent blindly
/// again (a second retry job), nor its job given up to come back and start a
/// second chain (before the fix: both happened). One dead letter per event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_past_the_response_timeout_makes_no_second_retry_chain() {
    const EVENTS: usize = 20;
    let redis = RedisServer::start();
    let r = Receiver::start(&[("key-1", "secret-1")]).await;
    r.always(PATH, Reply::status(500).after(Duration::from_millis(300)));
    let dir = temp_dir("redis-paused");
    let mut cfg = unbatched_with_lease(&redis, "rpaused", &r, 20, 20_000);
    cfg["webhooks"]["retry"]["max_attempts"] = json!(3);
    let (p, queue) = producer(&cfg).await;
    let mut w = WorkerProcess::start(&dir, "w", &cfg).await;
    p.publish_batch("app-1", events(0..EVENTS)).await.unwrap();
    // Attempts are answered after 300 ms. Once the second attempts are in
    // flight (the first ones' retries have opened the worker's connections),
    // pause Redis while the worker is about to push their retries.
    r.wait_for("second attempts", Duration::from_secs(20), |r| {
        r.requests(PATH).len() >= 2 * EVENTS
    })
    .await;
    redis.signal("STOP");
    tokio::time::sleep(Duration::from_secs(12)).await;
    redis.signal("CONT");

    // Each chain ends within a few seconds; a second chain would start only
    // once an abandoned job's 20 s lease ran out, so wait past that.
    tokio::time::sleep(Duration::from_secs(14)).await;
    let d = wait_drained(&*queue, Duration::from_secs(30)).await;
    let dlq = wait_dlq(&*queue, d.dead as usize, Duration::from_secs(5)).await;
    let mut chains: HashMap<String, usize> = HashMap::new();
    for data in dlq.iter().flat_map(|entry| job_data(&entry.job)) {
        *chains.entry(data).or_default() += 1;
    }
    let mut tries: HashMap<String, usize> = HashMap::new();
    for q in r.requests(PATH) {
        for e in q.events() {
            *tries
                .entry(e["data"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
    }
    eprintln!("DLQ {} dead {} tries {tries:?}", dlq.len(), d.dead);
    assert_eq!(
        chains.len(),
        EVENTS,
        "every event dead-lettered: {chains:?}"
    );
    assert!(
        chains.values().all(|n| *n == 1),
        "one retry chain per event, so one dead letter each: {chains:?}\nlog:\n{}",
        w.log_text()
    );
    assert!(w.terminate(Duration::from_secs(15)).success());
}

/// Issue 14, item 6: isolation under a full budget. One endpoint answers
/// after 2 s, one request at a time, and has 1,000 jobs; the worker holds at
/// most 200. Then another app gets 10 jobs: they must arrive within a couple
/// of seconds, while the slow endpoint still gets each of its 1,000 events
/// exactly once and nothing is dead-lettered. Before the fix a job kept its
/// budget slot for as long as it waited for its endpoint, so the slow
/// endpoint's 200 held jobs stopped the worker receiving, and the 10 queued
/// behind its backlog arrived only after it (about 17 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoint_with_a_full_budget_does_not_stall_other_apps() {
    const SLOW: usize = 1_000;
    const FAST: usize = 10;
    let redis = RedisServer::start();
    let r = Receiver::start(&[("key-s", "secret-s"), ("key-f", "secret-f")]).await;
    r.always("/slow", Reply::status(200).after(Duration::from_secs(2)));
    let apps = json!([
        {"id": "slow", "key": "key-s", "secret": "secret-s", "webhooks": [
            {"id": "ep", "url": r.url("/slow"), "event_types": ["client_event"], "max_concurrency": 1}]},
        {"id": "fast", "key": "key-f", "secret": "secret-f", "webhooks": [
            {"id": "ep", "url": r.url("/fast"), "event_types": ["client_event"]}]}
    ]);
    let mut cfg = config(
        apps,
        json!({"event_ids": true, "request_timeout_ms": 5000,
        "retry": {"initial_backoff_ms": 100, "max_backoff_ms": 500, "max_elapsed_time_ms": 60000}}),
    );
    cfg["queue"] = json!({"driver": "redis", "redis": {"url": redis.url(), "prefix": "iso"}});
    cfg["worker"]["max_held_jobs"] = json!(200);
    let dir = temp_dir("isolation");
    let (p, queue) = producer(&cfg).await;
    let w = WorkerProcess::start(&dir, "w", &cfg).await;
    for chunk in 0..SLOW / 100 {
        p.publish_batch("slow", events(chunk * 100..(chunk + 1) * 100))
            .await
            .unwrap();
    }
    // The worker is taken up by the slow endpoint: its first request is out.
    r.wait_for(
        "the slow endpoint's first request",
        Duration::from_secs(10),
        |r| !r.requests("/slow").is_empty(),
    )
    .await;
    let published = std::time::Instant::now();
    p.publish_batch("fast", events(0..FAST)).await.unwrap();
    // Waited for much longer than allowed, to measure how late they are.
    r.wait_for("the other app's events", Duration::from_secs(40), |r| {
        r.delivered_events("/fast").len() >= FAST
    })
    .await;
    let took = arrived(&r, "/fast") - published;
    eprintln!("the other app's {FAST} events arrived {took:?} after their publish");
    assert!(
        took < Duration::from_secs(2),
        "the other app's {FAST} jobs took {took:?} behind a slow endpoint's full budget"
    );

    // The slow endpoint gets all of its events, each once, none dead-lettered.
    let slow_events = |r: &Receiver| {
        let mut seen: HashMap<String, usize> = HashMap::new();
        for e in r.delivered_events("/slow") {
            *seen
                .entry(e["data"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
        seen
    };
    r.wait_for("every slow event", Duration::from_secs(50), |r| {
        slow_events(r).len() >= SLOW
    })
    .await;
    let seen = slow_events(&r);
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    assert_eq!(
        r.delivered_events("/fast").len(),
        FAST,
        "the fast events once each"
    );
    let d = wait_drained(&*queue, Duration::from_secs(20)).await;
    assert_eq!(d.dead, 0, "nothing dead-lettered");
    let requests = r.requests("/slow").len();
    let (_, metrics) = w.get("/metrics").await.unwrap();
    let deferred: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("hookq_deferred_total"))
        .collect();
    eprintln!("slow endpoint: {SLOW} events in {requests} requests; {deferred:?}");
    assert!(!deferred.is_empty(), "the deferrals are counted");
}

/// When the last of the events on `path` arrived.
fn arrived(r: &Receiver, path: &str) -> std::time::Instant {
    r.requests(path).iter().map(|q| q.at).max().unwrap()
}

/// Issue 14, item 8: a shutdown must not cancel a receive in flight. An
/// idle worker on SQS is long-polling when it gets SIGTERM; an event is
/// published just after. A long poll that the worker abandons still takes
/// the message (the emulator, like SQS, hands it to the request it is
/// answering), which is then hidden for the whole visibility timeout (30 s
/// here) with nobody holding it. Before the fix the worker dropped its
/// receives at once: the event reached a second worker only after the
/// visibility timeout ran out. Now the stopping worker finishes its
/// receive and delivers what it got before it exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_does_not_abandon_a_receive_in_flight() {
    let r = Receiver::start(&[("key-1", "secret-1")]).await;
    let mut cfg = config(
        json!([{"id": "app-1", "key": "key-1", "secret": "secret-1",
            "webhooks": [{"url": r.url(PATH), "event_types": ["client_event"], "id": "ep"}]}]),
        json!({"event_ids": true, "request_timeout_ms": 2000}),
    );
    let name = format!("stop-recv-{}", std::process::id());
    cfg["queue"] = json!({"driver": "sqs", "sqs": {
        "queue_name": name, "endpoint_url": Moto::shared().endpoint_url(), "region": "us-east-1",
        "visibility_timeout": 30, "wait_time_seconds": 5}});
    let dir = temp_dir("stop-recv");
    let (p, _queue) = producer(&cfg).await;
    let mut a = WorkerProcess::start_ready(&dir, "a", &cfg).await;
    // Its receive loops are in their long polls now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stop = std::process::Command::new("kill")
        .args(["-TERM", &a.pid().to_string()])
        .status()
        .unwrap();
    assert!(stop.success());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let published = std::time::Instant::now();
    p.publish_batch("app-1", events(0..1)).await.unwrap();
    assert!(
        a.wait_exit(Duration::from_secs(20)).success(),
        "a stops cleanly"
    );
    // Whatever a left is for b; waited for longer than allowed, to measure.
    let b = WorkerProcess::start(&dir, "b", &cfg).await;
    r.wait_for("the event", Duration::from_secs(45), |r| {
        r.delivered_events(PATH).len() == 1
    })
    .await;
    let took = arrived(&r, PATH) - published;
    eprintln!("the event published during the shutdown arrived {took:?} later");
    assert!(
        took < Duration::from_secs(10),
        "the event took {took:?}: the stopping worker's abandoned receive hid it \
         for its visibility timeout\na's log:\n{}",
        a.log_text()
    );
    drop(b);
}
