//! The node's `config.toml`: every value has a default and a comment, and a
//! bad value is refused with an error naming its key.
//!
//! This module owns parsing, defaults, validation and the commented template
//! that `phalanx init` writes. It never opens sockets or files other than the
//! config file itself.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use libp2p::Multiaddr;
use phalanx_crypto::PublicKey;
use serde::{Deserialize, Serialize};

/// Largest config file read, bytes.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not valid TOML, or an unknown or mistyped key.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (it names the key and line).
        message: String,
    },
    /// A value out of range.
    #[error("invalid config `{key}`: {reason}")]
    Invalid {
        /// The offending key.
        key: &'static str,
        /// Why.
        reason: String,
    },
}

/// A validator this node connects to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    /// The peer's validator public key (hex).
    pub key: PublicKey,
    /// Where it listens, as a libp2p multiaddress.
    pub addr: String,
}

/// The node configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The shared genesis file (relative paths are from the home directory).
    pub genesis: PathBuf,
    /// The validator key file.
    pub key_file: PathBuf,
    /// The data directory: the store (`db/`) and the safety record.
    pub data_dir: PathBuf,
    /// Committed blocks kept below the stable checkpoint, for peers that
    /// block-sync; a peer further behind state-syncs instead.
    pub retained_blocks: u64,
    /// The libp2p listen address.
    pub listen: String,
    /// The other validators.
    pub peers: Vec<Peer>,
    /// JSON-RPC listen address.
    pub rpc_listen: SocketAddr,
    /// JSON-RPC connections one client address may hold open.
    pub rpc_connections_per_ip: u32,
    /// JSON-RPC calls one client address may make per second (a burst of
    /// two seconds' worth is allowed).
    pub rpc_requests_per_sec: u32,
    /// Prometheus metrics listen address (`GET /metrics`).
    pub metrics_listen: SocketAddr,
    /// Log format: "human" or "json".
    pub log_format: String,
    /// Log filter, in `RUST_LOG` syntax.
    pub log_level: String,
    /// Messages queued per peer while its connection is down or slow; older
    /// ones are kept, newer dropped (consensus recovers by timeouts).
    pub peer_queue: usize,
    /// First reconnect delay, ms; doubled per failure up to
    /// `reconnect_max_ms`.
    pub reconnect_base_ms: u64,
    /// Longest reconnect delay, ms.
    pub reconnect_max_ms: u64,
    /// How long a leader with nothing to order waits before proposing an
    /// empty block, ms. Must stay well under the chain's base view timeout.
    pub empty_block_delay_ms: u64,
    /// Most transactions in the mempool.
    pub mempool_max_txs: usize,
    /// Most bytes of transactions in the mempool.
    pub mempool_max_bytes: usize,
    /// How far past a sender's next nonce a pending transaction may be.
    pub mempool_max_nonce_gap: u64,
    /// A proposable transaction pending this long, ms, counts as overdue
    /// (`phalanx_mempool_overdue_transactions`, and a warning): at f + 1
    /// validators, a sign that leaders leave it out.
    pub overdue_tx_ms: u64,
    /// Added to this node's clock, ms (may be negative): a skewed clock
    /// for tests. Keep 0 in production.
    pub clock_offset_ms: i64,
    /// Async runtime worker threads; 0 means one per CPU core. Validators
    /// sharing a machine (a local testnet) run better with fewer.
    pub runtime_threads: usize,
    /// Run as a full node: follow the chain from the validators in `peers`
    /// (verifying every certificate), serve reads, and forward submitted
    /// transactions to `forward_rpc`. Its key is not a validator's.
    pub full_node: bool,
    /// A full node's validators' JSON-RPC URLs, where submissions go.
    pub forward_rpc: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            genesis: PathBuf::from("genesis.json"),
            key_file: PathBuf::from("validator.key"),
            data_dir: PathBuf::from("data"),
            retained_blocks: 1000,
            listen: "/ip4/0.0.0.0/tcp/26656".into(),
            peers: Vec::new(),
            rpc_listen: SocketAddr::from(([127, 0, 0, 1], 8545)),
            rpc_connections_per_ip: crate::rpc_guard::DEFAULT_CONNECTIONS_PER_IP,
            rpc_requests_per_sec: crate::rpc_guard::DEFAULT_REQUESTS_PER_SEC,
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9615)),
            log_format: "human".into(),
            log_level: "info".into(),
            peer_queue: 1024,
            reconnect_base_ms: 200,
            reconnect_max_ms: 10_000,
            empty_block_delay_ms: 200,
            mempool_max_txs: 100_000,
            mempool_max_bytes: 64 << 20,
            mempool_max_nonce_gap: 64,
            overdue_tx_ms: 30_000,
            clock_offset_ms: 0,
            runtime_threads: 0,
            full_node: false,
            forward_rpc: Vec::new(),
        }
    }
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let read_err = |source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read_err)?;
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::Invalid {
                key: "(file)",
                reason: format!("larger than {MAX_CONFIG_BYTES} bytes"),
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        Config::parse(&text, path)
    }

    /// Parses and validates TOML text (`path` names it in errors).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every value, naming the key that is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key, reason: String| Err(ConfigError::Invalid { key, reason });
        if self.listen.parse::<Multiaddr>().is_err() {
            return bad("listen", format!("`{}` is not a multiaddress", self.listen));
        }
        for p in &self.peers {
            if p.addr.parse::<Multiaddr>().is_err() {
                return bad("peers", format!("`{}` is not a multiaddress", p.addr));
            }
        }
        if !matches!(self.log_format.as_str(), "human" | "json") {
            return bad(
                "log_format",
                format!("`{}`: expected \"human\" or \"json\"", self.log_format),
            );
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log_level).is_err() {
            return bad(
                "log_level",
                format!("`{}` is not a log filter", self.log_level),
            );
        }
        if self.retained_blocks == 0 {
            return bad("retained_blocks", "must be at least 1".into());
        }
        if self.peer_queue == 0 || self.peer_queue > 1 << 20 {
            return bad("peer_queue", "must be between 1 and 1048576".into());
        }
        if self.reconnect_base_ms == 0 || self.reconnect_base_ms > self.reconnect_max_ms {
            return bad(
                "reconnect_base_ms",
                "must be at least 1 and at most reconnect_max_ms".into(),
            );
        }
        if self.mempool_max_txs == 0 || self.mempool_max_txs > 10_000_000 {
            return bad("mempool_max_txs", "must be between 1 and 10000000".into());
        }
        if self.mempool_max_bytes < 4096 || self.mempool_max_bytes > 16 << 30 {
            return bad(
                "mempool_max_bytes",
                "must be between 4096 and 16 GiB".into(),
            );
        }
        if self.mempool_max_nonce_gap > 1 << 20 {
            return bad("mempool_max_nonce_gap", "at most 1048576".into());
        }
        if self.runtime_threads > 1024 {
            return bad("runtime_threads", "at most 1024".into());
        }
        if self.clock_offset_ms.unsigned_abs() > 3_600_000 {
            return bad("clock_offset_ms", "at most one hour either way".into());
        }
        if self.overdue_tx_ms < 1000 {
            return bad("overdue_tx_ms", "must be at least 1000".into());
        }
        if let Some(u) = self.forward_rpc.iter().find(|u| !u.starts_with("http://")) {
            return bad("forward_rpc", format!("`{u}`: expected an http:// URL"));
        }
        if self.rpc_connections_per_ip == 0
            || self.rpc_connections_per_ip > crate::rpc::MAX_CONNECTIONS
        {
            return bad(
                "rpc_connections_per_ip",
                format!("must be between 1 and {}", crate::rpc::MAX_CONNECTIONS),
            );
        }
        if self.rpc_requests_per_sec == 0 || self.rpc_requests_per_sec > 1_000_000 {
            return bad(
                "rpc_requests_per_sec",
                "must be between 1 and 1000000".into(),
            );
        }
        if self.empty_block_delay_ms > 60_000 {
            return bad("empty_block_delay_ms", "at most 60000".into());
        }
        Ok(())
    }

    /// `p` resolved against the home directory.
    pub fn resolve(home: &Path, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            home.join(p)
        }
    }

    /// The commented config file `phalanx init` writes.
    pub fn template(&self) -> String {
        let mut peers = String::new();
        for p in &self.peers {
            peers.push_str(&format!(
                "[[peers]]\nkey = \"{}\"\naddr = \"{}\"\n\n",
                p.key.to_hex(),
                p.addr
            ));
        }
        format!(
            r#"# Phalanx node configuration. Every key is optional; the value shown is
# the default unless `phalanx init` was told otherwise.

# The genesis file shared by every validator (relative to this directory).
genesis = "{genesis}"
# This validator's key (mode 0600; never share it).
key_file = "{key}"
# The data directory: the RocksDB store (db/) and the safety record.
data_dir = "{data}"
# Committed blocks kept below the stable checkpoint for peers that catch up
# by block sync; a peer further behind state-syncs instead.
retained_blocks = {retained}
# libp2p listen address (TCP + noise + yamux).
listen = "{listen}"
# JSON-RPC (HTTP and WebSocket on one port).
rpc_listen = "{rpc}"
# Per client address: connections open at once, and calls per second
# (each call of a batch counts; bursts of two seconds' worth pass).
rpc_connections_per_ip = {rpcc}
rpc_requests_per_sec = {rpcr}
# Prometheus metrics, served at http://ADDR/metrics.
metrics_listen = "{metrics}"
# "human" or "json".
log_format = "{fmt}"
# Log filter, RUST_LOG syntax (e.g. "info,phalanx_node=debug").
log_level = "{level}"
# Messages queued per peer while its link is down or slow.
peer_queue = {queue}
# Reconnect backoff, ms: first delay, doubled per failure up to the max.
reconnect_base_ms = {rb}
reconnect_max_ms = {rm}
# A leader with nothing to order waits this long before proposing an empty
# block, ms (keep it well under the chain's base view timeout).
empty_block_delay_ms = {eb}

# Mempool bounds: count, bytes, and how far past a sender's next nonce a
# pending transaction may be.
mempool_max_txs = {mt}
mempool_max_bytes = {mb}
mempool_max_nonce_gap = {mg}
# A transaction that could be proposed and has waited this long, ms, is
# overdue: counted in phalanx_mempool_overdue_transactions and logged. At
# f + 1 validators at once it means leaders are leaving it out.
overdue_tx_ms = {ov}

# Added to this node's clock, ms (negative: behind). For testing clock
# skew; keep 0.
clock_offset_ms = {co}

# Async runtime worker threads; 0 = one per CPU core. Validators sharing a
# machine (a local testnet) run better with fewer.
runtime_threads = {rt}

# A full node follows the chain from the validators in [[peers]] and
# serves reads; it never votes. Its submissions go to the validators'
# JSON-RPC URLs in forward_rpc.
full_node = {full}
forward_rpc = [{forward}]

# The other validators: one [[peers]] table each, with the validator's
# public key and its libp2p address.
{peers}"#,
            full = self.full_node,
            forward = self
                .forward_rpc
                .iter()
                .map(|u| format!("\"{u}\""))
                .collect::<Vec<_>>()
                .join(", "),
            genesis = self.genesis.display(),
            key = self.key_file.display(),
            data = self.data_dir.display(),
            retained = self.retained_blocks,
            listen = self.listen,
            rpc = self.rpc_listen,
            rpcc = self.rpc_connections_per_ip,
            rpcr = self.rpc_requests_per_sec,
            metrics = self.metrics_listen,
            fmt = self.log_format,
            level = self.log_level,
            queue = self.peer_queue,
            rb = self.reconnect_base_ms,
            rm = self.reconnect_max_ms,
            eb = self.empty_block_delay_ms,
            mt = self.mempool_max_txs,
            mb = self.mempool_max_bytes,
            mg = self.mempool_max_nonce_gap,
            ov = self.overdue_tx_ms,
            co = self.clock_offset_ms,
            rt = self.runtime_threads,
            peers = peers,
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_template_parses_back_to_the_same_config() {
        let mut c = Config::default();
        c.peers.push(Peer {
            key: phalanx_crypto::KeyPair::from_seed([7; 32]).public(),
            addr: "/ip4/127.0.0.1/tcp/4001".into(),
        });
        let back = Config::parse(&c.template(), Path::new("c.toml")).unwrap();
        assert_eq!(back, c);
        assert_eq!(
            Config::parse("", Path::new("c.toml")).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("listen = \"nope\"", "listen"),
            ("log_format = \"xml\"", "log_format"),
            ("peer_queue = 0", "peer_queue"),
            ("rpc_connections_per_ip = 0", "rpc_connections_per_ip"),
            ("rpc_requests_per_sec = 0", "rpc_requests_per_sec"),
            ("reconnect_base_ms = 0", "reconnect_base_ms"),
            ("no_such_key = 1", "no_such_key"),
            ("rpc_listen = \"localhost\"", "rpc_listen"),
            ("metrics_listen = \"nope\"", "metrics_listen"),
            ("runtime_threads = 5000", "runtime_threads"),
            (
                "[[peers]]\nkey = \"zz\"\naddr = \"/ip4/1.2.3.4/tcp/1\"",
                "key",
            ),
        ];
        for (text, key) in cases {
            let err = Config::parse(text, Path::new("c.toml"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }
}
