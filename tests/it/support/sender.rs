//! A realtime server's webhook sender, as Sockudo, Soketi and Pusher send:
//! `POST` of `{"time_ms", "events"}` with `X-Pusher-Key` and
//! `X-Pusher-Signature` (hex HMAC-SHA256 of the body with the app secret,
//! computed here with `hmac` directly, not with hookq's code).

use crate::support::receiver::hmac_hex;
use serde_json::{Value, json};
use std::time::Duration;

/// A webhook body of these events, stamped now.
pub fn body(events: &[Value]) -> Vec<u8> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    serde_json::to_vec(&json!({"time_ms": now, "events": events})).unwrap()
}

/// The answer to one post: status, `Retry-After`, body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: String,
}

#[derive(Clone)]
pub struct Sender {
    client: reqwest::Client,
}

impl Sender {
    pub fn new() -> Self {
        Self {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        }
    }

    /// Posts `body` signed with `secret` under `key`.
    pub async fn post(
        &self,
        url: &str,
        key: &str,
        secret: &str,
        body: &[u8],
    ) -> reqwest::Result<Answer> {
        let signature = hmac_hex(secret.as_bytes(), body);
        self.send(
            url,
            &[("x-pusher-key", key), ("x-pusher-signature", &signature)],
            body,
        )
        .await
    }

    /// Posts `body` with exactly these headers (besides `Content-Type`).
    pub async fn send(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> reqwest::Result<Answer> {
        let mut request = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_vec());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await?;
        Ok(Answer {
            status: response.status().as_u16(),
            retry_after: response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            body: response.text().await?,
        })
    }

    /// Posts until a `200`, as Sockudo does with what it has not delivered:
    /// on a connection error or any other answer, waits and tries again,
    /// taking the next of `urls` each time (a load balancer's choice).
    pub async fn post_until_ok(
        &self,
        urls: &[String],
        key: &str,
        secret: &str,
        body: &[u8],
        limit: Duration,
    ) -> usize {
        let start = std::time::Instant::now();
        let mut tries = 0;
        loop {
            let url = &urls[tries % urls.len()];
            tries += 1;
            match self.post(url, key, secret, body).await {
                Ok(a) if a.status == 200 => return tries,
                _ => {
                    assert!(
                        start.elapsed() < limit,
                        "no 200 from any ingest within {limit:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}
