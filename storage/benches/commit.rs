//! Execute + state root + commit for blocks of signed transfers over a
//! ledger of 1,000,000 accounts, with signature verification measured on
//! its own, and the per-block cost of the WAL sync.
//!
//! `PHALANX_BENCH_ACCOUNTS` overrides the account count (default 1,000,000);
//! `PHALANX_BENCH_DIR` puts the store on a chosen disk (default: a temp dir).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use phalanx_ledger::{decode_payload, prepare_payload};
use phalanx_storage::testkit::{genesis, next_block, transfers};
use phalanx_storage::{Store, StoreOptions};

const TXS_PER_BLOCK: usize = 4000;

fn accounts() -> u64 {
    std::env::var("PHALANX_BENCH_ACCOUNTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

fn bench(c: &mut Criterion) {
    let n = accounts();
    let base = match std::env::var("PHALANX_BENCH_DIR") {
        Ok(d) => tempfile::tempdir_in(d).unwrap(),
        Err(_) => tempfile::tempdir().unwrap(),
    };
    let g = genesis(n);
    let t = Instant::now();
    let sync_store = Store::open(&base.path().join("sync"), &g, StoreOptions::default()).unwrap();
    eprintln!(
        "genesis of {n} accounts written in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let nosync_store = Store::open(
        &base.path().join("nosync"),
        &g,
        StoreOptions {
            sync_writes: false,
            ..StoreOptions::default()
        },
    )
    .unwrap();

    // Where a commit's time goes, averaged over a few blocks.
    for (name, store) in [("synced", &sync_store), ("unsynced", &nosync_store)] {
        let (mut e, mut r, mut w) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        let blocks = 5;
        for _ in 0..blocks {
            let h = store.head().height + 1;
            let txs = transfers(store, &g.chain_id, n, h, 11, TXS_PER_BLOCK).unwrap();
            let (block, cert) = next_block(store, &txs);
            let t = store
                .apply_prepared(&block, &cert, prepare_payload(&block.payload))
                .unwrap()
                .timings;
            (e, r, w) = (e + t.execute, r + t.state_root, w + t.write);
        }
        eprintln!(
            "{name}: per block of {TXS_PER_BLOCK}: execute {:?}, state root {:?}, write {:?}",
            e / blocks,
            r / blocks,
            w / blocks
        );
    }

    let mut group = c.benchmark_group(format!("commit_{n}_accounts"));
    group.throughput(Throughput::Elements(TXS_PER_BLOCK as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));

    // Signature verification alone (batch), per block.
    let txs = transfers(&sync_store, &g.chain_id, n, 1, 11, TXS_PER_BLOCK).unwrap();
    let (block, _) = next_block(&sync_store, &txs);
    group.bench_function("verify_signatures", |b| {
        b.iter(|| prepare_payload(&block.payload))
    });
    group.bench_function("decode_only", |b| b.iter(|| decode_payload(&block.payload)));

    for (name, store) in [
        ("execute_root_commit_synced", &sync_store),
        ("execute_root_commit_unsynced", &nosync_store),
    ] {
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    // Signing and verifying happen outside the timed part.
                    let h = store.head().height + 1;
                    let txs = transfers(store, &g.chain_id, n, h, 11, TXS_PER_BLOCK).unwrap();
                    let (block, cert) = next_block(store, &txs);
                    let prepared = prepare_payload(&block.payload);
                    let t = Instant::now();
                    store.apply_prepared(&block, &cert, prepared).unwrap();
                    total += t.elapsed();
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
