//! Validators as separate processes over real libp2p sockets.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use phalanx_tests::{Cluster, ClusterOptions};

/// Every pair of nodes agrees on the block and the state root at every
/// height both committed, and every execution result a committed block
/// certifies (P22) is the state root the nodes computed for its height.
fn assert_agreement(c: &Cluster) {
    let logs: Vec<_> = (0..c.nodes.len()).map(|i| c.committed(i)).collect();
    let roots: Vec<_> = (0..c.nodes.len()).map(|i| c.roots(i)).collect();
    for i in 0..logs.len() {
        for j in i + 1..logs.len() {
            for (h, id) in &logs[i] {
                if let Some(other) = logs[j].get(h) {
                    assert_eq!(id, other, "nodes {i} and {j} differ at height {h}");
                }
            }
            for (h, root) in &roots[i] {
                if let Some(other) = roots[j].get(h) {
                    assert_eq!(root, other, "nodes {i} and {j} have other states at {h}");
                }
            }
        }
    }
    // Certified roots, read from a node that answers (some may be down).
    let Some(i) = (0..c.nodes.len()).find(|i| c.rpc(*i, "ledger_status", vec![]).is_ok()) else {
        return;
    };
    let from = c
        .rpc(i, "ledger_getBlock", vec![serde_json::json!("latest")])
        .ok()
        .and_then(|b| b["height"].as_u64())
        .unwrap_or(0);
    for h in from.saturating_sub(50).max(1)..=from {
        let Ok(b) = c.rpc(i, "ledger_getBlock", vec![serde_json::json!(h)]) else {
            continue; // pruned
        };
        for r in b["certifies"].as_array().into_iter().flatten() {
            let at = r["height"].as_u64().unwrap();
            for (k, node_roots) in roots.iter().enumerate() {
                if let Some(root) = node_roots.get(&at) {
                    assert_eq!(
                        r["state_root"].as_str(),
                        Some(root.as_str()),
                        "block {h} certifies another state at {at} than node {k} computed"
                    );
                }
            }
        }
    }
}

/// Node `i`'s stable checkpoint height (0 when unknown).
fn stable(c: &Cluster, i: usize) -> u64 {
    c.metric(i, "phalanx_stable_checkpoint_height")
        .unwrap_or(0.0) as u64
}

/// A cluster whose chain moves fast (10 ms empty-block delay, short view
/// timeouts, a checkpoint every 10 blocks) and whose validators keep
/// `retained` blocks below their stable checkpoint.
fn fast_cluster(retained: u64) -> Cluster {
    let mut opts = ClusterOptions::fast();
    opts.extra_config += &format!("\nretained_blocks = {retained}");
    Cluster::new(opts)
}

#[test]
fn four_validators_commit_the_same_blocks_and_survive_a_crash() {
    let mut c = Cluster::new(ClusterOptions::default());
    c.start_all();
    c.wait_until("every node commits height 5", |c| {
        (0..4).all(|i| c.height(i) >= 5)
    });
    assert_agreement(&c);

    // A second process on the same home is refused: one key, one signer.
    let (code, out) = c.start_again(1);
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("another phalanx process"), "{out}");

    // Blocks stream to a WebSocket subscriber, one notification each.
    let notes = c.subscribe_blocks(2, 3);
    let heights: Vec<u64> = notes
        .iter()
        .map(|n| n["height"].as_u64().unwrap())
        .collect();
    assert!(heights.windows(2).all(|w| w[1] == w[0] + 1), "{heights:?}");

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

#[test]
fn a_key_outside_the_validator_set_gets_nothing_accepted() {
    let mut c = Cluster::new(ClusterOptions::default());
    c.add_impostor();
    c.start_all();
    c.wait_until("the impostor is refused by every validator", |c| {
        (0..4).all(|i| {
            c.log_records(i).iter().any(|r| {
                r["message"] == "stream from a key outside the validator set refused"
                    && r["protocol"] == "/phalanx/consensus/1"
            })
        })
    });
    let h = (0..4).map(|i| c.height(i)).max().unwrap();
    c.wait_until("the validators keep committing", |c| {
        (0..4).all(|i| c.height(i) >= h + 5)
    });
    assert_agreement(&c);
    // The refusals are counted in every validator's metrics, and the
    // committed height there follows the chain.
    for i in 0..4 {
        let refused = c.metric(
            i,
            "phalanx_invalid_messages_total{peer=\"unknown\",reason=\"non_validator_stream\"}",
        );
        assert!(refused.unwrap_or(0.0) >= 1.0, "node {i}: {refused:?}");
        let height = c.metric(i, "phalanx_committed_height").unwrap_or(0.0);
        assert!(height >= (h + 5) as f64, "node {i}: height {height}");
    }
}

