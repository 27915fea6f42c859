//! The `webhooks` section: batching, the request timeouts and the retry
//! policy every endpoint starts from (`webhooks.batching`, `webhooks.retry`,
//! `webhooks.event_ids`, `request_timeout_ms`, `connect_timeout_ms`), and
//! the check that a batch's retry job fits the queue's message; and endpoint
//! health: `webhooks.circuit_breaker`, `webhooks.disable_after_ms`,
//! `webhooks.notify` (a webhook may override the first two).

use super::queue::QueueDriverKind;
use super::reader::Obj;
use super::{Diagnostics, ms, sqs_limits};
use crate::job::{RETRY_JOB_EVENT_ALLOWANCE, RETRY_JOB_FIELDS_ALLOWANCE, RetryJob};
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
    /// `webhooks.batching.max_bytes`: most bytes of one request body. On SQS
    /// at most [`sqs_max_batch_bytes`], so that a failed batch's retry job
    /// fits one message.
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
    /// `webhooks.vacate_delay_ms`: how long `channel_vacated` and
    /// `member_removed` wait (in the queue) for a re-occupy or re-add that
    /// cancels both; none (0, the default) sends them at once.
    pub vacate_delay: Option<Duration>,
    /// `webhooks.adaptive_concurrency`: the default of each webhook's
    /// `adaptive_concurrency` (off).
    pub adaptive_concurrency: bool,
    /// `webhooks.circuit_breaker`: the default for each endpoint.
    pub circuit_breaker: BreakerSettings,
    /// `webhooks.disable_after_ms`: the default for each endpoint; `None` (0) never disables.
    pub disable_after: Option<Duration>,
    /// `webhooks.notify`: where a disabled endpoint is announced.
    pub notify: Option<Notify>,
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

/// The longest `webhooks.vacate_delay_ms`: what every queue delays a push
/// by in one step (SQS: 15 minutes).
const MAX_VACATE_DELAY_MS: u64 = 900_000;

fn read_vacate_delay(o: &mut Obj, d: &mut Diagnostics) -> Option<Duration> {
    let n = o.u64("vacate_delay_ms", 0, 0, d);
    if n > MAX_VACATE_DELAY_MS {
        d.error(
            &o.at("vacate_delay_ms"),
            format!("{n} is more than {MAX_VACATE_DELAY_MS} (15 minutes)"),
        );
        return None;
    }
    Some(ms(n)).filter(|d| !d.is_zero())
}

/// `webhooks.batching.max_bytes` when unset, on a queue without a message
/// size limit (memory, Redis).
pub const DEFAULT_MAX_BYTES: usize = 256 * 1024;

/// The least `webhooks.batching.max_bytes` may be.
const MIN_MAX_BYTES: usize = 1024;

/// Reads `webhooks`. The second value says whether
/// `webhooks.batching.max_bytes` was set, for [`fit_batches_to_queue`].
pub(super) fn read_webhooks(o: &mut Obj, d: &mut Diagnostics) -> (WebhookSettings, bool) {
    let mut b = o.obj("batching", d);
    let max_bytes = b.opt_u64("max_bytes", MIN_MAX_BYTES as u64, d);
    let batching = Batching {
        enabled: b.bool("enabled", true, d),
        duration: ms(b.u64("duration", 50, 1, d)),
        size: b.u64("size", 100, 1, d) as usize,
        max_bytes: max_bytes.map_or(DEFAULT_MAX_BYTES, |n| {
            usize::try_from(n).unwrap_or(usize::MAX)
        }),
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
        vacate_delay: read_vacate_delay(o, d),
        adaptive_concurrency: o.bool("adaptive_concurrency", false, d),
        circuit_breaker: read_breaker(
            &mut o.obj("circuit_breaker", d),
            &BreakerSettings::default(),
            d,
        ),
        disable_after: read_disable_after(o, None, d),
        notify: read_notify(&mut o.obj("notify", d), d),
    };
    o.finish(d);
    (settings, max_bytes.is_some())
}

/// The largest `webhooks.batching.max_bytes` on SQS with `size` events a
/// batch: a failed batch's retry job carries its events, with their ids, in
/// one message, which SQS takes up to
/// [`MAX_MESSAGE_BYTES`](super::sqs_limits::MAX_MESSAGE_BYTES).
pub fn sqs_max_batch_bytes(size: usize) -> usize {
    let events_room = RetryJob::max_bytes_for(0, size);
    sqs_limits::MAX_MESSAGE_BYTES.saturating_sub(events_room)
}

