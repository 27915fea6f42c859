//! A worker running inside the test process over the queue its config names
//! (memory unless it names another), with a producer on the same queue.

use super::queue::{open, parse, wait_dlq, wait_drained};
use hookq_core::{Config, DeadLetter, Event};
use hookq_producer::Producer;
use hookq_queue::{DlqFilter, QueueDriver};
use hookq_worker::{Metrics, Worker};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A config with these apps and `webhooks` settings (merged over fast test defaults).
pub fn config(apps: Value, webhooks: Value) -> Value {
    let mut settings = json!({
        "batching": {"enabled": true, "duration": 50},
        "retry": {"initial_backoff_ms": 100, "max_backoff_ms": 400, "max_elapsed_time_ms": 20000},
        "request_timeout_ms": 5000
    });
    if let (Some(base), Some(extra)) = (settings.as_object_mut(), webhooks.as_object()) {
        for (k, v) in extra {
            base.insert(k.clone(), v.clone());
        }
    }
    json!({
        "app_manager": {"driver": "memory", "array": {"apps": apps}},
        "webhooks": settings,
        "worker": {"shutdown_timeout_ms": 5000}
    })
}

/// One app `app-1` (key `key-1`, secret `secret-1`) with these webhooks.
pub fn one_app(webhooks: Value) -> Value {
    json!([{"id": "app-1", "key": "key-1", "secret": "secret-1", "webhooks": webhooks}])
}

pub struct InProc {
    pub queue: Arc<dyn QueueDriver>,
    pub producer: Producer,
    pub metrics: Arc<Metrics>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl InProc {
    /// Starts a worker on `config` and on the queue it names (by default, memory).
    pub async fn start(config: Value) -> InProc {
        let config = parse(&config);
        let queue = open(&config).await;
        Self::start_on(Arc::new(config), queue).await
    }

    pub async fn start_on(config: Arc<Config>, queue: Arc<dyn QueueDriver>) -> InProc {
        let metrics = Arc::new(Metrics::new());
        let worker = Worker::new(config.clone(), queue.clone(), metrics.clone()).unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(worker.run(stop.clone()));
        InProc {
            producer: Producer::new(queue.clone(), config),
            queue,
            metrics,
            stop,
            task,
        }
    }

    /// Stops the worker the way SIGTERM does and waits for it.
    pub async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("worker stops within 15 s")
            .unwrap()
            .unwrap();
    }

    /// Publishes `events` for `app-1`, the app of [`one_app`].
    pub async fn publish(&self, events: Vec<Event>) {
        self.producer.publish_batch("app-1", events).await.unwrap();
    }

    pub async fn dlq(&self) -> Vec<DeadLetter> {
        self.queue.dlq_list(&DlqFilter::default()).await.unwrap()
    }

    /// Waits until the DLQ holds `n` entries.
    pub async fn wait_dlq(&self, n: usize, limit: Duration) -> Vec<DeadLetter> {
        wait_dlq(&*self.queue, n, limit).await
    }

    /// Waits until nothing is ready, delayed or held.
    pub async fn wait_idle(&self, limit: Duration) {
        wait_drained(&*self.queue, limit).await;
    }
}
