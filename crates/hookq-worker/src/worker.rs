//! The worker: receive jobs, fan out, batch, deliver, settle.
//!
//! ```text
//! receive loop ──items──▶ batcher ──batches──▶ dispatcher ──▶ delivery tasks ──▶ settle
//!   (decode, resolve app,            (one open batch    (per-endpoint    (retry job / DLQ /
//!    fan out; retry jobs go          per app+endpoint)   semaphore)       ack via the acker)
//!    straight to the dispatcher)
//! ```
//!
//! Back-pressure: the receive loop takes a permit per job from a semaphore of
//! `worker.max_held_jobs`; a job's permit returns when its ticket drops, so a
//! worker whose endpoints are slow stops receiving instead of piling up jobs.
//! Isolation: every endpoint has its own concurrency semaphore, and a delivery
//! waits only for its own endpoint's. Shutdown is [`Worker::run`]'s last part.

use crate::batch::{self, Batch, Batcher, Encoded, Item};
use crate::deliver::Deliverer;
use crate::metrics::Metrics;
use crate::outcome::{Failure, Outcome};
use crate::settle::{self, Settler, Ticket};
use hookq_core::config::QueueDriverKind;
use hookq_core::job::{Job, RetryJob, VERSION};
use hookq_core::{AppRegistry, Config, DeadLetter, LookupError, StaticApps, now_ms};
use hookq_queue::{Outgoing, QueueDriver, Received};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Most jobs asked for in one receive: one Redis script claims them all, so
/// more per call costs Redis less per job (500 over 100: +28 % batched
/// events/s, docs/benchmark.md). The SQS driver fills a receive with at
/// most 10 calls of 10 messages.
const RECEIVE_MAX: usize = 500;
/// How long one receive may wait for a first job.
const RECEIVE_WAIT: Duration = Duration::from_secs(5);

/// What every part of the worker shares.
pub struct Shared {
    /// The configuration.
    pub config: Arc<Config>,
    /// The queue.
    pub queue: Arc<dyn QueueDriver>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Where apps are looked up.
    pub apps: Arc<dyn AppRegistry>,
    /// Whether the queue answered the last receive.
    pub ready: Arc<AtomicBool>,
    deliverer: Deliverer,
    settler: Settler,
    limits: Mutex<HashMap<(String, String), Arc<Semaphore>>>,
}

/// A worker over one queue and one config.
pub struct Worker {
    shared: Arc<Shared>,
    acks: mpsc::UnboundedReceiver<hookq_queue::Handle>,
}

impl Worker {
    /// A worker for the apps of `config`; nothing runs until [`Worker::run`].
    pub fn new(
        config: Arc<Config>,
        queue: Arc<dyn QueueDriver>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let apps = Arc::new(StaticApps::new(&config.apps));
        Self::with_apps(config, apps, queue, metrics)
    }

    /// A worker whose apps come from a registry.
    pub fn with_apps(
        config: Arc<Config>,
        apps: Arc<dyn AppRegistry>,
        queue: Arc<dyn QueueDriver>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let (settler, acks) = Settler::new();
        let shared = Shared {
            deliverer: Deliverer::new(&config.webhooks)?,
            apps,
            config,
            queue,
            metrics,
            ready: Arc::new(AtomicBool::new(false)),
            settler,
            limits: Mutex::new(HashMap::new()),
        };
        Ok(Self {
            shared: Arc::new(shared),
            acks,
        })
    }

    /// What the admin server reads.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Runs until `shutdown` fires, then stops in order: no more receives,
    /// open batches flushed, in-flight deliveries awaited up to
    /// `worker.shutdown_timeout`, settled jobs acked. Whatever is still
    /// unsettled then is left to the queue, which gives it back when its
    /// hold expires.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let shared = self.shared;
        let config = shared.config.clone();
        let (item_tx, item_rx) = mpsc::channel::<Item>(4096);
        let (batch_tx, mut batch_rx) = mpsc::channel::<Batch>(1024);

