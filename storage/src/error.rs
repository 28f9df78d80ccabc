use std::path::PathBuf;

/// Storage failures. Anything but [`StorageError::NotNext`] is a local fault
/// the node treats as fatal: it stops cleanly rather than run on bad data.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// RocksDB reported an error.
    #[error("rocksdb: {0}")]
    Db(#[from] rocksdb::Error),
    /// The store belongs to another chain.
    #[error(
        "store at {path} belongs to chain {found} but the genesis file is for {expected}; \
         use another data directory or the right genesis"
    )]
    ForeignStore {
        /// The data directory.
        path: PathBuf,
        /// Genesis hash recorded in the store.
        found: String,
        /// Genesis hash of the genesis file.
        expected: String,
    },
    /// Stored data that fails its checks.
    #[error("corrupted store: {0}")]
    Corrupt(String),
    /// The safety-state record cannot be trusted. A validator must never sign
    /// from it: delete it and recover (`phalanx start --recover`), which
    /// signs nothing until peers show which views are safe.
    #[error(
        "consensus safety state is damaged ({0}); refusing to start, since signing from it could equivocate. \
         Delete the record and start with `phalanx start --recover` to rejoin in recovery"
    )]
    SafetyStateCorrupt(String),
    /// A block that does not extend the head.
    #[error("block at height {got} does not extend the head at height {head}")]
    NotNext {
        /// The head's height.
        head: u64,
        /// The block's height.
        got: u64,
    },
    /// A store written by an older version, whose chain this version
    /// cannot continue.
    #[error(
        "store at {path} has format {found}, written by an older version whose consensus signatures do not bind \
         the genesis; this version cannot continue that chain. Start a new chain (a new genesis) with empty data \
         directories, or keep running the older version"
    )]
    OldFormat {
        /// The data directory.
        path: PathBuf,
        /// The format found.
        found: u32,
    },
    /// A state restore was interrupted; the partial state is unusable.
    #[error(
        "store at {path} holds an interrupted state restore; delete the directory and let the node state-sync again"
    )]
    RestoreInterrupted {
        /// The data directory.
        path: PathBuf,
    },
    /// A commit's write failed after the in-memory state moved on; the store
    /// refuses further commits. Restart the node to reload from disk.
    #[error("store poisoned by an earlier failed commit; restart to recover")]
    Poisoned,
    /// The requested height is no longer (or not yet) kept.
    #[error("nothing retained at height {0}")]
    NotRetained(u64),
    /// A checkpoint that does not match this store's chain.
    #[error("checkpoint mismatch: {0}")]
    Checkpoint(String),
    /// A file outside RocksDB (the safety record) could not be read or
    /// written.
    #[error("i/o: {0}")]
    Io(String),
    /// The safety record is older than the store: it was restored from a
    /// backup or copied in. Signing from it could equivocate.
    #[error(
        "the safety record {path} is older than the store (record write {record}, store has seen write {store});          refusing to start, since signing from it could equivocate. If the record was restored from a backup,          delete it and start with `phalanx start --recover`"
    )]
    SafetyRolledBack {
        /// The record.
        path: PathBuf,
        /// The record's counter.
        record: u64,
        /// The counter the store noted.
        store: u64,
    },
    /// The ledger failed (state tree or execution).
    #[error("ledger: {0}")]
    Ledger(#[from] phalanx_ledger::LedgerError),
}
