//! Poison jobs (issue 14, items 3 and 8), each reproduced before its fix: a
//! job that keeps coming back — its worker dies on it, or its retry cannot be
//! pushed — ends in the DLQ after `queue.max_receives` receives, on Redis,
//! on the memory queue and on SQS; a job whose bytes are not UTF-8 is
//! dead-lettered with its bytes intact instead of delivered with U+FFFD.

use crate::support::inproc::{InProc, config};
use crate::support::moto::Moto;
use crate::support::process::{WorkerProcess, hookq, temp_dir, write_config};
use crate::support::queue::producer;
use crate::support::receiver::{Receiver, Reply};
use crate::support::redis_server::{RedisServer, Reply as RedisReply};
use crate::support::wait::poll;
use base64::Engine;
use hookq_core::Event;
use hookq_queue::DlqFilter;
use hookq_queue::redis::{key_for, ready_key};
use serde_json::{Value, json};
use std::time::Duration;

const PATH: &str = "/app-1/ep";

fn one_app(r: &Receiver) -> Value {
    json!([{"id": "app-1", "key": "key-1", "secret": "secret-1", "webhooks": [
        {"id": "ep", "url": r.url(PATH), "event_types": ["client_event"]}]}])
}

/// Unbatched, with a retry budget that outlasts every test.
fn base(r: &Receiver, request_timeout_ms: u64) -> Value {
    config(
        one_app(r),
        json!({"request_timeout_ms": request_timeout_ms, "batching": {"enabled": false},
            "retry": {"initial_backoff_ms": 100, "max_backoff_ms": 200, "max_elapsed_time_ms": 600000}}),
    )
}

/// The DLQ entries on Redis under `prefix`, as JSON.
fn redis_dlq(redis: &RedisServer, prefix: &str) -> Vec<Value> {
    let RedisReply::Array(Some(items)) = redis
        .command(&["LRANGE", &key_for(prefix, "dead"), "0", "-1"])
        .unwrap()
    else {
        panic!("LRANGE answers an array")
    };
    items
        .iter()
        .map(|i| serde_json::from_str(&i.text().unwrap()).unwrap())
        .collect()
}

/// What the receiver saw on `PATH`, for failure messages.
fn seen(r: &Receiver) -> String {
    let reqs = r.requests(PATH);
    format!(
        "{} request(s) on {PATH}: {:?}",
        reqs.len(),
        reqs.iter()
            .map(|q| String::from_utf8_lossy(&q.body).into_owned())
            .collect::<Vec<_>>()
    )
}

/// Polls `dlq` until it holds an entry and returns what it holds (the
/// receiver's requests so far in the message when it stays empty).
async fn wait_dead<T, F, Fut>(r: &Receiver, limit: Duration, every: Duration, dlq: F) -> Vec<T>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Vec<T>>,
    T: std::fmt::Debug,
{
    let dead = poll("the job in the DLQ", limit, every, async || {
        let dead = dlq().await;
        if dead.is_empty() {
            Err(format!("the DLQ is empty; the receiver saw {}", seen(r)))
        } else {
            Ok(dead)
        }
    })
    .await;
    eprintln!("DLQ: {dead:?}; the receiver saw {}", seen(r));
    dead
}

/// The reason names the receive count and the limit it passed.
#[track_caller]
fn assert_poisoned(reason: &str, received: u32, max: u32) {
    assert!(
        reason.contains(&format!("received {received} times"))
            && reason.contains(&format!("queue.max_receives ({max})")),
        "{reason}"
    );
}

