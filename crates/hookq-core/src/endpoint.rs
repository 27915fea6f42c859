//! Endpoints: where an app's webhooks go, which events each wants, and how
//! each is retried.
//!
//! An endpoint is one entry of an app's `webhooks` array, compiled once when
//! the config loads (event names to a bit set, `channel_pattern` to a regex).
//! Its id is stable while its entry is unchanged: the explicit `id`, or one
//! derived from its position and target, so two entries with the same URL are
//! two endpoints, and a retry job can find its endpoint again after a restart.

use crate::channel::ChannelTypeFilter;
use crate::event::{Event, EventName};
use crate::retry::RetryPolicy;
use crate::sign::SigningSecret;
use sha2::{Digest, Sha256};
use std::time::Duration;

/// How a Lambda function is invoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvocationType {
    /// Asynchronous; Lambda queues the event (payload limit 256 KiB).
    Event,
    /// Synchronous; the function's result and errors come back (payload limit 6 MiB).
    RequestResponse,
}

impl InvocationType {
    /// The `X-Amz-Invocation-Type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Event => "Event",
            Self::RequestResponse => "RequestResponse",
        }
    }

    /// The largest payload Lambda accepts for this invocation type.
    pub fn payload_limit(self) -> usize {
        match self {
            Self::Event => 256 * 1024,
            Self::RequestResponse => 6 * 1024 * 1024,
        }
    }
}

/// An AWS Lambda function to invoke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LambdaTarget {
    /// The function's name or ARN.
    pub function_name: String,
    /// Event (default) or RequestResponse.
    pub invocation_type: InvocationType,
    /// A version or alias.
    pub qualifier: Option<String>,
    /// The region; the SDK's default chain decides when absent.
    pub region: Option<String>,
    /// A custom Lambda endpoint (an emulator, LocalStack).
    pub endpoint_url: Option<String>,
}

/// Where an endpoint's requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointTarget {
    /// An HTTP(S) URL that receives POSTs.
    Http(url::Url),
    /// A Lambda function.
    Lambda(LambdaTarget),
}

impl EndpointTarget {
    /// A short human description: the URL or `lambda:<function>[:<qualifier>]`.
    pub fn describe(&self) -> String {
        match self {
            Self::Http(url) => url.to_string(),
            Self::Lambda(l) => match &l.qualifier {
                Some(q) => format!("lambda:{}:{q}", l.function_name),
                None => format!("lambda:{}", l.function_name),
            },
        }
    }
}

/// The channel conditions of an endpoint; every condition set must hold.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// `filter.channel_type`.
    pub channel_type: Option<ChannelTypeFilter>,
    /// `filter.channel_prefix`.
    pub channel_prefix: Option<String>,
    /// `filter.channel_suffix`.
    pub channel_suffix: Option<String>,
    /// `filter.channel_pattern`, a regex searched anywhere in the name (anchor it with `^…$`).
    pub channel_pattern: Option<regex::Regex>,
}

impl Filter {
    /// Whether a channel with this name passes every condition.
    pub fn matches(&self, channel: &str) -> bool {
        self.channel_type.is_none_or(|t| t.matches(channel))
            && self
                .channel_prefix
                .as_deref()
                .is_none_or(|p| channel.starts_with(p))
            && self
                .channel_suffix
                .as_deref()
                .is_none_or(|s| channel.ends_with(s))
            && self
                .channel_pattern
                .as_ref()
                .is_none_or(|r| r.is_match(channel))
    }

    /// Whether no condition is set.
    pub fn is_empty(&self) -> bool {
        self.channel_type.is_none()
            && self.channel_prefix.is_none()
            && self.channel_suffix.is_none()
            && self.channel_pattern.is_none()
    }
}

/// One compiled webhook endpoint of an app.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Stable id (see the module docs).
    pub id: String,
    /// Where requests go.
    pub target: EndpointTarget,
    /// The event names it wants, as a bit set of [`EventName::bit`].
    pub event_types: u8,
    /// Channel conditions.
    pub filter: Filter,
    /// Custom headers, sent after hookq's own; they cannot replace the signature headers.
    pub headers: Vec<(String, String)>,
    /// The retry schedule.
    pub retry: RetryPolicy,
    /// Time allowed for one request (connect included).
    pub request_timeout: Duration,
    /// Standard Webhooks secrets; empty means no `webhook-signature` header.
    pub signing_secrets: Vec<SigningSecret>,
    /// How many requests may be in flight to this endpoint at once.
    pub max_concurrency: usize,
}

impl Endpoint {
    /// Whether this endpoint wants the event: its name is subscribed and its channel passes the filter.
    pub fn wants(&self, event: &Event) -> bool {
        self.event_types & event.name.bit() != 0 && self.filter.matches(&event.channel)
    }

    /// The subscribed event names, in docs order.
    pub fn event_names(&self) -> Vec<EventName> {
        EventName::ALL
            .into_iter()
            .filter(|n| self.event_types & n.bit() != 0)
            .collect()
    }

    /// The id an entry gets without an explicit `id`: its position and a digest of its target.
    pub fn derived_id(index: usize, target: &EndpointTarget) -> String {
        let digest = Sha256::digest(target.describe().as_bytes());
        format!("{index}-{}", hex::encode(&digest[..4]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::ChannelType;

    #[test]
    fn every_filter_condition_must_hold() {
        let f = Filter {
            channel_type: Some(ChannelTypeFilter::Kind(ChannelType::Presence)),
            channel_prefix: Some("presence-room-".into()),
            channel_suffix: Some("-eu".into()),
            channel_pattern: Some(regex::Regex::new(r"^presence-room-\d+-eu$").unwrap()),
        };
        assert!(f.matches("presence-room-12-eu"));
        assert!(!f.matches("presence-room-x-eu"));
        assert!(!f.matches("presence-room-12-us"));
        assert!(!f.matches("private-room-12-eu"));
        assert!(Filter::default().matches("anything"));
    }

    #[test]
    fn derived_ids_differ_by_position_and_target() {
        let a = EndpointTarget::Http("https://a.example/hook".parse().unwrap());
        let b = EndpointTarget::Http("https://b.example/hook".parse().unwrap());
        assert_eq!(Endpoint::derived_id(0, &a), Endpoint::derived_id(0, &a));
        assert_ne!(Endpoint::derived_id(0, &a), Endpoint::derived_id(1, &a));
        assert_ne!(Endpoint::derived_id(0, &a), Endpoint::derived_id(0, &b));
    }
}
