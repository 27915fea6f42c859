//! The web console at `/console` (issue 17 items 2 and 4) and the Grafana
//! dashboard (item 3).
//!
//! The console is served by a real worker without a token, with its content
//! types, `Cache-Control: no-cache` and a Content-Security-Policy that allows
//! nothing but the page's own files. In headless Chromium
//! (tests/browser/console.py, Debian's chromium and chromium-driver through
//! selenium) an operator signs in, reads the overview, pages through the two
//! dead letters a receiver's 400s left on Redis, purges one, cancels a replay
//! of the other, confirms it — and the receiver gets that event again, at
//! that endpoint only, and nothing else is sent. Screenshots land in `target/test-artifacts/console/`.
//!
//! The dashboard (deploy/grafana/hookq-dashboard.json) is a Grafana dashboard
//! over a datasource variable, and every metric and label its queries name is
//! one a real worker (with an in-process ingest) exports, and every metric
//! family it exports has a panel.

use crate::support::inproc::config;
use crate::support::process::{WorkerProcess, temp_dir};
use crate::support::queue::{producer, wait_drained};
use crate::support::receiver::{Receiver, Reply};
use crate::support::redis_server::RedisServer;
use crate::support::wait::poll;
use hookq_core::Event;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "console-test-admin-token-0123456789";
/// The endpoint that answers 400 once (a dead letter), then 200.
const FLAKY: &str = "/app-1/flaky";
/// The endpoint that takes everything.
const STEADY: &str = "/app-1/steady";
/// flaky's refusal: a body that would run script if the page parsed it as HTML.
const MARKUP_BODY: &str =
    r#"{"error":"unknown room <img src=x onerror=\"document.title='pwned'\"><b>bold</b>"}"#;
/// app-2's endpoint, which gets a steady stream while the browser looks.
const STREAM: &str = "/app-2/stream";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where a test's files for people go: `target/test-artifacts/<name>`.
fn artifacts(name: &str) -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join("target"));
    let dir = target.join("test-artifacts").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// app-1 with the two endpoints and app-2 with one, unbatched, on `redis`
/// (or the memory queue), with the admin token.
fn console_config(r: &Receiver, redis: Option<&RedisServer>, prefix: &str) -> Value {
    let mut c = config(
        json!([{"id": "app-1", "key": "key-1", "secret": "secret-1", "webhooks": [
            {"id": "flaky", "url": r.url(FLAKY), "event_types": ["client_event"]},
            {"id": "steady", "url": r.url(STEADY), "event_types": ["client_event"]}]},
            {"id": "app-2", "key": "key-2", "secret": "secret-2", "webhooks": [
            {"id": "stream", "url": r.url(STREAM), "event_types": ["client_event"]}]}]),
        json!({"batching": {"enabled": false}}),
    );
    if let Some(redis) = redis {
        c["queue"] = json!({"driver": "redis", "redis": {"url": redis.url(), "prefix": prefix}});
    }
    c["worker"]["admin_token"] = json!(TOKEN);
    c
}

/// `GET path` on the worker's admin port with the admin token; (status, JSON body).
async fn api(w: &WorkerProcess, path: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}{path}", w.admin_port))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// A plain `GET` (no token): (status, headers, body).
async fn fetch(port: u16, path: &str) -> (u16, reqwest::header::HeaderMap, String) {
    let resp = reqwest::get(format!("http://127.0.0.1:{port}{path}"))
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.unwrap())
}

fn header<'a>(headers: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no {name} header in {headers:?}"))
}

/// Runs `program args`, killed after `limit`; (success, stdout, stderr).
fn run_within(program: &Path, args: &[&str], limit: Duration) -> (bool, String, String) {
    let dir = temp_dir("browser");
    let (out, err) = (dir.join("stdout"), dir.join("stderr"));
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("{} runs: {e}", program.display()));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() >= limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let (stdout, stderr) = (read(&out), read(&err));
    let Some(status) = status else {
        panic!("{args:?} did not end within {limit:?}\nstdout:\n{stdout}\nstderr:\n{stderr}")
    };
    (status.success(), stdout, stderr)
}

