//! Flap suppression (issue 16, item 5; `webhooks.vacate_delay_ms`) with
//! real `hookq worker` processes on one redis-server: a vacate (or leave)
//! waits in the queue for the delay; an occupy (or re-add) of the same
//! channel (and user) within it cancels both, whichever worker takes which;
//! a vacate alone is sent once the delay has passed, even when the worker
//! that held it was SIGKILLed; and events that came in through `hookq
//! ingest` are treated the same.

use crate::support::inproc::{InProc, config, one_app};
use crate::support::process::{WorkerProcess, temp_dir};
use crate::support::queue::{producer, wait_drained};
use crate::support::receiver::Receiver;
use crate::support::redis_server::RedisServer;
use crate::support::sender::{Sender, body};
use crate::support::wait::poll;
use hookq_core::Event;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const TYPES: [&str; 4] = [
    "channel_occupied",
    "channel_vacated",
    "member_added",
    "member_removed",
];

/// One app (`app-1`) on `redis` whose endpoint `/e` takes the four
/// occupancy and presence events, with `delay_ms` of flap suppression.
fn flap_config(redis: &RedisServer, r: &Receiver, prefix: &str, delay_ms: u64) -> Value {
    // A second endpoint, so that a held or dropped job is settled as a whole.
    let webhooks = json!([
        {"id": "e", "url": r.url("/e"), "event_types": TYPES},
        {"id": "e2", "url": r.url("/e2"), "event_types": ["channel_vacated", "channel_occupied"]}
    ]);
    let mut cfg = config(
        one_app(webhooks),
        json!({"vacate_delay_ms": delay_ms, "batching": {"enabled": false}, "request_timeout_ms": 2000}),
    );
    cfg["queue"] = json!({"driver": "redis", "redis": {"url": redis.url(), "prefix": prefix, "lease_ms": 3000}});
    cfg
}

/// `(name, channel, user_id)` of every event `/e` received, in arrival order,
/// with its arrival time.
fn arrived(r: &Receiver) -> Vec<(String, String, String, Instant)> {
    let mut out = Vec::new();
    for q in r.requests("/e").iter().filter(|q| q.answered == 200) {
        for e in q.events() {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            out.push((s("name"), s("channel"), s("user_id"), q.at));
        }
    }
    out
}

fn count(r: &Receiver, name: &str, channel: &str) -> usize {
    arrived(r)
        .iter()
        .filter(|(n, c, ..)| n == name && c == channel)
        .count()
}

