//! Delivery behaviour over the memory queue, asserted from what a real
//! receiver on 127.0.0.1 saw: routing, filters, headers, batching, the
//! envelope, signatures, retries, dead-lettering and shutdown.
//!
//! Scenarios that differ only in their config, the receiver's script and
//! what is expected are tables of cases run by [`run_cases`], which names
//! the case in any failure.

use crate::support::cases::run_cases;
use crate::support::inproc::{InProc, config, one_app};
use crate::support::process::free_port;
use crate::support::queue::assert_one_dead_letter;
use crate::support::receiver::{Receiver, Recorded, Reply, hmac_hex};
use crate::support::wait::poll;
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

/// A worker for `app-1` with two endpoints for `member_added`, `/good` and `/bad`.
async fn good_and_bad(r: &Receiver) -> InProc {
    InProc::start(config(
        one_app(json!([
            {"url": r.url("/good"), "event_types": ["member_added"]},
            {"url": r.url("/bad"), "event_types": ["member_added"]}
        ])),
        json!({}),
    ))
    .await
}

/// Waits until `path` has had `n` requests; returns them.
async fn wait_requests(r: &Receiver, path: &str, n: usize) -> Vec<Recorded> {
    let what = format!("{n} requests at {path}");
    r.wait_for(&what, WAIT, |r| r.requests(path).len() == n)
        .await;
    r.requests(path)
}

/// Waits until `path` has had `n` events delivered.
async fn wait_delivered(r: &Receiver, path: &str, n: usize) {
    let what = format!("{n} events at {path}");
    r.wait_for(&what, WAIT, |r| r.delivered_events(path).len() == n)
        .await;
}

/// The field `key` of each event, sorted.
fn sorted(events: &[Value], key: &str) -> Vec<String> {
    let mut n: Vec<String> = events
        .iter()
        .map(|e| e[key].as_str().unwrap().to_string())
        .collect();
    n.sort();
    n
}

fn strings(list: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

#[tokio::test]
async fn event_types_route_each_event_to_the_endpoints_that_want_it() {
    let r = receiver().await;
    // Each endpoint gets exactly the events of its types, one of each.
    let routes: [(&str, &[&str]); 3] = [
        ("/presence", &["member_added", "member_removed"]),
        ("/life", &["channel_occupied", "channel_vacated"]),
        (
            "/all",
            &[
                "member_added",
                "member_removed",
                "channel_occupied",
                "channel_vacated",
                "client_event",
                "cache_miss",
                "subscription_count",
            ],
        ),
    ];
    let webhooks: Vec<Value> = routes
        .iter()
        .map(|(path, types)| json!({"url": r.url(path), "event_types": types}))
        .collect();
    let w = InProc::start(config(one_app(json!(webhooks)), json!({}))).await;
    let events = vec![
        Event::member_added("presence-a", "u1"),
        Event::member_removed("presence-a", "u1"),
        Event::channel_occupied("a"),
        Event::channel_vacated("a"),
        Event::client_event("private-a", "client-x", "{\"k\":1}", "1.2"),
        Event::cache_miss("cache-a"),
        Event::subscription_count("a", 3),
    ];
    w.publish(events).await;
    wait_delivered(&r, "/all", 7).await;
    w.wait_idle(WAIT).await;
    for (path, types) in routes {
        assert_eq!(
            sorted(&r.delivered_events(path), "name"),
            strings(types),
            "{path}"
        );
    }
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
    // (path, filter, the channels of `names` it selects)
    let filters: [(&str, Value, &[&str]); 8] = [
        (
            "/public",
            json!({"channel_type": "public"}),
            &["lobby", "cache-lobby", "news-eu"],
        ),
        (
            "/private",
            json!({"channel_type": "private"}),
            &["private-room-1", "private-cache-x"],
        ),
        (
            "/encrypted",
            json!({"channel_type": "private-encrypted"}),
            &["private-encrypted-room-2"],
        ),
        (
            "/presence",
            json!({"channel_type": "presence"}),
            &["presence-game-42", "presence-game-x"],
        ),
        (
            "/cache",
            json!({"channel_type": "cache"}),
            &["cache-lobby", "private-cache-x"],
        ),
        (
            "/prefix",
            json!({"channel_prefix": "private-room-"}),
            &["private-room-1"],
        ),
        ("/suffix", json!({"channel_suffix": "-eu"}), &["news-eu"]),
        (
            "/pattern",
            json!({"channel_pattern": "^presence-game-[0-9]+$"}),
            &["presence-game-42"],
        ),
    ];
    let webhooks: Vec<Value> = filters
        .iter()
        .map(|(path, filter, _)| {
            json!({"url": r.url(path), "event_types": ["channel_occupied"], "filter": filter})
        })
        .collect();
    let w = InProc::start(config(one_app(json!(webhooks)), json!({}))).await;
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
    w.publish(names.iter().map(|c| Event::channel_occupied(*c)).collect())
        .await;
    w.wait_idle(WAIT).await;
    for (path, filter, want) in &filters {
        let got: HashSet<String> = sorted(&r.delivered_events(path), "channel")
            .into_iter()
            .collect();
        let want: HashSet<String> = want.iter().map(|s| s.to_string()).collect();
        assert_eq!(got, want, "{path} with filter {filter}");
    }
    w.stop().await;
}

/// Publishes `event` to a fresh worker whose one endpoint is `webhook`;
/// returns the first request `/h` got.
async fn first_request(r: &Receiver, w: &InProc, event: Event) -> Recorded {
    w.publish(vec![event]).await;
    wait_requests(r, "/h", 1).await.remove(0)
}

#[tokio::test]
async fn custom_headers_are_sent_but_cannot_replace_signature_headers() {
    let r = receiver().await;
    let w = one_endpoint(&r, json!({"event_types": ["channel_occupied"],
            "headers": {"X-Custom-Auth": "token-1", "X-Pusher-Signature": "forged",
                        "X-Pusher-Key": "other", "Content-Type": "text/plain", "webhook-id": "mine"}}), json!({})).await;
    let req = first_request(&r, &w, Event::channel_occupied("a")).await;
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
    let env = first_request(&r, &w, Event::member_added("presence-a", "u1"))
        .await
        .envelope;
    let keys: Vec<_> = env.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys, ["events", "time_ms"]);
    assert_eq!(
        env["events"],
        json!([{"name": "member_added", "channel": "presence-a", "user_id": "u1"}])
    );
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
    let req = first_request(&r, &w, Event::cache_miss("cache-a")).await;
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

/// A batching case: `events` to one endpoint at `/h` for their type, with
/// `webhooks.batching` set to `batching`; once `/h` has every event
/// (`by_request`: has had one request per event), `check` judges its requests.
struct Batching {
    event_type: &'static str,
    batching: Value,
    events: Vec<Event>,
    by_request: bool,
    check: fn(&[Recorded]),
}

fn occupied(n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| Event::channel_occupied(format!("c{i}")))
        .collect()
}

