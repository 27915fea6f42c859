//! Endpoint health that workers share: each endpoint's circuit state and
//! the counts it is decided from, kept where the queue is.
//!
//! A worker counts its requests' outcomes per endpoint in memory and, at
//! most about once a second per endpoint that had traffic,
//! [`HealthStore::sync`]s them: one call adds its counts to the endpoint's
//! [`HealthRecord`] and answers the record as every worker left it. The
//! worker decides from that record (the rules are the worker's,
//! `hookq_worker::decide`), and writes a change of state with
//! [`HealthStore::transition`], a compare-and-set on the record's
//! `version`, so that of the workers seeing the same change one makes it
//! (and logs it, counts it, notifies). [`HealthStore::claim_probe`] lets one
//! request through, across every worker, when an open circuit may be tried.
//!
//! Where the record lives is the driver's choice: the Redis driver keeps it
//! beside the queue (`crate::redis`, module `health`), so every worker sees
//! it and it survives their restarts; every other driver gives each worker
//! a [`MemoryHealth`] of its own ([`crate::QueueConsume::health_store`]).
//!
//! Counts are kept in two buckets of the breaker's window (the current one,
//! aligned to a multiple of the window, and the one before), and read as a
//! sliding window: the previous bucket weighs as much of it as the window
//! still covers ([`HealthRecord::window_counts`]).

use crate::QueueError;
use async_trait::async_trait;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// An endpoint: its app's id and its own.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointKey {
    /// The app's id.
    pub app_id: String,
    /// The endpoint's id.
    pub endpoint: String,
}

impl EndpointKey {
    /// The key of `endpoint` of `app_id`.
    pub fn new(app_id: impl Into<String>, endpoint: impl Into<String>) -> Self {
        Self {
            app_id: app_id.into(),
            endpoint: endpoint.into(),
        }
    }

    /// One string for both, `app\nendpoint` (neither holds a line break:
    /// the config refuses such ids; one that did would only share a record).
    pub fn field(&self) -> String {
        format!("{}\n{}", self.app_id, self.endpoint)
    }

    /// The key back from [`EndpointKey::field`].
    pub fn from_field(field: &str) -> Option<Self> {
        let (app, ep) = field.split_once('\n')?;
        Some(Self::new(app, ep))
    }
}

/// An endpoint's circuit, as stored. Half-open is not stored: it is an
/// open circuit whose `open_until_ms` has passed (a probe may go, or is on
/// its way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Circuit {
    /// Requests go.
    #[default]
    Closed,
    /// Requests wait in the queue until `open_until_ms`, then one probe goes.
    Open,
    /// Disabled for failing too long: its jobs are dead-lettered until
    /// `hookq endpoints enable`.
    Disabled,
}

impl Circuit {
    /// `closed`, `open`, `disabled`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::Disabled => "disabled",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "open" => Self::Open,
            "disabled" => Self::Disabled,
            _ => Self::Closed,
        }
    }
}

/// One endpoint's shared record. Times are Unix ms of the workers' clocks.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HealthRecord {
    /// The circuit.
    pub state: Circuit,
    /// While open: when a probe may go.
    pub open_until_ms: u64,
    /// Bumped by every transition (never by a sync): what a transition compares.
    pub version: u64,
    /// The first failure since the last success; none after a success.
    pub failing_since_ms: Option<u64>,
    /// The last success.
    pub last_success_ms: Option<u64>,
    /// The last failure.
    pub last_failure_ms: Option<u64>,
    /// The last failure's reason.
    pub last_error: Option<String>,
    /// When it was disabled.
    pub disabled_at_ms: Option<u64>,
    /// The current window bucket: `now / window_ms`.
    pub bucket: u64,
    /// Successes, failures in the current bucket.
    pub current: (u64, u64),
    /// Successes, failures in the bucket before.
    pub previous: (u64, u64),
}

/// What one worker saw of an endpoint since its last sync.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcomes {
    /// Requests that succeeded.
    pub ok: u64,
    /// Requests that failed (retryable failures).
    pub failed: u64,
    /// The last success.
    pub last_success_ms: Option<u64>,
    /// The last failure.
    pub last_failure_ms: Option<u64>,
    /// The first failure after `last_success_ms` (after none: the first).
    pub first_failure_ms: Option<u64>,
    /// The last failure's reason.
    pub last_error: Option<String>,
}

impl Outcomes {
    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.ok == 0 && self.failed == 0
    }

    /// Counts a success at `at_ms`.
    pub fn success(&mut self, at_ms: u64) {
        self.ok += 1;
        self.last_success_ms = self.last_success_ms.max(Some(at_ms));
        self.first_failure_ms = None;
    }

    /// Counts a failure at `at_ms` for `reason`.
    pub fn failure(&mut self, at_ms: u64, reason: &str) {
        self.failed += 1;
        self.last_failure_ms = self.last_failure_ms.max(Some(at_ms));
        self.first_failure_ms.get_or_insert(at_ms);
        self.last_error = Some(reason.to_string());
    }
}

