//! The `phalanx` binary: `init` writes a validator's home directory,
//! `start` runs the node; `keys`, `tx`, `account` and `status` are the
//! wallet.

mod wallet;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use phalanx_crypto::KeyPair;
use phalanx_ledger::Genesis;
use phalanx_node::config::{Config, Peer};
use phalanx_node::ingress::{self, Origin, Submission};
use phalanx_node::mempool::MempoolLimits;
use phalanx_node::metrics::{self, Metrics};
use phalanx_node::net::{self, NetConfig};
use phalanx_node::rpc;
use phalanx_node::runtime::{LocalOptions, Runtime, run_instrumented};
use phalanx_node::safety::StartState;
use phalanx_node::shared::Shared;
use phalanx_storage::{SafetyRecord, Store, StoreOptions};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

#[derive(Parser)]
#[command(name = "phalanx", version, about = "Phalanx BFT ledger node")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a validator home directory: a new key and a commented
    /// config.toml with defaults.
    Init {
        /// The home directory (created if missing; must not hold a key).
        #[arg(long)]
        home: PathBuf,
        /// libp2p listen address.
        #[arg(long)]
        listen: Option<String>,
        /// JSON-RPC listen address.
        #[arg(long)]
        rpc_listen: Option<std::net::SocketAddr>,
        /// Prometheus metrics listen address.
        #[arg(long)]
        metrics_listen: Option<std::net::SocketAddr>,
        /// Path of the shared genesis file.
        #[arg(long)]
        genesis: Option<PathBuf>,
        /// A peer validator as `KEY_HEX@MULTIADDR` (repeatable).
        #[arg(long = "peer")]
        peers: Vec<String>,
        /// A full node: follows the chain from its peers and serves reads;
        /// its key is not a validator's.
        #[arg(long)]
        full_node: bool,
        /// A validator's JSON-RPC URL a full node forwards submissions to
        /// (repeatable).
        #[arg(long = "forward-rpc")]
        forward_rpc: Vec<String>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Manage key files.
    #[command(subcommand)]
    Keys(wallet::KeysCmd),
    /// Sign (offline) or send transfers.
    #[command(subcommand)]
    Tx(wallet::TxCmd),
    /// Show an account's balance and nonce.
    Account {
        /// The address (hex).
        address: String,
        #[command(flatten)]
        read: wallet::ReadArgs,
    },
    /// Show a committed block.
    Block {
        /// A height, or `latest`.
        block: String,
        #[command(flatten)]
        read: wallet::ReadArgs,
    },
    /// Show a node's status.
    Status {
        /// A node's JSON-RPC URL.
        #[arg(long)]
        rpc: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the node.
    Start {
        /// The home directory written by `phalanx init`.
        #[arg(long)]
        home: PathBuf,
        /// Log format override: "human" or "json".
        #[arg(long)]
        log_format: Option<String>,
        /// Rejoin after the safety record was lost (a data directory kept
        /// but its `safety.record` deleted or damaged): the validator signs
        /// nothing until a quorum of the others has shown which views are
        /// safe. A wiped data directory recovers without it.
        #[arg(long)]
        recover: bool,
        /// Attack modes this validator runs, `mode[,mode]` (a test build
        /// with the `byzantine` feature only).
        #[cfg(feature = "byzantine")]
        #[arg(long)]
        byzantine: Option<phalanx_node::byzantine::Modes>,
        /// A bug planted in this node on purpose (`stale-reads`), to show
        /// the chaos checker catching it (a test build with the
        /// `byzantine` feature only).
        #[cfg(feature = "byzantine")]
        #[arg(long)]
        planted_bug: Option<phalanx_node::byzantine::PlantedBug>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Init {
            home,
            listen,
            rpc_listen,
            metrics_listen,
            genesis,
            peers,
            full_node,
            forward_rpc,
            json,
        } => init(
            &home,
            Addrs {
                listen,
                rpc_listen,
                metrics_listen,
            },
            genesis,
            &peers,
            (full_node, forward_rpc),
            json,
        ),
        Cmd::Start {
            home,
            log_format,
            recover,
            #[cfg(feature = "byzantine")]
            byzantine,
            #[cfg(feature = "byzantine")]
            planted_bug,
        } => {
            #[cfg(feature = "byzantine")]
            if let Some(bug) = planted_bug {
                phalanx_node::byzantine::plant(bug);
            }
            #[cfg(not(feature = "byzantine"))]
            let byzantine = ();
            start(&home, log_format, recover, byzantine)
        }
        Cmd::Keys(k) => wallet::keys(k),
        Cmd::Tx(t) => wallet::tx(t),
        Cmd::Account { address, read } => wallet::account(&address, &read),
        Cmd::Block { block, read } => wallet::block(&block, &read),
        Cmd::Status { rpc, json } => wallet::status(&rpc, json),
    };
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Listen addresses given to `init`.
struct Addrs {
    listen: Option<String>,
    rpc_listen: Option<std::net::SocketAddr>,
    metrics_listen: Option<std::net::SocketAddr>,
}

fn init(
    home: &Path,
    addrs: Addrs,
    genesis: Option<PathBuf>,
    peers: &[String],
    (full_node, forward_rpc): (bool, Vec<String>),
    json: bool,
) -> Result<()> {
    std::fs::create_dir_all(home).with_context(|| format!("creating {}", home.display()))?;
    let mut cfg = Config {
        full_node,
        forward_rpc,
        ..Config::default()
    };
    if full_node {
        cfg.key_file = PathBuf::from("node.key");
    }
    if let Some(l) = addrs.listen {
        cfg.listen = l;
    }
    if let Some(r) = addrs.rpc_listen {
        cfg.rpc_listen = r;
    }
    if let Some(m) = addrs.metrics_listen {
        cfg.metrics_listen = m;
    }
    if let Some(g) = genesis {
        cfg.genesis = g;
    }
    for p in peers {
        let (key, addr) = p
            .split_once('@')
            .with_context(|| format!("--peer `{p}`: expected KEY_HEX@MULTIADDR"))?;
        let key = phalanx_crypto::PublicKey::from_hex(key)
            .with_context(|| format!("--peer `{p}`: bad key"))?;
        cfg.peers.push(Peer {
            key,
            addr: addr.to_string(),
        });
    }
    cfg.validate()?;
    let config_path = home.join("config.toml");
    if config_path.exists() {
        bail!(
            "{} already exists; refusing to overwrite it",
            config_path.display()
        );
    }
    let key_path = Config::resolve(home, &cfg.key_file);
    let key = KeyPair::generate()?;
    key.save(&key_path)
        .with_context(|| format!("writing {}", key_path.display()))?;
    std::fs::write(&config_path, cfg.template())
        .with_context(|| format!("writing {}", config_path.display()))?;
    // The record of a validator that has never signed: without it, a start
    // could not tell a new validator from one whose data was wiped.
    let data = Config::resolve(home, &cfg.data_dir);
    phalanx_node::safety::create_fresh(&data)
        .with_context(|| format!("writing the safety record in {}", data.display()))?;
    let public = key.public().to_hex();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "public_key": public,
                "key_file": key_path,
                "config": config_path,
                "full_node": full_node,
            })
        );
    } else if full_node {
        println!("full node key: {public}");
        println!("key file:      {}", key_path.display());
        println!("config:        {}", config_path.display());
    } else {
        println!("validator key: {public}");
        println!("key file:      {}", key_path.display());
        println!("config:        {}", config_path.display());
    }
    Ok(())
}

