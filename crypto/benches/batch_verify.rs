//! Signature verification cost per signature by batch size: what batching
//! transactions for admission buys.
#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use phalanx_crypto::{KeyPair, PublicKey, Signature, verify_each};

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("verify_each");
    let max = 512usize;
    let keys: Vec<KeyPair> = (0..max)
        .map(|i| {
            let mut seed = [7u8; 32];
            seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
            KeyPair::from_seed(seed)
        })
        .collect();
    let msgs: Vec<Vec<u8>> = (0..max)
        .map(|i| format!("transfer {i}").into_bytes())
        .collect();
    let signed: Vec<(PublicKey, Vec<u8>, Signature)> = keys
        .iter()
        .zip(&msgs)
        .map(|(k, m)| (k.public(), m.clone(), k.sign_raw(m)))
        .collect();
    for n in [1usize, 8, 16, 32, 64, 128, 256, 512] {
        let items: Vec<(&PublicKey, &[u8], &Signature)> = signed[..n]
            .iter()
            .map(|(k, m, s)| (k, m.as_slice(), s))
            .collect();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &items, |b, items| {
            b.iter(|| assert!(verify_each(items).iter().all(|ok| *ok)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