/// A change of state, written by [`HealthStore::transition`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Open until this time (Unix ms).
    Open {
        /// When a probe may go.
        until_ms: u64,
    },
    /// Closed after a probe succeeded at `at_ms`: counts and failing-since cleared.
    Close {
        /// When.
        at_ms: u64,
    },
    /// Disabled at `at_ms`.
    Disable {
        /// When.
        at_ms: u64,
    },
}

impl HealthRecord {
    /// Adds `delta`, seen by `now_ms`, with a window of `window_ms`: the
    /// buckets roll when `now_ms` is in a later bucket, the times and the
    /// failing-since follow. The Redis script `redis/health_sync.lua` does
    /// the same; this is the memory store's and the reference.
    pub fn merge(&mut self, delta: &Outcomes, now_ms: u64, window_ms: u64) {
        let bucket = now_ms / window_ms.max(1);
        if bucket > self.bucket {
            self.previous = if bucket == self.bucket + 1 {
                self.current
            } else {
                (0, 0)
            };
            self.current = (0, 0);
            self.bucket = bucket;
        }
        self.current.0 += delta.ok;
        self.current.1 += delta.failed;
        self.last_success_ms = self.last_success_ms.max(delta.last_success_ms);
        self.last_failure_ms = self.last_failure_ms.max(delta.last_failure_ms);
        if delta.last_error.is_some() {
            self.last_error.clone_from(&delta.last_error);
        }
        let since_success = |t: &u64| Some(*t) > self.last_success_ms;
        let failing = [self.failing_since_ms, delta.first_failure_ms]
            .into_iter()
            .flatten()
            .filter(since_success)
            .min()
            .or(self.last_failure_ms.filter(since_success));
        self.failing_since_ms = failing;
    }

    /// Applies `t`: bumps the version; what else changes is the transition's.
    pub fn apply(&mut self, t: Transition) {
        self.version += 1;
        match t {
            Transition::Open { until_ms } => {
                self.state = Circuit::Open;
                self.open_until_ms = until_ms;
            }
            Transition::Close { at_ms } => {
                self.state = Circuit::Closed;
                self.open_until_ms = 0;
                self.failing_since_ms = None;
                self.last_success_ms = self.last_success_ms.max(Some(at_ms));
                self.current = (0, 0);
                self.previous = (0, 0);
            }
            Transition::Disable { at_ms } => {
                self.state = Circuit::Disabled;
                self.disabled_at_ms = Some(at_ms);
            }
        }
    }

    /// Back to closed and healthy, as `hookq endpoints enable` leaves it.
    pub fn enable(&mut self) {
        self.version += 1;
        self.state = Circuit::Closed;
        self.open_until_ms = 0;
        self.failing_since_ms = None;
        self.disabled_at_ms = None;
        self.current = (0, 0);
        self.previous = (0, 0);
    }

    /// (requests, failures) over the window of `window_ms` ending at
    /// `now_ms`: the current bucket and the share of the previous one the
    /// window still covers.
    pub fn window_counts(&self, now_ms: u64, window_ms: u64) -> (f64, f64) {
        let window_ms = window_ms.max(1);
        let bucket = now_ms / window_ms;
        let (cur, prev) = match bucket.saturating_sub(self.bucket) {
            0 => (self.current, self.previous),
            1 => ((0, 0), self.current),
            _ => ((0, 0), (0, 0)),
        };
        let into = (now_ms % window_ms) as f64 / window_ms as f64;
        let weight = 1.0 - into;
        let ok = cur.0 as f64 + prev.0 as f64 * weight;
        let failed = cur.1 as f64 + prev.1 as f64 * weight;
        (ok + failed, failed)
    }

    /// The record as stored (JSON; absent options left out).
    pub fn to_json(&self) -> String {
        let mut m = Map::new();
        m.insert("state".into(), json!(self.state.as_str()));
        m.insert("open_until_ms".into(), json!(self.open_until_ms));
        m.insert("version".into(), json!(self.version));
        for (k, v) in [
            ("failing_since_ms", self.failing_since_ms),
            ("last_success_ms", self.last_success_ms),
            ("last_failure_ms", self.last_failure_ms),
            ("disabled_at_ms", self.disabled_at_ms),
        ] {
            if let Some(v) = v {
                m.insert(k.into(), json!(v));
            }
        }
        if let Some(e) = &self.last_error {
            m.insert("last_error".into(), json!(e));
        }
        m.insert("bucket".into(), json!(self.bucket));
        m.insert("cur_ok".into(), json!(self.current.0));
        m.insert("cur_fail".into(), json!(self.current.1));
        m.insert("prev_ok".into(), json!(self.previous.0));
        m.insert("prev_fail".into(), json!(self.previous.1));
        Value::Object(m).to_string()
    }

