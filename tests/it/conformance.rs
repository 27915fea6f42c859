//! The conformance suite every [`QueueDriver`] must pass.
//!
//! Each case takes a fresh driver whose hold time is [`HOLD`] (so expiry is
//! quick to observe) and asserts what a worker relies on. Ordering is not
//! assumed. [`conformance_suite!`] stamps the cases out as tests for one driver.

use crate::support::queue::{Drain, assert_each_once, drain, drain_together, handles, receive_n};
use hookq_core::DeadLetter;
use hookq_queue::{DlqFilter, Keyed, Once, Outgoing, QueueDriver};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The hold time drivers under test are configured with.
pub const HOLD: Duration = Duration::from_secs(2);

fn msg(i: usize) -> Outgoing {
    Outgoing::now(
        format!("job-{i}"),
        format!("app-{}", i % 2),
        format!("{{\"n\":{i}}}"),
    )
}

pub async fn push_receive_ack(q: Arc<dyn QueueDriver>) {
    q.push((0..25).map(msg).collect()).await.unwrap();
    let got = receive_n(&*q, 25, Duration::from_secs(10)).await;
    let mut bodies: Vec<_> = got.iter().map(|r| r.body.clone()).collect();
    bodies.sort();
    let mut want: Vec<_> = (0..25).map(|i| msg(i).body).collect();
    want.sort();
    assert_eq!(bodies, want, "every pushed message is received once");
    assert!(got.iter().all(|r| r.receive_count == 1));
    assert_eq!(q.depth().await.unwrap().held, 25);
    q.ack(&handles(&got)).await.unwrap();
    tokio::time::sleep(HOLD + Duration::from_millis(500)).await;
    let again = q.receive(10, Duration::from_millis(500)).await.unwrap();
    assert!(again.is_empty(), "acked messages came back: {again:?}");
    let d = q.depth().await.unwrap();
    assert_eq!((d.ready, d.held, d.delayed), (0, 0, 0));
}

pub async fn expired_hold_returns(q: Arc<dyn QueueDriver>) {
    q.push(vec![msg(1)]).await.unwrap();
    let first = receive_n(&*q, 1, Duration::from_secs(5)).await;
    assert_eq!(first.len(), 1);
    let second = receive_n(&*q, 1, HOLD * 4).await;
    assert_eq!(
        second.len(),
        1,
        "a message whose hold expired must come back"
    );
    assert_eq!(second[0].body, msg(1).body);
    assert_eq!(second[0].receive_count, 2);
    q.ack(&[second[0].handle.clone()]).await.unwrap();
}

pub async fn extend_keeps_the_hold(q: Arc<dyn QueueDriver>) {
    q.push(vec![msg(1)]).await.unwrap();
    let got = receive_n(&*q, 1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1);
    let start = Instant::now();
    while start.elapsed() < HOLD * 2 {
        q.extend(&[got[0].handle.clone()]).await.unwrap();
        let stolen = q.receive(1, HOLD / 4).await.unwrap();
        assert!(stolen.is_empty(), "an extended hold was given away");
    }
    q.ack(&[got[0].handle.clone()]).await.unwrap();
}

pub async fn delayed_not_before_its_time(q: Arc<dyn QueueDriver>) {
    let delay = Duration::from_secs(2);
    let pushed_at = Instant::now();
    q.push(vec![msg(7).delayed(delay), msg(8)]).await.unwrap();
    let how = Drain {
        max: 2,
        wait: Duration::from_millis(200),
        until: 2,
        quiet_rounds: usize::MAX,
        limit: Duration::from_secs(10),
        ..Drain::default()
    };
    let seen: Vec<_> = drain(&*q, how)
        .await
        .into_iter()
        .map(|d| (d.msg.body, d.at - pushed_at))
        .collect();
    assert_eq!(seen.len(), 2, "both messages arrive: {seen:?}");
    assert_eq!(seen[0].0, msg(8).body, "the undelayed message comes first");
    assert_eq!(seen[1].0, msg(7).body);
    assert!(
        seen[1].1 >= delay,
        "delayed message received after {:?}",
        seen[1].1
    );
}

