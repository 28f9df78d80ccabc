//! The store against real RocksDB on disk.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use phalanx_consensus::{CheckpointCert, CheckpointVote, Height, SafetyState, genesis_qc};
use phalanx_crypto::{ChainId, Digest};
use phalanx_ledger::{TxStatus, verify_account_proof};
use phalanx_storage::testkit::{account_key, genesis, next_block, transfers};
use phalanx_storage::{StateRestore, StorageError, Store, StoreOptions};

const ACCOUNTS: u64 = 200;

fn open(dir: &Path) -> Store {
    Store::open(dir, &genesis(ACCOUNTS), StoreOptions::default()).unwrap()
}

fn commit_n(store: &Store, n: u64) {
    let chain = store.chain_id().clone();
    for _ in 0..n {
        let h = store.head().height + 1;
        let txs = transfers(store, &chain, ACCOUNTS, h, 7, 30).unwrap();
        let (b, c) = next_block(store, &txs);
        store.commit_block(&b, &c).unwrap();
    }
}

fn supply(store: &Store) -> u128 {
    (0..ACCOUNTS)
        .map(|i| {
            store
                .account(&account_key(i).public())
                .unwrap()
                .unwrap_or_default()
                .balance as u128
        })
        .sum()
}

#[test]
fn commits_survive_reopen_and_conserve_supply() {
    let dir = tempfile::tempdir().unwrap();
    let before;
    {
        let s = open(dir.path());
        before = supply(&s);
        commit_n(&s, 5);
        assert_eq!(s.head().height, 5);
    }
    let s = open(dir.path());
    assert_eq!(s.head().height, 5);
    assert_eq!(supply(&s), before);
    let b3 = s.block(3).unwrap().unwrap();
    assert_eq!(s.height_of(&b3.id()).unwrap(), Some(3));
    assert!(s.cert(3).unwrap().is_some());
    // A block that does not extend the head is refused.
    let (b, c) = next_block(&s, &[]);
    s.commit_block(&b, &c).unwrap();
    assert!(matches!(
        s.commit_block(&b, &c),
        Err(StorageError::NotNext { head: 6, got: 6 })
    ));
}

#[test]
fn a_foreign_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    let mut other = genesis(ACCOUNTS);
    other.chain_id = ChainId::new("another-chain").unwrap();
    let err = Store::open(dir.path(), &other, StoreOptions::default())
        .err()
        .unwrap();
    assert!(matches!(err, StorageError::ForeignStore { .. }), "{err}");
    assert!(err.to_string().contains("belongs to chain"));
}

#[test]
fn a_transaction_is_applied_once_and_keeps_its_first_receipt() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let chain = s.chain_id().clone();
    let txs = transfers(&s, &chain, ACCOUNTS, 1, 99, 5).unwrap();
    let (b, c) = next_block(&s, &txs);
    let first = s.commit_block(&b, &c).unwrap();
    let applied: Vec<_> = first
        .receipts
        .iter()
        .filter(|r| r.status == TxStatus::Applied)
        .collect();
    assert!(!applied.is_empty());
    let before = supply(&s);
    // The same transactions again in the next block.
    let (b2, c2) = next_block(&s, &txs);
    let again = s.commit_block(&b2, &c2).unwrap();
    for r in &again.receipts {
        if applied.iter().any(|a| a.tx_hash == r.tx_hash) {
            assert_eq!(r.status, TxStatus::Duplicate);
        }
    }
    assert_eq!(supply(&s), before);
    let rec = s.transaction(&applied[0].tx_hash).unwrap().unwrap();
    assert_eq!(
        rec.height, 1,
        "the record points at the block that applied it"
    );
    assert_eq!(rec.receipt.status, TxStatus::Applied);
}

