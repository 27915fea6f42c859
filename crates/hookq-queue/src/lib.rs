//! The queue between producers and workers: the queue traits and their drivers.
//!
//! A driver is one object with three sides, each a trait, so that each
//! holder holds only the side it uses:
//!
//! - [`QueuePush`] — push, push once under a key, the longest delay a push
//!   carries, ping: what `hookq_producer::Producer` and `hookq_ingest::Ingest`
//!   hold;
//! - [`QueueConsume`] — receive, ack, extend, release, dead-letter, and the
//!   driver's answers about consuming from it (its hold, how many receive
//!   loops suit it, whether a push can carry a delay, whether it takes
//!   writes now): what a worker uses;
//! - [`DeadLetters`] — list, replay and purge the dead-letter queue, and the
//!   depth per state: what `hookq dlq` holds.
//!
//! [`QueueDriver`] is all three, implemented for every type that has them,
//! so a driver stays one object: the worker holds an `Arc<dyn QueueDriver>`,
//! which converts to the `Arc` of any one side for the parts that need only
//! that one.
//!
//! A job's life in any driver: [`QueuePush::push`] makes it *ready* (or
//! *delayed* until its delay passes); [`QueueConsume::receive`] moves it to
//! *held* under a [`Handle`] for the driver's [hold](QueueConsume::hold) (a
//! lease, a visibility timeout); the worker either [`QueueConsume::ack`]s it
//! once its outcome is durable, or dies, and then the hold expires and the
//! job is ready again for any worker. [`QueueConsume::extend`] renews a hold
//! that is still being worked on. What cannot be delivered goes to the
//! dead-letter queue with a reason.
//!
//! Delivery is at least once and ordering is not guaranteed. Drivers:
//! [`memory`] (always), `redis` and `sqs` behind the features of those names.

pub mod health;
pub mod limits;
pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "sqs")]
pub mod sqs;

use async_trait::async_trait;
use hookq_core::DeadLetter;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use memory::MemoryQueue;

/// A message to push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The job's id (SQS FIFO uses it to de-duplicate).
    pub id: String,
    /// The job's app (SQS FIFO groups by it).
    pub app_id: String,
    /// The job's JSON text.
    pub body: String,
    /// How long to keep it out of reach; zero for at once.
    pub delay: Duration,
}

impl Outgoing {
    /// A message ready at once.
    pub fn now(id: impl Into<String>, app_id: impl Into<String>, body: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            app_id: app_id.into(),
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    /// The same message, delayed.
    pub fn delayed(self, delay: Duration) -> Self {
        Self { delay, ..self }
    }
}

/// One push of [`QueuePush::push_once_each`]: ready messages under a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyed {
    /// The push's key.
    pub key: String,
    /// How long the key holds; zero for none: the messages are pushed
    /// whatever was pushed before (a plain [`QueuePush::push`]).
    pub window: Duration,
    /// The messages, pushed only if the key was not set.
    pub messages: Vec<Outgoing>,
}

/// [`QueuePush::push_once_each`] one group after another: each a
/// [`QueuePush::push_once`], or a [`QueuePush::push`] with a zero window.
pub async fn push_each_alone<Q: QueuePush + ?Sized>(
    queue: &Q,
    groups: Vec<Keyed>,
) -> Vec<Result<Once, QueueError>> {
    let mut answers = Vec::with_capacity(groups.len());
    for g in groups {
        answers.push(if g.window.is_zero() {
            queue.push(g.messages).await.map(|()| Once::Pushed)
        } else {
            queue.push_once(&g.key, g.window, g.messages).await
        });
    }
    answers
}

/// What [`QueuePush::push_once`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Once {
    /// The messages were pushed.
    Pushed,
    /// A push under the same key went in within the window: nothing was pushed.
    Duplicate,
}

/// Push keys seen within a window, kept in this process: how the drivers
/// without a shared store (memory, SQS) answer [`QueuePush::push_once`].
/// Expired keys are dropped as new ones come, so it holds at most what one
/// window brought.
#[derive(Debug, Default)]
pub struct OnceMarks {
    seen: Mutex<HashMap<String, Instant>>,
}

