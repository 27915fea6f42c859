//! The admin HTTP server: `/metrics` (Prometheus text: the worker's, and an
//! in-process ingest's when `ingest.enabled`), `/health` (the process
//! answers) and `/ready` (the queue answered the last receive, takes
//! writes, and the apps can be resolved), open to probes and scrapers; the
//! admin API under `/api/v1` and its OpenAPI document at `/openapi.json`,
//! behind the bearer token `worker.admin_token` ([`api`]); and the web
//! console's static files under `/console` ([`console`]), which reads
//! everything through the API.

pub mod api;
pub mod console;

use crate::worker::Shared;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use hookq_ingest::IngestMetrics;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio_util::sync::CancellationToken;

/// What the admin routes read: the worker's shared state and, when the
/// worker serves the ingest too, the ingest's metrics.
#[derive(Clone)]
pub struct Admin {
    shared: Arc<Shared>,
    ingest: Option<Arc<IngestMetrics>>,
}

/// The admin routes over a worker's shared state (and an in-process ingest's metrics).
pub fn router(shared: Arc<Shared>, ingest: Option<Arc<IngestMetrics>>) -> Router {
    let admin = Admin { shared, ingest };
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .merge(api::routes(admin.clone()))
        .with_state(admin)
        .merge(console::routes())
}

/// Serves the admin routes on `listener` until `shutdown` fires.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    ingest: Option<Arc<IngestMetrics>>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    api::log_state(&shared.config);
    axum::serve(listener, router(shared, ingest))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

async fn metrics(State(Admin { shared, ingest }): State<Admin>) -> impl IntoResponse {
    if let Ok(depth) = shared.queue.depth().await {
        shared.metrics.set_depth(&depth);
    }
    shared.metrics.jobs_held.set(shared.held_jobs() as i64);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        shared
            .metrics
            .render_with(ingest.as_ref().map(|m| m.registry())),
    )
}

async fn ready(State(Admin { shared, .. }): State<Admin>) -> impl IntoResponse {
    if !shared.ready.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "queue not reachable\n")
    } else if !shared.queue.writable() {
        (StatusCode::SERVICE_UNAVAILABLE, "queue refuses writes\n")
    } else if !shared.apps.is_ready() {
        (StatusCode::SERVICE_UNAVAILABLE, "apps cannot be resolved\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}
