//! `bench`: an open-loop load of signed transfers over JSON-RPC.
//!
//! Every transfer is signed before the clock starts, so signing costs the
//! cluster nothing during the run. Transfer `k` is due at `k / rate`
//! seconds and goes out in a JSON-RPC batch at the first tick after that,
//! however the cluster is doing (open loop); its latency is measured from
//! when it was due, not when it was sent, so a stalled sender cannot hide
//! a stalled cluster. Each demo account's transfers go to one node, in
//! nonce order. Commits are watched on every node through
//! `ledger_subscribeBlocks` with receipts; at the end every acknowledged
//! transfer must be committed on every node.
//!
//! The bench runs against whichever nodes are up: a node whose process is
//! gone or frozen (`kill`, `pause`) gets no load and is not watched, so a
//! user can measure the cluster with a validator down. The report names
//! the nodes left out; per-node figures (`missing_per_node`) follow the
//! order of `nodes_up`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use jsonrpsee_core::client::{ClientT, SubscriptionClientT};
use jsonrpsee_core::params::{ArrayParams, BatchRequestBuilder};
use phalanx_crypto::{ChainId, Digest, KeyPair};
use phalanx_ledger::{Leg, Transfer};
use serde_json::{Value, json};

use crate::client::{MAX_RESPONSE_BYTES, rpc_client};
use crate::layout::{Process, Testnet, load_accounts, process_cpu_seconds};

/// Calls per JSON-RPC batch (the node's bound), for lookups.
pub const BATCH: usize = 64;
/// Transfers per `ledger_submitTransactions` call (well inside the node's
/// bound and its request size limit).
pub const SUBMIT_CHUNK: usize = 256;
/// Batches in flight before the sender waits (it then falls behind
/// schedule, which the latencies show).
pub const MAX_IN_FLIGHT_BATCHES: usize = 512;
/// How often the sender wakes up.
const TICK: Duration = Duration::from_millis(5);
/// Most transfers one run signs.
pub const MAX_TRANSFERS: u64 = 5_000_000;
/// Block notices buffered per subscription.
const SUBSCRIPTION_BUFFER: usize = 65_536;

/// What to run.
pub struct BenchOptions {
    /// How long to offer load.
    pub duration: Duration,
    /// Transfers per second offered.
    pub rate: u64,
    /// How long to wait after the load for every acknowledged transfer to
    /// commit everywhere.
    pub drain: Duration,
    /// Show a progress bar.
    pub progress: bool,
}

/// The fields of a `ledger_subscribeBlocks` notice the bench reads, parsed
/// straight into place rather than through a JSON tree per notice: at
/// 10,000 transfers a second every node sends every receipt, and the bench
/// shares the machine with the validators.
#[derive(serde::Deserialize)]
struct BlockNotice {
    /// Set on the last notice of a subscriber that fell behind.
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    height: u64,
    #[serde(default)]
    receipts: Vec<NoticeReceipt>,
}

#[derive(serde::Deserialize)]
struct NoticeReceipt {
    hash: String,
    status: String,
}

/// Per-transfer state shared by the tasks. Commit times are microseconds
/// since the run's start, plus one (zero means "not yet").
struct Track {
    hashes: HashMap<Digest, u32>,
    acked: Vec<AtomicBool>,
    /// Commit time per node per transfer.
    seen: Vec<Vec<AtomicU64>>,
    /// Receipt status was `applied` (on the node it was submitted to).
    applied: Vec<AtomicBool>,
    node_of: Vec<u8>,
    committed_on_submit: AtomicUsize,
    rejected: Mutex<BTreeMap<String, u64>>,
    lagged: Vec<AtomicBool>,
    /// Blocks the first live node committed while the load ran, and the
    /// receipts they carried (for blocks per second and their size).
    blocks: AtomicU64,
    block_receipts: AtomicU64,
    /// Set once the last transfer has been sent: blocks after it are not
    /// counted.
    sending_done: AtomicBool,
}

fn micros_since(start: Instant) -> u64 {
    start.elapsed().as_micros() as u64 + 1
}

fn cpu_seconds() -> f64 {
    use nix::sys::resource::{UsageWho, getrusage};
    getrusage(UsageWho::RUSAGE_SELF)
        .map(|u| {
            let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
            t(u.user_time()) + t(u.system_time())
        })
        .unwrap_or(0.0)
}

