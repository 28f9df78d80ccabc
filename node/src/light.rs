//! The light client: checks, offline, the proof bundles a node attaches to
//! its answers, against nothing but the chain's genesis (its chain id, hash
//! and validator set).
//!
//! This module owns the bundle formats and their verification. It never
//! does I/O and never trusts the node that sent a bundle: every value it
//! returns is one the bundle proves, through a quorum certificate of the
//! genesis validators over a block header that carries the execution
//! result (P22), and a Merkle proof under that result's root. A node's own
//! JSON fields are compared with the proven values by the callers, never
//! used in their place.
//!
//! The validator set is the genesis set: Phalanx has no validator set
//! changes, so a certificate of any height verifies against it.

use phalanx_consensus::{Block, BlockHeader, ExecResult, Height, QuorumCert};
use phalanx_crypto::{ChainId, CryptoError, Digest, PublicKey, ValidatorSet, decode, encode};
use phalanx_ledger::{
    Account, AccountProof, Genesis, LedgerError, Receipt, ReceiptProof, SignedTransfer,
    decode_payload, verify_account_proof, verify_receipt_proof,
};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Largest proof bundle a client decodes, bytes: a whole block at most
/// (the payload bound) plus headers and certificates.
pub const MAX_BUNDLE_BYTES: usize = 64 * 1024 * 1024;

