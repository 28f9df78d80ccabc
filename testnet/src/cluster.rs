//! `up`, `status`, `down` and the perturbations: creating a testnet's
//! files, starting and signalling its processes, and reading their state.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;
use phalanx_crypto::{ChainId, KeyPair};
use phalanx_ledger::{Genesis, GenesisAccount, Params};
use serde_json::{Value, json};

use crate::client::{call_url, http_get};
use crate::layout::{
    ACCOUNTS_FILE, AccountsFile, NodeInfo, Process, TESTNET_FILE, Testnet, account_key, is_ours,
    log_tail, spawn_detached, stop,
};
use crate::netns::NetnsInfo;

/// How long `up` and `restart` wait for nodes to serve and commit.
pub const START_PATIENCE: Duration = Duration::from_secs(180);
/// How long a node has to exit after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(20);
/// Balance of each demo account.
pub const DEMO_BALANCE: u64 = 1_000_000_000_000;
/// Most validators `up` creates.
pub const MAX_VALIDATORS: usize = 64;
/// Most demo accounts `up` creates.
pub const MAX_ACCOUNTS: usize = 1_000_000;
/// Demo accounts also written as key files for the wallet.
const KEY_FILES: usize = 4;

/// What `up` is asked for.
pub struct UpOptions {
    /// Validators.
    pub validators: usize,
    /// Funded demo accounts.
    pub accounts: usize,
    /// Blocks between checkpoints.
    pub checkpoint_interval: u64,
    /// The `phalanx` binary.
    pub phalanx: PathBuf,
    /// Async runtime threads per node (0: this machine's cores shared out
    /// among the validators, at least one each).
    pub node_threads: usize,
    /// Attack modes by validator (`I=mode[,mode]`); the binary must be
    /// built with the `byzantine` feature.
    pub byzantine: Vec<(usize, String)>,
    /// Validators that get a twin: a second process with the same key.
    pub twins: Vec<usize>,
    /// Full nodes beside the validators.
    pub full_nodes: usize,
    /// One network namespace per node (root only), for partitions and
    /// netem.
    pub netns: bool,
    /// `retained_blocks` in every node's config, when set.
    pub retained_blocks: Option<u64>,
    /// Clock offsets by node (`I=MS`): `clock_offset_ms` in its config.
    pub clock_offsets: Vec<(usize, i64)>,
    /// A bug planted in every node (`byzantine` builds), to show that
    /// `chaos` catches it.
    pub planted_bug: Option<String>,
}

/// The nodes `n` dials (indices into `nodes`), with `twin` = (validator,
/// twin's node index) when there is one.
///
/// A validator sends to one connection per peer key, so a twin that every
/// validator reached only by dialling would never hear anything. The
/// peers are split instead, as two machines holding one key would split a
/// network: the first half of the other validators know the twin's address
/// and the rest the original's, each copy dials its half, and the first
/// of them is dialled by both copies, so it hears both.
fn peer_list(nodes: &[NodeInfo], n: &NodeInfo, twin: Option<(usize, usize)>) -> Vec<usize> {
    let validators: Vec<usize> = nodes
        .iter()
        .filter(|p| p.is_validator())
        .map(|p| p.index)
        .collect();
    if n.full_node {
        return validators;
    }
    let Some((of, twin_node)) = twin else {
        return validators.into_iter().filter(|p| *p != n.index).collect();
    };
    let others: Vec<usize> = validators.iter().copied().filter(|p| *p != of).collect();
    let (twin_side, original_side) = others.split_at(others.len().div_ceil(2));
    if n.index == twin_node {
        return twin_side.to_vec();
    }
    if n.index == of {
        return std::iter::once(others[0])
            .chain(original_side.iter().copied())
            .collect();
    }
    validators
        .into_iter()
        .filter(|p| *p != n.index)
        .map(|p| {
            if p == of && twin_side.contains(&n.index) {
                twin_node
            } else {
                p
            }
        })
        .collect()
}

