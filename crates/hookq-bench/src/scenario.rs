//! The end-to-end scenarios: `hookq worker` processes on the private Redis,
//! delivering to the in-process receiver.
//!
//! A throughput scenario empties Redis, pre-fills `{prefix}:ready` with event
//! jobs, starts the workers, and times from their start to the receiver
//! holding every event; then it reads each worker's peak RSS and CPU time from
//! `/proc`, stops the workers with SIGTERM (which acks what they delivered)
//! and checks that nothing was left in the queue. The latency scenario feeds
//! one running worker at a steady rate; the idle scenario counts the Redis
//! commands of a worker with nothing to do.

use crate::procs::{Guarded, free_port, own_cpu_time, system_busy};
use crate::producer;
use crate::receiver::{Receiver, Seen};
use crate::redis_server::Redis;
use anyhow::{Context, Result, bail};
use hookq_core::Config;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What every scenario shares.
pub struct Ctx {
    /// The private Redis.
    pub redis: Redis,
    /// The verifying receiver.
    pub receiver: Receiver,
    /// The `hookq` binary.
    pub hookq: PathBuf,
    /// A temporary directory for configs and logs.
    pub dir: PathBuf,
    /// `(key, secret)` of every app, in app order.
    pub keys: Vec<(String, String)>,
    /// App ids.
    pub apps: Vec<String>,
}

impl Ctx {
    /// A worker config: the apps (each with one HTTP endpoint on the receiver
    /// that wants `client_event`), batching on or off, Redis under `prefix`.
    pub fn config(&self, prefix: &str, batching: bool) -> Value {
        let apps: Vec<Value> = self
            .apps
            .iter()
            .zip(&self.keys)
            .map(|(id, (key, secret))| {
                json!({
                    "id": id, "key": key, "secret": secret,
                    "webhooks": [{"url": self.receiver.url(&format!("/{id}")), "event_types": ["client_event"]}]
                })
            })
            .collect();
        json!({
            "app_manager": {"driver": "memory", "array": {"apps": apps}},
            "webhooks": {"batching": {"enabled": batching, "duration": 50, "size": 100}},
            "queue": {"driver": "redis", "redis": {"url": self.redis.url(), "prefix": prefix}},
            "worker": {"admin_addr": "127.0.0.1:0"}
        })
    }

    /// The parsed form of [`Ctx::config`], for a producer.
    pub fn parsed(&self, prefix: &str) -> Result<Arc<Config>> {
        let (config, _) = Config::parse(&self.config(prefix, true).to_string(), |_| None)
            .context("the benchmark's config")?;
        Ok(Arc::new(config))
    }

    /// Starts `hookq worker` with `config` and its own admin port.
    pub fn spawn_worker(&self, name: &str, config: &Value) -> Result<Worker> {
        self.spawn_worker_under(name, config, &[])
    }

