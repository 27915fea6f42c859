//! The `webhooks` section: batching, the request timeouts and the retry
//! policy every endpoint starts from (`webhooks.batching`, `webhooks.retry`,
//! `webhooks.event_ids`, `request_timeout_ms`, `connect_timeout_ms`).

use super::reader::Obj;
use super::{Diagnostics, ms};
use crate::retry::RetryPolicy;
use std::time::Duration;

/// Batching of events per (app, endpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// `webhooks.batching.enabled`: when off every event is sent alone (still in an envelope).
    pub enabled: bool,
    /// `webhooks.batching.duration`: how long a batch stays open after its first event.
    pub duration: Duration,
    /// `webhooks.batching.size`: most events in one batch.
    pub size: usize,
    /// `webhooks.batching.max_bytes`: most bytes of one request body.
    pub max_bytes: usize,
}

/// Global webhook settings (`webhooks`).
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Batching.
    pub batching: Batching,
    /// `webhooks.event_ids`: add hookq's per-event `id` to each event sent.
    pub event_ids: bool,
    /// `webhooks.request_timeout_ms`: the default for each endpoint.
    pub request_timeout: Duration,
    /// `webhooks.connect_timeout_ms`.
    pub connect_timeout: Duration,
    /// `webhooks.retry`: the default for each endpoint.
    pub retry: RetryPolicy,
}

pub(super) fn read_retry(o: &mut Obj, base: &RetryPolicy, d: &mut Diagnostics) -> RetryPolicy {
    let p = RetryPolicy {
        enabled: o.bool("enabled", base.enabled, d),
        max_attempts: o
            .opt_u64("max_attempts", 1, d)
            .map(|n| n.min(u32::MAX as u64) as u32)
            .or(base.max_attempts),
        max_elapsed: o
            .opt_u64("max_elapsed_time_ms", 1, d)
            .map_or(base.max_elapsed, ms),
        initial_backoff: o
            .opt_u64("initial_backoff_ms", 1, d)
            .map_or(base.initial_backoff, ms),
        max_backoff: o
            .opt_u64("max_backoff_ms", 1, d)
            .map_or(base.max_backoff, ms),
    };
    if o.present() && p.initial_backoff > p.max_backoff {
        d.error(
            &o.at("initial_backoff_ms"),
            format!(
                "{} ms is more than max_backoff_ms ({} ms)",
                p.initial_backoff.as_millis(),
                p.max_backoff.as_millis()
            ),
        );
    }
    p
}

pub(super) fn read_webhooks(o: &mut Obj, d: &mut Diagnostics) -> WebhookSettings {
    let mut b = o.obj("batching", d);
    let batching = Batching {
        enabled: b.bool("enabled", true, d),
        duration: ms(b.u64("duration", 50, 1, d)),
        size: b.u64("size", 100, 1, d) as usize,
        max_bytes: b.u64("max_bytes", 256 * 1024, 1024, d) as usize,
    };
    b.finish(d);
    let mut r = o.obj("retry", d);
    let retry = read_retry(&mut r, &RetryPolicy::default(), d);
    r.finish(d);
    let settings = WebhookSettings {
        batching,
        event_ids: o.bool("event_ids", false, d),
        request_timeout: ms(o.u64("request_timeout_ms", 10_000, 1, d)),
        connect_timeout: ms(o.u64("connect_timeout_ms", 5_000, 1, d)),
        retry,
    };
    o.finish(d);
    settings
}
