//! Worker processes on one real redis-server: a SIGKILLed worker loses
//! nothing, a flaky receiver gets everything without re-sends to endpoints
//! that succeeded, a Redis restart is survived, a raw `LPUSH` from another
//! language is delivered, the DLQ commands work from the CLI, and a replay
//! over a long DLQ leaves the workers alone.

use crate::support::inproc::config;
use crate::support::process::{WorkerProcess, hookq, temp_dir, write_config};
use crate::support::queue::{producer, wait_drained};
use crate::support::receiver::{Receiver, Reply};
use crate::support::redis_server::{RedisServer, Reply as RedisReply};
use crate::support::wait::{poll, retry};
use hookq_core::{DeadLetter, Event};
use hookq_producer::Producer;
use hookq_queue::redis::{key_for, ready_key};
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

/// The longest call in Redis's slow log (entries slower than its
/// `slowlog-log-slower-than`): (microseconds, command name).
fn slowest_call(redis: &RedisServer) -> Option<(i64, String)> {
    let RedisReply::Array(Some(entries)) = redis.command(&["SLOWLOG", "GET", "1000"]).unwrap()
    else {
        return None;
    };
    entries
        .iter()
        .filter_map(|e| match e {
            // [id, timestamp, duration µs, [command, args…], …]
            RedisReply::Array(Some(f)) => match (&f[2], &f[3]) {
                (RedisReply::Int(us), RedisReply::Array(Some(args))) => {
                    Some((*us, args[0].text().unwrap_or_default()))
                }
                _ => None,
            },
            _ => None,
        })
        .max()
}

