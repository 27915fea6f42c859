//! The Redis Cluster scenario: the batched end-to-end run of
//! [`scenario::throughput`](crate::scenario::throughput) on a cluster of
//! three primaries (`redis-server --cluster-enabled yes` on free loopback
//! ports, joined by `redis-cli --cluster create`), the queue split into 16
//! shards; once without replicas, once with a replica per primary, and once
//! with replicas and `queue.redis.replicas_ack: 1`. Redis CPU is every
//! node's, summed (and the primaries' alone). The last beside its
//! like-for-like single node: the benchmark's Redis with one replica and
//! `replicas_ack: 1` ([`single_with_replica`]).

use crate::procs::{Guarded, cpu_time};
use crate::scenario::{Ctx, Throughput, Worker};
use anyhow::{Context, Result, bail};
use hookq_core::config::RedisSettings;
use hookq_queue::redis::RedisQueue;
use hookq_queue::{DeadLetters, Outgoing, QueuePush};
use hookq_tests::redis_server::RedisServer;
use serde_json::json;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Shards the scenario splits the queue into (`queue.redis.shards`' cluster default).
pub const SHARDS: usize = 16;

/// A running cluster; every node killed on drop.
pub struct Cluster {
    nodes: Vec<(u16, Guarded)>,
    /// Ports of the primaries (the first three nodes).
    primaries: Vec<u16>,
}

/// A port P with P + 10000 (its cluster bus) free too, from 20000–29999.
fn bus_port(seed: u64) -> Result<u16> {
    let mut p = 20_000 + seed % 10_000;
    for _ in 0..10_000 {
        let port = p as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok()
        {
            return Ok(port);
        }
        p = 20_000 + (p - 20_000 + 13) % 10_000;
    }
    bail!("no free port pair for a cluster node")
}

impl Cluster {
    /// Three primaries, each with `replicas` replicas, in `dir`; returns when
    /// every node says `cluster_state:ok`.
    pub fn start(dir: &Path, replicas: usize) -> Result<Self> {
        let n = 3 * (1 + replicas);
        let seed = u64::from(std::process::id()) * 7 + replicas as u64 * 101;
        let mut nodes = Vec::new();
        for i in 0..n {
            let port = bus_port(seed + i as u64 * 37)?;
            let node_dir = dir.join(format!("node-{port}"));
            std::fs::create_dir_all(&node_dir)?;
            let args: Vec<String> = [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &node_dir.join("nodes.conf").to_string_lossy(),
                "--dir",
                &node_dir.to_string_lossy(),
                "--save",
                "",
                "--appendonly",
                "no",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let g = Guarded::spawn(
                &format!("redis-{port}"),
                &PathBuf::from("redis-server"),
                &args,
                &[],
                &node_dir.join("redis.log"),
            )?;
            nodes.push((port, g));
        }
        for (port, _) in &nodes {
            wait(Duration::from_secs(10), || {
                hookq_tests::redis_server::command_on(*port, &["PING"]).is_ok()
            })
            .with_context(|| format!("cluster node {port} answers"))?;
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|(p, _)| format!("127.0.0.1:{p}"))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .context("running redis-cli --cluster create")?;
        if !out.status.success() {
            bail!(
                "redis-cli --cluster create: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let ports: Vec<u16> = nodes.iter().map(|(p, _)| *p).collect();
        wait(Duration::from_secs(30), || {
            ports.iter().all(|p| {
                hookq_tests::redis_server::command_on(*p, &["CLUSTER", "INFO"])
                    .ok()
                    .and_then(|r| r.text())
                    .is_some_and(|t| t.contains("cluster_state:ok"))
            })
        })
        .context("cluster_state:ok on every node")?;
        let role = |p: u16| {
            hookq_tests::redis_server::command_on(p, &["INFO", "replication"])
                .ok()
                .and_then(|r| r.text())
                .unwrap_or_default()
        };
        // The replicas are assigned after the slots: wait until there are
        // three primaries and every replica's link is up.
        wait(Duration::from_secs(30), || {
            let roles: Vec<String> = ports.iter().map(|p| role(*p)).collect();
            roles.iter().filter(|t| t.contains("role:master")).count() == 3
                && roles
                    .iter()
                    .filter(|t| t.contains("role:slave"))
                    .all(|t| t.contains("master_link_status:up"))
        })
        .context("three primaries, every replica linked")?;
        let primaries = ports
            .iter()
            .copied()
            .filter(|p| role(*p).contains("role:master"))
            .collect();
        Ok(Self { nodes, primaries })
    }

    /// Every node's URL.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|(p, _)| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// CPU time of (every node, the primaries only) so far.
    pub fn cpu(&self) -> Result<(Duration, Duration)> {
        let (mut all, mut primaries) = (Duration::ZERO, Duration::ZERO);
        for (port, g) in &self.nodes {
            let t = cpu_time(g.pid())?;
            all += t;
            if self.primaries.contains(port) {
                primaries += t;
            }
        }
        Ok((all, primaries))
    }
}

fn wait(limit: Duration, mut ok: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while !ok() {
        if start.elapsed() > limit {
            bail!("not within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// One cluster run's figures.
pub struct ClusterRun {
    /// Replicas per primary.
    pub replicas: usize,
    /// `queue.redis.replicas_ack`.
    pub replicas_ack: u32,
    /// The end-to-end figures; `redis_cpu` is every node's.
    pub throughput: Throughput,
    /// The primaries' CPU alone.
    pub primaries_cpu: Duration,
}

impl ClusterRun {
    /// The JSON form.
    pub fn json(&self) -> serde_json::Value {
        let mut v = self.throughput.json();
        v["replicas_per_primary"] = json!(self.replicas);
        v["replicas_ack"] = json!(self.replicas_ack);
        v["shards"] = json!(SHARDS);
        v["primaries_cpu_s"] = json!(self.primaries_cpu.as_secs_f64());
        v
    }
}

/// Pre-fills `events` jobs through the driver (pushes of 1,000, each to the
/// next shard), runs one worker on the cluster until all are delivered, and
/// measures as the single-Redis batched scenario does.
pub async fn throughput(
    ctx: &Ctx,
    replicas: usize,
    replicas_ack: u32,
    events: usize,
    limit: Duration,
) -> Result<ClusterRun> {
    let name = format!("cluster-r{replicas}-a{replicas_ack}");
    let dir = ctx.dir.join(&name);
    std::fs::create_dir_all(&dir)?;
    let cluster = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || Cluster::start(&dir, replicas)).await??
    };
    let prefix = format!("bench-{name}");
    let settings = RedisSettings {
        url: cluster.urls()[0].clone(),
        cluster: Some(cluster.urls()),
        shards: SHARDS,
        prefix: prefix.clone(),
        ..RedisSettings::default()
    };
    let q = RedisQueue::connect(&settings).await?;
    let mut made = 0;
    while made < events {
        let upto = (made + 1000).min(events);
        let jobs = (made..upto)
            .map(|i| {
                let app = &ctx.apps[i % ctx.apps.len()];
                Outgoing::now(
                    format!("j{i}"),
                    app.clone(),
                    crate::redis_server::event_job(app, i),
                )
            })
            .collect();
        q.push(jobs).await.context("pre-filling the cluster")?;
        made = upto;
    }
    let mut config = ctx.config(&prefix, true);
    config["queue"] = json!({"driver": "redis", "redis": {
        "url": cluster.urls()[0], "cluster_mode": true, "prefix": prefix,
        "shards": SHARDS, "replicas_ack": replicas_ack}});
    let (cpu0, primaries0) = cluster.cpu()?;
    let bench_cpu0 = crate::procs::own_cpu_time()?;
    ctx.receiver.reset(events as u64, true);
    let mut worker: Worker = ctx.spawn_worker(&name, &config)?;
    let complete = ctx.receiver.wait_done(limit).await;
    let rss = worker.process.peak_rss().unwrap_or(0);
    let worker_cpu = worker.process.cpu().unwrap_or_default();
    let (cpu1, primaries1) = cluster.cpu()?;
    let bench_cpu = crate::procs::own_cpu_time()?.saturating_sub(bench_cpu0);
    let seen = ctx.receiver.take();
    if let Err(e) = worker.stop() {
        eprintln!("warning: {e:#}; log: {}", worker.log_tail());
    }
    let depth = q.depth().await?;
    if !complete {
        bail!(
            "{name}: {} of {events} events arrived within {limit:?} (left {depth:?}); worker log: {}",
            seen.events,
            worker.log_tail()
        );
    }
    Ok(ClusterRun {
        replicas,
        replicas_ack,
        throughput: Throughput {
            worker_peak_rss: rss,
            worker_cpu,
            redis_cpu: cpu1.saturating_sub(cpu0),
            bench_cpu,
            left: (depth.ready, depth.held, depth.dead),
            ..Throughput::seen(&seen, events, complete, limit)
        },
        primaries_cpu: primaries1.saturating_sub(primaries0),
    })
}

/// The batched scenario on the benchmark's own Redis with one replica linked
/// to it (`REPLICAOF`, waited for until the link is up) and
/// `queue.redis.replicas_ack: 1`: the single node that the cluster's
/// `replicas_ack` run compares with. The replica is stopped afterwards.
/// `redis_cpu` is the primary's alone.
pub async fn single_with_replica(ctx: &Ctx, events: usize, limit: Duration) -> Result<Throughput> {
    let primary = ctx.redis.port();
    let replica = tokio::task::spawn_blocking(move || -> Result<RedisServer> {
        let replica = RedisServer::try_start()?;
        replica.command(&["REPLICAOF", "127.0.0.1", &primary.to_string()])?;
        let start = Instant::now();
        loop {
            let info = replica
                .command(&["INFO", "replication"])?
                .text()
                .unwrap_or_default();
            if info.contains("master_link_status:up") {
                return Ok(replica);
            }
            if start.elapsed() > Duration::from_secs(20) {
                bail!("the replica of 127.0.0.1:{primary} did not link within 20 s: {info}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await??;
    let run = crate::scenario::throughput_with(ctx, "single-r1-a1", true, 1, events, limit, |c| {
        c["queue"]["redis"]["replicas_ack"] = json!(1);
    })
    .await;
    drop(replica);
    run
}
