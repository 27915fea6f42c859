//! The two processes of the ingest scenario besides `hookq ingest` itself,
//! both this binary under hidden commands:
//!
//! - `ingest-load <spec>`: the load client. It builds every body first —
//!   Pusher webhooks (`{"time_ms":…,"events":[…]}`, each body distinct by its
//!   `time_ms`), signed with the app's secret (`X-Pusher-Signature`, lowercase
//!   hex HMAC-SHA256 of the exact body) — and opens its connections, prints
//!   `ready`, waits for a line on its standard input, then sends: one task per
//!   keep-alive HTTP/1.1 connection (hyper's client connection, no pool in
//!   between), one request in flight on each, as fast as answers come or paced
//!   at a given total rate. It times each request from just before it is sent
//!   to the last byte of the answer, and prints a JSON [`LoadFigure`].
//! - `null-server --port P`: the do-nothing server, the ceiling of what the
//!   client and the HTTP stack allow. It is the ingest's own server loop
//!   ([`hookq_ingest::serve::serve`]: hyper HTTP/1, the header timeout,
//!   `TCP_NODELAY`) over an axum route that reads the whole body and answers
//!   200 with an answer of the ingest's size at once — no lookup, no
//!   signature check, no parsing, no queue.

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use std::io::BufRead;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The route both servers answer (the ingest's).
pub const ROUTE: &str = hookq_core::config::INGEST_ROUTE;

/// What the load process is asked to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadSpec {
    /// The server's port on 127.0.0.1.
    pub port: u16,
    /// `(key, secret)` of each app; bodies go to the apps in turn.
    pub keys: Vec<(String, String)>,
    /// Concurrent keep-alive connections, one request in flight on each.
    pub connections: usize,
    /// Events per body.
    pub events: usize,
    /// How long to send.
    pub seconds: f64,
    /// Requests per second in total, paced; `None`: as fast as answers come.
    pub rate: Option<f64>,
    /// Requests built in advance. Each body is signed for every app in turn,
    /// so there are `bodies / apps` distinct contents: the ingest's dedup
    /// key is the app and the body, so every request is still distinct.
    pub bodies: usize,
    /// Send the bodies again once all were sent (for a server that ignores
    /// them); otherwise the run ends early when they run out.
    pub wrap: bool,
    /// `time_ms` of the first body (each next body has one more), so that
    /// bodies differ between runs too.
    pub first_time_ms: u64,
}

/// Percentiles of a set of durations, µs.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Micros {
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
}

impl Micros {
    /// Sorts `v` and takes its percentiles.
    pub fn of(v: &mut [u32]) -> Self {
        if v.is_empty() {
            return Self::default();
        }
        v.sort_unstable();
        let at =
            |q: f64| u64::from(v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1]);
        Self {
            p50: at(0.50),
            p99: at(0.99),
            p999: at(0.999),
            max: at(1.0),
        }
    }

    /// `p50 / p99 / max` in ms with two decimals.
    pub fn ms(&self) -> String {
        format!(
            "{:.2} / {:.2} / {:.1} ms",
            self.p50 as f64 / 1000.0,
            self.p99 as f64 / 1000.0,
            self.max as f64 / 1000.0
        )
    }
}

/// What one load run reached.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LoadFigure {
    /// Connections.
    pub connections: usize,
    /// Events per body.
    pub events_per_request: usize,
    /// Mean bytes per body.
    pub body_bytes: f64,
    /// The paced rate asked for, requests/s (none: full load).
    pub rate_asked: Option<f64>,
    /// Requests answered 200 and not as a duplicate.
    pub ok: u64,
    /// Requests answered 200 `"duplicate": true`.
    pub duplicates: u64,
    /// Requests answered with another status.
    pub other_status: u64,
    /// Requests that failed (connection errors).
    pub errors: u64,
    /// From the start to the last answer, s.
    pub elapsed_s: f64,
    /// `ok` per second.
    pub requests_per_sec: f64,
    /// `ok` × events per body, per second.
    pub events_per_sec: f64,
    /// Send → last byte of the answer.
    pub latency_us: Micros,
    /// Paced runs: when a request was due → last byte of its answer (includes
    /// the wait for a free connection and the timer's lateness).
    pub from_due_us: Option<Micros>,
    /// Whether the bodies ran out before the time did.
    pub exhausted: bool,
    /// CPU seconds of the load process while it sent.
    pub client_cpu_s: f64,
    /// Seconds spent building and signing the bodies (before the clock).
    pub build_s: f64,
}

