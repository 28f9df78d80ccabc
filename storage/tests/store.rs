//! The store against real RocksDB on disk.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use phalanx_consensus::{CheckpointCert, CheckpointVote, Height, SafetyState, genesis_qc};
use phalanx_crypto::{ChainId, Digest};
use phalanx_ledger::{TxStatus, verify_account_proof};
use phalanx_storage::testkit::{account_key, genesis, next_block, transfers};
use phalanx_storage::{
    MAX_BUCKET_ACCOUNTS, MAX_CHUNK_ACCOUNTS, MIN_SLOT_BYTES, PENDING_WRITE_BUFFER_BYTES,
    SAFETY_FILE, SafetyBody, SafetyRecord, StateRestore, StorageError, Store, StoreOptions,
    legacy_record_bytes, record_bytes,
};

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
        store.apply_block(&b, &c).unwrap();
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
    let b3 = s.block(Height(3)).unwrap().unwrap();
    assert_eq!(s.height_of(&b3.id()).unwrap(), Some(Height(3)));
    assert!(s.cert(Height(3)).unwrap().is_some());
    // A block that does not extend the head is refused.
    let (b, c) = next_block(&s, &[]);
    s.apply_block(&b, &c).unwrap();
    assert!(matches!(
        s.apply_block(&b, &c),
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
    let first = s.apply_block(&b, &c).unwrap();
    let applied: Vec<_> = first
        .receipts
        .iter()
        .filter(|r| r.status == TxStatus::Applied)
        .collect();
    assert!(!applied.is_empty());
    let before = supply(&s);
    // The same transactions again in the next block.
    let (b2, c2) = next_block(&s, &txs);
    let again = s.apply_block(&b2, &c2).unwrap();
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

/// A Byzantine leader's burn, committed: a copy of transfer `a` with a
/// flipped signature bit, and `b` (the sender's next nonce after `a`) put
/// first. Neither takes the genuine hashes: both apply in the next block,
/// and the index then points at the block that applied them.
#[test]
fn failure_receipts_never_take_the_genuine_hash() {
    use phalanx_ledger::{Leg, Transfer};
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let chain = s.chain_id().clone();
    let key = account_key(3);
    let tx = |nonce| {
        Transfer {
            chain_id: chain.clone(),
            sender: key.public(),
            nonce,
            legs: vec![Leg {
                to: account_key(4).public(),
                amount: 1,
            }],
        }
        .sign(&key)
    };
    let (a, b) = (tx(0), tx(1));
    let mut copy = a.encode();
    let last = copy.len() - 1;
    copy[last] ^= 1;
    let (blk, cert) = next_block(&s, &[copy.clone(), b.encode()]);
    let burnt = s.apply_block(&blk, &cert).unwrap();
    assert_eq!(burnt.receipts[0].status, TxStatus::BadSignature);
    assert_eq!(burnt.receipts[0].tx_hash, Digest::of(&copy));
    assert!(s.transaction(&a.hash()).unwrap().is_none());
    let filed = s.transaction(&b.hash()).unwrap().unwrap();
    assert!(matches!(
        filed.receipt.status,
        TxStatus::NonceTooHigh { .. }
    ));
    assert!(!s.tx_committed(&b.hash()).unwrap());
    let (blk, cert) = next_block(&s, &[a.encode(), b.encode()]);
    let out = s.apply_block(&blk, &cert).unwrap();
    assert!(out.receipts.iter().all(|r| r.status == TxStatus::Applied));
    for t in [&a, &b] {
        let rec = s.transaction(&t.hash()).unwrap().unwrap();
        assert_eq!((rec.height, rec.receipt.status), (2, TxStatus::Applied));
        assert!(s.tx_committed(&t.hash()).unwrap());
    }
    // Once applied, a later failure under the hash files nothing.
    let (blk, cert) = next_block(&s, &[a.encode()]);
    let again = s.apply_block(&blk, &cert).unwrap();
    assert_eq!(again.receipts[0].status, TxStatus::Duplicate);
    assert_eq!(s.transaction(&a.hash()).unwrap().unwrap().height, 2);
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
fn the_safety_record_round_trips_counts_its_writes_and_fails_closed_when_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let (mut r, body) = SafetyRecord::open(dir.path()).unwrap();
    assert_eq!(body, None, "no record yet");
    r.write(&SafetyBody::Fresh).unwrap();
    let (_, body) = SafetyRecord::open(dir.path()).unwrap();
    assert_eq!(body, Some(SafetyBody::Fresh));
    r.write_state(&safety()).unwrap();
    drop(r);
    let (r, body) = SafetyRecord::open(dir.path()).unwrap();
    assert_eq!(body, Some(SafetyBody::State(Box::new(safety()))));
    assert_eq!(r.counter(), 2);
    let slot = r.slot_bytes().expect("the file has slots");
    assert_eq!(slot, MIN_SLOT_BYTES);

    // A rewrite that never reached its rename leaves a temporary file: it
    // is ignored and removed.
    let path = SafetyRecord::path_in(dir.path());
    let tmp = dir.path().join(format!("{SAFETY_FILE}.tmp"));
    std::fs::write(&tmp, b"half a record").unwrap();
    let (_, body) = SafetyRecord::open(dir.path()).unwrap();
    assert_eq!(body, Some(SafetyBody::State(Box::new(safety()))));
    assert!(!tmp.exists());

    // The format is as documented: two slots, the first write in the first,
    // the second in the second.
    let file = std::fs::read(&path).unwrap();
    assert_eq!(file.len(), 2 * slot);
    let first = record_bytes(1, &SafetyBody::Fresh);
    let good = record_bytes(2, &SafetyBody::State(Box::new(safety())));
    assert_eq!(&file[..first.len()], &first[..]);
    assert_eq!(&file[slot..slot + good.len()], &good[..]);

    // Damage to the newest slot alone is what a torn write leaves: the
    // other slot holds the last completed write, which is read.
    let mut flipped = file.clone();
    flipped[slot + 20] ^= 1;
    let mut counter = file.clone();
    counter[slot + 11] ^= 1;
    let mut torn = file.clone();
    torn[slot + good.len() / 2..slot + good.len()].fill(0);
    for (what, bytes) in [
        ("flipped byte", flipped),
        ("altered counter", counter),
        ("torn", torn),
    ] {
        std::fs::write(&path, &bytes).unwrap();
        let (r, body) = SafetyRecord::open(dir.path()).unwrap();
        assert_eq!(body, Some(SafetyBody::Fresh), "{what}");
        assert_eq!(r.counter(), 1, "{what}");
    }

    // With no valid slot, or a file of the wrong shape, it refuses.
    let mut both = file.clone();
    both[20] ^= 1;
    both[slot + 20] ^= 1;
    let truncated = file[..file.len() - 5].to_vec();
    let mut extended = file.clone();
    extended.push(0);
    let mut bad_magic = file.clone();
    bad_magic[0] = b'X';
    bad_magic[slot] = b'X';
    let mut same_counter = file.clone();
    same_counter[slot..slot + first.len()].copy_from_slice(&first);
    for (what, bytes) in [
        ("both slots damaged", both),
        ("truncated", truncated),
        ("extended", extended),
        ("bad magic", bad_magic),
        ("one counter twice", same_counter),
        ("empty", vec![]),
    ] {
        std::fs::write(&path, &bytes).unwrap();
        let err = SafetyRecord::open(dir.path())
            .err()
            .unwrap_or_else(|| panic!("{what} accepted"));
        assert!(
            matches!(err, StorageError::SafetyStateCorrupt(_)),
            "{what}: {err}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("refusing to start") && msg.contains("--recover"),
            "{msg}"
        );
        assert!(msg.contains(SAFETY_FILE), "names the file: {msg}");
    }
}

#[test]
fn safety_record_writes_alternate_slots_in_place_and_survive_a_torn_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = SafetyRecord::path_in(dir.path());
    let (mut r, _) = SafetyRecord::open(dir.path()).unwrap();
    let state = |v: u64| {
        let mut s = safety();
        s.last_voted_view = phalanx_consensus::View(v);
        SafetyBody::State(Box::new(s))
    };
    for v in 1..=5 {
        r.write(&state(v)).unwrap();
    }
    let slot = r.slot_bytes().unwrap();
    drop(r);
    let file = std::fs::read(&path).unwrap();
    assert_eq!(file.len(), 2 * slot, "in-place writes keep the file's size");
    // Writes 1, 3, 5 went to the first slot, 2 and 4 to the second.
    let fifth = record_bytes(5, &state(5));
    let fourth = record_bytes(4, &state(4));
    assert_eq!(&file[..fifth.len()], &fifth[..]);
    assert_eq!(&file[slot..slot + fourth.len()], &fourth[..]);

    // A crash in the middle of write 6 (to the second slot): half of it
    // reached the disk. Write 5 is what counts.
    let sixth = record_bytes(6, &state(6));
    let mut torn = file.clone();
    torn[slot..slot + sixth.len() / 2].copy_from_slice(&sixth[..sixth.len() / 2]);
    std::fs::write(&path, &torn).unwrap();
    let (mut r, body) = SafetyRecord::open(dir.path()).unwrap();
    assert_eq!(body, Some(state(5)));
    assert_eq!(r.counter(), 5);
    // The next write goes over the torn slot, not over write 5.
    r.write(&state(6)).unwrap();
    let (_, body) = SafetyRecord::open(dir.path()).unwrap();
    assert_eq!(body, Some(state(6)));
    let file = std::fs::read(&path).unwrap();
    assert_eq!(&file[..fifth.len()], &fifth[..]);

    // A record larger than a slot rewrites the file with larger slots.
    let mut big = safety();
    // Only the record's size matters here, not the certificate's meaning.
    big.high_qc.signatures = vec![phalanx_crypto::Signature([7; 64]); 100];
    let big = SafetyBody::State(Box::new(big));
    assert!(record_bytes(7, &big).len() > slot);
    r.write(&big).unwrap();
    assert!(r.slot_bytes().unwrap() > slot);
    let (r, body) = SafetyRecord::open(dir.path()).unwrap();
    assert_eq!(body, Some(big));
    assert_eq!(r.counter(), 7);
}

#[test]
fn a_safety_record_of_the_single_record_format_is_read_and_rewritten_with_slots() {
    let dir = tempfile::tempdir().unwrap();
    let path = SafetyRecord::path_in(dir.path());
    let old = SafetyBody::State(Box::new(safety()));
    std::fs::write(&path, legacy_record_bytes(7, &old)).unwrap();
    let (mut r, body) = SafetyRecord::open(dir.path()).unwrap();
    assert_eq!(body, Some(old));
    assert_eq!(r.counter(), 7);
    assert_eq!(r.slot_bytes(), None);
    r.write(&SafetyBody::Fresh).unwrap();
    let (r, body) = SafetyRecord::open(dir.path()).unwrap();
    assert_eq!(body, Some(SafetyBody::Fresh));
    assert_eq!(r.counter(), 8);
    assert_eq!(r.slot_bytes(), Some(MIN_SLOT_BYTES));
    // A damaged old-format file is refused like any other.
    let mut bad = legacy_record_bytes(7, &SafetyBody::Fresh);
    bad[20] ^= 1;
    std::fs::write(&path, bad).unwrap();
    assert!(matches!(
        SafetyRecord::open(dir.path()),
        Err(StorageError::SafetyStateCorrupt(_))
    ));
}

/// Flips one byte in the middle of the store's oldest WAL file: a damaged
/// record with intact, synced records after it.
fn corrupt_wal_middle(dir: &Path) {
    let logs = wal_files(dir);
    let wal = logs.first().expect("a WAL file");
    let mut bytes = std::fs::read(wal).unwrap();
    assert!(bytes.len() > 4096, "the log holds the writes");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    std::fs::write(wal, bytes).unwrap();
}

#[test]
fn a_damaged_log_record_cannot_take_the_safety_record_back_in_time() {
    // Writes alternate with synced store writes, as on a validator; then a
    // record in the middle of the store's log is damaged. The store's
    // recovery drops every batch after it. The safety record lives outside
    // the log: it still holds the last vote, or the node refuses to start.
    let dir = tempfile::tempdir().unwrap();
    let g = phalanx_consensus::Block::genesis(&ChainId::new("x").unwrap(), 0);
    let state = |v: u64| {
        let mut s = SafetyState::initial(genesis_qc(&g));
        s.last_voted_view = phalanx_consensus::View(v);
        s
    };
    const LAST: u64 = 200;
    {
        let s = open(dir.path());
        let (mut rec, _) = SafetyRecord::open(dir.path()).unwrap();
        let blocks = (1..=LAST).map(|_| {
            let txs = transfers(&s, s.chain_id(), ACCOUNTS, 1, 7, 20).unwrap();
            next_block(&s, &txs).0
        });
        for (v, mut b) in (1..=LAST).zip(blocks) {
            b.header.view = phalanx_consensus::View(v);
            s.put_pending_block(&b).unwrap();
            s.sync_wal().unwrap();
            rec.write_state(&state(v)).unwrap();
            // Synced by the next round's WAL sync: as a safety record kept
            // in the store would be.
            s.note_safety_counter(rec.counter()).unwrap();
        }
        s.sync_wal().unwrap();
    }
    corrupt_wal_middle(dir.path());
    let reopened = Store::open(dir.path(), &genesis(ACCOUNTS), StoreOptions::default());
    let (rec, body) = SafetyRecord::open(dir.path()).unwrap();
    assert_eq!(
        body,
        Some(SafetyBody::State(Box::new(state(LAST)))),
        "the record keeps the last vote whatever the log lost"
    );
    if let Ok(s) = reopened {
        rec.check_against(&s)
            .expect("a record newer than the store is fine");
        // Control: the store's own synced record of the writes went back,
        // as a safety state kept in the store did before.
        let seen = s.safety_counter().unwrap();
        assert!(
            seen < LAST,
            "the damage must drop later synced batches (the store saw write {seen})"
        );
    }
}

#[test]
fn a_safety_record_older_than_the_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let (mut rec, _) = SafetyRecord::open(dir.path()).unwrap();
    let path = rec.path().to_path_buf();
    let mut backup = Vec::new();
    for v in 1..=3 {
        let mut st = safety();
        st.last_voted_view = phalanx_consensus::View(v);
        rec.write_state(&st).unwrap();
        s.note_safety_counter(rec.counter()).unwrap();
        s.sync_wal().unwrap();
        if v == 1 {
            backup = std::fs::read(&path).unwrap();
        }
    }
    rec.check_against(&s).unwrap();
    std::fs::write(&path, &backup).unwrap();
    let (old, _) = SafetyRecord::open(dir.path()).unwrap();
    let err = old.check_against(&s).unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::SafetyRolledBack {
                record: 1,
                store: 3,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("--recover"));
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
    s.apply_block(&b1, &c1).unwrap();
    assert!(s.pending_blocks().unwrap().is_empty());
    // An empty block is a new state version like any other.
    let root = s.head().state_root;
    drop(s);
    let s = open(dir.path());
    assert_eq!(s.head().height, 1);
    assert_eq!(s.state_root_at(Height(1)).unwrap(), root);
    assert_eq!(
        s.state_root_at(Height(0)).unwrap(),
        root,
        "no account changed"
    );
}

