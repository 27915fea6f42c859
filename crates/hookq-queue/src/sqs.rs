//! The Amazon SQS driver (feature `sqs`).
//!
//! **Queues.** Two SQS queues: the main queue, which carries one job per
//! message, and a dead-letter queue (DLQ), which carries one
//! [`DeadLetter`] JSON per message. Both are found at start: the main queue
//! from `queue_url`, else `{queue_url_prefix}/{queue_name}`, else by name
//! (`GetQueueUrl`, created when missing); the DLQ from `dead_letter_queue_url`,
//! else by the name `{name}-dlq` (`{name}-dlq.fifo` for FIFO), created when
//! missing. A main queue this driver creates gets a redrive policy
//! (`maxReceiveCount` = `max_receive_count`, by default one more than
//! `queue.max_receives`) towards the DLQ: the worker dead-letters a poison
//! message that keeps coming back itself, with its reason, on the receive
//! after `max_receives` (the count is `ApproximateReceiveCount`), and the
//! redrive is the backstop when even that did not settle it. A queue that
//! already exists is never modified (a missing redrive policy, or one that
//! redrives before `max_receive_count`, is only logged).
//!
//! **Holds.** A received message is hidden for `visibility_timeout` (passed on
//! every `ReceiveMessage`, so the hold is the configured one whatever the
//! queue's default). [`QueueConsume::extend`] resets that visibility,
//! [`QueueConsume::ack`] deletes the message, and a worker that dies simply
//! lets the visibility lapse: the message comes back for another worker.
//! The [`Handle`] is the receipt handle. SQS may accept a stale receipt handle
//! and delete a message another worker now holds: delivery stays at least
//! once, and the worker's ack comes only after the outcome is durable.
//!
//! **Delays.** A standard queue delays each message with `DelaySeconds`, at
//! most 900 s, so [`QueuePush::max_delay`] is 15 minutes: the worker carries
//! a longer delay in the job (`not_before_ms`) and re-delays it on receipt.
//! FIFO queues have no per-message delay, so on FIFO `max_delay` is zero,
//! [`QueueConsume::delays_pushes`] is false, and every delay is the
//! worker's: a job received before it is due is
//! [released](QueueConsume::release) (hidden) until then. Delays are rounded
//! up to whole seconds.
//!
//! **DLQ.** [`QueueConsume::dead_letter`] sends entries to the DLQ. SQS has no
//! way to browse a queue, so listing is a best-effort peek: messages are
//! received (hidden for a minute while the walk lasts), read, and made
//! visible again at once. Replay sends each entry's job to the main queue and
//! only then deletes the entry (at least once); purge receives and deletes.
//! A message that SQS itself moved to the DLQ (redrive) is not a
//! `DeadLetter` JSON; it is shown as one whose job is the raw body and whose
//! reason says it was redriven. A walk covers the messages sent to the DLQ
//! before it began (by `SentTimestamp`), so entries dead-lettered meanwhile —
//! a replayed job that failed again at once — are not walked again and the
//! walk ends; it also stops once it has seen as many as the DLQ's
//! `ApproximateNumberOfMessages` at its start (see `walk_dlq`).
//!
//! **FIFO.** `MessageGroupId` is `message_group_id` or the message's app id, and
//! `MessageDeduplicationId` the job id. A replayed job gets a fresh
//! deduplication id (the original may be inside SQS's five-minute window). Each
//! DLQ entry gets a group of its own, so a walk of the DLQ is never stalled by
//! a group's in-flight messages.

use crate::{
    DeadLetters, Depth, DlqEntry, DlqFilter, Handle, Outgoing, QueueConsume, QueueError, QueuePush,
    Received, dlq_entry_id,
};
use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::config::http::HttpResponse;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{
    BatchResultErrorEntry, ChangeMessageVisibilityBatchRequestEntry,
    DeleteMessageBatchRequestEntry, Message, MessageSystemAttributeName, QueueAttributeName,
    SendMessageBatchRequestEntry,
};
use hookq_aws::TimeoutConfig;
use hookq_core::DeadLetter;
use hookq_core::config::{SqsSettings, sqs_limits};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio::time::Instant;

/// Most entries in one SQS batch call or messages in one receive.
const BATCH: usize = sqs_limits::MAX_BATCH_ENTRIES;
/// Most body bytes in one `SendMessageBatch` (SQS's classic limit; a bigger
/// single message goes alone and SQS decides).
const BATCH_BYTES: usize = sqs_limits::MAX_BATCH_BYTES;
/// SQS's longest per-message delay.
const MAX_DELAY: Duration = sqs_limits::MAX_DELAY;
/// SQS's longest long poll.
const MAX_WAIT_SECONDS: u32 = sqs_limits::MAX_WAIT_SECONDS;
/// SQS's longest visibility timeout.
const MAX_VISIBILITY_SECONDS: u64 = sqs_limits::MAX_VISIBILITY_SECONDS;
/// Between short polls, when the wait left is under a second.
const SHORT_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Most `ReceiveMessage` calls one [`QueueConsume::receive`] makes to fill `max`.
const MAX_RECEIVE_CALLS: usize = 10;
/// Visibility batches of ten sent at once when extending many holds.
const VISIBILITY_CALLS: usize = 8;
/// Tries of one visibility batch while SQS is unavailable.
const VISIBILITY_TRIES: u32 = 3;
/// How long DLQ messages stay hidden while a list, replay or purge walks the DLQ.
const WALK_VISIBILITY_SECONDS: i32 = 60;
/// Long poll of each DLQ walk step: long enough that SQS looks at every server.
const WALK_WAIT_SECONDS: i32 = 1;
/// Receives in a row that bring nothing of its own after which a DLQ walk
/// ends (only messages sent after it began, or already seen).
const WALK_IDLE_RECEIVES: usize = 3;
/// DLQ retention this driver sets on a DLQ it creates (SQS's maximum, 14 days).
const DLQ_RETENTION_SECONDS: u64 = sqs_limits::MAX_RETENTION_SECONDS;

