//! HTTP delivery: building a signed request from a batch, and sending it.
//!
//! [`build_request`] is pure (no network): the envelope with this attempt's
//! `time_ms`, hookq's headers (signatures, ids, `User-Agent`), then the
//! endpoint's custom headers minus any that would replace ours. [`HttpDeliverer`]
//! sends with one pooled keep-alive client and maps the answer (or the error)
//! to an [`Outcome`]. Redirects are not followed: a webhook URL that moved is
//! a configuration to fix, and the 3xx is dead-lettered with its status.

use crate::batch::Batch;
use crate::outcome::{EXCERPT_LEN, Failure, Outcome, classify_status};
use hookq_core::envelope;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use std::time::Duration;

/// A request ready to send: method POST, to `url`, these headers and this body.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// Where.
    pub url: &'a url::Url,
    /// hookq's headers, then the endpoint's custom ones.
    pub headers: HeaderMap,
    /// The exact bytes signed.
    pub body: Vec<u8>,
    /// Time allowed.
    pub timeout: Duration,
}

/// The signed request for one attempt of `batch` at `time_ms`, or why it
/// cannot be sent: a header the HTTP crate refuses (the config check lets a
/// value through with control characters other than line breaks, and an app
/// key from a database is not checked at all), named in the reason.
///
/// The header map is built once, in the form the client sends: hookq's
/// names are static and their values are moved in, not copied (a request is
/// built per delivery, and unbatched that is per event).
pub fn build_request<'a>(
    batch: &Batch,
    url: &'a url::Url,
    time_ms: u64,
) -> Result<Request<'a>, String> {
    let ep = batch.endpoint();
    let body = batch.body(time_ms);
    let ours = batch.signer(time_ms).headers(&body);
    let mut headers = HeaderMap::with_capacity(ours.len() + ep.headers.len());
    for (name, value) in ours {
        let value = HeaderValue::from_maybe_shared(bytes::Bytes::from(value))
            .map_err(|_| format!("the value of header {name} is not valid header text"))?;
        headers.append(HeaderName::from_static(name), value);
    }
    for (name, value) in ep.headers.iter().filter(|(k, _)| !envelope::is_reserved(k)) {
        let invalid = || format!("header {name} (the endpoint's headers) is not valid");
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid())?;
        let value = HeaderValue::from_str(value).map_err(|_| invalid())?;
        headers.append(name, value);
    }
    Ok(Request {
        url,
        headers,
        body,
        timeout: ep.request_timeout,
    })
}

/// Sends requests with one pooled client.
#[derive(Clone)]
pub struct HttpDeliverer {
    client: reqwest::Client,
    connect_timeout: Duration,
}

impl HttpDeliverer {
    /// A deliverer whose connections time out after `connect_timeout`.
    pub fn new(connect_timeout: Duration) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            // hookq retries durably itself; the client's own retry would
            // also clone every request's headers in case it retries.
            .retry(reqwest::retry::never().max_retries_per_request(0))
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()?;
        Ok(Self {
            client,
            connect_timeout,
        })
    }

    /// Sends one request and classifies the answer.
    pub async fn send(&self, req: Request<'_>) -> Outcome {
        let timeout_ms = req.timeout.as_millis();
        let sent = self
            .client
            .post(req.url.clone())
            .timeout(req.timeout)
            .headers(req.headers)
            .body(req.body)
            .send();
        let mut resp = match sent.await {
            Ok(resp) => resp,
            // The URL may hold credentials or tokens: the reason goes into logs and DLQ entries.
            Err(e) => {
                let e = e.without_url();
                return classify_error(&e, timeout_ms, self.connect_timeout.as_millis());
            }
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        // Read a little of the body for diagnosis; a success's body is drained
        // so the connection can be reused.
        let mut body = Vec::new();
        while let Ok(Some(chunk)) = resp.chunk().await {
            if body.len() < EXCERPT_LEN {
                body.extend_from_slice(&chunk[..chunk.len().min(EXCERPT_LEN - body.len())]);
            } else if !(200..300).contains(&status) {
                break;
            }
        }
        classify_status(status, retry_after.as_deref(), &body)
    }
}

