//! The worker's decisions, as values: what a received message becomes
//! ([`accept`]), what happens after a delivery attempt ([`dispose`]), and
//! whether a batch whose endpoint is busy waits for it or is handed over to
//! a deferred job ([`deferral`], [`defer_until`], [`defer`]).
//!
//! Both only decide; [`crate::worker`] carries the decisions out (one
//! executor pushes, dead-letters, releases or acks, and settles tickets), so
//! every branch here is a unit test away. In the way Vector separates its
//! `RetryLogic` (what an answer means) from the retry policy (when to try
//! again): [`crate::outcome`] says what an answer means, the endpoint's
//! [`RetryPolicy`](hookq_core::RetryPolicy) says when, and [`dispose`] puts the
//! two together with the batch into a [`Disposition`].

use crate::batch::Batch;
use crate::outcome::{Failure, Outcome};
use hookq_core::config::{App, BreakerSettings};
use hookq_core::job::{EventJob, Job, RetryJob, VERSION};
use hookq_core::{AppRegistry, DeadLetter, LookupError};
use hookq_queue::health::{Circuit, HealthRecord, Transition};
use hookq_queue::{Outgoing, Received};
use std::sync::Arc;
use std::time::Duration;

/// Why a received message is dead-lettered without a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// Not a job: not JSON, a wrong shape or version, an invalid event.
    Malformed {
        /// What is wrong.
        error: String,
        /// The `app_id` field, if the text has one.
        app_id: Option<String>,
    },
    /// No app has the job's id.
    UnknownApp(String),
    /// The app's stored configuration is not valid.
    InvalidApp {
        /// The app.
        app_id: String,
        /// What is wrong, with JSON paths.
        reason: String,
    },
    /// The app is disabled.
    AppDisabled(String),
    /// A retry job for an endpoint the app no longer has.
    EndpointRemoved {
        /// The app.
        app_id: String,
        /// The endpoint's id.
        endpoint: String,
        /// Attempts already made.
        attempts: u32,
    },
    /// The message's bytes are not UTF-8, so not a job; kept exactly.
    NotUtf8 {
        /// The bytes as they came.
        bytes: Vec<u8>,
        /// Where the first byte that is not UTF-8 is.
        error: String,
        /// The `app_id` field, if the text has one.
        app_id: Option<String>,
    },
    /// Received more than `queue.max_receives` times without being settled:
    /// each worker that took it died on it, or could not write its retry or
    /// dead letter.
    TooManyReceives {
        /// This receive's number.
        count: u32,
        /// `queue.max_receives`.
        max: u32,
        /// The app.
        app_id: String,
        /// The endpoint, for a retry job.
        endpoint: Option<String>,
        /// Attempts already made, for a retry job.
        attempts: u32,
    },
}

impl Rejection {
    /// The `reason` label of `hookq_dead_lettered_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Malformed { .. } => "malformed",
            Self::UnknownApp(_) => "unknown_app",
            Self::InvalidApp { .. } => "invalid_app",
            Self::AppDisabled(_) => "app_disabled",
            Self::EndpointRemoved { .. } => "endpoint_removed",
            Self::NotUtf8 { .. } => "not_utf8",
            Self::TooManyReceives { .. } => "max_receives",
        }
    }

    /// The dead-letter entry's reason.
    pub fn reason(&self) -> String {
        match self {
            Self::Malformed { error, .. } => error.clone(),
            Self::UnknownApp(id) => LookupError::Unknown(id.clone()).to_string(),
            Self::InvalidApp { app_id, reason } => LookupError::Invalid {
                id: app_id.clone(),
                reason: reason.clone(),
            }
            .to_string(),
            Self::AppDisabled(_) => "app disabled".into(),
            Self::EndpointRemoved { endpoint, .. } => {
                format!("endpoint removed: {endpoint:?} is no longer configured")
            }
            Self::NotUtf8 { error, .. } => {
                format!("malformed job: not UTF-8 ({error}); its bytes are kept in job_base64")
            }
            Self::TooManyReceives { count, max, .. } => format!(
                "received {count} times, more than queue.max_receives ({max}): it came back each time without being settled (its worker died on it, or its retry or dead letter could not be written)"
            ),
        }
    }

    /// The dead-letter entry, keeping the message's text as it came (its
    /// bytes, for one that is not UTF-8), so a replay pushes it back as it was.
    pub fn dead_letter(&self, body: &str) -> DeadLetter {
        let app_id = match self {
            Self::Malformed { app_id, .. } | Self::NotUtf8 { app_id, .. } => app_id.clone(),
            Self::UnknownApp(id) | Self::AppDisabled(id) => Some(id.clone()),
            Self::InvalidApp { app_id, .. }
            | Self::EndpointRemoved { app_id, .. }
            | Self::TooManyReceives { app_id, .. } => Some(app_id.clone()),
        };
        let entry = match self {
            Self::NotUtf8 { bytes, .. } => DeadLetter::not_utf8(bytes, self.reason(), app_id),
            _ => DeadLetter::unusable(body, self.reason(), app_id),
        };
        match self {
            Self::EndpointRemoved {
                endpoint, attempts, ..
            } => DeadLetter {
                endpoint: Some(endpoint.clone()),
                attempts: *attempts,
                ..entry
            },
            Self::TooManyReceives {
                endpoint, attempts, ..
            } => DeadLetter {
                endpoint: endpoint.clone(),
                attempts: *attempts,
                ..entry
            },
            _ => entry,
        }
    }
}

/// What a received message becomes.
#[derive(Debug)]
pub enum Accept {
    /// An event job for these endpoints of its app (none: nobody wants it).
    Fan {
        /// The job.
        job: EventJob,
        /// Its app.
        app: Arc<App>,
        /// The indexes of the endpoints that want the event.
        endpoints: Vec<usize>,
    },
    /// A retry job for one endpoint.
    Retry {
        /// The job.
        job: RetryJob,
        /// Its app.
        app: Arc<App>,
        /// The endpoint's index in `app.endpoints`.
        endpoint: usize,
    },
    /// A job not due before `wait` from now.
    NotDue {
        /// The job.
        job: Job,
        /// How long until it is due.
        wait: Duration,
    },
    /// The app cannot be looked up now: leave the message, it comes back.
    Wait(String),
    /// Dead-letter it.
    Reject(Rejection),
}

impl Accept {
    /// How many parts the message's ticket counts: one per endpoint of an
    /// event job (one when none wants it), one otherwise.
    pub fn parts(&self) -> usize {
        match self {
            Self::Fan { endpoints, .. } => endpoints.len().max(1),
            _ => 1,
        }
    }

    /// When the producer enqueued an event job.
    pub fn enqueued_at_ms(&self) -> Option<u64> {
        match self {
            Self::Fan { job, .. } => Some(job.enqueued_at_ms).filter(|t| *t > 0),
            _ => None,
        }
    }
}

/// The `app_id` field of a message's text, when it is JSON with one.
fn sniff_app_id(body: &str) -> Option<String> {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("app_id")?.as_str().map(str::to_string))
}

