//! docs/job.schema.json against real jobs: what the producer pushes, the retry
//! jobs and dead-letter entries a worker writes, and hand-written jobs that a
//! worker accepts or refuses, where the schema and `Job::decode` must agree.
//! The JSON examples of docs/job-format.md and docs/configuration.md, and
//! examples/config.json, are checked here too, so the docs stay true.

use crate::support::inproc::{InProc, config};
use crate::support::queue::{open, parse};
use crate::support::receiver::{Receiver, Reply};
use crate::support::wait::poll;
use hookq_core::job::{Job, RetryJob, VERSION};
use hookq_core::{Config, Event, EventName};
use hookq_producer::Producer;
use hookq_queue::{MemoryQueue, QueueConsume};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

fn schema() -> Value {
    serde_json::from_str(&read("docs/job.schema.json")).expect("the schema is JSON")
}

/// The validator of a job.
fn jobs() -> jsonschema::Validator {
    jsonschema::draft202012::new(&schema()).expect("the schema compiles")
}

/// The validator of a dead-letter entry (`$defs/dead_letter` of the same file).
fn dead_letters() -> jsonschema::Validator {
    let s = schema();
    let entry =
        json!({"$schema": s["$schema"], "$defs": s["$defs"], "$ref": "#/$defs/dead_letter"});
    jsonschema::draft202012::new(&entry).expect("the dead-letter schema compiles")
}

fn problems(v: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    v.iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

/// Asserts that a job's text is valid under the schema and decodes.
fn assert_valid_job(v: &jsonschema::Validator, text: &str) -> Job {
    let value: Value = serde_json::from_str(text).expect("a job is JSON");
    let found = problems(v, &value);
    assert!(found.is_empty(), "schema refuses {text}:\n{found:#?}");
    Job::decode(text).unwrap_or_else(|e| panic!("worker refuses {text}: {e}"))
}

/// The ```json blocks of a Markdown file.
fn json_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match &mut current {
            None if line.trim() == "```json" => current = Some(String::new()),
            Some(block) if line.trim() == "```" => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
            None => {}
        }
    }
    blocks
}

#[test]
fn the_schema_is_a_valid_draft_2020_12_schema() {
    let s = schema();
    assert_eq!(s["$schema"], "https://json-schema.org/draft/2020-12/schema");
    if let Err(e) = jsonschema::meta::validate(&s) {
        panic!("not a valid schema: {e} at {}", e.instance_path());
    }
    jobs();
    dead_letters();
}

