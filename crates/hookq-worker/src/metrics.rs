//! Prometheus metrics of a worker, served at `/metrics` by [`crate::admin`].
//!
//! Counters move as work happens; the gauges of held jobs and queue depth are
//! read when scraped, so an idle worker issues no queue command for them
//! between scrapes.

use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Label = [(&'static str, &'static str); 1];

/// Every metric a worker exports.
pub struct Metrics {
    registry: Registry,
    /// Jobs received from the queue.
    pub jobs_received: Counter,
    /// Events delivered (counted per endpoint).
    pub events_delivered: Counter,
    /// Delivery attempts by outcome (`delivered`, `retry`, `reject`).
    pub requests: Family<Label, Counter>,
    /// Retry jobs pushed.
    pub retries_scheduled: Counter,
    /// Dead-letter entries written, by reason.
    pub dead_lettered: Family<Label, Counter>,
    /// Events received that no endpoint wanted.
    pub events_skipped: Counter,
    /// Batches handed over to a deferred job because their endpoint was
    /// busy, by reason (`share`, `pace`).
    pub deferrals: Family<Label, Counter>,
    /// Jobs whose hold was found gone (taken by another worker after it
    /// expired) when extending, settling a failure, or acking.
    pub holds_lost: Counter,
    /// Events per request.
    pub batch_size: Histogram,
    /// Seconds per delivery attempt.
    pub delivery_seconds: Histogram,
    /// Seconds from enqueue to delivery, per event job delivered.
    pub end_to_end_seconds: Histogram,
    /// Jobs held by this worker (read at scrape).
    pub jobs_held: Gauge,
    /// Messages in the queue by state (read at scrape).
    pub queue_depth: Family<Label, Gauge>,
    /// Flap suppression steps, by `step` (`held`, `suppressed`) and `event`.
    pub flaps: Family<Labels2, Counter>,
    /// The in-flight limit of each endpoint with adaptive concurrency.
    pub concurrency_limit: Family<EndpointLabel, Gauge>,
    /// Endpoint health: circuits, transitions, disabled endpoints.
    pub health: HealthMetrics,
}

