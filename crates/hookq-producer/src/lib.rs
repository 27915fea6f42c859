//! The library a realtime server embeds to hand its webhooks to hookq.
//!
//! [`Producer::publish`] checks an event (its fields, and its size against
//! `event_limits.max_payload_in_kb`), drops it when no endpoint of the app
//! wants it (a busy server must not flood the queue with events nobody asked
//! for), wraps it in a job and pushes it; [`Producer::publish_batch`] does the
//! same for many events in one push. Delivery, batching and retries are the
//! workers' business: the producer only enqueues.
//!
//! # When the queue fails: what was queued, and what a retry does
//!
//! Everything the producer checks (the app, each event's fields and size)
//! is checked before anything is pushed: those errors queue nothing. A
//! [`PublishError::Queue`] comes from the push itself, and what it leaves
//! behind depends on the driver:
//!
//! - **Redis**: the push is one command (`LPUSH`, or one script when a push
//!   carries delays or a key), which Redis applies whole or not at all. An
//!   error means nothing was queued — unless the error came after Redis had
//!   the command (a response timeout, a connection lost before the answer):
//!   then all of it may be queued.
//! - **SQS**: the jobs go in `SendMessageBatch` calls of at most 10 jobs and
//!   256 KiB, one after another, and SQS answers each entry of a call
//!   separately: it can accept some and refuse others. When every refusal
//!   is SQS's own fault, the refused entries are sent once more; otherwise,
//!   or if they fail again, the push stops with the error. So an error can
//!   leave **part** of the jobs queued — those of the calls before the
//!   failing one and the entries of that call SQS accepted — and the rest
//!   not, and [`Published::job_ids`] is not returned, so the caller cannot
//!   tell which. (The AWS SDK also re-sends a call whose
//!   answer was lost, which on a standard queue can queue a job twice.)
//! - **Memory**: all or nothing (a full queue refuses the whole push).
//!
//! A retry of [`Producer::publish_batch`] with the same events builds new
//! jobs with **new ids**, so the jobs that went in the first time are queued
//! again: those events are delivered twice, with different event ids
//! (`webhooks.event_ids`), so receivers cannot recognise the copies by id,
//! and an SQS FIFO queue, which de-duplicates by job id, does not drop them
//! either. Nothing is lost, and delivery was at least once anyway; to keep a
//! retry from duplicating on SQS, publish one event per call (one entry is
//! accepted or refused whole, lost answers aside). The ingest, by contrast,
//! derives its job ids from the request's body, so a re-sent webhook gets
//! the same ids (docs/architecture.md).
//!
//! ```
//! use std::sync::Arc;
//! use hookq_core::{Config, Event};
//! use hookq_producer::Producer;
//! use hookq_queue::{MemoryQueue, QueueDriver};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (config, _warnings) = Config::parse(r#"{
//!   "app_manager": {"array": {"apps": [{
//!     "id": "app-1", "key": "key-1", "secret": "secret-1",
//!     "webhooks": [{"url": "https://example.com/hooks", "event_types": ["member_added"]}]
//!   }]}}
//! }"#, |_| None)?;
//! let queue: Arc<dyn QueueDriver> = Arc::new(MemoryQueue::from_settings(&config.queue.memory));
//! let producer = Producer::new(queue.clone(), Arc::new(config));
//!
//! // Inside the server, where a user joins a presence channel:
//! let sent = producer.publish("app-1", Event::member_added("presence-lobby", "user-42")).await?;
//! assert_eq!(sent.enqueued, 1);
//! // Nobody subscribed to channel_occupied: nothing is queued.
//! let sent = producer.publish("app-1", Event::channel_occupied("presence-lobby")).await?;
//! assert_eq!(sent.skipped, 1);
//! assert_eq!(queue.depth().await?.ready, 1);
//! # Ok(())
//! # }
//! ```

use hookq_core::config::{EventLimits, FIELDS_ALLOWANCE};
use hookq_core::job::{EventJob, Job};
use hookq_core::{AppRegistry, Config, Event, EventError, LookupError, StaticApps};
use hookq_queue::{Outgoing, QueueError, QueuePush};
use std::sync::Arc;

