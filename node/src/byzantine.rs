//! Attack modes: a validator that lies, as a real process (feature
//! `byzantine`, test builds only).
//!
//! This module owns what a Byzantine validator does differently from an
//! honest one. The honest core, driver and stores run unchanged underneath;
//! the attacker sits on their edges, where a real adversary with the
//! validator's key would: it rewrites, splits, delays or drops what the
//! honest code sends (with the key, it signs whatever it likes), it changes
//! what a leader puts in a block, and it sends frames of its own. Each mode
//! is a real attack on the protocol, not a silenced honest node:
//!
//! * `equivocate`: as leader, two different valid blocks for one view, one
//!   to each half of the other validators.
//! * `double-vote`: a second vote in the same view, for a competing block
//!   it builds (the voted block with another timestamp).
//! * `withhold`: as leader, its proposal (and the certificate it carries)
//!   reaches one validator only, so locks split; its votes never leave.
//! * `stale-lock`: as leader after a timeout, it extends an older
//!   certificate than the highest one the timeout certificate carries.
//! * `delay`: its proposals and votes leave just under the others' view
//!   timeout.
//! * `censor`: as leader, it leaves out the transactions of every sender
//!   whose key's first byte is even.
//! * `burn`: as leader, it adds a copy with a broken signature of each
//!   transaction it proposes, and puts each sender's transactions in
//!   reverse nonce order.
//! * `spam`: floods every peer with invalid signatures, messages for views
//!   far ahead and block requests, and now and then a frame over the size
//!   bound.
//!
//! It must never be compiled into a release build (the `compile_error!`
//! below), never run without being asked for by name (`phalanx start
//! --byzantine MODES`), and never change what the honest code underneath
//! believes: the core's own safety state stays honest, which is what makes
//! the lies detectable.

#[cfg(not(debug_assertions))]
compile_error!(
    "the `byzantine` feature is for test builds only: attack modes must never reach a release build"
);

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use phalanx_consensus::{
    Block, BlockRequest, Height, Idleness, Message, Proposal, QuorumCert, Timeout, TimeoutCert,
    View, Vote,
};
use phalanx_crypto::{ChainId, Digest, KeyPair, ValidatorIndex, Verified, encode};
use phalanx_ledger::{SignedTransfer, encode_payload};
use tracing::warn;

use phalanx_consensus::MAX_MESSAGE_BYTES;

use crate::net::Network;

/// One attack.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Mode {
    /// Two blocks for one view, one to each half.
    Equivocate,
    /// Two votes in one view.
    DoubleVote,
    /// Proposals to one validator only; no votes.
    Withhold,
    /// After a timeout, extend an older certificate than the highest.
    StaleLock,
    /// Proposals and votes just under the view timeout.
    Delay,
    /// Leave out chosen senders' transactions.
    Censor,
    /// Broken-signature copies and reversed nonces in proposals.
    Burn,
    /// Floods of junk.
    Spam,
    /// Junk, silence or a cut-short answer to block and state requests.
    SyncLiar,
    /// Proposals certifying a state root or receipts root nobody computed
    /// (P22).
    LieExec,
}

/// Every mode by name, as `--byzantine` takes them.
pub const MODES: [(&str, Mode); 10] = [
    ("equivocate", Mode::Equivocate),
    ("double-vote", Mode::DoubleVote),
    ("withhold", Mode::Withhold),
    ("stale-lock", Mode::StaleLock),
    ("delay", Mode::Delay),
    ("censor", Mode::Censor),
    ("burn", Mode::Burn),
    ("spam", Mode::Spam),
    ("sync-liar", Mode::SyncLiar),
    ("lie-exec", Mode::LieExec),
];

impl Mode {
    /// The mode's name.
    pub fn name(self) -> &'static str {
        MODES
            .iter()
            .find(|(_, m)| *m == self)
            .map_or("?", |(n, _)| n)
    }
}

