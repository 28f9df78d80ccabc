//! `phalanx-testnet chaos`: a nemesis that interleaves faults on a seeded,
//! replayable schedule under a workload of concurrent clients, a JSONL
//! history of everything that happened, and the checker that judges it
//! (also run on its own by `phalanx-testnet check --history FILE`).
//!
//! This module owns the schedule, the workload, the history format and the
//! checks. It drives a running testnet only through what an operator has:
//! the testnet's own perturbations, JSON-RPC and the nodes' logs. It never
//! decides that a run passed without reading the history back.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use phalanx_crypto::KeyPair;
use phalanx_ledger::{Genesis, Leg, Transfer};
use serde_json::{Value, json};

use crate::client::{call, rpc_client};
use crate::cluster::{self, Perturb};
use crate::layout::Testnet;

/// Commits must resume within this long after a fault heals.
pub const RESUME_BOUND: Duration = Duration::from_secs(30);

/// Blocks every node must keep for the checker to read the whole chain.
pub const MIN_RETAINED: u64 = 1_000_000;

/// How long one client call may take before its outcome is unknown.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Attack modes the `byzantine` fault picks from.
const MODES: [&str; 7] = [
    "equivocate",
    "double-vote",
    "withhold",
    "delay",
    "censor",
    "burn",
    "sync-liar",
];

/// One kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL, then a restart.
    Kill,
    /// SIGSTOP, then SIGCONT.
    Pause,
    /// One node cut off from the rest (network namespaces).
    Partition,
    /// Delay and loss on one node's link (network namespaces, netem).
    Netem,
    /// A restart with an attack mode, then a restart without.
    Byzantine,
    /// Stop, delete the data directory, start again (state sync and
    /// recovery of the safety record).
    Wipe,
}

const FAULTS: [(&str, Fault); 6] = [
    ("kill", Fault::Kill),
    ("pause", Fault::Pause),
    ("partition", Fault::Partition),
    ("netem", Fault::Netem),
    ("byzantine", Fault::Byzantine),
    ("wipe", Fault::Wipe),
];

impl Fault {
    fn name(self) -> &'static str {
        FAULTS
            .iter()
            .find(|(_, f)| *f == self)
            .map_or("?", |(n, _)| n)
    }
}

/// Parses `kill,pause,…`.
pub fn parse_faults(s: &str) -> Result<Vec<Fault>> {
    let mut out = Vec::new();
    for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let (_, f) = FAULTS.iter().find(|(n, _)| *n == name).with_context(|| {
            format!(
                "--faults: unknown fault {name:?} (known: {})",
                FAULTS.map(|(n, _)| n).join(", ")
            )
        })?;
        if !out.contains(f) {
            out.push(*f);
        }
    }
    if out.is_empty() {
        bail!("--faults: none given");
    }
    Ok(out)
}

/// SplitMix64. Written here rather than taken from `rand`: a schedule
/// printed today must replay from its seed with any later build, and
/// `rand`'s seeded generators promise no stable output across versions.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// One fault of the schedule.
#[derive(Clone, Debug)]
pub struct Planned {
    /// What.
    pub fault: Fault,
    /// On which node.
    pub node: usize,
    /// Quiet time before it, ms.
    pub gap_ms: u64,
    /// How long it lasts, ms.
    pub hold_ms: u64,
    /// The attack mode (`byzantine` only).
    pub mode: &'static str,
}

/// The node `wipe` never picks: it keeps the whole chain, so the checker
/// can look up every acknowledged transfer's record and replay balances
/// from genesis. (Once every node has been wiped, no node holds the
/// blocks before the latest restore: a 30-minute run showed it.)
pub const ARCHIVE_NODE: usize = 0;

/// The schedule for `seed`: faults one at a time (a cluster of 3f + 1
/// tolerates f; with 4 validators that is one), filling `duration`.
pub fn schedule(seed: u64, faults: &[Fault], nodes: usize, duration: Duration) -> Vec<Planned> {
    let mut rng = Rng(seed);
    let mut out = Vec::new();
    let mut t = 0u64;
    loop {
        let mut p = Planned {
            fault: faults[rng.below(faults.len() as u64) as usize],
            node: rng.below(nodes as u64) as usize,
            gap_ms: 3_000 + rng.below(4_000),
            hold_ms: 3_000 + rng.below(6_000),
            mode: MODES[rng.below(MODES.len() as u64) as usize],
        };
        if p.fault == Fault::Wipe && p.node == ARCHIVE_NODE && nodes > 1 {
            p.node = (ARCHIVE_NODE + 1) % nodes;
        }
        // A fault, its heal and the wait for commits to resume.
        t += p.gap_ms + p.hold_ms + 5_000;
        if t > duration.as_millis() as u64 && !out.is_empty() {
            return out;
        }
        out.push(p);
    }
}

/// The history file: one JSON object per line, each with `t` (ms since
/// the start) and `kind`.
struct History {
    file: Mutex<std::io::BufWriter<std::fs::File>>,
    start: Instant,
    /// Hashes of every transfer a client submitted.
    invoked: Mutex<BTreeSet<String>>,
    /// Hashes acknowledged as committed.
    acked: Mutex<BTreeSet<String>>,
}

impl History {
    fn record(&self, mut v: Value) {
        v["t"] = json!(self.start.elapsed().as_millis() as u64);
        if let Some(h) = v["hash"].as_str() {
            let set = if v["kind"] == "invoke" {
                Some(&self.invoked)
            } else if v["kind"] == "complete" && v["result"] == "committed" {
                Some(&self.acked)
            } else {
                None
            };
            if let Some(set) = set {
                set.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(h.to_string());
            }
        }
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(f, "{v}");
    }
}

