//! Real network partitions: a testnet whose nodes each run in a Linux
//! network namespace of their own (`phalanx-testnet up --netns`), cut with
//! blackhole routes by `partition` and mended by `heal`. Needs root; where
//! namespaces cannot be created the test says so and returns.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use phalanx_tests::{
    PATIENCE, TestnetDown, namespaces_available, run, testnet_bin, testnet_ok as ok,
};
use serde_json::Value;

fn heights(d: &str) -> Vec<u64> {
    let st: Value = serde_json::from_str(&ok(&["status", "--dir", d, "--json"])).unwrap();
    st["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["height"].as_u64().unwrap_or(0))
        .collect()
}

fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < within, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
    start.elapsed()
}

/// Heights of `nodes` after the in-flight work of a cut has landed: the
/// same on two reads `settle` apart.
fn settled(d: &str, nodes: &[usize], settle: Duration) -> Vec<u64> {
    let mut last = heights(d);
    loop {
        std::thread::sleep(settle);
        let now = heights(d);
        if nodes.iter().all(|i| now[*i] == last[*i]) {
            return nodes.iter().map(|i| now[*i]).collect();
        }
        last = now;
    }
}

/// A 4-validator testnet on network namespaces (its scratch directory,
/// its path, and the guard that takes it down), or `None` with a line
/// saying why where namespaces cannot be created.
fn netns_testnet() -> Option<(tempfile::TempDir, String, TestnetDown)> {
    if let Err(why) = namespaces_available() {
        eprintln!("skipped: network namespaces cannot be created here ({why})");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("net").to_string_lossy().to_string();
    let down = TestnetDown(PathBuf::from(&d));
    ok(&["up", "--dir", &d, "--netns", "--accounts", "20"]);
    Some((dir, d, down))
}

#[test]
fn partitions_on_real_links_stop_the_minority_and_heal_within_thirty_seconds() {
    let Some((_dir, d, _down)) = netns_testnet() else {
        return;
    };

    // Halves: neither side has a quorum, so neither commits.
    ok(&["partition", "--dir", &d, "--groups", "0,1/2,3"]);
    let stuck = settled(&d, &[0, 1, 2, 3], Duration::from_secs(3));
    std::thread::sleep(Duration::from_secs(5));
    let later = heights(&d);
    assert_eq!(
        later, stuck,
        "a side without a quorum committed during the halves partition"
    );
    ok(&["heal", "--dir", &d]);
    let top = *stuck.iter().max().unwrap();
    wait_for("commits resume after the heal", PATIENCE, || {
        heights(&d).iter().all(|h| *h >= top + 5)
    });

    // Majority and minority: the three commit, the one does not.
    ok(&["partition", "--dir", &d, "--groups", "0,1,2/3"]);
    let minority = settled(&d, &[3], Duration::from_secs(3))[0];
    let before = heights(&d);
    wait_for("the majority commits", PATIENCE, || {
        let h = heights(&d);
        (0..3).all(|i| h[i] >= before[i] + 10)
    });
    let h = heights(&d);
    assert_eq!(h[3], minority, "the minority committed alone");
    let target = *h[..3].iter().max().unwrap();
    ok(&["heal", "--dir", &d]);
    let took = wait_for(
        "the minority catches up after the heal",
        Duration::from_secs(30),
        || heights(&d)[3] >= target,
    );
    eprintln!("the minority caught up {target} - {minority} blocks in {took:?}");

    // A one-way cut: 0's packets to 1 are dropped. The other links carry
    // quorums, so the chain goes on; after the heal 0 and 1 are current.
    ok(&["partition", "--dir", &d, "--oneway", "0->1"]);
    let before = heights(&d);
    wait_for("commits go on across a one-way cut", PATIENCE, || {
        let h = heights(&d);
        h[2] >= before[2] + 10 && h[3] >= before[3] + 10
    });
    ok(&["heal", "--dir", &d]);
    let top = *heights(&d).iter().max().unwrap();
    wait_for("every node is current after the heal", PATIENCE, || {
        heights(&d).iter().all(|h| *h >= top)
    });

    // Down removes the namespaces.
    let report = ok(&["down", "--dir", &d]);
    assert!(report.contains("network namespaces"), "{report}");
    let left = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    let testnet: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{d}/testnet.json")).unwrap())
            .unwrap();
    let prefix = testnet["netns"]["prefix"].as_str().unwrap().to_string();
    assert!(
        !String::from_utf8_lossy(&left.stdout).contains(&prefix),
        "namespaces left behind"
    );
}

/// `netem` on a node's link: delay and loss are set on its namespace's
/// interface, the chain goes on, and zeros take them off. Kernels without
/// the netem queueing discipline (module `sch_netem`) get a clear error
/// from the tool; there the test says so and returns.
#[test]
fn netem_delays_and_drops_on_a_real_link_and_the_chain_goes_on() {
    let Some((_dir, d, _down)) = netns_testnet() else {
        return;
    };
    let set = [
        "netem",
        "--dir",
        &d,
        "--node",
        "1",
        "--delay-ms",
        "150",
        "--jitter-ms",
        "10",
    ];
    let (code, out, err) = run(
        &testnet_bin(),
        &[&set[..], &["--loss-percent", "5"]].concat(),
    );
    if code != Some(0) {
        assert!(
            err.contains("no netem queueing discipline"),
            "netem failed without saying why:\n{out}\n{err}"
        );
        eprintln!("skipped: {}", err.trim());
        return;
    }
    let testnet: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{d}/testnet.json")).unwrap())
            .unwrap();
    let ns = format!("{}-1", testnet["netns"]["prefix"].as_str().unwrap());
    let qdisc = || {
        let o = std::process::Command::new("ip")
            .args(["netns", "exec", &ns, "tc", "qdisc", "show", "dev", "eth0"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let shown = qdisc();
    assert!(
        shown.contains("netem") && shown.contains("delay 150ms") && shown.contains("loss 5%"),
        "{shown}"
    );
    let before = heights(&d);
    wait_for(
        "commits go on with node 1 delayed and lossy",
        PATIENCE,
        || {
            let h = heights(&d);
            (0..4).all(|i| h[i] >= before[i] + 10)
        },
    );
    ok(&["netem", "--dir", &d, "--node", "1"]);
    assert!(!qdisc().contains("netem"), "{}", qdisc());
}