    /// The record from its JSON (what Redis's cjson writes: numbers may be
    /// floats); `None` when it is not an object.
    pub fn from_json(text: &str) -> Option<Self> {
        let v: Value = serde_json::from_str(text).ok()?;
        let o = v.as_object()?;
        let n = |k: &str| {
            o.get(k)
                .and_then(|v| v.as_u64().or(v.as_f64().map(|f| f as u64)))
        };
        Some(Self {
            state: Circuit::parse(o.get("state").and_then(Value::as_str).unwrap_or("")),
            open_until_ms: n("open_until_ms").unwrap_or(0),
            version: n("version").unwrap_or(0),
            failing_since_ms: n("failing_since_ms"),
            last_success_ms: n("last_success_ms"),
            last_failure_ms: n("last_failure_ms"),
            last_error: o
                .get("last_error")
                .and_then(Value::as_str)
                .map(str::to_string),
            disabled_at_ms: n("disabled_at_ms"),
            bucket: n("bucket").unwrap_or(0),
            current: (n("cur_ok").unwrap_or(0), n("cur_fail").unwrap_or(0)),
            previous: (n("prev_ok").unwrap_or(0), n("prev_fail").unwrap_or(0)),
        })
    }
}

/// Where endpoint health is kept; see the module docs.
#[async_trait]
pub trait HealthStore: Send + Sync + 'static {
    /// Adds `delta` (seen by `now_ms`, counted in windows of `window_ms`)
    /// to the endpoint's record and answers the record. An empty delta only
    /// reads (a default record when there is none).
    async fn sync(
        &self,
        key: &EndpointKey,
        delta: &Outcomes,
        now_ms: u64,
        window_ms: u64,
    ) -> Result<HealthRecord, QueueError>;

    /// Applies `t` if the record's version is still `version`; answers the
    /// new record, or `None` when another transition came first. Ends any
    /// probe claim; a [`Transition::Open`] keeps it claimed until its
    /// `until_ms`, so that a worker deciding from an older record sends no
    /// second probe meanwhile.
    async fn transition(
        &self,
        key: &EndpointKey,
        version: u64,
        t: Transition,
    ) -> Result<Option<HealthRecord>, QueueError>;

    /// Claims the one probe of an open endpoint for `ttl` (the claimant's
    /// request time and a margin, so a claimant that died frees it):
    /// `true` for the one caller that got it.
    async fn claim_probe(&self, key: &EndpointKey, ttl: Duration) -> Result<bool, QueueError>;

    /// Back to closed and healthy (`hookq endpoints enable`): the record
    /// before, or `None` when there was none.
    async fn enable(&self, key: &EndpointKey) -> Result<Option<HealthRecord>, QueueError>;

    /// Every record.
    async fn list(&self) -> Result<Vec<(EndpointKey, HealthRecord)>, QueueError>;

    /// How many endpoints are disabled.
    async fn disabled_count(&self) -> Result<u64, QueueError>;

    /// Whether the records are shared by every worker on the queue (and
    /// outlive them), rather than kept in this process.
    fn shared(&self) -> bool;
}

/// Endpoint health kept in this process: each worker's own, lost when it
/// stops. What every driver but Redis gives.
#[derive(Debug, Default)]
pub struct MemoryHealth {
    records: Mutex<HashMap<EndpointKey, HealthRecord>>,
    probes: Mutex<HashMap<EndpointKey, Instant>>,
}

impl MemoryHealth {
    fn records(&self) -> std::sync::MutexGuard<'_, HashMap<EndpointKey, HealthRecord>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl HealthStore for MemoryHealth {
    async fn sync(
        &self,
        key: &EndpointKey,
        delta: &Outcomes,
        now_ms: u64,
        window_ms: u64,
    ) -> Result<HealthRecord, QueueError> {
        let mut records = self.records();
        if delta.is_empty() {
            return Ok(records.get(key).cloned().unwrap_or_default());
        }
        let r = records.entry(key.clone()).or_default();
        r.merge(delta, now_ms, window_ms);
        Ok(r.clone())
    }

    async fn transition(
        &self,
        key: &EndpointKey,
        version: u64,
        t: Transition,
    ) -> Result<Option<HealthRecord>, QueueError> {
        let mut records = self.records();
        let r = records.entry(key.clone()).or_default();
        if r.version != version {
            return Ok(None);
        }
        r.apply(t);
        let mut probes = self.probes.lock().unwrap_or_else(|p| p.into_inner());
        match t {
            Transition::Open { until_ms } => {
                let left = Duration::from_millis(until_ms.saturating_sub(hookq_core::now_ms()));
                probes.insert(key.clone(), Instant::now() + left)
            }
            Transition::Close { .. } | Transition::Disable { .. } => probes.remove(key),
        };
        Ok(Some(r.clone()))
    }

