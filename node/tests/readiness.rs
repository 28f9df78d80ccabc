//! Readiness comes from verified certificates, never from a proposer's
//! word: a Byzantine leader's proposal claiming a far height cannot make a
//! node "not ready".

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use phalanx_consensus::{Height, Proposal, View};
use phalanx_crypto::KeyPair;
use phalanx_node::mempool::MempoolLimits;
use phalanx_node::metrics::Metrics;
use phalanx_node::runtime::certified_tip;
use phalanx_node::shared::Shared;
use phalanx_storage::testkit::{genesis, next_block};
use phalanx_storage::{Store, StoreOptions};

#[test]
fn a_proposal_claiming_a_far_height_does_not_make_a_node_unready() {
    let dir = tempfile::tempdir().unwrap();
    let g = genesis(10);
    let store = Arc::new(Store::open(dir.path(), &g, StoreOptions::default()).unwrap());
    for _ in 0..3 {
        let (b, c) = next_block(&store, &[]);
        store.apply_block(&b, &c).unwrap();
    }
    let (shared, _status) = Shared::new(
        store.clone(),
        &g,
        KeyPair::from_seed([1; 32]).public(),
        MempoolLimits::default(),
        Arc::new(Metrics::new(4, &[])),
    );
    shared.note_commit(3);
    assert_eq!(shared.ready(5, 10_000), Ok(()));
    // A validly signed proposal whose header claims height 1,000,000 on a
    // certificate for height 4 (the next block): the tip it shows is 3.
    let (mut block, _) = next_block(&store, &[]);
    block.header.height = Height(1_000_000);
    block.header.view = View(1_000_000);
    let p = Proposal { block, tc: None };
    assert_eq!(p.block.header.justify.payload.height, Height(3));
    assert_eq!(certified_tip(&p), 2);
    shared.note_seen(certified_tip(&p));
    assert_eq!(shared.ready(5, 10_000), Ok(()));
    // What trusting the header did: unready until restart.
    shared.note_seen(p.block.height().0);
    assert!(shared.ready(5, 10_000).unwrap_err().contains("syncing"));
}
