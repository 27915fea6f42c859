//! What one webhook request becomes, without I/O: the body read as a Pusher
//! webhook, and one event job per event for the queue.
//!
//! Job ids come from the request, not from chance: `ing_<digest>_<position>`,
//! where the digest is SHA-256 over the app id and the exact body. A sender
//! re-sending the same body therefore produces the same jobs (and, with
//! `webhooks.event_ids`, receivers see the same per-event ids), and the digest
//! is the key under which the queue refuses a second copy within the window.

use hookq_core::config::App;
use hookq_core::job::{EventJob, Job, VERSION};
use hookq_core::{Event, EventName};
use hookq_queue::Outgoing;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Why a body is not a Pusher webhook (answered 400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotAWebhook(pub String);

/// The envelope Pusher-protocol servers send. Each event is kept as raw
/// JSON here and read on its own, so a bad event is named by its position.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(default)]
    time_ms: Option<serde_json::Value>,
    #[serde(borrow)]
    events: Option<Vec<&'a serde_json::value::RawValue>>,
}

/// A webhook's events, each with its position in the body.
#[derive(Debug, Default, PartialEq)]
pub struct Webhook {
    /// The events hookq knows, with their positions.
    pub events: Vec<(usize, Event)>,
    /// Events whose name hookq does not know (Sockudo's `member_updated`,
    /// say): no endpoint can ask for them, so they are skipped, as events no
    /// endpoint wants are, rather than refusing the whole body (which a
    /// sender drops on a 4xx, known events and all).
    pub unknown_names: usize,
}

/// Reads a body as `{"time_ms": <number>, "events": [<event>, …]}`; every
/// event must have a name and, when hookq knows the name, carry what that
/// event needs. Fields hookq does not know are kept.
pub fn parse(body: &[u8]) -> Result<Webhook, NotAWebhook> {
    let bad = |m: String| NotAWebhook(m);
    let text = std::str::from_utf8(body).map_err(|_| bad("the body is not UTF-8".into()))?;
    let envelope: Envelope =
        serde_json::from_str(text).map_err(|e| bad(format!("not a webhook object: {e}")))?;
    if !envelope.time_ms.as_ref().is_some_and(|t| t.is_u64()) {
        return Err(bad(
            "`time_ms` must be a whole number of milliseconds".into()
        ));
    }
    let raw = envelope
        .events
        .ok_or_else(|| bad("missing `events`, the array of events".into()))?;
    let mut webhook = Webhook::default();
    for (i, item) in raw.iter().enumerate() {
        let event: Event = match serde_json::from_str(item.get()) {
            Ok(event) => event,
            Err(e) => match why_not_an_event(item.get(), e) {
                Reason::UnknownName => {
                    webhook.unknown_names += 1;
                    continue;
                }
                Reason::Bad(why) => return Err(bad(format!("events[{i}]: {why}"))),
            },
        };
        event
            .validate()
            .map_err(|e| bad(format!("events[{i}]: {e}")))?;
        webhook.events.push((i, event));
    }
    Ok(webhook)
}

enum Reason {
    UnknownName,
    Bad(String),
}

/// Why an event's JSON did not read as an event, in the sender's terms.
fn why_not_an_event(text: &str, error: serde_json::Error) -> Reason {
    let value: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
    let Some(object) = value.as_object() else {
        return Reason::Bad("not an object".into());
    };
    match object.get("name").and_then(|n| n.as_str()) {
        None => Reason::Bad("no `name`".into()),
        Some(name) if name.parse::<EventName>().is_err() => Reason::UnknownName,
        Some(_) => Reason::Bad(error.to_string()),
    }
}

/// The request's digest: SHA-256 over the app id and the exact body, in hex.
pub fn digest(app_id: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(app_id.as_bytes());
    h.update([0]);
    h.update(body);
    hex::encode(h.finalize())
}

/// What the events of one request become.
#[derive(Debug, Default)]
pub struct Jobs {
    /// One message per event some endpoint of the app wants.
    pub messages: Vec<Outgoing>,
    /// Events no endpoint wants (or all of them, for a disabled app), and
    /// events whose name hookq does not know.
    pub skipped: usize,
}

