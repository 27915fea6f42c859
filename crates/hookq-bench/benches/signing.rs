//! Signing one request: `X-Pusher-Signature` (HMAC-SHA256, hex) over a
//! one-event and a 100-event body, and every header hookq sets (with and
//! without a Standard Webhooks secret).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hookq_core::Event;
use hookq_core::envelope::{self, Signer};
use hookq_core::sign::{self, SigningSecret};
use std::hint::black_box;

fn body(events: usize) -> Vec<u8> {
    let encoded: Vec<Vec<u8>> = (0..events)
        .map(|i| {
            let e = Event::client_event(
                format!("private-bench-{}", i % 64),
                "client-bench",
                "1760000000000",
                "1234.5678",
            );
            envelope::encode_event(&e, false)
        })
        .collect();
    envelope::body(1_760_000_000_000, encoded.iter().map(Vec::as_slice))
}

fn signing(c: &mut Criterion) {
    let mut g = c.benchmark_group("pusher_signature");
    for events in [1, 100] {
        let b = body(events);
        g.throughput(Throughput::Bytes(b.len() as u64));
        g.bench_function(format!("{events}_events_{}_bytes", b.len()), |bench| {
            bench.iter(|| sign::pusher_signature(black_box("app-secret-0123456789"), black_box(&b)))
        });
    }
    g.finish();

    let b = body(100);
    let secret = match SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw") {
        Ok(s) => s,
        Err(e) => panic!("test secret: {e}"),
    };
    let mut g = c.benchmark_group("signer_headers_100_events");
    for (name, secrets) in [
        ("pusher_only", Vec::new()),
        ("pusher_and_standard", vec![secret]),
    ] {
        g.bench_function(name, |bench| {
            bench.iter(|| {
                Signer {
                    app_key: "app-key",
                    app_secret: "app-secret-0123456789",
                    signing_secrets: &secrets,
                    webhook_id: "msg_0192f0c5a1b27c3d8e9f0a1b2c3d4e5f",
                    time_ms: 1_760_000_000_000,
                }
                .headers(black_box(&b))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, signing);
criterion_main!(benches);