impl OnceMarks {
    /// Claims `key` for `window`: `false` when it is already claimed and not expired.
    pub fn claim(&self, key: &str, window: Duration) -> bool {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.get(key).is_some_and(|until| *until > now) {
            return false;
        }
        if seen.len() >= 1024 && seen.len().is_power_of_two() {
            seen.retain(|_, until| *until > now);
        }
        seen.insert(key.to_string(), now + window);
        true
    }

    /// Gives a claim back (its push failed, so a retry must be let through).
    pub fn release(&self, key: &str) {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    /// Pushes through `push` unless `key` is claimed; a failed push gives the claim back.
    pub async fn push_once<F>(
        &self,
        key: &str,
        window: Duration,
        push: F,
    ) -> Result<Once, QueueError>
    where
        F: Future<Output = Result<(), QueueError>>,
    {
        if !self.claim(key, window) {
            return Ok(Once::Duplicate);
        }
        match push.await {
            Ok(()) => Ok(Once::Pushed),
            Err(e) => {
                self.release(key);
                Err(e)
            }
        }
    }
}

/// Identifies one hold of a received message; acking or extending goes through it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Handle(pub String);

/// A received message, held until acked or until its hold expires.
#[derive(Debug, Clone)]
pub struct Received {
    /// The hold.
    pub handle: Handle,
    /// The message text.
    pub body: String,
    /// How many times it was received, this time included.
    pub receive_count: u32,
    /// The message's bytes when they are not UTF-8 (`body` is then their
    /// text with U+FFFD in place of what is not UTF-8). Only Redis can hold
    /// such a message (a raw `LPUSH` from another language); SQS and the
    /// memory queue carry text only. The worker dead-letters it with these
    /// bytes intact.
    pub not_utf8: Option<Vec<u8>>,
}

/// How many messages are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Depth {
    /// Ready to be received.
    pub ready: u64,
    /// Waiting for their delay.
    pub delayed: u64,
    /// Received and not yet acked.
    pub held: u64,
    /// In the dead-letter queue.
    pub dead: u64,
}

/// Which dead-letter entries a DLQ command touches: every condition given
/// must hold. Build it with `..Default::default()`, as more conditions may come.
#[derive(Debug, Clone, Default)]
pub struct DlqFilter {
    /// Only this app's entries.
    pub app_id: Option<String>,
    /// At most this many entries (`None`: all).
    pub limit: Option<usize>,
    /// Only this endpoint's entries (by endpoint id).
    pub endpoint: Option<String>,
    /// Only entries whose reason contains this text, ASCII case-insensitive.
    pub reason: Option<String>,
    /// Only entries dead-lettered at or before this time (Unix ms).
    pub failed_before_ms: Option<u64>,
    /// Only entries dead-lettered at or after this time (Unix ms).
    pub failed_after_ms: Option<u64>,
    /// Only the entries with these ids ([`dlq_entry_id`]).
    pub ids: Option<Vec<String>>,
    /// Matching entries to skip before the first one listed (listing only;
    /// replay and purge ignore it).
    pub offset: usize,
}

impl DlqFilter {
    /// Whether an entry passes the filter's conditions (limit and offset
    /// aside); `id` is the entry's [`dlq_entry_id`].
    pub fn matches(&self, id: &str, entry: &DeadLetter) -> bool {
        let is = |want: &Option<String>, have: &Option<String>| {
            want.as_deref().is_none_or(|w| have.as_deref() == Some(w))
        };
        is(&self.app_id, &entry.app_id)
            && is(&self.endpoint, &entry.endpoint)
            && self
                .reason
                .as_deref()
                .is_none_or(|r| contains_ascii_nocase(&entry.reason, r))
            && self
                .failed_before_ms
                .is_none_or(|t| entry.failed_at_ms <= t)
            && self.failed_after_ms.is_none_or(|t| entry.failed_at_ms >= t)
            && self
                .ids
                .as_ref()
                .is_none_or(|ids| ids.iter().any(|i| i.eq_ignore_ascii_case(id)))
    }

    /// Whether the filter selects every entry (no condition; limit and offset aside).
    pub fn is_everything(&self) -> bool {
        self.app_id.is_none()
            && self.endpoint.is_none()
            && self.reason.is_none()
            && self.failed_before_ms.is_none()
            && self.failed_after_ms.is_none()
            && self.ids.is_none()
    }

