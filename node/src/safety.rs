//! Where a validator's safety state comes from at start: its record, a
//! recovery (P19), or nothing yet (a new validator).
//!
//! This module decides what a missing or old record means and never lets
//! a validator sign as if new when it may have signed before: a record
//! that is missing while the store holds chain data stops the node unless
//! the operator asks for recovery; a data directory with neither a record
//! nor chain data was wiped (or made by hand) and recovers by itself. It
//! must never sign, send or decide consensus: the core does that.

use std::path::{Path, PathBuf};

use phalanx_consensus::{SafetyState, genesis_qc};
use phalanx_crypto::Digest;
use phalanx_storage::{SafetyBody, SafetyRecord, StorageError, Store};
use tracing::warn;

/// Why the safety state cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum SafetyError {
    /// The record or the store failed or refused.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The record is gone but the store shows this validator took part.
    #[error(
        "the safety record {record} is missing but the store in {data} holds chain data: this validator may have \
         signed messages it no longer remembers, and signing again could equivocate. Start with \
         `phalanx start --recover` to rejoin in recovery: it signs nothing until a quorum of the other validators \
         has shown which views are safe (see docs/PROTOCOL.md, Recovery)"
    )]
    Missing {
        /// The record's path.
        record: PathBuf,
        /// The data directory.
        data: PathBuf,
    },
    /// `--recover` with an intact record.
    #[error(
        "--recover given but the safety record {0} is intact; start without it (recovery is only for a lost record)"
    )]
    RecoverWithRecord(PathBuf),
    /// No random nonce for the recovery.
    #[error("drawing a recovery nonce: {0}")]
    Random(phalanx_crypto::CryptoError),
}

/// The safety state a validator starts from.
#[derive(Debug)]
pub enum StartState {
    /// Never signed (written so by `phalanx init`).
    Fresh,
    /// The persisted state (a recovering one if a recovery is under way).
    Resume(Box<SafetyState>),
}

/// Writes the record of a new validator (`phalanx init`): it has never
/// signed. Refuses to overwrite a record.
pub fn create_fresh(data: &Path) -> Result<(), SafetyError> {
    let (mut rec, body) = SafetyRecord::open(data)?;
    if body.is_some() {
        return Err(SafetyError::RecoverWithRecord(rec.path().to_path_buf()));
    }
    rec.write(&SafetyBody::Fresh)?;
    Ok(())
}

/// Opens the safety record of data directory `data`, next to `store`, for
/// the chain whose genesis block is `genesis`. `recover` is the operator's
/// `--recover`. Called before any state sync: a recovery is recorded at
/// once, so that a crash during it stays in it.
pub fn open(
    data: &Path,
    store: &Store,
    genesis: &phalanx_consensus::Block,
    recover: bool,
) -> Result<(SafetyRecord, StartState), SafetyError> {
    let (mut rec, body) = SafetyRecord::open(data)?;
    if let Some(body) = body {
        if recover {
            return Err(SafetyError::RecoverWithRecord(rec.path().to_path_buf()));
        }
        rec.check_against(store)?;
        return Ok(match body {
            SafetyBody::Fresh => (rec, StartState::Fresh),
            SafetyBody::State(s) => {
                if let Some(nonce) = s.quarantine {
                    warn!(
                        nonce = %nonce.short(),
                        "recovery (P19) under way: signing nothing until view reports arrive"
                    );
                }
                (rec, StartState::Resume(s))
            }
        });
    }
    if store.holds_data()? && !recover {
        return Err(SafetyError::Missing {
            record: rec.path().to_path_buf(),
            data: data.to_path_buf(),
        });
    }
    // A wiped data directory (nothing at all: no record, no chain), or the
    // operator's --recover: this validator may have signed anything.
    let nonce = Digest::random().map_err(SafetyError::Random)?;
    let s = SafetyState::recovering(genesis_qc(genesis), nonce);
    rec.write_state(&s)?;
    store.note_safety_counter(rec.counter())?;
    warn!(
        path = %rec.path().display(),
        nonce = %nonce.short(),
        "no safety record: recovering (P19); this validator signs nothing until a quorum of the others has reported"
    );
    Ok((rec, StartState::Resume(Box::new(s))))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use phalanx_consensus::{Block, View};
    use phalanx_crypto::{ChainId, KeyPair};
    use phalanx_ledger::Genesis;
    use phalanx_storage::StoreOptions;

    fn genesis() -> Genesis {
        Genesis {
            chain_id: ChainId::new("safety-test").unwrap(),
            genesis_time_ms: 1,
            validators: (0..4u8)
                .map(|i| KeyPair::from_seed([i + 1; 32]).public())
                .collect(),
            accounts: vec![],
            params: Default::default(),
        }
    }

    fn open_store(dir: &Path) -> Store {
        Store::open(dir, &genesis(), StoreOptions::default()).unwrap()
    }

    fn block() -> Block {
        let g = genesis();
        Block::genesis(&g.consensus_chain(), g.genesis_time_ms)
    }

    fn pending_child(store: &Store) {
        let g = block();
        let mut b = g.clone();
        b.header.parent = g.id();
        b.header.height = phalanx_consensus::Height(1);
        b.header.view = View(1);
        store.put_pending_block(&b).unwrap();
        store.sync_wal().unwrap();
    }

    #[test]
    fn what_a_start_makes_of_the_record_and_the_store() {
        // init, then start: fresh.
        let dir = tempfile::tempdir().unwrap();
        create_fresh(dir.path()).unwrap();
        let store = open_store(dir.path());
        let (_, st) = open(dir.path(), &store, &block(), false).unwrap();
        assert!(matches!(st, StartState::Fresh));
        // --recover with an intact record is refused.
        let err = open(dir.path(), &store, &block(), true).unwrap_err();
        assert!(matches!(err, SafetyError::RecoverWithRecord(_)), "{err}");

        // A wiped directory (no record, no chain): recovery by itself, and
        // the record says so at once.
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let (_, st) = open(dir.path(), &store, &block(), false).unwrap();
        let StartState::Resume(s) = st else {
            panic!("expected recovery")
        };
        assert!(s.quarantine.is_some());
        let (_, again) = SafetyRecord::open(dir.path()).unwrap();
        assert!(
            matches!(again, Some(SafetyBody::State(ref r)) if r.quarantine == s.quarantine),
            "a crash during recovery stays in recovery"
        );

        // The record lost, the store kept: refused, naming --recover.
        let dir = tempfile::tempdir().unwrap();
        create_fresh(dir.path()).unwrap();
        let store = open_store(dir.path());
        pending_child(&store);
        std::fs::remove_file(SafetyRecord::path_in(dir.path())).unwrap();
        let err = open(dir.path(), &store, &block(), false).unwrap_err();
        assert!(matches!(err, SafetyError::Missing { .. }), "{err}");
        assert!(err.to_string().contains("--recover"));
        // With --recover: recovery.
        let (_, st) = open(dir.path(), &store, &block(), true).unwrap();
        assert!(matches!(st, StartState::Resume(s) if s.quarantine.is_some()));
        // Two recoveries never share a nonce.
        let a = Digest::random().unwrap();
        assert_ne!(a, Digest::random().unwrap());
    }
}