pub async fn delayed_is_invisible_until_due(q: Arc<dyn QueueDriver>) {
    q.push(vec![msg(3).delayed(Duration::from_secs(3))])
        .await
        .unwrap();
    let early = q.receive(10, Duration::from_secs(1)).await.unwrap();
    assert!(early.is_empty(), "delayed message received early");
    let later = receive_n(&*q, 1, Duration::from_secs(10)).await;
    assert_eq!(later.len(), 1);
    q.ack(&[later[0].handle.clone()]).await.unwrap();
}

fn entry(app: &str, n: usize) -> DeadLetter {
    DeadLetter {
        job: format!("{{\"dead\":{n}}}"),
        job_base64: None,
        reason: format!("HTTP 400 #{n}"),
        failed_at_ms: 1_700_000_000_000 + n as u64,
        app_id: Some(app.to_string()),
        endpoint: Some("0-abc".into()),
        attempts: 1,
        last_status: Some(400),
        body_excerpt: Some("bad".into()),
    }
}

pub async fn dlq_round_trip(q: Arc<dyn QueueDriver>) {
    let entries = vec![entry("a", 1), entry("b", 2), entry("a", 3)];
    q.dead_letter(entries.clone()).await.unwrap();
    let all = q.dlq_list(&DlqFilter::default()).await.unwrap();
    let mut reasons: Vec<_> = all.iter().map(|e| e.reason.clone()).collect();
    reasons.sort();
    assert_eq!(reasons, ["HTTP 400 #1", "HTTP 400 #2", "HTTP 400 #3"]);
    assert!(all.contains(&entries[0]), "entries keep every field");
    let only_a = DlqFilter {
        app_id: Some("a".into()),
        limit: None,
        ..Default::default()
    };
    assert_eq!(q.dlq_list(&only_a).await.unwrap().len(), 2);
    assert_eq!(q.dlq_replay(&only_a).await.unwrap(), 2);
    let replayed = receive_n(&*q, 2, Duration::from_secs(10)).await;
    let mut bodies: Vec<_> = replayed.iter().map(|r| r.body.clone()).collect();
    bodies.sort();
    assert_eq!(bodies, ["{\"dead\":1}", "{\"dead\":3}"]);
    q.ack(&handles(&replayed)).await.unwrap();
    assert_eq!(q.depth().await.unwrap().dead, 1);
    assert_eq!(q.dlq_purge(&DlqFilter::default()).await.unwrap(), 1);
    assert!(q.dlq_list(&DlqFilter::default()).await.unwrap().is_empty());
}

