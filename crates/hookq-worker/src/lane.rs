//! Per-endpoint lanes: what a worker keeps for each (app, endpoint) it
//! delivers to — the concurrency semaphore of `max_concurrency` permits, how
//! many batches (and budget slots) wait for a permit, the endpoint's pace,
//! and until when its deferred batches are booked.
//!
//! A batch that finds a permit free takes it at once. One that would have to
//! wait joins the lane's waiting count; [`decide::deferral`] says whether it
//! may wait, or whether it is handed over to a deferred job instead (the
//! worker pushes it, see [`crate::worker`]), so that one busy endpoint never
//! keeps more than its share of the worker's held-jobs budget waiting. A
//! [`Permit`] measures its request: the time from taking it to dropping it
//! (the worker drops it when the answer came) feeds the lane's pace, a
//! moving average that the rules use.
//!
//! [`Lanes`] finds a lane by app and endpoint id without allocating, so a
//! lane outlives a reload of its app; a changed `max_concurrency` gets a new
//! lane. Lanes no delivery holds are dropped when the map has doubled since
//! the last sweep, so reloads that change endpoint ids and the apps of a
//! database registry coming and going do not grow it without bound: it
//! holds at most `max(MIN_SWEEP, 2 × lanes in use)` lanes.
//!
//! A lane of an endpoint with `adaptive_concurrency` starts at one permit
//! and lets [`Aimd`] move its limit between 1 and `max_concurrency` as its
//! requests answer: one more while their latency holds near its average,
//! 10 % fewer when it rises or they fail with a retryable outcome (429,
//! 5xx, timeouts). Permits are added to the semaphore as the limit grows;
//! as it shrinks, free ones are forgotten at once and those in use when
//! they come back. The limit is exported as `hookq_endpoint_concurrency_limit`.

use crate::decide::{self, Busy, Deferral};
use hookq_core::Endpoint;
use hookq_queue::limits::{Limits, Token};
use prometheus_client::metrics::gauge::Gauge;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The map is swept (idle lanes dropped) once it holds this many lanes, and
/// then whenever it has doubled since the last sweep.
const MIN_SWEEP: usize = 256;

/// How often, at most, one endpoint's deferrals are logged (the count of
/// those in between goes into the next line).
const LOG_EVERY: Duration = Duration::from_secs(10);

/// One endpoint's limits and pace; see the module docs.
pub struct Lane {
    permits: Arc<Semaphore>,
    max_concurrency: usize,
    waiting_jobs: AtomicUsize,
    waiting_batches: AtomicUsize,
    /// Moving average of a request's duration, µs; 0 until one ended.
    pace_us: AtomicU64,
    /// Until when (Unix ms) this worker's deferred batches are booked.
    booked_until_ms: AtomicU64,
    log: Mutex<DeferLog>,
    /// With adaptive concurrency: the limit's state, and its gauge.
    adaptive: Option<Adaptive>,
    /// Requests in flight (permits held).
    in_flight: AtomicUsize,
    /// Since when the lane exists: the clock of [`Aimd`]'s windows.
    born: Instant,
}

/// An adaptive lane's limit and how many permits exist.
struct Adaptive {
    state: Mutex<AdaptiveState>,
    gauge: Gauge,
}

struct AdaptiveState {
    aimd: Aimd,
    /// Permits in the semaphore, free and held: what the limit was, until
    /// the permits of a lowered limit have come back and been forgotten.
    issued: usize,
}

#[derive(Default)]
struct DeferLog {
    last: Option<Instant>,
    since: u64,
}

/// What [`Lane::admit`] decided.
pub enum Admit {
    /// The batch holds a permit: send it.
    Go(Permit),
    /// Hand it over to a deferred job: its endpoint was this busy.
    Defer(Busy, Deferral),
}

impl Lane {
    fn new(max_concurrency: usize) -> Self {
        Self::with(max_concurrency, None)
    }

