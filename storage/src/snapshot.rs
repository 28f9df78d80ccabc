//! State snapshots at stable checkpoints, served in bounded chunks that each
//! verify against the certified state root, and the restore that rebuilds a
//! store from them.
//!
//! A snapshot is split into `2^depth` buckets by the first `depth` bits of
//! the account key hash. Its manifest lists each bucket's subtree summary;
//! the manifest folds to the state root, so it verifies against the
//! checkpoint certificate on its own. A chunk is a run of one bucket's
//! accounts in key order; when a bucket is complete, its accounts must give
//! exactly the manifest's summary. A peer that sends a wrong account is
//! caught at the end of that bucket at the latest, having cost at most one
//! bucket of buffered keys.

use std::sync::Arc;

use phalanx_consensus::{Block, CheckpointCert, QuorumCert};
use phalanx_crypto::{Digest, encode};
use phalanx_ledger::{
    Account, KeyHash, Subtree, leaf_of_bytes, root_of_summaries, summarise_accounts,
};
use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};

use crate::accounts::{self, cf, encode_record};
use crate::keys::{
    CF_ACCOUNTS, CF_BLOCK_INDEX, CF_BLOCKS, CF_CERTS, CF_CHECKPOINTS, CF_META, CF_STATE_ROOTS,
    META_RESTORING, META_STABLE, account_key, height_key,
};
use crate::store::{Head, Live};
use crate::{StorageError, Store};

/// Most accounts in one snapshot chunk.
pub const MAX_CHUNK_ACCOUNTS: usize = 4096;
/// Deepest bucket split: at most 4096 buckets (a 135 KiB manifest).
pub const MAX_MANIFEST_DEPTH: u8 = 12;
/// Accounts a bucket is sized for.
pub const TARGET_BUCKET_ACCOUNTS: usize = 1024;
/// Most accounts a restore holds for one bucket before it can check them:
/// a peer that never ends a bucket is cut off here. (At the deepest split,
/// this allows a state of about 268 million accounts.)
pub const MAX_BUCKET_ACCOUNTS: usize = 64 * 1024;

/// The buckets of a snapshot and what each must hash to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotManifest {
    /// The checkpoint height.
    pub height: u64,
    /// Bucket depth: `2^depth` buckets.
    pub depth: u8,
    /// One summary per bucket, left to right.
    pub buckets: Vec<Subtree>,
    /// Accounts in the snapshot (informative; not trusted by a restore).
    pub accounts: u64,
}

impl SnapshotManifest {
    /// Checks the manifest against a checkpoint's height and state root.
    pub fn verify(&self, height: u64, state_root: Digest) -> Result<(), StorageError> {
        let bad = |why: String| Err(StorageError::Checkpoint(format!("manifest: {why}")));
        if self.height != height {
            return bad(format!("for height {}, not {height}", self.height));
        }
        if self.depth > MAX_MANIFEST_DEPTH || self.buckets.len() != 1usize << self.depth {
            return bad(format!(
                "depth {} with {} buckets",
                self.depth,
                self.buckets.len()
            ));
        }
        if root_of_summaries(&self.buckets)? != state_root {
            return bad("does not fold to the certified state root".into());
        }
        Ok(())
    }
}

/// A run of one bucket's accounts of the snapshot at `height`, in key order.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StateChunk {
    /// The checkpoint height.
    pub height: u64,
    /// The bucket.
    pub bucket: u32,
    /// `(address, account)`, ascending by key hash, all in the bucket.
    pub accounts: Vec<([u8; 32], Account)>,
    /// True if the bucket has no accounts after these.
    pub bucket_done: bool,
}

/// The first key hash of `bucket` at `depth`, and the first of the next
/// bucket (`None` past the last).
fn bucket_range(depth: u8, bucket: u32) -> (KeyHash, Option<KeyHash>) {
    let start = |b: u64| -> KeyHash {
        let mut k = [0u8; 32];
        if depth > 0 {
            let v = b << (64 - depth as u32);
            k[..8].copy_from_slice(&v.to_be_bytes());
        }
        k
    };
    let next = bucket as u64 + 1;
    let end = (next < (1u64 << depth)).then(|| start(next));
    (start(bucket as u64), end)
}