/// One event job per wanted event, its id `ing_<digest prefix>_<position>`.
pub fn jobs(app: &App, digest: &str, webhook: Webhook, now_ms: u64) -> Jobs {
    let mut out = Jobs {
        skipped: webhook.unknown_names,
        ..Jobs::default()
    };
    for (position, event) in webhook.events {
        if !(app.enabled && app.endpoints.iter().any(|e| e.wants(&event))) {
            out.skipped += 1;
            continue;
        }
        let id = format!("ing_{}_{position}", &digest[..32]);
        let job = Job::Event(EventJob {
            v: VERSION,
            id: id.clone(),
            app_id: app.id.clone(),
            enqueued_at_ms: now_ms,
            not_before_ms: None,
            event,
        });
        out.messages
            .push(Outgoing::now(id, app.id.clone(), job.encode()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hookq_core::Config;

    fn app() -> std::sync::Arc<App> {
        let (config, _) = Config::parse(
            r#"{"app_manager": {"array": {"apps": [
                {"id": "a", "key": "ka", "secret": "sa", "webhooks": [
                  {"url": "http://127.0.0.1:9/x", "event_types": ["member_added", "client_event"]}]}
            ]}}}"#,
            |_| None,
        )
        .unwrap();
        config.apps[0].clone()
    }

    #[test]
    fn reads_pusher_bodies_and_keeps_unknown_fields() {
        let body = br#"{"time_ms":1700000000000,"events":[
            {"name":"member_added","channel":"presence-r","user_id":"u1","user_info":{"n":1}},
            {"name":"channel_occupied","channel":"r"},
            {"name":"member_updated","channel":"presence-r","user_id":"u1"},
            {"name":"client_event","channel":"private-c","event":"client-x","data":"{}","socket_id":"1.2"}]}"#;
        let webhook = parse(body).unwrap();
        assert_eq!((webhook.events.len(), webhook.unknown_names), (3, 1));
        assert_eq!(
            webhook.events[0].1.extra["user_info"],
            serde_json::json!({"n": 1})
        );
        let d = digest("a", body);
        let jobs = jobs(&app(), &d, webhook, 5);
        assert_eq!(
            jobs.skipped, 2,
            "nobody wants channel_occupied, nor can want member_updated"
        );
        assert_eq!(jobs.messages.len(), 2);
        assert_eq!(jobs.messages[0].id, format!("ing_{}_0", &d[..32]));
        assert_eq!(
            jobs.messages[1].id,
            format!("ing_{}_3", &d[..32]),
            "positions in the body"
        );
        let Job::Event(job) = Job::decode(&jobs.messages[0].body).unwrap() else {
            panic!("an event job")
        };
        assert_eq!(job.event.extra["user_info"], serde_json::json!({"n": 1}));
        assert_eq!(job.enqueued_at_ms, 5);
    }

    #[test]
    fn the_digest_depends_on_app_and_every_byte() {
        assert_eq!(digest("a", b"x"), digest("a", b"x"));
        assert_ne!(digest("a", b"x"), digest("b", b"x"));
        assert_ne!(digest("a", b"x"), digest("a", b"x "));
        assert_ne!(digest("ab", b"c"), digest("a", b"bc"));
    }

    #[test]
    fn refuses_what_is_not_a_webhook_naming_the_event() {
        for (body, message) in [
            (&b"\xff"[..], "the body is not UTF-8"),
            (b"hello", "not a webhook object"),
            (b"[1]", "not a webhook object"),
            (br#"{"events":[]}"#, "`time_ms` must be"),
            (br#"{"time_ms":"1","events":[]}"#, "`time_ms` must be"),
            (br#"{"time_ms":1}"#, "missing `events`"),
            (br#"{"time_ms":1,"events":{}}"#, "not a webhook object"),
            (br#"{"time_ms":1,"events":[7]}"#, "events[0]: not an object"),
            (
                br#"{"time_ms":1,"events":[{"channel":"c"}]}"#,
                "events[0]: no `name`",
            ),
            (
                br#"{"time_ms":1,"events":[{"name":"x","channel":"c"},{"name":"member_added"}]}"#,
                "events[1]: missing field `channel`",
            ),
            (
                br#"{"time_ms":1,"events":[{"name":"member_added","channel":"c"}]}"#,
                "events[0]: member_added: missing field `user_id`",
            ),
            (
                br#"{"time_ms":1,"events":[{"name":"channel_vacated"}]}"#,
                "events[0]: missing field `channel`",
            ),
        ] {
            let err = parse(body).unwrap_err().0;
            assert!(
                err.starts_with(message),
                "{err:?} for {:?}",
                String::from_utf8_lossy(body)
            );
        }
        assert_eq!(
            parse(br#"{"time_ms":1,"events":[]}"#).unwrap(),
            Webhook::default()
        );
    }
}
