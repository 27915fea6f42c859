//! The `worker` section: the admin address, how many jobs and batches a
//! worker holds, per-endpoint concurrency and the shutdown timeout.

use super::reader::Obj;
use super::{Diagnostics, ms};
use std::time::Duration;

/// `worker`.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Address of `/metrics`, `/health` and `/ready`.
    pub admin_addr: String,
    /// Most jobs held at once; above it the worker stops receiving until deliveries settle.
    pub max_held_jobs: usize,
    /// Default most requests in flight per endpoint.
    pub endpoint_concurrency: usize,
    /// Most open batches; past it the oldest is closed early.
    pub max_open_batches: usize,
    /// How long SIGTERM waits for in-flight deliveries.
    pub shutdown_timeout: Duration,
}

pub(super) fn read_worker(o: &mut Obj, d: &mut Diagnostics) -> WorkerSettings {
    let admin_addr = o
        .nonempty_str("admin_addr", d)
        .unwrap_or_else(|| "0.0.0.0:9090".into());
    if admin_addr.parse::<std::net::SocketAddr>().is_err() {
        d.error(
            &o.at("admin_addr"),
            format!("{admin_addr:?} is not an ip:port address"),
        );
    }
    let w = WorkerSettings {
        admin_addr,
        max_held_jobs: o.u64("max_held_jobs", 20_000, 1, d) as usize,
        endpoint_concurrency: o.u64("endpoint_concurrency", 32, 1, d) as usize,
        max_open_batches: o.u64("max_open_batches", 10_000, 1, d) as usize,
        shutdown_timeout: ms(o.u64("shutdown_timeout_ms", 25_000, 0, d)),
    };
    o.finish(d);
    w
}
