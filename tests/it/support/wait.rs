//! Waiting with a deadline: polling until a condition holds, and retrying an
//! operation that fails while a server comes (back) up.

use std::fmt::Display;
use std::time::{Duration, Instant};

/// Calls `check` every `every` until it gives `Ok`, and returns that value.
/// `Err` says what it saw instead; once `limit` has passed, the last one is
/// the panic's message, after `what`. (`check` gives a future, as an
/// `async ||` closure does; a plain closure giving one keeps the caller's
/// future `Send` for a spawned task.)
pub async fn poll<T, Fut: Future<Output = Result<T, String>>>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut check: impl FnMut() -> Fut,
) -> T {
    let start = Instant::now();
    loop {
        match check().await {
            Ok(v) => return v,
            Err(seen) => assert!(
                start.elapsed() < limit,
                "timed out after {limit:?} waiting for {what}: {seen}"
            ),
        }
        tokio::time::sleep(every).await;
    }
}

/// Calls `f` until it succeeds, again after `every` while `again` says the
/// error may pass and `limit` has not; panics naming `what` and the error
/// otherwise.
pub async fn retry<T, E: Display, Fut: Future<Output = Result<T, E>>>(
    what: &str,
    limit: Duration,
    every: Duration,
    again: impl Fn(&E) -> bool,
    mut f: impl FnMut() -> Fut,
) -> T {
    let start = Instant::now();
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if again(&e) && start.elapsed() < limit => tokio::time::sleep(every).await,
            Err(e) => panic!("{what}: still failing after {:?}: {e}", start.elapsed()),
        }
    }
}
