//! The authenticated state: a Jellyfish Merkle tree (16-ary, sparse, with
//! path compression) over `SHA-256(public key) → encode((public key,
//! Account))`, one tree version per block height. The value carries the key
//! so that a state snapshot restored from chunks names its accounts.
//!
//! An update touches O(changed accounts · log₁₆ n) nodes. Old versions stay
//! readable until their stale nodes are pruned, which gives checkpoints a
//! consistent snapshot for free.

use std::collections::{BTreeMap, HashMap};

use jmt::proof::SparseMerkleProof;
use jmt::storage::{LeafNode, Node, NodeBatch, NodeKey, TreeReader, TreeUpdateBatch, TreeWriter};
use jmt::{JellyfishMerkleTree, KeyHash, OwnedValue, RootHash, Version};
use phalanx_crypto::{Digest, PublicKey, decode, encode};
use serde::{Deserialize, Serialize};

use crate::{Account, LedgerError};

type Hasher = sha2_jmt::Sha256;

/// The tree key of an account.
pub fn account_key(addr: &PublicKey) -> KeyHash {
    KeyHash::with::<Hasher>(addr.to_bytes())
}

/// A proof of an account's state, or of its absence, against a state root.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AccountProof(SparseMerkleProof<Hasher>);

impl AccountProof {
    /// Canonical bytes (for RPC).
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(self)
    }

    /// Parses bytes from [`AccountProof::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<AccountProof, LedgerError> {
        decode(bytes, 64 * 1024).map_err(|e| LedgerError::Proof(e.to_string()))
    }
}

/// Checks that `account` (or its absence, with `None`) is the state of
/// `addr` under `root`.
pub fn verify_account_proof(
    root: Digest,
    addr: &PublicKey,
    account: Option<&Account>,
    proof: &AccountProof,
) -> Result<(), LedgerError> {
    let value = account.map(|a| account_value(addr, a));
    proof
        .0
        .verify(RootHash(root.0), account_key(addr), value)
        .map_err(|e| LedgerError::Proof(e.to_string()))
}

/// The tree value of an account.
pub fn account_value(addr: &PublicKey, account: &Account) -> Vec<u8> {
    encode(&(addr, account))
}

/// Decodes a tree value into its account.
pub fn decode_account_value(v: &[u8]) -> Result<(PublicKey, Account), LedgerError> {
    decode::<(PublicKey, Account)>(v, 128)
        .map_err(|e| LedgerError::State(format!("stored account: {e}")))
}

fn state_err(e: anyhow::Error) -> LedgerError {
    LedgerError::State(e.to_string())
}

/// Operations on the state tree stored behind a jmt `TreeReader`.
pub struct StateTree;

impl StateTree {
    /// Computes the tree for `version` from the previous version plus
    /// `changes`. Returns the new root and the nodes to write (nothing is
    /// written here).
    pub fn apply<R: TreeReader>(
        reader: &R,
        version: u64,
        changes: &BTreeMap<PublicKey, Account>,
    ) -> Result<(Digest, TreeUpdateBatch), LedgerError> {
        let tree = JellyfishMerkleTree::<R, Hasher>::new(reader);
        let set: Vec<(KeyHash, Option<OwnedValue>)> = changes
            .iter()
            .map(|(k, a)| (account_key(k), Some(account_value(k, a))))
            .collect();
        let (root, batch) = tree.put_value_set(set, version).map_err(state_err)?;
        Ok((Digest(root.0), batch))
    }

    /// The root at `version`.
    pub fn root<R: TreeReader>(reader: &R, version: u64) -> Result<Digest, LedgerError> {
        let tree = JellyfishMerkleTree::<R, Hasher>::new(reader);
        tree.get_root_hash(version)
            .map(|r| Digest(r.0))
            .map_err(state_err)
    }

    /// An account and its proof at `version`.
    pub fn get_with_proof<R: TreeReader>(
        reader: &R,
        version: u64,
        addr: &PublicKey,
    ) -> Result<(Option<Account>, AccountProof), LedgerError> {
        let tree = JellyfishMerkleTree::<R, Hasher>::new(reader);
        let (value, proof) = tree
            .get_with_proof(account_key(addr), version)
            .map_err(state_err)?;
        let account = match value {
            Some(v) => {
                let (stored, a) = decode_account_value(&v)?;
                if stored != *addr {
                    return Err(LedgerError::State(
                        "tree value names another account".into(),
                    ));
                }
                Some(a)
            }
            None => None,
        };
        Ok((account, AccountProof(proof)))
    }
}

/// An in-memory tree store: for tests, benchmarks and the simulator.
#[derive(Default)]
pub struct MemTreeStore {
    nodes: HashMap<NodeKey, Node>,
    values: HashMap<KeyHash, Vec<(Version, Option<OwnedValue>)>>,
}