type Labels2 = [(&'static str, &'static str); 2];
/// An endpoint's labels: its app id and endpoint id.
pub type EndpointLabel = [(&'static str, String); 2];

impl Metrics {
    /// A fresh set, registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("hookq");
        let m = Self {
            jobs_received: Counter::default(),
            events_delivered: Counter::default(),
            requests: Family::default(),
            retries_scheduled: Counter::default(),
            dead_lettered: Family::default(),
            events_skipped: Counter::default(),
            deferrals: Family::default(),
            holds_lost: Counter::default(),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            delivery_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            end_to_end_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 20)),
            jobs_held: Gauge::default(),
            queue_depth: Family::default(),
            flaps: Family::default(),
            concurrency_limit: Family::default(),
            health: HealthMetrics::default(),
            registry: Registry::default(),
        };
        registry.register(
            "jobs_received",
            "Jobs received from the queue",
            m.jobs_received.clone(),
        );
        registry.register(
            "events_delivered",
            "Events delivered, counted per endpoint",
            m.events_delivered.clone(),
        );
        registry.register(
            "requests",
            "Delivery attempts by outcome",
            m.requests.clone(),
        );
        registry.register(
            "retries_scheduled",
            "Retry jobs pushed",
            m.retries_scheduled.clone(),
        );
        registry.register(
            "dead_lettered",
            "Dead-letter entries written, by reason",
            m.dead_lettered.clone(),
        );
        registry.register(
            "events_skipped",
            "Events no endpoint wanted",
            m.events_skipped.clone(),
        );
        registry.register(
            "deferred",
            "Batches handed over to a deferred job for their endpoint, which was busy, by reason",
            m.deferrals.clone(),
        );
        registry.register(
            "holds_lost",
            "Jobs whose hold was gone (taken by another worker after it expired) when extended, settled or acked",
            m.holds_lost.clone(),
        );
        registry.register("batch_size", "Events per request", m.batch_size.clone());
        registry.register(
            "delivery_seconds",
            "Seconds per delivery attempt",
            m.delivery_seconds.clone(),
        );
        registry.register(
            "end_to_end_seconds",
            "Seconds from enqueue to delivery of an event job",
            m.end_to_end_seconds.clone(),
        );
        registry.register("jobs_held", "Jobs held by this worker", m.jobs_held.clone());
        registry.register(
            "queue_depth",
            "Messages in the queue by state",
            m.queue_depth.clone(),
        );
        registry.register(
            "flap",
            "Flap suppression (webhooks.vacate_delay_ms): vacates and leaves held, events suppressed",
            m.flaps.clone(),
        );
        registry.register(
            "endpoint_concurrency_limit",
            "The in-flight limit of each endpoint with adaptive concurrency",
            m.concurrency_limit.clone(),
        );
        m.health.register(&mut registry);
        Self { registry, ..m }
    }

    /// Counts a delivery attempt's outcome.
    pub fn request(&self, outcome: &'static str) {
        self.requests.get_or_create(&[("outcome", outcome)]).inc();
    }

    /// Counts `n` dead-letter entries.
    pub fn dead_letters(&self, reason: &'static str, n: usize) {
        self.dead_lettered
            .get_or_create(&[("reason", reason)])
            .inc_by(n as u64);
    }

    /// Counts a batch handed over to a deferred job.
    pub fn defer(&self, reason: &'static str) {
        self.deferrals.get_or_create(&[("reason", reason)]).inc();
    }

    /// Counts a flap suppression step.
    pub fn flap(&self, step: &'static str, event: &'static str) {
        self.flaps
            .get_or_create(&[("step", step), ("event", event)])
            .inc();
    }

    /// Sets the queue depth gauges.
    pub fn set_depth(&self, d: &hookq_queue::Depth) {
        for (state, n) in [
            ("ready", d.ready),
            ("delayed", d.delayed),
            ("held", d.held),
            ("dead", d.dead),
        ] {
            self.queue_depth
                .get_or_create(&[("state", state)])
                .set(n as i64);
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        self.render_with(None)
    }

    /// The text exposition format, with the metrics of `also` (an
    /// in-process ingest's) after the worker's.
    pub fn render_with(&self, also: Option<&Registry>) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode_registry(&mut out, &self.registry);
        if let Some(registry) = also {
            let _ = encode_registry(&mut out, registry);
        }
        let _ = encode_eof(&mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The labels of one endpoint's series: `app_id`, `endpoint`.
pub type EndpointLabels = [(&'static str, String); 2];

/// Endpoint health metrics ([`crate::health`]).
#[derive(Default)]
pub struct HealthMetrics {
    /// Each endpoint's circuit as this worker last learnt it: 0 closed, 1
    /// open, 2 half-open (open, its probe due or on its way), 3 disabled.
    /// Kept for the endpoints this worker delivered to lately (the series
    /// of one idle for 10 minutes is dropped), so it is bounded by the
    /// endpoints in use.
    pub circuit_state: Family<EndpointLabels, Gauge>,
    /// Transitions this worker made, by the state entered (`open`,
    /// `closed`, `disabled`); each is made by one worker, so the sum over
    /// workers counts each once.
    pub transitions: Family<Label, Counter>,
    /// Endpoints disabled (on Redis: all of them, read every 10 s; on other
    /// queues: those this worker disabled or learnt of).
    pub endpoints_disabled: Gauge,
    /// Endpoints whose circuit is open or half-open, of those this worker
    /// delivered to lately (always exported, unlike the per-endpoint
    /// series, so an alert rule can rely on it).
    pub endpoints_open: Gauge,
}

impl HealthMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "endpoint_circuit_state",
            "Circuit of an endpoint: 0 closed, 1 open, 2 half-open, 3 disabled",
            self.circuit_state.clone(),
        );
        registry.register(
            "endpoint_transitions",
            "Circuit transitions made by this worker, by the state entered",
            self.transitions.clone(),
        );
        registry.register(
            "endpoints_open",
            "Endpoints whose circuit is open or half-open, among those this worker delivered to lately",
            self.endpoints_open.clone(),
        );
        registry.register(
            "endpoints_disabled",
            "Endpoints disabled for failing continuously",
            self.endpoints_disabled.clone(),
        );
    }

    /// The labels of endpoint `endpoint` of app `app_id`.
    pub fn labels(app_id: &str, endpoint: &str) -> EndpointLabels {
        [
            ("app_id", app_id.to_string()),
            ("endpoint", endpoint.to_string()),
        ]
    }

    /// Counts a transition into `to`.
    pub fn transition(&self, to: &'static str) {
        self.transitions.get_or_create(&[("to", to)]).inc();
    }
}
