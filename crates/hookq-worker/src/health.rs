//! Endpoint health in the worker: the circuit breaker per endpoint and
//! disabling an endpoint that fails for too long, with its notification.
//!
//! ```text
//! deliver(batch) ── gate ──▶ Send | Probe (claimed) ──▶ request ── record(outcome) ──▶ counts
//!                     │                                               (in memory)      │ ≤ 1/s per endpoint
//!                     ├─ Defer(until the probe may go) ─▶ retry job, same attempt     ▼ with traffic
//!                     └─ Disabled ─▶ DLQ "endpoint disabled"         sync: counts → store → record
//!                                                                     decide::health_step → transition
//! ```
//!
//! Only endpoints with `circuit_breaker.enabled` or a `disable_after_ms`
//! are tracked; for the others [`Health::gate`] and [`Health::record`]
//! return at once. For a tracked one, the healthy path costs no queue
//! round trip: a batch is decided from the last record this worker learnt
//! ([`decide::gate`]), and outcomes are counted in memory. A background
//! task syncs each endpoint that had traffic at most once every
//! [`SYNC_EVERY`] (one [`HealthStore::sync`]: the counts go in, the record
//! every worker left comes back) — sooner, at its next 250 ms tick, when its
//! own counts alone would open the circuit, and also without traffic while
//! the endpoint is not healthy — asks [`decide::health_step`] whether the
//! record calls for a change, and makes it with a compare-and-set
//! ([`HealthStore::transition`]): of the workers that see the same change,
//! one makes it, and only that one logs it, counts it, and sends the
//! notification. The exceptions, all off the healthy path: an endpoint this
//! worker has no record of yet, or whose open or disabled record is older
//! than [`STALE`], is synced before its batch is decided (once, however
//! many batches wait); an open circuit whose open time is over takes the
//! probe claim ([`HealthStore::claim_probe`]), and the probe's answer is
//! written at once ([`decide::probe_result`]).
//!
//! Where the records live is the queue driver's ([`hookq_queue::health`]):
//! on Redis every worker shares them and they outlive restarts; on memory
//! and SQS each worker keeps its own. A sync that fails drops its counts
//! (the breaker then decides from fewer requests) and the worker keeps
//! deciding from what it knew.

use crate::batch::Batch;
use crate::decide::{self, Disposition, Gate};
use crate::metrics::{HealthMetrics, Metrics};
use crate::outcome::Outcome;
use crate::worker::{self, Shared};
use hookq_core::config::{BreakerSettings, Notify};
use hookq_core::envelope::{self, Signer};
use hookq_core::{Config, Endpoint, now_ms};
use hookq_queue::health::{Circuit, EndpointKey, HealthRecord, HealthStore, Outcomes, Transition};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// How often, at most, one endpoint's counts are synced.
pub const SYNC_EVERY: Duration = Duration::from_secs(1);
/// An open or disabled record older than this is synced again before a
/// batch is decided from it (a closed one is used however old: the
/// healthy path never waits for the store).
pub const STALE: Duration = Duration::from_secs(3);
/// An endpoint without traffic for this long is forgotten (its gauge
/// series dropped); its record stays in the store.
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// How often the disabled endpoints are counted from the store.
const COUNT_EVERY: Duration = Duration::from_secs(10);
/// After a lost probe claim, this worker does not ask again for so long.
const CLAIM_PAUSE: Duration = Duration::from_millis(500);
/// Attempts to deliver a notification (1, 2, 4, 8 s apart).
const NOTIFY_ATTEMPTS: u32 = 5;

/// What one endpoint's tracking needs of its config.
#[derive(Clone)]
struct Policy {
    breaker: BreakerSettings,
    disable_after: Option<Duration>,
    request_timeout: Duration,
    target: String,
}

impl Policy {
    fn of(ep: &Endpoint) -> Self {
        Self {
            breaker: ep.circuit_breaker,
            disable_after: ep.disable_after,
            request_timeout: ep.request_timeout,
            target: ep.target.describe(),
        }
    }

    fn window_ms(&self) -> u64 {
        self.breaker
            .window
            .as_millis()
            .try_into()
            .unwrap_or(u64::MAX)
    }
}

/// Whether `ep` is tracked at all.
pub(crate) fn tracked(ep: &Endpoint) -> bool {
    ep.circuit_breaker.enabled || ep.disable_after.is_some()
}