#[tokio::test]
async fn jobs_the_producer_pushes_validate() {
    let all = EventName::ALL.map(EventName::as_str);
    let text = json!({"app_manager": {"array": {"apps": [{
        "id": "app-1", "key": "key-1", "secret": "secret-1",
        "webhooks": [{"url": "http://127.0.0.1:9/h", "event_types": all}]
    }]}}});
    let queue = Arc::new(MemoryQueue::new(100, Duration::from_secs(30)));
    let producer = Producer::new(queue.clone(), Arc::new(parse(&text)));
    // A client event whose data a producer gave as an object.
    let object_data: Event = serde_json::from_value(json!({
        "name": "client_event", "channel": "private-chat", "event": "client-typing",
        "data": {"typing": true}, "socket_id": "123.456"
    }))
    .unwrap();
    let presence_client = Event {
        user_id: Some("u7".into()),
        ..Event::client_event("presence-room", "client-wave", "{}", "1.2")
    };
    let events = vec![
        Event::channel_occupied("room-1"),
        Event::channel_vacated("room-1"),
        Event::member_added("presence-room", "u1"),
        Event::member_removed("presence-room", "u1"),
        Event::client_event("private-chat", "client-msg", r#"{"text":"hi"}"#, "123.456"),
        presence_client,
        object_data,
        Event::cache_miss("cache-prices"),
        Event::subscription_count("room-1", 0),
        Event::subscription_count("room-1", 42),
    ];
    let count = events.len();
    let published = producer.publish_batch("app-1", events).await.unwrap();
    assert_eq!(published.enqueued, count);

    let received = queue.receive(100, Duration::ZERO).await.unwrap();
    assert_eq!(received.len(), count);
    let v = jobs();
    let mut names = Vec::new();
    for r in &received {
        let Job::Event(job) = assert_valid_job(&v, &r.body) else {
            panic!("the producer pushes event jobs: {}", r.body)
        };
        names.push(job.event.name);
        let wire: Value = serde_json::from_str(&r.body).unwrap();
        if let Some(data) = wire["event"].get("data") {
            assert!(
                data.is_string(),
                "data goes on the wire as a string: {}",
                r.body
            );
        }
    }
    for name in EventName::ALL {
        assert!(names.contains(&name), "no {name} job was checked");
    }
}

#[test]
fn a_retry_job_built_as_the_worker_builds_it_validates() {
    let job = Job::Retry(RetryJob {
        v: VERSION,
        id: hookq_core::new_id("job"),
        app_id: "app-1".into(),
        enqueued_at_ms: hookq_core::now_ms(),
        not_before_ms: Some(hookq_core::now_ms() + 3_600_000),
        endpoint: "0-3f7feea5".into(),
        attempt: 3,
        first_attempt_ms: hookq_core::now_ms() - 5_000,
        webhook_id: hookq_core::new_id("msg"),
        events: vec![
            Event {
                id: Some("job_1".into()),
                ..Event::member_added("presence-room", "u1")
            },
            Event::client_event("private-chat", "client-msg", "\"text\"", "1.2"),
            Event::subscription_count("room", 7),
        ],
        last_error: Some("HTTP 503".into()),
    });
    let decoded = assert_valid_job(&jobs(), &job.encode());
    assert_eq!(decoded, job);
}

/// A worker rejects at one endpoint (a DLQ entry whose job is a replay retry
/// job) and fails at another (a retry job in the queue); a second worker,
/// whose config lists the webhooks in the other order, finds that retry job's
/// endpoint gone and dead-letters it as it came. All of it validates.
#[tokio::test]
async fn retry_jobs_and_dead_letters_the_worker_writes_validate() {
    let r = Receiver::start(&[("key-1", "secret-1")]).await;
    r.script("/flaky", vec![Reply::status(503)]);
    r.always("/bad", Reply::status(400).with_body("{\"error\":\"no\"}"));
    let flaky = json!({"url": r.url("/flaky"), "event_types": ["member_added"]});
    let bad = json!({"url": r.url("/bad"), "event_types": ["member_added"]});
    let app = |webhooks: Value| json!([{"id": "app-1", "key": "key-1", "secret": "secret-1", "webhooks": webhooks}]);
    // Retries wait 2 to 4 s: long enough to stop the first worker first.
    let slow = json!({"retry": {"initial_backoff_ms": 4000, "max_backoff_ms": 8000, "max_elapsed_time_ms": 60000}});
    let load = |c: Value| Arc::new(parse(&c));

    let before = load(config(app(json!([flaky, bad])), slow.clone()));
    let queue = open(&before).await;
    let w = InProc::start_on(before, queue.clone()).await;
    w.publish(vec![Event::member_added("presence-a", "u1")])
        .await;
    let (limit, every) = (Duration::from_secs(15), Duration::from_millis(25));
    poll(
        "a DLQ entry and a delayed retry job",
        limit,
        every,
        async || {
            let d = queue.depth().await.unwrap();
            if (d.dead, d.delayed, d.ready, d.held) == (1, 1, 0, 0) {
                Ok(())
            } else {
                Err(format!("{d:?}"))
            }
        },
    )
    .await;
    w.stop().await;

    let reordered = load(config(app(json!([bad, flaky])), slow));
    let w = InProc::start_on(reordered, queue.clone()).await;
    let entries = w.wait_dlq(2, Duration::from_secs(20)).await;
    w.stop().await;

    let (jv, dv) = (jobs(), dead_letters());
    for e in &entries {
        let value = serde_json::to_value(e).unwrap();
        let found = problems(&dv, &value);
        assert!(
            found.is_empty(),
            "schema refuses the DLQ entry {value}:\n{found:#?}"
        );
        assert!(matches!(assert_valid_job(&jv, &e.job), Job::Retry(_)));
    }

    let rejected = entries
        .iter()
        .find(|e| e.reason == "HTTP 400")
        .expect("the 400");
    assert_eq!(rejected.last_status, Some(400));
    let Ok(Job::Retry(replay)) = Job::decode(&rejected.job) else {
        panic!("a retry job")
    };
    assert_eq!(
        (replay.attempt, replay.first_attempt_ms),
        (1, 0),
        "replay starts afresh"
    );
    assert_eq!(Some(&replay.endpoint), rejected.endpoint.as_ref());

    let moved = entries
        .iter()
        .find(|e| e.reason.ends_with("no longer configured"))
        .expect("the moved endpoint's retry job");
    let Ok(Job::Retry(retry)) = Job::decode(&moved.job) else {
        panic!("a retry job")
    };
    assert_eq!(retry.attempt, 2);
    assert!(retry.first_attempt_ms > 0);
    assert_eq!(retry.last_error.as_deref(), Some("HTTP 503"));
    assert_eq!(moved.attempts, 1);
}

/// Jobs a worker refuses (it dead-letters them): the schema must refuse them too.
#[test]
fn jobs_the_worker_refuses_are_refused_by_the_schema() {
    let ev = |event: Value| json!({"v": 1, "kind": "event", "id": "j1", "app_id": "app-1", "event": event});
    let retry = |extra: Value| {
        let mut job = json!({"v": 1, "kind": "retry", "id": "j2", "app_id": "app-1", "endpoint": "0-abcd",
            "attempt": 2, "webhook_id": "msg_1", "events": [{"name": "cache_miss", "channel": "cache-x"}]});
        for (k, v) in extra.as_object().unwrap() {
            job[k] = v.clone();
        }
        job
    };
    let cases: Vec<(&str, Value)> = vec![
        ("not an object", json!(["v", 1])),
        (
            "missing app_id",
            json!({"v": 1, "kind": "event", "id": "j1", "event": {"name": "channel_occupied", "channel": "c"}}),
        ),
        (
            "empty app_id",
            json!({"v": 1, "kind": "event", "id": "j1", "app_id": "", "event": {"name": "channel_occupied", "channel": "c"}}),
        ),
        (
            "missing id",
            json!({"v": 1, "kind": "event", "app_id": "a", "event": {"name": "channel_occupied", "channel": "c"}}),
        ),
        (
            "missing v",
            json!({"kind": "event", "id": "j1", "app_id": "a", "event": {"name": "channel_occupied", "channel": "c"}}),
        ),
        (
            "unknown version",
            json!({"v": 2, "kind": "event", "id": "j1", "app_id": "a", "event": {"name": "channel_occupied", "channel": "c"}}),
        ),
        (
            "unknown kind",
            json!({"v": 1, "kind": "batch", "id": "j1", "app_id": "a", "event": {"name": "channel_occupied", "channel": "c"}}),
        ),
        (
            "no kind",
            json!({"v": 1, "id": "j1", "app_id": "a", "event": {"name": "channel_occupied", "channel": "c"}}),
        ),
        (
            "no event",
            json!({"v": 1, "kind": "event", "id": "j1", "app_id": "a"}),
        ),
        (
            "null enqueued_at_ms",
            json!({"v": 1, "kind": "event", "id": "j1", "app_id": "a", "enqueued_at_ms": null,
                "event": {"name": "channel_occupied", "channel": "c"}}),
        ),
        (
            "negative not_before_ms",
            json!({"v": 1, "kind": "event", "id": "j1", "app_id": "a", "not_before_ms": -1,
                "event": {"name": "channel_occupied", "channel": "c"}}),
        ),
        (
            "unknown event name",
            ev(json!({"name": "channel_created", "channel": "c"})),
        ),
        ("no channel", ev(json!({"name": "channel_occupied"}))),
        (
            "empty channel",
            ev(json!({"name": "channel_occupied", "channel": ""})),
        ),
        (
            "member_added without user_id",
            ev(json!({"name": "member_added", "channel": "presence-a"})),
        ),
        (
            "member_removed with an empty user_id",
            ev(json!({"name": "member_removed", "channel": "presence-a", "user_id": ""})),
        ),
        (
            "member_added with a numeric user_id",
            ev(json!({"name": "member_added", "channel": "presence-a", "user_id": 42})),
        ),
        (
            "client_event without data",
            ev(
                json!({"name": "client_event", "channel": "private-a", "event": "client-x", "socket_id": "1.2"}),
            ),
        ),
        (
            "client_event with null data",
            ev(
                json!({"name": "client_event", "channel": "private-a", "event": "client-x", "data": null, "socket_id": "1.2"}),
            ),
        ),
        (
            "client_event without socket_id",
            ev(
                json!({"name": "client_event", "channel": "private-a", "event": "client-x", "data": "{}"}),
            ),
        ),
        (
            "client_event without event",
            ev(
                json!({"name": "client_event", "channel": "private-a", "data": "{}", "socket_id": "1.2"}),
            ),
        ),
        (
            "subscription_count without a count",
            ev(json!({"name": "subscription_count", "channel": "a"})),
        ),
        (
            "subscription_count as a string",
            ev(json!({"name": "subscription_count", "channel": "a", "subscription_count": "3"})),
        ),
        (
            "negative subscription_count",
            ev(json!({"name": "subscription_count", "channel": "a", "subscription_count": -1})),
        ),
        ("retry job without events", retry(json!({"events": []}))),
        ("retry job without webhook_id", {
            let mut j = retry(json!({}));
            j.as_object_mut().unwrap().remove("webhook_id");
            j
        }),
        ("retry job without endpoint", {
            let mut j = retry(json!({}));
            j.as_object_mut().unwrap().remove("endpoint");
            j
        }),
        (
            "retry job with a negative attempt",
            retry(json!({"attempt": -1})),
        ),
        (
            "retry job with an attempt past u32",
            retry(json!({"attempt": 4294967296u64})),
        ),
        (
            "retry job with an invalid event",
            retry(json!({"events": [{"name": "member_added", "channel": "presence-a"}]})),
        ),
        ("retry job with null events", retry(json!({"events": null}))),
    ];
    let v = jobs();
    for (what, job) in cases {
        assert!(!v.is_valid(&job), "the schema accepts {what}: {job}");
        assert!(
            Job::decode(&job.to_string()).is_err(),
            "the worker accepts {what}: {job}"
        );
    }
}

/// Lenient forms the worker accepts: the schema must accept them too.
#[test]
fn lenient_jobs_the_worker_accepts_are_valid() {
    let ev = |event: Value| json!({"v": 1, "kind": "event", "id": "j1", "app_id": "app-1", "event": event});
    let cases: Vec<(&str, Value)> = vec![
        (
            "no enqueued_at_ms",
            ev(json!({"name": "channel_occupied", "channel": "c"})),
        ),
        (
            "client_event data as an object",
            ev(
                json!({"name": "client_event", "channel": "private-a", "event": "client-x",
                "data": {"a": [1, 2]}, "socket_id": "1.2"}),
            ),
        ),
        (
            "client_event data as a number",
            ev(
                json!({"name": "client_event", "channel": "private-a", "event": "client-x", "data": 5, "socket_id": "1.2"}),
            ),
        ),
        (
            "client_event data as an empty string",
            ev(
                json!({"name": "client_event", "channel": "private-a", "event": "client-x", "data": "", "socket_id": "1.2"}),
            ),
        ),
        (
            "nulls for optional fields",
            json!({"v": 1, "kind": "event", "id": "j1", "app_id": "a", "not_before_ms": null,
                "event": {"id": null, "name": "member_added", "channel": "presence-a", "user_id": "u",
                    "event": null, "data": null, "socket_id": null, "subscription_count": null}}),
        ),
        (
            "fields a worker does not know",
            json!({"v": 1, "kind": "event", "id": "j1", "app_id": "a", "trace": "t-1",
                "event": {"name": "cache_miss", "channel": "cache-a", "colour": "blue"}}),
        ),
        (
            "optional fields on any event",
            ev(
                json!({"name": "channel_vacated", "channel": "presence-a", "user_id": "u", "socket_id": "1.2"}),
            ),
        ),
        (
            "an event with its own id",
            ev(json!({"id": "evt-9", "name": "cache_miss", "channel": "cache-a"})),
        ),
        (
            "a retry job with attempt 0, no first_attempt_ms and an empty endpoint",
            json!({"v": 1, "kind": "retry", "id": "j2", "app_id": "a", "endpoint": "", "attempt": 0,
                "webhook_id": "msg_1", "events": [{"name": "cache_miss", "channel": "cache-x"}]}),
        ),
    ];
    let v = jobs();
    for (what, job) in cases {
        let found = problems(&v, &job);
        assert!(
            found.is_empty(),
            "the schema refuses {what}: {job}\n{found:#?}"
        );
        assert!(
            Job::decode(&job.to_string()).is_ok(),
            "the worker refuses {what}: {job}"
        );
    }
}

/// Every ```json block of docs/job-format.md is a job or a dead-letter entry that validates.
#[test]
fn the_examples_in_job_format_md_validate() {
    let (jv, dv) = (jobs(), dead_letters());
    let blocks = json_blocks(&read("docs/job-format.md"));
    let mut jobs_seen = 0;
    for block in &blocks {
        let value: Value =
            serde_json::from_str(block).unwrap_or_else(|e| panic!("not JSON ({e}):\n{block}"));
        if value.get("kind").is_some() {
            assert_valid_job(&jv, block);
            jobs_seen += 1;
        } else if value.get("reason").is_some() {
            let found = problems(&dv, &value);
            assert!(
                found.is_empty(),
                "schema refuses the DLQ entry {block}:\n{found:#?}"
            );
            assert_valid_job(&jv, value["job"].as_str().unwrap());
        }
    }
    assert!(jobs_seen >= 8, "only {jobs_seen} job examples found");
}

/// Every ```json block of docs/configuration.md, and examples/config.json, loads without a problem or a warning.
#[test]
fn the_config_examples_load_cleanly() {
    let mut texts = json_blocks(&read("docs/configuration.md"));
    assert!(
        texts.len() >= 10,
        "only {} config examples found",
        texts.len()
    );
    let example = read("examples/config.json");
    assert!(
        texts.iter().any(|t| t.trim() == example.trim()),
        "docs/configuration.md ends with examples/config.json as it is"
    );
    texts.push(example);
    for text in &texts {
        match Config::parse(text, |_| None) {
            Ok((_, d)) => assert!(d.warnings.is_empty(), "{:?} in:\n{text}", d.warnings),
            Err(e) => panic!("{e}\nin:\n{text}"),
        }
    }
}

/// The signed request shown in docs/job-format.md is what hookq's signer makes, headers in order.
#[test]
fn the_request_example_in_job_format_md_is_what_hookq_sends() {
    use hookq_core::envelope::{self, Signer};
    let doc = read("docs/job-format.md");
    let event = envelope::encode_event(&Event::member_added("presence-room", "u1"), false);
    let body = envelope::body(1_700_000_000_123, [event.as_slice()]);
    let secret =
        hookq_core::sign::SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
    let signer = Signer {
        app_key: "app-1-key",
        app_secret: "app-1-secret",
        signing_secrets: std::slice::from_ref(&secret),
        webhook_id: "msg_0190a5c2e7a47c1e9a3b5d6f7e8a9b0c",
        time_ms: 1_700_000_000_123,
    };
    let mut at = 0;
    for (name, value) in signer.headers(&body) {
        if name == "user-agent" {
            continue;
        }
        let line = format!("\n{name}: {value}\n");
        let found = doc[at..]
            .find(&line)
            .unwrap_or_else(|| panic!("{line:?} not in the example, in order"));
        at += found + 1;
    }
    let body = String::from_utf8(body).unwrap();
    assert!(
        doc[at..].contains(&format!("\n{body}\n")),
        "the body {body} follows the headers"
    );
}
