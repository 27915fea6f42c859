//! `hookq demo`: the embedded default, end to end in one process.
//!
//! A memory queue, a worker, a receiver on 127.0.0.1 that checks every
//! request's `X-Pusher-Signature` against the app secret, and a synthetic
//! realtime server publishing presence joins and leaves, client events and
//! channel life-cycle events for three apps. One endpoint fails for its first
//! second and a half, so retries show. After four seconds of traffic the demo
//! waits for the queue to drain, shuts the worker down and prints a summary.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use hookq_core::{Config, Event, sign};
use hookq_producer::Producer;
use hookq_queue::{MemoryQueue, QueueDriver};
use hookq_worker::{Metrics, Worker};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const APPS: [(&str, &str, &str); 3] = [
    ("chat", "chat-key", "chat-secret"),
    ("game", "game-key", "game-secret"),
    ("office", "office-key", "office-secret"),
];
/// How long the flaky endpoint answers 500.
const FLAKY_FOR: Duration = Duration::from_millis(1500);
const TRAFFIC_FOR: Duration = Duration::from_secs(4);
/// Requests printed in full; after them only a few retries are shown.
const SHOWN: usize = 12;

#[derive(Default)]
struct Seen {
    requests: usize,
    failed_on_purpose: usize,
    bad_signatures: usize,
    events: usize,
    event_ids: HashSet<String>,
    webhook_ids: HashSet<String>,
    retried_batches: usize,
    latencies_ms: Vec<u64>,
}

struct Receiver {
    started: Instant,
    secrets: HashMap<String, String>,
    seen: Mutex<Seen>,
}

