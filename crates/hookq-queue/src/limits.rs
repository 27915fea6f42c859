//! State that workers share to enforce per-endpoint limits beside the
//! queue: the token buckets of `rate_limit` and the pending-vacate markers
//! of `webhooks.vacate_delay_ms` (flap suppression).
//!
//! A driver hands its store to a worker through
//! [`QueueConsume::limits`](crate::QueueConsume::limits), asked once when the
//! worker starts. Redis keeps the state in Redis, so every worker on the same
//! queue shares it (`redis/limits.rs`, one Lua script per step); every other
//! driver (memory, SQS) gets [`MemoryLimits`], one per worker: a rate limit
//! then holds per worker, and flap suppression only sees the events of the
//! worker that took them.
//!
//! Both steps are pure functions here ([`take_token`], [`flap_step`]); the
//! memory store applies them under a lock, and the Redis scripts do the same
//! arithmetic and the same state changes in Lua.

use crate::QueueError;
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What [`Limits::take_token`] answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    /// A token was taken: send now.
    Taken,
    /// None is free: come back after this long (a slot booked for the caller,
    /// so callers told to wait come back one token apart).
    After(Duration),
}

/// One step of flap suppression for one (app, channel, user) marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlapStep<'a> {
    /// A `channel_vacated` / `member_removed` arrived for the first time:
    /// mark it pending under `token` (its job id); `enqueued_at_ms` orders
    /// it against occupies.
    Vacate {
        /// The vacate's job id.
        token: &'a str,
        /// When it was enqueued (Unix ms).
        enqueued_at_ms: u64,
    },
    /// A `channel_occupied` / `member_added` arrived.
    Occupy {
        /// When it was enqueued (Unix ms).
        enqueued_at_ms: u64,
    },
    /// The held copy of the vacate `token` came due.
    Due {
        /// The vacate's job id.
        token: &'a str,
    },
}

/// What a [`FlapStep`] says to do with its event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flap {
    /// Vacate: push the held copy, delayed, and send nothing now.
    Hold,
    /// Send the event.
    Send,
    /// Send nothing (a cancelled pair, a superseded or stale vacate).
    Drop,
}

impl Flap {
    /// The wire word of the Redis script.
    pub fn from_word(word: &str) -> Option<Self> {
        match word {
            "hold" => Some(Self::Hold),
            "send" => Some(Self::Send),
            "drop" => Some(Self::Drop),
            _ => None,
        }
    }
}

/// The shared limit state of a queue; see the module docs.
#[async_trait]
pub trait Limits: Send + Sync + 'static {
    /// Takes one token from `bucket` (refilled at `per_second`, holding at
    /// most `burst`), or says when the caller's token will be there.
    async fn take_token(
        &self,
        bucket: &str,
        per_second: f64,
        burst: u32,
    ) -> Result<Token, QueueError>;

    /// Runs one flap step on `marker`, which lives `ttl` after its last change.
    async fn flap(
        &self,
        marker: &str,
        step: FlapStep<'_>,
        ttl: Duration,
    ) -> Result<Flap, QueueError>;
}

/// A token bucket's state: tokens left at `at_ms`, and until when later
/// callers are booked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    /// Tokens at `at_ms`.
    pub tokens: f64,
    /// When `tokens` was counted (ms).
    pub at_ms: u64,
    /// The last slot handed to a caller told to wait (ms); 0 for none.
    pub booked_ms: u64,
}

/// One take from a bucket at `now_ms` (`limits_rate.lua` does the same):
/// the bucket refills at `per_second` up to `burst`; a whole token is taken
/// when there is one. Otherwise the caller is booked a slot: when its token
/// will be there, but at least one token's time after the slot booked last,
/// so that callers told to wait come back spread at the rate instead of all
/// at the moment the next token is due. A booking takes no token: a caller
/// coming back takes one like any other, so the bucket alone bounds what is
/// sent, and a booked caller that finds none (a new one got it first) is
/// booked again.
pub fn take_token(
    state: Option<Bucket>,
    now_ms: u64,
    per_second: f64,
    burst: u32,
) -> (Bucket, Token) {
    let burst = f64::from(burst.max(1));
    let per_ms = per_second.max(f64::MIN_POSITIVE) / 1000.0;
    let mut b = state.unwrap_or(Bucket {
        tokens: burst,
        at_ms: now_ms,
        booked_ms: 0,
    });
    let elapsed = now_ms.saturating_sub(b.at_ms) as f64;
    b.tokens = (b.tokens + elapsed * per_ms).min(burst);
    b.at_ms = b.at_ms.max(now_ms);
    if b.tokens >= 1.0 {
        b.tokens -= 1.0;
        return (b, Token::Taken);
    }
    let step = (1.0 / per_ms).ceil() as u64;
    let due = now_ms + ((1.0 - b.tokens) / per_ms).ceil() as u64;
    let slot = due.max(b.booked_ms.saturating_add(step));
    b.booked_ms = slot;
    (b, Token::After(Duration::from_millis(slot - now_ms)))
}

