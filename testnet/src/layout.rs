//! The testnet directory and the processes it records.
//!
//! This module owns `DIR/testnet.json` (what `up` started, where it
//! listens, and the pid of each process), the demo account keys, and the
//! signals sent to processes. It only ever signals a pid whose command line
//! still names this testnet's directory, so a recycled pid belonging to
//! something else is left alone.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use phalanx_crypto::{Digest, KeyPair};
use serde::{Deserialize, Serialize};

/// The file `up` writes.
pub const TESTNET_FILE: &str = "testnet.json";
/// The demo account keys.
pub const ACCOUNTS_FILE: &str = "accounts/keys.json";

/// One validator of the testnet.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Validator index.
    pub index: usize,
    /// Validator public key (hex); also its libp2p identity.
    pub key: String,
    /// Home directory (config, key, data, log).
    pub home: PathBuf,
    /// JSON-RPC over HTTP.
    pub rpc_url: String,
    /// JSON-RPC over WebSocket (same port).
    pub ws_url: String,
    /// Prometheus metrics.
    pub metrics_url: String,
    /// libp2p address.
    pub p2p_addr: String,
    /// The log file.
    pub log: PathBuf,
    /// The running process, if any.
    pub pid: Option<u32>,
    /// Attack modes it runs (`--byzantine`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub byzantine: Option<String>,
    /// The validator whose key this process holds, when it is a twin
    /// (`--twin`): a second process signing as that validator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub twin_of: Option<usize>,
    /// A full node (`--full-nodes`): it follows the chain and serves
    /// reads, and is not a validator.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub full_node: bool,
}

impl NodeInfo {
    /// Whether this node is one of the chain's validators (not a twin's
    /// second copy, not a full node).
    pub fn is_validator(&self) -> bool {
        self.twin_of.is_none() && !self.full_node
    }
}

/// What a node's process is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Process {
    /// Running.
    Running,
    /// Frozen (`pause`, SIGSTOP).
    Paused,
    /// Gone, or never started.
    Stopped,
}

impl NodeInfo {
    /// Whether this testnet's process for the node is running, paused or
    /// gone (a recycled pid is not ours).
    pub fn process(&self) -> Process {
        match self.pid.filter(|&p| is_ours(p, &self.home)) {
            None => Process::Stopped,
            Some(p) if process_state(p) == Some('T') => Process::Paused,
            Some(_) => Process::Running,
        }
    }
}

/// The Prometheus server `up --prometheus` started.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PrometheusInfo {
    /// Its web UI and API.
    pub url: String,
    /// The process.
    pub pid: Option<u32>,
    /// Its directory (config, rules, data, log).
    pub dir: PathBuf,
}

/// `DIR/testnet.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Testnet {
    /// The chain.
    pub chain_id: String,
    /// The `phalanx` binary the nodes run.
    pub phalanx: PathBuf,
    /// The shared genesis file.
    pub genesis: PathBuf,
    /// The validators.
    pub nodes: Vec<NodeInfo>,
    /// Funded demo accounts (keys in `DIR/accounts/keys.json`).
    pub accounts: usize,
    /// The Prometheus server, when started.
    pub prometheus: Option<PrometheusInfo>,
    /// A bug planted in every node (`--planted-bug`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planted_bug: Option<String>,
    /// The network namespaces, when started with `--netns`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<crate::netns::NetnsInfo>,
}

impl Testnet {
    /// Reads `DIR/testnet.json`.
    pub fn load(dir: &Path) -> Result<Testnet> {
        let path = dir.join(TESTNET_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {} (is there a testnet in {}? start one with `phalanx-testnet up --dir {}`)",
                path.display(),
                dir.display(),
                dir.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Writes `DIR/testnet.json` (atomically: a reader never sees half).
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join(TESTNET_FILE);
        let tmp = dir.join(format!("{TESTNET_FILE}.tmp"));
        std::fs::write(&tmp, serde_json::to_string_pretty(self)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
    }

    /// Node `i`, or an error naming the valid range.
    pub fn node(&self, i: usize) -> Result<&NodeInfo> {
        self.nodes.get(i).with_context(|| {
            format!(
                "no node {i}: this testnet has nodes 0 to {}",
                self.nodes.len().saturating_sub(1)
            )
        })
    }
}

/// The key of demo account `i`, derived from the testnet's account seed.
pub fn account_key(master: &[u8; 32], i: usize) -> KeyPair {
    let mut input = master.to_vec();
    input.extend_from_slice(&(i as u64).to_le_bytes());
    KeyPair::from_seed(Digest::of(&input).0)
}

/// The demo accounts' keys file.
#[derive(Serialize, Deserialize)]
pub struct AccountsFile {
    /// Account `i`'s key is derived from this seed and `i`
    /// (SHA-256 of seed ‖ i as 8 little-endian bytes).
    pub seed: String,
    /// How many.
    pub count: usize,
}

/// Reads the demo account keys.
pub fn load_accounts(dir: &Path) -> Result<Vec<KeyPair>> {
    let path = dir.join(ACCOUNTS_FILE);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let f: AccountsFile =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let seed: [u8; 32] = hex::decode(&f.seed)
        .ok()
        .and_then(|b| b.try_into().ok())
        .with_context(|| format!("{}: seed is not 32 bytes of hex", path.display()))?;
    Ok((0..f.count).map(|i| account_key(&seed, i)).collect())
}

/// The state letter of `pid` in `/proc/PID/stat` (`R`, `S`, `T` stopped,
/// `Z` zombie…), or None if there is no such process.
pub fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may itself hold spaces or ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.trim_start().chars().next()
}

/// CPU seconds (user and system) that `pid` has used so far, from
/// `/proc/PID/stat`; None if there is no such process.
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    use nix::unistd::{SysconfVar, sysconf};
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    // After the command name: state (field 3) … utime (14), stime (15).
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
    let per_second = sysconf(SysconfVar::CLK_TCK).ok()??;
    Some((ticks(11)? + ticks(12)?) as f64 / per_second as f64)
}

