//! The consensus state machine: `handle(now, event) -> actions`.
//!
//! It owns the protocol state of one validator (view, certificates, the block
//! tree above the last commit, vote and timeout aggregation, checkpoints) and
//! decides every message it signs. It must never perform I/O, read a clock,
//! use randomness or block: time arrives as a value with each event, timers
//! are requested as actions, and persistence, sending and execution are
//! actions the driver performs in list order (persist before send).
//!
//! Line tags (`P1`, …) refer to the pseudocode in `docs/PROTOCOL.md`.

use std::collections::{BTreeMap, BTreeSet};

use phalanx_crypto::{
    Certificate, ChainId, Digest, KeyPair, ValidatorIndex, ValidatorSet, Verified,
};

use crate::driver::take_sync_blocks;
use crate::safety::{SafetyState, commits_parent, safe_to_vote, view_timeout_ms};
use crate::types::{
    Block, BlockHeader, BlockRequest, BlockResponse, CheckpointCert, CheckpointVote,
    EvidenceReport, ExecResult, Height, Idleness, MAX_EXEC_PER_BLOCK, Message, Proposal,
    QuorumCert, RecoveryQuery, Statement, Time, Timeout, TimeoutCert, TimeoutEntry, View,
    ViewReport, Vote, genesis_qc,
};
use crate::verify::{MAX_SYNC_BLOCKS, VerifiedMessage};

/// Decides whether a block's payload may be voted for: the validity rule
/// (P6). The node refuses a block holding any item that execution would
/// refuse for a reason the proposer can check (see PROTOCOL.md,
/// "Validity"); the simulator checks that items came from its clients, in
/// each sender's order. It may read state the validator has committed, but
/// its answer for a block must not depend on anything else: an honest
/// leader's block must be valid at every honest validator.
pub trait PayloadValidator {
    /// True if honest validators may vote for `block` (already checked to
    /// be well formed relative to its parent, which this validator holds).
    fn is_valid(&self, block: &Block) -> bool;
}

/// Accepts every payload.
pub struct AcceptAll;

impl PayloadValidator for AcceptAll {
    fn is_valid(&self, _: &Block) -> bool {
        true
    }
}

/// Deliberately unsafe protocol variants, used only to show that the
/// simulator's checkers catch real bugs.
#[cfg(feature = "sim")]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Flaw {
    /// Commit a block as soon as it is certified (one-chain rule).
    CommitOnSingleQc,
    /// Vote without the lock check of the vote rule (P7's certificate
    /// condition): any block in a new view is acceptable.
    VoteIgnoresLock,
    /// Vote for every valid proposal, even twice in one view.
    VoteTwiceInView,
    /// A validator recovering a lost safety record skips the quarantine
    /// (P19) and signs at once, as if it were new.
    RecoveryWithoutQuarantine,
    /// Vote without the validity rule: any payload within the size bound
    /// is acceptable.
    VoteWithoutValidity,
    /// Leaders by plain round robin, without P20: a crashed validator's
    /// turns keep costing timeouts (a liveness regression, not unsafe).
    RoundRobinLeaders,
    /// Time out a view without closing it to votes (P14 missing): a
    /// proposal that arrives later still gets a vote.
    VoteAfterTimeout,
    /// Accept a timeout certificate whose carried certificate is not the
    /// highest its signers reported (the verifier's maximum-view check
    /// skipped).
    TcSkipsMaxView,
    /// Certificates of 2f signatures instead of 2f + 1 (every quorum the
    /// validator forms or checks is one short).
    QuorumOffByOne,
    /// Vote without checking the execution results a block carries
    /// against this validator's own (P22 skipped).
    VoteWithoutExecCheck,
}

/// Protocol parameters. Every validator of a chain must use the same values
/// for `chain_id`, `validators`, `genesis_time_ms` and
/// `checkpoint_interval`; the rest are local tuning.
#[derive(Clone, Debug)]
pub struct Config {
    /// The chain's id, inside every signature.
    pub chain_id: ChainId,
    /// The validator set, in leader-rotation order.
    pub validators: ValidatorSet,
    /// Timestamp of the genesis block, ms.
    pub genesis_time_ms: u64,
    /// Committed blocks between checkpoints (K). Default 100.
    pub checkpoint_interval: u64,
    /// First view timeout, ms. Default 1000.
    pub base_timeout_ms: u64,
    /// Longest view timeout after backoff, ms. Default 30000.
    pub max_timeout_ms: u64,
    /// How far ahead of this validator's clock a block timestamp may be, ms.
    /// Default 2000.
    pub max_clock_skew_ms: u64,
    /// Heights between a block this validator proposes and the newest
    /// execution result it puts in it (P22), at least 3. Local tuning: a
    /// voter's check does not depend on it. Default [`EXEC_LAG`].
    pub exec_lag: u64,
    /// Messages for views more than this far ahead are dropped, not
    /// buffered. Default 64.
    pub future_view_window: u64,
    /// Largest block payload, bytes. Default 4 MiB.
    pub max_payload_bytes: usize,
    /// Blocks asked for in one sync request. Default 64.
    pub sync_batch_blocks: u16,
    /// Committed blocks kept in memory to answer peers' sync requests.
    /// Default 256.
    pub retained_blocks: u64,
    /// A deliberately unsafe variant (simulator only).
    #[cfg(feature = "sim")]
    pub flaw: Option<Flaw>,
}

/// A configuration value that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid consensus config `{key}`: {reason}")]
pub struct ConfigError {
    /// The offending key.
    pub key: &'static str,
    /// Why.
    pub reason: String,
}

impl Config {
    /// Defaults for everything but the chain's identity.
    pub fn new(chain_id: ChainId, validators: ValidatorSet, genesis_time_ms: u64) -> Config {
        Config {
            chain_id,
            validators,
            genesis_time_ms,
            checkpoint_interval: 100,
            base_timeout_ms: 1000,
            max_timeout_ms: 30_000,
            max_clock_skew_ms: 2000,
            exec_lag: EXEC_LAG,
            future_view_window: 64,
            max_payload_bytes: 4 * 1024 * 1024,
            sync_batch_blocks: 64,
            retained_blocks: 256,
            #[cfg(feature = "sim")]
            flaw: None,
        }
    }

    /// Checks every value, naming the key that is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |key, reason: &str| {
            Err(ConfigError {
                key,
                reason: reason.into(),
            })
        };
        if self.checkpoint_interval == 0 {
            return err("checkpoint_interval", "must be at least 1");
        }
        if self.base_timeout_ms == 0 {
            return err("base_timeout_ms", "must be at least 1");
        }
        if self.max_timeout_ms < self.base_timeout_ms {
            return err("max_timeout_ms", "must be at least base_timeout_ms");
        }
        if self.future_view_window == 0 || self.future_view_window > 10_000 {
            return err("future_view_window", "must be between 1 and 10000");
        }
        if self.max_payload_bytes == 0
            || self.max_payload_bytes > crate::verify::MAX_MESSAGE_BYTES / 2
        {
            return err(
                "max_payload_bytes",
                "must be between 1 and half the message bound (8 MiB)",
            );
        }
        if self.sync_batch_blocks == 0 || self.sync_batch_blocks as usize > MAX_SYNC_BLOCKS {
            return err("sync_batch_blocks", "must be between 1 and 256");
        }
        if self.retained_blocks < self.checkpoint_interval {
            return err("retained_blocks", "must be at least checkpoint_interval");
        }
        Ok(())
    }

    /// Whose turn `view` is in the round robin over the validator set.
    pub fn rotation(&self, view: View) -> ValidatorIndex {
        ValidatorIndex((view.0 % self.validators.len() as u64) as u16)
    }

    /// Blocks in a row a validator may be idle before its turns pass to the
    /// next validator (P20): twice the set's size, at least 8 (and the
    /// counter's cap, 255, at most). A protocol constant: every validator
    /// must compute the same leaders.
    pub fn idle_window(&self) -> u8 {
        (2 * self.validators.len()).clamp(8, 255) as u8
    }

    /// P20: the leader of `view` for a block extending `parent`: the first
    /// validator, in round-robin order from [`Config::rotation`], that has
    /// not been idle for [`Config::idle_window`] blocks by `parent`'s count.
    /// A crashed validator stops proposing and voting, so after a window
    /// its turns stop costing timeouts.
    pub fn leader(&self, view: View, parent: &BlockHeader) -> ValidatorIndex {
        let n = self.validators.len() as u64;
        #[cfg(feature = "sim")]
        if self.flaw == Some(Flaw::RoundRobinLeaders) {
            return self.rotation(view);
        }
        // In a probe rotation every validator has its own turn, so an idle
        // one that is alive shows it by proposing: no schedule of delays
        // can keep an honest validator out of the rotation for good.
        if (view.0 / n).is_multiple_of(PROBE_ROTATIONS) {
            return self.rotation(view);
        }
        let window = self.idle_window();
        (0..n)
            .map(|k| ValidatorIndex(((view.0 + k) % n) as u16))
            .find(|v| parent.idle.of(*v) < window)
            // Unreachable: the parent's proposer is never idle.
            .unwrap_or_else(|| self.rotation(view))
    }
}

