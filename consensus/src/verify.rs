//! The edge between the untrusted wire and the core: cheap checks first
//! (size, decode, shape), then signatures and embedded certificates. Only a
//! [`VerifiedMessage`] reaches [`crate::Core::handle`].
//!
//! The verifier owns small bounded caches of certificates and messages it has
//! already verified: the same highest certificate rides in every timeout and
//! proposal of a view, and a broadcast message may arrive more than once.
//! Caching is sound because verification is a deterministic function of the
//! bytes.

use std::collections::{BTreeSet, VecDeque};

use phalanx_crypto::{
    ChainId, CryptoError, Digest, ValidatorIndex, ValidatorSet, Verified, decode, encode,
    signing_bytes, verify_batch,
};

use crate::types::{
    Block, BlockRequest, CheckpointVote, EvidenceReport, Message, Proposal, QuorumCert, Statement,
    Timeout, TimeoutCert, TimeoutVote, ViewReport, Vote, genesis_qc,
};

/// Largest encoded consensus message accepted, in bytes; bounds decoding
/// before any allocation driven by the input.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Most blocks in one [`crate::types::BlockResponse`].
pub const MAX_SYNC_BLOCKS: usize = 256;

/// Certificates and messages remembered as already verified.
const CACHE_ENTRIES: usize = 4096;

