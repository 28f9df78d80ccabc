//! Deterministic blocks of signed transfers over a generated genesis, shared
//! by the crash test, the storage tests and the commit benchmark.

use phalanx_consensus::{Block, BlockHeader, Height, QuorumCert, View, Vote};
use phalanx_crypto::{ChainId, Digest, KeyPair, ValidatorIndex};
use phalanx_ledger::{Genesis, GenesisAccount, Leg, Params, Transfer, encode_payload};

use crate::{StorageError, Store};

/// Key of generated account `i`.
pub fn account_key(i: u64) -> KeyPair {
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&i.to_le_bytes());
    s[8] = 0xac;
    KeyPair::from_seed(s)
}

/// A genesis with `accounts` funded accounts (balance 1,000,000 each) and
/// four validators.
pub fn genesis(accounts: u64) -> Genesis {
    Genesis {
        chain_id: ChainId::new("phalanx-test").expect("valid chain id"),
        genesis_time_ms: 1_700_000_000_000,
        validators: (0..4u8)
            .map(|i| KeyPair::from_seed([0xf0 + i; 32]).public())
            .collect(),
        accounts: (0..accounts)
            .map(|i| GenesisAccount {
                address: account_key(i).public(),
                balance: 1_000_000,
            })
            .collect(),
        params: Params::default(),
    }
}

/// SplitMix64 step, for reproducible choices.
pub fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Signed transfers for the block at `height`: `count` transfers between
/// the first `accounts` generated accounts, with nonces read from the store
/// (about one in ten is deliberately invalid: wrong nonce or overdraft).
pub fn transfers(
    store: &Store,
    chain: &ChainId,
    accounts: u64,
    height: u64,
    seed: u64,
    count: usize,
) -> Result<Vec<Vec<u8>>, StorageError> {
    let mut nonces = std::collections::BTreeMap::new();
    let mut out = Vec::with_capacity(count);
    for j in 0..count as u64 {
        let r = mix(seed ^ mix(height) ^ j);
        let from = r % accounts;
        let to = mix(r) % accounts;
        let key = account_key(from);
        let nonce = match nonces.get(&from) {
            Some(n) => *n,
            None => store.account(&key.public())?.map_or(0, |a| a.nonce),
        };
        let (nonce, amount) = match r % 10 {
            0 => (nonce + 1, 1),        // nonce too high
            1 => (nonce, u64::MAX / 2), // insufficient funds
            _ => {
                nonces.insert(from, nonce + 1);
                (nonce, 1 + r % 100)
            }
        };
        let tx = Transfer {
            chain_id: chain.clone(),
            sender: key.public(),
            nonce,
            legs: vec![Leg {
                to: account_key(to).public(),
                amount,
            }],
        };
        out.push(tx.sign(&key).encode());
    }
    Ok(out)
}

/// The next block on the store's head carrying `txs`, with a stand-in
/// certificate (storage does not verify certificates; consensus does). Like
/// an honest leader's, it carries the store's own execution result of the
/// height three below it (P22).
pub fn next_block(store: &Store, txs: &[Vec<u8>]) -> (Block, QuorumCert) {
    let head = store.head();
    let payload = encode_payload(txs);
    let h = head.height + 1;
    let exec: Vec<_> = match h.checked_sub(3) {
        Some(e) if e >= 1 => store
            .exec_result(Height(e))
            .ok()
            .flatten()
            .into_iter()
            .collect(),
        _ => vec![],
    };
    let parent_qc = QuorumCert {
        payload: Vote {
            view: View(head.height),
            height: Height(head.height),
            block_id: head.block_id,
        },
        signers: Default::default(),
        signatures: vec![],
    };
    let block = Block {
        header: BlockHeader {
            parent: head.block_id,
            height: Height(h),
            view: View(h),
            proposer: ValidatorIndex(0),
            timestamp_ms: 1_700_000_000_000 + h,
            payload_digest: Digest::of(&payload),
            justify: parent_qc,
            idle: Default::default(),
            exec_next: Height(h.saturating_sub(2).max(1)),
            exec,
        },
        payload,
    };
    let cert = QuorumCert {
        payload: Vote {
            view: View(h),
            height: Height(h),
            block_id: block.id(),
        },
        signers: Default::default(),
        signatures: vec![],
    };
    (block, cert)
}