/// Inputs to the core.
// Events are moved once into `handle`, never stored in bulk: boxing the
// large variant would cost an allocation per message for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Event {
    /// A verified message from validator `from` (the transport authenticated
    /// the peer; `from` is used only to answer and to ask for blocks).
    Message {
        /// The sending peer.
        from: ValidatorIndex,
        /// The message.
        msg: VerifiedMessage,
    },
    /// The timer set by [`Action::SetTimer`] for `view` fired.
    TimerFired {
        /// The view it was set for.
        view: View,
    },
    /// The answer to [`Action::RequestPayload`].
    PayloadReady {
        /// The view it was requested for.
        view: View,
        /// The payload to propose.
        payload: Vec<u8>,
    },
    /// A committed block was executed (heights in order, each once).
    Executed(ExecResult),
}

/// Conflicting signed messages of one validator: proof of misbehaviour.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evidence {
    /// The culprit.
    pub signer: ValidatorIndex,
    /// The view (or height, for checkpoint votes) both are for.
    pub round: u64,
    /// The first statement seen.
    pub first: Statement,
    /// The conflicting one.
    pub second: Statement,
}

/// Outputs of the core, to be performed in order.
// Each action is built once and moved to the driver: boxing the blocks in
// the large variants would cost an allocation per block for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Action {
    /// Write the safety state durably (synced) before doing anything later in
    /// this list.
    Persist(SafetyState),
    /// Write an uncommitted block durably (with the safety state's sync, at
    /// the latest). Emitted before the vote or proposal for it: a validator
    /// that voted for a block must still have it after a crash, or a
    /// certificate could exist for a block no honest validator can serve.
    /// Blocks at or below a committed height may be deleted.
    PersistBlock(Block),
    /// Send to one validator.
    Send {
        /// Recipient.
        to: ValidatorIndex,
        /// Message.
        msg: Message,
    },
    /// Send to every other validator.
    Broadcast(Message),
    /// Deliver [`Event::TimerFired`] for `view` at time `at` (replaces any
    /// earlier timer).
    SetTimer {
        /// The view.
        view: View,
        /// When.
        at: Time,
    },
    /// Deliver [`Event::PayloadReady`] for `view` with up to `max_bytes`.
    RequestPayload {
        /// The view this validator leads.
        view: View,
        /// Height of the block to be built.
        height: Height,
        /// Payload bound.
        max_bytes: usize,
    },
    /// A block is final. Commits arrive in height order, each with the
    /// certificate for that block; execute it and answer with
    /// [`Event::Executed`].
    Commit {
        /// The block.
        block: Block,
        /// Its certificate.
        cert: QuorumCert,
    },
    /// A new stable checkpoint.
    StableCheckpoint(CheckpointCert),
    /// Misbehaviour detected.
    Evidence(Evidence),
    /// A certificate carries this validator's signature of a `kind`
    /// ("vote" or "timeout") in `view`, where this process signed no such
    /// statement, or a signed or certified block names it the proposer of
    /// `view` ("proposal"), where this process proposed none or another:
    /// another process holds its key (P21). At most once per view.
    OwnKeyElsewhere {
        /// The view signed in.
        view: View,
        /// What was signed.
        kind: &'static str,
    },
    /// A proposal carries an execution result that differs from this
    /// validator's own for that height (P22): either the proposer lies or
    /// this validator's execution diverged from the others'. No vote was
    /// cast for it. At most once per height.
    ExecutionMismatch {
        /// The proposer.
        proposer: ValidatorIndex,
        /// The view of the proposal.
        view: View,
        /// This validator's result.
        ours: ExecResult,
        /// The proposal's.
        theirs: ExecResult,
    },
}

/// Where a restarted validator resumes from: what its storage holds.
#[derive(Clone, Debug)]
pub struct Restore {
    /// The safety state last persisted.
    pub safety: SafetyState,
    /// The last committed block and its certificate.
    pub committed: (Block, QuorumCert),
    /// The latest stable checkpoint, if any.
    pub stable: Option<CheckpointCert>,
    /// Uncommitted blocks persisted by [`Action::PersistBlock`].
    pub blocks: Vec<Block>,
    /// The latest execution results, ascending, ending at the committed
    /// block (as many as storage holds, up to [`EXEC_RESULTS_KEPT`]): what
    /// this validator checks proposals' results against (P22).
    pub executed: Vec<ExecResult>,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Proposal,
    Vote,
    Timeout,
    Checkpoint,
}

/// The kind of slot a signed statement fills.
fn kind_of(m: &Statement) -> Kind {
    match m {
        Statement::Proposal(_) => Kind::Proposal,
        Statement::Vote(_) => Kind::Vote,
        Statement::Timeout(_) => Kind::Timeout,
        Statement::Checkpoint(_) => Kind::Checkpoint,
    }
}

/// Evidence against one validator that this one passes on, at most.
pub const EVIDENCE_SPREAD_PER_SIGNER: u32 = 4;

/// One rotation in this many gives every validator its own turn, idle or
/// not (P20): 1024 rotations, about half a minute at full load with 4
/// validators, so a crashed validator costs one timeout per probe rotation.
pub const PROBE_ROTATIONS: u64 = 1024;

/// Most proposals held while their parent is fetched (at least: with a
/// larger set, one per validator, since a proposal's leader is known only
/// once its parent is, P20). Only the current view's are held.
const MAX_PENDING_PROPOSALS: usize = 8;
/// Most blocks being fetched at once.
const MAX_WANTED: usize = 64;
/// Own proposals remembered by view for P21 (in memory only: after a
/// restart, views up to the persisted `last_proposed_view` are unknown
/// and claim nothing).
const OWN_PROPOSALS_KEPT: usize = 64;
/// Own execution results kept to check proposals against (P22). An honest
/// chain certifies results a few heights behind the commit, so only a
/// leader far behind names older ones, and validators refuse those.
pub const EXEC_RESULTS_KEPT: usize = 1024;
/// Heights between a proposed block and the newest execution result an
/// honest leader puts in it (P22): a block at height `h` carries results up
/// to `h - 8`. Its justify commits `h - 2` at the earliest, and a voter
/// holds its vote until it has executed every height the block names; at
/// hundreds of blocks a second a round is shorter than a commit's
/// execution and write, so results only three heights back (the least the
/// commit rule allows) made votes wait: blocks a second fell from 190 to 91
/// and the median commit latency rose from 25 to 48 ms in a 4-validator
/// testnet at 3,000 transfers a second. Eight back, nothing measurable
/// waits, and a proof of the latest state is ready a few blocks later.
pub const EXEC_LAG: u64 = 8;

/// Block requests a peer may leave unanswered before blocks are asked of
/// others. A peer that lacks a block, stalls, lies, or is reached over a
/// connection that no longer leads to it answers nothing, and the messages
/// that make this validator ask (proposals, certificates) may keep coming
/// from that very peer while views advance without a local timeout.
pub const UNANSWERED_BLOCK_REQUESTS: u32 = 2;

/// Counters of what the core refused or noticed, read through
/// [`Core::stats`] (the simulator checks them; the node does not export
/// them yet). The core has no metrics dependency.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages dropped for a stale view.
    pub stale_dropped: u64,
    /// Messages dropped for a view beyond the window.
    pub future_dropped: u64,
    /// Proposals refused (wrong leader, bad block, bad payload, bad time).
    pub proposals_refused: u64,
    /// Local view timeouts.
    pub timeouts: u64,
    /// Certified chains seen that conflict with this validator's commits.
    pub conflicting_commits: u64,
    /// Proposals for a view not yet voted in that the vote rule's
    /// certificate condition refused (P7): a leader extending an older
    /// certificate than the highest one its timeout certificate carries.
    pub lock_refused: u64,
    /// Proposals refused because an execution result they carry differs
    /// from this validator's own (P22).
    pub exec_mismatches: u64,
    /// Proposals refused because they carry a result for a height whose own
    /// result this validator no longer holds (P22).
    pub exec_unverifiable: u64,
    /// Votes held until this validator's own execution caught up with the
    /// results a proposal carries (P22).
    pub exec_waits: u64,
}