/// The SQS [`QueueDriver`](crate::QueueDriver). See the module docs.
pub struct SqsQueue {
    client: Client,
    queue_url: String,
    dlq_url: String,
    fifo: bool,
    /// The hold, whole seconds.
    visibility_secs: i32,
    /// The longest long poll one receive may use.
    wait_cap: u32,
    /// Messages per `ReceiveMessage`.
    per_receive: usize,
    /// Receive loops a worker runs (`concurrency`).
    receive_loops: usize,
    group_id: Option<String>,
    /// The main queue's redrive `maxReceiveCount`, for the reason of a redriven message.
    max_receive_count: u32,
    /// Set by [`SqsQueue::serialize_receives`].
    receive_lock: Option<tokio::sync::Mutex<()>>,
    /// The keys of [`QueuePush::push_once`], in this process.
    marks: crate::OnceMarks,
}

/// One DLQ message taken during a walk.
struct Peeked {
    receipt_handle: String,
    entry: DlqEntry,
}

impl SqsQueue {
    /// Connects to SQS and resolves (or creates) the main queue and the DLQ.
    ///
    /// Credentials come from the standard AWS chain (environment, profile, web
    /// identity, ECS, EC2 instance metadata). With `endpoint_url` set (an
    /// emulator such as moto or LocalStack) the chain is asked once here, and
    /// when it finds no credentials, requests are signed with the static
    /// credentials `test`/`test`.
    pub async fn connect(settings: &SqsSettings) -> Result<Self, QueueError> {
        let client = build_client(settings).await;
        let (main_url, main_name) = match (&settings.queue_url, &settings.queue_url_prefix) {
            (Some(url), _) => (Some(url.clone()), last_segment(url).to_string()),
            (None, Some(prefix)) => {
                let name = fifo_name(&settings.queue_name, settings.fifo);
                (
                    Some(format!("{}/{name}", prefix.trim_end_matches('/'))),
                    name,
                )
            }
            (None, None) => (None, fifo_name(&settings.queue_name, settings.fifo)),
        };
        let fifo = settings.fifo || main_name.ends_with(".fifo");
        let visibility_secs = visibility_seconds(settings.visibility_timeout);

        let dlq_url = match &settings.dead_letter_queue_url {
            Some(url) => url.clone(),
            None => {
                let base = main_name.strip_suffix(".fifo").unwrap_or(&main_name);
                let name = fifo_name(&format!("{base}-dlq"), fifo);
                let mut attrs = vec![(
                    QueueAttributeName::MessageRetentionPeriod,
                    DLQ_RETENTION_SECONDS.to_string(),
                )];
                if fifo {
                    attrs.push((QueueAttributeName::FifoQueue, "true".into()));
                }
                resolve_or_create(&client, &name, attrs).await?
            }
        };

        let queue_url = match main_url {
            Some(url) => url,
            None => {
                let arn = queue_attributes(&client, &dlq_url, vec![QueueAttributeName::QueueArn])
                    .await?
                    .remove(&QueueAttributeName::QueueArn)
                    .ok_or_else(|| {
                        QueueError::Backend(format!("SQS gave no QueueArn for {dlq_url}"))
                    })?;
                let policy = serde_json::json!({
                    "maxReceiveCount": settings.max_receive_count,
                    "deadLetterTargetArn": arn,
                });
                let mut attrs = vec![
                    (
                        QueueAttributeName::VisibilityTimeout,
                        visibility_secs.to_string(),
                    ),
                    (QueueAttributeName::RedrivePolicy, policy.to_string()),
                ];
                if fifo {
                    attrs.push((QueueAttributeName::FifoQueue, "true".into()));
                    attrs.push((QueueAttributeName::ContentBasedDeduplication, "true".into()));
                }
                resolve_or_create(&client, &main_name, attrs).await?
            }
        };

        // Checks that the main queue answers, and learns its redrive policy.
        let attrs =
            queue_attributes(&client, &queue_url, vec![QueueAttributeName::RedrivePolicy]).await?;
        let max_receive_count = match attrs.get(&QueueAttributeName::RedrivePolicy) {
            Some(policy) => {
                let n = redrive_max_receive_count(policy).unwrap_or(settings.max_receive_count);
                if n < settings.max_receive_count {
                    tracing::warn!(
                        queue = %queue_url,
                        max_receive_count = n,
                        wanted = settings.max_receive_count,
                        "the SQS queue's redrive policy moves a message to the dead-letter queue after fewer receives than queue.sqs.max_receive_count (by default queue.max_receives + 1): SQS dead-letters a job that keeps coming back itself, before the worker can write why"
                    );
                }
                n
            }
            None => {
                tracing::warn!(
                    queue = %queue_url,
                    "the SQS queue has no redrive policy: a message that keeps failing is received again and again instead of moving to the dead-letter queue"
                );
                settings.max_receive_count
            }
        };

        Ok(Self {
            client,
            queue_url,
            dlq_url,
            fifo,
            visibility_secs,
            wait_cap: settings.wait_time_seconds.min(MAX_WAIT_SECONDS),
            per_receive: (settings.max_messages as usize).clamp(1, BATCH),
            receive_loops: settings.concurrency.max(1),
            group_id: settings.message_group_id.clone(),
            max_receive_count,
            receive_lock: None,
            marks: crate::OnceMarks::default(),
        })
    }

