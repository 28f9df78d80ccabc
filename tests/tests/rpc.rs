//! The JSON-RPC API of real nodes: transfers end to end, and a stable error
//! for each class of bad input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use phalanx_tests::{Cluster, ClusterOptions, account, hex_encode, transfer_hex};
use serde_json::{Value, json};

fn wait_rpc_up(c: &mut Cluster) {
    c.wait_until("every node serves RPC", |c| {
        (0..c.nodes.len()).all(|i| c.rpc(i, "ledger_status", vec![]).is_ok())
    });
}

#[test]
fn transfers_commit_on_every_node_exactly_once_and_conserve_supply() {
    let mut c = Cluster::new(ClusterOptions::default());
    c.start_all();
    wait_rpc_up(&mut c);
    let chain = c.genesis.chain_id.clone();
    let accounts = c.genesis.accounts.len() as u64;
    let supply: u128 = c.genesis.accounts.iter().map(|a| a.balance as u128).sum();

    // 8 senders × 5 nonces, spread over the four nodes (gossip carries
    // each to the others).
    let mut hashes = Vec::new();
    for nonce in 0..5u64 {
        for from in 0..8u64 {
            let to = account((from + 1) % accounts).public();
            let tx = transfer_hex(&chain, from, nonce, &to, 10 + nonce);
            let r = c
                .rpc(
                    (from % 4) as usize,
                    "ledger_submitTransaction",
                    vec![json!(tx), json!("none")],
                )
                .unwrap();
            assert_eq!(r["status"], "pending", "{r}");
            hashes.push((r["hash"].as_str().unwrap().to_string(), tx));
        }
    }
    // Waiting for a commit answers with the receipt.
    let last = transfer_hex(&chain, 9, 0, &account(10).public(), 1);
    let r = c
        .rpc(
            3,
            "ledger_submitTransaction",
            vec![json!(last), json!("commit")],
        )
        .unwrap();
    assert_eq!(r["status"], "committed", "{r}");
    assert_eq!(r["receipt"]["status"], "applied", "{r}");

    // Many in one call: one result per transaction, in order, a refused
    // one with its error; the call itself succeeds.
    let many = [
        transfer_hex(&chain, 11, 0, &account(1).public(), 3),
        "zz".to_string(),
        transfer_hex(&chain, 12, 0, &account(1).public(), 4),
        transfer_hex(&chain, 11, 0, &account(1).public(), 3),
    ];
    let r = c
        .rpc(1, "ledger_submitTransactions", vec![json!(many)])
        .unwrap();
    let results = r.as_array().unwrap();
    assert_eq!(results.len(), 4, "{r}");
    assert_eq!(results[0]["status"], "pending", "{r}");
    assert_eq!(results[1]["error"]["code"], 1001, "{r}");
    assert_eq!(results[2]["status"], "pending", "{r}");
    assert_eq!(
        results[3]["hash"], results[0]["hash"],
        "the same bytes again: {r}"
    );
    for i in [0, 2] {
        let h = results[i]["hash"].as_str().unwrap().to_string();
        hashes.push((h, many[i].clone()));
    }

    // Each node executes committed blocks on its own thread, a little
    // after consensus decides: wait for every node, not the first.
    let n = c.nodes.len();
    c.wait_until("every transfer is committed on every node", |c| {
        (0..n).all(|i| {
            hashes.iter().all(|(h, _)| {
                c.rpc(i, "ledger_getTransaction", vec![json!(h)])
                    .is_ok_and(|v| v["status"] == "committed")
            })
        })
    });
    for (h, _) in &hashes {
        let v = c.rpc(1, "ledger_getTransaction", vec![json!(h)]).unwrap();
        assert_eq!(v["receipt"]["status"], "applied", "{h}: {v}");
    }
    // Submitting one again returns the same hash and its first receipt;
    // nothing is applied twice.
    let (h0, tx0) = &hashes[0];
    let again = c
        .rpc(
            2,
            "ledger_submitTransaction",
            vec![json!(tx0), json!("commit")],
        )
        .unwrap();
    assert_eq!(again["hash"], json!(h0));
    assert_eq!(again["status"], "committed");

    // Every node: the same accounts, supply conserved, nonces exact.
    let target = (0..4).map(|i| c.rpc_height(i)).max().unwrap();
    c.wait_until("all nodes reach the same height", |c| {
        (0..4).all(|i| c.rpc_height(i) >= target)
    });
    let mut views: Vec<Vec<Value>> = Vec::new();
    for i in 0..4 {
        let mut total: u128 = 0;
        let mut accts = Vec::new();
        for a in 0..accounts {
            let v = c
                .rpc(
                    i,
                    "ledger_getAccount",
                    vec![json!(account(a).public().to_hex())],
                )
                .unwrap();
            total += v["balance"].as_u64().unwrap() as u128;
            if a < 8 {
                assert_eq!(v["nonce"], 5, "node {i} account {a}");
            }
            accts.push(json!([v["balance"], v["nonce"]]));
        }
        assert_eq!(total, supply, "supply on node {i}");
        views.push(accts);
    }
    assert!(views.windows(2).all(|w| w[0] == w[1]), "nodes disagree");
    // The same block at every height on every node.
    for h in 1..=target {
        let ids: Vec<Value> = (0..4)
            .map(|i| c.rpc(i, "ledger_getBlock", vec![json!(h)]).unwrap()["block_id"].clone())
            .collect();
        assert!(ids.windows(2).all(|w| w[0] == w[1]), "height {h}: {ids:?}");
    }
    let latest = c.rpc(0, "ledger_getBlock", vec![json!("latest")]).unwrap();
    assert!(latest["certificate"]["signers"].as_array().unwrap().len() >= 3);
}

