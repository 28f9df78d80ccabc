//! Validators as separate processes over real libp2p sockets.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use phalanx_tests::{Cluster, ClusterOptions};

/// Every pair of nodes agrees on the block at every height both committed.
fn assert_agreement(c: &Cluster) {
    let logs: Vec<_> = (0..c.nodes.len()).map(|i| c.committed(i)).collect();
    for i in 0..logs.len() {
        for j in i + 1..logs.len() {
            for (h, id) in &logs[i] {
                if let Some(other) = logs[j].get(h) {
                    assert_eq!(id, other, "nodes {i} and {j} differ at height {h}");
                }
            }
        }
    }
}

#[test]
fn four_validators_commit_the_same_blocks_and_survive_a_crash() {
    let mut c = Cluster::new(ClusterOptions::default());
    c.start_all();
    c.wait_until("every node commits height 5", |c| {
        (0..4).all(|i| c.height(i) >= 5)
    });
    assert_agreement(&c);

    // One validator killed: the other three keep committing.
    c.kill(3);
    let h = (0..3).map(|i| c.height(i)).max().unwrap();
    c.wait_until("three nodes commit 5 more blocks", |c| {
        (0..3).all(|i| c.height(i) >= h + 5)
    });
    // Restarted, it catches up.
    c.start(3);
    let target = (0..3).map(|i| c.height(i)).max().unwrap() + 2;
    c.wait_until("the restarted node catches up", |c| c.height(3) >= target);
    assert_agreement(&c);

    // SIGTERM stops a node cleanly.
    assert_eq!(c.stop(0), Some(0), "clean exit on SIGTERM");
}
