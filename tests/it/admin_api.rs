//! The admin API (issue 17 items 1 and 4) against a real `hookq worker`
//! process on a real redis-server, with real receivers: every route, the
//! token refused when missing or wrong and the API off without one, DLQ
//! paging and filters, an entry's detail, replay by id reaching the failed
//! endpoint only, purge by filter and by id, no secret in any answer; and
//! schemathesis checking docs/openapi.json against the running server.

use crate::support::inproc::config;
use crate::support::process::{WorkerProcess, hookq, temp_dir, write_config};
use crate::support::queue::{producer, wait_drained};
use crate::support::receiver::{Receiver, Reply};
use crate::support::redis_server::RedisServer;
use crate::support::wait::poll;
use hookq_core::{DeadLetter, Event};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

const TOKEN: &str = "admin-token-0123456789-abcdef";
const APP_SECRET: &str = "app-a-secret-kept-out";
const HEADER_SECRET: &str = "hdr-secret-value-123";
const QUERY_SECRET: &str = "querysecret987";

/// Talks to one worker's admin API and keeps every answer's text, so that
/// the test can check at the end that none held a secret.
struct Api {
    base: String,
    client: reqwest::Client,
    answers: Mutex<Vec<String>>,
}

impl Api {
    fn new(w: &WorkerProcess) -> Self {
        Self {
            base: format!("http://127.0.0.1:{}", w.admin_port),
            client: reqwest::Client::new(),
            answers: Mutex::default(),
        }
    }

    /// `method path` with `auth` as the Authorization header (none: no header):
    /// (status, WWW-Authenticate, body text).
    async fn raw(
        &self,
        method: reqwest::Method,
        path: &str,
        auth: Option<&str>,
        body: Option<String>,
    ) -> (u16, Option<String>, String) {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await.expect("the admin server answers");
        let status = resp.status().as_u16();
        let www = resp
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_string());
        let text = resp.text().await.unwrap();
        self.answers.lock().unwrap().push(text.clone());
        (status, www, text)
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let bearer = format!("Bearer {TOKEN}");
        let (status, _, text) = self
            .raw(method, path, Some(&bearer), body.map(|b| b.to_string()))
            .await;
        let v = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{path} answered {status} with no JSON ({e}): {text}"));
        (status, v)
    }

    async fn get(&self, path: &str) -> Value {
        let (status, v) = self.call(reqwest::Method::GET, path, None).await;
        assert_eq!(status, 200, "GET {path}: {v}");
        v
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }
}

/// Apps: `app-a` with a healthy endpoint `good` (a custom header holding a
/// secret) and `bad` (a secret in its query; the receiver refuses its first
/// request with 400, so it is dead-lettered at once); `app-b` with `other`
/// and `quiet`, which wants an event nobody sends (idle).
fn apps(r: &Receiver) -> Value {
    json!([
        {"id": "app-a", "key": "key-a", "secret": APP_SECRET, "webhooks": [
            {"id": "good", "url": r.url("/a/good"), "event_types": ["client_event"],
             "headers": {"X-Api-Key": HEADER_SECRET}},
            {"id": "bad", "url": r.url(&format!("/a/bad?sig={QUERY_SECRET}")), "event_types": ["client_event"]}
        ]},
        {"id": "app-b", "key": "key-b", "secret": "app-b-secret-kept-out", "webhooks": [
            {"id": "other", "url": r.url("/b/other"), "event_types": ["client_event"]},
            {"id": "quiet", "url": r.url("/b/quiet"), "event_types": ["channel_occupied"]}
        ]}
    ])
}

fn redis_config(redis: &RedisServer, prefix: &str, apps: Value, token: Option<&str>) -> Value {
    let mut c = config(apps, json!({"request_timeout_ms": 2000}));
    c["queue"] = json!({"driver": "redis", "redis": {"url": redis.url(), "prefix": prefix, "lease_ms": 3000}});
    if let Some(t) = token {
        c["worker"]["admin_token"] = json!(t);
    }
    c
}