/// A job whose delivery kills its worker: each worker that takes it is
/// SIGKILLed while its request hangs at the receiver, so the job comes back
/// on Redis when the lease runs out, one receive more each time. With
/// `queue.max_receives` 2, the third worker must dead-letter it on its third
/// receive, naming the count, and send nothing. Before the fix the Redis
/// driver's receive count was never looked at: the third worker sent it
/// again (the receiver's third request), and so on for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_kills_every_worker_is_dead_lettered_after_max_receives_on_redis() {
    let redis = RedisServer::start();
    let r = Receiver::start(&[("key-1", "secret-1")]).await;
    // Never answers in time: the worker is killed while it waits.
    r.always(PATH, Reply::status(200).after(Duration::from_secs(60)));
    let dir = temp_dir("poison-kill");
    let mut cfg = base(&r, 3000);
    cfg["queue"] = json!({"driver": "redis", "max_receives": 2,
        "redis": {"url": redis.url(), "prefix": "poison-kill", "lease_ms": 3500}});
    let (p, _queue) = producer(&cfg).await;
    p.publish(
        "app-1",
        Event::client_event("private-c", "client-e", "deadly", "1.1"),
    )
    .await
    .unwrap();
    for n in 1..=2 {
        let mut w = WorkerProcess::start(&dir, &format!("w{n}"), &cfg).await;
        r.wait_for(&format!("request {n}"), Duration::from_secs(20), |r| {
            r.requests(PATH).len() >= n
        })
        .await;
        w.kill();
    }
    let mut w3 = WorkerProcess::start(&dir, "w3", &cfg).await;
    let (limit, every) = (Duration::from_secs(20), Duration::from_millis(50));
    let dlq = wait_dead(&r, limit, every, async || redis_dlq(&redis, "poison-kill")).await;
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert_poisoned(dlq[0]["reason"].as_str().unwrap(), 3, 2);
    assert_eq!(dlq[0]["app_id"], "app-1");
    let job: Value = serde_json::from_str(dlq[0]["job"].as_str().unwrap()).unwrap();
    assert_eq!(
        job["event"]["data"], "deadly",
        "the job is kept to replay: {job}"
    );
    // Give w3 time to have sent it, if it were going to.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(r.requests(PATH).len(), 2, "sent twice only: {}", seen(&r));
    let counted = w3
        .metric(r#"hookq_dead_lettered_total{reason="max_receives"}"#)
        .await;
    assert_eq!(counted, Some(1.0));
    assert_eq!(
        w3.get("/ready").await.map(|(s, _)| s),
        Some(200),
        "a poison job is not the queue's fault"
    );
    assert!(w3.terminate(Duration::from_secs(15)).success());
}

/// A job whose retry the queue refuses every time: a memory queue at its
/// capacity (1) has no room for the retry job of a delivery the receiver
/// answers 503, so the job is left to come back when its hold ends — and
/// fails again. With `queue.max_receives` 3 it must be dead-lettered on its
/// fourth receive after three requests. Before the fix it went round for
/// ever: a request every hold, nothing in the DLQ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_retry_is_refused_every_time_is_dead_lettered_after_max_receives_in_memory() {
    let r = Receiver::start(&[("key-1", "secret-1")]).await;
    r.always(PATH, Reply::status(503));
    let mut cfg = base(&r, 500);
    cfg["queue"] = json!({"driver": "memory", "max_receives": 3,
        "memory": {"capacity": 1, "lease_ms": 1000}});
    let w = InProc::start(cfg).await;
    w.publish(vec![Event::client_event(
        "private-c",
        "client-e",
        "stuck",
        "1.1",
    )])
    .await;
    let (limit, every) = (Duration::from_secs(20), Duration::from_millis(50));
    let dlq = wait_dead(&r, limit, every, async || w.dlq().await).await;
    let [entry] = &dlq[..] else {
        panic!("one entry: {dlq:?}")
    };
    assert_poisoned(&entry.reason, 4, 3);
    w.wait_idle(Duration::from_secs(5)).await;
    assert_eq!(r.requests(PATH).len(), 3, "{}", seen(&r));
    w.stop().await;
}

/// On SQS the count is `ApproximateReceiveCount`. A job received twice
/// already (each time left to come back) reaches a worker on its third
/// receive with `queue.max_receives` 2: the worker must dead-letter it with
/// its reason. SQS's own redrive (`maxReceiveCount`, one above
/// `max_receives` on a queue hookq creates) never gets to move it silently.
/// Before the fix the queue got `maxReceiveCount` 10 and the worker
/// delivered the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_received_max_receives_times_is_dead_lettered_with_its_count_on_sqs() {
    let r = Receiver::start(&[("key-1", "secret-1")]).await;
    let dir = temp_dir("poison-sqs");
    let name = format!("poison-{}", std::process::id());
    let mut cfg = base(&r, 2000);
    cfg["queue"] = json!({"driver": "sqs", "max_receives": 2, "sqs": {
        "queue_name": name, "endpoint_url": Moto::shared().endpoint_url(), "region": "us-east-1",
        "visibility_timeout": 4, "wait_time_seconds": 1}});
    let (p, queue) = producer(&cfg).await;
    p.publish(
        "app-1",
        Event::client_event("private-c", "client-e", "again", "1.1"),
    )
    .await
    .unwrap();
    // Two receives that end without a settle, as two workers that died would.
    for n in 1..=2 {
        let got = poll(
            &format!("receive {n}"),
            Duration::from_secs(15),
            Duration::from_millis(10),
            async || match queue.receive(1, Duration::from_secs(1)).await.unwrap() {
                got if got.is_empty() => Err("nothing yet".to_string()),
                got => Ok(got),
            },
        )
        .await;
        assert_eq!(got[0].receive_count, n);
        queue.release(&got[0].handle, Duration::ZERO).await.unwrap();
    }
    let mut w = WorkerProcess::start(&dir, "w1", &cfg).await;
    let (limit, every) = (Duration::from_secs(30), Duration::from_millis(200));
    let all = DlqFilter::default();
    let dlq = wait_dead(&r, limit, every, async || {
        queue.dlq_list(&all).await.unwrap()
    })
    .await;
    let [entry] = &dlq[..] else {
        panic!("one entry: {dlq:?}")
    };
    assert_poisoned(&entry.reason, 3, 2);
    assert!(r.requests(PATH).is_empty(), "{}", seen(&r));
    assert!(w.terminate(Duration::from_secs(15)).success());
}

