//! Account versions on disk: every state an account had since the last
//! stable checkpoint, keyed `key_hash ‖ height`, plus an index of superseded
//! versions for pruning.
//!
//! This module owns reading the state as of a height (the newest version at
//! or below it, per account), rebuilding the in-memory state tree when the
//! store opens, and pruning. The in-memory tree is derived data: the
//! accounts here, written in the same batch as their block, are the truth.

use phalanx_ledger::{Account, KeyHash, StateTree};
use rocksdb::{DB, Direction, IteratorMode, ReadOptions, WriteBatch};

use crate::StorageError;
use crate::keys::{CF_ACCOUNT_STALE, CF_ACCOUNTS, account_key, stale_key};

pub(crate) fn cf<'a>(db: &'a DB, name: &str) -> Result<&'a rocksdb::ColumnFamily, StorageError> {
    db.cf_handle(name)
        .ok_or_else(|| StorageError::Corrupt(format!("column family {name} missing")))
}

/// An account record's value: the encoded `(public key, account)` (the
/// state tree's value). Decoded with the key as raw bytes, because checking
/// a curve point for each of a million accounts at open would cost seconds;
/// the key hash binds the bytes to the record instead.
pub(crate) fn decode_record(
    key: &[u8],
    value: &[u8],
) -> Result<(KeyHash, u64, [u8; 32], Account), StorageError> {
    let bad = |why: &str| StorageError::Corrupt(format!("account record: {why}"));
    if key.len() != 40 {
        return Err(bad("key length"));
    }
    let mut kh = [0u8; 32];
    kh.copy_from_slice(&key[..32]);
    let mut v = [0u8; 8];
    v.copy_from_slice(&key[32..]);
    let (addr, account): ([u8; 32], Account) =
        phalanx_crypto::decode(value, 128).map_err(|e| bad(&e.to_string()))?;
    if phalanx_ledger::KeyHash::from(sha2_digest(&addr)) != kh {
        return Err(bad("address does not hash to its key"));
    }
    Ok((kh, u64::from_be_bytes(v), addr, account))
}

fn sha2_digest(b: &[u8]) -> [u8; 32] {
    phalanx_crypto::Digest::of(b).0
}

pub(crate) fn encode_record(addr: &[u8; 32], account: &Account) -> Vec<u8> {
    phalanx_crypto::encode(&(addr, account))
}

/// Adds a block's account changes at `version` to a batch, recording which
/// versions they supersede. `previous` gives each changed account's last
/// version before this block (from the tree, read before it is updated).
pub(crate) fn add_changes<'a>(
    db: &DB,
    wb: &mut WriteBatch,
    version: u64,
    changes: impl Iterator<Item = ([u8; 32], &'a Account, Option<u64>)>,
) -> Result<(), StorageError> {
    let accounts = cf(db, CF_ACCOUNTS)?;
    let stale = cf(db, CF_ACCOUNT_STALE)?;
    for (addr, account, previous) in changes {
        let kh = sha2_digest(&addr);
        wb.put_cf(accounts, account_key(&kh, version), encode_record(&addr, account));
        if let Some(old) = previous {
            debug_assert!(old < version);
            wb.put_cf(stale, stale_key(version, &kh, old), []);
        }
    }
    Ok(())
}

/// Streams the state as of `version` over key hashes in `[from, to)` (`to`
/// `None`: to the end): for each account, its newest version at or below
/// `version`. Stops after `limit` accounts; returns whether the range was
/// exhausted.
pub(crate) fn scan_at(
    db: &DB,
    version: u64,
    from: &KeyHash,
    to: Option<&KeyHash>,
    limit: usize,
    mut each: impl FnMut(KeyHash, [u8; 32], Account, u64),
) -> Result<bool, StorageError> {
    let accounts = cf(db, CF_ACCOUNTS)?;
    let mut ro = ReadOptions::default();
    if let Some(to) = to {
        ro.set_iterate_upper_bound(account_key(to, 0).to_vec());
    }
    // Readahead: this is a long sequential scan.
    ro.set_readahead_size(2 << 20);
    let start = account_key(from, 0);
    let it = db.iterator_cf_opt(accounts, ro, IteratorMode::From(&start, Direction::Forward));
    let mut current: Option<(KeyHash, [u8; 32], Account, u64)> = None;
    let mut count = 0usize;
    for item in it {
        let (k, v) = item?;
        let (kh, ver, addr, account) = decode_record(&k, &v)?;
        if current.as_ref().is_some_and(|c| c.0 != kh) {
            if count == limit {
                return Ok(false);
            }
            if let Some((ckh, caddr, cacc, cver)) = current.take() {
                each(ckh, caddr, cacc, cver);
                count += 1;
            }
        }
        if ver <= version {
            current = Some((kh, addr, account, ver));
        }
    }
    if let Some((ckh, caddr, cacc, cver)) = current {
        if count == limit {
            return Ok(false);
        }
        each(ckh, caddr, cacc, cver);
    }
    Ok(true)
}

/// Rebuilds the in-memory tree of the latest state.
pub(crate) fn load_tree(db: &DB) -> Result<StateTree, StorageError> {
    let mut latest = Vec::new();
    scan_at(db, u64::MAX, &[0u8; 32], None, usize::MAX, |_, addr, a, v| {
        latest.push((addr, a, v))
    })?;
    Ok(StateTree::from_accounts(latest))
}

/// Deletes account versions superseded at or below `version`: the state at
/// `version` and above stays readable. Returns how many were deleted.
pub(crate) fn prune(db: &DB, version: u64) -> Result<usize, StorageError> {
    let stale = cf(db, CF_ACCOUNT_STALE)?;
    let accounts = cf(db, CF_ACCOUNTS)?;
    let mut wb = WriteBatch::default();
    let mut n = 0;
    let mut ro = ReadOptions::default();
    ro.set_iterate_upper_bound((version + 1).to_be_bytes().to_vec());
    for item in db.iterator_cf_opt(stale, ro, IteratorMode::Start) {
        let (k, _) = item?;
        if k.len() != 48 {
            return Err(StorageError::Corrupt("stale account key length".into()));
        }
        let mut kh = [0u8; 32];
        kh.copy_from_slice(&k[8..40]);
        let mut old = [0u8; 8];
        old.copy_from_slice(&k[40..]);
        wb.delete_cf(accounts, account_key(&kh, u64::from_be_bytes(old)));
        wb.delete_cf(stale, &k);
        n += 1;
    }
    db.write(wb)?;
    Ok(n)
}

/// Deletes every account version (a state restore starts from nothing) and
/// marks the store as mid-restore until the restore's last batch.
pub(crate) fn clear_for_restore(db: &DB) -> Result<(), StorageError> {
    let mut wb = WriteBatch::default();
    wb.put_cf(cf(db, crate::keys::CF_META)?, crate::keys::META_RESTORING, []);
    wb.delete_range_cf(cf(db, CF_ACCOUNTS)?, &[0u8; 40][..], &[0xffu8; 41][..]);
    wb.delete_range_cf(cf(db, CF_ACCOUNT_STALE)?, &[0u8; 48][..], &[0xffu8; 49][..]);
    db.write(wb)?;
    Ok(())
}
