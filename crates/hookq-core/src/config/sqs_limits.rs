//! Amazon SQS's own limits, in one place: the config checks `queue.sqs`
//! against them and the SQS driver (hookq-queue, which depends on this crate)
//! stays within them. These are SQS's facts, not hookq's choices.

use std::time::Duration;

/// Longest per-message delay (`DelaySeconds`, 900 s); longer delays are the worker's.
pub const MAX_DELAY: Duration = Duration::from_secs(900);

/// Longest long poll of a `ReceiveMessage` (`WaitTimeSeconds`).
pub const MAX_WAIT_SECONDS: u32 = 20;

/// Longest visibility timeout (12 hours).
pub const MAX_VISIBILITY_SECONDS: u64 = 43_200;

/// Most messages one `ReceiveMessage` returns (`MaxNumberOfMessages`).
pub const MAX_RECEIVE_MESSAGES: u32 = 10;

/// Most entries in one batch call (`SendMessageBatch`, `DeleteMessageBatch`,
/// `ChangeMessageVisibilityBatch`).
pub const MAX_BATCH_ENTRIES: usize = 10;

/// Most bytes of message bodies in one `SendMessageBatch` (256 KiB, SQS's
/// classic limit, also that of one message).
pub const MAX_BATCH_BYTES: usize = 256 * 1024;

/// Most bytes of one message body (256 KiB, SQS's classic limit): a retry
/// job, which carries a batch's events, must fit in it, so
/// `webhooks.batching.max_bytes` is held below it on SQS.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// Longest message retention (14 days).
pub const MAX_RETENTION_SECONDS: u64 = 14 * 24 * 60 * 60;
