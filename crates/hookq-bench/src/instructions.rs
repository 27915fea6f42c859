//! Instructions per unbatched delivery, counted by callgrind: a figure that
//! does not move with the machine's speed, to compare two builds on a shared
//! machine (docs/benchmark.md).
//!
//! The worker runs under `valgrind --tool=callgrind` twice, on a queue
//! pre-filled with a small and with a larger number of unbatched event jobs,
//! each run until the receiver holds every event and then stopped with
//! SIGTERM. What start-up and shutdown cost is the same in both runs, so the
//! difference of the two totals divided by the difference of the counts is
//! what one delivery costs: claim, decode, sign, send, read the answer, ack.
//! The output files are kept (`callgrind-<events>.out` in the results
//! directory) for `callgrind_annotate`.

use crate::scenario::Ctx;
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

/// What the callgrind scenario counted.
#[derive(Debug, Clone)]
pub struct Instructions {
    /// (events delivered, instructions the worker executed) of each run.
    pub runs: Vec<(usize, u64)>,
}

impl Instructions {
    /// Instructions per delivery, from the first and the last run.
    pub fn per_delivery(&self) -> f64 {
        match (self.runs.first(), self.runs.last()) {
            (Some((n0, i0)), Some((n1, i1))) if n1 > n0 => {
                (*i1 as f64 - *i0 as f64) / (n1 - n0) as f64
            }
            _ => f64::NAN,
        }
    }

    /// The JSON form.
    pub fn json(&self) -> Value {
        json!({
            "runs": self.runs.iter().map(|(n, i)| json!({"events": n, "instructions": i})).collect::<Vec<_>>(),
            "instructions_per_delivery": self.per_delivery(),
        })
    }
}

/// Runs the unbatched worker under callgrind for each count of `counts`,
/// keeping each run's output file in `keep`.
pub async fn unbatched(ctx: &Ctx, counts: &[usize], keep: &Path) -> Result<Instructions> {
    std::fs::create_dir_all(keep).with_context(|| format!("creating {}", keep.display()))?;
    let mut runs = Vec::new();
    for &n in counts {
        runs.push((n, one_run(ctx, n, keep).await?));
    }
    Ok(Instructions { runs })
}

async fn one_run(ctx: &Ctx, events: usize, keep: &Path) -> Result<u64> {
    let prefix = format!("bench-callgrind-{events}");
    ctx.redis.flush().await?;
    ctx.redis.prefill(&prefix, &ctx.apps, events).await?;
    let out = keep.join(format!("callgrind-{events}.out"));
    let wrapper = [
        "valgrind".to_string(),
        "--tool=callgrind".to_string(),
        format!("--callgrind-out-file={}", out.display()),
    ];
    ctx.receiver.reset(events as u64, false);
    let name = format!("callgrind-{events}");
    let mut worker = ctx
        .spawn_worker_under(&name, &ctx.config(&prefix, false), &wrapper)
        .context("starting the worker under valgrind (Debian's valgrind package)")?;
    let done = ctx.receiver.wait_done(Duration::from_secs(300)).await;
    let seen = ctx.receiver.take();
    worker.stop()?;
    if !done {
        bail!(
            "{} of {events} events arrived under callgrind; log: {}",
            seen.events,
            worker.log_tail()
        );
    }
    let text = std::fs::read_to_string(&out)
        .with_context(|| format!("reading {} (log: {})", out.display(), worker.log_tail()))?;
    total(&text).with_context(|| format!("no `totals:` line in {}", out.display()))
}

/// The `totals:` (or `summary:`) line of a callgrind output file: the
/// instructions (`Ir`, its only event by default) of the whole run.
fn total(text: &str) -> Option<u64> {
    text.lines()
        .filter_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })
        .find_map(|rest| rest.split_whitespace().next()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_totals_line() {
        let text = "events: Ir\nfn=main\n3 10\nsummary: 12345\ntotals: 12345\n";
        assert_eq!(total(text), Some(12345));
        assert_eq!(total("events: Ir\n"), None);
    }

    #[test]
    fn per_delivery_is_the_slope() {
        let i = Instructions {
            runs: vec![(1_000, 50_000_000), (3_000, 250_000_000)],
        };
        assert_eq!(i.per_delivery(), 100_000.0);
    }
}