/// The Python of `.venv` (scripts/test-deps.sh puts selenium there).
fn venv_python() -> PathBuf {
    let python = root().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/test-deps.sh (make test does)",
        python.display()
    );
    python
}

/// A PNG file of a real screenshot: the PNG signature and more than a blank page's bytes.
fn assert_screenshot(path: &Path) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG",
        path.display()
    );
    assert!(
        bytes.len() > 20_000,
        "{} is only {} bytes: a blank page?",
        path.display(),
        bytes.len()
    );
}

/// The three files, served without a token, with their types, no caching and
/// a policy that lets the page load only itself; the same bytes as the files
/// in crates/hookq-worker/console/; the API beside them still wants the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_served_without_a_token_under_a_strict_policy() {
    let r = Receiver::start(&[("key-1", "secret-1")]).await;
    let dir = temp_dir("console-files");
    let w = WorkerProcess::start(&dir, "console-files", &console_config(&r, None, "")).await;
    let files = [
        ("/console", "index.html", "text/html; charset=utf-8"),
        (
            "/console/app.js",
            "app.js",
            "text/javascript; charset=utf-8",
        ),
        ("/console/style.css", "style.css", "text/css; charset=utf-8"),
    ];
    for (path, file, content_type) in files {
        let (status, headers, body) = fetch(w.admin_port, path).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(header(&headers, "content-type"), content_type, "{path}");
        assert_eq!(header(&headers, "cache-control"), "no-cache", "{path}");
        assert_eq!(header(&headers, "x-content-type-options"), "nosniff");
        let csp = header(&headers, "content-security-policy");
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp} lacks {directive}");
        }
        assert!(
            !csp.contains("unsafe") && !csp.contains("http"),
            "{path}: {csp} allows more than the page itself"
        );
        let on_disk =
            std::fs::read_to_string(root().join("crates/hookq-worker/console").join(file)).unwrap();
        assert_eq!(body, on_disk, "{path} serves what console/{file} holds");
    }
    // The page loads only its own files, and puts no API text through innerHTML.
    let page =
        std::fs::read_to_string(root().join("crates/hookq-worker/console/index.html")).unwrap();
    assert!(!page.contains("<script>") && !page.contains("style=\""));
    let js = std::fs::read_to_string(root().join("crates/hookq-worker/console/app.js")).unwrap();
    for risky in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
    ] {
        assert!(!js.contains(risky), "app.js uses {risky}");
    }
    assert!(
        !js.contains("localStorage"),
        "the token stays in sessionStorage"
    );
    let (status, _, _) = fetch(w.admin_port, "/console/missing.js").await;
    assert_eq!(status, 404);
    let (status, headers, _) = fetch(w.admin_port, "/api/v1/overview").await;
    assert_eq!(status, 401, "the API without a token");
    assert!(header(&headers, "www-authenticate").starts_with("Bearer"));
}

