//! Batches: the unit of delivery, and the partitioned batcher that forms them.
//!
//! Each event a job fans out becomes an [`Item`] for one (app, endpoint). The
//! [`Batcher`] keeps one open batch per (app, endpoint); a batch closes when
//! its window (counted from its first event) ends, when it holds `size`
//! events, or when the next event would push its body past the byte cap
//! (Lambda's payload limit included). With batching off, every item is a batch
//! of one. The number of open batches is bounded: past the bound, the oldest
//! closes early. The batcher is plain data driven by [`run`], so its rules are
//! tested without a runtime.

use crate::settle::Ticket;
use hookq_core::config::{App, Batching};
use hookq_core::endpoint::{Endpoint, EndpointTarget};
use hookq_core::{Event, envelope};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// An event with its JSON encoded once, shared by every endpoint that gets it.
#[derive(Debug)]
pub struct Encoded {
    /// The event.
    pub event: Event,
    /// Its JSON as sent to receivers.
    pub json: Vec<u8>,
}

impl Encoded {
    /// Encodes `event`, with its `id` only when `with_id`.
    pub fn new(event: Event, with_id: bool) -> Arc<Self> {
        let json = envelope::encode_event(&event, with_id);
        Arc::new(Self { event, json })
    }
}

/// One event bound for one endpoint.
pub struct Item {
    /// The app.
    pub app: Arc<App>,
    /// The endpoint's index in `app.endpoints`.
    pub endpoint: usize,
    /// The event.
    pub event: Arc<Encoded>,
    /// The job it came from.
    pub ticket: Arc<Ticket>,
}

/// Events for one endpoint, delivered in one request.
pub struct Batch {
    /// The app.
    pub app: Arc<App>,
    /// The endpoint's index in `app.endpoints`.
    pub endpoint: usize,
    /// `webhook-id`: the same for every attempt of this batch.
    pub webhook_id: String,
    /// This attempt's number, from 1.
    pub attempt: u32,
    /// When the first attempt was made (Unix ms); none when this is it.
    pub first_attempt_ms: Option<u64>,
    /// The events.
    pub events: Vec<Arc<Encoded>>,
    /// The jobs whose parts this batch carries, each once.
    pub tickets: Vec<Arc<Ticket>>,
    /// The index in `tickets` of each event's job.
    owners: Vec<usize>,
    bytes: usize,
}

impl Batch {
    /// A first attempt with no events yet.
    pub fn new(app: Arc<App>, endpoint: usize) -> Self {
        Self {
            app,
            endpoint,
            webhook_id: hookq_core::new_id("msg"),
            attempt: 1,
            first_attempt_ms: None,
            events: Vec::new(),
            tickets: Vec::new(),
            owners: Vec::new(),
            bytes: envelope::OVERHEAD,
        }
    }

    /// The endpoint this batch goes to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.app.endpoints[self.endpoint]
    }

    /// The body of the attempt sent at `time_ms`: the envelope of the
    /// events, the same bytes for an HTTP endpoint and a Lambda function.
    pub fn body(&self, time_ms: u64) -> Vec<u8> {
        envelope::body(time_ms, self.events.iter().map(|e| e.json.as_slice()))
    }

    /// What signs the attempt sent at `time_ms`: the app's key and secret,
    /// the endpoint's Standard Webhooks secrets, the batch's `webhook-id`.
    pub fn signer(&self, time_ms: u64) -> envelope::Signer<'_> {
        envelope::Signer {
            app_key: &self.app.key,
            app_secret: &self.app.secret,
            signing_secrets: &self.endpoint().signing_secrets,
            webhook_id: &self.webhook_id,
            time_ms,
        }
    }

    /// The body size once sent.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Adds an event; its ticket is recorded once however many of its events come.
    pub fn add(&mut self, event: Arc<Encoded>, ticket: &Arc<Ticket>) {
        self.bytes += event.json.len() + usize::from(!self.events.is_empty());
        self.events.push(event);
        let owner = match self.tickets.iter().position(|t| Arc::ptr_eq(t, ticket)) {
            Some(i) => i,
            None => {
                self.tickets.push(ticket.clone());
                self.tickets.len() - 1
            }
        };
        self.owners.push(owner);
    }

    /// Drops the events of jobs that were abandoned (their hold was lost, or
    /// another part could not be made durable: the queue gives them back),
    /// so nothing more is sent or pushed for them. Returns whether any event is left.
    pub fn retain_held(&mut self) -> bool {
        if self.tickets.iter().all(|t| !t.is_abandoned()) {
            return !self.events.is_empty();
        }
        let mut renumber = vec![None; self.tickets.len()];
        let mut tickets = Vec::new();
        for (i, t) in self.tickets.drain(..).enumerate() {
            if !t.is_abandoned() {
                renumber[i] = Some(tickets.len());
                tickets.push(t);
            }
        }
        self.tickets = tickets;
        let (mut events, mut owners) = (Vec::new(), Vec::new());
        for (e, o) in self.events.drain(..).zip(self.owners.drain(..)) {
            if let Some(o) = renumber[o] {
                events.push(e);
                owners.push(o);
            }
        }
        self.bytes = envelope::OVERHEAD
            + events.iter().map(|e| e.json.len()).sum::<usize>()
            + events.len().saturating_sub(1);
        (self.events, self.owners) = (events, owners);
        !self.events.is_empty()
    }
}

