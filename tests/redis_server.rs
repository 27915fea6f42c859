//! A private `redis-server` for one test (or the benchmark), on a free
//! loopback port, in a temporary directory of its own.
//!
//! The server runs under a small `sh` guard that kills it when its stdin
//! closes, so a server never outlives the process that started it, even one
//! that aborts. It is a plain process, tied to no async runtime: a server may
//! be shared through a `static` between `#[tokio::test]`s, each of which has
//! its own runtime. [`RedisServer::pid`] is redis-server's own pid, not the
//! guard's, for signals and `/proc`. [`RedisServer::command`] speaks RESP over
//! a plain socket, for what a test does "as another program would" (a raw
//! `LPUSH`, `INFO`).

use anyhow::{Context, Result, anyhow, bail};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Runs redis-server with the arguments given, prints its pid, and kills it
/// with the signal read from stdin, then waits for it so that its port and
/// files are free when the guard exits. The guard's own standard error (the
/// shell's "not found", redis-server's fatal config errors) goes to
/// `stderr.log` in the server's directory. When stdin just closes (the test
/// process ended without dropping the server, e.g. a shared one in a
/// `static`), it stops the server with TERM and removes its directory.
const GUARD: &str = r#"redis-server "$@" & pid=$!
echo "$pid"
read sig
kill -s "${sig:-TERM}" "$pid" 2>/dev/null
wait "$pid"
if [ -z "$sig" ] && [ -n "$HOOKQ_REDIS_DIR" ]; then rm -rf -- "$HOOKQ_REDIS_DIR"; fi"#;

/// How long a start may take before it fails.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running (or stopped, between [`RedisServer::stop`] and
/// [`RedisServer::resume`]) redis-server, killed and its directory removed on drop.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    persistent: bool,
    process: Option<Guarded>,
}

struct Guarded {
    guard: Child,
    stdin: ChildStdin,
    pid: u32,
}

/// A reply in RESP2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Simple(String),
    /// `-ERR …`
    Error(String),
    /// `:1`
    Int(i64),
    /// `$…`; `None` for nil.
    Bulk(Option<Vec<u8>>),
    /// `*…`; `None` for a nil array.
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The text of a simple or bulk string.
    pub fn text(&self) -> Option<String> {
        match self {
            Self::Simple(s) => Some(s.clone()),
            Self::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }
}

