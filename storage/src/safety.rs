//! The consensus safety record: one small file of its own, replaced
//! atomically, so that nothing else the store writes can take it back in
//! time.
//!
//! The store's write-ahead log recovers to the last intact batch: a damaged
//! record in the middle of the log silently drops every later batch. The
//! safety record must never go back like that (a validator that forgets a
//! vote can sign a conflicting one), so it lives outside RocksDB:
//!
//! * a write goes to `safety.record.tmp`, is synced, renamed over
//!   `safety.record`, and the directory is synced: after a crash the file is
//!   the old record or the new one, whole;
//! * the record is `"PXS2" ‖ counter (u64) ‖ length (u32) ‖ body ‖
//!   SHA-256 of everything before it`; a record that fails any check is
//!   refused (fail closed), never replaced by a default;
//! * the counter grows by one per write. The node also notes it in the
//!   store after each write (see `Store::note_safety_counter`), so a record
//!   file older than the store (restored from a backup, copied from another
//!   machine) is refused at start.
//!
//! It must never decide what a missing record means: the node does.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use phalanx_consensus::SafetyState;
use phalanx_crypto::{Digest, decode, encode};
use serde::{Deserialize, Serialize};

use crate::StorageError;

/// The record's file name, in the data directory.
pub const SAFETY_FILE: &str = "safety.record";
const TMP_SUFFIX: &str = ".tmp";
const MAGIC: &[u8; 4] = b"PXS2";
/// Largest record body accepted (a safety state with a full validator set's
/// certificates is far smaller).
const MAX_BODY_BYTES: usize = 4 << 20;

/// What a record holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SafetyBody {
    /// Written by `phalanx init`: this validator has never signed anything.
    /// (The initial safety state needs the genesis, which may not exist yet
    /// when a validator's home is made.)
    Fresh,
    /// The safety state as last persisted.
    State(Box<SafetyState>),
}

/// The safety record of one data directory.
#[derive(Debug)]
pub struct SafetyRecord {
    path: PathBuf,
    tmp: PathBuf,
    dir: PathBuf,
    counter: u64,
}

impl SafetyRecord {
    /// The record's path in data directory `dir`.
    pub fn path_in(dir: &Path) -> PathBuf {
        dir.join(SAFETY_FILE)
    }

    /// Opens the record of data directory `dir` (created if missing):
    /// returns the handle and what the record holds, `None` if there is no
    /// record. A damaged record is an error.
    pub fn open(dir: &Path) -> Result<(SafetyRecord, Option<SafetyBody>), StorageError> {
        fs::create_dir_all(dir).map_err(|e| io(dir, "creating", e))?;
        let path = Self::path_in(dir);
        let mut tmp = path.clone().into_os_string();
        tmp.push(TMP_SUFFIX);
        let mut rec = SafetyRecord {
            path,
            tmp: PathBuf::from(tmp),
            dir: dir.to_path_buf(),
            counter: 0,
        };
        // A leftover temporary file is a write that never completed: its
        // rename did not happen, so nothing depended on it.
        if rec.tmp.exists() {
            fs::remove_file(&rec.tmp).map_err(|e| io(&rec.tmp, "removing", e))?;
        }
        let bytes = match fs::read(&rec.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((rec, None)),
            Err(e) => return Err(io(&rec.path, "reading", e)),
        };
        let (counter, body) = parse(&bytes).map_err(|why| {
            StorageError::SafetyStateCorrupt(format!("{}: {why}", rec.path.display()))
        })?;
        rec.counter = counter;
        Ok((rec, Some(body)))
    }

    /// Writes `body` durably; returns only once it is on disk.
    pub fn write(&mut self, body: &SafetyBody) -> Result<(), StorageError> {
        let counter = self.counter + 1;
        let bytes = format(counter, body);
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&self.tmp)
            .map_err(|e| io(&self.tmp, "creating", e))?;
        f.write_all(&bytes)
            .and_then(|()| f.sync_data())
            .map_err(|e| io(&self.tmp, "writing", e))?;
        drop(f);
        fs::rename(&self.tmp, &self.path).map_err(|e| io(&self.path, "replacing", e))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io(&self.dir, "syncing", e))?;
        self.counter = counter;
        Ok(())
    }

    /// Writes a safety state.
    pub fn write_state(&mut self, state: &SafetyState) -> Result<(), StorageError> {
        self.write(&SafetyBody::State(Box::new(state.clone())))
    }

    /// Writes of this record so far (the last record's counter).
    pub fn counter(&self) -> u64 {
        self.counter
    }

    /// The record's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Refuses a record older than `store` has seen: one restored from a
    /// backup or copied in after the store noted a later write.
    pub fn check_against(&self, store: &crate::Store) -> Result<(), StorageError> {
        let seen = store.safety_counter()?;
        if seen > self.counter {
            return Err(StorageError::SafetyRolledBack {
                path: self.path.clone(),
                record: self.counter,
                store: seen,
            });
        }
        Ok(())
    }
}

fn io(path: &Path, what: &str, e: std::io::Error) -> StorageError {
    StorageError::Io(format!("{what} {}: {e}", path.display()))
}

fn format(counter: u64, body: &SafetyBody) -> Vec<u8> {
    let payload = encode(body);
    let mut rec = Vec::with_capacity(payload.len() + 48);
    rec.extend_from_slice(MAGIC);
    rec.extend_from_slice(&counter.to_be_bytes());
    rec.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    rec.extend_from_slice(&payload);
    let sum = Digest::of(&rec);
    rec.extend_from_slice(&sum.0);
    rec
}

fn parse(rec: &[u8]) -> Result<(u64, SafetyBody), String> {
    const HEAD: usize = 4 + 8 + 4;
    if rec.len() < HEAD + 32 || &rec[..4] != MAGIC {
        return Err("bad header or truncated".into());
    }
    let counter = u64::from_be_bytes(rec[4..12].try_into().map_err(|_| "header")?);
    let len = u32::from_be_bytes(rec[12..16].try_into().map_err(|_| "header")?) as usize;
    if len > MAX_BODY_BYTES || rec.len() != HEAD + len + 32 {
        return Err("length mismatch (truncated or extended)".into());
    }
    if Digest::of(&rec[..HEAD + len]).0 != rec[HEAD + len..] {
        return Err("checksum mismatch".into());
    }
    let body = decode::<SafetyBody>(&rec[HEAD..HEAD + len], MAX_BODY_BYTES)
        .map_err(|e| format!("undecodable: {e}"))?;
    Ok((counter, body))
}

/// The record's bytes for `body` with `counter` (for tests that damage or
/// forge records).
#[doc(hidden)]
pub fn record_bytes(counter: u64, body: &SafetyBody) -> Vec<u8> {
    format(counter, body)
}
