//! The admin API (`/api/v1/*`) and its OpenAPI document (`/openapi.json`,
//! the same text as `docs/openapi.json`, which is the contract).
//!
//! Every route here needs `Authorization: Bearer <worker.admin_token>`
//! (or `HOOKQ_ADMIN_TOKEN`), compared in constant time
//! ([`hookq_core::sign::same_secret`]); a missing or wrong token gets 401
//! with `WWW-Authenticate: Bearer`. Without a configured token every route
//! here answers 404 saying the API is off and how to turn it on.
//!
//! What it reads: queue depths and the DLQ from the queue (shared by every
//! worker), endpoint and app figures from this process's
//! [`crate::stats::Stats`] (its own since it started), endpoints' targets
//! from the app registry. Answers never hold an app secret, an endpoint's
//! headers or the token; URLs go through [`hookq_core::endpoint::redact_url`] (by way of
//! `EndpointTarget::describe`). Errors are JSON `{"error": …}`: a bad query
//! or body is a 400 naming the field, a queue that does not answer a 503.

use super::Admin;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use hookq_core::Config;
use hookq_core::EndpointTarget;
use hookq_core::job::Job;
use hookq_core::{DeadLetter, now_ms};
use hookq_queue::{DlqEntry, DlqFilter, QueueError};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The OpenAPI document, as `docs/openapi.json` holds it.
pub const OPENAPI: &str = include_str!("../../../../docs/openapi.json");

/// Most entries one DLQ page holds, and the default.
pub const MAX_PAGE: usize = 500;
const DEFAULT_PAGE: usize = 50;
/// The largest age bound accepted, in seconds (as the document says).
const MAX_AGE_S: u64 = 1_000_000_000_000;
/// The largest offset accepted (as the document says).
const MAX_OFFSET: u64 = 1_000_000_000;
/// Most ids one replay or purge names.
const MAX_IDS: usize = 500;

const OFF: &str = "the admin API is off: set worker.admin_token in config.json or the HOOKQ_ADMIN_TOKEN environment variable (at least 16 characters) to turn it on";

/// The API's routes, behind the token check.
pub fn routes(admin: Admin) -> Router<Admin> {
    Router::new()
        .route("/openapi.json", get(openapi))
        .route("/api/v1/overview", get(overview))
        .route("/api/v1/queue", get(queue))
        .route("/api/v1/apps", get(apps))
        .route("/api/v1/endpoints", get(endpoints))
        .route(
            "/api/v1/endpoints/{app_id}/{endpoint_id}",
            get(one_endpoint),
        )
        .route("/api/v1/dlq", get(dlq_list))
        .route("/api/v1/dlq/replay", post(dlq_replay))
        .route("/api/v1/dlq/purge", post(dlq_purge))
        .route("/api/v1/dlq/{id}", get(dlq_entry))
        .route("/api", any(unknown))
        .route("/api/{*rest}", any(unknown))
        .layer(middleware::from_fn_with_state(admin, authorize))
}

/// Logs at start whether the API is on (never the token).
pub fn log_state(config: &Config) {
    if config.worker.admin_token.is_some() {
        tracing::info!("admin API on (/api/v1, /openapi.json; bearer token required)");
    } else {
        tracing::info!("{OFF}");
    }
}

/// A JSON answer.
fn reply(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body.to_string(),
    )
        .into_response()
}

/// A JSON error answer.
fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    reply(status, json!({ "error": message.to_string() }))
}

fn ok(body: Value) -> Response {
    reply(StatusCode::OK, body)
}

/// What a queue error becomes: the queue did not answer, or answered an error.
fn queue_error(e: QueueError) -> Response {
    error(StatusCode::SERVICE_UNAVAILABLE, e)
}

/// The token check in front of every route of the API.
async fn authorize(State(admin): State<Admin>, request: Request, next: Next) -> Response {
    let Some(token) = &admin.shared.config.worker.admin_token else {
        return error(StatusCode::NOT_FOUND, OFF);
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    match given {
        Some(t) if hookq_core::sign::same_secret(t, token.expose()) => next.run(request).await,
        given => {
            let why = if given.is_some() {
                "wrong admin token"
            } else {
                "an admin token is required: Authorization: Bearer <token>"
            };
            let mut r = error(StatusCode::UNAUTHORIZED, why);
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"hookq admin\""),
            );
            r
        }
    }
}

async fn unknown() -> Response {
    error(StatusCode::NOT_FOUND, "no such admin API route")
}

