//! A harness for multi-process tests: real `phalanx` processes on
//! 127.0.0.1 with ports picked free at run time, each with its own home
//! directory, logging JSON to a file the test reads.
//!
//! Every child is killed when the [`Cluster`] is dropped, also when a test
//! fails. Waits are for conditions, with generous deadlines, never fixed
//! sleeps that assume a fast machine.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use phalanx_crypto::{ChainId, KeyPair, PublicKey};
use phalanx_ledger::{Genesis, GenesisAccount, Params};

pub mod proxy;

/// Deadline for conditions that need the cluster to make progress.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// The directory holding the `phalanx` and `phalanx-testnet` binaries,
/// built once per test process with the same profile and target directory
/// as the tests. `phalanx` is built with the `byzantine` feature, so that
/// a test can make one validator an attacker (`phalanx start --byzantine`);
/// the others run the same binary without attack modes, as honest nodes.
fn bin_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "-p",
                "phalanx-node",
                "-p",
                "phalanx-testnet",
                "--bins",
                "--features",
                "phalanx-node/byzantine",
            ])
            .status()
            .expect("running cargo build for the binaries");
        assert!(status.success(), "building the binaries failed");
        // target/<profile>/deps/<test> → target/<profile>/
        let exe = std::env::current_exe().expect("test executable path");
        exe.parent()
            .and_then(Path::parent)
            .expect("target profile directory")
            .to_path_buf()
    })
    .clone()
}

fn built(name: &str) -> PathBuf {
    let bin = bin_dir().join(name);
    assert!(bin.exists(), "{} missing after the build", bin.display());
    bin
}

/// The `phalanx` binary.
pub fn phalanx_bin() -> PathBuf {
    built("phalanx")
}

/// The `phalanx-testnet` binary.
pub fn testnet_bin() -> PathBuf {
    built("phalanx-testnet")
}

/// Runs `bin` with `args` to completion: (exit code, stdout, stderr).
pub fn run(bin: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Runs the `phalanx` binary with `args` to completion: (exit code,
/// stdout, stderr).
pub fn phalanx(args: &[&str]) -> (Option<i32>, String, String) {
    run(&phalanx_bin(), args)
}

/// A local port for a listener: below the ephemeral range, so no
/// outgoing connection takes it before the node binds it.
pub fn free_port() -> u16 {
    phalanx_testnet::ports::free_port().expect("a free local port")
}

/// Key of demo account `i` (funded at genesis).
pub fn account(i: u64) -> KeyPair {
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&i.to_le_bytes());
    s[8] = 0xd0;
    KeyPair::from_seed(s)
}

/// One validator process and its files.
pub struct Node {
    /// Home directory.
    pub home: PathBuf,
    /// Validator public key.
    pub key: PublicKey,
    /// libp2p port.
    pub p2p_port: u16,
    /// JSON-RPC port.
    pub rpc_port: u16,
    /// Metrics port.
    pub metrics_port: u16,
    /// The JSON log.
    pub log: PathBuf,
    child: Option<Child>,
}

/// Options for a cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Validators.
    pub validators: usize,
    /// Funded demo accounts.
    pub accounts: u64,
    /// Genesis parameters.
    pub params: Params,
    /// `key = value` lines that replace the template's lines in every
    /// node's config.toml.
    pub extra_config: String,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            validators: 4,
            accounts: 16,
            params: Params {
                checkpoint_interval: 10,
                ..Params::default()
            },
            extra_config: String::new(),
        }
    }
}

impl ClusterOptions {
    /// A chain that moves fast: a 10 ms empty-block delay, short view
    /// timeouts (250 ms, at most 2 s) and a checkpoint every 10 blocks.
    pub fn fast() -> ClusterOptions {
        ClusterOptions {
            extra_config: "empty_block_delay_ms = 10".into(),
            params: Params {
                checkpoint_interval: 10,
                base_timeout_ms: 250,
                max_timeout_ms: 2000,
                ..Params::default()
            },
            ..ClusterOptions::default()
        }
    }
}

