//! A private PostgreSQL server for one test: `initdb` into a temporary
//! directory, then `postgres` on a free loopback port, trust authentication,
//! user `postgres`. Debian's `postgresql` package (`make test-deps`) puts the
//! programs in `/usr/lib/postgresql/<version>/bin`.
//!
//! PostgreSQL refuses to run as root: as root the programs run as the
//! `postgres` user through `setpriv` (which execs, so the server's pid is the
//! one this process knows), with the directory handed to that user.
//!
//! The server runs under an `sh` guard (see [`Guarded`]) that stops it when
//! its stdin closes, so no server outlives the test process.

use super::process::{free_port, temp_dir};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// Runs the command given, prints nothing, stops it with the signal read from
/// stdin (TERM when stdin just closes), waits for it, and removes `$HOOKQ_DB_DIR`
/// when stdin closed without a signal.
const GUARD: &str = r#""$@" & pid=$!
read sig
kill -s "${sig:-TERM}" "$pid" 2>/dev/null
wait "$pid"
if [ -z "$sig" ] && [ -n "$HOOKQ_DB_DIR" ]; then rm -rf -- "$HOOKQ_DB_DIR"; fi"#;

/// A server process under the stdin guard.
pub struct Guarded {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Guarded {
    /// Spawns `program args…` under the guard; `dir` is removed when the guard ends without a signal.
    pub fn spawn(program: &str, args: &[String], dir: &Path, log: &Path) -> Guarded {
        let log = std::fs::File::create(log).unwrap();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(GUARD)
            .arg("guard")
            .arg(program)
            .args(args)
            .env("HOOKQ_DB_DIR", dir)
            .stdin(Stdio::piped())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        let stdin = child.stdin.take();
        Guarded { child, stdin }
    }

    /// Sends `signal` to the server and waits until it has exited.
    pub fn stop(mut self, signal: &str) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = writeln!(stdin, "{signal}");
        }
        let _ = self.child.wait();
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        // Closing stdin makes the guard stop the server and remove its directory.
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// Waits until something listens on `port`.
pub fn wait_port(port: u16, limit: Duration, log: &Path) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < limit,
            "no server on port {port} after {limit:?}; log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A running PostgreSQL, stopped and its directory removed on drop.
pub struct Postgres {
    pub port: u16,
    dir: PathBuf,
    server: Option<Guarded>,
}

fn bin_dir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed: run `make test-deps` (Debian's postgresql)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("postgres").is_file())
        .collect();
    dirs.sort();
    dirs.pop().expect("no /usr/lib/postgresql/*/bin/postgres")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `program` as the `postgres` user when this process is root.
fn as_postgres(program: &Path) -> (String, Vec<String>) {
    if is_root() {
        (
            "setpriv".into(),
            ["--reuid=postgres", "--regid=postgres", "--init-groups"]
                .iter()
                .map(|s| s.to_string())
                .chain([program.display().to_string()])
                .collect(),
        )
    } else {
        (program.display().to_string(), Vec::new())
    }
}

impl Postgres {
    /// initdb and start; returns once the port accepts connections.
    pub fn start() -> Postgres {
        let bin = bin_dir();
        let dir = temp_dir("pg");
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .unwrap()
                .success();
            assert!(ok, "chown of {} failed", dir.display());
        }
        let data = dir.join("data");
        let (program, mut args) = as_postgres(&bin.join("initdb"));
        args.extend(
            [
                "-D",
                &data.display().to_string(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        let out = Command::new(&program).args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let mut pg = Postgres {
            port,
            dir,
            server: None,
        };
        pg.resume();
        pg
    }

    /// Starts the server (again) on the same port and data.
    pub fn resume(&mut self) {
        let (program, mut args) = as_postgres(&bin_dir().join("postgres"));
        args.extend([
            "-D".to_string(),
            self.dir.join("data").display().to_string(),
            "-p".into(),
            self.port.to_string(),
            "-k".into(),
            self.dir.display().to_string(),
            "-h".into(),
            "127.0.0.1".into(),
            "-c".into(),
            "fsync=off".into(),
        ]);
        let log = self.dir.join("server.log");
        self.server = Some(Guarded::spawn(&program, &args, &self.dir, &log));
        wait_port(self.port, Duration::from_secs(30), &log);
    }

    /// Stops the server (fast shutdown), keeping its data for [`Postgres::resume`].
    pub fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.stop("INT");
        }
    }

    /// The `database.postgres` settings reaching this server (database `postgres`).
    pub fn settings(&self) -> serde_json::Value {
        serde_json::json!({"host": "127.0.0.1", "port": self.port, "username": "postgres",
            "database": "postgres", "connection_pool_size": 4})
    }

    /// A connection URL for the test's own statements.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        drop(self.server.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