async fn openapi() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        OPENAPI,
    )
        .into_response()
}

async fn queue_view(admin: &Admin) -> Result<Value, Response> {
    let q = &admin.shared.queue;
    let d = q.depth().await.map_err(queue_error)?;
    Ok(json!({
        "driver": q.name(),
        "depth": {"ready": d.ready, "delayed": d.delayed, "held": d.held, "dead": d.dead},
    }))
}

async fn queue(State(admin): State<Admin>) -> Response {
    match queue_view(&admin).await {
        Ok(v) => ok(v),
        Err(r) => r,
    }
}

/// The figures every view sums, in the document's names.
const TOTALS: [&str; 5] = [
    "events_delivered",
    "requests_delivered",
    "requests_failed",
    "retries_scheduled",
    "dead_lettered",
];

async fn overview(State(admin): State<Admin>) -> Response {
    let queue = match queue_view(&admin).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let views = endpoint_views(&admin, None).await;
    let mut states: BTreeMap<&str, u64> = ["healthy", "failing", "idle"]
        .into_iter()
        .map(|s| (s, 0))
        .collect();
    for v in &views {
        if let Some(n) = v["state"].as_str().and_then(|s| states.get_mut(s)) {
            *n += 1;
        }
    }
    ok(json!({
        "queue": queue,
        "worker": {
            "held_jobs": admin.shared.held_jobs(),
            "uptime_s": admin.shared.stats.uptime().as_secs(),
            "version": env!("CARGO_PKG_VERSION"),
        },
        "totals": sum(&views, &TOTALS),
        "endpoints": states,
    }))
}

/// The named integer fields of `views`, summed.
fn sum(views: &[Value], fields: &[&str]) -> Map<String, Value> {
    fields
        .iter()
        .map(|f| {
            let n: u64 = views.iter().filter_map(|v| v[*f].as_u64()).sum();
            (f.to_string(), n.into())
        })
        .collect()
}

/// Every endpoint known to this worker (of `only_app`, when given): each
/// endpoint of the configured apps and of the apps it delivered to, as the
/// registry has them now, with this process's figures; and the endpoints it
/// has figures for that are no longer configured (target and URL null).
async fn endpoint_views(admin: &Admin, only_app: Option<&str>) -> Vec<Value> {
    let shared = &admin.shared;
    let mut figures: HashMap<(String, String), crate::stats::EndpointStats> = shared
        .stats
        .snapshot()
        .into_iter()
        .map(|s| ((s.app_id, s.endpoint), s.stats))
        .collect();
    let mut app_ids: BTreeSet<String> = shared.config.apps.iter().map(|a| a.id.clone()).collect();
    app_ids.extend(figures.keys().map(|(a, _)| a.clone()));
    let mut views = Vec::new();
    for app_id in app_ids {
        if only_app.is_some_and(|only| only != app_id) {
            continue;
        }
        if let Ok(app) = shared.apps.app(&app_id).await {
            for ep in &app.endpoints {
                let stats = figures.remove(&(app_id.clone(), ep.id.clone()));
                views.push(endpoint_view(
                    admin,
                    &app_id,
                    &ep.id,
                    Some(&ep.target),
                    stats.unwrap_or_default(),
                ));
            }
        }
        let mut gone: Vec<_> = figures
            .keys()
            .filter(|(a, _)| *a == app_id)
            .cloned()
            .collect();
        gone.sort();
        for key in gone {
            if let Some(stats) = figures.remove(&key) {
                views.push(endpoint_view(admin, &key.0, &key.1, None, stats));
            }
        }
    }
    views
}

fn endpoint_view(
    admin: &Admin,
    app_id: &str,
    endpoint_id: &str,
    target: Option<&EndpointTarget>,
    s: crate::stats::EndpointStats,
) -> Value {
    let latency = s.latency_ms();
    json!({
        "app_id": app_id,
        "endpoint": endpoint_id,
        "target": target.map(|t| match t {
            EndpointTarget::Http(_) => "http",
            EndpointTarget::Lambda(_) => "lambda",
        }),
        // `describe` shows an HTTP URL only through `endpoint::redact_url`.
        "url": target.map(EndpointTarget::describe),
        "state": match s.last_delivered {
            None => "idle",
            Some(true) => "healthy",
            Some(false) => "failing",
        },
        "circuit": admin.shared.health.circuit(app_id, endpoint_id),
        "events_delivered": s.events_delivered,
        "requests_delivered": s.requests_delivered,
        "requests_failed": s.requests_failed,
        "retries_scheduled": s.retries_scheduled,
        "dead_lettered": s.dead_lettered,
        "in_flight": admin.shared.in_flight(app_id, endpoint_id),
        "last_status": s.last_status,
        "last_error": s.last_error,
        "last_error_ms": s.last_error_ms,
        "last_success_ms": s.last_success_ms,
        "latency": {
            "samples": s.latency_samples(),
            "mean_ms": latency.map(|l| l.0),
            "max_ms": latency.map(|l| l.1),
        },
    })
}