/// Decides what the message `msg` becomes at `now_ms`: bytes that are not
/// UTF-8, decode, due time, app lookup, then — for a job received more than
/// `max_receives` times — the dead letter, else the fan-out or the retry
/// job's endpoint.
///
/// The receive count is looked at only once the job is one the worker would
/// work on: a job whose app cannot be looked up now ([`Accept::Wait`]) is
/// waiting, not poison, and one that is rejected or not due never comes
/// back (each receive before, a wait included, still counts).
pub async fn accept(
    apps: &dyn AppRegistry,
    msg: &Received,
    max_receives: u32,
    now_ms: u64,
) -> Accept {
    let body = msg.body.as_str();
    if let Some(bytes) = &msg.not_utf8 {
        let error = match std::str::from_utf8(bytes) {
            Err(e) => e.to_string(),
            Ok(_) => "invalid UTF-8".into(),
        };
        return Accept::Reject(Rejection::NotUtf8 {
            bytes: bytes.clone(),
            error,
            app_id: sniff_app_id(body),
        });
    }
    let job = match Job::decode(body) {
        Ok(job) => job,
        Err(e) => {
            return Accept::Reject(Rejection::Malformed {
                error: e.to_string(),
                app_id: sniff_app_id(body),
            });
        }
    };
    if let Some(not_before) = job.not_before_ms().filter(|t| *t > now_ms) {
        let wait = Duration::from_millis(not_before - now_ms);
        return Accept::NotDue { job, wait };
    }
    let app = match apps.app(job.app_id()).await {
        Ok(app) => app,
        Err(LookupError::Unavailable(e)) => return Accept::Wait(e),
        Err(LookupError::Unknown(id)) => return Accept::Reject(Rejection::UnknownApp(id)),
        Err(LookupError::Invalid { id, reason }) => {
            return Accept::Reject(Rejection::InvalidApp { app_id: id, reason });
        }
    };
    if !app.enabled {
        return Accept::Reject(Rejection::AppDisabled(app.id.clone()));
    }
    if msg.receive_count > max_receives {
        let (endpoint, attempts) = match &job {
            Job::Retry(r) => (Some(r.endpoint.clone()), r.attempt.saturating_sub(1)),
            Job::Event(_) => (None, 0),
        };
        return Accept::Reject(Rejection::TooManyReceives {
            count: msg.receive_count,
            max: max_receives,
            app_id: app.id.clone(),
            endpoint,
            attempts,
        });
    }
    match job {
        Job::Event(job) => {
            let endpoints = (0..app.endpoints.len())
                .filter(|&i| app.endpoints[i].wants(&job.event))
                .collect();
            Accept::Fan {
                job,
                app,
                endpoints,
            }
        }
        Job::Retry(job) => match app.endpoints.iter().position(|e| e.id == job.endpoint) {
            Some(endpoint) => Accept::Retry { job, app, endpoint },
            None => Accept::Reject(Rejection::EndpointRemoved {
                app_id: app.id.clone(),
                endpoint: job.endpoint.clone(),
                attempts: job.attempt.saturating_sub(1),
            }),
        },
    }
}

/// What becomes of a received message or of a batch's jobs.
#[derive(Debug)]
pub enum Disposition {
    /// Done: settle (and so, in the end, ack).
    Ack,
    /// Push this message, then settle: a retry job, or a job pushed back
    /// with the rest of its delay.
    Push {
        /// The message.
        message: Outgoing,
        /// Whether it is a retry of a failed delivery (counted as one).
        retry: bool,
    },
    /// Write these dead-letter entries, then settle.
    DeadLetter {
        /// The entries: one, but for a retry job the queue refused (one per event).
        entries: Vec<DeadLetter>,
        /// The metric label.
        label: &'static str,
    },
    /// Leave the message in the queue, hidden for this long, not acked (SQS
    /// FIFO, which cannot delay a push).
    Release(Duration),
}

impl Disposition {
    /// A rejected message's disposition.
    pub fn reject(rejection: &Rejection, body: &str) -> Self {
        Self::DeadLetter {
            entries: vec![rejection.dead_letter(body)],
            label: rejection.label(),
        }
    }

    /// A job that is not due for `wait`: pushed back with as much of the
    /// delay as the queue carries (`max_delay`; the rest written into the
    /// job), or, on a queue that cannot delay a push (`delays_pushes` false),
    /// released until it is due.
    pub fn not_due(mut job: Job, wait: Duration, delays_pushes: bool, max_delay: Duration) -> Self {
        if !delays_pushes {
            return Self::Release(wait);
        }
        let delay = wait.min(max_delay);
        if delay >= wait {
            job.set_not_before_ms(None);
        }
        let message =
            Outgoing::now(hookq_core::new_id("job"), job.app_id(), job.encode()).delayed(delay);
        Self::Push {
            message,
            retry: false,
        }
    }
}

/// The retry job for the attempt `attempt` of `batch`'s events at its endpoint.
fn retry_job(
    batch: &Batch,
    attempt: u32,
    first_attempt_ms: Option<u64>,
    last_error: &str,
    now_ms: u64,
) -> RetryJob {
    RetryJob {
        v: VERSION,
        id: hookq_core::new_id("job"),
        app_id: batch.app.id.clone(),
        enqueued_at_ms: now_ms,
        not_before_ms: None,
        endpoint: batch.endpoint().id.clone(),
        attempt,
        first_attempt_ms: first_attempt_ms.unwrap_or(0),
        webhook_id: batch.webhook_id.clone(),
        events: batch.events.iter().map(|e| e.event.clone()).collect(),
        last_error: Some(last_error.to_string()),
    }
}

/// What follows the attempt of `batch` sent at `sent_ms` and answered with
/// `outcome`, at `now_ms`, on a queue whose pushes carry at most `max_delay`
/// (`jitter` in `[0, 1)` spreads the backoff).
pub fn dispose(
    outcome: Outcome,
    batch: &Batch,
    sent_ms: u64,
    now_ms: u64,
    max_delay: Duration,
    jitter: f64,
) -> Disposition {
    let endpoint = batch.endpoint();
    let (failure, retry_after) = match outcome {
        Outcome::Delivered => return Disposition::Ack,
        Outcome::Reject { failure } => {
            let reason = failure.reason.clone();
            return dead_letter(batch, failure, reason, "rejected", now_ms);
        }
        Outcome::Retry { failure, after } => (failure, after),
    };
    let first = batch.first_attempt_ms.unwrap_or(sent_ms);
    // A clock that went backwards counts as no time spent.
    let elapsed = Duration::from_millis(now_ms.saturating_sub(first));
    match endpoint
        .retry
        .next_delay(batch.attempt, elapsed, retry_after, jitter)
    {
        Ok(delay) => {
            let mut job = retry_job(
                batch,
                batch.attempt + 1,
                Some(first),
                &failure.reason,
                now_ms,
            );
            if delay > max_delay {
                job.not_before_ms = Some(now_ms + delay.as_millis() as u64);
            }
            let message = Outgoing::now(job.id.clone(), &batch.app.id, Job::Retry(job).encode())
                .delayed(delay.min(max_delay));
            Disposition::Push {
                message,
                retry: true,
            }
        }
        Err(give_up) => {
            let reason = format!("{give_up}; last: {}", failure.reason);
            dead_letter(batch, failure, reason, "exhausted", now_ms)
        }
    }
}

/// How busy an endpoint is, as a batch that found none of its permits free
/// sees it (the batches waiting before it, not counting itself).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Busy {
    /// Budget slots (jobs) held by the batches waiting for the endpoint.
    pub waiting_jobs: usize,
    /// How many batches wait for it.
    pub waiting_batches: usize,
    /// Its `max_concurrency`.
    pub max_concurrency: usize,
    /// How long one of its requests takes lately; none before one ended.
    pub pace: Option<Duration>,
}

