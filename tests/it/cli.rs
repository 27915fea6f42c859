//! The `hookq` binary's commands that need no queue server: check-config on
//! the fixtures, a worker refusing a bad config, and a worker's admin routes,
//! `hookq healthcheck` against them, and clean SIGTERM exit.

use crate::support::inproc::{config, one_app};
use crate::support::process::{WorkerProcess, hookq, temp_dir, write_config};
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/config")
}

#[test]
fn check_config_accepts_both_reference_examples_as_printed() {
    let (ok, out, err) = hookq(&[
        "check-config",
        "--config",
        fixtures().join("reference-apps.json").to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("my-app-with-webhooks (key app-key-wh): 2 endpoint(s)"),
        "{out}"
    );
    assert!(out.contains("lambda:sockudoPresenceHandler"), "{out}");
    assert!(out.contains("batching: on, window 75 ms"), "{out}");
    let (ok, out, err) = hookq(&[
        "check-config",
        "--config",
        fixtures().join("reference-batching.json").to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("batching: on, window 100 ms"), "{out}");
}

#[test]
fn check_config_rejects_every_broken_fixture_naming_the_paths() {
    let mut checked = 0;
    for entry in std::fs::read_dir(fixtures().join("bad")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let (ok, _, err) = hookq(&["check-config", "--config", path.to_str().unwrap()]);
        assert!(!ok, "{} was accepted", path.display());
        for want in text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("// expect: "))
        {
            assert!(
                err.contains(want),
                "{}: want {want:?} in:\n{err}",
                path.display()
            );
        }
        checked += 1;
    }
    assert!(checked >= 6);
}

#[test]
fn a_missing_config_file_is_a_clear_error() {
    let (ok, _, err) = hookq(&["check-config", "--config", "/nonexistent/hookq.json"]);
    assert!(!ok);
    assert!(
        err.contains("reading config /nonexistent/hookq.json"),
        "{err}"
    );
}

#[test]
fn the_worker_refuses_to_start_on_a_bad_config() {
    let dir = temp_dir("badcfg");
    let bad = json!({"webhooks": {"batching": {"duration": 0}}});
    let path = write_config(&dir, "bad.json", &bad);
    let (ok, _, err) = hookq(&["worker", "--config", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("webhooks.batching.duration: must be at least 1, found 0"),
        "{err}"
    );
}

#[tokio::test]
async fn a_worker_serves_health_ready_metrics_and_stops_cleanly_on_sigterm() {
    let dir = temp_dir("admin");
    let cfg = config(
        one_app(json!([{"url": "http://127.0.0.1:9/h", "event_types": ["member_added"]}])),
        json!({}),
    );
    let mut w = WorkerProcess::start(&dir, "w1", &cfg).await;
    assert_eq!(w.get("/health").await.unwrap().0, 200);
    w.wait_ok(
        &["/ready"],
        Duration::from_secs(10),
        Duration::from_millis(50),
    )
    .await;
    let (status, text) = w.get("/metrics").await.unwrap();
    assert_eq!(status, 200);
    for name in [
        "hookq_jobs_received_total",
        "hookq_jobs_held",
        "hookq_queue_depth{state=\"ready\"}",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics:\n{text}");
    }
    // The image's HEALTHCHECK: `hookq healthcheck` against the admin server.
    let admin_port = w.admin_port;
    let url = |path: &str| format!("http://127.0.0.1:{admin_port}{path}");
    let (ok, _, err) = hookq(&["healthcheck", "--url", &url("/health")]);
    assert!(ok, "{err}");
    let (ok, _, err) = hookq(&["healthcheck", "--url", &url("/nope")]);
    assert!(!ok && err.contains("HTTP 404"), "{err}");

    let status = w.terminate(Duration::from_secs(10));
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        w.log_text()
    );
    assert!(w.log_text().contains("stopped"));
    let (ok, _, err) = hookq(&["healthcheck", "--url", &url("/health")]);
    assert!(!ok && err.contains("no answer"), "{err}");
}

/// `hookq check-config … | head -1`: the reader goes away before the summary
/// is written. A command whose output is cut short ends quietly, as Unix
/// tools do, instead of panicking.
#[test]
fn a_closed_output_pipe_ends_the_command_without_a_panic() {
    let mut child = std::process::Command::new(crate::support::process::hookq_bin())
        .args(["check-config", "--config"])
        .arg(fixtures().join("reference-apps.json"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_ne!(out.status.code(), Some(101), "{err}");
}
