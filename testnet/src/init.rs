//! Creating a validator's home with `phalanx init` on chosen local ports.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

/// Why a home could not be created.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The binary did not run.
    #[error("running {bin} init: {source}")]
    Spawn {
        /// The binary.
        bin: String,
        /// Why.
        source: std::io::Error,
    },
    /// It ran and failed, or printed something unexpected.
    #[error("phalanx init: {0}")]
    Failed(String),
}

/// Runs `phalanx init` for `home` listening on 127.0.0.1 at `ports` (p2p,
/// JSON-RPC, metrics), with the genesis at `genesis` (relative to the
/// home); returns the new validator key (hex).
pub fn init_home(
    phalanx: &Path,
    home: &Path,
    ports: [u16; 3],
    genesis: &str,
) -> Result<String, InitError> {
    init_home_at(phalanx, home, Ipv4Addr::LOCALHOST, ports, genesis)
}

/// [`init_home`] listening on `ip` (a node in a network namespace of its
/// own listens on its namespace's address).
pub fn init_home_at(
    phalanx: &Path,
    home: &Path,
    ip: Ipv4Addr,
    [p2p, rpc, metrics]: [u16; 3],
    genesis: &str,
) -> Result<String, InitError> {
    let out = Command::new(phalanx)
        .arg("init")
        .arg("--home")
        .arg(home)
        .args(["--listen", &format!("/ip4/{ip}/tcp/{p2p}")])
        .args(["--rpc-listen", &format!("{ip}:{rpc}")])
        .args(["--metrics-listen", &format!("{ip}:{metrics}")])
        .args(["--genesis", genesis, "--json"])
        .output()
        .map_err(|source| InitError::Spawn {
            bin: phalanx.display().to_string(),
            source,
        })?;
    if !out.status.success() {
        return Err(InitError::Failed(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| InitError::Failed(format!("output is not JSON: {e}")))?;
    v["public_key"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| InitError::Failed("no public_key in its output".into()))
}