async fn receive(
    State(rx): State<Arc<Receiver>>,
    Path((app, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let elapsed = rx.started.elapsed();
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mut seen = rx.seen.lock().unwrap_or_else(|p| p.into_inner());
    seen.requests += 1;
    let retry = !seen.webhook_ids.insert(header("webhook-id").to_string());
    if name == "flaky" && elapsed < FLAKY_FOR {
        seen.failed_on_purpose += 1;
        if seen.failed_on_purpose <= 3 {
            println!(
                "[{:>5.2}s] {app}/{name}: answering 500 on purpose",
                elapsed.as_secs_f64()
            );
        }
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let secret = rx.secrets.get(&app).map(String::as_str).unwrap_or("");
    if header("x-pusher-signature") != sign::pusher_signature(secret, &body) {
        seen.bad_signatures += 1;
        println!(
            "[{:>5.2}s] {app}/{name}: BAD SIGNATURE",
            elapsed.as_secs_f64()
        );
        return StatusCode::UNAUTHORIZED;
    }
    let Ok(envelope) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    let events = envelope["events"].as_array().cloned().unwrap_or_default();
    let now_ms = hookq_core::now_ms();
    let mut names: HashMap<String, usize> = HashMap::new();
    for e in &events {
        *names
            .entry(e["name"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
        if let Some(id) = e["id"].as_str() {
            seen.event_ids.insert(format!("{name}/{id}"));
        }
        // The demo's producer puts its send time in the client events' data.
        if let Some(sent) = e["data"].as_str().and_then(|d| d.parse::<u64>().ok()) {
            seen.latencies_ms.push(now_ms.saturating_sub(sent));
        }
    }
    seen.events += events.len();
    seen.retried_batches += usize::from(retry);
    if seen.requests <= SHOWN || (retry && seen.retried_batches <= 5) {
        let mut kinds: Vec<_> = names.into_iter().map(|(n, c)| format!("{n}×{c}")).collect();
        kinds.sort();
        println!(
            "[{:>5.2}s] {app}/{name}: {} event(s) {}{} — signature ok",
            elapsed.as_secs_f64(),
            events.len(),
            kinds.join(", "),
            if retry {
                " (a retry of an earlier batch)"
            } else {
                ""
            }
        );
    }
    StatusCode::OK
}

fn demo_config(port: u16) -> anyhow::Result<Config> {
    let url = |app: &str, name: &str| format!("http://127.0.0.1:{port}/hooks/{app}/{name}");
    let apps: Vec<serde_json::Value> = APPS
        .iter()
        .map(|(id, key, secret)| {
            let mut webhooks = vec![
                serde_json::json!({"url": url(id, "presence"), "event_types": ["member_added", "member_removed"],
                    "filter": {"channel_type": "presence"}}),
                serde_json::json!({"url": url(id, "activity"),
                    "event_types": ["channel_occupied", "channel_vacated", "client_event", "subscription_count"]}),
            ];
            if *id == "game" {
                webhooks.push(serde_json::json!({"url": url(id, "flaky"), "event_types": ["client_event"]}));
            }
            serde_json::json!({"id": id, "key": key, "secret": secret, "webhooks": webhooks})
        })
        .collect();
    let text = serde_json::json!({
        "app_manager": {"driver": "memory", "array": {"apps": apps}},
        "webhooks": {
            "batching": {"enabled": true, "duration": 50},
            "event_ids": true,
            "retry": {"initial_backoff_ms": 300, "max_backoff_ms": 1000, "max_elapsed_time_ms": 20000}
        },
        "worker": {"shutdown_timeout_ms": 2000}
    })
    .to_string();
    Ok(Config::parse(&text, |_| None)?.0)
}

/// Publishes a realistic mix of events until `stop` fires; returns how many went out.
async fn produce(producer: Producer, stop: CancellationToken) -> anyhow::Result<usize> {
    let mut published = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut n: u64 = 0;
    while !stop.is_cancelled() {
        tick.tick().await;
        for (app, _, _) in APPS {
            n += 1;
            let room = format!("room-{}", n % 5);
            let user = format!("user-{}", n % 17);
            let sent_at = hookq_core::now_ms().to_string();
            let events = vec![
                Event::member_added(format!("presence-{room}"), user.clone()),
                Event::client_event(
                    format!("private-{room}"),
                    "client-typing",
                    sent_at,
                    format!("{n}.1"),
                ),
                match n % 4 {
                    0 => Event::channel_occupied(room.clone()),
                    1 => Event::subscription_count(room.clone(), n % 40),
                    2 => Event::member_removed(format!("presence-{room}"), user),
                    _ => Event::channel_vacated(room),
                },
            ];
            published += producer.publish_batch(app, events).await?.enqueued;
        }
    }
    Ok(published)
}

/// Runs the demo; with `forever`, traffic goes on until Ctrl-C.
pub async fn run(forever: bool) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let receiver = Arc::new(Receiver {
        started: Instant::now(),
        secrets: APPS
            .iter()
            .map(|(id, _, s)| (id.to_string(), s.to_string()))
            .collect(),
        seen: Mutex::new(Seen::default()),
    });
    let app = axum::Router::new()
        .route("/hooks/{app}/{name}", post(receive))
        .with_state(receiver.clone());
    let server_stop = CancellationToken::new();
    let server = {
        let stop = server_stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        })
    };

    let config = Arc::new(demo_config(port)?);
    let queue: Arc<dyn QueueDriver> = Arc::new(MemoryQueue::from_settings(&config.queue.memory));
    let metrics = Arc::new(Metrics::new());
    println!(
        "hookq demo: 3 apps, 7 endpoints on 127.0.0.1:{port}, memory queue, batching window 50 ms.\n\
         The game app's `flaky` endpoint fails for its first {:.1} s, then recovers.\n",
        FLAKY_FOR.as_secs_f64()
    );
    let worker = Worker::new(config.clone(), queue.clone(), metrics.clone())?;
    let worker_stop = CancellationToken::new();
    let worker_task = tokio::spawn(worker.run(worker_stop.clone()));

    let traffic_stop = CancellationToken::new();
    let producing = tokio::spawn(produce(
        Producer::new(queue.clone(), config),
        traffic_stop.clone(),
    ));
    if forever {
        let _ = tokio::signal::ctrl_c().await;
    } else {
        tokio::time::sleep(TRAFFIC_FOR).await;
    }
    traffic_stop.cancel();
    let published = producing.await??;

    // Wait for the queue to drain: nothing ready, delayed or held.
    let drain_deadline = Instant::now() + Duration::from_secs(4);
    while Instant::now() < drain_deadline {
        let d = queue.depth().await?;
        if d.ready + d.delayed + d.held == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    worker_stop.cancel();
    worker_task.await??;
    server_stop.cancel();
    let _ = server.await;

    let depth = queue.depth().await?;
    let seen = receiver.seen.lock().unwrap_or_else(|p| p.into_inner());
    let mut lat = seen.latencies_ms.clone();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0)
    };
    let unique = seen.event_ids.len();
    println!(
        "\nSummary after {:.1} s\n\
         \x20 jobs published            {published}\n\
         \x20 requests received         {} ({} answered 500 on purpose)\n\
         \x20 events delivered          {} ({unique} distinct per endpoint, {} duplicates)\n\
         \x20 retried batches delivered {}\n\
         \x20 bad signatures            {}\n\
         \x20 left in queue / DLQ       {} / {}\n\
         \x20 enqueue→received latency  p50 {} ms, p99 {} ms (client events)",
        receiver.started.elapsed().as_secs_f64(),
        seen.requests,
        seen.failed_on_purpose,
        seen.events,
        seen.events - unique,
        seen.retried_batches,
        seen.bad_signatures,
        depth.ready + depth.delayed + depth.held,
        depth.dead,
        pct(0.5),
        pct(0.99),
    );
    if seen.bad_signatures > 0 || depth.ready + depth.delayed + depth.held + depth.dead > 0 {
        anyhow::bail!("the demo did not deliver everything cleanly");
    }
    Ok(())
}
