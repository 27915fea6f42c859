//! [`Limits`] on Redis: every worker of the queue shares the rate-limit
//! buckets and the pending-vacate markers, each one key under the queue's
//! hash tag, changed by one Lua script call per step:
//!
//! | key                        | type   | holds                                         |
//! |----------------------------|--------|-----------------------------------------------|
//! | `{prefix}:rate:<bucket>`   | hash   | `tokens`, `at`, `booked` (`limits_rate.lua`)   |
//! | `{prefix}:vacate:<marker>` | string | the marker of [`flap_step`](crate::limits::flap_step) (`limits_flap.lua`) |
//!
//! Both expire by themselves (a bucket once it would be full again, a
//! marker its TTL after its last change). The bucket uses the Redis
//! server's clock, so the workers' clocks do not matter.

use super::{RedisQueue, Request};
use crate::QueueError;
use crate::limits::{Flap, FlapStep, Limits, Token};
use ::redis::Script;
use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;

/// The Redis store of one queue; see the module docs.
pub struct RedisLimits {
    queue: Arc<RedisQueue>,
    rate: Script,
    flap: Script,
}

impl RedisLimits {
    /// The store beside `queue`, on its connections and under its prefix.
    pub fn new(queue: Arc<RedisQueue>) -> Self {
        Self {
            queue,
            rate: Script::new(include_str!("limits_rate.lua")),
            flap: Script::new(include_str!("limits_flap.lua")),
        }
    }
}

#[async_trait]
impl Limits for RedisLimits {
    async fn take_token(
        &self,
        bucket: &str,
        per_second: f64,
        burst: u32,
    ) -> Result<Token, QueueError> {
        let mut call = self.rate.prepare_invoke();
        call.key(self.queue.key(&format!("rate:{bucket}")))
            .arg(per_second)
            .arg(burst.max(1));
        let wait_ms: u64 = self.queue.run("rate limit", Request::Script(&call)).await?;
        Ok(match wait_ms {
            0 => Token::Taken,
            ms => Token::After(Duration::from_millis(ms)),
        })
    }

    async fn flap(
        &self,
        marker: &str,
        step: FlapStep<'_>,
        ttl: Duration,
    ) -> Result<Flap, QueueError> {
        let (op, token, enqueued_at_ms) = match step {
            FlapStep::Vacate {
                token,
                enqueued_at_ms,
            } => ("vacate", token, enqueued_at_ms),
            FlapStep::Occupy { enqueued_at_ms } => ("occupy", "", enqueued_at_ms),
            FlapStep::Due { token } => ("due", token, 0),
        };
        let mut call = self.flap.prepare_invoke();
        call.key(self.queue.key(&format!("vacate:{marker}")))
            .arg(op)
            .arg(token)
            .arg(enqueued_at_ms)
            .arg(ttl.as_millis().max(1) as u64);
        let word: String = self
            .queue
            .run("vacate marker", Request::Script(&call))
            .await?;
        Flap::from_word(&word)
            .ok_or_else(|| QueueError::Backend(format!("vacate marker script answered {word:?}")))
    }
}
