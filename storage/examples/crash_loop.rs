//! Crash test: a child process commits blocks of transfers and reports each
//! acknowledged height; the parent SIGKILLs it at random moments, reopens the
//! store, and checks that nothing acknowledged is lost, no partial block is
//! visible, the state root equals a replay of every block from genesis, and
//! the supply is conserved.
//!
//! ```text
//! cargo run --release -p phalanx-storage --example crash_loop -- --kills 20 [--seed S]
//! ```
//!
//! Ends with `P passed, F failed`; exits non-zero on any failure.
//! `--plant-split-commit` runs the child with a deliberately non-atomic
//! commit, which the checks must catch.

use std::path::Path;
use std::process::{Command, ExitCode};

use phalanx_storage::crashtest;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let get = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let planted = args.iter().any(|a| a == "--plant-split-commit");
    let seed: u64 = match get("--seed").map(|s| s.parse()) {
        None => 1,
        Some(Ok(s)) => s,
        Some(Err(e)) => {
            eprintln!("--seed: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(dir) = get("--child") {
        crashtest::child(Path::new(&dir), seed, planted);
    }
    let kills: u64 = match get("--kills").map(|k| k.parse()) {
        None => 10,
        Some(Ok(k)) => k,
        Some(Err(e)) => {
            eprintln!("--kills: {e}");
            return ExitCode::from(2);
        }
    };
    let Ok(exe) = std::env::current_exe() else {
        eprintln!("cannot find this program's path");
        return ExitCode::from(2);
    };
    let spawn = |dir: &Path| {
        let mut c = Command::new(&exe);
        c.arg("--child")
            .arg(dir)
            .args(["--seed", &seed.to_string()]);
        if planted {
            c.arg("--plant-split-commit");
        }
        c
    };
    let report = crashtest::run(kills, seed, &spawn);
    for f in &report.failures {
        println!("{f}");
    }
    eprintln!("{kills} kills; height {} acknowledged last", report.acked);
    println!("{} passed, {} failed", report.passed, report.failures.len());
    if report.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