#[test]
fn account_proofs_verify_against_the_head_root() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    commit_n(&s, 3);
    let k = account_key(5).public();
    let (head, acct, proof) = s.account_with_proof(&k).unwrap();
    assert_eq!(acct, s.account(&k).unwrap());
    verify_account_proof(head.state_root, &k, acct.as_ref(), &proof).unwrap();
    let stranger = account_key(10_000).public();
    let (head, none, proof) = s.account_with_proof(&stranger).unwrap();
    assert!(none.is_none());
    verify_account_proof(head.state_root, &stranger, None, &proof).unwrap();
}

fn safety() -> SafetyState {
    let g = phalanx_consensus::Block::genesis(&ChainId::new("x").unwrap(), 0);
    let mut s = SafetyState::initial(genesis_qc(&g));
    s.last_voted_view = phalanx_consensus::View(42);
    s
}

#[test]
fn safety_state_round_trips_and_fails_closed_when_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    assert_eq!(s.load_safety().unwrap(), None, "a new validator has none");
    s.put_safety(&safety()).unwrap();
    drop(s);
    let s = open(dir.path());
    assert_eq!(s.load_safety().unwrap(), Some(safety()));

    // Rebuild the record's bytes, then damage them in each way.
    let good = {
        let payload = phalanx_crypto::encode(&safety());
        let mut r = b"PXS1".to_vec();
        r.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        r.extend_from_slice(&payload);
        r.extend_from_slice(&Digest::of(&payload).0);
        r
    };
    s.put_safety_raw(&good).unwrap();
    assert_eq!(
        s.load_safety().unwrap(),
        Some(safety()),
        "the format is as documented"
    );
    let mut flipped = good.clone();
    flipped[12] ^= 1;
    let truncated = good[..good.len() - 5].to_vec();
    let mut bad_magic = good.clone();
    bad_magic[0] = b'X';
    for (what, bytes) in [
        ("flipped byte", flipped),
        ("truncated", truncated),
        ("bad magic", bad_magic),
        ("empty", vec![]),
    ] {
        s.put_safety_raw(&bytes).unwrap();
        let err = s
            .load_safety()
            .err()
            .unwrap_or_else(|| panic!("{what} accepted"));
        assert!(
            matches!(err, StorageError::SafetyStateCorrupt(_)),
            "{what}: {err}"
        );
        assert!(err.to_string().contains("refusing to start"));
    }
}

#[test]
fn pending_blocks_are_kept_until_committed() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let (b1, c1) = next_block(&s, &[]);
    s.put_pending_block(&b1).unwrap();
    drop(s);
    let s = open(dir.path());
    assert_eq!(s.pending_blocks().unwrap(), vec![b1.clone()]);
    s.commit_block(&b1, &c1).unwrap();
    assert!(s.pending_blocks().unwrap().is_empty());
    // An empty block is a new state version like any other.
    let root = s.head().state_root;
    drop(s);
    let s = open(dir.path());
    assert_eq!(s.head().height, 1);
    assert_eq!(s.state_root_at(1).unwrap(), root);
    assert_eq!(s.state_root_at(0).unwrap(), root, "no account changed");
}

/// Truncates the newest WAL file by `cut` bytes, as a crash mid-write would.
fn tear_wal(dir: &Path, cut: u64) {
    let mut logs: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    let wal = logs.last().expect("a WAL file");
    let len = std::fs::metadata(wal).unwrap().len();
    assert!(len > cut, "WAL holds the recent commits");
    let f = std::fs::OpenOptions::new().write(true).open(wal).unwrap();
    f.set_len(len - cut).unwrap();
}

#[test]
fn a_torn_wal_tail_recovers_to_the_last_complete_block() {
    let dir = tempfile::tempdir().unwrap();
    let last_root;
    {
        let s = open(dir.path());
        commit_n(&s, 4);
        last_root = s.state_root_at(3).unwrap();
        // Not flushed: the last commits live only in the WAL.
    }
    tear_wal(dir.path(), 100);
    let s = open(dir.path());
    let head = s.head();
    assert_eq!(head.height, 3, "the torn last block is dropped whole");
    assert_eq!(head.state_root, last_root);
    assert!(s.block(4).unwrap().is_none());
    commit_n(&s, 1);
    assert_eq!(s.head().height, 4, "and the store goes on");
}

