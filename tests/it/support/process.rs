//! `hookq` worker and ingest processes: spawned from the built binary with a
//! config written to a temporary file, an admin port and an ingest port of
//! their own, and logs kept in a file that is printed when a test fails.

use super::wait::poll;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `hookq` binary: `$HOOKQ_BIN`, else the workspace's debug build.
pub fn hookq_bin() -> PathBuf {
    if let Ok(p) = std::env::var("HOOKQ_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let bin = target.join("debug/hookq");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p hookq --bin hookq` (make test does)",
        bin.display()
    );
    bin
}

/// A fresh temporary directory under the system's.
pub fn temp_dir(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "hookq-test-{label}-{}-{}",
        std::process::id(),
        hookq_core::new_id("d")
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `hookq <args>` to completion; returns (exit success, stdout, stderr).
pub fn hookq(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(hookq_bin())
        .args(args)
        .env("HOOKQ_LOG", "warn")
        .output()
        .expect("hookq runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `hookq <args>`, killed once `limit` passed: `Some((exit success,
/// stdout, stderr))` when it ended by itself, `None` when it had to be killed.
pub fn hookq_within(args: &[&str], limit: Duration) -> Option<(bool, String, String)> {
    let mut child = Command::new(hookq_bin())
        .args(args)
        .env("HOOKQ_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("hookq runs");
    let start = Instant::now();
    while child.try_wait().expect("hookq's status").is_none() {
        if start.elapsed() >= limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("hookq's output");
    Some((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Writes a config to a file in `dir`.
pub fn write_config(dir: &Path, name: &str, config: &Value) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_string_pretty(config).unwrap()).unwrap();
    path
}

pub struct WorkerProcess {
    pub name: String,
    pub admin_port: u16,
    /// Where its ingest listens (`ingest.addr`), whether or not it serves one.
    pub ingest_port: u16,
    child: Child,
    log: PathBuf,
}

impl WorkerProcess {
    /// Starts `hookq worker` with `config` (its `worker.admin_addr` is set here)
    /// and waits until `/health` answers.
    pub async fn start(dir: &Path, name: &str, config: &Value) -> WorkerProcess {
        Self::start_as("worker", dir, name, config).await
    }

    /// Starts `hookq ingest` with `config` (its admin and ingest addresses set here).
    pub async fn start_ingest(dir: &Path, name: &str, config: &Value) -> WorkerProcess {
        Self::start_as("ingest", dir, name, config).await
    }

    /// Starts `hookq <command>` (`worker` or `ingest`) and waits until `/health` answers.
    pub async fn start_as(command: &str, dir: &Path, name: &str, config: &Value) -> WorkerProcess {
        let admin_port = free_port();
        let ingest_port = free_port();
        let mut config = config.clone();
        config["worker"]["admin_addr"] = Value::String(format!("127.0.0.1:{admin_port}"));
        config["ingest"]["addr"] = Value::String(format!("127.0.0.1:{ingest_port}"));
        let path = write_config(dir, &format!("{name}.json"), &config);
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(hookq_bin())
            .args([command, "--config"])
            .arg(&path)
            .env("HOOKQ_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("hookq starts");
        let w = WorkerProcess {
            name: name.to_string(),
            admin_port,
            ingest_port,
            child,
            log,
        };
        w.wait_healthy(Duration::from_secs(20)).await;
        w
    }

    /// Starts `hookq worker` as [`WorkerProcess::start`] does and waits
    /// until `/ready` answers 200 too (the queue answered).
    pub async fn start_ready(dir: &Path, name: &str, config: &Value) -> WorkerProcess {
        let w = Self::start(dir, name, config).await;
        w.wait_ok(
            &["/ready"],
            Duration::from_secs(20),
            Duration::from_millis(50),
        )
        .await;
        w
    }

    /// The URL realtime servers post to on this process's ingest.
    pub fn ingest_url(&self) -> String {
        format!("http://127.0.0.1:{}/pusher/webhooks", self.ingest_port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        let url = format!("http://127.0.0.1:{}{path}", self.admin_port);
        let resp = reqwest::get(url).await.ok()?;
        let status = resp.status().as_u16();
        Some((status, resp.text().await.ok()?))
    }

    async fn wait_healthy(&self, limit: Duration) {
        self.wait_ok(&["/health"], limit, Duration::from_millis(50))
            .await;
    }

    /// Waits until each of `paths` answers 200 on the admin port, all within
    /// `limit`, asking every `every`; panics with the process's log.
    pub async fn wait_ok(&self, paths: &[&str], limit: Duration, every: Duration) {
        let start = Instant::now();
        for path in paths {
            let what = format!("{path} of {} to answer 200", self.name);
            poll(
                &what,
                limit.saturating_sub(start.elapsed()),
                every,
                async || match self.get(path).await.map(|(s, _)| s) {
                    Some(200) => Ok(()),
                    status => Err(format!(
                        "{path} answers {status:?}; log:\n{}",
                        self.log_text()
                    )),
                },
            )
            .await;
        }
    }

    /// A metric's value from `/metrics` (first sample whose line starts with `prefix`).
    pub async fn metric(&self, prefix: &str) -> Option<f64> {
        let (_, text) = self.get("/metrics").await?;
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` (`STOP`, `CONT`, …) to the process.
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{signal} failed");
    }

    /// SIGKILL: the worker dies at once, holding what it holds.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn terminate(&mut self, limit: Duration) -> std::process::ExitStatus {
        let ok = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -TERM failed");
        self.wait_exit(limit)
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                start.elapsed() < limit,
                "{} did not stop within {limit:?}; log:\n{}",
                self.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- log of {} ---\n{}", self.name, self.log_text());
        }
    }
}
