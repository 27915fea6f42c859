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
//! Isolation: every endpoint has its own lane ([`crate::lane`]): a
//! concurrency semaphore, for which a delivery waits only if its endpoint is
//! not too busy. Batches waiting for one endpoint hold at most a quarter of
//! the budget, and about one round of requests at its pace; a batch past
//! that is handed over at once to a deferred job for its endpoint (a retry
//! job for the same attempt, [`decide::defer`]), due when the endpoint
//! should have room, and its jobs' slots return. So a slow endpoint cannot
//! fill the budget and stop the worker receiving other apps' jobs.
//! Shutdown is [`Worker::run`]'s last part; a receive in flight is not
//! cancelled where that could leave messages hidden (see `receive_loop`).

use crate::batch::{self, Batch, Batcher, Encoded, Item};
use crate::decide::{self, Accept, Busy, Deferral, Disposition};
use crate::deliver::Deliverer;
use crate::lane::{Admit, Lane, Lanes};
use crate::metrics::Metrics;
use crate::outcome::Outcome;
use crate::settle::{self, Settler, Ticket};
use hookq_core::{AppRegistry, Config, StaticApps, now_ms};
use hookq_queue::{QueueDriver, QueueError, Received};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// Per-endpoint lanes (concurrency limit, pace): by app id and endpoint id.
    lanes: Lanes,
    /// Rate-limit buckets and vacate markers, shared with the queue's other
    /// workers on Redis ([`hookq_queue::limits`]).
    pub(crate) limits: Arc<dyn hookq_queue::limits::Limits>,
    /// Per-endpoint figures of this process, for the admin API.
    pub stats: crate::stats::Stats,
    /// Endpoint health: circuit breakers, disabled endpoints (crate::health).
    pub health: Arc<crate::health::Health>,
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
        let health = crate::health::Health::new(
            queue.clone().health_store(),
            metrics.clone(),
            config.webhooks.notify.clone(),
        )?;
        let shared = Shared {
            deliverer: Deliverer::new(&config.webhooks)?,
            limits: queue.clone().limits(),
            apps,
            config,
            queue,
            metrics,
            ready: Arc::new(AtomicBool::new(false)),
            settler,
            lanes: Lanes::default(),
            stats: Default::default(),
            health: Arc::new(health),
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

        shared.health.start_for(&config);
        let batcher = Batcher::new(config.webhooks.batching, config.worker.max_open_batches);
        let batching = tokio::spawn(batch::run(batcher, item_rx, batch_tx.clone()));

        let deliveries = TaskTracker::new();
        let dispatcher = {
            let (shared, deliveries) = (shared.clone(), deliveries.clone());
            tokio::spawn(async move {
                while let Some(batch) = batch_rx.recv().await {
                    deliveries.spawn(deliver(shared.clone(), batch));
                }
            })
        };

        let background = CancellationToken::new();
        let acker = tokio::spawn(settle::run_acker(
            shared.queue.clone(),
            shared.metrics.clone(),
            self.acks,
            background.clone(),
        ));
        let extender = tokio::spawn(settle::run_extender(
            shared.queue.clone(),
            shared.metrics.clone(),
            shared.settler.held().clone(),
            shared.queue.hold().max(Duration::from_millis(300)) / 3,
            background.clone(),
        ));

        // When the shutdown began: the receives in flight then still end
        // (each within RECEIVE_WAIT), and count towards the shutdown timeout.
        let signalled = {
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                shutdown.cancelled().await;
                Instant::now()
            })
        };
        // Every receive loop takes its jobs' permits from one budget.
        let budget = Arc::new(Semaphore::new(config.worker.max_held_jobs));
        let mut receivers = tokio::task::JoinSet::new();
        for _ in 0..shared.queue.receive_concurrency().max(1) {
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
        let since_signal = if signalled.is_finished() {
            signalled.await.map(|at| at.elapsed()).unwrap_or_default()
        } else {
            signalled.abort();
            Duration::ZERO
        };
        let timeout = config.worker.shutdown_timeout.saturating_sub(since_signal);
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

/// Receives jobs into the pipeline until `shutdown` fires. A receive in
/// flight is not cancelled unless the driver says that is safe
/// ([`QueueConsume::receive_cancel_safe`](hookq_queue::QueueConsume::receive_cancel_safe):
/// the memory queue): one given up mid-call can still take messages (an
/// SQS long poll answers the request it was given; a Redis claim runs once
/// sent), which would then stay hidden for a whole hold with nobody holding
/// them. It ends within [`RECEIVE_WAIT`], and what it brings is worked on
/// like the rest, within the shutdown sequence.
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
    while !shutdown.is_cancelled() {
        let want = budget.available_permits().clamp(1, RECEIVE_MAX) as u32;
        let mut permits = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            p = budget.clone().acquire_many_owned(want) => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let receive = shared.queue.receive(want as usize, RECEIVE_WAIT);
        let received = if shared.queue.receive_cancel_safe() {
            tokio::select! {
                r = receive => r,
                _ = shutdown.cancelled() => return,
            }
        } else {
            receive.await
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
                    Work::Batches(list) => {
                        let mut ok = true;
                        for batch in list {
                            ok &= batches.send(batch).await.is_ok();
                        }
                        ok
                    }
                };
                if !sent {
                    return;
                }
            }
        }
    }
}

