//! AWS Lambda delivery: building an invocation from a batch, and invoking.
//!
//! **Payload.** A Lambda function receives exactly the bytes an HTTP receiver
//! would: the Pusher envelope `{"time_ms":…,"events":[…]}` built by
//! [`hookq_core::envelope::body`] with this attempt's `time_ms`.
//!
//! **Signatures.** `RequestResponse` invocations carry the headers hookq
//! signs an HTTP request with in Lambda's *client context* (base64 of a JSON
//! object, at most [`CLIENT_CONTEXT_LIMIT`] bytes once encoded), so the
//! function can verify the payload as a webhook receiver would:
//!
//! ```json
//! {"custom": {"headers": {
//!   "x-pusher-key": "<app key>",
//!   "x-pusher-signature": "<hex HMAC-SHA256 of the payload with the app secret>",
//!   "webhook-id": "<stable across retries>",
//!   "webhook-timestamp": "<unix seconds>",
//!   "webhook-signature": "v1,<base64> …"
//! }}}
//! ```
//!
//! Header names are lower-case; `webhook-signature` is there only when the
//! endpoint has Standard Webhooks secrets. In a function the object is
//! `context.client_context.custom["headers"]` (Python) or
//! `context.clientContext.custom.headers` (Node.js). `Event` (asynchronous)
//! invocations cannot carry a client context, so they have none: there, who
//! may invoke the function is decided by IAM. The endpoint's custom `headers`
//! are HTTP-only and are not sent to Lambda.
//!
//! **Payload limits.** Lambda accepts 256 KiB for `Event` and 6 MiB for
//! `RequestResponse`. The batcher closes a batch before its body would pass
//! the invocation type's limit ([`crate::batch::byte_cap`]), so batches are
//! split to fit; a single event too large on its own is rejected here
//! without calling Lambda.
//!
//! **Outcomes.** A 2xx answer without a function error is delivered. These
//! retry: a `RequestResponse` answer with `X-Amz-Function-Error` (the reason
//! is `function error: Unhandled` and the excerpt is the function's error
//! payload); throttling (`TooManyRequestsException`, 429, honouring
//! `Retry-After`); service errors (5xx other than 501: `ServiceException`,
//! the EC2/ENI/KMS/EFS errors, `ResourceNotReadyException`, …); functions not
//! ready yet (`ResourceConflictException`, `SnapStartNotReadyException`);
//! 408 and 425; timeouts (the endpoint's `request_timeout` around the whole
//! call), connection and dispatch failures, unreadable answers. Everything
//! else is rejected and dead-lettered at once: `ResourceNotFoundException`
//! (404), access denied (403), `InvalidRequestContentException`,
//! `RequestTooLargeException`, `InvalidParameterValueException` and other
//! 4xx, 501, and invocations that cannot be built. [`Failure::status`] keeps
//! the HTTP status of Lambda's answer.
//!
//! **Clients.** One `aws_sdk_lambda::Client` per (region, `endpoint_url`),
//! built on first use and shared by every clone of the [`LambdaDeliverer`].
//! Region, endpoint and credentials are found as [`hookq_aws`] finds them for
//! every AWS client of hookq: the target's region, else the standard chain's;
//! the standard credential chain, or `test`/`test` for a custom endpoint
//! (an emulator, LocalStack) when the chain has none. Connections time out
//! after `webhooks.connect_timeout_ms`, as HTTP ones do. The SDK's own retries
//! are off: hookq's retries are durable jobs with their own backoff and
//! attempt budget, and a second retry layer would hide throttling from it.

use crate::batch::Batch;
use crate::outcome::{Failure, Outcome, excerpt, parse_retry_after};
use aws_sdk_lambda::Client;
use aws_sdk_lambda::config::http::HttpResponse;
use aws_sdk_lambda::config::retry::RetryConfig;
use aws_sdk_lambda::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_lambda::operation::invoke::{InvokeError, InvokeOutput};
use aws_sdk_lambda::primitives::Blob;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hookq_aws::TimeoutConfig;
use hookq_core::endpoint::{InvocationType, LambdaTarget};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::OnceCell;

/// The longest client context Lambda accepts, in bytes of base64.
pub const CLIENT_CONTEXT_LIMIT: usize = 3583;

/// Headers of an HTTP request that say nothing about the payload's origin,
/// left out of the client context.
const TRANSPORT_HEADERS: &[&str] = &["content-type", "user-agent"];