/// Why a batch is handed over to a deferred job instead of waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deferral {
    /// The batches waiting for its endpoint hold its share of the budget.
    Share,
    /// At its endpoint's pace the wait would be too long.
    Pace,
}

impl Deferral {
    /// The `reason` label of `hookq_deferred_total`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Share => "share",
            Self::Pace => "pace",
        }
    }
}

/// The budget slots that the batches waiting for one endpoint may hold: a
/// quarter of `worker.max_held_jobs`.
pub fn endpoint_share(max_held_jobs: usize) -> usize {
    (max_held_jobs / 4).max(1)
}

/// A wait for an endpoint that its pace always allows (longer ones only up
/// to one request's time).
pub const WAIT_ALLOWED: Duration = Duration::from_secs(1);

/// Whether a batch holding `jobs` budget slots, finding its endpoint `busy`,
/// is deferred rather than waiting: when the waiting batches would then
/// hold more than `share` slots, or when, at the endpoint's pace, its turn
/// would come after more than [`WAIT_ALLOWED`] or one request's time,
/// whichever is longer. An endpoint whose pace is not known yet is limited
/// by its share only.
pub fn deferral(busy: &Busy, jobs: usize, share: usize) -> Option<Deferral> {
    if busy.waiting_jobs + jobs > share {
        return Some(Deferral::Share);
    }
    let pace = busy.pace?;
    let rounds = (busy.waiting_batches + 1).div_ceil(busy.max_concurrency.max(1));
    let wait = pace.saturating_mul(rounds.try_into().unwrap_or(u32::MAX));
    (wait > WAIT_ALLOWED.max(pace)).then_some(Deferral::Pace)
}

/// The shortest deferral.
pub const DEFER_MIN: Duration = Duration::from_secs(1);
/// The longest deferral: a batch deferred behind a long backlog comes back
/// within this, and is deferred again if its endpoint is still busy.
pub const DEFER_MAX: Duration = Duration::from_secs(60);
/// The pace of an endpoint none of whose requests has ended yet.
pub const UNKNOWN_PACE: Duration = Duration::from_secs(1);

/// When (Unix ms) a batch deferred at `now_ms` from an endpoint this `busy`
/// should come back: once the endpoint, at its pace, has had time for the
/// batches ahead of it — those in flight and waiting, and those this worker
/// deferred before, booked until `booked_until_ms` — at least [`DEFER_MIN`]
/// from now, and at most [`DEFER_MAX`] (spread over its upper half by
/// `jitter` in `[0, 1)` when the booking reaches past it, so that a long
/// backlog does not come back all at once).
pub fn defer_until(busy: &Busy, booked_until_ms: u64, now_ms: u64, jitter: f64) -> u64 {
    let ms = |d: Duration| d.as_millis().try_into().unwrap_or(u64::MAX);
    let pace = busy.pace.unwrap_or(UNKNOWN_PACE);
    let concurrency = busy.max_concurrency.max(1);
    let rounds = (busy.waiting_batches + 1).div_ceil(concurrency);
    let behind_waiting = now_ms.saturating_add(ms(pace).saturating_mul(rounds as u64));
    let behind_booked = booked_until_ms.saturating_add(ms(pace) / concurrency as u64);
    let at = behind_waiting
        .max(behind_booked)
        .max(now_ms.saturating_add(ms(DEFER_MIN)));
    if at <= now_ms.saturating_add(ms(DEFER_MAX)) {
        return at;
    }
    let spread = DEFER_MAX / 2 + (DEFER_MAX / 2).mul_f64(jitter.clamp(0.0, 1.0));
    now_ms.saturating_add(ms(spread))
}

/// `batch` handed over to a job for its endpoint, due `delay` from `now_ms`
/// on a queue whose pushes carry at most `max_delay`: a retry job for the
/// same attempt (a deferral is not one), with its `webhook-id` and events.
/// The time deferred does not count towards the retry budget: a batch past
/// its first attempt gets its `first_attempt_ms` moved forward by `delay`,
/// so a deferral never makes it dead-letter sooner.
pub fn defer(batch: &Batch, delay: Duration, now_ms: u64, max_delay: Duration) -> Disposition {
    let delay_ms: u64 = delay.as_millis().try_into().unwrap_or(u64::MAX);
    let first = batch.first_attempt_ms.map(|t| t.saturating_add(delay_ms));
    let mut job = retry_job(batch, batch.attempt.max(1), first, "", now_ms);
    job.last_error = None;
    if delay > max_delay {
        job.not_before_ms = Some(now_ms.saturating_add(delay_ms));
    }
    let message = Outgoing::now(job.id.clone(), &batch.app.id, Job::Retry(job).encode())
        .delayed(delay.min(max_delay));
    Disposition::Push {
        message,
        retry: false,
    }
}

fn dead_letter(
    batch: &Batch,
    failure: Failure,
    reason: String,
    label: &'static str,
    now_ms: u64,
) -> Disposition {
    // Replaying the entry starts a fresh budget for this endpoint only.
    let replay = retry_job(batch, 1, None, &failure.reason, now_ms);
    Disposition::DeadLetter {
        entries: vec![DeadLetter {
            job: Job::Retry(replay).encode(),
            job_base64: None,
            reason,
            failed_at_ms: now_ms,
            app_id: Some(batch.app.id.clone()),
            endpoint: Some(batch.endpoint().id.clone()),
            attempts: batch.attempt,
            last_status: failure.status,
            body_excerpt: failure.excerpt,
        }],
        label,
    }
}