        let batcher = Batcher::new(config.webhooks.batching, config.worker.max_open_batches);
        let batching = tokio::spawn(batch::run(batcher, item_rx, batch_tx.clone()));

        let deliveries = TaskTracker::new();
        let dispatcher = {
            let (shared, deliveries) = (shared.clone(), deliveries.clone());
            tokio::spawn(async move {
                while let Some(batch) = batch_rx.recv().await {
                    // Boxed: the future is large, and spawning moves it into
                    // its task; a pointer is cheaper to move (−7 % CPU per
                    // unbatched delivery, docs/benchmark.md).
                    deliveries.spawn(Box::pin(deliver(shared.clone(), batch)));
                }
            })
        };

        let background = CancellationToken::new();
        let acker = tokio::spawn(settle::run_acker(
            shared.queue.clone(),
            self.acks,
            background.clone(),
        ));
        let extender = tokio::spawn(settle::run_extender(
            shared.queue.clone(),
            shared.settler.held().clone(),
            hold_of(&config) / 3,
            background.clone(),
        ));

        // Every receive loop takes its jobs' permits from one budget.
        let budget = Arc::new(Semaphore::new(config.worker.max_held_jobs));
        let mut receivers = tokio::task::JoinSet::new();
        for _ in 0..receive_loops(&config) {
            let (shared, budget) = (shared.clone(), budget.clone());
            let (items, batches, shutdown) = (item_tx.clone(), batch_tx.clone(), shutdown.clone());
            receivers.spawn(async move {
                receive_loop(&shared, &budget, &items, &batches, &shutdown).await
            });
        }
        while let Some(ended) = receivers.join_next().await {
            // A loop that panicked takes the worker down, as it did inline.
            if let Err(e) = ended
                && e.is_panic()
            {
                std::panic::resume_unwind(e.into_panic());
            }
        }

        // Shutdown, in order.
        tracing::info!("stopping: flushing open batches");
        drop(item_tx);
        drop(batch_tx);
        let _ = batching.await;
        let _ = dispatcher.await;
        deliveries.close();
        let timeout = config.worker.shutdown_timeout;
        if tokio::time::timeout(timeout, deliveries.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                in_flight = deliveries.len(),
                "shutdown timeout: leaving unfinished deliveries to the queue"
            );
        }
        background.cancel();
        let _ = acker.await;
        let _ = extender.await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// How long the configured driver holds a received job.
fn hold_of(config: &Config) -> Duration {
    let q = &config.queue;
    match q.driver {
        QueueDriverKind::Memory => q.memory.lease,
        QueueDriverKind::Redis => q.redis.lease,
        QueueDriverKind::Sqs => q.sqs.visibility_timeout,
    }
    .max(Duration::from_millis(300))
}

/// How many receive loops run at once: `queue.sqs.concurrency` for SQS,
/// where one `ReceiveMessage` returns at most 10 messages after a network
/// round trip, so one loop bounds a worker's rate; one for Redis, where a
/// single script call claims up to [`RECEIVE_MAX`] jobs, and for memory.
fn receive_loops(config: &Config) -> usize {
    match config.queue.driver {
        QueueDriverKind::Sqs => config.queue.sqs.concurrency.max(1),
        QueueDriverKind::Redis | QueueDriverKind::Memory => 1,
    }
}

