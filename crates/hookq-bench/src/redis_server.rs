//! The benchmark's own `redis-server`: a free loopback port, persistence off,
//! a temporary directory; and what the benchmark asks of it directly —
//! pre-filling `{prefix}:ready`, the command statistics, the queue's depth,
//! `FLUSHALL` between scenarios.

use crate::procs::{Guarded, free_port};
use anyhow::{Context, Result, bail};
use hookq_core::Event;
use hookq_core::job::{EventJob, Job};
use hookq_queue::redis::ready_key;
use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Jobs per `LPUSH` when pre-filling.
const FILL_CHUNK: usize = 1000;
/// `LPUSH`es per pipeline when pre-filling.
const FILL_PIPELINE: usize = 10;

/// A running private redis-server, killed on drop.
pub struct RedisServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    process: Guarded,
    conn: MultiplexedConnection,
}

impl RedisServer {
    /// Starts `redis-server` in `dir` and waits until it answers.
    pub async fn start(dir: &Path) -> Result<Self> {
        let port = free_port()?;
        let args: Vec<String> = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--dir",
            &dir.to_string_lossy(),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--logfile",
            "",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let program = PathBuf::from("redis-server");
        let process = Guarded::spawn("redis-server", &program, &args, &[], &dir.join("redis.log"))
            .context(
                "is redis-server installed? (`apt-get install redis-server`, or `make test-deps`)",
            )?;
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(30)));
        let start = Instant::now();
        let conn = loop {
            match client
                .get_multiplexed_async_connection_with_config(&config)
                .await
            {
                Ok(mut c) => {
                    if redis::cmd("PING")
                        .query_async::<String>(&mut c)
                        .await
                        .is_ok()
                    {
                        break c;
                    }
                }
                Err(e) if start.elapsed() > Duration::from_secs(20) || !process.alive() => {
                    let log = std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default();
                    bail!("redis-server on port {port} did not answer: {e}; log: {log}");
                }
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        Ok(Self {
            port,
            process,
            conn,
        })
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A connection for the benchmark's own commands.
    pub fn conn(&self) -> MultiplexedConnection {
        self.conn.clone()
    }

    /// The server's process (for its CPU time).
    pub fn process(&self) -> &Guarded {
        &self.process
    }

    /// `redis-server --version`, e.g. `7.0.15`.
    pub async fn version(&self) -> String {
        let mut c = self.conn();
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut c)
            .await
            .unwrap_or_default();
        info.lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("?")
            .trim()
            .to_string()
    }

    /// Deletes every key.
    pub async fn flush(&self) -> Result<()> {
        let mut c = self.conn();
        redis::cmd("FLUSHALL")
            .query_async::<()>(&mut c)
            .await
            .context("FLUSHALL")
    }

    /// `CONFIG RESETSTAT`.
    pub async fn reset_stats(&self) -> Result<()> {
        let mut c = self.conn();
        redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async::<()>(&mut c)
            .await
            .context("CONFIG RESETSTAT")
    }

    /// Calls per command since the last `CONFIG RESETSTAT`, from
    /// `INFO commandstats` (which also counts commands run inside scripts).
    pub async fn command_calls(&self) -> Result<BTreeMap<String, u64>> {
        let mut c = self.conn();
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut c)
            .await
            .context("INFO commandstats")?;
        let mut calls = BTreeMap::new();
        for line in info.lines() {
            let Some((name, stats)) = line
                .strip_prefix("cmdstat_")
                .and_then(|r| r.split_once(':'))
            else {
                continue;
            };
            let n = stats
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))
                .and_then(|n| n.parse().ok())
                .with_context(|| format!("no calls in {line}"))?;
            calls.insert(name.to_string(), n);
        }
        Ok(calls)
    }

    /// Lengths of the queue's keys under `prefix`: (ready, held, dead).
    pub async fn depth(&self, prefix: &str) -> Result<(u64, u64, u64)> {
        let mut c = self.conn();
        let key = |name: &str| hookq_queue::redis::key_for(prefix, name);
        let (ready, held, dead): (u64, u64, u64) = redis::pipe()
            .cmd("LLEN")
            .arg(ready_key(prefix))
            .cmd("HLEN")
            .arg(key("held"))
            .cmd("LLEN")
            .arg(key("dead"))
            .query_async(&mut c)
            .await
            .context("queue depth")?;
        Ok((ready, held, dead))
    }

    /// Pushes `n` event jobs, round-robin over `apps`, to `{prefix}:ready`
    /// with pipelined `LPUSH`es: each a `client_event` whose `data` is its
    /// enqueue time in Unix ms, so the receiver can tell its latency.
    pub async fn prefill(&self, prefix: &str, apps: &[String], n: usize) -> Result<()> {
        let mut c = self.conn();
        let key = ready_key(prefix);
        let mut made = 0;
        while made < n {
            let mut pipe = redis::pipe();
            for _ in 0..FILL_PIPELINE {
                if made >= n {
                    break;
                }
                let upto = (made + FILL_CHUNK).min(n);
                let jobs: Vec<String> = (made..upto)
                    .map(|i| event_job(&apps[i % apps.len()], i))
                    .collect();
                pipe.cmd("LPUSH").arg(&key).arg(jobs).ignore();
                made = upto;
            }
            pipe.query_async::<()>(&mut c)
                .await
                .context("pre-filling the queue")?;
        }
        Ok(())
    }
}

/// A `client_event` whose `data` is now in Unix ms.
pub fn bench_event(i: usize) -> Event {
    Event::client_event(
        format!("private-bench-{}", i % 64),
        "client-bench",
        hookq_core::now_ms().to_string(),
        "1234.5678",
    )
}

/// The JSON of an event job for `app` carrying [`bench_event`].
pub fn event_job(app: &str, i: usize) -> String {
    Job::Event(EventJob::new(app, bench_event(i))).encode()
}
