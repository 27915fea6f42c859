//! hookq's end-to-end suite, one module per area. `support` starts the real
//! services (redis-server, the SQS emulator, HTTP receivers, worker processes).

// A test that cannot set up what it tests should fail loudly, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod adaptive;
mod admin_api;
mod apps_db;
mod cli;
mod conformance;
mod console;
mod delivery;
mod endpoint_health;
mod flap;
mod ingest;
mod lambda;
mod manifests;
mod memory;
mod poison;
mod rate_limit;
mod redis_cluster;
mod redis_faults;
mod redis_queue;
mod redis_sentinel;
mod redis_workers;
mod reload;
mod schema;
mod sqs_queue;
mod sqs_workers;
mod support;
mod worker_faults;
