//! The ingest scenario: `hookq ingest` processes on the private Redis, fed
//! Pusher-signed POSTs by the load process ([`crate::ingest_load`]), beside
//! the same load against the do-nothing server in the same minute.
//!
//! Three servers run side by side for the whole scenario, each idle while
//! another is measured: the do-nothing server, an ingest with dedup on (the
//! default window) and one with `dedup_window_ms: 0`. For 1-event and then
//! 20-event bodies, the load runs at full speed against each in turn; then
//! 1-event bodies paced at half the do-nothing server's 1-event rate, and at
//! half the dedup-on ingest's, against the do-nothing server and the dedup-on
//! ingest. Each run has its own load
//! process, which builds its bodies and opens its connections before the
//! clock starts; CPU time of the server, Redis, the load and every other
//! process is taken over the run from `/proc`. No worker runs: the jobs
//! stay in `{prefix}:ready`, which the benchmark counts and drops with an
//! atomic `LLEN` + `UNLINK` every 200 ms so Redis stays small; after each
//! run the jobs counted must equal the events the ingest's metrics counted
//! as accepted and the events of the requests answered 200.

use crate::ingest_load::{LoadFigure, LoadSpec};
use crate::procs::{Guarded, cpu_time, free_port, own_cpu_time, system_busy, system_softirq};
use crate::report::{Table, mib, thousands};
use crate::scenario::Ctx;
use anyhow::{Context, Result, bail};
use hookq_queue::redis::ready_key;
use serde_json::{Value, json};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// Connections of every load run.
pub const CONNECTIONS: usize = 64;
/// Events per body of the batched runs (a realtime server with batching on).
pub const BATCH_EVENTS: usize = 20;
/// How often the ready list is counted and dropped.
const TRIM_EVERY: Duration = Duration::from_millis(200);

/// Which server a run went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The do-nothing server.
    Null,
    /// `hookq ingest`, dedup on (the default window, 300 s).
    Ingest,
    /// `hookq ingest` with `dedup_window_ms: 0`.
    NoDedup,
}

impl Target {
    /// Its name in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Self::Null => "do-nothing",
            Self::Ingest => "ingest",
            Self::NoDedup => "ingest-no-dedup",
        }
    }
}

/// How a run was paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// As fast as answers come.
    Full,
    /// At half the do-nothing server's 1-event rate.
    HalfCeiling,
    /// At half the rate the same server reached at full load.
    HalfOwn,
}

impl Pace {
    fn name(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::HalfCeiling => "half the do-nothing rate",
            Self::HalfOwn => "half its own full rate",
        }
    }
}

/// One load run.
#[derive(Debug, Clone)]
pub struct Run {
    /// The server.
    pub target: Target,
    /// How it was paced.
    pub pace: Pace,
    /// What the load reached.
    pub load: LoadFigure,
    /// The server process's CPU time over the run.
    pub server_cpu: Duration,
    /// redis-server's.
    pub redis_cpu: Duration,
    /// The benchmark process's (the trimmer, mostly).
    pub bench_cpu: Duration,
    /// Softirq time of the whole machine (loopback TCP, mostly ours).
    pub softirq: Duration,
    /// What else the machine was busy with (other processes; steal).
    pub others_cpu: Duration,
    /// Events the ingest counted as accepted (`hookq_ingest_events_total`).
    pub accepted: u64,
    /// Jobs found in the ready list.
    pub in_redis: u64,
    /// The most jobs the ready list held at one count.
    pub max_ready: u64,
}

impl Run {
    /// Whether this is the run of `target`, `events` per body, paced so.
    fn is(&self, target: Target, events: usize, pace: Pace) -> bool {
        self.target == target && self.load.events_per_request == events && self.pace == pace
    }

    /// Whether a paced run kept up with its rate (a full-load run always does).
    pub fn kept_pace(&self) -> bool {
        self.load
            .rate_asked
            .is_none_or(|r| self.load.requests_per_sec >= 0.95 * r)
    }

    /// Events the server took (for the do-nothing server, the events of
    /// the requests it answered).
    pub fn events(&self) -> u64 {
        match self.target {
            Target::Null => self.load.ok * self.load.events_per_request as u64,
            _ => self.accepted,
        }
    }