/// What follows when the queue refused the retry job of `batch` for good
/// (`error`: it is larger than a message may be, say): the part goes to the
/// DLQ with the reason, one entry per event — each is small enough where
/// the whole was not, and replays on its own from a fresh budget — so the
/// job's other parts settle as usual instead of the whole job coming back.
pub fn refused(batch: &Batch, error: &str, now_ms: u64) -> Disposition {
    let reason = format!("the queue refused the retry job for good: {error}");
    let entries = batch
        .events
        .iter()
        .map(|e| {
            let mut replay = retry_job(batch, 1, None, &reason, now_ms);
            replay.events = vec![e.event.clone()];
            DeadLetter {
                job: Job::Retry(replay).encode(),
                job_base64: None,
                reason: reason.clone(),
                failed_at_ms: now_ms,
                app_id: Some(batch.app.id.clone()),
                endpoint: Some(batch.endpoint().id.clone()),
                attempts: batch.attempt,
                last_status: None,
                body_excerpt: None,
            }
        })
        .collect();
    Disposition::DeadLetter {
        entries,
        label: "refused",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Encoded;
    use crate::settle::Settler;
    use hookq_core::{Config, Event, StaticApps};
    use hookq_queue::Handle;

    fn config(retry: &str) -> Config {
        let text = format!(
            r#"{{"app_manager": {{"array": {{"apps": [
                {{"id": "a", "key": "ka", "secret": "sa", "webhooks": [
                  {{"id": "ep", "url": "http://127.0.0.1:9/x", "event_types": ["member_added", "client_event"],
                    "filter": {{"channel_prefix": "presence-"}}}},
                  {{"id": "all", "url": "http://127.0.0.1:9/y", "event_types": ["member_added"]}}]}},
                {{"id": "off", "key": "ko", "secret": "so", "enabled": false, "webhooks": []}}
            ]}}}},
            "webhooks": {{"retry": {retry}}}}}"#
        );
        Config::parse(&text, |_| None).unwrap().0
    }

    fn batch(config: &Config, attempt: u32, first: Option<u64>) -> Batch {
        let (settler, _acks) = Settler::new();
        let ticket = settler.ticket(Handle("h".into()), 1, None, None);
        let mut b = Batch::new(config.apps[0].clone(), 0);
        b.attempt = attempt;
        b.first_attempt_ms = first;
        b.add(
            Encoded::new(Event::member_added("presence-x", "u1"), false),
            &ticket,
        );
        b
    }

    fn retry(status: u16, after: Option<Duration>) -> Outcome {
        Outcome::Retry {
            failure: Failure {
                reason: format!("HTTP {status}"),
                status: Some(status),
                excerpt: Some("busy".into()),
            },
            after,
        }
    }

    const NOW: u64 = 1_700_000_000_000;
    const HOUR: Duration = Duration::from_secs(3600);

    fn pushed_retry(d: Disposition) -> (RetryJob, Duration) {
        let Disposition::Push {
            message,
            retry: true,
        } = d
        else {
            panic!("a retry push expected, got {d:?}")
        };
        let Job::Retry(job) = Job::decode(&message.body).unwrap() else {
            panic!("a retry job")
        };
        (job, message.delay)
    }

    fn dead(d: Disposition) -> (DeadLetter, &'static str) {
        let Disposition::DeadLetter { mut entries, label } = d else {
            panic!("a dead letter expected, got {d:?}")
        };
        assert_eq!(entries.len(), 1, "one entry");
        (entries.remove(0), label)
    }

    #[test]
    fn a_refused_retry_job_is_one_dead_letter_per_event() {
        let c = config("{}");
        let mut b = batch(&c, 3, Some(NOW));
        let (settler, _acks) = Settler::new();
        let t = settler.ticket(Handle("h2".into()), 1, None, None);
        b.add(
            Encoded::new(Event::member_added("presence-x", "u2"), false),
            &t,
        );
        let Disposition::DeadLetter { entries, label } = refused(&b, "too big", NOW) else {
            panic!("dead letters expected")
        };
        assert_eq!(label, "refused");
        assert_eq!(entries.len(), 2);
        for (entry, user) in entries.iter().zip(["u1", "u2"]) {
            assert!(entry.reason.contains("refused") && entry.reason.contains("too big"));
            assert_eq!((entry.attempts, entry.endpoint.as_deref()), (3, Some("ep")));
            let Job::Retry(job) = Job::decode(&entry.job).unwrap() else {
                panic!("a retry job")
            };
            assert_eq!(
                (job.attempt, job.events.len()),
                (1, 1),
                "replays alone, afresh"
            );
            assert_eq!(job.events[0].user_id.as_deref(), Some(user));
        }
    }

    #[test]
    fn delivered_is_an_ack() {
        let c = config("{}");
        let d = dispose(Outcome::Delivered, &batch(&c, 1, None), NOW, NOW, HOUR, 0.5);
        assert!(matches!(d, Disposition::Ack));
    }

    #[test]
    fn a_first_failure_schedules_the_next_attempt_from_this_one() {
        let c = config(r#"{"initial_backoff_ms": 1000}"#);
        let b = batch(&c, 1, None);
        let (job, delay) = pushed_retry(dispose(retry(503, None), &b, NOW - 20, NOW, HOUR, 0.0));
        assert_eq!((job.attempt, job.first_attempt_ms), (2, NOW - 20));
        assert_eq!(
            (job.endpoint.as_str(), job.webhook_id),
            ("ep", b.webhook_id)
        );
        assert_eq!(job.last_error.as_deref(), Some("HTTP 503"));
        assert_eq!(job.not_before_ms, None);
        assert_eq!(delay, Duration::from_millis(500), "the lower half of 1 s");
    }

    #[test]
    fn retry_after_is_a_floor() {
        let c = config(r#"{"initial_backoff_ms": 1000}"#);
        let b = batch(&c, 2, Some(NOW - 1000));
        let after = Some(Duration::from_secs(30));
        let (job, delay) = pushed_retry(dispose(retry(429, after), &b, NOW, NOW, HOUR, 0.0));
        assert_eq!(delay, Duration::from_secs(30));
        assert_eq!(
            job.first_attempt_ms,
            NOW - 1000,
            "the first attempt's time is kept"
        );
    }

    #[test]
    fn a_delay_past_what_the_queue_carries_is_written_into_the_job() {
        let c = config(
            r#"{"initial_backoff_ms": 60000, "max_backoff_ms": 3600000, "max_elapsed_time_ms": 7200000}"#,
        );
        let b = batch(&c, 5, Some(NOW));
        let max = Duration::from_secs(900);
        let (job, delay) = pushed_retry(dispose(retry(500, None), &b, NOW, NOW, max, 0.99));
        assert_eq!(delay, max);
        let due = job
            .not_before_ms
            .expect("the rest of the delay is in the job");
        assert!(due > NOW + 900_000, "{due}");
    }

    #[test]
    fn a_reject_dead_letters_at_once_with_the_answer() {
        let c = config("{}");
        let outcome = Outcome::Reject {
            failure: Failure {
                reason: "HTTP 400".into(),
                status: Some(400),
                excerpt: Some("bad".into()),
            },
        };
        let (entry, label) = dead(dispose(
            outcome,
            &batch(&c, 3, Some(NOW)),
            NOW,
            NOW,
            HOUR,
            0.5,
        ));
        assert_eq!(label, "rejected");
        assert_eq!(entry.reason, "HTTP 400");
        assert_eq!((entry.attempts, entry.last_status), (3, Some(400)));
        assert_eq!(entry.body_excerpt.as_deref(), Some("bad"));
        assert_eq!(entry.endpoint.as_deref(), Some("ep"));
        let Job::Retry(replay) = Job::decode(&entry.job).unwrap() else {
            panic!("a replayable retry job")
        };
        assert_eq!(
            (replay.attempt, replay.first_attempt_ms),
            (1, 0),
            "a fresh budget"
        );
    }

    #[test]
    fn the_last_attempt_dead_letters_as_exhausted() {
        let c = config(r#"{"max_attempts": 3}"#);
        let (entry, label) = dead(dispose(
            retry(503, None),
            &batch(&c, 3, Some(NOW)),
            NOW,
            NOW,
            HOUR,
            0.5,
        ));
        assert_eq!(label, "exhausted");
        assert!(
            entry.reason.ends_with("; last: HTTP 503"),
            "{}",
            entry.reason
        );
        assert_eq!(entry.last_status, Some(503));
    }

    #[test]
    fn the_elapsed_time_budget_ends_retries() {
        let c = config(r#"{"max_elapsed_time_ms": 10000, "initial_backoff_ms": 1000}"#);
        let b = batch(&c, 2, Some(NOW - 9_900));
        let (_, label) = dead(dispose(retry(503, None), &b, NOW, NOW, HOUR, 0.5));
        assert_eq!(label, "exhausted");
    }

    #[test]
    fn a_clock_gone_backwards_counts_as_no_time_spent() {
        let c = config(r#"{"max_elapsed_time_ms": 10000}"#);
        let b = batch(&c, 2, Some(NOW + 60_000));
        let (job, _) = pushed_retry(dispose(retry(503, None), &b, NOW, NOW, HOUR, 0.5));
        assert_eq!(job.attempt, 3);
    }

    #[test]
    fn retries_off_dead_letter_the_first_failure() {
        let c = config(r#"{"enabled": false}"#);
        let (_, label) = dead(dispose(
            retry(503, None),
            &batch(&c, 1, None),
            NOW,
            NOW,
            HOUR,
            0.5,
        ));
        assert_eq!(label, "exhausted");
    }

    /// On SQS a retry job must fit one message (256 KiB): it carries the
    /// batch's events, each with its id, which the request body leaves out
    /// unless `webhooks.event_ids`. A batch as full as the default
    /// `batching` lets it be — 100 events of 2.5 KiB, ids as the producer
    /// makes them — must have a retry job SQS accepts. Before the fix
    /// `max_bytes` was 256 KiB on SQS too: the batch closed at 100 events
    /// and 259,336 bytes, and its retry job came to 263,962 bytes, over
    /// SQS's 262,144.
    #[test]
    fn on_sqs_the_retry_job_of_a_full_batch_fits_one_message() {
        use crate::batch::{Batcher, Item};
        let c = Config::parse(
            r#"{"queue": {"driver": "sqs"}, "app_manager": {"array": {"apps": [
                {"id": "app-1", "key": "k", "secret": "s", "webhooks": [
                  {"id": "ep", "url": "http://127.0.0.1:9/x", "event_types": ["client_event"]}]}]}}}"#,
            |_| None,
        )
        .unwrap()
        .0;
        let limit = hookq_core::config::sqs_limits::MAX_MESSAGE_BYTES;
        let (settler, _acks) = Settler::new();
        let mut batcher = Batcher::new(c.webhooks.batching, 10);
        let now = tokio::time::Instant::now();
        let mut closed = Vec::new();
        for n in 0..1000 {
            let mut e = Event::client_event("private-c", "client-e", "x".repeat(2500), "1.1");
            // As decoding a producer's job sets it: the job id.
            e.id = Some(hookq_core::new_id("job"));
            let ticket = settler.ticket(Handle(format!("h{n}")), 1, None, None);
            let item = Item {
                app: c.apps[0].clone(),
                endpoint: 0,
                event: Encoded::new(e, c.webhooks.event_ids),
                ticket,
            };
            closed.extend(batcher.push(item, now));
            if !closed.is_empty() {
                break;
            }
        }
        let batch = closed.remove(0);
        let d = dispose(
            retry(503, None),
            &batch,
            NOW,
            NOW,
            Duration::from_secs(900),
            0.0,
        );
        let Disposition::Push { message, .. } = d else {
            panic!("a retry push expected, got {d:?}")
        };
        eprintln!(
            "a batch of {} events, {} bytes sent; its retry job {} bytes (SQS takes {limit})",
            batch.events.len(),
            batch.bytes(),
            message.body.len()
        );
        assert!(
            message.body.len() <= limit,
            "a retry job of {} bytes, over SQS's {limit}: the push is refused, every time",
            message.body.len()
        );
    }

    fn busy(waiting_jobs: usize, waiting_batches: usize, mc: usize, pace_ms: Option<u64>) -> Busy {
        Busy {
            waiting_jobs,
            waiting_batches,
            max_concurrency: mc,
            pace: pace_ms.map(Duration::from_millis),
        }
    }

    #[test]
    fn a_busy_endpoint_keeps_at_most_its_share_waiting() {
        assert_eq!(endpoint_share(200), 50);
        assert_eq!(endpoint_share(20_000), 5_000);
        assert_eq!(endpoint_share(1), 1);
        // Pace unknown: only the share limits.
        assert_eq!(deferral(&busy(0, 0, 1, None), 50, 50), None);
        assert_eq!(
            deferral(&busy(0, 0, 1, None), 100, 50),
            Some(Deferral::Share)
        );
        assert_eq!(deferral(&busy(49, 3, 1, None), 1, 50), None);
        assert_eq!(
            deferral(&busy(49, 3, 1, None), 2, 50),
            Some(Deferral::Share)
        );
    }

    #[test]
    fn a_slow_endpoint_keeps_about_one_round_waiting() {
        // 2 s a request, one at a time: one batch may wait for the one in
        // flight; the next would wait two requests.
        assert_eq!(deferral(&busy(0, 0, 1, Some(2000)), 1, 50), None);
        assert_eq!(
            deferral(&busy(1, 1, 1, Some(2000)), 1, 50),
            Some(Deferral::Pace)
        );
        // 4 at a time: four batches wait a round.
        assert_eq!(deferral(&busy(3, 3, 4, Some(2000)), 1, 50), None);
        assert_eq!(
            deferral(&busy(4, 4, 4, Some(2000)), 1, 50),
            Some(Deferral::Pace)
        );
        // A fast endpoint: a second's worth of rounds may wait.
        assert_eq!(deferral(&busy(30, 3199, 32, Some(10)), 1, 5000), None);
        assert_eq!(
            deferral(&busy(30, 3200, 32, Some(10)), 1, 5000),
            Some(Deferral::Pace)
        );
    }

    #[test]
    fn a_deferral_comes_back_at_its_endpoints_pace() {
        // One request in flight at 2 s: back in 2 s; with a batch waiting, 4 s.
        assert_eq!(
            defer_until(&busy(0, 0, 1, Some(2000)), 0, NOW, 0.5),
            NOW + 2000
        );
        assert_eq!(
            defer_until(&busy(1, 1, 1, Some(2000)), 0, NOW, 0.5),
            NOW + 4000
        );
        // Behind the batches deferred before it.
        let booked = NOW + 10_000;
        assert_eq!(
            defer_until(&busy(0, 0, 1, Some(2000)), booked, NOW, 0.5),
            NOW + 12_000
        );
        assert_eq!(
            defer_until(&busy(0, 0, 4, Some(2000)), booked, NOW, 0.5),
            NOW + 10_500
        );
        // Unknown pace: a second a request; never sooner than DEFER_MIN.
        assert_eq!(defer_until(&busy(0, 0, 1, None), 0, NOW, 0.5), NOW + 1000);
        assert_eq!(
            defer_until(&busy(0, 0, 32, Some(5)), 0, NOW, 0.5),
            NOW + 1000
        );
        // Never later than DEFER_MAX, spread over its upper half.
        let far = NOW + 3_600_000;
        assert_eq!(
            defer_until(&busy(0, 0, 1, Some(2000)), far, NOW, 0.0),
            NOW + 30_000
        );
        assert_eq!(
            defer_until(&busy(0, 0, 1, Some(2000)), far, NOW, 1.0),
            NOW + 60_000
        );
    }

    fn pushed_deferral(d: Disposition) -> (RetryJob, Duration) {
        let Disposition::Push {
            message,
            retry: false,
        } = d
        else {
            panic!("a push that is not a retry expected, got {d:?}")
        };
        let Job::Retry(job) = Job::decode(&message.body).unwrap() else {
            panic!("a retry job")
        };
        (job, message.delay)
    }

    #[test]
    fn a_deferred_first_attempt_stays_a_first_attempt() {
        let c = config("{}");
        let b = batch(&c, 1, None);
        let (job, delay) = pushed_deferral(defer(&b, Duration::from_secs(4), NOW, HOUR));
        assert_eq!(delay, Duration::from_secs(4));
        assert_eq!(
            (job.attempt, job.first_attempt_ms),
            (1, 0),
            "no attempt made"
        );
        assert_eq!(
            (job.endpoint.as_str(), job.webhook_id),
            ("ep", b.webhook_id)
        );
        assert_eq!(job.events.len(), 1);
        assert_eq!((job.last_error, job.not_before_ms), (None, None));
    }

    #[test]
    fn a_deferral_never_makes_a_retry_dead_letter_sooner() {
        let c = config(r#"{"max_elapsed_time_ms": 10000, "initial_backoff_ms": 1000}"#);
        // 5 s of 10 spent; the next backoff is 2 s (the lower half of 4 s).
        let b = batch(&c, 3, Some(NOW - 5_000));
        let later = NOW + 30_000;
        let (job, _) = pushed_deferral(defer(&b, Duration::from_secs(30), NOW, HOUR));
        assert_eq!(job.attempt, 3, "the attempt is not counted");
        assert_eq!(
            job.first_attempt_ms,
            NOW - 5_000 + 30_000,
            "the deferral is not counted"
        );
        // Tried when it comes back, failing: as much budget left as before
        // (counting the 30 s deferred, it would be exhausted).
        let back = batch(&c, job.attempt, Some(job.first_attempt_ms));
        let (next, _) = pushed_retry(dispose(retry(503, None), &back, later, later, HOUR, 0.0));
        assert_eq!(next.attempt, 4);
        // A delay past what the queue carries is written into the job.
        let (job, delay) = pushed_deferral(defer(&b, Duration::from_secs(60), NOW, Duration::ZERO));
        assert_eq!(
            (delay, job.not_before_ms),
            (Duration::ZERO, Some(NOW + 60_000))
        );
    }

    fn block<T>(f: impl std::future::Future<Output = T>) -> T {
        let mut f = std::pin::pin!(f);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("a static registry never waits"),
        }
    }

    fn received(body: &str, receive_count: u32) -> Received {
        Received {
            handle: Handle("h".into()),
            body: body.into(),
            receive_count,
            not_utf8: None,
        }
    }

    #[test]
    fn accept_names_every_way_a_message_is_refused() {
        let c = config("{}");
        let apps = StaticApps::new(&c.apps);
        let event = |app: &str, name: &str| {
            format!(
                r#"{{"v":1,"kind":"event","id":"j1","app_id":"{app}","event":{{"name":"{name}","channel":"presence-x","user_id":"u"}}}}"#
            )
        };
        let reject = |body: &str| match block(accept(&apps, &received(body, 1), 10, NOW)) {
            Accept::Reject(r) => r,
            other => panic!("a rejection expected, got {other:?}"),
        };
        assert!(matches!(
            reject("{"),
            Rejection::Malformed { app_id: None, .. }
        ));
        let r = reject(r#"{"v":9,"kind":"event","id":"j","app_id":"a"}"#);
        assert_eq!(
            (r.label(), r.dead_letter("x").app_id.as_deref()),
            ("malformed", Some("a"))
        );
        assert_eq!(
            reject(&event("zz", "member_added")),
            Rejection::UnknownApp("zz".into())
        );
        assert_eq!(
            reject(&event("off", "member_added")),
            Rejection::AppDisabled("off".into())
        );
        let retry = r#"{"v":1,"kind":"retry","id":"r","app_id":"a","endpoint":"gone","attempt":4,
            "webhook_id":"w","events":[{"name":"cache_miss","channel":"c"}]}"#;
        let r = reject(retry);
        assert_eq!(r.label(), "endpoint_removed");
        let entry = r.dead_letter(retry);
        assert_eq!(
            (entry.attempts, entry.endpoint.as_deref()),
            (3, Some("gone"))
        );
        assert_eq!(entry.job, retry, "the message is kept as it came");
        assert_eq!(
            entry.reason,
            "endpoint removed: \"gone\" is no longer configured"
        );
    }

    #[test]
    fn a_job_received_more_than_max_receives_times_is_rejected_with_the_count() {
        let c = config("{}");
        let apps = StaticApps::new(&c.apps);
        let event = r#"{"v":1,"kind":"event","id":"j1","app_id":"a",
            "event":{"name":"member_added","channel":"presence-x","user_id":"u"}}"#;
        assert!(
            matches!(
                block(accept(&apps, &received(event, 3), 3, NOW)),
                Accept::Fan { .. }
            ),
            "the third receive of three is still worked on"
        );
        let Accept::Reject(r) = block(accept(&apps, &received(event, 4), 3, NOW)) else {
            panic!("the fourth receive is dead-lettered")
        };
        assert_eq!(r.label(), "max_receives");
        let entry = r.dead_letter(event);
        assert!(
            entry
                .reason
                .starts_with("received 4 times, more than queue.max_receives (3)"),
            "{}",
            entry.reason
        );
        assert_eq!(
            (entry.job.as_str(), entry.app_id.as_deref()),
            (event, Some("a")),
            "kept as it came, to replay"
        );
        assert_eq!((entry.endpoint, entry.attempts), (None, 0));

        let retry = r#"{"v":1,"kind":"retry","id":"r","app_id":"a","endpoint":"all","attempt":5,
            "webhook_id":"w","events":[{"name":"member_added","channel":"c","user_id":"u"}]}"#;
        let Accept::Reject(r) = block(accept(&apps, &received(retry, 11), 10, NOW)) else {
            panic!("dead-lettered")
        };
        let entry = r.dead_letter(retry);
        assert_eq!(
            (entry.endpoint.as_deref(), entry.attempts),
            (Some("all"), 4)
        );

        // What is refused anyway keeps its own reason, whatever the count.
        let unknown = event.replace(r#""app_id":"a""#, r#""app_id":"zz""#);
        assert!(matches!(
            block(accept(&apps, &received(&unknown, 50), 3, NOW)),
            Accept::Reject(Rejection::UnknownApp(_))
        ));
    }

    /// A registry that cannot answer: the job waits, it is not poison.
    struct Down;

    #[async_trait::async_trait]
    impl AppRegistry for Down {
        async fn app(&self, _: &str) -> Result<Arc<App>, LookupError> {
            Err(LookupError::Unavailable("database down".into()))
        }
        async fn app_by_key(&self, _: &str) -> Result<Arc<App>, LookupError> {
            Err(LookupError::Unavailable("database down".into()))
        }
    }

    #[test]
    fn a_job_waiting_for_its_app_is_not_dead_lettered_for_its_receives() {
        let event = r#"{"v":1,"kind":"event","id":"j1","app_id":"a",
            "event":{"name":"cache_miss","channel":"c"}}"#;
        assert!(matches!(
            block(accept(&Down, &received(event, 99), 3, NOW)),
            Accept::Wait(_)
        ));
    }

    #[test]
    fn a_message_that_is_not_utf8_is_rejected_with_its_bytes() {
        let c = config("{}");
        let apps = StaticApps::new(&c.apps);
        let mut bytes = br#"{"v":1,"kind":"event","id":"j1","app_id":"a","event":{"name":"client_event","channel":"presence-x","event":"e","data":"caf"#.to_vec();
        bytes.push(0xE9);
        bytes.extend_from_slice(br#"","socket_id":"1.1"}}"#);
        let msg = Received {
            body: String::from_utf8_lossy(&bytes).into_owned(),
            not_utf8: Some(bytes.clone()),
            ..received("", 1)
        };
        let Accept::Reject(r) = block(accept(&apps, &msg, 10, NOW)) else {
            panic!("rejected")
        };
        assert_eq!(r.label(), "not_utf8");
        let entry = r.dead_letter(&msg.body);
        let at = bytes.iter().position(|b| *b == 0xE9).unwrap();
        assert_eq!(
            entry.reason,
            format!(
                "malformed job: not UTF-8 (invalid utf-8 sequence of 1 bytes from index {at}); its bytes are kept in job_base64"
            )
        );
        assert_eq!(entry.app_id.as_deref(), Some("a"));
        assert_eq!(
            entry.job_bytes().unwrap(),
            bytes.as_slice(),
            "the bytes intact"
        );
        assert_eq!(entry.job_text(), None, "no text queue can carry it");
        let again: DeadLetter = serde_json::from_str(&entry.encode()).unwrap();
        assert_eq!(again, entry, "the entry's JSON keeps them");
    }

    #[test]
    fn accept_fans_out_routes_retries_and_waits_for_due_jobs() {
        let c = config("{}");
        let apps = StaticApps::new(&c.apps);
        let body = r#"{"v":1,"kind":"event","id":"j1","app_id":"a","enqueued_at_ms":5,
            "event":{"name":"member_added","channel":"presence-x","user_id":"u"}}"#;
        let got = block(accept(&apps, &received(body, 1), 10, NOW));
        assert_eq!((got.parts(), got.enqueued_at_ms()), (2, Some(5)));
        let Accept::Fan { endpoints, .. } = got else {
            panic!("fan out")
        };
        assert_eq!(endpoints, [0, 1]);
        let nobody = r#"{"v":1,"kind":"event","id":"j2","app_id":"a","event":{"name":"cache_miss","channel":"c"}}"#;
        let got = block(accept(&apps, &received(nobody, 1), 10, NOW));
        assert_eq!(
            (got.parts(), got.enqueued_at_ms()),
            (1, None),
            "one part, settled at once"
        );
        let retry = r#"{"v":1,"kind":"retry","id":"r","app_id":"a","endpoint":"all","attempt":2,
            "webhook_id":"w","events":[{"name":"member_added","channel":"c","user_id":"u"}]}"#;
        assert!(matches!(
            block(accept(&apps, &received(retry, 1), 10, NOW)),
            Accept::Retry { endpoint: 1, .. }
        ));
        let later = format!(
            r#"{{"v":1,"kind":"event","id":"j3","app_id":"a","not_before_ms":{},"event":{{"name":"cache_miss","channel":"c"}}}}"#,
            NOW + 2000
        );
        let Accept::NotDue { job, wait } = block(accept(&apps, &received(&later, 1), 10, NOW))
        else {
            panic!("not due")
        };
        assert_eq!(wait, Duration::from_secs(2));
        assert!(matches!(
            Disposition::not_due(job.clone(), wait, false, Duration::ZERO),
            Disposition::Release(w) if w == wait
        ));
        let Disposition::Push {
            message,
            retry: false,
        } = Disposition::not_due(job, wait, true, Duration::from_secs(900))
        else {
            panic!("pushed back")
        };
        assert_eq!(message.delay, wait);
        assert_eq!(Job::decode(&message.body).unwrap().not_before_ms(), None);
    }
}