    /// A lane whose limit adapts (starting at one) when `gauge` is given.
    fn with(max_concurrency: usize, gauge: Option<Gauge>) -> Self {
        let max_concurrency = max_concurrency.max(1);
        let adaptive = gauge.map(|gauge| {
            gauge.set(1);
            Adaptive {
                state: Mutex::new(AdaptiveState {
                    aimd: Aimd::new(max_concurrency),
                    issued: 1,
                }),
                gauge,
            }
        });
        let start = if adaptive.is_some() {
            1
        } else {
            max_concurrency
        };
        Self {
            adaptive,
            in_flight: AtomicUsize::new(0),
            born: Instant::now(),
            permits: Arc::new(Semaphore::new(start)),
            max_concurrency,
            waiting_jobs: AtomicUsize::new(0),
            waiting_batches: AtomicUsize::new(0),
            pace_us: AtomicU64::new(0),
            booked_until_ms: AtomicU64::new(0),
            log: Mutex::new(DeferLog::default()),
        }
    }

    /// A permit for a batch holding `jobs` budget slots: at once when one is
    /// free; otherwise after waiting, unless [`decide::deferral`] says the
    /// batch may not wait (the waiting batches of this endpoint would hold
    /// more than `share` slots, or its pace says the wait is too long).
    pub async fn admit(self: &Arc<Self>, jobs: usize, share: usize) -> Admit {
        if let Ok(p) = self.permits.clone().try_acquire_owned() {
            return Admit::Go(self.permit(Some(p)));
        }
        // Counted before deciding, so that batches deciding at once cannot
        // all squeeze into the same room.
        let waiting = Waiting::enter(self, jobs);
        let busy = Busy {
            waiting_jobs: waiting.jobs_before,
            waiting_batches: waiting.batches_before,
            max_concurrency: self.limit(),
            pace: self.pace(),
        };
        if let Some(why) = decide::deferral(&busy, jobs, share) {
            return Admit::Defer(busy, why);
        }
        // The semaphore is never closed; a permit that is not there limits nothing.
        let p = self.permits.clone().acquire_owned().await.ok();
        drop(waiting);
        Admit::Go(self.permit(p))
    }

    fn permit(self: &Arc<Self>, permit: Option<OwnedSemaphorePermit>) -> Permit {
        let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
        Permit {
            permit,
            lane: self.clone(),
            since: Instant::now(),
            at_limit: before + 1 >= self.limit(),
            failed: false,
            unused: false,
        }
    }

    /// The in-flight limit now: `max_concurrency`, or the adaptive one.
    pub fn limit(&self) -> usize {
        match &self.adaptive {
            None => self.max_concurrency,
            Some(a) => a.state.lock().unwrap_or_else(|p| p.into_inner()).aimd.limit,
        }
    }

    /// Feeds a finished request to the adaptive limit and resizes the
    /// semaphore to it; `permit` is the request's, forgotten when the limit
    /// was lowered below the permits issued.
    /// `answer` is (latency, failed, at limit); none for a permit unused.
    fn adapt(&self, answer: Option<(Duration, bool, bool)>, permit: Option<OwnedSemaphorePermit>) {
        let Some(a) = &self.adaptive else { return };
        let mut st = a.state.lock().unwrap_or_else(|p| p.into_inner());
        let limit = match answer {
            Some((took, failed, at_limit)) => {
                st.aimd.observe(took, failed, at_limit, self.born.elapsed())
            }
            None => st.aimd.limit,
        };
        if let Some(p) = permit
            && st.issued > limit
        {
            p.forget();
            st.issued -= 1;
        }
        if st.issued > limit {
            st.issued -= self.permits.forget_permits(st.issued - limit);
        } else if st.issued < limit {
            self.permits.add_permits(limit - st.issued);
            st.issued = limit;
        }
        a.gauge.set(limit as i64);
    }

    /// How long one request of this endpoint takes lately; none before one ended.
    pub fn pace(&self) -> Option<Duration> {
        match self.pace_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    fn observe(&self, took: Duration) {
        let sample = (took.as_micros() as u64).max(1);
        // A lost update under contention only drops one sample.
        let old = self.pace_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            old - old / 4 + sample / 4
        };
        self.pace_us.store(new.max(1), Ordering::Relaxed);
    }

    /// Books a slot for a batch deferred at `now_ms` from an endpoint this
    /// `busy` ([`decide::defer_until`]) and returns how long from now it is.
    pub fn book(&self, busy: &Busy, now_ms: u64, jitter: f64) -> Duration {
        let booked = self.booked_until_ms.load(Ordering::Relaxed);
        let at = decide::defer_until(busy, booked, now_ms, jitter);
        self.booked_until_ms.fetch_max(at, Ordering::Relaxed);
        Duration::from_millis(at.saturating_sub(now_ms))
    }