    fn limit(&self) -> usize {
        self.limit.unwrap_or(usize::MAX)
    }
}

/// Whether `haystack` contains `needle`, ASCII letters compared without
/// case (the same rule as Lua's `string.lower` in the Redis DLQ script).
pub fn contains_ascii_nocase(haystack: &str, needle: &str) -> bool {
    let (h, n) = (haystack.as_bytes(), needle.as_bytes());
    n.is_empty() || h.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n))
}

/// A dead-letter entry's id: the hex SHA-1 of its stored JSON text (what
/// Redis holds, the SQS message body, the memory queue's encoding), so the
/// same in every listing, and computable inside a Redis script
/// (`redis.sha1hex`). Two entries with the very same text share it.
pub fn dlq_entry_id(stored: &[u8]) -> String {
    sha1_smol::Sha1::from(stored).digest().to_string()
}

/// A dead-letter entry with its id ([`dlq_entry_id`]).
#[derive(Debug, Clone)]
pub struct DlqEntry {
    /// The entry's id.
    pub id: String,
    /// The entry.
    pub entry: DeadLetter,
}

/// What went wrong talking to a queue.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    /// The backend cannot be reached (connection refused, timed out, reset).
    #[error("queue unavailable: {0}")]
    Unavailable(String),
    /// The queue is full (memory driver's capacity).
    #[error("queue full: {0}")]
    Full(String),
    /// The backend answered with an error.
    #[error("queue error: {0}")]
    Backend(String),
}

impl QueueError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Full(_))
    }
}

/// The push side of a queue: what a producer and the ingest hold.
#[async_trait]
pub trait QueuePush: Send + Sync + 'static {
    /// The driver's name, for logs and metrics.
    fn name(&self) -> &'static str;

    /// Pushes messages, each ready after its delay; all in as few round trips as the backend allows.
    async fn push(&self, messages: Vec<Outgoing>) -> Result<(), QueueError>;

    /// Pushes `messages` unless a push under the same `key` went in within
    /// `window` (a sender re-sending what it already handed over). Redis
    /// keeps the key beside the queue, so every producer sharing it sees it;
    /// memory and SQS keep keys in this process only ([`OnceMarks`]). The
    /// default keeps none and always pushes.
    async fn push_once(
        &self,
        key: &str,
        window: Duration,
        messages: Vec<Outgoing>,
    ) -> Result<Once, QueueError> {
        let _ = (key, window);
        self.push(messages).await.map(|()| Once::Pushed)
    }

    /// Several [`QueuePush::push_once`]s at once, in as few round trips as
    /// the backend allows (Redis: one script call for all), each answered on
    /// its own, in order. What the ingest uses to push the requests that
    /// wait at one moment together (group commit). The default runs them one
    /// after another.
    async fn push_once_each(&self, groups: Vec<Keyed>) -> Vec<Result<Once, QueueError>> {
        push_each_alone(self, groups).await
    }

    /// The longest delay one push can carry; longer delays are re-delayed on receipt.
    fn max_delay(&self) -> Duration {
        Duration::MAX
    }

    /// Checks that the backend answers.
    async fn ping(&self) -> Result<(), QueueError>;
}