    /// Makes this instance send one `ReceiveMessage` to the main queue at a
    /// time. SQS never needs it; moto's emulator does when one process
    /// receives from several tasks, since two receives it serves at once can
    /// hand out the same message.
    pub fn serialize_receives(mut self) -> Self {
        self.receive_lock = Some(tokio::sync::Mutex::new(()));
        self
    }

    /// The main queue's URL.
    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }

    /// The dead-letter queue's URL.
    pub fn dead_letter_queue_url(&self) -> &str {
        &self.dlq_url
    }

    fn group_for(&self, app_id: &str) -> String {
        match &self.group_id {
            Some(g) => g.clone(),
            None if app_id.is_empty() => "default".into(),
            None => app_id.to_string(),
        }
    }

    /// One `SendMessageBatch` entry for the main queue.
    fn main_entry(
        &self,
        id: usize,
        m: &Outgoing,
        dedup: &str,
    ) -> Result<SendMessageBatchRequestEntry, QueueError> {
        let mut e = SendMessageBatchRequestEntry::builder()
            .id(id.to_string())
            .message_body(m.body.clone());
        if self.fifo {
            e = e
                .message_group_id(self.group_for(&m.app_id))
                .message_deduplication_id(dedup_id(dedup));
        } else {
            let secs = whole_seconds_up(m.delay.min(MAX_DELAY));
            if secs > 0 {
                e = e.delay_seconds(secs as i32);
            }
        }
        e.build()
            .map_err(|err| QueueError::Backend(format!("SQS entry: {err}")))
    }

    /// Sends entries to a queue in batches of at most ten and 256 KiB. Entries
    /// that failed on the server's side are tried once more.
    async fn send(
        &self,
        url: &str,
        entries: Vec<SendMessageBatchRequestEntry>,
    ) -> Result<(), QueueError> {
        for chunk in chunk_by_size(entries) {
            let mut pending = chunk;
            for attempt in 0..2 {
                let out = self
                    .client
                    .send_message_batch()
                    .queue_url(url)
                    .set_entries(Some(pending.clone()))
                    .send()
                    .await
                    .map_err(|e| sdk_error("SendMessageBatch", e))?;
                let failed = out.failed();
                if failed.is_empty() {
                    break;
                }
                let retryable = failed.iter().all(|f| !f.sender_fault());
                if attempt == 1 || !retryable {
                    return Err(batch_error("SendMessageBatch", failed));
                }
                let ids: HashSet<&str> = failed.iter().map(|f| f.id()).collect();
                pending.retain(|e| ids.contains(e.id()));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// Deletes messages by receipt handle, ignoring handles that are no longer valid.
    /// Deletes messages; the answer is how many handles SQS called stale.
    async fn delete(&self, url: &str, handles: &[&str]) -> Result<usize, QueueError> {
        let mut stale = 0;
        for chunk in handles.chunks(BATCH) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, h)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(*h)
                        .build()
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| QueueError::Backend(format!("SQS entry: {e}")))?;
            let out = self
                .client
                .delete_message_batch()
                .queue_url(url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| sdk_error("DeleteMessageBatch", e))?;
            stale += stale_handles("DeleteMessageBatch", chunk, out.failed())?.len();
        }
        Ok(stale)
    }

    /// Sets the visibility of messages, [`VISIBILITY_CALLS`] batches of ten
    /// at a time, each tried up to [`VISIBILITY_TRIES`] times; one batch that
    /// fails does not stop the others. The answer is the handles SQS called
    /// stale (their message was received again, or deleted); an error means
    /// some batch failed every try, after all the others were sent.
    async fn set_visibility(
        &self,
        url: &str,
        handles: &[&str],
        secs: i32,
    ) -> Result<Vec<String>, QueueError> {
        let mut calls = tokio::task::JoinSet::new();
        let mut stale = Vec::new();
        let mut failed = None;
        let mut chunks = handles.chunks(BATCH);
        loop {
            while calls.len() < VISIBILITY_CALLS
                && let Some(chunk) = chunks.next()
            {
                let chunk: Vec<String> = chunk.iter().map(|h| h.to_string()).collect();
                let (client, url) = (self.client.clone(), url.to_string());
                calls.spawn(async move { change_visibility(&client, &url, &chunk, secs).await });
            }
            let Some(done) = calls.join_next().await else {
                break;
            };
            match done {
                Ok(Ok(gone)) => stale.extend(gone),
                Ok(Err(e)) => failed = Some(e),
                Err(e) => failed = Some(QueueError::Backend(format!("visibility task: {e}"))),
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(stale),
        }
    }

    /// One `ReceiveMessage` call.
    async fn receive_once(
        &self,
        url: &str,
        max: usize,
        wait_secs: u32,
        visibility_secs: i32,
    ) -> Result<Vec<Message>, QueueError> {
        let out = self
            .client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(max.clamp(1, BATCH) as i32)
            .wait_time_seconds(wait_secs.min(MAX_WAIT_SECONDS) as i32)
            .visibility_timeout(visibility_secs)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            // FIFO: an SDK retry of a receive whose answer was lost gets the
            // same messages back, instead of leaving their group blocked.
            .set_receive_request_attempt_id(self.fifo.then(|| hookq_core::new_id("rcv")))
            .send()
            .await
            .map_err(|e| sdk_error("ReceiveMessage", e))?;
        Ok(out.messages.unwrap_or_default())
    }

    /// Walks the DLQ: takes matching entries, up to the filter's limit, and
    /// hands each received batch's taken entries to `act`, which returns them
    /// once handled (deleted when `deletes`). Everything else seen, and the
    /// taken entries when not `deletes`, is made visible again at the end.
    /// Returns the taken entries.
    ///
    /// The walk covers the messages the DLQ held when it began. A message
    /// whose `SentTimestamp` is at or after that instant is not part of it —
    /// an entry a worker dead-lettered meanwhile, perhaps a job this very
    /// replay sent back — and is left alone (hidden until the end like the
    /// rest, so it does not come back within the walk). The walk ends at the
    /// limit; at an empty receive; at a receive that brings nothing it has not
    /// seen; after [`WALK_IDLE_RECEIVES`] receives in a row that bring none of
    /// its messages; or once it has seen as many of its messages as the DLQ's
    /// `ApproximateNumberOfMessages` when it began (when that is above zero:
    /// the count is approximate, and zero may mean "not counted yet").
    async fn walk_dlq<'a, F, Fut>(
        &'a self,
        filter: &DlqFilter,
        deletes: bool,
        mut act: F,
    ) -> Result<Vec<DlqEntry>, QueueError>
    where
        F: FnMut(&'a Self, Vec<Peeked>) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<Peeked>, QueueError>>,
    {
        let limit = filter.limit.unwrap_or(usize::MAX);
        let began_ms = hookq_core::now_ms();
        let at_start = queue_attributes(
            &self.client,
            &self.dlq_url,
            vec![QueueAttributeName::ApproximateNumberOfMessages],
        )
        .await?
        .get(&QueueAttributeName::ApproximateNumberOfMessages)
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(usize::MAX);
        let mut taken: Vec<DlqEntry> = Vec::new();
        let mut release: Vec<String> = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        // Messages of this walk seen so far.
        let mut walked = 0usize;
        let mut idle = 0usize;
        let result = async {
            while taken.len() < limit && walked < at_start && idle < WALK_IDLE_RECEIVES {
                let batch = self
                    .receive_once(
                        &self.dlq_url,
                        BATCH,
                        WALK_WAIT_SECONDS as u32,
                        WALK_VISIBILITY_SECONDS,
                    )
                    .await?;
                if batch.is_empty() {
                    break;
                }
                let mut fresh = false;
                let mut chosen = Vec::new();
                idle += 1;
                for m in batch {
                    let Some(handle) = m.receipt_handle.clone() else {
                        continue;
                    };
                    if let Some(id) = &m.message_id
                        && !seen.insert(id.clone())
                    {
                        // Its walk visibility lapsed and it came back: already counted.
                        release.push(handle);
                        continue;
                    }
                    fresh = true;
                    if sent_ms(&m).is_some_and(|sent| sent >= began_ms) {
                        // Sent after the walk began: not part of it.
                        release.push(handle);
                        continue;
                    }
                    idle = 0;
                    walked += 1;
                    let entry = self.dead_letter_of(&m);
                    let id = dlq_entry_id(m.body.as_deref().unwrap_or_default().as_bytes());
                    if taken.len() + chosen.len() < limit && filter.matches(&id, &entry) {
                        chosen.push(Peeked {
                            receipt_handle: handle,
                            entry: DlqEntry { id, entry },
                        });
                    } else {
                        release.push(handle);
                    }
                }
                if !chosen.is_empty() {
                    let done = act(self, chosen).await?;
                    for p in done {
                        if !deletes {
                            release.push(p.receipt_handle);
                        }
                        taken.push(p.entry);
                    }
                }
                if !fresh {
                    break;
                }
            }
            Ok::<(), QueueError>(())
        }
        .await;
        let handles: Vec<&str> = release.iter().map(String::as_str).collect();
        let released = self.set_visibility(&self.dlq_url, &handles, 0).await;
        result?;
        released?;
        Ok(taken)
    }

    /// Reads a DLQ message: a [`DeadLetter`] JSON, or a message SQS moved here.
    fn dead_letter_of(&self, m: &Message) -> DeadLetter {
        let body = m.body.as_deref().unwrap_or_default();
        if let Ok(entry) = serde_json::from_str::<DeadLetter>(body) {
            return entry;
        }
        let attr = |name: MessageSystemAttributeName| {
            m.attributes
                .as_ref()
                .and_then(|a| a.get(&name))
                .and_then(|v| v.parse::<u64>().ok())
        };
        let app_id = serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("app_id")?.as_str().map(str::to_string))
            .filter(|a| !a.is_empty());
        let mut entry = DeadLetter::unusable(
            body,
            format!(
                "redriven by SQS after {} receives (maxReceiveCount)",
                self.max_receive_count
            ),
            app_id,
        );
        entry.attempts = self.max_receive_count;
        if let Some(sent) = attr(MessageSystemAttributeName::SentTimestamp) {
            entry.failed_at_ms = sent;
        }
        entry
    }
}

