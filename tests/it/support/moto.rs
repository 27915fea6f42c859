//! moto's SQS emulator on a free loopback port.
//!
//! [`Moto::start`] spawns `<repo>/.venv/bin/moto_server -H 127.0.0.1 -p <port>`
//! (installed by `make test-deps`) and waits until it answers HTTP;
//! [`Moto::shared`] gives one server for the whole test process, since tests
//! each create their own uniquely named queues.
//!
//! moto runs under a small `sh` guard that reads its stdin, a pipe from this
//! process: when the pipe closes — on [`Drop`], or when the test process exits
//! or is killed, which a shared server in a `static` relies on — the guard
//! stops moto. No server outlives the tests.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long moto may take to answer after it is spawned (it is ready in < 3 s
/// on an idle machine; builds running beside the tests slow it down).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Starts the server in the background, then stops it when stdin closes.
/// Arguments: the server, the port, the log file (removed at the end).
const GUARD: &str = r#""$0" -H 127.0.0.1 -p "$1" & m=$!
while read -r _; do :; done
kill "$m" 2>/dev/null
wait "$m"
rm -f "$2"
"#;

/// A running moto server.
pub struct Moto {
    child: Child,
    /// The guard's stdin; dropping it stops the server.
    stdin: Option<ChildStdin>,
    addr: SocketAddr,
    log: PathBuf,
}

impl Moto {
    /// One server shared by every test of this process.
    pub fn shared() -> &'static Moto {
        static SHARED: OnceLock<Result<Moto, String>> = OnceLock::new();
        match SHARED.get_or_init(Moto::start) {
            Ok(moto) => moto,
            Err(e) => panic!("{e}"),
        }
    }

    /// Starts a server of its own, stopped on drop.
    pub fn start() -> Result<Moto, String> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .ok_or("no workspace root")?
            .to_path_buf();
        let server = root.join(".venv/bin/moto_server");
        if !server.is_file() {
            return Err(format!(
                "{} is missing: run `make test-deps` (or scripts/test-deps.sh) to install the SQS emulator",
                server.display()
            ));
        }
        let port = super::process::free_port();
        let log =
            std::env::temp_dir().join(format!("hookq-moto-{}-{port}.log", std::process::id()));
        let log_file =
            std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let log_err = log_file.try_clone().map_err(|e| e.to_string())?;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(GUARD)
            .arg(&server)
            .arg(port.to_string())
            .arg(&log)
            .stdin(Stdio::piped())
            .stdout(log_file)
            .stderr(log_err)
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", server.display()))?;
        let stdin = child.stdin.take();
        let mut moto = Moto {
            child,
            stdin,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            log,
        };
        let start = Instant::now();
        while !answers_http(moto.addr) {
            if let Ok(Some(status)) = moto.child.try_wait() {
                return Err(format!(
                    "moto_server exited ({status}): {}",
                    moto.log_tail()
                ));
            }
            if start.elapsed() > READY_TIMEOUT {
                return Err(format!(
                    "moto_server did not answer on {} within {READY_TIMEOUT:?}: {}",
                    moto.addr,
                    moto.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(moto)
    }

    /// The URL to give the SDK as `endpoint_url`.
    pub fn endpoint_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// An AWS SDK configuration for this emulator (region `us-east-1`,
    /// static test credentials), for a test's own SQS or DynamoDB client.
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(self.endpoint_url())
            .credentials_provider(aws_sdk_sqs::config::Credentials::new(
                "test", "test", None, None, "test",
            ))
            .load()
            .await
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        // Closing the pipe makes the guard stop moto and wait for it.
        drop(self.stdin.take());
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether something on `addr` answers an HTTP request.
fn answers_http(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET /moto-api/ HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 5];
    stream.read_exact(&mut head).is_ok() && &head == b"HTTP/"
}
