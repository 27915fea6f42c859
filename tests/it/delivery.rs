//! Delivery behaviour over the memory queue, asserted from what a real
//! receiver on 127.0.0.1 saw: routing, filters, headers, batching, the
//! envelope, signatures, retries, dead-lettering and shutdown.

use crate::support::inproc::{InProc, config, one_app};
use crate::support::receiver::{Receiver, Reply, hmac_hex};
use base64::Engine as _;
use hookq_core::Event;
use hookq_queue::{DlqFilter, Outgoing};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(15);

async fn receiver() -> Receiver {
    Receiver::start(&[("key-1", "secret-1"), ("key-2", "secret-2")]).await
}

/// A worker for `app-1` with one endpoint at `/h` (`webhook` adds its other keys).
async fn one_endpoint(r: &Receiver, mut webhook: Value, settings: Value) -> InProc {
    webhook["url"] = json!(r.url("/h"));
    InProc::start(config(one_app(json!([webhook])), settings)).await
}

fn names(events: &[Value]) -> Vec<String> {
    let mut n: Vec<String> = events
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    n.sort();
    n
}

fn channels(events: &[Value]) -> HashSet<String> {
    events
        .iter()
        .map(|e| e["channel"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn event_types_route_each_event_to_the_endpoints_that_want_it() {
    let r = receiver().await;
    let w = InProc::start(config(
        one_app(json!([
            {"url": r.url("/presence"), "event_types": ["member_added", "member_removed"]},
            {"url": r.url("/life"), "event_types": ["channel_occupied", "channel_vacated"]},
            {"url": r.url("/all"), "event_types": ["member_added", "member_removed", "channel_occupied",
                "channel_vacated", "client_event", "cache_miss", "subscription_count"]}
        ])),
        json!({}),
    ))
    .await;
    let events = vec![
        Event::member_added("presence-a", "u1"),
        Event::member_removed("presence-a", "u1"),
        Event::channel_occupied("a"),
        Event::channel_vacated("a"),
        Event::client_event("private-a", "client-x", "{\"k\":1}", "1.2"),
        Event::cache_miss("cache-a"),
        Event::subscription_count("a", 3),
    ];
    w.producer.publish_batch("app-1", events).await.unwrap();
    r.wait_for("all 7 events at /all", WAIT, |r| {
        r.delivered_events("/all").len() == 7
    })
    .await;
    w.wait_idle(WAIT).await;
    assert_eq!(
        names(&r.delivered_events("/presence")),
        ["member_added", "member_removed"]
    );
    assert_eq!(
        names(&r.delivered_events("/life")),
        ["channel_occupied", "channel_vacated"]
    );
    let all = r.delivered_events("/all");
    let client = all.iter().find(|e| e["name"] == "client_event").unwrap();
    assert_eq!(client["data"], "{\"k\":1}", "data stays a JSON string");
    assert_eq!(client["socket_id"], "1.2");
    let count = all
        .iter()
        .find(|e| e["name"] == "subscription_count")
        .unwrap();
    assert_eq!(count["subscription_count"], 3);
    assert!(
        r.all().iter().all(|req| req.valid),
        "every request verifies"
    );
    w.stop().await;
}

#[tokio::test]
async fn each_filter_kind_selects_channels() {
    let r = receiver().await;
    let all_types = json!(["channel_occupied"]);
    let w = InProc::start(config(
        one_app(json!([
            {"url": r.url("/public"), "event_types": all_types, "filter": {"channel_type": "public"}},
            {"url": r.url("/private"), "event_types": all_types, "filter": {"channel_type": "private"}},
            {"url": r.url("/encrypted"), "event_types": all_types, "filter": {"channel_type": "private-encrypted"}},
            {"url": r.url("/presence"), "event_types": all_types, "filter": {"channel_type": "presence"}},
            {"url": r.url("/cache"), "event_types": all_types, "filter": {"channel_type": "cache"}},
            {"url": r.url("/prefix"), "event_types": all_types, "filter": {"channel_prefix": "private-room-"}},
            {"url": r.url("/suffix"), "event_types": all_types, "filter": {"channel_suffix": "-eu"}},
            {"url": r.url("/pattern"), "event_types": all_types, "filter": {"channel_pattern": "^presence-game-[0-9]+$"}}
        ])),
        json!({}),
    ))
    .await;
    let names = [
        "lobby",
        "cache-lobby",
        "private-room-1",
        "private-cache-x",
        "private-encrypted-room-2",
        "presence-game-42",
        "presence-game-x",
        "news-eu",
    ];
    let events = names.iter().map(|c| Event::channel_occupied(*c)).collect();
    w.producer.publish_batch("app-1", events).await.unwrap();
    w.wait_idle(WAIT).await;
    let want = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<HashSet<_>>();
    let got = |path: &str| channels(&r.delivered_events(path));
    assert_eq!(got("/public"), want(&["lobby", "cache-lobby", "news-eu"]));
    assert_eq!(
        got("/private"),
        want(&["private-room-1", "private-cache-x"])
    );
    assert_eq!(got("/encrypted"), want(&["private-encrypted-room-2"]));
    assert_eq!(
        got("/presence"),
        want(&["presence-game-42", "presence-game-x"])
    );
    assert_eq!(got("/cache"), want(&["cache-lobby", "private-cache-x"]));
    assert_eq!(got("/prefix"), want(&["private-room-1"]));
    assert_eq!(got("/suffix"), want(&["news-eu"]));
    assert_eq!(got("/pattern"), want(&["presence-game-42"]));
    w.stop().await;
}

#[tokio::test]
async fn custom_headers_are_sent_but_cannot_replace_signature_headers() {
    let r = receiver().await;
    let w = one_endpoint(&r, json!({"event_types": ["channel_occupied"],
            "headers": {"X-Custom-Auth": "token-1", "X-Pusher-Signature": "forged",
                        "X-Pusher-Key": "other", "Content-Type": "text/plain", "webhook-id": "mine"}}), json!({})).await;
    w.producer
        .publish("app-1", Event::channel_occupied("a"))
        .await
        .unwrap();
    r.wait_for("one request", WAIT, |r| r.requests("/h").len() == 1)
        .await;
    let req = &r.requests("/h")[0];
    assert!(req.valid, "the signature verifies");
    assert_eq!(req.header_values("x-custom-auth"), ["token-1"]);
    assert_eq!(
        req.header_values("x-pusher-signature"),
        [hmac_hex(b"secret-1", &req.body)]
    );
    assert_eq!(req.header_values("x-pusher-key"), ["key-1"]);
    assert_eq!(req.header_values("content-type"), ["application/json"]);
    assert_eq!(req.header_values("webhook-id").len(), 1);
    assert_ne!(req.header("webhook-id"), Some("mine"));
    assert!(req.header("user-agent").unwrap().starts_with("hookq/"));
    let ts: u64 = req.header("webhook-timestamp").unwrap().parse().unwrap();
    assert_eq!(ts, req.envelope["time_ms"].as_u64().unwrap() / 1000);
    w.stop().await;
}

#[tokio::test]
async fn envelope_is_pushers_shape() {
    let r = receiver().await;
    let w = one_endpoint(&r, json!({"event_types": ["member_added"]}), json!({})).await;
    w.producer
        .publish("app-1", Event::member_added("presence-a", "u1"))
        .await
        .unwrap();
    r.wait_for("one request", WAIT, |r| r.requests("/h").len() == 1)
        .await;
    let env = &r.requests("/h")[0].envelope;
    let keys: Vec<_> = env.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys, ["events", "time_ms"]);
    assert_eq!(
        env["events"],
        json!([{"name": "member_added", "channel": "presence-a", "user_id": "u1"}])
    );
    w.stop().await;
}

#[tokio::test]
async fn batches_close_on_the_window() {
    let r = receiver().await;
    let w = one_endpoint(
        &r,
        json!({"event_types": ["channel_occupied"]}),
        json!({"batching": {"enabled": true, "duration": 400, "size": 100}}),
    )
    .await;
    let events = (0..5)
        .map(|i| Event::channel_occupied(format!("c{i}")))
        .collect();
    w.producer.publish_batch("app-1", events).await.unwrap();
    r.wait_for("5 events", WAIT, |r| r.delivered_events("/h").len() == 5)
        .await;
    assert_eq!(
        r.requests("/h").len(),
        1,
        "five events inside one window make one request"
    );
    w.stop().await;
}

#[tokio::test]
async fn batches_close_on_size() {
    let r = receiver().await;
    let w = one_endpoint(
        &r,
        json!({"event_types": ["channel_occupied"]}),
        json!({"batching": {"enabled": true, "duration": 2000, "size": 3}}),
    )
    .await;
    let events = (0..7)
        .map(|i| Event::channel_occupied(format!("c{i}")))
        .collect();
    w.producer.publish_batch("app-1", events).await.unwrap();
    r.wait_for("7 events", WAIT, |r| r.delivered_events("/h").len() == 7)
        .await;
    let mut sizes: Vec<usize> = r.requests("/h").iter().map(|q| q.events().len()).collect();
    sizes.sort();
    assert_eq!(sizes, [1, 3, 3]);
    w.stop().await;
}

#[tokio::test]
async fn batches_close_before_the_byte_cap() {
    let r = receiver().await;
    let w = one_endpoint(
        &r,
        json!({"event_types": ["client_event"]}),
        json!({"batching": {"enabled": true, "duration": 1000, "size": 100, "max_bytes": 2048}}),
    )
    .await;
    let data = "x".repeat(500);
    let events = (0..10)
        .map(|i| Event::client_event("c", "client-e", data.clone(), format!("{i}.1")))
        .collect();
    w.producer.publish_batch("app-1", events).await.unwrap();
    r.wait_for("10 events", WAIT, |r| r.delivered_events("/h").len() == 10)
        .await;
    let reqs = r.requests("/h");
    assert!(
        reqs.len() >= 3,
        "10 events of ~560 bytes need several 2 KiB requests"
    );
    for req in &reqs {
        assert!(req.body.len() <= 2048, "body of {} bytes", req.body.len());
    }
    w.stop().await;
}

#[tokio::test]
async fn disabled_batching_sends_each_event_alone_in_an_envelope() {
    let r = receiver().await;
    let w = one_endpoint(
        &r,
        json!({"event_types": ["channel_occupied"]}),
        json!({"batching": {"enabled": false}}),
    )
    .await;
    let events = (0..4)
        .map(|i| Event::channel_occupied(format!("c{i}")))
        .collect();
    w.producer.publish_batch("app-1", events).await.unwrap();
    r.wait_for("4 requests", WAIT, |r| r.requests("/h").len() == 4)
        .await;
    for req in r.requests("/h") {
        assert_eq!(req.events().len(), 1);
        assert!(req.envelope["time_ms"].is_u64());
    }
    w.stop().await;
}

#[tokio::test]
async fn standard_webhooks_signature_verifies_independently() {
    let r = receiver().await;
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let w = InProc::start(config(
        json!([{"id": "app-1", "key": "key-1", "secret": "secret-1", "signing_secret": secret,
            "webhooks": [{"url": r.url("/h"), "event_types": ["cache_miss"]}]}]),
        json!({"event_ids": true}),
    ))
    .await;
    w.producer
        .publish("app-1", Event::cache_miss("cache-a"))
        .await
        .unwrap();
    r.wait_for("one request", WAIT, |r| r.requests("/h").len() == 1)
        .await;
    let req = &r.requests("/h")[0];
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = b64.decode(secret.trim_start_matches("whsec_")).unwrap();
    let signed = format!(
        "{}.{}.{}",
        req.header("webhook-id").unwrap(),
        req.header("webhook-timestamp").unwrap(),
        String::from_utf8(req.body.clone()).unwrap()
    );
    let expected = format!(
        "v1,{}",
        b64.encode(hex::decode(hmac_hex(&key, signed.as_bytes())).unwrap())
    );
    assert_eq!(req.header("webhook-signature"), Some(expected.as_str()));
    let id = req.events()[0]["id"].as_str().unwrap().to_string();
    assert!(
        id.starts_with("job_"),
        "event_ids adds a per-event id: {id}"
    );
    w.stop().await;
}

#[tokio::test]
async fn a_500_is_retried_with_the_same_webhook_id_and_a_fresh_signature() {
    let r = receiver().await;
    r.script("/h", vec![Reply::status(500).with_body("oops")]);
    let w = one_endpoint(&r, json!({"event_types": ["member_added"]}), json!({})).await;
    w.producer
        .publish("app-1", Event::member_added("presence-a", "u1"))
        .await
        .unwrap();
    r.wait_for("a second attempt", WAIT, |r| r.requests("/h").len() == 2)
        .await;
    let reqs = r.requests("/h");
    assert_eq!(reqs[0].answered, 500);
    assert_eq!(reqs[1].answered, 200);
    assert_eq!(reqs[0].header("webhook-id"), reqs[1].header("webhook-id"));
    assert!(reqs[0].valid && reqs[1].valid);
    assert!(reqs[1].envelope["time_ms"].as_u64() > reqs[0].envelope["time_ms"].as_u64());
    assert_eq!(reqs[1].events(), reqs[0].events());
    w.wait_idle(WAIT).await;
    assert!(w.dlq().await.is_empty());
    w.stop().await;
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let r = receiver().await;
    r.script(
        "/h",
        vec![Reply::status(429).with_header("retry-after", "2")],
    );
    let w = one_endpoint(&r, json!({"event_types": ["member_added"]}), json!({})).await;
    w.producer
        .publish("app-1", Event::member_added("presence-a", "u1"))
        .await
        .unwrap();
    r.wait_for("a second attempt", WAIT, |r| r.requests("/h").len() == 2)
        .await;
    let reqs = r.requests("/h");
    let gap = reqs[1].at - reqs[0].at;
    assert!(
        gap >= Duration::from_secs(2),
        "retried after {gap:?}, asked for 2 s"
    );
    w.stop().await;
}

#[tokio::test]
async fn a_400_is_dead_lettered_at_once_with_its_status() {
    let r = receiver().await;
    r.always(
        "/h",
        Reply::status(400).with_body("{\"error\":\"bad payload\"}"),
    );
    let w = one_endpoint(
        &r,
        json!({"event_types": ["member_added"], "id": "ep-400"}),
        json!({}),
    )
    .await;
    w.producer
        .publish("app-1", Event::member_added("presence-a", "u1"))
        .await
        .unwrap();
    let dlq = w.wait_dlq(1, WAIT).await;
    assert_eq!(r.requests("/h").len(), 1, "no retry for a 400");
    let e = &dlq[0];
    assert_eq!(e.reason, "HTTP 400");
    assert_eq!(e.last_status, Some(400));
    assert_eq!(e.endpoint.as_deref(), Some("ep-400"));
    assert_eq!(e.app_id.as_deref(), Some("app-1"));
    assert_eq!(e.attempts, 1);
    assert!(e.body_excerpt.as_deref().unwrap().contains("bad payload"));
    w.stop().await;
}

#[tokio::test]
async fn connection_refused_retries_until_the_budget_then_dead_letters() {
    // A port with nobody listening: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let w = InProc::start(config(
        one_app(
            json!([{"url": format!("http://127.0.0.1:{port}/h"), "event_types": ["member_added"],
            "retry": {"max_attempts": 3, "initial_backoff_ms": 50, "max_backoff_ms": 100}}]),
        ),
        json!({}),
    ))
    .await;
    w.producer
        .publish("app-1", Event::member_added("presence-a", "u1"))
        .await
        .unwrap();
    let dlq = w.wait_dlq(1, WAIT).await;
    let e = &dlq[0];
    assert_eq!(e.attempts, 3);
    assert!(
        e.reason.contains("retries exhausted after 3 attempts"),
        "{}",
        e.reason
    );
    assert!(e.reason.contains("connection failed"), "{}", e.reason);
    assert_eq!(e.last_status, None);
    w.wait_idle(WAIT).await;
    w.stop().await;
}

