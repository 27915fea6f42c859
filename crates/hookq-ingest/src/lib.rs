//! hookq's ingest: the door for realtime servers nobody will patch.
//!
//! Sockudo, Soketi and Pusher Channels send their webhooks to a URL. Point
//! that URL at `POST /pusher/webhooks` here and every event becomes a hookq
//! job: the ingest finds the app by `X-Pusher-Key` in the same registry the
//! worker uses, checks `X-Pusher-Signature` (HMAC-SHA256 of the body with the
//! app's secret, compared in constant time), reads the body as a Pusher
//! webhook, and answers only after the jobs are durably in the queue:
//!
//! | answer | when |
//! |---|---|
//! | `200` | every job of the request is in the queue (or the same body was accepted within `ingest.dedup_window_ms`) |
//! | `400` | the body is not a Pusher webhook (the message names the event); an event whose name hookq does not know is skipped, not refused |
//! | `401` | no key, an unknown key, or a wrong signature — one answer for all three |
//! | `408` | the body did not arrive within `ingest.body_timeout_ms` |
//! | `413` | the body is over `ingest.max_body_bytes` |
//! | `503` + `Retry-After` | the queue (or the app registry) cannot take it now: the sender retries |
//!
//! The ingest holds the push side of the queue and the app registry, nothing
//! else, so it is stateless: any number of replicas serve one address.
//! [`request`] turns a body into jobs (pure), [`serve`] is the HTTP server
//! (header and body timeouts, graceful shutdown), [`metrics`] what it counts.

pub mod metrics;
pub mod request;
pub mod serve;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use hookq_core::config::{INGEST_ROUTE, IngestSettings};
use hookq_core::sign::verify_pusher_signature;
use hookq_core::{AppRegistry, LookupError};
use hookq_queue::{Keyed, Once, QueueError, QueuePush};
use http_body_util::BodyExt;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{Mutex, mpsc, oneshot};
use tracing::{debug, warn};

pub use metrics::IngestMetrics;

/// What `Retry-After` says on a `503`, in seconds.
const RETRY_AFTER_SECS: &str = "1";

/// The ingest: the app registry, the queue's push side, its settings and metrics.
pub struct Ingest {
    apps: Arc<dyn AppRegistry>,
    queue: Arc<dyn QueuePush>,
    settings: IngestSettings,
    metrics: Arc<IngestMetrics>,
    commits: mpsc::Sender<Commit>,
}

/// Most requests whose pushes go to the queue in one call.
const GROUP_MAX: usize = 64;
/// Calls to the queue in flight at once, each carrying what waited.
const COMMITTERS: usize = 4;

/// One request's keyed push, waiting for a committer.
struct Commit {
    group: Keyed,
    done: oneshot::Sender<Result<Once, QueueError>>,
}

/// Group commit: takes every push waiting at this moment (at least one, at
/// most [`GROUP_MAX`]), sends them in one call ([`QueuePush::push_once_each`]:
/// one script call on Redis), and answers each request with its own result.
/// [`COMMITTERS`] of these share the queue of waiting pushes, so while one
/// call is in flight the next takes what arrived meanwhile; at low load each
/// push goes alone, at once. Ends when the ingest is dropped.
async fn commit(queue: Arc<dyn QueuePush>, waiting: Arc<Mutex<mpsc::Receiver<Commit>>>) {
    let mut taken = Vec::with_capacity(GROUP_MAX);
    loop {
        if waiting.lock().await.recv_many(&mut taken, GROUP_MAX).await == 0 {
            return;
        }
        let (groups, done): (Vec<Keyed>, Vec<_>) =
            taken.drain(..).map(|c| (c.group, c.done)).unzip();
        let answers = queue.push_once_each(groups).await;
        for (done, answer) in done.into_iter().zip(answers) {
            // The request may have gone (its connection closed): nothing to tell.
            let _ = done.send(answer);
        }
    }
}

/// An answer to one request: its status, a short JSON body, and the
/// outcome it is counted under in `hookq_ingest_requests_total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status.
    pub status: StatusCode,
    /// The JSON body.
    pub body: String,
    /// `accepted`, `duplicate`, `unauthorized`, `bad_request`, `timeout`,
    /// `too_large` or `unavailable`.
    pub outcome: &'static str,
}

impl Answer {
    fn accepted(accepted: usize, skipped: usize) -> Self {
        Self {
            status: StatusCode::OK,
            body: format!(r#"{{"ok":true,"accepted":{accepted},"skipped":{skipped}}}"#),
            outcome: "accepted",
        }
    }

    fn duplicate() -> Self {
        Self {
            status: StatusCode::OK,
            body: serde_json::json!({ "ok": true, "duplicate": true }).to_string(),
            outcome: "duplicate",
        }
    }

    fn error(status: StatusCode, outcome: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: serde_json::json!({ "error": message.into() }).to_string(),
            outcome,
        }
    }

    fn unauthorized() -> Self {
        Self::error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "unknown key or invalid signature",
        )
    }

    fn unavailable(message: &str) -> Self {
        Self::error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            self.body,
        )
            .into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        response
    }
}

impl Ingest {
    /// An ingest over these apps and this queue; starts its committers, so
    /// it is made inside a Tokio runtime.
    pub fn new(
        settings: IngestSettings,
        apps: Arc<dyn AppRegistry>,
        queue: Arc<dyn QueuePush>,
        metrics: Arc<IngestMetrics>,
    ) -> Arc<Self> {
        let (commits, waiting) = mpsc::channel(GROUP_MAX * COMMITTERS * 4);
        let waiting = Arc::new(Mutex::new(waiting));
        for _ in 0..COMMITTERS {
            tokio::spawn(commit(queue.clone(), waiting.clone()));
        }
        Arc::new(Self {
            apps,
            queue,
            settings,
            metrics,
            commits,
        })
    }

