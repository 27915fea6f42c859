//! The Redis driver against the conformance suite, and what only Redis has:
//! external producers, several workers on one prefix, restarts, idle cost.
//!
//! The conformance cases share one redis-server (a plain process, so every
//! test's runtime can use it), each on a key prefix of its own; tests that
//! restart Redis or count its commands start their own.

use crate::conformance::{HOLD, conformance_suite};
use crate::support::queue::{Drain, assert_each_once, drain_together, handles, receive_n};
use crate::support::redis_server::{RedisServer, Reply};
use crate::support::wait::retry;
use hookq_core::DeadLetter;
use hookq_core::config::RedisSettings;
use hookq_queue::redis::{RedisQueue, ready_key};
use hookq_queue::{
    DeadLetters, DlqFilter, Outgoing, QueueConsume, QueueDriver, QueueError, QueuePush,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

fn shared() -> &'static RedisServer {
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    SERVER.get_or_init(RedisServer::start)
}

fn unique_prefix() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn settings(url: &str, prefix: &str) -> RedisSettings {
    RedisSettings {
        url: url.to_string(),
        prefix: prefix.to_string(),
        concurrency: 10,
        lease: HOLD,
        pool_size: 4,
        sentinel: None,
        ..Default::default()
    }
}

async fn driver(url: &str, prefix: &str) -> RedisQueue {
    RedisQueue::connect(&settings(url, prefix))
        .await
        .expect("connect never contacts Redis, so only a bad URL fails")
}

async fn make() -> Arc<dyn QueueDriver> {
    Arc::new(driver(&shared().url(), &unique_prefix()).await)
}

conformance_suite!(make().await);
conformance_suite!(make().await; stale_ack_is_harmless, a_lost_hold_is_reported);

/// Retries `f` while it fails transiently, for at most 10 s.
async fn eventually<T, Fut>(what: &str, f: impl FnMut() -> Fut) -> T
where
    Fut: Future<Output = Result<T, QueueError>>,
{
    let (limit, every) = (Duration::from_secs(10), Duration::from_millis(100));
    retry(what, limit, every, QueueError::is_transient, f).await
}

