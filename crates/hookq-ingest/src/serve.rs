//! The HTTP/1.1 server under the ingest's routes.
//!
//! `axum::serve` sets no header timeout, so a client that opens connections
//! and sends its headers a byte at a time (slowloris) would hold them open
//! for ever. This loop serves each connection with hyper directly, with
//! `ingest.header_timeout_ms` on the request headers (the body has its own
//! timeout in the handler), `TCP_NODELAY`, and a graceful shutdown: on
//! `shutdown` it stops accepting, lets requests in flight finish and closes
//! idle keep-alive connections, waiting at most `drain` for them.

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Serves `routes` on `listener` until `shutdown` fires, then drains for at most `drain`.
pub async fn serve(
    listener: TcpListener,
    routes: Router,
    header_timeout: Duration,
    shutdown: CancellationToken,
    drain: Duration,
) {
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little, go on.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let connection = http.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(routes.clone()),
        );
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(
            drain_ms = drain.as_millis() as u64,
            "connections still open after the drain time; closing them"
        );
    }
}