/// The consume side of a queue: what a worker receives, settles and
/// extends through, and what it needs to know of the driver to do so.
#[async_trait]
pub trait QueueConsume: Send + Sync + 'static {
    /// Takes up to `max` ready messages and holds them; waits up to `wait` for the first one.
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Received>, QueueError>;

    /// Removes held messages for good. A handle whose hold is gone (it
    /// expired and the message went back to the queue) removes nothing; the
    /// answer is how many of `handles` were such, as far as the driver can
    /// tell (SQS may still accept a stale receipt handle): those messages
    /// may be delivered again by whoever takes them next.
    async fn ack(&self, handles: &[Handle]) -> Result<usize, QueueError>;

    /// Renews holds to the driver's full hold time. The answer is the
    /// handles whose hold is gone, so their messages are no longer this
    /// holder's: it should settle nothing more for them.
    async fn extend(&self, handles: &[Handle]) -> Result<Vec<Handle>, QueueError>;

    /// Leaves a held message in the queue, to come back after `after` (as
    /// near as the driver can), without acking it. For queues that cannot
    /// delay a push ([`QueueConsume::delays_pushes`] is false: SQS FIFO); by
    /// default the hold simply runs out.
    async fn release(&self, handle: &Handle, after: Duration) -> Result<(), QueueError> {
        let _ = (handle, after);
        Ok(())
    }

    /// Adds entries to the dead-letter queue.
    async fn dead_letter(&self, entries: Vec<DeadLetter>) -> Result<(), QueueError>;

    /// How long a received message stays held without an extend: the
    /// driver's lease or visibility timeout.
    fn hold(&self) -> Duration;

    /// How many receive loops a worker should run on this driver at once.
    /// The default, one, suits a backend whose one receive claims many
    /// messages (memory, Redis).
    fn receive_concurrency(&self) -> usize {
        1
    }

    /// Whether a [`receive`](QueueConsume::receive) may be dropped before it
    /// ends without taking messages for nobody. False by default: an SQS
    /// long poll given up still hands messages to the request, and a Redis
    /// claim runs once sent; either leaves them hidden for a whole hold. A
    /// worker stopping lets such a receive end (within its wait) and works
    /// on what it brings.
    fn receive_cancel_safe(&self) -> bool {
        false
    }

    /// Whether the driver can write now, as far as it knows: false after a
    /// write (push, ack, extend, dead letter) failed, until the driver has
    /// seen writes work again (Redis checks at each receive). A worker that
    /// cannot write is not ready, even while its receives work. Drivers
    /// that do not track it answer true.
    fn writable(&self) -> bool {
        true
    }

    /// Whether a pushed message can carry a delay, so that a job received
    /// before it is due can be pushed back delayed. When false (SQS FIFO),
    /// such a job is [released](QueueConsume::release) until it is due.
    fn delays_pushes(&self) -> bool {
        true
    }

    /// The store of the state that workers share for per-endpoint limits
    /// (rate-limit buckets, pending-vacate markers), asked once per worker.
    /// Redis keeps it in Redis, shared by every worker of the queue; by
    /// default each worker keeps its own in memory ([`limits`]).
    fn limits(self: std::sync::Arc<Self>) -> std::sync::Arc<dyn limits::Limits> {
        std::sync::Arc::new(limits::MemoryLimits::default())
    }

    /// Where this queue's workers keep endpoint health (circuit breaker,
    /// disabled endpoints; [`health`]); a worker asks once. Redis keeps it
    /// beside the queue, shared by every worker; the default is a store of
    /// the calling process's own ([`health::MemoryHealth`]).
    fn health_store(self: std::sync::Arc<Self>) -> std::sync::Arc<dyn health::HealthStore> {
        let _ = self;
        std::sync::Arc::new(health::MemoryHealth::default())
    }
}

/// The dead-letter admin side of a queue, and its depth: what `hookq dlq` holds.
#[async_trait]
pub trait DeadLetters: Send + Sync + 'static {
    /// Dead-letter entries with their ids, oldest first, from the filter's
    /// offset on, at most its limit.
    async fn dlq_entries(&self, filter: &DlqFilter) -> Result<Vec<DlqEntry>, QueueError>;

    /// Dead-letter entries, oldest first ([`DeadLetters::dlq_entries`] without the ids).
    async fn dlq_list(&self, filter: &DlqFilter) -> Result<Vec<DeadLetter>, QueueError> {
        Ok(self
            .dlq_entries(filter)
            .await?
            .into_iter()
            .map(|e| e.entry)
            .collect())
    }

    /// Pushes the entries' jobs back onto the queue and removes the entries; returns how many.
    async fn dlq_replay(&self, filter: &DlqFilter) -> Result<usize, QueueError>;

    /// Deletes entries; returns how many.
    async fn dlq_purge(&self, filter: &DlqFilter) -> Result<usize, QueueError>;

    /// Messages per state.
    async fn depth(&self) -> Result<Depth, QueueError>;
}

/// A queue hookq can run on (memory, Redis or SQS): all three sides in one
/// object. Every type with the three is one; an `Arc<dyn QueueDriver>`
/// converts to the `Arc` of any one side.
pub trait QueueDriver: QueuePush + QueueConsume + DeadLetters {}

impl<T: QueuePush + QueueConsume + DeadLetters + ?Sized> QueueDriver for T {}
