//! Table-driven tests: every case of a table runs, each as a task of its own
//! so that a panic anywhere in it (a timed-out wait as much as an assertion)
//! is reported under the case's name.

use std::future::Future;

/// Runs `run` on each `(name, case)`, one case after the other, and panics
/// once all have run if any failed, naming each failed case with its panic
/// message.
pub async fn run_cases<C, Fut>(cases: Vec<(&'static str, C)>, run: impl Fn(C) -> Fut)
where
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut failed = Vec::new();
    for (name, case) in cases {
        if let Err(e) = tokio::spawn(run(case)).await {
            let message = match e.try_into_panic() {
                Ok(panic) => panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "a panic without a message".into()),
                Err(e) => e.to_string(),
            };
            eprintln!("case {name} failed: {message}");
            failed.push(format!("{name}: {message}"));
        }
    }
    assert!(
        failed.is_empty(),
        "{} case(s) failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}