#[tokio::test]
async fn batches_close_on_the_window_the_size_and_the_byte_cap() {
    let big = "x".repeat(500);
    let cases = vec![
        (
            "five events inside one window make one request",
            Batching {
                event_type: "channel_occupied",
                batching: json!({"enabled": true, "duration": 400, "size": 100}),
                events: occupied(5),
                by_request: false,
                check: |reqs| {
                    assert_eq!(
                        reqs.len(),
                        1,
                        "five events inside one window make one request"
                    );
                },
            },
        ),
        (
            "batches close on size",
            Batching {
                event_type: "channel_occupied",
                batching: json!({"enabled": true, "duration": 2000, "size": 3}),
                events: occupied(7),
                by_request: false,
                check: |reqs| {
                    let mut sizes: Vec<usize> = reqs.iter().map(|q| q.events().len()).collect();
                    sizes.sort();
                    assert_eq!(sizes, [1, 3, 3]);
                },
            },
        ),
        (
            "batches close before the byte cap",
            Batching {
                event_type: "client_event",
                batching: json!({"enabled": true, "duration": 1000, "size": 100, "max_bytes": 2048}),
                events: (0..10)
                    .map(|i| Event::client_event("c", "client-e", big.clone(), format!("{i}.1")))
                    .collect(),
                by_request: false,
                check: |reqs| {
                    assert!(
                        reqs.len() >= 3,
                        "10 events of ~560 bytes need several 2 KiB requests"
                    );
                    for req in reqs {
                        assert!(req.body.len() <= 2048, "body of {} bytes", req.body.len());
                    }
                },
            },
        ),
        (
            "disabled batching sends each event alone in an envelope",
            Batching {
                event_type: "channel_occupied",
                batching: json!({"enabled": false}),
                events: occupied(4),
                by_request: true,
                check: |reqs| {
                    for req in reqs {
                        assert_eq!(req.events().len(), 1);
                        assert!(req.envelope["time_ms"].is_u64());
                    }
                },
            },
        ),
    ];
    run_cases(cases, |case| async move {
        let r = receiver().await;
        let w = one_endpoint(
            &r,
            json!({"event_types": [case.event_type]}),
            json!({"batching": case.batching}),
        )
        .await;
        let n = case.events.len();
        w.publish(case.events).await;
        if case.by_request {
            wait_requests(&r, "/h", n).await;
        } else {
            wait_delivered(&r, "/h", n).await;
        }
        (case.check)(&r.requests("/h"));
        w.stop().await;
    })
    .await;
}

/// A retry case: `/h` (a `member_added` endpoint with `webhook`'s other
/// keys) answers by `script`; one event makes a second attempt, after which
/// the queue empties with nothing dead-lettered, and `check` judges the two
/// requests and the worker's metrics.
struct Retry {
    script: Vec<Reply>,
    webhook: Value,
    check: fn(&[Recorded], &str),
}