struct Local {
    policy: Policy,
    /// The last record learnt, and when.
    known: Option<(HealthRecord, Instant)>,
    /// Outcomes since the last sync.
    delta: Outcomes,
    /// Traffic (a batch decided or an outcome) since the last sync.
    touched: bool,
    last_traffic: Instant,
    last_sync: Option<Instant>,
    claim_lost: Option<Instant>,
}

impl Local {
    /// Whether this worker's own counts since the last sync would open a
    /// closed circuit by themselves: then it syncs at the next tick rather
    /// than up to a second later, so a dead endpoint gets fewer requests
    /// before its circuit opens.
    fn would_open(&self) -> bool {
        let b = &self.policy.breaker;
        let (ok, failed) = (self.delta.ok, self.delta.failed);
        let closed = self
            .known
            .as_ref()
            .is_none_or(|(r, _)| r.state == Circuit::Closed);
        b.enabled
            && closed
            && failed >= b.min_requests
            && failed as f64 >= b.failure_ratio * (ok + failed) as f64
    }
}

struct Entry {
    key: EndpointKey,
    local: Mutex<Local>,
    /// Held while syncing, so that batches finding no fresh record wait
    /// for one sync rather than each making its own.
    syncing: tokio::sync::Mutex<()>,
}

impl Entry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A worker's view of its endpoints' health; see the module docs.
pub struct Health {
    store: Arc<dyn HealthStore>,
    metrics: Arc<Metrics>,
    notifier: Option<Arc<Notifier>>,
    entries: Mutex<HashMap<EndpointKey, Arc<Entry>>>,
    started: std::sync::Once,
}

impl Health {
    /// Health kept in `store` (the queue's, [`hookq_queue::QueueConsume::health_store`]),
    /// announcing disabled endpoints to `notify`.
    pub fn new(
        store: Arc<dyn HealthStore>,
        metrics: Arc<Metrics>,
        notify: Option<Notify>,
    ) -> anyhow::Result<Self> {
        let notifier = match notify {
            Some(n) => Some(Arc::new(Notifier::new(n)?)),
            None => None,
        };
        Ok(Self {
            store,
            metrics,
            notifier,
            entries: Mutex::new(HashMap::new()),
            started: std::sync::Once::new(),
        })
    }

    /// Starts the sync task now when `config` tracks any endpoint (so the
    /// disabled count is exported from the start); otherwise it starts
    /// with the first tracked batch.
    pub fn start_for(self: &Arc<Self>, config: &Config) {
        let w = &config.webhooks;
        let any = w.circuit_breaker.enabled
            || w.disable_after.is_some()
            || config.apps.iter().flat_map(|a| &a.endpoints).any(tracked);
        if any {
            self.start();
        }
    }

    fn start(self: &Arc<Self>) {
        self.started.call_once(|| {
            tokio::spawn(run_sync(Arc::downgrade(self)));
        });
    }