fn code(c: &Cluster, method: &str, params: Vec<Value>) -> i32 {
    match c.rpc(0, method, params) {
        Ok(v) => panic!("{method} succeeded: {v}"),
        Err(e) => e.code,
    }
}

#[test]
fn each_bad_input_gets_its_error_code_over_http() {
    let mut opts = ClusterOptions {
        extra_config: "mempool_max_txs = 4".into(),
        ..ClusterOptions::default()
    };
    // Two may wait behind a nonce gap, per sender and all together.
    opts.params.mempool_future_per_sender = 2;
    opts.params.mempool_future_share_percent = 50;
    let mut c = Cluster::new(opts);
    c.start_all();
    wait_rpc_up(&mut c);
    c.wait_until("node 0 is ready", |c| {
        c.http_get(0, "/readyz").is_some_and(|(s, _)| s == 200)
    });
    assert_eq!(c.http_get(0, "/livez").unwrap().0, 200);
    let chain = c.genesis.chain_id.clone();
    let to = account(1).public();
    let submit = |tx: String| vec![json!(tx), json!("none")];

    // Transport-level: parse error, unknown method, oversized body.
    let (status, body) = c.http_post(0, b"{not json").unwrap();
    assert!(body.contains("-32700"), "{status} {body}");
    assert_eq!(code(&c, "ledger_noSuchMethod", vec![]), -32601);
    let huge = vec![b' '; 300 * 1024];
    let (status, _) = c.http_post(0, &huge).unwrap();
    assert_eq!(status, 413, "a body over the limit is refused");

    // Parameters.
    assert_eq!(
        code(&c, "ledger_submitTransaction", submit("zz".into())),
        1001
    );
    assert_eq!(
        code(&c, "ledger_submitTransaction", submit("00ff".into())),
        1002
    );
    assert_eq!(
        code(&c, "ledger_submitTransaction", submit("ab".repeat(2000))),
        1003
    );
    let mut bad_sig = hex::decode(transfer_hex(&chain, 0, 0, &to, 5)).unwrap();
    let n = bad_sig.len();
    bad_sig[n - 1] ^= 1;
    assert_eq!(
        code(&c, "ledger_submitTransaction", submit(hex_encode(&bad_sig))),
        1004
    );
    let other = phalanx_crypto::ChainId::new("other-chain").unwrap();
    assert_eq!(
        code(
            &c,
            "ledger_submitTransaction",
            submit(transfer_hex(&other, 0, 0, &to, 5))
        ),
        1005
    );
    assert_eq!(
        code(
            &c,
            "ledger_submitTransaction",
            submit(transfer_hex(&chain, 0, 1000, &to, 5))
        ),
        1007
    );
    assert_eq!(
        code(
            &c,
            "ledger_submitTransaction",
            submit(transfer_hex(&chain, 0, 0, &to, u64::MAX))
        ),
        1008
    );
    assert_eq!(
        code(
            &c,
            "ledger_submitTransaction",
            vec![json!("00"), json!("later")]
        ),
        1013
    );
    // Nonce too low: once nonce 0 is committed, another transfer with it.
    let r = c
        .rpc(
            0,
            "ledger_submitTransaction",
            vec![json!(transfer_hex(&chain, 2, 0, &to, 5)), json!("commit")],
        )
        .unwrap();
    assert_eq!(r["status"], "committed");
    assert_eq!(
        code(
            &c,
            "ledger_submitTransaction",
            submit(transfer_hex(&chain, 2, 0, &to, 6))
        ),
        1006
    );
    let refused = |tx: String| code(&c, "ledger_submitTransaction", submit(tx));
    // No zero legs; a new account gets at least the minimum.
    assert_eq!(refused(transfer_hex(&chain, 4, 0, &to, 0)), 1016);
    let stranger = account(1_000_000).public();
    assert_eq!(refused(transfer_hex(&chain, 4, 0, &stranger, 999)), 1017);
    // Behind a nonce gap: two from sender 3, a third is one too many for
    // it, and the pool's share (two) is full for sender 4.
    for nonce in 2..4 {
        let tx = transfer_hex(&chain, 3, nonce, &to, 1);
        c.rpc(0, "ledger_submitTransaction", submit(tx)).unwrap();
    }
    assert_eq!(refused(transfer_hex(&chain, 3, 4, &to, 1)), 1018);
    assert_eq!(refused(transfer_hex(&chain, 4, 2, &to, 1)), 1019);
    // Mempool full: with the other validators stopped nothing commits, so
    // two proposable transfers and the two waiting ones fill a pool of
    // four. Proposable transfers displace the waiting ones, then the pool
    // is full.
    for i in 1..4 {
        c.freeze(i, true);
    }
    for from in 5..9 {
        let tx = transfer_hex(&chain, from, 0, &to, 1);
        let r = c.rpc(0, "ledger_submitTransaction", submit(tx)).unwrap();
        assert_eq!(r["status"], "pending", "{r}");
    }
    assert_eq!(refused(transfer_hex(&chain, 9, 0, &to, 1)), 1009);
    for i in 1..4 {
        c.freeze(i, false);
    }
    // Many in one call: the list as a whole is checked.
    let none: Vec<String> = Vec::new();
    assert_eq!(
        code(&c, "ledger_submitTransactions", vec![json!(none)]),
        1013
    );
    let too_many = vec!["00"; 1025];
    assert_eq!(
        code(&c, "ledger_submitTransactions", vec![json!(too_many)]),
        1013
    );
    assert_eq!(
        code(&c, "ledger_submitTransactions", vec![json!("00")]),
        -32602
    );
    // Queries.
    assert_eq!(code(&c, "ledger_getBlock", vec![json!(1_000_000)]), 1012);
    assert_eq!(code(&c, "ledger_getBlock", vec![json!("tip")]), 1013);
    assert_eq!(code(&c, "ledger_getAccount", vec![json!("1234")]), 1013);
    assert_eq!(code(&c, "ledger_getTransaction", vec![json!("xyz")]), 1001);
    assert_eq!(code(&c, "ledger_getTransaction", vec![]), -32602);
    let unknown = c
        .rpc(0, "ledger_getTransaction", vec![json!("00".repeat(32))])
        .unwrap();
    assert_eq!(unknown["status"], "unknown");
    // The node is still up and committing after all of it.
    let h = c.rpc_height(0);
    c.wait_until("node 0 still commits", |c| c.rpc_height(0) > h);
}