#[async_trait]
impl QueuePush for SqsQueue {
    fn name(&self) -> &'static str {
        "sqs"
    }

    /// A FIFO queue also drops a message whose id it saw in the last five
    /// minutes (its deduplication id), so a push that failed in part and is
    /// pushed again whole enqueues only what was missing; a standard queue
    /// has no such memory, and only this process's keys protect it.
    async fn push_once(
        &self,
        key: &str,
        window: Duration,
        messages: Vec<Outgoing>,
    ) -> Result<crate::Once, QueueError> {
        self.marks.push_once(key, window, self.push(messages)).await
    }

    async fn push(&self, messages: Vec<Outgoing>) -> Result<(), QueueError> {
        let entries = messages
            .iter()
            .enumerate()
            .map(|(i, m)| self.main_entry(i, m, &m.id))
            .collect::<Result<Vec<_>, _>>()?;
        self.send(&self.queue_url, entries).await
    }

    fn max_delay(&self) -> Duration {
        if self.fifo { Duration::ZERO } else { MAX_DELAY }
    }

    async fn ping(&self) -> Result<(), QueueError> {
        queue_attributes(
            &self.client,
            &self.queue_url,
            vec![QueueAttributeName::QueueArn],
        )
        .await
        .map(|_| ())
    }
}

