//! Child processes the benchmark starts (`hookq worker`, `hookq ingest`), and
//! what `/proc` says about them.
//!
//! Every child runs under a small `sh` guard that kills it when the guard's
//! standard input closes: the benchmark holds the write end, so a child never
//! outlives the benchmark, even one that panics or is killed outright. The
//! guard prints the child's pid first, which is what `/proc/<pid>/…` is read
//! for: peak resident memory (`VmHWM`) and CPU time (`utime + stime`).

use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// Starts `"$@"` in the background, prints its pid, and on a line from stdin
/// (a signal name; end of input means TERM) signals it and waits for it.
/// The child's standard output goes to its log with its standard error, since
/// the guard's own output is a pipe that is closed once the pid is read.
const GUARD: &str = r#""$@" >&2 & pid=$!
echo "$pid"
read sig
kill -s "${sig:-TERM}" "$pid" 2>/dev/null
wait "$pid""#;

/// A child process under the guard; killed on drop.
pub struct Guarded {
    /// What it is, for messages.
    pub name: String,
    guard: Child,
    stdin: Option<ChildStdin>,
    pid: u32,
}

impl Guarded {
    /// Starts `program args…` with `env`, its standard error into `stderr_to`.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
        stderr_to: &Path,
    ) -> Result<Self> {
        let log = std::fs::File::create(stderr_to)
            .with_context(|| format!("creating {}", stderr_to.display()))?;
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(GUARD)
            .arg("sh")
            .arg(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut guard = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        let (Some(stdin), Some(stdout)) = (guard.stdin.take(), guard.stdout.take()) else {
            bail!("no pipes to the guard of {name}");
        };
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .with_context(|| format!("reading the pid of {name}"))?;
        let pid = line
            .trim()
            .parse()
            .with_context(|| format!("the guard of {name} printed {line:?}"))?;
        Ok(Self {
            name: name.to_string(),
            guard,
            stdin: Some(stdin),
            pid,
        })
    }

    /// Its pid (the program's, not the guard's).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the child still runs (and is not a zombie).
    pub fn alive(&self) -> bool {
        proc_state(self.pid).is_some_and(|s| s != 'Z' && s != 'X')
    }

    /// Peak resident memory so far, in bytes (`VmHWM`).
    pub fn peak_rss(&self) -> Result<u64> {
        peak_rss(self.pid)
    }

    /// CPU time used so far (user + system).
    pub fn cpu(&self) -> Result<Duration> {
        cpu_time(self.pid)
    }

    /// Sends `signal` (e.g. `TERM`) and waits up to `limit` for the child to
    /// exit; kills it if it has not. Returns whether it exited by itself.
    pub fn stop(&mut self, signal: &str, limit: Duration) -> bool {
        let Some(mut stdin) = self.stdin.take() else {
            return true;
        };
        // A failed write means the guard is gone already; the wait reaps it.
        let _ = writeln!(stdin, "{signal}");
        drop(stdin);
        let start = Instant::now();
        loop {
            if let Ok(Some(_)) = self.guard.try_wait() {
                return true;
            }
            if start.elapsed() > limit {
                let _ = Command::new("kill")
                    .args(["-KILL", &self.pid.to_string()])
                    .status();
                let _ = self.guard.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.stop("KILL", Duration::from_secs(5));
    }
}

/// A loopback port nobody listens on now.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))
        .context("binding a free port")?
        .local_addr()?
        .port())
}

fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    rest.chars().next()
}

/// `VmHWM` of `pid`, in bytes.
pub fn peak_rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .with_context(|| format!("no VmHWM in /proc/{pid}/status"))?;
    Ok(kb * 1024)
}

/// Clock ticks per second, the unit of `/proc/<pid>/stat` times.
fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|t| *t > 0)
            .unwrap_or(100)
    })
}

/// User plus system CPU time of `pid` (`/proc/<pid>/stat` fields 14 and 15).
pub fn cpu_time(pid: u32) -> Result<Duration> {
    stat_cpu(&format!("/proc/{pid}/stat"))
}

/// User plus system CPU time of this process.
pub fn own_cpu_time() -> Result<Duration> {
    stat_cpu("/proc/self/stat")
}

fn stat_cpu(path: &str) -> Result<Duration> {
    let stat = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let (_, rest) = stat
        .rsplit_once(") ")
        .with_context(|| format!("unexpected {path}"))?;
    // After the command name: state is field 3, utime field 14, stime field 15.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Result<u64> {
        fields
            .get(n - 3)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("field {n} of {path}"))
    };
    let ticks = field(14)? + field(15)?;
    Ok(Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64))
}

/// CPU time every process on the machine has used since boot (all of
/// `/proc/stat`'s `cpu` line except idle and iowait), to tell how much of
/// the machine other processes took during a scenario.
pub fn system_busy() -> Result<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no cpu line in /proc/stat")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is inside user).
    let busy: u64 = v
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, x)| x)
        .sum();
    Ok(Duration::from_secs_f64(busy as f64 / clock_ticks() as f64))
}

/// Time every CPU has spent in softirq since boot (`/proc/stat`'s seventh
/// `cpu` field): on loopback most of it is the TCP traffic of the processes
/// measured, which their own `/proc/<pid>/stat` times may leave out.
pub fn system_softirq() -> Result<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let ticks: u64 = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .and_then(|l| l.split_whitespace().nth(7))
        .and_then(|v| v.parse().ok())
        .context("no softirq in /proc/stat")?;
    Ok(Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64))
}

/// The 1-minute load average.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}
