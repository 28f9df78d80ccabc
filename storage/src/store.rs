//! The store: open with the chain check, atomic block commits, reads, the
//! safety state, pending blocks, checkpoints and pruning.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use phalanx_consensus::{Block, CheckpointCert, ExecResult, Height, QuorumCert, genesis_qc};
use phalanx_crypto::{ChainId, Digest, PublicKey, decode, encode};
use phalanx_ledger::{
    Account, AccountProof, Genesis, LedgerError, PreparedPayload, Receipt, Rules, StateTree,
    StateView, TxStatus, execute_prepared, prepare_payload,
};
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, DBCompressionType, DBRecoveryMode,
    IteratorMode, Options, WriteBatch, WriteOptions,
};
use serde::{Deserialize, Serialize};

use crate::StorageError;
use crate::accounts::{self, cf};
use crate::keys::*;
use crate::snapshot::SnapshotManifest;

/// Largest stored record decoded, bytes.
const MAX_RECORD_BYTES: usize = 64 * 1024 * 1024;

/// Tuning knobs of the store.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Committed blocks kept below the stable checkpoint before pruning.
    /// Default 1000.
    pub retained_blocks: u64,
    /// Sync the WAL on every block write. Default true; turning it off
    /// loses the durability promise and exists for benchmarks only.
    pub sync_writes: bool,
    /// Bytes of closed write-ahead log files kept alive before RocksDB
    /// flushes the column families that hold the oldest of them (the file
    /// being written is bounded by the largest memtable instead). Default
    /// [`DEFAULT_MAX_WAL_BYTES`].
    pub max_wal_bytes: u64,
    /// Accounts a snapshot bucket is sized for (see
    /// [`crate::SnapshotManifest`]). Default
    /// [`crate::TARGET_BUCKET_ACCOUNTS`].
    pub snapshot_bucket_accounts: usize,
    /// A deliberately broken commit that writes the new head in its own
    /// batch before the block (with a pause between), so that the crash
    /// test can show it catches a non-atomic commit. Compiled only with the
    /// test-support feature `testkit`, which the node never enables.
    #[cfg(feature = "testkit")]
    #[doc(hidden)]
    pub planted_split_commit: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            retained_blocks: 1000,
            sync_writes: true,
            max_wal_bytes: DEFAULT_MAX_WAL_BYTES,
            snapshot_bucket_accounts: crate::TARGET_BUCKET_ACCOUNTS,
            #[cfg(feature = "testkit")]
            planted_split_commit: false,
        }
    }
}

/// The last committed block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// Its height (also the state tree's version).
    pub height: u64,
    /// Its id.
    pub block_id: Digest,
    /// The state root after it.
    pub state_root: Digest,
}

/// Where a transaction landed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxRecord {
    /// Block height.
    pub height: u64,
    /// Position in the block.
    pub index: u32,
    /// Its receipt.
    pub receipt: Receipt,
}

/// What a commit produced.
#[derive(Clone, Debug)]
pub struct ApplyResult {
    /// The new head.
    pub head: Head,
    /// One receipt per payload item.
    pub receipts: Vec<Receipt>,
    /// The block's execution result (P22): its state and receipts roots.
    pub exec: ExecResult,
    /// Where the time went, for metrics.
    pub timings: ApplyTimings,
}

/// Time spent in each phase of a commit.
#[derive(Clone, Copy, Debug, Default)]
pub struct ApplyTimings {
    /// Executing transactions (including state reads).
    pub execute: Duration,
    /// Computing the new state root.
    pub state_root: Duration,
    /// Building and writing the batch (including the WAL sync).
    pub write: Duration,
}

/// The latest state: the head and the tree after it, changed together.
pub(crate) struct Live {
    pub(crate) head: Head,
    pub(crate) tree: StateTree,
}

/// A validator's durable store.
///
/// The latest state is held in memory as a [`StateTree`] rebuilt from the
/// account records when the store opens; the account records, written in
/// the same batch as their block, are the durable truth.
pub struct Store {
    db: Arc<DB>,
    path: PathBuf,
    chain: ChainId,
    /// Execution rules, from genesis.
    rules: Rules,
    checkpoint_interval: u64,
    live: RwLock<Live>,
    /// The head's height, readable without waiting for a commit that holds
    /// `live` while its batch is synced.
    head_height: AtomicU64,
    /// Serialises commits, so that execution reads a state no other commit
    /// is changing while it runs under a shared lock.
    apply_lock: Mutex<()>,
    /// Set when a commit's write failed after the in-memory tree moved on:
    /// memory and disk disagree, so nothing more is committed.
    poisoned: AtomicBool,
    /// The manifests of the served snapshots, newest first (at most two).
    pub(crate) manifest: Mutex<Vec<Arc<SnapshotManifest>>>,
    /// Superseded account versions not yet pruned, oldest first.
    stale: Mutex<Vec<accounts::Stale>>,
    /// Transaction records filed below this height are pruned: reads
    /// ignore them at once, and compaction drops them from disk (see
    /// `cf_options`).
    tx_floor: Arc<AtomicU64>,
    opts: StoreOptions,
}