/// The browser test: two 400s leave two dead letters; in Chromium the
/// operator signs in (a wrong token first: refused), reads the overview, the
/// endpoints and the failing one's page, pages through the DLQ, purges the
/// newer entry, opens the other, cancels a replay, then confirms one; the
/// flaky endpoint gets that event again (same events, same webhook-id), never
/// the purged one, and the steady one nothing more. A second worker without
/// a token shows the console's "API is off" page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_replays_a_dead_letter_in_headless_chromium() {
    let python = venv_python();
    let redis = RedisServer::start();
    let r = Receiver::start(&[("key-1", "secret-1"), ("key-2", "secret-2")]).await;
    // Markup in the receiver's answer must reach the page as text.
    let refused = Reply::status(400).with_body(MARKUP_BODY);
    r.script(FLAKY, vec![refused.clone(), refused]);
    let cfg = console_config(&r, Some(&redis), "console");
    let dir = temp_dir("console-browser");
    let w = WorkerProcess::start_ready(&dir, "console", &cfg).await;
    let mut off_cfg = console_config(&r, None, "");
    off_cfg["worker"]
        .as_object_mut()
        .unwrap()
        .remove("admin_token");
    let off = WorkerProcess::start(&dir, "console-api-off", &off_cfg).await;

    // Two app-1 events, one after the other: both refused by flaky (two
    // dead letters, the older first in the DLQ), both taken by steady.
    let (producer, queue) = producer(&cfg).await;
    let every = Duration::from_millis(100);
    let mut ids = Vec::new();
    for n in 1..=2 {
        let event = Event::client_event(
            "private-room",
            "client-typing",
            format!("{{\"n\":{n}}}"),
            "1.1",
        );
        producer.publish("app-1", event).await.unwrap();
        let what = format!("dead letter {n} in the API");
        let listed = poll(&what, Duration::from_secs(15), every, async || {
            match api(&w, "/api/v1/dlq").await {
                (200, page) if page["entries"].as_array().is_some_and(|e| e.len() == n) => Ok(page),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        ids.push(listed["entries"][n - 1]["id"].as_str().unwrap().to_string());
    }
    let (kept, purged) = (ids[0].clone(), ids[1].clone());
    let (status, detail) = api(&w, &format!("/api/v1/dlq/{kept}")).await;
    assert_eq!(status, 200, "{detail}");
    r.wait_for("steady's two deliveries", Duration::from_secs(15), |r| {
        r.requests(STEADY).len() == 2
    })
    .await;
    let refused_requests = r.requests(FLAKY);
    assert_eq!(refused_requests.len(), 2);
    let (failed, purged_request) = (&refused_requests[0], &refused_requests[1]);
    assert_eq!((failed.answered, purged_request.answered), (400, 400));

    // app-2 gets 20 events a second while the browser looks, so the
    // overview has a throughput to measure (and the screenshot a curve).
    let streaming = tokio_util::sync::CancellationToken::new();
    let stream = tokio::spawn({
        let (producer, streaming) = (producer.clone(), streaming.clone());
        async move {
            let mut sent = 0_u64;
            while !streaming.is_cancelled() {
                let event =
                    Event::client_event("room", "client-tick", format!("{{\"n\":{sent}}}"), "2.2");
                producer.publish("app-2", event).await.unwrap();
                sent += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            sent
        }
    });
    let shots = artifacts("console");
    let base = format!("http://127.0.0.1:{}", w.admin_port);
    let off_url = format!("http://127.0.0.1:{}", off.admin_port);
    let script = root().join("tests/browser/console.py");
    let args: Vec<String> = vec![
        script.to_string_lossy().into_owned(),
        base,
        TOKEN.to_string(),
        shots.to_string_lossy().into_owned(),
        "--api-off".to_string(),
        off_url,
    ];
    let (ok, stdout, stderr) = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_within(&python, &args, Duration::from_secs(180))
    })
    .await
    .unwrap();
    assert!(
        ok,
        "the browser test failed\nstdout:\n{stdout}\nstderr:\n{stderr}\nworker log:\n{}",
        w.log_text()
    );
    streaming.cancel();
    let streamed = stream.await.unwrap();
    let seen: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| {
            panic!("the script's last line is its JSON ({e}):\n{stdout}\n{stderr}")
        });
    eprintln!("the page showed: {seen:#}");

    // What the page showed is what the API and the receiver say.
    assert_eq!(seen["token_in_session_storage"], true);
    assert_eq!(seen["local_storage_keys"], 0);
    assert_eq!(seen["cookies"], "");
    assert_eq!(
        seen["console_errors"],
        json!([]),
        "the browser logged errors"
    );
    let o = &seen["overview"];
    assert_eq!(o["dead"], "2");
    assert_eq!(o["delayed"], "0");
    assert_eq!(
        o["endpoints_failing"], "1",
        "the flaky endpoint's last request failed"
    );
    assert_eq!(
        o["endpoints_healthy"], "2",
        "steady's and stream's were delivered"
    );
    let figure = |k: &str| -> f64 { o[k].as_str().unwrap().replace(',', "").parse().unwrap() };
    let rate = figure("events_per_s");
    assert!(
        rate > 2.0 && rate < 60.0,
        "about 20 events/s streamed, the page says {rate}"
    );
    assert!(figure("events_delivered") >= 2.0, "{o}");
    assert!(
        o["worker"].as_str().unwrap().starts_with("redis queue"),
        "{o}"
    );
    let eps = &seen["endpoints"];
    assert_eq!(eps["listed"], json!(["flaky", "steady", "stream"]));
    assert_eq!(eps["state"], "failing");
    // No circuit breaker in this config: the page shows a dash.
    assert_eq!(eps["circuit"], "–");
    assert_eq!(eps["last_error"], detail["reason"]);
    assert_eq!(eps["dead_lettered"], "2");
    assert_eq!(eps["dlq_filter"], "flaky");
    assert_eq!(eps["dlq_rows"], 2);
    let pages = &seen["paging"];
    assert_eq!(
        pages["ids"],
        json!([kept, purged]),
        "oldest first, one a page"
    );
    assert_eq!(pages["first_range"], "Entries 1–1");
    assert_eq!(pages["second_range"], "Entries 2–2");
    assert_eq!(pages["next_disabled"], true, "no page after the last");
    assert_eq!(pages["hash"], "#/dlq?limit=1&offset=1");
    let f = &seen["filters"];
    assert!(
        f["bad_age"]
            .as_str()
            .unwrap()
            .contains("\"soon\" is not an age"),
        "{f}"
    );
    assert_eq!(f["no_match_hash"], "#/dlq?reason=HTTP+503");
    assert_eq!(f["match_rows"], 2);
    assert_eq!(f["match_hash"], "#/dlq?endpoint=flaky&newer=1h");
    assert_eq!(seen["purge"]["purged_id"], purged.as_str());
    assert_eq!(seen["purge"]["said"], "Purged 1 entry.");
    assert_eq!(seen["listed"]["entry_id"], kept.as_str());
    let row = seen["listed"]["row"].as_array().unwrap();
    assert!(
        row.iter().any(|c| c == "flaky"),
        "the row names the endpoint: {row:?}"
    );
    let e = &seen["entry"];
    assert_eq!(e["url_hash"], format!("#/dlq/{kept}").as_str());
    assert_eq!(e["reason"], detail["reason"]);
    assert_eq!(e["attempts"], "1");
    assert_eq!(e["status"], "400");
    assert_eq!(e["endpoint"], "flaky");
    assert_eq!(e["events"], "1");
    assert_eq!(e["body"], MARKUP_BODY, "the body excerpt, as text");
    assert_eq!(e["markup_elements"], 0, "no element made of the body");
    assert_eq!(e["title"], "hookq console", "no handler of the body ran");
    assert_eq!(e["event_list"], detail["event_list"]);
    // The entry's events carry their job id, which the receiver gets only
    // with `webhooks.event_ids` (off here).
    let mut listed_events = e["event_list"].clone();
    for ev in listed_events.as_array_mut().unwrap() {
        ev.as_object_mut().unwrap().remove("id");
    }
    assert_eq!(listed_events, json!(failed.events()));
    assert_eq!(e["webhook_id"], detail["webhook_id"]);
    assert_eq!(e["webhook_id"].as_str(), failed.header("webhook-id"));
    assert_eq!(seen["replay_said"], "Replayed 1 entry.");
    assert!(
        !seen["api_off_message"]
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "the API-off page says why: {seen}"
    );
    assert_screenshot(&shots.join("overview.png"));
    assert_screenshot(&shots.join("dlq.png"));

    // The replay reached the flaky endpoint, once, with the same request;
    // the purged event never went out again, the steady endpoint got nothing
    // more, and nothing is left anywhere.
    r.wait_for("the replayed delivery", Duration::from_secs(15), |r| {
        r.requests(FLAKY).len() >= 3
    })
    .await;
    let depth = wait_drained(queue.as_ref(), Duration::from_secs(15)).await;
    assert_eq!(depth.dead, 0, "{depth:?}");
    let flaky = r.requests(FLAKY);
    assert_eq!(
        flaky.len(),
        3,
        "the flaky endpoint: two 400s and the replay"
    );
    let replayed = &flaky[2];
    assert_eq!(replayed.answered, 200);
    assert!(replayed.valid, "the replay is signed");
    assert_eq!(replayed.events(), failed.events());
    assert_ne!(replayed.events(), purged_request.events());
    assert_eq!(replayed.header("webhook-id"), failed.header("webhook-id"));
    assert_eq!(
        r.requests(STEADY).len(),
        2,
        "the steady endpoint got nothing again"
    );
    let app_1 = r
        .all()
        .iter()
        .filter(|q| q.path.starts_with("/app-1/"))
        .count();
    assert_eq!(
        app_1, 5,
        "app-1: steady's two, flaky's two 400s and the replay"
    );
    assert_eq!(
        r.delivered_events(STREAM).len() as u64,
        streamed,
        "every streamed event once"
    );
    let (_, ep) = api(&w, "/api/v1/endpoints/app-1/flaky").await;
    assert_eq!(ep["state"], "healthy", "{ep}");
    assert_eq!(ep["requests_delivered"], 1, "{ep}");
}

