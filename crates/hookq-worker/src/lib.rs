//! hookq's worker: takes webhook jobs off the queue, batches them per app and
//! endpoint, delivers them over HTTP (Pusher-signed) or to AWS Lambda, retries
//! with durable backoff, and dead-letters what cannot be delivered.
//!
//! Start at [`worker`] for the pipeline; [`decide`] holds its decisions as
//! values (what a message becomes, what follows an attempt); [`batch`] forms batches, [`deliver`]
//! sends them ([`http`], and `lambda` behind the feature of that name),
//! [`outcome`] classifies answers, [`settle`] tracks jobs until they are
//! acked, [`lane`] keeps each endpoint's concurrency limit and pace, [`health`] its circuit breaker and whether it is disabled. [`admin`] serves metrics, probes and the admin API ([`stats`] keeps its per-endpoint figures); [`queue`] opens the configured
//! queue driver. The `hookq` binary that runs all this is the `hookq` crate.

pub mod admin;
pub mod batch;
pub mod decide;
pub mod deliver;
pub mod flap;
pub mod health;
pub mod http;
#[cfg(feature = "lambda")]
pub mod lambda;
pub mod lane;
pub mod metrics;
pub mod outcome;
pub mod queue;
pub mod settle;
pub mod stats;
pub mod worker;

pub use metrics::Metrics;
pub use worker::Worker;