/// A bad `--byzantine` value.
#[derive(Debug, thiserror::Error)]
#[error("unknown attack mode {0:?} (known: {known})", known = MODES.map(|(n, _)| n).join(", "))]
pub struct UnknownMode(String);

/// A set of modes, parsed from `mode[,mode]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Modes(BTreeSet<Mode>);

impl FromStr for Modes {
    type Err = UnknownMode;
    fn from_str(s: &str) -> Result<Modes, UnknownMode> {
        let mut set = BTreeSet::new();
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let (_, m) = MODES
                .iter()
                .find(|(n, _)| *n == name)
                .ok_or_else(|| UnknownMode(name.to_string()))?;
            set.insert(*m);
        }
        if set.is_empty() {
            return Err(UnknownMode(s.to_string()));
        }
        Ok(Modes(set))
    }
}

impl Modes {
    /// Whether `m` is on.
    pub fn has(&self, m: Mode) -> bool {
        self.0.contains(&m)
    }

    /// The names, comma-separated.
    pub fn names(&self) -> String {
        self.0
            .iter()
            .map(|m| m.name())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Blocks remembered to build competing and stale blocks from.
const REMEMBERED_BLOCKS: usize = 256;

/// Frames of each kind the `spam` mode sends each peer per round.
const SPAM_PER_ROUND: usize = 50;

/// How often the `spam` mode sends a round.
const SPAM_EVERY: Duration = Duration::from_millis(50);

/// One in this many `spam` rounds also sends a frame over the size bound.
const SPAM_OVERSIZED_EVERY: u64 = 40;

/// Where a message goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum To {
    /// One validator.
    One(ValidatorIndex),
    /// Every other validator.
    All,
}

/// A message the attacker sends in place of what the honest code sent.
#[derive(Debug)]
pub struct Planned {
    /// Where.
    pub to: To,
    /// What.
    pub msg: Message,
    /// How long it is held first.
    pub after: Duration,
}

/// The attacker of one validator.
pub struct Attacker {
    modes: Modes,
    key: KeyPair,
    me: ValidatorIndex,
    n: usize,
    chain: ChainId,
    /// Just under the others' base view timeout.
    delay: Duration,
    blocks: HashMap<Digest, Block>,
    order: VecDeque<Digest>,
    /// Certificates seen in blocks, by view.
    qcs: BTreeMap<View, QuorumCert>,
}

impl Attacker {
    /// The attacker of validator `me` of `n` on `chain`, whose base view
    /// timeout is `base_timeout`.
    pub fn new(
        modes: Modes,
        key: KeyPair,
        me: ValidatorIndex,
        n: usize,
        chain: ChainId,
        base_timeout: Duration,
    ) -> Attacker {
        warn!(
            modes = %modes.names(),
            "BYZANTINE: this validator runs attack modes"
        );
        if modes.has(Mode::SyncLiar) {
            SYNC_LIAR.store(true, Ordering::Relaxed);
        }
        Attacker {
            modes,
            key,
            me,
            n,
            chain,
            delay: base_timeout.mul_f64(0.7),
            blocks: HashMap::new(),
            order: VecDeque::new(),
            qcs: BTreeMap::new(),
        }
    }

    /// Remembers a block the honest code persisted.
    pub fn note_block(&mut self, b: &Block) {
        let id = b.id();
        if self.blocks.insert(id, b.clone()).is_none() {
            self.order.push_back(id);
        }
        self.qcs
            .insert(b.header.justify.payload.view, b.header.justify.clone());
        while self.order.len() > REMEMBERED_BLOCKS {
            if let Some(old) = self.order.pop_front() {
                self.blocks.remove(&old);
            }
        }
        while self.qcs.len() > REMEMBERED_BLOCKS {
            self.qcs.pop_first();
        }
    }

    fn acted(&self, mode: Mode, view: View, what: &str) {
        warn!(
            mode = mode.name(),
            view = view.0,
            "byzantine action: {what}"
        );
    }

