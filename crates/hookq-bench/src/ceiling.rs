//! The machine's own limits, measured in the same run: `redis-benchmark`
//! against the benchmark's Redis, and a raw HTTP POST load against the same
//! receiver with the HTTP client crate the worker uses (reqwest, rustls),
//! configured as the worker configures it (no redirects, no client retries,
//! `TCP_NODELAY`, a pooled keep-alive client), with a given number of concurrent connections
//! and signed bodies of a given number of events. The load runs in a process
//! of its own (this binary's hidden `http-load` command), as the worker does,
//! and sends bodies built and signed in advance: it is what the transport and
//! the receiver allow, with none of hookq's own work.

use crate::receiver::{Receiver, hmac_hex};
use anyhow::{Context, Result, bail};
use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One `redis-benchmark` figure.
#[derive(Debug, Clone)]
pub struct RedisFigure {
    /// The test, e.g. `LPUSH`.
    pub test: String,
    /// Pipeline depth (`-P`), 1 without.
    pub pipeline: u32,
    /// Requests per second.
    pub ops_per_sec: f64,
}

/// Runs `redis-benchmark -p <port> -t lpush,rpop -n <n> -q [-P <pipeline>]`.
pub fn redis_benchmark(port: u16, n: usize, pipeline: u32) -> Result<Vec<RedisFigure>> {
    let mut cmd = Command::new("redis-benchmark");
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-t",
        "lpush,rpop",
        "-n",
        &n.to_string(),
        "-q",
    ]);
    if pipeline > 1 {
        cmd.args(["-P", &pipeline.to_string()]);
    }
    let out = cmd
        .output()
        .context("running redis-benchmark (it comes with redis-server)")?;
    if !out.status.success() {
        bail!(
            "redis-benchmark failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // With -q each test ends with a line `LPUSH: 76923.08 requests per second, p50=…`;
    // progress updates before it are separated by carriage returns.
    let text = String::from_utf8_lossy(&out.stdout);
    let mut figures = Vec::new();
    for part in text.split(['\r', '\n']) {
        let Some((test, rest)) = part.split_once(": ") else {
            continue;
        };
        let Some(rate) = rest.split_once(" requests per second").map(|(r, _)| r) else {
            continue;
        };
        if let Ok(ops_per_sec) = rate.trim().parse() {
            figures.push(RedisFigure {
                test: test.trim().to_string(),
                pipeline,
                ops_per_sec,
            });
        }
    }
    if figures.len() < 2 {
        bail!("could not read redis-benchmark's output: {text:?}");
    }
    Ok(figures)
}

/// What one HTTP load run reached.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HttpFigure {
    /// Concurrent connections (one request in flight on each).
    pub connections: usize,
    /// Events per body.
    pub events_per_request: usize,
    /// Bytes per body.
    pub body_bytes: usize,
    /// Requests completed with 200 per second.
    pub requests_per_sec: f64,
    /// Requests answered 200.
    #[serde(default)]
    pub requests: u64,
    /// Requests that failed or were not answered 200.
    pub errors: u64,
    /// CPU seconds of the load process.
    pub client_cpu_s: f64,
    /// CPU seconds of the benchmark process (the receiver) meanwhile.
    #[serde(default)]
    pub receiver_cpu_s: f64,
}

impl HttpFigure {
    /// The load process's CPU per request answered 200, µs (its set-up
    /// included: building the bodies and the client).
    pub fn client_us_per_request(&self) -> f64 {
        self.client_cpu_s * 1e6 / self.requests.max(1) as f64
    }
}

/// What the load process is asked to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadSpec {
    /// The receiver's port on 127.0.0.1.
    pub port: u16,
    /// `(key, secret)` of each app; app `i` is posted to `/app-i`.
    pub keys: Vec<(String, String)>,
    /// Concurrent connections.
    pub connections: usize,
    /// Events per body.
    pub events: usize,
    /// How long to send.
    pub seconds: f64,
}

/// A signed request body for one app: `(url, headers, body)`.
struct Prepared {
    url: String,
    headers: HeaderMap,
    body: Bytes,
}