fn init_logging(cfg: &Config, format: Option<String>) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log_level)
        .with_context(|| format!("log_level `{}`", cfg.log_level))?;
    let format = format.unwrap_or_else(|| cfg.log_format.clone());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    match format.as_str() {
        "json" => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        "human" => builder.init(),
        other => bail!("log format `{other}`: expected \"human\" or \"json\""),
    }
    Ok(())
}

/// The attack modes asked for (feature `byzantine`); nothing otherwise.
#[cfg(feature = "byzantine")]
type Attack = Option<phalanx_node::byzantine::Modes>;
#[cfg(not(feature = "byzantine"))]
type Attack = ();

fn start(home: &Path, log_format: Option<String>, recover: bool, attack: Attack) -> Result<()> {
    let cfg = Config::load(&home.join("config.toml"))?;
    init_logging(&cfg, log_format)?;
    if cfg.clock_offset_ms != 0 {
        phalanx_node::shared::set_clock_offset(cfg.clock_offset_ms)?;
        warn!(
            offset_ms = cfg.clock_offset_ms,
            "this node's clock is shifted by clock_offset_ms"
        );
    }

    // One process per home directory: a second one could sign with the same
    // key from the same safety state and equivocate.
    let lock_path = home.join("LOCK");
    let lock =
        File::create(&lock_path).with_context(|| format!("creating {}", lock_path.display()))?;
    if lock.try_lock().is_err() {
        bail!(
            "another phalanx process is running on {} (lock {} is held)",
            home.display(),
            lock_path.display()
        );
    }

    let genesis_path = Config::resolve(home, &cfg.genesis);
    let genesis = Genesis::load(&genesis_path)
        .with_context(|| format!("genesis {}", genesis_path.display()))?;
    let key_path = Config::resolve(home, &cfg.key_file);
    let key = KeyPair::load(&key_path).with_context(|| format!("key {}", key_path.display()))?;
    if cfg.full_node {
        if genesis.validators.contains(&key.public()) {
            bail!(
                "full_node = true, but key {} is a validator of chain {}: a full node needs a key of its own",
                key.public().to_hex(),
                genesis.chain_id
            );
        }
        return start_full_node(cfg, genesis, key, home);
    }
    if !genesis.validators.contains(&key.public()) {
        bail!(
            "key {} is not a validator of chain {}",
            key.public().to_hex(),
            genesis.chain_id
        );
    }
    let (data, store_options, store) = open_store(&cfg, home, &genesis)?;
    info!(
        chain = %genesis.chain_id,
        validator = %key.public().to_hex(),
        height = store.head().height,
        "store open"
    );
    let genesis_block =
        phalanx_consensus::Block::genesis(&genesis.consensus_chain(), genesis.genesis_time_ms);
    let (record, start_state) = phalanx_node::safety::open(&data, &store, &genesis_block, recover)?;

    let rt = async_runtime(&cfg)?;
    let res = rt.block_on(run_node(
        cfg,
        genesis,
        key,
        store,
        record,
        start_state,
        (data, store_options, attack),
    ));
    // Stop background tasks (which hold the store) before the lock goes.
    rt.shutdown_timeout(Duration::from_secs(5));
    drop(lock);
    match &res {
        Ok(()) => info!("stopped"),
        Err(e) if fell_behind(e) => {
            // Block sync cannot close the gap: start again, as a process
            // does, and state-sync at start (`statesync::catch_up`). Every
            // file is closed on exec; nothing unsynced mattered (a crash
            // loses the same).
            warn!("{e:#}; restarting to state-sync");
            let exe = std::env::current_exe().context("finding this executable")?;
            let err = std::os::unix::process::CommandExt::exec(
                std::process::Command::new(exe).args(std::env::args_os().skip(1)),
            );
            return Err(err).context("restarting");
        }
        Err(e) => error!("stopped on error: {e:#}"),
    }
    res
}