/// A dead-letter entry as a worker writes it for a batch of one event that
/// failed at `endpoint` of `app`, `age_s` seconds ago.
fn entry(app: &str, endpoint: &str, n: usize, reason: &str, age_s: u64) -> DeadLetter {
    let job = json!({"v": 1, "kind": "retry", "id": format!("r-{n}"), "app_id": app,
        "endpoint": endpoint, "attempt": 1, "first_attempt_ms": 0, "webhook_id": format!("wh-{n}"),
        "events": [{"name": "client_event", "channel": "private-x", "event": "client-e",
                    "data": n.to_string(), "socket_id": "1.1"}]});
    DeadLetter {
        endpoint: Some(endpoint.into()),
        attempts: 3,
        last_status: Some(500),
        failed_at_ms: hookq_core::now_ms() - age_s * 1000,
        ..DeadLetter::unusable(&job.to_string(), reason, Some(app.into()))
    }
}

fn ids(page: &Value) -> Vec<String> {
    page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_against_a_redis_worker() {
    let redis = RedisServer::start();
    let r = Receiver::start(&[("key-a", APP_SECRET), ("key-b", "app-b-secret-kept-out")]).await;
    r.script("/a/bad", vec![Reply::status(400).with_body("no thanks")]);
    let dir = temp_dir("admin-api");
    let prefix = format!("hq-admin-{}", std::process::id());
    let cfg = redis_config(&redis, &prefix, apps(&r), Some(TOKEN));
    let w = WorkerProcess::start_ready(&dir, "w", &cfg).await;
    let api = Api::new(&w);

    // Auth: none, wrong, a scheme other than Bearer; the probes stay open.
    for auth in [None, Some("Bearer wrong-token-0123456789"), Some(TOKEN)] {
        for path in ["/api/v1/overview", "/openapi.json", "/api/v1/nope"] {
            let (status, www, text) = api.raw(reqwest::Method::GET, path, auth, None).await;
            assert_eq!(status, 401, "{path} with {auth:?}: {text}");
            assert!(www.is_some_and(|h| h.starts_with("Bearer")), "{path}");
            assert!(serde_json::from_str::<Value>(&text).unwrap()["error"].is_string());
        }
    }
    let (status, _, text) = api
        .raw(
            reqwest::Method::POST,
            "/api/v1/dlq/purge",
            None,
            Some(r#"{"all":true}"#.into()),
        )
        .await;
    assert_eq!(status, 401, "{text}");
    for path in ["/health", "/ready", "/metrics"] {
        assert_eq!(w.get(path).await.map(|a| a.0), Some(200), "{path} is open");
    }

    // Before any traffic: every endpoint idle.
    let o = api.get("/api/v1/overview").await;
    assert_eq!(o["queue"]["driver"], "redis");
    assert_eq!(
        o["endpoints"],
        json!({"healthy": 0, "failing": 0, "idle": 4})
    );
    assert_eq!(o["worker"]["version"], env!("CARGO_PKG_VERSION"));

    // One event to each app: app-a's goes to `good` (200) and `bad` (400: dead-lettered).
    let (p, queue) = producer(&cfg).await;
    let event = |n: &str| Event::client_event("private-c", "client-e", n, "1.1");
    p.publish_batch("app-a", vec![event("a-1")]).await.unwrap();
    p.publish_batch("app-b", vec![event("b-1")]).await.unwrap();
    poll(
        "the worker's figures",
        Duration::from_secs(20),
        Duration::from_millis(100),
        async || {
            let o = api.get("/api/v1/overview").await;
            let t = &o["totals"];
            if t["requests_delivered"] == 2
                && t["dead_lettered"] == 1
                && o["queue"]["depth"]["dead"] == 1
            {
                Ok(())
            } else {
                Err(format!("{o}"))
            }
        },
    )
    .await;

    let o = api.get("/api/v1/overview").await;
    assert_eq!(
        o["totals"],
        json!({"events_delivered": 2, "requests_delivered": 2, "requests_failed": 1,
               "retries_scheduled": 0, "dead_lettered": 1})
    );
    assert_eq!(
        o["endpoints"],
        json!({"healthy": 2, "failing": 1, "idle": 1})
    );
    let q = api.get("/api/v1/queue").await;
    assert_eq!(q["driver"], "redis");
    assert_eq!(q["depth"]["dead"], 1);

    let apps = api.get("/api/v1/apps").await;
    let a = &apps["apps"][0];
    assert_eq!(a["app_id"], "app-a");
    assert_eq!(a["endpoints"], 2);
    assert_eq!(a["requests_delivered"], 1);
    assert_eq!(a["requests_failed"], 1);
    assert_eq!(a["dead_lettered"], 1);
    assert_eq!(a["last_error"], "HTTP 400");
    assert!(a["last_error_ms"].is_u64() && a["last_success_ms"].is_u64());
    assert_eq!(apps["apps"][1]["app_id"], "app-b");
    assert_eq!(apps["apps"][1]["endpoints"], 2);

    let eps = api.get("/api/v1/endpoints?app=app-a").await;
    let eps = eps["endpoints"].as_array().unwrap();
    assert_eq!(eps.len(), 2, "{eps:?}");
    let good = &eps[0];
    assert_eq!(
        (&good["endpoint"], &good["state"], &good["target"]),
        (&json!("good"), &json!("healthy"), &json!("http"))
    );
    assert_eq!(good["events_delivered"], 1);
    assert_eq!(good["latency"]["samples"], 1);
    assert!(good["latency"]["mean_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(good["url"], r.url("/a/good"));
    let bad = api.get("/api/v1/endpoints/app-a/bad").await;
    assert_eq!(bad["state"], "failing");
    assert_eq!(bad["last_status"], 400);
    assert_eq!(bad["last_error"], "HTTP 400");
    assert_eq!(bad["dead_lettered"], 1);
    assert_eq!(bad["in_flight"], 0);
    assert_eq!(
        bad["url"],
        r.url("/a/bad?sig=***"),
        "the query value is hidden"
    );
    assert_eq!(
        api.get("/api/v1/endpoints").await["endpoints"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
    let quiet = api.get("/api/v1/endpoints/app-b/quiet").await;
    assert_eq!(quiet["state"], "idle");
    assert!(quiet["last_success_ms"].is_null() && quiet["latency"]["mean_ms"].is_null());
    for path in [
        "/api/v1/endpoints/app-a/nope",
        "/api/v1/endpoints/nope/good",
        "/api/v1/dlq/0000",
        "/api/v2/x",
    ] {
        let (status, v) = api.call(reqwest::Method::GET, path, None).await;
        assert_eq!(status, 404, "{path}: {v}");
        assert!(v["error"].is_string());
    }

    // The worker's dead letter: listed, in detail, replayed by id to `bad` only.
    let page = api.get("/api/v1/dlq").await;
    assert_eq!(page["entries"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(
        (&page["offset"], &page["limit"], &page["next_offset"]),
        (&json!(0), &json!(50), &Value::Null)
    );
    let s = &page["entries"][0];
    assert_eq!(
        (&s["app_id"], &s["endpoint"], &s["reason"]),
        (&json!("app-a"), &json!("bad"), &json!("HTTP 400"))
    );
    assert_eq!(
        (&s["attempts"], &s["last_status"], &s["events"]),
        (&json!(1), &json!(400), &json!(1))
    );
    let id = s["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 40);
    let d = api.get(&format!("/api/v1/dlq/{id}")).await;
    assert_eq!(d["kind"], "retry");
    assert_eq!(d["body_excerpt"], "no thanks");
    assert!(d["webhook_id"].is_string());
    assert_eq!(d["event_list"][0]["data"], "a-1");
    assert_eq!(d["event_list"][0]["channel"], "private-c");
    assert!(d["job"].as_str().unwrap().contains("\"kind\":\"retry\""));

    let good_before = r.requests("/a/good").len();
    assert_eq!(good_before, 1);
    let (status, v) = api.post("/api/v1/dlq/replay", json!({"ids": [id]})).await;
    assert_eq!((status, v), (200, json!({"replayed": 1})));
    r.wait_for("the replay at bad", Duration::from_secs(20), |r| {
        r.requests("/a/bad").iter().any(|q| q.answered == 200)
    })
    .await;
    wait_drained(&*queue, Duration::from_secs(20)).await;
    let bad_reqs = r.requests("/a/bad");
    assert_eq!(bad_reqs.len(), 2, "one refused, one replayed");
    assert_eq!(bad_reqs[1].events()[0]["data"], "a-1");
    assert_eq!(
        r.requests("/a/good").len(),
        good_before,
        "good gets nothing again"
    );
    assert_eq!(r.requests("/b/other").len(), 1, "nor app-b");
    let bad = api.get("/api/v1/endpoints/app-a/bad").await;
    assert_eq!(
        (&bad["state"], &bad["requests_delivered"]),
        (&json!("healthy"), &json!(1))
    );
    assert_eq!(api.get("/api/v1/dlq").await["entries"], json!([]));

    // 120 entries of app-p: paging 50/50/20; endpoint e1/e2 alternating;
    // even ones "HTTP 500", odd ones "Timed out"; the first 20 two hours old.
    let entries: Vec<DeadLetter> = (0..120)
        .map(|i| {
            let reason = if i % 2 == 0 {
                "HTTP 500"
            } else {
                "Timed out after 2000 ms"
            };
            let age = if i < 20 { 7200 } else { 10 };
            entry(
                "app-p",
                if i % 2 == 0 { "e1" } else { "e2" },
                i,
                reason,
                age,
            )
        })
        .collect();
    queue.dead_letter(entries).await.unwrap();
    let mut seen = HashSet::new();
    let mut offset = Some(0);
    let mut sizes = Vec::new();
    while let Some(o) = offset {
        let page = api
            .get(&format!("/api/v1/dlq?app=app-p&limit=50&offset={o}"))
            .await;
        sizes.push(page["entries"].as_array().unwrap().len());
        seen.extend(ids(&page));
        offset = page["next_offset"].as_u64();
        assert!(sizes.len() <= 3, "{page}");
    }
    assert_eq!(sizes, [50, 50, 20]);
    assert_eq!(seen.len(), 120, "every id distinct and each listed once");
    let first = api.get("/api/v1/dlq?limit=1").await;
    assert_eq!(first["entries"][0]["events"], 1);
    assert_eq!(first["next_offset"], 1);
    // The same ids in a second listing.
    assert_eq!(ids(&api.get("/api/v1/dlq?limit=1").await), ids(&first));

    let count = async |q: &str| {
        api.get(&format!("/api/v1/dlq?limit=500&{q}")).await["entries"]
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(count("endpoint=e1").await, 60);
    assert_eq!(count("app=app-p&endpoint=e2").await, 60);
    assert_eq!(count("reason=TIMED%20OUT").await, 60, "case-insensitive");
    assert_eq!(count("reason=http 5").await, 60);
    assert_eq!(count("older_than_s=3600").await, 20);
    assert_eq!(count("newer_than_s=3600").await, 100);
    assert_eq!(count("older_than_s=3600&endpoint=e1&reason=500").await, 10);
    assert_eq!(count("app=app-a").await, 0);
    for bad_query in [
        "limit=0",
        "limit=501",
        "older_than_s=-1",
        "offset=x",
        "newer_than_s=1.5",
    ] {
        let (status, v) = api
            .call(
                reqwest::Method::GET,
                &format!("/api/v1/dlq?{bad_query}"),
                None,
            )
            .await;
        assert_eq!(status, 400, "{bad_query}: {v}");
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .contains(bad_query.split('=').next().unwrap()),
            "{v}"
        );
    }

    // `hookq dlq` takes the same filters, and `list --json` prints the same ids.
    let cfg_path = write_config(&dir, "cli.json", &cfg);
    let cfg_path = cfg_path.to_str().unwrap();
    let cli = |extra: &[&str]| {
        let mut args = vec!["dlq", "list", "--json", "--config", cfg_path];
        args.extend_from_slice(extra);
        let (ok, out, err) = hookq(&args);
        assert!(ok, "{extra:?}: {out}{err}");
        out.lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    let old_e1 = cli(&[
        "--endpoint",
        "e1",
        "--reason",
        "http 500",
        "--older-than",
        "3600",
    ]);
    assert_eq!(old_e1.len(), 10);
    let one = old_e1[0]["id"].as_str().unwrap();
    assert!(seen.contains(one), "the CLI's id is the API's");
    assert_eq!(cli(&["--id", one]).len(), 1);
    assert_eq!(cli(&["--app", "app-p", "--newer-than", "3600"]).len(), 100);

    // Bad bodies: 400 with a reason, nothing touched.
    for body in [
        json!({}),
        json!({"filter": {}}),
        json!({"all": false}),
        json!({"ids": "x"}),
        json!({"filter": {"older_than_s": "1"}}),
        json!({"filter": {"app": "a", "what": 1}}),
        json!([1]),
    ] {
        for route in ["/api/v1/dlq/purge", "/api/v1/dlq/replay"] {
            let (status, v) = api.post(route, body.clone()).await;
            assert_eq!(status, 400, "{route} {body}: {v}");
            assert!(v["error"].is_string());
        }
    }
    let (status, _, text) = api
        .raw(
            reqwest::Method::POST,
            "/api/v1/dlq/purge",
            Some(&format!("Bearer {TOKEN}")),
            Some("not json".into()),
        )
        .await;
    assert_eq!(status, 400, "{text}");
    assert_eq!(api.get("/api/v1/queue").await["depth"]["dead"], 120);

    // Purge by filter (the old e1 entries with HTTP 500: 10), by id (2), then all.
    let (status, v) = api
        .post(
            "/api/v1/dlq/purge",
            json!({"filter": {"endpoint": "e1", "reason": "500", "older_than_s": 3600}}),
        )
        .await;
    assert_eq!((status, v), (200, json!({"purged": 10})));
    assert_eq!(count("older_than_s=3600").await, 10);
    assert_eq!(count("older_than_s=3600&endpoint=e1").await, 0);
    let two = ids(&api.get("/api/v1/dlq?limit=2&offset=30").await);
    let (status, v) = api.post("/api/v1/dlq/purge", json!({"ids": two})).await;
    assert_eq!((status, v), (200, json!({"purged": 2})));
    let left: HashSet<String> = ids(&api.get("/api/v1/dlq?limit=500").await)
        .into_iter()
        .collect();
    assert_eq!(left.len(), 108);
    assert!(
        two.iter().all(|i| !left.contains(i)),
        "the purged ids are gone"
    );
    for i in &two {
        let (status, _) = api
            .call(reqwest::Method::GET, &format!("/api/v1/dlq/{i}"), None)
            .await;
        assert_eq!(status, 404);
    }
    let (status, v) = api.post("/api/v1/dlq/purge", json!({"all": true})).await;
    assert_eq!((status, v), (200, json!({"purged": 108})));
    assert_eq!(api.get("/api/v1/queue").await["depth"]["dead"], 0);

    // The document is the one in docs/.
    let doc = api.get("/openapi.json").await;
    let file: Value = serde_json::from_str(include_str!("../../docs/openapi.json")).unwrap();
    assert_eq!(doc, file);

    // No secret in any answer (the token, the apps' secrets, a header value, a query value).
    let answers = api.answers.lock().unwrap();
    assert!(answers.len() > 60, "{} answers", answers.len());
    for text in answers.iter() {
        for secret in [
            TOKEN,
            APP_SECRET,
            "app-b-secret-kept-out",
            HEADER_SECRET,
            QUERY_SECRET,
        ] {
            assert!(!text.contains(secret), "an answer holds {secret}: {text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_is_off_without_a_token_and_a_short_token_is_refused() {
    let redis = RedisServer::start();
    let r = Receiver::start(&[]).await;
    let dir = temp_dir("admin-off");
    let prefix = format!("hq-admin-off-{}", std::process::id());
    let cfg = redis_config(&redis, &prefix, apps(&r), None);
    let w = WorkerProcess::start_ready(&dir, "w", &cfg).await;
    let api = Api::new(&w);
    for (method, path) in [
        (reqwest::Method::GET, "/api/v1/overview"),
        (reqwest::Method::GET, "/api/v1/dlq"),
        (reqwest::Method::POST, "/api/v1/dlq/purge"),
        (reqwest::Method::GET, "/openapi.json"),
        (reqwest::Method::GET, "/api/anything"),
    ] {
        let bearer = format!("Bearer {TOKEN}");
        for auth in [None, Some(bearer.as_str())] {
            let (status, _, text) = api.raw(method.clone(), path, auth, None).await;
            assert_eq!(status, 404, "{path}: {text}");
            let error = serde_json::from_str::<Value>(&text).unwrap()["error"]
                .as_str()
                .unwrap()
                .to_string();
            assert!(
                error.contains("admin API is off")
                    && error.contains("worker.admin_token")
                    && error.contains("HOOKQ_ADMIN_TOKEN"),
                "{error}"
            );
        }
    }
    assert_eq!(w.get("/metrics").await.map(|a| a.0), Some(200));
    assert!(
        w.log_text().contains("the admin API is off"),
        "{}",
        w.log_text()
    );

    // A token shorter than 16 characters is refused at its path, from the
    // file and from HOOKQ_ADMIN_TOKEN alike.
    let mut short = cfg.clone();
    short["worker"]["admin_token"] = json!("short-token");
    let path = write_config(&dir, "short.json", &short);
    let (ok, out, err) = hookq(&["check-config", "--config", path.to_str().unwrap()]);
    assert!(
        !ok && err.contains("worker.admin_token") && err.contains("16"),
        "{out}{err}"
    );
    assert!(
        !err.contains("short-token") && !out.contains("short-token"),
        "the token is not echoed"
    );
    let path = write_config(&dir, "none.json", &cfg);
    let out = std::process::Command::new(crate::support::process::hookq_bin())
        .args(["check-config", "--config", path.to_str().unwrap()])
        .env("HOOKQ_ADMIN_TOKEN", "tiny")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("worker.admin_token"),
        "{err}"
    );
}

/// Figures of one schemathesis run, read from its JSON and NDJSON reports.
#[derive(Debug)]
struct Schemathesis {
    exit: i32,
    cases: u64,
    failures: usize,
    checks_passed: u64,
    checks_failed: u64,
    /// Answers 200 of `GET /api/v1/dlq/{id}`.
    entry_details: u64,
    output: String,
}

/// Runs `.venv/bin/schemathesis` (scripts/test-deps.sh installs it) with
/// every check over docs/openapi.json against `base`, with the token; the
/// one-entry routes are also asked about a DLQ entry that exists
/// (`entry_id`) and an endpoint that exists (`app-a`/`bad`), so that their
/// 200 answers are checked against the document too, not only their 404s.
fn schemathesis(base: &str, dir: &std::path::Path, entry_id: &str, extra: &[&str]) -> Schemathesis {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let bin = root.join(".venv/bin/schemathesis");
    assert!(
        bin.exists(),
        "{} is missing: run scripts/test-deps.sh",
        bin.display()
    );
    let (json_report, events) = (dir.join("st.json"), dir.join("st.ndjson"));
    let config = dir.join("schemathesis.toml");
    std::fs::write(
        &config,
        format!(
            r#"[[operations]]
include-name = "GET /api/v1/dlq/{{id}}"
parameters = {{ id = "{entry_id}" }}

[[operations]]
include-name = "GET /api/v1/endpoints/{{app_id}}/{{endpoint_id}}"
parameters = {{ app_id = "app-a", endpoint_id = "bad" }}
"#
        ),
    )
    .unwrap();
    let out = std::process::Command::new(&bin)
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .args(extra)
        .arg(root.join("docs/openapi.json"))
        .args([
            "--url",
            base,
            "-H",
            &format!("Authorization: Bearer {TOKEN}"),
        ])
        .args([
            "--checks",
            "all",
            "--max-examples",
            "40",
            "--seed",
            "17",
            "--no-color",
        ])
        .arg("--report-json-path")
        .arg(&json_report)
        .arg("--report-ndjson-path")
        .arg(&events)
        .current_dir(dir)
        .output()
        .expect("schemathesis runs");
    let output =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json_report).unwrap_or_default())
            .unwrap_or_else(|e| panic!("no JSON report ({e}):\n{output}"));
    let (mut checks_passed, mut checks_failed, mut entry_details) = (0, 0, 0);
    for line in std::fs::read_to_string(&events).unwrap_or_default().lines() {
        let event: Value = serde_json::from_str(line).unwrap();
        let recorder = &event["ScenarioFinished"]["recorder"];
        for i in recorder["interactions"]
            .as_object()
            .into_iter()
            .flat_map(|i| i.values())
        {
            let uri = i["request"]["uri"].as_str().unwrap_or_default();
            let detail = uri.contains("/api/v1/dlq/")
                && !uri.ends_with("/replay")
                && !uri.ends_with("/purge");
            if detail && i["response"]["status_code"] == 200 {
                entry_details += 1;
            }
        }
        let checks = &recorder["checks"];
        for check in checks
            .as_object()
            .into_iter()
            .flat_map(|c| c.values())
            .flat_map(|l| l.as_array().unwrap())
        {
            if check["status"] == "success" {
                checks_passed += 1;
            } else {
                checks_failed += 1;
            }
        }
    }
    Schemathesis {
        exit: out.status.code().unwrap_or(-1),
        cases: report["test_cases"]["generated"].as_u64().unwrap_or(0),
        failures: report["failures"].as_array().map_or(0, Vec::len),
        checks_passed,
        checks_failed,
        entry_details,
        output,
    }
}

/// Issue 17 item 4: docs/openapi.json checked against a real worker on
/// Redis, with entries in its DLQ and figures for its endpoints, by
/// schemathesis with every check: no 5xx, every answer matching the
/// document, schema-valid requests accepted and invalid ones refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_5xx_and_no_schema_mismatch() {
    let redis = RedisServer::start();
    let r = Receiver::start(&[("key-a", APP_SECRET), ("key-b", "app-b-secret-kept-out")]).await;
    r.script("/a/bad", vec![Reply::status(400)]);
    let dir = temp_dir("admin-schemathesis");
    let prefix = format!("hq-admin-st-{}", std::process::id());
    let cfg = redis_config(&redis, &prefix, apps(&r), Some(TOKEN));
    let w = WorkerProcess::start_ready(&dir, "w", &cfg).await;
    let api = Api::new(&w);
    let (p, queue) = producer(&cfg).await;
    let event = Event::client_event("private-c", "client-e", "1", "1.1");
    p.publish_batch("app-a", vec![event]).await.unwrap();
    let entries = (0..30)
        .map(|i| entry("app-p", "e1", i, "HTTP 500", i as u64 * 60))
        .collect();
    queue.dead_letter(entries).await.unwrap();
    poll(
        "the dead letter",
        Duration::from_secs(20),
        Duration::from_millis(100),
        async || match api.get("/api/v1/queue").await["depth"]["dead"].as_u64() {
            Some(31) => Ok(()),
            n => Err(format!("{n:?} entries")),
        },
    )
    .await;

    let first_entry = async || {
        api.get("/api/v1/dlq?limit=1").await["entries"][0]["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // Every operation; then, as replays and purges emptied the DLQ, the
    // read-only ones again over a DLQ filled anew, so that an entry's
    // detail is checked against the document in its 200 answer too.
    let mut runs = vec![schemathesis(&api.base, &dir, &first_entry().await, &[])];
    let entries = (0..30)
        .map(|i| entry("app-p", "e1", i, "HTTP 500", i as u64 * 60))
        .collect();
    queue.dead_letter(entries).await.unwrap();
    let only_reads = ["--include-method", "GET"];
    runs.push(schemathesis(
        &api.base,
        &dir,
        &first_entry().await,
        &only_reads,
    ));
    for (n, st) in runs.iter().enumerate() {
        println!(
            "schemathesis run {}: {} test cases, {} checks passed, {} failed, {} failures, {} entry details answered 200, exit {}",
            n + 1,
            st.cases,
            st.checks_passed,
            st.checks_failed,
            st.failures,
            st.entry_details,
            st.exit
        );
        if let Some(summary) = st.output.split("SUMMARY").nth(1) {
            println!("schemathesis summary:{summary}");
        }
        assert_eq!(st.exit, 0, "{}", st.output);
        assert_eq!((st.failures, st.checks_failed), (0, 0), "{}", st.output);
        assert!(st.cases > 100 && st.checks_passed > st.cases, "{st:?}");
    }
    assert!(
        runs[1].entry_details > 0,
        "no entry detail answered 200: {:?}",
        runs[1]
    );
    // The worker is still well and answers.
    assert_eq!(
        w.get("/ready").await.map(|a| a.0),
        Some(200),
        "{}",
        w.log_text()
    );
    assert!(!w.log_text().contains("panicked"), "{}", w.log_text());
}
