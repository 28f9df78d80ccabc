//! Protocol values: views, heights, blocks, votes, timeouts, certificates and
//! the wire message. Encodings are canonical (postcard) and pinned by tests.

use std::fmt;

use phalanx_crypto::{
    Certificate, ChainId, Digest, Domain, Signature, SignedPayload, ValidatorIndex, encode,
};
use serde::{Deserialize, Serialize};

/// A consensus round. Each view has one leader; views only increase.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default, Serialize, Deserialize,
)]
pub struct View(pub u64);

impl View {
    /// The view after this one.
    pub fn next(self) -> View {
        View(self.0 + 1)
    }
}

impl fmt::Display for View {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Position of a block in the chain; genesis is height 0.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default, Serialize, Deserialize,
)]
pub struct Height(pub u64);

impl Height {
    /// The height after this one.
    pub fn next(self) -> Height {
        Height(self.0 + 1)
    }
}

impl fmt::Display for Height {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A clock reading handed to the core, in milliseconds since the Unix epoch
/// (the simulator uses virtual milliseconds). The core never reads a clock.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default, Serialize, Deserialize,
)]
pub struct Time(pub u64);

impl Time {
    /// `self + ms`, saturating.
    pub fn plus_ms(self, ms: u64) -> Time {
        Time(self.0.saturating_add(ms))
    }
}

/// A vote for a block: the signed message a quorum certificate aggregates.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct Vote {
    /// The view the block was proposed in.
    pub view: View,
    /// The block's height.
    pub height: Height,
    /// The block's id.
    pub block_id: Digest,
}

impl SignedPayload for Vote {
    const DOMAIN: Domain = Domain("phalanx/consensus/vote");
}

/// A quorum certificate: a quorum of votes for one block.
pub type QuorumCert = Certificate<Vote>;

/// The header of a block; the block id is the digest of its encoding.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct BlockHeader {
    /// Id of the parent block.
    pub parent: Digest,
    /// Parent's height + 1.
    pub height: Height,
    /// View it was proposed in.
    pub view: View,
    /// The view's leader.
    pub proposer: ValidatorIndex,
    /// Proposer's clock, ms; strictly above the parent's.
    pub timestamp_ms: u64,
    /// Digest of the payload bytes.
    pub payload_digest: Digest,
    /// Certificate for the parent.
    pub justify: QuorumCert,
    /// Each validator's idleness along the chain up to this block (P20).
    pub idle: Idleness,
    /// Height of the first committed block whose execution this chain has
    /// not yet certified, after this block's [`BlockHeader::exec`] (P22):
    /// the parent's value plus `exec.len()`. Genesis has 1: the genesis
    /// state is given by the genesis file, which every node and client
    /// holds, not certified by a quorum.
    pub exec_next: Height,
    /// Execution results of committed blocks, one per height from the
    /// parent's `exec_next` on, at most [`MAX_EXEC_PER_BLOCK`] (P22). A
    /// quorum certificate for this block certifies them: every honest
    /// signer executed those heights itself and found the same results.
    pub exec: Vec<ExecResult>,
}

/// Most execution results one block header carries (P22).
pub const MAX_EXEC_PER_BLOCK: usize = 32;

/// What executing one committed block produced: the state after it and the
/// receipts of its items (P22). Certified by the quorum certificate of a
/// later block whose header carries it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct ExecResult {
    /// The executed block's height.
    pub height: Height,
    /// Its id.
    pub block_id: Digest,
    /// The state root after it.
    pub state_root: Digest,
    /// The root of its receipts, one per payload item in order.
    pub receipts_root: Digest,
}

/// For each validator, in set order, how many blocks in a row up to and
/// including this one it has neither proposed nor signed the certificate
/// the block carries, capped at 255 (P20). Empty for genesis, where every
/// validator counts as active. Every block carries it, and a voter checks
/// it against the parent's ([`Idleness::next`]), so the leader schedule
/// that depends on it needs nothing beyond the block being extended.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct Idleness(#[serde(with = "serde_bytes")] Vec<u8>);