impl RedisServer {
    /// A server without persistence: `--save '' --appendonly no`.
    /// Panics when it does not start.
    pub fn start() -> Self {
        Self::launch(false).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// A server that survives [`RedisServer::restart`] with its data:
    /// `--appendonly yes --appendfsync always`. Panics when it does not start.
    pub fn start_persistent() -> Self {
        Self::launch(true).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// [`start`](Self::start), with an error instead of a panic when the
    /// server does not start (for a program, e.g. the benchmark).
    pub fn try_start() -> Result<Self> {
        Self::launch(false)
    }

    fn launch(persistent: bool) -> Result<Self> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "hookq-redis-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let mut last_error = None;
        // A free port can be taken between finding it and redis binding it: try a few.
        for _ in 0..5 {
            let mut server = Self {
                port: free_port()?,
                dir: dir.clone(),
                persistent,
                process: None,
            };
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error
            .unwrap_or_else(|| anyhow!("?"))
            .context("redis-server did not start (is it installed? `make test-deps`)"))
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port it listens on (the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its working directory (the append-only file of a persistent server).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The redis-server process id while it runs (to signal it, e.g. `SIGSTOP`).
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(|p| p.pid)
    }

    /// Sends `signal` (`STOP`, `CONT`, …) to the running server.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().expect("redis-server runs");
        let ok = std::process::Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{signal} redis-server");
    }

    /// Whether the process runs (it is stopped between `stop` and `resume`).
    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    /// Stops the server with SIGTERM (a clean shutdown) and waits until it exited.
    pub fn stop(&mut self) {
        self.halt("TERM");
    }

    /// Kills the server with SIGKILL, as a crash would, and waits until it exited.
    pub fn kill(&mut self) {
        self.halt("KILL");
    }

    /// Starts a stopped server again on the same port and directory, and
    /// waits until it answers (a persistent one has loaded its data by then).
    pub fn resume(&mut self) {
        if self.process.is_some() {
            return;
        }
        if let Err(e) = self.spawn() {
            panic!(
                "redis-server did not start again on port {}: {e:#}",
                self.port
            );
        }
    }

    /// [`stop`](Self::stop), then [`resume`](Self::resume).
    pub fn restart(&mut self) {
        self.stop();
        self.resume();
    }

    /// Sends one command and reads its reply, on a new connection.
    pub fn command(&self, args: &[&str]) -> Result<Reply> {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.command_bytes(&args)
    }

    /// Sends one command whose arguments are any bytes (a value that is not
    /// UTF-8, as another language may `LPUSH`), on a new connection.
    pub fn command_bytes(&self, args: &[&[u8]]) -> Result<Reply> {
        command_bytes_on(self.port, args)
    }

    /// Total calls per command since the server started (or `CONFIG RESETSTAT`),
    /// from `INFO commandstats`, without the `INFO` calls themselves.
    pub fn command_calls(&self) -> Result<BTreeMap<String, u64>> {
        let info = self
            .command(&["INFO", "commandstats"])?
            .text()
            .ok_or_else(|| anyhow!("INFO gave no text"))?;
        command_calls(&info)
    }

    fn spawn(&mut self) -> Result<()> {
        let port = self.port.to_string();
        let dir = self.dir.to_string_lossy().into_owned();
        let log = self.dir.join("redis.log");
        let mut args = vec![
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--dir",
            &dir,
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            "redis.log",
        ];
        if self.persistent {
            args.extend(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            args.extend(["--appendonly", "no"]);
        }
        // Created here, not once in `launch`: a failed attempt's drop removes it.
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let stderr_log = self.dir.join("stderr.log");
        let stderr = File::create(&stderr_log)
            .with_context(|| format!("creating {}", stderr_log.display()))?;
        let mut guard = Command::new("sh")
            .arg("-c")
            .arg(GUARD)
            .arg("sh")
            .args(&args)
            .current_dir(&self.dir)
            .env("HOOKQ_REDIS_DIR", &self.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .context("spawning sh to run redis-server")?;
        let (Some(stdin), Some(stdout)) = (guard.stdin.take(), guard.stdout.take()) else {
            bail!("no pipes to the guard");
        };
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let pid = line
            .trim()
            .parse()
            .with_context(|| format!("guard printed {line:?}"))?;
        self.process = Some(Guarded { guard, stdin, pid });

        let start = Instant::now();
        loop {
            match self.command(&["PING"]) {
                Ok(Reply::Simple(s)) if s == "PONG" => return Ok(()),
                // LOADING while a persistent server reads its file: wait.
                _ if start.elapsed() < START_TIMEOUT && process_alive(pid) => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                reply => {
                    self.halt("KILL");
                    let tail = |path: &Path| {
                        let text = std::fs::read_to_string(path).unwrap_or_default();
                        let mut tail: Vec<_> = text.lines().rev().take(10).collect();
                        tail.reverse();
                        tail.join("\n")
                    };
                    // `{:#}`, not `{:?}`: the latter adds anyhow's backtrace.
                    let reply = match reply {
                        Ok(r) => format!("{r:?}"),
                        Err(e) => format!("{e:#}"),
                    };
                    bail!(
                        "redis-server on port {} not ready ({reply}); stderr: {:?}; log tail: {:?}",
                        self.port,
                        tail(&stderr_log),
                        tail(&log)
                    );
                }
            }
        }
    }

    fn halt(&mut self, signal: &str) {
        let Some(mut p) = self.process.take() else {
            return;
        };
        // A failed write means the guard is gone already; wait() reaps it either way.
        let _ = writeln!(p.stdin, "{signal}");
        drop(p.stdin);
        let _ = p.guard.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.halt("KILL");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends one command to whatever speaks RESP on `127.0.0.1:port` (a
/// redis-server, or a sentinel) and reads its reply, on a new connection.
pub fn command_on(port: u16, args: &[&str]) -> Result<Reply> {
    let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    command_bytes_on(port, &args)
}

fn command_bytes_on(port: u16, args: &[&[u8]]) -> Result<Reply> {
    let mut conn = TcpStream::connect(("127.0.0.1", port))
        .with_context(|| format!("connecting to redis on port {port}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    conn.write_all(&out)?;
    read_reply(&mut BufReader::new(conn))
}

/// Calls per command in the text of `INFO commandstats` (`cmdstat_<name>:calls=…`),
/// without the `INFO` calls themselves; for a caller with a client of its own.
pub fn command_calls(info: &str) -> Result<BTreeMap<String, u64>> {
    let mut calls = BTreeMap::new();
    for line in info.lines() {
        let Some((name, stats)) = line
            .strip_prefix("cmdstat_")
            .and_then(|rest| rest.split_once(':'))
        else {
            continue;
        };
        if name == "info" {
            continue;
        }
        let n = stats
            .split(',')
            .find_map(|kv| kv.strip_prefix("calls="))
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| anyhow!("no calls in {line}"))?;
        calls.insert(name.to_string(), n);
    }
    Ok(calls)
}

/// A loopback port nobody listens on now.
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind(("127.0.0.1", 0))
        .context("binding a free port")?
        .local_addr()?
        .port())
}

/// Whether `pid` runs and is not a zombie (redis exited, its guard not yet reaped it).
fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state follows the parenthesised command name.
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X'))
    })
}

fn read_reply(r: &mut impl BufRead) -> Result<Reply> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        bail!("connection closed before a reply");
    }
    let line = line.trim_end_matches("\r\n");
    let (kind, rest) = line
        .split_at_checked(1)
        .ok_or_else(|| anyhow!("empty reply line"))?;
    Ok(match kind {
        "+" => Reply::Simple(rest.to_string()),
        "-" => Reply::Error(rest.to_string()),
        ":" => Reply::Int(rest.parse()?),
        "$" => {
            let n: i64 = rest.parse()?;
            if n < 0 {
                Reply::Bulk(None)
            } else {
                let mut buf = vec![0; usize::try_from(n)? + 2];
                r.read_exact(&mut buf)?;
                buf.truncate(buf.len() - 2);
                Reply::Bulk(Some(buf))
            }
        }
        "*" => {
            let n: i64 = rest.parse()?;
            if n < 0 {
                Reply::Array(None)
            } else {
                let items = (0..n).map(|_| read_reply(r)).collect::<Result<_>>()?;
                Reply::Array(Some(items))
            }
        }
        other => bail!("unknown reply type {other:?}"),
    })
}