/// The store's write-ahead log files, oldest first.
fn wal_files(dir: &Path) -> Vec<PathBuf> {
    let mut logs: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    logs
}

/// Truncates the newest WAL file by `cut` bytes, as a crash mid-write would.
fn tear_wal(dir: &Path, cut: u64) {
    let logs = wal_files(dir);
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
        last_root = s.state_root_at(Height(3)).unwrap();
        // Not flushed: the last commits live only in the WAL.
    }
    tear_wal(dir.path(), 100);
    let s = open(dir.path());
    let head = s.head();
    assert_eq!(head.height, 3, "the torn last block is dropped whole");
    assert_eq!(head.state_root, last_root);
    assert!(s.block(Height(4)).unwrap().is_none());
    commit_n(&s, 1);
    assert_eq!(s.head().height, 4, "and the store goes on");
}

fn checkpoint(s: &Store, h: u64) -> CheckpointCert {
    CheckpointCert {
        payload: CheckpointVote {
            height: Height(h),
            block_id: s.block(Height(h)).unwrap().unwrap().id(),
            state_root: s.state_root_at(Height(h)).unwrap(),
        },
        signers: Default::default(),
        signatures: vec![],
    }
}

/// Fetches a whole snapshot from `s` in chunks of `max` accounts, as a
/// syncing peer would, following the restore's requests.
fn serve(s: &Store, r: &mut StateRestore, max: usize) -> usize {
    let mut chunks = 0;
    while let Some((h, depth, bucket, after)) = r.next_request() {
        let c = s.snapshot_chunk(h, depth, bucket, after, max).unwrap();
        r.add_chunk(c).unwrap();
        chunks += 1;
    }
    chunks
}