#[test]
fn killing_the_leader_under_load_changes_view_and_loses_nothing_committed() {
    use phalanx_tests::{account, transfer_hex};
    use serde_json::json;
    let mut c = Cluster::new(ClusterOptions::default());
    c.start_all();
    c.wait_until("every node serves RPC and commits", |c| {
        (0..4).all(|i| c.rpc_height(i) >= 2)
    });
    let chain = c.genesis.chain_id.clone();
    let status = c.rpc(0, "ledger_status", vec![]).unwrap();
    let leader = status["leader"].as_u64().unwrap() as usize;
    let others: Vec<usize> = (0..4).filter(|i| *i != leader).collect();
    // Load: transfers acknowledged as committed before the kill, and
    // pending ones submitted to the survivors around it.
    let mut committed = Vec::new();
    for from in 0..3u64 {
        let tx = transfer_hex(&chain, from, 0, &account(15).public(), 7);
        let r = c
            .rpc(
                others[0],
                "ledger_submitTransaction",
                vec![json!(tx), json!("commit")],
            )
            .unwrap();
        assert_eq!(r["status"], "committed");
        committed.push(r["hash"].as_str().unwrap().to_string());
    }
    let view_before = c.rpc(others[0], "ledger_status", vec![]).unwrap()["view"]
        .as_u64()
        .unwrap();
    let mut pending = Vec::new();
    for from in 3..9u64 {
        let tx = transfer_hex(&chain, from, 0, &account(15).public(), 3);
        let node = others[(from as usize) % others.len()];
        let r = c
            .rpc(
                node,
                "ledger_submitTransaction",
                vec![json!(tx), json!("none")],
            )
            .unwrap();
        pending.push(r["hash"].as_str().unwrap().to_string());
        if from == 5 {
            c.kill(leader);
        }
    }
    // Commits resume through a view change, and every transaction the
    // survivors accepted commits.
    let mut polls = 0u32;
    c.wait_until("every accepted transaction commits on the survivors", |c| {
        polls += 1;
        if polls.is_multiple_of(50) {
            for i in &others {
                let st: Vec<String> = pending
                    .iter()
                    .map(|h| {
                        c.rpc(*i, "ledger_getTransaction", vec![json!(h)])
                            .map(|v| v["status"].as_str().unwrap_or("?").to_string())
                            .unwrap_or_else(|e| e.message)
                    })
                    .collect();
                let s = c.rpc(*i, "ledger_status", vec![]).unwrap();
                eprintln!(
                    "node {i}: {st:?} mempool {} height {} view {}",
                    s["mempool"], s["height"], s["view"]
                );
            }
        }
        pending.iter().chain(&committed).all(|h| {
            others.iter().all(|i| {
                c.rpc(*i, "ledger_getTransaction", vec![json!(h)])
                    .is_ok_and(|v| v["status"] == "committed")
            })
        })
    });
    let view_after = c.rpc(others[0], "ledger_status", vec![]).unwrap()["view"]
        .as_u64()
        .unwrap();
    assert!(
        view_after > view_before + 1,
        "views moved on: {view_before} → {view_after}"
    );
    let timeouts: usize = others
        .iter()
        .map(|i| {
            c.log_records(*i)
                .iter()
                .filter(|r| r["message"] == "view timed out")
                .count()
        })
        .sum();
    assert!(timeouts > 0, "a view change happened");
    assert_agreement(&c);
}