async fn endpoints(State(admin): State<Admin>, RawQuery(q): RawQuery) -> Response {
    let q = query(q.as_deref());
    let views = endpoint_views(&admin, q.get("app").map(String::as_str)).await;
    ok(json!({ "endpoints": views }))
}

async fn one_endpoint(
    State(admin): State<Admin>,
    Path((app_id, endpoint_id)): Path<(String, String)>,
) -> Response {
    endpoint_views(&admin, Some(&app_id))
        .await
        .into_iter()
        .find(|v| v["endpoint"] == endpoint_id.as_str())
        .map_or_else(
            || {
                error(
                    StatusCode::NOT_FOUND,
                    "no such endpoint known to this worker",
                )
            },
            ok,
        )
}

async fn apps(State(admin): State<Admin>) -> Response {
    let views = endpoint_views(&admin, None).await;
    let mut by_app: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for v in views {
        let app = v["app_id"].as_str().unwrap_or_default().to_string();
        by_app.entry(app).or_default().push(v);
    }
    let apps: Vec<Value> = by_app
        .into_iter()
        .map(|(app_id, eps)| {
            let mut app = sum(&eps, &TOTALS);
            app.extend(sum(&eps, &["in_flight"]));
            // The most recent failure and success over the app's endpoints.
            let last_error = eps
                .iter()
                .filter(|e| e["last_error_ms"].is_u64())
                .max_by_key(|e| e["last_error_ms"].as_u64());
            let last_success = eps
                .iter()
                .filter_map(|e| e["last_success_ms"].as_u64())
                .max();
            app.insert("app_id".into(), app_id.into());
            app.insert("endpoints".into(), eps.len().into());
            app.insert(
                "last_error".into(),
                last_error.map_or(Value::Null, |e| e["last_error"].clone()),
            );
            app.insert(
                "last_error_ms".into(),
                last_error.map_or(Value::Null, |e| e["last_error_ms"].clone()),
            );
            app.insert("last_success_ms".into(), last_success.into());
            Value::Object(app)
        })
        .collect();
    ok(json!({ "apps": apps }))
}

