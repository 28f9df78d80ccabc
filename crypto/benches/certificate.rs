//! Certificate verification cost at n = 4, 16, 64 validators.
#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use phalanx_crypto::{
    Certificate, ChainId, Domain, KeyPair, SignedPayload, ValidatorIndex, ValidatorSet, Verified,
};
use serde::Serialize;

#[derive(Clone, PartialEq, Serialize)]
struct Vote {
    view: u64,
    block: [u8; 32],
}
impl SignedPayload for Vote {
    const DOMAIN: Domain = Domain("bench/vote");
}

fn bench(c: &mut Criterion) {
    let chain = ChainId::new("bench").unwrap();
    let mut group = c.benchmark_group("certificate_verify");
    for n in [4usize, 16, 64] {
        let keys: Vec<KeyPair> = (0..n)
            .map(|i| KeyPair::from_seed([i as u8 + 1; 32]))
            .collect();
        let set = ValidatorSet::new(keys.iter().map(|k| k.public()).collect()).unwrap();
        let vote = Vote {
            view: 9,
            block: [3; 32],
        };
        let votes: Vec<_> = keys
            .iter()
            .take(set.quorum())
            .enumerate()
            .map(|(i, k)| Verified::sign(k, ValidatorIndex(i as u16), &chain, vote.clone()))
            .collect();
        let cert = Certificate::aggregate(&votes, &set).unwrap();
        group.bench_with_input(BenchmarkId::from_parameter(n), &cert, |b, cert| {
            b.iter(|| cert.verify(&set, &chain).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