async fn run_node(
    cfg: Config,
    genesis: Genesis,
    key: KeyPair,
    store: Store,
    record: SafetyRecord,
    start_state: StartState,
    (data, store_options, attack): (PathBuf, StoreOptions, Attack),
) -> Result<()> {
    let metrics = Arc::new(Metrics::new(genesis.validators.len(), &rpc::method_names()));
    let (network, inbound, mut gossip) = net::start(net_config(&cfg, &genesis, &key, &metrics)?)?;
    // Metrics first: a state sync is worth watching.
    let metrics_addr = metrics::serve(cfg.metrics_listen, metrics.clone())
        .await
        .with_context(|| format!("starting metrics on {}", cfg.metrics_listen))?;
    info!(addr = %metrics_addr, "metrics listening");
    let (serve_store, store_ready) = watch::channel(None);
    tokio::spawn(phalanx_node::statesync::serve(
        network.control(),
        Arc::new(network.validator_peer_ids()),
        store_ready,
        network.outsider_activity(),
    ));
    // A fresh (or wiped) validator, or one further behind than its peers
    // keep blocks, restores the latest stable checkpoint from its peers
    // before consensus starts.
    let store = caught_up(&network, &genesis, store, (&data, &store_options), &metrics).await?;
    serve_store.send_replace(Some(store.clone()));
    if cfg.empty_block_delay_ms * 2 > genesis.params.base_timeout_ms {
        anyhow::bail!(
            "invalid config `empty_block_delay_ms`: {} ms is more than half the chain's base view timeout ({} ms)",
            cfg.empty_block_delay_ms,
            genesis.params.base_timeout_ms
        );
    }
    let delay = Duration::from_millis(cfg.empty_block_delay_ms);
    let validator = key.public();
    let (shared, status_tx) = Shared::new(
        store.clone(),
        &genesis,
        validator,
        mempool_limits(&cfg, &genesis),
        metrics.clone(),
    );
    let shared = Arc::new(shared);
    #[cfg(feature = "byzantine")]
    let (attack_key, attack_net) = (key.clone(), network.clone());
    let mut runtime = Runtime::new(
        &genesis,
        key,
        store.clone(),
        record,
        start_state,
        network,
        LocalOptions {
            empty_block_delay: delay,
            retained_blocks: cfg.retained_blocks,
            overdue_tx: Duration::from_millis(cfg.overdue_tx_ms),
        },
        shared.clone(),
        status_tx,
    )?;
    shared.publish_mempool();
    #[cfg(feature = "byzantine")]
    if let Some(modes) = attack
        && let Some(spam) = runtime.attack(modes, attack_key, &genesis)
    {
        tokio::spawn(spam.run(attack_net, shared.status.clone()));
    }
    #[cfg(not(feature = "byzantine"))]
    let () = attack;

    // Admission: RPC submissions and gossip batches, one pipeline.
    let (ingress_tx, ingress_rx) = mpsc::channel(ingress::INGRESS_QUEUE);
    tokio::spawn(ingress::run(
        shared.clone(),
        ingress_rx,
        gossip.outbound.clone(),
    ));
    let from_gossip = ingress_tx.clone();
    tokio::spawn(async move {
        while let Some(batch) = gossip.inbound.recv().await {
            for bytes in batch {
                let s = Submission {
                    bytes,
                    origin: Origin::Gossip,
                };
                if from_gossip.try_send(s).is_err() {
                    warn!("ingress queue full; dropping gossiped transactions");
                    break;
                }
            }
        }
    });
    let (rpc_handle, rpc_addr) = rpc::start(
        cfg.rpc_listen,
        shared.clone(),
        ingress_tx,
        rpc::RpcLimits {
            connections_per_ip: cfg.rpc_connections_per_ip,
            requests_per_sec: cfg.rpc_requests_per_sec,
        },
        None,
    )
    .await
    .with_context(|| format!("starting JSON-RPC on {}", cfg.rpc_listen))?;
    info!(addr = %rpc_addr, "JSON-RPC listening");
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("signal received; shutting down");
        let _ = stop_tx.send(true);
    });
    runtime.set_catch_up_limit(cfg.retained_blocks);
    let screened = runtime.start_screening(inbound)?;
    let res = run_instrumented(runtime, screened, stop_rx).await;
    let _ = rpc_handle.stop();
    res?;
    Ok(())
}

