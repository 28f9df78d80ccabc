//! Runs the deterministic consensus simulator over a range of seeds.
//!
//! ```text
//! cargo run --release -p phalanx-consensus --example simulate -- \
//!     --validators 4 --byzantine 1 --seeds 1000 --seed-start 0
//! ```
//!
//! Prints one line per failing seed (with the command that replays it), then
//! `P passed, F failed`, and exits non-zero on any failure.

use std::process::ExitCode;
use std::time::Instant;

use phalanx_consensus::Flaw;
use phalanx_consensus::sim::{Behaviour, SimConfig, Wipes, run_many};

const USAGE: &str = "usage: simulate --validators N --byzantine F --seeds S --seed-start X \
[--threads T] [--behaviour NAME]... [--flaw commit-on-single-qc|vote-ignores-lock|vote-twice-in-view|forget-safety|recovery-without-quarantine|vote-without-validity|vote-without-exec-check] \
[--wipes store|everything] [--no-crashes] [--verbose]";

struct Args {
    n: usize,
    b: usize,
    seeds: u64,
    start: u64,
    threads: usize,
    behaviours: Vec<Behaviour>,
    flaw: Option<String>,
    crashes: bool,
    wipes: Option<String>,
    verbose: bool,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        n: 4,
        b: 1,
        seeds: 100,
        start: 0,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        behaviours: vec![],
        flaw: None,
        crashes: true,
        wipes: None,
        verbose: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        let num = |s: String| s.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--validators" => a.n = num(val()?)? as usize,
            "--byzantine" => a.b = num(val()?)? as usize,
            "--seeds" => a.seeds = num(val()?)?,
            "--seed-start" => a.start = num(val()?)?,
            "--threads" => a.threads = num(val()?)? as usize,
            "--behaviour" => {
                let v = val()?;
                let b = Behaviour::ALL
                    .into_iter()
                    .find(|b| format!("{b:?}").eq_ignore_ascii_case(&v))
                    .ok_or(format!("unknown behaviour {v}"))?;
                a.behaviours.push(b);
            }
            "--flaw" => a.flaw = Some(val()?),
            "--no-crashes" => a.crashes = false,
            "--wipes" => a.wipes = Some(val()?),
            "--verbose" => a.verbose = true,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    if a.n == 0 || a.n > 64 {
        return Err("--validators must be between 1 and 64".into());
    }
    if a.b > a.n {
        return Err("--byzantine cannot exceed --validators".into());
    }
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let mut cfg = SimConfig::new(args.n, args.b);
    cfg.behaviours = args.behaviours.clone();
    cfg.crashes = args.crashes;
    match args.flaw.as_deref() {
        None => {}
        Some("commit-on-single-qc") => cfg.flaw = Some(Flaw::CommitOnSingleQc),
        Some("vote-ignores-lock") => cfg.flaw = Some(Flaw::VoteIgnoresLock),
        Some("vote-twice-in-view") => cfg.flaw = Some(Flaw::VoteTwiceInView),
        Some("forget-safety") => cfg.forget_safety_on_restart = true,
        Some("recovery-without-quarantine") => cfg.flaw = Some(Flaw::RecoveryWithoutQuarantine),
        Some("vote-without-validity") => cfg.flaw = Some(Flaw::VoteWithoutValidity),
        Some("vote-without-exec-check") => cfg.flaw = Some(Flaw::VoteWithoutExecCheck),
        Some(other) => {
            eprintln!("unknown flaw {other}\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    cfg.wipes = match args.wipes.as_deref() {
        None => Wipes::None,
        Some("store") => Wipes::Store,
        Some("everything") => Wipes::Everything,
        Some(other) => {
            eprintln!("unknown --wipes {other}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let outcomes = run_many(&cfg, args.start, args.seeds, args.threads);
    let mut failed = 0;
    let mut views = Vec::new();
    for o in &outcomes {
        if args.verbose {
            println!("seed {} trace {:016x} {:?}", o.seed, o.trace, o.stats);
        }
        if !o.passed() {
            failed += 1;
            let mut replay = format!(
                "cargo run --release -p phalanx-consensus --example simulate -- --validators {} --byzantine {} --seeds 1 --seed-start {}",
                args.n, args.b, o.seed
            );
            for b in &args.behaviours {
                replay.push_str(&format!(" --behaviour {b:?}"));
            }
            if let Some(f) = &args.flaw {
                replay.push_str(&format!(" --flaw {f}"));
            }
            if !args.crashes {
                replay.push_str(" --no-crashes");
            }
            if let Some(w) = &args.wipes {
                replay.push_str(&format!(" --wipes {w}"));
            }
            println!(
                "FAIL seed {}: {} | replay: {replay}",
                o.seed,
                o.violations.first().map_or("", String::as_str)
            );
        } else {
            views.push(o.stats.views_after_gst);
        }
    }
    views.sort_unstable();
    let passed = outcomes.len() - failed;
    eprintln!(
        "{} seeds in {:.1} s on {} threads; views after GST until liveness: median {}, max {}",
        outcomes.len(),
        started.elapsed().as_secs_f64(),
        args.threads,
        views.get(views.len() / 2).copied().unwrap_or(0),
        views.last().copied().unwrap_or(0),
    );
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