    fn sign_proposal(&self, p: Proposal) -> Message {
        Message::Proposal(Verified::sign(&self.key, self.me, &self.chain, p).into_signed())
    }

    fn sign_vote(&self, v: Vote) -> Message {
        Message::Vote(Verified::sign(&self.key, self.me, &self.chain, v).into_signed())
    }

    /// The other validators, in index order.
    fn others(&self) -> Vec<ValidatorIndex> {
        (0..self.n as u16)
            .map(ValidatorIndex)
            .filter(|v| *v != self.me)
            .collect()
    }

    /// What to send instead of `msg` to `to`.
    pub fn on_send(&mut self, to: ValidatorIndex, msg: &Message) -> Vec<Planned> {
        let now = |msg: Message| Planned {
            to: To::One(to),
            msg,
            after: Duration::ZERO,
        };
        if let Message::BlockResponse(r) = msg
            && self.modes.has(Mode::SyncLiar)
        {
            let view = r.blocks.first().map_or(View(0), |b| b.view());
            return match LIES.fetch_add(1, Ordering::Relaxed) % 3 {
                0 => {
                    self.acted(Mode::SyncLiar, view, "block request left unanswered");
                    vec![]
                }
                1 => {
                    self.acted(Mode::SyncLiar, view, "block response cut to one block");
                    let mut r = r.clone();
                    r.blocks.truncate(1);
                    vec![now(Message::BlockResponse(r))]
                }
                _ => {
                    self.acted(Mode::SyncLiar, view, "block response with junk payloads");
                    let mut r = r.clone();
                    for b in &mut r.blocks {
                        b.payload = vec![0xEE; 64];
                    }
                    vec![now(Message::BlockResponse(r))]
                }
            };
        }
        let Message::Vote(v) = msg else {
            return vec![now(msg.clone())];
        };
        let view = v.payload.view;
        if self.modes.has(Mode::Withhold) {
            self.acted(Mode::Withhold, view, "vote withheld");
            return vec![];
        }
        let after = if self.modes.has(Mode::Delay) {
            self.acted(Mode::Delay, view, "vote held");
            self.delay
        } else {
            Duration::ZERO
        };
        let mut out = vec![Planned {
            to: To::One(to),
            msg: msg.clone(),
            after,
        }];
        if self.modes.has(Mode::DoubleVote)
            && let Some(block) = self.blocks.get(&v.payload.block_id)
        {
            // A competing block that exists (it could be served): the
            // voted one with another timestamp.
            let mut rival = block.clone();
            rival.header.timestamp_ms += 1;
            let second = Vote {
                view,
                height: v.payload.height,
                block_id: rival.id(),
            };
            self.acted(Mode::DoubleVote, view, "second vote for a competing block");
            out.push(Planned {
                to: To::One(to),
                msg: self.sign_vote(second),
                after,
            });
        }
        out
    }