/// Bytes in the store's write-ahead log files (one may go while counting).
fn wal_bytes(dir: &Path) -> u64 {
    wal_files(dir)
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

#[test]
fn the_write_ahead_log_stays_bounded_while_small_families_never_fill() {
    const BOUND: u64 = 1 << 20;
    const BLOCK: usize = 256 << 10;
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        max_wal_bytes: BOUND,
        ..StoreOptions::default()
    };
    let s = Store::open(dir.path(), &genesis(ACCOUNTS), opts).unwrap();
    // The head record is a few bytes in a family whose memtable never
    // fills: on its own it would keep every later log file alive.
    commit_n(&s, 1);
    // Pending blocks fill their family's memtable one and a half times, so
    // that its flush starts a new log file and the old one is left to the
    // families that never fill.
    let (mut b, _) = next_block(&s, &[]);
    b.payload = vec![7; BLOCK];
    let count = (PENDING_WRITE_BUFFER_BYTES * 3 / 2).div_ceil(BLOCK) as u64;
    let written = count * BLOCK as u64;
    for i in 0..count {
        b.header.height = Height(2 + i);
        s.put_pending_block(&b).unwrap();
    }
    // What is left: the current log file, which began at that flush (a
    // little before the memtable reached its nominal size). Without the
    // bound, the first file stays too and the log holds all that was written.
    let bound = written - PENDING_WRITE_BUFFER_BYTES as u64 / 2;
    // Flushes and the deletion of obsolete log files run in the background.
    // RocksDB applies the bound when a write comes: a node writes all the
    // time (a vote notes the safety counter), so this one does too while it
    // waits. Without it, a flush of the small families still running when
    // the last block was written left the first log file alive with
    // nothing to look again (seen on a loaded machine with 14 families).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut counter = 0;
    loop {
        let wal = wal_bytes(dir.path());
        if wal <= bound {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{wal} bytes of write-ahead log after writing {written}, expected at most {bound}"
        );
        counter += 1;
        s.note_safety_counter(counter).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    // Nothing written was lost to the flushes.
    drop(s);
    let s = Store::open(dir.path(), &genesis(ACCOUNTS), StoreOptions::default()).unwrap();
    assert_eq!(s.pending_blocks().unwrap().len(), count as usize);
}

fn open_small_buckets(dir: &Path) -> Store {
    let opts = StoreOptions {
        snapshot_bucket_accounts: 16,
        ..StoreOptions::default()
    };
    Store::open(dir, &genesis(ACCOUNTS), opts).unwrap()
}

#[test]
fn a_checkpoint_snapshot_restores_in_verified_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_small_buckets(dir.path());
    commit_n(&s, 6);
    let at4: Vec<_> = (0..ACCOUNTS)
        .map(|i| (account_key(i).public(), ()))
        .collect();
    let cp = checkpoint(&s, 4);
    let accounts_at_4 = {
        // The state at 4 as the store saw it then is what the chunks must
        // carry, even after later commits.
        let tmp = tempfile::tempdir().unwrap();
        let replay = open(tmp.path());
        for h in 1..=4 {
            replay
                .apply_block(
                    &s.block(Height(h)).unwrap().unwrap(),
                    &s.cert(Height(h)).unwrap().unwrap(),
                )
                .unwrap();
        }
        at4.iter()
            .map(|(k, _)| replay.account(k).unwrap())
            .collect::<Vec<_>>()
    };
    s.put_stable_checkpoint(&cp).unwrap();
    commit_n(&s, 3);
    // Wrong root or block: refused.
    let mut wrong = checkpoint(&s, 5);
    wrong.payload.state_root = Digest::of(b"nope");
    assert!(matches!(
        s.put_stable_checkpoint(&wrong),
        Err(StorageError::Checkpoint(_))
    ));
    let manifest = s.snapshot_manifest().unwrap().unwrap();
    assert_eq!(manifest.height, 4);
    assert_eq!(manifest.depth, 4, "200 accounts in buckets of about 16");
    manifest.verify(4, cp.payload.state_root).unwrap();
    // Only the stable checkpoint's snapshot is served.
    assert!(matches!(
        s.snapshot_chunk(5, 4, 0, None, 10),
        Err(StorageError::NotRetained(5))
    ));
    let block4 = s.block(Height(4)).unwrap().unwrap();
    let cert4 = s.cert(Height(4)).unwrap().unwrap();

    // A manifest that does not fold to the certified root is refused.
    let mut bad_manifest = (*manifest).clone();
    bad_manifest.buckets.swap(0, 1);
    let d = tempfile::tempdir().unwrap();
    assert!(StateRestore::new(open(d.path()), cp.clone(), bad_manifest).is_err());

    // A chunk with one altered balance is caught at its bucket's end.
    let d = tempfile::tempdir().unwrap();
    let mut r = StateRestore::new(open(d.path()), cp.clone(), (*manifest).clone()).unwrap();
    let (h, depth, bucket, after) = r.next_request().unwrap();
    let mut evil = s.snapshot_chunk(h, depth, bucket, after, 4096).unwrap();
    assert!(evil.bucket_done && evil.accounts.len() > 1);
    evil.accounts[1].1.balance += 1;
    let err = r.add_chunk(evil).unwrap_err().to_string();
    assert!(err.contains("does not match the manifest"), "{err}");
    // Nothing of it was written, and the bucket starts over: the honest
    // chunk from another peer completes it.
    assert_eq!(r.accounts(), 0);
    assert_eq!(r.next_request(), Some((h, depth, bucket, None)));
    let honest = s.snapshot_chunk(h, depth, bucket, None, 4096).unwrap();
    let n = honest.accounts.len() as u64;
    r.add_chunk(honest).unwrap();
    assert_eq!(r.accounts(), n);
    assert_eq!(r.progress().0, 1);

    // An account from another bucket is refused at once.
    let d = tempfile::tempdir().unwrap();
    let mut r = StateRestore::new(open(d.path()), cp.clone(), (*manifest).clone()).unwrap();
    let (h, depth, bucket, _) = r.next_request().unwrap();
    let mut stray = s.snapshot_chunk(h, depth, bucket, None, 4096).unwrap();
    let other = s.snapshot_chunk(h, depth, bucket + 1, None, 1).unwrap();
    stray.accounts.push(other.accounts[0]);
    assert!(r.add_chunk(stray).is_err());

    // A clean restore, in chunks of 5 accounts, rebuilds the same state.
    let new_dir = tempfile::tempdir().unwrap();
    let mut r = StateRestore::new(open(new_dir.path()), cp.clone(), (*manifest).clone()).unwrap();
    let chunks = serve(&s, &mut r, 5);
    assert!(chunks >= (ACCOUNTS as usize).div_ceil(5), "{chunks} chunks");
    assert_eq!(r.accounts(), ACCOUNTS);
    let restored = r.finish(&block4, &cert4).unwrap();
    assert_eq!(restored.head().height, 4);
    assert_eq!(restored.head().state_root, cp.payload.state_root);
    for (i, (k, _)) in at4.iter().enumerate() {
        let (_, a, p) = restored.account_with_proof(k).unwrap();
        verify_account_proof(cp.payload.state_root, k, a.as_ref(), &p).unwrap();
        assert!(a.is_some(), "account {i} missing from the restored state");
        assert_eq!(a, accounts_at_4[i], "account {i} as of height 4");
    }
    drop(restored);
    // It reopens as a normal store at height 4 and continues.
    let restored = open(new_dir.path());
    assert_eq!(restored.stable_checkpoint().unwrap(), Some(cp));
    let (b5, c5) = (
        s.block(Height(5)).unwrap().unwrap(),
        s.cert(Height(5)).unwrap().unwrap(),
    );
    restored.apply_block(&b5, &c5).unwrap();
    assert_eq!(
        restored.head().state_root,
        s.state_root_at(Height(5)).unwrap()
    );
}

