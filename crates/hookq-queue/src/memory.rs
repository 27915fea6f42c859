//! The in-process queue: the embedded default, for tests, the demo and
//! single-process use.
//!
//! One mutex guards four collections: `ready` (a deque), `delayed` (ordered
//! by due time), `held` (by hold token, with its deadline mirrored in an
//! ordered index) and `dead`. Every call first promotes due delayed messages
//! and returns expired holds to `ready`, so a hold behaves like an SQS
//! visibility timeout without a background task. Receivers wait on a
//! [`Notify`] that every push wakes, and sleep no longer than the next due
//! time. The queue is bounded: a push that would exceed the capacity fails as
//! a whole.

use crate::{
    DeadLetters, Depth, DlqEntry, DlqFilter, Handle, Once, OnceMarks, Outgoing, QueueConsume,
    QueueError, QueuePush, Received, dlq_entry_id,
};
use async_trait::async_trait;
use hookq_core::DeadLetter;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

struct Message {
    body: String,
    receive_count: u32,
}

#[derive(Default)]
struct State {
    ready: VecDeque<Message>,
    delayed: BTreeMap<(Instant, u64), Message>,
    held: HashMap<u64, (Message, Instant)>,
    hold_deadlines: BTreeMap<(Instant, u64), ()>,
    dead: VecDeque<DeadLetter>,
    seq: u64,
}

impl State {
    fn len(&self) -> usize {
        self.ready.len() + self.delayed.len() + self.held.len()
    }

    /// Moves due delayed messages and expired holds to `ready`.
    fn promote(&mut self, now: Instant) {
        while let Some(entry) = self.delayed.first_entry() {
            if entry.key().0 > now {
                break;
            }
            self.ready.push_back(entry.remove());
        }
        while let Some(entry) = self.hold_deadlines.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let (_, token) = entry.remove_entry().0;
            if let Some((msg, _)) = self.held.remove(&token) {
                // An expired hold goes to the front: it has waited longest.
                self.ready.push_front(msg);
            }
        }
    }

    /// The next time something becomes ready by itself.
    fn next_due(&self) -> Option<Instant> {
        let delayed = self.delayed.keys().next().map(|k| k.0);
        let hold = self.hold_deadlines.keys().next().map(|k| k.0);
        delayed.into_iter().chain(hold).min()
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }
}

/// The in-memory [`QueueDriver`](crate::QueueDriver).
pub struct MemoryQueue {
    state: Mutex<State>,
    pushed: Notify,
    capacity: usize,
    hold: Duration,
    marks: OnceMarks,
}

impl MemoryQueue {
    /// A queue of at most `capacity` messages whose holds last `hold`.
    pub fn new(capacity: usize, hold: Duration) -> Self {
        Self {
            state: Mutex::new(State::default()),
            pushed: Notify::new(),
            capacity,
            hold,
            marks: OnceMarks::default(),
        }
    }

    /// A queue with the settings of `queue.memory`.
    pub fn from_settings(s: &hookq_core::config::MemoryQueueSettings) -> Self {
        Self::new(s.capacity, s.lease)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain collections in a usable state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take(&self, max: usize) -> (Vec<Received>, Option<Instant>) {
        let now = Instant::now();
        let mut s = self.lock();
        s.promote(now);
        let mut out = Vec::new();
        while out.len() < max {
            let Some(mut msg) = s.ready.pop_front() else {
                break;
            };
            msg.receive_count += 1;
            let token = s.next_seq();
            let deadline = now + self.hold;
            out.push(Received {
                handle: Handle(token.to_string()),
                body: msg.body.clone(),
                receive_count: msg.receive_count,
                not_utf8: None,
            });
            s.hold_deadlines.insert((deadline, token), ());
            s.held.insert(token, (msg, deadline));
        }
        (out, s.next_due())
    }
}

fn token(h: &Handle) -> Option<u64> {
    h.0.parse().ok()
}

#[async_trait]
impl QueuePush for MemoryQueue {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn push_once(
        &self,
        key: &str,
        window: Duration,
        messages: Vec<Outgoing>,
    ) -> Result<Once, QueueError> {
        self.marks.push_once(key, window, self.push(messages)).await
    }

    async fn push(&self, messages: Vec<Outgoing>) -> Result<(), QueueError> {
        {
            let now = Instant::now();
            let mut s = self.lock();
            if s.len() + messages.len() > self.capacity {
                return Err(QueueError::Full(format!(
                    "{} messages held, capacity {}",
                    s.len(),
                    self.capacity
                )));
            }
            for m in messages {
                let msg = Message {
                    body: m.body,
                    receive_count: 0,
                };
                if m.delay.is_zero() {
                    s.ready.push_back(msg);
                } else {
                    let seq = s.next_seq();
                    s.delayed.insert((now + m.delay, seq), msg);
                }
            }
        }
        self.pushed.notify_waiters();
        Ok(())
    }

