//! `hookq endpoints list | enable`: endpoint health, for operators.
//!
//! Reads and writes the records the workers share in the queue's health
//! store (`hookq_queue::health`), so it needs a queue whose store is shared:
//! Redis. On the other queues every worker keeps its own.

use crate::cli::EndpointsAction;
use crate::load_config;
use anyhow::bail;
use hookq_core::Config;
use hookq_queue::health::{Circuit, EndpointKey, HealthRecord, HealthStore};
use hookq_worker::queue;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Lists endpoints or enables one.
pub async fn run(action: EndpointsAction) -> anyhow::Result<()> {
    let path = match &action {
        EndpointsAction::List { config, .. } | EndpointsAction::Enable { config, .. } => {
            &config.config
        }
    };
    let config = load_config(path)?;
    let store = open(&config).await?;
    match action {
        EndpointsAction::List { json, .. } => list(&config, &*store, json).await,
        EndpointsAction::Enable { app, endpoint, .. } => {
            enable(&config, &*store, &app, &endpoint).await
        }
    }
}

async fn open(config: &Config) -> anyhow::Result<Arc<dyn HealthStore>> {
    let store = queue::open(config).await?.health_store();
    if !store.shared() {
        bail!(
            "on the {} queue every worker keeps its endpoints' health in its own memory, \
             so `hookq endpoints` cannot reach it; the Redis queue shares it (see \
             docs/operations.md, \"Endpoint health\")",
            config.queue.driver.as_str()
        );
    }
    Ok(store)
}

/// What `list` shows of one endpoint.
struct Row {
    record: Option<HealthRecord>,
    target: Option<String>,
}

/// The state's name as operators read it.
fn state(record: Option<&HealthRecord>, now_ms: u64) -> &'static str {
    match record.map(|r| (r.state, r.open_until_ms)) {
        None | Some((Circuit::Closed, _)) => "healthy",
        Some((Circuit::Open, until)) if now_ms >= until => "half-open",
        Some((Circuit::Open, _)) => "open",
        Some((Circuit::Disabled, _)) => "disabled",
    }
}

fn ago(at: Option<u64>, now_ms: u64) -> String {
    at.map_or("-".to_string(), |t| {
        format!("{}s ago", now_ms.saturating_sub(t) / 1000)
    })
}

async fn list(config: &Config, store: &dyn HealthStore, json: bool) -> anyhow::Result<()> {
    // The configured endpoints (file apps; a database's apps are only
    // known by their records), then every record.
    let mut rows: BTreeMap<EndpointKey, Row> = BTreeMap::new();
    for app in &config.apps {
        for ep in &app.endpoints {
            rows.insert(
                EndpointKey::new(app.id.as_str(), ep.id.as_str()),
                Row {
                    record: None,
                    target: Some(ep.target.describe()),
                },
            );
        }
    }
    for (key, record) in store.list().await? {
        rows.entry(key)
            .or_insert(Row {
                record: None,
                target: None,
            })
            .record = Some(record);
    }
    let now = hookq_core::now_ms();
    for (key, row) in &rows {
        let r = row.record.as_ref();
        let state = state(r, now);
        if json {
            let line = serde_json::json!({
                "app_id": key.app_id,
                "endpoint": key.endpoint,
                "state": state,
                "target": row.target,
                "configured": row.target.is_some() || config.apps.is_empty(),
                "open_until_ms": r.map(|r| r.open_until_ms).filter(|t| *t > 0),
                "failing_since_ms": r.and_then(|r| r.failing_since_ms),
                "last_success_ms": r.and_then(|r| r.last_success_ms),
                "last_failure_ms": r.and_then(|r| r.last_failure_ms),
                "last_error": r.and_then(|r| r.last_error.as_deref()),
                "disabled_at_ms": r.and_then(|r| r.disabled_at_ms),
            });
            say!("{line}");
            continue;
        }
        let open_for = match r {
            Some(r) if state == "open" => {
                format!(
                    " (probe in {}s)",
                    r.open_until_ms.saturating_sub(now).div_ceil(1000)
                )
            }
            _ => String::new(),
        };
        say!(
            "app {}  endpoint {}  {state}{open_for}  failing since {}  last success {}  last error {}  {}",
            key.app_id,
            key.endpoint,
            ago(r.and_then(|r| r.failing_since_ms), now),
            ago(r.and_then(|r| r.last_success_ms), now),
            r.and_then(|r| r.last_error.as_deref()).unwrap_or("-"),
            row.target.as_deref().unwrap_or(if config.apps.is_empty() {
                ""
            } else {
                "(not configured)"
            }),
        );
    }
    if !json {
        let disabled = rows
            .values()
            .filter(|r| state(r.record.as_ref(), now) == "disabled")
            .count();
        say!("{} endpoint(s), {disabled} disabled", rows.len());
    }
    Ok(())
}

async fn enable(
    config: &Config,
    store: &dyn HealthStore,
    app: &str,
    endpoint: &str,
) -> anyhow::Result<()> {
    let configured = config.app(app).and_then(|a| a.endpoint(endpoint)).is_some();
    if !configured && !config.apps.is_empty() {
        tracing::warn!(app_id = app, endpoint, "no such endpoint in the config");
    }
    let key = EndpointKey::new(app, endpoint);
    match store.enable(&key).await? {
        None => say!("app {app} endpoint {endpoint} has no health recorded: it is healthy"),
        Some(before) => {
            let was = state(Some(&before), hookq_core::now_ms());
            say!(
                "enabled app {app} endpoint {endpoint} (was {was}); workers send to it again within a few seconds. \
                 Its dead letters stay in the DLQ: `hookq dlq replay --app {app}` sends them again"
            );
        }
    }
    Ok(())
}