// Endpoint health (crate::health): the circuit breaker and disabling, as
// values. The shared record is hookq_queue::health's; these say what a
// batch finds at its endpoint and what change a record calls for.

/// What a batch finds at its endpoint's circuit ([`gate`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Gate {
    /// Closed (or the breaker is off): send.
    Send,
    /// Open, and its open time is over: this batch may be the one probe,
    /// if it gets the claim.
    Probe,
    /// Open: hand the batch over to a job for its endpoint, due this much later.
    Defer(Duration),
    /// Disabled: dead-letter it ("endpoint disabled").
    Disabled,
}

/// How long a batch waits when another worker's probe is on its way (or
/// was just claimed): the probe's answer decides soon.
pub const PROBE_WAIT: Duration = Duration::from_secs(1);

/// What a batch finds at an endpoint whose shared record is `record`, with
/// `breaker`, at `now_ms` (`jitter` in `[0, 1)` spreads deferred batches
/// over a tenth of the open time and a second, so they do not all come
/// back at the same moment). An open circuit whose breaker was turned off
/// since lets batches through; a disabled endpoint stays disabled until
/// it is enabled.
pub fn gate(record: &HealthRecord, breaker: &BreakerSettings, now_ms: u64, jitter: f64) -> Gate {
    match record.state {
        Circuit::Closed => Gate::Send,
        Circuit::Disabled => Gate::Disabled,
        Circuit::Open if !breaker.enabled => Gate::Send,
        Circuit::Open if now_ms >= record.open_until_ms => Gate::Probe,
        Circuit::Open => {
            let spread =
                (breaker.open / 10 + Duration::from_secs(1)).mul_f64(jitter.clamp(0.0, 1.0));
            Gate::Defer(Duration::from_millis(record.open_until_ms - now_ms) + spread)
        }
    }
}

