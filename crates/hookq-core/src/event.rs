//! Webhook events: the seven Pusher event names and the fields each carries.
//!
//! An [`Event`] is what a realtime server publishes and what a receiver finds
//! in the envelope's `events` array. Its JSON form is exactly Pusher's: only
//! the fields the event has, `data` always a string (an object given by a
//! producer is encoded to text, since receivers' libraries parse it as one),
//! and `subscription_count` the only number. The optional `id` is hookq's
//! per-event id, sent to receivers only when `webhooks.event_ids` is on.
//!
//! Fields hookq does not know (a newer server's, or a sender's own) are kept
//! in [`Event::extra`] and written back after the known ones, so an event
//! that came through the ingest reaches receivers with everything its sender
//! put in it.

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use std::fmt;
use std::str::FromStr;

/// The seven Pusher webhook event names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventName {
    /// A channel got its first subscriber.
    ChannelOccupied,
    /// A channel lost its last subscriber.
    ChannelVacated,
    /// A user joined a presence channel.
    MemberAdded,
    /// A user left a presence channel.
    MemberRemoved,
    /// A client sent an event on a channel.
    ClientEvent,
    /// A cache channel was subscribed with nothing in its cache.
    CacheMiss,
    /// A channel's subscriber count changed.
    SubscriptionCount,
}

impl EventName {
    /// All names, in the order docs list them.
    pub const ALL: [EventName; 7] = [
        Self::ChannelOccupied,
        Self::ChannelVacated,
        Self::MemberAdded,
        Self::MemberRemoved,
        Self::ClientEvent,
        Self::CacheMiss,
        Self::SubscriptionCount,
    ];

    /// The wire name, e.g. `member_added`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ChannelOccupied => "channel_occupied",
            Self::ChannelVacated => "channel_vacated",
            Self::MemberAdded => "member_added",
            Self::MemberRemoved => "member_removed",
            Self::ClientEvent => "client_event",
            Self::CacheMiss => "cache_miss",
            Self::SubscriptionCount => "subscription_count",
        }
    }

    /// A bit for this name, so a set of names fits in a `u8`.
    pub fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for EventName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventName {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Self::ALL.into_iter().find(|n| n.as_str() == s).ok_or(())
    }
}

/// One webhook event, in Pusher's shape.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// hookq's per-event id; stable across retries. Sent only with `webhooks.event_ids`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Which event this is.
    pub name: EventName,
    /// The channel it happened on.
    pub channel: String,
    /// The client event's name (`client_event`; Sockudo also sends it on member events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// The client event's payload, always as a JSON string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// The sending socket (`client_event`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_id: Option<String>,
    /// The user (`member_added`, `member_removed`, presence `client_event`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// The channel's subscriber count (`subscription_count`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription_count: Option<u64>,
    /// Every other field, as it came (empty for the events hookq makes).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// What is wrong with an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// The channel name is empty.
    #[error("{name}: channel is empty")]
    EmptyChannel {
        /// The event's name.
        name: EventName,
    },
    /// A field this kind of event needs is absent or empty.
    #[error("{name}: missing field `{field}`")]
    MissingField {
        /// The event's name.
        name: EventName,
        /// The missing field.
        field: &'static str,
    },
}

impl Event {
    /// An event with only a name and a channel; set the other fields as the name needs.
    pub fn new(name: EventName, channel: impl Into<String>) -> Self {
        Self {
            id: None,
            name,
            channel: channel.into(),
            event: None,
            data: None,
            socket_id: None,
            user_id: None,
            subscription_count: None,
            extra: Map::new(),
        }
    }

    /// `channel_occupied` on `channel`.
    pub fn channel_occupied(channel: impl Into<String>) -> Self {
        Self::new(EventName::ChannelOccupied, channel)
    }

    /// `channel_vacated` on `channel`.
    pub fn channel_vacated(channel: impl Into<String>) -> Self {
        Self::new(EventName::ChannelVacated, channel)
    }

    /// `member_added` for `user_id` on `channel`.
    pub fn member_added(channel: impl Into<String>, user_id: impl Into<String>) -> Self {
        Self {
            user_id: Some(user_id.into()),
            ..Self::new(EventName::MemberAdded, channel)
        }
    }

    /// `member_removed` for `user_id` on `channel`.
    pub fn member_removed(channel: impl Into<String>, user_id: impl Into<String>) -> Self {
        Self {
            user_id: Some(user_id.into()),
            ..Self::new(EventName::MemberRemoved, channel)
        }
    }

    /// `client_event` named `event` with payload `data` (already JSON text) from `socket_id`.
    pub fn client_event(
        channel: impl Into<String>,
        event: impl Into<String>,
        data: impl Into<String>,
        socket_id: impl Into<String>,
    ) -> Self {
        Self {
            event: Some(event.into()),
            data: Some(data.into()),
            socket_id: Some(socket_id.into()),
            ..Self::new(EventName::ClientEvent, channel)
        }
    }

    /// `subscription_count` of `count` on `channel`.
    pub fn subscription_count(channel: impl Into<String>, count: u64) -> Self {
        Self {
            subscription_count: Some(count),
            ..Self::new(EventName::SubscriptionCount, channel)
        }
    }

    /// `cache_miss` on `channel`.
    pub fn cache_miss(channel: impl Into<String>) -> Self {
        Self::new(EventName::CacheMiss, channel)
    }

