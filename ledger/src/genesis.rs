//! The genesis file every validator of a chain shares.

use std::collections::BTreeSet;
use std::path::Path;

use phalanx_crypto::{ChainId, Digest, PublicKey, ValidatorSet, encode};
use serde::{Deserialize, Serialize};

use crate::LedgerError;

/// Largest genesis file read, bytes.
const MAX_GENESIS_BYTES: u64 = 256 * 1024 * 1024;

/// An initial balance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenesisAccount {
    /// The account's public key (hex).
    pub address: PublicKey,
    /// Its balance.
    pub balance: u64,
}

/// Protocol parameters fixed at genesis.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    /// Committed blocks between checkpoints. Default 100.
    pub checkpoint_interval: u64,
    /// Most transactions per block. Default 5000.
    pub max_block_txs: u32,
    /// Largest block payload, bytes. Default 4 MiB.
    pub max_block_bytes: u32,
    /// First view timeout, ms. Default 1000.
    pub base_timeout_ms: u64,
    /// Longest view timeout, ms. Default 30000.
    pub max_timeout_ms: u64,
    /// Least amount a leg may move into an account that does not exist
    /// yet. Default 1000.
    pub min_account_balance: u64,
    /// How long a transaction may wait in a mempool before it is dropped,
    /// ms. Default 600000 (10 minutes).
    pub mempool_ttl_ms: u64,
    /// Most transactions one sender may have waiting behind a nonce gap in
    /// a mempool. Default 16.
    pub mempool_future_per_sender: u32,
    /// Share of a mempool's capacity that transactions waiting behind a
    /// nonce gap may take, percent. Default 10.
    pub mempool_future_share_percent: u8,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            checkpoint_interval: 100,
            max_block_txs: 5000,
            max_block_bytes: 4 * 1024 * 1024,
            base_timeout_ms: 1000,
            max_timeout_ms: 30_000,
            min_account_balance: 1000,
            mempool_ttl_ms: 600_000,
            mempool_future_per_sender: 16,
            mempool_future_share_percent: 10,
        }
    }
}

/// The genesis of a chain. Its [`Genesis::hash`] identifies the chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Genesis {
    /// The chain id, inside every signature.
    pub chain_id: ChainId,
    /// Timestamp of the genesis block, ms since the Unix epoch.
    pub genesis_time_ms: u64,
    /// The validators' public keys (hex), in leader-rotation order.
    pub validators: Vec<PublicKey>,
    /// Initial balances.
    pub accounts: Vec<GenesisAccount>,
    /// Protocol parameters.
    #[serde(default)]
    pub params: Params,
}

impl Genesis {
    /// Parses and validates genesis JSON.
    pub fn from_json(text: &str) -> Result<Genesis, LedgerError> {
        let g: Genesis =
            serde_json::from_str(text).map_err(|e| LedgerError::Genesis(e.to_string()))?;
        g.validate()?;
        Ok(g)
    }