fn classify_error(e: &reqwest::Error, timeout_ms: u128, connect_timeout_ms: u128) -> Outcome {
    if e.is_builder() {
        return Outcome::Reject {
            failure: Failure::new(format!("request could not be built: {e}")),
        };
    }
    // A connect timeout is both: the connection failed, within
    // webhooks.connect_timeout_ms, not the request's timeout.
    let reason = if e.is_connect() && e.is_timeout() {
        format!("connection failed: not connected within {connect_timeout_ms} ms")
    } else if e.is_connect() {
        format!("connection failed: {}", root_cause(e))
    } else if e.is_timeout() {
        format!("timed out after {timeout_ms} ms")
    } else {
        format!("request failed: {}", root_cause(e))
    };
    Outcome::Retry {
        failure: Failure::new(reason),
        after: None,
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Encoded;
    use crate::settle::tests::ticket;
    use hookq_core::{Config, Event, sign};

    /// The reason of a failure goes into logs and DLQ entries: it must not show the URL's secrets.
    #[tokio::test]
    async fn a_failure_reason_does_not_show_the_url() {
        let deliverer = HttpDeliverer::new(Duration::from_secs(2)).unwrap();
        // Nothing listens on port 1 of the loopback: the connection is refused at once.
        let url = url::Url::parse("http://user:s3cret@127.0.0.1:1/hook?token=t0ken").unwrap();
        let outcome = deliverer
            .send(Request {
                url: &url,
                headers: HeaderMap::new(),
                body: Vec::new(),
                timeout: Duration::from_secs(2),
            })
            .await;
        let text = format!("{outcome:?}");
        assert!(matches!(outcome, Outcome::Retry { .. }), "{text}");
        assert!(
            !text.contains("s3cret") && !text.contains("t0ken") && !text.contains("user"),
            "{text}"
        );
    }

    #[test]
    fn request_is_signed_and_custom_headers_cannot_override() {
        let (config, _) = Config::parse(
            r#"{"app_manager": {"array": {"apps": [{"id": "a", "key": "the-key", "secret": "the-secret",
                "webhooks": [{"url": "http://127.0.0.1:9/hook", "event_types": ["member_added"],
                  "headers": {"X-Pusher-Signature": "forged", "x-custom": "yes", "Content-Type": "text/plain"}}]}]}}}"#,
            |_| None,
        )
        .unwrap();
        let app = config.apps[0].clone();
        let mut batch = Batch::new(app, 0);
        batch.add(
            Encoded::new(Event::member_added("presence-a", "u1"), false),
            &ticket(1),
        );
        let url = url::Url::parse("http://127.0.0.1:9/hook").unwrap();
        let req = build_request(&batch, &url, 1_700_000_000_000).unwrap();
        assert_eq!(
            String::from_utf8(req.body.clone()).unwrap(),
            r#"{"time_ms":1700000000000,"events":[{"name":"member_added","channel":"presence-a","user_id":"u1"}]}"#
        );
        let values = |name: &str| -> Vec<&str> {
            req.headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect()
        };
        assert_eq!(
            values("x-pusher-signature"),
            [sign::pusher_signature("the-secret", &req.body)]
        );
        assert_eq!(values("content-type"), ["application/json"]);
        assert_eq!(values("x-pusher-key"), ["the-key"]);
        assert_eq!(values("x-custom"), ["yes"]);
        assert_eq!(values("webhook-id"), [batch.webhook_id.as_str()]);
        assert_eq!(values("webhook-timestamp"), ["1700000000"]);
        assert!(values("webhook-signature").is_empty());
    }

    /// A header value the HTTP crate refuses (a control character passes the
    /// config check) makes the request unbuildable, with the header named
    /// and its value not shown: before, the client's builder refused it the
    /// same way.
    #[test]
    fn a_header_the_http_crate_refuses_is_named() {
        let (config, _) = Config::parse(
            r#"{"app_manager": {"array": {"apps": [{"id": "a", "key": "k", "secret": "s",
                "webhooks": [{"url": "http://127.0.0.1:9/hook", "event_types": ["member_added"],
                  "headers": {"x-token": "t0ken\u0001"}}]}]}}}"#,
            |_| None,
        )
        .unwrap();
        let mut batch = Batch::new(config.apps[0].clone(), 0);
        batch.add(
            Encoded::new(Event::member_added("presence-a", "u1"), false),
            &ticket(1),
        );
        let url = url::Url::parse("http://127.0.0.1:9/hook").unwrap();
        let reason = build_request(&batch, &url, 1).unwrap_err();
        assert!(reason.contains("x-token"), "{reason}");
        assert!(!reason.contains("t0ken"), "{reason}");
    }
}
