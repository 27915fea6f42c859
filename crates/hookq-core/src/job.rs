//! The job wire format: one JSON object per queue message (see docs/job-format.md).
//!
//! A producer in any language can enqueue an [`EventJob`] with a plain `LPUSH`
//! or `SendMessage`. The worker turns a failed delivery into a [`RetryJob`] for
//! that one endpoint, carrying the batch's events and its `webhook_id`, so a
//! backoff lives in the queue and never only in a worker's memory. What cannot
//! be delivered becomes a [`DeadLetter`], which holds a job that replays exactly
//! what failed.

use crate::event::{Event, EventError};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// The wire format version this code writes and reads.
pub const VERSION: u32 = 1;

/// One queue message.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Job {
    /// A new event for an app, to fan out to every endpoint that wants it.
    Event(EventJob),
    /// A batch that failed at one endpoint, to try there again.
    Retry(RetryJob),
}

/// A new event for an app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventJob {
    /// Wire format version, [`VERSION`].
    pub v: u32,
    /// Unique job id; also the event's id when the event has none.
    pub id: String,
    /// The app the event belongs to.
    pub app_id: String,
    /// When the producer enqueued it (Unix ms); 0 when unknown.
    #[serde(default)]
    pub enqueued_at_ms: u64,
    /// Not to be processed before this time (Unix ms); used for delays longer than a queue supports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before_ms: Option<u64>,
    /// The event.
    pub event: Event,
}