impl Idleness {
    /// Blocks in a row validator `i` has been idle for (0 when unknown).
    pub fn of(&self, i: ValidatorIndex) -> u8 {
        self.0.get(i.as_usize()).copied().unwrap_or(0)
    }

    /// The idleness of a block of a set of `n` proposed by `proposer` with
    /// certificate `justify`, after its parent's `parent`: zero for the
    /// proposer and the certificate's signers, one more for the rest.
    pub fn next(
        parent: &Idleness,
        n: usize,
        proposer: ValidatorIndex,
        justify: &QuorumCert,
    ) -> Idleness {
        Idleness(
            (0..n)
                .map(|i| {
                    let v = ValidatorIndex(i as u16);
                    if v == proposer || justify.signers.contains(v) {
                        0
                    } else {
                        parent.of(v).saturating_add(1)
                    }
                })
                .collect(),
        )
    }
}

/// A block: a header and an opaque payload (the node puts a batch of
/// transactions there; the core only checks its size and asks the
/// [`crate::PayloadValidator`] whether it is acceptable).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Block {
    /// The header.
    pub header: BlockHeader,
    /// The payload. Encoded as one byte string (the same bytes postcard
    /// writes for a sequence of `u8`, without visiting each byte).
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

impl Block {
    /// The block id: SHA-256 of the header's canonical encoding (which commits
    /// to the payload through `payload_digest`).
    pub fn id(&self) -> Digest {
        Digest::of(&encode(&self.header))
    }

    /// The genesis block of `chain`: height 0, view 0, no parent. Its id
    /// differs per chain id, genesis time and, for a chain id bound to its
    /// genesis ([`ChainId::bound_to`]), per genesis hash.
    pub fn genesis(chain: &ChainId, timestamp_ms: u64) -> Block {
        let mut payload = chain.as_str().as_bytes().to_vec();
        if let Some(g) = chain.genesis() {
            payload.extend_from_slice(&g.0);
        }
        Block {
            header: BlockHeader {
                parent: Digest::ZERO,
                height: Height(0),
                view: View(0),
                proposer: ValidatorIndex(0),
                timestamp_ms,
                payload_digest: Digest::of(&payload),
                justify: QuorumCert {
                    payload: Vote {
                        view: View(0),
                        height: Height(0),
                        block_id: Digest::ZERO,
                    },
                    signers: Default::default(),
                    signatures: vec![],
                },
                idle: Idleness::default(),
                exec_next: Height(1),
                exec: Vec::new(),
            },
            payload,
        }
    }

    /// Shorthand for the header's view.
    pub fn view(&self) -> View {
        self.header.view
    }

    /// Shorthand for the header's height.
    pub fn height(&self) -> Height {
        self.header.height
    }
}

/// The certificate that stands for the genesis block: no signatures, valid by
/// definition for exactly this block.
pub fn genesis_qc(genesis: &Block) -> QuorumCert {
    QuorumCert {
        payload: Vote {
            view: View(0),
            height: Height(0),
            block_id: genesis.id(),
        },
        signers: Default::default(),
        signatures: vec![],
    }
}

/// A leader's proposal: the block, and the timeout certificate for the
/// previous view when the block does not directly follow its parent's view.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Proposal {
    /// The proposed block.
    pub block: Block,
    /// Present when `block.view != block.justify.view + 1`.
    pub tc: Option<TimeoutCert>,
}

/// What a proposer signs: the view and the block id (not the payload, which
/// the id commits to), so a signature over a large block is cheap.
#[derive(Serialize)]
struct ProposalSigned {
    view: View,
    block_id: Digest,
}

impl SignedPayload for Proposal {
    const DOMAIN: Domain = Domain("phalanx/consensus/proposal");
    fn signed_bytes(&self) -> Vec<u8> {
        encode(&ProposalSigned {
            view: self.block.view(),
            block_id: self.block.id(),
        })
    }
}

/// A validator's signed statement that view `view` failed, carrying its
/// highest certificate so the next leader can extend it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Timeout {
    /// The view that timed out.
    pub view: View,
    /// The signer's highest quorum certificate.
    pub high_qc: QuorumCert,
    /// The signer's highest timeout certificate. Not signed (it verifies on
    /// its own); it lets validators that missed it catch up to the signer's
    /// view, so that validators stranded in different views converge.
    pub high_tc: Option<TimeoutCert>,
}