#[test]
fn a_bucket_that_never_ends_is_cut_off_at_its_bound() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    commit_n(&s, 2);
    let cp = checkpoint(&s, 2);
    s.put_stable_checkpoint(&cp).unwrap();
    let manifest = (*s.snapshot_manifest().unwrap().unwrap()).clone();
    assert_eq!(manifest.depth, 0, "one bucket: every key belongs to it");
    let template = s.snapshot_chunk(2, 0, 0, None, 1).unwrap().accounts[0].1;
    // Accounts in key order, in full chunks that never end the bucket.
    let mut accounts: Vec<([u8; 32], phalanx_ledger::Account)> = (0..MAX_BUCKET_ACCOUNTS as u32
        + 1)
        .map(|i| {
            let mut a = [7u8; 32];
            a[..4].copy_from_slice(&i.to_be_bytes());
            (a, template)
        })
        .collect();
    accounts.sort_by_key(|(a, acct)| phalanx_ledger::leaf_of_bytes(a, acct).0);
    let d = tempfile::tempdir().unwrap();
    let mut r = StateRestore::new(open(d.path()), cp, manifest).unwrap();
    let mut refused = None;
    for (i, part) in accounts.chunks(MAX_CHUNK_ACCOUNTS).enumerate() {
        let chunk = phalanx_storage::StateChunk {
            height: 2,
            bucket: 0,
            accounts: part.to_vec(),
            bucket_done: false,
        };
        if let Err(e) = r.add_chunk(chunk) {
            refused = Some((i, e.to_string()));
            break;
        }
    }
    let (at, why) = refused.expect("an endless bucket must be refused");
    assert_eq!(
        at,
        MAX_BUCKET_ACCOUNTS / MAX_CHUNK_ACCOUNTS,
        "at the bound, not before"
    );
    assert!(why.contains("runs past"), "{why}");
    assert_eq!(r.accounts(), 0, "nothing of it was written");
}

