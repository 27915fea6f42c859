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
    /// The bearer token of the admin API (`/api/*`, `/openapi.json`); none:
    /// the admin API is off.
    pub admin_token: Option<AdminToken>,
}

/// Fewest characters an admin token may have.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

/// The admin API's bearer token. Its `Debug` hides it, so that a logged
/// config never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    /// The token's text, to compare a request's against
    /// ([`crate::sign::same_secret`]); never to print.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
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
        admin_token: read_admin_token(o, d),
    };
    o.finish(d);
    w
}

/// `worker.admin_token`: at least [`MIN_ADMIN_TOKEN_LEN`] characters, with
/// no whitespace at either end (a header value could not carry it).
fn read_admin_token(o: &mut Obj, d: &mut Diagnostics) -> Option<AdminToken> {
    let token = o.str("admin_token", d)?;
    if token.chars().count() < MIN_ADMIN_TOKEN_LEN {
        d.error(
            &o.at("admin_token"),
            format!(
                "is {} characters long; an admin token needs at least {MIN_ADMIN_TOKEN_LEN}",
                token.chars().count()
            ),
        );
        return None;
    }
    if token.trim() != token || !token.chars().all(|c| c.is_ascii_graphic()) {
        d.error(
            &o.at("admin_token"),
            "must be printable ASCII without spaces (it is sent in an HTTP header)",
        );
        return None;
    }
    Some(AdminToken(token))
}