/// One flap step on a marker holding `current` (`limits_flap.lua` does the
/// same); returns the answer and the marker's new value (`None`: unchanged).
///
/// The marker is one of `h|<ms>|<token>` (a vacate held), `s|<ms>|<token>`
/// (that vacate came due and is being sent), `c|<ms>` (a held vacate
/// cancelled by an occupy enqueued at `<ms>`), `o|<ms>` (an occupy sent,
/// enqueued at `<ms>`). The rules:
///
/// - **Vacate**: held (`h`) unless the same vacate is already marked (a
///   re-received job: dropped, its held copy carries it) or an occupy
///   enqueued after it was already seen (`o` or `c` later than it: the
///   vacate is stale, dropped). A second, different vacate supersedes a
///   held one: only the last one is sent.
/// - **Occupy**: a held vacate (`h`) is cancelled (`c`) and the occupy
///   dropped — neither is sent; otherwise it is sent and remembered (`o`).
/// - **Due**: sent when the marker is its own (`h`, or `s` when the held
///   copy is received again after a crash) or gone (expired: sent rather
///   than lost); dropped when cancelled or superseded.
pub fn flap_step(current: Option<&str>, step: FlapStep<'_>) -> (Flap, Option<String>) {
    let mut parts = current.unwrap_or("").splitn(3, '|');
    let kind = parts.next().unwrap_or("");
    let at: u64 = parts.next().and_then(|t| t.parse().ok()).unwrap_or(0);
    let tok = parts.next();
    match step {
        FlapStep::Vacate {
            token,
            enqueued_at_ms,
        } => {
            if matches!(kind, "h" | "s") && tok == Some(token) {
                let answer = if kind == "h" { Flap::Hold } else { Flap::Drop };
                return (answer, None);
            }
            if matches!(kind, "o" | "c") && at > enqueued_at_ms {
                return (Flap::Drop, None);
            }
            (Flap::Hold, Some(format!("h|{enqueued_at_ms}|{token}")))
        }
        FlapStep::Occupy { enqueued_at_ms } => {
            if kind == "h" {
                return (Flap::Drop, Some(format!("c|{enqueued_at_ms}")));
            }
            let at = if kind == "o" {
                at.max(enqueued_at_ms)
            } else {
                enqueued_at_ms
            };
            (Flap::Send, Some(format!("o|{at}")))
        }
        FlapStep::Due { token } => match kind {
            "h" if tok == Some(token) => (Flap::Send, Some(format!("s|{at}|{token}"))),
            "s" if tok == Some(token) => (Flap::Send, None),
            "" => (Flap::Send, None),
            _ => (Flap::Drop, None),
        },
    }
}

/// Wall-clock ms: bucket and marker times in this process.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Entries kept before expired ones are swept (then again when doubled).
const SWEEP_AT: usize = 1024;

/// [`Limits`] in this process: the default for every driver but Redis.
#[derive(Debug, Default)]
pub struct MemoryLimits {
    buckets: Mutex<HashMap<String, Bucket>>,
    /// Marker → (value, expires at ms).
    markers: Mutex<HashMap<String, (String, u64)>>,
}

#[async_trait]
impl Limits for MemoryLimits {
    async fn take_token(
        &self,
        bucket: &str,
        per_second: f64,
        burst: u32,
    ) -> Result<Token, QueueError> {
        let now = now_ms();
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= SWEEP_AT && map.len().is_power_of_two() {
            // A full bucket untouched for a minute is the same as none.
            map.retain(|_, b| now.saturating_sub(b.at_ms) < 60_000);
        }
        let (b, token) = take_token(map.get(bucket).copied(), now, per_second, burst);
        map.insert(bucket.to_string(), b);
        Ok(token)
    }

