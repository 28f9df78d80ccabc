//! The consensus safety record: one small file of its own, written in
//! place, so that nothing else the store writes can take it back in time.
//!
//! The store's write-ahead log recovers to the last intact batch: a damaged
//! record in the middle of the log silently drops every later batch. The
//! safety record must never go back like that (a validator that forgets a
//! vote can sign a conflicting one), so it lives outside RocksDB:
//!
//! * the file holds two slots of `S` bytes each (its length is `2 S`, every
//!   block of it written at creation, so a later in-place write changes no
//!   file metadata). A write goes to the slot that does not hold the newest
//!   record, with one `pwrite` and one `fdatasync`: about a fifth of the
//!   cost of a temporary file, its sync, a rename and a directory sync, and
//!   it is on every vote's path. After a crash the slot being written may
//!   be torn, but the other slot holds the last write that completed, and
//!   only a completed write let a message leave;
//! * a slot holds `"PXS3" ‖ counter (u64) ‖ length (u32) ‖ body ‖ SHA-256 of
//!   everything before it`, then whatever the slot held before; the valid
//!   slot with the higher counter wins. A file with no valid slot is
//!   refused (fail closed), never replaced by a default;
//! * a record larger than a slot (or the first write) rewrites the whole
//!   file with larger slots: temporary file, sync, rename, directory sync;
//! * the counter grows by one per write. The node also notes it in the
//!   store after each write (see `Store::note_safety_counter`), so a record
//!   file older than the store (restored from a backup, copied from another
//!   machine, or a newest slot lost to media damage) is refused at start;
//! * a file of the single-record format before slots (`"PXS2"`, the whole
//!   file one record) is read, and rewritten with slots at its next write.
//!
//! It must never decide what a missing record means: the node does.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use phalanx_consensus::SafetyState;
use phalanx_crypto::{Digest, decode, encode};
use serde::{Deserialize, Serialize};

use crate::StorageError;

/// The record's file name, in the data directory.
pub const SAFETY_FILE: &str = "safety.record";
const TMP_SUFFIX: &str = ".tmp";
const MAGIC: &[u8; 4] = b"PXS3";
/// The single-record format before slots, still read.
const LEGACY_MAGIC: &[u8; 4] = b"PXS2";
/// Largest record body accepted (a safety state with a full validator set's
/// certificates is far smaller).
const MAX_BODY_BYTES: usize = 4 << 20;
/// Bytes before the body: magic, counter, length.
const HEAD: usize = 4 + 8 + 4;
/// The smallest slot: one page, which holds the safety state of a
/// validator set of a few dozen.
pub const MIN_SLOT_BYTES: usize = 4096;
/// The largest slot: a whole record of the largest body.
const MAX_SLOT_BYTES: usize = (HEAD + MAX_BODY_BYTES + 32).next_power_of_two();

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

/// Where the newest record is, once the file has slots.
#[derive(Debug)]
struct Slots {
    file: File,
    /// Bytes per slot.
    size: usize,
    /// The slot (0 or 1) holding the newest record.
    newest: usize,
}

