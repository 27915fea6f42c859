//! Prometheus metrics of the ingest: requests by outcome, events accepted
//! and skipped, and how long the durable push took.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Label = [(&'static str, &'static str); 1];

/// Every metric the ingest exports, under `hookq_ingest_`.
pub struct IngestMetrics {
    registry: Registry,
    /// Requests answered, by outcome (`accepted`, `duplicate`, `unauthorized`,
    /// `bad_request`, `too_large`, `timeout`, `unavailable`).
    pub requests: Family<Label, Counter>,
    /// Events by what became of them (`accepted`: enqueued; `skipped`: no
    /// endpoint wants them; `duplicate`: a re-sent body's, not enqueued again).
    pub events: Family<Label, Counter>,
    /// Seconds per durable push (one per accepted request).
    pub push_seconds: Histogram,
}

impl IngestMetrics {
    /// A fresh set, registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("hookq_ingest");
        let requests = Family::<Label, Counter>::default();
        let events = Family::<Label, Counter>::default();
        let push_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register(
            "requests",
            "Requests answered, by outcome",
            requests.clone(),
        );
        registry.register("events", "Events received, by result", events.clone());
        registry.register(
            "push_seconds",
            "Seconds per durable push of a request's jobs",
            push_seconds.clone(),
        );
        Self {
            registry,
            requests,
            events,
            push_seconds,
        }
    }

    /// Counts a request's outcome.
    pub fn request(&self, outcome: &'static str) {
        self.requests.get_or_create(&[("outcome", outcome)]).inc();
    }

    /// Counts `n` events with `result`.
    pub fn events(&self, result: &'static str, n: usize) {
        if n > 0 {
            self.events
                .get_or_create(&[("result", result)])
                .inc_by(n as u64);
        }
    }

    /// The registry, for an admin server that serves these beside its own.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

impl Default for IngestMetrics {
    fn default() -> Self {
        Self::new()
    }
}
