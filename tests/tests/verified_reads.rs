//! Verifiable reads end to end: real validators certify execution results
//! (P22), a full node beside them follows the chain and serves proof
//! bundles, and the `phalanx` CLI checks them against nothing but the
//! genesis file, through a proxy that tampers with the answers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use phalanx_tests::proxy::{TamperProxy, flip_hex_byte};
use phalanx_tests::{Cluster, ClusterOptions, account, phalanx, transfer_hex};
use serde_json::{Value, json};

fn fast_cluster() -> Cluster {
    Cluster::new(ClusterOptions::fast())
}

/// Runs the CLI; returns the parsed JSON of a success, or the error text.
fn cli(args: &[&str]) -> Result<Value, String> {
    let (code, out, err) = phalanx(args);
    if code == Some(0) {
        Ok(serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}")))
    } else {
        Err(format!("{err}{out}"))
    }
}

#[test]
fn a_full_node_follows_the_chain_and_the_cli_verifies_its_answers_through_a_tampering_proxy() {
    let mut c = fast_cluster();
    let full = c.add_full_node();
    c.start_all();
    c.wait_until("every node serves RPC", |c| {
        (0..c.nodes.len()).all(|i| c.rpc(i, "ledger_status", vec![]).is_ok())
    });
    c.wait_until("the full node follows the chain", |c| {
        c.rpc_height(full) >= 20
    });
    let chain = c.genesis.chain_id.clone();
    let genesis = c.dir.path().join("genesis.json");
    let g = genesis.to_str().unwrap();
    let url = c.rpc_url(full);

    // A transfer submitted to the full node (which forwards it to a
    // validator) and committed; read back from the full node at or above
    // its commit height (read your writes).
    let to = account(1).public();
    let tx = transfer_hex(&chain, 0, 0, &to, 77);
    let r = c
        .rpc(
            full,
            "ledger_submitTransaction",
            vec![json!(tx), json!("commit")],
        )
        .unwrap();
    assert_eq!(r["status"], "committed", "{r}");
    let h = r["height"].as_u64().unwrap();
    let hash = r["hash"].as_str().unwrap().to_string();
    let hs = h.to_string();

    // A verifying CLI command against the full node, with JSON output.
    let verified = |cmd: &[&str]| {
        let mut args = cmd.to_vec();
        args.extend(["--rpc", &url, "--verify", "--genesis", g, "--json"]);
        cli(&args)
    };
    let a = verified(&["account", &to.to_hex(), "--min-height", &hs]).unwrap();
    assert_eq!(a["balance"], json!(1_000_000_077u64), "{a}");
    assert!(a["height"].as_u64().unwrap() >= h, "{a}");
    assert!(a["verified"]["signers"].as_u64().unwrap() >= 3, "{a}");

    let t = verified(&["tx", "status", &hash, "--min-height", &hs]).unwrap();
    assert_eq!(t["height"], json!(h), "{t}");
    assert_eq!(t["receipt"]["status"], "applied", "{t}");

    let b = verified(&["block", &hs]).unwrap();
    assert_eq!(b["height"], json!(h), "{b}");
    assert!(
        b["transactions"].as_array().unwrap().contains(&json!(hash)),
        "{b}"
    );

    // `tx send --verify`: committed, then proven.
    let key = c.dir.path().join("sender.key");
    account(2).save(&key).unwrap();
    let s = verified(&[
        "tx",
        "send",
        "--key",
        key.to_str().unwrap(),
        "--to",
        &to.to_hex(),
        "--amount",
        "5",
    ])
    .unwrap();
    assert_eq!(s["status"], "committed", "{s}");
    assert!(s["verified"].is_object(), "{s}");
    let sent_at = s["height"].as_u64().unwrap();

    // A read at a height far beyond the head is refused at once with its
    // own code; one a few blocks ahead is answered once reached.
    let head = c.rpc_height(full);
    let far = c
        .rpc(
            full,
            "ledger_getAccount",
            vec![json!(to.to_hex()), json!({"min_height": head + 1_000_000})],
        )
        .unwrap_err();
    assert_eq!(far.code, 1023, "{}", far.message);
    let near = c
        .rpc(
            full,
            "ledger_getAccount",
            vec![json!(to.to_hex()), json!({"min_height": head + 5})],
        )
        .unwrap();
    assert!(near["height"].as_u64().unwrap() >= head + 5, "{near}");
    assert_eq!(near["balance"], json!(1_000_000_082u64), "{near}");
    // A state other than the head's is not held: said so by code.
    let old = c
        .rpc(
            full,
            "ledger_getAccount",
            vec![json!(to.to_hex()), json!({"height": 1})],
        )
        .unwrap_err();
    assert_eq!(old.code, 1025, "{}", old.message);
    // Every read method takes min_height.
    for (method, first) in [
        ("ledger_getTransaction", json!(hash)),
        ("ledger_getBlock", json!("latest")),
        ("ledger_getExecution", json!(1)),
        ("ledger_getEvidence", Value::Null),
    ] {
        let v = c
            .rpc(full, method, vec![first, json!({ "min_height": sent_at })])
            .unwrap_or_else(|e| panic!("{method}: {}", e.message));
        assert!(v.is_object(), "{method}: {v}");
    }
    let s = c
        .rpc(
            full,
            "ledger_status",
            vec![json!({ "min_height": sent_at })],
        )
        .unwrap();
    assert!(s["height"].as_u64().unwrap() >= sent_at, "{s}");
    // The full node agrees with the validators block by block.
    for h in 1..=sent_at {
        let ours = c.rpc(full, "ledger_getBlock", vec![json!(h)]).unwrap();
        let theirs = c.rpc(0, "ledger_getBlock", vec![json!(h)]).unwrap();
        assert_eq!(ours["block_id"], theirs["block_id"], "height {h}");
    }

    // Through a proxy that changes answers, every verifying command fails;
    // unchanged answers still verify through it.
    let proxy = TamperProxy::start(c.nodes[full].rpc_port, Box::new(|_| false));
    let purl = proxy.url();
    // A verifying CLI command through the proxy.
    let proxied = |cmd: &[&str]| {
        let mut args = cmd.to_vec();
        args.extend(["--rpc", &purl, "--verify", "--genesis", g]);
        cli(&args)
    };
    proxied(&["account", &to.to_hex(), "--json"]).unwrap();
    let mut flips = 0;
    for (i, bit) in [
        (0usize, 0u8),
        (7, 3),
        (41, 5),
        (97, 1),
        (160, 7),
        (333, 2),
        (1_000, 4),
    ] {
        proxy.set(Box::new(move |v| {
            flip_hex_byte(v, "certified_proof", i, bit)
        }));
        let e = proxied(&["account", &to.to_hex()]).expect_err(&format!(
            "a flipped bit {bit} of byte {i} of the account proof went unseen"
        ));
        assert!(e.contains("verification failed"), "{e}");
        flips += 1;
    }
    // The node's own fields are checked against the proof too.
    proxy.set(Box::new(|v| {
        v["balance"] = json!(v["balance"].as_u64().unwrap_or(0) + 1_000);
        true
    }));
    let e = proxied(&["account", &to.to_hex()]).unwrap_err();
    assert!(e.contains("verification failed"), "{e}");
    for (i, bit) in [(0usize, 0u8), (19, 6), (88, 2), (250, 0)] {
        proxy.set(Box::new(move |v| flip_hex_byte(v, "proof", i, bit)));
        let e = proxied(&["tx", "status", &hash]).expect_err("a flipped receipt proof went unseen");
        assert!(e.contains("verification failed"), "{e}");
        let e = proxied(&["block", &hs]).expect_err("a flipped block proof went unseen");
        assert!(e.contains("verification failed"), "{e}");
        flips += 2;
    }
    proxy.set(Box::new(|v| {
        if v["receipt"]["status"] == "applied" {
            v["height"] = json!(v["height"].as_u64().unwrap_or(0) + 1);
            return true;
        }
        false
    }));
    let e = proxied(&["tx", "status", &hash]).unwrap_err();
    assert!(e.contains("verification failed"), "{e}");
    assert!(
        proxy.tampered() > flips,
        "{} answers changed",
        proxy.tampered()
    );
    // Without --verify the same client believes the proxy: the check is
    // what catches it.
    proxy.set(Box::new(|v| {
        v["balance"] = json!(12345);
        true
    }));
    let believed = cli(&["account", &to.to_hex(), "--rpc", &purl, "--json"]).unwrap();
    assert_eq!(believed["balance"], json!(12345));
    assert!(sent_at >= h);
}