    /// Counts a deferral; answers how many there were since the last line
    /// when it is time to log one (at most every `LOG_EVERY`).
    pub fn log_deferral(&self) -> Option<u64> {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.since += 1;
        if log.last.is_some_and(|t| t.elapsed() < LOG_EVERY) {
            return None;
        }
        log.last = Some(Instant::now());
        Some(std::mem::take(&mut log.since))
    }

    /// Parts (budget slots) held by batches waiting for a permit.
    pub fn waiting_jobs(&self) -> usize {
        self.waiting_jobs.load(Ordering::Relaxed)
    }
}

/// A batch counted as waiting for its lane until dropped.
struct Waiting<'a> {
    lane: &'a Lane,
    jobs: usize,
    jobs_before: usize,
    batches_before: usize,
}

impl<'a> Waiting<'a> {
    fn enter(lane: &'a Lane, jobs: usize) -> Self {
        Self {
            lane,
            jobs,
            jobs_before: lane.waiting_jobs.fetch_add(jobs, Ordering::AcqRel),
            batches_before: lane.waiting_batches.fetch_add(1, Ordering::AcqRel),
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.lane
            .waiting_jobs
            .fetch_sub(self.jobs, Ordering::AcqRel);
        self.lane.waiting_batches.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One request's place at its endpoint; dropping it when the answer came
/// frees the place and records how long the request took (and, for an
/// adaptive lane, whether it failed: [`Permit::done`]).
pub struct Permit {
    permit: Option<OwnedSemaphorePermit>,
    lane: Arc<Lane>,
    since: Instant,
    /// The lane was at its limit when this request started.
    at_limit: bool,
    failed: bool,
    /// Given back without a request: nothing to learn from it.
    unused: bool,
}

impl Permit {
    /// Ends the request; `failed` when its outcome says the endpoint is
    /// overloaded or away (a retryable failure: 429, 5xx, a timeout), which
    /// lowers an adaptive limit.
    pub fn done(mut self, failed: bool) {
        self.failed = failed;
    }

    /// Gives the place back without having sent (the batch was deferred):
    /// neither the pace nor an adaptive limit learns from it.
    pub fn unused(mut self) {
        self.unused = true;
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let took = self.since.elapsed();
        self.lane.in_flight.fetch_sub(1, Ordering::AcqRel);
        let permit = self.permit.take();
        if self.unused {
            self.lane.adapt(None, permit);
            return;
        }
        self.lane.observe(took);
        self.lane
            .adapt(Some((took, self.failed, self.at_limit)), permit);
    }
}

/// How much a window's mean latency may pass the long-run average before
/// the limit is lowered: 30 %.
pub const LATENCY_TOLERANCE: f64 = 0.3;
/// What a lowered limit is multiplied by.
pub const DECREASE_RATIO: f64 = 0.9;
/// The weight of the newest window in the long-run average latency when
/// it was faster than the average.
pub const EWMA_ALPHA: f64 = 0.4;
/// … and when it was slower: the average follows a rise slowly, so that the
/// latency a too-high limit causes does not become the norm (with one
/// weight for both, a tolerance of 50 % let the simulated receiver's limit
/// run away to the maximum), yet an endpoint that became slower for good
/// is learnt within some twenty windows.
pub const EWMA_ALPHA_UP: f64 = 0.1;

/// Adaptive concurrency's decision, as Vector's adaptive request
/// concurrency makes it: additive increase, multiplicative decrease, in
/// windows of about one request's time. Each answer is recorded into the
/// current window (its latency; whether it failed; whether the lane was at
/// its limit when it started). When the window has lasted as long as the
/// long-run average latency, it is judged:
///
/// - a failure in it, or a mean latency more than [`LATENCY_TOLERANCE`]
///   above the long-run average: the limit × [`DECREASE_RATIO`] (at least 1);
/// - otherwise, if the limit was reached in it: one more (at most `max`);
/// - then the window's mean joins the long-run average ([`EWMA_ALPHA`],
///   [`EWMA_ALPHA_UP`]).
///
/// A limit never reached is not raised: a light load teaches nothing about
/// more concurrency.
#[derive(Debug, Clone)]
pub struct Aimd {
    /// The limit now.
    pub limit: usize,
    /// The most it may be (`max_concurrency`).
    pub max: usize,
    /// Long-run average latency over past windows, µs; 0 before the first.
    pub past_us: f64,
    window_start: Duration,
    window_sum_us: f64,
    window_n: u32,
    reached: bool,
    failed: bool,
}

impl Aimd {
    /// Starts at one, up to `max`.
    pub fn new(max: usize) -> Self {
        Self {
            limit: 1,
            max: max.max(1),
            past_us: 0.0,
            window_start: Duration::ZERO,
            window_sum_us: 0.0,
            window_n: 0,
            reached: false,
            failed: false,
        }
    }

    /// Records an answer that took `rtt` (`failed`: retryable failure;
    /// `at_limit`: the lane was full when it started), `now` on the lane's
    /// clock; returns the limit, judged anew when a window ended.
    pub fn observe(&mut self, rtt: Duration, failed: bool, at_limit: bool, now: Duration) -> usize {
        let us = rtt.as_micros() as f64;
        self.window_sum_us += us;
        self.window_n += 1;
        self.reached |= at_limit;
        self.failed |= failed;
        let mean = self.window_sum_us / f64::from(self.window_n);
        let span = Duration::from_micros(self.past_us.max(mean) as u64);
        if now.saturating_sub(self.window_start) < span && self.past_us > 0.0 {
            return self.limit;
        }
        let slow = self.past_us > 0.0 && mean > self.past_us * (1.0 + LATENCY_TOLERANCE);
        if self.failed || slow {
            self.limit = ((self.limit as f64 * DECREASE_RATIO) as usize).max(1);
        } else if self.reached {
            self.limit = (self.limit + 1).min(self.max);
        }
        let alpha = if mean < self.past_us {
            EWMA_ALPHA
        } else {
            EWMA_ALPHA_UP
        };
        self.past_us = if self.past_us == 0.0 {
            mean
        } else {
            self.past_us * (1.0 - alpha) + mean * alpha
        };
        self.window_start = now;
        self.window_sum_us = 0.0;
        self.window_n = 0;
        self.reached = false;
        self.failed = false;
        self.limit
    }
}

/// The lanes of every endpoint, by app id and endpoint id.
#[derive(Default)]
pub struct Lanes(Mutex<Map>);

#[derive(Default)]
struct Map {
    by_app: HashMap<String, HashMap<String, Arc<Lane>>>,
    len: usize,
    sweep_at: usize,
}

impl Map {
    /// Drops idle lanes once the map has doubled since the last sweep (see
    /// the module docs); the lane just handed out is held by its caller.
    fn sweep(&mut self) {
        if self.len >= self.sweep_at.max(MIN_SWEEP) {
            // Only the map holds an idle lane.
            self.by_app.retain(|_, by_ep| {
                by_ep.retain(|_, l| Arc::strong_count(l) > 1);
                !by_ep.is_empty()
            });
            self.len = self.by_app.values().map(HashMap::len).sum();
            self.sweep_at = self.len * 2;
        }
    }
}

impl Lanes {
    /// The lane of endpoint `endpoint_id` of app `app_id`, whose
    /// `max_concurrency` is as given; found without allocating.
    pub fn get(&self, app_id: &str, endpoint_id: &str, max_concurrency: usize) -> Arc<Lane> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(lane) = map
            .by_app
            .get(app_id)
            .and_then(|by_ep| by_ep.get(endpoint_id))
            && lane.max_concurrency == max_concurrency.max(1)
            && lane.adaptive.is_none()
        {
            return lane.clone();
        }
        let lane = Arc::new(Lane::new(max_concurrency));
        let replaced = map
            .by_app
            .entry(app_id.to_string())
            .or_default()
            .insert(endpoint_id.to_string(), lane.clone());
        if replaced.is_none() {
            map.len += 1;
        }
        map.sweep();
        lane
    }

    /// The lane of endpoint `ep` of app `app_id`: as [`Lanes::get`], and for
    /// an endpoint with `adaptive_concurrency` a lane whose limit adapts,
    /// exported in `metrics`.
    pub fn get_for(&self, app_id: &str, ep: &Endpoint, metrics: &crate::Metrics) -> Arc<Lane> {
        if !ep.adaptive_concurrency {
            return self.get(app_id, &ep.id, ep.max_concurrency);
        }
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(lane) = map.by_app.get(app_id).and_then(|by_ep| by_ep.get(&ep.id))
            && lane.max_concurrency == ep.max_concurrency.max(1)
            && lane.adaptive.is_some()
        {
            return lane.clone();
        }
        let labels = [("app_id", app_id.to_string()), ("endpoint", ep.id.clone())];
        let gauge = metrics.concurrency_limit.get_or_create(&labels).clone();
        let lane = Arc::new(Lane::with(ep.max_concurrency, Some(gauge)));
        if map
            .by_app
            .entry(app_id.to_string())
            .or_default()
            .insert(ep.id.clone(), lane.clone())
            .is_none()
        {
            map.len += 1;
        }
        map.sweep();
        lane
    }

    /// Requests in flight at one endpoint: its permits taken (0 for a lane not kept).
    pub fn in_flight(&self, app_id: &str, endpoint_id: &str) -> usize {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.by_app
            .get(app_id)
            .and_then(|by_ep| by_ep.get(endpoint_id))
            .map_or(0, |l| {
                l.max_concurrency
                    .saturating_sub(l.permits.available_permits())
            })
    }

    /// How many lanes are kept.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How long a batch waits when the rate-limit store did not answer: the
/// batch is deferred (never sent unmetered), to try again after this.
const RATE_UNKNOWN_WAIT: Duration = Duration::from_secs(1);

/// The bucket of an endpoint's `rate_limit`, one per (app, endpoint) for
/// every worker of the queue; the app id's length keeps two pairs apart
/// whatever their ids hold.
pub fn bucket_key(app_id: &str, endpoint_id: &str) -> String {
    format!("{}:{app_id}:{endpoint_id}", app_id.len())
}

/// Takes a token of `ep`'s `rate_limit` for one request: none to wait when
/// it has none or one was taken, else how long until the token booked for
/// this batch ([`hookq_queue::limits::take_token`]). Endpoints without a
/// rate limit cost nothing here; those with one, one call to the store
/// (on Redis, one script call) per request.
pub async fn rate_wait(limits: &dyn Limits, app_id: &str, ep: &Endpoint) -> Option<Duration> {
    let rate = ep.rate_limit?;
    let bucket = bucket_key(app_id, &ep.id);
    match limits
        .take_token(&bucket, rate.per_second, rate.burst)
        .await
    {
        Ok(Token::Taken) => None,
        Ok(Token::After(wait)) => Some(wait),
        Err(e) => {
            tracing::warn!(app_id, endpoint = %ep.id, error = %e, "rate limit store unavailable; deferring the batch");
            Some(RATE_UNKNOWN_WAIT)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 14, item 8: lanes are kept by app and endpoint id; reloads that
    /// change endpoint ids, and the apps of a database registry coming and
    /// going, must not grow the map without bound (before the fix, when
    /// this map was `Shared::limits`, it kept one entry per pair ever seen:
    /// 5,001 of 5,001), and a lane in use is never dropped.
    #[test]
    fn the_lanes_stay_bounded_over_many_apps_and_reloads() {
        let lanes = Lanes::default();
        let in_use = lanes.get("a", "ep", 4);
        let mut also_in_use = Vec::new();
        for i in 0..5_000 {
            // Half new apps, half reloads of one app whose endpoint id changed.
            let lane = if i % 2 == 0 {
                lanes.get(&format!("app-{i}"), "ep", 4)
            } else {
                lanes.get("a", &format!("ep-{i}"), 4)
            };
            if i % 1000 == 0 {
                also_in_use.push(lane);
            }
        }
        let n = lanes.len();
        assert!(
            n <= 2 * MIN_SWEEP,
            "{n} lanes kept for 5,001 pairs, 6 of them in use"
        );
        assert!(
            Arc::ptr_eq(&in_use, &lanes.get("a", "ep", 4)),
            "kept in use"
        );
        for (i, lane) in also_in_use.iter().enumerate() {
            let again = lanes.get(&format!("app-{}", i * 1000), "ep", 4);
            assert!(Arc::ptr_eq(lane, &again), "lane {i} in use was dropped");
        }
        let changed = lanes.get("a", "ep", 8);
        assert!(
            !Arc::ptr_eq(&in_use, &changed),
            "a changed max_concurrency gets a new lane"
        );
    }

    #[tokio::test]
    async fn a_busy_lane_defers_past_its_share_and_learns_its_pace() {
        let lanes = Lanes::default();
        let lane = lanes.get("a", "ep", 1);
        let Admit::Go(first) = lane.admit(10, 50).await else {
            panic!("a free permit is taken")
        };
        // Waits (within the share, pace unknown) until the permit is back.
        let waiter = {
            let lane = lane.clone();
            tokio::spawn(async move { matches!(lane.admit(40, 50).await, Admit::Go(_)) })
        };
        while lane.waiting_jobs() < 40 {
            tokio::task::yield_now().await;
        }
        let Admit::Defer(busy, why) = lane.admit(11, 50).await else {
            panic!("past the share: deferred")
        };
        assert_eq!(
            (why, busy.waiting_jobs, busy.waiting_batches),
            (Deferral::Share, 40, 1)
        );
        assert_eq!(
            lane.waiting_jobs(),
            40,
            "a deferred batch does not stay counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(first);
        assert!(waiter.await.unwrap());
        let pace = lane.pace().expect("a request ended");
        // 20 ms, then the waiter's instant one: 3/4 of 20 ms and a little.
        assert!(pace >= Duration::from_millis(15), "{pace:?}");
        assert_eq!(lane.waiting_jobs(), 0);
    }

    /// The receiver of the integration test, simulated: 20 ms up to 8
    /// requests in flight, 20 ms more per request past 8. Closed loop: each
    /// round the lane keeps `limit` requests in flight, all at the limit.
    #[test]
    fn aimd_settles_at_the_receivers_best_point() {
        let latency = |n: usize| Duration::from_millis(20 + 20 * n.saturating_sub(8) as u64);
        let mut a = Aimd::new(64);
        let mut now = Duration::ZERO;
        let mut seen = Vec::new();
        for _ in 0..400 {
            let n = a.limit;
            let rtt = latency(n);
            now += rtt;
            for _ in 0..n {
                a.observe(rtt, false, true, now);
            }
            seen.push(a.limit);
        }
        let tail = &seen[200..];
        let mean = tail.iter().sum::<usize>() as f64 / tail.len() as f64;
        let (lo, hi) = (tail.iter().min().unwrap(), tail.iter().max().unwrap());
        assert!((6.5..=9.5).contains(&mean), "mean limit {mean}, {lo}..{hi}");
        assert!(*lo >= 5 && *hi <= 10, "{lo}..{hi}");
    }

    #[test]
    fn aimd_backs_off_on_failures_and_grows_only_when_used() {
        let rtt = Duration::from_millis(10);
        let mut a = Aimd::new(4);
        let mut now = Duration::ZERO;
        for _ in 0..50 {
            now += rtt;
            a.observe(rtt, false, true, now);
        }
        assert_eq!(a.limit, 4, "bounded by max_concurrency");
        let mut b = Aimd::new(64);
        for _ in 0..50 {
            now += rtt;
            b.observe(rtt, false, false, now);
        }
        assert_eq!(b.limit, 1, "never at its limit: not raised");
        let mut c = Aimd::new(64);
        c.limit = 40;
        for _ in 0..5 {
            now += rtt * 2;
            c.observe(rtt, true, true, now);
        }
        assert!(c.limit <= 27, "five failing windows: {}", c.limit);
    }

    #[tokio::test]
    async fn an_adaptive_lane_resizes_its_semaphore() {
        let gauge = Gauge::default();
        let lane = Arc::new(Lane::with(8, Some(gauge.clone())));
        assert_eq!(lane.limit(), 1);
        for _ in 0..20 {
            let Admit::Go(p) = lane.admit(1, 100).await else {
                panic!("a permit")
            };
            tokio::time::sleep(Duration::from_millis(2)).await;
            p.done(false);
        }
        let grown = lane.limit();
        assert!(grown > 1, "one at a time at the limit: grows, {grown}");
        assert_eq!(lane.permits.available_permits(), grown);
        // Failures shrink it; the permits follow.
        for _ in 0..20 {
            let Admit::Go(p) = lane.admit(1, 100).await else {
                panic!("a permit")
            };
            tokio::time::sleep(Duration::from_millis(2)).await;
            p.done(true);
        }
        assert_eq!(lane.limit(), 1);
        assert_eq!(lane.permits.available_permits(), 1);
        assert_eq!(gauge.get(), 1, "the gauge follows");
    }
}