fn next_key(k: &KeyHash) -> Option<KeyHash> {
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

impl Store {
    /// The manifest of the latest stable checkpoint's snapshot (`None`
    /// before the first).
    pub fn snapshot_manifest(&self) -> Result<Option<Arc<SnapshotManifest>>, StorageError> {
        let Some(cp) = self.stable_checkpoint()? else {
            return Ok(None);
        };
        self.snapshot_manifest_at(&cp).map(Some)
    }

    /// The checkpoints whose snapshots this store serves: the latest stable
    /// one and the one before it, so that a peer's sync that outlasts one
    /// checkpoint interval still completes.
    pub fn served_snapshots(&self) -> Result<Vec<CheckpointCert>, StorageError> {
        let Some(cp) = self.stable_checkpoint()? else {
            return Ok(Vec::new());
        };
        let mut out = vec![cp.clone()];
        if let Some(prev) = self.checkpoint_before(cp.payload.height.0)? {
            out.push(prev);
        }
        Ok(out)
    }

    /// The manifest of the snapshot at checkpoint `cp` (one this store
    /// serves). Built by one scan of the accounts on first use (about a
    /// second per million accounts), then cached.
    pub fn snapshot_manifest_at(
        &self,
        cp: &CheckpointCert,
    ) -> Result<Arc<SnapshotManifest>, StorageError> {
        let height = cp.payload.height.0;
        let mut cache = self.manifest.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = cache.iter().find(|m| m.height == height) {
            return Ok(m.clone());
        }
        let mut leaves: Vec<(KeyHash, [u8; 32])> = Vec::new();
        accounts::scan_at(
            self.db(),
            height,
            &[0u8; 32],
            None,
            usize::MAX,
            |_, addr, a, _| leaves.push(leaf_of_bytes(&addr, &a)),
        )?;
        let per_bucket = self.options().snapshot_bucket_accounts.max(1);
        let mut depth = 0u8;
        while depth < MAX_MANIFEST_DEPTH && leaves.len() > per_bucket << depth {
            depth += 1;
        }
        let mut buckets = Vec::with_capacity(1 << depth);
        let mut rest = &leaves[..];
        for b in 0..(1u32 << depth) {
            let (_, end) = bucket_range(depth, b);
            let n = match end {
                Some(end) => rest.partition_point(|(k, _)| *k < end),
                None => rest.len(),
            };
            buckets.push(summarise_accounts(depth as usize, &rest[..n])?);
            rest = &rest[n..];
        }
        let m = Arc::new(SnapshotManifest {
            height,
            depth,
            buckets,
            accounts: leaves.len() as u64,
        });
        if root_of_summaries(&m.buckets)? != cp.payload.state_root {
            return Err(StorageError::Corrupt(format!(
                "the accounts at checkpoint {height} do not give its state root"
            )));
        }
        // Two served snapshots: keep the newest two manifests.
        cache.retain(|c| c.height != height);
        cache.push(m.clone());
        cache.sort_by_key(|c| std::cmp::Reverse(c.height));
        cache.truncate(2);
        Ok(m)
    }

    /// Up to `max` (at most [`MAX_CHUNK_ACCOUNTS`]) accounts of `bucket` of
    /// the snapshot at `height` (a checkpoint of
    /// [`Store::served_snapshots`]), starting after key hash `after`
    /// (`None`: from the bucket's start).
    pub fn snapshot_chunk(
        &self,
        height: u64,
        depth: u8,
        bucket: u32,
        after: Option<KeyHash>,
        max: usize,
    ) -> Result<StateChunk, StorageError> {
        if !self
            .served_snapshots()?
            .iter()
            .any(|c| c.payload.height.0 == height)
        {
            return Err(StorageError::NotRetained(height));
        }
        if depth > MAX_MANIFEST_DEPTH || u64::from(bucket) >= 1u64 << depth {
            return Err(StorageError::Checkpoint(format!(
                "no bucket {bucket} at depth {depth}"
            )));
        }
        let max = max.clamp(1, MAX_CHUNK_ACCOUNTS);
        let (start, end) = bucket_range(depth, bucket);
        let from = match after {
            None => start,
            Some(k) if k < start || end.is_some_and(|e| k >= e) => {
                return Err(StorageError::Checkpoint("cursor outside the bucket".into()));
            }
            Some(k) => match next_key(&k) {
                Some(n) => n,
                None => {
                    return Ok(StateChunk {
                        height,
                        bucket,
                        accounts: Vec::new(),
                        bucket_done: true,
                    });
                }
            },
        };
        let mut out = Vec::new();
        let done = accounts::scan_at(
            self.db(),
            height,
            &from,
            end.as_ref(),
            max,
            |_, a, acct, _| out.push((a, acct)),
        )?;
        Ok(StateChunk {
            height,
            bucket,
            accounts: out,
            bucket_done: done,
        })
    }
}

/// Rebuilds the state of a stable checkpoint into a fresh store, verifying
/// every bucket against the manifest and the manifest against the
/// checkpoint's state root. The caller verifies the checkpoint certificate's
/// signatures first. A bucket's accounts are held in memory (at most
/// [`MAX_BUCKET_ACCOUNTS`]) until the bucket is complete and matches the
/// manifest, and only then written: nothing unverified reaches the store.
/// A chunk that fails a check is refused and the bucket starts over, so the
/// restore goes on with another peer.
pub struct StateRestore {
    store: Store,
    checkpoint: CheckpointCert,
    manifest: SnapshotManifest,
    /// The bucket being filled, and the last key received in it.
    bucket: Option<u32>,
    cursor: Option<KeyHash>,
    leaves: Vec<(KeyHash, [u8; 32])>,
    /// The bucket's accounts, held until the bucket verifies.
    held: Vec<([u8; 32], Account)>,
    accounts: u64,
    /// Buckets complete, and bytes of accounts received.
    buckets_done: usize,
    bytes: u64,
}

impl StateRestore {
    /// Starts restoring `checkpoint` into `store`, which must be new (only
    /// genesis committed), after checking `manifest` against it.
    pub fn new(
        store: Store,
        checkpoint: CheckpointCert,
        manifest: SnapshotManifest,
    ) -> Result<StateRestore, StorageError> {
        if store.head().height != 0 {
            return Err(StorageError::Checkpoint(
                "state restore needs a fresh store".into(),
            ));
        }
        manifest.verify(checkpoint.payload.height.0, checkpoint.payload.state_root)?;
        accounts::clear_for_restore(store.db())?;
        let mut r = StateRestore {
            store,
            checkpoint,
            manifest,
            bucket: None,
            cursor: None,
            leaves: Vec::new(),
            held: Vec::new(),
            accounts: 0,
            buckets_done: 0,
            bytes: 0,
        };
        r.bucket = r.first_nonempty(0);
        Ok(r)
    }

    fn first_nonempty(&self, from: u32) -> Option<u32> {
        (from..self.manifest.buckets.len() as u32)
            .find(|b| self.manifest.buckets[*b as usize] != Subtree::Empty)
    }

    /// What to ask for next: `(height, depth, bucket, after)`, or `None`
    /// when every bucket is in.
    pub fn next_request(&self) -> Option<(u64, u8, u32, Option<KeyHash>)> {
        self.bucket
            .map(|b| (self.manifest.height, self.manifest.depth, b, self.cursor))
    }

    /// Accounts restored so far.
    pub fn accounts(&self) -> u64 {
        self.accounts
    }

    /// Buckets complete so far, and the number of non-empty buckets.
    pub fn progress(&self) -> (usize, usize) {
        let total = self
            .manifest
            .buckets
            .iter()
            .filter(|b| **b != Subtree::Empty)
            .count();
        (self.buckets_done, total)
    }

    /// Bytes of verified accounts received so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The checkpoint being restored.
    pub fn checkpoint(&self) -> &CheckpointCert {
        &self.checkpoint
    }

    /// Forgets what was received of the current bucket (its sender failed):
    /// the next request starts the bucket again.
    pub fn restart_bucket(&mut self) {
        self.cursor = None;
        self.leaves.clear();
        self.held.clear();
    }

    /// Checks one chunk, which must answer [`StateRestore::next_request`],
    /// and writes its bucket once the bucket is complete and matches the
    /// manifest. A chunk that fails a check is refused and its bucket
    /// starts over (ask another peer).
    pub fn add_chunk(&mut self, chunk: StateChunk) -> Result<(), StorageError> {
        match self.check_chunk(chunk) {
            Ok(()) => Ok(()),
            Err(why) => {
                self.restart_bucket();
                Err(StorageError::Checkpoint(format!("chunk refused: {why}")))
            }
        }
    }

    fn check_chunk(&mut self, chunk: StateChunk) -> Result<(), String> {
        let Some(bucket) = self.bucket else {
            return Err("every bucket is already complete".into());
        };
        if chunk.height != self.manifest.height || chunk.bucket != bucket {
            return Err(format!(
                "for height {} bucket {}, expected height {} bucket {bucket}",
                chunk.height, chunk.bucket, self.manifest.height
            ));
        }
        if chunk.accounts.len() > MAX_CHUNK_ACCOUNTS {
            return Err(format!("{} accounts", chunk.accounts.len()));
        }
        if chunk.accounts.is_empty() && !chunk.bucket_done {
            return Err("empty but not the bucket's end".into());
        }
        if self.held.len() + chunk.accounts.len() > MAX_BUCKET_ACCOUNTS {
            return Err(format!(
                "bucket {bucket} runs past {MAX_BUCKET_ACCOUNTS} accounts"
            ));
        }
        let (start, end) = bucket_range(self.manifest.depth, bucket);
        for (addr, account) in &chunk.accounts {
            let (key, leaf) = leaf_of_bytes(addr, account);
            let in_order = self.cursor.is_none_or(|c| key > c);
            let in_bucket = key >= start && end.is_none_or(|e| key < e);
            if !in_order || !in_bucket {
                return Err("accounts out of order or outside the bucket".into());
            }
            self.cursor = Some(key);
            self.leaves.push((key, leaf));
        }
        self.held.extend(chunk.accounts);
        if !chunk.bucket_done {
            return Ok(());
        }
        let got = summarise_accounts(self.manifest.depth as usize, &self.leaves)
            .map_err(|e| e.to_string())?;
        if got != self.manifest.buckets[bucket as usize] {
            return Err(format!("bucket {bucket} does not match the manifest"));
        }
        // Verified: write it.
        let mut wb = WriteBatch::default();
        let accounts_cf = cf(self.store.db(), CF_ACCOUNTS).map_err(|e| e.to_string())?;
        let h = self.manifest.height;
        let mut bytes = 0u64;
        for ((key, _), (addr, account)) in self.leaves.iter().zip(&self.held) {
            let rec = encode_record(addr, account);
            bytes += rec.len() as u64;
            wb.put_cf(accounts_cf, account_key(key, h), rec);
        }
        self.store.db().write(wb).map_err(|e| e.to_string())?;
        self.accounts += self.held.len() as u64;
        self.bytes += bytes;
        self.buckets_done += 1;
        self.restart_bucket();
        self.bucket = self.first_nonempty(bucket + 1);
        Ok(())
    }

    /// Completes the restore: rebuilds the state, checks its root, then
    /// records the checkpoint's block (with its certificate) as the head.
    pub fn finish(self, block: &Block, cert: &QuorumCert) -> Result<Store, StorageError> {
        let cp = &self.checkpoint.payload;
        if self.bucket.is_some() {
            return Err(StorageError::Checkpoint("restore incomplete".into()));
        }
        if block.id() != cp.block_id || cert.payload.block_id != cp.block_id {
            return Err(StorageError::Checkpoint(
                "block or certificate is not the checkpoint's".into(),
            ));
        }
        let store = self.store;
        let (tree, stale) = accounts::load_tree(store.db())?;
        let root = tree.root();
        if root != cp.state_root {
            return Err(StorageError::Checkpoint(
                "restored state root differs from the checkpoint's".into(),
            ));
        }
        let h = cp.height.0;
        let db = store.db().clone();
        let mut wb = WriteBatch::default();
        wb.put_cf(cf(&db, CF_BLOCKS)?, height_key(h), encode(block));
        wb.put_cf(cf(&db, CF_BLOCK_INDEX)?, block.id().0, height_key(h));
        wb.put_cf(cf(&db, CF_CERTS)?, height_key(h), encode(cert));
        wb.put_cf(cf(&db, CF_STATE_ROOTS)?, height_key(h), root.0);
        wb.put_cf(
            cf(&db, CF_CHECKPOINTS)?,
            height_key(h),
            encode(&self.checkpoint),
        );
        wb.put_cf(cf(&db, CF_META)?, META_STABLE, encode(&self.checkpoint));
        wb.delete_cf(cf(&db, CF_META)?, META_RESTORING);
        let head = Head {
            height: h,
            block_id: block.id(),
            state_root: root,
        };
        store.set_head(&mut wb, head)?;
        store.write_synced(wb, None)?;
        store.set_live(Live { head, tree }, stale);
        Ok(store)
    }
}