    fn entry(&self, app_id: &str, ep: &Endpoint) -> Arc<Entry> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let key = EndpointKey::new(app_id, ep.id.as_str());
        let entry = entries.entry(key.clone()).or_insert_with(|| {
            Arc::new(Entry {
                key,
                local: Mutex::new(Local {
                    policy: Policy::of(ep),
                    known: None,
                    delta: Outcomes::default(),
                    touched: false,
                    last_traffic: Instant::now(),
                    last_sync: None,
                    claim_lost: None,
                }),
                syncing: tokio::sync::Mutex::new(()),
            })
        });
        entry.clone()
    }

    /// The circuit of `endpoint` of app `app_id` as this worker last learnt
    /// it from the store (`closed`, `open`, `disabled`), for the admin API;
    /// `None` when it has no record of it (the endpoint has neither a
    /// circuit breaker nor `disable_after_ms`, or no batch went to it yet).
    pub fn circuit(&self, app_id: &str, endpoint: &str) -> Option<&'static str> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let entry = entries.get(&EndpointKey::new(app_id, endpoint))?;
        let l = entry.lock();
        l.known.as_ref().map(|(r, _)| r.state.as_str())
    }

    /// What `batch` does at its endpoint's circuit ([`decide::gate`]):
    /// `Send` at once for an untracked endpoint; `Probe` only when this
    /// worker holds the probe claim.
    pub async fn gate(self: &Arc<Self>, batch: &Batch) -> Gate {
        let ep = batch.endpoint();
        if !tracked(ep) {
            return Gate::Send;
        }
        self.start();
        let entry = self.entry(&batch.app.id, ep);
        let (known, policy) = {
            let mut l = entry.lock();
            // A reload may have changed them (the target's text is kept
            // from the first batch: no allocation per batch).
            l.policy.breaker = ep.circuit_breaker;
            l.policy.disable_after = ep.disable_after;
            l.policy.request_timeout = ep.request_timeout;
            l.touched = true;
            l.last_traffic = Instant::now();
            let usable = l
                .known
                .as_ref()
                .filter(|(r, at)| r.state == Circuit::Closed || at.elapsed() < STALE);
            (usable.map(|(r, _)| r.clone()), l.policy.clone())
        };
        let record = match known {
            Some(r) => r,
            None => self.sync_fresh(&entry).await,
        };
        let gate = decide::gate(&record, &policy.breaker, now_ms(), rand::random());
        if gate != Gate::Probe {
            return gate;
        }
        if entry
            .lock()
            .claim_lost
            .is_some_and(|t| t.elapsed() < CLAIM_PAUSE)
        {
            return decide::probe_taken(rand::random());
        }
        let ttl = policy.request_timeout + Duration::from_secs(5);
        match self.store.claim_probe(&entry.key, ttl).await {
            Ok(true) => {
                tracing::info!(
                    app_id = %entry.key.app_id, endpoint = %entry.key.endpoint,
                    "circuit half-open: sending one probe request"
                );
                self.show(&entry.key, 2);
                Gate::Probe
            }
            Ok(false) => {
                entry.lock().claim_lost = Some(Instant::now());
                decide::probe_taken(rand::random())
            }
            Err(e) => {
                tracing::debug!(error = %e, "could not claim the probe");
                decide::probe_taken(rand::random())
            }
        }
    }

    /// Counts `outcome` of `batch` (a retryable failure fails, a delivery
    /// succeeds, a rejection counts as neither: the endpoint answered); a
    /// probe's outcome is written at once ([`decide::probe_result`]).
    pub async fn record(&self, batch: &Batch, outcome: &Outcome, probe: bool) {
        let ep = batch.endpoint();
        if !tracked(ep) {
            return;
        }
        let entry = self.entry(&batch.app.id, ep);
        let now = now_ms();
        let (version, policy) = {
            let mut l = entry.lock();
            match outcome {
                Outcome::Delivered => l.delta.success(now),
                Outcome::Retry { failure, .. } => l.delta.failure(now, &failure.reason),
                Outcome::Reject { .. } => {}
            }
            l.touched = true;
            (
                l.known.as_ref().map_or(0, |(r, _)| r.version),
                l.policy.clone(),
            )
        };
        if probe {
            let t = decide::probe_result(outcome, &policy.breaker, now);
            let _guard = entry.syncing.lock().await;
            if !self.make(&entry, version, t, &policy).await {
                // A transition came between (this worker's record was a
                // sync old): the probe's answer still counts if the
                // circuit is still open.
                if let Ok(r) = self
                    .store
                    .sync(&entry.key, &Outcomes::default(), now, 1)
                    .await
                    && r.state == Circuit::Open
                {
                    self.make(&entry, r.version, t, &policy).await;
                }
            }
        }
    }

    /// Syncs `entry` now (or waits for the sync on its way) and answers
    /// the record learnt; a default, closed one when the store is away.
    async fn sync_fresh(&self, entry: &Entry) -> HealthRecord {
        let _guard = entry.syncing.lock().await;
        if let Some((r, at)) = &entry.lock().known
            && at.elapsed() < STALE
        {
            return r.clone();
        }
        self.sync(entry).await;
        entry
            .lock()
            .known
            .as_ref()
            .map(|(r, _)| r.clone())
            .unwrap_or_default()
    }

    /// One sync of `entry` (the caller holds `entry.syncing`): its counts
    /// in, the record back, any transition it calls for made.
    async fn sync(&self, entry: &Entry) {
        let (delta, policy) = {
            let mut l = entry.lock();
            l.touched = false;
            l.last_sync = Some(Instant::now());
            (std::mem::take(&mut l.delta), l.policy.clone())
        };
        let now = now_ms();
        let record = match self
            .store
            .sync(&entry.key, &delta, now, policy.window_ms())
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, app_id = %entry.key.app_id, endpoint = %entry.key.endpoint,
                    "could not sync endpoint health; deciding from what this worker knew");
                return;
            }
        };
        let step = decide::health_step(&record, &policy.breaker, policy.disable_after, now);
        let version = record.version;
        self.learn(entry, record);
        if let Some(t) = step {
            self.make(entry, version, t, &policy).await;
        }
    }

    /// Makes transition `t` from `version`; the one worker whose write
    /// went in logs it, counts it and, for a disabling, notifies. Answers
    /// whether this worker's write went in.
    async fn make(&self, entry: &Entry, version: u64, t: Transition, policy: &Policy) -> bool {
        let key = &entry.key;
        match self.store.transition(key, version, t).await {
            Ok(Some(record)) => {
                self.announce(key, &record, t, policy);
                self.learn(entry, record);
                true
            }
            // Another worker changed it first: learn what at the next sync.
            Ok(None) => {
                entry.lock().touched = true;
                false
            }
            Err(e) => {
                tracing::warn!(
                    error = %e, app_id = %key.app_id, endpoint = %key.endpoint,
                    "could not write the endpoint's circuit"
                );
                false
            }
        }
    }

    fn learn(&self, entry: &Entry, record: HealthRecord) {
        let value = match record.state {
            Circuit::Closed => 0,
            Circuit::Open if now_ms() >= record.open_until_ms => 2,
            Circuit::Open => 1,
            Circuit::Disabled => 3,
        };
        self.show(&entry.key, value);
        let disabled_here = record.state == Circuit::Disabled;
        entry.lock().known = Some((record, Instant::now()));
        if disabled_here && !self.store.shared() {
            self.count_local_disabled();
        }
    }

    fn show(&self, key: &EndpointKey, value: i64) {
        self.metrics
            .health
            .circuit_state
            .get_or_create(&HealthMetrics::labels(&key.app_id, &key.endpoint))
            .set(value);
    }

    fn count_local_disabled(&self) {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let n = entries
            .values()
            .filter(|e| {
                e.lock()
                    .known
                    .as_ref()
                    .is_some_and(|(r, _)| r.state == Circuit::Disabled)
            })
            .count();
        self.metrics.health.endpoints_disabled.set(n as i64);
    }

    fn announce(&self, key: &EndpointKey, record: &HealthRecord, t: Transition, policy: &Policy) {
        let (app_id, endpoint) = (&key.app_id, &key.endpoint);
        let last_error = record.last_error.as_deref().unwrap_or_default();
        match t {
            Transition::Open { until_ms } => {
                self.metrics.health.transition("open");
                tracing::warn!(
                    %app_id, %endpoint, last_error, open_for_ms = until_ms.saturating_sub(now_ms()),
                    "circuit opened: the endpoint's batches wait in the queue until a probe succeeds"
                );
            }
            Transition::Close { .. } => {
                self.metrics.health.transition("closed");
                tracing::info!(%app_id, %endpoint, "circuit closed: the probe succeeded");
            }
            Transition::Disable { at_ms } => {
                self.metrics.health.transition("disabled");
                // Counted at once here; the next count from the store corrects it.
                self.metrics.health.endpoints_disabled.inc();
                let failing_for_ms = record.failing_since_ms.map(|s| at_ms.saturating_sub(s));
                tracing::error!(
                    %app_id, %endpoint, last_error, failing_for_ms,
                    "endpoint disabled: it failed without a success for disable_after; \
                     its jobs are dead-lettered until `hookq endpoints enable`"
                );
                if let Some(n) = &self.notifier {
                    let event = serde_json::json!({
                        "name": "endpoint_disabled",
                        "app_id": app_id,
                        "endpoint": endpoint,
                        "target": policy.target,
                        "failing_since_ms": record.failing_since_ms,
                        "disabled_at_ms": at_ms,
                        "last_success_ms": record.last_success_ms,
                        "last_error": record.last_error,
                    });
                    tokio::spawn(n.clone().send(event));
                }
            }
        }
    }
}

