//! Lambda delivery end to end: the real worker in this process over a memory
//! queue, invoking functions through aws-sdk-lambda at the local Invoke
//! endpoint of [`LambdaServer`], which records each invocation.
//!
//! Every endpoint sets `endpoint_url` to the server and `region` to
//! `us-east-1`; no AWS credentials are needed, since the deliverer signs with
//! static test credentials when the standard chain finds none for an
//! `endpoint_url`. The legacy `lambda_function` string has no `endpoint_url`,
//! so it could only reach real AWS: its test checks that it is parsed into an
//! `Event` target and accepted by the worker, and what it would send.

use crate::support::black_hole::BlackHole;
use crate::support::inproc::{InProc, config, one_app};
use crate::support::lambda_server::{Behaviour, Invocation, LambdaServer};
use crate::support::process::free_port;
use crate::support::queue::{assert_dead_letter, assert_one_dead_letter, parse};
use crate::support::receiver::hmac_hex;
use hookq_core::endpoint::{EndpointTarget, InvocationType};
use hookq_core::{DeadLetter, Event};
use hookq_queue::{MemoryQueue, QueueDriver};
use hookq_worker::{Metrics, Worker};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);
const SECRET: &str = "secret-1";

/// The config of a worker whose one app (`app-1`, `key-1`, [`SECRET`]) has
/// these webhooks, with fast retries: 3 attempts, 100 to 200 ms apart.
fn test_config(webhooks: Value) -> Value {
    config(
        one_app(webhooks),
        json!({"retry": {"initial_backoff_ms": 100, "max_backoff_ms": 200, "max_attempts": 3}}),
    )
}

async fn start(webhooks: Value) -> InProc {
    InProc::start(test_config(webhooks)).await
}

/// A Lambda webhook object for `function` at `server`.
fn lambda(
    server: &LambdaServer,
    function: &str,
    invocation_type: &str,
    qualifier: Option<&str>,
) -> Value {
    let mut l = json!({
        "function_name": function,
        "invocation_type": invocation_type,
        "region": "us-east-1",
        "endpoint_url": server.endpoint_url(),
    });
    if let Some(q) = qualifier {
        l["qualifier"] = json!(q);
    }
    json!({"lambda": l, "event_types": ["member_added", "member_removed", "channel_occupied"]})
}

fn published() -> Vec<Event> {
    vec![
        Event::member_added("presence-room", "u1"),
        Event::member_removed("presence-room", "u2"),
        Event::channel_occupied("room"),
    ]
}