/// One validator's consensus state machine.
pub struct Core {
    cfg: Config,
    key: KeyPair,
    me: ValidatorIndex,
    payload_check: Box<dyn PayloadValidator>,
    safety: SafetyState,
    view: View,
    high_tc: Option<TimeoutCert>,
    failures: u32,
    blocks: BTreeMap<Digest, Block>,
    qcs: BTreeMap<Digest, QuorumCert>,
    committed: (Height, Digest),
    committed_ids: BTreeMap<Height, Digest>,
    votes: BTreeMap<View, BTreeMap<ValidatorIndex, Verified<Vote>>>,
    timeouts: BTreeMap<View, BTreeMap<ValidatorIndex, Verified<Timeout>>>,
    seen: BTreeMap<(u64, Kind, ValidatorIndex), (Digest, Statement)>,
    reported: BTreeSet<(u64, Kind, ValidatorIndex)>,
    /// Evidence passed on, per culprit (bounded by the validator count).
    evidence_spread: BTreeMap<ValidatorIndex, u32>,
    /// The highest view reported as signed elsewhere (P21).
    elsewhere: View,
    /// The blocks this process proposed, by view (the last
    /// `OWN_PROPOSALS_KEPT`), for P21.
    proposed: BTreeMap<View, Digest>,
    /// This validator's own execution results (the last
    /// `EXEC_RESULTS_KEPT`), for P22.
    results: BTreeMap<Height, ExecResult>,
    /// The highest height this validator executed.
    executed: Height,
    /// The highest height an execution mismatch was reported for.
    mismatch_reported: Option<Height>,
    /// The current view's proposal, valid but waiting for this validator's
    /// execution to reach the results it carries: its view, block id and
    /// timeout certificate.
    vote_held: Option<(View, Digest, Option<TimeoutCert>)>,
    pending: BTreeMap<(View, ValidatorIndex), Verified<Proposal>>,
    /// Blocks being fetched: the view of the first request and of the
    /// last one.
    wanted: BTreeMap<Digest, (View, View)>,
    /// Block requests each peer has left unanswered since it last served a
    /// wanted block.
    unanswered: BTreeMap<ValidatorIndex, u32>,
    pending_commit: Option<Digest>,
    awaiting_payload: Option<View>,
    checkpoint_votes: BTreeMap<Height, BTreeMap<ValidatorIndex, Verified<CheckpointVote>>>,
    stable: Option<CheckpointCert>,
    /// While quarantined (P19): the highest certified view each other
    /// validator reported for this recovery's nonce.
    reports: BTreeMap<ValidatorIndex, View>,
    /// The last view report signed for each peer: the view it was signed
    /// in, the nonce, and the message (re-sent for a repeated nonce).
    answered: BTreeMap<ValidatorIndex, (View, Digest, Message)>,
    stats: Stats,
    now: Time,
    out: Vec<Action>,
}

impl Core {
    /// A validator starting at genesis. The returned actions set the first
    /// timer (and, for the first leader, request a payload).
    pub fn new(
        cfg: Config,
        key: KeyPair,
        payload_check: Box<dyn PayloadValidator>,
        now: Time,
    ) -> Result<(Core, Vec<Action>), ConfigError> {
        let genesis = Block::genesis(&cfg.chain_id, cfg.genesis_time_ms);
        let qc = genesis_qc(&genesis);
        let restore = Restore {
            safety: SafetyState::initial(qc.clone()),
            committed: (genesis, qc),
            stable: None,
            blocks: vec![],
            executed: vec![],
        };
        Core::restore(cfg, key, payload_check, restore, now)
    }

    /// A validator resuming from its persisted state.
    pub fn restore(
        cfg: Config,
        key: KeyPair,
        payload_check: Box<dyn PayloadValidator>,
        restore: Restore,
        now: Time,
    ) -> Result<(Core, Vec<Action>), ConfigError> {
        cfg.validate()?;
        let me = cfg
            .validators
            .index_of(&key.public())
            .ok_or_else(|| ConfigError {
                key: "validator_key",
                reason: format!("key {} is not in the validator set", key.public()),
            })?;
        let (block, cert) = restore.committed;
        let committed = (block.height(), block.id());
        let mut core = Core {
            me,
            key,
            payload_check,
            view: View(0),
            high_tc: restore.safety.high_tc.clone(),
            failures: 0,
            blocks: BTreeMap::new(),
            qcs: BTreeMap::new(),
            committed,
            committed_ids: BTreeMap::new(),
            votes: BTreeMap::new(),
            timeouts: BTreeMap::new(),
            seen: BTreeMap::new(),
            reported: BTreeSet::new(),
            evidence_spread: BTreeMap::new(),
            elsewhere: View(0),
            proposed: BTreeMap::new(),
            results: BTreeMap::new(),
            executed: Height(0),
            mismatch_reported: None,
            vote_held: None,
            pending: BTreeMap::new(),
            wanted: BTreeMap::new(),
            unanswered: BTreeMap::new(),
            pending_commit: None,
            awaiting_payload: None,
            checkpoint_votes: BTreeMap::new(),
            stable: restore.stable,
            reports: BTreeMap::new(),
            answered: BTreeMap::new(),
            stats: Stats::default(),
            now,
            out: Vec::new(),
            safety: restore.safety,
            cfg,
        };
        // The committed block is executed: its state is what storage holds
        // (a state sync brings the state without the results before it).
        core.executed = committed.0;
        for r in restore.executed {
            core.record_result(r);
        }
        core.committed_ids.insert(committed.0, committed.1);
        core.qcs.insert(committed.1, cert);
        core.blocks.insert(committed.1, block);
        for b in restore.blocks {
            if b.height() > committed.0 {
                core.insert_block(b);
            }
        }
        // Resume in the last view this validator signed in (where it can
        // only re-send what it stored: it never votes there again), or after
        // its highest certificate. Not beyond: a validator that jumps ahead
        // alone, without a certificate to show, strands itself.
        let start = core
            .safety
            .last_voted_view
            .max(core.safety.last_proposed_view)
            .max(core.safety.high_qc.payload.view.next());
        #[cfg(feature = "sim")]
        if core.flaw(Flaw::RecoveryWithoutQuarantine) {
            core.safety.quarantine = None;
        }
        core.enter_view(start, false);
        core.ask_for_reports();
        let actions = std::mem::take(&mut core.out);
        Ok((core, actions))
    }

    /// Handles one event at time `now` and returns the actions to perform,
    /// in order.
    pub fn handle(&mut self, now: Time, event: Event) -> Vec<Action> {
        // Time never goes backwards inside the core even if the driver's
        // clock does.
        self.now = self.now.max(now);
        match event {
            Event::Message { from, msg } => self.on_message(from, msg),
            Event::TimerFired { view } => {
                if view == self.view {
                    self.local_timeout();
                }
            }
            Event::PayloadReady { view, payload } => self.on_payload(view, payload),
            Event::Executed(r) => self.on_executed(r),
        }
        std::mem::take(&mut self.out)
    }

    /// The current view.
    pub fn view(&self) -> View {
        self.view
    }

    /// The leader of the current view for a block extending this
    /// validator's highest certified block (P20), or the round robin's
    /// choice while that block is not held.
    pub fn leader(&self) -> ValidatorIndex {
        match self.blocks.get(&self.safety.high_qc.payload.block_id) {
            Some(parent) => self.cfg.leader(self.view, &parent.header),
            None => self.cfg.rotation(self.view),
        }
    }

    /// This validator's index.
    pub fn index(&self) -> ValidatorIndex {
        self.me
    }

    /// Height and id of the last committed block.
    pub fn committed(&self) -> (Height, Digest) {
        self.committed
    }

    /// The safety state as last handed out for persistence (or restored).
    pub fn safety(&self) -> &SafetyState {
        &self.safety
    }

    /// The latest stable checkpoint.
    pub fn stable_checkpoint(&self) -> Option<&CheckpointCert> {
        self.stable.as_ref()
    }

    /// Counters for metrics.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Signed messages held for equivocation detection (P16): at most
    /// `3 · window` views' worth per signer and kind, plus checkpoint
    /// heights within the checkpoint horizon.
    pub fn evidence_memory(&self) -> usize {
        self.seen.len()
    }

    /// True while recovering a lost safety record (P19): nothing is signed.
    pub fn quarantined(&self) -> bool {
        self.safety.quarantine.is_some()
    }

    /// While quarantined, the nonce view reports must carry (P19).
    pub fn report_nonce(&self) -> Option<Digest> {
        self.safety.quarantine
    }

    /// True if a view report from `signer` for `nonce` would count now:
    /// lets a screen refuse unsolicited reports before checking their
    /// signatures and certificates (D13).
    pub fn wants_report(&self, signer: ValidatorIndex, nonce: &Digest) -> bool {
        self.safety.quarantine.as_ref() == Some(nonce)
            && signer != self.me
            && !self.reports.contains_key(&signer)
    }

    #[cfg(feature = "sim")]
    fn flaw(&self, f: Flaw) -> bool {
        self.cfg.flaw == Some(f)
    }

    // ----- views and timers --------------------------------------------