#[async_trait]
impl QueueConsume for SqsQueue {
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Received>, QueueError> {
        let max = max.max(1);
        let deadline = deadline_after(wait);
        let _serial = match &self.receive_lock {
            Some(lock) => Some(lock.lock().await),
            None => None,
        };
        let mut out: Vec<Received> = Vec::new();
        // Wait for the first messages: long polls for whole seconds, short polls for the rest.
        let mut last;
        let mut calls = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let wait_secs = (left.as_secs() as u32).min(self.wait_cap);
            let want = max.min(self.per_receive);
            last = self
                .receive_once(&self.queue_url, want, wait_secs, self.visibility_secs)
                .await?;
            calls += 1;
            if !last.is_empty() || Instant::now() >= deadline {
                break;
            }
            if wait_secs == 0 {
                let left = deadline.saturating_duration_since(Instant::now());
                tokio::time::sleep(left.min(SHORT_POLL_INTERVAL)).await;
            }
        }
        // Then fill up with short polls while full batches come.
        let mut full = last.len() >= max.min(self.per_receive);
        out.extend(last.iter().filter_map(received));
        while full && out.len() < max && calls < MAX_RECEIVE_CALLS {
            let want = (max - out.len()).min(self.per_receive);
            let more = match self
                .receive_once(&self.queue_url, want, 0, self.visibility_secs)
                .await
            {
                Ok(more) => more,
                Err(e) => {
                    // What came already is held: hand it over rather than let it lapse.
                    tracing::debug!(error = %e, "SQS receive ended early");
                    break;
                }
            };
            calls += 1;
            full = more.len() >= want;
            out.extend(more.iter().filter_map(received));
        }
        Ok(out)
    }

    async fn ack(&self, handles: &[Handle]) -> Result<usize, QueueError> {
        let handles = unique(handles);
        self.delete(&self.queue_url, &handles).await
    }

    async fn extend(&self, handles: &[Handle]) -> Result<Vec<Handle>, QueueError> {
        let handles = unique(handles);
        let stale = self
            .set_visibility(&self.queue_url, &handles, self.visibility_secs)
            .await?;
        Ok(stale.into_iter().map(Handle).collect())
    }

    async fn release(&self, handle: &Handle, after: Duration) -> Result<(), QueueError> {
        // SQS hides a message for at most 12 hours; a later due time is
        // reached by hiding it again when it comes back early.
        let secs = after.as_secs_f64().ceil().min(43_200.0) as i32;
        self.set_visibility(&self.queue_url, &[handle.0.as_str()], secs)
            .await
            .map(drop)
    }

    async fn dead_letter(&self, entries: Vec<DeadLetter>) -> Result<(), QueueError> {
        let entries = entries
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let mut e = SendMessageBatchRequestEntry::builder()
                    .id((i % BATCH).to_string())
                    .message_body(d.encode());
                if self.fifo {
                    // A group per entry: order means nothing in the DLQ, and a
                    // shared group would let a walk see only ten at a time.
                    let id = hookq_core::new_id("dlq");
                    e = e.message_group_id(id.clone()).message_deduplication_id(id);
                }
                e.build()
                    .map_err(|err| QueueError::Backend(format!("SQS entry: {err}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.send(&self.dlq_url, entries).await
    }

    fn hold(&self) -> Duration {
        Duration::from_secs(self.visibility_secs as u64)
    }

    /// `concurrency`: one `ReceiveMessage` returns at most 10 messages after
    /// a round trip, so one loop would bound a worker's rate.
    fn receive_concurrency(&self) -> usize {
        self.receive_loops
    }

    fn delays_pushes(&self) -> bool {
        !self.fifo
    }
}

#[async_trait]
impl DeadLetters for SqsQueue {
    async fn dlq_entries(&self, filter: &DlqFilter) -> Result<Vec<DlqEntry>, QueueError> {
        // SQS hands messages over in no order: the walk takes the offset's
        // entries too, and the page is cut after sorting.
        let walk = DlqFilter {
            limit: filter.limit.map(|l| l.saturating_add(filter.offset)),
            ..filter.clone()
        };
        let mut entries = self
            .walk_dlq(&walk, false, |_, chosen| async move { Ok(chosen) })
            .await?;
        entries.sort_by_key(|e| e.entry.failed_at_ms);
        Ok(entries.into_iter().skip(filter.offset).collect())
    }

    async fn dlq_replay(&self, filter: &DlqFilter) -> Result<usize, QueueError> {
        let replayed = self
            .walk_dlq(filter, true, |q, chosen| async move {
                let jobs = chosen
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        let app = p.entry.entry.app_id.clone().unwrap_or_default();
                        // SQS carries text only (and never made such an entry).
                        let job = p.entry.entry.job_text().ok_or_else(|| {
                            QueueError::Backend(
                                "a dead-letter entry holds a job that is not UTF-8 (job_base64), which SQS cannot carry; purge it".into(),
                            )
                        })?;
                        let m = Outgoing::now(hookq_core::new_id("replay"), app, job);
                        q.main_entry(i, &m, &m.id)
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                // The job goes back first, the entry is deleted after: at least once.
                q.send(&q.queue_url, jobs).await?;
                let handles: Vec<&str> = chosen.iter().map(|p| p.receipt_handle.as_str()).collect();
                q.delete(&q.dlq_url, &handles).await?;
                Ok(chosen)
            })
            .await?;
        Ok(replayed.len())
    }

    async fn dlq_purge(&self, filter: &DlqFilter) -> Result<usize, QueueError> {
        let purged = self
            .walk_dlq(filter, true, |q, chosen| async move {
                let handles: Vec<&str> = chosen.iter().map(|p| p.receipt_handle.as_str()).collect();
                q.delete(&q.dlq_url, &handles).await?;
                Ok(chosen)
            })
            .await?;
        Ok(purged.len())
    }

    async fn depth(&self) -> Result<Depth, QueueError> {
        use QueueAttributeName::{
            ApproximateNumberOfMessages as Ready, ApproximateNumberOfMessagesDelayed as Delayed,
            ApproximateNumberOfMessagesNotVisible as Hidden,
        };
        let (main, dead) = tokio::try_join!(
            queue_attributes(&self.client, &self.queue_url, vec![Ready, Delayed, Hidden]),
            queue_attributes(&self.client, &self.dlq_url, vec![Ready, Delayed, Hidden]),
        )?;
        let n = |attrs: &HashMap<QueueAttributeName, String>, name: QueueAttributeName| {
            attrs
                .get(&name)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok(Depth {
            ready: n(&main, Ready),
            delayed: n(&main, Delayed),
            held: n(&main, Hidden),
            // Entries a DLQ walk holds right now are still entries.
            dead: n(&dead, Ready) + n(&dead, Hidden) + n(&dead, Delayed),
        })
    }
}

/// The SQS client: standard credential chain (static test credentials as a
/// fallback when an emulator endpoint is set), the settings' region and endpoint.
async fn build_client(settings: &SqsSettings) -> Client {
    // Long polls last up to 20 s: an attempt may take that long, not much longer.
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(5))
        .operation_attempt_timeout(Duration::from_secs(u64::from(MAX_WAIT_SECONDS) + 10))
        .build();
    let target = hookq_aws::Target {
        region: Some(&settings.region),
        endpoint_url: settings.endpoint_url.as_deref(),
    };
    Client::new(&hookq_aws::sdk_config("sqs", target, timeouts).await)
}

/// The URL of the queue `name`, created with `attrs` when it does not exist.
async fn resolve_or_create(
    client: &Client,
    name: &str,
    attrs: Vec<(QueueAttributeName, String)>,
) -> Result<String, QueueError> {
    match client.get_queue_url().queue_name(name).send().await {
        Ok(out) => return out.queue_url.ok_or_else(|| no_url(name)),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_queue_does_not_exist()) => {}
        Err(e) => return Err(sdk_error("GetQueueUrl", e)),
    }
    tracing::info!(queue = name, "creating SQS queue");
    let mut create = client.create_queue().queue_name(name);
    for (k, v) in attrs {
        create = create.attributes(k, v);
    }
    match create.send().await {
        Ok(out) => out.queue_url.ok_or_else(|| no_url(name)),
        // Another worker created it in the meantime, with other attributes.
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_queue_name_exists()) =>
        {
            client
                .get_queue_url()
                .queue_name(name)
                .send()
                .await
                .map_err(|e| sdk_error("GetQueueUrl", e))?
                .queue_url
                .ok_or_else(|| no_url(name))
        }
        Err(e) => Err(sdk_error("CreateQueue", e)),
    }
}