enum Work {
    /// Events for the batcher.
    Items(Vec<Item>),
    /// Batches to send as they are: a retry job's, or with batching off
    /// (every event a batch of its own) a new job's, one per endpoint.
    Batches(Vec<Batch>),
}

/// Decides what one received message becomes ([`decide::accept`]), gives it
/// its ticket, and returns the work for the batcher or the dispatcher; a
/// message that needs no delivery is disposed of here.
async fn accept(
    shared: &Arc<Shared>,
    msg: Received,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
) -> Option<Work> {
    let max_receives = shared.config.queue.max_receives;
    let accepted = decide::accept(&*shared.apps, &msg, max_receives, now_ms()).await;
    if let Accept::Wait(why) = &accepted {
        // No ticket: not acked, not extended; the job comes back when its hold expires.
        tracing::warn!(error = %why, "cannot resolve the app now");
        return None;
    }
    // Flap suppression may hold or drop an event job instead of fanning it out.
    let flap = match &accepted {
        Accept::Fan { job, endpoints, .. } if !endpoints.is_empty() => {
            crate::flap::filter(shared, job).await
        }
        _ => None,
    };
    let ticket = shared.settler.ticket(
        msg.handle,
        if flap.is_some() { 1 } else { accepted.parts() },
        accepted.enqueued_at_ms(),
        permit,
    );
    if let Some(held_or_dropped) = flap {
        execute(shared, std::slice::from_ref(&ticket), held_or_dropped).await;
        return None;
    }
    let with_ids = shared.config.webhooks.event_ids;
    let disposition = match accepted {
        Accept::Fan { endpoints, .. } if endpoints.is_empty() => {
            shared.metrics.events_skipped.inc();
            Disposition::Ack
        }
        Accept::Fan {
            job,
            app,
            endpoints,
        } => {
            let event = Encoded::new(job.event, with_ids);
            if !shared.config.webhooks.batching.enabled {
                // What the batcher would make of each item at once: no hop through it.
                let batches = endpoints
                    .into_iter()
                    .map(|endpoint| {
                        let mut batch = Batch::new(app.clone(), endpoint);
                        batch.add(event.clone(), &ticket);
                        batch
                    })
                    .collect();
                return Some(Work::Batches(batches));
            }
            let items = endpoints
                .into_iter()
                .map(|endpoint| Item {
                    app: app.clone(),
                    endpoint,
                    event: event.clone(),
                    ticket: ticket.clone(),
                })
                .collect();
            return Some(Work::Items(items));
        }
        Accept::Retry { job, app, endpoint } => {
            let mut batch = Batch::new(app, endpoint);
            batch.webhook_id = job.webhook_id;
            batch.attempt = job.attempt.max(1);
            batch.first_attempt_ms = Some(job.first_attempt_ms).filter(|t| *t > 0);
            for e in job.events {
                batch.add(Encoded::new(e, with_ids), &ticket);
            }
            return Some(Work::Batches(vec![batch]));
        }
        Accept::NotDue { job, wait } => Disposition::not_due(
            job,
            wait,
            shared.queue.delays_pushes(),
            shared.queue.max_delay(),
        ),
        Accept::Reject(rejection) => {
            tracing::warn!(
                reason = %rejection.reason(), receive_count = msg.receive_count,
                "dead-lettering an unusable job"
            );
            Disposition::reject(&rejection, &msg.body)
        }
        Accept::Wait(_) => unreachable!("handled above"),
    };
    execute(shared, std::slice::from_ref(&ticket), disposition).await;
    None
}