fn prepare(port: u16, app: usize, key: &str, secret: &str, events: usize) -> Result<Prepared> {
    let now = hookq_core::now_ms();
    let encoded: Vec<Vec<u8>> = (0..events)
        .map(|i| hookq_core::envelope::encode_event(&crate::redis_server::bench_event(i), false))
        .collect();
    let body = hookq_core::envelope::body(now, encoded.iter().map(Vec::as_slice));
    let mut headers = HeaderMap::new();
    let mut set = |k: &'static str, v: String| -> Result<()> {
        headers.insert(HeaderName::from_static(k), HeaderValue::from_str(&v)?);
        Ok(())
    };
    set("content-type", "application/json".into())?;
    set("user-agent", hookq_core::envelope::USER_AGENT.into())?;
    set("x-pusher-key", key.into())?;
    set("x-pusher-signature", hmac_hex(secret.as_bytes(), &body))?;
    set("webhook-id", hookq_core::new_id("msg"))?;
    set("webhook-timestamp", (now / 1000).to_string())?;
    Ok(Prepared {
        url: format!("http://127.0.0.1:{port}/app-{app}"),
        headers,
        body: Bytes::from(body),
    })
}

/// Runs the HTTP load in a process of its own (this binary, `http-load`),
/// as the worker is one, so that the client does not share the receiver's
/// runtime; returns what it reached.
pub async fn http_ceiling(receiver: &Receiver, spec: &LoadSpec) -> Result<HttpFigure> {
    let exe = std::env::current_exe().context("finding hookq-bench's own path")?;
    receiver.reset(u64::MAX, false);
    let cpu0 = crate::procs::own_cpu_time()?;
    let child = tokio::process::Command::new(exe)
        .arg("http-load")
        .arg(serde_json::to_string(spec)?)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting the HTTP load process")?;
    let limit = Duration::from_secs_f64(spec.seconds + 30.0);
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .context("the HTTP load process did not finish")?
        .context("waiting for the HTTP load process")?;
    if !out.status.success() {
        bail!("the HTTP load process failed ({})", out.status);
    }
    let mut figure: HttpFigure = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "reading the load's result {:?}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    figure.receiver_cpu_s = (crate::procs::own_cpu_time()?.saturating_sub(cpu0)).as_secs_f64();
    let seen = receiver.take();
    if seen.bad_signatures > 0 {
        bail!(
            "the receiver refused {} of the load's requests",
            seen.bad_signatures
        );
    }
    Ok(figure)
}

/// The load process: POSTs signed bodies of `events` events, rotating over
/// the apps, on `connections` concurrent connections for `seconds`, with a
/// client built as the worker builds its own.
pub async fn http_load(spec: LoadSpec) -> Result<HttpFigure> {
    let connections = spec.connections.max(1);
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .retry(reqwest::retry::never().max_retries_per_request(0))
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
        .context("building the HTTP client")?;
    let prepared: Arc<Vec<Prepared>> = Arc::new(
        spec.keys
            .iter()
            .enumerate()
            .map(|(i, (k, s))| prepare(spec.port, i, k, s, spec.events))
            .collect::<Result<_>>()?,
    );
    let body_bytes = prepared.first().map_or(0, |p| p.body.len());
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(spec.seconds);
    let mut tasks = Vec::new();
    for t in 0..connections {
        let (client, prepared, ok, errors) =
            (client.clone(), prepared.clone(), ok.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = t;
            while Instant::now() < deadline {
                let p = &prepared[n % prepared.len()];
                n += 1;
                let sent = client
                    .post(&p.url)
                    .timeout(Duration::from_secs(10))
                    .headers(p.headers.clone())
                    .body(p.body.clone())
                    .send()
                    .await;
                match sent {
                    Ok(resp) if resp.status() == 200 => {
                        let _ = resp.bytes().await;
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.context("an HTTP load task")?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok(HttpFigure {
        connections,
        events_per_request: spec.events,
        body_bytes,
        requests_per_sec: ok.load(Ordering::Relaxed) as f64 / elapsed,
        requests: ok.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        client_cpu_s: crate::procs::own_cpu_time()?.as_secs_f64(),
        receiver_cpu_s: 0.0,
    })
}