#[test]
fn a_validator_down_for_hundreds_of_blocks_catches_up_by_block_sync() {
    // A fast chain, so the gap passes both the view window (64) and the
    // blocks the core keeps in memory (256): the restarted validator must
    // follow certificates from beyond its window and fetch committed blocks
    // that peers serve from their stores.
    let mut c = Cluster::new(ClusterOptions {
        extra_config: "empty_block_delay_ms = 10".into(),
        params: phalanx_ledger::Params {
            checkpoint_interval: 50,
            base_timeout_ms: 250,
            max_timeout_ms: 2000,
            ..phalanx_ledger::Params::default()
        },
        ..ClusterOptions::default()
    });
    c.start_all();
    c.wait_until("every node commits height 5", |c| {
        (0..4).all(|i| c.height(i) >= 5)
    });
    c.kill(3);
    let down_at = c.height(3);
    c.wait_until("the others get 280 blocks ahead", |c| {
        (0..3).all(|i| c.height(i) >= down_at + 280)
    });
    c.start(3);
    let target = (0..3).map(|i| c.height(i)).max().unwrap();
    c.wait_until("the restarted validator reaches the others' height", |c| {
        c.height(3) >= target
    });
    assert_agreement(&c);
}

#[test]
fn a_wiped_validator_state_syncs_from_a_checkpoint_and_rejoins() {
    use phalanx_tests::{account, transfer_hex};
    use serde_json::json;
    let mut c = Cluster::new(ClusterOptions {
        extra_config: "empty_block_delay_ms = 50".into(),
        ..ClusterOptions::default()
    });
    c.start_all();
    c.wait_until("every node serves RPC", |c| {
        (0..4).all(|i| c.rpc(i, "ledger_status", vec![]).is_ok())
    });
    // Some state beyond genesis.
    let chain = c.genesis.chain_id.clone();
    for from in 0..4u64 {
        let tx = transfer_hex(&chain, from, 0, &account(20 + from).public(), 1000);
        let r = c
            .rpc(
                0,
                "ledger_submitTransaction",
                vec![json!(tx), json!("commit")],
            )
            .unwrap();
        assert_eq!(r["receipt"]["status"], "applied");
    }
    // At least three checkpoints (every 10 blocks).
    c.wait_until("three checkpoints", |c| (0..4).all(|i| c.height(i) >= 35));
    c.kill(3);
    c.wipe_data(3);
    c.start(3);
    // Its record went with the data: it recovers (P19) by itself.
    c.wait_until("the wiped validator starts in recovery", |c| {
        c.records_since_start(3).iter().any(|r| {
            r["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("no safety record: recovering"))
        })
    });
    c.wait_until("the wiped validator state-syncs", |c| {
        c.records_since_start(3)
            .iter()
            .any(|r| r["message"] == "state sync complete")
    });
    let synced_at = c
        .records_since_start(3)
        .iter()
        .find(|r| r["message"] == "state sync complete")
        .and_then(|r| r["height"].as_u64())
        .unwrap();
    assert!(synced_at >= 30, "restored checkpoint {synced_at}");
    let target = (0..3).map(|i| c.height(i)).max().unwrap() + 3;
    c.wait_until("it rejoins and commits new blocks", |c| {
        c.height(3) >= target
    });
    // It never re-executed from genesis: its first commit since the restart
    // is above the restored checkpoint.
    let first = c
        .records_since_start(3)
        .iter()
        .filter(|r| r["message"] == "committed")
        .filter_map(|r| r["height"].as_u64())
        .min()
        .unwrap();
    assert!(
        first > synced_at,
        "first commit {first} after sync at {synced_at}"
    );
    // Same state roots as the others at every height both committed.
    let (r0, r3) = (c.roots(0), c.roots(3));
    let mut compared = 0;
    for (h, root) in r3.range(synced_at + 1..) {
        if let Some(other) = r0.get(h) {
            assert_eq!(root, other, "state root at {h}");
            compared += 1;
        }
    }
    assert!(compared > 0);
    // It left quarantine, and nobody holds evidence against it: it never
    // signed twice in a view.
    c.wait_until("its recovery completes", |c| {
        c.records_since_start(3).iter().any(|r| {
            r["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("recovery (P19) complete"))
        })
    });
    assert_eq!(c.metric_sum("phalanx_equivocations_total"), 0.0);
    assert_agreement(&c);
}

#[test]
fn a_lost_safety_record_with_data_kept_refuses_to_start_until_told_to_recover() {
    let mut c = Cluster::new(ClusterOptions {
        extra_config: "empty_block_delay_ms = 50".into(),
        ..ClusterOptions::default()
    });
    c.start_all();
    c.wait_until("every node commits height 8", |c| {
        (0..4).all(|i| c.height(i) >= 8)
    });
    c.kill(2);
    c.delete_safety_record(2);
    let (code, out) = c.start_again(2);
    assert_ne!(code, Some(0), "{out}");
    assert!(
        out.contains("safety record") && out.contains("--recover"),
        "the error names the way out: {out}"
    );
    c.start_with(2, &["--recover"]);
    c.wait_until("it recovers", |c| {
        c.records_since_start(2).iter().any(|r| {
            r["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("recovery (P19) complete"))
        })
    });
    let target = (0..4).map(|i| c.height(i)).max().unwrap() + 3;
    c.wait_until("it commits with the others", |c| c.height(2) >= target);
    assert_eq!(c.metric_sum("phalanx_equivocations_total"), 0.0);
    assert_agreement(&c);
}

#[test]
fn a_validator_with_another_genesis_is_refused_by_name_and_signs_nothing_that_counts() {
    // Same chain id, same keys, one balance different: a different chain.
    let mut c = Cluster::new(ClusterOptions::default());
    c.give_own_genesis(3, |g| g.accounts[0].balance += 1);
    c.start_all();
    c.wait_until("the three others commit height 3", |c| {
        (0..3).all(|i| c.height(i) >= 3)
    });
    let names_it = |c: &Cluster, i: usize| {
        c.log_records(i).iter().any(|r| {
            r["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("peer runs a different genesis"))
        })
    };
    c.wait_until("a validator names the mismatch", |c| names_it(c, 0));
    c.wait_until("the odd one names it too", |c| names_it(c, 3));
    assert!(
        c.metric(
            0,
            "phalanx_invalid_messages_total{peer=\"3\",reason=\"genesis_mismatch\"}"
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    assert_eq!(c.height(3), 0, "it commits nothing of the others' chain");
    assert_agreement(&c);
}

#[test]
fn a_validator_behind_what_its_peers_keep_state_syncs_and_rejoins_by_itself_under_load() {
    use phalanx_tests::{account, transfer_hex};
    use serde_json::json;
    const RETAINED: u64 = 10;
    let mut c = fast_cluster(RETAINED);
    c.start_all();
    c.wait_until("every node serves RPC", |c| {
        (0..4).all(|i| c.rpc(i, "ledger_status", vec![]).is_ok())
    });
    let chain = c.genesis.chain_id.clone();
    let senders = 8u64;
    let mut nonces = vec![0u64; senders as usize];
    let mut submitted = 0u64;
    // Load: each poll submits a few transfers to a live validator.
    let mut load = |c: &Cluster, to: usize| {
        for _ in 0..4 {
            let from = submitted % senders;
            let tx = transfer_hex(
                &chain,
                from,
                nonces[from as usize],
                &account(30).public(),
                1,
            );
            if c.rpc(
                to,
                "ledger_submitTransaction",
                vec![json!(tx), json!("none")],
            )
            .is_ok()
            {
                nonces[from as usize] += 1;
            }
            submitted += 1;
        }
    };
    c.kill(3);
    let down_at = c.height(3);
    c.wait_until(
        // Their stable checkpoints (which pruning follows, and which lag
        // commits under load) must pass the gap, not just their heights.
        "the others commit and checkpoint 5 × retained_blocks blocks under load",
        |c| {
            load(c, 0);
            (0..3).all(|i| stable(c, i) >= down_at + 5 * RETAINED + 2 * 10)
        },
    );
    let started = std::time::Instant::now();
    c.start(3);
    c.wait_until("it state-syncs because its peers pruned past it", |c| {
        load(c, 1);
        c.records_since_start(3).iter().any(|r| {
            r["message"] == "state sync starting"
                && r["reason"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("peers no longer keep"))
        })
    });
    let target = (0..3).map(|i| c.height(i)).max().unwrap();
    c.wait_until("it reaches the others' height", |c| {
        load(c, 2);
        c.height(3) >= target
    });
    eprintln!(
        "rejoined {} blocks behind in {:.1} s",
        target - down_at,
        started.elapsed().as_secs_f64()
    );
    // Agreement, the same state roots, and the supply on every node, read
    // once the load has drained (a transfer committing between two reads
    // would be counted twice or not at all).
    c.wait_until("every mempool drains", |c| {
        (0..4).all(|i| {
            c.rpc(i, "ledger_status", vec![])
                .is_ok_and(|s| s["mempool"]["transactions"] == 0)
        })
    });
    let final_target = (0..4).map(|i| c.rpc_height(i)).max().unwrap() + 3;
    c.wait_until("all at one height", |c| {
        (0..4).all(|i| c.rpc_height(i) >= final_target)
    });
    assert_agreement(&c);
    let (r0, r3) = (c.roots(0), c.roots(3));
    let compared = r3
        .iter()
        .filter(|(h, root)| {
            r0.get(h).is_some_and(|o| {
                assert_eq!(o, *root, "state root at {h}");
                true
            })
        })
        .count();
    assert!(compared > 0);
    let supply: u128 = c.genesis.accounts.iter().map(|a| a.balance as u128).sum();
    for i in 0..4 {
        let total: u128 = c
            .genesis
            .accounts
            .iter()
            .map(|a| {
                c.rpc(i, "ledger_getAccount", vec![json!(a.address.to_hex())])
                    .unwrap()["balance"]
                    .as_u64()
                    .unwrap() as u128
            })
            .sum::<u128>()
            + c.rpc(
                i,
                "ledger_getAccount",
                vec![json!(account(30).public().to_hex())],
            )
            .unwrap()["balance"]
                .as_u64()
                .unwrap_or(0) as u128;
        assert_eq!(total, supply, "supply on node {i}");
    }
    assert_eq!(c.metric_sum("phalanx_equivocations_total"), 0.0);
}

#[test]
fn a_running_validator_left_behind_what_its_peers_keep_restarts_to_state_sync_by_itself() {
    // Frozen, not killed: its process keeps its state and sockets, and
    // wakes to certificates for blocks its peers no longer keep.
    const RETAINED: u64 = 10;
    let mut c = fast_cluster(RETAINED);
    c.start_all();
    c.wait_until("every node commits height 5", |c| {
        (0..4).all(|i| c.height(i) >= 5)
    });
    c.freeze(3, true);
    let frozen_at = c.height(3);
    c.wait_until("the others checkpoint far ahead", |c| {
        (0..3).all(|i| stable(c, i) >= frozen_at + 5 * RETAINED + 2 * 10)
    });
    c.freeze(3, false);
    c.wait_until("it gives up on block sync and restarts", |c| {
        c.log_records(3).iter().any(|r| {
            r["message"]
                .as_str()
                .is_some_and(|m| m.contains("restarting to state-sync"))
        })
    });
    c.wait_until("it state-syncs", |c| {
        c.records_since_start(3)
            .iter()
            .any(|r| r["message"] == "state sync complete")
    });
    let target = (0..3).map(|i| c.height(i)).max().unwrap();
    c.wait_until("it reaches the others' height", |c| c.height(3) >= target);
    assert_agreement(&c);
    assert_eq!(c.metric_sum("phalanx_equivocations_total"), 0.0);
}

/// Clock skew (`clock_offset_ms`, since clocks cannot be set per process
/// or namespace): a validator 1 s ahead is within the 2 s bound and its
/// blocks commit; one 5 s ahead proposes blocks from the future, which
/// every other validator refuses, so none of its blocks commits, and the
/// chain goes on without it.
#[test]
fn a_validator_whose_clock_runs_past_the_skew_bound_gets_no_block_committed() {
    use serde_json::json;
    let mut c = Cluster::new(ClusterOptions::default());
    c.set_config(2, "clock_offset_ms = 1000");
    c.set_config(3, "clock_offset_ms = 5000");
    c.start_all();
    c.wait_until("the chain reaches height 30 everywhere", |c| {
        (0..4).all(|i| c.height(i) >= 30)
    });
    let proposers: Vec<u64> = (1..=30)
        .map(|h| {
            c.rpc(0, "ledger_getBlock", vec![json!(h)]).unwrap()["proposer"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert!(
        proposers.contains(&2),
        "1 s ahead is within the bound: {proposers:?}"
    );
    assert!(
        !proposers.contains(&3),
        "5 s ahead is refused: {proposers:?}"
    );
    assert_agreement(&c);
}