/// The events of these invocations, as (name, channel) sorted.
fn events(invocations: &[Invocation]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = invocations
        .iter()
        .flat_map(Invocation::events)
        .map(|e| {
            (
                e["name"].as_str().expect("event name").to_string(),
                e["channel"].as_str().expect("event channel").to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

fn expected_events() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = published()
        .iter()
        .map(|e| (e.name.as_str().to_string(), e.channel.clone()))
        .collect();
    out.sort();
    out
}

/// Sleeps long enough for any retry to have been made (backoff is at most 200 ms).
async fn settle_retries() {
    tokio::time::sleep(Duration::from_millis(800)).await;
}

/// Publishes `event`, waits until it is dead-lettered and any retry would
/// have been made; returns the DLQ and the invocations of `function`.
async fn dead_lettered(
    h: &InProc,
    server: &LambdaServer,
    function: &str,
    event: Event,
) -> (Vec<DeadLetter>, Vec<Invocation>) {
    h.publish(vec![event]).await;
    let dlq = h.wait_dlq(1, WAIT).await;
    settle_retries().await;
    (dlq, server.invocations_of(function))
}

#[tokio::test]
async fn event_and_request_response_invocations_carry_the_envelope() {
    let server = LambdaServer::start().await;
    server.script("on-event", Behaviour::Ok);
    server.script("on-sync", Behaviour::Ok);
    let h = start(json!([
        lambda(&server, "on-event", "Event", Some("live")),
        lambda(&server, "on-sync", "RequestResponse", Some("7")),
    ]))
    .await;
    let before_ms = hookq_core::now_ms();
    h.publish(published()).await;
    server
        .wait_for("all 3 events at both functions", WAIT, |seen| {
            let of = |f: &str| {
                seen.iter()
                    .filter(|i| i.function_name == f)
                    .cloned()
                    .collect::<Vec<_>>()
            };
            events(&of("on-event")).len() == 3 && events(&of("on-sync")).len() == 3
        })
        .await;
    h.wait_idle(WAIT).await;

    let asynchronous = server.invocations_of("on-event");
    assert_eq!(events(&asynchronous), expected_events());
    for i in &asynchronous {
        assert_eq!(i.invocation_type, "Event");
        assert_eq!(i.qualifier.as_deref(), Some("live"));
        assert_eq!(i.status, 202);
        assert!(i.signed, "SigV4-signed");
        assert_eq!(
            i.client_context, None,
            "Event invocations carry no client context"
        );
        let time_ms = i.envelope()["time_ms"].as_u64().expect("time_ms");
        assert!(time_ms >= before_ms && time_ms <= hookq_core::now_ms());
    }

    let synchronous = server.invocations_of("on-sync");
    assert_eq!(events(&synchronous), expected_events());
    for i in &synchronous {
        assert_eq!(i.invocation_type, "RequestResponse");
        assert_eq!(i.qualifier.as_deref(), Some("7"));
        assert_eq!(i.status, 200);
        assert!(i.signed, "SigV4-signed");
        let context = i
            .client_context_json()
            .expect("RequestResponse carries a client context");
        let headers = &context["custom"]["headers"];
        assert_eq!(headers["x-pusher-key"], "key-1");
        assert_eq!(
            headers["x-pusher-signature"],
            hmac_hex(SECRET.as_bytes(), &i.payload).as_str()
        );
        assert!(
            headers["webhook-id"]
                .as_str()
                .is_some_and(|id| !id.is_empty())
        );
        let time_ms = i.envelope()["time_ms"].as_u64().unwrap();
        assert_eq!(
            headers["webhook-timestamp"],
            (time_ms / 1000).to_string().as_str()
        );
    }
    // The same event is the same JSON on both paths.
    let sorted_events = |i: &[Invocation]| {
        let mut all: Vec<Value> = i.iter().flat_map(Invocation::events).collect();
        all.sort_by_key(|e| e.to_string());
        all
    };
    assert_eq!(sorted_events(&asynchronous), sorted_events(&synchronous));
    assert_eq!(
        sorted_events(&synchronous)
            .iter()
            .find(|e| e["name"] == "member_added")
            .cloned(),
        Some(json!({"name": "member_added", "channel": "presence-room", "user_id": "u1"}))
    );
    assert!(h.dlq().await.is_empty());
    h.stop().await;
}

#[tokio::test]
async fn function_errors_are_retried_then_dead_lettered() {
    let server = LambdaServer::start().await;
    server.script("flaky", Behaviour::FunctionError);
    let h = start(json!([lambda(&server, "flaky", "RequestResponse", None)])).await;
    let event = Event::member_added("presence-room", "u1");
    let (dlq, seen) = dead_lettered(&h, &server, "flaky", event).await;
    assert_eq!(
        seen.len(),
        3,
        "max_attempts invocations, then none: {seen:?}"
    );
    assert!(
        seen.iter()
            .all(|i| i.status == 200 && i.qualifier.is_none())
    );
    // Every attempt of the batch has the same webhook-id, and is signed afresh.
    let ids: Vec<Value> = seen
        .iter()
        .map(|i| i.client_context_json().unwrap()["custom"]["headers"]["webhook-id"].clone())
        .collect();
    assert!(
        ids.iter().all(|id| id == &ids[0] && id.is_string()),
        "{ids:?}"
    );
    for i in &seen {
        let headers = &i.client_context_json().unwrap()["custom"]["headers"];
        assert_eq!(
            headers["x-pusher-signature"],
            hmac_hex(SECRET.as_bytes(), &i.payload).as_str()
        );
    }
    let entry = assert_one_dead_letter(&dlq, "function error: Unhandled", 3, Some(200));
    assert!(
        entry
            .body_excerpt
            .as_deref()
            .is_some_and(|b| b.contains("boom")),
        "{:?}",
        entry.body_excerpt
    );
    assert_eq!(h.dlq().await.len(), 1);
    h.wait_idle(WAIT).await;
    h.stop().await;
}

#[tokio::test]
async fn throttling_is_retried_until_delivered() {
    let server = LambdaServer::start().await;
    server.script(
        "busy",
        Behaviour::FailThenOk(2, Box::new(Behaviour::Throttle)),
    );
    let h = start(json!([lambda(&server, "busy", "Event", None)])).await;
    h.publish(published()).await;
    server
        .wait_for("an accepted invocation of busy", WAIT, |seen| {
            seen.iter().any(|i| i.status == 202)
        })
        .await;
    h.wait_idle(WAIT).await;
    settle_retries().await;
    let seen = server.invocations_of("busy");
    let statuses: Vec<u16> = seen.iter().map(|i| i.status).collect();
    assert_eq!(statuses, [429, 429, 202]);
    for i in &seen {
        assert_eq!(
            events(std::slice::from_ref(i)),
            expected_events(),
            "each attempt carries the batch"
        );
    }
    assert!(h.dlq().await.is_empty(), "{:?}", h.dlq().await);
    h.stop().await;
}

#[tokio::test]
async fn a_missing_function_is_dead_lettered_at_once() {
    let server = LambdaServer::start().await;
    // No behaviour scripted: the server answers 404 ResourceNotFoundException.
    let h = start(json!([lambda(
        &server,
        "nobody",
        "RequestResponse",
        Some("prod")
    )]))
    .await;
    let event = Event::channel_occupied("room");
    let (dlq, seen) = dead_lettered(&h, &server, "nobody", event).await;
    assert_eq!(
        seen.len(),
        1,
        "a 404 is not retried: {seen:?}; DLQ: {dlq:?}"
    );
    assert_eq!(seen[0].qualifier.as_deref(), Some("prod"));
    assert_one_dead_letter(&dlq, "ResourceNotFoundException", 1, Some(404));
    h.wait_idle(WAIT).await;
    h.stop().await;
}

#[tokio::test]
async fn a_slow_function_times_out_and_is_retried() {
    let server = LambdaServer::start().await;
    let hang = Behaviour::Slow(Duration::from_secs(3), Box::new(Behaviour::Ok));
    server.script("slow", Behaviour::FailThenOk(1, Box::new(hang)));
    let mut webhook = lambda(&server, "slow", "RequestResponse", None);
    webhook["request_timeout_ms"] = json!(300);
    let h = start(json!([webhook])).await;
    h.publish(vec![Event::channel_occupied("room")]).await;
    // Without the endpoint's 300 ms timeout the first call would simply
    // succeed after 3 s; a second invocation is the retry after the timeout.
    server
        .wait_for("a second invocation of slow", WAIT, |seen| {
            seen.iter().filter(|i| i.function_name == "slow").count() >= 2
        })
        .await;
    h.wait_idle(WAIT).await;
    settle_retries().await;
    assert_eq!(server.invocations_of("slow").len(), 2);
    assert!(h.dlq().await.is_empty(), "{:?}", h.dlq().await);
    h.stop().await;
}

#[tokio::test]
async fn an_unreachable_endpoint_is_retried_then_dead_lettered() {
    // A port that was free a moment ago: connections are refused.
    let port = free_port();
    let h = start(json!([{
        "lambda": {"function_name": "f", "region": "us-east-1", "endpoint_url": format!("http://127.0.0.1:{port}")},
        "event_types": ["channel_occupied"]
    }]))
    .await;
    h.publish(vec![Event::channel_occupied("room")]).await;
    let dlq = h.wait_dlq(1, WAIT).await;
    assert_one_dead_letter(&dlq, "connection failed", 3, None);
    h.stop().await;
}

#[tokio::test]
async fn connects_time_out_after_the_configured_connect_timeout() {
    // HTTP and Lambda endpoints alike give up connecting after
    // webhooks.connect_timeout_ms (300 ms), far below the request timeout
    // (5 s) and the SDK's own default (3.1 s).
    let hole = BlackHole::start();
    let mut config = test_config(json!([
        {"url": format!("{}/hook", hole.url()), "event_types": ["channel_occupied"]},
        {"lambda": {"function_name": "f", "region": "us-east-1", "endpoint_url": hole.url()},
         "event_types": ["channel_occupied"]}
    ]));
    config["webhooks"]["connect_timeout_ms"] = json!(300);
    let started = std::time::Instant::now();
    let h = InProc::start(config).await;
    h.publish(vec![Event::channel_occupied("room")]).await;
    let dlq = h.wait_dlq(2, WAIT).await;
    let elapsed = started.elapsed();
    assert_eq!(dlq.len(), 2, "{dlq:?}");
    for entry in &dlq {
        assert_dead_letter(entry, "onnect", 3, None);
    }
    assert!(
        dlq.iter().any(|e| e
            .reason
            .contains("connection failed: not connected within 300 ms")),
        "the HTTP endpoint's reason names the connect timeout: {dlq:?}"
    );
    // Three attempts each, 100-200 ms apart: about 1.3 s with the 300 ms
    // connect timeout; with the request timeout instead, 15 s.
    assert!(
        elapsed < Duration::from_secs(5),
        "dead-lettered only after {elapsed:?}: {dlq:?}"
    );
    h.stop().await;
}

#[tokio::test]
async fn the_legacy_lambda_function_string_is_an_event_target() {
    let text = test_config(json!([
        {"lambda_function": "sockudoPresenceHandler", "event_types": ["member_added"]}
    ]));
    let config = parse(&text);
    let app = config.apps[0].clone();
    let EndpointTarget::Lambda(target) = &app.endpoints[0].target else {
        panic!("a Lambda target: {:?}", app.endpoints[0].target)
    };
    assert_eq!(target.function_name, "sockudoPresenceHandler");
    assert_eq!(target.invocation_type, InvocationType::Event);
    assert_eq!(
        (&target.qualifier, &target.region, &target.endpoint_url),
        (&None, &None, &None)
    );
    // What it would send: the envelope and no client context.
    let mut batch = hookq_worker::batch::Batch::new(app.clone(), 0);
    let (settler, _acks) = hookq_worker::settle::Settler::new();
    let ticket = settler.ticket(hookq_queue::Handle("t".into()), 1, None, None);
    batch.add(
        hookq_worker::batch::Encoded::new(Event::member_added("presence-a", "u1"), false),
        &ticket,
    );
    let invocation = hookq_worker::lambda::build_invocation(target, &batch, 1_700_000_000_000);
    assert_eq!(
        String::from_utf8(invocation.payload).unwrap(),
        r#"{"time_ms":1700000000000,"events":[{"name":"member_added","channel":"presence-a","user_id":"u1"}]}"#
    );
    assert_eq!(invocation.client_context, None);
    // And the worker accepts it.
    let queue: Arc<dyn QueueDriver> = Arc::new(MemoryQueue::new(10, Duration::from_secs(30)));
    Worker::new(Arc::new(config), queue, Arc::new(Metrics::new())).expect("the worker accepts it");
}