/// The metric names of an expression (`hookq_…` words), with the label names
/// its selectors and `by (…)` clauses use.
fn names_and_labels(expr: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let metrics = expr
        .split(|c: char| !word(c))
        .filter(|t| t.starts_with("hookq_"))
        .map(String::from)
        .collect();
    let mut labels = BTreeSet::new();
    let mut rest = expr;
    while let Some(open) = rest.find('{') {
        let close = rest[open..].find('}').expect("a selector closes") + open;
        for matcher in rest[open + 1..close].split(',') {
            let name: String = matcher.trim().chars().take_while(|&c| word(c)).collect();
            if !name.is_empty() {
                labels.insert(name);
            }
        }
        rest = &rest[close + 1..];
    }
    for part in expr.split("by (").skip(1) {
        let list = &part[..part.find(')').expect("by (…) closes")];
        labels.extend(list.split(',').map(|l| l.trim().to_string()));
    }
    (metrics, labels)
}

/// The metric families of an exposition, each with the label names of its samples.
fn families(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut families: BTreeMap<String, BTreeSet<String>> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(|f| (f.to_string(), BTreeSet::new()))
        .collect();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, labels)) = line.split_once('{') else {
            continue;
        };
        let family = ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| families.contains_key(*f)))
            .unwrap_or(name);
        let names = labels
            .split(',')
            .filter_map(|kv| kv.split_once('=').map(|(k, _)| k.trim().to_string()));
        families
            .entry(family.to_string())
            .or_default()
            .extend(names);
    }
    families
}

