//! Endpoints: where an app's webhooks go, which events each wants, and how
//! each is retried.
//!
//! An endpoint is one entry of an app's `webhooks` array, compiled once when
//! the config loads (event names to a bit set, `channel_pattern` to a regex).
//! [`EndpointTarget::describe`] is what summaries and logs print: URLs with
//! their user info and query values hidden ([`redact_url`]).
//! Its id is stable while its entry is unchanged: the explicit `id`, or one
//! derived from its position and target, so two entries with the same URL are
//! two endpoints, and a retry job can find its endpoint again after a restart.

use crate::channel::{ChannelTypeFilter, namespace};
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
    /// A short human description for summaries and logs: the URL with its
    /// secrets hidden ([`redact_url`]), or `lambda:<function>[:<qualifier>]`.
    pub fn describe(&self) -> String {
        match self {
            Self::Http(url) => redact_url(url.as_str()),
            Self::Lambda(_) => self.identity(),
        }
    }

    /// What the endpoint's derived id digests: the whole normalised URL
    /// (secrets included; never printed), or the same text as [`Self::describe`] for Lambda.
    fn identity(&self) -> String {
        match self {
            Self::Http(url) => url.to_string(),
            Self::Lambda(l) => match &l.qualifier {
                Some(q) => format!("lambda:{}:{q}", l.function_name),
                None => format!("lambda:{}", l.function_name),
            },
        }
    }
}

/// A URL with what may be a secret hidden, for summaries, logs and error
/// messages: user name and password become `***@`, every query value `***`
/// (the names stay: `?token=***&v=***`; a part without `=` becomes `***`),
/// and a fragment `#***`. Works on text that does not parse as a URL too.
pub fn redact_url(url: &str) -> String {
    let (rest, fragment) = match url.split_once('#') {
        Some((rest, _)) => (rest, true),
        None => (url, false),
    };
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, Some(query)),
        None => (rest, None),
    };
    let start = rest.find("://").map_or(0, |i| i + 3);
    let end = rest[start..].find('/').map_or(rest.len(), |i| start + i);
    let mut out = String::with_capacity(url.len());
    match rest[start..end].rfind('@') {
        Some(at) => {
            out.push_str(&rest[..start]);
            out.push_str("***");
            out.push_str(&rest[start + at..]);
        }
        None => out.push_str(rest),
    }
    if let Some(query) = query {
        out.push('?');
        let parts: Vec<String> = query
            .split('&')
            .map(|part| match part.split_once('=') {
                Some((name, _)) => format!("{name}=***"),
                None if part.is_empty() => String::new(),
                None => "***".to_string(),
            })
            .collect();
        out.push_str(&parts.join("&"));
    }
    if fragment {
        out.push_str("#***");
    }
    out
}

/// The channel conditions of an endpoint; every condition set must hold
/// (Sockudo's `WebhookFilter`, plus `channel_type`).
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
    /// `filter.channel_namespace`: the channel's [`namespace`] must be this one.
    pub channel_namespace: Option<String>,
    /// `filter.channel_namespaces`: the channel's [`namespace`] must be one of these.
    pub channel_namespaces: Option<Vec<String>>,
}

impl Filter {
    /// Whether a channel with this name passes every condition.
    pub fn matches(&self, channel: &str) -> bool {
        let ns = || namespace(channel);
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
            && self
                .channel_namespace
                .as_deref()
                .is_none_or(|want| ns() == Some(want))
            && self
                .channel_namespaces
                .as_ref()
                .is_none_or(|list| list.iter().any(|want| ns() == Some(want.as_str())))
    }

