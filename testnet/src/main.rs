//! `phalanx-testnet`: a local cluster of `phalanx` validators on
//! 127.0.0.1, for trying Phalanx, for tests, and for benchmarks.
//!
//! `up` writes keys, genesis (with funded demo accounts) and configs under
//! one directory and starts the nodes; `status`, `down`, `kill`,
//! `restart`, `pause` and `resume` work on what `up` recorded in
//! `DIR/testnet.json`; `bench` offers signed transfers at a fixed rate and
//! reports throughput and commit latency. The tool never touches a process
//! it did not start.

mod bench;
mod chaos;
mod client;
mod cluster;
mod layout;
mod netns;
mod prom;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::cluster::{Perturb, UpOptions};
use crate::layout::Testnet;

#[derive(Parser)]
#[command(name = "phalanx-testnet", version, about = "A local Phalanx testnet")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a testnet under DIR and start it; returns once every node
    /// serves RPC and the chain commits.
    Up {
        /// Where everything goes (must not hold a testnet already).
        #[arg(long)]
        dir: PathBuf,
        /// Validators (n = 3f + 1 tolerates f faults).
        #[arg(long, default_value_t = 4)]
        validators: usize,
        /// Funded demo accounts (keys under DIR/accounts).
        #[arg(long, default_value_t = 2000)]
        accounts: usize,
        /// Blocks between checkpoints.
        #[arg(long, default_value_t = 100)]
        checkpoint_interval: u64,
        /// Also start a Prometheus server scraping the nodes (installs
        /// Debian's prometheus package when missing).
        #[arg(long)]
        prometheus: bool,
        /// The phalanx binary (default: next to this tool, else on PATH).
        #[arg(long)]
        phalanx: Option<PathBuf>,
        /// Async runtime threads per node (0: the machine's cores shared
        /// out among the validators, at least one each).
        #[arg(long, default_value_t = 0)]
        node_threads: usize,
        /// Print testnet.json instead of a table.
        #[arg(long)]
        json: bool,
        /// Make validator I an attacker running `mode[,mode]`
        /// (repeatable; `I=mode[,mode]`). Needs a `phalanx` built with the
        /// `byzantine` feature (a test build); modes: equivocate,
        /// double-vote, withhold, stale-lock, delay, censor, burn, spam, sync-liar.
        #[arg(long = "byzantine", value_parser = cluster::parse_byzantine)]
        byzantine: Vec<(usize, String)>,
        /// Start a second process with validator I's key: a twin, which
        /// signs as that validator from its own state.
        #[arg(long = "twin")]
        twins: Vec<usize>,
        /// Full nodes to run beside the validators: each follows the chain
        /// from them (verifying every certificate), serves reads and
        /// forwards submissions.
        #[arg(long, default_value_t = 0)]
        full_nodes: usize,
        /// Run each node in a network namespace of its own, joined to a
        /// bridge (root only), so that `partition`, `heal` and `netem` can
        /// cut and slow real links.
        #[arg(long)]
        netns: bool,
        /// Committed blocks each node keeps below its stable checkpoint
        /// (`retained_blocks`; `chaos` needs the whole chain).
        #[arg(long)]
        retained_blocks: Option<u64>,
        /// Plant a bug in every node (`stale-reads`; a `byzantine` build),
        /// to see `chaos` catch it.
        #[arg(long)]
        planted_bug: Option<String>,
        /// Shift node I's clock by MS milliseconds (`I=MS`, repeatable;
        /// clocks cannot be set per namespace).
        #[arg(long = "clock-offset-ms", value_parser = cluster::parse_offset, allow_hyphen_values = true)]
        clock_offsets: Vec<(usize, i64)>,
    },
    /// Cut links between groups of nodes (`--groups 0,1/2,3`) or one way
    /// (`--oneway 0->1`, repeatable). Needs a testnet started with
    /// `--netns`. Replaces the cuts made before.
    Partition {
        /// The testnet directory.
        #[arg(long)]
        dir: PathBuf,
        /// Groups of node indices, separated by '/'.
        #[arg(long)]
        groups: Option<String>,
        /// One-way cuts `FROM->TO`: FROM's packets to TO are dropped.
        #[arg(long)]
        oneway: Vec<String>,
    },
    /// Interleave faults on a seeded schedule (printed at the start)
    /// under a workload of concurrent clients, record a JSONL history
    /// under DIR/chaos and check it. Exits with status 2 on a violation.
    Chaos {
        /// The testnet directory (a running testnet; `--netns` for
        /// partition and netem faults, a `byzantine` build of phalanx for
        /// byzantine faults).
        #[arg(long)]
        dir: PathBuf,
        /// Seconds of faults.
        #[arg(long, default_value_t = 120)]
        duration: u64,
        /// The schedule's seed (the same seed replays the same schedule).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Fault kinds: kill, pause, partition, netem, byzantine, wipe.
        #[arg(long, default_value = "kill,pause,byzantine,wipe")]
        faults: String,
        /// Concurrent clients.
        #[arg(long, default_value_t = 4)]
        clients: usize,
        /// Demo accounts the clients move funds among.
        #[arg(long, default_value_t = 16)]
        accounts: usize,
    },
    /// Check a saved chaos history. Exits with status 2 on a violation.
    Check {
        /// The history file (DIR/chaos/history-SEED.jsonl).
        #[arg(long)]
        history: PathBuf,
    },
    /// Remove every cut.
    Heal {
        /// The testnet directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Delay, jitter and loss on one node's link (a netem queue; `--netns`
    /// testnets only, and a kernel with netem). All zero removes it.
    Netem {
        /// The testnet directory.
        #[arg(long)]
        dir: PathBuf,
        /// The node's index.
        #[arg(long)]
        node: usize,
        /// Added delay, ms.
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
        /// Delay jitter, ms.
        #[arg(long, default_value_t = 0)]
        jitter_ms: u64,
        /// Packets dropped, percent.
        #[arg(long, default_value_t = 0.0)]
        loss_percent: f64,
    },
    /// Height, view, leader, peers and health of each node.
    Status {
        /// The testnet directory.
        #[arg(long)]
        dir: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop every process the testnet started (and nothing else).
    Down {
        /// The testnet directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// SIGKILL one node.
    Kill(NodeArg),
    /// Stop one node (if running) and start it again.
    Restart(NodeArg),
    /// Freeze one node (SIGSTOP).
    Pause(NodeArg),
    /// Unfreeze one node (SIGCONT).
    Resume(NodeArg),
    /// Offer an open-loop load of signed transfers and report throughput
    /// and commit latency. Runs against the nodes that are up (not killed
    /// or paused) and checks commits on those.
    Bench {
        /// The testnet directory.
        #[arg(long)]
        dir: PathBuf,
        /// Seconds of load.
        #[arg(long, default_value_t = 30)]
        duration: u64,
        /// Transfers offered per second.
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        /// Seconds to wait after the load for every acknowledged transfer
        /// to commit on every node.
        #[arg(long, default_value_t = 60)]
        drain: u64,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct NodeArg {
    /// The testnet directory.
    #[arg(long)]
    dir: PathBuf,
    /// The node's index.
    #[arg(long)]
    node: usize,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli.cmd)) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(2),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Prints a chaos report; true when it found no violation.
fn print_report(r: &chaos::Report) -> bool {
    println!(
        "transfers acknowledged as committed: {}, applied: {}; slowest resume after a heal: {} ms",
        r.acknowledged, r.applied, r.slowest_resume_ms
    );
    println!(
        "applied transfers/s: {:.1} with a Byzantine validator, {:.1} with no fault on",
        r.throughput.0, r.throughput.1
    );
    for v in r.violations.iter().take(50) {
        println!("violation: {v}");
    }
    println!("{}", r.summary());
    if !r.violations.is_empty() {
        println!("replay with --seed {}", r.seed);
    }
    r.violations.is_empty()
}

/// The namespaces of the testnet in `dir`, or an error saying how to get
/// them.
fn netns_of(dir: &std::path::Path) -> Result<netns::NetnsInfo> {
    Testnet::load(dir)?.netns.ok_or_else(|| {
        anyhow::anyhow!(
            "the testnet in {} runs without network namespaces: start it with `phalanx-testnet up --netns` (as root)",
            dir.display()
        )
    })
}

/// Runs one command; `Ok(false)` is a completed run whose result is a
/// failure (a bench that lost transfers).
async fn run(cmd: Cmd) -> Result<bool> {
    match cmd {
        Cmd::Up {
            dir,
            validators,
            accounts,
            checkpoint_interval,
            prometheus,
            phalanx,
            node_threads,
            json,
            byzantine,
            twins,
            full_nodes,
            netns,
            retained_blocks,
            planted_bug,
            clock_offsets,
        } => {
            let opts = UpOptions {
                validators,
                accounts,
                checkpoint_interval,
                phalanx: cluster::find_phalanx(phalanx)?,
                node_threads,
                byzantine,
                twins,
                full_nodes,
                netns,
                retained_blocks,
                planted_bug,
                clock_offsets,
            };
            let mut net = match cluster::up(&dir, &opts).await {
                Ok(n) => n,
                Err(e) => {
                    // Leave nothing running behind a failed start.
                    if let Ok(mut n) = Testnet::load(&dir) {
                        let _ = cluster::down(&dir, &mut n);
                    }
                    return Err(e);
                }
            };
            let dir = std::fs::canonicalize(&dir)?;
            if prometheus {
                match prom::start(&dir, &net) {
                    Ok(p) => net.prometheus = Some(p),
                    Err(e) => {
                        let _ = cluster::down(&dir, &mut net);
                        return Err(e);
                    }
                }
            } else {
                prom::write_files(&dir.join("prometheus"), &net)?;
            }
            net.save(&dir)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&net)?);
            } else {
                print!("{}", cluster::endpoints_table(&net));
                println!();
                println!("testnet:     {}", dir.join("testnet.json").display());
                println!("genesis:     {}", net.genesis.display());
                println!(
                    "accounts:    {} funded (keys: {}/accounts/)",
                    net.accounts,
                    dir.display()
                );
                match &net.prometheus {
                    Some(p) => println!("prometheus:  {}  (alerts: {}/alerts)", p.url, p.url),
                    None => println!(
                        "prometheus:  not started (config: {}/prometheus/prometheus.yml)",
                        dir.display()
                    ),
                }
                println!(
                    "dashboard:   {}/prometheus/phalanx-dashboard.json (import into Grafana)",
                    dir.display()
                );
                println!("stop with:   phalanx-testnet down --dir {}", dir.display());
            }
            Ok(true)
        }
        Cmd::Status { dir, json } => {
            let net = Testnet::load(&dir)?;
            let rows = cluster::status(&net).await;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "chain_id": net.chain_id,
                        "nodes": rows,
                        "prometheus": net.prometheus.as_ref().map(|p| &p.url),
                    }))?
                );
            } else {
                print!("{}", cluster::status_table(&rows));
            }
            Ok(true)
        }
        Cmd::Down { dir } => {
            let mut net = Testnet::load(&dir)?;
            for line in cluster::down(&dir, &mut net)? {
                println!("{line}");
            }
            Ok(true)
        }
        Cmd::Partition {
            dir,
            groups,
            oneway,
        } => {
            let ns = netns_of(&dir)?;
            let groups = groups.map(|g| netns::parse_groups(&g)).transpose()?;
            let cuts = oneway
                .iter()
                .map(|c| netns::parse_oneway(c))
                .collect::<Result<Vec<_>>>()?;
            if groups.is_none() && cuts.is_empty() {
                anyhow::bail!("partition: give --groups or --oneway");
            }
            match &groups {
                Some(g) => ns.partition(g)?,
                None => ns.heal()?,
            }
            for (a, b) in &cuts {
                ns.cut(*a, *b)?;
            }
            println!(
                "cut: {}{}",
                groups.map_or(String::new(), |g| format!("groups {g:?} ")),
                cuts.iter()
                    .map(|(a, b)| format!("{a}->{b}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            Ok(true)
        }
        Cmd::Chaos {
            dir,
            duration,
            seed,
            faults,
            clients,
            accounts,
        } => {
            let mut net = Testnet::load(&dir)?;
            let opts = chaos::ChaosOptions {
                duration: Duration::from_secs(duration),
                seed,
                faults: chaos::parse_faults(&faults)?,
                clients: clients.max(1),
                accounts,
            };
            let (path, report) = chaos::run(&dir, &mut net, &opts).await?;
            net.save(&dir)?;
            println!("history: {}", path.display());
            Ok(print_report(&report))
        }
        Cmd::Check { history } => Ok(print_report(&chaos::check(&history)?)),
        Cmd::Heal { dir } => {
            netns_of(&dir)?.heal()?;
            println!("healed: every cut removed");
            Ok(true)
        }
        Cmd::Netem {
            dir,
            node,
            delay_ms,
            jitter_ms,
            loss_percent,
        } => {
            if !(0.0..=100.0).contains(&loss_percent) {
                anyhow::bail!("--loss-percent must be between 0 and 100");
            }
            netns_of(&dir)?.netem(node, delay_ms, jitter_ms, loss_percent)?;
            println!("node {node}: delay {delay_ms} ms ± {jitter_ms} ms, loss {loss_percent} %");
            Ok(true)
        }
        Cmd::Kill(a) => perturb(a, Perturb::Kill).await,
        Cmd::Restart(a) => perturb(a, Perturb::Restart).await,
        Cmd::Pause(a) => perturb(a, Perturb::Pause).await,
        Cmd::Resume(a) => perturb(a, Perturb::Resume).await,
        Cmd::Bench {
            dir,
            duration,
            rate,
            drain,
            json,
        } => {
            let opts = bench::BenchOptions {
                duration: Duration::from_secs(duration),
                rate,
                drain: Duration::from_secs(drain),
                progress: !json,
            };
            let report = bench::run(&dir, &opts).await?;
            if json {
                println!("{report}");
            } else {
                println!("{}", bench::human(&report));
            }
            Ok(report["all_committed_on_every_node"] == true)
        }
    }
}

async fn perturb(a: NodeArg, p: Perturb) -> Result<bool> {
    let mut net = Testnet::load(&a.dir)?;
    let msg = cluster::perturb(&a.dir, &mut net, a.node, p).await?;
    println!("{msg}");
    Ok(true)
}
