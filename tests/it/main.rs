//! hookq's end-to-end suite, one module per area. `support` starts the real
//! services (redis-server, the SQS emulator, HTTP receivers, worker processes).

mod cli;
mod conformance;
mod delivery;
mod lambda;
mod memory;
mod redis_queue;
mod schema;
mod sqs_queue;
mod support;