/// The certified execution results of every node agree with what each
/// node computed, height by height (P22 in a real cluster).
#[test]
fn certified_execution_results_agree_with_every_nodes_own() {
    let mut c = fast_cluster();
    c.start_all();
    c.wait_until("30 blocks on every node", |c| {
        (0..c.nodes.len()).all(|i| c.height(i) >= 30)
    });
    let roots: Vec<_> = (0..c.nodes.len()).map(|i| c.roots(i)).collect();
    let mut checked = 0;
    for h in 1..=20u64 {
        let e = c.rpc(0, "ledger_getExecution", vec![json!(h)]).unwrap();
        let by = e["certified_by"]
            .as_u64()
            .expect("certified by a committed block");
        assert!(by > h && by <= h + 40, "height {h} certified by {by}");
        let b = c.rpc(2, "ledger_getBlock", vec![json!(by)]).unwrap();
        let certified = b["certifies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["height"] == json!(h))
            .cloned()
            .unwrap_or_else(|| panic!("block {by} does not certify {h}: {b}"));
        assert_eq!(certified["state_root"], e["state_root"]);
        for (i, r) in roots.iter().enumerate() {
            if let Some(root) = r.get(&h) {
                assert_eq!(
                    certified["state_root"].as_str(),
                    Some(root.as_str()),
                    "node {i} at {h}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 60, "{checked}");
    assert_eq!(c.metric_sum("phalanx_execution_mismatches_total"), 0.0);
}
