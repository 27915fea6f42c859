//! `hookq-bench`: hookq end to end on this machine, each figure beside the
//! machine's own ceiling measured in the same run (`make bench`).
//!
//! One run starts a private `redis-server` and a verifying receiver, then:
//! the Redis ceilings (`redis-benchmark` LPUSH/RPOP, with and without
//! pipelining); batched and unbatched end-to-end throughput of one `hookq
//! worker` process over a pre-filled queue; the raw HTTP ceiling with the
//! worker's client, connection count and body sizes; the producer's publish
//! rate; 1, 2 and 4 workers; latency under a steady half load; the Redis
//! commands of an idle worker; and `hookq ingest` under Pusher-signed POSTs
//! beside the same load against a do-nothing HTTP server. It prints a table and writes JSON to
//! `target/bench/<timestamp>.json` and `target/bench/latest.json`. Every
//! child process is killed when the run ends, however it ends. The method
//! and what each figure means are in docs/benchmark.md.

mod ceiling;
mod cluster;
mod ingest;
mod ingest_load;
mod instructions;
mod procs;
mod producer;
mod receiver;
mod redis_server;
mod report;
mod scenario;

use anyhow::{Context, Result, bail};
use ceiling::{HttpFigure, RedisFigure};
use clap::Parser;
use producer::PublishFigure;
use report::{Table, mib, thousands};
use scenario::{Ctx, Idle, Steady, Throughput};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Apps in every scenario.
const APPS: usize = 10;
/// The batching window of the batched scenarios, ms.
const WINDOW_MS: u64 = 50;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "hookq-bench",
    about = "hookq's end-to-end benchmark (see docs/benchmark.md)"
)]
struct Args {
    /// The `hookq` binary to run as the worker (a release build).
    #[arg(long, default_value = "target/release/hookq")]
    hookq: PathBuf,
    /// Where the JSON results go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Smaller counts and shorter runs, for trying the benchmark out.
    #[arg(long)]
    quick: bool,
    /// Events of the batched end-to-end scenario.
    #[arg(long)]
    events: Option<usize>,
    /// Events of the unbatched end-to-end scenario.
    #[arg(long)]
    unbatched_events: Option<usize>,
    /// Events of each scaling scenario (1, 2 and 4 workers).
    #[arg(long)]
    scaling_events: Option<usize>,
    /// Seconds of the steady half-load scenario.
    #[arg(long)]
    steady_secs: Option<u64>,
    /// Seconds the idle worker is watched.
    #[arg(long)]
    idle_secs: Option<u64>,
    /// Seconds of each HTTP ceiling and producer run.
    #[arg(long)]
    load_secs: Option<f64>,
    /// Scenarios to run, comma-separated (default all): redis, batched,
    /// unbatched, http, producer, scaling, steady, idle, ingest (which
    /// runs the Redis ceilings too), cluster (a 3-primary Redis Cluster,
    /// without and with replicas and replicas_ack), callgrind (instructions
    /// per unbatched delivery; needs valgrind).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Events/s of the steady scenario (default: half the batched rate measured).
    #[arg(long)]
    steady_rate: Option<f64>,
    /// Seconds of each ingest run (default: --load-secs if given, else 3; 2 with --quick).
    #[arg(long)]
    ingest_secs: Option<f64>,
    #[command(subcommand)]
    command: Option<Sub>,
}

#[derive(clap::Subcommand, Debug, Clone)]
enum Sub {
    /// (Internal) the HTTP ceiling's load process: a JSON `LoadSpec`.
    #[command(hide = true)]
    HttpLoad {
        /// The spec.
        spec: String,
    },
    /// (Internal) the ingest scenario's load process: a JSON `ingest_load::LoadSpec`.
    #[command(hide = true)]
    IngestLoad {
        /// The spec.
        spec: String,
    },
    /// (Internal) the ingest scenario's do-nothing HTTP server.
    #[command(hide = true)]
    NullServer {
        /// Its port on 127.0.0.1.
        #[arg(long)]
        port: u16,
    },
}

/// The counts a run uses.
struct Plan {
    events: usize,
    unbatched_events: usize,
    /// Events of the callgrind runs: a short one and a longer one.
    callgrind_events: [usize; 2],
    scaling_events: usize,
    steady: Duration,
    idle: Duration,
    load: Duration,
    redis_n: usize,
    ingest: ingest::Plan,
}