/// The deferral of a batch that found the probe taken (`jitter` in `[0, 1)`).
pub fn probe_taken(jitter: f64) -> Gate {
    Gate::Defer(PROBE_WAIT + PROBE_WAIT.mul_f64(jitter.clamp(0.0, 1.0)))
}

/// The change `record` calls for at `now_ms`, if any: disabled once it has
/// failed without a success for `disable_after`; opened when closed with
/// the breaker on and, over its window, at least `min_requests` requests
/// of which at least `failure_ratio` failed. An open circuit only changes
/// with its probe ([`probe_result`]) or by being disabled.
pub fn health_step(
    record: &HealthRecord,
    breaker: &BreakerSettings,
    disable_after: Option<Duration>,
    now_ms: u64,
) -> Option<Transition> {
    if record.state == Circuit::Disabled {
        return None;
    }
    if let (Some(after), Some(since)) = (disable_after, record.failing_since_ms)
        && Duration::from_millis(now_ms.saturating_sub(since)) >= after
    {
        return Some(Transition::Disable { at_ms: now_ms });
    }
    if record.state != Circuit::Closed || !breaker.enabled {
        return None;
    }
    let window_ms = breaker.window.as_millis().try_into().unwrap_or(u64::MAX);
    let (requests, failed) = record.window_counts(now_ms, window_ms);
    let opens = requests >= breaker.min_requests as f64
        && requests > 0.0
        && failed / requests >= breaker.failure_ratio;
    opens.then(|| Transition::Open {
        until_ms: now_ms.saturating_add(breaker.open.as_millis().try_into().unwrap_or(u64::MAX)),
    })
}

