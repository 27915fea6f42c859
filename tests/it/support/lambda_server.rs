//! A local stand-in for AWS Lambda's Invoke API on 127.0.0.1: what
//! aws-sdk-lambda sends to an `endpoint_url`, recorded, and answered from a
//! script per function.
//!
//! It serves `POST /2015-03-31/functions/{name}/invocations` (optional
//! `?Qualifier=`), reads `X-Amz-Invocation-Type` (Lambda's default,
//! `RequestResponse`, when absent) and `X-Amz-Client-Context`, records every
//! invocation, and answers by the function's [`Behaviour`]; a function with
//! none is not found, as on Lambda. Signatures (SigV4) are not checked, only
//! noted, so any static credentials do. Anything else is a 404 naming the
//! unknown path. The server runs as a task of the test's runtime.

use super::wait::poll;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// How a function answers.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// `202` (no body) for `Event`, `200` with a small JSON result for `RequestResponse`.
    Ok,
    /// For `RequestResponse`, `200` with `X-Amz-Function-Error: Unhandled` and
    /// `{"errorMessage":"boom"}`; an `Event` invocation is accepted (`202`),
    /// since Lambda reports an asynchronous function's errors elsewhere.
    FunctionError,
    /// `429 TooManyRequestsException`, `{"Type":"User","message":"Rate exceeded"}`.
    Throttle,
    /// `404 ResourceNotFoundException`.
    NotFound,
    /// The first `n` invocations answered as the given behaviour, then [`Behaviour::Ok`].
    FailThenOk(usize, Box<Behaviour>),
    /// The given behaviour after a delay (a slow or hung function).
    Slow(Duration, Box<Behaviour>),
}

/// One invocation as the server saw it.
#[derive(Clone, Debug)]
pub struct Invocation {
    /// The function name from the path, percent-decoded.
    pub function_name: String,
    /// `?Qualifier=`.
    pub qualifier: Option<String>,
    /// `X-Amz-Invocation-Type`.
    pub invocation_type: String,
    /// The request body.
    pub payload: Vec<u8>,
    /// `X-Amz-Client-Context`, as sent (base64).
    pub client_context: Option<String>,
    /// Whether an `Authorization: AWS4-HMAC-SHA256 …` header came.
    pub signed: bool,
    /// The status answered.
    pub status: u16,
}

impl Invocation {
    /// The payload parsed as JSON (`Null` when it is not JSON).
    pub fn envelope(&self) -> Value {
        serde_json::from_slice(&self.payload).unwrap_or(Value::Null)
    }

    /// The events of the envelope (none when it has no `events` array).
    pub fn events(&self) -> Vec<Value> {
        self.envelope()["events"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The client context decoded from base64 and parsed.
    pub fn client_context_json(&self) -> Option<Value> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(self.client_context.as_deref()?)
            .expect("client context is base64");
        Some(serde_json::from_slice(&raw).expect("client context is JSON"))
    }
}

#[derive(Default)]
struct Inner {
    behaviours: HashMap<String, Behaviour>,
    counts: HashMap<String, usize>,
    seen: Vec<Invocation>,
}

/// The running server.
#[derive(Clone)]
pub struct LambdaServer {
    port: u16,
    inner: Arc<Mutex<Inner>>,
}

impl LambdaServer {
    /// Starts a server on a free port, as a task of the current runtime.
    pub async fn start() -> LambdaServer {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = axum::Router::new()
            .route(
                "/2015-03-31/functions/{name}/invocations",
                axum::routing::post(invoke),
            )
            .fallback(unknown)
            // RequestResponse payloads go up to 6 MiB.
            .layer(DefaultBodyLimit::max(8 * 1024 * 1024))
            .with_state(inner.clone());
        let port = super::serve(app).await;
        LambdaServer { port, inner }
    }

    /// The URL to give the SDK as `endpoint_url`.
    pub fn endpoint_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().expect("lambda server state")
    }

    /// Sets how `function` answers from now on.
    pub fn script(&self, function: &str, behaviour: Behaviour) {
        self.lock()
            .behaviours
            .insert(function.to_string(), behaviour);
    }

    /// Every invocation so far, in arrival order.
    pub fn invocations(&self) -> Vec<Invocation> {
        self.lock().seen.clone()
    }