/// The data directory (created, an interrupted state restore settled),
/// the store's options, and the store.
fn open_store(
    cfg: &Config,
    home: &Path,
    genesis: &Genesis,
) -> Result<(PathBuf, StoreOptions, Store)> {
    let data = Config::resolve(home, &cfg.data_dir);
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    phalanx_node::statesync::settle(&data).with_context(|| {
        format!(
            "settling an interrupted state restore in {}",
            data.display()
        )
    })?;
    let store_options = StoreOptions {
        retained_blocks: cfg.retained_blocks,
        ..StoreOptions::default()
    };
    let store = Store::open(
        &data.join(phalanx_node::statesync::DB_DIR),
        genesis,
        store_options.clone(),
    )?;
    Ok((data, store_options, store))
}

/// The store after a state sync from the validators when it needs one (new,
/// or behind what they keep).
async fn caught_up(
    network: &net::Network,
    genesis: &Genesis,
    store: Store,
    target: (&Path, &StoreOptions),
    metrics: &Metrics,
) -> Result<Arc<Store>> {
    let store = phalanx_node::statesync::catch_up(
        network.control(),
        network.other_validators(),
        genesis,
        store,
        target,
        metrics,
    )
    .await?;
    Ok(Arc::new(store))
}

fn mempool_limits(cfg: &Config, genesis: &Genesis) -> MempoolLimits {
    MempoolLimits::new(
        cfg.mempool_max_txs,
        cfg.mempool_max_bytes,
        cfg.mempool_max_nonce_gap,
        &genesis.params,
    )
}

