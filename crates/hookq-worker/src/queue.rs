//! Opening the configured queue driver.

use hookq_core::Config;
use hookq_core::config::QueueDriverKind;
use hookq_queue::{MemoryQueue, QueueDriver};
use std::sync::Arc;

/// Opens the driver `queue.driver` names. A driver whose backend is down
/// fails here with a transient error; callers that must wait use [`open_patiently`].
pub async fn open(config: &Config) -> anyhow::Result<Arc<dyn QueueDriver>> {
    let q = &config.queue;
    Ok(match q.driver {
        QueueDriverKind::Memory => Arc::new(MemoryQueue::from_settings(&q.memory)),
        #[cfg(feature = "redis")]
        QueueDriverKind::Redis => {
            Arc::new(hookq_queue::redis::RedisQueue::connect(&q.redis).await?)
        }
        #[cfg(feature = "sqs")]
        QueueDriverKind::Sqs => Arc::new(hookq_queue::sqs::SqsQueue::connect(&q.sqs).await?),
        #[allow(unreachable_patterns)]
        other => anyhow::bail!(
            "this hookq was built without the `{}` feature",
            other.as_str()
        ),
    })
}

/// Opens the driver, retrying with backoff (up to 5 s apart) while its backend
/// cannot be reached, until `give_up` fires.
pub async fn open_patiently(
    config: &Config,
    give_up: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<Arc<dyn QueueDriver>> {
    let mut delay = std::time::Duration::from_millis(200);
    loop {
        match open(config).await {
            Ok(q) => return Ok(q),
            Err(e) => {
                let transient = e
                    .downcast_ref::<hookq_queue::QueueError>()
                    .is_some_and(|q| q.is_transient());
                if !transient {
                    return Err(e);
                }
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "queue not reachable yet");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = give_up.cancelled() => return Err(e),
                }
                delay = (delay * 2).min(std::time::Duration::from_secs(5));
            }
        }
    }
}
