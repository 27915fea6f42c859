//! Per-endpoint figures of this worker process, for the admin API
//! (`/api/v1/endpoints`, `/api/v1/apps`, `/api/v1/overview`): requests
//! delivered and failed, events delivered, retries scheduled, dead letters
//! written, the last failure and success, and the time of the most recent
//! requests.
//!
//! The worker feeds it twice per attempt from `worker::deliver`: once with
//! the outcome ([`Stats::attempt`]) and once with what follows from it
//! ([`Stats::disposed`]). Figures count from the process's start and are
//! its own: with several replicas, each answers for itself (Prometheus sums
//! `/metrics` across them). An endpoint is found by app and endpoint id
//! without allocating (as [`crate::lane::Lanes`] does); only a new endpoint
//! and a failure's reason allocate. The map is bounded: past
//! [`MAX_ENDPOINTS`], the endpoint least recently active is forgotten.

use crate::batch::Batch;
use crate::decide::Disposition;
use crate::outcome::Outcome;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most endpoints whose figures are kept; past it the least recently active goes.
pub const MAX_ENDPOINTS: usize = 10_000;

/// How many recent requests the latency figures cover.
pub const LATENCY_WINDOW: usize = 32;

/// One endpoint's figures.
#[derive(Debug, Clone, Default)]
pub struct EndpointStats {
    /// Events in requests the receiver took.
    pub events_delivered: u64,
    /// Requests the receiver took.
    pub requests_delivered: u64,
    /// Requests that failed (retried or dead-lettered after).
    pub requests_failed: u64,
    /// Retry jobs pushed after a failed request.
    pub retries_scheduled: u64,
    /// Dead-letter entries written after a failed request.
    pub dead_lettered: u64,
    /// Whether the last request was delivered; `None` before the first.
    pub last_delivered: Option<bool>,
    /// The HTTP status of the last failed request, when it had one.
    pub last_status: Option<u16>,
    /// The reason of the last failed request.
    pub last_error: Option<String>,
    /// When the last request failed (Unix ms).
    pub last_error_ms: Option<u64>,
    /// When the last request was delivered (Unix ms).
    pub last_success_ms: Option<u64>,
    /// The last requests' times, µs, in a ring of [`LATENCY_WINDOW`].
    latency_us: [u32; LATENCY_WINDOW],
    /// Requests timed (the ring's next slot is this modulo its length).
    timed: u64,
    /// When this endpoint was last active (for the bound of the map).
    touched: Option<Instant>,
}

impl EndpointStats {
    /// How many requests the latency figures cover.
    pub fn latency_samples(&self) -> usize {
        self.timed.min(LATENCY_WINDOW as u64) as usize
    }

    /// Mean and longest time of the recent requests, ms; `None` before one.
    pub fn latency_ms(&self) -> Option<(f64, f64)> {
        let n = self.latency_samples();
        if n == 0 {
            return None;
        }
        let recent = &self.latency_us[..n];
        let sum: u64 = recent.iter().map(|&us| u64::from(us)).sum();
        let max = recent.iter().copied().max().unwrap_or(0);
        Some((sum as f64 / n as f64 / 1000.0, f64::from(max) / 1000.0))
    }

    fn time(&mut self, took: Duration) {
        let slot = (self.timed % LATENCY_WINDOW as u64) as usize;
        self.latency_us[slot] = u32::try_from(took.as_micros()).unwrap_or(u32::MAX);
        self.timed += 1;
    }
}

/// One endpoint's figures with its ids, as [`Stats::snapshot`] hands them out.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The app's id.
    pub app_id: String,
    /// The endpoint's id.
    pub endpoint: String,
    /// Its figures.
    pub stats: EndpointStats,
}

/// The figures of every endpoint this worker sent to; see the module docs.
pub struct Stats {
    started: Instant,
    map: Mutex<Map>,
}

#[derive(Default)]
struct Map {
    by_app: HashMap<String, HashMap<String, EndpointStats>>,
    len: usize,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            map: Mutex::default(),
        }
    }
}

