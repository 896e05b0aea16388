//! Criterion micro benchmarks of the per-record hot path: router (decode + key + route),
//! shard update (sequence check + fold), and log append + commit.
//!
//! cargo bench --bench micro

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use onceflow_core::batch::{EventBatch, OutBuf};
use onceflow_core::config::Pipeline;
use onceflow_core::log::{CommitMarker, FsyncPolicy, LogOptions, LogWriter};
use onceflow_core::router::Router;
use onceflow_core::shard::{ShardCore, ShardSettings};
use onceflow_core::stage::Fold;
use onceflow_core::stats::Outcomes;
use onceflow_core::workload::{BankParams, write_bank};

const PIPELINE: &str = include_str!("../examples/ledger/pipeline.toml");

fn pipeline(shards: usize) -> Pipeline {
    let src = PIPELINE.replace("shards = 2", &format!("shards = {shards}"));
    Pipeline::parse(&src, Path::new(".")).expect("example pipeline is valid")
}

fn workload(accounts: u64, events: u64) -> Vec<Vec<u8>> {
    let mut raw = Vec::new();
    let p = BankParams {
        accounts,
        events,
        seed: 1,
        duplicate_rate: 0.0,
        reorder_rate: 0.0,
    };
    write_bank(&p, &mut raw).unwrap();
    raw.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

fn bench(c: &mut Criterion) {
    let recs = workload(100_000, 256 * 40);
    let p = pipeline(1);
    let names = Arc::new(vec![("ledger".to_string(), 0u32)]);

    let mut g = c.benchmark_group("router");
    g.throughput(Throughput::Elements(recs.len() as u64));
    g.bench_function("decode_key_route_bank_json", |b| {
        let mut router = Router::new(&p, names.clone());
        let mut batches = vec![EventBatch::default()];
        let mut dead = OutBuf::default();
        b.iter(|| {
            let mut o = Outcomes::default();
            for (i, r) in recs.iter().enumerate() {
                router.route(
                    0,
                    i as u64,
                    0,
                    r,
                    &[],
                    &mut batches,
                    &mut dead,
                    true,
                    &mut o,
                );
                if batches[0].events.len() >= 256 {
                    batches[0].clear();
                }
            }
            black_box(o)
        })
    });
    g.finish();

    // Shard update at 100k keys, per-epoch emission.
    let mut g = c.benchmark_group("shard");
    let mut router = Router::new(&p, names.clone());
    let mut batches_all = Vec::new();
    let mut dead = OutBuf::default();
    let mut o = Outcomes::default();
    let mut cur = vec![EventBatch::default()];
    for (i, r) in recs.iter().enumerate() {
        router.route(0, i as u64, 0, r, &[], &mut cur, &mut dead, true, &mut o);
        if cur[0].events.len() == 256 {
            batches_all.push(std::mem::take(&mut cur[0]));
        }
    }
    g.throughput(Throughput::Elements((batches_all.len() * 256) as u64));
    g.bench_function("seq_check_fold_100k_keys", |b| {
        // Sequences off so that every pass applies every record (with them on, a second
        // pass would be all duplicates); the sequence check itself is a compare.
        let mut settings_off = ShardSettings::new(&p);
        settings_off.sequenced = false;
        let mut shard_noseq = ShardCore::new(
            Arc::new(Fold::new(&p.view.fields, &p.referenced_fields())),
            settings_off,
            names.clone(),
        );
        b.iter(|| {
            let mut total = Outcomes::default();
            for batch in &batches_all {
                total.processed += shard_noseq.process(batch).processed;
            }
            black_box(shard_noseq.barrier(1, None));
            black_box(total)
        })
    });
    g.finish();

    let mut g = c.benchmark_group("log");
    let value = br#"{"key":"ACC-0000042","version":17,"balance":123456,"entries":17,"credits":10,"debits":7}"#;
    let n = 10_000u64;
    g.throughput(Throughput::Elements(n));
    g.bench_function("append_commit_10k_records_no_fsync", |b| {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LogWriter::open(
            dir.path(),
            LogOptions {
                fsync: FsyncPolicy::Never,
                ..LogOptions::default()
            },
        )
        .unwrap();
        let t = w.ensure_topic("out", 4).unwrap();
        b.iter_batched(
            || (),
            |_| {
                let mut tx = w.begin();
                for i in 0..n {
                    tx.append(t, (i % 4) as u32, b"ACC-0000042", value);
                }
                tx.commit(&CommitMarker {
                    epoch: 1,
                    inputs: vec![("ledger".into(), 0, n)],
                })
                .unwrap()
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
