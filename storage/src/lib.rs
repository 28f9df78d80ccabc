//! Crash-safe storage for a Phalanx validator, on RocksDB.
//!
//! This crate owns the on-disk layout (column families, key encodings,
//! checksummed records), the atomic commit of a block (block, certificate,
//! transactions and receipts, account versions, the state root and the new
//! head in one `WriteBatch`), the in-memory state tree rebuilt from the
//! account versions at open, the sync policy, the consensus safety state
//! (its own file, fail closed when damaged), checkpoint snapshots served in verifiable
//! chunks, and pruning. It is the only crate that links RocksDB.
//!
//! Sync policy:
//! * the safety state is a file of its own ([`SafetyRecord`]), two slots
//!   written alternately in place, synced before the message it guards may
//!   leave the process; RocksDB's log recovery can never take it back in
//!   time;
//! * blocks persisted for consensus ([`Store::put_pending_block`]) are
//!   written without sync; the driver syncs the log ([`Store::sync_wal`])
//!   before the safety write or message that depends on them;
//! * a committed block is written, then the log synced, before it may be
//!   acknowledged to any client ([`Store::apply_block`]); the sync is a
//!   call of its own rather than a synced write, so RocksDB's write queue
//!   is not held for it and the vote path's writes are not queued behind
//!   it;
//! * the WAL is always on, recovering to the last complete write batch
//!   (point-in-time recovery) after a torn tail.
//!
//! It must never decide anything about consensus or transaction validity:
//! it stores what it is given and executes blocks through the ledger crate.

mod accounts;
#[cfg(feature = "testkit")]
pub mod crashtest;
mod error;
mod evidence;
mod keys;
mod safety;
mod snapshot;
mod store;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use error::StorageError;
pub use evidence::{EvidenceRecord, MAX_EVIDENCE_PER_SIGNER};
pub use safety::{
    MIN_SLOT_BYTES, SAFETY_FILE, SafetyBody, SafetyRecord, legacy_record_bytes, record_bytes,
};
pub use snapshot::{
    MAX_BUCKET_ACCOUNTS, MAX_CHUNK_ACCOUNTS, MAX_MANIFEST_DEPTH, SnapshotManifest, StateChunk,
    StateRestore, TARGET_BUCKET_ACCOUNTS,
};
pub use store::{
    ApplyResult, ApplyTimings, DEFAULT_MAX_WAL_BYTES, Head, PENDING_WRITE_BUFFER_BYTES, Store,
    StoreOptions, TxRecord,
};