/// What a timeout signature covers: the view and the view of the signer's
/// highest certificate. Timeout certificates aggregate these.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct TimeoutVote {
    /// The view that timed out.
    pub view: View,
    /// View of the signer's highest certificate.
    pub high_qc_view: View,
}

impl SignedPayload for TimeoutVote {
    const DOMAIN: Domain = Domain("phalanx/consensus/timeout");
}

impl SignedPayload for Timeout {
    const DOMAIN: Domain = TimeoutVote::DOMAIN;
    fn signed_bytes(&self) -> Vec<u8> {
        encode(&TimeoutVote {
            view: self.view,
            high_qc_view: self.high_qc.payload.view,
        })
    }
}

/// One signer's entry in a timeout certificate.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct TimeoutEntry {
    /// Who signed.
    pub signer: ValidatorIndex,
    /// The view of their highest certificate.
    pub high_qc_view: View,
    /// Their signature over `TimeoutVote { view, high_qc_view }`.
    pub signature: Signature,
}

/// A quorum of timeouts for one view. It moves everyone to the next view and
/// carries the highest certificate among its signers, which the next block
/// must extend (or exceed).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct TimeoutCert {
    /// The view that failed.
    pub view: View,
    /// Entries in ascending signer order.
    pub entries: Vec<TimeoutEntry>,
    /// The certificate with the highest view among the entries.
    pub high_qc: QuorumCert,
}

/// A validator's signature over the state after executing a block at a
/// checkpoint height.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct CheckpointVote {
    /// A multiple of the checkpoint interval.
    pub height: Height,
    /// The committed block at that height.
    pub block_id: Digest,
    /// The state root after executing it.
    pub state_root: Digest,
}

impl SignedPayload for CheckpointVote {
    const DOMAIN: Domain = Domain("phalanx/consensus/checkpoint");
}

/// A quorum of checkpoint votes: a stable checkpoint.
pub type CheckpointCert = Certificate<CheckpointVote>;

/// Ask a peer for a block and up to `count - 1` of its ancestors.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct BlockRequest {
    /// The newest block wanted.
    pub id: Digest,
    /// How many blocks, newest first.
    pub count: u16,
}

/// Blocks newest first, each the parent of the one before.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct BlockResponse {
    /// The blocks.
    pub blocks: Vec<Block>,
}

/// Sent by a validator that lost its safety record (P19): it asks every
/// other validator for its highest certificates, tagged with a fresh nonce so
/// that answers cannot be replayed from before the loss. Unsigned: the
/// transport authenticates the peer, and answering costs one signature per
/// peer per view at most.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct RecoveryQuery {
    /// Fresh for each recovery.
    pub nonce: Digest,
}

/// The answer to a [`RecoveryQuery`]: the responder's highest certificates,
/// signed with the query's nonce. The certificates are proof: a Byzantine
/// responder can under-report, never over-report.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ViewReport {
    /// The query's nonce.
    pub nonce: Digest,
    /// The responder's highest quorum certificate.
    pub high_qc: QuorumCert,
    /// The responder's highest timeout certificate.
    pub high_tc: Option<TimeoutCert>,
}

impl ViewReport {
    /// The highest view the report certifies.
    pub fn certified_view(&self) -> View {
        let tc = self.high_tc.as_ref().map_or(View(0), |tc| tc.view);
        self.high_qc.payload.view.max(tc)
    }
}

impl SignedPayload for ViewReport {
    const DOMAIN: Domain = Domain("phalanx/consensus/view-report");
}

