//! Redis Cluster: the conformance suite on a 3-primary / 3-replica cluster
//! (16 shards) and on one server split into 4 shards; an idle receive's
//! cost over 16 shards; jobs spread over the primaries; three worker
//! processes carrying on through a primary's SIGKILL, with and without
//! `queue.redis.replicas_ack`, and through two slots resharded to another
//! primary; and what too few replicas does to a push.

use crate::conformance::{HOLD, conformance_suite};
use crate::support::inproc::config;
use crate::support::process::{WorkerProcess, temp_dir};
use crate::support::queue::{handles, producer, receive_n};
use crate::support::receiver::Receiver;
use crate::support::redis_cluster::RedisCluster;
use crate::support::redis_server::{RedisServer, command_on};
use crate::support::wait::poll;
use hookq_core::Event;
use hookq_core::config::RedisSettings;
use hookq_producer::Producer;
use hookq_queue::redis::{RedisQueue, key_for, shard_tag, slot_of_tag};
use hookq_queue::{Outgoing, QueueConsume, QueueDriver, QueueError, QueuePush};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// One cluster per test process (nextest runs each test in its own), shared
/// by the conformance cases of that process, each on a prefix of its own.
fn shared() -> &'static RedisCluster {
    static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
    CLUSTER.get_or_init(RedisCluster::start)
}

fn unique_prefix() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "cl-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn cluster_settings(c: &RedisCluster, prefix: &str, shards: usize) -> RedisSettings {
    RedisSettings {
        url: c.urls()[0].clone(),
        cluster: Some(c.urls()),
        shards,
        prefix: prefix.to_string(),
        lease: HOLD,
        pool_size: 4,
        ..RedisSettings::default()
    }
}

async fn make() -> Arc<dyn QueueDriver> {
    let q = RedisQueue::connect(&cluster_settings(shared(), &unique_prefix(), 16))
        .await
        .unwrap();
    Arc::new(q)
}

conformance_suite!(make().await);
conformance_suite!(make().await; stale_ack_is_harmless, a_lost_hold_is_reported);

/// The sharded code path on one server: 4 shards, every key set in one Redis.
mod one_server_four_shards {
    use super::*;

    fn server() -> &'static RedisServer {
        static SERVER: OnceLock<RedisServer> = OnceLock::new();
        SERVER.get_or_init(RedisServer::start)
    }

    async fn make() -> Arc<dyn QueueDriver> {
        let settings = RedisSettings {
            url: server().url(),
            shards: 4,
            prefix: unique_prefix(),
            lease: HOLD,
            pool_size: 4,
            ..RedisSettings::default()
        };
        Arc::new(RedisQueue::connect(&settings).await.unwrap())
    }

    conformance_suite!(make().await);
    conformance_suite!(make().await; stale_ack_is_harmless, a_lost_hold_is_reported);
}

/// Commands called on every running primary, summed, by command name.
fn calls(c: &RedisCluster) -> BTreeMap<String, u64> {
    let mut total = BTreeMap::new();
    for port in c.primaries() {
        for (name, n) in c.command_calls(port) {
            *total.entry(name).or_default() += n;
        }
    }
    total
}

fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, n)| (k.clone(), n - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_receive_over_sixteen_shards_costs_a_few_commands_in_total() {
    let c = RedisCluster::start();
    let q = RedisQueue::connect(&cluster_settings(&c, "idle", 16))
        .await
        .unwrap();
    // Connections made, scripts loaded, every shard swept once.
    assert!(q.receive(1, Duration::ZERO).await.unwrap().is_empty());
    let before = calls(&c);
    let start = Instant::now();
    for _ in 0..3 {
        assert!(
            q.receive(10, Duration::from_secs(2))
                .await
                .unwrap()
                .is_empty()
        );
    }
    let waited = start.elapsed();
    let d = delta(&before, &calls(&c));
    let total: u64 = d.values().sum();
    eprintln!(
        "three idle receive(10, 2 s) over 16 shards took {waited:?} and issued {total} commands in total: {d:?}"
    );
    assert!(
        waited >= Duration::from_millis(5900),
        "returned after {waited:?}"
    );
    // One sweep is 16 scripts: a receive that swept every shard each time
    // would be 3 × 17.
    assert!(
        total <= 8,
        "an idle receiver polls its shards: {total} commands: {d:?}"
    );

    // A push to any shard still ends the wait at once.
    let q = Arc::new(q);
    let waiting = {
        let q = q.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let got = q.receive(10, Duration::from_secs(20)).await.unwrap();
            (got, start.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    for n in 0..5 {
        q.push(vec![Outgoing::now(
            format!("{n}"),
            "app",
            format!("{{\"n\":{n}}}"),
        )])
        .await
        .unwrap();
    }
    let (got, took) = waiting.await.unwrap();
    eprintln!(
        "a waiting receive got {} jobs {took:?} after it began",
        got.len()
    );
    assert!(!got.is_empty(), "the waiting receive got nothing");
    assert!(took < Duration::from_secs(3), "woken only after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_spread_over_the_primaries_by_their_shards() {
    const JOBS: usize = 16_000;
    const SHARDS: usize = 16;
    let c = RedisCluster::start();
    let prefix = "spread";
    let q = RedisQueue::connect(&cluster_settings(&c, prefix, SHARDS))
        .await
        .unwrap();
    // Shards per primary, from the slots their tags hash to.
    let mut shards_on: BTreeMap<u16, usize> = BTreeMap::new();
    for s in 0..SHARDS {
        let tag = shard_tag(prefix, s, SHARDS);
        let key = key_for(&tag, "ready");
        // The driver's slot rule is Redis's.
        assert_eq!(i64::from(slot_of_tag(&tag)), c.keyslot(&key), "{key}");
        *shards_on.entry(c.primary_of(&key)).or_default() += 1;
    }
    let before: BTreeMap<u16, BTreeMap<String, u64>> = c
        .primaries()
        .into_iter()
        .map(|p| (p, c.command_calls(p)))
        .collect();
    for chunk in 0..JOBS / 100 {
        let jobs = (0..100)
            .map(|i| {
                let n = chunk * 100 + i;
                Outgoing::now(
                    format!("{n}"),
                    format!("app-{}", n % 10),
                    format!("{{\"n\":{n}}}"),
                )
            })
            .collect();
        q.push(jobs).await.unwrap();
    }
    let mut got = 0;
    while got < JOBS {
        let batch = receive_n(&q, 100, Duration::from_secs(10)).await;
        assert!(!batch.is_empty(), "received {got} of {JOBS}");
        got += batch.len();
        q.ack(&handles(&batch)).await.unwrap();
    }
    // The commands that carry jobs, as INFO commandstats counts them (those
    // run inside scripts too): one LPUSH per push, one HSET per claim that
    // took jobs, one HDEL per ack. All commands are printed beside them:
    // shard 0's primary also serves every blocked receive and wake marker.
    let mut jobs_ops: BTreeMap<u16, u64> = BTreeMap::new();
    let mut all_ops: BTreeMap<u16, u64> = BTreeMap::new();
    for port in c.primaries() {
        let d = delta(&before[&port], &c.command_calls(port));
        jobs_ops.insert(
            port,
            ["lpush", "hset", "hdel"]
                .iter()
                .map(|k| d.get(*k).copied().unwrap_or(0))
                .sum(),
        );
        all_ops.insert(port, d.values().sum());
    }
    let total: u64 = jobs_ops.values().sum();
    eprintln!(
        "{JOBS} jobs pushed, received and acked over {SHARDS} shards: shards per primary {shards_on:?}, \
        LPUSH+HSET+HDEL per primary {jobs_ops:?} ({total} in all), all commands per primary {all_ops:?}"
    );
    // Each primary's share of the job commands is its share of the shards
    // (pushes go to the shards in turn, receives sweep them in turn),
    // within 5 points; the tags spread 16 shards 5/5/6 over three
    // primaries with equal slot ranges.
    for (port, n) in &jobs_ops {
        let share = *n as f64 / total as f64;
        let want = shards_on.get(port).copied().unwrap_or(0) as f64 / SHARDS as f64;
        eprintln!(
            "primary {port}: {:.1} % of the job commands, {:.1} % of the shards",
            share * 100.0,
            want * 100.0
        );
        assert!(
            (share - want).abs() <= 0.05,
            "primary {port}: {share:.3} of the job commands for {want:.3} of the shards"
        );
        assert!(
            (0.25..=0.42).contains(&share),
            "primary {port}: {share:.3} of the job commands, not about a third"
        );
    }
}

/// The receiver's deliveries per event number (200 answers), and when each
/// event was first delivered.
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

/// Publishes events `range` (their number as `data`) over `apps` apps in
/// chunks, retrying each app's part until acknowledged; returns when each
/// part was acknowledged and which events it held.
async fn publish(
    p: &Producer,
    apps: usize,
    range: std::ops::Range<usize>,
    chunk: usize,
    pause: Duration,
) -> Vec<(Instant, Vec<usize>)> {
    let mut acked = Vec::new();
    let mut n = range.start;
    while n < range.end {
        let upto = (n + chunk).min(range.end);
        let mut by_app: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for i in n..upto {
            by_app.entry(i % apps).or_default().push(i);
        }
        for (app, numbers) in by_app {
            let events: Vec<Event> = numbers
                .iter()
                .map(|i| Event::client_event("private-c", "client-e", i.to_string(), "1.1"))
                .collect();
            let start = Instant::now();
            loop {
                match p.publish_batch(&format!("app-{app}"), events.clone()).await {
                    Ok(_) => break,
                    Err(e) if start.elapsed() < Duration::from_secs(30) => {
                        if start.elapsed() < Duration::from_millis(100) {
                            eprintln!("publish to app-{app}: {e}; trying again every 100 ms");
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => panic!("publish still failing after 30 s: {e}"),
                }
            }
            acked.push((Instant::now(), numbers));
        }
        n = upto;
        tokio::time::sleep(pause).await;
    }
    acked
}

/// Three worker processes delivering the client events of `apps` apps
/// (`app-<i>`, signed with `key-<i>`/`secret-<i>`) to a receiver, their
/// queue the cluster `c` under `prefix` (`redis` as `queue.redis`), and a
/// producer publishing to that queue.
struct Workers {
    r: Receiver,
    p: Producer,
    workers: Vec<WorkerProcess>,
    _queue: Arc<dyn QueueDriver>,
}

async fn start_workers(
    c: &RedisCluster,
    prefix: &str,
    apps: usize,
    redis: Value,
    max_held: usize,
) -> Workers {
    let keys: Vec<(String, String)> = (0..apps)
        .map(|i| (format!("key-{i}"), format!("secret-{i}")))
        .collect();
    let refs: Vec<(&str, &str)> = keys.iter().map(|(k, s)| (k.as_str(), s.as_str())).collect();
    let r = Receiver::start(&refs).await;
    let app_list: Vec<Value> = (0..apps)
        .map(|i| json!({"id": format!("app-{i}"), "key": format!("key-{i}"), "secret": format!("secret-{i}"),
            "webhooks": [{"url": r.url(&format!("/app-{i}")), "event_types": ["client_event"]}]}))
        .collect();
    let mut cfg = config(
        Value::Array(app_list),
        json!({"event_ids": true, "request_timeout_ms": 2000,
            "retry": {"initial_backoff_ms": 100, "max_backoff_ms": 500, "max_elapsed_time_ms": 60000}}),
    );
    // Sockudo's driver name and node list.
    cfg["queue"] = json!({"driver": "redis-cluster",
        "redis_cluster": {"nodes": c.urls(), "prefix": prefix},
        "redis": redis});
    cfg["worker"]["max_held_jobs"] = json!(max_held);
    let (p, queue) = producer(&cfg).await;
    let dir = temp_dir("cluster-workers");
    let workers = vec![
        WorkerProcess::start_ready(&dir, "w1", &cfg).await,
        WorkerProcess::start_ready(&dir, "w2", &cfg).await,
        WorkerProcess::start_ready(&dir, "w3", &cfg).await,
    ];
    Workers {
        r,
        p,
        workers,
        _queue: queue,
    }
}

/// Waits until `n` distinct events were delivered to `r`.
async fn wait_delivered(r: &Receiver, n: usize, limit: Duration) {
    poll("deliveries", limit, Duration::from_millis(20), async || {
        let got = deliveries(r).0.len();
        if got >= n {
            Ok(())
        } else {
            Err(format!("{got} of {n} delivered"))
        }
    })
    .await;
}

/// Asserts every worker is still running and answers `/ready` with 200.
async fn assert_ready(workers: &[WorkerProcess], when: &str) {
    for w in workers {
        assert!(
            std::path::Path::new(&format!("/proc/{}", w.pid())).exists(),
            "worker {} is gone:\n{}",
            w.name,
            w.log_text()
        );
        let (status, _) = w.get("/ready").await.expect("the worker answers");
        assert_eq!(status, 200, "{} /ready {when}", w.name);
    }
}

/// Three worker processes, 20,000 events over 10 apps, the primary of
/// shard 0 (where every receiver blocks) SIGKILLed mid-run: its replica
/// takes over, the workers carry on without a restart, and every event is
/// delivered — but, without `replicas_ack`, one acknowledged in the
/// primary's last moments, before it replicated. With `replicas_ack: 1`
/// each primary has two replicas, so that the promoted one still has a
/// replica to acknowledge its writes (with one, every push to its shards
/// would fail until the dead node came back as its replica).
async fn failover_run(replicas_ack: u32) {
    const EVENTS: usize = 20_000;
    const APPS: usize = 10;
    const MAX_HELD: usize = 500;
    let test_start = Instant::now();
    let mut c = RedisCluster::start_with(1 + replicas_ack as usize);
    let prefix = format!("fo{replicas_ack}");
    let Workers { r, p, workers, .. } = start_workers(
        &c,
        &prefix,
        APPS,
        json!({"lease_ms": 3000, "replicas_ack": replicas_ack, "replicas_ack_timeout_ms": 1000}),
        MAX_HELD,
    )
    .await;
    let publishing = {
        let p = p.clone();
        tokio::spawn(
            async move { publish(&p, APPS, 0..EVENTS, 200, Duration::from_millis(30)).await },
        )
    };
    wait_delivered(&r, EVENTS / 4, Duration::from_secs(120)).await;
    let victim = c.primary_of(&key_for(&prefix, "ready"));
    c.kill(victim);
    let killed = Instant::now();
    eprintln!(
        "cluster (replicas_ack {replicas_ack}): primary {victim} (shard 0's) SIGKILLed at {:?}, {} events delivered by then",
        killed - test_start,
        deliveries(&r).0.len()
    );
    let acked = publishing.await.unwrap();
    c.wait_healthy(Duration::from_secs(30));
    let healthy = killed.elapsed();
    let wait_all = poll(
        "deliveries",
        Duration::from_secs(120),
        Duration::from_millis(200),
        async || {
            let (count, _) = deliveries(&r);
            // Without replicas_ack, what was acknowledged in the last second
            // before the kill may be gone with the primary.
            let missing: Vec<usize> = acked
                .iter()
                .filter(|(at, _)| {
                    replicas_ack > 0 || *at + Duration::from_secs(1) < killed || *at >= killed
                })
                .flat_map(|(_, n)| n.clone())
                .filter(|n| !count.contains_key(n))
                .collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "{} events not delivered yet, e.g. {:?}",
                    missing.len(),
                    &missing[..missing.len().min(5)]
                ))
            }
        },
    );
    wait_all.await;
    // Give anything still due (a reclaimed lease, a retry) its chance.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (count, first) = deliveries(&r);
    let lost: Vec<usize> = (0..EVENTS).filter(|n| !count.contains_key(n)).collect();
    let duplicates: usize = count.values().map(|c| c - 1).sum();
    let after_kill: Vec<&(Instant, Vec<usize>)> =
        acked.iter().filter(|(at, _)| *at >= killed).collect();
    let producer_back = after_kill.first().map(|(at, _)| *at - killed);
    let worker_back = after_kill
        .iter()
        .flat_map(|(_, n)| n.clone())
        .filter_map(|n| first.get(&n))
        .min()
        .map(|t| *t - killed);
    let acked_last_second: usize = acked
        .iter()
        .filter(|(at, _)| *at < killed && *at + Duration::from_secs(1) >= killed)
        .map(|(_, n)| n.len())
        .sum();
    eprintln!(
        "cluster (replicas_ack {replicas_ack}, {} replicas per primary): {EVENTS} events over {APPS} apps, 3 workers; delivered {} distinct, \
         lost {} {:?} ({acked_last_second} acknowledged in the last second before the kill), duplicates {duplicates}; \
         from the kill: publishing done and the cluster healthy after {healthy:?}, producer's first acknowledged publish after \
         {producer_back:?}, first delivery of an event published after the kill after {worker_back:?}; test took {:?}",
        1 + replicas_ack,
        count.len(),
        lost.len(),
        &lost[..lost.len().min(10)],
        test_start.elapsed()
    );
    if replicas_ack > 0 {
        assert!(lost.is_empty(), "with replicas_ack, events lost: {lost:?}");
    } else {
        assert!(
            lost.iter().all(|n| acked.iter().any(|(at, e)| *at < killed
                && *at + Duration::from_secs(1) >= killed
                && e.contains(n))),
            "lost events that were not acknowledged just before the kill: {lost:?}"
        );
    }
    // A job is delivered twice only if a worker held it when the primary
    // died (its ack, or its lease, went with the old primary).
    assert!(
        duplicates <= 3 * MAX_HELD,
        "duplicates {duplicates} > {} held at most",
        3 * MAX_HELD
    );
    assert!(
        worker_back.is_some(),
        "nothing published after the kill delivered"
    );
    assert_ready(&workers, "after the failover").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_carry_on_through_a_primary_sigkill() {
    failover_run(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_replicas_ack_nothing_acknowledged_is_lost_to_a_primary_sigkill() {
    failover_run(1).await;
}

/// `replicas_ack` on one server: a push no replica acknowledges in time
/// fails (transient), an ack is only logged; with a replica both succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_few_replicas_fail_a_push_but_not_an_ack() {
    let primary = RedisServer::start();
    let settings = RedisSettings {
        url: primary.url(),
        prefix: "wait".into(),
        lease: Duration::from_secs(30),
        replicas_ack: 1,
        replicas_ack_timeout: Duration::from_millis(200),
        ..RedisSettings::default()
    };
    let q = RedisQueue::connect(&settings).await.unwrap();
    let job = |n: u32| Outgoing::now(format!("{n}"), "app", format!("{{\"n\":{n}}}"));
    let start = Instant::now();
    let err = q.push(vec![job(1)]).await.unwrap_err();
    let took = start.elapsed();
    eprintln!("a push with replicas_ack 1 and no replica: {err} after {took:?}");
    assert!(matches!(err, QueueError::Unavailable(_)), "{err:?}");
    assert!(err.to_string().contains("0 of 1 replicas"), "{err}");
    assert!(
        took >= Duration::from_millis(190),
        "WAIT returned after {took:?}"
    );
    // The write is on the primary (it may not survive a failover): receivable.
    let got = receive_n(&q, 1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        q.ack(&handles(&got)).await.unwrap(),
        0,
        "an ack is not failed by WAIT"
    );

    let replica = RedisServer::start();
    replica
        .command(&["REPLICAOF", "127.0.0.1", &primary.port().to_string()])
        .unwrap();
    poll(
        "replica link",
        Duration::from_secs(10),
        Duration::from_millis(50),
        async || {
            let text = replica
                .command(&["INFO", "replication"])
                .ok()
                .and_then(|r| r.text());
            match text {
                Some(t) if t.contains("master_link_status:up") => Ok(()),
                t => Err(format!("{t:?}")),
            }
        },
    )
    .await;
    let start = Instant::now();
    q.push(vec![job(2)]).await.unwrap();
    eprintln!("the same push with a replica took {:?}", start.elapsed());
    let got = receive_n(&q, 1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(q.ack(&handles(&got)).await.unwrap(), 0);
}

/// Error replies by their code (`ASK`, `MOVED`, `TRYAGAIN`, …) since they
/// started, from `INFO errorstats`, summed over the running primaries.
fn error_replies(c: &RedisCluster) -> BTreeMap<String, u64> {
    let mut total = BTreeMap::new();
    for port in c.primaries() {
        let text = command_on(port, &["INFO", "errorstats"])
            .ok()
            .and_then(|r| r.text())
            .unwrap_or_default();
        for l in text.lines() {
            // errorstat_MOVED:count=15
            if let Some((code, n)) = l
                .strip_prefix("errorstat_")
                .and_then(|l| l.split_once(":count="))
                && let Ok(n) = n.trim().parse::<u64>()
            {
                *total.entry(code.to_string()).or_default() += n;
            }
        }
    }
    total
}

/// Three worker processes, 20,000 events over 10 apps, and mid-run the
/// slots of shard 0 (where every receiver blocks) and then of shard 1
/// resharded to another primary by the slot migration protocol, one key
/// at a time 150 ms apart (see [`RedisCluster::migrate_slot`]): `ASK` while
/// a slot's keys are split, `TRYAGAIN` for a script whose keys are, `MOVED`
/// after. The workers follow, every event is delivered, and events
/// published after the moves are delivered too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_carry_on_through_a_resharding() {
    const EVENTS: usize = 20_000;
    const AFTER: usize = 1_000;
    const APPS: usize = 10;
    const SHARDS: usize = 16;
    const MAX_HELD: usize = 500;
    const PAUSE: Duration = Duration::from_millis(150);
    let test_start = Instant::now();
    let c = Arc::new(RedisCluster::start());
    let prefix = "rs";
    let Workers { r, p, workers, .. } =
        start_workers(&c, prefix, APPS, json!({"lease_ms": 3000}), MAX_HELD).await;
    let publishing = {
        let p = p.clone();
        tokio::spawn(
            async move { publish(&p, APPS, 0..EVENTS, 200, Duration::from_millis(30)).await },
        )
    };
    wait_delivered(&r, EVENTS / 4, Duration::from_secs(120)).await;
    let errors_before = error_replies(&c);
    let mut moves = Vec::new();
    for shard in [0, 1] {
        let key = key_for(&shard_tag(prefix, shard, SHARDS), "ready");
        let slot = c.keyslot(&key);
        let from = c.primary_of(&key);
        let to = *c
            .primaries()
            .iter()
            .find(|p| **p != from)
            .expect("another primary");
        let delivered = deliveries(&r).0.len();
        let asking = |c: &RedisCluster| c.command_calls(to).get("asking").copied().unwrap_or(0);
        let asking_before = asking(&c);
        let started = Instant::now();
        let moved = {
            let c = c.clone();
            tokio::task::spawn_blocking(move || c.migrate_slot(slot, from, to, PAUSE))
                .await
                .unwrap()
        };
        let took = started.elapsed();
        // A client sends ASKING before each request an ASK redirected.
        let asked = asking(&c) - asking_before;
        let owner = c.primary_of(&key);
        eprintln!(
            "shard {shard} (slot {slot}): {moved} keys moved from {from} to {to} in {took:?}, \
             {delivered} events delivered at its start, {} at its end, {asked} ASKING on {to}; slot now served by {owner}",
            deliveries(&r).0.len()
        );
        assert_eq!(owner, to, "slot {slot} not moved");
        assert!(moved > 0, "slot {slot} held no keys to move");
        if shard == 0 {
            // Receivers poll shard 0 all the time: some were sent over.
            assert!(asked > 0, "no request was redirected by ASK to {to}");
        }
        moves.push((shard, took, deliveries(&r).0.len() - delivered, asked));
    }
    let moved_at = Instant::now();
    let acked = publishing.await.unwrap();
    let during = acked.iter().filter(|(at, _)| *at < moved_at).count();
    // New events after the slots moved.
    let after_start = Instant::now();
    let after = publish(&p, APPS, EVENTS..EVENTS + AFTER, 200, Duration::ZERO).await;
    wait_delivered(&r, EVENTS + AFTER, Duration::from_secs(120)).await;
    // Give anything still due (a reclaimed lease, a retry) its chance.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (count, first) = deliveries(&r);
    let lost: Vec<usize> = (0..EVENTS + AFTER)
        .filter(|n| !count.contains_key(n))
        .collect();
    let duplicates: usize = count.values().map(|c| c - 1).sum();
    let errors = delta(&errors_before, &error_replies(&c));
    let after_first = after
        .iter()
        .flat_map(|(_, n)| n.clone())
        .filter_map(|n| first.get(&n))
        .min()
        .map(|t| *t - after_start);
    // Warnings and errors the workers logged about their queue.
    let complaints: Vec<String> = workers
        .iter()
        .flat_map(|w| {
            w.log_text()
                .lines()
                .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                .map(|l| format!("{}: {l}", w.name))
                .collect::<Vec<_>>()
        })
        .collect();
    eprintln!(
        "resharding: {EVENTS} + {AFTER} events over {APPS} apps, 3 workers; moves (shard, took, events delivered meanwhile, ASKING calls) {moves:?}; \
         {during} publishes acknowledged before the moves ended; delivered {} distinct, lost {}, duplicates {duplicates}; \
         {AFTER} published {:?} after the moves, the first delivered {after_first:?} after that; error replies by the primaries from the first move on {errors:?}; {} worker warnings/errors; test took {:?}",
        count.len(),
        lost.len(),
        after_start - moved_at,
        complaints.len(),
        test_start.elapsed()
    );
    for l in &complaints {
        eprintln!("  {l}");
    }
    // The clients were redirected, then told the slots' new owner.
    for code in ["ASK", "MOVED"] {
        assert!(errors.contains_key(code), "no {code} reply: {errors:?}");
    }
    assert!(
        lost.is_empty(),
        "events lost: {:?}",
        &lost[..lost.len().min(20)]
    );
    // Nothing failed, so nothing should be delivered twice; a job is at
    // worst delivered again if its ack failed, and a worker holds at most
    // MAX_HELD jobs.
    assert!(
        duplicates <= 3 * MAX_HELD,
        "duplicates {duplicates} > {} held at most",
        3 * MAX_HELD
    );
    assert!(
        complaints.len() <= 3,
        "workers warned about their queue {} times",
        complaints.len()
    );
    assert!(
        after_first.is_some(),
        "nothing published after the moves delivered"
    );
    assert_ready(&workers, "after the resharding").await;
}