fn no_url(name: &str) -> QueueError {
    QueueError::Backend(format!("SQS gave no URL for queue {name}"))
}

async fn queue_attributes(
    client: &Client,
    url: &str,
    names: Vec<QueueAttributeName>,
) -> Result<HashMap<QueueAttributeName, String>, QueueError> {
    let out = client
        .get_queue_attributes()
        .queue_url(url)
        .set_attribute_names(Some(names))
        .send()
        .await
        .map_err(|e| sdk_error("GetQueueAttributes", e))?;
    Ok(out.attributes.unwrap_or_default())
}

fn redrive_max_receive_count(policy: &str) -> Option<u32> {
    let v: serde_json::Value = serde_json::from_str(policy).ok()?;
    let n = v.get("maxReceiveCount")?;
    // SQS gives it as a number, some emulators as a string.
    n.as_u64()
        .or_else(|| n.as_str()?.parse().ok())
        .and_then(|n| u32::try_from(n).ok())
}

/// When SQS accepted a message (its `SentTimestamp`, Unix ms, SQS's clock).
fn sent_ms(m: &Message) -> Option<u64> {
    m.attributes
        .as_ref()?
        .get(&MessageSystemAttributeName::SentTimestamp)?
        .parse()
        .ok()
}

/// A received SQS message as a [`Received`].
fn received(m: &Message) -> Option<Received> {
    let handle = m.receipt_handle.clone()?;
    let receive_count = m
        .attributes
        .as_ref()
        .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    Some(Received {
        handle: Handle(handle),
        body: m.body.clone().unwrap_or_default(),
        receive_count,
        // SQS carries only text.
        not_utf8: None,
    })
}

