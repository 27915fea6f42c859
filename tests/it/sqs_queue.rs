//! The SQS driver against moto's emulator: the conformance suite on a standard
//! and on a FIFO queue, then what only SQS has (redrive to the DLQ, FIFO
//! groups and de-duplication, the 15-minute delay cap, queue resolution).
//!
//! One moto server serves every test; each test makes its own queues, with a
//! unique name, and keeps them shallow (moto slows down as a queue deepens).

use crate::conformance::{HOLD, conformance_suite};
use crate::support::moto::Moto;
use crate::support::process::free_port;
use crate::support::queue::{handles, receive_n};
use hookq_core::config::SqsSettings;
use hookq_queue::sqs::SqsQueue;
use hookq_queue::{DeadLetters, DlqFilter, Outgoing, QueueConsume, QueueDriver, QueuePush};
use std::sync::Arc;
use std::time::Duration;

/// Settings for fresh queues on the shared moto, with the suite's hold time.
fn settings(fifo: bool) -> SqsSettings {
    let kind = if fifo { "fifo" } else { "std" };
    SqsSettings {
        queue_url: None,
        queue_name: format!("hookq-{kind}-{}", hookq_core::new_id("q")),
        queue_url_prefix: None,
        region: "us-east-1".into(),
        endpoint_url: Some(Moto::shared().endpoint_url()),
        visibility_timeout: HOLD,
        wait_time_seconds: 20,
        max_messages: 10,
        concurrency: 4,
        dead_letter_queue_url: None,
        fifo,
        message_group_id: None,
        max_receive_count: 10,
    }
}

/// A driver on moto. moto serves requests on several threads and its
/// ReceiveMessage is not atomic: two receives at once from one queue can get
/// the same message, which SQS never does. Receives from one driver are
/// therefore serialized, so that the suite tests the driver, not moto.
async fn connect(s: &SqsSettings) -> SqsQueue {
    SqsQueue::connect(s)
        .await
        .expect("connect to moto")
        .serialize_receives()
}

async fn make_standard() -> Arc<dyn QueueDriver> {
    Arc::new(connect(&settings(false)).await)
}

async fn make_fifo() -> Arc<dyn QueueDriver> {
    Arc::new(connect(&settings(true)).await)
}

mod standard {
    use super::*;

    // stale_ack_is_harmless and a_lost_hold_is_reported are left out: SQS
    // (and moto, tried) accepts a stale receipt handle, so a lost hold is not
    // seen (docs/sqs.md).
    conformance_suite!(make_standard().await);
}

mod fifo {
    use super::*;

    // Left out on FIFO:
    // - delayed_not_before_its_time, delayed_is_invisible_until_due and
    //   depth_counts_each_state push delayed messages: a FIFO queue has no
    //   per-message delay (max_delay is zero, delays_pushes false): the
    //   worker carries delays in the job and hides a job received early
    //   until it is due.
    // - push_receive_ack holds 25 messages of two groups at once: FIFO gives
    //   nothing more of a group while some of it is in flight.
    conformance_suite!(make_fifo().await; expired_hold_returns, extend_keeps_the_hold,
        dlq_round_trip, concurrent_consumers_never_share, answers_its_capabilities);
}