/// Options of a run.
pub struct ChaosOptions {
    /// How long the nemesis runs.
    pub duration: Duration,
    /// The schedule's seed.
    pub seed: u64,
    /// Fault kinds to draw from.
    pub faults: Vec<Fault>,
    /// Concurrent clients.
    pub clients: usize,
    /// Demo accounts the clients move funds among.
    pub accounts: usize,
}

/// Runs the nemesis and the workload against the testnet in `dir`,
/// collects the nodes' chains, writes the history and checks it. Returns
/// the history's path and the check's report.
pub async fn run(dir: &Path, net: &mut Testnet, opts: &ChaosOptions) -> Result<(PathBuf, Report)> {
    let nodes = net.nodes.len();
    for n in &net.nodes {
        let cfg = std::fs::read_to_string(n.home.join("config.toml")).unwrap_or_default();
        let kept = cfg
            .lines()
            .find_map(|l| l.strip_prefix("retained_blocks = "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if kept < MIN_RETAINED {
            bail!(
                "node {} keeps {kept} blocks below its checkpoint; the checker reads the whole chain, so start the testnet with `up --retained-blocks {MIN_RETAINED}`",
                n.index
            );
        }
    }
    if opts.faults.contains(&Fault::Partition) || opts.faults.contains(&Fault::Netem) {
        net.netns.as_ref().with_context(
            || "partition and netem faults need a testnet started with `up --netns`",
        )?;
    }
    let plan = schedule(opts.seed, &opts.faults, nodes, opts.duration);
    println!(
        "chaos: seed {} · {} faults planned over {} s",
        opts.seed,
        plan.len(),
        opts.duration.as_secs()
    );
    for (k, p) in plan.iter().enumerate() {
        println!(
            "  {k:>3}: after {:>5} ms, {} node {} for {} ms{}",
            p.gap_ms,
            p.fault.name(),
            p.node,
            p.hold_ms,
            if p.fault == Fault::Byzantine {
                format!(" ({})", p.mode)
            } else {
                String::new()
            }
        );
    }
    let genesis = Genesis::load(&net.genesis).map_err(|e| anyhow::anyhow!("genesis: {e}"))?;
    let keys: Vec<KeyPair> = crate::layout::load_accounts(dir)?
        .into_iter()
        .take(opts.accounts)
        .collect();
    if keys.len() < 2 {
        bail!("chaos needs at least 2 demo accounts");
    }
    let balances: BTreeMap<String, u64> = keys
        .iter()
        .map(|k| {
            let b = genesis
                .accounts
                .iter()
                .find(|a| a.address == k.public())
                .map_or(0, |a| a.balance);
            (k.public().to_hex(), b)
        })
        .collect();
    std::fs::create_dir_all(dir.join("chaos"))?;
    let path = dir.join(format!("chaos/history-{}.jsonl", opts.seed));
    let history = Arc::new(History {
        file: Mutex::new(std::io::BufWriter::new(
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?,
        )),
        start: Instant::now(),
        invoked: Mutex::new(BTreeSet::new()),
        acked: Mutex::new(BTreeSet::new()),
    });
    let wall_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    history.record(json!({
        "kind": "start",
        "wall_ms": wall_ms,
        "seed": opts.seed,
        "faults": opts.faults.iter().map(|f| f.name()).collect::<Vec<_>>(),
        "nodes": nodes,
        "balances": balances,
        "resume_bound_ms": RESUME_BOUND.as_millis() as u64,
    }));

    // The workload.
    let stop = Arc::new(AtomicBool::new(false));
    let urls: Arc<Vec<String>> = Arc::new(net.nodes.iter().map(|n| n.rpc_url.clone()).collect());
    let keys = Arc::new(keys);
    let mut clients = Vec::new();
    for c in 0..opts.clients {
        let owned: Vec<usize> = (c..keys.len()).step_by(opts.clients).collect();
        clients.push(tokio::spawn(client(
            c,
            opts.seed ^ ((c as u64 + 1) * 0x5bd1_e995),
            keys.clone(),
            owned,
            urls.clone(),
            genesis.chain_id.clone(),
            history.clone(),
            stop.clone(),
        )));
    }

    // The nemesis.
    let mut byzantine_nodes = BTreeSet::new();
    let started = Instant::now();
    for (k, p) in plan.iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(p.gap_ms)).await;
        if started.elapsed() > opts.duration {
            break;
        }
        history.record(json!({
            "kind": "fault", "phase": "start", "index": k, "fault": p.fault.name(),
            "node": p.node, "mode": (p.fault == Fault::Byzantine).then_some(p.mode),
        }));
        let applied = apply(dir, net, p).await;
        if let Err(e) = &applied {
            history.record(
                json!({"kind": "fault", "phase": "error", "index": k, "error": format!("{e:#}")}),
            );
            println!(
                "  fault {k} ({} node {}) failed: {e:#}",
                p.fault.name(),
                p.node
            );
        }
        if p.fault == Fault::Byzantine {
            byzantine_nodes.insert(p.node);
        }
        tokio::time::sleep(Duration::from_millis(p.hold_ms)).await;
        let healed = heal(dir, net, p).await;
        if let Err(e) = &healed {
            history.record(
                json!({"kind": "fault", "phase": "error", "index": k, "error": format!("{e:#}")}),
            );
            println!("  healing fault {k} failed: {e:#}");
        }
        history.record(json!({"kind": "fault", "phase": "healed", "index": k}));
        let resumed = wait_resumed(net, RESUME_BOUND).await;
        history.record(json!({
            "kind": "resumed", "index": k,
            "ms": resumed.map(|d| d.as_millis() as u64),
        }));
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    history.record(json!({"kind": "workload_end"}));
    // Let what is pending commit, then read every node's chain.
    settle(net).await;
    collect(net, &history, &keys, &byzantine_nodes).await?;
    history.record(json!({"kind": "end"}));
    drop(history);
    let report = check(&path)?;
    Ok((path, report))
}

/// Applies the fault.
async fn apply(dir: &Path, net: &mut Testnet, p: &Planned) -> Result<()> {
    match p.fault {
        Fault::Kill => {
            cluster::perturb(dir, net, p.node, Perturb::Kill).await?;
        }
        Fault::Pause => {
            cluster::perturb(dir, net, p.node, Perturb::Pause).await?;
        }
        Fault::Partition => {
            let ns = net.netns.clone().context("no namespaces")?;
            let rest: Vec<usize> = (0..net.nodes.len()).filter(|i| *i != p.node).collect();
            ns.partition(&[vec![p.node], rest])?;
        }
        Fault::Netem => {
            let ns = net.netns.clone().context("no namespaces")?;
            ns.netem(p.node, 100, 20, 5.0)?;
        }
        Fault::Byzantine => {
            net.nodes[p.node].byzantine = Some(p.mode.to_string());
            cluster::perturb(dir, net, p.node, Perturb::Restart).await?;
        }
        Fault::Wipe => {
            if net.nodes[p.node].process() == crate::layout::Process::Running {
                cluster::perturb(dir, net, p.node, Perturb::Kill).await?;
            }
            let data = net.nodes[p.node].home.join("data");
            std::fs::remove_dir_all(&data)
                .with_context(|| format!("removing {}", data.display()))?;
        }
    }
    Ok(())
}

/// Undoes the fault.
async fn heal(dir: &Path, net: &mut Testnet, p: &Planned) -> Result<()> {
    match p.fault {
        Fault::Kill | Fault::Wipe => {
            cluster::perturb(dir, net, p.node, Perturb::Restart).await?;
        }
        Fault::Pause => {
            cluster::perturb(dir, net, p.node, Perturb::Resume).await?;
        }
        Fault::Partition => net.netns.clone().context("no namespaces")?.heal()?,
        Fault::Netem => net
            .netns
            .clone()
            .context("no namespaces")?
            .netem(p.node, 0, 0, 0.0)?,
        Fault::Byzantine => {
            net.nodes[p.node].byzantine = None;
            cluster::perturb(dir, net, p.node, Perturb::Restart).await?;
        }
    }
    Ok(())
}

async fn height(url: &str) -> Option<u64> {
    let c = rpc_client(url, CALL_TIMEOUT).ok()?;
    call(&c, "ledger_status", vec![]).await.ok()?["height"].as_u64()
}

/// How long until every node has committed two more blocks, if within
/// `bound`.
async fn wait_resumed(net: &Testnet, bound: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut first: Vec<Option<u64>> = vec![None; net.nodes.len()];
    while start.elapsed() < bound {
        let mut all = true;
        for (i, n) in net.nodes.iter().enumerate() {
            match (height(&n.rpc_url).await, first[i]) {
                (Some(h), None) => {
                    first[i] = Some(h);
                    all = false;
                }
                (Some(h), Some(f)) if h >= f + 2 => {}
                _ => all = false,
            }
        }
        if all {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// Waits (up to a minute) until every node reports one height twice in a
/// row with empty mempools: the workload's pending transfers are in.
async fn settle(net: &Testnet) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let mut quiet = true;
        for n in &net.nodes {
            let Ok(c) = rpc_client(&n.rpc_url, CALL_TIMEOUT) else {
                quiet = false;
                continue;
            };
            match call(&c, "ledger_status", vec![]).await {
                Ok(s) if s["mempool"].as_u64() == Some(0) => {}
                _ => quiet = false,
            }
        }
        if quiet {
            // Two more blocks everywhere: the last transfers are committed
            // on every node, not only where they were first executed.
            let _ = wait_resumed(net, Duration::from_secs(20)).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One client: transfers from the accounts it owns (some waiting for the
/// commit, some not) to any account of the set, and balance reads.
#[allow(clippy::too_many_arguments)]
async fn client(
    c: usize,
    seed: u64,
    keys: Arc<Vec<KeyPair>>,
    owned: Vec<usize>,
    urls: Arc<Vec<String>>,
    chain: phalanx_crypto::ChainId,
    history: Arc<History>,
    stop: Arc<AtomicBool>,
) {
    let mut rng = Rng(seed);
    let mut next: HashMap<usize, Option<u64>> = owned.iter().map(|a| (*a, None)).collect();
    let mut op = 0u64;
    while !stop.load(Ordering::Relaxed) && !owned.is_empty() {
        op += 1;
        let node = rng.below(urls.len() as u64) as usize;
        let Ok(rpc) = rpc_client(&urls[node], CALL_TIMEOUT) else {
            continue;
        };
        if op.is_multiple_of(5) {
            let a = rng.below(keys.len() as u64) as usize;
            let addr = keys[a].public().to_hex();
            if let Ok(Ok(v)) = tokio::time::timeout(
                CALL_TIMEOUT,
                call(&rpc, "ledger_getAccount", vec![json!(addr)]),
            )
            .await
            {
                history.record(json!({
                    "kind": "read", "client": c, "node": node, "account": addr,
                    "balance": v["balance"], "height": v["height"],
                }));
            }
            continue;
        }
        let from = owned[rng.below(owned.len() as u64) as usize];
        let nonce = match next[&from] {
            Some(n) => n,
            None => {
                // The committed nonce: where this account's run resumes
                // after an outcome the client cannot know.
                let addr = keys[from].public().to_hex();
                match tokio::time::timeout(
                    CALL_TIMEOUT,
                    call(&rpc, "ledger_getAccount", vec![json!(addr)]),
                )
                .await
                {
                    Ok(Ok(v)) => v["nonce"].as_u64().unwrap_or(0),
                    _ => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                }
            }
        };
        let mut to = rng.below(keys.len() as u64) as usize;
        if to == from {
            to = (to + 1) % keys.len();
        }
        let amount = 1 + rng.below(100);
        let tx = Transfer {
            chain_id: chain.clone(),
            sender: keys[from].public(),
            nonce,
            legs: vec![Leg {
                to: keys[to].public(),
                amount,
            }],
        }
        .sign(&keys[from]);
        let hash = tx.hash().to_hex();
        let wait = if rng.below(2) == 0 { "commit" } else { "none" };
        history.record(json!({
            "kind": "invoke", "client": c, "node": node, "hash": hash,
            "from": keys[from].public().to_hex(), "to": keys[to].public().to_hex(),
            "amount": amount, "nonce": nonce, "wait": wait,
        }));
        let r = tokio::time::timeout(
            CALL_TIMEOUT,
            call(
                &rpc,
                "ledger_submitTransaction",
                vec![json!(hex::encode(tx.encode())), json!(wait)],
            ),
        )
        .await;
        let (result, detail) = match r {
            // Included in a block is not applied: a transfer whose nonce
            // another of its sender's transfers took is committed with a
            // failure receipt, and moves nothing.
            Ok(Ok(v)) if v["status"] == "committed" && v["receipt"]["status"] == "applied" => {
                ("committed", v["status"].clone())
            }
            Ok(Ok(v)) if v["status"] == "committed" => ("rejected", v["receipt"].clone()),
            Ok(Ok(v)) => ("accepted", v["status"].clone()),
            Ok(Err(e)) => ("failed", json!(format!("{e:#}"))),
            Err(_) => ("unknown", json!("timed out")),
        };
        history.record(json!({"kind": "complete", "client": c, "hash": hash, "result": result, "detail": detail}));
        next.insert(
            from,
            match result {
                "committed" | "accepted" => Some(nonce + 1),
                _ => None,
            },
        );
        // An accepted transfer that a fault lost leaves a gap no later
        // nonce can pass: now and then start over from the committed
        // nonce.
        if op.is_multiple_of(40) {
            for v in next.values_mut() {
                *v = None;
            }
        }
    }
}

/// Reads every node's chain, the workload's transactions' statuses, the
/// accounts' balances and the evidence in the logs into the history.
async fn collect(
    net: &Testnet,
    history: &History,
    keys: &[KeyPair],
    byzantine: &BTreeSet<usize>,
) -> Result<()> {
    let mut chain_hashes = BTreeSet::new();
    let mut blocks_read = vec![0usize; net.nodes.len()];
    for (i, n) in net.nodes.iter().enumerate() {
        let Ok(c) = rpc_client(&n.rpc_url, Duration::from_secs(20)) else {
            continue;
        };
        let Ok(head) = call(&c, "ledger_status", vec![]).await else {
            history.record(json!({"kind": "unreachable", "node": i}));
            continue;
        };
        let top = head["height"].as_u64().unwrap_or(0);
        for h in 1..=top {
            match call(&c, "ledger_getBlock", vec![json!(h)]).await {
                Ok(b) => {
                    blocks_read[i] += 1;
                    for t in b["transactions"].as_array().into_iter().flatten() {
                        if let Some(t) = t.as_str() {
                            chain_hashes.insert(t.to_string());
                        }
                    }
                    history.record(json!({
                    "kind": "block", "node": i, "height": h, "id": b["block_id"],
                    "timestamp_ms": b["timestamp_ms"], "txs": b["transactions"],
                    }));
                }
                // Pruned below the retained window, or state-synced past it.
                Err(_) => continue,
            }
        }
        for k in keys {
            if let Ok(v) = call(&c, "ledger_getAccount", vec![json!(k.public().to_hex())]).await {
                history.record(json!({
                    "kind": "balance", "node": i, "account": k.public().to_hex(),
                    "balance": v["balance"], "height": v["height"],
                }));
            }
        }
        history.record(json!({"kind": "head", "node": i, "height": top}));
    }
    // Statuses of every transaction the chain or the workload holds, from
    // every node that answers.
    let mut hashes = history
        .invoked
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    hashes.extend(chain_hashes);
    let acked = history
        .acked
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    // Every hash from the node holding the most blocks (a wiped node
    // restored a checkpoint and holds none below it); agreement on the
    // blocks and each node's balances cover the rest. The acknowledged
    // ones from every node.
    let reference = (0..net.nodes.len())
        .max_by_key(|i| blocks_read[*i])
        .unwrap_or(0);
    history.record(json!({"kind": "reference", "node": reference}));
    for (i, n) in net.nodes.iter().enumerate() {
        let Ok(c) = rpc_client(&n.rpc_url, Duration::from_secs(20)) else {
            continue;
        };
        let these = if i == reference { &hashes } else { &acked };
        for h in these {
            if let Ok(v) = call(&c, "ledger_getTransaction", vec![json!(h)]).await {
                history.record(json!({
                    "kind": "status", "node": i, "hash": h, "status": v["status"],
                    "height": v["height"], "receipt": v["receipt"]["status"],
                }));
            }
        }
    }
    for (i, n) in net.nodes.iter().enumerate() {
        let log = std::fs::read_to_string(&n.log).unwrap_or_default();
        for line in log.lines().filter(|l| l.contains("equivocation evidence")) {
            let clean = strip_ansi(line);
            if let Some(s) = clean
                .split_whitespace()
                .find_map(|w| w.strip_prefix("signer="))
                .and_then(|s| s.parse::<u64>().ok())
            {
                history.record(json!({"kind": "evidence", "node": i, "signer": s}));
            }
        }
        let alarms = log
            .lines()
            .filter(|l| l.contains("another process signs with this validator's key"))
            .count();
        if alarms > 0 {
            history.record(json!({"kind": "own_key_elsewhere", "node": i, "lines": alarms}));
        }
    }
    history.record(json!({
        "kind": "byzantine_nodes",
        "nodes": byzantine.iter().collect::<Vec<_>>(),
        "validator_of": net.nodes.iter().map(|n| n.twin_of.unwrap_or(n.index)).collect::<Vec<_>>(),
    }));
    Ok(())
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut esc = false;
    for ch in s.chars() {
        match (esc, ch) {
            (false, '\u{1b}') => esc = true,
            (true, 'm') => esc = false,
            (true, _) => {}
            (false, c) => out.push(c),
        }
    }
    out
}

/// What the checker found.
#[derive(Debug, Default)]
pub struct Report {
    /// Faults started.
    pub faults: usize,
    /// Client operations (transfers and reads).
    pub operations: usize,
    /// Every violation, in words.
    pub violations: Vec<String>,
    /// Transfers acknowledged as committed.
    pub acknowledged: usize,
    /// Transfers applied on the chain.
    pub applied: usize,
    /// The longest wait for commits to resume after a heal, ms.
    pub slowest_resume_ms: u64,
    /// Applied transfers per second while a Byzantine fault was on, and
    /// while no fault of any kind was.
    pub throughput: (f64, f64),
    /// The seed.
    pub seed: u64,
}

impl Report {
    /// The one summary line.
    pub fn summary(&self) -> String {
        format!(
            "chaos: {} faults, {} operations, {} violations",
            self.faults,
            self.operations,
            self.violations.len()
        )
    }
}

/// Checks a history file.
pub fn check(path: &Path) -> Result<Report> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading history {}", path.display()))?;
    let records: Vec<Value> = text
        .lines()
        .enumerate()
        .map(|(k, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}: line {} is not JSON", path.display(), k + 1))
        })
        .collect::<Result<_>>()?;
    Ok(check_records(&records))
}

/// The checks, on parsed records.
pub fn check_records(records: &[Value]) -> Report {
    let mut r = Report::default();
    fn kind<'a>(records: &'a [Value], k: &'static str) -> impl Iterator<Item = &'a Value> {
        records.iter().filter(move |v| v["kind"] == k)
    }
    let of = |k: &'static str| kind(records, k);
    let Some(start) = of("start").next() else {
        r.violations.push("history has no start record".into());
        return r;
    };
    r.seed = start["seed"].as_u64().unwrap_or(0);
    if of("end").next().is_none() {
        r.violations
            .push("history has no end record: the run did not finish".into());
    }
    let bound = start["resume_bound_ms"].as_u64().unwrap_or(30_000);
    let genesis: BTreeMap<String, u64> = start["balances"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();

    // Operations.
    let invoked: HashMap<String, &Value> = of("invoke")
        .filter_map(|v| Some((v["hash"].as_str()?.to_string(), v)))
        .collect();
    let acked: BTreeSet<String> = of("complete")
        .filter(|v| v["result"] == "committed")
        .filter_map(|v| v["hash"].as_str().map(str::to_string))
        .collect();
    r.operations = of("invoke").count() + of("read").count();
    r.acknowledged = acked.len();
    r.faults = of("fault").filter(|v| v["phase"] == "start").count();

    // Agreement: one block per height across nodes.
    let mut chain: BTreeMap<u64, (String, Vec<String>, u64)> = BTreeMap::new();
    for b in of("block") {
        let (Some(h), Some(id)) = (b["height"].as_u64(), b["id"].as_str()) else {
            continue;
        };
        let txs: Vec<String> = b["txs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str().map(str::to_string))
            .collect();
        let ts = b["timestamp_ms"].as_u64().unwrap_or(0);
        match chain.get(&h) {
            Some((other, _, _)) if other != id => r.violations.push(format!(
                "agreement: node {} has block {id} at height {h}, another node {other}",
                b["node"]
            )),
            Some(_) => {}
            None => {
                chain.insert(h, (id.to_string(), txs, ts));
            }
        }
    }

    let reference = of("reference")
        .next()
        .map_or(json!(0), |v| v["node"].clone());
    // What applied, where: the statuses nodes report.
    let mut applied_at: BTreeMap<String, u64> = BTreeMap::new();
    for s in of("status") {
        let (Some(hash), Some(h)) = (s["hash"].as_str(), s["height"].as_u64()) else {
            continue;
        };
        if s["status"] == "committed" && s["receipt"] == "applied" {
            match applied_at.get(hash) {
                Some(prev) if *prev != h => r.violations.push(format!(
                    "exactly once: {hash} applied at height {prev} on one node and {h} on node {}",
                    s["node"]
                )),
                _ => {
                    applied_at.insert(hash.to_string(), h);
                }
            }
        }
    }
    r.applied = applied_at.len();
    let mut by_hash: HashMap<&str, Vec<&Value>> = HashMap::new();
    for s in of("status") {
        if let Some(h) = s["hash"].as_str() {
            by_hash.entry(h).or_default().push(s);
        }
    }
    for h in &acked {
        if !applied_at.contains_key(h) {
            r.violations
                .push(format!("acknowledged as committed but not applied: {h}"));
        }
        for s in by_hash.get(h.as_str()).into_iter().flatten() {
            // A node that restored a checkpoint past it no longer holds
            // its record; its balances are checked below.
            let gone = s["status"] == "not_retained" || s["status"] == "unknown";
            let reference = s["node"] == reference;
            if (s["status"] != "committed" || s["receipt"] != "applied") && (reference || !gone) {
                r.violations.push(format!(
                    "acknowledged as committed but node {} reports {} / {}",
                    s["node"], s["status"], s["receipt"]
                ));
            }
        }
    }
    for (height, (_, txs, _)) in &chain {
        for t in txs {
            if !invoked.contains_key(t) {
                r.violations.push(format!(
                    "height {height} holds transaction {t}, which no client submitted"
                ));
            }
        }
    }
    for (hash, h) in &applied_at {
        if !chain.get(h).is_some_and(|(_, txs, _)| txs.contains(hash)) && chain.contains_key(h) {
            r.violations.push(format!(
                "{hash} reported applied at height {h}, whose block does not hold it"
            ));
        }
    }

    // Replay: balances from genesis and the applied transfers, in order.
    let mut deltas: BTreeMap<String, Vec<(u64, i128)>> = BTreeMap::new();
    for (hash, h) in &applied_at {
        let Some(inv) = invoked.get(hash) else {
            continue;
        };
        let amount = inv["amount"].as_u64().unwrap_or(0) as i128;
        let (from, to) = (
            inv["from"].as_str().unwrap_or_default().to_string(),
            inv["to"].as_str().unwrap_or_default().to_string(),
        );
        deltas.entry(from).or_default().push((*h, -amount));
        deltas.entry(to).or_default().push((*h, amount));
    }
    let balance_at = |acct: &str, height: u64| -> i128 {
        let g = *genesis.get(acct).unwrap_or(&0) as i128;
        g + deltas.get(acct).map_or(0, |d| {
            d.iter().filter(|(h, _)| *h <= height).map(|(_, x)| x).sum()
        })
    };
    let total: u128 = genesis.values().map(|b| *b as u128).sum();
    let mut reported: BTreeMap<u64, u128> = BTreeMap::new();
    for b in of("balance") {
        let (Some(acct), Some(bal), Some(h)) = (
            b["account"].as_str(),
            b["balance"].as_u64(),
            b["height"].as_u64(),
        ) else {
            continue;
        };
        let want = balance_at(acct, h);
        if want != bal as i128 {
            r.violations.push(format!(
                "node {}: {acct} holds {bal} at height {h}; the committed order gives {want}",
                b["node"]
            ));
        }
        *reported.entry(b["node"].as_u64().unwrap_or(0)).or_default() += bal as u128;
    }
    for (node, sum) in &reported {
        if *sum != total {
            r.violations.push(format!(
                "supply: node {node}'s accounts hold {sum}, genesis gave {total}"
            ));
        }
    }
    for v in of("read") {
        let (Some(acct), Some(bal), Some(h)) = (
            v["account"].as_str(),
            v["balance"].as_u64(),
            v["height"].as_u64(),
        ) else {
            continue;
        };
        let want = balance_at(acct, h);
        if want != bal as i128 {
            r.violations.push(format!(
                "read: node {} answered {bal} for {acct} at height {h}; the committed order gives {want}",
                v["node"]
            ));
        }
    }

    // Evidence names only validators that were made Byzantine.
    let byz = of("byzantine_nodes").next();
    let validator_of: Vec<u64> = byz
        .map(|b| {
            b["validator_of"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_u64)
                .collect()
        })
        .unwrap_or_default();
    let mut culprits: BTreeSet<u64> = byz
        .map(|b| {
            b["nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_u64)
                .map(|n| validator_of.get(n as usize).copied().unwrap_or(n))
                .collect()
        })
        .unwrap_or_default();
    // A twin's key is a culprit too.
    for (n, v) in validator_of.iter().enumerate() {
        if *v != n as u64 {
            culprits.insert(*v);
        }
    }
    for e in of("evidence") {
        let s = e["signer"].as_u64().unwrap_or(u64::MAX);
        if !culprits.contains(&s) {
            r.violations.push(format!(
                "node {} holds evidence against validator {s}, which was never Byzantine",
                e["node"]
            ));
        }
    }

    // P21: a validator never Byzantine holds its key alone.
    for e in of("own_key_elsewhere") {
        let node = e["node"].as_u64().unwrap_or(u64::MAX);
        let v = validator_of.get(node as usize).copied().unwrap_or(node);
        if !culprits.contains(&v) {
            r.violations.push(format!(
                "node {node} found validator {v}'s key used elsewhere, though it was never Byzantine"
            ));
        }
    }

    // Commits resume after every heal.
    for v in of("resumed") {
        match v["ms"].as_u64() {
            Some(ms) => r.slowest_resume_ms = r.slowest_resume_ms.max(ms),
            None => r.violations.push(format!(
                "liveness: commits did not resume within {bound} ms of healing fault {}",
                v["index"]
            )),
        }
    }

    // Throughput with and without a Byzantine node: applied transfers by
    // their block's time, against the fault windows (history times are
    // since the start, whose wall clock the start record holds).
    let wall = start["wall_ms"].as_u64().unwrap_or(0);
    // Faults come one at a time: each window runs from a fault's start to
    // its heal. Byzantine windows are compared with the time no fault of
    // any kind was on.
    let mut windows: Vec<(u64, u64)> = Vec::new();
    let mut faulty: Vec<(u64, u64)> = Vec::new();
    let mut open: Option<(u64, bool)> = None;
    for f in of("fault") {
        if f["phase"] == "start" {
            open = f["t"].as_u64().map(|t| (t, f["fault"] == "byzantine"));
        }
        if f["phase"] == "healed"
            && let Some((o, byz)) = open.take()
        {
            let w = (wall + o, wall + f["t"].as_u64().unwrap_or(o));
            faulty.push(w);
            if byz {
                windows.push(w);
            }
        }
    }
    // The workload's window: from its first submission to its end.
    let from = wall
        + of("invoke")
            .next()
            .and_then(|v| v["t"].as_u64())
            .unwrap_or(0);
    let to = wall
        + of("workload_end")
            .next()
            .and_then(|v| v["t"].as_u64())
            .unwrap_or(0);
    let within = |(a, b): &(u64, u64)| b.min(&to).saturating_sub(*a.max(&from));
    let byz_ms: u64 = windows.iter().map(within).sum();
    let faulty_ms: u64 = faulty.iter().map(within).sum();
    let clean_ms = to.saturating_sub(from).saturating_sub(faulty_ms);
    let (mut in_byz, mut clean) = (0u64, 0u64);
    for h in applied_at.values() {
        let ts = chain.get(h).map_or(0, |(_, _, ts)| *ts);
        if ts < from || ts > to {
            continue;
        }
        if windows.iter().any(|(a, b)| ts >= *a && ts <= *b) {
            in_byz += 1;
        } else if !faulty.iter().any(|(a, b)| ts >= *a && ts <= *b) {
            clean += 1;
        }
    }
    let rate = |n: u64, ms: u64| {
        if ms == 0 {
            0.0
        } else {
            n as f64 * 1000.0 / ms as f64
        }
    };
    r.throughput = (rate(in_byz, byz_ms), rate(clean, clean_ms));
    r
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A small history that passes: two accounts, one transfer applied
    /// at height 2 and acknowledged, one read, two nodes that agree.
    fn clean() -> Vec<Value> {
        let (a, b) = ("aa".to_string(), "bb".to_string());
        vec![
            json!({"kind": "start", "seed": 9, "t": 0, "wall_ms": 1_000,
                   "balances": {a.clone(): 100, b.clone(): 50}, "resume_bound_ms": 30_000}),
            json!({"kind": "invoke", "t": 10, "hash": "h1", "from": a, "to": b, "amount": 7, "nonce": 0}),
            json!({"kind": "complete", "t": 20, "hash": "h1", "result": "committed"}),
            json!({"kind": "fault", "t": 30, "phase": "start", "index": 0, "fault": "byzantine", "node": 1}),
            json!({"kind": "fault", "t": 40, "phase": "healed", "index": 0}),
            json!({"kind": "resumed", "t": 50, "index": 0, "ms": 400}),
            json!({"kind": "read", "t": 55, "node": 0, "account": "aa", "balance": 93, "height": 2}),
            json!({"kind": "read", "t": 56, "node": 0, "account": "aa", "balance": 100, "height": 1}),
            json!({"kind": "workload_end", "t": 60}),
            json!({"kind": "block", "node": 0, "height": 1, "id": "b1", "timestamp_ms": 1_005, "txs": []}),
            json!({"kind": "block", "node": 0, "height": 2, "id": "b2", "timestamp_ms": 1_015, "txs": ["h1"]}),
            json!({"kind": "block", "node": 1, "height": 1, "id": "b1", "timestamp_ms": 1_005, "txs": []}),
            json!({"kind": "block", "node": 1, "height": 2, "id": "b2", "timestamp_ms": 1_015, "txs": ["h1"]}),
            json!({"kind": "balance", "node": 0, "account": "aa", "balance": 93, "height": 2}),
            json!({"kind": "balance", "node": 0, "account": "bb", "balance": 57, "height": 2}),
            json!({"kind": "balance", "node": 1, "account": "aa", "balance": 93, "height": 2}),
            json!({"kind": "balance", "node": 1, "account": "bb", "balance": 57, "height": 2}),
            json!({"kind": "reference", "node": 0}),
            json!({"kind": "status", "node": 0, "hash": "h1", "status": "committed", "height": 2, "receipt": "applied"}),
            json!({"kind": "status", "node": 1, "hash": "h1", "status": "committed", "height": 2, "receipt": "applied"}),
            json!({"kind": "evidence", "node": 0, "signer": 1}),
            json!({"kind": "byzantine_nodes", "nodes": [1], "validator_of": [0, 1]}),
            json!({"kind": "end", "t": 70}),
        ]
    }

    fn violations(records: &[Value]) -> Vec<String> {
        check_records(records).violations
    }

    fn with(mut records: Vec<Value>, f: impl FnOnce(&mut Vec<Value>)) -> Vec<Value> {
        f(&mut records);
        records
    }

    #[test]
    fn throughput_without_faults_leaves_out_every_fault_window() {
        // The workload runs 1010..1060 (wall ms); the Byzantine window is
        // 1030..1040 and the one transfer applies at 1015.
        let r = check_records(&clean());
        assert_eq!(r.throughput, (0.0, 1000.0 / 40.0));
        // A kill over 1012..1018 holds the transfer: nothing is left for
        // the fault-free time, which shrinks by its 6 ms.
        let with_kill = with(clean(), |h| {
            h.insert(3, json!({"kind": "fault", "t": 12, "phase": "start", "index": 9, "fault": "kill", "node": 0}));
            h.insert(
                4,
                json!({"kind": "fault", "t": 18, "phase": "healed", "index": 9}),
            );
        });
        let r = check_records(&with_kill);
        assert_eq!(r.throughput, (0.0, 0.0));
        // Applied inside the Byzantine window instead: counted there.
        let in_byz = with(clean(), |h| {
            for v in h.iter_mut() {
                if v["kind"] == "block" && v["height"] == 2 {
                    v["timestamp_ms"] = json!(1_035);
                }
            }
        });
        let r = check_records(&in_byz);
        assert_eq!(r.throughput, (1000.0 / 10.0, 0.0));
    }

    #[test]
    fn a_clean_history_passes_and_every_planted_flaw_is_a_violation() {
        let r = check_records(&clean());
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!(
            (r.faults, r.operations, r.acknowledged, r.applied),
            (1, 3, 1, 1)
        );
        assert_eq!(r.summary(), "chaos: 1 faults, 3 operations, 0 violations");

        let planted: Vec<(&str, Vec<Value>)> = vec![
            (
                "agreement",
                with(clean(), |h| {
                    h.push(
                        json!({"kind": "block", "node": 1, "height": 2, "id": "other", "txs": []}),
                    );
                }),
            ),
            (
                "acknowledged as committed but not applied",
                with(clean(), |h| {
                    h.retain(|v| v["kind"] != "status");
                }),
            ),
            (
                "no client submitted",
                with(clean(), |h| {
                    h.push(json!({"kind": "block", "node": 0, "height": 3, "id": "b3", "txs": ["forged"]}));
                }),
            ),
            (
                "the committed order gives",
                with(clean(), |h| {
                    h.push(json!({"kind": "balance", "node": 2, "account": "aa", "balance": 100, "height": 2}));
                }),
            ),
            (
                "supply",
                with(clean(), |h| {
                    h.retain(|v| {
                        !(v["kind"] == "balance" && v["node"] == 1 && v["account"] == "bb")
                    });
                    h.push(json!({"kind": "balance", "node": 1, "account": "bb", "balance": 58, "height": 1_000}));
                }),
            ),
            (
                "read: node 0 answered",
                with(clean(), |h| {
                    h.push(json!({"kind": "read", "node": 0, "account": "bb", "balance": 50, "height": 2}));
                }),
            ),
            (
                "never Byzantine",
                with(clean(), |h| {
                    h.push(json!({"kind": "evidence", "node": 1, "signer": 0}));
                }),
            ),
            (
                "key used elsewhere",
                with(clean(), |h| {
                    h.push(json!({"kind": "own_key_elsewhere", "node": 0, "lines": 1}));
                }),
            ),
            (
                "liveness",
                with(clean(), |h| {
                    h.push(json!({"kind": "resumed", "index": 1, "ms": null}));
                }),
            ),
            (
                "exactly once",
                with(clean(), |h| {
                    h.push(json!({"kind": "status", "node": 1, "hash": "h1", "status": "committed", "height": 5, "receipt": "applied"}));
                }),
            ),
            (
                "no end record",
                with(clean(), |h| {
                    h.retain(|v| v["kind"] != "end");
                }),
            ),
        ];
        for (what, history) in planted {
            let v = violations(&history);
            assert!(
                v.iter().any(|x| x.contains(what)),
                "planted `{what}` not reported: {v:?}"
            );
        }
    }

    #[test]
    fn a_schedule_replays_from_its_seed() {
        let faults = [Fault::Kill, Fault::Pause, Fault::Byzantine];
        let a = schedule(5, &faults, 4, Duration::from_secs(120));
        let b = schedule(5, &faults, 4, Duration::from_secs(120));
        let c = schedule(6, &faults, 4, Duration::from_secs(120));
        let key = |s: &[Planned]| {
            s.iter()
                .map(|p| (p.fault, p.node, p.gap_ms, p.hold_ms, p.mode))
                .collect::<Vec<_>>()
        };
        assert_eq!(key(&a), key(&b));
        assert_ne!(key(&a), key(&c));
        assert!(a.len() >= 5, "two minutes hold several faults: {}", a.len());
        let long = schedule(11, &[Fault::Wipe], 4, Duration::from_secs(1800));
        assert!(long.iter().all(|p| p.node != ARCHIVE_NODE));
        assert!(long.iter().any(|p| p.node == 3));
        assert!(parse_faults("kill,bogus").is_err());
        assert_eq!(
            parse_faults("kill,kill,wipe").unwrap(),
            vec![Fault::Kill, Fault::Wipe]
        );
    }
}