    /// CPU µs per event of `cpu`.
    pub fn per_event(&self, cpu: Duration) -> f64 {
        cpu.as_secs_f64() * 1e6 / self.events().max(1) as f64
    }

    /// CPU µs per request of `cpu`.
    pub fn per_request(&self, cpu: Duration) -> f64 {
        cpu.as_secs_f64() * 1e6 / self.load.ok.max(1) as f64
    }

    /// The load process's CPU time.
    pub fn client_cpu(&self) -> Duration {
        Duration::from_secs_f64(self.load.client_cpu_s)
    }

    fn json(&self) -> Value {
        json!({
            "target": self.target.name(),
            "pace": self.pace.name(),
            "load": self.load,
            "server_cpu_s": self.server_cpu.as_secs_f64(),
            "redis_cpu_s": self.redis_cpu.as_secs_f64(),
            "bench_process_cpu_s": self.bench_cpu.as_secs_f64(),
            "softirq_s": self.softirq.as_secs_f64(),
            "other_processes_cpu_s": self.others_cpu.as_secs_f64(),
            "server_cpu_us_per_event": self.per_event(self.server_cpu),
            "server_cpu_us_per_request": self.per_request(self.server_cpu),
            "redis_cpu_us_per_event": self.per_event(self.redis_cpu),
            "client_cpu_us_per_request": self.per_request(self.client_cpu()),
            "events_accepted": self.accepted,
            "jobs_in_redis": self.in_redis,
            "most_jobs_in_ready_at_once": self.max_ready,
        })
    }
}

/// What the ingest scenario measured.
#[derive(Debug, Clone, Default)]
pub struct IngestRun {
    /// Every run, in the order they ran.
    pub runs: Vec<Run>,
    /// The paced rates, requests/s: half the do-nothing server's 1-event
    /// rate, and half the dedup-on ingest's.
    pub paced_rate: (f64, f64),
    /// Peak RSS (`VmHWM`) of the dedup-on ingest, the no-dedup one and the
    /// do-nothing server, bytes.
    pub peak_rss: (u64, u64, u64),
    /// Seconds of each full-load run.
    pub seconds: f64,
}

impl IngestRun {
    /// The run of `target` with `events` per body, paced so.
    pub fn get(&self, target: Target, events: usize, pace: Pace) -> Option<&Run> {
        self.runs.iter().find(|r| r.is(target, events, pace))
    }

    /// The JSON form.
    pub fn json(&self) -> Value {
        json!({
            "connections": CONNECTIONS,
            "seconds": self.seconds,
            "paced_rate_half_ceiling": self.paced_rate.0,
            "paced_rate_half_own": self.paced_rate.1,
            "ingest_peak_rss_bytes": self.peak_rss.0,
            "ingest_no_dedup_peak_rss_bytes": self.peak_rss.1,
            "do_nothing_peak_rss_bytes": self.peak_rss.2,
            "runs": self.runs.iter().map(Run::json).collect::<Vec<_>>(),
        })
    }
}

/// How big and how long.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Seconds of each run.
    pub seconds: f64,
    /// Most requests built for a 1-event run.
    pub max_bodies_1: usize,
    /// Most requests built for a 20-event run.
    pub max_bodies_batch: usize,
}

/// A running `hookq ingest`.
struct IngestProc {
    process: Guarded,
    port: u16,
    admin_port: u16,
    prefix: String,
    log: std::path::PathBuf,
}