/// Whether `pid` is alive and its command line contains `marker` (a path
/// inside this testnet), so it is the process this testnet started.
pub fn is_ours(pid: u32, marker: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    if matches!(process_state(pid), None | Some('Z')) {
        return false;
    }
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    cmdline.contains(&*marker.to_string_lossy())
}

/// Sends `sig` to `pid` if it is ours.
pub fn signal(pid: u32, marker: &Path, sig: Signal) -> Result<bool> {
    if !is_ours(pid, marker) {
        return Ok(false);
    }
    let pid_t = i32::try_from(pid).context("pid out of range")?;
    kill(Pid::from_raw(pid_t), sig).with_context(|| format!("sending {sig} to {pid}"))?;
    Ok(true)
}

/// Stops `pid` (if ours): SIGTERM (and SIGCONT, in case it is paused),
/// then SIGKILL if it has not exited within `grace`. Returns whether it
/// was running.
pub fn stop(pid: u32, marker: &Path, grace: Duration) -> Result<bool> {
    if !signal(pid, marker, Signal::SIGTERM)? {
        return Ok(false);
    }
    signal(pid, marker, Signal::SIGCONT)?;
    if wait_gone(pid, marker, grace) {
        return Ok(true);
    }
    signal(pid, marker, Signal::SIGKILL)?;
    if !wait_gone(pid, marker, Duration::from_secs(10)) {
        bail!("process {pid} did not exit after SIGKILL");
    }
    Ok(true)
}

/// Waits until `pid` is no longer ours (exited); false on timeout.
pub fn wait_gone(pid: u32, marker: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !is_ours(pid, marker) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    !is_ours(pid, marker)
}

/// Starts `program args` detached from this process (its own process
/// group, so a Ctrl-C in the terminal does not reach it), appending its
/// output to `log`. `marker` must appear in `args`. Returns the pid once
/// the process is visibly ours: the kernel publishes a new program's
/// command line a moment after `spawn` returns.
pub fn spawn_detached(program: &Path, args: &[&str], log: &Path, marker: &Path) -> Result<u32> {
    use std::os::unix::process::CommandExt;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let err = out.try_clone()?;
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    let mut child = child;
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !is_ours(pid, marker) {
        if let Ok(Some(status)) = child.try_wait() {
            bail!(
                "{} exited at once ({status}):\n{}",
                program.display(),
                log_tail(log, 20)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "{} (pid {pid}) never showed its arguments",
                program.display()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(pid)
}

/// The last `n` lines of a log, for error messages.
pub fn log_tail(log: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_processes_naming_the_marker_are_ours_and_stop_ends_them() {
        let dir = std::env::temp_dir().join(format!("phalanx-layout-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let marker = dir.join("node-0");
        let log = dir.join("log");
        let pid = spawn_detached(
            Path::new("/bin/sh"),
            &["-c", "sleep 30", &marker.to_string_lossy()],
            &log,
            &marker,
        )
        .unwrap();
        assert!(is_ours(pid, &marker));
        assert!(!is_ours(pid, &dir.join("node-1")));
        // A signal for another marker is not sent.
        assert!(!signal(pid, &dir.join("node-1"), Signal::SIGKILL).unwrap());
        assert!(is_ours(pid, &marker));
        assert!(stop(pid, &marker, Duration::from_secs(10)).unwrap());
        assert!(!is_ours(pid, &marker));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cpu_seconds_of_a_busy_process_grow_and_a_missing_one_has_none() {
        let me = std::process::id();
        let before = process_cpu_seconds(me).unwrap();
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let after = process_cpu_seconds(me).unwrap();
        assert!(after > before, "{before} -> {after}");
        assert_eq!(process_cpu_seconds(u32::MAX), None);
    }
}
