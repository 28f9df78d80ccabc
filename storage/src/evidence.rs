//! Evidence of equivocation, kept so that it outlives restarts and can be
//! served: at most [`MAX_EVIDENCE_PER_SIGNER`] records per culprit, keyed
//! by culprit, round and statement kind. The bytes are the consensus
//! crate's encoding of the two statements; this module does not look
//! inside them (consensus verified them before they got here).

use rocksdb::{Direction, IteratorMode};

use crate::accounts::cf;
use crate::keys::CF_EVIDENCE;
use crate::{StorageError, Store};

/// Records kept per culprit: one proves the fault; a few show its extent.
pub const MAX_EVIDENCE_PER_SIGNER: usize = 16;

/// One stored piece of evidence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvidenceRecord {
    /// The culprit's validator index.
    pub signer: u16,
    /// The view (or height, for checkpoint votes) of the two statements.
    pub round: u64,
    /// Which kind of statement: 0 proposal, 1 vote, 2 timeout, 3
    /// checkpoint vote.
    pub kind: u8,
    /// The encoded statements.
    pub bytes: Vec<u8>,
}

fn key(signer: u16, round: u64, kind: u8) -> [u8; 11] {
    let mut k = [0u8; 11];
    k[..2].copy_from_slice(&signer.to_be_bytes());
    k[2..10].copy_from_slice(&round.to_be_bytes());
    k[10] = kind;
    k
}

impl Store {
    /// Keeps `e` unless its culprit already has [`MAX_EVIDENCE_PER_SIGNER`]
    /// records; true if it was written (or was already there).
    pub fn put_evidence(&self, e: &EvidenceRecord) -> Result<bool, StorageError> {
        let db = self.db();
        let cf = cf(db, CF_EVIDENCE)?;
        let k = key(e.signer, e.round, e.kind);
        if db.get_pinned_cf(cf, k)?.is_some() {
            return Ok(true);
        }
        if self.evidence_of(e.signer)?.len() >= MAX_EVIDENCE_PER_SIGNER {
            return Ok(false);
        }
        db.put_cf(cf, k, &e.bytes)?;
        Ok(true)
    }

    /// Every record against `signer`, oldest round first.
    pub fn evidence_of(&self, signer: u16) -> Result<Vec<EvidenceRecord>, StorageError> {
        let db = self.db();
        let cf = cf(db, CF_EVIDENCE)?;
        let prefix = signer.to_be_bytes();
        let mut out = Vec::new();
        for item in db.iterator_cf(cf, IteratorMode::From(&prefix, Direction::Forward)) {
            let (k, v) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            out.push(decode_key(&k, v.to_vec())?);
        }
        Ok(out)
    }

    /// Every record, by culprit then round (at most
    /// `validators × MAX_EVIDENCE_PER_SIGNER`).
    pub fn evidence(&self) -> Result<Vec<EvidenceRecord>, StorageError> {
        let db = self.db();
        let cf = cf(db, CF_EVIDENCE)?;
        let mut out = Vec::new();
        for item in db.iterator_cf(cf, IteratorMode::Start) {
            let (k, v) = item?;
            out.push(decode_key(&k, v.to_vec())?);
        }
        Ok(out)
    }
}

fn decode_key(k: &[u8], bytes: Vec<u8>) -> Result<EvidenceRecord, StorageError> {
    let k: [u8; 11] = k
        .try_into()
        .map_err(|_| StorageError::Corrupt("evidence key".into()))?;
    Ok(EvidenceRecord {
        signer: u16::from_be_bytes([k[0], k[1]]),
        round: u64::from_be_bytes(
            k[2..10]
                .try_into()
                .map_err(|_| StorageError::Corrupt("evidence key".into()))?,
        ),
        kind: k[10],
        bytes,
    })
}