/// A query string's parameters (the last of a repeated one wins).
fn query(q: Option<&str>) -> HashMap<String, String> {
    url::form_urlencoded::parse(q.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

/// A whole number from 0 to `max`, or why not (naming the field).
fn number(field: &str, text: &str, max: u64) -> Result<u64, String> {
    text.parse::<u64>()
        .ok()
        .filter(|n| *n <= max)
        .ok_or_else(|| format!("{field}: must be a whole number from 0 to {max}, not {text:?}"))
}

/// The conditions shared by the list's query and the action's `filter`.
#[derive(Default)]
struct Conditions {
    app: Option<String>,
    endpoint: Option<String>,
    reason: Option<String>,
    older_than_s: Option<u64>,
    newer_than_s: Option<u64>,
}

impl Conditions {
    fn is_empty(&self) -> bool {
        self.app.is_none()
            && self.endpoint.is_none()
            && self.reason.is_none()
            && self.older_than_s.is_none()
            && self.newer_than_s.is_none()
    }

    fn filter(self, ids: Option<Vec<String>>) -> DlqFilter {
        let now = now_ms();
        let ago = |s: u64| now.saturating_sub(s.saturating_mul(1000));
        DlqFilter {
            app_id: self.app,
            endpoint: self.endpoint,
            reason: self.reason,
            failed_before_ms: self.older_than_s.map(ago),
            failed_after_ms: self.newer_than_s.map(ago),
            ids,
            ..Default::default()
        }
    }
}

async fn dlq_list(State(admin): State<Admin>, RawQuery(q): RawQuery) -> Response {
    let q = query(q.as_deref());
    let parsed = (|| {
        let num = |f: &str, max| q.get(f).map(|t| number(f, t, max)).transpose();
        let conditions = Conditions {
            app: q.get("app").cloned(),
            endpoint: q.get("endpoint").cloned(),
            reason: q.get("reason").cloned(),
            older_than_s: num("older_than_s", MAX_AGE_S)?,
            newer_than_s: num("newer_than_s", MAX_AGE_S)?,
        };
        let limit = num("limit", MAX_PAGE as u64)?.unwrap_or(DEFAULT_PAGE as u64) as usize;
        if limit == 0 {
            return Err(format!("limit: must be from 1 to {MAX_PAGE}"));
        }
        let offset = num("offset", MAX_OFFSET)?.unwrap_or(0) as usize;
        Ok((conditions, limit, offset))
    })();
    let (conditions, limit, offset) = match parsed {
        Ok(p) => p,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    // One more than the page: whether there is a next one.
    let filter = DlqFilter {
        limit: Some(limit + 1),
        offset,
        ..conditions.filter(None)
    };
    let mut entries = match admin.shared.queue.dlq_entries(&filter).await {
        Ok(e) => e,
        Err(e) => return queue_error(e),
    };
    let more = entries.len() > limit;
    entries.truncate(limit);
    ok(json!({
        "entries": entries.iter().map(|e| summary(e).into()).collect::<Vec<Value>>(),
        "offset": offset,
        "limit": limit,
        "next_offset": more.then_some(offset + limit),
    }))
}

/// An entry's summary fields.
fn summary(e: &DlqEntry) -> Map<String, Value> {
    let d = &e.entry;
    let mut m = Map::new();
    m.insert("id".into(), e.id.as_str().into());
    m.insert("app_id".into(), d.app_id.clone().into());
    m.insert("endpoint".into(), d.endpoint.clone().into());
    m.insert("reason".into(), d.reason.as_str().into());
    m.insert("failed_at_ms".into(), d.failed_at_ms.into());
    m.insert("attempts".into(), d.attempts.into());
    m.insert("last_status".into(), d.last_status.into());
    m.insert(
        "events".into(),
        job_of(d).map_or(0, |j| events(&j).len()).into(),
    );
    m
}

/// The entry's job, when it is a usable one.
fn job_of(d: &DeadLetter) -> Option<Job> {
    d.job_text().and_then(|t| Job::decode(&t).ok())
}

fn events(job: &Job) -> Vec<&hookq_core::Event> {
    match job {
        Job::Event(j) => vec![&j.event],
        Job::Retry(j) => j.events.iter().collect(),
    }
}

async fn dlq_entry(State(admin): State<Admin>, Path(id): Path<String>) -> Response {
    let filter = DlqFilter {
        ids: Some(vec![id]),
        limit: Some(1),
        ..Default::default()
    };
    let entry = match admin.shared.queue.dlq_entries(&filter).await {
        Ok(mut e) if !e.is_empty() => e.swap_remove(0),
        Ok(_) => return error(StatusCode::NOT_FOUND, "no dead-letter entry with this id"),
        Err(e) => return queue_error(e),
    };
    let mut m = summary(&entry);
    let d = &entry.entry;
    let job = job_of(d);
    let (kind, webhook_id) = match &job {
        Some(Job::Retry(r)) => ("retry", Some(r.webhook_id.clone())),
        Some(Job::Event(_)) => ("event", None),
        None => ("unusable", None),
    };
    let event_list: Vec<Value> = job
        .as_ref()
        .map(|j| {
            events(j)
                .into_iter()
                .filter_map(|e| serde_json::to_value(e).ok())
                .collect()
        })
        .unwrap_or_default();
    m.insert("body_excerpt".into(), d.body_excerpt.clone().into());
    m.insert("kind".into(), kind.into());
    m.insert("webhook_id".into(), webhook_id.into());
    m.insert("event_list".into(), event_list.into());
    m.insert("job".into(), d.job.as_str().into());
    ok(Value::Object(m))
}

/// What a replay or purge body selects, or what is wrong with it (a 400).
fn action(body: &[u8], purge: bool) -> Result<DlqFilter, String> {
    let bad = |why: String| why; // every refusal below is a 400
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| bad(format!("the body must be a JSON object: {e}")))?;
    let Value::Object(o) = v else {
        return Err(bad("the body must be a JSON object".into()));
    };
    if let Some(k) = o
        .keys()
        .find(|k| !["ids", "filter", "all"].contains(&k.as_str()))
    {
        return Err(bad(format!(
            "{k}: unknown key (the body takes ids, filter, all)"
        )));
    }
    let ids = match o.get("ids") {
        None => None,
        Some(Value::Array(a)) if a.len() > MAX_IDS => {
            return Err(bad(format!("ids: at most {MAX_IDS} ids at once")));
        }
        Some(Value::Array(a)) => Some(
            a.iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| bad(format!("ids[{i}]: must be a string")))
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(_) => return Err(bad("ids: must be an array of entry ids".into())),
    };
    let all = match o.get("all") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad("all: must be true or false".into())),
    };
    let conditions = match o.get("filter") {
        None => Conditions::default(),
        Some(Value::Object(f)) => conditions_of(f)?,
        Some(_) => return Err(bad("filter: must be an object".into())),
    };
    if ids.is_none() && conditions.is_empty() && !all {
        let verb = if purge { "purge" } else { "replay" };
        return Err(bad(format!(
            "nothing selected: give ids, or a filter with at least one condition, or \"all\": true to {verb} every entry"
        )));
    }
    Ok(conditions.filter(ids))
}

