//! The result of one delivery attempt, and how HTTP answers map to it.
//!
//! Every deliverer (HTTP, Lambda) maps its own errors into an [`Outcome`]; the
//! worker settles on the outcome alone and never looks at a status code or an
//! AWS error itself. Classification (DESIGN.md): connection errors, timeouts,
//! 408, 425, 429 and 5xx other than 501 are worth retrying; any other 4xx, 501
//! and requests that cannot be built are rejected at once.

use std::time::{Duration, SystemTime};

/// What went wrong with an attempt, kept for the retry job and the DLQ entry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Failure {
    /// A short description: `HTTP 503`, `timed out after 10000 ms`, `connection refused`.
    pub reason: String,
    /// The HTTP status, when there was an answer.
    pub status: Option<u16>,
    /// The start of the answer's body.
    pub excerpt: Option<String>,
}

impl Failure {
    /// A failure with only a reason.
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            ..Self::default()
        }
    }
}

/// The outcome of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The receiver took it.
    Delivered,
    /// Worth trying again, not before `after` when the receiver said so.
    Retry {
        /// What went wrong.
        failure: Failure,
        /// The receiver's `Retry-After`, if any.
        after: Option<Duration>,
    },
    /// Will never succeed as it is: dead-letter at once.
    Reject {
        /// What went wrong.
        failure: Failure,
    },
}

impl Outcome {
    /// The label used in metrics: `delivered`, `retry` or `reject`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Retry { .. } => "retry",
            Self::Reject { .. } => "reject",
        }
    }
}

/// Most bytes of a response body kept for diagnosis.
pub const EXCERPT_LEN: usize = 256;

/// The start of a body as text, cut at a character boundary.
pub fn excerpt(body: &[u8]) -> Option<String> {
    if body.is_empty() {
        return None;
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(EXCERPT_LEN)]);
    Some(text.trim_end_matches('\u{fffd}').to_string())
}

/// Whether an error status is worth trying again (HTTP's answers and
/// Lambda's alike): 408, 425, 429, and 5xx but 501.
pub fn is_retryable_status(status: u16) -> bool {
    matches!(status, 408 | 425 | 429) || (status >= 500 && status != 501)
}

/// Maps an HTTP answer to an outcome.
pub fn classify_status(status: u16, retry_after: Option<&str>, body: &[u8]) -> Outcome {
    if (200..300).contains(&status) {
        return Outcome::Delivered;
    }
    let failure = Failure {
        reason: format!("HTTP {status}"),
        status: Some(status),
        excerpt: excerpt(body),
    };
    if is_retryable_status(status) {
        Outcome::Retry {
            failure,
            after: retry_after.and_then(parse_retry_after),
        }
    } else {
        Outcome::Reject { failure }
    }
}

/// Parses `Retry-After`: delay seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_classify_as_designed() {
        for s in [200, 201, 202, 204, 299] {
            assert_eq!(classify_status(s, None, b""), Outcome::Delivered, "{s}");
        }
        for s in [408, 425, 429, 500, 502, 503, 504, 599] {
            assert_eq!(classify_status(s, None, b"").label(), "retry", "{s}");
        }
        for s in [300, 301, 400, 401, 403, 404, 410, 413, 422, 501] {
            assert_eq!(classify_status(s, None, b"").label(), "reject", "{s}");
        }
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        let in_a_minute = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(61));
        let d = parse_retry_after(&in_a_minute).unwrap();
        assert!(
            d > Duration::from_secs(58) && d <= Duration::from_secs(61),
            "{d:?}"
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
        let Outcome::Retry { after, failure } = classify_status(429, Some("3"), b"slow down")
        else {
            panic!("429 retries")
        };
        assert_eq!(after, Some(Duration::from_secs(3)));
        assert_eq!(failure.excerpt.as_deref(), Some("slow down"));
    }

    #[test]
    fn excerpts_are_short_and_valid_text() {
        let long = "é".repeat(500);
        let e = excerpt(long.as_bytes()).unwrap();
        assert!(e.len() <= EXCERPT_LEN && e.chars().all(|c| c == 'é'));
        assert_eq!(excerpt(b""), None);
    }
}