/// The largest body an endpoint accepts: the configured cap, and Lambda's limit.
pub fn byte_cap(endpoint: &Endpoint, batching: &Batching) -> usize {
    match &endpoint.target {
        EndpointTarget::Http(_) => batching.max_bytes,
        EndpointTarget::Lambda(l) => batching.max_bytes.min(l.invocation_type.payload_limit()),
    }
}

type Key = (usize, usize);

fn key(app: &Arc<App>, endpoint: usize) -> Key {
    // The app's allocation identifies it for as long as the batch is open.
    (Arc::as_ptr(app) as usize, endpoint)
}

struct Open {
    batch: Batch,
    deadline: Instant,
}

/// One open batch per (app, endpoint); see the module docs for when they close.
pub struct Batcher {
    settings: Batching,
    max_open: usize,
    open: HashMap<Key, Open>,
    deadlines: BTreeMap<(Instant, Key), ()>,
}

impl Batcher {
    /// A batcher with these rules, keeping at most `max_open` batches open.
    pub fn new(settings: Batching, max_open: usize) -> Self {
        Self {
            settings,
            max_open: max_open.max(1),
            open: HashMap::new(),
            deadlines: BTreeMap::new(),
        }
    }

    /// Adds an item; returns the batches that closed because of it.
    pub fn push(&mut self, item: Item, now: Instant) -> Vec<Batch> {
        let mut closed = Vec::new();
        let k = key(&item.app, item.endpoint);
        let ep = &item.app.endpoints[item.endpoint];
        let (size, cap) = if self.settings.enabled {
            (self.settings.size, byte_cap(ep, &self.settings))
        } else {
            (1, usize::MAX)
        };
        // Close the open batch first if this event would push it past the byte cap.
        if self
            .open
            .get(&k)
            .is_some_and(|open| open.batch.bytes() + 1 + item.event.json.len() > cap)
        {
            closed.extend(self.close(k));
        }
        if !self.open.contains_key(&k) {
            if self.open.len() >= self.max_open
                && let Some(&(_, oldest)) = self.deadlines.keys().next()
            {
                closed.extend(self.close(oldest));
            }
            let deadline = now + self.settings.duration;
            self.deadlines.insert((deadline, k), ());
            let batch = Batch::new(item.app.clone(), item.endpoint);
            self.open.insert(k, Open { batch, deadline });
        }
        if let Some(open) = self.open.get_mut(&k) {
            open.batch.add(item.event, &item.ticket);
            if open.batch.events.len() >= size {
                closed.extend(self.close(k));
            }
        }
        closed
    }

    fn close(&mut self, k: Key) -> Option<Batch> {
        let open = self.open.remove(&k)?;
        self.deadlines.remove(&(open.deadline, k));
        Some(open.batch)
    }

    /// When the next open batch's window ends.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.keys().next().map(|(at, _)| *at)
    }

    /// Closes every batch whose window ended by `now`.
    pub fn expire(&mut self, now: Instant) -> Vec<Batch> {
        let due: Vec<Key> = self
            .deadlines
            .keys()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, k)| *k)
            .collect();
        due.into_iter().filter_map(|k| self.close(k)).collect()
    }

    /// Closes every open batch (at shutdown).
    pub fn drain(&mut self) -> Vec<Batch> {
        self.deadlines.clear();
        self.open.drain().map(|(_, o)| o.batch).collect()
    }

    /// How many batches are open.
    pub fn open_count(&self) -> usize {
        self.open.len()
    }
}