async fn receive_loop(
    shared: &Arc<Shared>,
    budget: &Arc<Semaphore>,
    items: &mpsc::Sender<Item>,
    batches: &mpsc::Sender<Batch>,
    shutdown: &CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    // Ready as soon as the queue answers, not only after the first (blocking) receive.
    let reachable = shared.queue.ping().await.is_ok();
    shared.ready.store(reachable, Ordering::Relaxed);
    loop {
        let want = budget.available_permits().clamp(1, RECEIVE_MAX) as u32;
        let mut permits = tokio::select! {
            p = budget.clone().acquire_many_owned(want) => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = shutdown.cancelled() => return,
        };
        let received = tokio::select! {
            r = shared.queue.receive(want as usize, RECEIVE_WAIT) => r,
            _ = shutdown.cancelled() => return,
        };
        let received = match received {
            Ok(r) => {
                shared.ready.store(true, Ordering::Relaxed);
                backoff = Duration::from_millis(100);
                r
            }
            Err(e) => {
                shared.ready.store(false, Ordering::Relaxed);
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "receive failed");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        shared.metrics.jobs_received.inc_by(received.len() as u64);
        for msg in received {
            let permit = permits.split(1);
            if let Some(work) = accept(shared, msg, permit).await {
                let sent = match work {
                    Work::Items(list) => {
                        let mut ok = true;
                        for item in list {
                            ok &= items.send(item).await.is_ok();
                        }
                        ok
                    }
                    Work::Batch(b) => batches.send(b).await.is_ok(),
                };
                if !sent {
                    return;
                }
            }
        }
    }
}

enum Work {
    Items(Vec<Item>),
    Batch(Batch),
}

/// Decodes one received message and turns it into work, or settles it at once.
async fn accept(
    shared: &Arc<Shared>,
    msg: Received,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
) -> Option<Work> {
    let config = &shared.config;
    let job = match Job::decode(&msg.body) {
        Ok(job) => job,
        Err(e) => {
            let app_id = serde_json::from_str::<serde_json::Value>(&msg.body)
                .ok()
                .and_then(|v| v.get("app_id")?.as_str().map(str::to_string));
            tracing::warn!(error = %e, "dead-lettering an unusable job");
            let entry = DeadLetter::unusable(&msg.body, e.to_string(), app_id);
            reject_message(shared, msg, entry, "malformed").await;
            return None;
        }
    };
    let now = now_ms();
    if let Some(not_before) = job.not_before_ms().filter(|t| *t > now) {
        redelay(shared, msg, job, not_before - now).await;
        return None;
    }
    let app = match shared.apps.app(job.app_id()).await {
        Ok(app) => app,
        Err(LookupError::Unavailable(e)) => {
            // Not acked: the job comes back when its hold expires.
            tracing::warn!(app_id = job.app_id(), error = %e, "cannot resolve the app now");
            return None;
        }
        Err(e) => {
            let label = match e {
                LookupError::Unknown(_) => "unknown_app",
                _ => "invalid_app",
            };
            let entry =
                DeadLetter::unusable(&msg.body, e.to_string(), Some(job.app_id().to_string()));
            reject_message(shared, msg, entry, label).await;
            return None;
        }
    };
    if !app.enabled {
        let entry = DeadLetter::unusable(&msg.body, "app disabled", Some(app.id.clone()));
        reject_message(shared, msg, entry, "app_disabled").await;
        return None;
    }
    let with_ids = config.webhooks.event_ids;
    match job {
        Job::Event(j) => {
            let targets: Vec<usize> = (0..app.endpoints.len())
                .filter(|&i| app.endpoints[i].wants(&j.event))
                .collect();
            let ticket =
                shared
                    .settler
                    .ticket(msg.handle, targets.len().max(1), j.enqueued_at_ms, permit);
            if targets.is_empty() {
                shared.metrics.events_skipped.inc();
                ticket.settle();
                return None;
            }
            let event = Encoded::new(j.event, with_ids);
            let items = targets
                .into_iter()
                .map(|endpoint| Item {
                    app: app.clone(),
                    endpoint,
                    event: event.clone(),
                    ticket: ticket.clone(),
                })
                .collect();
            Some(Work::Items(items))
        }
        Job::Retry(j) => {
            let Some(endpoint) = app.endpoints.iter().position(|e| e.id == j.endpoint) else {
                let reason = format!("endpoint removed: {:?} is no longer configured", j.endpoint);
                let mut entry = DeadLetter::unusable(&msg.body, reason, Some(app.id.clone()));
                entry.endpoint = Some(j.endpoint.clone());
                entry.attempts = j.attempt.saturating_sub(1);
                reject_message(shared, msg, entry, "endpoint_removed").await;
                return None;
            };
            let ticket = shared.settler.ticket(msg.handle, 1, 0, permit);
            let mut batch = Batch::new(app, endpoint);
            batch.webhook_id = j.webhook_id;
            batch.attempt = j.attempt.max(1);
            batch.first_attempt_ms = j.first_attempt_ms;
            for e in j.events {
                batch.add(Encoded::new(e, with_ids), &ticket);
            }
            Some(Work::Batch(batch))
        }
    }
}

/// Dead-letters a message that is not deliverable as it is, then acks it.
async fn reject_message(shared: &Shared, msg: Received, entry: DeadLetter, reason: &'static str) {
    let ticket = shared.settler.ticket(msg.handle, 1, 0, None);
    match shared.queue.dead_letter(vec![entry]).await {
        Ok(()) => {
            shared.metrics.dead_letter(reason);
            ticket.settle();
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not dead-letter; the job will come back");
            ticket.abandon();
        }
    }
}

/// Pushes a job that is not yet due back with the rest of its delay, then
/// acks it; on a queue that cannot delay a push (SQS FIFO), hides the
/// message itself until it is due instead.
async fn redelay(shared: &Shared, msg: Received, mut job: Job, wait_ms: u64) {
    if shared.queue.max_delay().is_zero() {
        if let Err(e) = shared
            .queue
            .release(&msg.handle, Duration::from_millis(wait_ms))
            .await
        {
            tracing::warn!(error = %e, "could not hide a job until due; it comes back when its hold ends");
        }
        return;
    }
    let ticket = shared.settler.ticket(msg.handle, 1, 0, None);
    let delay = Duration::from_millis(wait_ms).min(shared.queue.max_delay());
    if delay.as_millis() as u64 >= wait_ms {
        job.set_not_before_ms(None);
    }
    let out = Outgoing::now(hookq_core::new_id("job"), job.app_id(), job.encode()).delayed(delay);
    match shared.queue.push(vec![out]).await {
        Ok(()) => ticket.settle(),
        Err(e) => {
            tracing::warn!(error = %e, "could not re-delay a job; it will come back");
            ticket.abandon();
        }
    }
}

impl Shared {
    /// How many jobs this worker holds now.
    pub fn held_jobs(&self) -> usize {
        self.settler.held().len()
    }

    fn limit(&self, batch: &Batch) -> Arc<Semaphore> {
        let ep = batch.endpoint();
        let key = (batch.app.id.clone(), ep.id.clone());
        let mut limits = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        limits
            .entry(key)
            .or_insert_with(|| Arc::new(Semaphore::new(ep.max_concurrency)))
            .clone()
    }
}

/// One attempt of a batch, then its settlement.
async fn deliver(shared: Arc<Shared>, batch: Batch) {
    let permit = shared.limit(&batch).acquire_owned().await;
    let time_ms = now_ms();
    let started = Instant::now();
    let outcome = shared.deliverer.deliver(&batch, time_ms).await;
    drop(permit);
    let m = &shared.metrics;
    m.delivery_seconds.observe(started.elapsed().as_secs_f64());
    m.batch_size.observe(batch.events.len() as f64);
    m.request(outcome.label());
    let ep = batch.endpoint();
    match outcome {
        Outcome::Delivered => {
            m.events_delivered.inc_by(batch.events.len() as u64);
            let now = now_ms();
            for t in &batch.tickets {
                if t.enqueued_at_ms > 0 {
                    m.end_to_end_seconds
                        .observe(now.saturating_sub(t.enqueued_at_ms) as f64 / 1000.0);
                }
                t.settle();
            }
        }
        Outcome::Retry { failure, after } => {
            let first = if batch.first_attempt_ms == 0 {
                time_ms
            } else {
                batch.first_attempt_ms
            };
            let elapsed = Duration::from_millis(now_ms().saturating_sub(first));
            match ep
                .retry
                .next_delay(batch.attempt, elapsed, after, rand::random())
            {
                Ok(delay) => {
                    tracing::info!(
                        app_id = %batch.app.id, endpoint = %ep.id, attempt = batch.attempt,
                        reason = %failure.reason, retry_in_ms = delay.as_millis() as u64,
                        "delivery failed, retrying"
                    );
                    schedule_retry(&shared, &batch, first, failure, delay).await;
                }
                Err(give_up) => {
                    let reason = format!("{give_up}; last: {}", failure.reason);
                    dead_letter_batch(&shared, &batch, failure, reason, "exhausted").await;
                }
            }
        }
        Outcome::Reject { failure } => {
            let reason = failure.reason.clone();
            dead_letter_batch(&shared, &batch, failure, reason, "rejected").await;
        }
    }
}

fn retry_job(
    batch: &Batch,
    attempt: u32,
    first_attempt_ms: u64,
    last_error: Option<String>,
) -> RetryJob {
    RetryJob {
        v: VERSION,
        id: hookq_core::new_id("job"),
        app_id: batch.app.id.clone(),
        enqueued_at_ms: now_ms(),
        not_before_ms: None,
        endpoint: batch.endpoint().id.clone(),
        attempt,
        first_attempt_ms,
        webhook_id: batch.webhook_id.clone(),
        events: batch.events.iter().map(|e| e.event.clone()).collect(),
        last_error,
    }
}

fn settle_all(tickets: &[Arc<Ticket>], durable: bool) {
    for t in tickets {
        if durable { t.settle() } else { t.abandon() }
    }
}

async fn schedule_retry(
    shared: &Shared,
    batch: &Batch,
    first: u64,
    failure: Failure,
    delay: Duration,
) {
    let mut job = retry_job(batch, batch.attempt + 1, first, Some(failure.reason));
    let max = shared.queue.max_delay();
    if delay > max {
        job.not_before_ms = Some(now_ms() + delay.as_millis() as u64);
    }
    let job_id = job.id.clone();
    let out =
        Outgoing::now(job_id, &batch.app.id, Job::Retry(job).encode()).delayed(delay.min(max));
    let pushed = shared.queue.push(vec![out]).await;
    if let Err(e) = &pushed {
        tracing::warn!(error = %e, "could not push a retry job; the batch's jobs will come back");
    } else {
        shared.metrics.retries_scheduled.inc();
    }
    settle_all(&batch.tickets, pushed.is_ok());
}

async fn dead_letter_batch(
    shared: &Shared,
    batch: &Batch,
    failure: Failure,
    reason: String,
    label: &'static str,
) {
    let ep = batch.endpoint();
    tracing::warn!(
        app_id = %batch.app.id, endpoint = %ep.id, attempts = batch.attempt,
        reason = %reason, "dead-lettering a batch"
    );
    // Replaying the entry starts a fresh budget for this endpoint only.
    let replay = retry_job(batch, 1, 0, Some(failure.reason));
    let entry = DeadLetter {
        job: Job::Retry(replay).encode(),
        reason,
        failed_at_ms: now_ms(),
        app_id: Some(batch.app.id.clone()),
        endpoint: Some(ep.id.clone()),
        attempts: batch.attempt,
        last_status: failure.status,
        body_excerpt: failure.excerpt,
    };
    let written = shared.queue.dead_letter(vec![entry]).await;
    match &written {
        Ok(()) => shared.metrics.dead_letter(label),
        Err(e) => {
            tracing::warn!(error = %e, "could not dead-letter; the batch's jobs will come back")
        }
    }
    settle_all(&batch.tickets, written.is_ok());
}
