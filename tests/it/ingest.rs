//! The ingest, end to end: a sender that signs as Pusher-protocol servers do
//! posts to real `hookq ingest` processes (or a worker serving the ingest in
//! its own process) over a real redis-server, and real workers deliver to a
//! verifying receiver. Bad input, slow clients, Redis going away, re-sent
//! bodies, and an ingest and a worker SIGKILLed mid-run.

use crate::support::inproc::config;
use crate::support::process::{WorkerProcess, hookq, temp_dir, write_config};
use crate::support::queue::{open, parse};
use crate::support::receiver::{Receiver, Reply};
use crate::support::redis_server::RedisServer;
use crate::support::sender::{Sender, body};
use crate::support::wait::poll;
use hookq_queue::QueueDriver;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ALL_TYPES: [&str; 7] = [
    "channel_occupied",
    "channel_vacated",
    "member_added",
    "member_removed",
    "client_event",
    "cache_miss",
    "subscription_count",
];

/// One event of every type, some with fields hookq does not know.
fn every_event(tag: &str) -> Vec<Value> {
    vec![
        json!({"name": "channel_occupied", "channel": format!("room-{tag}")}),
        json!({"name": "channel_vacated", "channel": format!("room-{tag}"), "server_note": "x"}),
        json!({"name": "member_added", "channel": format!("presence-{tag}"), "user_id": "u1",
               "user_info": {"name": "Ann", "tags": [1, 2]}}),
        json!({"name": "member_removed", "channel": format!("presence-{tag}"), "user_id": "u1"}),
        json!({"name": "client_event", "channel": format!("private-{tag}"), "event": "client-typing",
               "data": "{\"typing\":true}", "socket_id": "123.456", "user_id": "u1"}),
        json!({"name": "cache_miss", "channel": format!("cache-{tag}")}),
        json!({"name": "subscription_count", "channel": format!("room-{tag}"), "subscription_count": 3}),
    ]
}

/// Two apps: app-1 with an endpoint for everything and one for presence
/// joins and leaves; app-2 with one for everything.
fn apps(r: &Receiver) -> Value {
    json!([
        {"id": "app-1", "key": "key-1", "secret": "secret-1", "webhooks": [
            {"id": "all", "url": r.url("/app-1/all"), "event_types": ALL_TYPES},
            {"id": "presence", "url": r.url("/app-1/presence"),
             "event_types": ["member_added", "member_removed"], "filter": {"channel_prefix": "presence-"}}
        ]},
        {"id": "app-2", "key": "key-2", "secret": "secret-2", "webhooks": [
            {"id": "all", "url": r.url("/app-2/all"), "event_types": ALL_TYPES}
        ]}
    ])
}

async fn receiver() -> Receiver {
    Receiver::start(&[("key-1", "secret-1"), ("key-2", "secret-2")]).await
}

fn redis_config(redis: &RedisServer, prefix: &str, apps: Value) -> Value {
    let mut c = config(apps, json!({"request_timeout_ms": 2000}));
    c["queue"] = json!({"driver": "redis", "redis": {"url": redis.url(), "prefix": prefix, "lease_ms": 3000}});
    c
}

async fn queue_of(config: &Value) -> Arc<dyn QueueDriver> {
    open(&parse(config)).await
}

/// A client event carrying its number `i` as `data`.
fn numbered(i: usize) -> Value {
    json!({"name": "client_event", "channel": "private-c", "event": "client-n",
           "data": i.to_string(), "socket_id": "1.1"})
}

/// Events as compared: their JSON text with keys sorted.
fn texts(events: &[Value]) -> Vec<String> {
    let mut out: Vec<String> = events.iter().map(Value::to_string).collect();
    out.sort();
    out
}