/// Parses `I=MS` (a node and a clock offset in ms, may be negative).
pub fn parse_offset(s: &str) -> Result<(usize, i64)> {
    let (i, ms) = s
        .split_once('=')
        .with_context(|| format!("--clock-offset-ms {s:?}: expected I=MS"))?;
    Ok((
        i.trim()
            .parse()
            .with_context(|| format!("--clock-offset-ms {s:?}: {i:?} is not a node index"))?,
        ms.trim()
            .parse()
            .with_context(|| format!("--clock-offset-ms {s:?}: {ms:?} is not a number of ms"))?,
    ))
}

/// Parses `I=mode[,mode]`.
pub fn parse_byzantine(s: &str) -> Result<(usize, String)> {
    let (i, modes) = s
        .split_once('=')
        .with_context(|| format!("--byzantine {s:?}: expected I=mode[,mode]"))?;
    let i = i
        .trim()
        .parse()
        .with_context(|| format!("--byzantine {s:?}: {i:?} is not a validator index"))?;
    if modes.trim().is_empty() {
        bail!("--byzantine {s:?}: no mode given");
    }
    Ok((i, modes.trim().to_string()))
}

/// Fails with a clear message unless `phalanx` was built with attack
/// modes.
fn check_byzantine_build(phalanx: &Path) -> Result<()> {
    let out = std::process::Command::new(phalanx)
        .args(["start", "--help"])
        .output()
        .with_context(|| format!("running {}", phalanx.display()))?;
    if !String::from_utf8_lossy(&out.stdout).contains("--byzantine") {
        bail!(
            "{} has no attack modes: they exist only in a test build with the `byzantine` feature \
             (cargo build -p phalanx-node --features byzantine; then pass --phalanx target/debug/phalanx)",
            phalanx.display()
        );
    }
    Ok(())
}

