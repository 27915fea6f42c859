//! Services the suite starts for itself, each on a free loopback port, and
//! workers run in-process over them.

pub mod black_hole;
pub mod cases;
pub mod counting_proxy;
pub mod inproc;
pub mod lambda_server;
pub mod mariadb;
pub mod moto;
pub mod postgres;
pub mod process;
pub mod queue;
pub mod receiver;
pub mod redirect_proxy;
pub mod redis_cluster;
pub mod sender;
pub mod wait;

/// The private redis-server, from the library (the benchmark uses it too).
pub use hookq_tests::redis_server;

/// Serves `app` on a free loopback port as a task of the current runtime;
/// returns the port.
pub async fn serve(app: axum::Router) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let port = listener.local_addr().expect("bound address").port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}
