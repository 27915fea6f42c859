//! Helpers over any queue driver: open the one a config names, receive until
//! enough came, drain with acks until the queue is quiet, and wait until
//! workers have emptied it.

use hookq_core::config::QueueDriverKind;
use hookq_core::{Config, DeadLetter};
use hookq_producer::Producer;
use hookq_queue::redis::RedisQueue;
use hookq_queue::sqs::SqsQueue;
use hookq_queue::{
    DeadLetters, Depth, DlqFilter, Handle, MemoryQueue, QueueConsume, QueueDriver, Received,
};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A test config as hookq reads it; panics when it is invalid.
pub fn parse(config: &Value) -> Config {
    Config::parse(&config.to_string(), |_| None)
        .expect("test config is valid")
        .0
}

/// The driver `queue.driver` names, on its settings in `config`.
pub async fn open(config: &Config) -> Arc<dyn QueueDriver> {
    let q = &config.queue;
    match q.driver {
        QueueDriverKind::Memory => Arc::new(MemoryQueue::from_settings(&q.memory)),
        QueueDriverKind::Redis => Arc::new(
            RedisQueue::connect(&q.redis)
                .await
                .expect("connect never contacts Redis, so only a bad URL fails"),
        ),
        QueueDriverKind::Sqs => Arc::new(SqsQueue::connect(&q.sqs).await.expect("connect to SQS")),
    }
}

/// A producer on the queue a test config names (apps from its `app_manager`
/// array), and that queue.
pub async fn producer(config: &Value) -> (Producer, Arc<dyn QueueDriver>) {
    let config = parse(config);
    let queue = open(&config).await;
    (Producer::new(queue.clone(), Arc::new(config)), queue)
}

/// The handles of these messages, for ack and extend.
pub fn handles(got: &[Received]) -> Vec<Handle> {
    got.iter().map(|r| r.handle.clone()).collect()
}

/// Receives (without acking) until `n` messages came or `limit` passed; each
/// receive waits up to 500 ms.
pub async fn receive_n<Q: QueueConsume + ?Sized>(
    q: &Q,
    n: usize,
    limit: Duration,
) -> Vec<Received> {
    let start = Instant::now();
    let mut got = Vec::new();
    while got.len() < n && start.elapsed() < limit {
        let more = q.receive(n - got.len(), Duration::from_millis(500)).await;
        got.extend(more.expect("receive"));
    }
    got
}

/// How [`drain`] receives and when it stops.
#[derive(Clone, Copy, Debug)]
pub struct Drain {
    /// The most one receive asks for.
    pub max: usize,
    /// How long one receive waits for a first message.
    pub wait: Duration,
    /// Stop once this many messages came.
    pub until: usize,
    /// Stop after this many empty receives in a row…
    pub quiet_rounds: usize,
    /// …counting only those that end this long after the drain started
    /// (messages not due before then are still awaited).
    pub quiet_after: Duration,
    /// Stop after this long whatever came.
    pub limit: Duration,
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            max: 10,
            wait: Duration::from_millis(500),
            until: usize::MAX,
            quiet_rounds: 3,
            quiet_after: Duration::ZERO,
            limit: Duration::from_secs(30),
        }
    }
}

/// One message a [`drain`] received (and acked), with when its receive returned.
#[derive(Debug)]
pub struct Drained {
    pub msg: Received,
    pub at: Instant,
}

/// Receives and acks each batch at once, as a worker that always succeeds
/// would, until what `how` names stops it.
pub async fn drain<Q: QueueConsume + ?Sized>(q: &Q, how: Drain) -> Vec<Drained> {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut empty = 0;
    while got.len() < how.until && empty < how.quiet_rounds && start.elapsed() < how.limit {
        let max = how.max.min(how.until - got.len());
        let batch = q.receive(max, how.wait).await.expect("receive");
        let at = Instant::now();
        if batch.is_empty() {
            if start.elapsed() >= how.quiet_after {
                empty += 1;
            }
            continue;
        }
        empty = 0;
        q.ack(&handles(&batch)).await.expect("ack");
        got.extend(batch.into_iter().map(|msg| Drained { msg, at }));
    }
    got
}

/// Drains `queues` (handles on one queue, or drivers sharing one) at once,
/// a task each; returns what they all received.
pub async fn drain_together<Q: QueueConsume + ?Sized>(
    queues: Vec<Arc<Q>>,
    how: Drain,
) -> Vec<Drained> {
    let tasks: Vec<_> = queues
        .into_iter()
        .map(|q| tokio::spawn(async move { drain(&*q, how).await }))
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("a drain task"));
    }
    all
}

/// `got` holds `n` distinct bodies, none twice; `what` names them in failures.
#[track_caller]
pub fn assert_each_once(got: &[Drained], n: usize, what: &str) {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for d in got {
        *counts.entry(d.msg.body.as_str()).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).collect();
    assert!(
        twice.is_empty(),
        "{what} received more than once: {twice:?}"
    );
    assert_eq!(counts.len(), n, "every one of {n} {what} received");
}

/// Waits until the DLQ holds `n` entries or more; returns them.
pub async fn wait_dlq<Q: DeadLetters + ?Sized>(
    q: &Q,
    n: usize,
    limit: Duration,
) -> Vec<DeadLetter> {
    let start = Instant::now();
    loop {
        let dlq = q.dlq_list(&DlqFilter::default()).await.expect("dlq list");
        if dlq.len() >= n {
            return dlq;
        }
        assert!(
            start.elapsed() < limit,
            "timed out waiting for {n} DLQ entries; have {dlq:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Checks one DLQ entry: its reason contains `reason`, it took `attempts`
/// attempts, and its last status is `status`.
#[track_caller]
pub fn assert_dead_letter(entry: &DeadLetter, reason: &str, attempts: u32, status: Option<u16>) {
    assert!(
        entry.reason.contains(reason),
        "reason {:?} lacks {reason:?}: {entry:?}",
        entry.reason
    );
    assert_eq!(entry.attempts, attempts, "attempts: {entry:?}");
    assert_eq!(entry.last_status, status, "last status: {entry:?}");
}

/// The one entry of `dlq`, checked as [`assert_dead_letter`] does.
#[track_caller]
pub fn assert_one_dead_letter<'a>(
    dlq: &'a [DeadLetter],
    reason: &str,
    attempts: u32,
    status: Option<u16>,
) -> &'a DeadLetter {
    let [entry] = dlq else {
        panic!("one DLQ entry: {dlq:?}")
    };
    assert_dead_letter(entry, reason, attempts, status);
    entry
}

/// Waits until nothing is ready, delayed or held; returns the depth then.
pub async fn wait_drained<Q: DeadLetters + ?Sized>(q: &Q, limit: Duration) -> Depth {
    let start = Instant::now();
    loop {
        let d = q.depth().await.expect("depth");
        if d.ready + d.delayed + d.held == 0 {
            return d;
        }
        assert!(
            start.elapsed() < limit,
            "queue not drained after {limit:?}: {d:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every event's `data` in a job's text (an event job's one, a retry job's
/// several), e.g. of a dead-letter entry.
pub fn job_data(job: &str) -> Vec<String> {
    let job: Value = serde_json::from_str(job).unwrap();
    let events = match job["kind"].as_str() {
        Some("event") => vec![job["event"].clone()],
        _ => job["events"].as_array().cloned().unwrap_or_default(),
    };
    events
        .iter()
        .map(|e| e["data"].as_str().unwrap().to_string())
        .collect()
}
