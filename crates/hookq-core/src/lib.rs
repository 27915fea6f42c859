//! Domain types and pure logic for hookq, with no I/O.
//!
//! A webhook's life starts as an [`Event`] published for an app. The producer
//! wraps it in a [`Job`] (the queue's wire format), the worker decodes the job,
//! finds the app's [`Endpoint`]s whose filters want it, batches events per
//! endpoint, and turns each batch into a signed Pusher [`envelope`]. When a
//! delivery fails, the [`retry`] schedule decides when to try again. All of it
//! is driven by the [`Config`], read from Sockudo's `config.json` shape.

pub mod channel;
pub mod config;
pub mod endpoint;
pub mod envelope;
pub mod event;
pub mod job;
pub mod jsonc;
pub mod registry;
pub mod retry;
pub mod sign;

pub use channel::ChannelType;
pub use config::{
    App, AppManagerSettings, Config, ConfigError, Diagnostics, DynamoDbAppsSettings,
    SqlAppsSettings, app_from_record,
};
pub use endpoint::{Endpoint, EndpointTarget, Filter, InvocationType, LambdaTarget};
pub use event::{Event, EventError, EventName};
pub use job::{DeadLetter, Job, JobError, RetryJob};
pub use registry::{AppRegistry, LookupError, StaticApps};
pub use retry::RetryPolicy;

/// Milliseconds since the Unix epoch, the unit every timestamp in hookq uses.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A fresh unique id with a readable prefix, sortable by creation time (UUID v7).
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}
