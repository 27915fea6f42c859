//! The verifying receiver: an HTTP/1 server on 127.0.0.1 inside the
//! benchmark process, on the benchmark's multi-threaded runtime.
//!
//! Every request's `X-Pusher-Signature` is checked against the HMAC-SHA256
//! (lowercase hex) of the raw body under the secret of its `X-Pusher-Key`,
//! computed here with `hmac` and `sha2` directly rather than with hookq's
//! signer. A bad signature is counted and answered 401. For every event the
//! receiver reads `data`, which the benchmark's producers set to the event's
//! enqueue time in Unix ms, and records enqueue→received latency. Counters
//! are per scenario: [`Receiver::reset`] starts a new one and says how many
//! events finish it; the moment the last of them arrives is recorded, so a
//! scenario's duration does not depend on how often anyone polls.

use anyhow::{Context, Result};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::serve::ListenerExt;
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a scenario saw.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// Requests answered (any status).
    pub requests: u64,
    /// Events in requests whose signature verified.
    pub events: u64,
    /// Requests whose signature did not verify.
    pub bad_signatures: u64,
    /// Body bytes of all requests.
    pub body_bytes: u64,
    /// TCP connections accepted.
    pub connections: u64,
    /// When the first request arrived, after the reset.
    pub first_at: Option<Duration>,
    /// When the target count of events was reached, after the reset.
    pub done_at: Option<Duration>,
    /// Every event's (arrival, in ms after the reset; enqueue→received latency, ms).
    pub samples: Vec<(u32, u32)>,
}

struct Inner {
    secrets: HashMap<String, Vec<u8>>,
    base: Mutex<Instant>,
    target: AtomicU64,
    requests: AtomicU64,
    events: AtomicU64,
    bad: AtomicU64,
    bytes: AtomicU64,
    connections: AtomicU64,
    /// Nanoseconds after `base` plus one; 0 while unset.
    first_at: AtomicU64,
    done_at: AtomicU64,
    latencies: Mutex<Vec<(u32, u32)>>,
    record_latency: AtomicUsize,
}

impl Inner {
    fn since_base(&self) -> u64 {
        let base = *self.base.lock().unwrap_or_else(|p| p.into_inner());
        u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX - 1) + 1
    }
}

/// The running receiver; stops when dropped.
pub struct Receiver {
    inner: Arc<Inner>,
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    events: Vec<EventData<'a>>,
}

#[derive(Deserialize)]
struct EventData<'a> {
    #[serde(borrow, default)]
    data: Option<Cow<'a, str>>,
}

impl Receiver {
    /// Starts a receiver that knows these `(key, secret)` pairs.
    pub async fn start(keys: &[(String, String)]) -> Result<Self> {
        let inner = Arc::new(Inner {
            secrets: keys
                .iter()
                .map(|(k, s)| (k.clone(), s.as_bytes().to_vec()))
                .collect(),
            base: Mutex::new(Instant::now()),
            target: AtomicU64::new(u64::MAX),
            requests: AtomicU64::new(0),
            events: AtomicU64::new(0),
            bad: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            first_at: AtomicU64::new(0),
            done_at: AtomicU64::new(0),
            latencies: Mutex::new(Vec::new()),
            record_latency: AtomicUsize::new(1),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the receiver")?;
        let port = listener.local_addr()?.port();
        let counted = inner.clone();
        let listener = listener.tap_io(move |tcp| {
            // What a production receiver does; the client sets it too.
            let _ = tcp.set_nodelay(true);
            counted.connections.fetch_add(1, Ordering::Relaxed);
        });
        let app = Router::new().fallback(handle).with_state(inner.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("receiver stopped: {e}");
            }
        });
        Ok(Self { inner, port, task })
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Starts a new scenario that ends when `target` events have arrived;
    /// `latency` says whether to record per-event latencies.
    pub fn reset(&self, target: u64, latency: bool) {
        let i = &self.inner;
        *i.base.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        i.target.store(target, Ordering::SeqCst);
        for c in [
            &i.requests,
            &i.events,
            &i.bad,
            &i.bytes,
            &i.connections,
            &i.first_at,
            &i.done_at,
        ] {
            c.store(0, Ordering::SeqCst);
        }
        i.record_latency
            .store(usize::from(latency), Ordering::SeqCst);
        i.latencies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Events received so far in this scenario.
    pub fn events(&self) -> u64 {
        self.inner.events.load(Ordering::Relaxed)
    }

    /// Waits until the target is reached or `limit` passes; whether it was reached.
    pub async fn wait_done(&self, limit: Duration) -> bool {
        let start = Instant::now();
        while self.inner.done_at.load(Ordering::Acquire) == 0 {
            if start.elapsed() > limit {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        true
    }

    /// What this scenario saw so far (the latencies are taken out).
    pub fn take(&self) -> Seen {
        let i = &self.inner;
        let at = |a: &AtomicU64| match a.load(Ordering::Acquire) {
            0 => None,
            n => Some(Duration::from_nanos(n - 1)),
        };
        Seen {
            requests: i.requests.load(Ordering::SeqCst),
            events: i.events.load(Ordering::SeqCst),
            bad_signatures: i.bad.load(Ordering::SeqCst),
            body_bytes: i.bytes.load(Ordering::SeqCst),
            connections: i.connections.load(Ordering::SeqCst),
            first_at: at(&i.first_at),
            done_at: at(&i.done_at),
            samples: std::mem::take(&mut *i.latencies.lock().unwrap_or_else(|p| p.into_inner())),
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Lowercase hex of HMAC-SHA256 of `body` under `secret`.
pub fn hmac_hex(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts any key length"),
    };
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

async fn handle(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let received_ms = hookq_core::now_ms();
    inner.requests.fetch_add(1, Ordering::Relaxed);
    inner.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
    let _ =
        inner
            .first_at
            .compare_exchange(0, inner.since_base(), Ordering::AcqRel, Ordering::Relaxed);
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let valid = header("x-pusher-key")
        .and_then(|k| inner.secrets.get(k))
        .zip(header("x-pusher-signature"))
        .is_some_and(|(secret, sig)| hmac_hex(secret, &body) == sig);
    let envelope = serde_json::from_slice::<Envelope>(&body).ok();
    let (true, Some(envelope)) = (valid, envelope) else {
        inner.bad.fetch_add(1, Ordering::Relaxed);
        return StatusCode::UNAUTHORIZED;
    };
    let n = envelope.events.len() as u64;
    if inner.record_latency.load(Ordering::Relaxed) == 1 {
        let arrival = u32::try_from(inner.since_base() / 1_000_000).unwrap_or(u32::MAX);
        let lat: Vec<(u32, u32)> = envelope
            .events
            .iter()
            .map(|e| {
                let sent: u64 = e
                    .data
                    .as_deref()
                    .and_then(|d| d.parse().ok())
                    .unwrap_or(received_ms);
                let ms = u32::try_from(received_ms.saturating_sub(sent)).unwrap_or(u32::MAX);
                (arrival, ms)
            })
            .collect();
        inner
            .latencies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(lat);
    }
    let before = inner.events.fetch_add(n, Ordering::AcqRel);
    let target = inner.target.load(Ordering::Acquire);
    if before < target && before + n >= target {
        inner.done_at.store(inner.since_base(), Ordering::Release);
    }
    StatusCode::OK
}