/// Why a bundle does not prove what it claims.
#[derive(Debug, Error)]
pub enum LightError {
    /// The bundle's bytes do not decode.
    #[error("proof bundle does not decode: {0}")]
    Malformed(String),
    /// The certificate is not a quorum of the genesis validators over the
    /// header.
    #[error("certificate does not verify: {0}")]
    Certificate(#[from] CryptoError),
    /// The certificate is over another block, height or view.
    #[error("certificate is for block {cert} but the header's id is {header}")]
    NotThisHeader {
        /// The certified id.
        cert: String,
        /// The header's id.
        header: String,
    },
    /// The certified header carries no execution result for the height.
    #[error("the certified header carries no execution result for height {0}")]
    NoResult(u64),
    /// A Merkle proof fails under the certified root.
    #[error(transparent)]
    Proof(#[from] LedgerError),
    /// The bundle proves something other than what was asked.
    #[error("{0}")]
    Mismatch(String),
}

/// What a client trusts: the genesis's chain (bound to its hash) and
/// validator set.
#[derive(Clone, Debug)]
pub struct Anchor {
    chain: ChainId,
    validators: ValidatorSet,
}

impl Anchor {
    /// The anchor of a genesis.
    pub fn from_genesis(genesis: &Genesis) -> Result<Anchor, LedgerError> {
        Ok(Anchor {
            chain: genesis.consensus_chain(),
            validators: genesis.validator_set()?,
        })
    }

    /// Checks that `cert` is a quorum certificate of the validators over
    /// `header`; returns the header's block id.
    pub fn verify_header(
        &self,
        header: &BlockHeader,
        cert: &QuorumCert,
    ) -> Result<Digest, LightError> {
        let id = Digest::of(&encode(header));
        if cert.payload.block_id != id
            || cert.payload.height != header.height
            || cert.payload.view != header.view
        {
            return Err(LightError::NotThisHeader {
                cert: cert.payload.block_id.to_hex(),
                header: id.to_hex(),
            });
        }
        cert.verify(&self.validators, &self.chain)?;
        Ok(id)
    }

    /// The execution result of `height` that `c` certifies.
    pub fn certified_result(
        &self,
        c: &CertifiedHeader,
        height: Height,
    ) -> Result<ExecResult, LightError> {
        self.verify_header(&c.header, &c.cert)?;
        c.header
            .exec
            .iter()
            .find(|r| r.height == height)
            .copied()
            .ok_or(LightError::NoResult(height.0))
    }

    /// Checks an account bundle for `addr`: returns the proven height and
    /// account state (`None`: no such account).
    pub fn verify_account(
        &self,
        addr: &PublicKey,
        b: &AccountBundle,
    ) -> Result<(Height, Option<Account>), LightError> {
        let r = self.certified_result(&b.certified, b.height)?;
        verify_account_proof(r.state_root, addr, b.account.as_ref(), &b.proof)?;
        Ok((b.height, b.account))
    }

    /// Checks a receipt bundle for the transaction `hash`: returns the
    /// proven execution result of its block and its receipt.
    pub fn verify_receipt(
        &self,
        hash: &Digest,
        b: &ReceiptBundle,
    ) -> Result<(ExecResult, Receipt), LightError> {
        if b.receipt.tx_hash != *hash {
            return Err(LightError::Mismatch(format!(
                "the receipt is for transaction {}, not {}",
                b.receipt.tx_hash.to_hex(),
                hash.to_hex()
            )));
        }
        let r = self.certified_result(&b.certified, b.height)?;
        verify_receipt_proof(r.receipts_root, &b.receipt, &b.proof)?;
        Ok((r, b.receipt.clone()))
    }

    /// Checks a block bundle: the block is certified, its payload is the
    /// one its header commits to, and (when present) the execution result
    /// of its height is certified by a later header. Returns the block id,
    /// its transactions' hashes and that result.
    pub fn verify_block(&self, b: &BlockBundle) -> Result<VerifiedBlock, LightError> {
        let id = self.verify_header(&b.block.header, &b.cert)?;
        if Digest::of(&b.block.payload) != b.block.header.payload_digest {
            return Err(LightError::Mismatch(
                "the payload is not the one the header commits to".into(),
            ));
        }
        let items = decode_payload(&b.block.payload)
            .map_err(|e| LightError::Malformed(format!("block payload: {e}")))?;
        let transactions = items.iter().map(|i| item_hash(i)).collect();
        let execution = match &b.execution {
            None => None,
            Some(c) => {
                let r = self.certified_result(c, b.block.header.height)?;
                if r.block_id != id {
                    return Err(LightError::Mismatch(
                        "the certified execution result is of another block".into(),
                    ));
                }
                Some(r)
            }
        };
        Ok(VerifiedBlock {
            id,
            height: b.block.header.height,
            transactions,
            execution,
        })
    }
}

/// The hash a payload item is known by (its receipt's `tx_hash`): a
/// transfer's hash, or SHA-256 of the bytes of an item that is not one.
pub fn item_hash(item: &[u8]) -> Digest {
    match SignedTransfer::decode(item) {
        Ok(t) => t.hash(),
        Err(_) => Digest::of(item),
    }
}

/// A block header with a quorum certificate over it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertifiedHeader {
    /// The header.
    pub header: BlockHeader,
    /// Its certificate.
    pub cert: QuorumCert,
}

/// An account's state at a height, with its proof.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountBundle {
    /// The height whose state it is.
    pub height: Height,
    /// The account (`None`: it does not exist).
    pub account: Option<Account>,
    /// Its proof under that height's state root.
    pub proof: AccountProof,
    /// The header certifying that height's execution result.
    pub certified: CertifiedHeader,
}

/// A transaction's receipt, with its proof.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptBundle {
    /// The height of its block.
    pub height: Height,
    /// The receipt (it names the transaction's hash).
    pub receipt: Receipt,
    /// Its proof under that height's receipts root.
    pub proof: ReceiptProof,
    /// The header certifying that height's execution result.
    pub certified: CertifiedHeader,
}

/// A committed block, with its certificate and the header certifying its
/// execution (once one is committed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockBundle {
    /// The block.
    pub block: Block,
    /// Its certificate.
    pub cert: QuorumCert,
    /// The header certifying its execution result.
    pub execution: Option<CertifiedHeader>,
}

/// What [`Anchor::verify_block`] proves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedBlock {
    /// The block id.
    pub id: Digest,
    /// Its height.
    pub height: Height,
    /// Its items' hashes, in order.
    pub transactions: Vec<Digest>,
    /// Its execution result, when certified.
    pub execution: Option<ExecResult>,
}