/// The sync task: every 250 ms, syncs each endpoint whose last sync is
/// [`SYNC_EVERY`] old and that had traffic since or is not closed (so an
/// open or disabled one learns of a probe's answer or an `enable` within
/// about a second, traffic or not); counts the open circuits; forgets endpoints idle
/// for [`FORGET_AFTER`]; counts the disabled endpoints of a shared store
/// every [`COUNT_EVERY`]. Ends when the worker's [`Health`] is dropped.
async fn run_sync(health: Weak<Health>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut counted: Option<Instant> = None;
    loop {
        tick.tick().await;
        let Some(h) = health.upgrade() else { return };
        let due: Vec<Arc<Entry>> = {
            let mut entries = h.entries.lock().unwrap_or_else(|p| p.into_inner());
            entries.retain(|key, e| {
                let idle = e.lock().last_traffic.elapsed() > FORGET_AFTER;
                if idle {
                    let labels = HealthMetrics::labels(&key.app_id, &key.endpoint);
                    h.metrics.health.circuit_state.remove(&labels);
                }
                !idle
            });
            entries
                .values()
                .filter(|e| {
                    let l = e.lock();
                    let unhealthy = l
                        .known
                        .as_ref()
                        .is_some_and(|(r, _)| r.state != Circuit::Closed);
                    (l.touched || !l.delta.is_empty() || unhealthy)
                        && (l.last_sync.is_none_or(|t| t.elapsed() >= SYNC_EVERY) || l.would_open())
                })
                .cloned()
                .collect()
        };
        for e in due {
            if let Ok(_guard) = e.syncing.try_lock() {
                h.sync(&e).await;
            }
        }
        let open = {
            let entries = h.entries.lock().unwrap_or_else(|p| p.into_inner());
            entries
                .values()
                .filter(|e| {
                    e.lock()
                        .known
                        .as_ref()
                        .is_some_and(|(r, _)| r.state == Circuit::Open)
                })
                .count()
        };
        h.metrics.health.endpoints_open.set(open as i64);
        if h.store.shared() && counted.is_none_or(|t| t.elapsed() >= COUNT_EVERY) {
            counted = Some(Instant::now());
            match h.store.disabled_count().await {
                Ok(n) => {
                    h.metrics.health.endpoints_disabled.set(n as i64);
                }
                Err(e) => tracing::debug!(error = %e, "could not count the disabled endpoints"),
            }
        }
    }
}

