//! `phalanx-testnet chaos` for two minutes against a 4-validator testnet:
//! kills, pauses, wipes, a validator restarted as an attacker and, where
//! network namespaces can be made, partitions, under a workload of
//! concurrent clients; the checker must find no violation, and must find
//! the same on the saved history.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use phalanx_tests::{TestnetDown, namespaces_available, run, testnet_bin};

/// A testnet in `d` that keeps its whole chain (the checker reads it).
fn up(d: &str, extra: &[&str]) {
    let mut args = vec![
        "up",
        "--dir",
        d,
        "--accounts",
        "20",
        "--retained-blocks",
        "1000000",
    ];
    args.extend(extra);
    phalanx_tests::testnet_ok(&args);
}

/// Runs `phalanx-testnet chaos` on the testnet in `d`: (exit code,
/// stdout, stderr).
fn chaos(d: &str, seconds: &str, seed: &str, faults: &str) -> (Option<i32>, String, String) {
    run(
        &testnet_bin(),
        &[
            "chaos",
            "--dir",
            d,
            "--duration",
            seconds,
            "--seed",
            seed,
            "--faults",
            faults,
        ],
    )
}

#[test]
fn two_minutes_of_chaos_leave_no_violation() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("net").to_string_lossy().to_string();
    let _down = TestnetDown(PathBuf::from(&d));
    let netns = namespaces_available().is_ok();
    let mut faults = "kill,pause,byzantine,wipe".to_string();
    if netns {
        faults.push_str(",partition");
        up(&d, &["--netns"]);
    } else {
        eprintln!("network namespaces cannot be made here: no partition faults");
        up(&d, &[]);
    }
    let (code, out, err) = chaos(&d, "120", "1", &faults);
    eprintln!("{out}");
    assert_eq!(
        code,
        Some(0),
        "chaos found violations or failed:\n{out}\n{err}"
    );
    let summary = out
        .lines()
        .find(|l| l.starts_with("chaos: ") && l.contains("violations"))
        .expect("a summary line");
    assert!(summary.ends_with(" 0 violations"), "{summary}");
    let faults_run: usize = summary
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(
        faults_run >= 5,
        "two minutes hold several faults: {summary}"
    );
    assert!(
        !out.contains("failed:"),
        "every fault was applied and healed:\n{out}"
    );
    // The checker on the saved history agrees.
    let history = format!("{d}/chaos/history-1.jsonl");
    let (code, again, err) = run(&testnet_bin(), &["check", "--history", &history]);
    assert_eq!(code, Some(0), "{again}\n{err}");
    assert!(again.contains(summary), "{again}");
}

/// The checker is not blind: every node built with a read cache that a
/// commit does not invalidate (`--planted-bug stale-reads`) answers
/// balances that the committed order contradicts, and a short run says
/// so, exits with status 2 and names the seed.
#[test]
fn chaos_catches_a_node_build_with_a_planted_stale_read_bug() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("net").to_string_lossy().to_string();
    let _down = TestnetDown(PathBuf::from(&d));
    up(&d, &["--planted-bug", "stale-reads"]);
    let (code, out, err) = chaos(&d, "30", "3", "pause");
    assert_eq!(code, Some(2), "chaos missed the planted bug:\n{out}\n{err}");
    assert!(out.contains("violation: read: node"), "{out}");
    assert!(out.contains("replay with --seed 3"), "{out}");
}