    /// P1: enter `view`, arm its timer, and propose if leading.
    fn enter_view(&mut self, view: View, progress: bool) {
        if view <= self.view {
            return;
        }
        self.view = view;
        if progress {
            self.failures = 0;
        }
        self.awaiting_payload = None;
        self.arm_timer();
        // Aggregation state for views the protocol has moved past is useless:
        // keep the previous view's votes (its certificate may still form).
        let keep_from = View(view.0.saturating_sub(1));
        self.votes = self.votes.split_off(&keep_from);
        self.timeouts = self.timeouts.split_off(&keep_from);
        let evidence_from = view.0.saturating_sub(2 * self.cfg.future_view_window);
        self.seen
            .retain(|(round, kind, _), _| *kind == Kind::Checkpoint || *round >= evidence_from);
        self.reported
            .retain(|(round, kind, _)| *kind == Kind::Checkpoint || *round >= evidence_from);
        self.pending = self.pending.split_off(&(view, ValidatorIndex(0)));
        // A block wanted for a whole window of views is abandoned; a
        // certificate that needs it again asks again.
        let wanted_from = View(view.0.saturating_sub(self.cfg.future_view_window));
        self.wanted.retain(|_, (first, _)| *first >= wanted_from);
        self.maybe_propose();
        self.retry_pending();
    }

    /// P15: (re)arms the current view's timer, backed off by the number of
    /// consecutive failed views.
    fn arm_timer(&mut self) {
        let ms = view_timeout_ms(
            self.cfg.base_timeout_ms,
            self.cfg.max_timeout_ms,
            self.failures,
        );
        self.out.push(Action::SetTimer {
            view: self.view,
            at: self.now.plus_ms(ms),
        });
    }

    /// P14: the view's timer fired: sign (or re-send) a timeout for it and
    /// back off.
    fn local_timeout(&mut self) {
        let view = self.view;
        self.stats.timeouts += 1;
        self.failures = self.failures.saturating_add(1);
        self.send_timeout(view);
        self.arm_timer();
        self.ask_for_reports();
        // Ask again for blocks still missing, from another peer.
        let wanted: Vec<Digest> = self.wanted.keys().copied().collect();
        for (i, id) in wanted.into_iter().enumerate() {
            let peer = ValidatorIndex(
                ((self.me.0 as u64 + 1 + view.0 + i as u64) % self.cfg.validators.len() as u64)
                    as u16,
            );
            self.request_block(id, peer, true);
        }
    }

    fn send_timeout(&mut self, view: View) {
        if let Some(t) = &self.safety.last_timeout
            && t.payload.view == view
        {
            // A re-request for the same view re-sends the stored message
            // (same signature), with the current highest TC attached.
            let mut t = t.clone();
            t.payload.high_tc = self.high_tc.clone();
            self.out
                .push(Action::Broadcast(Message::Timeout(t.clone())));
            // After a restart the aggregation sets are empty: count this
            // validator's own timeout again, or a view in which every
            // honest validator restarted can never form its certificate.
            self.on_timeout_msg(Verified::trusted(t));
            return;
        }
        if self.safety.last_voted_view > view || !self.safety.may_sign_in(view) {
            return;
        }
        let timeout = Timeout {
            view,
            high_qc: self.safety.high_qc.clone(),
            high_tc: self.high_tc.clone(),
        };
        let signed = Verified::sign(&self.key, self.me, &self.cfg.chain_id, timeout);
        // P14: no vote in this view after timing out in it.
        #[cfg(feature = "sim")]
        if !self.flaw(Flaw::VoteAfterTimeout) {
            self.safety.last_voted_view = view;
        }
        #[cfg(not(feature = "sim"))]
        {
            self.safety.last_voted_view = view;
        }
        self.safety.last_timeout = Some(signed.signed().clone());
        self.persist();
        self.out
            .push(Action::Broadcast(Message::Timeout(signed.signed().clone())));
        self.on_timeout_msg(signed);
    }

    // ----- proposing ----------------------------------------------------

    /// P2: the leader asks for a payload once it can justify its view.
    fn maybe_propose(&mut self) {
        let view = self.view;
        if self.safety.last_proposed_view >= view
            || self.awaiting_payload == Some(view)
            || !self.safety.may_sign_in(view)
        {
            return;
        }
        let qc = &self.safety.high_qc;
        let justified = qc.payload.view.next() == view
            || self
                .high_tc
                .as_ref()
                .is_some_and(|tc| tc.view.next() == view);
        if !justified {
            return;
        }
        let parent_id = qc.payload.block_id;
        let Some(parent) = self.blocks.get(&parent_id) else {
            // Whose turn it is depends on the block extended (P20): fetch
            // it, whoever the leader turns out to be.
            let from = self.other_holder(&parent_id);
            self.request_block(parent_id, from, false);
            return;
        };
        if self.cfg.leader(view, &parent.header) != self.me {
            return;
        }
        self.awaiting_payload = Some(view);
        self.out.push(Action::RequestPayload {
            view,
            height: parent.height().next(),
            max_bytes: self.cfg.max_payload_bytes,
        });
    }

    /// P3: build, sign, persist and broadcast the proposal.
    fn on_payload(&mut self, view: View, payload: Vec<u8>) {
        if self.awaiting_payload != Some(view)
            || view != self.view
            || !self.safety.may_sign_in(view)
        {
            return;
        }
        self.awaiting_payload = None;
        if payload.len() > self.cfg.max_payload_bytes {
            return;
        }
        let qc = self.safety.high_qc.clone();
        let Some(parent) = self.blocks.get(&qc.payload.block_id) else {
            return;
        };
        let tc = if qc.payload.view.next() == view {
            None
        } else {
            self.high_tc.clone().filter(|tc| tc.view.next() == view)
        };
        let height = parent.height().next();
        let exec = self.results_to_certify(parent.header.exec_next, height);
        let block = Block {
            header: BlockHeader {
                parent: parent.id(),
                height,
                view,
                proposer: self.me,
                timestamp_ms: self.now.0.max(parent.header.timestamp_ms + 1),
                payload_digest: Digest::of(&payload),
                idle: Idleness::next(&parent.header.idle, self.cfg.validators.len(), self.me, &qc),
                justify: qc,
                exec_next: exec
                    .last()
                    .map_or(parent.header.exec_next, |r| r.height.next()),
                exec,
            },
            payload,
        };
        let signed = Verified::sign(
            &self.key,
            self.me,
            &self.cfg.chain_id,
            Proposal { block, tc },
        );
        self.safety.last_proposed_view = view;
        self.proposed.insert(view, signed.payload.block.id());
        while self.proposed.len() > OWN_PROPOSALS_KEPT {
            self.proposed.pop_first();
        }
        self.persist();
        self.out.push(Action::Broadcast(Message::Proposal(
            signed.signed().clone(),
        )));
        self.on_proposal(self.me, signed);
    }

    // ----- messages -------------------------------------------------------

    fn on_message(&mut self, from: ValidatorIndex, msg: VerifiedMessage) {
        match msg {
            VerifiedMessage::Proposal(p) => self.on_proposal(from, p),
            VerifiedMessage::Vote(v) => self.on_vote(v),
            VerifiedMessage::Timeout(t) => self.on_timeout_msg(t),
            VerifiedMessage::Checkpoint(c) => self.on_checkpoint_vote(c),
            VerifiedMessage::BlockRequest(r) => self.on_block_request(from, r),
            VerifiedMessage::BlockResponse(b) => self.on_blocks(from, b.blocks()),
            VerifiedMessage::RecoveryQuery(q) => self.on_recovery_query(from, q),
            VerifiedMessage::ViewReport(r) => self.on_view_report(r),
            VerifiedMessage::Evidence(e) => self.on_evidence_report(*e),
        }
    }

    /// Evidence a peer passed on (verified): reported once per slot, like
    /// evidence seen here, and never passed on again.
    fn on_evidence_report(&mut self, e: Evidence) {
        let kind = kind_of(&e.first);
        let floor = self.view.0.saturating_sub(2 * self.cfg.future_view_window);
        if kind != Kind::Checkpoint && e.round < floor {
            return;
        }
        if self.reported.insert((e.round, kind, e.signer)) {
            self.out.push(Action::Evidence(e));
        }
    }

    /// Follows the certificates of a message from beyond the view window.
    /// Certificates are bounded in size and verified at the edge; unlike
    /// the message itself they need no buffering, and moving to the view
    /// after a certificate is always safe.
    fn catch_up(&mut self, qc: QuorumCert, tc: Option<TimeoutCert>, from: ValidatorIndex) {
        self.observe_qc(qc, from);
        if let Some(tc) = tc {
            self.observe_tc(tc, from);
        }
    }

    /// True if `view` is inside the window this validator accepts.
    fn in_window(&mut self, view: View) -> bool {
        if view.0 > self.view.0.saturating_add(self.cfg.future_view_window) {
            self.stats.future_dropped += 1;
            return false;
        }
        true
    }

