//! Request signatures: Pusher's `X-Pusher-Signature` and, optionally, the
//! Standard Webhooks `webhook-signature`.
//!
//! Pusher: lowercase hex of HMAC-SHA256 keyed with the app secret over the
//! exact body bytes. Standard Webhooks: `v1,` + base64 of HMAC-SHA256 keyed
//! with the decoded `whsec_` secret over `"{id}.{timestamp}.{body}"`; several
//! secrets (during a rotation) give several space-separated signatures.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// `X-Pusher-Signature` for `body`, signed with the app secret.
pub fn pusher_signature(secret: &str, body: &[u8]) -> String {
    hex::encode(hmac(secret.as_bytes(), &[body]))
}

/// Whether `signature` (hex, either case) is the `X-Pusher-Signature` of
/// `body` under `secret`; compared in constant time.
pub fn verify_pusher_signature(secret: &str, body: &[u8], signature: &str) -> bool {
    let Ok(expected) = hex::decode(signature.trim()) else {
        return false;
    };
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).unwrap_or_else(|_| unreachable!());
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

/// A Standard Webhooks signing secret, decoded from its `whsec_` form.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSecret(Vec<u8>);

impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningSecret(..)")
    }
}

impl SigningSecret {
    /// Parses `whsec_<base64>`; the key must decode to 24–64 bytes.
    pub fn parse(s: &str) -> Result<Self, String> {
        let b64 = s
            .strip_prefix("whsec_")
            .ok_or_else(|| "must start with `whsec_`".to_string())?;
        let key = BASE64
            .decode(b64)
            .map_err(|e| format!("is not valid base64 after `whsec_`: {e}"))?;
        if !(24..=64).contains(&key.len()) {
            return Err(format!(
                "decodes to {} bytes; 24 to 64 are allowed",
                key.len()
            ));
        }
        Ok(Self(key))
    }

    /// The `v1,<base64>` signature of one message.
    pub fn sign(&self, id: &str, timestamp_secs: u64, body: &[u8]) -> String {
        let ts = timestamp_secs.to_string();
        let mac = hmac(&self.0, &[id.as_bytes(), b".", ts.as_bytes(), b".", body]);
        format!("v1,{}", BASE64.encode(mac))
    }
}

/// The `webhook-signature` header value: one signature per secret, space-separated.
pub fn standard_signature(
    secrets: &[SigningSecret],
    id: &str,
    timestamp_secs: u64,
    body: &[u8],
) -> String {
    secrets
        .iter()
        .map(|s| s.sign(id, timestamp_secs, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether two secrets (e.g. a request's bearer token and the configured
/// one) are the same, in time that does not depend on where they differ:
/// both are digested under one key and the digests compared in constant time.
pub fn same_secret(given: &str, expected: &str) -> bool {
    let digest = |s: &str| hmac(b"hookq same_secret", &[s.as_bytes()]);
    let mut mac =
        HmacSha256::new_from_slice(b"hookq same_secret").unwrap_or_else(|_| unreachable!());
    mac.update(given.as_bytes());
    mac.verify_slice(&digest(expected)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Vectors computed outside this code, with Python's standard library:
    //   hmac.new(b"7ad3773142a6692b25b8", body, hashlib.sha256).hexdigest()
    #[test]
    fn pusher_signature_matches_python_hmac() {
        let body = br#"{"time_ms":1327078148132,"events":[{"name":"channel_occupied","channel":"test_channel"}]}"#;
        assert_eq!(
            pusher_signature("7ad3773142a6692b25b8", body),
            "709fdb84c03664445f7698120b0edf0acc1ab1c8c6e93a0368c61841d6b998aa"
        );
        let good = "709fdb84c03664445f7698120b0edf0acc1ab1c8c6e93a0368c61841d6b998aa";
        assert!(verify_pusher_signature("7ad3773142a6692b25b8", body, good));
        assert!(verify_pusher_signature(
            "7ad3773142a6692b25b8",
            body,
            &good.to_uppercase()
        ));
        assert!(!verify_pusher_signature("other", body, good));
        assert!(!verify_pusher_signature(
            "7ad3773142a6692b25b8",
            b"{}",
            good
        ));
        assert!(!verify_pusher_signature("7ad3773142a6692b25b8", body, "zz"));
        assert!(!verify_pusher_signature(
            "7ad3773142a6692b25b8",
            body,
            &good[..62]
        ));
    }

    // The worked example of the Standard Webhooks reference libraries' test suites:
    // secret MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw, id msg_p5jXN8AQM9LWM0D4loKWxJek,
    // timestamp 1614265330, body {"test": 2432232314}.
    #[test]
    fn standard_signature_matches_reference_vector() {
        let secret = SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = secret.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn secrets_must_be_whsec_and_long_enough() {
        assert!(SigningSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(SigningSecret::parse("whsec_c2hvcnQ=").is_err());
        assert!(SigningSecret::parse("whsec_!!!").is_err());
    }
}
