//! A webhook receiver on 127.0.0.1 that checks requests the way receivers'
//! libraries do, records them, and answers from a script per path.
//!
//! Signatures are verified here with `hmac` and `sha2` directly, not with
//! hookq's signer, so a bug there cannot hide itself. A request is `valid`
//! when its `Content-Type` is exactly `application/json`, its
//! `X-Pusher-Signature` is the HMAC of the body under the secret of its
//! `X-Pusher-Key`, and its `time_ms` is within 5 minutes of now (what the
//! official Python library checks).

use super::wait::poll;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One answer the receiver gives.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    /// Wait this long before answering (a slow or hung receiver).
    pub delay: Duration,
    pub body: &'static str,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            delay: Duration::ZERO,
            body: "",
        }
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn with_body(self, body: &'static str) -> Self {
        Self { body, ..self }
    }

    pub fn after(self, delay: Duration) -> Self {
        Self { delay, ..self }
    }
}

/// A request as the receiver saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub path: String,
    pub headers: HashMap<String, Vec<String>>,
    pub body: Vec<u8>,
    pub envelope: Value,
    pub at: Instant,
    pub valid: bool,
    pub answered: u16,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .and_then(|v| v.first())
            .map(String::as_str)
    }

    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .get(name)
            .map(|v| v.iter().map(String::as_str).collect())
            .unwrap_or_default()
    }

    pub fn events(&self) -> Vec<Value> {
        self.envelope["events"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

#[derive(Default)]
struct Inner {
    secrets: HashMap<String, String>,
    scripts: HashMap<String, VecDeque<Reply>>,
    always: HashMap<String, Reply>,
    /// Paths answering 500 to `pct` percent of requests, spread evenly: (pct, requests so far).
    flaky: HashMap<String, (u64, u64)>,
    seen: Vec<Recorded>,
}

#[derive(Clone)]
pub struct Receiver {
    pub port: u16,
    inner: Arc<Mutex<Inner>>,
}

impl Receiver {
    /// Starts a receiver in the current runtime that knows these (key, secret) pairs.
    pub async fn start(keys: &[(&str, &str)]) -> Receiver {
        let inner = Arc::new(Mutex::new(Inner {
            secrets: keys
                .iter()
                .map(|(k, s)| (k.to_string(), s.to_string()))
                .collect(),
            ..Inner::default()
        }));
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(inner.clone());
        let port = super::serve(app).await;
        Receiver { port, inner }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap()
    }

    /// The next answers on `path`, in order; after them, `200`.
    pub fn script(&self, path: &str, replies: Vec<Reply>) {
        self.lock().scripts.insert(path.to_string(), replies.into());
    }

    /// Every answer on `path` (after any script).
    pub fn always(&self, path: &str, reply: Reply) {
        self.lock().always.insert(path.to_string(), reply);
    }

    /// Answers 500 to `pct` percent of the requests on `path` (every request
    /// whose running count falls in the failing share), 200 to the rest.
    pub fn flaky(&self, path: &str, pct: u64) {
        self.lock().flaky.insert(path.to_string(), (pct, 0));
    }

    pub fn requests(&self, path: &str) -> Vec<Recorded> {
        self.lock()
            .seen
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    pub fn all(&self) -> Vec<Recorded> {
        self.lock().seen.clone()
    }

    /// Events of the requests on `path` answered 2xx.
    pub fn delivered_events(&self, path: &str) -> Vec<Value> {
        self.requests(path)
            .iter()
            .filter(|r| (200..300).contains(&r.answered))
            .flat_map(|r| r.events())
            .collect()
    }

    /// Waits until `check` holds, polling every 25 ms; panics with `what` after `limit`.
    pub async fn wait_for(&self, what: &str, limit: Duration, check: impl Fn(&Receiver) -> bool) {
        let every = Duration::from_millis(25);
        poll(what, limit, every, || {
            let result = if check(self) {
                Ok(())
            } else {
                let seen: Vec<_> = self
                    .all()
                    .iter()
                    .map(|r| (r.path.clone(), r.answered, r.events().len()))
                    .collect();
                Err(format!("received so far (path, status, events): {seen:#?}"))
            };
            std::future::ready(result)
        })
        .await;
    }
}

/// HMAC-SHA256 hex, computed independently of hookq's signer.
pub fn hmac_hex(secret: &[u8], message: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(message);
    hex::encode(mac.finalize().into_bytes())
}

async fn handle(
    State(inner): State<Arc<Mutex<Inner>>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let mut map: HashMap<String, Vec<String>> = HashMap::new();
    for (k, v) in &headers {
        map.entry(k.as_str().to_string())
            .or_default()
            .push(v.to_str().unwrap_or("").to_string());
    }
    let envelope: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let reply = {
        let mut g = inner.lock().unwrap();
        let first = |n: &str| {
            map.get(n)
                .and_then(|v| v.first())
                .cloned()
                .unwrap_or_default()
        };
        let secret = g.secrets.get(&first("x-pusher-key")).cloned();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let fresh = envelope["time_ms"]
            .as_i64()
            .is_some_and(|t| t > 0 && (now - t).abs() < 300_000);
        let valid = first("content-type") == "application/json"
            && secret.is_some_and(|s| hmac_hex(s.as_bytes(), &body) == first("x-pusher-signature"))
            && fresh
            && envelope["events"].is_array();
        let flaky = g.flaky.get_mut(&path).map(|(pct, n)| {
            *n += 1;
            // Fails when this request moves the count of failures due so far,
            // rounded up: the first request fails, and at every point at
            // least `pct` % of the requests so far have failed.
            (*n * *pct).div_ceil(100) != ((*n - 1) * *pct).div_ceil(100)
        });
        let reply = g
            .scripts
            .get_mut(&path)
            .and_then(VecDeque::pop_front)
            .or_else(|| g.always.get(&path).cloned())
            .or_else(|| flaky.filter(|f| *f).map(|_| Reply::status(500)))
            .unwrap_or_else(|| Reply::status(200));
        g.seen.push(Recorded {
            path,
            headers: map,
            body: body.to_vec(),
            envelope,
            at: Instant::now(),
            valid,
            answered: reply.status,
        });
        reply
    };
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut resp = (StatusCode::from_u16(reply.status).unwrap(), reply.body).into_response();
    for (k, v) in reply.headers {
        resp.headers_mut().insert(k, v.parse().unwrap());
    }
    resp
}
