//! Encoding: one event's JSON (once per event, shared by its endpoints) and
//! the envelope of a 100-event batch (once per attempt).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hookq_core::Event;
use hookq_core::envelope;
use std::hint::black_box;

fn event(i: usize) -> Event {
    let mut e = Event::client_event(
        format!("private-bench-{}", i % 64),
        "client-bench",
        "1760000000000",
        "1234.5678",
    );
    e.id = Some("job_0192f0c5a1b27c3d8e9f0a1b2c3d4e5f".into());
    e
}

fn encoding(c: &mut Criterion) {
    let e = event(7);
    let mut g = c.benchmark_group("encode_event");
    g.bench_function("without_id", |b| {
        b.iter(|| envelope::encode_event(black_box(&e), false))
    });
    g.bench_function("with_id", |b| {
        b.iter(|| envelope::encode_event(black_box(&e), true))
    });
    g.finish();

    let encoded: Vec<Vec<u8>> = (0..100)
        .map(|i| envelope::encode_event(&event(i), false))
        .collect();
    let size = envelope::body(1_760_000_000_000, encoded.iter().map(Vec::as_slice)).len();
    let mut g = c.benchmark_group("envelope_body");
    g.throughput(Throughput::Elements(100));
    g.bench_function(format!("100_events_{size}_bytes"), |b| {
        b.iter(|| {
            envelope::body(
                black_box(1_760_000_000_000),
                encoded.iter().map(Vec::as_slice),
            )
        })
    });
    g.finish();
}

criterion_group!(benches, encoding);
criterion_main!(benches);