/// Issue 17: the DLQ filters — endpoint, reason (a substring, ASCII
/// case-insensitive), age bounds, ids and offset — select the same entries
/// when listing, replaying and purging, on every driver; an entry's id is
/// the same in every listing.
pub async fn dlq_filters(q: Arc<dyn QueueDriver>) {
    const T0: u64 = 1_700_000_000_000;
    let entries: Vec<DeadLetter> = (0..8)
        .map(|n| DeadLetter {
            endpoint: Some(if n % 2 == 0 { "e1" } else { "e2" }.into()),
            reason: if n < 4 {
                format!("HTTP 500 #{n}")
            } else {
                format!("Timed Out #{n}")
            },
            failed_at_ms: T0 + n as u64 * 1000,
            ..entry("a", n)
        })
        .collect();
    q.dead_letter(entries).await.unwrap();
    let list = async |f: DlqFilter| -> Vec<String> {
        let got = q.dlq_entries(&f).await.unwrap();
        got.iter().map(|e| e.entry.job.clone()).collect()
    };
    let all = q.dlq_entries(&DlqFilter::default()).await.unwrap();
    assert_eq!(all.len(), 8);
    let ids: Vec<String> = all.iter().map(|e| e.id.clone()).collect();
    assert!(
        ids.iter()
            .all(|i| i.len() == 40 && i.chars().all(|c| c.is_ascii_hexdigit()))
    );
    assert_eq!(
        ids.iter().collect::<std::collections::HashSet<_>>().len(),
        8
    );
    let again: Vec<String> = q
        .dlq_entries(&DlqFilter::default())
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(again, ids, "the same ids in every listing");
    let dead =
        |ns: &[usize]| -> Vec<String> { ns.iter().map(|n| format!("{{\"dead\":{n}}}")).collect() };
    let f = DlqFilter::default;
    assert_eq!(
        list(DlqFilter {
            endpoint: Some("e1".into()),
            ..f()
        })
        .await,
        dead(&[0, 2, 4, 6])
    );
    assert_eq!(
        list(DlqFilter {
            reason: Some("timed out".into()),
            ..f()
        })
        .await,
        dead(&[4, 5, 6, 7])
    );
    assert_eq!(
        list(DlqFilter {
            failed_before_ms: Some(T0 + 2000),
            ..f()
        })
        .await,
        dead(&[0, 1, 2])
    );
    assert_eq!(
        list(DlqFilter {
            failed_after_ms: Some(T0 + 6000),
            ..f()
        })
        .await,
        dead(&[6, 7])
    );
    let e2_http = DlqFilter {
        endpoint: Some("e2".into()),
        reason: Some("http 5".into()),
        ..f()
    };
    assert_eq!(list(e2_http.clone()).await, dead(&[1, 3]));
    let by_id = DlqFilter {
        ids: Some(vec![ids[5].clone(), ids[6].to_uppercase()]),
        ..f()
    };
    assert_eq!(list(by_id).await, dead(&[5, 6]));
    assert_eq!(
        list(DlqFilter {
            offset: 3,
            limit: Some(2),
            ..f()
        })
        .await,
        dead(&[3, 4])
    );
    assert_eq!(
        list(DlqFilter {
            app_id: Some("b".into()),
            ..f()
        })
        .await,
        dead(&[])
    );

    assert_eq!(q.dlq_replay(&e2_http).await.unwrap(), 2);
    let replayed = receive_n(&*q, 2, Duration::from_secs(10)).await;
    let mut bodies: Vec<_> = replayed.iter().map(|r| r.body.clone()).collect();
    bodies.sort();
    assert_eq!(bodies, dead(&[1, 3]));
    q.ack(&handles(&replayed)).await.unwrap();
    let first = DlqFilter {
        ids: Some(vec![ids[0].clone()]),
        ..f()
    };
    assert_eq!(q.dlq_purge(&first).await.unwrap(), 1);
    let late_timeouts = DlqFilter {
        reason: Some("TIMED".into()),
        failed_after_ms: Some(T0 + 6000),
        ..f()
    };
    assert_eq!(q.dlq_purge(&late_timeouts).await.unwrap(), 2);
    assert_eq!(list(f()).await, dead(&[2, 4, 5]));
    assert_eq!(q.dlq_purge(&f()).await.unwrap(), 3);
}

pub async fn concurrent_consumers_never_share(q: Arc<dyn QueueDriver>) {
    const N: usize = 120;
    for chunk in (0..N).collect::<Vec<_>>().chunks(10) {
        q.push(chunk.iter().map(|&i| msg(i)).collect())
            .await
            .unwrap();
    }
    let how = Drain {
        max: 7,
        wait: Duration::from_millis(300),
        quiet_rounds: 3,
        limit: Duration::from_secs(30),
        ..Drain::default()
    };
    let got = drain_together(vec![q.clone(); 4], how).await;
    // One received twice was held by two consumers.
    assert_each_once(&got, N, "messages");
}

pub async fn depth_counts_each_state(q: Arc<dyn QueueDriver>) {
    q.push(vec![
        msg(1),
        msg(2),
        msg(3).delayed(Duration::from_secs(60)),
    ])
    .await
    .unwrap();
    q.dead_letter(vec![entry("a", 1)]).await.unwrap();
    let got = receive_n(&*q, 1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1);
    let d = q.depth().await.unwrap();
    assert_eq!((d.ready, d.delayed, d.held, d.dead), (1, 1, 1, 1), "{d:?}");
}

/// What the driver answers about itself: the hold it was built with, at
/// least one receive loop, and a delay on pushes exactly when a push can
/// carry one.
pub async fn answers_its_capabilities(q: Arc<dyn QueueDriver>) {
    assert_eq!(q.hold(), HOLD);
    assert!(q.receive_concurrency() >= 1);
    assert_eq!(
        q.delays_pushes(),
        !q.max_delay().is_zero(),
        "delays_pushes {}, max_delay {:?}",
        q.delays_pushes(),
        q.max_delay()
    );
}

