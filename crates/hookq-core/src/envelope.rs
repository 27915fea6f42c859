//! The Pusher webhook envelope and the headers that sign it.
//!
//! A request body is `{"time_ms":<this attempt>,"events":[...]}`, built from
//! events encoded once ([`encode_event`]) and joined per attempt ([`body`]),
//! so a retry is signed afresh with a current `time_ms`, as Pusher's Python
//! library demands. [`Signer::headers`] gives every header hookq itself sets;
//! an endpoint's custom headers can never replace them.

use crate::event::Event;
use crate::sign::{self, SigningSecret};
use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};

/// Headers hookq sets itself; custom headers with these names are dropped.
pub const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "host",
    "user-agent",
    "x-pusher-key",
    "x-pusher-signature",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];

/// `User-Agent` of every request.
pub const USER_AGENT: &str = concat!("hookq/", env!("CARGO_PKG_VERSION"));

/// The bytes `{"time_ms":,"events":[]}` add around the events.
pub const OVERHEAD: usize = r#"{"time_ms":9999999999999,"events":[]}"#.len();

/// Whether a custom header may be sent (it is not one hookq sets itself).
pub fn is_reserved(name: &str) -> bool {
    RESERVED_HEADERS
        .iter()
        .any(|r| r.eq_ignore_ascii_case(name))
}

/// One event's JSON, with hookq's per-event `id` only when `with_id`.
pub fn encode_event(event: &Event, with_id: bool) -> Vec<u8> {
    let r = if with_id {
        serde_json::to_vec(event)
    } else {
        serde_json::to_vec(&WithoutId(event))
    };
    // Events hold strings, a number and JSON values: serializing cannot fail.
    r.unwrap_or_default()
}

/// The envelope for one attempt, from events already encoded by [`encode_event`].
pub fn body<'a>(time_ms: u64, events: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"{\"time_ms\":");
    out.extend_from_slice(time_ms.to_string().as_bytes());
    out.extend_from_slice(b",\"events\":[");
    for (i, e) in events.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(e);
    }
    out.extend_from_slice(b"]}");
    out
}

/// What identifies and signs one attempt.
pub struct Signer<'a> {
    /// The app key (`X-Pusher-Key`).
    pub app_key: &'a str,
    /// The app secret, signing `X-Pusher-Signature`.
    pub app_secret: &'a str,
    /// Standard Webhooks secrets; none means no `webhook-signature`.
    pub signing_secrets: &'a [SigningSecret],
    /// The batch's `webhook-id`, stable across attempts.
    pub webhook_id: &'a str,
    /// This attempt's time, in Unix ms (the body's `time_ms`).
    pub time_ms: u64,
}

impl Signer<'_> {
    /// Every header hookq sets on a request carrying `body`.
    pub fn headers(&self, body: &[u8]) -> Vec<(&'static str, String)> {
        let timestamp = self.time_ms / 1000;
        let mut headers = vec![
            ("content-type", "application/json".to_string()),
            ("user-agent", USER_AGENT.to_string()),
            ("x-pusher-key", self.app_key.to_string()),
            (
                "x-pusher-signature",
                sign::pusher_signature(self.app_secret, body),
            ),
            ("webhook-id", self.webhook_id.to_string()),
            ("webhook-timestamp", timestamp.to_string()),
        ];
        if !self.signing_secrets.is_empty() {
            let sig =
                sign::standard_signature(self.signing_secrets, self.webhook_id, timestamp, body);
            headers.push(("webhook-signature", sig));
        }
        headers
    }
}

struct WithoutId<'a>(&'a Event);

impl Serialize for WithoutId<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let e = self.0;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("name", &e.name)?;
        m.serialize_entry("channel", &e.channel)?;
        if let Some(v) = &e.event {
            m.serialize_entry("event", v)?;
        }
        if let Some(v) = &e.data {
            m.serialize_entry("data", v)?;
        }
        if let Some(v) = &e.socket_id {
            m.serialize_entry("socket_id", v)?;
        }
        if let Some(v) = &e.user_id {
            m.serialize_entry("user_id", v)?;
        }
        if let Some(v) = &e.subscription_count {
            m.serialize_entry("subscription_count", v)?;
        }
        for (k, v) in &e.extra {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_is_pushers_shape() {
        let mut e = Event::member_added("presence-a", "u1");
        e.id = Some("job_1".into());
        let plain = encode_event(&e, false);
        let with_id = encode_event(&e, true);
        let b = body(1700000000123, [plain.as_slice(), with_id.as_slice()]);
        assert_eq!(
            String::from_utf8(b).unwrap(),
            r#"{"time_ms":1700000000123,"events":[{"name":"member_added","channel":"presence-a","user_id":"u1"},{"id":"job_1","name":"member_added","channel":"presence-a","user_id":"u1"}]}"#
        );
        assert_eq!(body(1, []), br#"{"time_ms":1,"events":[]}"#);
    }

    #[test]
    fn headers_sign_the_body_and_name_hookq() {
        let secret = SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let signer = Signer {
            app_key: "key",
            app_secret: "7ad3773142a6692b25b8",
            signing_secrets: std::slice::from_ref(&secret),
            webhook_id: "msg_p5jXN8AQM9LWM0D4loKWxJek",
            time_ms: 1614265330999,
        };
        let h = signer.headers(br#"{"test": 2432232314}"#);
        let get = |n: &str| h.iter().find(|(k, _)| *k == n).map(|(_, v)| v.as_str());
        assert_eq!(get("content-type"), Some("application/json"));
        assert_eq!(get("webhook-timestamp"), Some("1614265330"));
        assert_eq!(
            get("webhook-signature"),
            Some("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
        );
        assert!(get("user-agent").unwrap().starts_with("hookq/"));
        assert!(is_reserved("X-Pusher-Signature") && !is_reserved("x-custom"));
    }
}