/// Signs `count` transfers round-robin over `keys`, starting at each
/// account's next nonce; returns (hex, hash, account) per transfer.
fn sign_all(
    chain: &ChainId,
    keys: &[KeyPair],
    nonces: &[u64],
    count: u64,
) -> Vec<(String, Digest, usize)> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let per = (count as usize).div_ceil(threads).max(1);
    let a = keys.len();
    let mut out: Vec<(String, Digest, usize)> = Vec::with_capacity(count as usize);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let lo = (t * per).min(count as usize);
                let hi = ((t + 1) * per).min(count as usize);
                s.spawn(move || {
                    (lo..hi)
                        .map(|k| {
                            let acct = k % a;
                            let tx = Transfer {
                                chain_id: chain.clone(),
                                sender: keys[acct].public(),
                                nonce: nonces[acct] + (k / a) as u64,
                                legs: vec![Leg {
                                    to: keys[(acct + 1) % a].public(),
                                    amount: 1,
                                }],
                            }
                            .sign(&keys[acct]);
                            (hex::encode(tx.encode()), tx.hash(), acct)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            // A signing thread cannot fail short of a bug; re-raise it.
            match h.join() {
                Ok(v) => out.extend(v),
                Err(p) => std::panic::resume_unwind(p),
            }
        }
    });
    out
}

async fn fetch_nonces(url: &str, keys: &[KeyPair]) -> Result<Vec<u64>> {
    let client = rpc_client(url, Duration::from_secs(60))?;
    let mut nonces = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(BATCH) {
        let mut b = BatchRequestBuilder::new();
        for k in chunk {
            let mut p = ArrayParams::new();
            p.insert(k.public().to_hex())?;
            b.insert("ledger_getAccount", p)?;
        }
        let resp = client
            .batch_request::<Value>(b)
            .await
            .context("ledger_getAccount")?;
        for r in resp {
            let v = r.map_err(|e| anyhow::anyhow!("ledger_getAccount: {e}"))?;
            nonces.push(v["nonce"].as_u64().context("account without nonce")?);
        }
    }
    Ok(nonces)
}

