//! Redis faults a worker process must come through: a failover behind one
//! address (the old primary, demoted, answers `READONLY` on the connections
//! still open to it), a Redis that refuses writes while claims still work
//! (`/ready` must say so), and a retry due soon while the worker waits on
//! an idle queue (it must not wait for the next lease deadline).

use crate::support::inproc::config;
use crate::support::process::{WorkerProcess, temp_dir};
use crate::support::queue::{handles, producer, receive_n};
use crate::support::receiver::{Receiver, Reply};
use crate::support::redirect_proxy::RedirectProxy;
use crate::support::redis_server::RedisServer;
use crate::support::wait::poll;
use hookq_core::Event;
use hookq_producer::Producer;
use hookq_queue::redis::{RedisQueue, ready_key};
use hookq_queue::{DeadLetters, Outgoing, QueueConsume, QueuePush};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const PATH: &str = "/app-0/ep-0";
/// `queue.redis.pool_size` (the default, said here because the failover test counts on it).
const POOL_SIZE: usize = 8;

/// One app, `app-0`, with one endpoint on `r` for client events.
fn worker_config(r: &Receiver, url: &str, prefix: &str, lease_ms: u64, retry: Value) -> Value {
    let apps = json!([{"id": "app-0", "key": "key-0", "secret": "secret-0",
        "webhooks": [{"url": r.url(PATH), "event_types": ["client_event"], "id": "ep-0"}]}]);
    let mut c = config(
        apps,
        json!({"event_ids": true, "request_timeout_ms": 2000, "retry": retry}),
    );
    c["queue"] = json!({"driver": "redis", "redis": {"url": url, "prefix": prefix, "lease_ms": lease_ms, "pool_size": POOL_SIZE}});
    c
}

/// Client events numbered `range` (the number is the event's `data`), in one publish.
async fn publish(p: &Producer, range: std::ops::Range<usize>) {
    let events = range
        .map(|i| Event::client_event("private-c", "client-e", i.to_string(), "1.1"))
        .collect();
    p.publish_batch("app-0", events).await.expect("publish");
}

