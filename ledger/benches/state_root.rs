//! The state tree alone, in memory: computing a new root for a block's
//! account changes over a large tree.
//! `PHALANX_BENCH_ACCOUNTS` sets the tree size (default 1,000,000).

#![allow(missing_docs, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use phalanx_crypto::{KeyPair, PublicKey};
use phalanx_ledger::{Account, StateTree};

const CHANGES: usize = 8000;

fn addr(i: u64) -> PublicKey {
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&i.to_le_bytes());
    KeyPair::from_seed(s).public()
}

fn bench(c: &mut Criterion) {
    let n: u64 = std::env::var("PHALANX_BENCH_ACCOUNTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let t = Instant::now();
    let keys: Vec<PublicKey> = (0..n).map(addr).collect();
    eprintln!("{n} keys in {:.1} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let mut tree = StateTree::from_accounts(keys.iter().map(|k| {
        (
            k.to_bytes(),
            Account {
                balance: 1_000,
                nonce: 0,
            },
            0,
        )
    }));
    eprintln!(
        "tree of {n} accounts built in {:.2} s, {} MiB",
        t.elapsed().as_secs_f64(),
        tree.memory_bytes() >> 20
    );
    let mut version = 0u64;
    let mut group = c.benchmark_group(format!("state_root_{n}_accounts"));
    group.throughput(Throughput::Elements(CHANGES as u64));
    group.sample_size(20);
    group.bench_function("apply_8000_changes", |b| {
        b.iter_batched(
            || {
                version += 1;
                let changes: BTreeMap<PublicKey, Account> = (0..CHANGES as u64)
                    .map(|i| {
                        let k = keys[((i * 7919 + version * 104_729) % n) as usize];
                        (
                            k,
                            Account {
                                balance: version,
                                nonce: version,
                            },
                        )
                    })
                    .collect();
                (version, changes)
            },
            |(v, changes)| tree.apply(v, &changes),
            criterion::BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