/// Waits until worker `w` has held `n` vacates and leaves in all.
async fn wait_held(w: &WorkerProcess, n: f64) {
    poll(
        "vacates held",
        Duration::from_secs(20),
        Duration::from_millis(20),
        async || {
            let v = w
                .metric("hookq_flap_total{step=\"held\",event=\"channel_vacated\"}")
                .await
                .unwrap_or(0.0);
            let m = w
                .metric("hookq_flap_total{step=\"held\",event=\"member_removed\"}")
                .await
                .unwrap_or(0.0);
            if v + m >= n {
                Ok(())
            } else {
                Err(format!("{v} vacates, {m} leaves held"))
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_two_workers_a_reoccupy_cancels_both_and_a_lone_vacate_is_sent_after_the_delay() {
    // Long enough for w1 to stop and w2 to start before the vacates are due.
    const DELAY: Duration = Duration::from_millis(5000);
    let redis = RedisServer::start();
    let r = Receiver::start(&[("key-1", "secret-1")]).await;
    let dir = temp_dir("flap2");
    let cfg = flap_config(&redis, &r, "flap2", DELAY.as_millis() as u64);
    let (p, queue) = producer(&cfg).await;

    // w1 alone takes the vacate and the leave: both held.
    let mut w1 = WorkerProcess::start_ready(&dir, "w1", &cfg).await;
    let published = Instant::now();
    p.publish_batch(
        "app-1",
        vec![
            Event::channel_vacated("room-a"),
            Event::channel_vacated("room-b"),
            Event::member_removed("presence-x", "u1"),
        ],
    )
    .await
    .unwrap();
    wait_held(&w1, 3.0).await;
    assert!(
        arrived(&r).is_empty(),
        "nothing sent at once: {:?}",
        arrived(&r)
    );
    // w2 alone takes the re-occupy and the re-add (w1 paused: it holds no
    // job, the vacates are in the queue), then both run while the held
    // copies come due.
    w1.signal("STOP");
    let mut w2 = WorkerProcess::start_ready(&dir, "w2", &cfg).await;
    p.publish_batch(
        "app-1",
        vec![
            Event::channel_occupied("room-a"),
            Event::member_added("presence-x", "u1"),
            Event::channel_occupied("room-c"),
        ],
    )
    .await
    .unwrap();
    r.wait_for("room-c's occupy", Duration::from_secs(10), |r| {
        count(r, "channel_occupied", "room-c") >= 1
    })
    .await;
    poll(
        "w2's suppressions",
        Duration::from_secs(10),
        Duration::from_millis(20),
        async || {
            let n = w2
                .metric("hookq_flap_total{step=\"suppressed\",event=\"member_added\"}")
                .await;
            if n == Some(1.0) {
                Ok(())
            } else {
                Err(format!("{n:?}"))
            }
        },
    )
    .await;
    assert!(
        published.elapsed() < DELAY,
        "the occupies were handled before the vacates came due"
    );
    w1.signal("CONT");
    r.wait_for("room-b's vacate", Duration::from_secs(20), |r| {
        count(r, "channel_vacated", "room-b") >= 1
    })
    .await;
    let d = wait_drained(&*queue, Duration::from_secs(20)).await;
    // Anything still to come would have been due with room-b's.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = arrived(&r);
    let lone = got
        .iter()
        .find(|(n, c, ..)| n == "channel_vacated" && c == "room-b")
        .map(|(.., at)| at.duration_since(published))
        .unwrap();
    eprintln!(
        "received {:?}; room-b's vacate {lone:?} after it was published (delay {DELAY:?})",
        got.iter()
            .map(|(n, c, u, _)| format!("{n} {c} {u}"))
            .collect::<Vec<_>>()
    );
    assert_eq!(d.dead, 0);
    assert!(lone >= DELAY, "the lone vacate waited the delay: {lone:?}");
    assert_eq!(count(&r, "channel_vacated", "room-b"), 1, "sent once");
    assert_eq!(
        count(&r, "channel_occupied", "room-c"),
        1,
        "an occupy alone is sent"
    );
    for (name, channel) in [
        ("channel_vacated", "room-a"),
        ("channel_occupied", "room-a"),
        ("member_removed", "presence-x"),
        ("member_added", "presence-x"),
    ] {
        assert_eq!(count(&r, name, channel), 0, "{name} {channel} suppressed");
    }
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(r.all().iter().all(|q| q.valid));
    let suppressed = w2
        .metric("hookq_flap_total{step=\"suppressed\",event=\"channel_occupied\"}")
        .await;
    assert_eq!(suppressed, Some(1.0), "w2 dropped the re-occupy");
    for w in [&mut w1, &mut w2] {
        assert!(w.terminate(Duration::from_secs(15)).success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_vacate_survives_the_sigkill_of_the_worker_that_held_it() {
    const DELAY: Duration = Duration::from_millis(3000);
    let redis = RedisServer::start();
    let r = Receiver::start(&[("key-1", "secret-1")]).await;
    let dir = temp_dir("flapkill");
    let cfg = flap_config(&redis, &r, "flapkill", DELAY.as_millis() as u64);
    let (p, queue) = producer(&cfg).await;
    let mut w1 = WorkerProcess::start_ready(&dir, "w1", &cfg).await;
    let published = Instant::now();
    p.publish_batch(
        "app-1",
        vec![
            Event::channel_vacated("room-k"),
            Event::member_removed("presence-k", "u7"),
        ],
    )
    .await
    .unwrap();
    wait_held(&w1, 2.0).await;
    w1.kill();
    let mut w2 = WorkerProcess::start_ready(&dir, "w2", &cfg).await;
    r.wait_for("the held vacate and leave", Duration::from_secs(30), |r| {
        arrived(r).len() >= 2
    })
    .await;
    let d = wait_drained(&*queue, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = arrived(&r);
    let after: Vec<Duration> = got
        .iter()
        .map(|(.., at)| at.duration_since(published))
        .collect();
    eprintln!(
        "after w1's SIGKILL, w2 sent {} events, {after:?} after publishing",
        got.len()
    );
    assert_eq!(d.dead, 0);
    assert_eq!(count(&r, "channel_vacated", "room-k"), 1);
    assert_eq!(count(&r, "member_removed", "presence-k"), 1);
    assert!(after.iter().all(|a| *a >= DELAY), "{after:?}");
    assert!(w2.terminate(Duration::from_secs(15)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_through_the_ingest_are_held_and_cancelled_the_same_way() {
    const DELAY: Duration = Duration::from_millis(3000);
    let redis = RedisServer::start();
    let r = Receiver::start(&[("key-1", "secret-1")]).await;
    let dir = temp_dir("flapingest");
    let cfg = flap_config(&redis, &r, "flapingest", DELAY.as_millis() as u64);
    let (_p, queue) = producer(&cfg).await;
    let ingest = WorkerProcess::start_ingest(&dir, "ingest", &cfg).await;
    let mut w = WorkerProcess::start_ready(&dir, "w", &cfg).await;
    let sender = Sender::new();
    let post = async |events: Vec<Value>| {
        let a = sender
            .post(&ingest.ingest_url(), "key-1", "secret-1", &body(&events))
            .await
            .unwrap();
        assert_eq!(a.status, 200, "{}", a.body);
    };
    post(vec![
        json!({"name": "channel_vacated", "channel": "room-i"}),
        json!({"name": "channel_vacated", "channel": "room-j"}),
    ])
    .await;
    wait_held(&w, 2.0).await;
    // A client reconnects to room-i within the delay.
    post(vec![
        json!({"name": "channel_occupied", "channel": "room-i"}),
    ])
    .await;
    r.wait_for("room-j's vacate", Duration::from_secs(20), |r| {
        count(r, "channel_vacated", "room-j") >= 1
    })
    .await;
    wait_drained(&*queue, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = arrived(&r);
    assert_eq!(got.len(), 1, "only room-j's vacate: {got:?}");
    let second: Vec<Value> = r.delivered_events("/e2");
    assert_eq!(second.len(), 1, "the other endpoint too: {second:?}");
    assert_eq!(second[0]["channel"], "room-j");
    assert!(r.all().iter().all(|q| q.valid));
    assert!(w.terminate(Duration::from_secs(15)).success());
}

/// On the memory queue the markers are the worker's own (a map in memory):
/// the same rules, for the one worker there is.
#[tokio::test]
async fn on_the_memory_queue_the_worker_keeps_the_markers_itself() {
    let r = Receiver::start(&[("key-1", "secret-1")]).await;
    let webhooks = json!([{"id": "e", "url": r.url("/e"), "event_types": TYPES}]);
    let w = InProc::start(config(
        one_app(webhooks),
        json!({"vacate_delay_ms": 800, "batching": {"enabled": false}}),
    ))
    .await;
    let published = Instant::now();
    w.publish(vec![
        Event::channel_vacated("room-m"),
        Event::channel_vacated("room-n"),
        Event::member_removed("presence-m", "u1"),
    ])
    .await;
    w.publish(vec![
        Event::channel_occupied("room-m"),
        Event::member_added("presence-m", "u1"),
    ])
    .await;
    r.wait_for("room-n's vacate", Duration::from_secs(10), |r| {
        count(r, "channel_vacated", "room-n") >= 1
    })
    .await;
    w.wait_idle(Duration::from_secs(10)).await;
    let got = arrived(&r);
    assert_eq!(got.len(), 1, "only room-n's vacate: {got:?}");
    assert!(got[0].3.duration_since(published) >= Duration::from_millis(800));
    w.stop().await;
}
