//! Hot paths that need no server: MVCC put and range, the key index, the WAL and record encoding.
//! `cargo bench` shows a regression here before it shows in `scripts/compare-etcd`.

use std::hint::black_box;

use concord::mvcc::{MemBackend, Store};
use concord::pb::etcdserverpb::{PutRequest, RangeRequest};
use concord::pb::mvccpb::KeyValue;
use concord::storage::wal::Wal;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use prost::Message;

fn key(i: u64) -> Vec<u8> {
    format!("bench/{i:08}").into_bytes()
}

fn filled(keys: u64) -> Store<MemBackend> {
    let mut s = Store::open(MemBackend::default(), 1, -1).expect("open");
    for i in 0..keys {
        let req = PutRequest { key: key(i), value: vec![b'v'; 256], ..Default::default() };
        s.put(&req, &|_| false).expect("put");
    }
    s.commit().expect("commit");
    s
}

fn mvcc(c: &mut Criterion) {
    c.bench_function("mvcc put (10k keys, 256 B)", |b| {
        b.iter_batched_ref(
            || filled(10_000),
            |s| {
                for i in 0..100u64 {
                    let req = PutRequest {
                        key: key(i * 97 % 10_000),
                        value: vec![b'w'; 256],
                        ..Default::default()
                    };
                    black_box(s.put(&req, &|_| false).expect("put"));
                }
            },
            BatchSize::LargeInput,
        )
    });
    let s = filled(10_000);
    c.bench_function("mvcc range one key", |b| {
        let req = RangeRequest { key: key(4242), ..Default::default() };
        b.iter(|| black_box(s.range(&req).expect("range")))
    });
    c.bench_function("mvcc range prefix, limit 100", |b| {
        let req = RangeRequest {
            key: b"bench/".to_vec(),
            range_end: b"bench0".to_vec(),
            limit: 100,
            ..Default::default()
        };
        b.iter(|| black_box(s.range(&req).expect("range")))
    });
    c.bench_function("mvcc count 10k keys", |b| {
        let req = RangeRequest { key: vec![0], range_end: vec![0], count_only: true, ..Default::default() };
        b.iter(|| black_box(s.range(&req).expect("range")))
    });
}

fn encoding(c: &mut Criterion) {
    let kv = KeyValue {
        key: key(1).into(),
        create_revision: 2,
        mod_revision: 3,
        version: 1,
        value: vec![b'v'; 256].into(),
        lease: 0,
    };
    c.bench_function("record encode", |b| b.iter(|| black_box(kv.encode_to_vec())));
    let bytes = kv.encode_to_vec();
    c.bench_function("record decode", |b| {
        b.iter(|| black_box(KeyValue::decode(bytes.as_slice()).expect("decode")))
    });
}

fn wal(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = Wal::open(dir.path(), None).expect("wal");
    let mut next = 1u64;
    let payload = vec![7u8; 300];
    // The append itself (page cache); the fdatasync is the disk's, measured by scripts/compare-etcd.
    c.bench_function("wal append 64 x 300 B", |b| {
        b.iter(|| {
            let batch: Vec<(u64, Vec<u8>)> = (0..64).map(|i| (next + i, payload.clone())).collect();
            next += 64;
            w.append(&batch).expect("append");
        })
    });
}

criterion_group!(benches, mvcc, encoding, wal);
criterion_main!(benches);
