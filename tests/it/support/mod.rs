//! Services the suite starts for itself, each on a free loopback port, and
//! workers run in-process over them.

pub mod black_hole;
pub mod counting_proxy;
pub mod inproc;
pub mod lambda_server;
pub mod mariadb;
pub mod moto;
pub mod postgres;
pub mod process;
pub mod receiver;
pub mod redis_server;
pub mod sender;