    async fn claim_probe(&self, key: &EndpointKey, ttl: Duration) -> Result<bool, QueueError> {
        let now = Instant::now();
        let mut probes = self.probes.lock().unwrap_or_else(|p| p.into_inner());
        if probes.get(key).is_some_and(|until| *until > now) {
            return Ok(false);
        }
        probes.insert(key.clone(), now + ttl);
        Ok(true)
    }

    async fn enable(&self, key: &EndpointKey) -> Result<Option<HealthRecord>, QueueError> {
        let mut records = self.records();
        let Some(r) = records.get_mut(key) else {
            return Ok(None);
        };
        let before = r.clone();
        r.enable();
        Ok(Some(before))
    }

    async fn list(&self) -> Result<Vec<(EndpointKey, HealthRecord)>, QueueError> {
        let mut all: Vec<_> = self
            .records()
            .iter()
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(all)
    }

    async fn disabled_count(&self) -> Result<u64, QueueError> {
        Ok(self
            .records()
            .values()
            .filter(|r| r.state == Circuit::Disabled)
            .count() as u64)
    }

    fn shared(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_rolls_buckets_and_follows_the_failing_since() {
        let mut r = HealthRecord::default();
        let mut d = Outcomes::default();
        d.success(1_000);
        d.failure(1_100, "HTTP 503");
        d.failure(1_200, "HTTP 502");
        r.merge(&d, 1_500, 10_000);
        assert_eq!((r.current, r.previous, r.bucket), ((1, 2), (0, 0), 0));
        assert_eq!(r.failing_since_ms, Some(1_100));
        assert_eq!(r.last_error.as_deref(), Some("HTTP 502"));
        // Next bucket: the current one becomes the previous.
        let mut d = Outcomes::default();
        d.failure(12_000, "HTTP 503");
        r.merge(&d, 12_000, 10_000);
        assert_eq!((r.current, r.previous, r.bucket), ((0, 1), (1, 2), 1));
        assert_eq!(
            r.failing_since_ms,
            Some(1_100),
            "still failing since the first"
        );
        // At 12 s, 20 % into the bucket: 80 % of the previous one counts.
        let (requests, failed) = r.window_counts(12_000, 10_000);
        assert!((requests - (1.0 + 3.0 * 0.8)).abs() < 1e-9, "{requests}");
        assert!((failed - (1.0 + 2.0 * 0.8)).abs() < 1e-9, "{failed}");
        // A success clears it.
        let mut d = Outcomes::default();
        d.success(13_000);
        r.merge(&d, 13_000, 10_000);
        assert_eq!(r.failing_since_ms, None);
        // Two buckets on, nothing counts.
        assert_eq!(r.window_counts(40_000, 10_000), (0.0, 0.0));
    }

    #[test]
    fn a_record_survives_its_json_and_transitions_bump_the_version() {
        let mut r = HealthRecord::default();
        let mut d = Outcomes::default();
        d.failure(5, "connection refused");
        r.merge(&d, 5, 1000);
        r.apply(Transition::Open { until_ms: 99 });
        assert_eq!(
            (r.state, r.version, r.open_until_ms),
            (Circuit::Open, 1, 99)
        );
        assert_eq!(HealthRecord::from_json(&r.to_json()), Some(r.clone()));
        r.apply(Transition::Close { at_ms: 120 });
        assert_eq!(
            (r.state, r.failing_since_ms, r.current),
            (Circuit::Closed, None, (0, 0))
        );
        assert_eq!(r.last_success_ms, Some(120));
    }

    #[tokio::test]
    async fn one_probe_claim_and_one_transition_per_version() {
        let s = MemoryHealth::default();
        let k = EndpointKey::new("a", "e");
        assert!(s.claim_probe(&k, Duration::from_secs(5)).await.unwrap());
        assert!(!s.claim_probe(&k, Duration::from_secs(5)).await.unwrap());
        let t = Transition::Close { at_ms: 10 };
        assert!(s.transition(&k, 0, t).await.unwrap().is_some());
        assert!(
            s.transition(&k, 0, t).await.unwrap().is_none(),
            "version moved on"
        );
        assert!(
            s.claim_probe(&k, Duration::from_secs(5)).await.unwrap(),
            "closing ends the claim"
        );
        let reopen = Transition::Open {
            until_ms: hookq_core::now_ms() + 60_000,
        };
        assert!(s.transition(&k, 1, reopen).await.unwrap().is_some());
        assert!(
            !s.claim_probe(&k, Duration::from_millis(1)).await.unwrap(),
            "claimed until the open time is over"
        );
    }
}