    /// Records a signed message for equivocation detection (P16). Returns
    /// false if it conflicts with an earlier message of the same signer,
    /// round and kind.
    fn observe_signed(
        &mut self,
        round: u64,
        kind: Kind,
        signer: ValidatorIndex,
        msg: Statement,
    ) -> bool {
        // Rounds older than the evidence window are not remembered: a
        // peer replaying validly signed messages of long-past views would
        // otherwise grow this map without bound while a view lasts.
        let floor = self.view.0.saturating_sub(2 * self.cfg.future_view_window);
        if kind != Kind::Checkpoint && round < floor {
            return true;
        }
        let content = crate::verify::statement_slot(&msg).3;
        let key = (round, kind, signer);
        match self.seen.get(&key) {
            None => {
                self.seen.insert(key, (content, msg));
                true
            }
            Some((first, first_msg)) if *first != content => {
                if self.reported.insert(key) {
                    // Passed on so that every validator learns of it, at
                    // most a few times per culprit: one proof suffices.
                    let spread = self.evidence_spread.entry(signer).or_insert(0);
                    if *spread < EVIDENCE_SPREAD_PER_SIGNER {
                        *spread += 1;
                        self.out.push(Action::Broadcast(Message::Evidence(Box::new(
                            EvidenceReport {
                                first: first_msg.clone(),
                                second: msg.clone(),
                            },
                        ))));
                    }
                    self.out.push(Action::Evidence(Evidence {
                        signer,
                        round,
                        first: first_msg.clone(),
                        second: msg,
                    }));
                }
                false
            }
            Some(_) => true,
        }
    }

    /// P4–P8: a proposal.
    fn on_proposal(&mut self, from: ValidatorIndex, p: Verified<Proposal>) {
        let block = &p.payload.block;
        let view = block.view();
        if !self.in_window(view) {
            // Too far ahead to hold, but its certificates are verified
            // proof of progress: follow them (and fetch what they certify),
            // so a validator that fell far behind catches up.
            self.catch_up(block.header.justify.clone(), p.payload.tc.clone(), from);
            return;
        }
        // Signed with this validator's key (verification ties the signer to
        // the header's proposer).
        self.check_proposed_here(&block.header, || block.id());
        // Whose turn the view is depends on the block extended (P20): a
        // proposal whose parent is known is checked here, one whose parent
        // is not is held (one per signer) and checked when it arrives.
        if let Some(parent) = self.blocks.get(&block.header.justify.payload.block_id)
            && p.signer != self.cfg.leader(view, &parent.header)
        {
            self.stats.proposals_refused += 1;
            return;
        }
        // Evidence keeps what the signature covers (the header, through the
        // block id), not the payload or the unsigned TC: a few hundred bytes
        // per entry instead of up to a whole block.
        let mut compact = p.signed().clone();
        compact.payload.block.payload = Vec::new();
        compact.payload.tc = None;
        let first = self.observe_signed(
            view.0,
            Kind::Proposal,
            p.signer,
            Statement::Proposal(compact),
        );
        // The double-voting variant must see the second block to vote for it.
        #[cfg(feature = "sim")]
        let first = first || self.flaw(Flaw::VoteTwiceInView);
        if !first {
            // Only the leader's first block of a view is considered: an
            // equivocating leader cannot make validators store an unbounded
            // number of blocks. (Honest validators vote at most once anyway.)
            // A repeated request for the block this validator voted for
            // still gets the stored vote.
            if let Some(last) = &self.safety.last_vote
                && last.payload.view == view
                && last.payload.block_id == block.id()
            {
                let msg = Message::Vote(last.clone());
                self.send_to(self.cfg.leader(view.next(), &block.header), msg);
            }
            return;
        }
        // Certificates are verified facts whatever the proposal's fate.
        self.observe_qc(block.header.justify.clone(), from);
        if let Some(tc) = &p.payload.tc {
            self.observe_tc(tc.clone(), from);
        }
        if view < self.view {
            // Too late to vote on, but it may be a block this validator is
            // fetching (its certificate overtook it): keep it as fetched.
            if self.wanted.contains_key(&block.id()) {
                let b = block.clone();
                self.on_blocks(from, std::slice::from_ref(&b));
            } else {
                self.stats.stale_dropped += 1;
            }
            return;
        }
        if view > self.view {
            // Not justified by what it carries: nothing to do yet.
            return;
        }
        let parent_id = block.header.justify.payload.block_id;
        let Some(parent) = self.blocks.get(&parent_id) else {
            if self.pending.len() < MAX_PENDING_PROPOSALS.max(self.cfg.validators.len()) {
                self.pending.insert((view, p.signer), p);
            }
            self.request_block(parent_id, from, false);
            return;
        };
        // P6: the block must be well formed relative to its parent.
        let h = &block.header;
        let well_formed = h.parent == parent_id
            && h.height == parent.height().next()
            && exec_well_formed(h, &parent.header)
            && h.idle
                == Idleness::next(
                    &parent.header.idle,
                    self.cfg.validators.len(),
                    h.proposer,
                    &h.justify,
                )
            && h.timestamp_ms > parent.header.timestamp_ms
            && h.timestamp_ms <= self.now.0.saturating_add(self.cfg.max_clock_skew_ms)
            && block.payload.len() <= self.cfg.max_payload_bytes;
        #[cfg(feature = "sim")]
        let well_formed = well_formed
            && (self.flaw(Flaw::VoteWithoutValidity) || self.payload_check.is_valid(block));
        #[cfg(not(feature = "sim"))]
        let well_formed = well_formed && self.payload_check.is_valid(block);
        if !well_formed {
            self.stats.proposals_refused += 1;
            return;
        }
        let block = block.clone();
        let id = self.insert_block(block.clone());
        self.out.push(Action::PersistBlock(block.clone()));
        match self.check_exec(&block) {
            ExecCheck::Agrees => self.try_vote(&block, id, p.payload.tc.as_ref()),
            ExecCheck::Ahead => {
                self.stats.exec_waits += 1;
                self.vote_held = Some((view, id, p.payload.tc.clone()));
            }
            ExecCheck::Refused => {}
        }
    }

    // ----- certified execution (P22) ----------------------------------------

    /// The results a leader puts in a block at `height` whose parent's
    /// chain has certified everything below `from`: its own, in height
    /// order from `from`, up to `height - exec_lag`. A leader that never
    /// executed `from` (its state came from a state sync above it) starts
    /// at its first own result instead: those heights stay uncertified,
    /// rather than no result ever being certified again.
    fn results_to_certify(&self, from: Height, height: Height) -> Vec<ExecResult> {
        let last = Height(height.0.saturating_sub(self.cfg.exec_lag.max(3)));
        let mut out: Vec<ExecResult> = Vec::new();
        if from > last {
            return out;
        }
        for r in self.results.range(from..=last).map(|(_, r)| *r) {
            if out.len() == MAX_EXEC_PER_BLOCK
                || out.last().is_some_and(|p| p.height.next() != r.height)
            {
                break;
            }
            out.push(r);
        }
        out
    }

    fn record_result(&mut self, r: ExecResult) {
        self.executed = self.executed.max(r.height);
        self.results.insert(r.height, r);
        while self.results.len() > EXEC_RESULTS_KEPT {
            self.results.pop_first();
        }
    }

    /// P22: every result a block carries must equal this validator's own.
    fn check_exec(&mut self, block: &Block) -> ExecCheck {
        #[cfg(feature = "sim")]
        if self.flaw(Flaw::VoteWithoutExecCheck) {
            return ExecCheck::Agrees;
        }
        for theirs in &block.header.exec {
            match self.results.get(&theirs.height) {
                Some(ours) if ours == theirs => {}
                Some(ours) => {
                    self.stats.exec_mismatches += 1;
                    if self.mismatch_reported < Some(theirs.height) {
                        self.mismatch_reported = Some(theirs.height);
                        self.out.push(Action::ExecutionMismatch {
                            proposer: block.header.proposer,
                            view: block.view(),
                            ours: *ours,
                            theirs: *theirs,
                        });
                    }
                    return ExecCheck::Refused;
                }
                None if theirs.height > self.executed => return ExecCheck::Ahead,
                None => {
                    self.stats.exec_unverifiable += 1;
                    return ExecCheck::Refused;
                }
            }
        }
        ExecCheck::Agrees
    }

    /// A vote held for execution (P22): cast it once execution agrees.
    fn release_held_vote(&mut self) {
        let Some((view, id, tc)) = self.vote_held.take() else {
            return;
        };
        if view != self.view {
            return;
        }
        let Some(block) = self.blocks.get(&id).cloned() else {
            return;
        };
        match self.check_exec(&block) {
            ExecCheck::Agrees => self.try_vote(&block, id, tc.as_ref()),
            ExecCheck::Ahead => self.vote_held = Some((view, id, tc)),
            ExecCheck::Refused => {}
        }
    }