/// Carries out a disposition for the jobs of `tickets`: each is settled once
/// the outcome is durable, or abandoned (left to come back) when the queue
/// refused it.
pub(crate) async fn execute(shared: &Shared, tickets: &[Arc<Ticket>], disposition: Disposition) {
    let written = write(shared, tickets, disposition).await;
    if let Written::Refused(e) = &written {
        tracing::warn!(error = %e, "the queue refused a push for good; the jobs will come back");
    }
    settle_all(tickets, &written);
}

/// What became of a disposition's write.
enum Written {
    /// The outcome is durable: settle.
    Durable,
    /// Not durable now (the queue away, or a job hidden until due): the jobs
    /// come back.
    Left,
    /// A push the queue refused for good (not worth sending again).
    Refused(QueueError),
}

fn settle_all(tickets: &[Arc<Ticket>], written: &Written) {
    for t in tickets {
        if matches!(written, Written::Durable) {
            t.settle()
        } else {
            t.abandon()
        }
    }
}

/// Writes what `disposition` says to the queue; settles nothing.
async fn write(shared: &Shared, tickets: &[Arc<Ticket>], disposition: Disposition) -> Written {
    match disposition {
        Disposition::Ack => Written::Durable,
        Disposition::Push { message, retry } => {
            // Under a once-key (the job's id): a push whose answer was lost
            // may have gone in, and is sent again while the jobs are still
            // held, so a queue that pauses makes no second retry job.
            let window = shared.queue.hold();
            let pushed = persist(shared, "push", || {
                shared
                    .queue
                    .push_once(&message.id, window, vec![message.clone()])
            })
            .await;
            match pushed {
                Ok(_) => {
                    if retry {
                        shared.metrics.retries_scheduled.inc();
                    }
                    Written::Durable
                }
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, "could not push; the jobs will come back");
                    Written::Left
                }
                Err(e) => Written::Refused(e),
            }
        }
        Disposition::DeadLetter { entries, label } => {
            let n = entries.len();
            let written = persist(shared, "dead letter", || {
                shared.queue.dead_letter(entries.clone())
            })
            .await;
            match written {
                Ok(()) => {
                    shared.metrics.dead_letters(label, n);
                    Written::Durable
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not dead-letter; the jobs will come back");
                    Written::Left
                }
            }
        }
        Disposition::Release(after) => {
            for t in tickets {
                if let Err(e) = shared.queue.release(t.handle(), after).await {
                    tracing::warn!(error = %e, "could not hide a job until due; it comes back when its hold ends");
                }
            }
            // Never acked: the queue gives it back when due.
            Written::Left
        }
    }
}