    /// What to send instead of broadcasting `msg`.
    pub fn on_broadcast(&mut self, msg: &Message) -> Vec<Planned> {
        let all = |msg: Message, after: Duration| {
            vec![Planned {
                to: To::All,
                msg,
                after,
            }]
        };
        let Message::Proposal(p) = msg else {
            return all(msg.clone(), Duration::ZERO);
        };
        if p.signer != self.me {
            return all(msg.clone(), Duration::ZERO);
        }
        let view = p.payload.block.view();
        if self.modes.has(Mode::LieExec) && !p.payload.block.header.exec.is_empty() {
            let mut lie = p.payload.clone();
            let r = &mut lie.block.header.exec[0];
            if view.0 % 2 == 0 {
                r.state_root = Digest::of(&r.state_root.0);
            } else {
                r.receipts_root = Digest::of(&r.receipts_root.0);
            }
            self.acted(
                Mode::LieExec,
                view,
                "proposal certifying an execution result nobody computed",
            );
            return all(self.sign_proposal(lie), Duration::ZERO);
        }
        if self.modes.has(Mode::StaleLock)
            && let Some(tc) = &p.payload.tc
            && let Some(stale) = self.stale_proposal(&p.payload, tc)
        {
            self.acted(
                Mode::StaleLock,
                view,
                "proposal extending a certificate older than the timeout certificate's",
            );
            return all(self.sign_proposal(stale), Duration::ZERO);
        }
        if self.modes.has(Mode::Withhold) {
            let others = self.others();
            self.acted(Mode::Withhold, view, "proposal shown to one validator");
            return vec![Planned {
                to: To::One(others[view.0 as usize % others.len()]),
                msg: msg.clone(),
                after: Duration::ZERO,
            }];
        }
        let after = if self.modes.has(Mode::Delay) {
            self.acted(Mode::Delay, view, "proposal held");
            self.delay
        } else {
            Duration::ZERO
        };
        if self.modes.has(Mode::Equivocate) {
            let mut rival = p.payload.clone();
            rival.block.header.timestamp_ms += 1;
            let rival = self.sign_proposal(rival);
            let others = self.others();
            let half = others.len().div_ceil(2);
            self.acted(Mode::Equivocate, view, "two blocks for one view");
            return others
                .iter()
                .enumerate()
                .map(|(k, v)| Planned {
                    to: To::One(*v),
                    msg: if k < half { msg.clone() } else { rival.clone() },
                    after,
                })
                .collect();
        }
        all(msg.clone(), after)
    }

    /// A proposal for `p`'s view extending the newest remembered
    /// certificate below the one `tc` carries, if one is known with its
    /// block.
    fn stale_proposal(&self, p: &Proposal, tc: &TimeoutCert) -> Option<Proposal> {
        let high = tc.high_qc.payload.view;
        let (qc, parent) = self
            .qcs
            .range(..high)
            .rev()
            .find_map(|(_, qc)| Some((qc, self.blocks.get(&qc.payload.block_id)?)))?;
        let payload = encode_payload(&[]);
        let header = phalanx_consensus::BlockHeader {
            parent: qc.payload.block_id,
            height: Height(parent.height().0 + 1),
            view: p.block.view(),
            proposer: self.me,
            timestamp_ms: p.block.header.timestamp_ms,
            payload_digest: Digest::of(&payload),
            justify: qc.clone(),
            idle: Idleness::next(&parent.header.idle, self.n, self.me, qc),
            exec_next: parent.header.exec_next,
            exec: vec![],
        };
        Some(Proposal {
            block: Block { header, payload },
            tc: Some(tc.clone()),
        })
    }

