//! Redis Sentinel: a worker process and a producer that find the primary
//! through three sentinels keep going by themselves when the primary is
//! SIGKILLed mid-run and the sentinels promote its replica.

use crate::support::inproc::{config, one_app};
use crate::support::process::{WorkerProcess, free_port, temp_dir};
use crate::support::queue::producer;
use crate::support::receiver::Receiver;
use crate::support::redis_server::{RedisServer, Reply, command_on};
use crate::support::wait::poll;
use hookq_core::Event;
use hookq_producer::Producer;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MASTER: &str = "mymaster";

/// A `redis-server --sentinel` on a free port, killed on drop.
struct Sentinel {
    port: u16,
    child: Child,
}

impl Sentinel {
    fn start(dir: &Path, n: usize, primary_port: u16) -> Sentinel {
        let port = free_port();
        let conf = dir.join(format!("sentinel-{n}.conf"));
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\nlogfile sentinel-{n}.log\n\
                 sentinel resolve-hostnames no\n\
                 sentinel monitor {MASTER} 127.0.0.1 {primary_port} 2\n\
                 sentinel down-after-milliseconds {MASTER} 1000\n\
                 sentinel failover-timeout {MASTER} 5000\n",
                dir = dir.display()
            ),
        )
        .unwrap();
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server --sentinel starts");
        Sentinel { port, child }
    }

    fn command(&self, args: &[&str]) -> Option<Reply> {
        command_on(self.port, args).ok()
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A field of `INFO replication`.
fn info_field(server: &RedisServer, field: &str) -> Option<String> {
    let text = server.command(&["INFO", "replication"]).ok()?.text()?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
}

/// The replica's acknowledged offset as the primary sees it (`slave0:…,offset=N,…`).
fn replica_offset(primary: &RedisServer) -> Option<u64> {
    let slave = info_field(primary, "slave0")?;
    slave
        .split(',')
        .find_map(|kv| kv.strip_prefix("offset="))
        .and_then(|v| v.parse().ok())
}

/// Waits until the replica has everything the primary has written so far.
async fn wait_replicated(primary: &RedisServer) {
    let want: u64 = info_field(primary, "master_repl_offset")
        .and_then(|v| v.parse().ok())
        .expect("master_repl_offset");
    poll(
        "replication",
        Duration::from_secs(10),
        Duration::from_millis(20),
        async || match replica_offset(primary) {
            Some(o) if o >= want => Ok(()),
            o => Err(format!("replica at {o:?} of {want}")),
        },
    )
    .await;
}

/// Publishes events `range` (their number as `data`) to `app-1` in chunks of
/// `chunk`, retrying each chunk until it is acknowledged; returns, per
/// chunk, when it was acknowledged and which events it held.
async fn publish(
    p: &Producer,
    range: std::ops::Range<usize>,
    chunk: usize,
    pause: Duration,
) -> Vec<(Instant, std::ops::Range<usize>)> {
    let mut acked = Vec::new();
    let mut n = range.start;
    while n < range.end {
        let upto = (n + chunk).min(range.end);
        let events: Vec<Event> = (n..upto)
            .map(|i| Event::client_event("private-c", "client-e", i.to_string(), "1.1"))
            .collect();
        let start = Instant::now();
        loop {
            match p.publish_batch("app-1", events.clone()).await {
                Ok(_) => break,
                Err(e) if start.elapsed() < Duration::from_secs(30) => {
                    if start.elapsed() < Duration::from_millis(100) {
                        eprintln!("publish {n}..{upto}: {e}; trying again every 100 ms");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("publish {n}..{upto} still failing after 30 s: {e}"),
            }
        }
        acked.push((Instant::now(), n..upto));
        n = upto;
        tokio::time::sleep(pause).await;
    }
    acked
}

/// Deliveries per event number (200 answers only), and when each event was
/// first delivered.
fn deliveries(r: &Receiver) -> (HashMap<usize, usize>, HashMap<usize, Instant>) {
    let mut count = HashMap::new();
    let mut first: HashMap<usize, Instant> = HashMap::new();
    for req in r.all().iter().filter(|q| q.answered == 200) {
        for e in req.events() {
            let n: usize = e["data"].as_str().unwrap().parse().unwrap();
            *count.entry(n).or_default() += 1;
            let at = first.entry(n).or_insert(req.at);
            *at = (*at).min(req.at);
        }
    }
    (count, first)
}

/// A primary, `n` replicas linked to it, and three sentinels (quorum 2) that
/// see the others and every replica, so a failover can be voted; the
/// sentinels' files are in the returned folder.
async fn sentinel_set(
    label: &str,
    n: usize,
) -> (RedisServer, Vec<RedisServer>, Vec<Sentinel>, PathBuf) {
    let primary = RedisServer::start();
    let replicas: Vec<RedisServer> = (0..n).map(|_| RedisServer::start()).collect();
    for replica in &replicas {
        replica
            .command(&["REPLICAOF", "127.0.0.1", &primary.port().to_string()])
            .unwrap();
        poll(
            "replica link",
            Duration::from_secs(10),
            Duration::from_millis(50),
            async || match info_field(replica, "master_link_status").as_deref() {
                Some("up") => Ok(()),
                s => Err(format!("{s:?}")),
            },
        )
        .await;
    }
    let dir = temp_dir(label);
    let sentinels: Vec<Sentinel> = (0..3)
        .map(|k| Sentinel::start(&dir, k, primary.port()))
        .collect();
    poll(
        "sentinels ready",
        Duration::from_secs(20),
        Duration::from_millis(100),
        async || {
            for s in &sentinels {
                match s.command(&["SENTINEL", "ckquorum", MASTER]) {
                    Some(Reply::Simple(ok)) if ok.starts_with("OK") => {}
                    other => return Err(format!("sentinel {}: {other:?}", s.port)),
                }
                match s.command(&["SENTINEL", "replicas", MASTER]) {
                    Some(Reply::Array(Some(r))) if r.len() == n => {}
                    other => return Err(format!("sentinel {} replicas: {other:?}", s.port)),
                }
            }
            Ok(())
        },
    )
    .await;
    (primary, replicas, sentinels, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_is_followed_without_a_restart() {
    const BEFORE: usize = 1000;
    const DURING: usize = 1500;
    const MAX_HELD: usize = 500;
    let test_start = Instant::now();
    let (mut primary, replicas, sentinels, dir) = sentinel_set("sentinel", 1).await;
    let replica = &replicas[0];
    let r = Receiver::start(&[("key-1", "secret-1")]).await;
    let mut cfg = config(
        one_app(json!([{"url": r.url("/hook"), "event_types": ["client_event"]}])),
        json!({"event_ids": true, "request_timeout_ms": 2000,
            "retry": {"initial_backoff_ms": 100, "max_backoff_ms": 500, "max_elapsed_time_ms": 60000}}),
    );
    let addresses: Vec<Value> = sentinels
        .iter()
        .map(|s| json!({"host": "127.0.0.1", "port": s.port}))
        .collect();
    cfg["queue"] = json!({"driver": "redis", "redis": {
        "sentinels": addresses, "sentinel_master": MASTER, "prefix": "sentinel", "lease_ms": 3000}});
    cfg["worker"]["max_held_jobs"] = json!(MAX_HELD);
    let (p, _queue) = producer(&cfg).await;
    let worker = WorkerProcess::start_ready(&dir, "w", &cfg).await;

    // Events published and replicated before the fault: none may be lost.
    publish(&p, 0..BEFORE, 50, Duration::ZERO).await;
    wait_replicated(&primary).await;

    // More while the primary dies.
    let publishing = {
        let p = p.clone();
        tokio::spawn(async move {
            publish(&p, BEFORE..BEFORE + DURING, 25, Duration::from_millis(20)).await
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    primary.kill();
    let killed = Instant::now();
    eprintln!("sentinel: primary SIGKILLed at {:?}", killed - test_start);

    let acked = publishing.await.unwrap();
    let total = BEFORE + DURING;
    let acked_before_kill: usize = acked
        .iter()
        .filter(|(at, _)| *at < killed)
        .map(|(_, r)| r.len())
        .sum();
    // Everything acknowledged after the kill went to the promoted replica.
    let wait_all = poll(
        "deliveries",
        Duration::from_secs(30),
        Duration::from_millis(200),
        async || {
            let (count, _) = deliveries(&r);
            let missing_after: Vec<usize> = acked
                .iter()
                .filter(|(at, _)| *at >= killed)
                .flat_map(|(_, r)| r.clone())
                .chain(0..BEFORE)
                .filter(|n| !count.contains_key(n))
                .collect();
            if missing_after.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "{} events not delivered yet, e.g. {:?}",
                    missing_after.len(),
                    &missing_after[..missing_after.len().min(5)]
                ))
            }
        },
    );
    wait_all.await;
    // Give anything still due (a reclaimed lease, a retry) its chance.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (count, first) = deliveries(&r);
    let lost: Vec<usize> = (0..total).filter(|n| !count.contains_key(n)).collect();
    let duplicates: usize = count.values().map(|c| c - 1).sum();
    // Recovery: the first publish acknowledged after the kill (the producer
    // found the new primary), and the first delivery of an event published
    // after the kill (the worker did).
    let after_kill: Vec<&(Instant, std::ops::Range<usize>)> =
        acked.iter().filter(|(at, _)| *at >= killed).collect();
    let producer_back = after_kill.first().map(|(at, _)| *at - killed);
    let worker_back = after_kill
        .iter()
        .flat_map(|(_, r)| r.clone())
        .filter_map(|n| first.get(&n))
        .min()
        .map(|t| *t - killed);
    let promoted = info_field(replica, "role");
    eprintln!(
        "sentinel: events {total}: {BEFORE} replicated before the kill, {DURING} published around it \
         ({acked_before_kill} of them acknowledged before the kill); delivered {} distinct, \
         lost {} {:?}, duplicates {duplicates}; from the kill to the producer's first \
         acknowledged publish {producer_back:?}, to the first delivery of an event published \
         after the kill {worker_back:?}; replica's role now {promoted:?}; test took {:?}",
        count.len(),
        lost.len(),
        &lost[..lost.len().min(10)],
        test_start.elapsed()
    );
    assert_eq!(
        promoted.as_deref(),
        Some("master"),
        "the replica was promoted"
    );
    // Only events acknowledged by the old primary in its last moments (not
    // replicated) may be lost; the ones replicated before the fault are not.
    assert!(
        lost.iter().all(|n| *n >= BEFORE),
        "replicated events lost: {lost:?}"
    );
    assert!(
        lost.iter()
            .all(|n| acked.iter().any(|(at, r)| *at < killed && r.contains(n))),
        "lost events acknowledged after the kill: {lost:?}"
    );
    // A job is delivered twice only if the worker held it when the primary
    // died (its ack, or its lease, went with the old primary).
    assert!(
        duplicates <= MAX_HELD,
        "duplicates {duplicates} > {MAX_HELD} held at most"
    );
    assert!(
        worker_back.is_some(),
        "nothing published after the kill delivered"
    );
    // The worker found the promoted replica through the sentinels.
    let promoted_addr = format!("127.0.0.1:{}", replica.port());
    assert!(
        worker.log_text().contains(&promoted_addr),
        "the worker's log never names the promoted replica {promoted_addr}:\n{}",
        worker.log_text()
    );
    let (status, _) = worker.get("/ready").await.expect("the worker answers");
    assert_eq!(status, 200, "/ready after the failover");
    // The one process started above, never restarted: it is still running.
    assert!(
        Path::new(&format!("/proc/{}", worker.pid())).exists(),
        "the worker process is gone"
    );
    drop(sentinels);
}

/// With `queue.redis.replicas_ack: 1` and two replicas (so that the
/// promoted one still has one), no acknowledged publish is lost to the
/// primary's SIGKILL, even one acknowledged just before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_replicas_ack_no_acknowledged_publish_is_lost_to_a_failover() {
    const EVENTS: usize = 2500;
    let test_start = Instant::now();
    // `_replicas`: both stay up until the end (one is promoted, the other follows it).
    let (mut primary, _replicas, sentinels, dir) = sentinel_set("sentinel-wait", 2).await;
    let r = Receiver::start(&[("key-1", "secret-1")]).await;
    let mut cfg = config(
        one_app(json!([{"url": r.url("/hook"), "event_types": ["client_event"]}])),
        json!({"event_ids": true, "request_timeout_ms": 2000,
            "retry": {"initial_backoff_ms": 100, "max_backoff_ms": 500, "max_elapsed_time_ms": 60000}}),
    );
    let addresses: Vec<Value> = sentinels
        .iter()
        .map(|s| json!({"host": "127.0.0.1", "port": s.port}))
        .collect();
    cfg["queue"] = json!({"driver": "redis", "redis": {
        "sentinels": addresses, "sentinel_master": MASTER, "prefix": "sentinel-wait", "lease_ms": 3000,
        "replicas_ack": 1, "replicas_ack_timeout_ms": 500}});
    let (p, _queue) = producer(&cfg).await;
    let worker = WorkerProcess::start_ready(&dir, "w", &cfg).await;
    let publishing = {
        let p = p.clone();
        tokio::spawn(async move { publish(&p, 0..EVENTS, 25, Duration::from_millis(20)).await })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    primary.kill();
    let killed = Instant::now();
    let acked = publishing.await.unwrap();
    poll(
        "deliveries",
        Duration::from_secs(60),
        Duration::from_millis(200),
        async || {
            let (count, _) = deliveries(&r);
            let missing = (0..EVENTS).filter(|n| !count.contains_key(n)).count();
            if missing == 0 {
                Ok(())
            } else {
                Err(format!("{missing} events not delivered yet"))
            }
        },
    )
    .await;
    let (count, first) = deliveries(&r);
    let duplicates: usize = count.values().map(|c| c - 1).sum();
    let acked_before: usize = acked
        .iter()
        .filter(|(at, _)| *at < killed)
        .map(|(_, r)| r.len())
        .sum();
    let acked_last_second: usize = acked
        .iter()
        .filter(|(at, _)| *at < killed && *at + Duration::from_secs(1) >= killed)
        .map(|(_, r)| r.len())
        .sum();
    let producer_back = acked
        .iter()
        .find(|(at, _)| *at >= killed)
        .map(|(at, _)| *at - killed);
    let worker_back = acked
        .iter()
        .filter(|(at, _)| *at >= killed)
        .flat_map(|(_, r)| r.clone())
        .filter_map(|n| first.get(&n))
        .min()
        .map(|t| *t - killed);
    eprintln!(
        "sentinel with replicas_ack 1: {EVENTS} events, {acked_before} acknowledged before the kill \
         ({acked_last_second} in its last second); all delivered, none lost, duplicates {duplicates}; \
         from the kill to the producer's first acknowledged publish {producer_back:?}, to the first \
         delivery of an event published after it {worker_back:?}; test took {:?}",
        test_start.elapsed()
    );
    assert!(
        worker_back.is_some(),
        "nothing published after the kill delivered"
    );
    assert!(
        Path::new(&format!("/proc/{}", worker.pid())).exists(),
        "the worker process is gone"
    );
    drop(sentinels);
}