/// Feeds items into the batcher and closed batches out, until the input
/// closes; then flushes what is open.
pub async fn run(mut batcher: Batcher, mut items: mpsc::Receiver<Item>, out: mpsc::Sender<Batch>) {
    loop {
        let deadline = batcher.next_deadline();
        let closed = tokio::select! {
            item = items.recv() => match item {
                Some(item) => batcher.push(item, Instant::now()),
                None => break,
            },
            _ = sleep_until(deadline) => batcher.expire(Instant::now()),
        };
        for batch in closed {
            if out.send(batch).await.is_err() {
                return;
            }
        }
    }
    for batch in batcher.drain() {
        if out.send(batch).await.is_err() {
            return;
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settle::tests::ticket;
    use std::time::Duration;

    fn app(n_endpoints: usize) -> Arc<App> {
        let webhooks: Vec<String> = (0..n_endpoints)
            .map(|i| {
                format!(r#"{{"url": "http://127.0.0.1:9/{i}", "event_types": ["client_event"]}}"#)
            })
            .collect();
        let text = format!(
            r#"{{"app_manager": {{"array": {{"apps": [{{"id": "a", "key": "k", "secret": "s", "webhooks": [{}]}}]}}}}}}"#,
            webhooks.join(",")
        );
        hookq_core::Config::parse(&text, |_| None).unwrap().0.apps[0].clone()
    }

    fn item(app: &Arc<App>, endpoint: usize, data_len: usize) -> Item {
        let e = Event::client_event("c", "e", "x".repeat(data_len), "1.1");
        Item {
            app: app.clone(),
            endpoint,
            event: Encoded::new(e, false),
            ticket: ticket(1),
        }
    }

    fn settings(size: usize, max_bytes: usize) -> Batching {
        Batching {
            enabled: true,
            duration: Duration::from_millis(50),
            size,
            max_bytes,
        }
    }

    #[test]
    fn retain_held_drops_the_events_of_abandoned_jobs() {
        let a = app(1);
        let (kept, lost) = (ticket(2), ticket(1));
        let mut batch = Batch::new(a, 0);
        let ev = |d: &str| Encoded::new(Event::client_event("c", "e", d, "1.1"), false);
        batch.add(ev("k1"), &kept);
        batch.add(ev("l1"), &lost);
        batch.add(ev("k2"), &kept);
        let full = batch.bytes();
        assert!(batch.retain_held(), "nothing abandoned: all kept");
        assert_eq!((batch.events.len(), batch.bytes()), (3, full));

        lost.abandon();
        assert!(batch.retain_held());
        let data: Vec<_> = batch
            .events
            .iter()
            .map(|e| e.event.data.as_deref())
            .collect();
        assert_eq!(data, [Some("k1"), Some("k2")]);
        assert_eq!(batch.tickets.len(), 1);
        assert!(Arc::ptr_eq(&batch.tickets[0], &kept));
        let mut fresh = Batch::new(app(1), 0);
        fresh.add(ev("k1"), &kept);
        fresh.add(ev("k2"), &kept);
        assert_eq!(batch.bytes(), fresh.bytes());

        kept.abandon();
        assert!(!batch.retain_held(), "every job abandoned: nothing left");
        assert!(batch.tickets.is_empty());
    }

    #[test]
    fn closes_on_size_per_partition() {
        let a = app(2);
        let mut b = Batcher::new(settings(3, 1 << 20), 100);
        let now = Instant::now();
        for _ in 0..2 {
            assert!(b.push(item(&a, 0, 1), now).is_empty());
            assert!(b.push(item(&a, 1, 1), now).is_empty());
        }
        let closed = b.push(item(&a, 0, 1), now);
        assert_eq!(closed.len(), 1);
        assert_eq!((closed[0].endpoint, closed[0].events.len()), (0, 3));
        assert_eq!(b.open_count(), 1);
    }

    #[test]
    fn closes_on_window_from_the_first_event() {
        let a = app(1);
        let mut b = Batcher::new(settings(100, 1 << 20), 100);
        let t0 = Instant::now();
        b.push(item(&a, 0, 1), t0);
        b.push(item(&a, 0, 1), t0 + Duration::from_millis(40));
        assert_eq!(b.next_deadline(), Some(t0 + Duration::from_millis(50)));
        assert!(b.expire(t0 + Duration::from_millis(49)).is_empty());
        let closed = b.expire(t0 + Duration::from_millis(50));
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].events.len(), 2);
        assert_eq!(b.next_deadline(), None);
    }

    #[test]
    fn closes_before_the_byte_cap_is_passed() {
        let a = app(1);
        let mut b = Batcher::new(settings(100, 1024), 100);
        let now = Instant::now();
        let mut closed = Vec::new();
        for _ in 0..10 {
            closed.extend(b.push(item(&a, 0, 300), now));
        }
        closed.extend(b.drain());
        assert_eq!(closed.iter().map(|c| c.events.len()).sum::<usize>(), 10);
        for c in &closed {
            let body = envelope::body(
                1_700_000_000_000,
                c.events.iter().map(|e| e.json.as_slice()),
            );
            assert!(body.len() <= 1024, "{} bytes", body.len());
            assert!(body.len() <= c.bytes());
        }
        assert!(closed.len() >= 4);
    }

    #[test]
    fn disabled_batching_sends_each_event_alone() {
        let a = app(1);
        let mut b = Batcher::new(
            Batching {
                enabled: false,
                ..settings(100, 1 << 20)
            },
            100,
        );
        let closed = b.push(item(&a, 0, 1), Instant::now());
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].events.len(), 1);
    }

    #[test]
    fn bounds_open_partitions_by_closing_the_oldest() {
        let a = app(3);
        let mut b = Batcher::new(settings(100, 1 << 20), 2);
        let t0 = Instant::now();
        b.push(item(&a, 0, 1), t0);
        b.push(item(&a, 1, 1), t0 + Duration::from_millis(1));
        let closed = b.push(item(&a, 2, 1), t0 + Duration::from_millis(2));
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].endpoint, 0);
        assert_eq!(b.open_count(), 2);
    }
}