/// What one attempt sends to Lambda, built without any network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// The Pusher envelope, byte for byte what the HTTP path would send.
    pub payload: Vec<u8>,
    /// `RequestResponse` only: base64 of `{"custom":{"headers":{…}}}` (see the module docs).
    pub client_context: Option<String>,
}

/// The invocation for one attempt of `batch` at `time_ms`.
pub fn build_invocation(target: &LambdaTarget, batch: &Batch, time_ms: u64) -> Invocation {
    let payload = batch.body(time_ms);
    let client_context = match target.invocation_type {
        InvocationType::Event => None,
        InvocationType::RequestResponse => {
            let headers: serde_json::Map<String, serde_json::Value> = batch
                .signer(time_ms)
                .headers(&payload)
                .into_iter()
                .filter(|(k, _)| !TRANSPORT_HEADERS.contains(k))
                .map(|(k, v)| (k.to_string(), serde_json::Value::String(v)))
                .collect();
            let context = serde_json::json!({ "custom": { "headers": headers } });
            Some(BASE64.encode(context.to_string()))
        }
    };
    Invocation {
        payload,
        client_context,
    }
}

type ClientKey = (Option<String>, Option<String>);

/// Invokes Lambda functions, with one cached client per (region, `endpoint_url`).
/// Cheap to clone; clones share the clients.
#[derive(Clone)]
pub struct LambdaDeliverer {
    clients: Arc<Mutex<HashMap<ClientKey, Arc<OnceCell<Client>>>>>,
    connect_timeout: Duration,
}

impl LambdaDeliverer {
    /// A deliverer with no clients yet; each is built when first needed, and
    /// its connections time out after `connect_timeout`
    /// (`webhooks.connect_timeout_ms`).
    pub fn new(connect_timeout: Duration) -> Self {
        Self {
            clients: Arc::default(),
            connect_timeout,
        }
    }

    /// The client for `target`'s region and endpoint, built once.
    async fn client(&self, target: &LambdaTarget) -> Client {
        let key = (target.region.clone(), target.endpoint_url.clone());
        let cell = self
            .clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key)
            .or_default()
            .clone();
        cell.get_or_init(|| {
            build_client(
                target.region.clone(),
                target.endpoint_url.clone(),
                self.connect_timeout,
            )
        })
        .await
        .clone()
    }

    /// One attempt of `batch` at `time_ms`: invokes the function and classifies the answer.
    pub async fn deliver(&self, target: &LambdaTarget, batch: &Batch, time_ms: u64) -> Outcome {
        let invocation = build_invocation(target, batch, time_ms);
        if let Some(reject) = check_limits(target, &invocation) {
            return reject;
        }
        let client = self.client(target).await;
        let timeout = batch.endpoint().request_timeout;
        let call = client
            .invoke()
            .function_name(&target.function_name)
            .invocation_type(sdk_invocation_type(target.invocation_type))
            .set_qualifier(target.qualifier.clone())
            .set_client_context(invocation.client_context)
            .payload(Blob::new(invocation.payload))
            .send();
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(output)) => classify_output(&output),
            Ok(Err(e)) => classify_error(&e),
            Err(_) => Outcome::Retry {
                failure: Failure::new(format!("timed out after {} ms", timeout.as_millis())),
                after: None,
            },
        }
    }
}

/// A rejection when the invocation cannot be accepted by Lambda as it is.
fn check_limits(target: &LambdaTarget, invocation: &Invocation) -> Option<Outcome> {
    let limit = target.invocation_type.payload_limit();
    let reason = if invocation.payload.len() > limit {
        format!(
            "payload of {} bytes exceeds Lambda's {limit}-byte limit for {} invocations",
            invocation.payload.len(),
            target.invocation_type.as_str()
        )
    } else if let Some(cc) = &invocation.client_context
        && cc.len() > CLIENT_CONTEXT_LIMIT
    {
        format!(
            "client context of {} bytes exceeds Lambda's {CLIENT_CONTEXT_LIMIT}-byte limit \
             (too many signing secrets?)",
            cc.len()
        )
    } else {
        return None;
    };
    Some(Outcome::Reject {
        failure: Failure::new(reason),
    })
}

fn sdk_invocation_type(t: InvocationType) -> aws_sdk_lambda::types::InvocationType {
    match t {
        InvocationType::Event => aws_sdk_lambda::types::InvocationType::Event,
        InvocationType::RequestResponse => aws_sdk_lambda::types::InvocationType::RequestResponse,
    }
}