/// A local cluster of validator processes.
pub struct Cluster {
    /// Scratch directory holding every home.
    pub dir: tempfile::TempDir,
    /// The nodes, by validator index.
    pub nodes: Vec<Node>,
    /// The genesis.
    pub genesis: Genesis,
}

impl Node {
    /// Runs `phalanx init` for `home` (genesis at `genesis`, relative to the
    /// home) on two free ports.
    fn init(home: PathBuf, genesis: &str) -> Node {
        let (p2p_port, rpc_port, metrics_port) = (free_port(), free_port(), free_port());
        let key = run_init(&home, [p2p_port, rpc_port, metrics_port], genesis);
        Node {
            log: home.join("node.log"),
            home,
            key,
            p2p_port,
            rpc_port,
            metrics_port,
            child: None,
        }
    }

    /// This node as a `[[peers]]` entry of another's config.
    fn peer_entry(&self) -> String {
        format!(
            "\n[[peers]]\nkey = \"{}\"\naddr = \"/ip4/127.0.0.1/tcp/{}\"\n",
            self.key.to_hex(),
            self.p2p_port
        )
    }

    /// Replaces every `[[peers]]` entry of the config with `peers`.
    fn set_peers(&self, peers: &str) {
        let cfg = self.home.join("config.toml");
        let text = std::fs::read_to_string(&cfg).expect("config");
        let head = text
            .split("\n[[peers]]")
            .next()
            .unwrap_or(&text)
            .to_string();
        std::fs::write(&cfg, head + peers).expect("config");
    }

    /// Rewrites the config: `overrides` (`key = value` lines) replace the
    /// template's lines, `peers` is appended.
    fn configure(&self, overrides: &str, peers: &str) {
        let cfg = self.home.join("config.toml");
        let mut text = std::fs::read_to_string(&cfg).expect("config");
        for line in overrides.lines().filter(|l| l.contains('=')) {
            let key = line.split('=').next().unwrap_or("").trim();
            let lines: Vec<String> = text
                .lines()
                .map(|l| {
                    if l.split('=').next().is_some_and(|k| k.trim() == key) {
                        line.to_string()
                    } else {
                        l.to_string()
                    }
                })
                .collect();
            text = lines.join("\n") + "\n";
        }
        text.push_str(peers);
        std::fs::write(&cfg, text).expect("config");
    }
}

fn run_init(home: &Path, ports: [u16; 3], genesis: &str) -> PublicKey {
    let key = phalanx_testnet::init::init_home(&phalanx_bin(), home, ports, genesis)
        .unwrap_or_else(|e| panic!("{e}"));
    PublicKey::from_hex(&key).expect("a key")
}