#[test]
fn the_previous_checkpoint_snapshot_is_still_served_so_a_slow_restore_completes() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_small_buckets(dir.path());
    commit_n(&s, 3);
    let cp3 = checkpoint(&s, 3);
    s.put_stable_checkpoint(&cp3).unwrap();
    let manifest = (*s.snapshot_manifest().unwrap().unwrap()).clone();
    let block3 = s.block(Height(3)).unwrap().unwrap();
    let cert3 = s.cert(Height(3)).unwrap().unwrap();
    // A restore of checkpoint 3 starts…
    let new_dir = tempfile::tempdir().unwrap();
    let mut r = StateRestore::new(open(new_dir.path()), cp3.clone(), manifest).unwrap();
    let (h, depth, bucket, after) = r.next_request().unwrap();
    r.add_chunk(s.snapshot_chunk(h, depth, bucket, after, 4096).unwrap())
        .unwrap();
    // …the server moves on to checkpoint 6…
    commit_n(&s, 4);
    let cp6 = checkpoint(&s, 6);
    s.put_stable_checkpoint(&cp6).unwrap();
    let served: Vec<u64> = s
        .served_snapshots()
        .unwrap()
        .iter()
        .map(|c| c.payload.height.0)
        .collect();
    assert_eq!(served, vec![6, 3]);
    // …and the restore of 3 still completes, with the state of height 3.
    serve(&s, &mut r, 4096);
    let restored = r.finish(&block3, &cert3).unwrap();
    assert_eq!(restored.head().state_root, cp3.payload.state_root);
    // Two checkpoints on, 3 is no longer served.
    commit_n(&s, 3);
    s.put_stable_checkpoint(&checkpoint(&s, 9)).unwrap();
    assert!(matches!(
        s.snapshot_chunk(3, depth, bucket, None, 10),
        Err(StorageError::NotRetained(3))
    ));
}