    /// Checks that the event has every field its name requires.
    pub fn validate(&self) -> Result<(), EventError> {
        let name = self.name;
        if self.channel.is_empty() {
            return Err(EventError::EmptyChannel { name });
        }
        let need = |field: &'static str, present: bool| {
            if present {
                Ok(())
            } else {
                Err(EventError::MissingField { name, field })
            }
        };
        let has = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
        match name {
            EventName::MemberAdded | EventName::MemberRemoved => {
                need("user_id", has(&self.user_id))
            }
            EventName::ClientEvent => {
                need("event", has(&self.event))?;
                need("data", self.data.is_some())?;
                need("socket_id", has(&self.socket_id))
            }
            EventName::SubscriptionCount => {
                need("subscription_count", self.subscription_count.is_some())
            }
            EventName::ChannelOccupied | EventName::ChannelVacated | EventName::CacheMiss => Ok(()),
        }
    }
}

/// `data` may arrive as any JSON value; receivers need a string, so anything
/// else is encoded to its JSON text.
struct Data(Option<String>);

impl<'de> Deserialize<'de> for Data {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Data(match Option::<Value>::deserialize(d)? {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s),
            Some(other) => Some(other.to_string()),
        }))
    }
}

/// A field name, read without allocating unless it is one hookq does not know.
enum Field {
    Id,
    Name,
    Channel,
    Event,
    Data,
    SocketId,
    UserId,
    SubscriptionCount,
    Other(String),
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct FieldVisitor;
        impl Visitor<'_> for FieldVisitor {
            type Value = Field;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Field, E> {
                Ok(match v {
                    "id" => Field::Id,
                    "name" => Field::Name,
                    "channel" => Field::Channel,
                    "event" => Field::Event,
                    "data" => Field::Data,
                    "socket_id" => Field::SocketId,
                    "user_id" => Field::UserId,
                    "subscription_count" => Field::SubscriptionCount,
                    other => Field::Other(other.to_string()),
                })
            }
        }
        d.deserialize_identifier(FieldVisitor)
    }
}

/// Reads the known fields into their places and keeps the rest in `extra`
/// (serde's `flatten` would buffer the whole object first, which the job
/// decode cannot afford).
impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EventVisitor;
        impl<'de> Visitor<'de> for EventVisitor {
            type Value = Event;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an event object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Event, A::Error> {
                let (mut name, mut channel) = (None, None);
                let mut e = Event::new(EventName::CacheMiss, String::new());
                while let Some(field) = map.next_key::<Field>()? {
                    match field {
                        Field::Id => e.id = map.next_value()?,
                        Field::Name => name = Some(map.next_value()?),
                        Field::Channel => channel = Some(map.next_value()?),
                        Field::Event => e.event = map.next_value()?,
                        Field::Data => e.data = map.next_value::<Data>()?.0,
                        Field::SocketId => e.socket_id = map.next_value()?,
                        Field::UserId => e.user_id = map.next_value()?,
                        Field::SubscriptionCount => e.subscription_count = map.next_value()?,
                        Field::Other(key) => {
                            e.extra.insert(key, map.next_value()?);
                        }
                    }
                }
                e.name = name.ok_or_else(|| de::Error::missing_field("name"))?;
                e.channel = channel.ok_or_else(|| de::Error::missing_field("channel"))?;
                Ok(e)
            }
        }
        d.deserialize_map(EventVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_objects_become_strings() {
        let e: Event = serde_json::from_str(
            r#"{"name":"client_event","channel":"c","event":"e","socket_id":"1.2","data":{"a":1}}"#,
        )
        .unwrap();
        assert_eq!(e.data.as_deref(), Some(r#"{"a":1}"#));
        e.validate().unwrap();
        let out = serde_json::to_string(&e).unwrap();
        assert_eq!(
            out,
            r#"{"name":"client_event","channel":"c","event":"e","data":"{\"a\":1}","socket_id":"1.2"}"#
        );
    }

    #[test]
    fn unknown_fields_are_kept_and_written_back() {
        let text = r#"{"name":"member_added","channel":"presence-a","user_id":"u1","user_info":{"n":"Ann"},"zz":[1,2]}"#;
        let e: Event = serde_json::from_str(text).unwrap();
        assert_eq!(e.user_id.as_deref(), Some("u1"));
        assert_eq!(e.extra["user_info"], serde_json::json!({"n": "Ann"}));
        let back: Value = serde_json::to_value(&e).unwrap();
        assert_eq!(back, serde_json::from_str::<Value>(text).unwrap());
        assert!(serde_json::from_str::<Event>(r#"{"channel":"c"}"#).is_err());
        assert!(serde_json::from_str::<Event>(r#"{"name":"nope","channel":"c"}"#).is_err());
    }

    #[test]
    fn validation_names_the_missing_field() {
        let e = Event::new(EventName::MemberAdded, "presence-a");
        assert_eq!(
            e.validate().unwrap_err().to_string(),
            "member_added: missing field `user_id`"
        );
        let e = Event::new(EventName::SubscriptionCount, "a");
        assert!(e.validate().is_err());
        assert!(Event::channel_occupied("").validate().is_err());
        assert!(Event::subscription_count("a", 3).validate().is_ok());
    }

    #[test]
    fn names_round_trip() {
        for n in EventName::ALL {
            assert_eq!(n.as_str().parse::<EventName>(), Ok(n));
            assert_eq!(serde_json::to_value(n).unwrap(), n.as_str());
        }
    }
}