/// Everything validators send each other about consensus.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Message {
    /// A leader's block.
    Proposal(phalanx_crypto::Signed<Proposal>),
    /// A vote, sent to the next view's leader.
    Vote(phalanx_crypto::Signed<Vote>),
    /// A timeout, broadcast.
    Timeout(phalanx_crypto::Signed<Timeout>),
    /// A checkpoint vote, broadcast.
    Checkpoint(phalanx_crypto::Signed<CheckpointVote>),
    /// A request for missing blocks.
    BlockRequest(BlockRequest),
    /// The answer to a [`BlockRequest`].
    BlockResponse(BlockResponse),
    /// A recovering validator asks for certificates.
    RecoveryQuery(RecoveryQuery),
    /// The answer to a [`RecoveryQuery`].
    ViewReport(phalanx_crypto::Signed<ViewReport>),
    /// Proof that a validator signed two conflicting statements, passed on
    /// by the validator that saw both.
    Evidence(Box<EvidenceReport>),
}

/// Two conflicting statements one validator signed for one slot (a view's
/// proposal, vote or timeout, or a height's checkpoint vote). A proposal is
/// carried without its payload: the signature covers the header, through
/// the block id.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct EvidenceReport {
    /// The statement seen first.
    pub first: Statement,
    /// The conflicting one.
    pub second: Statement,
}

/// A signed statement that fills one slot of a validator's: what evidence
/// is made of. A type of its own rather than a [`Message`], so that a
/// report cannot hold a report (nesting them would let one frame drive the
/// decoder a million levels deep).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Statement {
    /// A proposal (its payload may be left out).
    Proposal(phalanx_crypto::Signed<Proposal>),
    /// A vote.
    Vote(phalanx_crypto::Signed<Vote>),
    /// A timeout.
    Timeout(phalanx_crypto::Signed<Timeout>),
    /// A checkpoint vote.
    Checkpoint(phalanx_crypto::Signed<CheckpointVote>),
}

impl Statement {
    /// The message kind's short name (as [`Message::kind`]).
    pub fn kind(&self) -> &'static str {
        match self {
            Statement::Proposal(_) => "proposal",
            Statement::Vote(_) => "vote",
            Statement::Timeout(_) => "timeout",
            Statement::Checkpoint(_) => "checkpoint",
        }
    }

    /// The signer.
    pub fn signer(&self) -> phalanx_crypto::ValidatorIndex {
        match self {
            Statement::Proposal(p) => p.signer,
            Statement::Vote(v) => v.signer,
            Statement::Timeout(t) => t.signer,
            Statement::Checkpoint(c) => c.signer,
        }
    }

    /// The statement as a message.
    pub fn to_message(&self) -> Message {
        match self.clone() {
            Statement::Proposal(p) => Message::Proposal(p),
            Statement::Vote(v) => Message::Vote(v),
            Statement::Timeout(t) => Message::Timeout(t),
            Statement::Checkpoint(c) => Message::Checkpoint(c),
        }
    }
}

/// Every value [`Message::kind`] returns.
pub const MESSAGE_KINDS: [&str; 9] = [
    "proposal",
    "vote",
    "timeout",
    "checkpoint",
    "block_request",
    "block_response",
    "recovery_query",
    "view_report",
    "evidence",
];

impl Message {
    /// The view a message is about, when it has one.
    pub fn view(&self) -> Option<View> {
        match self {
            Message::Proposal(p) => Some(p.payload.block.view()),
            Message::Vote(v) => Some(v.payload.view),
            Message::Timeout(t) => Some(t.payload.view),
            _ => None,
        }
    }

    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Proposal(_) => "proposal",
            Message::Vote(_) => "vote",
            Message::Timeout(_) => "timeout",
            Message::Checkpoint(_) => "checkpoint",
            Message::BlockRequest(_) => "block_request",
            Message::BlockResponse(_) => "block_response",
            Message::RecoveryQuery(_) => "recovery_query",
            Message::ViewReport(_) => "view_report",
            Message::Evidence(_) => "evidence",
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_payload_encodes_as_a_plain_byte_sequence() {
        // Blocks on disk and on the wire were written with the payload as a
        // sequence of `u8`; the byte-string encoding must be identical.
        let mut b = Block::genesis(&ChainId::new("c").unwrap(), 7);
        b.payload = (0..=255u8).cycle().take(1000).collect();
        let plain = encode(&(&b.header, &b.payload));
        assert_eq!(encode(&b), plain);
        let back: Block = phalanx_crypto::decode(&plain, usize::MAX).unwrap();
        assert_eq!(back, b);
    }
}