/// Maps an SDK error: unreachable, timed out or throttled is transient
/// ([`QueueError::Unavailable`]); what SQS refused is [`QueueError::Backend`].
fn sdk_error<E>(op: &str, err: SdkError<E, HttpResponse>) -> QueueError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match &err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            QueueError::Unavailable(format!("SQS {op}: {}", DisplayErrorContext(&err)))
        }
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or("unknown");
            let message = service.err().message().unwrap_or_default();
            let text = format!("SQS {op}: {code}: {message}");
            let status = service.raw().status().as_u16();
            if status >= 500 || is_throttling(code) {
                QueueError::Unavailable(text)
            } else {
                QueueError::Backend(text)
            }
        }
        _ => QueueError::Backend(format!("SQS {op}: {}", DisplayErrorContext(&err))),
    }
}

fn is_throttling(code: &str) -> bool {
    matches!(
        code,
        "RequestThrottled"
            | "ThrottlingException"
            | "Throttling"
            | "ServiceUnavailable"
            | "InternalError"
    ) || code.ends_with("RequestThrottled")
}

/// Whether a batch entry failed only because its receipt handle is stale.
fn is_stale_handle(f: &BatchResultErrorEntry) -> bool {
    let code = f.code();
    code.ends_with("ReceiptHandleIsInvalid")
        || code.ends_with("MessageNotInflight")
        || (code.ends_with("InvalidParameterValue")
            && f.message()
                .is_some_and(|m| m.to_ascii_lowercase().contains("receipt handle")))
}

/// The handles of `chunk` (entry ids are their positions) that failed only
/// because they are stale; an error if any entry failed for another reason.
fn stale_handles<H: AsRef<str>>(
    op: &str,
    chunk: &[H],
    failed: &[BatchResultErrorEntry],
) -> Result<Vec<String>, QueueError> {
    let (stale, real): (Vec<_>, Vec<_>) = failed.iter().partition(|f| is_stale_handle(f));
    if !real.is_empty() {
        let owned: Vec<BatchResultErrorEntry> = real.into_iter().cloned().collect();
        return Err(batch_error(op, &owned));
    }
    Ok(stale
        .iter()
        .filter_map(|f| chunk.get(f.id().parse::<usize>().ok()?))
        .map(|h| h.as_ref().to_string())
        .collect())
}

/// One `ChangeMessageVisibilityBatch` of at most ten handles, tried up to
/// [`VISIBILITY_TRIES`] times while SQS is unavailable or some entries
/// failed for a reason other than a stale handle; only the entries that
/// failed are sent again. The answer is the stale handles.
async fn change_visibility(
    client: &Client,
    url: &str,
    chunk: &[String],
    secs: i32,
) -> Result<Vec<String>, QueueError> {
    let mut left: Vec<String> = chunk.to_vec();
    let mut stale = Vec::new();
    let mut pause = Duration::from_millis(100);
    for attempt in 1..=VISIBILITY_TRIES {
        let entries = left
            .iter()
            .enumerate()
            .map(|(i, h)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(h)
                    .visibility_timeout(secs)
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| QueueError::Backend(format!("SQS entry: {e}")))?;
        let sent = client
            .change_message_visibility_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| sdk_error("ChangeMessageVisibilityBatch", e));
        let error = match sent {
            Ok(out) => {
                let mut again = Vec::new();
                for f in out.failed() {
                    let Some(h) = f.id().parse::<usize>().ok().and_then(|i| left.get(i)) else {
                        continue;
                    };
                    if is_stale_handle(f) {
                        stale.push(h.clone());
                    } else {
                        again.push((h.clone(), f.clone()));
                    }
                }
                if again.is_empty() {
                    return Ok(stale);
                }
                let failed: Vec<BatchResultErrorEntry> =
                    again.iter().map(|(_, f)| f.clone()).collect();
                left = again.into_iter().map(|(h, _)| h).collect();
                batch_error("ChangeMessageVisibilityBatch", &failed)
            }
            Err(e) => e,
        };
        if matches!(error, QueueError::Backend(_)) || attempt == VISIBILITY_TRIES {
            return Err(error);
        }
        tokio::time::sleep(pause).await;
        pause *= 2;
    }
    unreachable!("the last try returns")
}