    /// What a leader proposes instead of `txs`.
    pub fn on_payload(&self, view: View, txs: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        let mut txs = txs;
        if self.modes.has(Mode::Censor) {
            let before = txs.len();
            txs.retain(|t| !censored(t));
            if txs.len() < before {
                self.acted(Mode::Censor, view, "transactions left out");
            }
        }
        if self.modes.has(Mode::Burn) && !txs.is_empty() {
            // Each sender's transactions in reverse nonce order, each after
            // a copy of itself with a broken signature.
            let mut by_sender: BTreeMap<[u8; 32], Vec<Vec<u8>>> = BTreeMap::new();
            for t in txs {
                let key = SignedTransfer::decode(&t)
                    .map(|s| s.transfer.sender.to_bytes())
                    .unwrap_or_default();
                by_sender.entry(key).or_default().push(t);
            }
            txs = Vec::new();
            for (_, mut run) in by_sender {
                run.reverse();
                for t in run {
                    let mut broken = t.clone();
                    if let Some(last) = broken.last_mut() {
                        *last ^= 0x01;
                    }
                    txs.push(broken);
                    txs.push(t);
                }
            }
            self.acted(
                Mode::Burn,
                view,
                "broken-signature copies and reversed nonces proposed",
            );
        }
        txs
    }
}

/// The `spam` mode's flood: it runs beside the honest code until the
/// process ends.
pub struct Spammer {
    /// The validator's key (future-view timeouts are validly signed).
    pub key: KeyPair,
    /// The validator.
    pub me: ValidatorIndex,
    /// The chain signed for.
    pub chain: ChainId,
    /// The genesis block's certificate, which every validator accepts.
    pub genesis_qc: QuorumCert,
    /// The genesis hash, for the hello of the streams it opens itself.
    pub genesis: Digest,
}

impl Spammer {
    /// Floods every peer until the process ends; `views` is this
    /// validator's current view.
    pub async fn run(
        self,
        net: Network,
        views: tokio::sync::watch::Receiver<crate::runtime::Status>,
    ) {
        let mut round: u64 = 0;
        let mut tick = tokio::time::interval(SPAM_EVERY);
        // Signed by another key: an invalid signature for this signer.
        let junk_sig = KeyPair::from_seed([0x5a; 32]).sign_raw(b"junk");
        loop {
            tick.tick().await;
            round += 1;
            let current = views.borrow().view;
            // Votes for the next view must be verified (and fail); the
            // timeouts are for views far ahead.
            let view = View(current.0 + 1_000);
            for k in 0..SPAM_PER_ROUND as u64 {
                let vote = Vote {
                    view: current.next(),
                    height: Height(round),
                    block_id: Digest::of(&[round.to_le_bytes(), k.to_le_bytes()].concat()),
                };
                let bad = phalanx_crypto::Signed {
                    payload: vote,
                    signer: self.me,
                    signature: junk_sig,
                };
                net.broadcast(Arc::new(encode(&Message::Vote(bad))));
                let timeout = Timeout {
                    view: View(view.0 + k),
                    high_qc: self.genesis_qc.clone(),
                    high_tc: None,
                };
                net.broadcast(Arc::new(encode(&Message::Timeout(
                    Verified::sign(&self.key, self.me, &self.chain, timeout).into_signed(),
                ))));
                let req = BlockRequest {
                    id: vote.block_id,
                    count: u16::MAX,
                };
                net.broadcast(Arc::new(encode(&Message::BlockRequest(req))));
            }
            if round.is_multiple_of(SPAM_OVERSIZED_EVERY) {
                for peer in net.other_validators() {
                    oversized(net.control(), peer, &self.genesis).await;
                }
            }
            if round.is_multiple_of(200) {
                warn!(
                    mode = "spam",
                    view = view.0,
                    "byzantine action: flooding peers"
                );
            }
        }
    }
}

/// Opens a consensus stream of its own to `peer` and announces a frame
/// over the size bound.
async fn oversized(mut control: libp2p_stream::Control, peer: libp2p::PeerId, genesis: &Digest) {
    use futures::AsyncWriteExt;
    let Ok(mut s) = control
        .open_stream(peer, crate::net::CONSENSUS_PROTOCOL)
        .await
    else {
        return;
    };
    let hello = crate::net::hello(genesis);
    let mut buf = (hello.len() as u32).to_be_bytes().to_vec();
    buf.extend_from_slice(&hello);
    buf.extend_from_slice(&((MAX_MESSAGE_BYTES + 1) as u32).to_be_bytes());
    buf.extend_from_slice(&[0u8; 4096]);
    let _ = tokio::time::timeout(Duration::from_secs(1), s.write_all(&buf)).await;
    let _ = s.close().await;
}

/// The senders `censor` leaves out: those whose key's first byte is even.
pub fn censored(tx: &[u8]) -> bool {
    SignedTransfer::decode(tx).is_ok_and(|s| s.transfer.sender.to_bytes()[0].is_multiple_of(2))
}

/// Set when this process runs `sync-liar` (state sync has no attacker of
/// its own to ask).
static SYNC_LIAR: AtomicBool = AtomicBool::new(false);
/// Lies told so far, which pick the next one.
static LIES: AtomicU64 = AtomicU64::new(0);

/// What a `sync-liar` does with a state request instead of answering it.
pub enum StateLie {
    /// Keeps the stream open past the requester's timeout, then drops it.
    Stall,
    /// Answers this instead.
    Answer(crate::statesync::StateResponse),
}

/// How long a stalled state request is held.
pub const STALL: Duration = Duration::from_secs(20);

/// The lie for `req`, or `None` for an honest answer (not a liar).
pub fn state_lie(req: &crate::statesync::StateRequest) -> Option<StateLie> {
    use crate::statesync::{StateRequest, StateResponse};
    if !SYNC_LIAR.load(Ordering::Relaxed) {
        return None;
    }
    let lie = match (LIES.fetch_add(1, Ordering::Relaxed) % 3, req) {
        (0, _) => StateLie::Stall,
        // Claims to have no checkpoint: ends the exchange early.
        (1, StateRequest::Checkpoint) => StateLie::Answer(StateResponse::Checkpoint(None)),
        (1, StateRequest::Chunk { .. } | StateRequest::Blocks { .. }) => {
            StateLie::Answer(StateResponse::Error("not serving".into()))
        }
        // Claims a far head and sends nothing.
        (_, StateRequest::Blocks { .. }) => StateLie::Answer(StateResponse::Blocks {
            head: u64::MAX,
            blocks: vec![],
            stable: None,
        }),
        (_, StateRequest::Checkpoint) => StateLie::Answer(StateResponse::Error("junk".into())),
        (_, StateRequest::Chunk { height, bucket, .. }) => {
            StateLie::Answer(StateResponse::Chunk(phalanx_storage::StateChunk {
                height: *height,
                bucket: *bucket,
                accounts: vec![(
                    [0xAB; 32],
                    phalanx_ledger::Account {
                        balance: 1 << 60,
                        nonce: 0,
                    },
                )],
                bucket_done: true,
            }))
        }
    };
    warn!(
        mode = Mode::SyncLiar.name(),
        view = 0,
        "byzantine action: state request answered with a lie"
    );
    Some(lie)
}

/// A bug planted in an otherwise honest node (`phalanx start
/// --planted-bug NAME`), for showing that the chaos checker catches what
/// it is there to catch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantedBug {
    /// `ledger_getAccount` answers from a cache that a commit does not
    /// invalidate (entries live 2 s), while naming the current height.
    StaleReads,
}

