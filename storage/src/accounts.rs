//! Account versions on disk: every state an account had since the last
//! stable checkpoint, keyed `key_hash ‖ height`, and the in-memory index of
//! superseded versions that pruning works from.
//!
//! This module owns reading the state as of a height (the newest version at
//! or below it, per account), rebuilding the in-memory state tree when the
//! store opens, and pruning. The in-memory tree is derived data: the
//! accounts here, written in the same batch as their block, are the truth.
//! The superseded-version index is derived too: it is kept in memory (a
//! RocksDB write per changed account cost more than the rest of the account
//! writes) and rebuilt by the same scan that rebuilds the tree.

use phalanx_ledger::{Account, KeyHash, StateTree, key_of_bytes};
use rocksdb::{DB, Direction, IteratorMode, ReadOptions, WriteBatch};

use crate::StorageError;
use crate::keys::{CF_ACCOUNTS, account_key};

/// A superseded account version: `(superseded at, key hash, old height)`.
pub(crate) type Stale = (u64, KeyHash, u64);

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
    if key_of_bytes(&addr) != kh {
        return Err(bad("address does not hash to its key"));
    }
    Ok((kh, u64::from_be_bytes(v), addr, account))
}

pub(crate) fn encode_record(addr: &[u8; 32], account: &Account) -> Vec<u8> {
    phalanx_crypto::encode(&(addr, account))
}

/// Adds a block's account changes at `version` to a batch, and to `stale`
/// the versions they supersede. `previous` gives each changed account's last
/// version before this block (from the tree, read before it is updated).
pub(crate) fn add_changes<'a>(
    db: &DB,
    wb: &mut WriteBatch,
    version: u64,
    changes: impl Iterator<Item = ([u8; 32], &'a Account, Option<u64>)>,
    stale: &mut Vec<Stale>,
) -> Result<(), StorageError> {
    let accounts = cf(db, CF_ACCOUNTS)?;
    // In key order, for the memtable's sake (see the commit path).
    let mut keyed: Vec<(KeyHash, [u8; 32], &Account, Option<u64>)> = changes
        .map(|(addr, account, previous)| (key_of_bytes(&addr), addr, account, previous))
        .collect();
    keyed.sort_unstable_by_key(|k| k.0);
    for (kh, addr, account, previous) in keyed {
        wb.put_cf(
            accounts,
            account_key(&kh, version),
            encode_record(&addr, account),
        );
        if let Some(old) = previous {
            debug_assert!(old < version);
            stale.push((version, kh, old));
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

/// Rebuilds the in-memory tree of the latest state and the index of
/// superseded versions (sorted by the height that superseded them).
pub(crate) fn load_tree(db: &DB) -> Result<(StateTree, Vec<Stale>), StorageError> {
    let accounts = cf(db, CF_ACCOUNTS)?;
    let mut ro = ReadOptions::default();
    ro.set_readahead_size(2 << 20);
    let mut latest: Vec<([u8; 32], Account, u64)> = Vec::new();
    let mut last_key: Option<KeyHash> = None;
    let mut stale = Vec::new();
    for item in db.iterator_cf_opt(accounts, ro, IteratorMode::Start) {
        let (k, v) = item?;
        let (kh, ver, addr, account) = decode_record(&k, &v)?;
        if last_key == Some(kh) {
            // Versions of one key come oldest first: the previous one is
            // superseded by this one.
            if let Some(prev) = latest.last_mut() {
                stale.push((ver, kh, prev.2));
                *prev = (addr, account, ver);
            }
        } else {
            latest.push((addr, account, ver));
            last_key = Some(kh);
        }
    }
    stale.sort_unstable_by_key(|s| s.0);
    Ok((StateTree::from_accounts(latest), stale))
}

/// Deletes the account versions in `stale` superseded at or below
/// `version` (and drops them from it): the state at `version` and above
/// stays readable. Returns how many were deleted.
pub(crate) fn prune(db: &DB, stale: &mut Vec<Stale>, version: u64) -> Result<usize, StorageError> {
    let accounts = cf(db, CF_ACCOUNTS)?;
    let n = stale.partition_point(|s| s.0 <= version);
    let mut wb = WriteBatch::default();
    for (_, kh, old) in &stale[..n] {
        wb.delete_cf(accounts, account_key(kh, *old));
    }
    db.write(wb)?;
    stale.drain(..n);
    Ok(n)
}

/// Deletes every account version (a state restore starts from nothing) and
/// marks the store as mid-restore until the restore's last batch.
pub(crate) fn clear_for_restore(db: &DB) -> Result<(), StorageError> {
    let mut wb = WriteBatch::default();
    wb.put_cf(
        cf(db, crate::keys::CF_META)?,
        crate::keys::META_RESTORING,
        [],
    );
    wb.delete_range_cf(cf(db, CF_ACCOUNTS)?, &[0u8; 40][..], &[0xffu8; 41][..]);
    db.write(wb)?;
    Ok(())
}