/// The conditions of a body's `filter` object.
fn conditions_of(f: &Map<String, Value>) -> Result<Conditions, String> {
    let mut c = Conditions::default();
    for (k, v) in f {
        let text = || {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("filter.{k}: must be a string"))
        };
        let secs = || {
            v.as_u64()
                .filter(|n| *n <= MAX_AGE_S)
                .ok_or_else(|| format!("filter.{k}: must be a whole number from 0 to {MAX_AGE_S}"))
        };
        match k.as_str() {
            "app" => c.app = Some(text()?),
            "endpoint" => c.endpoint = Some(text()?),
            "reason" => c.reason = Some(text()?),
            "older_than_s" => c.older_than_s = Some(secs()?),
            "newer_than_s" => c.newer_than_s = Some(secs()?),
            _ => {
                return Err(format!(
                    "filter.{k}: unknown condition (app, endpoint, reason, older_than_s, newer_than_s)"
                ));
            }
        }
    }
    Ok(c)
}

async fn dlq_replay(State(admin): State<Admin>, body: Bytes) -> Response {
    let filter = match action(&body, false) {
        Ok(f) => f,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    match admin.shared.queue.dlq_replay(&filter).await {
        Ok(n) => {
            tracing::info!(replayed = n, "dlq replay through the admin API");
            ok(json!({ "replayed": n }))
        }
        Err(e) => queue_error(e),
    }
}

async fn dlq_purge(State(admin): State<Admin>, body: Bytes) -> Response {
    let filter = match action(&body, true) {
        Ok(f) => f,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    match admin.shared.queue.dlq_purge(&filter).await {
        Ok(n) => {
            tracing::info!(purged = n, "dlq purge through the admin API");
            ok(json!({ "purged": n }))
        }
        Err(e) => queue_error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_document_is_json_and_names_every_route() {
        let doc: Value = serde_json::from_str(OPENAPI).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for p in [
            "/openapi.json",
            "/api/v1/overview",
            "/api/v1/queue",
            "/api/v1/apps",
            "/api/v1/endpoints",
            "/api/v1/endpoints/{app_id}/{endpoint_id}",
            "/api/v1/dlq",
            "/api/v1/dlq/{id}",
            "/api/v1/dlq/replay",
            "/api/v1/dlq/purge",
        ] {
            assert!(paths.contains_key(p), "{p} missing from docs/openapi.json");
        }
    }

    #[test]
    fn bodies_are_refused_with_their_reason() {
        let refused = |body: &str, purge| match action(body.as_bytes(), purge) {
            Ok(_) => panic!("{body} accepted"),
            Err(why) => why,
        };
        for body in [
            "",
            "[]",
            "{}",
            r#"{"all": false}"#,
            r#"{"ids": "x"}"#,
            r#"{"ids": [1]}"#,
            r#"{"filter": {"app": 1}}"#,
            r#"{"filter": {"older_than_s": -1}}"#,
            r#"{"filter": {"nope": "x"}}"#,
            r#"{"extra": 1}"#,
        ] {
            assert!(!refused(body, true).is_empty(), "{body}");
        }
        let f = action(br#"{"filter": {"app": "a", "reason": "HTTP"}}"#, true).unwrap();
        assert_eq!(f.app_id.as_deref(), Some("a"));
        assert!(action(br#"{"all": true}"#, true).unwrap().is_everything());
        assert_eq!(
            action(br#"{"ids": ["ab"]}"#, false).unwrap().ids,
            Some(vec!["ab".to_string()])
        );
    }
}