/// The safety record of one data directory.
#[derive(Debug)]
pub struct SafetyRecord {
    path: PathBuf,
    tmp: PathBuf,
    dir: PathBuf,
    counter: u64,
    /// None until the file exists in the slot format.
    slots: Option<Slots>,
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
            slots: None,
        };
        // A leftover temporary file is a rewrite that never completed: its
        // rename did not happen, so nothing depended on it.
        if rec.tmp.exists() {
            fs::remove_file(&rec.tmp).map_err(|e| io(&rec.tmp, "removing", e))?;
        }
        let bytes = match fs::read(&rec.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((rec, None)),
            Err(e) => return Err(io(&rec.path, "reading", e)),
        };
        let corrupt = |why: String| {
            StorageError::SafetyStateCorrupt(format!("{}: {why}", rec.path.display()))
        };
        if bytes.starts_with(LEGACY_MAGIC) {
            let (counter, body) = parse(&bytes, LEGACY_MAGIC, true).map_err(corrupt)?;
            rec.counter = counter;
            return Ok((rec, Some(body)));
        }
        let size = bytes.len() / 2;
        if bytes.len() % 2 != 0 || !(MIN_SLOT_BYTES..=MAX_SLOT_BYTES).contains(&size) {
            return Err(corrupt(format!(
                "{} bytes is not two slots of {MIN_SLOT_BYTES} to {MAX_SLOT_BYTES} bytes",
                bytes.len()
            )));
        }
        let (first, second) = bytes.split_at(size);
        let (newest, counter, body) =
            match (parse(first, MAGIC, false), parse(second, MAGIC, false)) {
                (Ok(a), Ok(b)) if a.0 == b.0 => {
                    return Err(corrupt(format!("both slots hold counter {}", a.0)));
                }
                (Ok(a), Ok(b)) if b.0 > a.0 => (1, b.0, b.1),
                (Ok(a), _) => (0, a.0, a.1),
                (Err(_), Ok(b)) => (1, b.0, b.1),
                (Err(a), Err(b)) => {
                    return Err(corrupt(format!("no valid slot (first: {a}; second: {b})")));
                }
            };
        let file = OpenOptions::new()
            .write(true)
            .open(&rec.path)
            .map_err(|e| io(&rec.path, "opening", e))?;
        rec.counter = counter;
        rec.slots = Some(Slots { file, size, newest });
        Ok((rec, Some(body)))
    }

    /// Writes `body` durably; returns only once it is on disk.
    pub fn write(&mut self, body: &SafetyBody) -> Result<(), StorageError> {
        let counter = self.counter + 1;
        let bytes = format(counter, body);
        match &mut self.slots {
            Some(slots) if bytes.len() <= slots.size => {
                let target = 1 - slots.newest;
                slots
                    .file
                    .write_all_at(&bytes, (target * slots.size) as u64)
                    .and_then(|()| slots.file.sync_data())
                    .map_err(|e| io(&self.path, "writing", e))?;
                slots.newest = target;
            }
            _ => self.rewrite(&bytes)?,
        }
        self.counter = counter;
        Ok(())
    }

    /// Replaces the whole file with one of slots large enough for `record`,
    /// which goes into the first slot.
    fn rewrite(&mut self, record: &[u8]) -> Result<(), StorageError> {
        let size = record.len().next_power_of_two().max(MIN_SLOT_BYTES);
        if size > MAX_SLOT_BYTES {
            return Err(StorageError::Io(format!(
                "a safety record of {} bytes is larger than the largest slot",
                record.len()
            )));
        }
        // Every byte is written (no holes), so that later in-place writes
        // allocate nothing.
        let mut image = vec![0u8; 2 * size];
        image[..record.len()].copy_from_slice(record);
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&self.tmp)
            .map_err(|e| io(&self.tmp, "creating", e))?;
        f.write_all(&image)
            .and_then(|()| f.sync_all())
            .map_err(|e| io(&self.tmp, "writing", e))?;
        drop(f);
        fs::rename(&self.tmp, &self.path).map_err(|e| io(&self.path, "replacing", e))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io(&self.dir, "syncing", e))?;
        let file = OpenOptions::new()
            .write(true)
            .open(&self.path)
            .map_err(|e| io(&self.path, "opening", e))?;
        self.slots = Some(Slots {
            file,
            size,
            newest: 0,
        });
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

    /// Bytes per slot, once the file has slots (for tests and tools).
    pub fn slot_bytes(&self) -> Option<usize> {
        self.slots.as_ref().map(|s| s.size)
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

fn format_with(magic: &[u8; 4], counter: u64, body: &SafetyBody) -> Vec<u8> {
    let payload = encode(body);
    let mut rec = Vec::with_capacity(payload.len() + HEAD + 32);
    rec.extend_from_slice(magic);
    rec.extend_from_slice(&counter.to_be_bytes());
    rec.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    rec.extend_from_slice(&payload);
    let sum = Digest::of(&rec);
    rec.extend_from_slice(&sum.0);
    rec
}

fn format(counter: u64, body: &SafetyBody) -> Vec<u8> {
    format_with(MAGIC, counter, body)
}

/// Parses one record at the start of `rec`; `exact`: nothing may follow it
/// (the single-record format), otherwise the rest of a slot is ignored.
fn parse(rec: &[u8], magic: &[u8; 4], exact: bool) -> Result<(u64, SafetyBody), String> {
    if rec.len() < HEAD + 32 || &rec[..4] != magic {
        return Err("bad header or truncated".into());
    }
    let counter = u64::from_be_bytes(rec[4..12].try_into().map_err(|_| "header")?);
    let len = u32::from_be_bytes(rec[12..16].try_into().map_err(|_| "header")?) as usize;
    let end = HEAD + len + 32;
    if len > MAX_BODY_BYTES || rec.len() < end || (exact && rec.len() != end) {
        return Err("length mismatch (truncated or extended)".into());
    }
    if Digest::of(&rec[..HEAD + len]).0 != rec[HEAD + len..end] {
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

/// The same in the single-record format before slots (for the test that
/// reads an old file).
#[doc(hidden)]
pub fn legacy_record_bytes(counter: u64, body: &SafetyBody) -> Vec<u8> {
    format_with(LEGACY_MAGIC, counter, body)
}