/// What a probe's answer does: an endpoint that answered (delivered, or
/// even refused the batch with a 4xx: it is up) closes; a failure that is
/// worth retrying opens it for another `open` time.
pub fn probe_result(outcome: &Outcome, breaker: &BreakerSettings, now_ms: u64) -> Transition {
    match outcome {
        Outcome::Retry { .. } => Transition::Open {
            until_ms: now_ms
                .saturating_add(breaker.open.as_millis().try_into().unwrap_or(u64::MAX)),
        },
        Outcome::Delivered | Outcome::Reject { .. } => Transition::Close { at_ms: now_ms },
    }
}

/// The reason of a disabled endpoint's dead letters.
pub const ENDPOINT_DISABLED: &str = "endpoint disabled";

/// `batch` for a disabled endpoint: one dead-letter entry, a replayable
/// retry job for this endpoint (attempt 1, a fresh budget, the batch's
/// `webhook-id`), like [`dispose`]'s; metric label `disabled`.
pub fn endpoint_disabled(batch: &Batch, now_ms: u64) -> Disposition {
    let replay = retry_job(batch, 1, None, ENDPOINT_DISABLED, now_ms);
    Disposition::DeadLetter {
        entries: vec![DeadLetter {
            job: Job::Retry(replay).encode(),
            job_base64: None,
            reason: ENDPOINT_DISABLED.to_string(),
            failed_at_ms: now_ms,
            app_id: Some(batch.app.id.clone()),
            endpoint: Some(batch.endpoint().id.clone()),
            attempts: batch.attempt.saturating_sub(1),
            last_status: None,
            body_excerpt: None,
        }],
        label: "disabled",
    }
}

