//! A TCP proxy on 127.0.0.1 whose target a test can switch, as a failover
//! behind one address (a virtual IP, a DNS name, a TCP load balancer) does.
//! A switch sends only connections opened after it to the new target;
//! connections already open stay with the old one, so a client that keeps
//! its connections goes on talking to the server it had — after a failover,
//! a demoted primary that answers `READONLY`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use tokio::net::{TcpListener, TcpStream};

struct Inner {
    target: AtomicU16,
    /// Connections accepted so far, per target port: (port, count).
    opened: std::sync::Mutex<Vec<(u16, usize)>>,
}

pub struct RedirectProxy {
    pub port: u16,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl RedirectProxy {
    /// Starts a proxy to `127.0.0.1:<target>` as a task of the current runtime.
    pub async fn start(target: u16) -> RedirectProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let port = listener.local_addr().expect("bound address").port();
        let inner = Arc::new(Inner {
            target: AtomicU16::new(target),
            opened: std::sync::Mutex::new(Vec::new()),
        });
        let task = tokio::spawn(accept(listener, inner.clone()));
        RedirectProxy { port, inner, task }
    }

    /// `redis://127.0.0.1:<port>`: where a client connects to reach the target.
    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Sends connections opened from now on to `127.0.0.1:<target>`; open ones stay where they are.
    pub fn switch(&self, target: u16) {
        self.inner.target.store(target, Ordering::SeqCst);
    }

    /// How many connections were opened to `target` so far.
    pub fn opened_to(&self, target: u16) -> usize {
        let opened = self.inner.opened.lock().unwrap();
        opened
            .iter()
            .find(|(p, _)| *p == target)
            .map_or(0, |(_, n)| *n)
    }
}

impl Drop for RedirectProxy {
    fn drop(&mut self) {
        // Stops accepting; open connections end with the test's runtime.
        self.task.abort();
    }
}

async fn accept(listener: TcpListener, inner: Arc<Inner>) {
    while let Ok((mut client, _)) = listener.accept().await {
        let target = inner.target.load(Ordering::SeqCst);
        {
            let mut opened = inner.opened.lock().unwrap();
            match opened.iter_mut().find(|(p, _)| *p == target) {
                Some((_, n)) => *n += 1,
                None => opened.push((target, 1)),
            }
        }
        tokio::spawn(async move {
            let Ok(mut server) = TcpStream::connect(("127.0.0.1", target)).await else {
                // The target is down: the client sees its connection closed.
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        });
    }
}
