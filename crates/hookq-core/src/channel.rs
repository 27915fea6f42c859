//! Channel types, decided by the channel name's prefix as in the Pusher protocol.
//!
//! `presence-`, `private-encrypted-` and `private-` name the authenticated kinds;
//! each has a cache form (`presence-cache-`, `private-encrypted-cache-`,
//! `private-cache-`) and public channels have one too (`cache-`). Everything
//! else is public. A cache channel has both its kind and the cache flag, so a
//! filter on `private` matches `private-cache-x` and a filter on `cache` does too.
//!
//! A channel's [`namespace`] is the part of its name, after the type prefix,
//! before the first `:` (Sockudo's channel namespaces).

use std::fmt;

/// The kind of a channel, from its name. See the module docs for the prefixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelType {
    /// No recognised prefix (or `cache-`).
    Public,
    /// `private-` or `private-cache-`, but not `private-encrypted-`.
    Private,
    /// `private-encrypted-` or `private-encrypted-cache-`.
    PrivateEncrypted,
    /// `presence-` or `presence-cache-`.
    Presence,
}

impl ChannelType {
    /// The channel's kind, from its name.
    pub fn of(channel: &str) -> Self {
        if channel.starts_with("presence-") {
            Self::Presence
        } else if channel.starts_with("private-encrypted-") {
            Self::PrivateEncrypted
        } else if channel.starts_with("private-") {
            Self::Private
        } else {
            Self::Public
        }
    }

    /// The name used in config files and docs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::Private => "private",
            Self::PrivateEncrypted => "private-encrypted",
            Self::Presence => "presence",
        }
    }
}

impl fmt::Display for ChannelType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether the channel is a cache channel (any of the four cache prefixes).
pub fn is_cache(channel: &str) -> bool {
    [
        "cache-",
        "private-cache-",
        "private-encrypted-cache-",
        "presence-cache-",
    ]
    .iter()
    .any(|p| channel.starts_with(p))
}

/// The channel's namespace, as Sockudo derives it: the type prefix taken off
/// (the first of these that it starts with: `private-encrypted-cache-`, `private-cache-`,
/// `presence-cache-`, `cache-`, `private-encrypted-`, `presence-`,
/// `private-`), then the text before the first `:`. `None` when there is no
/// `:` or nothing before it: `presence-chat:room-1` is in `chat`, `chat` and
/// `:room` are in none.
pub fn namespace(channel: &str) -> Option<&str> {
    let logical = [
        "private-encrypted-cache-",
        "private-cache-",
        "presence-cache-",
        "cache-",
        "private-encrypted-",
        "presence-",
        "private-",
    ]
    .iter()
    .find_map(|p| channel.strip_prefix(p))
    .unwrap_or(channel);
    let (namespace, _) = logical.split_once(':')?;
    (!namespace.is_empty()).then_some(namespace)
}

/// What a `filter.channel_type` value matches: a channel kind, or any cache channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelTypeFilter {
    /// Channels of this kind, cache form or not.
    Kind(ChannelType),
    /// Any cache channel, whatever its kind.
    Cache,
}

impl ChannelTypeFilter {
    /// Every value a config may use, for error messages and docs.
    pub const NAMES: &'static [&'static str] = &[
        "public",
        "private",
        "private-encrypted",
        "presence",
        "cache",
    ];

    /// Parses a config value; `None` when it is not one of [`Self::NAMES`].
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "public" => Self::Kind(ChannelType::Public),
            "private" => Self::Kind(ChannelType::Private),
            "private-encrypted" => Self::Kind(ChannelType::PrivateEncrypted),
            "presence" => Self::Kind(ChannelType::Presence),
            "cache" => Self::Cache,
            _ => return None,
        })
    }

    /// The config name of this filter value.
    pub fn name(self) -> &'static str {
        match self {
            Self::Kind(kind) => kind.as_str(),
            Self::Cache => "cache",
        }
    }

    /// Whether a channel with this name passes the filter.
    pub fn matches(self, channel: &str) -> bool {
        match self {
            Self::Kind(kind) => ChannelType::of(channel) == kind,
            Self::Cache => is_cache(channel),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_decide_the_kind() {
        let cases = [
            ("room", ChannelType::Public, false),
            ("cache-room", ChannelType::Public, true),
            ("private-room", ChannelType::Private, false),
            ("private-cache-room", ChannelType::Private, true),
            (
                "private-encrypted-room",
                ChannelType::PrivateEncrypted,
                false,
            ),
            (
                "private-encrypted-cache-room",
                ChannelType::PrivateEncrypted,
                true,
            ),
            ("presence-room", ChannelType::Presence, false),
            ("presence-cache-room", ChannelType::Presence, true),
            ("privateroom", ChannelType::Public, false),
        ];
        for (name, kind, cache) in cases {
            assert_eq!(ChannelType::of(name), kind, "{name}");
            assert_eq!(is_cache(name), cache, "{name}");
        }
    }

    #[test]
    fn namespaces_are_derived_as_sockudo_derives_them() {
        let cases = [
            ("chat:room-1", Some("chat")),
            ("private-chat:room-1", Some("chat")),
            ("presence-orders:123", Some("orders")),
            ("private-encrypted-chat:x", Some("chat")),
            ("private-encrypted-cache-chat:x", Some("chat")),
            ("private-cache-chat:x", Some("chat")),
            ("presence-cache-chat:x", Some("chat")),
            ("cache-chat:x", Some("chat")),
            ("chat:a:b", Some("chat")),
            // Only one prefix comes off: the rest is the logical name.
            ("private-presence-x:y", Some("presence-x")),
            ("cache-private-x:y", Some("private-x")),
            ("chat", None),
            ("private-chat", None),
            (":room", None),
            ("private-:room", None),
            ("#server-to-user-1", None),
            ("", None),
        ];
        for (channel, ns) in cases {
            assert_eq!(namespace(channel), ns, "{channel}");
        }
    }

    #[test]
    fn filters_match_kinds_and_cache() {
        let private = ChannelTypeFilter::parse("private").unwrap();
        assert!(private.matches("private-a"));
        assert!(private.matches("private-cache-a"));
        assert!(!private.matches("private-encrypted-a"));
        let cache = ChannelTypeFilter::parse("cache").unwrap();
        assert!(cache.matches("presence-cache-a"));
        assert!(!cache.matches("presence-a"));
        assert!(ChannelTypeFilter::parse("secret").is_none());
    }
}