impl Stats {
    /// How long since these figures began (the worker's start).
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Counts one request of `batch`, which ended with `outcome` after `took`.
    pub fn attempt(&self, batch: &Batch, outcome: &Outcome, took: Duration) {
        let now = hookq_core::now_ms();
        self.with(&batch.app.id, &batch.endpoint().id, |s| {
            s.time(took);
            match outcome {
                Outcome::Delivered => {
                    s.requests_delivered += 1;
                    s.events_delivered += batch.events.len() as u64;
                    s.last_delivered = Some(true);
                    s.last_success_ms = Some(now);
                }
                Outcome::Retry { failure, .. } | Outcome::Reject { failure } => {
                    s.requests_failed += 1;
                    s.last_delivered = Some(false);
                    s.last_status = failure.status;
                    match &mut s.last_error {
                        Some(e) => e.clone_from(&failure.reason),
                        none => *none = Some(failure.reason.clone()),
                    }
                    s.last_error_ms = Some(now);
                }
            }
        });
    }

    /// Counts what followed a request of `batch`: a retry job pushed, or dead
    /// letters written (a delivered batch or a push back of a job not due
    /// counts nothing).
    pub fn disposed(&self, batch: &Batch, disposition: &Disposition) {
        let (retries, dead) = match disposition {
            Disposition::Push { retry: true, .. } => (1, 0),
            Disposition::DeadLetter { entries, .. } => (0, entries.len() as u64),
            _ => return,
        };
        self.with(&batch.app.id, &batch.endpoint().id, |s| {
            s.retries_scheduled += retries;
            s.dead_lettered += dead;
        });
    }

    /// Every endpoint's figures, by app id then endpoint id.
    pub fn snapshot(&self) -> Vec<Snapshot> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<Snapshot> = map
            .by_app
            .iter()
            .flat_map(|(app, eps)| {
                eps.iter().map(|(ep, s)| Snapshot {
                    app_id: app.clone(),
                    endpoint: ep.clone(),
                    stats: s.clone(),
                })
            })
            .collect();
        out.sort_by(|a, b| (&a.app_id, &a.endpoint).cmp(&(&b.app_id, &b.endpoint)));
        out
    }

    /// Runs `f` on the figures of one endpoint, made when new.
    fn with(&self, app_id: &str, endpoint: &str, f: impl FnOnce(&mut EndpointStats)) {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = map
            .by_app
            .get_mut(app_id)
            .and_then(|eps| eps.get_mut(endpoint))
        {
            s.touched = Some(now);
            return f(s);
        }
        if map.len >= MAX_ENDPOINTS {
            map.forget_least_recent();
        }
        let mut s = EndpointStats {
            touched: Some(now),
            ..EndpointStats::default()
        };
        f(&mut s);
        map.by_app
            .entry(app_id.to_string())
            .or_default()
            .insert(endpoint.to_string(), s);
        map.len += 1;
    }
}

impl Map {
    /// Drops the endpoint active longest ago (a scan: only when the map is full).
    fn forget_least_recent(&mut self) {
        let oldest = self
            .by_app
            .iter()
            .flat_map(|(app, eps)| eps.iter().map(move |(ep, s)| (s.touched, app, ep)))
            .min_by_key(|(touched, ..)| *touched)
            .map(|(_, app, ep)| (app.clone(), ep.clone()));
        let Some((app, ep)) = oldest else { return };
        if let Some(eps) = self.by_app.get_mut(&app) {
            eps.remove(&ep);
            if eps.is_empty() {
                self.by_app.remove(&app);
            }
        }
        self.len -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_map_stays_bounded_and_keeps_the_recent_endpoints() {
        let stats = Stats::default();
        for i in 0..MAX_ENDPOINTS + 50 {
            stats.with("app", &format!("ep-{i}"), |s| s.requests_delivered += 1);
        }
        let snap = stats.snapshot();
        assert_eq!(snap.len(), MAX_ENDPOINTS);
        assert!(snap.iter().all(|s| s.endpoint != "ep-0"), "the oldest went");
        assert!(
            snap.iter()
                .any(|s| s.endpoint == format!("ep-{}", MAX_ENDPOINTS + 49))
        );
    }

    #[test]
    fn latency_covers_the_recent_requests() {
        let mut s = EndpointStats::default();
        assert_eq!(s.latency_ms(), None);
        for ms in 1..=(LATENCY_WINDOW as u64 + 10) {
            s.time(Duration::from_millis(ms));
        }
        let (mean, max) = s.latency_ms().unwrap();
        assert_eq!(s.latency_samples(), LATENCY_WINDOW);
        assert_eq!(max, (LATENCY_WINDOW + 10) as f64);
        // The ring holds 11..=42 ms.
        assert!((mean - 26.5).abs() < 1e-9, "{mean}");
    }
}