/// Issue 14, item 4: `hookq dlq replay` over a long DLQ while a worker
/// delivers. One script walking 200,000 entries blocked Redis for well over
/// half a second (0.60–0.64 s measured): every other client got `BUSY` once it
/// passed Redis's `busy-reply-threshold` (5 s by default, about 1.6 million
/// such entries; 200 ms here, so that 200,000 show it), and a held job's
/// lease (500 ms here) ran out while its worker could not ack or renew it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_replay_of_200k_entries_never_blocks_the_workers() {
    const ENTRIES: usize = 200_000;
    let redis = RedisServer::start();
    for (name, value) in [
        ("busy-reply-threshold", "200"),
        // To report the longest call (not asserted: BUSY and leases are).
        ("slowlog-log-slower-than", "1000"),
        ("slowlog-max-len", "10000"),
    ] {
        let reply = redis.command(&["CONFIG", "SET", name, value]).unwrap();
        assert_eq!(reply, RedisReply::Simple("OK".into()), "CONFIG SET {name}");
    }
    let r = receiver(1).await;
    let dir = temp_dir("dlqlong");
    let mut cfg = redis_config(&redis, "dlqlong", apps(&r, 1, 1), 1000);
    cfg["queue"]["redis"]["lease_ms"] = json!(500);
    cfg["webhooks"]["request_timeout_ms"] = json!(300);
    let path = write_config(&dir, "cli.json", &cfg);

    // The DLQ, in the shape the worker writes: 200 RPUSHes of 1,000 entries.
    let dead = key_for("dlqlong", "dead");
    let entry = |i: usize| {
        DeadLetter {
            job: json!({"v": 1, "kind": "event", "id": format!("dead-{i}"), "app_id": "app-0",
                "enqueued_at_ms": 1_700_000_000_000u64,
                "event": {"name": "client_event", "channel": "private-c", "event": "client-e",
                    "data": format!("{{\"n\":{i},\"note\":\"an event that failed\"}}"),
                    "socket_id": "1.1"}})
            .to_string(),
            job_base64: None,
            reason: "HTTP 400".into(),
            failed_at_ms: 1_700_000_000_000 + i as u64,
            app_id: Some("app-0".into()),
            endpoint: Some("ep-0".into()),
            attempts: 1,
            last_status: Some(400),
            body_excerpt: Some("{\"error\":\"no such room\"}".into()),
        }
        .encode()
    };
    for chunk in (0..ENTRIES).collect::<Vec<_>>().chunks(1000) {
        let entries: Vec<String> = chunk.iter().map(|&i| entry(i)).collect();
        let mut args = vec!["RPUSH", dead.as_str()];
        args.extend(entries.iter().map(String::as_str));
        redis.command(&args).unwrap();
    }
    assert_eq!(
        redis.command(&["LLEN", &dead]).unwrap(),
        RedisReply::Int(ENTRIES as i64)
    );

    // A steady stream of events, one every 10 ms, through the worker.
    let mut w = WorkerProcess::start(&dir, "w1", &cfg).await;
    let (p, _queue) = producer(&cfg).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let stream = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut published, mut errors) = (0usize, Vec::new());
            while !stop.is_cancelled() {
                let event =
                    Event::client_event("private-c", "client-e", published.to_string(), "1.1");
                match p.publish("app-0", event).await {
                    Ok(_) => published += 1,
                    Err(e) => errors.push(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (published, errors)
        })
    };
    wait_delivered(&r, 20, Duration::from_secs(20), Duration::from_millis(20)).await;

    // From here on the slow log is the replay's (and the worker's beside it).
    redis.command(&["SLOWLOG", "RESET"]).unwrap();
    let started = std::time::Instant::now();
    let path = path.to_str().unwrap().to_string();
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        hookq(&[
            "dlq", "replay", "--config", &path, "--app", "none", "--limit", "1",
        ])
    })
    .await
    .unwrap();
    let took = started.elapsed();
    // Some more of the stream after the walk, then let it drain.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.cancel();
    let (published, publish_errors) = stream.await.unwrap();
    wait_delivered(
        &r,
        published,
        Duration::from_secs(30),
        Duration::from_millis(50),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (distinct, total) = delivered(&r);
    let received = w.metric("hookq_jobs_received_total").await.unwrap();
    let slowest = slowest_call(&redis);
    let log = w.log_text();
    let busy: Vec<&str> = log.lines().filter(|l| l.contains("BUSY")).collect();
    eprintln!(
        "replay took {took:?}: {out:?}; slowest Redis call {slowest:?} µs; {published} events \
         published ({} publishes failed), {total} deliveries of {distinct} distinct, \
         {received} jobs received; {} BUSY lines in the worker's log",
        publish_errors.len(),
        busy.len()
    );
    assert!(ok && out.contains("replayed 0 entries"), "{out}{err}");
    // Every symptom at once, so a failure shows them all.
    let mut faults = Vec::new();
    if err.contains("BUSY") {
        faults.push(format!("the CLI saw BUSY: {err}"));
    }
    if let Some(first) = publish_errors.first() {
        faults.push(format!(
            "{} publishes failed, the first: {first}",
            publish_errors.len()
        ));
    }
    if let Some(first) = busy.first() {
        faults.push(format!(
            "the worker logged {} BUSY errors, the first: {first}",
            busy.len()
        ));
    }
    if total != distinct || received != published as f64 {
        faults.push(format!(
            "leases lost: {received} jobs received and {total} deliveries for {published} \
             events (a job whose lease ran out while Redis was blocked is received and sent again)"
        ));
    }
    assert!(faults.is_empty(), "{}", faults.join("\n"));
    assert_eq!(distinct, published, "every event delivered");
    assert_eq!(
        redis.command(&["LLEN", &dead]).unwrap(),
        RedisReply::Int(ENTRIES as i64),
        "the walk kept every entry"
    );
    for (at, i) in [("0", 0), ("-1", ENTRIES - 1)] {
        assert_eq!(
            redis.command(&["LINDEX", &dead, at]).unwrap().text(),
            Some(entry(i)),
            "the walk kept the DLQ's order"
        );
    }
    assert!(w.terminate(Duration::from_secs(15)).success());
}