#[test]
fn the_ready_key_is_the_documented_one() {
    assert_eq!(ready_key("hookq"), "{hookq}:ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_lpush_is_received() {
    let prefix = unique_prefix();
    let q = driver(&shared().url(), &prefix).await;
    assert_eq!(q.key("ready"), ready_key(&prefix));
    // What a producer in another language sends: the bare job JSON.
    let job = r#"{"v":1,"kind":"event","id":"ext-1","app_id":"app-1","enqueued_at_ms":1700000000000,"event":{"name":"channel_occupied","channel":"presence-room"}}"#;
    let reply = shared()
        .command(&["LPUSH", &ready_key(&prefix), job])
        .unwrap();
    assert_eq!(reply, Reply::Int(1));
    let got = receive_n(&q, 1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, job, "the body arrives byte for byte");
    assert_eq!(got[0].receive_count, 1);
    q.ack(&handles(&got)).await.unwrap();
    let d = q.depth().await.unwrap();
    assert_eq!((d.ready, d.delayed, d.held, d.dead), (0, 0, 0, 0), "{d:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_extend_keeps_more_holds_than_a_script_chunk() {
    // The claim and extend scripts work in chunks (unpack's stack limit):
    // 1,200 holds span three extend chunks and two claims.
    const N: usize = 1200;
    let prefix = unique_prefix();
    let a = driver(&shared().url(), &prefix).await;
    let b = driver(&shared().url(), &prefix).await;
    let jobs = (0..N)
        .map(|i| Outgoing::now(format!("{i}"), "app", format!("{{\"n\":{i}}}")))
        .collect();
    a.push(jobs).await.unwrap();
    let held = receive_n(&a, N, Duration::from_secs(10)).await;
    assert_eq!(held.len(), N);
    let mut tokens: Vec<&str> = held.iter().map(|r| r.handle.0.as_str()).collect();
    tokens.sort_unstable();
    tokens.dedup();
    assert_eq!(tokens.len(), N, "every claim has a token of its own");

    // Twice the hold, extended every half hold: nothing may be reclaimed.
    for _ in 0..4 {
        tokio::time::sleep(HOLD / 2).await;
        a.extend(&handles(&held)).await.unwrap();
    }
    let stolen = b.receive(N, Duration::ZERO).await.unwrap();
    assert!(
        stolen.is_empty(),
        "{} extended holds were reclaimed",
        stolen.len()
    );
    a.ack(&handles(&held)).await.unwrap();
    let d = a.depth().await.unwrap();
    assert_eq!((d.ready, d.delayed, d.held, d.dead), (0, 0, 0, 0), "{d:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_never_hold_one_job_and_reclaim_an_expired_lease() {
    let prefix = unique_prefix();
    let a = driver(&shared().url(), &prefix).await;
    let b = driver(&shared().url(), &prefix).await;

    a.push(vec![Outgoing::now("j", "app", "{\"only\":1}")])
        .await
        .unwrap();
    let held_by_a = receive_n(&a, 1, Duration::from_secs(5)).await;
    assert_eq!(held_by_a.len(), 1);
    let early = b.receive(1, HOLD / 2).await.unwrap();
    assert!(early.is_empty(), "b took a job a holds: {early:?}");

    // A dies (never acks): once its lease ends, b gets the job.
    let start = Instant::now();
    let reclaimed = receive_n(&b, 1, HOLD * 4).await;
    assert_eq!(reclaimed.len(), 1, "the expired lease was not reclaimed");
    assert_eq!(reclaimed[0].body, "{\"only\":1}");
    assert_eq!(reclaimed[0].receive_count, 2);
    assert!(
        start.elapsed() < HOLD * 2,
        "reclaimed only after {:?}",
        start.elapsed()
    );

    // A comes back late: its ack and extend must not touch b's hold.
    a.extend(&handles(&held_by_a)).await.unwrap();
    a.ack(&handles(&held_by_a)).await.unwrap();
    assert_eq!(
        a.depth().await.unwrap().held,
        1,
        "a stale ack removed b's hold"
    );
    b.ack(&handles(&reclaimed)).await.unwrap();
    assert_eq!(b.depth().await.unwrap().held, 0);

    // Two workers draining one queue together: each job once.
    const N: usize = 200;
    let bodies: Vec<_> = (0..N)
        .map(|i| Outgoing::now(format!("{i}"), "app", format!("{{\"n\":{i}}}")))
        .collect();
    a.push(bodies).await.unwrap();
    let (a, b) = (Arc::new(a), Arc::new(b));
    let how = Drain {
        max: 9,
        wait: Duration::from_millis(300),
        quiet_rounds: 1,
        limit: Duration::from_secs(30),
        ..Drain::default()
    };
    let got = drain_together(vec![a.clone(), b.clone(), a, b], how).await;
    assert!(got.iter().all(|d| d.msg.receive_count == 1), "{got:?}");
    // One received twice was held twice.
    assert_each_once(&got, N, "jobs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_jobs_move_exactly_once_with_several_consumers() {
    const N: usize = 300;
    let prefix = unique_prefix();
    let mut workers = Vec::new();
    for _ in 0..4 {
        workers.push(Arc::new(driver(&shared().url(), &prefix).await));
    }
    let delay = Duration::from_millis(1500);
    let pushed_at = Instant::now();
    let jobs = (0..N)
        .map(|i| Outgoing::now(format!("{i}"), "app", format!("{{\"d\":{i}}}")).delayed(delay))
        .collect();
    workers[0].push(jobs).await.unwrap();
    assert_eq!(workers[0].depth().await.unwrap().delayed, N as u64);

    // Empty receives before the jobs are due do not end the drain.
    let how = Drain {
        max: 25,
        wait: Duration::from_millis(700),
        quiet_rounds: 2,
        quiet_after: Duration::from_secs(2),
        limit: Duration::from_secs(20),
        ..Drain::default()
    };
    let got = drain_together(workers.clone(), how).await;
    for d in &got {
        let (body, at) = (&d.msg.body, d.at - pushed_at);
        assert_eq!(d.msg.receive_count, 1);
        // The due time is the server's; allow for the clocks' rounding.
        assert!(
            at + Duration::from_millis(20) >= delay,
            "{body} received after {at:?}"
        );
    }
    // One received twice was moved twice.
    assert_each_once(&got, N, "delayed jobs");
    let d = workers[0].depth().await.unwrap();
    assert_eq!((d.ready, d.delayed, d.held), (0, 0, 0), "{d:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_bodies_stay_distinct_jobs() {
    let q = make().await;
    let same = || Outgoing::now("same", "app", "{\"same\":true}");
    q.push(vec![
        same(),
        same(),
        same().delayed(Duration::from_millis(200)),
        same().delayed(Duration::from_millis(200)),
    ])
    .await
    .unwrap();
    let got = receive_n(&*q, 4, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 4, "{got:?}");
    let mut tokens: Vec<_> = handles(&got).into_iter().map(|h| h.0).collect();
    tokens.sort();
    tokens.dedup();
    assert_eq!(tokens.len(), 4, "each hold has its own token");
    q.ack(&handles(&got)).await.unwrap();
    assert_eq!(q.depth().await.unwrap().held, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_receive_wakes_on_a_push_and_on_a_due_job() {
    let q = make().await;
    let waiter = {
        let q = q.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let got = q.receive(1, Duration::from_secs(20)).await.unwrap();
            (got, start.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    q.push(vec![Outgoing::now("w", "app", "{\"wake\":1}")])
        .await
        .unwrap();
    let (got, waited) = waiter.await.unwrap();
    assert_eq!(got.len(), 1);
    assert!(
        waited < Duration::from_secs(10),
        "woke only after {waited:?}"
    );
    q.ack(&handles(&got)).await.unwrap();

    // Nothing is pushed: the block must end by itself when the delay is over.
    q.push(vec![
        Outgoing::now("d", "app", "{\"due\":1}").delayed(Duration::from_secs(1)),
    ])
    .await
    .unwrap();
    let start = Instant::now();
    let got = q.receive(1, Duration::from_secs(20)).await.unwrap();
    let waited = start.elapsed();
    assert_eq!(got.len(), 1, "the due job was not received");
    assert!(
        waited >= Duration::from_millis(900),
        "received early, after {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(10),
        "woke only after {waited:?}"
    );
    q.ack(&handles(&got)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_receive_blocks_instead_of_polling() {
    // A server of its own: INFO counts every client's commands.
    let server = RedisServer::start();
    let q = driver(&server.url(), "idle").await;
    // Connections made and scripts loaded.
    assert!(q.receive(1, Duration::ZERO).await.unwrap().is_empty());
    let before = server.command_calls().unwrap();
    let start = Instant::now();
    let got = q.receive(10, Duration::from_secs(5)).await.unwrap();
    let waited = start.elapsed();
    let after = server.command_calls().unwrap();
    assert!(got.is_empty());
    assert!(
        waited >= Duration::from_millis(4900),
        "returned after {waited:?}"
    );
    let delta: HashMap<_, _> = after
        .iter()
        .map(|(name, n)| (name.clone(), n - before.get(name).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect();
    let total: u64 = delta.values().sum();
    eprintln!("an idle receive(10, 5 s) issued {total} commands: {delta:?}");
    assert!(
        total < 20,
        "an idle receive polls: {total} commands in 5 s: {delta:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_driver_works_again_after_a_redis_restart() {
    let mut server = RedisServer::start_persistent();
    let q = driver(&server.url(), "restart").await;
    let job = |i: u32| Outgoing::now(format!("{i}"), "app", format!("{{\"r\":{i}}}"));
    q.push(vec![job(1), job(2), job(3)]).await.unwrap();
    let done = receive_n(&q, 1, Duration::from_secs(5)).await;
    q.ack(&handles(&done)).await.unwrap();
    let held = receive_n(&q, 1, Duration::from_secs(5)).await;
    assert_eq!(held.len(), 1);
    // The receives above left idle connections behind, which the restart kills.

    let (port, pid) = (server.port(), server.pid());
    server.restart();
    assert_eq!(server.port(), port);
    assert_ne!(server.pid(), pid, "a new process");
    assert!(server.dir().join("appendonlydir").is_dir());

    // Scripts are gone and every connection is dead: all of it must come back by itself.
    eventually("ping", || q.ping()).await;
    let d = eventually("depth", || q.depth()).await;
    assert_eq!(d.held + d.ready, 2, "the restart lost jobs: {d:?}");

    let mut rest = Vec::new();
    let start = Instant::now();
    while rest.len() < 2 && start.elapsed() < HOLD * 5 {
        match q.receive(2, Duration::from_millis(500)).await {
            Ok(got) => rest.extend(got),
            Err(e) => assert!(e.is_transient(), "{e}"),
        }
    }
    let mut bodies: Vec<_> = rest.iter().map(|r| r.body.as_str()).collect();
    bodies.sort();
    let mut want: Vec<_> = ["{\"r\":1}", "{\"r\":2}", "{\"r\":3}"]
        .into_iter()
        .filter(|b| *b != done[0].body)
        .collect();
    want.sort();
    assert_eq!(
        bodies, want,
        "after the restart: the held job (lease expired) and the ready one"
    );
    let reclaimed = rest.iter().find(|r| r.body == held[0].body).unwrap();
    assert_eq!(
        reclaimed.receive_count, 2,
        "the receive count survived the restart"
    );
    q.ack(&handles(&rest)).await.unwrap();

    q.push(vec![job(4)]).await.unwrap();
    let fresh = receive_n(&q, 1, Duration::from_secs(5)).await;
    assert_eq!(fresh.len(), 1);
    q.ack(&handles(&fresh)).await.unwrap();
    let d = q.depth().await.unwrap();
    assert_eq!((d.ready, d.delayed, d.held), (0, 0, 0), "{d:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_is_transient_and_the_driver_recovers() {
    let mut server = RedisServer::start();
    server.kill();
    assert!(!server.is_running());
    // Down at start: connecting is not an error, using it is a transient one.
    let q = driver(&server.url(), "down").await;
    let start = Instant::now();
    let ping = q.ping().await.unwrap_err();
    assert!(ping.is_transient(), "{ping}");
    let receive = q.receive(1, Duration::from_secs(1)).await.unwrap_err();
    assert!(receive.is_transient(), "{receive}");
    let push = q
        .push(vec![Outgoing::now("x", "app", "{}")])
        .await
        .unwrap_err();
    assert!(push.is_transient(), "{push}");
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "failing took {:?}",
        start.elapsed()
    );

    server.resume();
    let back = || vec![Outgoing::now("x", "app", "{\"back\":1}")];
    eventually("push", || q.push(back())).await;
    let got = receive_n(&q, 1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, "{\"back\":1}");
    q.ack(&handles(&got)).await.unwrap();
}

fn dead(app: &str, n: u32) -> DeadLetter {
    DeadLetter {
        job: format!("{{\"dead\":{n}}}"),
        job_base64: None,
        reason: format!("HTTP 500 #{n}"),
        failed_at_ms: 1_700_000_000_000 + u64::from(n),
        app_id: Some(app.to_string()),
        endpoint: None,
        attempts: 3,
        last_status: Some(500),
        body_excerpt: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_replay_and_purge_keep_the_order_of_what_stays() {
    let prefix = unique_prefix();
    let q = driver(&shared().url(), &prefix).await;
    q.dead_letter(vec![dead("a", 1), dead("b", 2)])
        .await
        .unwrap();
    // An entry some other tool wrote: listed never, replayed never, purged by a full purge.
    shared()
        .command(&["RPUSH", &q.key("dead"), "not json"])
        .unwrap();
    q.dead_letter(vec![dead("a", 3), dead("b", 4), dead("a", 5)])
        .await
        .unwrap();

    let reasons = |list: Vec<DeadLetter>| list.into_iter().map(|e| e.reason).collect::<Vec<_>>();
    let all = q.dlq_list(&DlqFilter::default()).await.unwrap();
    assert_eq!(all.len(), 5);
    let two = DlqFilter {
        app_id: None,
        limit: Some(2),
        ..Default::default()
    };
    assert_eq!(
        reasons(q.dlq_list(&two).await.unwrap()),
        ["HTTP 500 #1", "HTTP 500 #2"]
    );

    let a_two = DlqFilter {
        app_id: Some("a".into()),
        limit: Some(2),
        ..Default::default()
    };
    assert_eq!(q.dlq_replay(&a_two).await.unwrap(), 2);
    assert_eq!(
        reasons(q.dlq_list(&DlqFilter::default()).await.unwrap()),
        ["HTTP 500 #2", "HTTP 500 #4", "HTTP 500 #5"],
        "oldest first, and what stays keeps its order"
    );
    let replayed = receive_n(&q, 2, Duration::from_secs(5)).await;
    let mut bodies: Vec<_> = replayed.iter().map(|r| r.body.clone()).collect();
    bodies.sort();
    assert_eq!(bodies, ["{\"dead\":1}", "{\"dead\":3}"]);
    q.ack(&handles(&replayed)).await.unwrap();

    let only_b = DlqFilter {
        app_id: Some("b".into()),
        limit: None,
        ..Default::default()
    };
    assert_eq!(q.dlq_purge(&only_b).await.unwrap(), 2);
    // A replay of everything leaves the unreadable entry where it is; a full purge removes it.
    assert_eq!(q.dlq_replay(&DlqFilter::default()).await.unwrap(), 1);
    assert_eq!(q.depth().await.unwrap().dead, 1);
    assert_eq!(q.dlq_purge(&DlqFilter::default()).await.unwrap(), 1);
    assert_eq!(q.depth().await.unwrap().dead, 0);
    let got = receive_n(&q, 1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, "{\"dead\":5}");
    q.ack(&handles(&got)).await.unwrap();
}

/// Replay and purge walk the DLQ in steps of 1,000 entries: across steps the
/// app filter and the limit keep their meaning, each replayed entry leaves
/// the DLQ and its job is on the queue once, and what stays keeps its order,
/// whichever end the walk's kept entries are put back at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_walks_longer_than_a_step_keep_filter_limit_and_order() {
    let q = driver(&shared().url(), &unique_prefix()).await;
    let all: Vec<DeadLetter> = (0..3000)
        .map(|n| dead(if n % 2 == 0 { "a" } else { "b" }, n))
        .collect();
    for chunk in all.chunks(500) {
        q.dead_letter(chunk.to_vec()).await.unwrap();
    }
    let list = async || q.dlq_list(&DlqFilter::default()).await.unwrap();
    let filter = |app: &str, limit| DlqFilter {
        app_id: Some(app.into()),
        limit: Some(limit),
        ..Default::default()
    };

    // The 600 oldest of app a: the walk stops in its second step, having
    // kept 599 entries of b, fewer than the 1,801 it did not reach.
    assert_eq!(q.dlq_replay(&filter("a", 600)).await.unwrap(), 600);
    let mut want: Vec<DeadLetter> = all
        .iter()
        .filter(|e| !(e.app_id.as_deref() == Some("a") && e.failed_at_ms < 1_700_000_001_200))
        .cloned()
        .collect();
    assert_eq!(list().await, want, "what stays, in its order");
    let replayed = receive_n(&q, 600, Duration::from_secs(10)).await;
    let mut bodies: Vec<String> = replayed.iter().map(|r| r.body.clone()).collect();
    bodies.sort();
    let mut expected: Vec<String> = (0..600)
        .map(|i| format!("{{\"dead\":{}}}", 2 * i))
        .collect();
    expected.sort();
    assert_eq!(bodies, expected, "each replayed job on the queue once");
    q.ack(&handles(&replayed)).await.unwrap();

    // 1,300 of app b: it stops in its second step having kept 700 of a,
    // more than the 400 it did not reach.
    assert_eq!(q.dlq_purge(&filter("b", 1300)).await.unwrap(), 1300);
    let mut purged = 0;
    want.retain(|e| {
        let b = e.app_id.as_deref() == Some("b");
        purged += usize::from(b);
        !(b && purged <= 1300)
    });
    assert_eq!(list().await, want, "what stays, in its order");
    assert_eq!(q.depth().await.unwrap().dead, 1100);
}

/// A walk covers what the DLQ held when it began: the entries it keeps
/// (pushed back behind the others) and entries dead-lettered while it runs,
/// even ones it would take, are not walked again, so it ends however many
/// keep coming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dlq_walk_ends_while_entries_keep_coming() {
    let prefix = unique_prefix();
    let q = Arc::new(driver(&shared().url(), &prefix).await);
    let first: Vec<DeadLetter> = (0..5000)
        .map(|n| dead(if n % 2 == 0 { "a" } else { "b" }, n))
        .collect();
    for chunk in first.chunks(500) {
        q.dead_letter(chunk.to_vec()).await.unwrap();
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let feeder = {
        let (q, stop) = (q.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.is_cancelled() {
                let late: Vec<DeadLetter> = (n..n + 10)
                    .map(|n| DeadLetter {
                        reason: format!("late #{n}"),
                        ..dead("a", n)
                    })
                    .collect();
                q.dead_letter(late).await.unwrap();
                n += 10;
                tokio::task::yield_now().await;
            }
            n
        })
    };
    let only_a = DlqFilter {
        app_id: Some("a".into()),
        limit: None,
        ..Default::default()
    };
    let purged = tokio::time::timeout(Duration::from_secs(20), q.dlq_purge(&only_a))
        .await
        .expect("the purge ends while entries keep coming")
        .unwrap();
    stop.cancel();
    let late = feeder.await.unwrap();
    let left = q.dlq_list(&DlqFilter::default()).await.unwrap();
    eprintln!(
        "purged {purged}; {late} entries dead-lettered meanwhile, {} left",
        left.len()
    );
    let (late_left, kept): (Vec<DeadLetter>, Vec<DeadLetter>) =
        left.into_iter().partition(|e| e.reason.starts_with("late"));
    let b: Vec<DeadLetter> = first
        .iter()
        .filter(|e| e.app_id.as_deref() == Some("b"))
        .cloned()
        .collect();
    assert_eq!(
        kept, b,
        "every entry of a at the start purged, b's kept in order"
    );
    assert!(
        !late_left.is_empty(),
        "entries dead-lettered during the walk stay"
    );
    assert_eq!(
        purged + late_left.len(),
        b.len() + late as usize,
        "nothing lost: 2,500 entries of a at the start, and the late ones"
    );
}