/// A batch to deliver again to one endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetryJob {
    /// Wire format version, [`VERSION`].
    pub v: u32,
    /// Unique job id.
    pub id: String,
    /// The app.
    pub app_id: String,
    /// When this job was pushed (Unix ms).
    #[serde(default)]
    pub enqueued_at_ms: u64,
    /// Not to be processed before this time (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before_ms: Option<u64>,
    /// The endpoint's id.
    pub endpoint: String,
    /// The number of the attempt this job is for (2 for the first retry; 1 after a DLQ replay).
    pub attempt: u32,
    /// When the first attempt was made (Unix ms); 0 when this job starts a fresh budget.
    #[serde(default)]
    pub first_attempt_ms: u64,
    /// The batch's `webhook-id`, the same for every attempt.
    pub webhook_id: String,
    /// The batch's events.
    pub events: Vec<Event>,
    /// Why the previous attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Why a queue message is not a job hookq can process.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Not JSON, or not the shape of a job.
    #[error("malformed job: {0}")]
    Malformed(#[from] serde_json::Error),
    /// A field its kind requires is absent.
    #[error("malformed job: missing field `{0}`")]
    Missing(&'static str),
    /// A wire format version this worker does not know.
    #[error("unsupported job version {0} (this worker reads {VERSION})")]
    Version(u32),
    /// The job names no app.
    #[error("malformed job: empty app_id")]
    NoApp,
    /// A retry job without events.
    #[error("malformed job: retry job has no events")]
    NoEvents,
    /// An event lacks what its name requires.
    #[error("invalid event: {0}")]
    Event(#[from] EventError),
}

impl Job {
    /// Parses and checks a queue message. An event job's event gets the job id as its id.
    pub fn decode(text: &str) -> Result<Job, JobError> {
        let wire: Wire = serde_json::from_str(text)?;
        if wire.v != VERSION {
            return Err(JobError::Version(wire.v));
        }
        if wire.app_id.is_empty() {
            return Err(JobError::NoApp);
        }
        match wire.kind {
            Kind::Event => {
                let mut event = wire.event.ok_or(JobError::Missing("event"))?;
                event.validate()?;
                if event.id.is_none() {
                    event.id = Some(wire.id.clone());
                }
                Ok(Job::Event(EventJob {
                    v: wire.v,
                    id: wire.id,
                    app_id: wire.app_id,
                    enqueued_at_ms: wire.enqueued_at_ms,
                    not_before_ms: wire.not_before_ms,
                    event,
                }))
            }
            Kind::Retry => {
                let events = wire.events.ok_or(JobError::Missing("events"))?;
                if events.is_empty() {
                    return Err(JobError::NoEvents);
                }
                for e in &events {
                    e.validate()?;
                }
                Ok(Job::Retry(RetryJob {
                    v: wire.v,
                    id: wire.id,
                    app_id: wire.app_id,
                    enqueued_at_ms: wire.enqueued_at_ms,
                    not_before_ms: wire.not_before_ms,
                    endpoint: wire.endpoint.ok_or(JobError::Missing("endpoint"))?,
                    attempt: wire.attempt.ok_or(JobError::Missing("attempt"))?,
                    first_attempt_ms: wire.first_attempt_ms,
                    webhook_id: wire.webhook_id.ok_or(JobError::Missing("webhook_id"))?,
                    events,
                    last_error: wire.last_error,
                }))
            }
        }
    }

    /// The JSON text of the job.
    pub fn encode(&self) -> String {
        // A Job holds only strings, numbers and enums: serializing cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The app the job belongs to.
    pub fn app_id(&self) -> &str {
        match self {
            Job::Event(j) => &j.app_id,
            Job::Retry(j) => &j.app_id,
        }
    }

    /// The time before which the job is not to be processed, if any.
    pub fn not_before_ms(&self) -> Option<u64> {
        match self {
            Job::Event(j) => j.not_before_ms,
            Job::Retry(j) => j.not_before_ms,
        }
    }

    /// Sets (or clears) the time before which the job is not to be processed.
    pub fn set_not_before_ms(&mut self, at: Option<u64>) {
        match self {
            Job::Event(j) => j.not_before_ms = at,
            Job::Retry(j) => j.not_before_ms = at,
        }
    }
}

/// Every field of either kind, for decoding in one pass: serde's internally
/// tagged enums buffer the whole object before they read the tag, which costs
/// a third of the decode.
#[derive(Deserialize)]
struct Wire {
    v: u32,
    kind: Kind,
    id: String,
    app_id: String,
    #[serde(default)]
    enqueued_at_ms: u64,
    #[serde(default)]
    not_before_ms: Option<u64>,
    #[serde(default)]
    event: Option<Event>,
    #[serde(default)]
    endpoint: Option<String>,
    #[serde(default)]
    attempt: Option<u32>,
    #[serde(default)]
    first_attempt_ms: u64,
    #[serde(default)]
    webhook_id: Option<String>,
    #[serde(default)]
    events: Option<Vec<Event>>,
    #[serde(default)]
    last_error: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Event,
    Retry,
}

impl EventJob {
    /// A new event job with a fresh id, stamped now.
    pub fn new(app_id: impl Into<String>, event: Event) -> Self {
        Self {
            v: VERSION,
            id: crate::new_id("job"),
            app_id: app_id.into(),
            enqueued_at_ms: crate::now_ms(),
            not_before_ms: None,
            event,
        }
    }
}

/// An entry of the dead-letter queue: what failed, why, and a job that replays it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The job to push again on replay, as text (a malformed job is kept as
    /// it came). For a message that is not UTF-8 this is only its text for
    /// reading (U+FFFD where a byte was not UTF-8), and [`DeadLetter::job_base64`]
    /// holds what replay puts back.
    pub job: String,
    /// The message's exact bytes, in standard base64 with padding, when they
    /// are not UTF-8 (a raw `LPUSH` from another language): replay puts
    /// back these bytes, not `job`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_base64: Option<String>,
    /// Why it was dead-lettered, e.g. `HTTP 400`, `unknown app`, `malformed job: …`.
    pub reason: String,
    /// When (Unix ms).
    pub failed_at_ms: u64,
    /// The app, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
    /// The endpoint's id, when the failure was a delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Attempts made.
    #[serde(default)]
    pub attempts: u32,
    /// The last HTTP status, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
    /// The start of the last response body, for diagnosis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_excerpt: Option<String>,
}

impl DeadLetter {
    /// An entry for a message that is not a usable job, keeping its raw text.
    pub fn unusable(raw: &str, reason: impl Into<String>, app_id: Option<String>) -> Self {
        Self {
            job: raw.to_string(),
            job_base64: None,
            reason: reason.into(),
            failed_at_ms: crate::now_ms(),
            app_id,
            endpoint: None,
            attempts: 0,
            last_status: None,
            body_excerpt: None,
        }
    }

    /// An entry for a message whose bytes are not UTF-8, keeping them
    /// exactly (`job_base64`) beside their text for reading (`job`).
    pub fn not_utf8(raw: &[u8], reason: impl Into<String>, app_id: Option<String>) -> Self {
        use base64::Engine;
        Self {
            job_base64: Some(base64::engine::general_purpose::STANDARD.encode(raw)),
            ..Self::unusable(&String::from_utf8_lossy(raw), reason, app_id)
        }
    }

    /// The bytes replay puts back: those of `job_base64` when it is set,
    /// else `job`'s. `None` when `job_base64` is not valid base64.
    pub fn job_bytes(&self) -> Option<Cow<'_, [u8]>> {
        use base64::Engine;
        match &self.job_base64 {
            None => Some(self.job.as_bytes().into()),
            Some(b64) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .ok()
                .map(Into::into),
        }
    }

    /// The job replay puts back, as text: `None` when its bytes are not
    /// UTF-8, which a queue of text messages (SQS, the memory queue) cannot
    /// carry.
    pub fn job_text(&self) -> Option<Cow<'_, str>> {
        match &self.job_base64 {
            None => Some(Cow::Borrowed(&self.job)),
            Some(_) => String::from_utf8(self.job_bytes()?.into_owned())
                .ok()
                .map(Cow::Owned),
        }
    }

    /// The JSON text of the entry.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Room a retry job's own fields get beside its events, in bytes of JSON:
/// the version, kind, ids, times, attempt and `last_error` (a failure's
/// short reason). App and endpoint ids of a few hundred bytes fit.
pub const RETRY_JOB_FIELDS_ALLOWANCE: usize = 2048;

/// Room each event of a retry job gets beyond its bytes in the request
/// body: its `"id":"…",`, which a request leaves out unless
/// `webhooks.event_ids`. hookq's ids (`job_` and 32 hex digits) take 44
/// bytes; ids up to 56 characters fit.
pub const RETRY_JOB_EVENT_ALLOWANCE: usize = 64;

impl RetryJob {
    /// The most bytes the retry job of a batch can take whose request body
    /// is `body_bytes` long with `events` events, as far as the allowances
    /// ([`RETRY_JOB_FIELDS_ALLOWANCE`], [`RETRY_JOB_EVENT_ALLOWANCE`]) cover
    /// its own fields and its events' ids.
    pub fn max_bytes_for(body_bytes: usize, events: usize) -> usize {
        body_bytes
            .saturating_add(RETRY_JOB_FIELDS_ALLOWANCE)
            .saturating_add(events.saturating_mul(RETRY_JOB_EVENT_ALLOWANCE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventName;

    #[test]
    fn decodes_the_documented_examples() {
        let job = Job::decode(
            r#"{"v":1,"kind":"event","id":"j1","app_id":"app-1","enqueued_at_ms":1700000000000,
            "event":{"name":"member_added","channel":"presence-room","user_id":"u1"}}"#,
        )
        .unwrap();
        let Job::Event(e) = &job else {
            panic!("not an event job")
        };
        assert_eq!(e.event.name, EventName::MemberAdded);
        assert_eq!(e.event.id.as_deref(), Some("j1"));

        let retry = Job::decode(
            r#"{"v":1,"kind":"retry","id":"j2","app_id":"app-1","endpoint":"0-abcd",
            "attempt":2,"first_attempt_ms":1700000000000,"webhook_id":"msg_1",
            "events":[{"name":"channel_occupied","channel":"c"}]}"#,
        )
        .unwrap();
        assert!(matches!(retry, Job::Retry(RetryJob { attempt: 2, .. })));
        assert_eq!(Job::decode(&retry.encode()).unwrap(), retry);
    }

    #[test]
    fn rejects_what_cannot_be_processed() {
        let cases = [
            ("not json", "malformed job"),
            (
                r#"{"v":1,"kind":"nope","id":"x","app_id":"a"}"#,
                "malformed job",
            ),
            (
                r#"{"v":2,"kind":"event","id":"x","app_id":"a","event":{"name":"cache_miss","channel":"c"}}"#,
                "unsupported job version 2",
            ),
            (
                r#"{"v":1,"kind":"event","id":"x","app_id":"","event":{"name":"cache_miss","channel":"c"}}"#,
                "empty app_id",
            ),
            (
                r#"{"v":1,"kind":"event","id":"x","app_id":"a","event":{"name":"member_added","channel":"c"}}"#,
                "missing field `user_id`",
            ),
            (
                r#"{"v":1,"kind":"retry","id":"x","app_id":"a","endpoint":"e","attempt":2,"webhook_id":"w","events":[]}"#,
                "no events",
            ),
            (
                r#"{"v":1,"kind":"event","id":"x","app_id":"a"}"#,
                "missing field `event`",
            ),
            (
                r#"{"v":1,"kind":"retry","id":"x","app_id":"a","attempt":2,"webhook_id":"w","events":[{"name":"cache_miss","channel":"c"}]}"#,
                "missing field `endpoint`",
            ),
        ];
        for (text, want) in cases {
            let err = Job::decode(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
    }
}
