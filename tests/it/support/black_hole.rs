//! A loopback port where connections are never established: a listener with
//! a full accept queue, which the kernel answers by dropping further SYNs, so
//! a client's connect hangs until its own connect timeout.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub struct BlackHole {
    pub addr: SocketAddr,
    _listener: tokio::net::TcpListener,
    _queued: Vec<TcpStream>,
}

impl BlackHole {
    pub fn start() -> BlackHole {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.1:0".parse().expect("address"))
            .expect("bind");
        let addr = socket.local_addr().expect("local address");
        // Never accepted: a few connections fill the queue of a backlog of 1.
        let listener = socket.listen(1).expect("listen");
        let queued: Vec<TcpStream> = (0..4)
            .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok())
            .collect();
        assert!(
            TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_err(),
            "the accept queue of {addr} is not full"
        );
        BlackHole {
            addr,
            _listener: listener,
            _queued: queued,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}