fn job(id: &str, app: &str) -> Outgoing {
    let body = format!(r#"{{"v":1,"kind":"event","id":"{id}","app_id":"{app}"}}"#);
    Outgoing::now(id, app, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_moves_a_poison_message_to_the_dlq() {
    let mut s = settings(false);
    s.max_receive_count = 2;
    let q = connect(&s).await;
    let poison = job("job-poison", "app-r");
    q.push(vec![poison.clone()]).await.unwrap();

    // Received twice and never acked, as by a worker that crashes on it.
    for want in 1..=2 {
        let got = receive_n(&q, 1, HOLD * 4).await;
        assert_eq!(got.len(), 1, "receive #{want}");
        assert_eq!(got[0].receive_count, want);
    }
    // The next receive after the hold finds it over maxReceiveCount: SQS moves it.
    let after = q.receive(10, HOLD * 2).await.unwrap();
    assert!(after.is_empty(), "received past maxReceiveCount: {after:?}");

    let dead = q.dlq_list(&DlqFilter::default()).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].job, poison.body, "the raw job is kept");
    assert_eq!(dead[0].app_id.as_deref(), Some("app-r"));
    assert!(
        dead[0].reason.contains("redriven by SQS after 2 receives"),
        "{}",
        dead[0].reason
    );
    let by_app = DlqFilter {
        app_id: Some("app-r".into()),
        limit: None,
        ..Default::default()
    };
    assert_eq!(
        q.dlq_list(&by_app).await.unwrap().len(),
        1,
        "filters by the job's app"
    );
    assert_eq!(q.depth().await.unwrap().dead, 1);

    // Replay puts it back as a fresh message.
    assert_eq!(q.dlq_replay(&by_app).await.unwrap(), 1);
    let back = receive_n(&q, 1, Duration::from_secs(5)).await;
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].body, poison.body);
    assert_eq!(back[0].receive_count, 1);
    q.ack(&handles(&back)).await.unwrap();
    assert_eq!(q.depth().await.unwrap().dead, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_groups_by_app() {
    let q = connect(&settings(true)).await;
    assert!(q.queue_url().ends_with(".fifo"), "{}", q.queue_url());
    assert!(q.dead_letter_queue_url().ends_with("-dlq.fifo"));
    q.push(vec![
        job("a1", "app-a"),
        job("a2", "app-a"),
        job("b1", "app-b"),
    ])
    .await
    .unwrap();

    let first = receive_n(&q, 1, Duration::from_secs(5)).await;
    assert_eq!(first.len(), 1);
    assert!(
        first[0].body.contains(r#""id":"a1""#),
        "FIFO order: {}",
        first[0].body
    );
    // While a1 is held, app-a's group gives nothing more; app-b's flows.
    let others = q.receive(10, Duration::from_millis(500)).await.unwrap();
    let bodies: Vec<_> = others.iter().map(|r| r.body.as_str()).collect();
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    assert!(bodies[0].contains(r#""id":"b1""#), "{bodies:?}");
    q.ack(&handles(&others)).await.unwrap();

    q.ack(&handles(&first)).await.unwrap();
    let next = receive_n(&q, 1, Duration::from_secs(5)).await;
    assert_eq!(next.len(), 1);
    assert!(next[0].body.contains(r#""id":"a2""#), "{}", next[0].body);
    q.ack(&handles(&next)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_with_a_configured_group_serialises_every_app() {
    let mut s = settings(true);
    s.message_group_id = Some("all".into());
    let q = connect(&s).await;
    q.push(vec![job("a1", "app-a"), job("b1", "app-b")])
        .await
        .unwrap();
    let first = q.receive(1, Duration::from_secs(2)).await.unwrap();
    assert_eq!(first.len(), 1);
    let blocked = q.receive(10, Duration::from_millis(500)).await.unwrap();
    assert!(blocked.is_empty(), "one group for all apps: {blocked:?}");
    q.ack(&handles(&first)).await.unwrap();
    let second = receive_n(&q, 1, Duration::from_secs(5)).await;
    assert!(
        second[0].body.contains(r#""id":"b1""#),
        "{}",
        second[0].body
    );
    q.ack(&handles(&second)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_deduplicates_by_job_id() {
    let q = connect(&settings(true)).await;
    assert_eq!(
        q.max_delay(),
        Duration::ZERO,
        "FIFO has no per-message delay"
    );
    assert!(
        !q.delays_pushes(),
        "a job not due yet is released, not pushed"
    );
    q.push(vec![job("same", "app-a")]).await.unwrap();
    q.push(vec![job("same", "app-a"), job("other", "app-a")])
        .await
        .unwrap();
    // Looks for a third message for less than the hold, so none comes back.
    let got = receive_n(&q, 3, HOLD / 2).await;
    let mut ids: Vec<_> = got
        .iter()
        .map(|r| {
            if r.body.contains("\"same\"") {
                "same"
            } else {
                "other"
            }
        })
        .collect();
    ids.sort();
    assert_eq!(ids, ["other", "same"]);
    q.ack(&handles(&got)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delay_beyond_15_minutes_is_capped() {
    let q = connect(&settings(false)).await;
    assert_eq!(q.max_delay(), Duration::from_secs(900));
    assert!(q.delays_pushes());
    assert_eq!(q.receive_concurrency(), 4, "queue.sqs.concurrency");
    q.push(vec![
        job("later", "app-a").delayed(Duration::from_secs(3600)),
    ])
    .await
    .expect("SQS refuses DelaySeconds over 900: the driver must cap it");
    let d = q.depth().await.unwrap();
    assert_eq!((d.ready, d.delayed), (0, 1), "{d:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_finds_existing_queues() {
    let s = settings(false);
    let created = connect(&s).await;
    created.push(vec![job("j1", "app-a")]).await.unwrap();

    // By name again, by URL, and by Sockudo's prefix: the same queues.
    let by_name = connect(&s).await;
    assert_eq!(by_name.queue_url(), created.queue_url());
    assert_eq!(
        by_name.dead_letter_queue_url(),
        created.dead_letter_queue_url()
    );
    let mut by_url = s.clone();
    by_url.queue_url = Some(created.queue_url().to_string());
    by_url.dead_letter_queue_url = Some(created.dead_letter_queue_url().to_string());
    let by_url = connect(&by_url).await;
    let (prefix, _) = created.queue_url().rsplit_once('/').unwrap();
    let mut by_prefix = s.clone();
    by_prefix.queue_url_prefix = Some(prefix.to_string());
    let by_prefix = connect(&by_prefix).await;
    assert_eq!(by_prefix.queue_url(), created.queue_url());
    assert_eq!(
        by_prefix.dead_letter_queue_url(),
        created.dead_letter_queue_url()
    );

    let got = receive_n(&by_url, 1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1);
    by_prefix.ack(&handles(&got)).await.unwrap();
    by_name.ping().await.unwrap();
    assert_eq!(created.depth().await.unwrap().held, 0);

    // A queue URL that does not exist is an error at start, not a transient one.
    let mut missing = s.clone();
    missing.queue_url = Some(format!(
        "{prefix}/no-such-queue-{}",
        hookq_core::new_id("q")
    ));
    let err = SqsQueue::connect(&missing)
        .await
        .err()
        .expect("a missing queue fails");
    assert!(!err.is_transient(), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_endpoint_is_transient() {
    let mut s = settings(false);
    s.endpoint_url = Some(format!("http://127.0.0.1:{}", free_port()));
    let err = SqsQueue::connect(&s)
        .await
        .err()
        .expect("nothing listens there");
    assert!(err.is_transient(), "{err}");
}

#[test]
fn moto_harness_stops_its_server() {
    let moto = Moto::start().expect("moto starts");
    let addr = moto
        .endpoint_url()
        .trim_start_matches("http://")
        .to_string();
    assert!(std::net::TcpStream::connect(&addr).is_ok());
    drop(moto);
    assert!(
        std::net::TcpStream::connect(&addr).is_err(),
        "moto still listens on {addr} after drop"
    );
}