/// Default bound on the write-ahead log, bytes. The safety state and the
/// head are a few hundred bytes rewritten at every vote and commit, so their
/// column families' memtables never fill and, without a bound, keep every
/// log file since their last flush alive: a validator under load kept
/// 320 MB of log after a minute (all replayed at the next start). When the
/// closed files pass this bound, RocksDB flushes whatever pins the oldest,
/// a few kilobytes.
pub const DEFAULT_MAX_WAL_BYTES: u64 = 64 << 20;

/// Blocks persisted for consensus are swept by a range deletion at heights
/// that are multiples of this; in between, a commit deletes only its own
/// block. A range deletion per commit left thousands of range tombstones in
/// the memtable, which made flushing it cost a second of CPU and stalled
/// the other families' flushes behind it.
const PENDING_SWEEP_HEIGHTS: u64 = 64;

/// Memtable size of the family of blocks persisted for consensus, bytes.
/// Nearly all of it is deleted again within a second, so a flush mostly
/// drops entries; a small memtable keeps each flush short, and a long one
/// would hold up the flushes of the other families (one flush runs at a
/// time).
pub const PENDING_WRITE_BUFFER_BYTES: usize = 8 << 20;

fn db_options(opts: &StoreOptions) -> Options {
    let mut o = Options::default();
    o.create_if_missing(true);
    o.create_missing_column_families(true);
    // After a crash, recover every complete write batch up to the first torn
    // record and stop there: a torn tail never needs manual repair.
    o.set_wal_recovery_mode(DBRecoveryMode::PointInTime);
    o.set_max_background_jobs(2);
    o.set_max_total_wal_size(opts.max_wal_bytes);
    o
}

/// Per-family options: point lookups everywhere (bloom filters, one shared
/// block cache); LZ4 only where data compresses (blocks, transactions);
/// none for hashes and accounts, where it would only cost CPU.
fn cf_options(name: &str, cache: &Cache, tx_floor: &Arc<AtomicU64>) -> Options {
    let mut o = Options::default();
    let mut t = BlockBasedOptions::default();
    t.set_bloom_filter(10.0, false);
    t.set_block_cache(cache);
    t.set_cache_index_and_filter_blocks(true);
    o.set_block_based_table_factory(&t);
    let compress = matches!(name, CF_BLOCKS | CF_TXS | CF_PENDING);
    o.set_compression_type(if compress {
        DBCompressionType::Lz4
    } else {
        DBCompressionType::None
    });
    if name == CF_TXS {
        o.set_memtable_whole_key_filtering(true);
        o.set_memtable_prefix_bloom_ratio(0.05);
        // Pruning the index costs nothing at the checkpoint: records of
        // pruned heights go when compaction next rewrites them (the index
        // is keyed by hash, so there is no range to delete).
        let floor = tx_floor.clone();
        o.set_compaction_filter("phalanx-pruned-transactions", move |_, _, value: &[u8]| {
            match record_height(value) {
                Some(h) if h < floor.load(Ordering::Acquire) => {
                    rocksdb::compaction_filter::Decision::Remove
                }
                _ => rocksdb::compaction_filter::Decision::Keep,
            }
        });
    }
    if matches!(name, CF_ACCOUNTS | CF_TXS) {
        o.set_write_buffer_size(4 << 20);
    }
    if name == CF_PENDING {
        o.set_write_buffer_size(PENDING_WRITE_BUFFER_BYTES);
    }
    o
}

/// Shared block cache size, bytes.
const BLOCK_CACHE_BYTES: usize = 512 << 20;

fn corrupt(what: &str, e: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupt(format!("{what}: {e}"))
}

