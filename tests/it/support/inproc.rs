//! A worker running inside the test process over a memory queue, with a
//! producer on the same queue.

use hookq_core::{Config, DeadLetter};
use hookq_producer::Producer;
use hookq_queue::{DlqFilter, MemoryQueue, QueueDriver};
use hookq_worker::{Metrics, Worker};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
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
    pub async fn start(config: Value) -> InProc {
        let (config, _) =
            Config::parse(&config.to_string(), |_| None).expect("test config is valid");
        let config = Arc::new(config);
        let queue: Arc<dyn QueueDriver> =
            Arc::new(MemoryQueue::from_settings(&config.queue.memory));
        Self::start_on(config, queue).await
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

    pub async fn dlq(&self) -> Vec<DeadLetter> {
        self.queue.dlq_list(&DlqFilter::default()).await.unwrap()
    }

    /// Waits until the DLQ holds `n` entries.
    pub async fn wait_dlq(&self, n: usize, limit: Duration) -> Vec<DeadLetter> {
        let start = Instant::now();
        loop {
            let dlq = self.dlq().await;
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

    /// Waits until nothing is ready, delayed or held.
    pub async fn wait_idle(&self, limit: Duration) {
        let start = Instant::now();
        loop {
            let d = self.queue.depth().await.unwrap();
            if d.ready + d.delayed + d.held == 0 {
                return;
            }
            assert!(
                start.elapsed() < limit,
                "queue not drained after {limit:?}: {d:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}