/// Item 8: a job `LPUSH`ed with a byte that is not UTF-8 (0xFF in its
/// `data`). It must not be delivered; its DLQ entry keeps the exact bytes
/// (`job_base64`), `hookq dlq list` shows it, and `hookq dlq replay` puts
/// the very same bytes back. Before the fix the Redis driver turned the byte
/// into U+FFFD and the worker delivered the altered event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_is_not_utf8_is_dead_lettered_with_its_bytes_intact() {
    let redis = RedisServer::start();
    let r = Receiver::start(&[("key-1", "secret-1")]).await;
    let dir = temp_dir("not-utf8");
    let mut cfg = base(&r, 2000);
    cfg["queue"] = json!({"driver": "redis",
        "redis": {"url": redis.url(), "prefix": "not-utf8", "lease_ms": 3000}});
    let path = write_config(&dir, "cli.json", &cfg);
    let path = path.to_str().unwrap();
    let mut w = WorkerProcess::start(&dir, "w1", &cfg).await;
    let mut bad = br#"{"v":1,"kind":"event","id":"latin1-1","app_id":"app-1","event":{"name":"client_event","channel":"private-c","event":"client-e","data":"caf"#.to_vec();
    bad.push(0xE9); // "é" in Latin-1: not UTF-8
    bad.extend_from_slice(br#"","socket_id":"1.1"}}"#);
    let good = r#"{"v":1,"kind":"event","id":"utf8-1","app_id":"app-1","event":{"name":"client_event","channel":"private-c","event":"client-e","data":"café","socket_id":"1.1"}}"#;
    let ready = ready_key("not-utf8");
    redis
        .command_bytes(&[b"LPUSH", ready.as_bytes(), &bad])
        .unwrap();
    redis
        .command_bytes(&[b"LPUSH", ready.as_bytes(), good.as_bytes()])
        .unwrap();
    // The good job was pushed after the bad one: once it is delivered, the
    // bad one has been taken too.
    r.wait_for("the UTF-8 job", Duration::from_secs(15), |r| {
        r.delivered_events(PATH)
            .iter()
            .any(|e| e["id"] == "utf8-1" || e["data"] == "café")
    })
    .await;
    let (limit, every) = (Duration::from_secs(10), Duration::from_millis(50));
    let dlq = wait_dead(&r, limit, every, async || redis_dlq(&redis, "not-utf8")).await;
    assert_eq!(r.delivered_events(PATH).len(), 1, "{}", seen(&r));
    let [entry] = &dlq[..] else {
        panic!("one entry: {dlq:?}")
    };
    let reason = entry["reason"].as_str().unwrap();
    assert!(reason.contains("not UTF-8"), "{reason}");
    let kept = base64::engine::general_purpose::STANDARD
        .decode(entry["job_base64"].as_str().expect("job_base64"))
        .unwrap();
    assert_eq!(kept, bad, "the bytes are kept exactly");
    assert_eq!(entry["app_id"], "app-1");

    let (ok, out, err) = hookq(&["dlq", "list", "--config", path]);
    assert!(
        ok && out.contains("not UTF-8") && out.contains("1 entry"),
        "{out}{err}"
    );
    let (ok, out, err) = hookq(&["dlq", "list", "--json", "--config", path]);
    assert!(ok && out.contains("\"job_base64\""), "{out}{err}");

    // Replay with no worker running, then look at what is in `ready`.
    assert!(w.terminate(Duration::from_secs(15)).success());
    let (ok, out, err) = hookq(&["dlq", "replay", "--config", path]);
    assert!(ok && out.contains("replayed 1 entries"), "{out}{err}");
    let back = redis.command(&["LRANGE", &ready, "0", "-1"]).unwrap();
    assert_eq!(
        back,
        RedisReply::Array(Some(vec![RedisReply::Bulk(Some(bad))])),
        "replay puts back the same bytes"
    );
}
