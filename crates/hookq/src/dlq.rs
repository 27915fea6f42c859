//! `hookq dlq list | replay | purge`: the dead-letter queue, for operators.

use crate::cli::DlqAction;
use crate::{load_config, refuse_memory};
use hookq_queue::{DeadLetters, DlqFilter};
use hookq_worker::queue;
use std::sync::Arc;

/// Lists, replays or purges the entries `action`'s filter selects.
pub async fn run(action: DlqAction) -> anyhow::Result<()> {
    let (args, verb) = match &action {
        DlqAction::List { args, .. } => (args, "dlq list"),
        DlqAction::Replay(args) => (args, "dlq replay"),
        DlqAction::Purge(args) => (args, "dlq purge"),
    };
    let config = load_config(&args.config.config)?;
    refuse_memory(&config, verb)?;
    let queue: Arc<dyn DeadLetters> = queue::open(&config).await?;
    let now = hookq_core::now_ms();
    let ago = |s: u64| now.saturating_sub(s.saturating_mul(1000));
    let filter = DlqFilter {
        app_id: args.app.clone(),
        limit: args.limit,
        endpoint: args.endpoint.clone(),
        reason: args.reason.clone(),
        failed_before_ms: args.older_than.map(ago),
        failed_after_ms: args.newer_than.map(ago),
        ids: (!args.ids.is_empty()).then(|| args.ids.clone()),
        offset: 0,
    };
    match action {
        DlqAction::List { json, .. } => {
            let entries = queue.dlq_entries(&filter).await?;
            for hookq_queue::DlqEntry { id, entry: e } in &entries {
                if json {
                    // The entry with its id: what `--id` selects by.
                    let mut v = serde_json::to_value(e).unwrap_or_default();
                    if let Some(o) = v.as_object_mut() {
                        o.insert("id".into(), id.as_str().into());
                    }
                    say!("{v}");
                    continue;
                }
                let age_s = now.saturating_sub(e.failed_at_ms) / 1000;
                say!(
                    "{:>6}s ago  app {}  endpoint {}  attempts {}  {}{}",
                    age_s,
                    e.app_id.as_deref().unwrap_or("-"),
                    e.endpoint.as_deref().unwrap_or("-"),
                    e.attempts,
                    e.reason,
                    e.body_excerpt
                        .as_deref()
                        .map(|b| format!("  body: {b}"))
                        .unwrap_or_default()
                );
            }
            if !json {
                say!(
                    "{} entr{}",
                    entries.len(),
                    if entries.len() == 1 { "y" } else { "ies" }
                );
            }
        }
        DlqAction::Replay(_) => say!("replayed {} entries", queue.dlq_replay(&filter).await?),
        DlqAction::Purge(_) => say!("purged {} entries", queue.dlq_purge(&filter).await?),
    }
    Ok(())
}