/// The client for one (region, endpoint): see the module docs.
async fn build_client(
    region: Option<String>,
    endpoint_url: Option<String>,
    connect_timeout: Duration,
) -> Client {
    let target = hookq_aws::Target {
        region: region.as_deref(),
        endpoint_url: endpoint_url.as_deref(),
    };
    // The attempt as a whole is bounded by the endpoint's request timeout,
    // around the call (see `deliver`).
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(connect_timeout)
        .build();
    let shared = hookq_aws::sdk_config("lambda", target, timeouts).await;
    let config = aws_sdk_lambda::config::Builder::from(&shared)
        .retry_config(RetryConfig::disabled())
        .build();
    Client::from_conf(config)
}

/// Maps a successful call to an outcome: delivered unless the function failed.
fn classify_output(output: &InvokeOutput) -> Outcome {
    let status = u16::try_from(output.status_code()).ok();
    let body = output.payload().map(Blob::as_ref).unwrap_or_default();
    if let Some(kind) = output.function_error() {
        return Outcome::Retry {
            failure: Failure {
                reason: format!("function error: {kind}"),
                status,
                excerpt: excerpt(body),
            },
            after: None,
        };
    }
    match status {
        Some(200..=299) => Outcome::Delivered,
        // The SDK turns non-2xx answers into errors; this is only a guard.
        Some(s) => crate::outcome::classify_status(s, None, body),
        None => Outcome::Retry {
            failure: Failure::new(format!("unexpected status {}", output.status_code())),
            after: None,
        },
    }
}

/// Maps an SDK error to an outcome (see the module docs).
fn classify_error(e: &SdkError<InvokeError, HttpResponse>) -> Outcome {
    let retry = |reason: String| Outcome::Retry {
        failure: Failure {
            reason,
            status: e.raw_response().map(|r| r.status().as_u16()),
            excerpt: e
                .raw_response()
                .and_then(|r| r.body().bytes())
                .and_then(excerpt),
        },
        after: None,
    };
    let context = error_chain(e);
    match e {
        SdkError::ServiceError(s) => classify_service_error(s.err(), s.raw()),
        SdkError::ConstructionFailure(_) => Outcome::Reject {
            failure: Failure::new(format!("invocation could not be built: {context}")),
        },
        SdkError::DispatchFailure(d) if d.is_user() => Outcome::Reject {
            failure: Failure::new(format!("invocation could not be sent: {context}")),
        },
        SdkError::DispatchFailure(d) if d.is_timeout() => retry(format!("timed out: {context}")),
        SdkError::DispatchFailure(d) if d.is_io() => retry(format!("connection failed: {context}")),
        SdkError::DispatchFailure(_) => retry(format!("invocation failed: {context}")),
        SdkError::TimeoutError(_) => retry(format!("timed out: {context}")),
        SdkError::ResponseError(_) => retry(format!("unreadable answer: {context}")),
        _ => retry(format!("invocation failed: {context}")),
    }
}

/// Most characters of an error chain kept in a reason.
const REASON_LEN: usize = 512;

/// An error and its sources ([`hookq_aws::error_chain`]), without the SDK's
/// debug dump, cut to [`REASON_LEN`] characters.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let joined = hookq_aws::error_chain(e);
    match joined.char_indices().nth(REASON_LEN) {
        Some((cut, _)) => format!("{}…", &joined[..cut]),
        None => joined,
    }
}

