//! A harness for multi-process tests: real `phalanx` processes on
//! 127.0.0.1 with ports picked free at run time, each with its own home
//! directory, logging JSON to a file the test reads.
//!
//! Every child is killed when the [`Cluster`] is dropped, also when a test
//! fails. Waits are for conditions, with generous deadlines, never fixed
//! sleeps that assume a fast machine.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use phalanx_crypto::{ChainId, KeyPair, PublicKey};
use phalanx_ledger::{Genesis, GenesisAccount, Params};

/// Deadline for conditions that need the cluster to make progress.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// The `phalanx` binary, built once per test process with the same profile
/// and target directory as the tests.
pub fn phalanx_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "phalanx-node", "--bin", "phalanx"])
            .status()
            .expect("running cargo build for the phalanx binary");
        assert!(status.success(), "building the phalanx binary failed");
        // target/<profile>/deps/<test> → target/<profile>/phalanx
        let exe = std::env::current_exe().expect("test executable path");
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target profile directory");
        let bin = dir.join("phalanx");
        assert!(bin.exists(), "{} missing after the build", bin.display());
        bin
    })
    .clone()
}

/// A port free at the time of asking.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
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

fn run_init(home: &Path, p2p: u16, rpc: u16) -> PublicKey {
    let out = Command::new(phalanx_bin())
        .arg("init")
        .arg("--home")
        .arg(home)
        .args(["--listen", &format!("/ip4/127.0.0.1/tcp/{p2p}")])
        .args(["--rpc-listen", &format!("127.0.0.1:{rpc}")])
        .args(["--genesis", "../genesis.json", "--json"])
        .output()
        .expect("running phalanx init");
    assert!(
        out.status.success(),
        "phalanx init failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("init prints JSON");
    PublicKey::from_hex(v["public_key"].as_str().expect("public_key")).expect("a key")
}

impl Cluster {
    /// Creates the homes, keys, configs (each node peered with all others)
    /// and the genesis; starts nothing.
    pub fn new(opts: ClusterOptions) -> Cluster {
        let dir = tempfile::tempdir().expect("scratch directory");
        let mut nodes = Vec::new();
        for i in 0..opts.validators {
            let home = dir.path().join(format!("node{i}"));
            let (p2p_port, rpc_port) = (free_port(), free_port());
            let key = run_init(&home, p2p_port, rpc_port);
            nodes.push(Node {
                log: home.join("node.log"),
                home,
                key,
                p2p_port,
                rpc_port,
                child: None,
            });
        }
        // Peers: every other validator.
        for i in 0..nodes.len() {
            let mut extra = String::new();
            for (j, n) in nodes.iter().enumerate() {
                if i != j {
                    extra.push_str(&format!(
                        "\n[[peers]]\nkey = \"{}\"\naddr = \"/ip4/127.0.0.1/tcp/{}\"\n",
                        n.key.to_hex(),
                        n.p2p_port
                    ));
                }
            }
            let cfg = nodes[i].home.join("config.toml");
            let mut text = std::fs::read_to_string(&cfg).expect("config");
            text.push_str(&extra);
            std::fs::write(&cfg, text).expect("config");
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

    /// Starts every node.
    pub fn start_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.start(i);
        }
    }

    /// Starts node `i` (appending to its log).
    pub fn start(&mut self, i: usize) {
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
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawning phalanx start");
        n.child = Some(child);
    }

    /// SIGKILLs node `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERMs node `i` and waits for it to exit; returns its exit code.
    pub fn stop(&mut self, i: usize) -> Option<i32> {
        let mut c = self.nodes[i].child.take()?;
        sigterm(c.id());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
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
