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

use crate::decide::{self, Busy, Deferral};
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
        let max_concurrency = max_concurrency.max(1);
        Self {
            permits: Arc::new(Semaphore::new(max_concurrency)),
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
            max_concurrency: self.max_concurrency,
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
        Permit {
            _permit: permit,
            lane: self.clone(),
            since: Instant::now(),
        }
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
/// frees the place and records how long the request took.
pub struct Permit {
    _permit: Option<OwnedSemaphorePermit>,
    lane: Arc<Lane>,
    since: Instant,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.lane.observe(self.since.elapsed());
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
        if map.len >= map.sweep_at.max(MIN_SWEEP) {
            // Only the map holds an idle lane; `lane` is held here.
            map.by_app.retain(|_, by_ep| {
                by_ep.retain(|_, l| Arc::strong_count(l) > 1);
                !by_ep.is_empty()
            });
            map.len = map.by_app.values().map(HashMap::len).sum();
            map.sweep_at = map.len * 2;
        }
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
}
