//! An HTTP proxy in front of the SQS emulator that counts the
//! `ReceiveMessage` calls in flight through it, to see how many receives a
//! worker runs at once. The SDK names the operation in `X-Amz-Target`
//! (`AmazonSQS.ReceiveMessage`, AWS JSON protocol).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

struct Inner {
    target: String,
    client: reqwest::Client,
    in_flight: AtomicUsize,
    most: AtomicUsize,
}

pub struct CountingProxy {
    pub port: u16,
    inner: Arc<Inner>,
}

impl CountingProxy {
    /// Starts a proxy in the current runtime to `target` (`http://host:port`).
    pub async fn start(target: &str) -> CountingProxy {
        let inner = Arc::new(Inner {
            target: target.trim_end_matches('/').to_string(),
            client: reqwest::Client::new(),
            in_flight: AtomicUsize::new(0),
            most: AtomicUsize::new(0),
        });
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(inner.clone());
        let port = super::serve(app).await;
        CountingProxy { port, inner }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The most `ReceiveMessage` calls that were in flight at once so far.
    pub fn most_receives_at_once(&self) -> usize {
        self.inner.most.load(Ordering::SeqCst)
    }
}

async fn forward(
    State(p): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let receive = headers
        .get("x-amz-target")
        .is_some_and(|t| t.as_bytes().ends_with(b".ReceiveMessage"));
    if receive {
        let now = p.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        p.most.fetch_max(now, Ordering::SeqCst);
    }
    let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut request = p
        .client
        .request(method, format!("{}{path}", p.target))
        .body(body);
    for (name, value) in &headers {
        if name != "host" && name != "content-length" {
            request = request.header(name, value);
        }
    }
    let answer = request.send().await;
    if receive {
        p.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
    let Ok(answer) = answer else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    let status = answer.status();
    let mut out = HeaderMap::new();
    for (name, value) in answer.headers() {
        if name != "content-length" && name != "transfer-encoding" && name != "connection" {
            out.insert(name, value.clone());
        }
    }
    let body = answer.bytes().await.unwrap_or_default();
    (status, out, body).into_response()
}