/// The async runtime, with `runtime_threads` workers when set.
fn async_runtime(cfg: &Config) -> Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if cfg.runtime_threads > 0 {
        builder.worker_threads(cfg.runtime_threads);
    }
    builder
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// The network of this node's config: its key, listen address and peers.
fn net_config(
    cfg: &Config,
    genesis: &Genesis,
    key: &KeyPair,
    metrics: &Arc<Metrics>,
) -> Result<NetConfig> {
    let mut peers = Vec::new();
    for p in &cfg.peers {
        peers.push((p.key, p.addr.parse().context("peers")?));
    }
    Ok(NetConfig {
        key: key.clone(),
        listen: cfg.listen.parse().context("listen")?,
        validators: genesis.validators.clone(),
        peers,
        peer_queue: cfg.peer_queue,
        reconnect_base: Duration::from_millis(cfg.reconnect_base_ms),
        reconnect_max: Duration::from_millis(cfg.reconnect_max_ms),
        metrics: metrics.clone(),
        genesis: genesis.hash(),
        limits: net::ConnLimits::default(),
    })
}

/// `phalanx start` of a full node: its store, the follower, JSON-RPC and
/// metrics; no consensus, no safety record.
fn start_full_node(cfg: Config, genesis: Genesis, key: KeyPair, home: &Path) -> Result<()> {
    let (data, store_options, store) = open_store(&cfg, home, &genesis)?;
    info!(
        chain = %genesis.chain_id,
        key = %key.public().to_hex(),
        height = store.head().height,
        "full node store open"
    );
    let rt = async_runtime(&cfg)?;
    let res = rt.block_on(run_full_node(
        cfg,
        genesis,
        key,
        store,
        (data, store_options),
    ));
    rt.shutdown_timeout(Duration::from_secs(5));
    match &res {
        Ok(()) => info!("stopped"),
        Err(e) => error!("stopped on error: {e:#}"),
    }
    res
}

async fn run_full_node(
    cfg: Config,
    genesis: Genesis,
    key: KeyPair,
    store: Store,
    (data, store_options): (PathBuf, StoreOptions),
) -> Result<()> {
    let metrics = Arc::new(Metrics::new(genesis.validators.len(), &rpc::method_names()));
    let (network, _inbound, _gossip) = net::start(net_config(&cfg, &genesis, &key, &metrics)?)?;
    let metrics_addr = metrics::serve(cfg.metrics_listen, metrics.clone())
        .await
        .with_context(|| format!("starting metrics on {}", cfg.metrics_listen))?;
    info!(addr = %metrics_addr, "metrics listening");
    // Behind what the validators keep (or new): their latest checkpoint
    // first, then blocks.
    let store = caught_up(&network, &genesis, store, (&data, &store_options), &metrics).await?;
    let (shared, _status) = Shared::new(
        store.clone(),
        &genesis,
        key.public(),
        mempool_limits(&cfg, &genesis),
        metrics.clone(),
    );
    let shared = Arc::new(shared);
    // Submissions are forwarded, never admitted here: the ingress only
    // stands behind the RPC module's signature.
    let (ingress_tx, _ingress_rx) = mpsc::channel(1);
    let (rpc_handle, rpc_addr) = rpc::start(
        cfg.rpc_listen,
        shared.clone(),
        ingress_tx,
        rpc::RpcLimits {
            connections_per_ip: cfg.rpc_connections_per_ip,
            requests_per_sec: cfg.rpc_requests_per_sec,
        },
        Some(rpc::Forward::new(&cfg.forward_rpc)?),
    )
    .await
    .with_context(|| format!("starting JSON-RPC on {}", cfg.rpc_listen))?;
    info!(addr = %rpc_addr, forward = ?cfg.forward_rpc, "JSON-RPC listening (full node)");
    let follower = phalanx_node::follow::follow(
        network.control(),
        network.other_validators(),
        genesis,
        store,
        shared,
    );
    let res = tokio::select! {
        r = follower => r.map_err(anyhow::Error::from),
        _ = wait_for_signal() => {
            info!("signal received; shutting down");
            Ok(())
        }
    };
    let _ = rpc_handle.stop();
    res
}

fn fell_behind(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<phalanx_node::runtime::RuntimeError>(),
        Some(phalanx_node::runtime::RuntimeError::FellBehind { .. })
    )
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Without signal handlers the process still stops on SIGKILL,
            // which loses nothing committed.
            futures::future::pending::<()>().await;
        }
    }
}