#[tokio::test]
async fn a_failed_attempt_is_retried() {
    let cases = vec![
        (
            "a 500 is retried with the same webhook-id and a fresh signature",
            Retry {
                script: vec![Reply::status(500).with_body("oops")],
                webhook: json!({}),
                check: |reqs, _| {
                    assert_eq!(reqs[0].answered, 500);
                    assert_eq!(reqs[1].answered, 200);
                    assert_eq!(reqs[0].header("webhook-id"), reqs[1].header("webhook-id"));
                    assert!(reqs[0].valid && reqs[1].valid);
                    assert!(
                        reqs[1].envelope["time_ms"].as_u64() > reqs[0].envelope["time_ms"].as_u64()
                    );
                    assert_eq!(reqs[1].events(), reqs[0].events());
                },
            },
        ),
        (
            "retry-after is honoured",
            Retry {
                script: vec![Reply::status(429).with_header("retry-after", "2")],
                webhook: json!({}),
                check: |reqs, _| {
                    let gap = reqs[1].at - reqs[0].at;
                    assert!(
                        gap >= Duration::from_secs(2),
                        "retried after {gap:?}, asked for 2 s"
                    );
                },
            },
        ),
        (
            "a receiver that never answers times out and is retried",
            Retry {
                script: vec![Reply::status(200).after(Duration::from_secs(30))],
                webhook: json!({"request_timeout_ms": 300}),
                check: |_, metrics| {
                    assert!(
                        metrics.contains("hookq_requests_total{outcome=\"retry\"} 1"),
                        "{metrics}"
                    );
                },
            },
        ),
    ];
    run_cases(cases, |case| async move {
        let r = receiver().await;
        r.script("/h", case.script);
        let mut webhook = case.webhook;
        webhook["event_types"] = json!(["member_added"]);
        let w = one_endpoint(&r, webhook, json!({})).await;
        w.publish(vec![Event::member_added("presence-a", "u1")])
            .await;
        let reqs = wait_requests(&r, "/h", 2).await;
        w.wait_idle(WAIT).await;
        assert!(w.dlq().await.is_empty(), "{:?}", w.dlq().await);
        (case.check)(&reqs, &w.metrics.render());
        w.stop().await;
    })
    .await;
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
    w.publish(vec![Event::member_added("presence-a", "u1")])
        .await;
    let dlq = w.wait_dlq(1, WAIT).await;
    assert_eq!(r.requests("/h").len(), 1, "no retry for a 400");
    let e = assert_one_dead_letter(&dlq, "HTTP 400", 1, Some(400));
    assert_eq!(e.reason, "HTTP 400");
    assert_eq!(e.endpoint.as_deref(), Some("ep-400"));
    assert_eq!(e.app_id.as_deref(), Some("app-1"));
    assert!(e.body_excerpt.as_deref().unwrap().contains("bad payload"));
    w.stop().await;
}

#[tokio::test]
async fn connection_refused_retries_until_the_budget_then_dead_letters() {
    // A port with nobody listening.
    let w = InProc::start(config(
        one_app(
            json!([{"url": format!("http://127.0.0.1:{}/h", free_port()), "event_types": ["member_added"],
            "retry": {"max_attempts": 3, "initial_backoff_ms": 50, "max_backoff_ms": 100}}]),
        ),
        json!({}),
    ))
    .await;
    w.publish(vec![Event::member_added("presence-a", "u1")])
        .await;
    let dlq = w.wait_dlq(1, WAIT).await;
    let e = assert_one_dead_letter(&dlq, "retries exhausted after 3 attempts", 3, None);
    assert!(e.reason.contains("connection failed"), "{}", e.reason);
    w.wait_idle(WAIT).await;
    w.stop().await;
}

#[tokio::test]
async fn a_failing_endpoint_never_resends_to_the_one_that_succeeded() {
    let r = receiver().await;
    r.script(
        "/bad",
        vec![Reply::status(503), Reply::status(503), Reply::status(502)],
    );
    let w = good_and_bad(&r).await;
    let events: Vec<_> = (0..20)
        .map(|i| Event::member_added("presence-a", format!("u{i}")))
        .collect();
    w.publish(events).await;
    wait_delivered(&r, "/bad", 20).await;
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
    w.publish(vec![Event::member_added("presence-a", "u1")])
        .await;
    wait_delivered(&r, "/h", 1).await;
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
    w.publish(events).await;
    // Wait until the worker holds all five (they sit in a batch open for a minute).
    poll(
        "five held jobs",
        WAIT,
        Duration::from_millis(20),
        async || {
            let d = w.queue.depth().await.unwrap();
            if d.held >= 5 {
                Ok(())
            } else {
                Err(format!("jobs not received: {d:?}"))
            }
        },
    )
    .await;
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
    let w = good_and_bad(&r).await;
    w.publish(vec![Event::member_added("presence-a", "u1")])
        .await;
    let dlq = w.wait_dlq(1, WAIT).await;
    assert_eq!(dlq[0].last_status, Some(410));
    w.wait_idle(WAIT).await;
    assert_eq!(w.queue.dlq_replay(&DlqFilter::default()).await.unwrap(), 1);
    wait_delivered(&r, "/bad", 1).await;
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