impl MemTreeStore {
    /// Writes a batch produced by [`StateTree::apply`].
    pub fn write(&mut self, batch: &TreeUpdateBatch) {
        for (k, n) in batch.node_batch.nodes() {
            self.nodes.insert(k.clone(), n.clone());
        }
        for ((version, key), v) in batch.node_batch.values() {
            let hist = self.values.entry(*key).or_default();
            hist.push((*version, v.clone()));
            hist.sort_by_key(|(ver, _)| *ver);
        }
    }

    /// Number of tree nodes held.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }
}

impl TreeReader for MemTreeStore {
    fn get_node_option(&self, node_key: &NodeKey) -> anyhow::Result<Option<Node>> {
        Ok(self.nodes.get(node_key).cloned())
    }

    fn get_value_option(
        &self,
        max_version: Version,
        key_hash: KeyHash,
    ) -> anyhow::Result<Option<OwnedValue>> {
        Ok(self.values.get(&key_hash).and_then(|h| {
            h.iter()
                .rev()
                .find(|(v, _)| *v <= max_version)
                .and_then(|(_, v)| v.clone())
        }))
    }

    fn get_rightmost_leaf(&self) -> anyhow::Result<Option<(NodeKey, LeafNode)>> {
        let mut best: Option<(NodeKey, LeafNode)> = None;
        for (k, n) in &self.nodes {
            if let Node::Leaf(l) = n
                && best
                    .as_ref()
                    .is_none_or(|(_, b)| l.key_hash() > b.key_hash())
            {
                best = Some((k.clone(), l.clone()));
            }
        }
        Ok(best)
    }
}

impl TreeWriter for MemTreeStore {
    fn write_node_batch(&self, _batch: &NodeBatch) -> anyhow::Result<()> {
        // Writes go through `write(&mut self)`; jmt's restore path, which
        // needs this method, is not used with the in-memory store.
        anyhow::bail!("MemTreeStore is written with MemTreeStore::write")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use phalanx_crypto::KeyPair;

    fn addr(i: u64) -> PublicKey {
        let mut s = [0u8; 32];
        s[..8].copy_from_slice(&i.to_le_bytes());
        KeyPair::from_seed(s).public()
    }

    #[test]
    fn proofs_of_presence_and_absence_verify_and_tampering_fails() {
        let mut store = MemTreeStore::default();
        let mut changes = BTreeMap::new();
        for i in 0..50 {
            changes.insert(
                addr(i),
                Account {
                    balance: i * 10,
                    nonce: i,
                },
            );
        }
        let (root, batch) = StateTree::apply(&store, 0, &changes).unwrap();
        store.write(&batch);
        assert_eq!(StateTree::root(&store, 0).unwrap(), root);

        let (acct, proof) = StateTree::get_with_proof(&store, 0, &addr(7)).unwrap();
        assert_eq!(
            acct,
            Some(Account {
                balance: 70,
                nonce: 7
            })
        );
        verify_account_proof(root, &addr(7), acct.as_ref(), &proof).unwrap();
        // Wrong balance, wrong account, wrong root: all fail.
        let wrong = Account {
            balance: 71,
            nonce: 7,
        };
        assert!(verify_account_proof(root, &addr(7), Some(&wrong), &proof).is_err());
        assert!(verify_account_proof(root, &addr(8), acct.as_ref(), &proof).is_err());
        assert!(verify_account_proof(Digest::of(b"x"), &addr(7), acct.as_ref(), &proof).is_err());
        assert!(verify_account_proof(root, &addr(7), None, &proof).is_err());

        // Absence.
        let (none, proof) = StateTree::get_with_proof(&store, 0, &addr(999)).unwrap();
        assert_eq!(none, None);
        verify_account_proof(root, &addr(999), None, &proof).unwrap();
        assert!(verify_account_proof(root, &addr(999), Some(&wrong), &proof).is_err());

        // Wire round trip.
        let back = AccountProof::from_bytes(&proof.to_bytes()).unwrap();
        verify_account_proof(root, &addr(999), None, &back).unwrap();
    }

    #[test]
    fn updates_change_the_root_and_keep_old_versions_readable() {
        let mut store = MemTreeStore::default();
        let mut c = BTreeMap::new();
        c.insert(
            addr(1),
            Account {
                balance: 5,
                nonce: 0,
            },
        );
        let (r0, b) = StateTree::apply(&store, 0, &c).unwrap();
        store.write(&b);
        c.insert(
            addr(1),
            Account {
                balance: 4,
                nonce: 1,
            },
        );
        let (r1, b) = StateTree::apply(&store, 1, &c).unwrap();
        store.write(&b);
        assert_ne!(r0, r1);
        let (old, _) = StateTree::get_with_proof(&store, 0, &addr(1)).unwrap();
        assert_eq!(old.unwrap().balance, 5);
        let (new, _) = StateTree::get_with_proof(&store, 1, &addr(1)).unwrap();
        assert_eq!(new.unwrap().balance, 4);
    }
}
