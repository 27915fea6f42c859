//! Services the suite starts for itself, each on a free loopback port.

pub mod moto;
pub mod redis_server;