/// Why a message was refused at the edge.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum VerifyError {
    /// Could not decode, or over the size bound.
    #[error("undecodable message: {0}")]
    Decode(CryptoError),
    /// A signature or certificate did not verify.
    #[error("bad signature: {0}")]
    Signature(CryptoError),
    /// A proposal signed by someone other than the block's proposer.
    #[error("proposal signed by {signer} but block names proposer {proposer}")]
    WrongProposer {
        /// The signer.
        signer: phalanx_crypto::ValidatorIndex,
        /// The header's proposer.
        proposer: phalanx_crypto::ValidatorIndex,
    },
    /// The payload does not match the header's payload digest.
    #[error("payload digest mismatch")]
    PayloadDigest,
    /// The payload is over the configured bound.
    #[error("payload of {len} bytes exceeds {max}")]
    PayloadTooLarge {
        /// Bytes in the payload.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// A timeout certificate that is malformed or below quorum.
    #[error("bad timeout certificate: {0}")]
    TimeoutCert(&'static str),
    /// A sync request or response over its bound.
    #[error("sync message over bound: {0}")]
    SyncBound(&'static str),
    /// Refused by the caller's cheap checks before any signature work.
    #[error("not admitted: {0}")]
    NotAdmitted(&'static str),
    /// An evidence report whose statements do not prove anything.
    #[error("bad evidence: {0}")]
    Evidence(&'static str),
}

/// A block whose payload digest and justifying certificate have been checked.
#[derive(Clone, Debug)]
pub struct VerifiedBlocks(Vec<Block>);

impl VerifiedBlocks {
    /// The blocks, newest first.
    pub fn blocks(&self) -> &[Block] {
        &self.0
    }
}

/// A message whose signatures and embedded certificates have been verified.
/// Built by [`Verifier`], or by the core for the messages it signs itself.
#[derive(Clone, Debug)]
pub enum VerifiedMessage {
    /// A proposal; its justify certificate and timeout certificate verified.
    Proposal(Verified<Proposal>),
    /// A vote.
    Vote(Verified<Vote>),
    /// A timeout; its high certificate verified.
    Timeout(Verified<Timeout>),
    /// A checkpoint vote.
    Checkpoint(Verified<CheckpointVote>),
    /// A sync request (unsigned; the transport authenticates the peer).
    BlockRequest(BlockRequest),
    /// Sync blocks, each with a verified justify certificate.
    BlockResponse(VerifiedBlocks),
    /// A recovery query (unsigned; the transport authenticates the peer).
    RecoveryQuery(crate::types::RecoveryQuery),
    /// A view report; its certificates verified.
    ViewReport(Verified<ViewReport>),
    /// Evidence passed on by a peer: both statements' signatures verified,
    /// and they conflict.
    Evidence(Box<crate::core::Evidence>),
}

impl VerifiedMessage {
    /// The same short name as [`Message::kind`] of its wire form.
    pub fn kind(&self) -> &'static str {
        match self {
            VerifiedMessage::Proposal(_) => "proposal",
            VerifiedMessage::Vote(_) => "vote",
            VerifiedMessage::Timeout(_) => "timeout",
            VerifiedMessage::Checkpoint(_) => "checkpoint",
            VerifiedMessage::BlockRequest(_) => "block_request",
            VerifiedMessage::BlockResponse(_) => "block_response",
            VerifiedMessage::RecoveryQuery(_) => "recovery_query",
            VerifiedMessage::ViewReport(_) => "view_report",
            VerifiedMessage::Evidence(_) => "evidence",
        }
    }

    /// The wire form.
    pub fn to_message(&self) -> Message {
        match self {
            VerifiedMessage::Proposal(p) => Message::Proposal(p.signed().clone()),
            VerifiedMessage::Vote(v) => Message::Vote(v.signed().clone()),
            VerifiedMessage::Timeout(t) => Message::Timeout(t.signed().clone()),
            VerifiedMessage::Checkpoint(c) => Message::Checkpoint(c.signed().clone()),
            VerifiedMessage::BlockRequest(r) => Message::BlockRequest(*r),
            VerifiedMessage::BlockResponse(b) => {
                Message::BlockResponse(crate::types::BlockResponse {
                    blocks: b.0.clone(),
                })
            }
            VerifiedMessage::RecoveryQuery(q) => Message::RecoveryQuery(*q),
            VerifiedMessage::ViewReport(r) => Message::ViewReport(r.signed().clone()),
            VerifiedMessage::Evidence(e) => Message::Evidence(Box::new(EvidenceReport {
                first: e.first.clone(),
                second: e.second.clone(),
            })),
        }
    }
}

/// A bounded set of digests with first-in-first-out eviction.
#[derive(Default)]
struct DigestCache {
    set: BTreeSet<Digest>,
    order: VecDeque<Digest>,
}

impl DigestCache {
    fn contains(&self, d: &Digest) -> bool {
        self.set.contains(d)
    }
    fn insert(&mut self, d: Digest) {
        if self.set.insert(d) {
            self.order.push_back(d);
            if self.order.len() > CACHE_ENTRIES
                && let Some(old) = self.order.pop_front()
            {
                self.set.remove(&old);
            }
        }
    }
}

/// Verifies messages for one chain and validator set.
pub struct Verifier {
    set: ValidatorSet,
    chain: ChainId,
    genesis_qc: QuorumCert,
    max_payload_bytes: usize,
    certs: DigestCache,
    messages: DigestCache,
    /// The planted flaw [`crate::Flaw::TcSkipsMaxView`] (simulator only).
    #[cfg(feature = "sim")]
    skip_tc_max_view: bool,
}

impl Verifier {
    /// A verifier for `chain` with genesis block `genesis`.
    pub fn new(
        set: ValidatorSet,
        chain: ChainId,
        genesis: &Block,
        max_payload_bytes: usize,
    ) -> Verifier {
        Verifier {
            set,
            chain,
            genesis_qc: genesis_qc(genesis),
            max_payload_bytes,
            certs: DigestCache::default(),
            messages: DigestCache::default(),
            #[cfg(feature = "sim")]
            skip_tc_max_view: false,
        }
    }

    /// Plants [`crate::Flaw::TcSkipsMaxView`] (simulator only).
    #[cfg(feature = "sim")]
    pub fn skip_tc_max_view(&mut self) {
        self.skip_tc_max_view = true;
    }

    /// Decodes and verifies wire bytes.
    pub fn verify_bytes(&mut self, bytes: &[u8]) -> Result<VerifiedMessage, VerifyError> {
        self.verify_bytes_if(bytes, |_| Ok(()))
    }

    /// Checks the signature of one statement of an evidence report: only
    /// the signature (a proposal comes without its payload).
    fn verify_statement(&self, m: &Statement) -> Result<(), VerifyError> {
        let (set, chain) = (&self.set, &self.chain);
        let res = match m {
            Statement::Proposal(p) => p.clone().verify(set, chain).map(drop),
            Statement::Vote(v) => v.clone().verify(set, chain).map(drop),
            Statement::Timeout(t) => t.clone().verify(set, chain).map(drop),
            Statement::Checkpoint(c) => c.clone().verify(set, chain).map(drop),
        };
        res.map_err(VerifyError::Signature)
    }

    /// Decodes wire bytes, lets `admit` refuse the message on cheap grounds
    /// (its view, its sender's rate) before any signature is checked, then
    /// verifies it. Messages verified before pass without `admit`.
    pub fn verify_bytes_if(
        &mut self,
        bytes: &[u8],
        admit: impl FnOnce(&Message) -> Result<(), &'static str>,
    ) -> Result<VerifiedMessage, VerifyError> {
        let msg: Message = decode(bytes, MAX_MESSAGE_BYTES).map_err(VerifyError::Decode)?;
        let key = Digest::of(bytes);
        if self.messages.contains(&key) {
            return Ok(trusted(msg));
        }
        admit(&msg).map_err(VerifyError::NotAdmitted)?;
        let verified = self.verify(msg)?;
        // Evidence is rare and checked each time (`trusted` never sees it).
        if !matches!(verified, VerifiedMessage::Evidence(_)) {
            self.messages.insert(key);
        }
        Ok(verified)
    }

    /// Verifies a decoded message.
    pub fn verify(&mut self, msg: Message) -> Result<VerifiedMessage, VerifyError> {
        Ok(match msg {
            Message::Proposal(p) => {
                let h = &p.payload.block.header;
                if p.signer != h.proposer {
                    return Err(VerifyError::WrongProposer {
                        signer: p.signer,
                        proposer: h.proposer,
                    });
                }
                self.check_block(&p.payload.block)?;
                if let Some(tc) = &p.payload.tc {
                    self.verify_tc(tc)?;
                }
                VerifiedMessage::Proposal(
                    p.verify(&self.set, &self.chain)
                        .map_err(VerifyError::Signature)?,
                )
            }
            Message::Vote(v) => VerifiedMessage::Vote(
                v.verify(&self.set, &self.chain)
                    .map_err(VerifyError::Signature)?,
            ),
            Message::Timeout(t) => {
                self.verify_qc(&t.payload.high_qc)?;
                if let Some(tc) = &t.payload.high_tc {
                    self.verify_tc(tc)?;
                }
                VerifiedMessage::Timeout(
                    t.verify(&self.set, &self.chain)
                        .map_err(VerifyError::Signature)?,
                )
            }
            Message::Checkpoint(c) => VerifiedMessage::Checkpoint(
                c.verify(&self.set, &self.chain)
                    .map_err(VerifyError::Signature)?,
            ),
            Message::BlockRequest(r) => {
                if r.count as usize > MAX_SYNC_BLOCKS {
                    return Err(VerifyError::SyncBound("request count"));
                }
                VerifiedMessage::BlockRequest(r)
            }
            Message::BlockResponse(r) => {
                if r.blocks.len() > MAX_SYNC_BLOCKS {
                    return Err(VerifyError::SyncBound("response length"));
                }
                for b in &r.blocks {
                    self.check_block(b)?;
                }
                VerifiedMessage::BlockResponse(VerifiedBlocks(r.blocks))
            }
            Message::RecoveryQuery(q) => VerifiedMessage::RecoveryQuery(q),
            Message::Evidence(r) => {
                let e = evidence_shape(&r)?;
                for m in [&r.first, &r.second] {
                    self.verify_statement(m)?;
                }
                VerifiedMessage::Evidence(Box::new(e))
            }
            Message::ViewReport(r) => {
                self.verify_qc(&r.payload.high_qc)?;
                if let Some(tc) = &r.payload.high_tc {
                    self.verify_tc(tc)?;
                }
                VerifiedMessage::ViewReport(
                    r.verify(&self.set, &self.chain)
                        .map_err(VerifyError::Signature)?,
                )
            }
        })
    }

    fn check_block(&mut self, b: &Block) -> Result<(), VerifyError> {
        if b.payload.len() > self.max_payload_bytes {
            return Err(VerifyError::PayloadTooLarge {
                len: b.payload.len(),
                max: self.max_payload_bytes,
            });
        }
        if Digest::of(&b.payload) != b.header.payload_digest {
            return Err(VerifyError::PayloadDigest);
        }
        self.verify_qc(&b.header.justify)
    }

    /// Verifies a quorum certificate (the genesis certificate is valid by
    /// definition).
    pub fn verify_qc(&mut self, qc: &QuorumCert) -> Result<(), VerifyError> {
        if *qc == self.genesis_qc {
            return Ok(());
        }
        // Keys name the kind: a timeout certificate's bytes that also
        // decoded as a quorum certificate must not pass as verified.
        let key = Digest::of_parts(&[b"qc", &encode(qc)]);
        if self.certs.contains(&key) {
            return Ok(());
        }
        qc.verify(&self.set, &self.chain)
            .map_err(VerifyError::Signature)?;
        self.certs.insert(key);
        Ok(())
    }

    /// Verifies a timeout certificate: a quorum of distinct members, each
    /// signature over `(view, their high_qc view)`, and a carried certificate
    /// whose view is the highest among the entries.
    pub fn verify_tc(&mut self, tc: &TimeoutCert) -> Result<(), VerifyError> {
        let key = Digest::of_parts(&[b"tc", &encode(tc)]);
        if self.certs.contains(&key) {
            return Ok(());
        }
        if tc.entries.len() < self.set.quorum() {
            return Err(VerifyError::TimeoutCert("below quorum"));
        }
        if !tc.entries.windows(2).all(|w| w[0].signer < w[1].signer) {
            return Err(VerifyError::TimeoutCert(
                "entries not in strictly ascending signer order",
            ));
        }
        let max_view = tc.entries.iter().map(|e| e.high_qc_view).max();
        #[cfg(feature = "sim")]
        let max_view = if self.skip_tc_max_view {
            Some(tc.high_qc.payload.view)
        } else {
            max_view
        };
        if max_view != Some(tc.high_qc.payload.view) {
            return Err(VerifyError::TimeoutCert(
                "carried certificate is not the entries' highest",
            ));
        }
        let mut keys = Vec::with_capacity(tc.entries.len());
        let mut msgs = Vec::with_capacity(tc.entries.len());
        for e in &tc.entries {
            let k = self
                .set
                .key(e.signer)
                .ok_or(VerifyError::TimeoutCert("signer outside the validator set"))?;
            keys.push(k);
            msgs.push(signing_bytes(
                &self.chain,
                &TimeoutVote {
                    view: tc.view,
                    high_qc_view: e.high_qc_view,
                },
            ));
        }
        let items: Vec<_> = tc
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (keys[i], msgs[i].as_slice(), &e.signature))
            .collect();
        verify_batch(&items).map_err(|i| {
            VerifyError::Signature(CryptoError::InvalidSignature {
                signer: tc.entries[i].signer,
            })
        })?;
        self.verify_qc(&tc.high_qc)?;
        self.certs.insert(key);
        Ok(())
    }
}

/// Rebuilds a message that was verified before (same bytes) without
/// re-checking signatures.
fn trusted(msg: Message) -> VerifiedMessage {
    match msg {
        Message::Proposal(p) => VerifiedMessage::Proposal(Verified::trusted(p)),
        Message::Vote(v) => VerifiedMessage::Vote(Verified::trusted(v)),
        Message::Timeout(t) => VerifiedMessage::Timeout(Verified::trusted(t)),
        Message::Checkpoint(c) => VerifiedMessage::Checkpoint(Verified::trusted(c)),
        Message::BlockRequest(r) => VerifiedMessage::BlockRequest(r),
        Message::BlockResponse(r) => VerifiedMessage::BlockResponse(VerifiedBlocks(r.blocks)),
        Message::RecoveryQuery(q) => VerifiedMessage::RecoveryQuery(q),
        Message::ViewReport(r) => VerifiedMessage::ViewReport(Verified::trusted(r)),
        Message::Evidence(r) => match evidence_shape(&r) {
            Ok(e) => VerifiedMessage::Evidence(Box::new(e)),
            Err(_) => unreachable!("evidence is never cached as verified"),
        },
    }
}

/// Which slot a signed statement fills and what it says there: the kind,
/// the signer, the round (view, or height for checkpoint votes) and a
/// digest of what the signature covers. Two statements of one slot with
/// different digests are evidence.
pub(crate) fn statement_slot(m: &Statement) -> (u8, ValidatorIndex, u64, Digest) {
    use phalanx_crypto::SignedPayload;
    match m {
        Statement::Proposal(p) => (
            0,
            p.signer,
            p.payload.block.view().0,
            Digest::of(&p.payload.signed_bytes()),
        ),
        Statement::Vote(v) => (
            1,
            v.signer,
            v.payload.view.0,
            Digest::of(&encode(&v.payload)),
        ),
        Statement::Timeout(t) => (
            2,
            t.signer,
            t.payload.view.0,
            Digest::of(&t.payload.signed_bytes()),
        ),
        Statement::Checkpoint(c) => (
            3,
            c.signer,
            c.payload.height.0,
            Digest::of(&encode(&c.payload)),
        ),
    }
}

/// The evidence a report claims, checked for shape only (no signatures).
fn evidence_shape(r: &EvidenceReport) -> Result<crate::core::Evidence, VerifyError> {
    let (a, b) = (statement_slot(&r.first), statement_slot(&r.second));
    if (a.0, a.1, a.2) != (b.0, b.1, b.2) {
        return Err(VerifyError::Evidence("not one slot of one signer"));
    }
    if a.3 == b.3 {
        return Err(VerifyError::Evidence("the statements do not conflict"));
    }
    Ok(crate::core::Evidence {
        signer: a.1,
        round: a.2,
        first: r.first.clone(),
        second: r.second.clone(),
    })
}
