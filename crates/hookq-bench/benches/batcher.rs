//! The batcher: 1,000 items over 10 apps (one endpoint each) pushed into a
//! batcher with batches of 100, as the worker's receive loop feeds it; and
//! the same with batching off (every item its own batch).

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use hookq_core::config::{App, Batching};
use hookq_core::{Config, Event};
use hookq_queue::Handle;
use hookq_worker::batch::{Batcher, Encoded, Item};
use hookq_worker::settle::Settler;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

const APPS: usize = 10;
const ITEMS: usize = 1000;

fn apps() -> Vec<Arc<App>> {
    let apps: Vec<String> = (0..APPS)
        .map(|i| {
            format!(
                r#"{{"id": "app-{i}", "key": "key-{i}", "secret": "secret-{i}",
                    "webhooks": [{{"url": "http://127.0.0.1:9/app-{i}", "event_types": ["client_event"]}}]}}"#
            )
        })
        .collect();
    let text = format!(
        r#"{{"app_manager": {{"array": {{"apps": [{}]}}}}}}"#,
        apps.join(",")
    );
    match Config::parse(&text, |_| None) {
        Ok((config, _)) => config.apps.clone(),
        Err(e) => panic!("bench config: {e}"),
    }
}

fn batching(c: &mut Criterion) {
    let apps = apps();
    let (settler, _acks) = Settler::new();
    let ticket = settler.ticket(Handle("bench".into()), ITEMS, None, None);
    let events: Vec<Arc<Encoded>> = (0..ITEMS)
        .map(|i| {
            let e = Event::client_event(
                format!("private-bench-{}", i % 64),
                "client-bench",
                "1760000000000",
                "1234.5678",
            );
            Encoded::new(e, false)
        })
        .collect();
    let items = || -> Vec<Item> {
        events
            .iter()
            .enumerate()
            .map(|(i, e)| Item {
                app: apps[i % APPS].clone(),
                endpoint: 0,
                event: e.clone(),
                ticket: ticket.clone(),
            })
            .collect()
    };
    let mut g = c.benchmark_group("batcher");
    g.throughput(Throughput::Elements(ITEMS as u64));
    for (name, enabled) in [("batched_size_100", true), ("unbatched", false)] {
        let settings = Batching {
            enabled,
            duration: Duration::from_millis(50),
            size: 100,
            max_bytes: 1 << 20,
        };
        g.bench_function(format!("push_{ITEMS}_items_{APPS}_apps_{name}"), |b| {
            b.iter_batched(
                items,
                |items| {
                    let mut batcher = Batcher::new(settings, 10_000);
                    let now = Instant::now();
                    let mut closed = 0;
                    for item in items {
                        closed += batcher.push(item, now).len();
                    }
                    closed + batcher.drain().len()
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, batching);
criterion_main!(benches);