fn batch_error(op: &str, failed: &[BatchResultErrorEntry]) -> QueueError {
    let first = &failed[..failed.len().min(3)];
    let detail = first
        .iter()
        .map(|f| format!("{}: {}", f.code(), f.message().unwrap_or_default()))
        .collect::<Vec<_>>()
        .join("; ");
    let text = format!("SQS {op}: {} entries failed ({detail})", failed.len());
    if failed.iter().all(|f| !f.sender_fault()) {
        QueueError::Unavailable(text)
    } else {
        QueueError::Backend(text)
    }
}

/// Splits entries into batches of at most ten entries and [`BATCH_BYTES`] of
/// bodies, renumbering ids within each batch.
fn chunk_by_size(
    entries: Vec<SendMessageBatchRequestEntry>,
) -> Vec<Vec<SendMessageBatchRequestEntry>> {
    let mut out: Vec<Vec<SendMessageBatchRequestEntry>> = Vec::new();
    let mut current: Vec<SendMessageBatchRequestEntry> = Vec::new();
    let mut bytes = 0;
    for e in entries {
        let size = e.message_body().len();
        if !current.is_empty() && (current.len() == BATCH || bytes + size > BATCH_BYTES) {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        let mut e = e;
        e.id = current.len().to_string();
        current.push(e);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// The handles once each, as receipt handle strings.
fn unique(handles: &[Handle]) -> Vec<&str> {
    let mut seen = HashSet::new();
    handles
        .iter()
        .map(|h| h.0.as_str())
        .filter(|h| seen.insert(*h))
        .collect()
}

/// A deduplication id SQS accepts: at most 128 characters of `[A-Za-z0-9!-/:-@[-`{-~]`.
fn dedup_id(id: &str) -> String {
    let clean: String = id
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(128)
        .collect();
    if clean.is_empty() {
        hookq_core::new_id("job")
    } else {
        clean
    }
}

fn fifo_name(name: &str, fifo: bool) -> String {
    if fifo && !name.ends_with(".fifo") {
        format!("{name}.fifo")
    } else {
        name.to_string()
    }
}

fn last_segment(url: &str) -> &str {
    url.trim_end_matches('/').rsplit('/').next().unwrap_or(url)
}

/// Now plus `wait`, or a year from now for a wait too long to add.
fn deadline_after(wait: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(wait)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 86_400))
}

fn whole_seconds_up(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn visibility_seconds(d: Duration) -> i32 {
    whole_seconds_up(d).clamp(1, MAX_VISIBILITY_SECONDS) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(body: &str) -> SendMessageBatchRequestEntry {
        SendMessageBatchRequestEntry::builder()
            .id("x")
            .message_body(body)
            .build()
            .unwrap()
    }

    #[test]
    fn batches_hold_ten_entries_and_256_kib() {
        let small: Vec<_> = (0..25).map(|_| entry("{}")).collect();
        let sizes: Vec<_> = chunk_by_size(small).iter().map(Vec::len).collect();
        assert_eq!(sizes, [10, 10, 5]);
        let big = "x".repeat(100 * 1024);
        let chunks = chunk_by_size((0..5).map(|_| entry(&big)).collect());
        assert_eq!(chunks.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1]);
        let ids: Vec<_> = chunks[0].iter().map(|e| e.id().to_string()).collect();
        assert_eq!(ids, ["0", "1"], "ids are unique within a batch");
    }

    #[test]
    fn names_and_times() {
        assert_eq!(fifo_name("q", true), "q.fifo");
        assert_eq!(fifo_name("q.fifo", true), "q.fifo");
        assert_eq!(fifo_name("q", false), "q");
        assert_eq!(last_segment("http://h:1/000000000000/jobs/"), "jobs");
        assert_eq!(whole_seconds_up(Duration::from_millis(1500)), 2);
        assert_eq!(whole_seconds_up(Duration::from_secs(3)), 3);
        assert_eq!(visibility_seconds(Duration::ZERO), 1);
        assert_eq!(
            redrive_max_receive_count(r#"{"maxReceiveCount":"5","deadLetterTargetArn":"a"}"#),
            Some(5)
        );
        assert_eq!(
            redrive_max_receive_count(r#"{"maxReceiveCount":3}"#),
            Some(3)
        );
        assert_eq!(dedup_id("job_1 x"), "job_1x");
    }

    #[test]
    fn stale_handles_are_recognised() {
        let e = |code: &str, msg: &str| {
            BatchResultErrorEntry::builder()
                .id("0")
                .code(code)
                .message(msg)
                .sender_fault(true)
                .build()
                .unwrap()
        };
        assert!(is_stale_handle(&e("ReceiptHandleIsInvalid", "")));
        assert!(is_stale_handle(&e(
            "InvalidParameterValue",
            "The receipt handle has expired."
        )));
        assert!(!is_stale_handle(&e(
            "InvalidParameterValue",
            "Visibility timeout invalid"
        )));
    }
}
