//! hookq's end-to-end suite, one module per area. `support` starts the real
//! services (redis-server, the SQS emulator, HTTP receivers, worker processes).

mod conformance;
mod delivery;
mod memory;
mod redis_queue;
mod sqs_queue;
mod support;