#[tokio::test]
async fn a_receiver_that_never_answers_times_out_and_is_retried() {
    let r = receiver().await;
    r.script(
        "/h",
        vec![Reply::status(200).after(Duration::from_secs(30))],
    );
    let w = one_endpoint(
        &r,
        json!({"event_types": ["member_added"], "request_timeout_ms": 300}),
        json!({}),
    )
    .await;
    w.producer
        .publish("app-1", Event::member_added("presence-a", "u1"))
        .await
        .unwrap();
    r.wait_for("a second attempt", WAIT, |r| r.requests("/h").len() == 2)
        .await;
    w.wait_idle(WAIT).await;
    assert!(w.dlq().await.is_empty());
    let text = w.metrics.render();
    assert!(
        text.contains("hookq_requests_total{outcome=\"retry\"} 1"),
        "{text}"
    );
    w.stop().await;
}

#[tokio::test]
async fn a_failing_endpoint_never_resends_to_the_one_that_succeeded() {
    let r = receiver().await;
    r.script(
        "/bad",
        vec![Reply::status(503), Reply::status(503), Reply::status(502)],
    );
    let w = InProc::start(config(
        one_app(json!([
            {"url": r.url("/good"), "event_types": ["member_added"]},
            {"url": r.url("/bad"), "event_types": ["member_added"]}
        ])),
        json!({}),
    ))
    .await;
    let events: Vec<_> = (0..20)
        .map(|i| Event::member_added("presence-a", format!("u{i}")))
        .collect();
    w.producer.publish_batch("app-1", events).await.unwrap();
    r.wait_for("all 20 at /bad", WAIT, |r| {
        r.delivered_events("/bad").len() == 20
    })
    .await;
    w.wait_idle(WAIT).await;
    let good = r.delivered_events("/good");
    let users: HashSet<_> = good
        .iter()
        .map(|e| e["user_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        good.len(),
        20,
        "each event exactly once at the healthy endpoint"
    );
    assert_eq!(users.len(), 20);
    w.stop().await;
}

#[tokio::test]
async fn malformed_jobs_and_unknown_apps_are_dead_lettered_and_the_worker_goes_on() {
    let r = receiver().await;
    let w = one_endpoint(&r, json!({"event_types": ["member_added"]}), json!({})).await;
    let raw = |body: &str| Outgoing::now("x", "app-1", body);
    w.queue
        .push(vec![
            raw("this is not json"),
            raw(r#"{"v":1,"kind":"event","id":"j1","app_id":"ghost","event":{"name":"member_added","channel":"presence-a","user_id":"u"}}"#),
            raw(r#"{"v":1,"kind":"event","id":"j2","app_id":"app-1","event":{"name":"member_added","channel":"presence-a"}}"#),
        ])
        .await
        .unwrap();
    let dlq = w.wait_dlq(3, WAIT).await;
    let mut reasons: Vec<_> = dlq.iter().map(|e| e.reason.clone()).collect();
    reasons.sort();
    assert!(
        reasons[0].starts_with("invalid event: member_added: missing field `user_id`"),
        "{reasons:?}"
    );
    assert!(reasons[1].starts_with("malformed job"), "{reasons:?}");
    assert_eq!(reasons[2], "unknown app \"ghost\"");
    assert!(
        dlq.iter().any(|e| e.job == "this is not json"),
        "raw text kept"
    );
    // Still working:
    w.producer
        .publish("app-1", Event::member_added("presence-a", "u1"))
        .await
        .unwrap();
    r.wait_for("a delivery", WAIT, |r| r.delivered_events("/h").len() == 1)
        .await;
    w.stop().await;
}

#[tokio::test]
async fn shutdown_flushes_the_open_batch() {
    let r = receiver().await;
    let w = one_endpoint(
        &r,
        json!({"event_types": ["member_added"]}),
        json!({"batching": {"enabled": true, "duration": 60000}}),
    )
    .await;
    let events: Vec<_> = (0..5)
        .map(|i| Event::member_added("presence-a", format!("u{i}")))
        .collect();
    w.producer.publish_batch("app-1", events).await.unwrap();
    // Wait until the worker holds all five (they sit in a batch open for a minute).
    let start = std::time::Instant::now();
    while w.queue.depth().await.unwrap().held < 5 {
        assert!(start.elapsed() < WAIT, "jobs not received");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(r.requests("/h").is_empty());
    let queue = w.queue.clone();
    w.stop().await;
    assert_eq!(
        r.delivered_events("/h").len(),
        5,
        "the open batch was flushed"
    );
    let d = queue.depth().await.unwrap();
    assert_eq!((d.ready, d.held, d.dead), (0, 0, 0), "and acked");
}

#[tokio::test]
async fn replaying_the_dlq_delivers_to_the_failed_endpoint_only() {
    let r = receiver().await;
    r.script("/bad", vec![Reply::status(410)]);
    let w = InProc::start(config(
        one_app(json!([
            {"url": r.url("/good"), "event_types": ["member_added"]},
            {"url": r.url("/bad"), "event_types": ["member_added"]}
        ])),
        json!({}),
    ))
    .await;
    w.producer
        .publish("app-1", Event::member_added("presence-a", "u1"))
        .await
        .unwrap();
    let dlq = w.wait_dlq(1, WAIT).await;
    assert_eq!(dlq[0].last_status, Some(410));
    w.wait_idle(WAIT).await;
    assert_eq!(w.queue.dlq_replay(&DlqFilter::default()).await.unwrap(), 1);
    r.wait_for("the replayed delivery", WAIT, |r| {
        r.delivered_events("/bad").len() == 1
    })
    .await;
    w.wait_idle(WAIT).await;
    assert_eq!(
        r.delivered_events("/good").len(),
        1,
        "the healthy endpoint got it once"
    );
    let bad = r.requests("/bad");
    assert_eq!(bad[0].header("webhook-id"), bad[1].header("webhook-id"));
    assert!(w.dlq().await.is_empty());
    w.stop().await;
}