    /// The invocations of one function.
    pub fn invocations_of(&self, function: &str) -> Vec<Invocation> {
        self.lock()
            .seen
            .iter()
            .filter(|i| i.function_name == function)
            .cloned()
            .collect()
    }

    /// Waits until `check` holds, polling every 50 ms; panics naming `what` after `limit`.
    pub async fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        check: impl Fn(&[Invocation]) -> bool,
    ) {
        poll(what, limit, Duration::from_millis(50), async || {
            let seen = self.invocations();
            if check(&seen) {
                return Ok(());
            }
            let seen: Vec<_> = seen
                .iter()
                .map(|i| (&i.function_name, &i.invocation_type, i.status))
                .collect();
            Err(format!(
                "invocations so far (function, type, status): {seen:?}"
            ))
        })
        .await;
    }
}

async fn invoke(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let invocation_type =
        header("x-amz-invocation-type").unwrap_or_else(|| "RequestResponse".into());
    let (response, delay) = {
        let mut g = inner.lock().expect("lambda server state");
        let count = g.counts.entry(name.clone()).or_default();
        let nth = *count;
        *count += 1;
        let behaviour = g
            .behaviours
            .get(&name)
            .cloned()
            .unwrap_or(Behaviour::NotFound);
        let (response, delay) = answer(&behaviour, nth, &invocation_type, &name);
        g.seen.push(Invocation {
            function_name: name,
            qualifier: query.get("Qualifier").cloned(),
            invocation_type,
            payload: body.to_vec(),
            client_context: header("x-amz-client-context"),
            signed: header("authorization").is_some_and(|a| a.starts_with("AWS4-HMAC-SHA256 ")),
            status: response.status().as_u16(),
        });
        (response, delay)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    response
}

/// The answer of a function behaving as `behaviour` to its `nth` invocation
/// (from 0), and how long to wait before giving it.
fn answer(
    behaviour: &Behaviour,
    nth: usize,
    invocation_type: &str,
    name: &str,
) -> (Response, Duration) {
    let request_id = ("x-amzn-requestid", format!("req-{name}-{nth}"));
    let error = |status: StatusCode, kind: &'static str, body: String| {
        (
            status,
            [
                ("x-amzn-errortype", kind.to_string()),
                ("content-type", "application/json".to_string()),
                request_id.clone(),
            ],
            body,
        )
            .into_response()
    };
    let response = match behaviour {
        Behaviour::FailThenOk(n, failure) if nth < *n => {
            return answer(failure, nth, invocation_type, name);
        }
        Behaviour::Slow(delay, then) => {
            let (response, more) = answer(then, nth, invocation_type, name);
            return (response, *delay + more);
        }
        Behaviour::Ok | Behaviour::FailThenOk(..) => match invocation_type {
            "Event" => (StatusCode::ACCEPTED, [request_id]).into_response(),
            "DryRun" => (StatusCode::NO_CONTENT, [request_id]).into_response(),
            _ => (
                StatusCode::OK,
                [
                    request_id,
                    ("x-amz-executed-version", "$LATEST".to_string()),
                ],
                r#"{"ok":true}"#,
            )
                .into_response(),
        },
        Behaviour::FunctionError if invocation_type == "Event" => {
            (StatusCode::ACCEPTED, [request_id]).into_response()
        }
        Behaviour::FunctionError => (
            StatusCode::OK,
            [
                request_id,
                ("x-amz-function-error", "Unhandled".to_string()),
                ("x-amz-executed-version", "$LATEST".to_string()),
            ],
            r#"{"errorMessage":"boom"}"#,
        )
            .into_response(),
        Behaviour::Throttle => error(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequestsException",
            r#"{"Type":"User","message":"Rate exceeded"}"#.to_string(),
        ),
        Behaviour::NotFound => error(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            format!(
                r#"{{"Type":"User","Message":"Function not found: arn:aws:lambda:us-east-1:000000000000:function:{name}"}}"#
            ),
        ),
    };
    (response, Duration::ZERO)
}

async fn unknown(uri: axum::http::Uri) -> Response {
    (
        StatusCode::NOT_FOUND,
        format!("no such Lambda API path: {uri}"),
    )
        .into_response()
}