impl Plan {
    fn of(a: &Args) -> Self {
        let q = a.quick;
        Self {
            events: a.events.unwrap_or(if q { 50_000 } else { 200_000 }),
            unbatched_events: a
                .unbatched_events
                .unwrap_or(if q { 10_000 } else { 200_000 }),
            callgrind_events: if q { [500, 1_500] } else { [1_000, 3_000] },
            scaling_events: a.scaling_events.unwrap_or(if q { 30_000 } else { 200_000 }),
            steady: Duration::from_secs(a.steady_secs.unwrap_or(if q { 4 } else { 10 })),
            idle: Duration::from_secs(a.idle_secs.unwrap_or(if q { 5 } else { 10 })),
            load: Duration::from_secs_f64(a.load_secs.unwrap_or(if q { 2.0 } else { 5.0 })),
            redis_n: if q { 50_000 } else { 200_000 },
            ingest: ingest::Plan {
                seconds: a
                    .ingest_secs
                    .or(a.load_secs)
                    .unwrap_or(if q { 2.0 } else { 3.0 }),
                max_bodies_1: if q { 200_000 } else { 600_000 },
                max_bodies_batch: if q { 60_000 } else { 200_000 },
            },
        }
    }
}

#[derive(Default)]
struct Results {
    redis: Vec<RedisFigure>,
    batched: Option<Throughput>,
    unbatched: Option<Throughput>,
    http_batched: Option<HttpFigure>,
    http_unbatched: Option<HttpFigure>,
    publish: Vec<PublishFigure>,
    scaling: Vec<Throughput>,
    steady: Option<Steady>,
    idle: Option<Idle>,
    ingest: Option<ingest::IngestRun>,
    cluster: Vec<cluster::ClusterRun>,
    /// One Redis with a replica and replicas_ack 1, beside the cluster's.
    single_replica: Option<Throughput>,
    instructions: Option<instructions::Instructions>,
    errors: Vec<(String, String)>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let child = match &args.command {
        Some(Sub::HttpLoad { spec }) => Some(("http-load", load_child(spec).await)),
        Some(Sub::IngestLoad { spec }) => Some(("ingest-load", ingest_load_child(spec))),
        Some(Sub::NullServer { port }) => {
            Some(("null-server", ingest_load::null_server(*port).await))
        }
        None => None,
    };
    if let Some((name, outcome)) = child {
        return match outcome {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{name}: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    match run(args).await {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(2),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs every scenario asked for; `Ok(false)` when one of them failed.
async fn run(args: Args) -> Result<bool> {
    let plan = Plan::of(&args);
    let wants = |s: &str| args.only.is_empty() || args.only.iter().any(|o| o == s);
    if !args.hookq.exists() {
        bail!(
            "{} is missing: `cargo build --release -p hookq --bin hookq` (make bench does)",
            args.hookq.display()
        );
    }
    let hookq = std::fs::canonicalize(&args.hookq)
        .with_context(|| format!("resolving {}", args.hookq.display()))?;
    let started = Instant::now();
    let load_before = procs::load_average();
    let dir = scenario::temp_dir()?;
    let redis = redis_server::Redis::start().await?;
    let apps: Vec<String> = (0..APPS).map(|i| format!("app-{i}")).collect();
    let keys: Vec<(String, String)> = (0..APPS)
        .map(|i| {
            (
                format!("key-{i}"),
                format!("secret-{i}-{}", hookq_core::new_id("s")),
            )
        })
        .collect();
    let receiver = receiver::Receiver::start(&keys).await?;
    let ctx = Ctx {
        redis,
        receiver,
        hookq,
        dir: dir.clone(),
        keys,
        apps,
    };
    let redis_version = ctx.redis.version().await;
    let mut r = Results::default();
    let note = |name: &str, e: anyhow::Error| {
        eprintln!("  {name} failed: {e:#}");
        (name.to_string(), format!("{e:#}"))
    };

    if wants("redis") || wants("ingest") {
        progress("redis-benchmark LPUSH/RPOP, without and with -P 16");
        for p in [1, 16] {
            match ceiling::redis_benchmark(ctx.redis.port(), plan.redis_n, p) {
                Ok(f) => r.redis.extend(f),
                Err(e) => r.errors.push(note("redis-benchmark", e)),
            }
        }
        let _ = ctx.redis.flush().await;
    }
    let limit = Duration::from_secs(150);
    if wants("batched") {
        progress(&format!(
            "batched end to end: {} events, 1 worker",
            plan.events
        ));
        match scenario::throughput(&ctx, "batched", true, 1, plan.events, limit).await {
            Ok(t) => r.batched = Some(t),
            Err(e) => r.errors.push(note("batched", e)),
        }
    }
    if wants("unbatched") {
        progress(&format!(
            "unbatched end to end: {} events, 1 worker",
            plan.unbatched_events
        ));
        match scenario::throughput(&ctx, "unbatched", false, 1, plan.unbatched_events, limit).await
        {
            Ok(t) => r.unbatched = Some(t),
            Err(e) => r.errors.push(note("unbatched", e)),
        }
    }
    if wants("http") {
        // The worker's own connection count and body sizes when measured;
        // else what it would use at most (10 endpoints × 32).
        let (conns, per_req) = r.batched.as_ref().map_or((APPS * 32, 100), |t| {
            (
                t.connections as usize,
                t.events_per_request().round() as usize,
            )
        });
        progress(&format!(
            "HTTP ceiling: {conns} connections, {per_req}-event bodies"
        ));
        let spec = |connections: usize, events: usize| ceiling::LoadSpec {
            port: ctx.receiver.port(),
            keys: ctx.keys.clone(),
            connections,
            events,
            seconds: plan.load.as_secs_f64(),
        };
        match ceiling::http_ceiling(&ctx.receiver, &spec(conns, per_req.max(1))).await {
            Ok(f) => r.http_batched = Some(f),
            Err(e) => r.errors.push(note("http ceiling (batched body)", e)),
        }
        let conns = r
            .unbatched
            .as_ref()
            .map_or(APPS * 32, |t| t.connections as usize);
        progress(&format!(
            "HTTP ceiling: {conns} connections, 1-event bodies"
        ));
        match ceiling::http_ceiling(&ctx.receiver, &spec(conns, 1)).await {
            Ok(f) => r.http_unbatched = Some(f),
            Err(e) => r.errors.push(note("http ceiling (1-event body)", e)),
        }
    }
    if wants("producer") {
        progress("producer publish rate");
        match producer_runs(&ctx, plan.load).await {
            Ok(p) => r.publish = p,
            Err(e) => r.errors.push(note("producer", e)),
        }
    }
    if wants("scaling") {
        for w in [1, 2, 4] {
            progress(&format!(
                "scaling: {w} worker(s), {} events",
                plan.scaling_events
            ));
            let name = format!("scale{w}");
            match scenario::throughput(&ctx, &name, true, w, plan.scaling_events, limit).await {
                Ok(t) => r.scaling.push(t),
                Err(e) => r.errors.push(note(&name, e)),
            }
        }
    }
    if wants("steady") {
        let rate = args.steady_rate.unwrap_or_else(|| {
            r.batched
                .as_ref()
                .or(r.scaling.first())
                .map_or(20_000.0, Throughput::events_per_sec)
                / 2.0
        });
        progress(&format!(
            "latency at half load: {} events/s for {:?}",
            thousands(rate),
            plan.steady
        ));
        match scenario::steady(&ctx, rate, plan.steady).await {
            Ok(s) => r.steady = Some(s),
            Err(e) => r.errors.push(note("steady", e)),
        }
    }
    if wants("idle") {
        progress(&format!("idle worker for {:?}", plan.idle));
        match scenario::idle(&ctx, plan.idle).await {
            Ok(i) => r.idle = Some(i),
            Err(e) => r.errors.push(note("idle", e)),
        }
    }
    if wants("ingest") {
        progress(&format!(
            "ingest: {} connections, 1- and {}-event bodies, {:.0} s per run",
            ingest::CONNECTIONS,
            ingest::BATCH_EVENTS,
            plan.ingest.seconds
        ));
        match ingest::ingest(&ctx, &plan.ingest).await {
            Ok(i) => r.ingest = Some(i),
            Err(e) => r.errors.push(note("ingest", e)),
        }
    }
    if wants("callgrind") {
        let [a, b] = plan.callgrind_events;
        progress(&format!(
            "instructions per unbatched delivery: callgrind, {a} and {b} events"
        ));
        match instructions::unbatched(&ctx, &plan.callgrind_events, &args.out).await {
            Ok(i) => r.instructions = Some(i),
            Err(e) => r.errors.push(note("callgrind", e)),
        }
    }
    if wants("cluster") {
        // (replicas per primary, replicas_ack)
        for (replicas, ack) in [(0, 0), (1, 0), (1, 1)] {
            progress(&format!(
                "cluster: 3 primaries, {replicas} replica(s) each, replicas_ack {ack}, {} shards, {} events, 1 worker",
                cluster::SHARDS,
                plan.events
            ));
            match cluster::throughput(&ctx, replicas, ack, plan.events, limit).await {
                Ok(c) => r.cluster.push(c),
                Err(e) => r
                    .errors
                    .push(note(&format!("cluster r{replicas} a{ack}"), e)),
            }
        }
        progress(&format!(
            "one Redis with 1 replica, replicas_ack 1, {} events, 1 worker",
            plan.events
        ));
        match cluster::single_with_replica(&ctx, plan.events, limit).await {
            Ok(t) => r.single_replica = Some(t),
            Err(e) => r.errors.push(note("one Redis r1 a1", e)),
        }
    }
    drop(ctx);
    scenario::remove_dir(&dir);

    let machine = report::machine();
    let table = table(&r, &plan);
    let took = started.elapsed();
    println!();
    let load_after = procs::load_average();
    println!(
        "hookq benchmark — {} cores, {}, {:.1} GiB, redis {redis_version}, {:.0} s; load average {load_before:.2} before, {load_after:.2} after",
        machine["nproc"],
        machine["cpu_model"].as_str().unwrap_or("?"),
        machine["memory_gib"].as_f64().unwrap_or(0.0),
        took.as_secs_f64()
    );
    println!("{}", table.text());
    for (name, e) in &r.errors {
        println!("FAILED {name}: {e}");
    }
    let doc = json!({
        "timestamp": report::timestamp(),
        "machine": machine,
        "redis_version": redis_version,
        "duration_s": took.as_secs_f64(),
        "load_average_1m": {"before": load_before, "after": load_after},
        "plan": {
            "apps": APPS, "window_ms": WINDOW_MS, "batch_size": 100,
            "events": plan.events, "unbatched_events": plan.unbatched_events,
            "scaling_events": plan.scaling_events, "steady_s": plan.steady.as_secs(),
            "idle_s": plan.idle.as_secs(), "load_s": plan.load.as_secs_f64(),
            "ingest_s": plan.ingest.seconds,
        },
        "results": results_json(&r),
        "table_markdown": table.markdown(),
        "errors": r.errors.iter().map(|(n, e)| json!({"scenario": n, "error": e})).collect::<Vec<_>>(),
    });
    write_json(&args.out, &doc)?;
    Ok(r.errors.is_empty())
}

async fn load_child(spec: &str) -> Result<()> {
    let spec: ceiling::LoadSpec = serde_json::from_str(spec).context("reading the load spec")?;
    let figure = ceiling::http_load(spec).await?;
    println!("{}", serde_json::to_string(&figure)?);
    Ok(())
}

fn ingest_load_child(spec: &str) -> Result<()> {
    let spec: ingest_load::LoadSpec =
        serde_json::from_str(spec).context("reading the ingest load spec")?;
    // Its own runtime, on a thread of its own: this one is the benchmark's.
    let figure = std::thread::spawn(move || ingest_load::run_load(&spec))
        .join()
        .map_err(|_| anyhow::anyhow!("the ingest load panicked"))??;
    println!("{}", serde_json::to_string(&figure)?);
    Ok(())
}

fn progress(what: &str) {
    eprintln!("· {what}");
}

async fn producer_runs(ctx: &Ctx, length: Duration) -> Result<Vec<PublishFigure>> {
    let prefix = "bench-producer";
    let p = producer::producer(&ctx.parsed(prefix)?).await?;
    let mut out = Vec::new();
    for (tasks, batch) in [(1, 1), (4, 1), (1, 100), (4, 100)] {
        ctx.redis.flush().await?;
        ctx.redis.reset_stats().await?;
        let (own0, redis0) = (procs::own_cpu_time()?, ctx.redis.cpu()?);
        let mut f = producer::publish_rate(&p, &ctx.apps, tasks, batch, length).await?;
        f.cpu = (
            procs::own_cpu_time()?.saturating_sub(own0),
            ctx.redis.cpu()?.saturating_sub(redis0),
        );
        let calls: u64 = ctx
            .redis
            .command_calls()
            .await?
            .iter()
            .filter(|(name, _)| !name.starts_with("info") && !name.starts_with("config"))
            .map(|(_, n)| n)
            .sum();
        let published_calls = (f.events as f64 / batch as f64).max(1.0);
        f.commands_per_call = calls as f64 / published_calls;
        out.push(f);
    }
    ctx.redis.flush().await?;
    Ok(out)
}

fn write_json(dir: &std::path::Path, doc: &Value) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let text = serde_json::to_string_pretty(doc)?;
    let stamped = dir.join(format!(
        "{}.json",
        doc["timestamp"].as_str().unwrap_or("run")
    ));
    std::fs::write(&stamped, &text).with_context(|| format!("writing {}", stamped.display()))?;
    let latest = dir.join("latest.json");
    std::fs::write(&latest, &text).with_context(|| format!("writing {}", latest.display()))?;
    eprintln!("results: {} and {}", stamped.display(), latest.display());
    Ok(())
}

fn results_json(r: &Results) -> Value {
    json!({
        "redis_benchmark": r.redis.iter().map(|f| json!({
            "test": f.test, "pipeline": f.pipeline, "ops_per_sec": f.ops_per_sec})).collect::<Vec<_>>(),
        "batched": r.batched.as_ref().map(Throughput::json),
        "unbatched": r.unbatched.as_ref().map(Throughput::json),
        "http_ceiling_batched_body": r.http_batched.as_ref().map(http_json),
        "http_ceiling_unbatched_body": r.http_unbatched.as_ref().map(http_json),
        "producer": r.publish.iter().map(|p| json!({
            "tasks": p.tasks, "events_per_call": p.batch, "events": p.events,
            "events_per_sec": p.events_per_sec, "redis_commands_per_call": p.commands_per_call,
            "producer_process_cpu_s": p.cpu.0.as_secs_f64(), "redis_cpu_s": p.cpu.1.as_secs_f64(),
        })).collect::<Vec<_>>(),
        "scaling": r.scaling.iter().map(Throughput::json).collect::<Vec<_>>(),
        "steady_half_load": r.steady.as_ref().map(Steady::json),
        "idle": r.idle.as_ref().map(Idle::json),
        "ingest": r.ingest.as_ref().map(ingest::IngestRun::json),
        "cluster": r.cluster.iter().map(cluster::ClusterRun::json).collect::<Vec<_>>(),
        "single_redis_replica_ack": r.single_replica.as_ref().map(Throughput::json),
        "callgrind_unbatched": r.instructions.as_ref().map(instructions::Instructions::json),
    })
}

fn http_json(f: &HttpFigure) -> Value {
    serde_json::to_value(f).unwrap_or(Value::Null)
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "—".into()
    }
}

fn verdict(ok: bool, target: &str) -> String {
    format!("{target} {}", if ok { "met" } else { "MISSED" })
}

fn redis_rate(r: &Results, test: &str, pipeline: u32) -> Option<f64> {
    r.redis
        .iter()
        .find(|f| f.test == test && f.pipeline == pipeline)
        .map(|f| f.ops_per_sec)
}

/// `worker / redis / receiver / others in wall` CPU seconds.
fn cpu_line(t: &Throughput) -> String {
    format!(
        "{:.2} / {:.2} / {:.2} / {:.2} in {:.2} s",
        t.worker_cpu.as_secs_f64(),
        t.redis_cpu.as_secs_f64(),
        t.bench_cpu.as_secs_f64(),
        t.others_cpu.as_secs_f64(),
        t.elapsed.as_secs_f64()
    )
}

/// Worker and Redis CPU time per event delivered, µs.
fn per_event(t: &Throughput) -> String {
    let n = t.received.max(1) as f64;
    format!(
        "{:.1} / {:.1}",
        t.worker_cpu.as_secs_f64() * 1e6 / n,
        t.redis_cpu.as_secs_f64() * 1e6 / n
    )
}

fn s(x: impl Into<String>) -> String {
    x.into()
}

fn table(r: &Results, plan: &Plan) -> Table {
    let mut t = Table::new(&[
        "figure",
        "hookq",
        "ceiling (same run)",
        "ratio",
        "target / note",
    ]);
    let none = String::new;
    if let Some(b) = &r.batched {
        t.section(&format!(
            "batched end to end — {} events pre-filled, {APPS} apps, 1 worker, window {WINDOW_MS} ms, size 100",
            thousands(b.events as f64)
        ));
        let eps = b.events_per_sec();
        let rpop = redis_rate(r, "RPOP", 16);
        t.row(&[
            s("events/s"),
            thousands(eps),
            rpop.map_or_else(none, |c| format!("RPOP -P 16: {} ops/s", thousands(c))),
            rpop.map_or_else(none, |c| ratio(eps, c)),
            verdict(eps >= 170_000.0, "≥ 170,000"),
        ]);
        if let Some(h) = &r.http_batched {
            let cap = h.requests_per_sec * h.events_per_request as f64;
            t.row(&[
                s("events/s vs HTTP"),
                thousands(eps),
                format!(
                    "HTTP POST × {} events: {} events/s",
                    h.events_per_request,
                    thousands(cap)
                ),
                ratio(eps, cap),
                none(),
            ]);
        }
        let rps = b.requests_per_sec();
        t.row(&[
            s("requests/s"),
            thousands(rps),
            r.http_batched.as_ref().map_or_else(none, |h| {
                format!(
                    "HTTP POST, {} conns, {} B: {} req/s",
                    h.connections,
                    thousands(h.body_bytes as f64),
                    thousands(h.requests_per_sec)
                )
            }),
            r.http_batched
                .as_ref()
                .map_or_else(none, |h| ratio(rps, h.requests_per_sec)),
            none(),
        ]);
        t.row(&[
            s("events/request, connections"),
            format!("{:.1}, {}", b.events_per_request(), b.connections),
            none(),
            none(),
            none(),
        ]);
        t.row(&[
            s("p50 / p99 enqueue→received (backlog)"),
            format!("{} / {} ms", b.latency.p50, b.latency.p99),
            none(),
            none(),
            none(),
        ]);
        t.row(&[
            s("worker peak RSS"),
            mib(b.worker_peak_rss),
            none(),
            none(),
            verdict(b.worker_peak_rss <= 24 << 20, "≤ 24 MiB"),
        ]);
        t.row(&[
            s("CPU s: worker / redis / receiver / others"),
            cpu_line(b),
            none(),
            none(),
            none(),
        ]);
        t.row(&[
            s("CPU µs per event: worker / redis"),
            per_event(b),
            none(),
            none(),
            none(),
        ]);
    }
    if let Some(u) = &r.unbatched {
        t.section(&format!(
            "unbatched end to end — {} events pre-filled, 1 worker",
            thousands(u.events as f64)
        ));
        let dps = u.requests_per_sec();
        let ok = r
            .http_unbatched
            .as_ref()
            .is_some_and(|h| dps >= 0.8 * h.requests_per_sec);
        t.row(&[
            s("deliveries/s"),
            thousands(dps),
            r.http_unbatched.as_ref().map_or_else(none, |h| {
                format!(
                    "HTTP POST, {} conns, {} B: {} req/s",
                    h.connections,
                    thousands(h.body_bytes as f64),
                    thousands(h.requests_per_sec)
                )
            }),
            r.http_unbatched
                .as_ref()
                .map_or_else(none, |h| ratio(dps, h.requests_per_sec)),
            verdict(ok, "≥ 0.8 × ceiling"),
        ]);
        t.row(&[
            s("p50 / p99 enqueue→received (backlog)"),
            format!("{} / {} ms", u.latency.p50, u.latency.p99),
            none(),
            none(),
            none(),
        ]);
        t.row(&[
            s("worker peak RSS"),
            mib(u.worker_peak_rss),
            none(),
            none(),
            verdict(u.worker_peak_rss <= 40 << 20, "≤ 40 MiB"),
        ]);
        t.row(&[
            s("CPU s: worker / redis / receiver / others"),
            cpu_line(u),
            none(),
            none(),
            none(),
        ]);
        t.row(&[
            s("CPU µs per event: worker / redis"),
            per_event(u),
            none(),
            none(),
            none(),
        ]);
        let worker_us = u.worker_cpu.as_secs_f64() * 1e6 / u.received.max(1) as f64;
        let client_us = r
            .http_unbatched
            .as_ref()
            .map(HttpFigure::client_us_per_request);
        t.row(&[
            s("worker CPU µs per delivery"),
            format!("{worker_us:.1}"),
            client_us.map_or_else(none, |c| {
                format!("HTTP load process: {c:.1} µs per request")
            }),
            client_us.map_or_else(none, |c| ratio(worker_us, c)),
            client_us.map_or_else(none, |c| verdict(worker_us <= 1.3 * c, "≤ 1.3 × client")),
        ]);
    }
    if let Some(i) = &r.instructions {
        let runs: Vec<String> = i.runs.iter().map(|(n, _)| thousands(*n as f64)).collect();
        t.section("unbatched under callgrind — 1 worker, instructions it executed");
        t.row(&[
            s("instructions per delivery"),
            thousands(i.per_delivery()),
            none(),
            none(),
            format!("slope of runs of {} events", runs.join(" and ")),
        ]);
    }
    if !r.publish.is_empty() {
        t.section(&format!(
            "producer — Producer over RedisQueue, events/s, {:.0} s each",
            plan.load.as_secs_f64()
        ));
        for p in &r.publish {
            let (label, ceil, cname) = if p.batch <= 1 {
                (
                    format!("publish(), {} task(s)", p.tasks),
                    redis_rate(r, "LPUSH", 1),
                    "LPUSH, 50 clients",
                )
            } else {
                (
                    format!("publish_batch({}), {} task(s)", p.batch, p.tasks),
                    redis_rate(r, "LPUSH", 16),
                    "LPUSH -P 16, 50 clients",
                )
            };
            t.row(&[
                label,
                thousands(p.events_per_sec),
                ceil.map_or_else(none, |c| format!("{cname}: {} ops/s", thousands(c))),
                ceil.map_or_else(none, |c| ratio(p.events_per_sec, c)),
                format!("{:.1} Redis commands/call", p.commands_per_call),
            ]);
        }
    }
    if !r.scaling.is_empty() {
        t.section(&format!(
            "scaling — batched, {} events, N worker processes",
            thousands(plan.scaling_events as f64)
        ));
        let base = r.scaling.first().map(Throughput::events_per_sec);
        for sc in &r.scaling {
            let eps = sc.events_per_sec();
            t.row(&[
                format!("{} worker(s): events/s", sc.workers),
                thousands(eps),
                s("1 worker"),
                base.map_or_else(none, |b| ratio(eps, b)),
                format!("CPU s w/r/r/o {}", cpu_line(sc)),
            ]);
        }
    }
    if let Some(st) = &r.steady {
        t.section(&format!(
            "latency under load — 1 worker, paced producer at half the batched rate for {} s",
            plan.steady.as_secs()
        ));
        let target = WINDOW_MS as u32 + 50;
        t.row(&[
            s("rate published"),
            format!("{} events/s", thousands(st.rate)),
            format!("asked {}", thousands(st.target_rate)),
            none(),
            none(),
        ]);
        t.row(&[
            s("p50 / p99 / max enqueue→received"),
            format!(
                "{} / {} / {} ms",
                st.latency.p50, st.latency.p99, st.latency.max
            ),
            none(),
            none(),
            verdict(st.latency.p99 <= target, &format!("p99 ≤ {target} ms")),
        ]);
        t.row(&[
            s("CPU s: worker / redis / receiver+producer / others"),
            format!(
                "{:.2} / {:.2} / {:.2} / {:.2}",
                st.cpu.0.as_secs_f64(),
                st.cpu.1.as_secs_f64(),
                st.cpu.2.as_secs_f64(),
                st.cpu.3.as_secs_f64()
            ),
            none(),
            none(),
            none(),
        ]);
    }
    if let Some(i) = &r.idle {
        t.section(&format!("idle worker — empty queue, {:.0} s", i.seconds));
        t.row(&[
            s("Redis commands/s (INFO commandstats)"),
            format!("{:.2}", i.per_sec()),
            format!("sent by the worker: {:.2}/s", i.sent_per_sec()),
            none(),
            verdict(i.per_sec() <= 5.0, "≤ 5"),
        ]);
    }
    if let Some(i) = &r.ingest {
        i.rows(
            &mut t,
            redis_rate(r, "LPUSH", 1),
            redis_rate(r, "LPUSH", 16),
        );
    }
    if !r.cluster.is_empty() {
        t.section(&format!(
            "Redis Cluster — 3 primaries, {} shards, batched, {APPS} apps, 1 worker; beside one Redis (batched above)",
            cluster::SHARDS
        ));
        let single = r.batched.as_ref();
        let per_event = |b: &Throughput| b.redis_cpu.as_secs_f64() * 1e6 / b.received.max(1) as f64;
        let single_us = single.map(per_event);
        let acked_us = r.single_replica.as_ref().map(per_event);
        if let Some(a) = &r.single_replica {
            t.row(&[
                s("events/s (one Redis, 1 replica, replicas_ack 1)"),
                thousands(a.events_per_sec()),
                none(),
                none(),
                none(),
            ]);
            t.row(&[
                s("Redis CPU µs/event, primary (one Redis, 1 replica, replicas_ack 1)"),
                format!("{:.2}", per_event(a)),
                none(),
                none(),
                none(),
            ]);
        }
        for c in &r.cluster {
            let t0 = &c.throughput;
            let n = t0.received.max(1) as f64;
            let us = t0.redis_cpu.as_secs_f64() * 1e6 / n;
            let primaries_us = c.primaries_cpu.as_secs_f64() * 1e6 / n;
            let what = format!(
                "{} replica(s)/primary, replicas_ack {}",
                c.replicas, c.replicas_ack
            );
            t.row(&[
                format!("events/s ({what})"),
                thousands(t0.events_per_sec()),
                single.map_or_else(none, |b| {
                    format!("one Redis: {}", thousands(b.events_per_sec()))
                }),
                single.map_or_else(none, |b| ratio(t0.events_per_sec(), b.events_per_sec())),
                none(),
            ]);
            t.row(&[
                format!("Redis CPU µs/event, all nodes / primaries ({what})"),
                format!("{us:.2} / {primaries_us:.2}"),
                single_us.map_or_else(none, |u| format!("one Redis: {u:.2}")),
                single_us.map_or_else(none, |u| ratio(primaries_us, u)),
                if c.replicas == 0 {
                    single_us.map_or_else(none, |u| verdict(us <= 1.5 * u, "≤ 1.5× one Redis"))
                } else if c.replicas_ack > 0 {
                    acked_us.map_or_else(
                        || s("replicas replay every write"),
                        |u| {
                            format!(
                                "{:.2}× one Redis with a replica and replicas_ack: {}",
                                primaries_us / u,
                                verdict(primaries_us <= 1.5 * u, "≤ 1.5×")
                            )
                        },
                    )
                } else {
                    s("replicas replay every write")
                },
            ]);
            t.row(&[
                format!("CPU µs per event: worker ({what})"),
                format!("{:.2}", t0.worker_cpu.as_secs_f64() * 1e6 / n),
                none(),
                none(),
                none(),
            ]);
        }
    }
    if !r.redis.is_empty() {
        t.section("Redis ceilings — redis-benchmark -t lpush,rpop (50 clients)");
        for f in &r.redis {
            t.row(&[
                format!(
                    "{}{}",
                    f.test,
                    if f.pipeline > 1 {
                        format!(" -P {}", f.pipeline)
                    } else {
                        String::new()
                    }
                ),
                none(),
                format!("{} ops/s", thousands(f.ops_per_sec)),
                none(),
                none(),
            ]);
        }
    }
    t
}
