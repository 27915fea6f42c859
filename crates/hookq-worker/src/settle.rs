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
//!
//! A hold can be lost: a worker paused (or starved) past its hold finds its
//! job taken by another worker. The queue says so when the hold is extended
//! ([`QueueConsume::extend`] answers the handles whose hold is gone); their
//! tickets are then abandoned like a refused one, so this worker delivers,
//! retries and dead-letters nothing more for them ([`Held::lose`]). Before a
//! failed delivery turns into a retry job or a dead letter, the worker asks
//! the same question of the batch's holds ([`confirm`]), so a retry is never
//! pushed for a job that another worker now has.

use crate::metrics::Metrics;
use hookq_queue::{Handle, QueueConsume};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;

/// The jobs this worker holds, by handle, for extending their holds.
#[derive(Clone, Default)]
pub struct Held(Arc<Mutex<HashMap<Handle, Weak<Ticket>>>>);

impl Held {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Handle, Weak<Ticket>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn insert(&self, ticket: &Arc<Ticket>) {
        self.lock()
            .insert(ticket.handle.clone(), Arc::downgrade(ticket));
    }

    fn remove(&self, h: &Handle) {
        self.lock().remove(h);
    }

    /// The queue says these holds are gone: abandons their tickets. Returns
    /// how many of them this worker still held.
    pub fn lose(&self, handles: &[Handle]) -> usize {
        let lost: Vec<Arc<Ticket>> = {
            let mut held = self.lock();
            handles
                .iter()
                .filter_map(|h| held.remove(h)?.upgrade())
                .collect()
        };
        for t in &lost {
            t.abandoned.store(true, Ordering::Release);
        }
        lost.len()
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
        self.lock().keys().cloned().collect()
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
        let ticket = Arc::new(Ticket {
            handle,
            remaining: AtomicUsize::new(parts),
            abandoned: AtomicBool::new(false),
            enqueued_at_ms,
            settler: self.clone(),
            _permit: permit,
        });
        self.held.insert(&ticket);
        ticket
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

    /// Whether the job was given back (a part could not be made durable, or
    /// its hold was lost): nothing more is done for it here.
    pub fn is_abandoned(&self) -> bool {
        self.abandoned.load(Ordering::Acquire)
    }

    /// The job's hold.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}

impl Drop for Ticket {
    /// A ticket dropped with parts unsettled (its delivery task panicked, or
    /// its batch was dropped) stops being extended, so the queue gives the
    /// job back when its hold runs out instead of this worker holding it
    /// until it restarts.
    fn drop(&mut self) {
        if self.remaining.load(Ordering::Acquire) > 0 {
            self.settler.held.remove(&self.handle);
        }
    }
}

/// Acks handles in bulk until `stop` fires and the channel is drained.
pub async fn run_acker(
    queue: Arc<dyn QueueConsume>,
    metrics: Arc<Metrics>,
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
                    ack_with_retries(&*queue, &metrics, &buf).await;
                }
                return;
            }
        };
        if n == 0 {
            return;
        }
        ack_with_retries(&*queue, &metrics, &buf).await;
        buf.clear();
    }
}

async fn ack_with_retries(queue: &dyn QueueConsume, metrics: &Metrics, handles: &[Handle]) {
    let mut delay = Duration::from_millis(100);
    for attempt in 1..=5 {
        match queue.ack(handles).await {
            Ok(0) => return,
            Ok(late) => {
                metrics.holds_lost.inc_by(late as u64);
                tracing::warn!(
                    count = late,
                    "acked after the hold had expired; another worker may deliver these jobs again"
                );
                return;
            }
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

/// Extends the holds of every held job every `every`, until `stop` fires;
/// a hold the queue says is gone abandons its ticket.
pub async fn run_extender(
    queue: Arc<dyn QueueConsume>,
    metrics: Arc<Metrics>,
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
            match queue.extend(chunk).await {
                Ok(gone) => lost(&metrics, &held, &gone, "extending holds"),
                Err(e) => {
                    tracing::warn!(error = %e, count = chunk.len(), "extending holds failed")
                }
            }
        }
    }
}

/// Extends the holds of `tickets` now and abandons those whose hold is gone.
/// Called before a failed delivery becomes a retry job or a dead letter; if
/// the queue cannot answer, the tickets are left as they are (the push that
/// follows will most likely fail too, and abandon them).
pub async fn confirm(
    queue: &dyn QueueConsume,
    metrics: &Metrics,
    held: &Held,
    tickets: &[Arc<Ticket>],
) {
    let handles: Vec<Handle> = tickets
        .iter()
        .filter(|t| !t.is_abandoned())
        .map(|t| t.handle.clone())
        .collect();
    match queue.extend(&handles).await {
        Ok(gone) => lost(metrics, held, &gone, "settling a failed delivery"),
        Err(e) => tracing::debug!(error = %e, "could not confirm holds"),
    }
}

fn lost(metrics: &Metrics, held: &Held, gone: &[Handle], when: &str) {
    let n = held.lose(gone);
    if n > 0 {
        metrics.holds_lost.inc_by(n as u64);
        tracing::warn!(
            count = n,
            when,
            "holds lost (the worker was paused or starved past its hold): another worker has these jobs; dropping them here"
        );
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
    fn a_lost_hold_abandons_its_ticket() {
        let (settler, mut rx) = Settler::new();
        let t = settler.ticket(Handle("h3".into()), 1, None, None);
        let other = settler.ticket(Handle("h4".into()), 1, None, None);
        let gone = [Handle("h3".into()), Handle("not-held".into())];
        assert_eq!(settler.held().lose(&gone), 1);
        assert!(t.is_abandoned());
        assert!(!other.is_abandoned());
        assert_eq!(settler.held().snapshot(), vec![Handle("h4".into())]);
        t.settle();
        assert!(rx.try_recv().is_err(), "a lost job is not acked");
    }

    #[test]
    fn a_ticket_dropped_unsettled_is_no_longer_extended() {
        let (settler, _rx) = Settler::new();
        let t = settler.ticket(Handle("h5".into()), 2, None, None);
        t.settle();
        drop(t);
        assert!(
            settler.held().is_empty(),
            "its hold would be extended forever"
        );
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