impl Cluster {
    /// Creates the homes, keys, configs (each node peered with all others)
    /// and the genesis; starts nothing.
    pub fn new(opts: ClusterOptions) -> Cluster {
        let dir = tempfile::tempdir().expect("scratch directory");
        let mut nodes = Vec::new();
        for i in 0..opts.validators {
            nodes.push(Node::init(
                dir.path().join(format!("node{i}")),
                "../genesis.json",
            ));
        }
        // Peers: every other validator.
        for (i, n) in nodes.iter().enumerate() {
            let peers: String = nodes
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| p.peer_entry())
                .collect();
            n.configure(&opts.extra_config, &peers);
        }
        let genesis = Genesis {
            chain_id: ChainId::new("phalanx-local").expect("chain id"),
            genesis_time_ms: 1_700_000_000_000,
            validators: nodes.iter().map(|n| n.key).collect(),
            accounts: (0..opts.accounts)
                .map(|i| GenesisAccount {
                    address: account(i).public(),
                    balance: 1_000_000_000,
                })
                .collect(),
            params: opts.params,
        };
        std::fs::write(
            dir.path().join("genesis.json"),
            serde_json::to_string_pretty(&genesis).expect("genesis JSON"),
        )
        .expect("writing genesis");
        Cluster {
            dir,
            nodes,
            genesis,
        }
    }

    /// Adds a process holding a key outside the validator set. It runs
    /// with its own genesis, which differs from the chain's only by listing
    /// its key as a fifth validator, so it signs proposals and votes and
    /// sends them to every real validator. Returns its index (not started).
    pub fn add_impostor(&mut self) -> usize {
        let node = Node::init(self.dir.path().join("impostor"), "../genesis-impostor.json");
        let peers: String = self.nodes.iter().map(Node::peer_entry).collect();
        node.configure("", &peers);
        let key = node.key;
        let mut g = self.genesis.clone();
        g.validators.push(key);
        std::fs::write(
            self.dir.path().join("genesis-impostor.json"),
            serde_json::to_string_pretty(&g).expect("genesis JSON"),
        )
        .expect("writing genesis");
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// Adds a full node (not started): a key outside the validator set,
    /// following the chain from every validator and forwarding
    /// submissions to their JSON-RPC. Returns its index.
    pub fn add_full_node(&mut self) -> usize {
        let k = self.nodes.len();
        let node = Node::init(self.dir.path().join(format!("full{k}")), "../genesis.json");
        let peers: String = self.nodes.iter().map(Node::peer_entry).collect();
        let forward: Vec<String> = (0..self.nodes.len())
            .map(|i| format!("\"{}\"", self.rpc_url(i)))
            .collect();
        node.configure(
            &format!("full_node = true\nforward_rpc = [{}]", forward.join(", ")),
            &peers,
        );
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// Adds a second process holding validator `of`'s key (a twin): its
    /// own home, ports and data, and the chain's genesis. Returns its index
    /// (not started).
    ///
    /// Each validator sends to one connection per peer key, so a twin
    /// that every validator reached only by dialling would never hear
    /// anything. The peers are split instead, as two machines holding one
    /// key would split a network: the first half of the other validators
    /// know the twin's address and the rest the original's, each copy
    /// dials its half, and the first validator is dialled by both copies,
    /// so it hears both.
    pub fn add_twin(&mut self, of: usize) -> usize {
        let twin = Node::init(self.dir.path().join(format!("twin{of}")), "../genesis.json");
        let key_file = |n: &Node| n.home.join("validator.key");
        std::fs::copy(key_file(&self.nodes[of]), key_file(&twin)).expect("copying the key");
        let twin = Node {
            key: self.nodes[of].key,
            ..twin
        };
        let others: Vec<usize> = (0..self.nodes.len()).filter(|j| *j != of).collect();
        let (twin_side, original_side) = others.split_at(others.len().div_ceil(2));
        let entries = |nodes: &[Node], which: &[usize]| -> String {
            which.iter().map(|j| nodes[*j].peer_entry()).collect()
        };
        for &j in &others {
            let via = if twin_side.contains(&j) {
                twin.peer_entry()
            } else {
                self.nodes[of].peer_entry()
            };
            let rest: Vec<usize> = others.iter().copied().filter(|k| *k != j).collect();
            let peers = entries(&self.nodes, &rest) + &via;
            self.nodes[j].set_peers(&peers);
        }
        twin.set_peers(&entries(&self.nodes, twin_side));
        let original: Vec<usize> = std::iter::once(others[0])
            .chain(original_side.iter().copied())
            .collect();
        self.nodes[of].set_peers(&entries(&self.nodes, &original));
        self.nodes.push(twin);
        self.nodes.len() - 1
    }

    /// Replaces `key = value` lines of node `i`'s config (before it
    /// starts).
    pub fn set_config(&mut self, i: usize, lines: &str) {
        self.nodes[i].configure(lines, "");
    }

    /// Gives node `i` a genesis of its own: the chain's, changed by `edit`
    /// (before it first starts).
    pub fn give_own_genesis(&mut self, i: usize, edit: impl FnOnce(&mut Genesis)) {
        let mut g = self.genesis.clone();
        edit(&mut g);
        let name = format!("genesis-node{i}.json");
        std::fs::write(
            self.dir.path().join(&name),
            serde_json::to_string_pretty(&g).expect("genesis JSON"),
        )
        .expect("writing genesis");
        self.nodes[i].configure(&format!("genesis = \"../{name}\""), "");
    }

    /// Starts every node.
    pub fn start_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.start(i);
        }
    }

    /// Starts node `i` (appending to its log).
    pub fn start(&mut self, i: usize) {
        self.start_with(i, &[]);
    }

    /// Starts node `i` with extra `phalanx start` arguments.
    pub fn start_with(&mut self, i: usize, args: &[&str]) {
        let n = &mut self.nodes[i];
        assert!(n.child.is_none(), "node {i} is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)
            .expect("log file");
        let err = log.try_clone().expect("log file");
        let child = Command::new(phalanx_bin())
            .arg("start")
            .arg("--home")
            .arg(&n.home)
            .args(["--log-format", "json"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawning phalanx start");
        n.child = Some(child);
    }

    /// Runs a second `phalanx start` on node `i`'s home and returns its exit
    /// code and output once it exits (killed after 30 s if it does not).
    pub fn start_again(&self, i: usize) -> (Option<i32>, String) {
        let mut child = Command::new(phalanx_bin())
            .arg("start")
            .arg("--home")
            .arg(&self.nodes[i].home)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning phalanx start");
        let code = wait_exit(&mut child, Duration::from_secs(30));
        let out = child.wait_with_output().map(|o| {
            String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr)
        });
        (code, out.unwrap_or_default())
    }

    /// Receives `n` notifications of `ledger_subscribeBlocks` from node `i`
    /// over WebSocket.
    pub fn subscribe_blocks(&self, i: usize, n: usize) -> Vec<serde_json::Value> {
        use jsonrpsee_core::client::SubscriptionClientT;
        use jsonrpsee_core::params::ArrayParams;
        let url = format!("ws://127.0.0.1:{}", self.nodes[i].rpc_port);
        runtime().block_on(async move {
            let client = jsonrpsee_ws_client::WsClientBuilder::default()
                .build(&url)
                .await
                .expect("WebSocket connection");
            let mut sub = client
                .subscribe::<serde_json::Value, _>(
                    "ledger_subscribeBlocks",
                    ArrayParams::new(),
                    "ledger_unsubscribeBlocks",
                )
                .await
                .expect("subscription");
            let mut out = Vec::new();
            while out.len() < n {
                match tokio::time::timeout(PATIENCE, sub.next()).await {
                    Ok(Some(Ok(v))) => out.push(v),
                    other => panic!("subscription ended: {other:?}"),
                }
            }
            out
        })
    }

    /// SIGKILLs node `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freezes (`SIGSTOP`) or thaws (`SIGCONT`) node `i`'s process: its
    /// sockets stay open, its state stays in memory.
    pub fn freeze(&self, i: usize, frozen: bool) {
        let pid = self.nodes[i].child.as_ref().expect("running").id();
        let sig = if frozen { "-STOP" } else { "-CONT" };
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {pid}");
    }

    /// SIGTERMs node `i` and waits for it to exit; returns its exit code.
    pub fn stop(&mut self, i: usize) -> Option<i32> {
        let mut c = self.nodes[i].child.take()?;
        sigterm(c.id());
        wait_exit(&mut c, Duration::from_secs(30))
    }

    /// Whether node `i`'s process has exited (reaping it if so).
    pub fn exited(&mut self, i: usize) -> bool {
        match self.nodes[i].child.as_mut() {
            None => true,
            Some(c) => matches!(c.try_wait(), Ok(Some(_))),
        }
    }

    /// The JSON log records of node `i`.
    pub fn log_records(&self, i: usize) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The log records of node `i` since it last started.
    pub fn records_since_start(&self, i: usize) -> Vec<serde_json::Value> {
        let all = self.log_records(i);
        let from = all
            .iter()
            .rposition(|r| r["message"] == "store open")
            .unwrap_or(0);
        all[from..].to_vec()
    }

    /// Deletes node `i`'s safety record, keeping the rest of its data (it
    /// must be stopped).
    pub fn delete_safety_record(&mut self, i: usize) {
        assert!(self.nodes[i].child.is_none(), "stop node {i} first");
        // `phalanx_storage::SAFETY_FILE`, named here so that this crate
        // does not link the store.
        let rec = self.nodes[i].home.join("data").join("safety.record");
        std::fs::remove_file(&rec).expect("removing the safety record");
    }

    /// The sum over every running node of a counter's value.
    pub fn metric_sum(&self, series: &str) -> f64 {
        (0..self.nodes.len())
            .filter_map(|i| self.metric(i, series))
            .sum()
    }

    /// Deletes node `i`'s data directory (it must be stopped).
    pub fn wipe_data(&mut self, i: usize) {
        assert!(self.nodes[i].child.is_none(), "stop node {i} first");
        let data = self.nodes[i].home.join("data");
        std::fs::remove_dir_all(&data).expect("removing the data directory");
    }

    /// Height → state root node `i` logged at each commit.
    pub fn roots(&self, i: usize) -> BTreeMap<u64, String> {
        self.log_records(i)
            .into_iter()
            .filter(|r| r["message"] == "committed")
            .filter_map(|r| Some((r["height"].as_u64()?, r["state_root"].as_str()?.to_string())))
            .collect()
    }

    /// Height → block id of every block node `i` logged as committed.
    pub fn committed(&self, i: usize) -> BTreeMap<u64, String> {
        self.log_records(i)
            .into_iter()
            .filter(|r| r["message"] == "committed")
            .filter_map(|r| Some((r["height"].as_u64()?, r["block"].as_str()?.to_string())))
            .collect()
    }

    /// Highest height node `i` logged as committed.
    pub fn height(&self, i: usize) -> u64 {
        self.committed(i).keys().next_back().copied().unwrap_or(0)
    }

    /// The whole log of node `i`, for failure messages.
    pub fn log_text(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }

    /// Waits until `cond` holds, polling; panics with `what` and the tail
    /// of every log after `PATIENCE`.
    pub fn wait_until(&mut self, what: &str, mut cond: impl FnMut(&mut Cluster) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if cond(self) {
                return;
            }
            // A node that died on its own fails the test now, with its log.
            for i in 0..self.nodes.len() {
                let died = match self.nodes[i].child.as_mut() {
                    Some(c) => matches!(c.try_wait(), Ok(Some(_))),
                    None => false,
                };
                if died {
                    panic!(
                        "node {i} exited while waiting for: {what}\n{}",
                        self.log_text(i)
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut tails = String::new();
        for i in 0..self.nodes.len() {
            let t = self.log_text(i);
            let lines: Vec<&str> = t.lines().collect();
            let from = lines.len().saturating_sub(15);
            tails.push_str(&format!("--- node {i} ---\n{}\n", lines[from..].join("\n")));
        }
        panic!("timed out waiting for: {what}\n{tails}");
    }
}

/// Waits up to `patience` for `child` to exit and returns its exit code;
/// kills it (and returns `None`) if it does not.
fn wait_exit(child: &mut Child, patience: Duration) -> Option<i32> {
    let deadline = Instant::now() + patience;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return st.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sigterm(pid: u32) {
    // The `kill` utility keeps this crate free of unsafe code.
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// A JSON-RPC error as the test sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcError {
    /// The code (`-1` for a transport failure).
    pub code: i32,
    /// The message.
    pub message: String,
}

impl Cluster {
    /// The JSON-RPC URL of node `i`.
    pub fn rpc_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[i].rpc_port)
    }

    /// Calls `method` on node `i` over HTTP.
    pub fn rpc(
        &self,
        i: usize,
        method: &str,
        params: Vec<serde_json::Value>,
    ) -> Result<serde_json::Value, RpcError> {
        use jsonrpsee_core::client::ClientT;
        use jsonrpsee_core::params::ArrayParams;
        use jsonrpsee_http_client::HttpClient;
        let url = self.rpc_url(i);
        let rt = runtime();
        rt.block_on(async move {
            let client = HttpClient::builder()
                .request_timeout(Duration::from_secs(60))
                .build(&url)
                .map_err(|e| RpcError {
                    code: -1,
                    message: e.to_string(),
                })?;
            let mut p = ArrayParams::new();
            for v in params {
                p.insert(v).map_err(|e| RpcError {
                    code: -1,
                    message: e.to_string(),
                })?;
            }
            client
                .request::<serde_json::Value, _>(method, p)
                .await
                .map_err(|e| match e {
                    jsonrpsee_core::ClientError::Call(obj) => RpcError {
                        code: obj.code(),
                        message: obj.message().to_string(),
                    },
                    other => RpcError {
                        code: -1,
                        message: other.to_string(),
                    },
                })
        })
    }

    /// An HTTP POST of a raw body to node `i`'s RPC port: (status, body).
    pub fn http_post(&self, i: usize, body: &[u8]) -> Option<(u16, String)> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.nodes[i].rpc_port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(
            s,
            "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .ok()?;
        // A server may answer (and close) before reading a large body.
        let _ = s.write_all(body);
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        let status = out.split_whitespace().nth(1)?.parse().ok()?;
        let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        Some((status, body))
    }

    /// An HTTP GET of `path` on node `i`'s RPC port: (status, body).
    pub fn http_get(&self, i: usize, path: &str) -> Option<(u16, String)> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.nodes[i].rpc_port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let status = out.split_whitespace().nth(1)?.parse().ok()?;
        let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        Some((status, body))
    }

    /// The value of one series (`name{labels}` exactly as exposed) in node
    /// `i`'s `/metrics`; None when unreachable or absent.
    pub fn metric(&self, i: usize, series: &str) -> Option<f64> {
        let url = format!("http://127.0.0.1:{}/metrics", self.nodes[i].metrics_port);
        let text = ureq::get(&url)
            .call()
            .ok()?
            .body_mut()
            .read_to_string()
            .ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    }

    /// Height node `i` reports over RPC (0 when unreachable).
    pub fn rpc_height(&self, i: usize) -> u64 {
        self.rpc(i, "ledger_status", vec![])
            .ok()
            .and_then(|v| v["height"].as_u64())
            .unwrap_or(0)
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime for the RPC client")
    })
}

/// A signed transfer of `amount` from demo account `from` to `to`, hex.
pub fn transfer_hex(chain: &ChainId, from: u64, nonce: u64, to: &PublicKey, amount: u64) -> String {
    let t = phalanx_ledger::Transfer {
        chain_id: chain.clone(),
        sender: account(from).public(),
        nonce,
        legs: vec![phalanx_ledger::Leg { to: *to, amount }],
    }
    .sign(&account(from));
    hex_encode(&t.encode())
}

/// Lower-case hex.
pub fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Runs `phalanx-testnet args` and returns its standard output, failing
/// the test with both outputs if it exits non-zero.
pub fn testnet_ok(args: &[&str]) -> String {
    let (code, out, err) = run(&testnet_bin(), args);
    assert_eq!(
        code,
        Some(0),
        "phalanx-testnet {args:?} failed:\n{out}\n{err}"
    );
    out
}

/// Stops the testnet in its directory on drop (processes, Prometheus,
/// network namespaces), also when the test fails.
pub struct TestnetDown(pub PathBuf);

impl Drop for TestnetDown {
    fn drop(&mut self) {
        let _ = run(
            &testnet_bin(),
            &["down", "--dir", &self.0.to_string_lossy()],
        );
    }
}

/// `Err(why)` when this process cannot create network namespaces.
pub fn namespaces_available() -> Result<(), String> {
    let name = format!("phxprobe{}", std::process::id());
    let add = Command::new("ip").args(["netns", "add", &name]).output();
    match add {
        Ok(o) if o.status.success() => {
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
            Ok(())
        }
        Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_string()),
        Err(e) => Err(format!("no `ip` command: {e}")),
    }
}