/// How many times each event (by its data) was answered 200.
fn deliveries(r: &Receiver) -> HashMap<String, usize> {
    let mut n = HashMap::new();
    for e in r.delivered_events(PATH) {
        *n.entry(e["data"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    n
}

/// A field of `INFO replication`.
fn replication(server: &RedisServer, field: &str) -> Option<String> {
    let info = server.command(&["INFO", "replication"]).ok()?.text()?;
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
}

/// Makes `replica` a replica of `primary` and waits until it has everything.
async fn replicate(replica: &RedisServer, primary: &RedisServer) {
    let port = primary.port().to_string();
    replica.command(&["REPLICAOF", "127.0.0.1", &port]).unwrap();
    wait_in_sync(replica, primary).await;
}

/// Waits until `replica`'s link is up and it has applied all `primary` wrote.
async fn wait_in_sync(replica: &RedisServer, primary: &RedisServer) {
    poll(
        "the replica to catch up",
        Duration::from_secs(15),
        Duration::from_millis(50),
        || {
            let link = replication(replica, "master_link_status");
            let want = replication(primary, "master_repl_offset");
            let have = replication(replica, "slave_repl_offset");
            let done = link.as_deref() == Some("up") && want.is_some() && want == have;
            std::future::ready(if done {
                Ok(())
            } else {
                Err(format!(
                    "link {link:?}, primary at {want:?}, replica at {have:?}"
                ))
            })
        },
    )
    .await;
}

/// The failover of issue 14: a worker reaches Redis through one address (a
/// proxy) while A is the primary and B its replica; then B is promoted, the
/// address moves to B, and A becomes B's replica. Connections opened before
/// stay with A, which answers `READONLY` to every write. The worker must
/// carry on writing to B (acks, retry pushes), so that the queue on B
/// drains and no job is delivered again more than once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_behind_one_address_moves_the_worker_to_the_new_primary() {
    let (a, b) = (RedisServer::start(), RedisServer::start());
    replicate(&b, &a).await;
    let proxy = RedirectProxy::start(a.port()).await;
    let r = Receiver::start(&[("key-0", "secret-0")]).await;
    let retry =
        json!({"initial_backoff_ms": 100, "max_backoff_ms": 200, "max_elapsed_time_ms": 60000});
    let lease_ms = 3000;
    let cfg = worker_config(&r, &proxy.redis_url(), "failover", lease_ms, retry.clone());
    let dir = temp_dir("failover");
    let w = WorkerProcess::start_ready(&dir, "w1", &cfg).await;

    // Before: 100 events through A (the producer talks to A itself), in 20
    // rounds, each acked before the next: every one of the worker's shared
    // connections (pool_size, taken in turn) is opened to A by then.
    let (on_a, queue_a) = producer(&worker_config(
        &r,
        &a.url(),
        "failover",
        lease_ms,
        retry.clone(),
    ))
    .await;
    for round in 0..20 {
        publish(&on_a, round * 5..round * 5 + 5).await;
        r.wait_for(
            "the events sent before the failover",
            Duration::from_secs(20),
            |r| deliveries(r).len() == round * 5 + 5,
        )
        .await;
    }
    poll(
        "A drained",
        Duration::from_secs(10),
        Duration::from_millis(50),
        async || {
            let d = queue_a.depth().await.map_err(|e| e.to_string())?;
            if d.ready + d.delayed + d.held == 0 {
                Ok(())
            } else {
                Err(format!("{d:?}"))
            }
        },
    )
    .await;
    wait_in_sync(&b, &a).await;
    let opened_to_a = proxy.opened_to(a.port());
    assert!(
        opened_to_a > POOL_SIZE,
        "the worker opened {opened_to_a} connections to A, fewer than its shared ones and a receiver"
    );

    // The failover: B promoted, the address moved to B, A demoted to B's replica.
    let failover_at = Instant::now();
    assert_eq!(
        b.command(&["REPLICAOF", "NO", "ONE"])
            .unwrap()
            .text()
            .as_deref(),
        Some("OK")
    );
    proxy.switch(b.port());
    let port_b = b.port().to_string();
    assert_eq!(
        a.command(&["REPLICAOF", "127.0.0.1", &port_b])
            .unwrap()
            .text()
            .as_deref(),
        Some("OK")
    );
    let write = a.command(&["LPUSH", "{failover}:probe", "x"]).unwrap();
    assert!(
        matches!(&write, crate::support::redis_server::Reply::Error(e) if e.starts_with("READONLY")),
        "A is a replica now: {write:?}"
    );

    // After: 100 events through B; the endpoint fails once, so a retry is pushed too.
    r.script(PATH, vec![Reply::status(500)]);
    let (on_b, queue_b) = producer(&worker_config(&r, &b.url(), "failover", lease_ms, retry)).await;
    publish(&on_b, 100..200).await;
    r.wait_for("every event", Duration::from_secs(30), |r| {
        deliveries(r).len() == 200
    })
    .await;
    let delivered_at = failover_at.elapsed();
    // Drained on B: every job acked there. Jobs whose acks cannot be written
    // stay held and come back when their lease ends, again and again.
    let drained = poll(
        "the queue on B to drain",
        Duration::from_secs(15),
        Duration::from_millis(100),
        async || {
            let d = queue_b.depth().await.map_err(|e| e.to_string())?;
            let n = deliveries(&r);
            let most = n.values().max().copied().unwrap_or(0);
            let again: usize = n.values().map(|c| c - 1).sum();
            let ready = w.get("/ready").await.map(|(s, _)| s);
            if d.ready + d.delayed + d.held == 0 {
                Ok(failover_at.elapsed())
            } else {
                Err(format!(
                    "depth on B {d:?}; {again} deliveries again, one event {most} times; /ready {ready:?}; \
                     connections to B {}",
                    proxy.opened_to(b.port())
                ))
            }
        },
    )
    .await;
    let n = deliveries(&r);
    let again: usize = n.values().map(|c| c - 1).sum();
    let most = n.values().max().copied().unwrap_or(0);
    eprintln!(
        "failover: every event delivered {delivered_at:?} after it, B drained after {drained:?}; \
         {again} deliveries again, the most for one event {most}; connections opened to A {opened_to_a}, to B {}",
        proxy.opened_to(b.port())
    );
    assert!(most <= 2, "an event was delivered {most} times: {n:?}");
    assert!(proxy.opened_to(b.port()) > 0, "the worker never reached B");
    assert_eq!(
        w.get("/ready").await.map(|(s, _)| s),
        Some(200),
        "ready on B"
    );
    assert!(
        !w.log_text().contains("giving up acking"),
        "acks were lost:\n{}",
        w.log_text()
    );
}

/// A retry due soon is delivered soon even when the worker waits on an idle
/// queue: pushing it into the delayed set must wake the receiver blocked on
/// `ready`, which otherwise sleeps until the lease deadline of the job it
/// just took, or the end of its 5 s wait, whichever comes first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_due_soon_is_delivered_soon_from_an_idle_queue() {
    let redis = RedisServer::start();
    let r = Receiver::start(&[("key-0", "secret-0")]).await;
    // Retries after 100 to 200 ms (the backoff's upper half is jittered).
    let retry =
        json!({"initial_backoff_ms": 200, "max_backoff_ms": 200, "max_elapsed_time_ms": 60000});
    let cfg = worker_config(&r, &redis.url(), "prompt", 30_000, retry);
    let dir = temp_dir("prompt");
    let _w = WorkerProcess::start_ready(&dir, "w1", &cfg).await;
    let (p, _queue) = producer(&cfg).await;
    let mut gaps = Vec::new();
    for round in 0..2 {
        // The worker is idle: blocked on `ready`, nothing held, nothing delayed.
        tokio::time::sleep(Duration::from_millis(500)).await;
        r.script(PATH, vec![Reply::status(500)]);
        publish(&p, round..round + 1).await;
        r.wait_for("the failure and its retry", Duration::from_secs(15), |r| {
            r.requests(PATH).len() == 2 * round + 2
        })
        .await;
        let seen = r.requests(PATH);
        let (failed, retried) = (&seen[2 * round], &seen[2 * round + 1]);
        assert_eq!((failed.answered, retried.answered), (500, 200));
        gaps.push(retried.at - failed.at);
    }
    eprintln!("retry due 100-200 ms after the failure arrived after {gaps:?}");
    // Before this was fixed: about 5 s (the receive's wait); a loaded
    // machine adds tens of milliseconds, not seconds.
    for gap in &gaps {
        assert!(
            *gap < Duration::from_millis(1500),
            "a retry due within 200 ms of its failure came {gap:?} after it"
        );
    }
}

/// `/ready` is false while the worker cannot write, even when its receives
/// work. A Redis at `maxmemory` (with `noeviction`) refuses every write that
/// needs memory — the retry jobs a worker pushes, its lease renewals — but
/// still lets it claim the jobs in `ready` (a claim pops first, and a script
/// that has written may go on). Readiness that followed receives alone said
/// ready all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_writes_fail_is_not_ready() {
    let redis = RedisServer::start();
    let r = Receiver::start(&[("key-0", "secret-0")]).await;
    r.always(PATH, Reply::status(500));
    let retry =
        json!({"initial_backoff_ms": 100, "max_backoff_ms": 200, "max_elapsed_time_ms": 60000});
    let mut cfg = worker_config(&r, &redis.url(), "full", 30_000, retry);
    // Ten jobs at a time, so that claims go on for a while.
    cfg["worker"]["max_held_jobs"] = json!(10);
    let (p, queue) = producer(&cfg).await;
    for chunk in 0..4 {
        publish(&p, chunk * 500..chunk * 500 + 500).await;
    }
    let set = |v: &str| {
        let reply = redis.command(&["CONFIG", "SET", "maxmemory", v]).unwrap();
        assert_eq!(reply.text().as_deref(), Some("OK"), "{reply:?}");
    };
    set("1");
    let dir = temp_dir("full");
    let w = WorkerProcess::start(&dir, "w1", &cfg).await;

    let start = Instant::now();
    let first_failure = poll(
        "a failed retry push",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || {
            let seen = r.requests(PATH).len();
            let log = w.log_text();
            // The worker warns at a write's first failure (and sends it again
            // while it holds the jobs: a full Redis may have room again soon).
            std::future::ready(if log.contains("queue write failed") {
                Ok(start.elapsed())
            } else {
                Err(format!("{seen} requests so far; log:\n{log}"))
            })
        },
    )
    .await;
    // Sampled for 3 s from the first failed write: ready must go (and stay) false.
    let mut answers = Vec::new();
    let sampling = Instant::now();
    while sampling.elapsed() < Duration::from_secs(3) {
        answers.push(w.get("/ready").await.map(|(s, _)| s));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let d = queue.depth().await.unwrap();
    let ok = answers.iter().filter(|s| **s == Some(200)).count();
    eprintln!(
        "full Redis: first retry push refused {first_failure:?} after the start; \
         /ready answered 200 {ok} of {} times in 3 s; {} requests; depth {d:?}",
        answers.len(),
        r.requests(PATH).len()
    );
    assert!(d.ready > 0, "still claiming: the worker was never idle");
    // One answer may predate the first failure being noted.
    assert!(
        ok <= 1,
        "/ready said 200 {ok} times in 3 s while writes failed: {answers:?}"
    );
    let (_, body) = w.get("/ready").await.unwrap();
    assert!(body.contains("write"), "/ready says why: {body}");

    // Room again: ready again, within one receive.
    set("0");
    let lifted = Instant::now();
    w.wait_ok(
        &["/ready"],
        Duration::from_secs(10),
        Duration::from_millis(50),
    )
    .await;
    eprintln!(
        "ready again {:?} after maxmemory was lifted",
        lifted.elapsed()
    );
}

/// The wake marker behind prompt retries, on the driver: a delayed push
/// ends a receive waiting on an empty queue, the marker it leaves is never
/// received as a job, and there is never more than one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_push_wakes_a_waiting_receive_and_its_marker_is_no_job() {
    let server = RedisServer::start();
    let settings = hookq_core::config::RedisSettings {
        url: server.url(),
        prefix: "wake".into(),
        concurrency: 10,
        lease: Duration::from_secs(30),
        pool_size: 2,
        sentinel: None,
        ..Default::default()
    };
    let q = std::sync::Arc::new(RedisQueue::connect(&settings).await.unwrap());
    let job = |n: u32, ms: u64| {
        Outgoing::now(format!("{n}"), "app", format!("{{\"n\":{n}}}"))
            .delayed(Duration::from_millis(ms))
    };
    let ready_len = || match server.command(&["LLEN", &ready_key("wake")]).unwrap() {
        crate::support::redis_server::Reply::Int(n) => n,
        other => panic!("LLEN gave {other:?}"),
    };

    // A receive waiting on an empty queue, with nothing delayed or held.
    let waiter = {
        let q = q.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let got = q.receive(10, Duration::from_secs(10)).await.unwrap();
            (got, start.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    q.push(vec![job(1, 300)]).await.unwrap();
    let (got, waited) = waiter.await.unwrap();
    eprintln!(
        "a receive waiting since 300 ms before a push due 300 ms later returned after {waited:?}"
    );
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0].body.as_str(), got[0].receive_count),
        ("{\"n\":1}", 1)
    );
    assert!(
        waited < Duration::from_secs(3),
        "the due job waited for the receive's whole wait: {waited:?}"
    );
    q.ack(&handles(&got)).await.unwrap();
    assert_eq!(ready_len(), 0, "the marker was taken with the job");

    // No receiver: one marker for the first delayed push, none for one due
    // later, none for one due sooner (ready is not empty, so nobody waits).
    q.push(vec![job(2, 400)]).await.unwrap();
    assert_eq!(ready_len(), 1, "a marker");
    assert_eq!(q.depth().await.unwrap().ready, 1, "depth counts the marker");
    q.push(vec![job(3, 600)]).await.unwrap();
    q.push(vec![job(4, 200)]).await.unwrap();
    assert_eq!(ready_len(), 1, "still one marker");
    let got = receive_n(&*q, 3, Duration::from_secs(5)).await;
    let mut bodies: Vec<_> = got.iter().map(|r| r.body.as_str()).collect();
    bodies.sort_unstable();
    assert_eq!(bodies, ["{\"n\":2}", "{\"n\":3}", "{\"n\":4}"], "{got:?}");
    assert!(got.iter().all(|r| r.receive_count == 1), "{got:?}");
    q.ack(&handles(&got)).await.unwrap();
    let d = q.depth().await.unwrap();
    assert_eq!((d.ready, d.delayed, d.held), (0, 0, 0), "{d:?}");
}