impl IngestProc {
    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    async fn metrics(&self) -> Result<String> {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.admin_port))
            .await
            .context("the ingest's /metrics")?
            .text()
            .await
            .context("the ingest's /metrics")
    }

    /// `hookq_ingest_events_total{result="accepted"}`.
    async fn accepted(&self) -> Result<u64> {
        let text = self.metrics().await?;
        Ok(text
            .lines()
            .find_map(|l| l.strip_prefix(r#"hookq_ingest_events_total{result="accepted"} "#))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0))
    }
}

fn spawn_ingest(ctx: &Ctx, name: &str, dedup_window_ms: Option<u64>) -> Result<IngestProc> {
    let (port, admin_port) = (free_port()?, free_port()?);
    let prefix = format!("bench-{name}");
    let mut config = ctx.config(&prefix, true);
    config["worker"]["admin_addr"] = json!(format!("127.0.0.1:{admin_port}"));
    config["ingest"] = json!({"addr": format!("127.0.0.1:{port}")});
    if let Some(ms) = dedup_window_ms {
        config["ingest"]["dedup_window_ms"] = json!(ms);
    }
    let path = ctx.dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(&config)?)
        .with_context(|| format!("writing {}", path.display()))?;
    let args = vec![
        "ingest".to_string(),
        "--config".to_string(),
        path.to_string_lossy().into_owned(),
    ];
    let log = ctx.dir.join(format!("{name}.log"));
    let process = Guarded::spawn(name, &ctx.hookq, &args, &[("HOOKQ_LOG", "warn")], &log)?;
    Ok(IngestProc {
        process,
        port,
        admin_port,
        prefix,
        log,
    })
}

/// Waits until `url` answers 200.
async fn wait_ok(url: &str, process: &Guarded, limit: Duration) -> Result<()> {
    let client = reqwest::Client::new();
    let start = Instant::now();
    loop {
        if let Ok(r) = client.get(url).send().await
            && r.status() == 200
        {
            return Ok(());
        }
        if start.elapsed() > limit || !process.alive() {
            bail!("{} did not answer {url} within {limit:?}", process.name);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until something listens on 127.0.0.1:`port`.
async fn wait_listening(port: u16, process: &Guarded, limit: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if start.elapsed() > limit || !process.alive() {
            bail!("{} not listening on {port} within {limit:?}", process.name);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Counts and drops the ready list every [`TRIM_EVERY`] until stopped.
struct Trimmer {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Result<(u64, u64)>>,
}

impl Trimmer {
    fn start(ctx: &Ctx, prefix: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, mut conn, key) = (stop.clone(), ctx.redis.conn(), ready_key(prefix));
        let task = tokio::spawn(async move {
            let (mut sum, mut most) = (0u64, 0u64);
            loop {
                let last = flag.load(Ordering::Acquire);
                if !last {
                    tokio::time::sleep(TRIM_EVERY).await;
                }
                let (n,): (u64,) = redis::pipe()
                    .atomic()
                    .cmd("LLEN")
                    .arg(&key)
                    .cmd("UNLINK")
                    .arg(&key)
                    .ignore()
                    .query_async(&mut conn)
                    .await
                    .context("counting and dropping the ready list")?;
                sum += n;
                most = most.max(n);
                if last {
                    return Ok((sum, most));
                }
            }
        });
        Self { stop, task }
    }

    async fn finish(self) -> Result<(u64, u64)> {
        self.stop.store(true, Ordering::Release);
        self.task.await.context("the trimmer")?
    }
}

/// One load run against `server` (and, for an ingest, its queue).
async fn run(
    ctx: &Ctx,
    target: Target,
    pace: Pace,
    server: &Guarded,
    ingest: Option<&IngestProc>,
    spec: &LoadSpec,
) -> Result<Run> {
    ctx.redis.flush().await?;
    let accepted0 = match ingest {
        Some(i) => i.accepted().await?,
        None => 0,
    };
    let exe = std::env::current_exe().context("finding hookq-bench's own path")?;
    let mut child = tokio::process::Command::new(exe)
        .arg("ingest-load")
        .arg(serde_json::to_string(spec)?)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting the ingest load process")?;
    let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        bail!("no pipes to the load process");
    };
    let mut stdout = BufReader::new(stdout);
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(120), stdout.read_line(&mut line))
        .await
        .context("the load process did not get ready")??;
    if line.trim() != "ready" {
        bail!("the load process said {line:?}");
    }
    let pid = server.pid();
    let (server0, redis0, bench0, busy0, soft0) = (
        cpu_time(pid)?,
        ctx.redis.cpu()?,
        own_cpu_time()?,
        system_busy()?,
        system_softirq()?,
    );
    let trimmer = ingest.map(|i| Trimmer::start(ctx, &i.prefix));
    stdin.write_all(b"go\n").await?;
    stdin.flush().await?;
    let mut out = String::new();
    let limit = Duration::from_secs_f64(spec.seconds + 60.0);
    tokio::time::timeout(limit, stdout.read_to_string(&mut out))
        .await
        .context("the load process did not finish")??;
    let status = child.wait().await?;
    let server_cpu = cpu_time(pid)?.saturating_sub(server0);
    let redis_cpu = ctx.redis.cpu()?.saturating_sub(redis0);
    let bench_cpu = own_cpu_time()?.saturating_sub(bench0);
    let busy = system_busy()?.saturating_sub(busy0);
    let softirq = system_softirq()?.saturating_sub(soft0);
    let (in_redis, max_ready) = match trimmer {
        Some(t) => t.finish().await?,
        None => (0, 0),
    };
    if !status.success() {
        bail!("the load process failed ({status})");
    }
    let load: LoadFigure = serde_json::from_str(out.trim())
        .with_context(|| format!("reading the load's result {out:?}"))?;
    let client_cpu = Duration::from_secs_f64(load.client_cpu_s);
    let others_cpu = busy.saturating_sub(server_cpu + redis_cpu + bench_cpu + client_cpu + softirq);
    let accepted = match ingest {
        Some(i) => i.accepted().await?.saturating_sub(accepted0),
        None => 0,
    };
    let r = Run {
        target,
        pace,
        load,
        server_cpu,
        redis_cpu,
        bench_cpu,
        softirq,
        others_cpu,
        accepted,
        in_redis,
        max_ready,
    };
    if r.load.errors > 0 || r.load.other_status > 0 {
        bail!(
            "{}: {} failed requests and {} answered other than 200{}",
            target.name(),
            r.load.errors,
            r.load.other_status,
            ingest.map_or(String::new(), |i| format!("; log: {}", i.tail()))
        );
    }
    if let Some(i) = ingest {
        let sent = r.load.ok * spec.events as u64;
        if r.load.duplicates > 0 || accepted != sent || in_redis != sent {
            bail!(
                "{}: {} requests answered 200 ({} events), {} as duplicates; the ingest counted {accepted} events accepted; Redis got {in_redis} jobs; log: {}",
                target.name(),
                r.load.ok,
                sent,
                r.load.duplicates,
                i.tail()
            );
        }
    }
    Ok(r)
}

/// Runs the whole scenario.
pub async fn ingest(ctx: &Ctx, plan: &Plan) -> Result<IngestRun> {
    ctx.redis.flush().await?;
    let exe = std::env::current_exe().context("finding hookq-bench's own path")?;
    let null_port = free_port()?;
    let null = Guarded::spawn(
        "do-nothing server",
        &exe,
        &["null-server".into(), "--port".into(), null_port.to_string()],
        &[],
        &ctx.dir.join("null-server.log"),
    )?;
    let on = spawn_ingest(ctx, "ingest", None)?;
    let off = spawn_ingest(ctx, "ingest-nodedup", Some(0))?;
    let limit = Duration::from_secs(20);
    wait_listening(null_port, &null, limit).await?;
    for i in [&on, &off] {
        wait_ok(
            &format!("http://127.0.0.1:{}/ready", i.admin_port),
            &i.process,
            limit,
        )
        .await
        .with_context(|| format!("log: {}", i.tail()))?;
    }
    let mut out = IngestRun {
        seconds: plan.seconds,
        ..IngestRun::default()
    };
    // Every body of the scenario distinct, across runs too.
    let mut time_ms = hookq_core::now_ms();
    let mut spec = |port: u16, events: usize, bodies: usize, wrap: bool, rate: Option<f64>| {
        let s = LoadSpec {
            port,
            keys: ctx.keys.clone(),
            connections: CONNECTIONS,
            events,
            seconds: plan.seconds,
            rate,
            bodies,
            wrap,
            first_time_ms: time_ms,
        };
        time_ms += bodies as u64 + 1;
        s
    };
    for events in [1, BATCH_EVENTS] {
        let cap = if events == 1 {
            plan.max_bodies_1
        } else {
            plan.max_bodies_batch
        };
        crate::progress(&format!(
            "ingest: {events}-event bodies, {CONNECTIONS} connections, do-nothing server"
        ));
        let s = spec(null_port, events, (cap / 10).max(1000), true, None);
        let base = run(ctx, Target::Null, Pace::Full, &null, None, &s).await?;
        // Distinct requests for as many as the ceiling took, and more.
        let bodies = cap.min(base.load.ok as usize * 6 / 5 + 1000);
        out.runs.push(base);
        for (target, i) in [(Target::Ingest, &on), (Target::NoDedup, &off)] {
            crate::progress(&format!(
                "ingest: {events}-event bodies, {CONNECTIONS} connections, {}",
                target.name()
            ));
            let s = spec(i.port, events, bodies, false, None);
            out.runs
                .push(run(ctx, target, Pace::Full, &i.process, Some(i), &s).await?);
        }
    }
    let half = |target| {
        out.get(target, 1, Pace::Full)
            .map_or(1000.0, |r| r.load.requests_per_sec)
            / 2.0
    };
    out.paced_rate = (half(Target::Null), half(Target::Ingest));
    for (pace, rate) in [
        (Pace::HalfCeiling, out.paced_rate.0),
        (Pace::HalfOwn, out.paced_rate.1),
    ] {
        let bodies = (rate * plan.seconds * 1.1) as usize + 1000;
        for target in [Target::Null, Target::Ingest] {
            crate::progress(&format!(
                "ingest: 1-event bodies paced at {} requests/s ({}), {}",
                thousands(rate),
                pace.name(),
                target.name()
            ));
            let (process, i, port) = match target {
                Target::Null => (&null, None, null_port),
                _ => (&on.process, Some(&on), on.port),
            };
            let s = spec(port, 1, bodies, target == Target::Null, Some(rate));
            out.runs.push(run(ctx, target, pace, process, i, &s).await?);
        }
    }
    out.peak_rss = (
        on.process.peak_rss().unwrap_or(0),
        off.process.peak_rss().unwrap_or(0),
        null.peak_rss().unwrap_or(0),
    );
    ctx.redis.flush().await?;
    Ok(out)
}

/// A run's rate: requests/s, or events/s and requests/s for batched bodies.
fn rate_cell(r: &Run, events: bool) -> String {
    if events {
        format!(
            "{} events/s ({} req/s)",
            thousands(r.load.events_per_sec),
            thousands(r.load.requests_per_sec)
        )
    } else {
        format!("{} req/s", thousands(r.load.requests_per_sec))
    }
}

/// `server / redis / client` CPU µs per event.
fn cpu_cell(r: &Run) -> String {
    format!(
        "{:.1} / {:.1} / {:.1}",
        r.per_event(r.server_cpu),
        r.per_event(r.redis_cpu),
        r.per_event(r.client_cpu())
    )
}

impl IngestRun {
    /// Its rows of the table; `lpush` and `lpush_p16` are the Redis ceilings
    /// (`redis-benchmark` LPUSH without and with `-P 16`).
    pub fn rows(&self, t: &mut Table, lpush: Option<f64>, lpush_p16: Option<f64>) {
        let none = String::new;
        t.section(&format!(
            "ingest — hookq ingest, Pusher-signed POSTs on {CONNECTIONS} keep-alive connections, \
             answered after the push; dedup on unless said; {:.0} s each",
            self.seconds
        ));
        for events in [1, BATCH_EVENTS] {
            let batch = events > 1;
            let null = self.get(Target::Null, events, Pace::Full);
            let label = |what: &str| format!("{events}-event bodies: {what}");
            let vs_null = |r: &Run| {
                null.map_or_else(none, |n| {
                    crate::ratio(r.load.requests_per_sec, n.load.requests_per_sec)
                })
            };
            let null_cell = null.map_or_else(none, |n| {
                format!("do-nothing server, same client: {}", rate_cell(n, batch))
            });
            if let Some(r) = self.get(Target::Ingest, events, Pace::Full) {
                let target = if batch {
                    none()
                } else {
                    crate::verdict(
                        null.is_some_and(|n| {
                            r.load.requests_per_sec >= 0.5 * n.load.requests_per_sec
                        }),
                        "≥ 0.5 × ceiling",
                    )
                };
                t.row(&[
                    label("requests/s"),
                    rate_cell(r, batch),
                    null_cell.clone(),
                    vs_null(r),
                    target,
                ]);
                let (redis, name, figure) = if batch {
                    (lpush_p16, "LPUSH -P 16, 50 clients", r.load.events_per_sec)
                } else {
                    (lpush, "LPUSH, 50 clients", r.load.requests_per_sec)
                };
                t.row(&[
                    label(if batch {
                        "events/s vs Redis"
                    } else {
                        "requests/s vs Redis"
                    }),
                    thousands(figure),
                    redis.map_or_else(none, |c| format!("{name}: {} ops/s", thousands(c))),
                    redis.map_or_else(none, |c| crate::ratio(figure, c)),
                    s("one script call (SET NX PX + LPUSH) per request"),
                ]);
                t.row(&[
                    label("p50 / p99 / max answer, full load"),
                    r.load.latency_us.ms(),
                    null.map_or_else(none, |n| format!("do-nothing: {}", n.load.latency_us.ms())),
                    none(),
                    none(),
                ]);
                t.row(&[
                    label("CPU µs per event: ingest / redis / client"),
                    cpu_cell(r),
                    null.map_or_else(none, |n| {
                        format!(
                            "do-nothing: {:.1} / — / {:.1}",
                            n.per_event(n.server_cpu),
                            n.per_event(n.client_cpu())
                        )
                    }),
                    none(),
                    format!(
                        "softirq {:.2}, others {:.2} CPU s in {:.1} s",
                        r.softirq.as_secs_f64(),
                        r.others_cpu.as_secs_f64(),
                        r.load.elapsed_s
                    ),
                ]);
            }
            if let Some(r) = self.get(Target::NoDedup, events, Pace::Full) {
                t.row(&[
                    label("requests/s, dedup off"),
                    rate_cell(r, batch),
                    null_cell.clone(),
                    vs_null(r),
                    s("one LPUSH per request"),
                ]);
                t.row(&[
                    label("CPU µs per event, dedup off: ingest / redis / client"),
                    cpu_cell(r),
                    none(),
                    none(),
                    none(),
                ]);
            }
        }
        for (pace, rate) in [
            (Pace::HalfCeiling, self.paced_rate.0),
            (Pace::HalfOwn, self.paced_rate.1),
        ] {
            let Some(r) = self.get(Target::Ingest, 1, pace) else {
                continue;
            };
            let null = self.get(Target::Null, 1, pace);
            let kept = if r.kept_pace() {
                String::new()
            } else {
                " (did not keep the pace)".into()
            };
            t.row(&[
                format!(
                    "1-event, paced at {} req/s ({}): p50 / p99 / max answer",
                    thousands(rate),
                    pace.name()
                ),
                format!(
                    "{} at {} req/s",
                    r.load.latency_us.ms(),
                    thousands(r.load.requests_per_sec)
                ),
                null.map_or_else(none, |n| format!("do-nothing: {}", n.load.latency_us.ms())),
                none(),
                if pace == Pace::HalfCeiling {
                    format!(
                        "{}{kept}",
                        crate::verdict(
                            r.kept_pace() && r.load.latency_us.p99 <= 5_000,
                            "p99 ≤ 5 ms"
                        )
                    )
                } else {
                    kept
                },
            ]);
            t.row(&[
                s("  the same from when each request was due"),
                r.load.from_due_us.map_or_else(none, |m| m.ms()),
                null.and_then(|n| n.load.from_due_us)
                    .map_or_else(none, |m| format!("do-nothing: {}", m.ms())),
                none(),
                format!("CPU µs per event ingest / redis / client {}", cpu_cell(r)),
            ]);
        }
        t.row(&[
            s("ingest peak RSS, dedup on / off"),
            format!("{} / {}", mib(self.peak_rss.0), mib(self.peak_rss.1)),
            format!("do-nothing server: {}", mib(self.peak_rss.2)),
            none(),
            crate::verdict(self.peak_rss.0.max(self.peak_rss.1) <= 64 << 20, "≤ 64 MiB"),
        ]);
    }
}

fn s(x: &str) -> String {
    x.to_string()
}