#[cfg(test)]
mod health_tests {
    use super::*;
    use hookq_queue::health::Outcomes;

    const NOW: u64 = 1_700_000_000_000;

    fn breaker() -> BreakerSettings {
        BreakerSettings {
            enabled: true,
            failure_ratio: 0.5,
            window: Duration::from_secs(10),
            min_requests: 4,
            open: Duration::from_secs(5),
        }
    }

    fn record(ok: u64, failed: u64, first_failure: Option<u64>) -> HealthRecord {
        let mut r = HealthRecord::default();
        let mut d = Outcomes::default();
        for _ in 0..ok {
            d.success(NOW - 5_000);
        }
        for i in 0..failed {
            d.failure(first_failure.unwrap_or(NOW - 4_000) + i, "HTTP 503");
        }
        r.merge(&d, NOW, 10_000);
        r
    }

    #[test]
    fn the_circuit_opens_at_the_ratio_once_enough_requests_were_seen() {
        let b = breaker();
        assert_eq!(
            health_step(&record(0, 3, None), &b, None, NOW),
            None,
            "3 < min_requests"
        );
        assert_eq!(
            health_step(&record(3, 2, None), &b, None, NOW),
            None,
            "40 % < 50 %"
        );
        assert_eq!(
            health_step(&record(2, 2, None), &b, None, NOW),
            Some(Transition::Open {
                until_ms: NOW + 5_000
            })
        );
        let off = BreakerSettings {
            enabled: false,
            ..b
        };
        assert_eq!(
            health_step(&record(0, 50, None), &off, None, NOW),
            None,
            "breaker off"
        );
    }

    #[test]
    fn an_open_circuit_defers_then_lets_one_probe_through() {
        let b = breaker();
        let mut r = record(0, 4, None);
        r.apply(health_step(&r, &b, None, NOW).unwrap());
        assert_eq!(
            health_step(&r, &b, None, NOW + 1),
            None,
            "open: only the probe changes it"
        );
        let Gate::Defer(d) = gate(&r, &b, NOW + 1_000, 0.0) else {
            panic!("open: deferred")
        };
        assert_eq!(d, Duration::from_secs(4), "until the open time is over");
        let Gate::Defer(spread) = gate(&r, &b, NOW + 1_000, 0.999) else {
            panic!("deferred")
        };
        assert!(
            spread > d && spread <= d + Duration::from_millis(1_500),
            "{spread:?}"
        );
        assert_eq!(gate(&r, &b, NOW + 5_000, 0.5), Gate::Probe);
        assert_eq!(
            probe_result(&Outcome::Delivered, &b, NOW + 5_100),
            Transition::Close { at_ms: NOW + 5_100 }
        );
        let failed = Outcome::Retry {
            failure: Failure::new("connection refused"),
            after: None,
        };
        assert_eq!(
            probe_result(&failed, &b, NOW + 5_100),
            Transition::Open {
                until_ms: NOW + 10_100
            }
        );
        r.apply(Transition::Close { at_ms: NOW + 5_100 });
        assert_eq!(gate(&r, &b, NOW + 5_200, 0.5), Gate::Send);
        assert_eq!(
            health_step(&r, &b, None, NOW + 5_200),
            None,
            "counts cleared"
        );
        let mut open = r.clone();
        open.apply(Transition::Open {
            until_ms: NOW + 99_000,
        });
        let off = BreakerSettings {
            enabled: false,
            ..b
        };
        assert_eq!(
            gate(&open, &off, NOW, 0.5),
            Gate::Send,
            "breaker turned off"
        );
    }

    #[test]
    fn an_endpoint_failing_for_disable_after_is_disabled_and_stays_so() {
        let b = breaker();
        let after = Some(Duration::from_secs(3));
        let r = record(0, 2, Some(NOW - 2_000));
        assert_eq!(r.failing_since_ms, Some(NOW - 2_000));
        assert_eq!(
            health_step(&r, &b, after, NOW),
            None,
            "failing for 2 s of 3"
        );
        let mut r = record(0, 2, Some(NOW - 3_000));
        assert_eq!(
            health_step(&r, &b, after, NOW),
            Some(Transition::Disable { at_ms: NOW })
        );
        r.apply(Transition::Disable { at_ms: NOW });
        assert_eq!(gate(&r, &b, NOW, 0.5), Gate::Disabled);
        assert_eq!(health_step(&r, &b, after, NOW + 60_000), None);
        r.enable();
        assert_eq!(
            (gate(&r, &b, NOW, 0.5), r.failing_since_ms),
            (Gate::Send, None)
        );
        // A success since clears the failing-since: never disabled.
        let mut ok = record(0, 2, Some(NOW - 9_000));
        let mut d = Outcomes::default();
        d.success(NOW - 1_000);
        ok.merge(&d, NOW, 10_000);
        assert_eq!(health_step(&ok, &b, after, NOW), None);
    }

    #[test]
    fn a_disabled_endpoints_batch_is_one_replayable_dead_letter() {
        let text = r#"{"app_manager": {"array": {"apps": [{"id": "a", "key": "k", "secret": "s",
            "webhooks": [{"id": "ep", "url": "http://127.0.0.1:9/x", "event_types": ["member_added"]}]}]}}}"#;
        let config = hookq_core::Config::parse(text, |_| None).unwrap().0;
        let (settler, _acks) = crate::settle::Settler::new();
        let ticket = settler.ticket(hookq_queue::Handle("h".into()), 1, None, None);
        let mut b = Batch::new(config.apps[0].clone(), 0);
        b.attempt = 3;
        for u in ["u1", "u2"] {
            b.add(
                crate::batch::Encoded::new(hookq_core::Event::member_added("presence-x", u), false),
                &ticket,
            );
        }
        let Disposition::DeadLetter { entries, label } = endpoint_disabled(&b, NOW) else {
            panic!("dead-lettered")
        };
        assert_eq!((entries.len(), label), (1, "disabled"));
        let e = &entries[0];
        assert_eq!(e.reason, ENDPOINT_DISABLED);
        assert_eq!(
            (e.app_id.as_deref(), e.endpoint.as_deref()),
            (Some("a"), Some("ep"))
        );
        let Job::Retry(job) = Job::decode(&e.job).unwrap() else {
            panic!("a retry job")
        };
        assert_eq!(
            (job.attempt, job.events.len(), job.endpoint.as_str()),
            (1, 2, "ep")
        );
        assert_eq!(job.webhook_id, b.webhook_id);
    }
}
