//! Publishing through `hookq_producer::Producer` over the Redis driver: the
//! publish-rate scenarios (one call per event, or batches of 100; one task or
//! several), and the paced producer of the latency-under-load scenario.

use crate::redis_server::bench_event;
use anyhow::{Context, Result};
use hookq_core::Config;
use hookq_producer::Producer;
use hookq_queue::QueueDriver;
use hookq_queue::redis::RedisQueue;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A producer over a new Redis driver for `config`.
pub async fn producer(config: &Arc<Config>) -> Result<Producer> {
    let queue: Arc<dyn QueueDriver> = Arc::new(
        RedisQueue::connect(&config.queue.redis)
            .await
            .context("connecting the producer's Redis driver")?,
    );
    Ok(Producer::new(queue, config.clone()))
}

/// How one publish-rate run went.
#[derive(Debug, Clone)]
pub struct PublishFigure {
    /// Concurrent tasks.
    pub tasks: usize,
    /// Events per call (1: `publish`; more: `publish_batch`).
    pub batch: usize,
    /// Events enqueued per second.
    pub events_per_sec: f64,
    /// Events enqueued.
    pub events: u64,
    /// Redis commands per call, from `INFO commandstats` (set by the caller).
    pub commands_per_call: f64,
    /// CPU time of the benchmark process (the producer) and of Redis meanwhile.
    pub cpu: (Duration, Duration),
}

/// `tasks` tasks, each publishing `batch` events per call (`publish` when 1)
/// to apps in turn, for `length`.
pub async fn publish_rate(
    producer: &Producer,
    apps: &[String],
    tasks: usize,
    batch: usize,
    length: Duration,
) -> Result<PublishFigure> {
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + length;
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (producer, apps, count) = (producer.clone(), apps.to_vec(), count.clone());
        handles.push(tokio::spawn(async move {
            let mut n = t;
            while Instant::now() < deadline {
                let app = &apps[n % apps.len()];
                n += 1;
                let sent = if batch <= 1 {
                    producer.publish(app, bench_event(n)).await
                } else {
                    let events = (0..batch).map(|i| bench_event(n + i)).collect();
                    producer.publish_batch(app, events).await
                }
                .context("publishing")?;
                count.fetch_add(sent.enqueued as u64, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for h in handles {
        h.await.context("a publishing task")??;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let events = count.load(Ordering::Relaxed);
    Ok(PublishFigure {
        tasks,
        batch,
        events_per_sec: events as f64 / elapsed,
        events,
        commands_per_call: 0.0,
        cpu: (Duration::ZERO, Duration::ZERO),
    })
}

/// Publishes `rate` events per second for `length`: every `tick`, the
/// events due so far, spread over the apps in turn (one `publish_batch` per
/// app and tick), as a server publishing many channels' events would.
pub async fn paced(
    producer: &Producer,
    apps: &[String],
    rate: f64,
    length: Duration,
    tick: Duration,
) -> Result<u64> {
    let start = Instant::now();
    let mut sent: u64 = 0;
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut n = 0usize;
    loop {
        interval.tick().await;
        let elapsed = start.elapsed().min(length);
        let due = (rate * elapsed.as_secs_f64()) as u64;
        let k = due.saturating_sub(sent) as usize;
        let mut by_app: Vec<Vec<hookq_core::Event>> = vec![Vec::new(); apps.len()];
        for _ in 0..k {
            by_app[n % apps.len()].push(bench_event(n));
            n += 1;
        }
        for (app, events) in apps.iter().zip(by_app) {
            if events.is_empty() {
                continue;
            }
            let out = producer
                .publish_batch(app, events)
                .await
                .context("publishing at a steady rate")?;
            sent += out.enqueued as u64;
        }
        if elapsed >= length {
            return Ok(sent);
        }
    }
}