/// Runs `write` until it succeeds, fails for good, or a transient failure
/// (the queue down or paused) has lasted half a hold: past that, the jobs
/// are given back rather than risk their holds running out while held.
async fn persist<T, F, Fut>(shared: &Shared, what: &str, write: F) -> Result<T, QueueError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, QueueError>>,
{
    let give_up = Instant::now() + shared.queue.hold() / 2;
    let mut pause = Duration::from_millis(100);
    let mut tries = 0;
    loop {
        tries += 1;
        match write().await {
            Err(e) if e.is_transient() && Instant::now() + pause < give_up => {
                if tries == 1 {
                    tracing::warn!(error = %e, what, "queue write failed; sending it again while the jobs are held");
                } else {
                    tracing::debug!(error = %e, what, tries, "queue write failed again");
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            done => return done,
        }
    }
}

impl Shared {
    /// How many jobs this worker holds now.
    pub fn held_jobs(&self) -> usize {
        self.settler.held().len()
    }

    /// Requests this worker is waiting on now at one endpoint.
    pub fn in_flight(&self, app_id: &str, endpoint_id: &str) -> usize {
        self.lanes.in_flight(app_id, endpoint_id)
    }

    /// The lane (concurrency limit, pace) of the batch's endpoint, by app and
    /// endpoint id (so it outlives a reload of the app), found without
    /// allocating; idle lanes are dropped as the map grows ([`Lanes`]).
    fn limit(&self, batch: &Batch) -> Arc<Lane> {
        let ep = batch.endpoint();
        self.lanes.get_for(&batch.app.id, ep, &self.metrics)
    }
}

/// Hands `batch` over to a deferred job for its endpoint, which was this
/// `busy` ([`decide::defer`]): once the job is pushed its jobs' parts are
/// settled, so they no longer hold the budget while the endpoint is busy.
async fn defer(shared: &Shared, lane: &Lane, mut batch: Batch, busy: Busy, why: Deferral) {
    if !batch.retain_held() {
        return;
    }
    let now = now_ms();
    let delay = lane.book(&busy, now, rand::random());
    if let Some(deferred) = lane.log_deferral() {
        let pace_ms = busy.pace.map(|p| p.as_millis() as u64);
        tracing::info!(
            app_id = %batch.app.id, endpoint = %batch.endpoint().id, reason = why.label(),
            deferred, waiting_jobs = busy.waiting_jobs, pace_ms, back_in_ms = delay.as_millis() as u64,
            "endpoint busy: deferring its batches to the queue"
        );
    }
    let disposition = decide::defer(&batch, delay, now, shared.queue.max_delay());
    execute(shared, &batch.tickets, disposition).await;
    if batch.tickets.iter().any(|t| !t.is_abandoned()) {
        shared.metrics.defer(why.label());
    }
}

/// Hands `batch` over to a job for its endpoint due in `delay` (its rate
/// limit's next token), as [`defer`] does for a busy endpoint.
async fn defer_for(shared: &Shared, mut batch: Batch, delay: Duration, reason: &'static str) {
    if !batch.retain_held() {
        return;
    }
    let disposition = decide::defer(&batch, delay, now_ms(), shared.queue.max_delay());
    execute(shared, &batch.tickets, disposition).await;
    if batch.tickets.iter().any(|t| !t.is_abandoned()) {
        shared.metrics.defer(reason);
    }
}

/// One attempt of a batch, then what follows from its outcome: its
/// endpoint's circuit, a permit of its lane, then [`attempt`].
///
/// This is the future of a delivery task, and thousands of them can wait
/// for their endpoint's permits at once: it is kept small (a few hundred
/// bytes) by boxing what it awaits only sometimes — the circuit of an
/// endpoint that has one, a deferral — and the attempt once it may go.
/// (Each boxed future is bound to a name before it is awaited: a temporary
/// of the awaiting statement would keep its room in this future's state.)
async fn deliver(shared: Arc<Shared>, batch: Batch) {
    let probe = if crate::health::tracked(batch.endpoint()) {
        let gate = Box::pin(shared.health.gate(&batch));
        match gate.await {
            decide::Gate::Send => false,
            decide::Gate::Probe => true,
            held => {
                let hold = Box::pin(crate::health::hold_back(&shared, batch, held));
                return hold.await;
            }
        }
    } else {
        false
    };
    let waiting = Instant::now();
    let lane = shared.limit(&batch);
    let share = decide::endpoint_share(shared.config.worker.max_held_jobs);
    let permit = match lane.admit(batch.tickets.len(), share).await {
        Admit::Go(permit) => permit,
        Admit::Defer(busy, why) => {
            let deferral = Box::pin(defer(&shared, &lane, batch, busy, why));
            return deferral.await;
        }
    };
    let attempt = Box::pin(attempt(shared, batch, permit, probe, waiting));
    attempt.await;
}

/// The attempt of a batch that holds its endpoint's `permit` (taken after
/// waiting since `waiting`), then what follows from its outcome. Events of
/// jobs abandoned meanwhile (a lost hold) are neither sent nor retried here.
async fn attempt(
    shared: Arc<Shared>,
    mut batch: Batch,
    permit: crate::lane::Permit,
    probe: bool,
    waiting: Instant,
) {
    if waiting.elapsed() > shared.queue.hold() / 3 {
        // Waited for its endpoint past an extension period (or the process
        // was paused): make sure the jobs are still ours before sending.
        let (m, held) = (&*shared.metrics, shared.settler.held());
        settle::confirm(&*shared.queue, m, held, &batch.tickets).await;
    }
    if !batch.retain_held() {
        return;
    }
    if let Some(wait) =
        crate::lane::rate_wait(&*shared.limits, &batch.app.id, batch.endpoint()).await
    {
        // No token: the batch waits in the queue, not here (docs/operations.md).
        permit.unused();
        return defer_for(&shared, batch, wait, "rate").await;
    }
    let sent_ms = now_ms();
    let started = Instant::now();
    let outcome = shared.deliverer.deliver(&batch, sent_ms).await;
    permit.done(matches!(outcome, Outcome::Retry { .. }));
    shared.health.record(&batch, &outcome, probe).await;
    let m = &shared.metrics;
    m.delivery_seconds.observe(started.elapsed().as_secs_f64());
    m.batch_size.observe(batch.events.len() as f64);
    m.request(outcome.label());
    shared.stats.attempt(&batch, &outcome, started.elapsed());
    let now = now_ms();
    if outcome == Outcome::Delivered {
        m.events_delivered.inc_by(batch.events.len() as u64);
        for t in &batch.tickets {
            if let Some(at) = t.enqueued_at_ms {
                m.end_to_end_seconds
                    .observe(now.saturating_sub(at) as f64 / 1000.0);
            }
        }
    }
    if outcome != Outcome::Delivered {
        // A retry job or a dead letter only for jobs still held: one paused
        // past its hold may find them taken by another worker.
        let held = shared.settler.held();
        settle::confirm(&*shared.queue, m, held, &batch.tickets).await;
        if !batch.retain_held() {
            return;
        }
    }
    let ep = batch.endpoint();
    let last_error = match &outcome {
        Outcome::Retry { failure, .. } => Some(failure.reason.clone()),
        Outcome::Delivered | Outcome::Reject { .. } => None,
    };
    let disposition = decide::dispose(
        outcome,
        &batch,
        sent_ms,
        now,
        shared.queue.max_delay(),
        rand::random(),
    );
    shared.stats.disposed(&batch, &disposition);
    match &disposition {
        Disposition::Push { message, .. } => tracing::info!(
            app_id = %batch.app.id, endpoint = %ep.id, attempt = batch.attempt,
            reason = last_error.as_deref().unwrap_or_default(),
            retry_in_ms = message.delay.as_millis() as u64, "delivery failed, retrying"
        ),
        Disposition::DeadLetter { entries, .. } => tracing::warn!(
            app_id = %batch.app.id, endpoint = %ep.id, attempts = batch.attempt,
            reason = %entries.first().map(|e| e.reason.as_str()).unwrap_or_default(),
            "dead-lettering a batch"
        ),
        Disposition::Ack | Disposition::Release(_) => {}
    }
    let written = match write(&shared, &batch.tickets, disposition).await {
        Written::Refused(e) => {
            // Sent again it would be refused again, and the whole job would
            // come back to every endpoint: this endpoint's part goes to the DLQ.
            tracing::warn!(
                app_id = %batch.app.id, endpoint = %ep.id, events = batch.events.len(), error = %e,
                "the queue refused the retry job for good; dead-lettering its events"
            );
            let refused = decide::refused(&batch, &e.to_string(), now_ms());
            write(&shared, &batch.tickets, refused).await
        }
        w => w,
    };
    settle_all(&batch.tickets, &written);
}