/// Runs the benchmark against the testnet in `dir`; returns the report.
pub async fn run(dir: &Path, opts: &BenchOptions) -> Result<Value> {
    let net = Testnet::load(dir)?;
    if opts.rate == 0 || opts.duration.is_zero() {
        bail!("--rate and --duration must be positive");
    }
    let live: Vec<usize> = (0..net.nodes.len())
        .filter(|&i| net.nodes[i].process() == Process::Running)
        .collect();
    if live.is_empty() {
        bail!(
            "no node of the testnet in {} is running (start it with `phalanx-testnet up` or `restart`)",
            dir.display()
        );
    }
    let down: Vec<usize> = (0..net.nodes.len()).filter(|i| !live.contains(i)).collect();
    let count = (opts.rate as f64 * opts.duration.as_secs_f64()).ceil() as u64;
    if count > MAX_TRANSFERS {
        bail!("{count} transfers requested; at most {MAX_TRANSFERS} per run");
    }
    let keys = load_accounts(dir)?;
    // Tracking is indexed by position in `live`, not by node index.
    let nodes = live.len();
    let chain = ChainId::new(&net.chain_id).map_err(|e| anyhow::anyhow!("chain id: {e}"))?;
    let nonces = fetch_nonces(&net.nodes[live[0]].rpc_url, &keys).await?;

    let sign_started = Instant::now();
    let cpu0 = cpu_seconds();
    let txs = sign_all(&chain, &keys, &nonces, count);
    let sign_secs = sign_started.elapsed().as_secs_f64();
    let sign_cpu = cpu_seconds() - cpu0;

    let track = Arc::new(Track {
        hashes: txs
            .iter()
            .enumerate()
            .map(|(i, t)| (t.1, i as u32))
            .collect(),
        acked: (0..count).map(|_| AtomicBool::new(false)).collect(),
        seen: (0..nodes)
            .map(|_| (0..count).map(|_| AtomicU64::new(0)).collect())
            .collect(),
        applied: (0..count).map(|_| AtomicBool::new(false)).collect(),
        node_of: txs.iter().map(|t| (t.2 % nodes) as u8).collect(),
        committed_on_submit: AtomicUsize::new(0),
        rejected: Mutex::new(BTreeMap::new()),
        lagged: (0..nodes).map(|_| AtomicBool::new(false)).collect(),
        blocks: AtomicU64::new(0),
        block_receipts: AtomicU64::new(0),
        sending_done: AtomicBool::new(false),
    });

    // Watch every node's commits before the first transfer goes out.
    let start = Instant::now();
    let mut watchers = Vec::new();
    for (ni, &node) in live.iter().enumerate() {
        let n = &net.nodes[node];
        let ws = jsonrpsee_ws_client::WsClientBuilder::default()
            .max_response_size(MAX_RESPONSE_BYTES)
            .max_buffer_capacity_per_subscription(SUBSCRIPTION_BUFFER)
            .build(&n.ws_url)
            .await
            .with_context(|| format!("WebSocket to node {node}"))?;
        let mut p = ArrayParams::new();
        p.insert(true)?;
        let mut sub = ws
            .subscribe::<BlockNotice, _>("ledger_subscribeBlocks", p, "ledger_unsubscribeBlocks")
            .await
            .with_context(|| format!("subscribing to node {node}'s blocks"))?;
        let track = track.clone();
        watchers.push(tokio::spawn(async move {
            let _ws = ws;
            let mut first_height = None;
            while let Some(Ok(notice)) = sub.next().await {
                if notice.error.is_some() {
                    track.lagged[ni].store(true, Ordering::Relaxed);
                    return;
                }
                let now = micros_since(start);
                // Blocks are counted on the first live node from the first
                // notice on, while the load is offered.
                if ni == 0 && !track.sending_done.load(Ordering::Relaxed) {
                    if first_height.is_some_and(|h| notice.height > h) {
                        track.blocks.fetch_add(1, Ordering::Relaxed);
                        track
                            .block_receipts
                            .fetch_add(notice.receipts.len() as u64, Ordering::Relaxed);
                    }
                    first_height.get_or_insert(notice.height);
                }
                for r in &notice.receipts {
                    let Ok(h) = Digest::from_hex(&r.hash) else {
                        continue;
                    };
                    let Some(&i) = track.hashes.get(&h) else {
                        continue;
                    };
                    let i = i as usize;
                    let first = track.seen[ni][i]
                        .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok();
                    if first && track.node_of[i] as usize == ni {
                        if r.status == "applied" {
                            track.applied[i].store(true, Ordering::Relaxed);
                        }
                        track.committed_on_submit.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            // The stream ended without a lag notice: the node went away.
            track.lagged[ni].store(true, Ordering::Relaxed);
        }));
    }

    let clients = live
        .iter()
        .map(|&i| rpc_client(&net.nodes[i].rpc_url, Duration::from_secs(30)))
        .collect::<Result<Vec<_>>>()?;
    let bar = if opts.progress {
        let b = indicatif::ProgressBar::new(count);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:40}] {pos}/{len} committed  {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT_BATCHES));
    let txs = Arc::new(txs);
    let submitted = Arc::new(AtomicU64::new(0));
    let mut next = 0u64;
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let cpu_run0 = cpu_seconds();
    let validators_cpu = || -> Option<f64> {
        live.iter()
            .map(|&i| net.nodes[i].pid.and_then(process_cpu_seconds))
            .sum()
    };
    let blocks_from = Instant::now();
    let validators_cpu0 = validators_cpu();
    let mut tasks = Vec::new();
    while next < count {
        ticker.tick().await;
        let due = ((start.elapsed().as_secs_f64() * opts.rate as f64) as u64).min(count);
        let mut per_node: Vec<Vec<u32>> = vec![Vec::new(); nodes];
        for k in next..due {
            per_node[track.node_of[k as usize] as usize].push(k as u32);
        }
        next = due;
        for (ni, ks) in per_node.into_iter().enumerate() {
            for chunk in ks.chunks(SUBMIT_CHUNK) {
                let permit = in_flight.clone().acquire_owned().await?;
                let client = clients[ni].clone();
                let chunk = chunk.to_vec();
                let txs = txs.clone();
                let track = track.clone();
                let submitted = submitted.clone();
                tasks.push(tokio::spawn(async move {
                    let _permit = permit;
                    submit_batch(&client, &txs, &chunk, &track).await;
                    submitted.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }));
            }
        }
        tasks.retain(|t| !t.is_finished());
        bar.set_position(track.committed_on_submit.load(Ordering::Relaxed) as u64);
        bar.set_message(format!("{} submitted", submitted.load(Ordering::Relaxed)));
    }
    for t in tasks {
        let _ = t.await;
    }
    let send_secs = start.elapsed().as_secs_f64();
    track.sending_done.store(true, Ordering::Relaxed);
    let blocks_secs = blocks_from.elapsed().as_secs_f64();
    let bench_cpu = cpu_seconds() - cpu_run0;
    // Only meaningful when every validator ran throughout on this machine.
    let validators_cpu = validators_cpu().zip(validators_cpu0).map(|(b, a)| b - a);

    // Drain: wait for every acknowledged transfer on every node.
    let acked_count = track
        .acked
        .iter()
        .filter(|a| a.load(Ordering::Relaxed))
        .count();
    let deadline = Instant::now() + opts.drain;
    let missing = |track: &Track| -> Vec<usize> {
        (0..nodes)
            .map(|ni| {
                (0..count as usize)
                    .filter(|&i| {
                        track.acked[i].load(Ordering::Relaxed)
                            && track.seen[ni][i].load(Ordering::Relaxed) == 0
                    })
                    .count()
            })
            .collect()
    };
    loop {
        bar.set_position(track.committed_on_submit.load(Ordering::Relaxed) as u64);
        let m = missing(&track);
        let all_lagged_done =
            (0..nodes).all(|ni| m[ni] == 0 || track.lagged[ni].load(Ordering::Relaxed));
        if all_lagged_done || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bar.finish_and_clear();
    // Nodes whose notices were cut off: ask for the rest one by one.
    for (ni, client) in clients.iter().enumerate() {
        if track.lagged[ni].load(Ordering::Relaxed) {
            backfill(client, ni, &txs, &track, count).await;
        }
    }
    for w in watchers {
        w.abort();
    }
    let missing = missing(&track);

    let mut hist = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    let mut last_commit = 0u64;
    let mut committed = 0u64;
    for i in 0..count as usize {
        if !track.applied[i].load(Ordering::Relaxed) {
            continue;
        }
        let ni = track.node_of[i] as usize;
        let at = track.seen[ni][i].load(Ordering::Relaxed);
        if at == 0 {
            continue;
        }
        committed += 1;
        if at == u64::MAX {
            // Found by backfill: committed, but when is unknown.
            continue;
        }
        last_commit = last_commit.max(at);
        let due = (i as f64 / opts.rate as f64 * 1e6) as u64;
        hist.record(at.saturating_sub(due).max(1))?;
    }
    let span = (last_commit as f64 / 1e6).max(f64::EPSILON);
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let rejected = track.rejected.lock().map(|r| r.clone()).unwrap_or_default();
    let blocks = track.blocks.load(Ordering::Relaxed);
    let block_receipts = track.block_receipts.load(Ordering::Relaxed);
    Ok(json!({
        "validators": net.nodes.len(),
        "nodes_up": live,
        "nodes_down": down,
        "accounts": keys.len(),
        "rate": opts.rate,
        "duration_s": opts.duration.as_secs_f64(),
        "submitted": submitted.load(Ordering::Relaxed),
        "acknowledged": acked_count,
        "rejected": rejected,
        "committed": committed,
        "committed_per_s": committed as f64 / span,
        "latency_ms": {
            "p50": ms(0.5),
            "p90": ms(0.9),
            "p99": ms(0.99),
            "max": hist.max() as f64 / 1000.0,
        },
        "all_committed_on_every_node": missing.iter().all(|m| *m == 0),
        "missing_per_node": missing,
        "blocks_per_s": blocks as f64 / blocks_secs.max(f64::EPSILON),
        "transfers_per_block": block_receipts as f64 / blocks.max(1) as f64,
        "send_s": send_secs,
        "sign_s": sign_secs,
        "sign_cpu_s": sign_cpu,
        "bench_cpu_cores": bench_cpu / send_secs.max(f64::EPSILON),
        "validators_cpu_cores": validators_cpu.map(|c| c / send_secs.max(f64::EPSILON)),
        "validators_cpu_us_per_transfer": validators_cpu.map(|c| c * 1e6 / (submitted.load(Ordering::Relaxed).max(1) as f64)),
    }))
}

/// Submits transfers `ks` in one `ledger_submitTransactions` call.
async fn submit_batch(
    client: &jsonrpsee_http_client::HttpClient,
    txs: &[(String, Digest, usize)],
    ks: &[u32],
    track: &Track,
) {
    let hexes: Vec<&str> = ks.iter().map(|&k| txs[k as usize].0.as_str()).collect();
    let mut p = ArrayParams::new();
    if p.insert(&hexes).is_err() {
        return;
    }
    let reject = |why: String| {
        if let Ok(mut r) = track.rejected.lock() {
            *r.entry(why).or_default() += 1;
        }
    };
    match client
        .request::<Vec<Value>, _>("ledger_submitTransactions", p)
        .await
    {
        Ok(resp) if resp.len() == ks.len() => {
            for (r, &k) in resp.iter().zip(ks) {
                match r.get("error") {
                    None => track.acked[k as usize].store(true, Ordering::Relaxed),
                    Some(e) => reject(format!("code {}", e["code"])),
                }
            }
        }
        Ok(resp) => {
            for _ in ks {
                reject(format!("{} results for {} transfers", resp.len(), ks.len()));
            }
        }
        Err(e) => {
            for _ in ks {
                reject(format!("transport: {e}"));
            }
        }
    }
}

/// Looks up, on node `ni`, each acknowledged transfer its notices did not
/// show (after a lagged or closed subscription).
async fn backfill(
    client: &jsonrpsee_http_client::HttpClient,
    ni: usize,
    txs: &[(String, Digest, usize)],
    track: &Track,
    count: u64,
) {
    let todo: Vec<usize> = (0..count as usize)
        .filter(|&i| {
            track.acked[i].load(Ordering::Relaxed) && track.seen[ni][i].load(Ordering::Relaxed) == 0
        })
        .collect();
    for chunk in todo.chunks(BATCH) {
        let mut b = BatchRequestBuilder::new();
        for &i in chunk {
            let mut p = ArrayParams::new();
            if p.insert(txs[i].1.to_hex()).is_err() || b.insert("ledger_getTransaction", p).is_err()
            {
                return;
            }
        }
        let Ok(resp) = client.batch_request::<Value>(b).await else {
            return;
        };
        for (r, &i) in resp.into_iter().zip(chunk) {
            if let Ok(v) = r
                && v["status"] == "committed"
            {
                // Committed, at an unknown time: counted as present, not
                // timed.
                track.seen[ni][i].store(u64::MAX, Ordering::Relaxed);
            }
        }
    }
}

/// The report as text.
pub fn human(r: &Value) -> String {
    format!(
        "offered {rate}/s for {dur} s to {v} validators from {a} accounts{down}\n\
         submitted {sub}, acknowledged {ack}, rejected {rej}\n\
         committed {com} ({tps:.0}/s) in {bps:.1} blocks/s of {tpb:.1} transfers\n\
         commit latency ms: p50 {p50:.1}  p90 {p90:.1}  p99 {p99:.1}  max {max:.1}\n\
         every acknowledged transfer committed on every live node: {all} (missing per node: {miss})\n\
         signing ahead: {sign:.1} s; bench process while sending: {cpu:.2} cores\n\
         validators while sending: {vcpu} cores, {vper} CPU µs per transfer",
        rate = r["rate"],
        dur = r["duration_s"],
        v = r["validators"],
        down = match r["nodes_down"].as_array() {
            Some(d) if !d.is_empty() => format!(" (nodes down, left out: {})", r["nodes_down"]),
            _ => String::new(),
        },
        bps = r["blocks_per_s"].as_f64().unwrap_or(0.0),
        tpb = r["transfers_per_block"].as_f64().unwrap_or(0.0),
        a = r["accounts"],
        sub = r["submitted"],
        ack = r["acknowledged"],
        rej = r["rejected"],
        com = r["committed"],
        tps = r["committed_per_s"].as_f64().unwrap_or(0.0),
        p50 = r["latency_ms"]["p50"].as_f64().unwrap_or(0.0),
        p90 = r["latency_ms"]["p90"].as_f64().unwrap_or(0.0),
        p99 = r["latency_ms"]["p99"].as_f64().unwrap_or(0.0),
        max = r["latency_ms"]["max"].as_f64().unwrap_or(0.0),
        all = if r["all_committed_on_every_node"] == true {
            "yes"
        } else {
            "NO"
        },
        miss = r["missing_per_node"],
        sign = r["sign_s"].as_f64().unwrap_or(0.0),
        cpu = r["bench_cpu_cores"].as_f64().unwrap_or(0.0),
        vcpu = r["validators_cpu_cores"]
            .as_f64()
            .map_or("?".into(), |c| format!("{c:.2}")),
        vper = r["validators_cpu_us_per_transfer"]
            .as_f64()
            .map_or("?".into(), |c| format!("{c:.0}")),
    )
}