    /// Pushes one request's jobs under its key (none with a zero window),
    /// with the pushes of the requests waiting at the same moment ([`commit`]).
    async fn push_once(&self, group: Keyed) -> Result<Once, QueueError> {
        let (done, answer) = oneshot::channel();
        let gone = || QueueError::Unavailable("the ingest is stopping".into());
        self.commits
            .send(Commit { group, done })
            .await
            .map_err(|_| gone())?;
        answer.await.unwrap_or_else(|_| Err(gone()))
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &IngestSettings {
        &self.settings
    }

    /// Its metrics.
    pub fn metrics(&self) -> &Arc<IngestMetrics> {
        &self.metrics
    }

    /// The webhook route, `POST /pusher/webhooks`.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route(INGEST_ROUTE, post(webhook))
            .with_state(self.clone())
    }

    /// The admin routes of a stand-alone ingest: `/metrics`, `/health`, `/ready`.
    pub fn admin_router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/metrics", get(metrics))
            .route("/health", get(|| async { "ok\n" }))
            .route("/ready", get(ready))
            .with_state(self.clone())
    }

    /// Answers one request whose body has been read.
    pub async fn accept(&self, headers: &HeaderMap, body: &[u8]) -> Answer {
        let answer = self.decide(headers, body).await;
        self.metrics.request(answer.outcome);
        answer
    }

    async fn decide(&self, headers: &HeaderMap, body: &[u8]) -> Answer {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let (Some(key), Some(signature)) = (text("x-pusher-key"), text("x-pusher-signature"))
        else {
            return Answer::unauthorized();
        };
        let app = match self.apps.app_by_key(key).await {
            Ok(app) => app,
            Err(LookupError::Unknown(_)) => {
                // The same work as for a known key, so the answer's timing
                // does not tell which keys exist.
                let _ = verify_pusher_signature(key, body, signature);
                debug!(key, "ingest: unknown key");
                return Answer::unauthorized();
            }
            Err(e) => {
                warn!(key, error = %e, "ingest: the app cannot be looked up");
                return Answer::unavailable("apps cannot be resolved");
            }
        };
        if !verify_pusher_signature(&app.secret, body, signature) {
            debug!(app = %app.id, "ingest: invalid signature");
            return Answer::unauthorized();
        }
        let webhook = match request::parse(body) {
            Ok(webhook) => webhook,
            Err(request::NotAWebhook(message)) => {
                debug!(app = %app.id, %message, "ingest: not a webhook");
                return Answer::error(StatusCode::BAD_REQUEST, "bad_request", message);
            }
        };
        let digest = request::digest(&app.id, body);
        let jobs = request::jobs(&app, &digest, webhook, hookq_core::now_ms());
        let (accepted, skipped) = (jobs.messages.len(), jobs.skipped);
        self.metrics.events("skipped", skipped);
        if accepted == 0 {
            return Answer::accepted(0, skipped);
        }
        let started = Instant::now();
        // 128 bits of the digest: collisions stay out of reach, and each marker
        // costs Redis 32 bytes less than with all 256. A zero window: no key.
        let pushed = self
            .push_once(Keyed {
                key: format!("ingest:{}", &digest[..32]),
                window: self.settings.dedup_window,
                messages: jobs.messages,
            })
            .await;
        self.metrics
            .push_seconds
            .observe(started.elapsed().as_secs_f64());
        match pushed {
            Ok(Once::Pushed) => {
                self.metrics.events("accepted", accepted);
                Answer::accepted(accepted, skipped)
            }
            Ok(Once::Duplicate) => {
                self.metrics.events("duplicate", accepted);
                Answer::duplicate()
            }
            Err(e) => {
                warn!(app = %app.id, events = accepted, error = %e, "ingest: the queue refused a request; the sender will retry");
                Answer::unavailable("the queue cannot take it now")
            }
        }
    }
}

async fn webhook(State(ingest): State<Arc<Ingest>>, headers: HeaderMap, body: Body) -> Answer {
    match read_body(&ingest.settings, &headers, body).await {
        Ok(bytes) => ingest.accept(&headers, &bytes).await,
        Err(answer) => {
            ingest.metrics.request(answer.outcome);
            answer
        }
    }
}

/// The whole body, within the size limit and the body timeout.
async fn read_body(
    settings: &IngestSettings,
    headers: &HeaderMap,
    body: Body,
) -> Result<Bytes, Answer> {
    let limit = settings.max_body_bytes;
    let too_large = || {
        Answer::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the body is over {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let read = http_body_util::Limited::new(body, limit).collect();
    match tokio::time::timeout(settings.body_timeout, read).await {
        Err(_) => Err(Answer::error(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            "the body did not arrive in time",
        )),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large())
        }
        Ok(Err(e)) => Err(Answer::error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("the body could not be read: {e}"),
        )),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

async fn metrics(State(ingest): State<Arc<Ingest>>) -> impl IntoResponse {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, ingest.metrics.registry());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
}

/// Ready while the queue answers (asked at each probe) and apps can be resolved.
async fn ready(State(ingest): State<Arc<Ingest>>) -> impl IntoResponse {
    if ingest.queue.ping().await.is_err() {
        (StatusCode::SERVICE_UNAVAILABLE, "queue not reachable\n")
    } else if !ingest.apps.is_ready() {
        (StatusCode::SERVICE_UNAVAILABLE, "apps cannot be resolved\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}