    /// P7–P8: vote if the safety rules allow, persisting first.
    fn try_vote(&mut self, block: &Block, id: Digest, tc: Option<&TimeoutCert>) {
        let view = block.view();
        let vote = Vote {
            view,
            height: block.height(),
            block_id: id,
        };
        let next_leader = self.cfg.leader(view.next(), &block.header);
        if let Some(last) = &self.safety.last_vote
            && last.payload == vote
        {
            // A re-request for the same view re-sends the stored vote.
            let msg = Message::Vote(last.clone());
            self.send_to(next_leader, msg);
            return;
        }
        #[cfg(feature = "sim")]
        let allowed = if self.flaw(Flaw::VoteIgnoresLock) {
            view > self.safety.last_voted_view
        } else if self.flaw(Flaw::VoteTwiceInView) {
            view >= self.safety.last_voted_view
                && self.safety.last_timeout.as_ref().map(|t| t.payload.view) != Some(view)
        } else {
            safe_to_vote(self.safety.last_voted_view, block, tc)
        };
        #[cfg(not(feature = "sim"))]
        let allowed = safe_to_vote(self.safety.last_voted_view, block, tc);
        if !allowed && view > self.safety.last_voted_view {
            self.stats.lock_refused += 1;
        }
        if !allowed || !self.safety.may_sign_in(view) {
            return;
        }
        let signed = Verified::sign(&self.key, self.me, &self.cfg.chain_id, vote);
        self.safety.last_voted_view = view;
        self.safety.last_vote = Some(signed.signed().clone());
        self.persist();
        if next_leader == self.me {
            self.on_vote(signed);
        } else {
            self.out.push(Action::Send {
                to: next_leader,
                msg: Message::Vote(signed.signed().clone()),
            });
        }
    }

    /// Hands the safety state out for durable storage; everything pushed
    /// after this in the action list depends on it.
    fn persist(&mut self) {
        self.safety.high_tc = self.high_tc.clone();
        self.out.push(Action::Persist(self.safety.clone()));
    }

    fn send_to(&mut self, to: ValidatorIndex, msg: Message) {
        if to != self.me {
            self.out.push(Action::Send { to, msg });
        }
    }

    /// P9: the next leader aggregates votes into a certificate.
    fn on_vote(&mut self, v: Verified<Vote>) {
        let view = v.payload.view;
        if !self.in_window(view) {
            return;
        }
        self.observe_signed(
            view.0,
            Kind::Vote,
            v.signer,
            Statement::Vote(v.signed().clone()),
        );
        if view.next() < self.view {
            self.stats.stale_dropped += 1;
            return;
        }
        // Votes are counted wherever they are sent: whose turn the next view
        // is depends on the block voted for (P20), which a vote can reach
        // before, and a certificate is a certificate whoever forms it.
        // (At most one vote per signer and view is kept.)
        let quorum = self.cfg.validators.quorum();
        let for_view = self.votes.entry(view).or_default();
        // One vote per signer per view: an equivocating second vote is
        // evidence (above), never counted.
        if for_view.contains_key(&v.signer) {
            return;
        }
        let block_id = v.payload.block_id;
        for_view.insert(v.signer, v);
        let same: Vec<Verified<Vote>> = for_view
            .values()
            .filter(|x| x.payload.block_id == block_id)
            .cloned()
            .collect();
        if same.len() == quorum {
            match Certificate::aggregate(&same, &self.cfg.validators) {
                Ok(qc) => self.observe_qc(qc, self.me),
                // Unreachable with verified, distinct, equal votes; refusing
                // is the safe outcome if it ever happens.
                Err(_) => debug_assert!(false, "aggregating verified votes failed"),
            }
        }
    }

    /// P13: a timeout from a peer (or this validator).
    fn on_timeout_msg(&mut self, t: Verified<Timeout>) {
        let view = t.payload.view;
        if !self.in_window(view) {
            self.catch_up(
                t.payload.high_qc.clone(),
                t.payload.high_tc.clone(),
                t.signer,
            );
            return;
        }
        let mut compact = t.signed().clone();
        compact.payload.high_tc = None;
        self.observe_signed(view.0, Kind::Timeout, t.signer, Statement::Timeout(compact));
        self.observe_qc(t.payload.high_qc.clone(), t.signer);
        if let Some(tc) = &t.payload.high_tc {
            self.observe_tc(tc.clone(), t.signer);
        }
        if view < self.view {
            self.stats.stale_dropped += 1;
            return;
        }
        let set = self.timeouts.entry(view).or_default();
        if set.contains_key(&t.signer) {
            return;
        }
        set.insert(t.signer, t);
        let count = set.len();
        // P13: f+1 timeouts for the current view mean at least one honest
        // validator gave up on it; join them so a certificate can form.
        // Only the current view: a validator enters a view only with a
        // certificate for the one before (P1), which P19's bound relies on.
        // Honest timeouts carry the certificate their signer entered with,
        // observed above, so joining a later view needs no jump.
        if count >= self.cfg.validators.one_honest() && view == self.view {
            let already = self
                .safety
                .last_timeout
                .as_ref()
                .is_some_and(|t| t.payload.view >= view);
            if !already {
                // P13 (join) → P14: as if this validator's own timer had
                // fired, backing off with the others.
                self.local_timeout();
            }
        }
        if count >= self.cfg.validators.quorum()
            && self.high_tc.as_ref().is_none_or(|tc| tc.view < view)
            && let Some(tc) = self.build_tc(view)
        {
            self.observe_tc(tc, self.me);
        }
    }

    fn build_tc(&self, view: View) -> Option<TimeoutCert> {
        let set = self.timeouts.get(&view)?;
        let high_qc = set
            .values()
            .map(|t| &t.payload.high_qc)
            .max_by_key(|qc| qc.payload.view)?
            .clone();
        let entries = set
            .values()
            .map(|t| TimeoutEntry {
                signer: t.signer,
                high_qc_view: t.payload.high_qc.payload.view,
                signature: t.signature,
            })
            .collect();
        Some(TimeoutCert {
            view,
            entries,
            high_qc,
        })
    }

    /// P10: a verified certificate: raise the high certificate, move to the
    /// next view, and commit what the two-chain rule allows.
    fn observe_qc(&mut self, qc: QuorumCert, from: ValidatorIndex) {
        let id = qc.payload.block_id;
        let view = qc.payload.view;
        if qc.signers.contains(self.me) {
            let mine = self
                .safety
                .last_vote
                .as_ref()
                .is_some_and(|v| v.payload == qc.payload);
            self.check_signed_here(view, "vote", mine);
        }
        if view > self.safety.high_qc.payload.view {
            // Persisted with the next vote or timeout, before it matters.
            self.safety.high_qc = qc.clone();
        }
        if !self.qcs.contains_key(&id) && qc.payload.height > self.committed.0 {
            self.qcs.insert(id, qc);
        }
        if view >= self.view {
            self.enter_view(view.next(), true);
        }
        self.try_commit_via(id, from);
    }

    /// P21: this validator's signature in a certificate for `view` must be
    /// one this process made. Views at or below the recovery floor, and any
    /// while quarantined, may hold signatures of a lost record; below the
    /// last view signed in, only the latest statement is kept to compare
    /// with, so nothing is claimed there. `mine`: the kept statement is the
    /// certified one.
    fn check_signed_here(&mut self, view: View, kind: &'static str, mine: bool) {
        if mine || view < self.safety.last_voted_view {
            return;
        }
        self.signed_elsewhere(view, kind);
    }

    /// P21 for blocks: `header`, signed with this validator's key or
    /// certified by a quorum that checked that signature, names this
    /// validator the proposer of its view. This process proposed in at most
    /// one view at a time and remembers its recent blocks: a view above the
    /// highest it proposed in, or one it proposed another block in, was
    /// proposed by another process. Views at or below the highest whose
    /// block is forgotten (a restart, or older than the kept ones) claim
    /// nothing. `id` is only computed for a block naming this validator.
    fn check_proposed_here(&mut self, header: &BlockHeader, id: impl FnOnce() -> Digest) {
        if header.proposer != self.me {
            return;
        }
        let view = header.view;
        let elsewhere = match self.proposed.get(&view) {
            Some(mine) => *mine != id(),
            None => view > self.safety.last_proposed_view,
        };
        if elsewhere {
            self.signed_elsewhere(view, "proposal");
        }
    }

    /// Raises P21's alarm for `view`, at most once per view, except where a
    /// lost record may explain the signature: at or below the recovery
    /// floor, or while quarantined.
    fn signed_elsewhere(&mut self, view: View, kind: &'static str) {
        let s = &self.safety;
        if s.quarantine.is_some() || view <= s.floor || view.0 == 0 {
            return;
        }
        if view > self.elsewhere {
            self.elsewhere = view;
            self.out.push(Action::OwnKeyElsewhere { view, kind });
        }
    }