fn checkpoint(s: &Store, h: u64) -> CheckpointCert {
    CheckpointCert {
        payload: CheckpointVote {
            height: Height(h),
            block_id: s.block(h).unwrap().unwrap().id(),
            state_root: s.state_root_at(h).unwrap(),
        },
        signers: Default::default(),
        signatures: vec![],
    }
}

#[test]
fn a_checkpoint_snapshot_restores_in_verified_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    commit_n(&s, 6);
    let cp = checkpoint(&s, 4);
    s.put_stable_checkpoint(&cp).unwrap();
    commit_n(&s, 3);
    // Wrong root or block: refused.
    let mut wrong = checkpoint(&s, 5);
    wrong.payload.state_root = Digest::of(b"nope");
    assert!(matches!(
        s.put_stable_checkpoint(&wrong),
        Err(StorageError::Checkpoint(_))
    ));

    // Serve the snapshot at height 4 in chunks of 37 accounts.
    let mut chunks = Vec::new();
    let mut after = None;
    while let Some(c) = s.snapshot_chunk(4, after, 37).unwrap() {
        after = c.last_key();
        let last = c.last;
        chunks.push(c);
        if last {
            break;
        }
    }
    assert_eq!(chunks.len(), (ACCOUNTS as usize).div_ceil(37));
    let block4 = s.block(4).unwrap().unwrap();
    let cert4 = s.cert(4).unwrap().unwrap();

    // A tampered chunk is rejected.
    let bad_dir = tempfile::tempdir().unwrap();
    let mut r = StateRestore::new(open(bad_dir.path()), cp.clone()).unwrap();
    let mut evil = chunks[1].clone();
    let last = evil.entries[3].1.len() - 1;
    evil.entries[3].1[last] ^= 1;
    r.add_chunk(chunks[0].clone()).unwrap();
    assert!(r.add_chunk(evil).is_err());

    // A clean restore rebuilds the same state.
    let new_dir = tempfile::tempdir().unwrap();
    let mut r = StateRestore::new(open(new_dir.path()), cp.clone()).unwrap();
    for c in chunks {
        r.add_chunk(c).unwrap();
    }
    let restored = r.finish(&block4, &cert4).unwrap();
    assert_eq!(restored.head().height, 4);
    assert_eq!(restored.head().state_root, cp.payload.state_root);
    for i in 0..ACCOUNTS {
        let k = account_key(i).public();
        let (_, a, p) = restored.account_with_proof(&k).unwrap();
        verify_account_proof(cp.payload.state_root, &k, a.as_ref(), &p).unwrap();
        assert!(a.is_some(), "account {i} missing from the restored state");
    }
    drop(restored);
    // It reopens as a normal store at height 4 and continues.
    let restored = open(new_dir.path());
    assert_eq!(restored.stable_checkpoint().unwrap(), Some(cp));
    let (b5, c5) = (s.block(5).unwrap().unwrap(), s.cert(5).unwrap().unwrap());
    restored.commit_block(&b5, &c5).unwrap();
    assert_eq!(restored.head().state_root, s.state_root_at(5).unwrap());
}

#[test]
fn pruning_keeps_the_checkpoint_version_and_retained_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let g = genesis(ACCOUNTS);
    let s = Store::open(
        dir.path(),
        &g,
        StoreOptions {
            retained_blocks: 2,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    commit_n(&s, 8);
    let cp = checkpoint(&s, 6);
    s.put_stable_checkpoint(&cp).unwrap();
    assert_eq!(s.first_retained_block().unwrap(), 4);
    assert!(s.block(3).unwrap().is_none() && s.block(0).unwrap().is_some());
    assert_eq!(s.state_root_at(6).unwrap(), cp.payload.state_root);
    assert!(s.state_root_at(8).is_ok());
    assert!(s.snapshot_chunk(6, None, 10).unwrap().is_some());
}
