//! Endpoint health on Redis ([`HealthStore`]), beside the queue, so every
//! worker shares it and it outlives them.
//!
//! | key                         | type   | holds                                          |
//! |-----------------------------|--------|------------------------------------------------|
//! | `{prefix}:health`           | hash   | `app\nendpoint` → the [`HealthRecord`] JSON     |
//! | `{prefix}:health:disabled`  | set    | `app\nendpoint` of every disabled endpoint      |
//! | `{prefix}:health:probe:<f>` | string | the probe claim of endpoint `f`, `SET NX PX`    |
//!
//! A sync is one script call (`health_sync.lua`: add the counts, answer the
//! record); a transition another (`health_set.lua`: compare the version,
//! change the state, keep the disabled set, end the probe claim — or, when
//! it opens the circuit, keep it claimed until the open time is over). Both run
//! through the driver's short-command path ([`RedisQueue::run`]), so they
//! share its connections, its reconnects and its `NOSCRIPT` handling.

use super::{RedisQueue, Request};
use crate::QueueError;
use crate::health::{EndpointKey, HealthRecord, HealthStore, Outcomes, Transition};
use ::redis::Script;
use async_trait::async_trait;
use std::sync::LazyLock;
use std::time::Duration;

static SYNC: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("health_sync.lua")));
static SET: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("health_set.lua")));

impl RedisQueue {
    fn health_key(&self) -> String {
        self.key("health")
    }

    fn disabled_key(&self) -> String {
        self.key("health:disabled")
    }

    fn probe_key(&self, key: &EndpointKey) -> String {
        self.key(&format!("health:probe:{}", key.field()))
    }

    /// Runs `health_set.lua` in `mode`: the record it answers, if any.
    async fn health_set(
        &self,
        key: &EndpointKey,
        mode: &str,
        version: i64,
        ms: u64,
    ) -> Result<Option<HealthRecord>, QueueError> {
        let mut call = SET.prepare_invoke();
        call.key(self.health_key())
            .key(self.disabled_key())
            .key(self.probe_key(key))
            .arg(key.field())
            .arg(mode)
            .arg(version)
            .arg(ms)
            .arg(ms.saturating_sub(hookq_core::now_ms()));
        let out: Option<String> = self
            .run("health transition", Request::Script(&call))
            .await?;
        Ok(out.as_deref().and_then(HealthRecord::from_json))
    }
}

fn ms_or_zero(t: Option<u64>) -> u64 {
    t.unwrap_or(0)
}

#[async_trait]
impl HealthStore for RedisQueue {
    async fn sync(
        &self,
        key: &EndpointKey,
        delta: &Outcomes,
        now_ms: u64,
        window_ms: u64,
    ) -> Result<HealthRecord, QueueError> {
        let mut call = SYNC.prepare_invoke();
        call.key(self.health_key())
            .arg(key.field())
            .arg(now_ms)
            .arg(window_ms.max(1))
            .arg(delta.ok)
            .arg(delta.failed)
            .arg(ms_or_zero(delta.last_success_ms))
            .arg(ms_or_zero(delta.last_failure_ms))
            .arg(ms_or_zero(delta.first_failure_ms))
            .arg(delta.last_error.as_deref().unwrap_or(""));
        let out: Option<String> = self.run("health sync", Request::Script(&call)).await?;
        Ok(out
            .as_deref()
            .and_then(HealthRecord::from_json)
            .unwrap_or_default())
    }

    async fn transition(
        &self,
        key: &EndpointKey,
        version: u64,
        t: Transition,
    ) -> Result<Option<HealthRecord>, QueueError> {
        let (mode, ms) = match t {
            Transition::Open { until_ms } => ("open", until_ms),
            Transition::Close { at_ms } => ("close", at_ms),
            Transition::Disable { at_ms } => ("disable", at_ms),
        };
        let version = i64::try_from(version).unwrap_or(i64::MAX);
        self.health_set(key, mode, version, ms).await
    }

    async fn claim_probe(&self, key: &EndpointKey, ttl: Duration) -> Result<bool, QueueError> {
        let mut set = ::redis::cmd("SET");
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        set.arg(self.probe_key(key))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms);
        let got: Option<String> = self.run("probe claim", Request::Cmd(&set)).await?;
        Ok(got.is_some())
    }

    async fn enable(&self, key: &EndpointKey) -> Result<Option<HealthRecord>, QueueError> {
        self.health_set(key, "enable", -1, hookq_core::now_ms())
            .await
    }

    async fn list(&self) -> Result<Vec<(EndpointKey, HealthRecord)>, QueueError> {
        let mut hgetall = ::redis::cmd("HGETALL");
        hgetall.arg(self.health_key());
        let pairs: Vec<(String, String)> = self.run("health list", Request::Cmd(&hgetall)).await?;
        let mut all: Vec<_> = pairs
            .iter()
            .filter_map(|(f, v)| Some((EndpointKey::from_field(f)?, HealthRecord::from_json(v)?)))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(all)
    }

    async fn disabled_count(&self) -> Result<u64, QueueError> {
        let mut scard = ::redis::cmd("SCARD");
        scard.arg(self.disabled_key());
        self.run("health disabled count", Request::Cmd(&scard))
            .await
    }

    fn shared(&self) -> bool {
        true
    }
}