/// Maps an error Lambda answered with to an outcome, by its code and HTTP status.
fn classify_service_error(err: &InvokeError, raw: &HttpResponse) -> Outcome {
    let status = raw.status().as_u16();
    let code = err.code().unwrap_or("unknown error");
    let reason = match err.message() {
        Some(message) => format!("{code}: {message} (HTTP {status})"),
        None => format!("{code} (HTTP {status})"),
    };
    let failure = Failure {
        reason,
        status: Some(status),
        excerpt: raw.body().bytes().and_then(excerpt),
    };
    let not_ready_yet = matches!(
        err,
        InvokeError::TooManyRequestsException(_)
            | InvokeError::ResourceConflictException(_)
            | InvokeError::ResourceNotReadyException(_)
            | InvokeError::SnapStartNotReadyException(_)
            | InvokeError::ServiceException(_)
            | InvokeError::Ec2ThrottledException(_)
    );
    if not_ready_yet || crate::outcome::is_retryable_status(status) {
        Outcome::Retry {
            failure,
            after: raw.headers().get("retry-after").and_then(parse_retry_after),
        }
    } else {
        Outcome::Reject { failure }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Encoded;
    use crate::settle::tests::ticket;
    use aws_sdk_lambda::error::ErrorMetadata;
    use aws_sdk_lambda::types::error::{ResourceConflictException, TooManyRequestsException};
    use hmac::{Hmac, KeyInit, Mac};
    use hookq_core::endpoint::EndpointTarget;
    use hookq_core::envelope;
    use hookq_core::{Config, Event};
    use sha2::Sha256;

    const TIME_MS: u64 = 1_700_000_000_123;

    /// A batch of two events for one Lambda webhook: `lambda` is its
    /// `lambda` object, `extra` more members of the webhook (or nothing).
    fn batch(lambda: &str, extra: &str) -> (Batch, LambdaTarget) {
        let text = format!(
            r#"{{"app_manager": {{"array": {{"apps": [{{"id": "a", "key": "the-key", "secret": "the-secret",
                "webhooks": [{{"lambda": {lambda}, {extra} "event_types": ["member_added", "client_event"],
                  "headers": {{"x-custom": "not for lambda"}}}}]}}]}}}}}}"#
        );
        let (config, _) = Config::parse(&text, |_| None).unwrap();
        let app = config.apps[0].clone();
        let EndpointTarget::Lambda(target) = app.endpoints[0].target.clone() else {
            panic!("a lambda target")
        };
        let mut batch = Batch::new(app, 0);
        batch.add(
            Encoded::new(Event::member_added("presence-a", "u1"), false),
            &ticket(1),
        );
        let e = Event::client_event("private-b", "client-x", r#"{"k":"v"}"#, "1.2");
        batch.add(Encoded::new(e, false), &ticket(2));
        (batch, target)
    }

    fn context_headers(invocation: &Invocation) -> serde_json::Map<String, serde_json::Value> {
        let raw = BASE64
            .decode(
                invocation
                    .client_context
                    .as_deref()
                    .expect("a client context"),
            )
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&raw).unwrap();
        json["custom"]["headers"].as_object().unwrap().clone()
    }

    #[test]
    fn payload_is_the_http_envelope() {
        for t in ["Event", "RequestResponse"] {
            let (batch, target) = batch(
                &format!(r#"{{"function_name": "f", "invocation_type": "{t}"}}"#),
                "",
            );
            let invocation = build_invocation(&target, &batch, TIME_MS);
            let want = envelope::body(TIME_MS, batch.events.iter().map(|e| e.json.as_slice()));
            assert_eq!(invocation.payload, want);
            let json: serde_json::Value = serde_json::from_slice(&invocation.payload).unwrap();
            assert_eq!(json["time_ms"], TIME_MS);
            assert_eq!(json["events"][0]["name"], "member_added");
            assert_eq!(json["events"][1]["event"], "client-x");
        }
    }

    #[test]
    fn request_response_carries_verifiable_signatures_in_the_client_context() {
        let (batch, target) = batch(
            r#"{"function_name": "f", "invocation_type": "RequestResponse"}"#,
            "",
        );
        let invocation = build_invocation(&target, &batch, TIME_MS);
        let cc = invocation.client_context.as_deref().unwrap();
        assert!(cc.len() <= CLIENT_CONTEXT_LIMIT, "{} bytes", cc.len());
        let headers = context_headers(&invocation);
        let mut names: Vec<&str> = headers.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "webhook-id",
                "webhook-timestamp",
                "x-pusher-key",
                "x-pusher-signature"
            ]
        );
        let mut mac = Hmac::<Sha256>::new_from_slice(b"the-secret").unwrap();
        mac.update(&invocation.payload);
        let expected = hex::encode(mac.finalize().into_bytes());
        assert_eq!(headers["x-pusher-signature"], expected.as_str());
        assert_eq!(headers["x-pusher-key"], "the-key");
        assert_eq!(headers["webhook-id"], batch.webhook_id.as_str());
        assert_eq!(headers["webhook-timestamp"], "1700000000");
    }

    #[test]
    fn standard_webhooks_signature_is_included_when_configured() {
        let (batch, target) = batch(
            r#"{"function_name": "f", "invocation_type": "RequestResponse"}"#,
            r#""signing_secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw","#,
        );
        let invocation = build_invocation(&target, &batch, TIME_MS);
        let headers = context_headers(&invocation);
        let sig = headers["webhook-signature"].as_str().unwrap();
        assert!(sig.starts_with("v1,"), "{sig}");
    }

    #[test]
    fn event_invocations_have_no_client_context() {
        let (batch, target) = batch(r#"{"function_name": "f"}"#, "");
        assert_eq!(target.invocation_type, InvocationType::Event);
        assert_eq!(
            build_invocation(&target, &batch, TIME_MS).client_context,
            None
        );
    }

    #[test]
    fn oversized_payloads_are_rejected_before_invoking() {
        let (batch, target) = batch(r#"{"function_name": "f"}"#, "");
        let mut invocation = build_invocation(&target, &batch, TIME_MS);
        assert_eq!(check_limits(&target, &invocation), None);
        invocation.payload = vec![b' '; 256 * 1024 + 1];
        let Some(Outcome::Reject { failure }) = check_limits(&target, &invocation) else {
            panic!("rejected")
        };
        assert!(
            failure.reason.contains("262145 bytes"),
            "{}",
            failure.reason
        );
    }

    fn answer(
        status: u16,
        headers: &[(&'static str, &'static str)],
        body: &'static str,
    ) -> HttpResponse {
        let mut r = HttpResponse::new(status.try_into().unwrap(), body.into());
        for (k, v) in headers {
            r.headers_mut().insert(*k, *v);
        }
        r
    }

    fn meta(code: &str, message: &str) -> ErrorMetadata {
        ErrorMetadata::builder().code(code).message(message).build()
    }

    #[test]
    fn service_errors_classify_by_code_and_status() {
        let throttled = InvokeError::TooManyRequestsException(
            TooManyRequestsException::builder()
                .message("Rate exceeded")
                .meta(meta("TooManyRequestsException", "Rate exceeded"))
                .build(),
        );
        let raw = answer(
            429,
            &[("retry-after", "2")],
            r#"{"message":"Rate exceeded"}"#,
        );
        let Outcome::Retry { failure, after } = classify_service_error(&throttled, &raw) else {
            panic!("throttling retries")
        };
        assert_eq!(
            failure.reason,
            "TooManyRequestsException: Rate exceeded (HTTP 429)"
        );
        assert_eq!(failure.status, Some(429));
        assert_eq!(after, Some(std::time::Duration::from_secs(2)));

        let conflict = InvokeError::ResourceConflictException(
            ResourceConflictException::builder()
                .message("The operation cannot be performed at this time.")
                .meta(meta("ResourceConflictException", "pending"))
                .build(),
        );
        assert_eq!(
            classify_service_error(&conflict, &answer(409, &[], "")).label(),
            "retry"
        );

        for (status, code, label) in [
            (500, "ServiceException", "retry"),
            (502, "EC2ThrottledException", "retry"),
            (502, "ResourceNotReadyException", "retry"),
            (503, "SomethingNew", "retry"),
            (404, "ResourceNotFoundException", "reject"),
            (403, "AccessDeniedException", "reject"),
            (400, "InvalidRequestContentException", "reject"),
            (400, "InvalidParameterValueException", "reject"),
            (413, "RequestTooLargeException", "reject"),
            (501, "NotImplemented", "reject"),
        ] {
            let err = InvokeError::generic(meta(code, "m"));
            let outcome = classify_service_error(&err, &answer(status, &[], "{}"));
            assert_eq!(outcome.label(), label, "{status} {code}");
            let (Outcome::Retry { failure, .. } | Outcome::Reject { failure }) = outcome else {
                panic!("not delivered")
            };
            assert_eq!(failure.status, Some(status));
            assert!(failure.reason.starts_with(code), "{}", failure.reason);
        }
    }

    #[test]
    fn error_chains_are_short_and_without_repeats() {
        #[derive(Debug)]
        struct E(&'static str, Option<Box<E>>);
        impl std::fmt::Display for E {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for E {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.1.as_deref().map(|e| e as _)
            }
        }
        let e = E(
            "dispatch failure",
            Some(Box::new(E("refused", Some(Box::new(E("refused", None)))))),
        );
        assert_eq!(error_chain(&e), "dispatch failure: refused");
        let long = E(Box::leak("x".repeat(2000).into_boxed_str()), None);
        assert_eq!(error_chain(&long).chars().count(), REASON_LEN + 1);
    }

    #[test]
    fn function_errors_retry_with_the_error_payload() {
        let out = InvokeOutput::builder()
            .status_code(200)
            .function_error("Unhandled")
            .payload(Blob::new(r#"{"errorMessage":"boom"}"#))
            .build();
        let Outcome::Retry { failure, .. } = classify_output(&out) else {
            panic!("retry")
        };
        assert_eq!(failure.reason, "function error: Unhandled");
        assert_eq!(failure.status, Some(200));
        assert_eq!(
            failure.excerpt.as_deref(),
            Some(r#"{"errorMessage":"boom"}"#)
        );
        for s in [200, 202, 204] {
            let out = InvokeOutput::builder().status_code(s).build();
            assert_eq!(classify_output(&out), Outcome::Delivered, "{s}");
        }
    }
}
