//! The benchmark's own `redis-server` (the suite's harness,
//! [`hookq_tests::redis_server`]: a free loopback port, persistence off, a
//! temporary directory); and what the benchmark asks of it directly —
//! pre-filling `{prefix}:ready`, the command statistics, the queue's depth,
//! `FLUSHALL` between scenarios — over a redis-rs connection.

use crate::procs::cpu_time;
use anyhow::{Context, Result};
use hookq_core::Event;
use hookq_core::job::{EventJob, Job};
use hookq_queue::redis::ready_key;
use hookq_tests::redis_server::RedisServer;
use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;
use std::collections::BTreeMap;
use std::time::Duration;

/// Jobs per `LPUSH` when pre-filling.
const FILL_CHUNK: usize = 1000;
/// `LPUSH`es per pipeline when pre-filling.
const FILL_PIPELINE: usize = 10;

/// The private redis-server and a connection to it; killed on drop.
pub struct Redis {
    server: RedisServer,
    conn: MultiplexedConnection,
}

impl Redis {
    /// Starts `redis-server` (answering by then) and connects to it.
    pub async fn start() -> Result<Self> {
        // The start polls with blocking sleeps: off the runtime's threads.
        let server = tokio::task::spawn_blocking(RedisServer::try_start).await??;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(30)));
        let conn = redis::Client::open(server.url())?
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .with_context(|| format!("connecting to {}", server.url()))?;
        Ok(Self { server, conn })
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// A connection for the benchmark's own commands.
    pub fn conn(&self) -> MultiplexedConnection {
        self.conn.clone()
    }

    /// CPU time redis-server has used so far (user + system, from
    /// `/proc/<pid>/stat` of redis-server itself, not of its guard).
    pub fn cpu(&self) -> Result<Duration> {
        cpu_time(self.server.pid().context("redis-server is not running")?)
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
        hookq_tests::redis_server::command_calls(&info)
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
