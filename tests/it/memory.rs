//! The memory driver against the conformance suite.

use crate::conformance::{HOLD, conformance_suite};
use hookq_queue::{DeadLetters, MemoryQueue, QueueDriver, QueuePush};
use std::sync::Arc;

fn make() -> Arc<dyn QueueDriver> {
    Arc::new(MemoryQueue::new(10_000, HOLD))
}

conformance_suite!(make());
conformance_suite!(make(); stale_ack_is_harmless, a_lost_hold_is_reported);

#[tokio::test]
async fn a_full_queue_refuses_the_whole_push() {
    let q = MemoryQueue::new(2, HOLD);
    let three = (0..3)
        .map(|i| hookq_queue::Outgoing::now(format!("{i}"), "a", "{}"))
        .collect();
    let err = q.push(three).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert_eq!(q.depth().await.unwrap().ready, 0);
}
