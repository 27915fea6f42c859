//! The retry schedule: exponential backoff with jitter, bounded by an attempt
//! count and by the time elapsed since the first attempt.
//!
//! Defaults are Sockudo's (1 s initial, 60 s cap, 5 min budget — the same five
//! minutes Pusher retries for). A receiver's `Retry-After` is honoured as a
//! floor, up to [`RETRY_AFTER_CAP`], as long as it fits in the budget.

use std::time::Duration;

/// The longest `Retry-After` hookq will wait for; longer requests are shortened to it.
pub const RETRY_AFTER_CAP: Duration = Duration::from_secs(15 * 60);

/// When and how often to retry a failed delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Whether failures are retried at all; when off they are dead-lettered at once.
    pub enabled: bool,
    /// Most attempts in all (the first one included); `None` leaves only the time budget.
    pub max_attempts: Option<u32>,
    /// No attempt is scheduled later than this after the first one.
    pub max_elapsed: Duration,
    /// The delay after the first failure.
    pub initial_backoff: Duration,
    /// The longest delay between two attempts.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            max_attempts: None,
            max_elapsed: Duration::from_millis(300_000),
            initial_backoff: Duration::from_millis(1_000),
            max_backoff: Duration::from_millis(60_000),
        }
    }
}

/// Why no further attempt is scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUp {
    /// Retries are disabled.
    Disabled,
    /// `max_attempts` were made.
    Attempts(u32),
    /// The next attempt would fall after `max_elapsed`.
    Elapsed,
}

impl std::fmt::Display for GiveUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Disabled => f.write_str("retries disabled"),
            Self::Attempts(n) => write!(f, "retries exhausted after {n} attempts"),
            Self::Elapsed => f.write_str("retries exhausted: time budget spent"),
        }
    }
}

impl RetryPolicy {
    /// The backoff after failed attempt `attempt` (1-based), before jitter.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(31);
        self.initial_backoff
            .saturating_mul(1u32 << exp)
            .min(self.max_backoff)
    }

    /// The delay before the attempt after `attempt` failed, or why there is none.
    ///
    /// `elapsed` is the time since the first attempt; `retry_after` is what the
    /// receiver asked for; `jitter` in `[0, 1)` spreads the delay over its upper half.
    pub fn next_delay(
        &self,
        attempt: u32,
        elapsed: Duration,
        retry_after: Option<Duration>,
        jitter: f64,
    ) -> Result<Duration, GiveUp> {
        if !self.enabled {
            return Err(GiveUp::Disabled);
        }
        if self.max_attempts.is_some_and(|max| attempt >= max) {
            return Err(GiveUp::Attempts(attempt));
        }
        let base = self.backoff(attempt);
        let jittered = base / 2 + base.mul_f64(jitter.clamp(0.0, 1.0) / 2.0);
        let delay = retry_after
            .map(|ra| ra.min(RETRY_AFTER_CAP))
            .map_or(jittered, |ra| ra.max(jittered));
        if elapsed + delay > self.max_elapsed {
            return Err(GiveUp::Elapsed);
        }
        Ok(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap() {
        let p = RetryPolicy::default();
        let secs: Vec<u64> = (1..=8).map(|a| p.backoff(a).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(p.backoff(200), Duration::from_secs(60));
    }

    #[test]
    fn jitter_stays_in_the_upper_half() {
        let p = RetryPolicy::default();
        let lo = p.next_delay(3, Duration::ZERO, None, 0.0).unwrap();
        let hi = p.next_delay(3, Duration::ZERO, None, 0.999).unwrap();
        assert_eq!(lo, Duration::from_secs(2));
        assert!(hi < Duration::from_secs(4) && hi > Duration::from_millis(3990));
    }

    #[test]
    fn retry_after_is_a_floor_within_the_cap() {
        let p = RetryPolicy::default();
        let d = p.next_delay(1, Duration::ZERO, Some(Duration::from_secs(2)), 0.0);
        assert_eq!(d, Ok(Duration::from_secs(2)));
        let d = p.next_delay(1, Duration::ZERO, Some(Duration::from_millis(1)), 0.0);
        assert_eq!(d, Ok(Duration::from_millis(500)));
        let long = RetryPolicy {
            max_elapsed: Duration::from_secs(7200),
            ..p
        };
        let d = long.next_delay(1, Duration::ZERO, Some(Duration::from_secs(3600)), 0.0);
        assert_eq!(d, Ok(RETRY_AFTER_CAP));
    }

    #[test]
    fn gives_up_on_attempts_elapsed_or_disabled() {
        let p = RetryPolicy {
            max_attempts: Some(3),
            ..RetryPolicy::default()
        };
        assert!(p.next_delay(2, Duration::ZERO, None, 0.5).is_ok());
        assert_eq!(
            p.next_delay(3, Duration::ZERO, None, 0.5),
            Err(GiveUp::Attempts(3))
        );
        let d = p.next_delay(1, Duration::from_millis(299_500), None, 0.5);
        assert_eq!(d, Err(GiveUp::Elapsed));
        let off = RetryPolicy {
            enabled: false,
            ..p
        };
        assert_eq!(
            off.next_delay(1, Duration::ZERO, None, 0.5),
            Err(GiveUp::Disabled)
        );
    }
}
