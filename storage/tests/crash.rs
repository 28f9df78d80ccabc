//! The crash test: a child process (this test binary, re-executed) commits
//! blocks and is SIGKILLed at random moments; the store is checked after
//! each kill. A deliberately non-atomic commit must be caught.

use std::path::Path;
use std::process::Command;

use phalanx_storage::crashtest;

const CHILD_DIR: &str = "PHALANX_CRASH_CHILD_DIR";
const CHILD_PLANTED: &str = "PHALANX_CRASH_CHILD_PLANTED";

/// In the re-executed child, runs the committing loop (never returns).
fn maybe_child() {
    if let Some(dir) = std::env::var_os(CHILD_DIR) {
        let planted = std::env::var_os(CHILD_PLANTED).is_some();
        crashtest::child(Path::new(&dir), 3, planted);
    }
}

fn spawner(test: &'static str, planted: bool) -> impl Fn(&Path) -> Command {
    move |dir: &Path| {
        let mut c = Command::new(std::env::current_exe().expect("test binary path"));
        c.args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR, dir);
        if planted {
            c.env(CHILD_PLANTED, "1");
        }
        c
    }
}

#[test]
fn sigkill_at_random_moments_loses_nothing_acknowledged() {
    maybe_child();
    let spawn = spawner(
        "sigkill_at_random_moments_loses_nothing_acknowledged",
        false,
    );
    let report = crashtest::run(8, 3, &spawn);
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(report.passed, 8);
    assert!(report.acked > 8, "the child made progress");
}

#[test]
fn the_crash_check_catches_a_non_atomic_commit() {
    maybe_child();
    let spawn = spawner("the_crash_check_catches_a_non_atomic_commit", true);
    let report = crashtest::run(10, 3, &spawn);
    assert!(
        !report.failures.is_empty(),
        "a commit that writes the head before the block went unnoticed"
    );
}
