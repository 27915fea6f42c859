//! Tracking received jobs until every part of them is settled, then acking.
//!
//! A received job gets a [`Ticket`] counting its parts (one per endpoint it
//! fans out to; one for a retry job). A part is settled once its outcome is
//! durable: delivered, a retry job pushed, or a dead-letter entry written.
//! When the last part settles, the job's handle goes to the acker, which acks
//! in bulk. If a part cannot be made durable (the queue is down), the ticket
//! is abandoned: never acked, its hold is no longer extended, and the job
//! comes back to the queue when the hold expires — at least once, never lost.
//! While a ticket lives, its handle is in the [`Held`] set, whose holds a
//! background task keeps extending; the ticket also carries its share of the
//! worker's held-jobs budget, returned when it drops.

use hookq_queue::{Handle, QueueConsume};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;

/// The handles of jobs this worker holds, for extending their holds.
#[derive(Clone, Default)]
pub struct Held(Arc<Mutex<HashSet<Handle>>>);

impl Held {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<Handle>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn insert(&self, h: Handle) {
        self.lock().insert(h);
    }

    fn remove(&self, h: &Handle) {
        self.lock().remove(h);
    }

    /// How many jobs are held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no job is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of the handles.
    pub fn snapshot(&self) -> Vec<Handle> {
        self.lock().iter().cloned().collect()
    }
}

/// Where settled jobs go: the held set and the acker's channel.
#[derive(Clone)]
pub struct Settler {
    held: Held,
    acks: mpsc::UnboundedSender<Handle>,
}

impl Settler {
    /// A settler and the receiving end for [`run_acker`].
    pub fn new() -> (Self, mpsc::UnboundedReceiver<Handle>) {
        let (acks, rx) = mpsc::unbounded_channel();
        (
            Self {
                held: Held::default(),
                acks,
            },
            rx,
        )
    }

    /// The held set.
    pub fn held(&self) -> &Held {
        &self.held
    }

    /// A ticket for a received job with `parts` parts.
    pub fn ticket(
        &self,
        handle: Handle,
        parts: usize,
        enqueued_at_ms: Option<u64>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Arc<Ticket> {
        self.held.insert(handle.clone());
        Arc::new(Ticket {
            handle,
            remaining: AtomicUsize::new(parts),
            abandoned: AtomicBool::new(false),
            enqueued_at_ms,
            settler: self.clone(),
            _permit: permit,
        })
    }
}

/// A received job being worked on; see the module docs.
pub struct Ticket {
    handle: Handle,
    remaining: AtomicUsize,
    abandoned: AtomicBool,
    /// When the producer enqueued the job (Unix ms), if known.
    pub enqueued_at_ms: Option<u64>,
    settler: Settler,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Ticket {
    /// One part's outcome is durable; the last one acks the job (unless abandoned).
    pub fn settle(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1
            && !self.abandoned.load(Ordering::Acquire)
        {
            self.settler.held.remove(&self.handle);
            // The acker only stops after every delivery ended; a send error
            // means shutdown gave up on this job, which then comes back.
            let _ = self.settler.acks.send(self.handle.clone());
        }
    }

    /// A part could not be made durable: give the job back to the queue.
    pub fn abandon(&self) {
        self.abandoned.store(true, Ordering::Release);
        self.settler.held.remove(&self.handle);
    }

    /// The job's hold.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}

/// Acks handles in bulk until `stop` fires and the channel is drained.
pub async fn run_acker(
    queue: Arc<dyn QueueConsume>,
    mut rx: mpsc::UnboundedReceiver<Handle>,
    stop: CancellationToken,
) {
    const BULK: usize = 1000;
    let mut buf = Vec::with_capacity(BULK);
    loop {
        let n = tokio::select! {
            biased;
            n = rx.recv_many(&mut buf, BULK) => n,
            _ = stop.cancelled() => {
                while let Ok(h) = rx.try_recv() {
                    buf.push(h);
                }
                if !buf.is_empty() {
                    ack_with_retries(&*queue, &buf).await;
                }
                return;
            }
        };
        if n == 0 {
            return;
        }
        ack_with_retries(&*queue, &buf).await;
        buf.clear();
    }
}

async fn ack_with_retries(queue: &dyn QueueConsume, handles: &[Handle]) {
    let mut delay = Duration::from_millis(100);
    for attempt in 1..=5 {
        match queue.ack(handles).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, attempt, count = handles.len(), "ack failed");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
    // The jobs were delivered; unacked they come back and are delivered again.
    tracing::error!(
        count = handles.len(),
        "giving up acking; these jobs will be delivered again"
    );
}

/// Extends the holds of every held job every `every`, until `stop` fires.
pub async fn run_extender(
    queue: Arc<dyn QueueConsume>,
    held: Held,
    every: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let handles = held.snapshot();
        for chunk in handles.chunks(1000) {
            if let Err(e) = queue.extend(chunk).await {
                tracing::warn!(error = %e, count = chunk.len(), "extending holds failed");
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A ticket on a settler whose acks go nowhere, for tests of other modules.
    pub(crate) fn ticket(parts: usize) -> Arc<Ticket> {
        let (settler, _rx) = Settler::new();
        settler.ticket(Handle("t".into()), parts, None, None)
    }

    #[test]
    fn acks_only_after_the_last_part() {
        let (settler, mut rx) = Settler::new();
        let t = settler.ticket(Handle("h1".into()), 3, None, None);
        t.settle();
        t.settle();
        assert!(rx.try_recv().is_err());
        assert_eq!(settler.held().len(), 1);
        t.settle();
        assert_eq!(rx.try_recv().unwrap(), Handle("h1".into()));
        assert!(settler.held().is_empty());
    }

    #[test]
    fn an_abandoned_job_is_never_acked() {
        let (settler, mut rx) = Settler::new();
        let t = settler.ticket(Handle("h2".into()), 2, None, None);
        t.settle();
        t.abandon();
        assert!(settler.held().is_empty(), "no longer extended");
        t.settle();
        assert!(rx.try_recv().is_err());
    }
}