#[test]
fn the_wallet_signs_offline_sends_and_reads_accounts() {
    use phalanx_tests::phalanx;
    let mut c = Cluster::new(ClusterOptions::default());
    c.start_all();
    wait_rpc_up(&mut c);
    let rpc = c.rpc_url(1);
    let dir = c.dir.path().to_path_buf();
    // A funded demo account's key as a key file.
    let funded = dir.join("funded.key");
    account(3).save(&funded).unwrap();
    let fresh = dir.join("fresh.key");
    let (code, out, err) = phalanx(&["keys", "new", "--out", fresh.to_str().unwrap(), "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let to = serde_json::from_str::<Value>(&out).unwrap()["address"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, shown, _) = phalanx(&["keys", "show", "--key", fresh.to_str().unwrap()]);
    assert!(shown.contains(&to), "{shown}");

    // Offline signing needs no node, and the result is accepted as is.
    let chain = c.genesis.chain_id.to_string();
    let sign = |amount: &str| {
        phalanx(&[
            "tx",
            "sign",
            "--key",
            funded.to_str().unwrap(),
            "--to",
            &to,
            "--amount",
            amount,
            "--nonce",
            "0",
            "--chain-id",
            &chain,
        ])
    };
    let (code, signed, err) = sign("5");
    assert_eq!(code, Some(0), "{err}");
    // `to` has no account yet: 5 is below the chain's minimum for a new
    // account, and the node says what to do.
    let min = c.genesis.params.min_account_balance;
    let refused = c
        .rpc(
            1,
            "ledger_submitTransaction",
            vec![json!(signed.trim()), json!("none")],
        )
        .unwrap_err();
    assert_eq!(refused.code, 1017, "{}", refused.message);
    let (code, signed, err) = sign(&min.to_string());
    assert_eq!(code, Some(0), "{err}");
    // Submitted to the node the wallet then asks: a commit answer means that
    // node has executed the transfer, while another node may not have yet.
    let r = c
        .rpc(
            1,
            "ledger_submitTransaction",
            vec![json!(signed.trim()), json!("commit")],
        )
        .unwrap();
    assert_eq!(r["receipt"]["status"], "applied", "{r}");

    // Send fetches the nonce (now 1) and waits for the commit.
    let (code, out, err) = phalanx(&[
        "tx",
        "send",
        "--rpc",
        &rpc,
        "--key",
        funded.to_str().unwrap(),
        "--to",
        &to,
        "--amount",
        "7",
        "--json",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let sent: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(sent["status"], "committed", "{sent}");
    assert_eq!(sent["receipt"]["status"], "applied", "{sent}");

    let (code, out, err) = phalanx(&["account", &to, "--rpc", &rpc, "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let a: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(a["balance"], min + 7);
    let (code, out, _) = phalanx(&["status", "--rpc", &rpc]);
    assert_eq!(code, Some(0));
    assert!(out.contains("phalanx-local"), "{out}");

    // Errors are clear and exit non-zero.
    let funded_key = funded.to_str().unwrap();
    let send = |to: &str, amount: &str, extra: &[&str]| {
        let mut args = vec![
            "tx", "send", "--rpc", &rpc, "--key", funded_key, "--to", to, "--amount", amount,
        ];
        args.extend_from_slice(extra);
        phalanx(&args)
    };
    let (code, _, err) = send(&to, "1", &["--nonce", "0"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("1006") && err.contains("nonce too low") && err.contains("hint:"),
        "{err}"
    );
    // A new account below the minimum: refused with its code and a hint.
    let (code, _, err) = send(&account(1_000_000).public().to_hex(), "1", &[]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("1017") && err.contains("minimum balance") && err.contains("hint:"),
        "{err}"
    );
    let (code, _, err) = send(&to, "0", &[]);
    assert_eq!(code, Some(1));
    assert!(err.contains("at least 1"), "{err}");
    let (code, _, err) = phalanx(&["account", "nothex", "--rpc", &rpc]);
    assert_eq!(code, Some(1));
    assert!(err.contains("address"), "{err}");
}

/// The flood, over HTTP to real nodes: 200 fresh keys each submit
/// 64 future-nonce transfers and a zero-amount one, and every funded demo
/// account queues 64 future nonces too. None of it stops an honest funded
/// transfer from being admitted and committed, and no unfunded key gets an
/// account.
#[test]
fn a_flood_of_future_nonces_and_zero_amounts_never_stops_a_funded_transfer() {
    use phalanx_crypto::KeyPair;
    use phalanx_ledger::{Leg, Transfer};
    let mut c = Cluster::new(ClusterOptions::default());
    c.start_all();
    wait_rpc_up(&mut c);
    let chain = c.genesis.chain_id.clone();
    let to = account(1).public();
    let sign = |key: &KeyPair, nonce: u64, amount: u64| {
        hex_encode(
            &Transfer {
                chain_id: chain.clone(),
                sender: key.public(),
                nonce,
                legs: vec![Leg { to, amount }],
            }
            .sign(key)
            .encode(),
        )
    };
    let mut flood: Vec<String> = Vec::new();
    let fresh: Vec<KeyPair> = (0..200u32)
        .map(|k| {
            let mut seed = [0x5a; 32];
            seed[..4].copy_from_slice(&k.to_le_bytes());
            KeyPair::from_seed(seed)
        })
        .collect();
    for key in &fresh {
        flood.extend((1..=64).map(|n| sign(key, n, 1)));
        flood.push(sign(key, 0, 0));
    }
    let funded = c.genesis.accounts.len() as u64;
    for from in 2..funded {
        flood.extend((2..66).map(|n| transfer_hex(&chain, from, n, &to, 1)));
    }
    let mut codes: std::collections::BTreeMap<String, usize> = Default::default();
    // All to one node, so that each sender's cap is counted once (a sender
    // whose transfers went to two nodes would get its cap at each).
    for part in flood.chunks(500) {
        let r = c
            .rpc(0, "ledger_submitTransactions", vec![json!(part)])
            .unwrap();
        for one in r.as_array().unwrap() {
            let k = match one["error"]["code"].as_i64() {
                Some(code) => code.to_string(),
                None => one["status"].as_str().unwrap_or("?").to_string(),
            };
            *codes.entry(k).or_default() += 1;
        }
    }
    eprintln!("flood answers: {codes:?}");
    assert_eq!(codes.get("1008"), Some(&(200 * 64)), "{codes:?}");
    assert_eq!(codes.get("1016"), Some(&200), "{codes:?}");
    // Funded senders (the demo accounts but 0 and 1): nonces 2 to 65 with
    // 0 and 1 missing; 65 is beyond the 64-nonce window, and of the rest
    // the first `mempool_future_per_sender` wait.
    let per_sender = c.genesis.params.mempool_future_per_sender as usize;
    let senders = funded as usize - 2;
    assert_eq!(
        codes.get("pending"),
        Some(&(senders * per_sender)),
        "{codes:?}"
    );
    assert_eq!(
        codes.get("1018"),
        Some(&(senders * (63 - per_sender))),
        "{codes:?}"
    );
    assert_eq!(codes.get("1007"), Some(&senders), "{codes:?}");
    // The honest transfer goes through.
    let honest = transfer_hex(&chain, 0, 0, &to, 10);
    let r = c
        .rpc(
            2,
            "ledger_submitTransaction",
            vec![json!(honest), json!("commit")],
        )
        .unwrap();
    assert_eq!(r["receipt"]["status"], "applied", "{r}");
    // No unfunded key has an account.
    for key in fresh.iter().take(5) {
        let a = c
            .rpc(0, "ledger_getAccount", vec![json!(key.public().to_hex())])
            .unwrap();
        assert_eq!(a["nonce"], 0, "{a}");
        assert_eq!(a["balance"], 0, "{a}");
    }
}