/// One body built in advance.
struct Prepared {
    app: usize,
    body: Bytes,
    signature: HeaderValue,
}

/// A Pusher webhook of `events` client events, `time_ms` making it unique.
pub fn pusher_body(time_ms: u64, events: usize, n: u64) -> Vec<u8> {
    let encoded: Vec<Vec<u8>> = (0..events)
        .map(|i| {
            let e = hookq_core::Event::client_event(
                format!("private-bench-{}", (n as usize + i) % 64),
                "client-bench",
                format!(r#"{{"n":{n},"i":{i},"text":"hello from the benchmark"}}"#),
                "1234.5678",
            );
            hookq_core::envelope::encode_event(&e, false)
        })
        .collect();
    hookq_core::envelope::body(time_ms, encoded.iter().map(Vec::as_slice))
}

fn prepare(spec: &LoadSpec) -> Result<Vec<Prepared>> {
    let apps = spec.keys.len();
    if apps == 0 {
        bail!("no apps to send for");
    }
    let contents: Vec<Bytes> = (0..spec.bodies.max(1).div_ceil(apps))
        .map(|k| {
            Bytes::from(pusher_body(
                spec.first_time_ms + k as u64,
                spec.events,
                k as u64,
            ))
        })
        .collect();
    (0..spec.bodies.max(1))
        .map(|i| {
            let (app, body) = (i % apps, contents[i / apps].clone());
            let signature = crate::receiver::hmac_hex(spec.keys[app].1.as_bytes(), &body);
            Ok(Prepared {
                app,
                body,
                signature: HeaderValue::from_str(&signature)?,
            })
        })
        .collect()
}

/// Counters the tasks share.
#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    duplicates: AtomicU64,
    other_status: AtomicU64,
    errors: AtomicU64,
    exhausted: AtomicU64,
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(port: u16) -> Result<Sender> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP/1 handshake")?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// The load process: builds, connects, prints `ready`, waits for a line on
/// standard input, sends, and returns what it reached.
pub fn run_load(spec: &LoadSpec) -> Result<LoadFigure> {
    let built = Instant::now();
    let prepared = Arc::new(prepare(spec)?);
    let build_s = built.elapsed().as_secs_f64();
    let body_bytes =
        prepared.iter().map(|p| p.body.len()).sum::<usize>() as f64 / prepared.len() as f64;
    // Two threads, as the servers have: the load shares the machine's two
    // cores with them and takes what it needs.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("the load's runtime")?;
    runtime.block_on(async move {
        let mut senders = Vec::new();
        for _ in 0..spec.connections.max(1) {
            senders.push(connect(spec.port).await?);
        }
        println!("ready");
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("waiting for the go")?;
        send(spec, prepared, senders, build_s, body_bytes).await
    })
}

async fn send(
    spec: &LoadSpec,
    prepared: Arc<Vec<Prepared>>,
    senders: Vec<Sender>,
    build_s: f64,
    body_bytes: f64,
) -> Result<LoadFigure> {
    let cpu0 = crate::procs::own_cpu_time()?;
    let counts = Arc::new(Counts::default());
    let next = Arc::new(AtomicU64::new(0));
    let keys: Arc<Vec<HeaderValue>> = Arc::new(
        spec.keys
            .iter()
            .map(|(k, _)| HeaderValue::from_str(k))
            .collect::<Result<_, _>>()?,
    );
    let host = HeaderValue::from_str(&format!("127.0.0.1:{}", spec.port))?;
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(spec.seconds);
    let mut tasks = Vec::new();
    for mut sender in senders {
        let (prepared, counts, next, keys, host) = (
            prepared.clone(),
            counts.clone(),
            next.clone(),
            keys.clone(),
            host.clone(),
        );
        let (port, rate, wrap) = (spec.port, spec.rate, spec.wrap);
        tasks.push(tokio::spawn(async move {
            let mut latencies: Vec<u32> = Vec::with_capacity(1 << 14);
            let mut from_due: Vec<u32> = Vec::new();
            let mut last = start;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let due = rate.map(|r| start + Duration::from_secs_f64(i as f64 / r));
                if due.map_or(Instant::now(), |d| d) >= deadline {
                    break;
                }
                let n = prepared.len() as u64;
                if i >= n && !wrap {
                    counts.exhausted.store(1, Ordering::Relaxed);
                    break;
                }
                let p = &prepared[(i % n) as usize];
                if let Some(due) = due {
                    tokio::time::sleep_until(due.into()).await;
                }
                let request = Request::post(ROUTE)
                    .header(header::HOST, host.clone())
                    .header(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    )
                    .header("x-pusher-key", keys[p.app].clone())
                    .header("x-pusher-signature", p.signature.clone())
                    .body(Full::new(p.body.clone()));
                let Ok(request) = request else {
                    counts.errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let sent = Instant::now();
                let answer = async {
                    sender.ready().await?;
                    let response = sender.send_request(request).await?;
                    let status = response.status();
                    let body = response.into_body().collect().await?.to_bytes();
                    anyhow::Ok((status, body))
                }
                .await;
                let done = Instant::now();
                last = done;
                match answer {
                    Ok((status, body)) if status == StatusCode::OK => {
                        if body.windows(11).any(|w| w == b"\"duplicate\"") {
                            counts.duplicates.fetch_add(1, Ordering::Relaxed);
                        } else {
                            counts.ok.fetch_add(1, Ordering::Relaxed);
                        }
                        let us = |d: Duration| u32::try_from(d.as_micros()).unwrap_or(u32::MAX);
                        latencies.push(us(done - sent));
                        if let Some(due) = due {
                            from_due.push(us(done.saturating_duration_since(due)));
                        }
                    }
                    Ok(_) => {
                        counts.other_status.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        counts.errors.fetch_add(1, Ordering::Relaxed);
                        // The connection is gone: a new one, or give up.
                        match connect(port).await {
                            Ok(s) => sender = s,
                            Err(_) => break,
                        }
                    }
                }
            }
            (latencies, from_due, last)
        }));
    }
    let mut latencies = Vec::new();
    let mut from_due = Vec::new();
    let mut last = start;
    for t in tasks {
        let (l, d, at) = t.await.context("a load task")?;
        latencies.extend(l);
        from_due.extend(d);
        last = last.max(at);
    }
    let client_cpu_s = (crate::procs::own_cpu_time()?.saturating_sub(cpu0)).as_secs_f64();
    let elapsed_s = (last - start).as_secs_f64().max(1e-9);
    let ok = counts.ok.load(Ordering::Relaxed);
    Ok(LoadFigure {
        connections: spec.connections.max(1),
        events_per_request: spec.events,
        body_bytes,
        rate_asked: spec.rate,
        ok,
        duplicates: counts.duplicates.load(Ordering::Relaxed),
        other_status: counts.other_status.load(Ordering::Relaxed),
        errors: counts.errors.load(Ordering::Relaxed),
        elapsed_s,
        requests_per_sec: ok as f64 / elapsed_s,
        events_per_sec: (ok * spec.events as u64) as f64 / elapsed_s,
        latency_us: Micros::of(&mut latencies),
        from_due_us: spec.rate.map(|_| Micros::of(&mut from_due)),
        exhausted: counts.exhausted.load(Ordering::Relaxed) == 1,
        client_cpu_s,
        build_s,
    })
}

/// The do-nothing server on 127.0.0.1:`port`, until killed.
pub async fn null_server(port: u16) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("binding 127.0.0.1:{port}"))?;
    let routes = Router::new().route(ROUTE, post(nothing));
    hookq_ingest::serve::serve(
        listener,
        routes,
        Duration::from_secs(10),
        tokio_util::sync::CancellationToken::new(),
        Duration::from_secs(1),
    )
    .await;
    Ok(())
}

/// Takes the whole body, answers at once what the ingest answers a 1-event body.
async fn nothing(body: Bytes) -> impl IntoResponse {
    let _ = body;
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"ok":true,"accepted":1,"skipped":0}"#,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_pusher_webhooks() {
        let body = pusher_body(1_700_000_000_000, 20, 7);
        let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(v["time_ms"], 1_700_000_000_000u64);
        let events = v["events"].as_array().expect("an array of events");
        assert_eq!(events.len(), 20);
        for e in events {
            let e: hookq_core::Event = serde_json::from_value(e.clone()).expect("an event");
            e.validate().expect("a valid client event");
        }
        assert_ne!(pusher_body(1, 1, 0), pusher_body(2, 1, 0));
    }

    #[test]
    fn percentiles() {
        let mut v: Vec<u32> = (1..=1000).rev().collect();
        let m = Micros::of(&mut v);
        assert_eq!((m.p50, m.p99, m.p999, m.max), (500, 990, 999, 1000));
        assert_eq!(Micros::of(&mut []).max, 0);
    }
}