#[tokio::test]
async fn signed_webhooks_of_every_type_reach_their_endpoints_with_every_field() {
    let redis = RedisServer::start();
    let r = receiver().await;
    let dir = temp_dir("ingest-types");
    let cfg = redis_config(&redis, "types", apps(&r));
    let ingest = WorkerProcess::start_ingest(&dir, "ingest", &cfg).await;
    let _worker = WorkerProcess::start(&dir, "worker", &cfg).await;
    let sender = Sender::new();

    // app-1: each event alone (batching off at the sender), then all in one body.
    let single = every_event("a");
    for e in &single {
        let a = sender
            .post(
                &ingest.ingest_url(),
                "key-1",
                "secret-1",
                &body(std::slice::from_ref(e)),
            )
            .await
            .unwrap();
        assert_eq!(a.status, 200, "{}", a.body);
    }
    let batched = every_event("b");
    let a = sender
        .post(&ingest.ingest_url(), "key-1", "secret-1", &body(&batched))
        .await
        .unwrap();
    assert_eq!(
        (a.status, a.body.contains("\"accepted\":7")),
        (200, true),
        "{}",
        a.body
    );
    // A newer server's event hookq does not know is skipped, the others go in.
    let other = every_event("c");
    let mut with_unknown = other.clone();
    with_unknown.push(json!({"name": "member_updated", "channel": "presence-c", "user_id": "u1"}));
    let a = sender
        .post(
            &ingest.ingest_url(),
            "key-2",
            "secret-2",
            &body(&with_unknown),
        )
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    let answer: Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(
        (answer["accepted"].as_u64(), answer["skipped"].as_u64()),
        (Some(7), Some(1))
    );

    r.wait_for(
        "every event at its endpoints",
        Duration::from_secs(20),
        |r| {
            r.delivered_events("/app-1/all").len() >= 14
                && r.delivered_events("/app-1/presence").len() >= 4
                && r.delivered_events("/app-2/all").len() >= 7
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let app1: Vec<Value> = single.iter().chain(&batched).cloned().collect();
    assert_eq!(texts(&r.delivered_events("/app-1/all")), texts(&app1));
    let presence: Vec<Value> = app1
        .iter()
        .filter(|e| e["name"].as_str().unwrap().starts_with("member_"))
        .cloned()
        .collect();
    assert_eq!(
        texts(&r.delivered_events("/app-1/presence")),
        texts(&presence)
    );
    assert_eq!(texts(&r.delivered_events("/app-2/all")), texts(&other));
    for req in r.all() {
        assert!(req.valid, "signed anew for its endpoint's app: {req:?}");
        let app = req.path.split('/').nth(1).unwrap().replace("app-", "key-");
        assert_eq!(req.header("x-pusher-key"), Some(app.as_str()));
    }
    let accepted = ingest
        .metric("hookq_ingest_events_total{result=\"accepted\"}")
        .await;
    assert_eq!(accepted, Some(21.0));
}

#[tokio::test]
async fn bad_requests_get_their_status_and_enqueue_nothing() {
    let redis = RedisServer::start();
    let r = receiver().await;
    let dir = temp_dir("ingest-bad");
    let mut cfg = redis_config(&redis, "bad", apps(&r));
    cfg["ingest"] = json!({"max_body_bytes": 4096});
    let ingest = WorkerProcess::start_ingest(&dir, "ingest", &cfg).await;
    let queue = queue_of(&cfg).await;
    let sender = Sender::new();
    let url = ingest.ingest_url();
    let good = body(&[json!({"name": "channel_occupied", "channel": "room"})]);
    let sig = |secret: &str, b: &[u8]| crate::support::receiver::hmac_hex(secret.as_bytes(), b);

    let unauthorized = [
        (
            "wrong signature",
            vec![
                ("x-pusher-key", "key-1".to_string()),
                ("x-pusher-signature", sig("secret-2", &good)),
            ],
        ),
        (
            "unknown key",
            vec![
                ("x-pusher-key", "key-9".to_string()),
                ("x-pusher-signature", sig("secret-1", &good)),
            ],
        ),
        (
            "no key",
            vec![("x-pusher-signature", sig("secret-1", &good))],
        ),
        ("no signature", vec![("x-pusher-key", "key-1".to_string())]),
    ];
    let mut answers = HashSet::new();
    for (what, headers) in &unauthorized {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let a = sender.send(&url, &h, &good).await.unwrap();
        assert_eq!(a.status, 401, "{what}: {a:?}");
        answers.insert(a.body);
    }
    assert_eq!(
        answers.len(),
        1,
        "one answer for every 401, so keys cannot be probed: {answers:?}"
    );

    let huge = body(&[json!({"name": "channel_occupied", "channel": "x".repeat(5000)})]);
    for (what, b, status, says) in [
        ("not JSON", b"hello".to_vec(), 400, "not a webhook object"),
        (
            "JSON, not a webhook",
            br#"{"hello":1}"#.to_vec(),
            400,
            "`time_ms`",
        ),
        (
            "no events",
            br#"{"time_ms":1}"#.to_vec(),
            400,
            "missing `events`",
        ),
        (
            "an event without a name",
            body(&[json!({"channel": "c"})]),
            400,
            "events[0]: no `name`",
        ),
        (
            "a member event without its user",
            body(&[json!({"name": "member_added", "channel": "presence-c"})]),
            400,
            "user_id",
        ),
        ("over max_body_bytes", huge, 413, "over 4096 bytes"),
    ] {
        let a = sender.post(&url, "key-1", "secret-1", &b).await.unwrap();
        assert_eq!(a.status, status, "{what}: {a:?}");
        assert!(a.body.contains(says), "{what}: {a:?}");
    }
    let d = queue.depth().await.unwrap();
    assert_eq!(d.ready + d.delayed, 0, "nothing enqueued: {d:?}");

    let a = sender.post(&url, "key-1", "secret-1", &good).await.unwrap();
    assert_eq!(a.status, 200, "and a good request still goes in: {a:?}");
    assert_eq!(queue.depth().await.unwrap().ready, 1);
    let unauthorized_count = ingest
        .metric("hookq_ingest_requests_total{outcome=\"unauthorized\"}")
        .await;
    assert_eq!(unauthorized_count, Some(4.0));
}

/// Reads what the server sends on `conn` until it closes, for at most `limit`.
async fn read_until_closed(conn: &mut tokio::net::TcpStream, limit: Duration) -> Option<String> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(limit, conn.read_to_end(&mut got)).await;
    read.ok()
        .map(|_| String::from_utf8_lossy(&got).into_owned())
}

#[tokio::test]
async fn slow_clients_are_cut_off_while_others_are_answered() {
    let redis = RedisServer::start();
    let r = receiver().await;
    let dir = temp_dir("ingest-slow");
    let mut cfg = redis_config(&redis, "slow", apps(&r));
    cfg["ingest"] = json!({"header_timeout_ms": 500, "body_timeout_ms": 500});
    let ingest = WorkerProcess::start_ingest(&dir, "ingest", &cfg).await;
    let queue = queue_of(&cfg).await;
    let addr = ("127.0.0.1", ingest.ingest_port);

    // Ten clients that never finish their headers, ten that never finish their body.
    let mut held_headers = Vec::new();
    let mut held_bodies = Vec::new();
    for _ in 0..10 {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(b"POST /pusher/webhooks HTTP/1.1\r\nHost: x\r\nX-Pusher-Key: key-1\r\n")
            .await
            .unwrap();
        held_headers.push(c);
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(
            b"POST /pusher/webhooks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              X-Pusher-Key: key-1\r\nX-Pusher-Signature: 00\r\nContent-Length: 100\r\n\r\n{\"time_ms\":",
        )
        .await
        .unwrap();
        held_bodies.push(c);
    }
    let sender = Sender::new();
    let good = body(&[json!({"name": "channel_occupied", "channel": "room"})]);
    let a = sender
        .post(&ingest.ingest_url(), "key-1", "secret-1", &good)
        .await
        .unwrap();
    assert_eq!(a.status, 200, "others are answered meanwhile: {a:?}");

    for mut c in held_headers {
        let got = read_until_closed(&mut c, Duration::from_secs(5)).await;
        assert!(
            got.is_some(),
            "a connection holding its headers is closed by the header timeout"
        );
    }
    for mut c in held_bodies {
        let got = read_until_closed(&mut c, Duration::from_secs(5)).await;
        let got = got.expect("a connection holding its body is answered and closed");
        assert!(got.starts_with("HTTP/1.1 408"), "{got:?}");
    }
    assert_eq!(
        queue.depth().await.unwrap().ready,
        1,
        "only the good request's job"
    );
}

#[tokio::test]
async fn a_queue_that_goes_away_is_answered_503_and_then_200_again() {
    let mut redis = RedisServer::start_persistent();
    let r = receiver().await;
    let dir = temp_dir("ingest-down");
    let cfg = redis_config(&redis, "down", apps(&r));
    let ingest = WorkerProcess::start_ingest(&dir, "ingest", &cfg).await;
    let sender = Sender::new();
    let url = ingest.ingest_url();

    let a = sender
        .post(&url, "key-2", "secret-2", &body(&[numbered(0)]))
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{a:?}");
    redis.stop();
    let a = sender
        .post(&url, "key-2", "secret-2", &body(&[numbered(1)]))
        .await
        .unwrap();
    assert_eq!(a.status, 503, "{a:?}");
    assert_eq!(a.retry_after.as_deref(), Some("1"));
    let (ready, _) = ingest.get("/ready").await.unwrap();
    assert_eq!(ready, 503, "not ready while the queue is away");
    redis.resume();
    // The same ingest process, not restarted: the sender's retry goes in.
    let tries = sender
        .post_until_ok(
            std::slice::from_ref(&url),
            "key-2",
            "secret-2",
            &body(&[numbered(1)]),
            Duration::from_secs(20),
        )
        .await;
    assert!(tries >= 1);
    let a = sender
        .post(&url, "key-2", "secret-2", &body(&[numbered(2)]))
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(ingest.get("/ready").await.unwrap().0, 200);

    let _worker = WorkerProcess::start(&dir, "worker", &cfg).await;
    r.wait_for("the three accepted events", Duration::from_secs(20), |r| {
        r.delivered_events("/app-2/all").len() >= 3
    })
    .await;
    let data: HashSet<String> = r
        .delivered_events("/app-2/all")
        .iter()
        .map(|e| e["data"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(data, HashSet::from(["0".into(), "1".into(), "2".into()]));
}

#[tokio::test]
async fn a_resent_body_is_delivered_once_whichever_replica_takes_it() {
    let redis = RedisServer::start();
    let r = receiver().await;
    let dir = temp_dir("ingest-dedup");
    let cfg = redis_config(&redis, "dedup", apps(&r));
    let a_ingest = WorkerProcess::start_ingest(&dir, "ingest-a", &cfg).await;
    let b_ingest = WorkerProcess::start_ingest(&dir, "ingest-b", &cfg).await;
    let _worker = WorkerProcess::start(&dir, "worker", &cfg).await;
    let sender = Sender::new();
    let b = body(&every_event("d"));
    for (url, duplicate) in [
        (a_ingest.ingest_url(), false),
        (a_ingest.ingest_url(), true),
        (b_ingest.ingest_url(), true),
    ] {
        let a = sender.post(&url, "key-2", "secret-2", &b).await.unwrap();
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(a.body.contains("\"duplicate\":true"), duplicate, "{a:?}");
    }
    // A body that differs in one byte (a later time_ms) is a new webhook.
    let mut later: Value = serde_json::from_slice(&b).unwrap();
    later["time_ms"] = json!(later["time_ms"].as_u64().unwrap() + 1);
    let a = sender
        .post(
            &b_ingest.ingest_url(),
            "key-2",
            "secret-2",
            &serde_json::to_vec(&later).unwrap(),
        )
        .await
        .unwrap();
    assert!(a.body.contains("\"accepted\":7"), "{a:?}");

    r.wait_for("both webhooks' events", Duration::from_secs(20), |r| {
        r.delivered_events("/app-2/all").len() >= 14
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        r.delivered_events("/app-2/all").len(),
        14,
        "the re-sent body was enqueued once"
    );
}

#[tokio::test]
async fn an_ingest_and_a_worker_killed_mid_run_lose_nothing() {
    const EVENTS: usize = 5_000;
    const PER_BODY: usize = 20;
    let redis = RedisServer::start();
    let r = receiver().await;
    let dir = temp_dir("ingest-kill");
    // A receiver that takes 30 ms per request, so deliveries are in flight
    // (and jobs held) when the worker dies.
    r.always(
        "/app-2/all",
        Reply::status(200).after(Duration::from_millis(30)),
    );
    let cfg = redis_config(&redis, "kill", apps(&r));
    let mut ingest_a = WorkerProcess::start_ingest(&dir, "ingest-a", &cfg).await;
    let ingest_b = WorkerProcess::start_ingest(&dir, "ingest-b", &cfg).await;
    let mut worker_a = WorkerProcess::start(&dir, "worker-a", &cfg).await;
    let _worker_b = WorkerProcess::start(&dir, "worker-b", &cfg).await;
    let urls = vec![ingest_a.ingest_url(), ingest_b.ingest_url()];

    // Eight senders, each posting its share of bodies of 20 client events
    // numbered by `data`, retrying every non-200 at the next ingest.
    let sender = Sender::new();
    let bodies: Vec<Vec<u8>> = (0..EVENTS / PER_BODY)
        .map(|b| {
            let events: Vec<Value> = (b * PER_BODY..(b + 1) * PER_BODY).map(numbered).collect();
            body(&events)
        })
        .collect();
    let bodies = Arc::new(bodies);
    let posted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let retries = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for t in 0..8 {
        let (sender, bodies, posted, retries) = (
            sender.clone(),
            bodies.clone(),
            posted.clone(),
            retries.clone(),
        );
        let mut urls = urls.clone();
        urls.rotate_left(t % 2);
        tasks.push(tokio::spawn(async move {
            for b in bodies.iter().skip(t).step_by(8) {
                let tries = sender
                    .post_until_ok(&urls, "key-2", "secret-2", b, Duration::from_secs(60))
                    .await;
                retries.fetch_add(tries - 1, std::sync::atomic::Ordering::Relaxed);
                posted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    let start = Instant::now();
    let (limit, every) = (Duration::from_secs(60), Duration::from_millis(5));
    poll("a third of the bodies posted", limit, every, async || {
        let n = posted.load(std::sync::atomic::Ordering::Relaxed);
        (n >= bodies.len() / 3)
            .then_some(())
            .ok_or_else(|| format!("the senders stalled at {n} bodies"))
    })
    .await;
    let held = poll(
        "a held job",
        limit.saturating_sub(start.elapsed()),
        every,
        async || {
            let held = worker_a.metric("hookq_jobs_held").await.unwrap_or(0.0);
            (held > 0.0)
                .then_some(held)
                .ok_or_else(|| "worker-a never held a job".to_string())
        },
    )
    .await;
    ingest_a.kill();
    worker_a.kill();
    for t in tasks {
        t.await.unwrap();
    }

    r.wait_for("every event", Duration::from_secs(60), |r| {
        let seen: HashSet<String> = r
            .delivered_events("/app-2/all")
            .iter()
            .map(|e| e["data"].as_str().unwrap_or("").to_string())
            .collect();
        seen.len() == EVENTS
    })
    .await;
    let delivered = r.delivered_events("/app-2/all").len();
    let retries = retries.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "{EVENTS} events: {delivered} deliveries ({} duplicates; worker-a held {held} jobs when killed); \
         the senders retried {retries} posts",
        delivered - EVENTS
    );
    assert!(
        retries > 0,
        "the senders met the killed ingest and retried elsewhere"
    );
    assert!(r.all().iter().all(|q| q.valid));
}

#[tokio::test]
async fn one_process_serves_ingest_and_worker_on_the_memory_queue() {
    let r = receiver().await;
    let dir = temp_dir("ingest-inproc");
    let mut cfg = config(apps(&r), json!({}));
    cfg["ingest"] = json!({"enabled": true});
    let worker = WorkerProcess::start(&dir, "single", &cfg).await;
    let a = Sender::new()
        .post(
            &worker.ingest_url(),
            "key-1",
            "secret-1",
            &body(&every_event("e")),
        )
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{a:?}");
    r.wait_for("the events", Duration::from_secs(10), |r| {
        r.delivered_events("/app-1/all").len() == 7
            && r.delivered_events("/app-1/presence").len() == 2
    })
    .await;
    let metrics = worker.get("/metrics").await.unwrap().1;
    assert!(
        metrics.contains("hookq_ingest_requests_total{outcome=\"accepted\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hookq_jobs_received_total"),
        "the worker's own metrics too"
    );
}

#[test]
fn an_endpoint_pointing_back_at_the_ingest_is_refused() {
    let dir = temp_dir("ingest-loop");
    let mut cfg = config(
        json!([{"id": "a", "key": "k", "secret": "s", "webhooks": [
            {"url": "https://example.com/hooks", "event_types": ["channel_occupied"]},
            {"url": "http://127.0.0.1:8080/pusher/webhooks", "event_types": ["channel_occupied"]},
            {"url": "https://hooks.example.net/in/x", "event_types": ["channel_occupied"]}
        ]}]),
        json!({}),
    );
    cfg["ingest"] = json!({"urls": ["https://hooks.example.net/in"]});
    let path = write_config(&dir, "loop.json", &cfg);
    for command in ["check-config", "worker", "ingest"] {
        let (ok, _, err) = hookq(&[command, "--config", path.to_str().unwrap()]);
        assert!(!ok, "{command} refuses it");
        for at in ["webhooks[1].url", "webhooks[2].url"] {
            assert!(
                err.contains(&format!(
                    "app_manager.array.apps[0].{at}: points at hookq's own ingest"
                )),
                "{command}: {err}"
            );
        }
        assert!(!err.contains("webhooks[0].url"), "{err}");
    }
}

/// On SQS FIFO a re-sent body pushes the same job ids, which the queue drops
/// as duplicates within its five minutes: what went in before (a whole
/// earlier push, or the batches of 10 that went through before one failed)
/// is not enqueued twice, even through another replica that keeps no marker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqs_fifo_a_resent_body_enqueues_its_jobs_once() {
    use crate::support::moto::Moto;
    let r = receiver().await;
    let dir = temp_dir("ingest-fifo");
    let mut cfg = config(apps(&r), json!({}));
    cfg["queue"] = json!({"driver": "sqs", "sqs": {
        "queue_name": format!("ingest-{}", std::process::id()), "endpoint_url": Moto::shared().endpoint_url(),
        "region": "us-east-1", "fifo": true}});
    cfg["ingest"] = json!({"dedup_window_ms": 0});
    let a = WorkerProcess::start_ingest(&dir, "ingest-a", &cfg).await;
    let b = WorkerProcess::start_ingest(&dir, "ingest-b", &cfg).await;
    let events: Vec<Value> = (0..25).map(numbered).collect();
    let b_body = body(&events);
    let sender = Sender::new();
    for url in [a.ingest_url(), b.ingest_url()] {
        let answer = sender
            .post(&url, "key-2", "secret-2", &b_body)
            .await
            .unwrap();
        assert!(answer.body.contains("\"accepted\":25"), "{answer:?}");
    }
    let depth = queue_of(&cfg).await.depth().await.unwrap();
    assert_eq!(
        depth.ready, 25,
        "the second push was dropped by the queue: {depth:?}"
    );
}

/// SIGTERM while a request is half sent: the ingest stops accepting, lets the
/// request finish (answered 200, its job in the queue) and then exits.
#[tokio::test]
async fn a_shutdown_finishes_the_request_in_flight() {
    let redis = RedisServer::start();
    let r = receiver().await;
    let dir = temp_dir("ingest-term");
    let cfg = redis_config(&redis, "term", apps(&r));
    let mut ingest = WorkerProcess::start_ingest(&dir, "ingest", &cfg).await;
    let queue = queue_of(&cfg).await;
    let b = body(&[json!({"name": "channel_occupied", "channel": "room"})]);
    let sig = crate::support::receiver::hmac_hex(b"secret-1", &b);
    let head = format!(
        "POST /pusher/webhooks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         X-Pusher-Key: key-1\r\nX-Pusher-Signature: {sig}\r\nContent-Length: {}\r\n\r\n",
        b.len()
    );
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", ingest.ingest_port))
        .await
        .unwrap();
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&b[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid = ingest.pid().to_string();
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(ok.success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", ingest.ingest_port))
            .await
            .is_err(),
        "no new connections once SIGTERM arrived"
    );
    conn.write_all(&b[10..]).await.unwrap();
    let answer = read_until_closed(&mut conn, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    let status = ingest.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "a clean exit: {status:?}");
    assert_eq!(queue.depth().await.unwrap().ready, 1);
}

/// A stand-alone ingest on the memory queue would answer `200` for jobs no
/// worker can ever see (the queue lives and dies in its own process): it
/// refuses to start, and says what to do instead.
#[test]
fn a_stand_alone_ingest_refuses_the_memory_queue() {
    let dir = temp_dir("ingest-memory");
    let mut cfg = config(json!([]), json!({}));
    cfg["ingest"] = json!({"addr": format!("127.0.0.1:{}", crate::support::process::free_port())});
    cfg["worker"]["admin_addr"] = json!(format!(
        "127.0.0.1:{}",
        crate::support::process::free_port()
    ));
    let path = write_config(&dir, "memory.json", &cfg);
    let mut child = std::process::Command::new(crate::support::process::hookq_bin())
        .args(["ingest", "--config"])
        .arg(&path)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("`hookq ingest` on the memory queue started instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let err = std::io::read_to_string(child.stderr.take().unwrap()).unwrap();
    assert!(!status.success());
    assert!(
        err.contains("ingest.enabled"),
        "says what to do instead: {err}"
    );
}