    /// P11: a timeout certificate moves everyone to the next view.
    fn observe_tc(&mut self, tc: TimeoutCert, from: ValidatorIndex) {
        let view = tc.view;
        if let Some(e) = tc.entries.iter().find(|e| e.signer == self.me) {
            let mine = self.safety.last_timeout.as_ref().is_some_and(|t| {
                t.payload.view == view && t.payload.high_qc.payload.view == e.high_qc_view
            });
            self.check_signed_here(view, "timeout", mine);
        }
        self.observe_qc(tc.high_qc.clone(), from);
        if self.high_tc.as_ref().is_none_or(|t| t.view < view) {
            self.high_tc = Some(tc);
        }
        if view >= self.view {
            self.enter_view(view.next(), false);
        }
        self.maybe_propose();
    }

    // ----- commit ---------------------------------------------------------

    /// P12: if the certified block `id` directly follows its parent's view,
    /// the parent is committed (with all its uncommitted ancestors).
    fn try_commit_via(&mut self, id: Digest, from: ValidatorIndex) {
        let Some(b) = self.blocks.get(&id) else {
            if self
                .qcs
                .get(&id)
                .is_some_and(|qc| qc.payload.height > self.committed.0)
            {
                self.request_block(id, from, false);
            }
            return;
        };
        #[cfg(feature = "sim")]
        if self.flaw(Flaw::CommitOnSingleQc) {
            self.commit_chain(id, from);
            return;
        }
        if commits_parent(b) {
            let parent = b.header.justify.payload.block_id;
            self.commit_chain(parent, from);
        }
    }

    fn commit_chain(&mut self, target: Digest, from: ValidatorIndex) {
        let Some(t) = self.blocks.get(&target) else {
            self.pending_commit = Some(target);
            self.request_block(target, from, false);
            return;
        };
        if t.height() <= self.committed.0 {
            // Heights below the retention window are no longer known here.
            if self
                .committed_ids
                .get(&t.height())
                .is_some_and(|c| *c != target)
            {
                self.stats.conflicting_commits += 1;
            }
            return;
        }
        // Walk down to the last committed block.
        let mut chain = Vec::new();
        let mut cur = target;
        loop {
            let Some(b) = self.blocks.get(&cur) else {
                self.pending_commit = Some(target);
                self.request_block(cur, from, false);
                return;
            };
            if b.height() == self.committed.0 {
                if cur != self.committed.1 {
                    // A certified chain that forks below our commit: more
                    // than f validators are faulty. Never commit it.
                    self.stats.conflicting_commits += 1;
                    return;
                }
                break;
            }
            chain.push(cur);
            cur = b.header.parent;
        }
        self.pending_commit = None;
        for id in chain.into_iter().rev() {
            let Some(block) = self.blocks.get(&id).cloned() else {
                return;
            };
            // Every block on a certified chain has its certificate in its
            // child's header, recorded on insert: a commit without one, or
            // out of height order, is a bug that must not reach execution.
            let cert = self.qcs.get(&id).cloned();
            assert!(
                cert.is_some(),
                "committed block {} without certificate",
                id.short()
            );
            let Some(cert) = cert else { return };
            assert_eq!(
                block.height(),
                self.committed.0.next(),
                "commits out of height order"
            );
            self.committed = (block.height(), id);
            self.committed_ids.insert(block.height(), id);
            self.out.push(Action::Commit { block, cert });
        }
        self.prune();
    }

    /// Drops blocks that can no longer matter: forks below the commit, and
    /// committed blocks older than the retention window.
    fn prune(&mut self) {
        let (h, _) = self.committed;
        let keep_from = Height(h.0.saturating_sub(self.cfg.retained_blocks));
        let committed_ids = &self.committed_ids;
        self.blocks.retain(|id, b| {
            b.height() > h
                || (b.height() >= keep_from && committed_ids.get(&b.height()) == Some(id))
        });
        let blocks = &self.blocks;
        // A certificate for a block above the commit that is still being
        // fetched stays: the block's commit needs it when it arrives.
        self.qcs
            .retain(|id, qc| blocks.contains_key(id) || qc.payload.height > h);
        self.committed_ids = self.committed_ids.split_off(&keep_from);
        self.wanted.retain(|id, _| !blocks.contains_key(id));
    }

    // ----- block sync -----------------------------------------------------

    fn request_block(&mut self, id: Digest, peer: ValidatorIndex, retry: bool) {
        if self.blocks.contains_key(&id) {
            return;
        }
        if !retry && self.wanted.get(&id).map(|(_, last)| *last) == Some(self.view) {
            return;
        }
        if !self.wanted.contains_key(&id) && self.wanted.len() >= MAX_WANTED {
            // Full: the request wanted longest gives way. Abandoned requests
            // (a block nobody serves any more) must not lock fetching out.
            if let Some(oldest) = self
                .wanted
                .iter()
                .min_by_key(|(_, (first, _))| *first)
                .map(|(id, _)| *id)
            {
                self.wanted.remove(&oldest);
            }
        }
        // The view of the first request stays: retries do not keep an
        // entry young.
        let view = self.view;
        self.wanted
            .entry(id)
            .and_modify(|(_, last)| *last = view)
            .or_insert((view, view));
        let hint = if peer == self.me {
            self.other_holder(&id)
        } else {
            peer
        };
        let peer = self.block_source(hint);
        let owed = self.unanswered.entry(peer).or_default();
        *owed = owed.saturating_add(1);
        self.send_to(
            peer,
            Message::BlockRequest(BlockRequest {
                id,
                count: self.cfg.sync_batch_blocks,
            }),
        );
    }

    /// Whom to ask for a block `hint` should hold: `hint`, unless it left
    /// [`UNANSWERED_BLOCK_REQUESTS`] requests unanswered; then the other
    /// validator (or `hint`) that left the fewest, the first after `hint` on
    /// a tie.
    fn block_source(&self, hint: ValidatorIndex) -> ValidatorIndex {
        let owed = |v: ValidatorIndex| self.unanswered.get(&v).copied().unwrap_or(0);
        if owed(hint) < UNANSWERED_BLOCK_REQUESTS {
            return hint;
        }
        // The others in turn after `hint`, then `hint`: the first with the
        // fewest left unanswered.
        let n = self.cfg.validators.len() as u64;
        (1..=n)
            .map(|k| ValidatorIndex(((hint.0 as u64 + k) % n) as u16))
            .filter(|v| *v != self.me)
            .min_by_key(|v| owed(*v))
            .unwrap_or(hint)
    }

    /// Someone other than this validator who holds block `id`: a signer of
    /// its certificate when known (each persisted the block before its
    /// vote), else the next validator in the set. Asking oneself would ask
    /// nobody.
    fn other_holder(&self, id: &Digest) -> ValidatorIndex {
        let n = self.cfg.validators.len() as u64;
        let next = ValidatorIndex(((self.me.0 as u64 + 1) % n) as u16);
        self.qcs
            .get(id)
            .and_then(|qc| qc.signers.iter().find(|s| *s != self.me))
            .unwrap_or(next)
    }

    fn on_block_request(&mut self, from: ValidatorIndex, r: BlockRequest) {
        let blocks = &self.blocks;
        let mut cur = Some(r.id);
        // Every validator has genesis; it is never sent.
        let walk = std::iter::from_fn(|| {
            let b = blocks.get(&cur?).filter(|b| b.height().0 > 0)?;
            cur = Some(b.header.parent);
            Some(Ok::<_, std::convert::Infallible>(b.clone()))
        });
        let Ok(blocks) = take_sync_blocks(r.count, walk);
        if !blocks.is_empty() {
            self.send_to(from, Message::BlockResponse(BlockResponse { blocks }));
        }
    }