    async fn flap(
        &self,
        marker: &str,
        step: FlapStep<'_>,
        ttl: Duration,
    ) -> Result<Flap, QueueError> {
        let now = now_ms();
        let mut map = self.markers.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= SWEEP_AT && map.len().is_power_of_two() {
            map.retain(|_, (_, until)| *until > now);
        }
        let current = map
            .get(marker)
            .filter(|(_, until)| *until > now)
            .map(|(v, _)| v.as_str());
        let (answer, new) = flap_step(current, step);
        if let Some(v) = new {
            let until = now.saturating_add(ttl.as_millis() as u64);
            map.insert(marker.to_string(), (v, until));
        }
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Over any one-second window a bucket lets at most `per_second + burst`
    /// takes through, however often it is asked; callers told to wait are
    /// booked a token's time apart.
    #[test]
    fn a_bucket_bounds_every_window_and_spreads_the_waiters() {
        let (rate, burst) = (20.0, 5);
        let mut state = None;
        let mut taken = Vec::new();
        for now in (0..5_000).step_by(3) {
            let (b, t) = take_token(state, now, rate, burst);
            state = Some(b);
            if t == Token::Taken {
                taken.push(now);
            }
        }
        let most = taken
            .iter()
            .map(|&t| taken.iter().filter(|&&u| u >= t && u < t + 1000).count())
            .max()
            .unwrap();
        assert!(most <= 25, "{most} in one second");
        assert!(taken.len() >= 5 + 20 * 4, "{} taken in 5 s", taken.len());
        // Empty bucket: waiters get slots 50 ms apart.
        let empty = Some(Bucket {
            tokens: 0.0,
            at_ms: 0,
            booked_ms: 0,
        });
        let (b, first) = take_token(empty, 0, rate, burst);
        let (_, second) = take_token(Some(b), 0, rate, burst);
        assert_eq!(first, Token::After(Duration::from_millis(50)));
        assert_eq!(second, Token::After(Duration::from_millis(100)));
    }

    #[test]
    fn an_occupy_within_the_delay_cancels_both() {
        let v = FlapStep::Vacate {
            token: "j1",
            enqueued_at_ms: 10,
        };
        let (a, m) = flap_step(None, v);
        assert_eq!(a, Flap::Hold);
        let m = m.unwrap();
        // Received again (a crash before its ack): still held, marker kept.
        assert_eq!(flap_step(Some(&m), v), (Flap::Hold, None));
        let (a, c) = flap_step(Some(&m), FlapStep::Occupy { enqueued_at_ms: 20 });
        assert_eq!(a, Flap::Drop);
        let c = c.unwrap();
        assert_eq!(
            flap_step(Some(&c), FlapStep::Due { token: "j1" }).0,
            Flap::Drop
        );
    }

    #[test]
    fn a_vacate_alone_is_sent_when_due_even_twice_and_once_superseded() {
        let (_, m) = flap_step(
            None,
            FlapStep::Vacate {
                token: "j1",
                enqueued_at_ms: 10,
            },
        );
        let m = m.unwrap();
        // A second vacate supersedes the first: only it is sent.
        let (a, m2) = flap_step(
            Some(&m),
            FlapStep::Vacate {
                token: "j2",
                enqueued_at_ms: 11,
            },
        );
        assert_eq!(a, Flap::Hold);
        let m2 = m2.unwrap();
        assert_eq!(
            flap_step(Some(&m2), FlapStep::Due { token: "j1" }).0,
            Flap::Drop
        );
        let (a, s) = flap_step(Some(&m2), FlapStep::Due { token: "j2" });
        assert_eq!(a, Flap::Send);
        let s = s.unwrap();
        // The held copy received again after a crash: sent again (at least once).
        assert_eq!(
            flap_step(Some(&s), FlapStep::Due { token: "j2" }).0,
            Flap::Send
        );
        // An occupy after it was released is sent.
        assert_eq!(
            flap_step(Some(&s), FlapStep::Occupy { enqueued_at_ms: 30 }).0,
            Flap::Send
        );
        // A marker gone (expired) lets the vacate through rather than lose it.
        assert_eq!(flap_step(None, FlapStep::Due { token: "j3" }).0, Flap::Send);
    }

    #[test]
    fn a_vacate_older_than_an_occupy_already_sent_is_stale() {
        let (a, o) = flap_step(None, FlapStep::Occupy { enqueued_at_ms: 50 });
        assert_eq!(a, Flap::Send);
        let o = o.unwrap();
        let older = FlapStep::Vacate {
            token: "j1",
            enqueued_at_ms: 40,
        };
        assert_eq!(flap_step(Some(&o), older), (Flap::Drop, None));
        let newer = FlapStep::Vacate {
            token: "j2",
            enqueued_at_ms: 60,
        };
        assert_eq!(flap_step(Some(&o), newer).0, Flap::Hold);
    }
}
