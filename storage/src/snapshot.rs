//! State snapshots at stable checkpoints, served in bounded chunks that each
//! verify against the certified state root (a Merkle range proof), and the
//! restore that rebuilds a store from them.

use std::sync::Arc;

use phalanx_consensus::{Block, CheckpointCert, QuorumCert};
use phalanx_crypto::{Digest, encode};
use phalanx_ledger::jmt::proof::SparseMerkleRangeProof;
use phalanx_ledger::jmt::restore::{JellyfishMerkleRestore, StateSnapshotReceiver};
use phalanx_ledger::jmt::{JellyfishMerkleIterator, JellyfishMerkleTree, KeyHash, RootHash};
use phalanx_ledger::{StateTree, TreeHasher, decode_account_value};
use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};

use crate::keys::{CF_ACCOUNTS, CF_BLOCK_INDEX, CF_BLOCKS, CF_CERTS, CF_CHECKPOINTS, CF_META};
use crate::keys::{META_STABLE, height_key};
use crate::store::Head;
use crate::tree::cf;
use crate::{StorageError, Store};

/// Most accounts in one snapshot chunk.
pub const MAX_CHUNK_ACCOUNTS: usize = 4096;

/// A run of consecutive accounts (by key hash) of the state at `version`,
/// with a range proof against that version's root.
#[derive(Clone, Serialize, Deserialize)]
pub struct StateChunk {
    /// The tree version (block height) of the snapshot.
    pub version: u64,
    /// `(key hash, tree value)` in ascending key order.
    pub entries: Vec<([u8; 32], Vec<u8>)>,
    /// Proves the entries, and that no key lies between them.
    pub proof: SparseMerkleRangeProof<TreeHasher>,
    /// True if no account follows this chunk.
    pub last: bool,
}

impl StateChunk {
    /// The key to ask for the next chunk from (exclusive).
    pub fn last_key(&self) -> Option<[u8; 32]> {
        self.entries.last().map(|(k, _)| *k)
    }
}

fn next_key(k: &[u8; 32]) -> Option<[u8; 32]> {
    let mut out = *k;
    for i in (0..32).rev() {
        if out[i] == 0xff {
            out[i] = 0;
        } else {
            out[i] += 1;
            return Some(out);
        }
    }
    None
}

fn tree_err(e: anyhow::Error) -> StorageError {
    StorageError::Ledger(phalanx_ledger::LedgerError::State(e.to_string()))
}

impl Store {
    /// Up to `max` (at most [`MAX_CHUNK_ACCOUNTS`]) accounts of the state at
    /// `version` whose key hash is above `after`, with their proof. Returns
    /// `None` when there are no more.
    pub fn snapshot_chunk(
        &self,
        version: u64,
        after: Option<[u8; 32]>,
        max: usize,
    ) -> Result<Option<StateChunk>, StorageError> {
        let max = max.clamp(1, MAX_CHUNK_ACCOUNTS);
        let start = match after {
            None => [0u8; 32],
            Some(k) => match next_key(&k) {
                Some(n) => n,
                None => return Ok(None),
            },
        };
        let reader = Arc::new(self.tree_store());
        let iter = JellyfishMerkleIterator::new(reader.clone(), version, KeyHash(start))
            .map_err(tree_err)?;
        let mut entries = Vec::new();
        let mut more = false;
        for item in iter {
            let (k, v) = item.map_err(tree_err)?;
            if entries.len() == max {
                more = true;
                break;
            }
            entries.push((k.0, v));
        }
        let Some((last, _)) = entries.last() else {
            return Ok(None);
        };
        let tree = JellyfishMerkleTree::<_, TreeHasher>::new(reader.as_ref());
        let proof = tree
            .get_range_proof(KeyHash(*last), version)
            .map_err(tree_err)?;
        Ok(Some(StateChunk {
            version,
            entries,
            proof,
            last: !more,
        }))
    }
}