    /// Inserts fetched blocks that were asked for (directly, or as the parent
    /// of one that was), then retries whatever waited for them.
    fn on_blocks(&mut self, from: ValidatorIndex, blocks: &[Block]) {
        let mut added = false;
        // A response walks down a chain: the parent of a block that was
        // asked for is accepted too when it follows in the same response.
        // At most one entry per block of the response.
        let mut parents: BTreeSet<Digest> = BTreeSet::new();
        for b in blocks {
            let id = b.id();
            // Besides what was asked for, a block whose certificate is held
            // (one a certificate named, or the parent of a block held) is
            // authentic by its id: it is kept even when its request expired,
            // or gave way to newer ones, before the answer came. Behind a
            // fast chain, requests expire within a fraction of a second (the
            // window is in views), and the one that gives way first when the
            // set is full is the oldest: the lowest gap, the one commits wait
            // for.
            let keep = self.wanted.remove(&id).is_some()
                || parents.remove(&id)
                || (self.qcs.contains_key(&id) && !self.blocks.contains_key(&id));
            if !keep {
                continue;
            }
            if b.height() <= self.committed.0 {
                continue;
            }
            let parent = b.header.parent;
            // Every block fetched is certified or an ancestor of one: a
            // quorum checked its proposer's signature.
            self.check_proposed_here(&b.header, || id);
            self.insert_block(b.clone());
            self.out.push(Action::PersistBlock(b.clone()));
            added = true;
            if !self.blocks.contains_key(&parent) && b.height().0 > self.committed.0.0 + 1 {
                parents.insert(parent);
            }
        }
        if !added {
            return;
        }
        // Only a wanted block counts as an answer: junk keeps nothing owed
        // from being asked elsewhere.
        self.unanswered.remove(&from);
        // Any parent still missing is asked for from the same peer.
        for id in parents {
            self.request_block(id, from, false);
        }
        if let Some(target) = self.pending_commit {
            self.commit_chain(target, from);
        }
        let certified: Vec<Digest> = self
            .qcs
            .keys()
            .copied()
            .filter(|id| self.blocks.contains_key(id))
            .collect();
        for id in certified {
            self.try_commit_via(id, from);
        }
        self.maybe_propose();
        self.retry_pending();
    }

    fn insert_block(&mut self, b: Block) -> Digest {
        let id = b.id();
        let justify = b.header.justify.clone();
        if justify.payload.height > self.committed.0 || justify.payload.height.0 == 0 {
            self.qcs.entry(justify.payload.block_id).or_insert(justify);
        }
        self.blocks.insert(id, b);
        id
    }

    fn retry_pending(&mut self) {
        let view = self.view;
        let ready: Vec<(View, ValidatorIndex)> = self
            .pending
            .iter()
            .filter(|((v, _), p)| {
                *v == view
                    && self
                        .blocks
                        .contains_key(&p.payload.block.header.justify.payload.block_id)
            })
            .map(|(k, _)| *k)
            .collect();
        for k in ready {
            if let Some(p) = self.pending.remove(&k) {
                let from = p.signer;
                self.on_proposal(from, p);
            }
        }
    }

    // ----- recovery (P19) ------------------------------------------------

    /// While quarantined, asks every other validator for a view report.
    fn ask_for_reports(&mut self) {
        if let Some(nonce) = self.safety.quarantine {
            self.out
                .push(Action::Broadcast(Message::RecoveryQuery(RecoveryQuery {
                    nonce,
                })));
        }
    }

    /// P19 (responder): report this validator's highest certificates to a
    /// recovering peer. At most one new signature per peer per view; a
    /// repeated nonce gets the same report again. A quarantined validator
    /// does not answer: its certificates say nothing about what it signed
    /// before it lost its record, and the bound counts on that.
    fn on_recovery_query(&mut self, from: ValidatorIndex, q: RecoveryQuery) {
        if from == self.me || self.quarantined() {
            return;
        }
        if let Some((view, nonce, msg)) = self.answered.get(&from) {
            if *nonce == q.nonce {
                let msg = msg.clone();
                self.send_to(from, msg);
                return;
            }
            if *view == self.view {
                return;
            }
        }
        let report = ViewReport {
            nonce: q.nonce,
            high_qc: self.safety.high_qc.clone(),
            high_tc: self.high_tc.clone(),
        };
        let signed = Verified::sign(&self.key, self.me, &self.cfg.chain_id, report);
        let msg = Message::ViewReport(signed.signed().clone());
        self.answered
            .insert(from, (self.view, q.nonce, msg.clone()));
        self.send_to(from, msg);
    }

    /// Reports needed to end a quarantine: enough that at least one comes
    /// from an honest validator that signed in the view before the last one
    /// this validator may have signed in (`n + f + 1 - quorum`: 2f+1 when
    /// n = 3f+1). See P19 in `docs/PROTOCOL.md`.
    fn reports_needed(&self) -> usize {
        let set = &self.cfg.validators;
        set.len() + set.f() + 1 - set.quorum()
    }

    /// P19 (recovering): a fresh report. Its certificates are verified
    /// progress, followed at once; once enough distinct validators have
    /// reported, every view up to the highest certified view + 2 is
    /// closed to signing and the quarantine ends.
    fn on_view_report(&mut self, r: Verified<ViewReport>) {
        if !self.wants_report(r.signer, &r.payload.nonce) {
            return;
        }
        let certified = r.payload.certified_view();
        self.reports.insert(r.signer, certified);
        let from = r.signer;
        self.observe_qc(r.payload.high_qc.clone(), from);
        if let Some(tc) = &r.payload.high_tc {
            self.observe_tc(tc.clone(), from);
        }
        if self.reports.len() < self.reports_needed() {
            return;
        }
        let highest = self.reports.values().max().copied().unwrap_or_default();
        let floor = View(highest.0.saturating_add(2));
        self.safety.floor = self.safety.floor.max(floor);
        self.safety.quarantine = None;
        self.reports.clear();
        self.persist();
        // Signing is allowed again above the floor: act in the current view
        // if it is already above it.
        self.maybe_propose();
    }

    // ----- checkpoints ----------------------------------------------------

    /// P17: after executing a checkpoint height, sign (height, block, root).
    /// P22: remember the result, and cast a vote that waited for it.
    fn on_executed(&mut self, r: ExecResult) {
        self.record_result(r);
        self.release_held_vote();
        let ExecResult {
            height,
            block_id,
            state_root,
            ..
        } = r;
        let k = self.cfg.checkpoint_interval;
        let stable_h = self.stable.as_ref().map_or(0, |c| c.payload.height.0);
        if height.0 == 0
            || !height.0.is_multiple_of(k)
            || height.0 <= stable_h
            || self.quarantined()
        {
            return;
        }
        let vote = CheckpointVote {
            height,
            block_id,
            state_root,
        };
        let signed = Verified::sign(&self.key, self.me, &self.cfg.chain_id, vote);
        self.out.push(Action::Broadcast(Message::Checkpoint(
            signed.signed().clone(),
        )));
        self.on_checkpoint_vote(signed);
    }

    /// P18: a quorum of equal checkpoint votes is a stable checkpoint.
    fn on_checkpoint_vote(&mut self, c: Verified<CheckpointVote>) {
        let k = self.cfg.checkpoint_interval;
        let h = c.payload.height;
        let stable_h = self.stable.as_ref().map_or(0, |c| c.payload.height.0);
        // Bounded: only checkpoint heights above the stable one and within
        // the future window's worth of checkpoints.
        let horizon = self
            .committed
            .0
            .0
            .saturating_add(k.saturating_mul(self.cfg.future_view_window));
        if h.0 == 0 || !h.0.is_multiple_of(k) || h.0 <= stable_h || h.0 > horizon {
            return;
        }
        self.observe_signed(
            h.0,
            Kind::Checkpoint,
            c.signer,
            Statement::Checkpoint(c.signed().clone()),
        );
        let votes = self.checkpoint_votes.entry(h).or_default();
        if votes.contains_key(&c.signer) {
            return;
        }
        let payload = c.payload;
        votes.insert(c.signer, c);
        let same: Vec<_> = votes
            .values()
            .filter(|v| v.payload == payload)
            .cloned()
            .collect();
        if same.len() < self.cfg.validators.quorum() {
            return;
        }
        let Ok(cert) = Certificate::aggregate(&same, &self.cfg.validators) else {
            return;
        };
        self.checkpoint_votes = self.checkpoint_votes.split_off(&h.next());
        self.seen
            .retain(|(round, kind, _), _| *kind != Kind::Checkpoint || *round > h.0);
        self.stable = Some(cert.clone());
        self.out.push(Action::StableCheckpoint(cert));
    }
}

/// What P22's check says of a proposal's execution results.
enum ExecCheck {
    /// Every result equals this validator's own.
    Agrees,
    /// One names a height this validator has not executed yet.
    Ahead,
    /// One differs from this validator's own, or names a height whose own
    /// result it no longer holds.
    Refused,
}

/// P22's shape rule: `header` carries at most [`MAX_EXEC_PER_BLOCK`]
/// results, for consecutive heights from the parent's `exec_next` or above
/// it, none above `height - 2` (the highest its justify can have
/// committed), and its `exec_next` follows them (or is the parent's when it
/// carries none).
fn exec_well_formed(header: &BlockHeader, parent: &BlockHeader) -> bool {
    let Some(first) = header.exec.first() else {
        return header.exec_next == parent.exec_next;
    };
    let start = first.height.0;
    header.exec.len() <= MAX_EXEC_PER_BLOCK
        && start >= parent.exec_next.0
        && header
            .exec
            .iter()
            .enumerate()
            .all(|(i, r)| r.height.0 == start + i as u64)
        && header.exec_next.0 == start + header.exec.len() as u64
        && header.exec_next.0 < header.height.0
}