/// The dashboard: Grafana's shape (a datasource variable every panel and
/// query uses, unique panel ids, a 24-column grid), and its queries over
/// what a real worker exports — every metric name and label, once each
/// labelled family has a sample — with every exported family on a panel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_queries_the_metrics_a_worker_exports() {
    let text = std::fs::read_to_string(root().join("deploy/grafana/hookq-dashboard.json")).unwrap();
    let dash: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert!(dash["title"].is_string() && dash["uid"].is_string());
    let vars = dash["templating"]["list"]
        .as_array()
        .expect("templating.list");
    let ds = vars
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("a datasource variable");
    assert_eq!(ds["query"], "prometheus");
    let ds_ref = format!("${{{}}}", ds["name"].as_str().unwrap());
    for v in vars.iter().filter(|v| v["type"] == "query") {
        assert_eq!(
            v["datasource"]["uid"],
            ds_ref.as_str(),
            "variable {}",
            v["name"]
        );
    }
    let panels = dash["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut exprs = Vec::new();
    for p in panels {
        let title = p["title"].as_str().expect("every panel has a title");
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "id of {title} used twice"
        );
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_u64().unwrap(), g["w"].as_u64().unwrap());
        assert!(
            w > 0 && x + w <= 24 && g["h"].as_u64().unwrap() > 0,
            "{title}: {g}"
        );
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], ds_ref.as_str(), "{title}");
        let targets = p["targets"].as_array().filter(|t| !t.is_empty());
        for t in targets.unwrap_or_else(|| panic!("{title} has no query")) {
            assert_eq!(t["datasource"]["uid"], ds_ref.as_str(), "{title}");
            let expr = t["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{title}: a query without expr"));
            exprs.push((title.to_string(), expr.to_string()));
        }
    }

    // A worker with an in-process ingest; samples for the labelled families:
    // requests delivered and one rejected (a dead letter), a signed webhook
    // accepted, and deferrals: a slow endpoint taking one request at a time
    // gets four jobs while its share of a 4-job budget is one.
    let r = Receiver::start(&[("key-1", "secret-1")]).await;
    r.script(FLAKY, vec![Reply::status(400)]);
    r.always(
        "/app-1/slow",
        Reply::status(200).after(Duration::from_secs(2)),
    );
    let mut cfg = console_config(&r, None, "");
    cfg["app_manager"]["array"]["apps"][0]["webhooks"]
        .as_array_mut()
        .unwrap()
        .push(
            json!({"id": "slow", "url": r.url("/app-1/slow"), "event_types": ["client_event"],
            "max_concurrency": 1}),
        );
    cfg["worker"]["max_held_jobs"] = json!(4);
    cfg["ingest"] = json!({"enabled": true});
    let dir = temp_dir("console-grafana");
    let w = WorkerProcess::start_ready(&dir, "grafana", &cfg).await;
    let sender = crate::support::sender::Sender::new();
    let events: Vec<Value> = (0..4)
        .map(|n| {
            json!({"name": "client_event", "channel": "private-room",
            "event": "client-typing", "data": format!("{{\"n\":{n}}}"), "socket_id": "1.1"})
        })
        .collect();
    let body = crate::support::sender::body(&events);
    let answer = sender
        .post(&w.ingest_url(), "key-1", "secret-1", &body)
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    let every = Duration::from_millis(100);
    let wanted = [
        "hookq_dead_lettered_total{",
        "outcome=\"delivered\"",
        "hookq_ingest_requests_total{",
        "hookq_deferred_total{",
    ];
    let metrics = poll(
        "a delivery, a dead letter, a deferral and an ingest request",
        Duration::from_secs(20),
        every,
        async || {
            let (_, m) = w.get("/metrics").await.unwrap();
            if wanted.iter().all(|s| m.contains(s)) {
                Ok(m)
            } else {
                Err(m)
            }
        },
    )
    .await;
    let exported = families(&metrics);
    let general: BTreeSet<&str> = ["job", "instance", "le"].into();
    let mut used = BTreeSet::new();
    for (title, expr) in &exprs {
        let (names, labels) = names_and_labels(expr);
        assert!(!names.is_empty(), "{title}: {expr} names no hookq metric");
        let mut known = BTreeSet::new();
        for name in &names {
            let family = ["_total", "_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| exported.contains_key(*f)))
                .unwrap_or(name);
            let labels = exported.get(family).unwrap_or_else(|| {
                panic!(
                    "{title}: {expr} uses {name}, which a worker does not export: {:?}",
                    exported.keys()
                )
            });
            known.extend(labels.iter().cloned());
            used.insert(family.to_string());
        }
        for label in labels.iter().filter(|l| !general.contains(l.as_str())) {
            assert!(
                known.contains(label),
                "{title}: {expr} uses the label {label}; the metrics have {known:?}"
            );
        }
    }
    let missing: Vec<&String> = exported
        .keys()
        .filter(|f| f.starts_with("hookq_") && !used.contains(*f))
        .collect();
    assert!(missing.is_empty(), "metrics without a panel: {missing:?}");
    eprintln!(
        "{} queries over {} families: {used:?}",
        exprs.len(),
        used.len()
    );
}