    /// [`Ctx::spawn_worker`] under another program: `wrapper` is its command
    /// line up to the worker's own (e.g. `valgrind --tool=callgrind`).
    pub fn spawn_worker_under(
        &self,
        name: &str,
        config: &Value,
        wrapper: &[String],
    ) -> Result<Worker> {
        let admin_port = free_port()?;
        let mut config = config.clone();
        config["worker"]["admin_addr"] = json!(format!("127.0.0.1:{admin_port}"));
        let path = self.dir.join(format!("{name}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(&config)?)
            .with_context(|| format!("writing {}", path.display()))?;
        let mut args = vec![
            "worker".to_string(),
            "--config".to_string(),
            path.to_string_lossy().into_owned(),
        ];
        let mut program = self.hookq.clone();
        if let Some((first, rest)) = wrapper.split_first() {
            let own = std::mem::take(&mut args);
            args = rest.to_vec();
            args.push(program.to_string_lossy().into_owned());
            args.extend(own);
            program = PathBuf::from(first);
        }
        let log = self.dir.join(format!("{name}.log"));
        let process = Guarded::spawn(name, &program, &args, &[("HOOKQ_LOG", "warn")], &log)?;
        Ok(Worker {
            process,
            admin_port,
            log,
        })
    }
}

/// A running worker process.
pub struct Worker {
    /// The process.
    pub process: Guarded,
    admin_port: u16,
    log: PathBuf,
}

impl Worker {
    /// Waits until `/health` answers 200.
    pub async fn wait_healthy(&self, limit: Duration) -> Result<()> {
        let url = format!("http://127.0.0.1:{}/health", self.admin_port);
        let client = reqwest::Client::new();
        let start = Instant::now();
        loop {
            if let Ok(r) = client.get(&url).send().await
                && r.status() == 200
            {
                return Ok(());
            }
            if start.elapsed() > limit || !self.process.alive() {
                bail!(
                    "{} not healthy after {limit:?}; log: {}",
                    self.process.name,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    /// SIGTERM, then waits up to 30 s (killed past that).
    pub fn stop(&mut self) -> Result<()> {
        if !self.process.stop("TERM", Duration::from_secs(30)) {
            bail!("{} did not stop within 30 s; killed", self.process.name);
        }
        Ok(())
    }
}

/// Enqueue→received latency percentiles, in ms.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    /// Median.
    pub p50: u32,
    /// 99th percentile.
    pub p99: u32,
    /// Largest.
    pub max: u32,
}

impl Latency {
    /// Percentiles of the latencies of `samples` (arrival, latency).
    pub fn of(samples: &[(u32, u32)]) -> Self {
        let mut ms: Vec<u32> = samples.iter().map(|(_, l)| *l).collect();
        if ms.is_empty() {
            return Self::default();
        }
        ms.sort_unstable();
        let at = |q: f64| ms[((ms.len() as f64 * q).ceil() as usize).clamp(1, ms.len()) - 1];
        Self {
            p50: at(0.50),
            p99: at(0.99),
            max: at(1.0),
        }
    }

    fn json(&self) -> Value {
        json!({"p50_ms": self.p50, "p99_ms": self.p99, "max_ms": self.max})
    }
}

/// What one throughput scenario measured.
#[derive(Debug, Clone)]
pub struct Throughput {
    /// Batching on or off.
    pub batching: bool,
    /// Worker processes.
    pub workers: usize,
    /// Events pre-filled.
    pub events: u64,
    /// Whether every event arrived in time.
    pub complete: bool,
    /// From the workers' start to the last event's arrival (or the time limit).
    pub elapsed: Duration,
    /// From the workers' start to the first request.
    pub first_request: Option<Duration>,
    /// Events received.
    pub received: u64,
    /// Requests received.
    pub requests: u64,
    /// Body bytes received.
    pub body_bytes: u64,
    /// Connections the workers opened to the receiver.
    pub connections: u64,
    /// Requests whose signature did not verify.
    pub bad_signatures: u64,
    /// Enqueue→received.
    pub latency: Latency,
    /// Largest peak RSS of a worker, bytes.
    pub worker_peak_rss: u64,
    /// Workers' CPU time, summed.
    pub worker_cpu: Duration,
    /// redis-server's CPU time over the scenario.
    pub redis_cpu: Duration,
    /// The benchmark process's CPU time (receiver, mostly) over the scenario.
    pub bench_cpu: Duration,
    /// CPU time every other process on the machine used over the scenario.
    pub others_cpu: Duration,
    /// (ready, held, dead) after the workers stopped.
    pub left: (u64, u64, u64),
}

impl Throughput {
    /// What the receiver saw of a run of `events` pre-filled events that
    /// ended (`complete` or not) within `limit`; the CPU, RSS and queue
    /// figures zero, for the caller to fill in.
    pub fn seen(seen: &Seen, events: usize, complete: bool, limit: Duration) -> Self {
        Self {
            batching: true,
            workers: 1,
            events: events as u64,
            complete,
            elapsed: seen.done_at.unwrap_or(limit),
            first_request: seen.first_at,
            received: seen.events,
            requests: seen.requests,
            body_bytes: seen.body_bytes,
            connections: seen.connections,
            bad_signatures: seen.bad_signatures,
            latency: Latency::of(&seen.samples),
            worker_peak_rss: 0,
            worker_cpu: Duration::ZERO,
            redis_cpu: Duration::ZERO,
            bench_cpu: Duration::ZERO,
            others_cpu: Duration::ZERO,
            left: (0, 0, 0),
        }
    }

    /// Events per second.
    pub fn events_per_sec(&self) -> f64 {
        self.received as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Requests per second.
    pub fn requests_per_sec(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Mean events per request.
    pub fn events_per_request(&self) -> f64 {
        self.received as f64 / (self.requests.max(1)) as f64
    }

    /// The JSON form.
    pub fn json(&self) -> Value {
        json!({
            "batching": self.batching,
            "workers": self.workers,
            "events": self.events,
            "complete": self.complete,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "first_request_s": self.first_request.map(|d| d.as_secs_f64()),
            "events_received": self.received,
            "requests": self.requests,
            "events_per_sec": self.events_per_sec(),
            "requests_per_sec": self.requests_per_sec(),
            "events_per_request": self.events_per_request(),
            "mean_body_bytes": self.body_bytes as f64 / self.requests.max(1) as f64,
            "connections": self.connections,
            "bad_signatures": self.bad_signatures,
            "latency": self.latency.json(),
            "worker_peak_rss_bytes": self.worker_peak_rss,
            "worker_cpu_s": self.worker_cpu.as_secs_f64(),
            "redis_cpu_s": self.redis_cpu.as_secs_f64(),
            "bench_process_cpu_s": self.bench_cpu.as_secs_f64(),
            "other_processes_cpu_s": self.others_cpu.as_secs_f64(),
            "worker_cpu_us_per_event": self.worker_cpu.as_secs_f64() * 1e6 / self.received.max(1) as f64,
            "redis_cpu_us_per_event": self.redis_cpu.as_secs_f64() * 1e6 / self.received.max(1) as f64,
            "left_in_queue": {"ready": self.left.0, "held": self.left.1, "dead": self.left.2},
        })
    }
}

/// Pre-fills `events` jobs, runs `workers` workers until all are delivered
/// or `limit` passes, and measures.
pub async fn throughput(
    ctx: &Ctx,
    name: &str,
    batching: bool,
    workers: usize,
    events: usize,
    limit: Duration,
) -> Result<Throughput> {
    throughput_with(ctx, name, batching, workers, events, limit, |_| {}).await
}

/// [`throughput`] with the workers' config changed by `tweak` first.
pub async fn throughput_with(
    ctx: &Ctx,
    name: &str,
    batching: bool,
    workers: usize,
    events: usize,
    limit: Duration,
    tweak: impl Fn(&mut Value),
) -> Result<Throughput> {
    let prefix = format!("bench-{name}");
    ctx.redis.flush().await?;
    ctx.redis.prefill(&prefix, &ctx.apps, events).await?;
    let mut config = ctx.config(&prefix, batching);
    tweak(&mut config);
    let redis_cpu0 = ctx.redis.cpu()?;
    let bench_cpu0 = own_cpu_time()?;
    let busy0 = system_busy()?;
    ctx.receiver.reset(events as u64, true);
    let mut procs = Vec::new();
    for w in 0..workers {
        procs.push(ctx.spawn_worker(&format!("{name}-w{w}"), &config)?);
    }
    let complete = ctx.receiver.wait_done(limit).await;
    let mut rss = 0;
    let mut cpu = Duration::ZERO;
    for p in &procs {
        rss = rss.max(p.process.peak_rss().unwrap_or(0));
        cpu += p.process.cpu().unwrap_or_default();
    }
    let redis_cpu = ctx.redis.cpu()?.saturating_sub(redis_cpu0);
    let bench_cpu = own_cpu_time()?.saturating_sub(bench_cpu0);
    let others_cpu = system_busy()?
        .saturating_sub(busy0)
        .saturating_sub(cpu + redis_cpu + bench_cpu);
    let seen = ctx.receiver.take();
    let mut stop_errors = Vec::new();
    for p in &mut procs {
        if let Err(e) = p.stop() {
            stop_errors.push(format!("{e:#}; log: {}", p.log_tail()));
        }
    }
    let left = ctx.redis.depth(&prefix).await?;
    if !complete {
        let tails: Vec<String> = procs.iter().map(Worker::log_tail).collect();
        bail!(
            "{name}: {} of {events} events arrived within {limit:?} ({} bad signatures, left in queue {left:?}); worker logs: {}",
            seen.events,
            seen.bad_signatures,
            tails.join(" | ")
        );
    }
    if !stop_errors.is_empty() {
        eprintln!("warning: {}", stop_errors.join("; "));
    }
    Ok(Throughput {
        batching,
        workers,
        worker_peak_rss: rss,
        worker_cpu: cpu,
        redis_cpu,
        bench_cpu,
        others_cpu,
        left,
        ..Throughput::seen(&seen, events, complete, limit)
    })
}

/// What the steady-rate scenario measured.
#[derive(Debug, Clone)]
pub struct Steady {
    /// Events per second asked for.
    pub target_rate: f64,
    /// Events published.
    pub published: u64,
    /// Events published per second.
    pub rate: f64,
    /// Events received.
    pub received: u64,
    /// Enqueue→received.
    pub latency: Latency,
    /// The worker's peak RSS, bytes.
    pub worker_peak_rss: u64,
    /// CPU time: (worker, redis, benchmark process, every other process).
    pub cpu: (Duration, Duration, Duration, Duration),
    /// Latency of the events that arrived in each second.
    pub per_second: Vec<(usize, Latency)>,
}

impl Steady {
    /// The JSON form.
    pub fn json(&self) -> Value {
        json!({
            "target_rate": self.target_rate,
            "published": self.published,
            "rate": self.rate,
            "received": self.received,
            "latency": self.latency.json(),
            "worker_peak_rss_bytes": self.worker_peak_rss,
            "cpu_s": {
                "worker": self.cpu.0.as_secs_f64(),
                "redis": self.cpu.1.as_secs_f64(),
                "bench_process": self.cpu.2.as_secs_f64(),
                "other_processes": self.cpu.3.as_secs_f64(),
            },
            "per_second": self.per_second.iter().map(|(n, l)| {
                let mut v = l.json();
                v["events"] = json!(n);
                v
            }).collect::<Vec<_>>(),
        })
    }
}

/// One worker, fed by a paced producer at `rate` events/s for `length`.
pub async fn steady(ctx: &Ctx, rate: f64, length: Duration) -> Result<Steady> {
    let prefix = "bench-steady";
    ctx.redis.flush().await?;
    let mut worker = ctx.spawn_worker("steady", &ctx.config(prefix, true))?;
    worker.wait_healthy(Duration::from_secs(20)).await?;
    // The first receive blocks as soon as the worker runs; let it get there.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let p = producer::producer(&ctx.parsed(prefix)?).await?;
    let worker_cpu0 = worker.process.cpu()?;
    let redis_cpu0 = ctx.redis.cpu()?;
    let bench_cpu0 = own_cpu_time()?;
    let busy0 = system_busy()?;
    ctx.receiver.reset(u64::MAX, true);
    let start = Instant::now();
    let published = producer::paced(&p, &ctx.apps, rate, length, Duration::from_millis(10)).await?;
    let took = start.elapsed();
    let wait = Instant::now();
    while ctx.receiver.events() < published && wait.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rss = worker.process.peak_rss().unwrap_or(0);
    let worker_cpu = worker.process.cpu()?.saturating_sub(worker_cpu0);
    let redis_cpu = ctx.redis.cpu()?.saturating_sub(redis_cpu0);
    let bench_cpu = own_cpu_time()?.saturating_sub(bench_cpu0);
    let others = system_busy()?
        .saturating_sub(busy0)
        .saturating_sub(worker_cpu + redis_cpu + bench_cpu);
    let seen = ctx.receiver.take();
    worker.stop()?;
    let mut by_second: BTreeMap<u32, Vec<(u32, u32)>> = BTreeMap::new();
    for s in &seen.samples {
        by_second.entry(s.0 / 1000).or_default().push(*s);
    }
    let per_second = by_second
        .values()
        .map(|v| (v.len(), Latency::of(v)))
        .collect();
    if seen.events < published {
        bail!(
            "steady: {} of {published} events arrived within 30 s of the end",
            seen.events
        );
    }
    Ok(Steady {
        target_rate: rate,
        published,
        rate: published as f64 / took.as_secs_f64(),
        received: seen.events,
        latency: Latency::of(&seen.samples),
        worker_peak_rss: rss,
        cpu: (worker_cpu, redis_cpu, bench_cpu, others),
        per_second,
    })
}

/// What an idle worker costs Redis.
#[derive(Debug, Clone)]
pub struct Idle {
    /// Seconds counted.
    pub seconds: f64,
    /// Calls per command, `INFO` and `CONFIG` left out (script-internal calls included).
    pub calls: BTreeMap<String, u64>,
}

impl Idle {
    /// Commands per second, every command `INFO commandstats` counts.
    pub fn per_sec(&self) -> f64 {
        self.calls.values().sum::<u64>() as f64 / self.seconds
    }

    /// Commands per second the worker sent itself (scripts count once).
    pub fn sent_per_sec(&self) -> f64 {
        self.calls
            .iter()
            .filter(|(k, _)| !SCRIPT_INTERNAL.contains(&k.as_str()))
            .map(|(_, v)| v)
            .sum::<u64>() as f64
            / self.seconds
    }

    /// The JSON form.
    pub fn json(&self) -> Value {
        json!({
            "seconds": self.seconds,
            "calls": self.calls,
            "commands_per_sec": self.per_sec(),
            "sent_commands_per_sec": self.sent_per_sec(),
        })
    }
}

/// Commands the receive script runs inside Redis (counted by `INFO commandstats` too).
const SCRIPT_INTERNAL: &[&str] = &[
    "time", "zrange", "rpop", "incrby", "hset", "zadd", "lpush", "rpush", "zrem", "hget", "hdel",
];

/// One worker on an empty queue: `CONFIG RESETSTAT`, wait `length`, count.
pub async fn idle(ctx: &Ctx, length: Duration) -> Result<Idle> {
    ctx.redis.flush().await?;
    let mut worker = ctx.spawn_worker("idle", &ctx.config("bench-idle", true))?;
    worker.wait_healthy(Duration::from_secs(20)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    ctx.redis.reset_stats().await?;
    let start = Instant::now();
    tokio::time::sleep(length).await;
    let mut calls = ctx.redis.command_calls().await?;
    let seconds = start.elapsed().as_secs_f64();
    worker.stop()?;
    // The benchmark's own INFO and CONFIG RESETSTAT (`config|resetstat` in Redis 7).
    calls.retain(|name, _| !name.starts_with("info") && !name.starts_with("config"));
    Ok(Idle { seconds, calls })
}

/// A fresh directory under the system's temporary one.
pub fn temp_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "hookq-bench-{}-{}",
        std::process::id(),
        hookq_core::now_ms()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Removes `dir`, ignoring errors.
pub fn remove_dir(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}