    async fn ping(&self) -> Result<(), QueueError> {
        Ok(())
    }
}

#[async_trait]
impl QueueConsume for MemoryQueue {
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Received>, QueueError> {
        let deadline = Instant::now() + wait;
        loop {
            // Register for a wake-up before looking, so a push in between is not missed.
            let pushed = self.pushed.notified();
            tokio::pin!(pushed);
            pushed.as_mut().enable();
            let (got, next_due) = self.take(max.max(1));
            if !got.is_empty() || Instant::now() >= deadline {
                return Ok(got);
            }
            let wake = next_due.map_or(deadline, |due| due.min(deadline));
            tokio::select! {
                _ = pushed => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    async fn ack(&self, handles: &[Handle]) -> Result<usize, QueueError> {
        let mut s = self.lock();
        let mut gone = 0;
        for h in handles {
            match token(h).and_then(|t| Some((t, s.held.remove(&t)?))) {
                Some((t, (_, deadline))) => {
                    s.hold_deadlines.remove(&(deadline, t));
                }
                None => gone += 1,
            }
        }
        Ok(gone)
    }

    async fn extend(&self, handles: &[Handle]) -> Result<Vec<Handle>, QueueError> {
        let new_deadline = Instant::now() + self.hold;
        let mut s = self.lock();
        let mut gone = Vec::new();
        for h in handles {
            let Some((t, (_, deadline))) = token(h).and_then(|t| Some((t, s.held.get_mut(&t)?)))
            else {
                gone.push(h.clone());
                continue;
            };
            let old = std::mem::replace(deadline, new_deadline);
            s.hold_deadlines.remove(&(old, t));
            s.hold_deadlines.insert((new_deadline, t), ());
        }
        Ok(gone)
    }

    async fn dead_letter(&self, entries: Vec<DeadLetter>) -> Result<(), QueueError> {
        self.lock().dead.extend(entries);
        Ok(())
    }

    fn hold(&self) -> Duration {
        self.hold
    }

    /// A receive takes its messages in one step under the lock, so one
    /// dropped while waiting takes none.
    fn receive_cancel_safe(&self) -> bool {
        true
    }
}

#[async_trait]
impl DeadLetters for MemoryQueue {
    async fn dlq_entries(&self, filter: &DlqFilter) -> Result<Vec<DlqEntry>, QueueError> {
        let s = self.lock();
        Ok(s.dead
            .iter()
            .map(|e| (dlq_entry_id(e.encode().as_bytes()), e))
            .filter(|(id, e)| filter.matches(id, e))
            .skip(filter.offset)
            .take(filter.limit())
            .map(|(id, e)| DlqEntry {
                id,
                entry: e.clone(),
            })
            .collect())
    }

    async fn dlq_replay(&self, filter: &DlqFilter) -> Result<usize, QueueError> {
        let taken = {
            let mut s = self.lock();
            let taken = drain_matching(&mut s.dead, filter);
            let refusal = if s.len() + taken.len() > self.capacity {
                Some(QueueError::Full("no room to replay".into()))
            } else {
                taken
                    .iter()
                    .find(|e| e.job_text().is_none())
                    .map(|_| not_text_error())
            };
            if let Some(e) = refusal {
                // Put them back where they were: replay is all or nothing.
                for e in taken.into_iter().rev() {
                    s.dead.push_front(e);
                }
                return Err(e);
            }
            for e in &taken {
                s.ready.push_back(Message {
                    body: e.job_text().unwrap_or_default().into_owned(),
                    receive_count: 0,
                });
            }
            taken
        };
        self.pushed.notify_waiters();
        Ok(taken.len())
    }

    async fn dlq_purge(&self, filter: &DlqFilter) -> Result<usize, QueueError> {
        Ok(drain_matching(&mut self.lock().dead, filter).len())
    }

    async fn depth(&self) -> Result<Depth, QueueError> {
        let mut s = self.lock();
        s.promote(Instant::now());
        Ok(Depth {
            ready: s.ready.len() as u64,
            delayed: s.delayed.len() as u64,
            held: s.held.len() as u64,
            dead: s.dead.len() as u64,
        })
    }
}

/// Why a replay refuses an entry whose job is not UTF-8 (`job_base64`):
/// this queue carries text only. (It never makes such an entry itself.)
fn not_text_error() -> QueueError {
    QueueError::Backend(
        "a dead-letter entry holds a job that is not UTF-8 (job_base64), which this queue cannot carry; nothing was replayed".into(),
    )
}

/// Removes up to the filter's limit of matching entries, oldest first.
fn drain_matching(dead: &mut VecDeque<DeadLetter>, filter: &DlqFilter) -> Vec<DeadLetter> {
    let mut taken = Vec::new();
    let mut kept = VecDeque::with_capacity(dead.len());
    for e in dead.drain(..) {
        if taken.len() < filter.limit() && filter.matches(&dlq_entry_id(e.encode().as_bytes()), &e)
        {
            taken.push(e);
        } else {
            kept.push_back(e);
        }
    }
    *dead = kept;
    taken
}