/// Why events could not be published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// No app has this id.
    #[error("unknown app {0:?}")]
    UnknownApp(String),
    /// The app could not be looked up (invalid stored configuration, registry down).
    #[error(transparent)]
    App(LookupError),
    /// An event lacks what its name requires; nothing of the batch was queued.
    #[error("event {index}: {source}")]
    InvalidEvent {
        /// Its position in the batch (0 for `publish`).
        index: usize,
        /// What is wrong.
        source: EventError,
    },
    /// An event is larger than `event_limits` allows; nothing of the batch was queued.
    #[error(
        "event {index}: {bytes} bytes as a job, over the limit of {max_payload} bytes of payload \
         (event_limits.max_payload_in_kb) plus {FIELDS_ALLOWANCE} for its other fields"
    )]
    TooLarge {
        /// Its position in the batch.
        index: usize,
        /// The size of its job's JSON.
        bytes: usize,
        /// The payload limit, in bytes.
        max_payload: usize,
    },
    /// The queue refused or could not be reached. On Redis and the memory
    /// queue nothing of the batch was queued (unless a Redis answer was lost
    /// after the push took effect); on SQS part of it may be. See the crate
    /// docs, "When the queue fails".
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// What a publish did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Published {
    /// Jobs pushed.
    pub enqueued: usize,
    /// Events no endpoint wanted (or whose app is disabled).
    pub skipped: usize,
    /// The pushed jobs' ids, in order.
    pub job_ids: Vec<String>,
}

/// Publishes webhook events for apps onto a queue. Cheap to clone.
#[derive(Clone)]
pub struct Producer {
    queue: Arc<dyn QueuePush>,
    apps: Arc<dyn AppRegistry>,
    limits: EventLimits,
}

impl Producer {
    /// A producer over `queue`, routing with the apps of `config`, within its `event_limits`.
    pub fn new(queue: Arc<dyn QueuePush>, config: Arc<Config>) -> Self {
        Self::with_apps(queue, Arc::new(StaticApps::new(&config.apps))).limits(config.event_limits)
    }

    /// A producer over `queue`, routing with the apps of a registry, within
    /// the default `event_limits` (a payload of 100 KiB, as Sockudo's).
    pub fn with_apps(queue: Arc<dyn QueuePush>, apps: Arc<dyn AppRegistry>) -> Self {
        Self {
            queue,
            apps,
            limits: EventLimits::default(),
        }
    }

    /// The same producer with these event limits.
    pub fn limits(self, limits: EventLimits) -> Self {
        Self { limits, ..self }
    }

    /// Publishes one event for an app.
    pub async fn publish(&self, app_id: &str, event: Event) -> Result<Published, PublishError> {
        self.publish_batch(app_id, vec![event]).await
    }