/// Acking a handle whose hold expired (and was taken by another worker) must
/// not remove the message from its new holder. Not for SQS, whose stale
/// receipt handles may still delete.
pub async fn stale_ack_is_harmless(q: Arc<dyn QueueDriver>) {
    q.push(vec![msg(1)]).await.unwrap();
    let first = receive_n(&*q, 1, Duration::from_secs(5)).await;
    let second = receive_n(&*q, 1, HOLD * 4).await;
    assert_eq!(second.len(), 1);
    q.ack(&[first[0].handle.clone()]).await.unwrap();
    assert_eq!(
        q.depth().await.unwrap().held,
        1,
        "a stale ack removed the new hold"
    );
    q.ack(&[second[0].handle.clone()]).await.unwrap();
    assert_eq!(q.depth().await.unwrap().held, 0);
}

/// Several keyed pushes in one call are answered each on its own: a key
/// already set pushes nothing, the others push theirs.
pub async fn push_once_each_answers_each_group(q: Arc<dyn QueueDriver>) {
    let key = |k: &str| format!("each-{k}-{}", hookq_core::new_id("k"));
    let (a, b) = (key("a"), key("b"));
    let window = Duration::from_secs(60);
    let group = |key: &str, from: usize| Keyed {
        key: key.to_string(),
        window,
        messages: vec![msg(from), msg(from + 1)],
    };
    assert_eq!(
        q.push_once(&b, window, vec![msg(9)]).await.unwrap(),
        Once::Pushed
    );
    // A zero window is no key: pushed whatever was pushed under it.
    let unkeyed = Keyed {
        window: Duration::ZERO,
        ..group(&b, 7)
    };
    let groups = vec![group(&a, 1), group(&b, 3), group(&key("c"), 5), unkeyed];
    let answers: Vec<Once> = q
        .push_once_each(groups)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    use Once::{Duplicate, Pushed};
    assert_eq!(answers, [Pushed, Duplicate, Pushed, Pushed]);
    let how = Drain {
        until: 7,
        ..Drain::default()
    };
    let got = drain(&*q, how).await;
    let mut bodies: Vec<String> = got.iter().map(|d| d.msg.body.clone()).collect();
    bodies.sort();
    let mut want: Vec<String> = [1, 2, 5, 6, 7, 8, 9].iter().map(|i| msg(*i).body).collect();
    want.sort();
    assert_eq!(bodies, want, "the duplicate group pushed nothing");
}

/// A hold that expired and was taken by another receive is reported gone by
/// `extend` (so its first holder settles nothing more for it) and by `ack`,
/// and extending the new hold still works.
pub async fn a_lost_hold_is_reported(q: Arc<dyn QueueDriver>) {
    q.push(vec![msg(1)]).await.unwrap();
    let first = receive_n(&*q, 1, Duration::from_secs(5)).await;
    let second = receive_n(&*q, 1, HOLD * 4).await;
    assert_eq!(second.len(), 1);
    let both = [first[0].handle.clone(), second[0].handle.clone()];
    assert_eq!(
        q.extend(&both).await.unwrap(),
        vec![first[0].handle.clone()],
        "only the first hold is gone"
    );
    assert_eq!(q.ack(&both).await.unwrap(), 1, "one ack came too late");
    assert_eq!(q.depth().await.unwrap().held, 0);
}

/// Stamps out the suite as `#[tokio::test]`s for a driver; `$make` is an async
/// expression giving an `Arc<dyn QueueDriver>` with hold time [`HOLD`].
macro_rules! conformance_suite {
    ($make:expr) => {
        conformance_suite!($make; push_receive_ack, expired_hold_returns, extend_keeps_the_hold,
            delayed_not_before_its_time, delayed_is_invisible_until_due, dlq_round_trip,
            dlq_filters, concurrent_consumers_never_share, depth_counts_each_state, answers_its_capabilities,
            push_once_each_answers_each_group);
    };
    ($make:expr; $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                $crate::conformance::$case($make).await
            }
        )+
    };
}
pub(crate) use conformance_suite;