/// Holds `batching.max_bytes` to what the queue carries for a retry job. On
/// SQS an unset `max_bytes` becomes [`sqs_max_batch_bytes`]; one set above it
/// is an error at its path (as is a `size` so large that no `max_bytes` is
/// left). Memory and Redis carry any size: nothing changes.
pub(super) fn fit_batches_to_queue(
    batching: &mut Batching,
    max_bytes_set: bool,
    driver: QueueDriverKind,
    d: &mut Diagnostics,
) {
    if driver != QueueDriverKind::Sqs {
        return;
    }
    let most = sqs_max_batch_bytes(batching.size);
    if most < MIN_MAX_BYTES {
        d.error(
            "webhooks.batching.size",
            format!(
                "{} events is too many on SQS: the retry job of a failed batch must fit one SQS message ({} bytes), with {} bytes for each event's id and {} for its own fields",
                batching.size,
                sqs_limits::MAX_MESSAGE_BYTES,
                RETRY_JOB_EVENT_ALLOWANCE,
                RETRY_JOB_FIELDS_ALLOWANCE
            ),
        );
    } else if !max_bytes_set {
        batching.max_bytes = batching.max_bytes.min(most);
    } else if batching.max_bytes > most {
        d.error(
            "webhooks.batching.max_bytes",
            format!(
                "{} is too large on SQS: the retry job of a failed batch carries its events and must fit one SQS message ({} bytes); with batching.size {} it is at most {most} (leave it unset for that)",
                batching.max_bytes,
                sqs_limits::MAX_MESSAGE_BYTES,
                batching.size
            ),
        );
    }
}

/// An endpoint's circuit breaker (`webhooks.circuit_breaker`, or a webhook's
/// own `circuit_breaker`, whose keys default to the global ones). Off by
/// default. See docs/operations.md, "Endpoint health".
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerSettings {
    /// `enabled`.
    pub enabled: bool,
    /// `failure_ratio`: the share of failed requests over the window that opens the circuit.
    pub failure_ratio: f64,
    /// `window_ms`: how far back requests are counted.
    pub window: Duration,
    /// `min_requests`: fewer requests in the window never open it.
    pub min_requests: u64,
    /// `open_ms`: how long it stays open before one probe request is let through.
    pub open: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            failure_ratio: 0.5,
            window: Duration::from_secs(30),
            min_requests: 10,
            open: Duration::from_secs(30),
        }
    }
}

/// Reads a `circuit_breaker` object over `base` (and finishes it).
pub(super) fn read_breaker(
    o: &mut Obj,
    base: &BreakerSettings,
    d: &mut Diagnostics,
) -> BreakerSettings {
    let ratio_path = o.at("failure_ratio");
    let failure_ratio = match o.get("failure_ratio") {
        None => base.failure_ratio,
        Some(v) => match v.as_f64() {
            Some(r) if r > 0.0 && r <= 1.0 => r,
            Some(r) => {
                d.error(
                    &ratio_path,
                    format!("must be above 0 and at most 1, found {r}"),
                );
                base.failure_ratio
            }
            None => {
                d.error(
                    &ratio_path,
                    format!("expected a number, found {}", super::reader::type_name(v)),
                );
                base.failure_ratio
            }
        },
    };
    let b = BreakerSettings {
        enabled: o.bool("enabled", base.enabled, d),
        failure_ratio,
        window: o.opt_u64("window_ms", 100, d).map_or(base.window, ms),
        min_requests: o.u64("min_requests", base.min_requests, 1, d),
        open: o.opt_u64("open_ms", 100, d).map_or(base.open, ms),
    };
    o.finish(d);
    b
}

/// Reads `disable_after_ms` of `o` (0 for never) over `base`.
pub(super) fn read_disable_after(
    o: &mut Obj,
    base: Option<Duration>,
    d: &mut Diagnostics,
) -> Option<Duration> {
    match o.opt_u64("disable_after_ms", 0, d) {
        None => base,
        Some(0) => None,
        Some(n) => Some(ms(n)),
    }
}

/// `webhooks.notify`: the operator's URL that hears of each endpoint
/// disabled, signed like a webhook: `X-Pusher-Key`/`X-Pusher-Signature`
/// with `key` and `secret`, and `webhook-signature` with `signing_secret`
/// when set. `Debug` hides the secrets.
#[derive(Clone)]
pub struct Notify {
    /// `url`.
    pub url: String,
    /// `key`, sent as `X-Pusher-Key`.
    pub key: String,
    /// `secret`, signing `X-Pusher-Signature`. Never logged.
    pub secret: String,
    /// `signing_secret`: Standard Webhooks secrets.
    pub signing_secrets: Vec<crate::sign::SigningSecret>,
}

impl std::fmt::Debug for Notify {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notify")
            .field("url", &crate::endpoint::redact_url(&self.url))
            .field("key", &self.key)
            .field("secret", &"<redacted>")
            .field("signing_secrets", &self.signing_secrets.len())
            .finish()
    }
}

fn read_notify(o: &mut Obj, d: &mut Diagnostics) -> Option<Notify> {
    if !o.present() {
        return None;
    }
    let url = o.str("url", d);
    if url.is_none() {
        d.error(&o.at("url"), "missing");
    }
    let url = url.filter(|u| super::apps::check_http_url(u, &o.at("url"), d).is_some());
    let key = o.nonempty_str("key", d);
    let secret = o.nonempty_str("secret", d);
    for (name, v) in [("key", &key), ("secret", &secret)] {
        if v.is_none() && !o.has(name) {
            d.error(
                &o.at(name),
                "missing: the notification is signed like a webhook",
            );
        }
    }
    let signing_secrets = super::apps::read_signing_secrets(o, d);
    o.finish(d);
    Some(Notify {
        url: url?,
        key: key?,
        secret: secret?,
        signing_secrets,
    })
}
