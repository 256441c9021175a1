//! Micro-benchmarks of the hot pure paths: frame encode/decode and the record checksum, each
//! against a baseline in the same run (a bare prost encode/decode; a memcpy of the same bytes).

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use ferry_proto::frame::{self, FrameLimits};
use ferry_proto::wire;
use prost::Message;

fn frames(c: &mut Criterion) {
    let open = wire::ClientRequest {
        request: Some(wire::client_request::Request::OpenSession(
            wire::OpenSession {
                token: "a".repeat(64),
                host: "lab-pc-12".into(),
                service: "ssh".into(),
            },
        )),
    };
    let limits = FrameLimits::default();
    let encoded = frame::encode(&open, limits).unwrap();
    let mut group = c.benchmark_group("frame");
    group.throughput(Throughput::Bytes(encoded.len() as u64));
    group.bench_function("baseline: prost encode", |b| {
        b.iter(|| black_box(&open).encode_to_vec())
    });
    group.bench_function("frame encode", |b| {
        b.iter(|| frame::encode(black_box(&open), limits).unwrap())
    });
    let payload = &encoded[frame::HEADER_BYTES..];
    group.bench_function("baseline: prost decode", |b| {
        b.iter(|| wire::ClientRequest::decode(black_box(payload)).unwrap())
    });
    group.bench_function("frame decode", |b| {
        b.iter(|| frame::decode_frame::<wire::ClientRequest>(black_box(&encoded), limits).unwrap())
    });
    group.finish();
}

fn records(c: &mut Criterion) {
    let payload = vec![0x5au8; 4096];
    let sealed = ferry_store::record::seal(&payload);
    let mut group = c.benchmark_group("record");
    group.throughput(Throughput::Bytes(payload.len() as u64));
    group.bench_function("baseline: copy", |b| {
        b.iter(|| black_box(&payload).to_vec())
    });
    group.bench_function("seal", |b| {
        b.iter(|| ferry_store::record::seal(black_box(&payload)))
    });
    group.bench_function("open (verify)", |b| {
        b.iter(|| ferry_store::record::open(black_box(&sealed)).unwrap().len())
    });
    group.finish();
}

criterion_group!(benches, frames, records);
criterion_main!(benches);