    /// Publishes events for an app in one push (one round trip on Redis; on
    /// SQS one `SendMessageBatch` per 10 jobs or 256 KiB); all are checked before any is
    /// queued. After a [`PublishError::Queue`] part of them may be queued,
    /// and a retry queues those again under new ids (see the crate docs).
    pub async fn publish_batch(
        &self,
        app_id: &str,
        events: Vec<Event>,
    ) -> Result<Published, PublishError> {
        let app = self.apps.app(app_id).await.map_err(|e| match e {
            LookupError::Unknown(id) => PublishError::UnknownApp(id),
            other => PublishError::App(other),
        })?;
        for (index, e) in events.iter().enumerate() {
            e.validate()
                .map_err(|source| PublishError::InvalidEvent { index, source })?;
        }
        let total = events.len();
        let mut published = Published::default();
        let mut messages = Vec::with_capacity(total);
        for (index, event) in events.into_iter().enumerate() {
            if !(app.enabled && app.endpoints.iter().any(|ep| ep.wants(&event))) {
                continue;
            }
            let job = EventJob::new(app_id, event);
            let id = job.id.clone();
            let body = Job::Event(job).encode();
            if body.len() > self.limits.max_job_bytes() {
                return Err(PublishError::TooLarge {
                    index,
                    bytes: body.len(),
                    max_payload: self.limits.max_payload_bytes,
                });
            }
            published.job_ids.push(id.clone());
            messages.push(Outgoing::now(id, app_id, body));
        }
        published.enqueued = messages.len();
        published.skipped = total - messages.len();
        if !messages.is_empty() {
            self.queue.push(messages).await?;
        }
        Ok(published)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hookq_core::job::Job;
    use hookq_queue::{DeadLetters, MemoryQueue, QueueConsume};
    use std::time::Duration;

    fn setup() -> (Producer, Arc<MemoryQueue>) {
        let (config, _) = Config::parse(
            r#"{"app_manager": {"array": {"apps": [
                {"id": "a", "key": "ka", "secret": "sa", "webhooks": [
                  {"url": "http://127.0.0.1:9/x", "event_types": ["member_added", "client_event"],
                   "filter": {"channel_prefix": "presence-"}}]},
                {"id": "off", "key": "ko", "secret": "so", "enabled": false, "webhooks": [
                  {"url": "http://127.0.0.1:9/x", "event_types": ["member_added"]}]}
            ]}}}"#,
            |_| None,
        )
        .unwrap();
        let queue = Arc::new(MemoryQueue::new(100, Duration::from_secs(30)));
        (Producer::new(queue.clone(), Arc::new(config)), queue)
    }

    #[tokio::test]
    async fn queues_wanted_events_as_decodable_jobs() {
        let (p, q) = setup();
        let out = p
            .publish_batch(
                "a",
                vec![
                    Event::member_added("presence-x", "u1"),
                    Event::member_added("private-x", "u1"),
                    Event::channel_vacated("presence-x"),
                ],
            )
            .await
            .unwrap();
        assert_eq!((out.enqueued, out.skipped), (1, 2));
        let got = q.receive(10, Duration::ZERO).await.unwrap();
        assert_eq!(got.len(), 1);
        let Job::Event(job) = Job::decode(&got[0].body).unwrap() else {
            panic!("event job expected")
        };
        assert_eq!(job.app_id, "a");
        assert_eq!(job.id, out.job_ids[0]);
        assert_eq!(job.event.user_id.as_deref(), Some("u1"));
    }

    #[tokio::test]
    async fn refuses_an_event_over_the_size_limit_without_queueing() {
        let (p, q) = setup();
        let big = Event::client_event("presence-x", "client-e", "x".repeat(300 * 1024), "1.1");
        let err = p
            .publish_batch("a", vec![Event::member_added("presence-x", "u"), big])
            .await
            .unwrap_err();
        assert!(
            err.to_string().starts_with("event 1: "),
            "names the event: {err}"
        );
        assert!(
            err.to_string().contains("over the limit of 102400"),
            "{err}"
        );
        assert_eq!(
            q.depth().await.unwrap().ready,
            0,
            "nothing of the batch queued"
        );
        let fits = Event::client_event("presence-x", "client-e", "x".repeat(90 * 1024), "1.1");
        assert_eq!(p.publish("a", fits).await.unwrap().enqueued, 1);
    }

    #[tokio::test]
    async fn refuses_invalid_events_and_unknown_apps_without_queueing() {
        let (p, q) = setup();
        let bad = Event::new(hookq_core::EventName::MemberAdded, "presence-x");
        let err = p
            .publish_batch("a", vec![Event::member_added("presence-x", "u"), bad])
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "event 1: member_added: missing field `user_id`"
        );
        let err = p.publish("nope", Event::cache_miss("c")).await.unwrap_err();
        assert!(matches!(err, PublishError::UnknownApp(_)));
        let out = p
            .publish("off", Event::member_added("x", "u"))
            .await
            .unwrap();
        assert_eq!(out.skipped, 1, "a disabled app's events are not queued");
        assert_eq!(q.depth().await.unwrap().ready, 0);
    }
}