/// A bad `--planted-bug` value.
#[derive(Debug, thiserror::Error)]
#[error("unknown planted bug {0:?} (known: stale-reads)")]
pub struct UnknownBug(String);

impl FromStr for PlantedBug {
    type Err = UnknownBug;
    fn from_str(s: &str) -> Result<PlantedBug, UnknownBug> {
        match s {
            "stale-reads" => Ok(PlantedBug::StaleReads),
            other => Err(UnknownBug(other.to_string())),
        }
    }
}

static PLANTED: std::sync::OnceLock<PlantedBug> = std::sync::OnceLock::new();

/// Plants `bug` in this process.
pub fn plant(bug: PlantedBug) {
    warn!(?bug, "PLANTED BUG: this node answers wrongly on purpose");
    let _ = PLANTED.set(bug);
}

/// How long the planted stale-read cache keeps an entry.
const STALE_FOR: Duration = Duration::from_secs(2);

/// The account `ledger_getAccount` answers with: `current`, unless the
/// stale-reads bug is planted.
pub fn read_account(
    addr: &phalanx_crypto::PublicKey,
    current: Option<phalanx_ledger::Account>,
) -> Option<phalanx_ledger::Account> {
    type Cache = std::sync::Mutex<
        HashMap<phalanx_crypto::PublicKey, (std::time::Instant, Option<phalanx_ledger::Account>)>,
    >;
    static CACHE: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();
    if PLANTED.get() != Some(&PlantedBug::StaleReads) {
        return current;
    }
    let mut cache = CACHE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    match cache.get(addr) {
        Some((at, cached)) if at.elapsed() < STALE_FOR => *cached,
        _ => {
            cache.insert(*addr, (std::time::Instant::now(), current));
            current
        }
    }
}