/// Rebuilds the state of a stable checkpoint into a fresh store, verifying
/// every chunk against the checkpoint's state root. The caller verifies the
/// checkpoint certificate's signatures first. A chunk that fails
/// verification poisons the restore: wipe the store and start again.
pub struct StateRestore {
    store: Store,
    checkpoint: CheckpointCert,
    restore: JellyfishMerkleRestore<TreeHasher>,
    accounts: u64,
}

impl StateRestore {
    /// Starts restoring `checkpoint` into `store`, which must be new (only
    /// genesis committed).
    pub fn new(store: Store, checkpoint: CheckpointCert) -> Result<StateRestore, StorageError> {
        if store.head().height != 0 {
            return Err(StorageError::Checkpoint(
                "state restore needs a fresh store".into(),
            ));
        }
        let version = checkpoint.payload.height.0;
        let restore = JellyfishMerkleRestore::new(
            Arc::new(store.tree_store()),
            version,
            RootHash(checkpoint.payload.state_root.0),
        )
        .map_err(tree_err)?;
        Ok(StateRestore {
            store,
            checkpoint,
            restore,
            accounts: 0,
        })
    }

    /// Verifies and writes one chunk.
    pub fn add_chunk(&mut self, chunk: StateChunk) -> Result<(), StorageError> {
        if chunk.version != self.checkpoint.payload.height.0 || chunk.entries.is_empty() {
            return Err(StorageError::Checkpoint(
                "chunk for another version, or empty".into(),
            ));
        }
        let mut wb = WriteBatch::default();
        let accounts = cf(self.store.db(), CF_ACCOUNTS)?;
        for (k, v) in &chunk.entries {
            let (addr, account) = decode_account_value(v)?;
            if phalanx_ledger::account_key(&addr).0 != *k {
                return Err(StorageError::Checkpoint(
                    "chunk value names an account that does not hash to its key".into(),
                ));
            }
            wb.put_cf(accounts, addr.to_bytes(), encode(&account));
        }
        let entries = chunk
            .entries
            .into_iter()
            .map(|(k, v)| (KeyHash(k), v))
            .collect();
        self.restore
            .add_chunk(entries, chunk.proof)
            .map_err(|e| StorageError::Checkpoint(format!("chunk does not verify: {e}")))?;
        self.store.db().write(wb)?;
        self.accounts += 1;
        Ok(())
    }

    /// Completes the restore: checks the rebuilt root, then records the
    /// checkpoint's block (with its certificate) as the head.
    pub fn finish(self, block: &Block, cert: &QuorumCert) -> Result<Store, StorageError> {
        let cp = &self.checkpoint.payload;
        if block.id() != cp.block_id || cert.payload.block_id != cp.block_id {
            return Err(StorageError::Checkpoint(
                "block or certificate is not the checkpoint's".into(),
            ));
        }
        self.restore
            .finish()
            .map_err(|e| StorageError::Checkpoint(format!("restore: {e}")))?;
        let store = self.store;
        let h = cp.height.0;
        let root: Digest = StateTree::root(&store.tree_store(), h)?;
        if root != cp.state_root {
            return Err(StorageError::Checkpoint(
                "restored state root differs from the checkpoint's".into(),
            ));
        }
        let db = store.db().clone();
        let mut wb = WriteBatch::default();
        wb.put_cf(cf(&db, CF_BLOCKS)?, height_key(h), encode(block));
        wb.put_cf(cf(&db, CF_BLOCK_INDEX)?, block.id().0, height_key(h));
        wb.put_cf(cf(&db, CF_CERTS)?, height_key(h), encode(cert));
        wb.put_cf(
            cf(&db, CF_CHECKPOINTS)?,
            height_key(h),
            encode(&self.checkpoint),
        );
        wb.put_cf(cf(&db, CF_META)?, META_STABLE, encode(&self.checkpoint));
        let head = Head {
            height: h,
            block_id: block.id(),
            state_root: root,
        };
        store.set_head(&mut wb, head)?;
        store.write_synced(wb, Some(head))?;
        Ok(store)
    }
}