/// A bundle as the hex string the JSON-RPC answers carry.
pub fn to_hex<T: Serialize>(bundle: &T) -> String {
    hex::encode(encode(bundle))
}

/// Parses a bundle from its hex string.
pub fn from_hex<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, LightError> {
    let bytes = hex::decode(s).map_err(|e| LightError::Malformed(e.to_string()))?;
    if bytes.len() > MAX_BUNDLE_BYTES {
        return Err(LightError::Malformed("bundle too large".into()));
    }
    decode(&bytes, MAX_BUNDLE_BYTES).map_err(|e| LightError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use phalanx_consensus::{Idleness, View, Vote, genesis_qc};
    use phalanx_crypto::{Certificate, KeyPair, ValidatorIndex, Verified};
    use phalanx_ledger::{
        GenesisAccount, Params, StateTree, TxStatus, prove_receipt, receipts_root,
    };

    struct World {
        anchor: Anchor,
        account: AccountBundle,
        addr: PublicKey,
        receipt: ReceiptBundle,
        block: BlockBundle,
    }

    /// A chain of one validator set, a state of a few accounts, a block at
    /// height 5 with receipts, and a certified header at height 8 carrying
    /// its execution result.
    fn world() -> World {
        let keys: Vec<KeyPair> = (0..4u8).map(|i| KeyPair::from_seed([i + 9; 32])).collect();
        let users: Vec<KeyPair> = (0..6u8).map(|i| KeyPair::from_seed([i + 50; 32])).collect();
        let genesis = Genesis {
            chain_id: ChainId::new("light").unwrap(),
            genesis_time_ms: 1_000,
            validators: keys.iter().map(|k| k.public()).collect(),
            accounts: users
                .iter()
                .map(|u| GenesisAccount {
                    address: u.public(),
                    balance: 1_000,
                })
                .collect(),
            params: Params::default(),
        };
        let anchor = Anchor::from_genesis(&genesis).unwrap();
        let chain = genesis.consensus_chain();
        let set = genesis.validator_set().unwrap();
        let mut tree = StateTree::new();
        let accounts: Vec<(PublicKey, Account)> = users
            .iter()
            .enumerate()
            .map(|(i, u)| {
                (
                    u.public(),
                    Account {
                        balance: 1_000 + i as u64,
                        nonce: i as u64,
                    },
                )
            })
            .collect();
        let state_root = tree.apply(5, accounts.iter().map(|(k, a)| (k, a)));
        let receipts: Vec<Receipt> = (0..5u64)
            .map(|i| Receipt {
                tx_hash: Digest::of(&i.to_le_bytes()),
                status: if i == 2 {
                    TxStatus::Duplicate
                } else {
                    TxStatus::Applied
                },
            })
            .collect();
        let g = Block::genesis(&chain, 1_000);
        let qc = |h: &BlockHeader| -> QuorumCert {
            let vote = Vote {
                view: h.view,
                height: h.height,
                block_id: Digest::of(&encode(h)),
            };
            let votes: Vec<_> = (1..4u16)
                .map(|i| Verified::sign(&keys[i as usize], ValidatorIndex(i), &chain, vote))
                .collect();
            Certificate::aggregate(&votes, &set).unwrap()
        };
        let header = |height: u64, exec: Vec<ExecResult>, payload: &[u8]| BlockHeader {
            parent: Digest::of(&height.to_le_bytes()),
            height: Height(height),
            view: View(height + 2),
            proposer: ValidatorIndex(1),
            timestamp_ms: 2_000 + height,
            payload_digest: Digest::of(payload),
            justify: genesis_qc(&g),
            idle: Idleness::default(),
            exec_next: exec.last().map_or(Height(1), |r| r.height.next()),
            exec,
        };
        let items: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 40]).collect();
        let payload = phalanx_ledger::encode_payload(&items);
        let b5 = Block {
            header: header(5, vec![], &payload),
            payload,
        };
        let result = ExecResult {
            height: Height(5),
            block_id: b5.id(),
            state_root,
            receipts_root: receipts_root(&receipts),
        };
        let other = ExecResult {
            height: Height(6),
            block_id: Digest::of(b"six"),
            state_root: Digest::of(b"root six"),
            receipts_root: Digest::of(b"receipts six"),
        };
        let h8 = header(8, vec![result, other], b"");
        let certified = CertifiedHeader {
            cert: qc(&h8),
            header: h8,
        };
        let addr = users[3].public();
        let (account, proof) = tree.prove(&addr);
        World {
            account: AccountBundle {
                height: Height(5),
                account,
                proof,
                certified: certified.clone(),
            },
            addr,
            receipt: ReceiptBundle {
                height: Height(5),
                receipt: receipts[3].clone(),
                proof: prove_receipt(&receipts, 3).unwrap(),
                certified: certified.clone(),
            },
            block: BlockBundle {
                cert: qc(&b5.header),
                block: b5,
                execution: Some(certified),
            },
            anchor,
        }
    }

    /// Every single-bit change of every byte of `bundle` is either refused
    /// or proves only what is true (`true_of` the verified value); returns
    /// how many bytes were tried.
    fn every_flip_is_caught<T, R>(
        bundle: &T,
        verify: impl Fn(&T) -> Result<R, LightError>,
        true_of: impl Fn(&R, &R) -> bool,
    ) -> usize
    where
        T: Serialize + serde::de::DeserializeOwned,
        R: PartialEq + std::fmt::Debug,
    {
        let truth = verify(bundle).expect("the untouched bundle verifies");
        let bytes = encode(bundle);
        for i in 0..bytes.len() {
            for bit in [0u8, 3, 7] {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                let Ok(t) = decode::<T>(&b, MAX_BUNDLE_BYTES) else {
                    continue;
                };
                if let Ok(r) = verify(&t) {
                    assert!(
                        true_of(&r, &truth),
                        "bit {bit} of byte {i} of {} made the bundle prove {r:?}",
                        bytes.len()
                    );
                }
            }
        }
        bytes.len()
    }

    #[test]
    fn a_flip_of_any_bit_of_any_bundle_is_caught() {
        let w = world();
        let n = every_flip_is_caught(
            &w.account,
            |b| w.anchor.verify_account(&w.addr, b),
            |r, t| r == t,
        );
        assert!(n > 500, "{n}");
        let hash = w.receipt.receipt.tx_hash;
        every_flip_is_caught(
            &w.receipt,
            |b| w.anchor.verify_receipt(&hash, b),
            |r, t| r == t,
        );
        // A block without its execution header still proves the block:
        // a client compares the node's claimed root with what is proven.
        every_flip_is_caught(
            &w.block,
            |b| w.anchor.verify_block(b),
            |r, t| {
                r == t
                    || (r.execution.is_none() && r.id == t.id && r.transactions == t.transactions)
            },
        );
    }

    #[test]
    fn a_bundle_is_refused_against_another_genesis_or_for_another_question() {
        let w = world();
        // Another chain's validators: the certificate does not verify.
        let mut other = w.anchor.clone();
        other.validators = ValidatorSet::new(
            (0..4u8)
                .map(|i| KeyPair::from_seed([i + 99; 32]).public())
                .collect(),
        )
        .unwrap();
        assert!(matches!(
            other.verify_account(&w.addr, &w.account),
            Err(LightError::Certificate(_))
        ));
        // Another account's address, another transaction's hash.
        let stranger = KeyPair::from_seed([7; 32]).public();
        assert!(w.anchor.verify_account(&stranger, &w.account).is_err());
        assert!(
            w.anchor
                .verify_receipt(&Digest::of(b"other"), &w.receipt)
                .is_err()
        );
        // A header whose certificate is below a quorum.
        let mut weak = w.account.clone();
        weak.certified.cert.signatures.pop();
        assert!(w.anchor.verify_account(&w.addr, &weak).is_err());
    }
}