    /// Whether no condition is set.
    pub fn is_empty(&self) -> bool {
        self.channel_type.is_none()
            && self.channel_prefix.is_none()
            && self.channel_suffix.is_none()
            && self.channel_pattern.is_none()
            && self.channel_namespace.is_none()
            && self.channel_namespaces.is_none()
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
    /// `rate_limit`: most requests per second, shared by every worker.
    pub rate_limit: Option<RateLimit>,
    /// `adaptive_concurrency`: the in-flight limit follows the endpoint's
    /// latency, between 1 and `max_concurrency`.
    pub adaptive_concurrency: bool,
    /// Its circuit breaker (`circuit_breaker`, over `webhooks.circuit_breaker`).
    pub circuit_breaker: crate::config::BreakerSettings,
    /// How long it may fail without a success before it is disabled
    /// (`disable_after_ms`, over `webhooks.disable_after_ms`); `None`: never.
    pub disable_after: Option<Duration>,
}

/// A webhook's `rate_limit`: a token bucket that refills at `per_second`
/// tokens a second and holds at most `burst`; each request takes one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// `rate_limit.per_second`: tokens added per second (may be a fraction).
    pub per_second: f64,
    /// `rate_limit.burst`: the most tokens the bucket holds (default 1).
    pub burst: u32,
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
        let digest = Sha256::digest(target.identity().as_bytes());
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
            ..Filter::default()
        };
        assert!(f.matches("presence-room-12-eu"));
        assert!(!f.matches("presence-room-x-eu"));
        assert!(!f.matches("presence-room-12-us"));
        assert!(!f.matches("private-room-12-eu"));
        assert!(Filter::default().matches("anything"));
        assert!(Filter::default().is_empty());
        assert!(!f.is_empty());
    }

    fn pattern(p: &str) -> Filter {
        Filter {
            channel_pattern: Some(regex::Regex::new(p).unwrap()),
            ..Filter::default()
        }
    }

    /// `channel_pattern` is a regex (Rust `regex` syntax, as Sockudo's), searched anywhere in the name.
    #[test]
    fn a_pattern_is_an_unanchored_regex() {
        let cases = [
            ("room", "room", true),
            ("room", "private-room-1", true),
            ("^room", "private-room-1", false),
            ("room$", "private-room", true),
            ("room$", "private-room-1", false),
            (r"^orders-\d+$", "orders-42", true),
            (r"^orders-\d+$", "orders-abc", false),
            (r"^orders-\d+$", "xorders-42", false),
            // Not a glob: `*` repeats the previous character, `.` is any character.
            ("private-*", "privateroom", true),
            ("chat.*", "chatty", true),
            ("a.c", "abc", true),
            ("^(chat|orders):", "orders:1", true),
            ("^(chat|orders):", "invoices:1", false),
            ("(?i)^ROOM", "room-1", true),
            ("^ROOM", "room-1", false),
        ];
        for (p, channel, want) in cases {
            assert_eq!(pattern(p).matches(channel), want, "{p:?} on {channel:?}");
        }
    }

    #[test]
    fn namespace_conditions_compare_the_derived_namespace() {
        let one = |ns: &str| Filter {
            channel_namespace: Some(ns.into()),
            ..Filter::default()
        };
        let any_of = |list: &[&str]| Filter {
            channel_namespaces: Some(list.iter().map(|s| s.to_string()).collect()),
            ..Filter::default()
        };
        let cases: [(Filter, &str, bool); 14] = [
            (one("chat"), "chat:room-1", true),
            (one("chat"), "presence-chat:room-1", true),
            (one("chat"), "private-encrypted-cache-chat:x", true),
            (one("chat"), "orders:123", false),
            (one("chat"), "chat", false),
            (one("chat"), "chatroom", false),
            (one("chat"), "chat-room:1", false),
            (one("Chat"), "chat:1", false),
            (any_of(&["chat", "orders"]), "chat:room-1", true),
            (any_of(&["chat", "orders"]), "private-orders:456", true),
            (any_of(&["chat", "orders"]), "invoices:789", false),
            (any_of(&["chat", "orders"]), "room", false),
            (any_of(&[]), "chat:1", false),
            (
                Filter {
                    channel_prefix: Some("private-".into()),
                    ..one("orders")
                },
                "orders:123",
                false,
            ),
        ];
        for (f, channel, want) in cases {
            assert_eq!(f.matches(channel), want, "{f:?} on {channel:?}");
        }
        // Both set: both must hold.
        let both = Filter {
            channel_namespace: Some("chat".into()),
            ..any_of(&["chat", "orders"])
        };
        assert!(both.matches("chat:1"));
        assert!(!both.matches("orders:1"));
    }

    #[test]
    fn urls_are_described_without_their_secrets() {
        let cases = [
            ("https://a.example/hook", "https://a.example/hook"),
            (
                "https://user:pa55@a.example:8443/hook",
                "https://***@a.example:8443/hook",
            ),
            ("https://token@a.example/", "https://***@a.example/"),
            (
                "https://a.example/hook?token=s3cret&v=2",
                "https://a.example/hook?token=***&v=***",
            ),
            ("https://a.example/?s3cret", "https://a.example/?***"),
            ("https://a.example/?a=&b", "https://a.example/?a=***&***"),
            ("https://a.example/h#frag", "https://a.example/h#***"),
            (
                "https://u:p@a.example/p@th?k=v@x#f",
                "https://***@a.example/p@th?k=***#***",
            ),
            // Text that is not a URL is redacted the same way.
            ("user:pw@host/x?key=1", "***@host/x?key=***"),
            ("/relative/path", "/relative/path"),
        ];
        for (url, want) in cases {
            assert_eq!(redact_url(url), want, "{url}");
        }
        let target =
            EndpointTarget::Http("https://u:p@a.example/hook?token=s3cret".parse().unwrap());
        assert_eq!(target.describe(), "https://***@a.example/hook?token=***");
    }

    /// Redaction changes only what is printed: a derived id still digests the whole URL.
    #[test]
    fn derived_ids_digest_the_whole_url() {
        // The id docs/configuration.md gives for Sockudo's reference example.
        let plain = EndpointTarget::Http("https://api.example.com/sockudo/events".parse().unwrap());
        assert_eq!(Endpoint::derived_id(0, &plain), "0-3f7feea5");
        let a = EndpointTarget::Http("https://a.example/hook?token=1".parse().unwrap());
        let b = EndpointTarget::Http("https://a.example/hook?token=2".parse().unwrap());
        assert_eq!(a.describe(), b.describe());
        assert_ne!(Endpoint::derived_id(0, &a), Endpoint::derived_id(0, &b));
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