    /// Reads and validates a genesis file.
    pub fn load(path: &Path) -> Result<Genesis, LedgerError> {
        let err = |e: std::io::Error| LedgerError::Genesis(format!("{}: {e}", path.display()));
        let len = std::fs::metadata(path).map_err(err)?.len();
        if len > MAX_GENESIS_BYTES {
            return Err(LedgerError::Genesis(format!(
                "{}: {len} bytes, at most {MAX_GENESIS_BYTES}",
                path.display()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(err)?;
        Genesis::from_json(&text)
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks the rules a usable genesis must meet.
    pub fn validate(&self) -> Result<(), LedgerError> {
        let bad = |s: String| Err(LedgerError::Genesis(s));
        ValidatorSet::new(self.validators.clone())
            .map_err(|e| LedgerError::Genesis(format!("validators: {e}")))?;
        let mut seen = BTreeSet::new();
        let mut supply: u64 = 0;
        for a in &self.accounts {
            if !seen.insert(a.address) {
                return bad(format!("accounts: {} listed twice", a.address));
            }
            supply = match supply.checked_add(a.balance) {
                Some(s) => s,
                None => return bad("accounts: total supply exceeds 2^64 - 1".into()),
            };
        }
        let p = &self.params;
        if p.checkpoint_interval == 0 {
            return bad("params.checkpoint_interval: must be at least 1".into());
        }
        if p.max_block_txs == 0 || p.max_block_txs as usize > crate::MAX_TXS_PER_BLOCK {
            return bad(format!(
                "params.max_block_txs: must be between 1 and {}",
                crate::MAX_TXS_PER_BLOCK
            ));
        }
        if (p.max_block_bytes as usize) < crate::MAX_TX_BYTES || p.max_block_bytes > 8 << 20 {
            return bad("params.max_block_bytes: must be between 1 KiB and 8 MiB".into());
        }
        if p.base_timeout_ms == 0 || p.max_timeout_ms < p.base_timeout_ms {
            return bad("params: need 0 < base_timeout_ms <= max_timeout_ms".into());
        }
        if p.min_account_balance == 0 {
            return bad("params.min_account_balance: must be at least 1".into());
        }
        if p.mempool_ttl_ms < 1000 {
            return bad("params.mempool_ttl_ms: must be at least 1000".into());
        }
        if p.mempool_future_share_percent > 100 {
            return bad("params.mempool_future_share_percent: must be at most 100".into());
        }
        Ok(())
    }

    /// The rules execution applies on this chain.
    pub fn rules(&self) -> crate::Rules {
        crate::Rules {
            chain: self.chain_id.clone(),
            min_account_balance: self.params.min_account_balance,
        }
    }

    /// The validator set.
    pub fn validator_set(&self) -> Result<ValidatorSet, LedgerError> {
        ValidatorSet::new(self.validators.clone())
            .map_err(|e| LedgerError::Genesis(format!("validators: {e}")))
    }

    /// Sum of initial balances: the total supply, constant forever.
    pub fn total_supply(&self) -> u64 {
        self.accounts.iter().map(|a| a.balance).sum()
    }

    /// The chain's identity: SHA-256 over the canonical encoding (not the
    /// file's bytes, so formatting does not matter).
    pub fn hash(&self) -> Digest {
        Digest::of_parts(&[b"phalanx/genesis", &encode(self)])
    }

    /// The chain id consensus signs with: bound to this genesis's hash, so
    /// that chains differing in validators, accounts or parameters (or a
    /// chain relaunched with the same name and keys) never accept each
    /// other's blocks or certificates.
    pub fn consensus_chain(&self) -> ChainId {
        self.chain_id.clone().bound_to(self.hash())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use phalanx_crypto::KeyPair;

    fn sample() -> Genesis {
        Genesis {
            chain_id: ChainId::new("test").unwrap(),
            genesis_time_ms: 1,
            validators: (1..=4u8)
                .map(|i| KeyPair::from_seed([i; 32]).public())
                .collect(),
            accounts: vec![GenesisAccount {
                address: KeyPair::from_seed([9; 32]).public(),
                balance: 100,
            }],
            params: Params::default(),
        }
    }

    #[test]
    fn json_round_trip_and_hash_ignores_formatting() {
        let g = sample();
        let back = Genesis::from_json(&g.to_json()).unwrap();
        assert_eq!(back, g);
        let compact = serde_json::to_string(&g).unwrap();
        assert_eq!(Genesis::from_json(&compact).unwrap().hash(), g.hash());
        let mut other = g.clone();
        other.chain_id = ChainId::new("other").unwrap();
        assert_ne!(other.hash(), g.hash());
    }

    #[test]
    fn bad_genesis_is_refused_with_the_field_named() {
        let mut g = sample();
        g.accounts.push(g.accounts[0].clone());
        assert!(g.validate().unwrap_err().to_string().contains("twice"));
        let mut g = sample();
        g.accounts.push(GenesisAccount {
            address: KeyPair::from_seed([8; 32]).public(),
            balance: u64::MAX,
        });
        assert!(g.validate().unwrap_err().to_string().contains("supply"));
        let mut g = sample();
        g.params.checkpoint_interval = 0;
        assert!(
            g.validate()
                .unwrap_err()
                .to_string()
                .contains("checkpoint_interval")
        );
        assert!(Genesis::from_json("{\"chain_id\": \"a b\"}").is_err());
        let text = sample()
            .to_json()
            .replace("\"params\"", "\"unknown\": 1, \"params\"");
        assert!(
            Genesis::from_json(&text).is_err(),
            "unknown fields are refused"
        );
    }
}