/// A local port for a listener (see [`phalanx_testnet::ports`]).
pub fn free_port() -> Result<u16> {
    phalanx_testnet::ports::free_port().context("no free local port")
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The `phalanx` binary: `--phalanx`, else the one next to this tool, else
/// `phalanx` on the PATH.
pub fn find_phalanx(given: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = given {
        if !p.is_file() {
            bail!("--phalanx {}: no such file", p.display());
        }
        return Ok(std::fs::canonicalize(p)?);
    }
    if let Some(dir) = std::env::current_exe()?.parent() {
        let beside = dir.join("phalanx");
        if beside.is_file() {
            return Ok(beside);
        }
    }
    Ok(PathBuf::from("phalanx"))
}

/// Creates the testnet's files and starts its nodes; returns once every
/// node serves RPC and has committed.
pub async fn up(dir: &Path, opts: &UpOptions) -> Result<Testnet> {
    if !(1..=MAX_VALIDATORS).contains(&opts.validators) {
        bail!("--validators must be between 1 and {MAX_VALIDATORS}");
    }
    if !(1..=MAX_ACCOUNTS).contains(&opts.accounts) {
        bail!("--accounts must be between 1 and {MAX_ACCOUNTS}");
    }
    if dir.join(TESTNET_FILE).exists() {
        bail!(
            "{} already holds a testnet; stop it with `phalanx-testnet down --dir {}` and remove the directory, or pick another --dir",
            dir.display(),
            dir.display()
        );
    }
    for (i, _) in &opts.byzantine {
        if *i >= opts.validators {
            bail!(
                "--byzantine {i}=…: there are only {} validators",
                opts.validators
            );
        }
    }
    if opts.twins.len() > 1 {
        bail!("--twin: one twin per testnet");
    }
    for i in &opts.twins {
        if *i >= opts.validators {
            bail!("--twin {i}: there are only {} validators", opts.validators);
        }
    }
    if !opts.byzantine.is_empty() || opts.planted_bug.is_some() {
        check_byzantine_build(&opts.phalanx)?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = std::fs::canonicalize(dir)?;
    let netns = if opts.netns {
        Some(NetnsInfo::create(
            &dir,
            opts.validators + opts.twins.len() + opts.full_nodes,
        )?)
    } else {
        None
    };
    let ip_of = |i: usize| {
        netns
            .as_ref()
            .map_or(std::net::Ipv4Addr::LOCALHOST, |n| n.node_ip(i))
    };
    let made = make_nodes(&dir, opts, &ip_of);
    let nodes = match made {
        Ok(n) => n,
        Err(e) => {
            if let Some(n) = &netns {
                n.destroy();
            }
            return Err(e);
        }
    };
    let mut net = finish_up(&dir, opts, nodes, netns.clone());
    if let (Err(_), Some(n)) = (&net, &netns) {
        n.destroy();
    }
    if let Ok(net) = &mut net {
        for i in 0..net.nodes.len() {
            start_node(net, i)?;
            net.save(&dir)?;
        }
        wait_committing(net, &(0..net.nodes.len()).collect::<Vec<_>>(), 2).await?;
    }
    net
}

/// Homes, keys and ports for every node (validators, then the twin).
fn make_nodes(
    dir: &Path,
    opts: &UpOptions,
    ip_of: &dyn Fn(usize) -> std::net::Ipv4Addr,
) -> Result<Vec<NodeInfo>> {
    // One home per node: `phalanx init` on free ports at the node's
    // address.
    let home_for = |index: usize, name: String| -> Result<NodeInfo> {
        let home = dir.join(name);
        let (p2p, rpc, metrics) = (free_port()?, free_port()?, free_port()?);
        let ip = ip_of(index);
        let key = phalanx_testnet::init::init_home_at(
            &opts.phalanx,
            &home,
            ip,
            [p2p, rpc, metrics],
            "../genesis.json",
        )?;
        let info = NodeInfo {
            index,
            key,
            log: home.join("node.log"),
            home,
            rpc_url: format!("http://{ip}:{rpc}"),
            ws_url: format!("ws://{ip}:{rpc}"),
            metrics_url: format!("http://{ip}:{metrics}/metrics"),
            p2p_addr: format!("/ip4/{ip}/tcp/{p2p}"),
            pid: None,
            byzantine: None,
            twin_of: None,
            full_node: false,
        };
        Ok(info)
    };
    let mut nodes = Vec::new();
    for i in 0..opts.validators {
        let mut n = home_for(i, format!("node-{i}"))?;
        n.byzantine = opts
            .byzantine
            .iter()
            .find(|(j, _)| *j == i)
            .map(|(_, m)| m.clone());
        nodes.push(n);
    }
    // Twins: a home of their own holding the twinned validator's key.
    for &of in &opts.twins {
        let index = nodes.len();
        let mut n = home_for(index, format!("node-{index}-twin-of-{of}"))?;
        std::fs::copy(
            nodes[of].home.join("validator.key"),
            n.home.join("validator.key"),
        )
        .context("copying the twinned key")?;
        n.key = nodes[of].key.clone();
        n.twin_of = Some(of);
        nodes.push(n);
    }
    for _ in 0..opts.full_nodes {
        let index = nodes.len();
        let mut n = home_for(index, format!("node-{index}-full"))?;
        n.full_node = true;
        nodes.push(n);
    }
    Ok(nodes)
}

/// Configs, demo accounts and genesis for `nodes`: the testnet, not yet
/// started.
fn finish_up(
    dir: &Path,
    opts: &UpOptions,
    nodes: Vec<NodeInfo>,
    netns: Option<NetnsInfo>,
) -> Result<Testnet> {
    let threads = match opts.node_threads {
        0 => {
            let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
            (cores / opts.validators).max(1)
        }
        t => t,
    };
    let twin = nodes.iter().find_map(|n| n.twin_of.map(|of| (of, n.index)));
    for n in &nodes {
        let peers = peer_list(&nodes, n, twin)
            .into_iter()
            .map(|p| {
                format!(
                    "\n[[peers]]\nkey = \"{}\"\naddr = \"{}\"\n",
                    nodes[p].key, nodes[p].p2p_addr
                )
            })
            .collect::<String>();
        let cfg = n.home.join("config.toml");
        let text = std::fs::read_to_string(&cfg)?;
        if !text.contains("\nruntime_threads = 0\n") {
            bail!("{}: no `runtime_threads = 0` line to set", cfg.display());
        }
        let mut text = text.replace(
            "\nruntime_threads = 0\n",
            &format!("\nruntime_threads = {threads}\n"),
        );
        if let Some((_, ms)) = opts.clock_offsets.iter().find(|(i, _)| *i == n.index) {
            if !text.contains("\nclock_offset_ms = 0\n") {
                bail!("{}: no `clock_offset_ms = 0` line to set", cfg.display());
            }
            text = text.replace(
                "\nclock_offset_ms = 0\n",
                &format!("\nclock_offset_ms = {ms}\n"),
            );
        }
        if n.full_node {
            let forward: Vec<String> = nodes
                .iter()
                .filter(|p| p.is_validator())
                .map(|p| format!("\"{}\"", p.rpc_url))
                .collect();
            for (from, to) in [
                ("\nfull_node = false\n", "\nfull_node = true\n".to_string()),
                (
                    "\nforward_rpc = []\n",
                    format!("\nforward_rpc = [{}]\n", forward.join(", ")),
                ),
            ] {
                if !text.contains(from) {
                    bail!("{}: no `{}` line to set", cfg.display(), from.trim());
                }
                text = text.replace(from, &to);
            }
        }
        if let Some(r) = opts.retained_blocks {
            text = text
                .lines()
                .map(|l| {
                    if l.starts_with("retained_blocks = ") {
                        format!("retained_blocks = {r}")
                    } else {
                        l.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n")
                + "\n";
        }
        text.push_str(&peers);
        std::fs::write(&cfg, text)?;
    }

    // Demo accounts: one random seed, every key derived from it.
    let mut master = [0u8; 32];
    getrandom::fill(&mut master).map_err(|e| anyhow::anyhow!("random seed: {e}"))?;
    std::fs::create_dir_all(dir.join("accounts"))?;
    std::fs::write(
        dir.join(ACCOUNTS_FILE),
        serde_json::to_string_pretty(&AccountsFile {
            seed: hex::encode(master),
            count: opts.accounts,
        })?,
    )?;
    let keys: Vec<KeyPair> = (0..opts.accounts)
        .map(|i| account_key(&master, i))
        .collect();
    for (i, k) in keys.iter().take(KEY_FILES).enumerate() {
        k.save(&dir.join(format!("accounts/account-{i}.key")))
            .map_err(|e| anyhow::anyhow!("writing account key: {e}"))?;
    }
    let chain_id = "phalanx-testnet";
    let genesis = Genesis {
        chain_id: ChainId::new(chain_id).map_err(|e| anyhow::anyhow!("{e}"))?,
        genesis_time_ms: now_ms(),
        validators: nodes
            .iter()
            .filter(|n| n.is_validator())
            .map(|n| phalanx_crypto::PublicKey::from_hex(&n.key))
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("validator key: {e}"))?,
        accounts: keys
            .iter()
            .map(|k| GenesisAccount {
                address: k.public(),
                balance: DEMO_BALANCE,
            })
            .collect(),
        params: Params {
            checkpoint_interval: opts.checkpoint_interval,
            ..Params::default()
        },
    };
    genesis.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let genesis_path = dir.join("genesis.json");
    std::fs::write(&genesis_path, serde_json::to_string_pretty(&genesis)?)?;

    let net = Testnet {
        chain_id: chain_id.into(),
        phalanx: opts.phalanx.clone(),
        genesis: genesis_path,
        nodes,
        accounts: opts.accounts,
        prometheus: None,
        planted_bug: opts.planted_bug.clone(),
        netns,
    };
    net.save(dir)?;
    Ok(net)
}

fn start_node(net: &mut Testnet, i: usize) -> Result<()> {
    let n = &net.nodes[i];
    let home = n.home.to_string_lossy().to_string();
    let phalanx = net.phalanx.to_string_lossy().to_string();
    let ns = net.netns.as_ref().map(|x| x.ns(i));
    let mut args: Vec<&str> = Vec::new();
    // In its namespace: `ip netns exec` execs the node in place, so the
    // pid recorded is the node's.
    if let Some(ns) = &ns {
        args.extend(["netns", "exec", ns, &phalanx]);
    }
    args.extend(["start", "--home", &home]);
    if let Some(m) = &n.byzantine {
        args.extend(["--byzantine", m]);
    }
    if let Some(b) = &net.planted_bug {
        args.extend(["--planted-bug", b]);
    }
    let program = if ns.is_some() {
        Path::new("ip")
    } else {
        net.phalanx.as_path()
    };
    let pid = spawn_detached(program, &args, &n.log, &n.home)?;
    if ns.is_some() {
        // `ip netns exec` becomes the node by exec; until it has, the
        // process shows `ip`'s command line (and, for a moment during the
        // exec, none), which must not read as a node that exited.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if cmd.starts_with(phalanx.as_bytes()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    net.nodes[i].pid = Some(pid);
    Ok(())
}

/// Waits until each of `which` serves RPC and has committed `min_new`
/// blocks past where it was first seen; fails early if one exits.
pub async fn wait_committing(net: &Testnet, which: &[usize], min_new: u64) -> Result<()> {
    let deadline = Instant::now() + START_PATIENCE;
    let mut first: Vec<Option<u64>> = vec![None; net.nodes.len()];
    loop {
        let mut done = true;
        for &i in which {
            let n = &net.nodes[i];
            if let Some(pid) = n.pid
                && !is_ours(pid, &n.home)
            {
                bail!(
                    "node {i} exited; the end of {}:\n{}",
                    n.log.display(),
                    log_tail(&n.log, 20)
                );
            }
            let h = call_url(&n.rpc_url, "ledger_status", vec![])
                .await
                .ok()
                .and_then(|v| v["height"].as_u64());
            match (h, first[i]) {
                (Some(h), None) => {
                    first[i] = Some(h);
                    done = false;
                }
                (Some(h), Some(f)) if h >= f + min_new => {}
                _ => done = false,
            }
        }
        if done {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "nodes {which:?} did not serve RPC and commit within {} s; see their node.log files",
                START_PATIENCE.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One node's state as `status` shows it.
pub async fn node_status(n: &NodeInfo) -> Value {
    let process = n.process();
    let mut v = json!({
        "index": n.index,
        "pid": n.pid,
        "process": match process {
            Process::Running => "running",
            Process::Paused => "paused",
            Process::Stopped => "stopped",
        },
        "rpc_url": n.rpc_url,
        "metrics_url": n.metrics_url,
        "p2p_addr": n.p2p_addr,
        "key": n.key,
    });
    if process != Process::Running {
        v["health"] = json!("down");
        return v;
    }
    match call_url(&n.rpc_url, "ledger_status", vec![]).await {
        Ok(s) => {
            for k in ["height", "view", "leader", "peers", "syncing"] {
                v[k] = s[k].clone();
            }
            v["mempool_transactions"] = s["mempool"]["transactions"].clone();
            let ready = call_url(&n.rpc_url, "health_ready", vec![]).await;
            v["health"] = match ready {
                Ok(_) => json!("ready"),
                Err(e) => json!(format!("not ready: {e}")),
            };
        }
        Err(e) => {
            // RPC starts after a state sync: show the sync's progress from
            // the metrics, which are served from the start.
            v["health"] = match state_sync_progress(&n.metrics_url).await {
                Some((done, total, bytes)) => {
                    v["state_sync"] =
                        json!({"buckets_done": done, "buckets_total": total, "bytes": bytes});
                    json!(format!(
                        "state sync: {done}/{total} buckets, {:.1} MiB",
                        bytes as f64 / (1024.0 * 1024.0)
                    ))
                }
                None => json!(format!("unreachable: {e}")),
            };
        }
    }
    v
}

/// A running state sync's buckets done and total and bytes, from a node's
/// metrics (`None` when no sync is running or the metrics do not answer).
async fn state_sync_progress(metrics_url: &str) -> Option<(u64, u64, u64)> {
    let url = metrics_url.to_string();
    let (code, text) = tokio::task::spawn_blocking(move || {
        crate::client::http_get(&url, Duration::from_secs(2)).ok()
    })
    .await
    .ok()??;
    if code != 200 {
        return None;
    }
    let value = |name: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
    };
    let total = value("phalanx_state_sync_buckets")?;
    let remaining = value("phalanx_state_sync_buckets_remaining")?;
    let bytes = value("phalanx_state_sync_bytes_total").unwrap_or(0);
    (total > 0).then(|| (total.saturating_sub(remaining), total, bytes))
}

/// Every node's status.
pub async fn status(net: &Testnet) -> Vec<Value> {
    let mut out = Vec::new();
    for n in &net.nodes {
        out.push(node_status(n).await);
    }
    out
}

/// Stops every process the testnet started (and nothing else).
pub fn down(dir: &Path, net: &mut Testnet) -> Result<Vec<String>> {
    let mut report = Vec::new();
    for n in &mut net.nodes {
        if let Some(pid) = n.pid.take() {
            if stop(pid, &n.home, STOP_GRACE)? {
                report.push(format!("node {} (pid {pid}) stopped", n.index));
            } else {
                report.push(format!("node {} was not running", n.index));
            }
        }
    }
    if let Some(p) = &mut net.prometheus
        && let Some(pid) = p.pid.take()
        && stop(pid, &p.dir, STOP_GRACE)?
    {
        report.push(format!("prometheus (pid {pid}) stopped"));
    }
    if let Some(ns) = &net.netns {
        ns.destroy();
        report.push(format!("network namespaces {}-* removed", ns.prefix));
    }
    net.save(dir)?;
    Ok(report)
}

/// A perturbation of one node.
#[derive(Clone, Copy, Debug)]
pub enum Perturb {
    /// SIGKILL.
    Kill,
    /// Stop (SIGTERM) if running, then start again and wait for commits.
    Restart,
    /// SIGSTOP.
    Pause,
    /// SIGCONT.
    Resume,
}

/// Applies `p` to node `i`.
pub async fn perturb(dir: &Path, net: &mut Testnet, i: usize, p: Perturb) -> Result<String> {
    let n = net.node(i)?.clone();
    let pid = n.pid.filter(|pid| is_ours(*pid, &n.home));
    let sig = |s: Signal| -> Result<()> {
        let Some(pid) = pid else {
            bail!("node {i} is not running");
        };
        crate::layout::signal(pid, &n.home, s)?;
        Ok(())
    };
    let msg = match p {
        Perturb::Kill => {
            sig(Signal::SIGKILL)?;
            if let Some(pid) = pid {
                crate::layout::wait_gone(pid, &n.home, STOP_GRACE);
            }
            net.nodes[i].pid = None;
            format!("node {i} killed")
        }
        Perturb::Pause => {
            sig(Signal::SIGSTOP)?;
            format!("node {i} paused")
        }
        Perturb::Resume => {
            sig(Signal::SIGCONT)?;
            format!("node {i} resumed")
        }
        Perturb::Restart => {
            if let Some(pid) = pid {
                stop(pid, &n.home, STOP_GRACE)?;
            }
            start_node(net, i)?;
            net.save(dir)?;
            wait_committing(net, &[i], 1).await?;
            format!(
                "node {i} restarted (pid {})",
                net.nodes[i].pid.unwrap_or_default()
            )
        }
    };
    net.save(dir)?;
    Ok(msg)
}

/// Human table of `status` rows.
pub fn status_table(rows: &[Value]) -> String {
    let mut out = format!(
        "{:<5} {:<8} {:<8} {:>8} {:>7} {:>6} {:>5} {:>8}  {}\n",
        "node", "pid", "process", "height", "view", "leader", "peers", "mempool", "health"
    );
    let s = |v: &Value| match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    for r in rows {
        out.push_str(&format!(
            "{:<5} {:<8} {:<8} {:>8} {:>7} {:>6} {:>5} {:>8}  {}\n",
            s(&r["index"]),
            s(&r["pid"]),
            s(&r["process"]),
            s(&r["height"]),
            s(&r["view"]),
            s(&r["leader"]),
            s(&r["peers"]),
            s(&r["mempool_transactions"]),
            s(&r["health"]),
        ));
    }
    out
}

/// Human table of where each node listens.
pub fn endpoints_table(net: &Testnet) -> String {
    let mut out = format!(
        "{:<5} {:<8} {:<24} {:<38} {:<26} {}\n",
        "node", "pid", "rpc", "metrics", "p2p", "key"
    );
    for n in &net.nodes {
        out.push_str(&format!(
            "{:<5} {:<8} {:<24} {:<38} {:<26} {}\n",
            n.index,
            n.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            n.rpc_url,
            n.metrics_url,
            n.p2p_addr,
            n.key
        ));
    }
    out
}

/// Whether `url` answers `GET` with 200 within `timeout`.
pub fn http_ok(url: &str, timeout: Duration) -> bool {
    matches!(http_get(url, timeout), Ok((200, _)))
}
