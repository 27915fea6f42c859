//! `hookq enqueue`: events given on the command line, in a file or on
//! standard input, published for one app through the producer.

use crate::refuse_memory;
use anyhow::{Context, bail};
use hookq_core::{Config, Event};
use hookq_worker::queue;
use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;

/// Publishes `event`, or the events of `file` (one JSON object per line,
/// `-` for standard input), for `app`, in chunks of 500.
pub async fn run(
    config: Config,
    app: &str,
    event: Option<String>,
    file: Option<PathBuf>,
) -> anyhow::Result<()> {
    refuse_memory(&config, "enqueue")?;
    let lines: Vec<String> = match (event, file) {
        (Some(e), _) => vec![e],
        (None, Some(path)) if path.as_os_str() == "-" => {
            std::io::stdin().lock().lines().collect::<Result<_, _>>()?
        }
        (None, Some(path)) => std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .lines()
            .map(str::to_string)
            .collect(),
        (None, None) => bail!("give --event JSON or --file PATH (`-` for standard input)"),
    };
    let mut events = Vec::new();
    for (n, line) in lines
        .iter()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let e: Event =
            serde_json::from_str(line).with_context(|| format!("line {}: not an event", n + 1))?;
        events.push(e);
    }
    let queue = queue::open(&config).await?;
    let config = Arc::new(config);
    let registry = hookq_apps::open(&config).await?;
    let producer = hookq_producer::Producer::with_apps(queue, registry);
    let mut total = hookq_producer::Published::default();
    for chunk in events.chunks(500) {
        let p = producer.publish_batch(app, chunk.to_vec()).await?;
        total.enqueued += p.enqueued;
        total.skipped += p.skipped;
    }
    say!(
        "enqueued {} event(s) for {app}; {} skipped (no endpoint wants them)",
        total.enqueued,
        total.skipped
    );
    Ok(())
}
