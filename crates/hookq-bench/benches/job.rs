//! The job wire format: decoding (and checking) what a worker receives, and
//! encoding what a producer pushes; and, for comparison, deserializing the
//! event job's struct directly.

use criterion::{Criterion, criterion_group, criterion_main};
use hookq_core::Event;
use hookq_core::job::{EventJob, Job};
use std::hint::black_box;

fn jobs(c: &mut Criterion) {
    let event = Event::client_event(
        "private-bench-7",
        "client-bench",
        "1760000000000",
        "1234.5678",
    );
    let job = Job::Event(EventJob::new("app-3", event));
    let text = job.encode();
    let mut g = c.benchmark_group("job");
    g.bench_function(format!("decode_event_job_{}_bytes", text.len()), |b| {
        b.iter(|| Job::decode(black_box(&text)))
    });
    // The same fields read straight into the struct: what decoding costs
    // without `Job::decode`'s checks (version, app, the event's fields).
    g.bench_function("deserialize_event_job_struct_only", |b| {
        b.iter(|| serde_json::from_str::<EventJob>(black_box(&text)))
    });
    g.bench_function("encode_event_job", |b| b.iter(|| black_box(&job).encode()));
    g.bench_function("new_and_encode_event_job", |b| {
        b.iter(|| {
            let e = Event::client_event(
                "private-bench-7",
                "client-bench",
                "1760000000000",
                "1234.5678",
            );
            Job::Event(EventJob::new(black_box("app-3"), e)).encode()
        })
    });
    g.finish();
}

criterion_group!(benches, jobs);
criterion_main!(benches);