impl Store {
    /// Opens (creating if needed) the store at `path` for the chain of
    /// `genesis`. A store of another chain, or one whose metadata is damaged,
    /// is refused with an error naming the problem.
    pub fn open(path: &Path, genesis: &Genesis, opts: StoreOptions) -> Result<Store, StorageError> {
        let cache = Cache::new_lru_cache(BLOCK_CACHE_BYTES);
        let tx_floor = Arc::new(AtomicU64::new(0));
        let cfs = ALL_CFS
            .iter()
            .map(|n| ColumnFamilyDescriptor::new(*n, cf_options(n, &cache, &tx_floor)));
        let db = Arc::new(DB::open_cf_descriptors(&db_options(&opts), path, cfs)?);
        let meta = cf(&db, CF_META)?;
        let want = genesis.hash();
        let head = match db.get_cf(meta, META_GENESIS)? {
            Some(found) => {
                if found.as_slice() != want.0 {
                    return Err(StorageError::ForeignStore {
                        path: path.to_path_buf(),
                        found: hex_of(&found),
                        expected: want.to_hex(),
                    });
                }
                if db.get_cf(meta, META_RESTORING)?.is_some() {
                    return Err(StorageError::RestoreInterrupted {
                        path: path.to_path_buf(),
                    });
                }
                match db.get_cf(meta, META_FORMAT)? {
                    Some(v) if v.as_slice() == FORMAT_VERSION.to_be_bytes() => {}
                    Some(v) if v.as_slice() < FORMAT_VERSION.to_be_bytes().as_slice() => {
                        return Err(StorageError::OldFormat {
                            path: path.to_path_buf(),
                            found: v.as_slice().try_into().map_or(0, u32::from_be_bytes),
                        });
                    }
                    other => {
                        return Err(corrupt(
                            "format version",
                            format!("expected {FORMAT_VERSION}, found {other:?}"),
                        ));
                    }
                }
                let bytes = db
                    .get_cf(meta, META_HEAD)?
                    .ok_or_else(|| StorageError::Corrupt("head record missing".into()))?;
                decode::<Head>(&bytes, 256).map_err(|e| corrupt("head record", e))?
            }
            None => Self::init(&db, genesis)?,
        };
        let (tree, stale) = accounts::load_tree(&db)?;
        let store = Store {
            db,
            path: path.to_path_buf(),
            chain: genesis.chain_id.clone(),
            rules: genesis.rules(),
            checkpoint_interval: genesis.params.checkpoint_interval,
            head_height: AtomicU64::new(head.height),
            live: RwLock::new(Live { head, tree }),
            apply_lock: Mutex::new(()),
            poisoned: AtomicBool::new(false),
            manifest: Mutex::new(Vec::new()),
            stale: Mutex::new(stale),
            tx_floor,
            opts,
        };
        store.check_head()?;
        // Blocks below the first retained one were pruned: so were their
        // transaction records.
        store
            .tx_floor
            .store(store.first_retained_block()?.0, Ordering::Release);
        Ok(store)
    }

    /// Writes genesis: accounts at version 0, the genesis block and head.
    fn init(db: &Arc<DB>, genesis: &Genesis) -> Result<Head, StorageError> {
        genesis.validate()?;
        let accounts: std::collections::BTreeMap<PublicKey, Account> = genesis
            .accounts
            .iter()
            .map(|a| {
                (
                    a.address,
                    Account {
                        balance: a.balance,
                        nonce: 0,
                    },
                )
            })
            .collect();
        let mut tree = StateTree::new();
        let root = tree.apply(0, &accounts);
        let block = Block::genesis(&genesis.consensus_chain(), genesis.genesis_time_ms);
        let head = Head {
            height: 0,
            block_id: block.id(),
            state_root: root,
        };
        let mut wb = WriteBatch::default();
        accounts::add_changes(
            db,
            &mut wb,
            0,
            accounts.iter().map(|(k, a)| (k.to_bytes(), a, None)),
            &mut Vec::new(),
        )?;
        wb.put_cf(cf(db, CF_STATE_ROOTS)?, height_key(0), root.0);
        wb.put_cf(cf(db, CF_BLOCKS)?, height_key(0), encode(&block));
        wb.put_cf(cf(db, CF_BLOCK_INDEX)?, block.id().0, height_key(0));
        wb.put_cf(
            cf(db, CF_CERTS)?,
            height_key(0),
            encode(&genesis_qc(&block)),
        );
        let meta = cf(db, CF_META)?;
        wb.put_cf(meta, META_FORMAT, FORMAT_VERSION.to_be_bytes());
        wb.put_cf(meta, META_HEAD, encode(&head));
        // Written last in the batch; the batch is atomic anyway.
        wb.put_cf(meta, META_GENESIS, genesis.hash().0);
        let mut w = WriteOptions::default();
        w.set_sync(true);
        db.write_opt(wb, &w)?;
        Ok(head)
    }

    /// The head block must exist and match the head record, and the state
    /// rebuilt from the account records must have the head's root.
    fn check_head(&self) -> Result<(), StorageError> {
        let head = self.head();
        let block = self
            .block(Height(head.height))?
            .ok_or_else(|| StorageError::Corrupt(format!("head block {} missing", head.height)))?;
        if block.id() != head.block_id {
            return Err(StorageError::Corrupt("head block id mismatch".into()));
        }
        let root = self.live().tree.root();
        if root != head.state_root {
            return Err(StorageError::Corrupt(format!(
                "the accounts give state root {} but the head at height {} records {}",
                root.short(),
                head.height,
                head.state_root.short()
            )));
        }
        Ok(())
    }

    pub(crate) fn live(&self) -> RwLockReadGuard<'_, Live> {
        // A poisoned lock means a panic mid-commit; the commit path marks the
        // store poisoned itself before anything can be half-applied, and the
        // node stops on the panic anyway.
        self.live.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the in-memory state (after a state restore).
    pub(crate) fn set_live(&self, live: Live, stale: Vec<accounts::Stale>) {
        *self.stale.lock().unwrap_or_else(|e| e.into_inner()) = stale;
        self.head_height.store(live.head.height, Ordering::Release);
        *self.live.write().unwrap_or_else(|e| e.into_inner()) = live;
    }

    fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily, StorageError> {
        cf(&self.db, name)
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The chain id.
    pub fn chain_id(&self) -> &ChainId {
        &self.chain
    }

    /// The last committed block.
    pub fn head(&self) -> Head {
        self.live().head
    }

    /// Number of accounts in the latest state.
    pub fn account_count(&self) -> usize {
        self.live().tree.len()
    }

    pub(crate) fn options(&self) -> &StoreOptions {
        &self.opts
    }

    /// The checkpoint interval of this chain (from genesis).
    pub fn checkpoint_interval(&self) -> u64 {
        self.checkpoint_interval
    }

    // ----- applying committed blocks ------------------------------------------

    /// Executes `block` on the head state and writes everything it produced
    /// in one atomic, synced batch: the block, its certificate, transaction
    /// records and receipts, account states, the state root and the new head
    /// (the state tree itself lives in memory).
    pub fn apply_block(
        &self,
        block: &Block,
        cert: &QuorumCert,
    ) -> Result<ApplyResult, StorageError> {
        self.apply_prepared(block, cert, prepare_payload(&block.payload))
    }

    /// [`Store::apply_block`] with the payload already decoded and its
    /// signatures verified (`prepared` must come from `block.payload`): a
    /// validator verifies each signature once, before voting, not again at
    /// commit.
    pub fn apply_prepared(
        &self,
        block: &Block,
        cert: &QuorumCert,
        prepared: PreparedPayload,
    ) -> Result<ApplyResult, StorageError> {
        let _serial = self.apply_lock.lock().unwrap_or_else(|e| e.into_inner());
        if self.poisoned.load(Ordering::Acquire) {
            return Err(StorageError::Poisoned);
        }
        let head = self.head();
        let h = block.height().0;
        if h != head.height + 1 || block.header.parent != head.block_id {
            return Err(StorageError::NotNext {
                head: head.height,
                got: h,
            });
        }
        let t0 = Instant::now();
        let (out, previous) = {
            let live = self.live();
            let view = ExecView {
                tree: &live.tree,
                db: &self.db,
                txs: self.cf(CF_TXS)?,
                floor: self.tx_floor.load(Ordering::Acquire),
            };
            let out = execute_prepared(&view, &self.rules, prepared)?;
            let previous: Vec<Option<u64>> = out
                .changes
                .iter()
                .map(|(k, _)| live.tree.get_bytes(&k.to_bytes()).map(|(_, v)| v))
                .collect();
            (out, previous)
        };
        let receipts_root = phalanx_ledger::receipts_root(&out.receipts);
        let t1 = Instant::now();
        let id = block.id();
        let mut wb = WriteBatch::default();
        wb.put_cf(self.cf(CF_RECEIPTS)?, height_key(h), encode(&out.receipts));
        // The results this block's header certifies (checked by the
        // quorum that certified it, P22): where a proof of each finds its
        // certificate.
        let certified = self.cf(CF_CERTIFIED)?;
        for r in &block.header.exec {
            wb.put_cf(certified, height_key(r.height.0), height_key(h));
        }
        wb.put_cf(self.cf(CF_BLOCKS)?, height_key(h), encode(block));
        wb.put_cf(self.cf(CF_BLOCK_INDEX)?, id.0, height_key(h));
        wb.put_cf(self.cf(CF_CERTS)?, height_key(h), encode(cert));
        let txs = self.cf(CF_TXS)?;
        // Records go into the batch in key order: RocksDB's memtable insert
        // reuses its position from the previous key, which makes sorted
        // inserts several times cheaper than random ones.
        let mut records: Vec<(&Digest, u32, &Receipt)> = Vec::with_capacity(out.receipts.len());
        for (i, r) in out.receipts.iter().enumerate() {
            // An applied transaction's record is final (execution refuses
            // its hash from then on). A failure is filed only where nothing
            // is filed yet: it never hides the block that applied the
            // transaction, and an applied transaction later overwrites it.
            // Execution looked up applied records only, so a failure needs
            // a look of its own (failures are few: honest validators vote
            // only for blocks whose items they expect to apply).
            if r.status != TxStatus::Applied
                && (r.status == TxStatus::Duplicate || self.transaction(&r.tx_hash)?.is_some())
            {
                continue;
            }
            records.push((&r.tx_hash, i as u32, r));
        }
        // Stable sort, applied first among equal hashes: of a hash's items
        // in this block, the one that applied keeps the record, else the
        // first.
        records.sort_by_key(|(hash, _, r)| (**hash, r.status != TxStatus::Applied));
        records.dedup_by_key(|(hash, _, _)| **hash);
        for (hash, index, receipt) in records {
            let rec = TxRecord {
                height: h,
                index,
                receipt: receipt.clone(),
            };
            wb.put_cf(txs, hash.0, encode(&rec));
        }
        let mut superseded = Vec::with_capacity(out.changes.len());
        accounts::add_changes(
            &self.db,
            &mut wb,
            h,
            out.changes
                .iter()
                .zip(previous)
                .map(|((k, a), p)| (k.to_bytes(), a, p)),
            &mut superseded,
        )?;
        // Blocks persisted for consensus up to this height are settled:
        // this one now, any other (a fork that lost) at the next sweep.
        // Those left meanwhile are below the head, where nothing reads.
        let pending = self.cf(CF_PENDING)?;
        wb.delete_cf(pending, pending_key(h, &id));
        if h.is_multiple_of(PENDING_SWEEP_HEIGHTS) {
            wb.delete_range_cf(
                pending,
                height_key(0).as_slice(),
                height_key(h + 1).as_slice(),
            );
        }
        // From here the tree runs ahead of the disk until the batch lands:
        // readers wait on the lock, and a failed write poisons the store.
        let mut live = self.live.write().unwrap_or_else(|e| e.into_inner());
        let t2 = Instant::now();
        let root = live.tree.apply(h, out.changes.iter().map(|(k, a)| (k, a)));
        let t3 = Instant::now();
        let new_head = Head {
            height: h,
            block_id: id,
            state_root: root,
        };
        wb.put_cf(self.cf(CF_STATE_ROOTS)?, height_key(h), root.0);
        let exec = ExecResult {
            height: block.height(),
            block_id: id,
            state_root: root,
            receipts_root,
        };
        wb.put_cf(self.cf(CF_EXEC)?, height_key(h), encode(&exec));
        // Written unsynced, then the log synced on its own: durable before
        // this returns all the same, but RocksDB's write queue is not held
        // for the sync, so the vote path's unsynced writes (pending blocks,
        // the safety counter) are not queued behind it.
        let w = WriteOptions::default();
        #[cfg(feature = "testkit")]
        let planted = self.opts.planted_split_commit;
        #[cfg(not(feature = "testkit"))]
        let planted = false;
        let written = if planted {
            self.db
                .put_cf_opt(self.cf(CF_META)?, META_HEAD, encode(&new_head), &w)
                .map(|()| std::thread::sleep(std::time::Duration::from_millis(20)))
                .and_then(|()| self.db.write_opt(wb, &w))
        } else {
            wb.put_cf(self.cf(CF_META)?, META_HEAD, encode(&new_head));
            self.db.write_opt(wb, &w)
        }
        .and_then(|()| {
            if self.opts.sync_writes {
                self.db.flush_wal(true)
            } else {
                Ok(())
            }
        });
        if let Err(e) = written {
            self.poisoned.store(true, Ordering::Release);
            return Err(e.into());
        }
        live.head = new_head;
        self.head_height.store(h, Ordering::Release);
        drop(live);
        self.stale
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(superseded);
        let t4 = Instant::now();
        Ok(ApplyResult {
            head: new_head,
            receipts: out.receipts,
            exec,
            timings: ApplyTimings {
                execute: t1 - t0,
                state_root: t3 - t2,
                write: (t2 - t1) + (t4 - t3),
            },
        })
    }

    // ----- reads -----------------------------------------------------------

    /// The committed block at `height`, if retained.
    pub fn block(&self, height: Height) -> Result<Option<Block>, StorageError> {
        self.read_record(CF_BLOCKS, &height_key(height.0), "block")
    }

    /// The certificate of the committed block at `height`, if retained.
    pub fn cert(&self, height: Height) -> Result<Option<QuorumCert>, StorageError> {
        self.read_record(CF_CERTS, &height_key(height.0), "certificate")
    }

    /// Height of a committed block by id.
    pub fn height_of(&self, id: &Digest) -> Result<Option<Height>, StorageError> {
        match self.db.get_cf(self.cf(CF_BLOCK_INDEX)?, id.0)? {
            None => Ok(None),
            Some(b) => {
                let arr: [u8; 8] = b
                    .as_slice()
                    .try_into()
                    .map_err(|_| StorageError::Corrupt("block index entry".into()))?;
                Ok(Some(Height(u64::from_be_bytes(arr))))
            }
        }
    }

    /// A committed transaction's record, unless pruned with its block.
    pub fn transaction(&self, hash: &Digest) -> Result<Option<TxRecord>, StorageError> {
        let rec: Option<TxRecord> = self.read_record(CF_TXS, &hash.0, "transaction record")?;
        let floor = self.tx_floor.load(Ordering::Acquire);
        Ok(rec.filter(|r| r.height >= floor))
    }

    /// An account's latest state.
    pub fn account(&self, addr: &PublicKey) -> Result<Option<Account>, StorageError> {
        Ok(self.live().tree.get(addr))
    }

    /// The latest state of each of `addrs` (read under one lock).
    pub fn accounts(&self, addrs: &[PublicKey]) -> Vec<Option<Account>> {
        let live = self.live();
        addrs.iter().map(|a| live.tree.get(a)).collect()
    }

    /// An account's latest state, unless a commit is being written right
    /// now (`None` then): for callers on a latency-critical path that
    /// would rather go without than wait for the commit's synced write.
    pub fn try_account(&self, addr: &PublicKey) -> Option<Option<Account>> {
        match self.live.try_read() {
            Ok(live) => Some(live.tree.get(addr)),
            Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner().tree.get(addr)),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// An account's latest state, by its 32 address bytes (no curve point
    /// decoding).
    pub fn account_by_address(&self, addr: &[u8; 32]) -> Option<Account> {
        self.live().tree.get_bytes(addr).map(|(a, _)| a)
    }

    /// An account at the head with its proof against the head's state root.
    pub fn account_with_proof(
        &self,
        addr: &PublicKey,
    ) -> Result<(Head, Option<Account>, AccountProof), StorageError> {
        let live = self.live();
        let (a, proof) = live.tree.prove(addr);
        Ok((live.head, a, proof))
    }

    /// The state root after the block at `height`, while that block is
    /// retained.
    pub fn state_root_at(&self, height: Height) -> Result<Digest, StorageError> {
        let height = height.0;
        match self
            .db
            .get_pinned_cf(self.cf(CF_STATE_ROOTS)?, height_key(height))?
        {
            None => Err(StorageError::NotRetained(height)),
            Some(b) => {
                let arr: [u8; 32] = b
                    .as_ref()
                    .try_into()
                    .map_err(|_| StorageError::Corrupt(format!("state root record {height}")))?;
                Ok(Digest(arr))
            }
        }
    }

    /// The execution result of the block at `height` (P22), while retained
    /// (`None` for genesis, whose state the genesis file gives).
    pub fn exec_result(&self, height: Height) -> Result<Option<ExecResult>, StorageError> {
        self.read_record(CF_EXEC, &height_key(height.0), "execution result")
    }

    /// The receipts of the block at `height`, while retained.
    pub fn receipts(&self, height: Height) -> Result<Option<Vec<Receipt>>, StorageError> {
        self.read_record(CF_RECEIPTS, &height_key(height.0), "receipts")
    }

    /// The height of the committed block whose header certifies the
    /// execution result of `height` (P22), once one is committed.
    pub fn certified_by(&self, height: Height) -> Result<Option<Height>, StorageError> {
        match self
            .db
            .get_pinned_cf(self.cf(CF_CERTIFIED)?, height_key(height.0))?
        {
            None => Ok(None),
            Some(b) => {
                let arr: [u8; 8] = b.as_ref().try_into().map_err(|_| {
                    StorageError::Corrupt(format!("certified-by record {}", height.0))
                })?;
                Ok(Some(Height(u64::from_be_bytes(arr))))
            }
        }
    }

    /// The latest execution results, ascending, at most `n` (what a
    /// restarted validator checks proposals against, P22).
    pub fn recent_results(&self, n: usize) -> Result<Vec<ExecResult>, StorageError> {
        let head = self.head().height;
        let mut out = Vec::with_capacity(n.min(1024));
        let it = self.db.iterator_cf(
            self.cf(CF_EXEC)?,
            IteratorMode::From(&height_key(head), rocksdb::Direction::Reverse),
        );
        for item in it.take(n) {
            let (_, v) = item?;
            out.push(phalanx_crypto::decode(&v, 256).map_err(|e| corrupt("execution result", e))?);
        }
        out.reverse();
        Ok(out)
    }

    /// Whether a transaction with this hash was applied in a retained
    /// committed block (a failure receipt filed under it does not count).
    pub fn tx_committed(&self, hash: &Digest) -> Result<bool, StorageError> {
        Ok(self
            .transaction(hash)?
            .is_some_and(|r| r.receipt.status == TxStatus::Applied))
    }

    fn read_record<T: serde::de::DeserializeOwned>(
        &self,
        cf_name: &str,
        key: &[u8],
        what: &str,
    ) -> Result<Option<T>, StorageError> {
        match self.db.get_pinned_cf(self.cf(cf_name)?, key)? {
            None => Ok(None),
            Some(b) => Ok(Some(
                decode(&b, MAX_RECORD_BYTES).map_err(|e| corrupt(what, e))?,
            )),
        }
    }

    // ----- consensus safety state and pending blocks -------------------------

    /// Notes the counter of the safety record just written (unsynced: it
    /// reaches the disk with the next synced write). The store can then
    /// tell a record file older than itself (see [`crate::SafetyRecord`]).
    pub fn note_safety_counter(&self, counter: u64) -> Result<(), StorageError> {
        self.db.put_cf(
            self.cf(CF_SAFETY)?,
            SAFETY_COUNTER_KEY,
            counter.to_be_bytes(),
        )?;
        Ok(())
    }

    /// The last safety record counter noted (0 if none).
    pub fn safety_counter(&self) -> Result<u64, StorageError> {
        Ok(
            match self.db.get_cf(self.cf(CF_SAFETY)?, SAFETY_COUNTER_KEY)? {
                Some(b) if b.len() == 8 => u64::from_be_bytes(
                    b.as_slice()
                        .try_into()
                        .map_err(|_| StorageError::Corrupt("safety counter".into()))?,
                ),
                Some(_) => return Err(StorageError::Corrupt("safety counter".into())),
                None => 0,
            },
        )
    }

    /// True if the store holds anything beyond genesis: committed blocks or
    /// blocks persisted for consensus.
    pub fn holds_data(&self) -> Result<bool, StorageError> {
        Ok(self.head_height().0 > 0 || !self.pending_blocks()?.is_empty())
    }

    /// Persists an uncommitted block for consensus (see the sync policy).
    pub fn put_pending_block(&self, block: &Block) -> Result<(), StorageError> {
        if block.height() <= self.head_height() {
            return Ok(());
        }
        self.db.put_cf(
            self.cf(CF_PENDING)?,
            pending_key(block.height().0, &block.id()),
            encode(block),
        )?;
        Ok(())
    }

    /// Makes every write so far durable (syncs the write-ahead log): for
    /// pending blocks written without a sync when no synced write follows
    /// them before a message that depends on them.
    pub fn sync_wal(&self) -> Result<(), StorageError> {
        self.db.flush_wal(true)?;
        Ok(())
    }

    /// Uncommitted blocks above the head.
    pub fn pending_blocks(&self) -> Result<Vec<Block>, StorageError> {
        let head = self.head().height;
        let mut out = Vec::new();
        for item in self.db.iterator_cf(
            self.cf(CF_PENDING)?,
            IteratorMode::From(&height_key(head + 1), rocksdb::Direction::Forward),
        ) {
            let (_, v) = item?;
            out.push(decode(&v, MAX_RECORD_BYTES).map_err(|e| corrupt("pending block", e))?);
        }
        Ok(out)
    }

    // ----- checkpoints and pruning -----------------------------------------

    /// Records a stable checkpoint after checking it names this store's
    /// block and state root at its height, then prunes: account versions
    /// superseded at or below it (the state at its height stays readable for
    /// snapshot serving) and blocks older than the retention window.
    pub fn put_stable_checkpoint(&self, cert: &CheckpointCert) -> Result<(), StorageError> {
        let h = cert.payload.height.0;
        let block = self
            .block(Height(h))?
            .ok_or_else(|| StorageError::Checkpoint(format!("no block at height {h}")))?;
        if block.id() != cert.payload.block_id {
            return Err(StorageError::Checkpoint(format!(
                "block at height {h} differs from the checkpoint's"
            )));
        }
        let root = self.state_root_at(Height(h))?;
        if root != cert.payload.state_root {
            return Err(StorageError::Checkpoint(format!(
                "state root at height {h} differs from the checkpoint's"
            )));
        }
        let previous = self.stable_checkpoint()?.map(|c| c.payload.height.0);
        let mut wb = WriteBatch::default();
        wb.put_cf(self.cf(CF_CHECKPOINTS)?, height_key(h), encode(cert));
        wb.put_cf(self.cf(CF_META)?, META_STABLE, encode(cert));
        let mut w = WriteOptions::default();
        w.set_sync(true);
        self.db.write_opt(wb, &w)?;
        self.manifest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|m| Some(m.height) == previous || m.height == h);
        // Account versions stay readable at the previous checkpoint too:
        // its snapshot is still served.
        self.prune(h, previous.filter(|p| *p < h).unwrap_or(0))?;
        Ok(())
    }

    /// The checkpoint certificate recorded below `height`, if any.
    pub fn checkpoint_before(&self, height: u64) -> Result<Option<CheckpointCert>, StorageError> {
        let mut it = self.db.iterator_cf(
            self.cf(CF_CHECKPOINTS)?,
            IteratorMode::From(
                &height_key(height.saturating_sub(1)),
                rocksdb::Direction::Reverse,
            ),
        );
        match it.next() {
            Some(item) => {
                let (k, v) = item?;
                if k.as_ref() >= height_key(height).as_slice() {
                    return Ok(None);
                }
                Ok(Some(
                    decode(&v, MAX_RECORD_BYTES).map_err(|e| corrupt("checkpoint", e))?,
                ))
            }
            None => Ok(None),
        }
    }

    /// The latest stable checkpoint.
    pub fn stable_checkpoint(&self) -> Result<Option<CheckpointCert>, StorageError> {
        self.read_record(CF_META, META_STABLE, "stable checkpoint")
    }

    /// Prunes below the stable checkpoint at `stable`: account versions
    /// no longer visible at `keep_state` (the previous checkpoint), blocks
    /// older than the retention window.
    fn prune(&self, stable: u64, keep_state: u64) -> Result<(), StorageError> {
        accounts::prune(
            &self.db,
            &mut self.stale.lock().unwrap_or_else(|e| e.into_inner()),
            keep_state,
        )?;
        let keep_from = stable.saturating_sub(self.opts.retained_blocks);
        if keep_from > 1 {
            // Genesis (height 0) is always kept: every validator has it.
            let mut wb = WriteBatch::default();
            for h in self.first_retained_block()?.0..keep_from {
                if let Some(b) = self.block(Height(h))? {
                    wb.delete_cf(self.cf(CF_BLOCK_INDEX)?, b.id().0);
                }
                wb.delete_cf(self.cf(CF_BLOCKS)?, height_key(h));
                wb.delete_cf(self.cf(CF_CERTS)?, height_key(h));
                wb.delete_cf(self.cf(CF_STATE_ROOTS)?, height_key(h));
                wb.delete_cf(self.cf(CF_EXEC)?, height_key(h));
                wb.delete_cf(self.cf(CF_RECEIPTS)?, height_key(h));
                wb.delete_cf(self.cf(CF_CERTIFIED)?, height_key(h));
            }
            self.db.write(wb)?;
            // The transaction records of those heights go with them.
            self.tx_floor.fetch_max(keep_from, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Lowest retained height above genesis.
    pub fn first_retained_block(&self) -> Result<Height, StorageError> {
        let mut it = self.db.iterator_cf(
            self.cf(CF_BLOCKS)?,
            IteratorMode::From(&height_key(1), rocksdb::Direction::Forward),
        );
        match it.next() {
            Some(item) => {
                let (k, _) = item?;
                let arr: [u8; 8] = k
                    .as_ref()
                    .try_into()
                    .map_err(|_| StorageError::Corrupt("block key".into()))?;
                Ok(Height(u64::from_be_bytes(arr)))
            }
            None => Ok(Height(self.head().height + 1)),
        }
    }

    pub(crate) fn db(&self) -> &Arc<DB> {
        &self.db
    }

    pub(crate) fn set_head(&self, wb: &mut WriteBatch, head: Head) -> Result<(), StorageError> {
        wb.put_cf(self.cf(CF_META)?, META_HEAD, encode(&head));
        Ok(())
    }

    pub(crate) fn write_synced(
        &self,
        wb: WriteBatch,
        head: Option<Head>,
    ) -> Result<(), StorageError> {
        let mut w = WriteOptions::default();
        w.set_sync(true);
        self.db.write_opt(wb, &w)?;
        if let Some(h) = head {
            self.head_height.store(h.height, Ordering::Release);
            self.live.write().unwrap_or_else(|e| e.into_inner()).head = h;
        }
        Ok(())
    }

    /// Compacts the transaction index, dropping pruned records from disk
    /// now rather than at the next compaction (tests).
    #[cfg(feature = "testkit")]
    pub fn compact_tx_index(&self) -> Result<(), StorageError> {
        self.db
            .compact_range_cf(self.cf(CF_TXS)?, None::<&[u8]>, None::<&[u8]>);
        Ok(())
    }

    /// Whether the transaction index holds a record under `hash` on disk,
    /// pruned or not (tests).
    #[cfg(feature = "testkit")]
    pub fn tx_record_on_disk(&self, hash: &Digest) -> Result<bool, StorageError> {
        Ok(self.db.get_pinned_cf(self.cf(CF_TXS)?, hash.0)?.is_some())
    }

    /// Height of the head as a consensus [`Height`]. Never waits for a
    /// commit in progress.
    pub fn head_height(&self) -> Height {
        Height(self.head_height.load(Ordering::Acquire))
    }
}

/// What execution reads: accounts from the in-memory tree, the
/// transaction index from RocksDB (bloom filters answer most misses).
struct ExecView<'a> {
    tree: &'a StateTree,
    db: &'a DB,
    txs: &'a rocksdb::ColumnFamily,
    /// Records below this height are pruned.
    floor: u64,
}

impl StateView for ExecView<'_> {
    fn account(&self, addr: &PublicKey) -> Result<Option<Account>, LedgerError> {
        Ok(self.tree.get(addr))
    }

    fn tx_committed(&self, hash: &Digest) -> Result<bool, LedgerError> {
        match self
            .db
            .get_pinned_cf(self.txs, hash.0)
            .map_err(|e| LedgerError::Read(e.to_string()))?
        {
            None => Ok(false),
            Some(v) => applied_record(&v, self.floor).map_err(|e| LedgerError::Read(e.to_string())),
        }
    }

    fn txs_committed(&self, hashes: &[Digest]) -> Result<Vec<bool>, LedgerError> {
        self.db
            .batched_multi_get_cf(self.txs, hashes.iter().map(|h| &h.0[..]), true)
            .into_iter()
            .map(|r| match r.map_err(|e| LedgerError::Read(e.to_string()))? {
                None => Ok(false),
                Some(v) => {
                    applied_record(&v, self.floor).map_err(|e| LedgerError::Read(e.to_string()))
                }
            })
            .collect()
    }
}

/// The height of an encoded transaction record (`None` if it does not
/// decode: kept, never guessed away).
fn record_height(bytes: &[u8]) -> Option<u64> {
    decode::<TxRecord>(bytes, MAX_RECORD_BYTES)
        .ok()
        .map(|r| r.height)
}

/// Whether an encoded transaction record is an applied one, not pruned.
fn applied_record(bytes: &[u8], floor: u64) -> Result<bool, StorageError> {
    let rec: TxRecord =
        decode(bytes, MAX_RECORD_BYTES).map_err(|e| corrupt("transaction record", e))?;
    Ok(rec.receipt.status == TxStatus::Applied && rec.height >= floor)
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