/// Carries out a gate that holds `batch` back: deferred to a job for its
/// endpoint, due when the probe may go (the deferral path of a busy
/// endpoint, [`decide::defer`]: the same attempt, the time deferred not
/// counted against the retry budget), or dead-lettered for a disabled
/// endpoint ([`decide::endpoint_disabled`]).
pub(crate) async fn hold_back(shared: &Shared, mut batch: Batch, gate: Gate) {
    if !batch.retain_held() {
        return;
    }
    let now = now_ms();
    let disposition: Disposition = match gate {
        Gate::Defer(delay) => decide::defer(&batch, delay, now, shared.queue.max_delay()),
        Gate::Disabled => decide::endpoint_disabled(&batch, now),
        // Not a hold-back; the caller sends these.
        Gate::Send | Gate::Probe => return,
    };
    worker::execute(shared, &batch.tickets, disposition).await;
    if matches!(gate, Gate::Defer(_)) && batch.tickets.iter().any(|t| !t.is_abandoned()) {
        shared.metrics.defer("circuit_open");
    }
}

/// Sends the operator's notification ([`Notify`]), signed like a webhook.
struct Notifier {
    notify: Notify,
    client: reqwest::Client,
}

impl Notifier {
    fn new(notify: Notify) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self { notify, client })
    }

    /// POSTs `event` in a Pusher envelope, signed afresh per attempt (the
    /// same `webhook-id` for all), up to [`NOTIFY_ATTEMPTS`] times.
    async fn send(self: Arc<Self>, event: serde_json::Value) {
        let url = hookq_core::endpoint::redact_url(&self.notify.url);
        let webhook_id = hookq_core::new_id("notify");
        let encoded = event.to_string().into_bytes();
        let mut pause = Duration::from_secs(1);
        for attempt in 1..=NOTIFY_ATTEMPTS {
            let time_ms = now_ms();
            let body = envelope::body(time_ms, [encoded.as_slice()]);
            let signer = Signer {
                app_key: &self.notify.key,
                app_secret: &self.notify.secret,
                signing_secrets: &self.notify.signing_secrets,
                webhook_id: &webhook_id,
                time_ms,
            };
            let mut request = self.client.post(&self.notify.url);
            for (name, value) in signer.headers(&body) {
                request = request.header(name, value);
            }
            match request.body(body).send().await {
                Ok(r) if r.status().is_success() => {
                    tracing::info!(%url, attempt, "sent the endpoint-disabled notification");
                    return;
                }
                Ok(r) => {
                    tracing::warn!(%url, attempt, status = r.status().as_u16(), "the notification was refused")
                }
                // Without the URL, which may hold a secret.
                Err(e) => {
                    tracing::warn!(%url, attempt, error = %e.without_url(), "could not send the notification")
                }
            }
            if attempt < NOTIFY_ATTEMPTS {
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
        }
        tracing::error!(%url, "gave up sending the endpoint-disabled notification");
    }
}