#[test]
fn an_interrupted_restore_is_refused_at_open_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_small_buckets(dir.path());
    commit_n(&s, 3);
    let cp = checkpoint(&s, 3);
    s.put_stable_checkpoint(&cp).unwrap();
    let manifest = (*s.snapshot_manifest().unwrap().unwrap()).clone();
    let new_dir = tempfile::tempdir().unwrap();
    let mut r = StateRestore::new(open(new_dir.path()), cp, manifest).unwrap();
    let (h, depth, bucket, after) = r.next_request().unwrap();
    r.add_chunk(s.snapshot_chunk(h, depth, bucket, after, 3).unwrap())
        .unwrap();
    drop(r);
    let err = Store::open(new_dir.path(), &genesis(ACCOUNTS), StoreOptions::default())
        .err()
        .expect("a half-restored store must not open");
    assert!(
        matches!(err, StorageError::RestoreInterrupted { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("state-sync again"));
}

#[test]
fn pruning_keeps_the_checkpoint_state_and_retained_blocks() {
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
    commit_n(&s, 6);
    let filed_at = |s: &Store, h: u64| -> Vec<Digest> {
        let b = s.block(Height(h)).unwrap().unwrap();
        phalanx_ledger::decode_payload(&b.payload)
            .unwrap()
            .iter()
            .filter_map(|i| phalanx_ledger::SignedTransfer::decode(i).ok())
            .map(|t| t.hash())
            .filter(|t| s.transaction(t).unwrap().is_some_and(|r| r.height == h))
            .collect()
    };
    let (early, late) = (filed_at(&s, 3), filed_at(&s, 4));
    assert!(!early.is_empty() && !late.is_empty());
    let at6: Vec<_> = (0..ACCOUNTS)
        .map(|i| s.account(&account_key(i).public()).unwrap().unwrap())
        .collect();
    commit_n(&s, 2);
    let cp = checkpoint(&s, 6);
    s.put_stable_checkpoint(&cp).unwrap();
    assert_eq!(s.first_retained_block().unwrap(), Height(4));
    assert!(s.block(Height(3)).unwrap().is_none() && s.block(Height(0)).unwrap().is_some());
    // The transaction index is pruned with the blocks: gone from reads
    // at once, and from disk at the next compaction.
    for t in &early {
        assert!(s.transaction(t).unwrap().is_none(), "pruned with block 3");
        assert!(s.tx_record_on_disk(t).unwrap(), "until compaction");
    }
    s.compact_tx_index().unwrap();
    for t in &early {
        assert!(!s.tx_record_on_disk(t).unwrap(), "compaction drops it");
    }
    for t in &late {
        assert_eq!(s.transaction(t).unwrap().unwrap().height, 4, "kept");
    }
    assert!(matches!(
        s.state_root_at(Height(3)),
        Err(StorageError::NotRetained(3))
    ));
    assert_eq!(s.state_root_at(Height(6)).unwrap(), cp.payload.state_root);
    assert!(s.state_root_at(Height(8)).is_ok());
    // The state at 6 is still served exactly, after later commits and the
    // prune.
    let chunk = s.snapshot_chunk(6, 0, 0, None, 4096).unwrap();
    assert!(chunk.bucket_done);
    assert_eq!(chunk.accounts.len(), ACCOUNTS as usize);
    for (i, k) in (0..ACCOUNTS).map(|i| (i, account_key(i).public())) {
        let (_, a) = chunk
            .accounts
            .iter()
            .find(|(addr, _)| *addr == k.to_bytes())
            .unwrap();
        assert_eq!(*a, at6[i as usize], "account {i} as of height 6");
    }
    // Reopening rebuilds the latest state from the pruned records.
    let head = s.head();
    drop(s);
    let s = Store::open(dir.path(), &g, StoreOptions::default()).unwrap();
    assert_eq!(s.head(), head);
}

#[test]
fn evidence_is_kept_across_reopen_and_bounded_per_culprit() {
    use phalanx_storage::{EvidenceRecord, MAX_EVIDENCE_PER_SIGNER};
    let dir = tempfile::tempdir().unwrap();
    let rec = |signer: u16, round: u64| EvidenceRecord {
        signer,
        round,
        kind: 1,
        bytes: vec![signer as u8; 40],
    };
    {
        let s = open(dir.path());
        for r in 0..MAX_EVIDENCE_PER_SIGNER as u64 {
            assert!(s.put_evidence(&rec(2, r)).unwrap());
        }
        // The culprit's share is full; an old record again is no change.
        assert!(!s.put_evidence(&rec(2, 999)).unwrap());
        assert!(s.put_evidence(&rec(2, 0)).unwrap());
        assert!(s.put_evidence(&rec(3, 5)).unwrap(), "another culprit");
    }
    let s = open(dir.path());
    let of2 = s.evidence_of(2).unwrap();
    assert_eq!(of2.len(), MAX_EVIDENCE_PER_SIGNER);
    assert_eq!(of2[0], rec(2, 0));
    assert!(of2.iter().all(|e| e.signer == 2 && e.round < 999));
    assert_eq!(s.evidence_of(3).unwrap(), vec![rec(3, 5)]);
    assert_eq!(s.evidence().unwrap().len(), MAX_EVIDENCE_PER_SIGNER + 1);
}
