//! hookq's end-to-end suite lives in `it/`. This library holds what the
//! suite shares with the benchmark (`crates/hookq-bench`): the private
//! `redis-server` harness.

pub mod redis_server;
