//! The driver: the one piece of code that turns the core's actions into
//! effects, used by the node and by the simulator alike.
//!
//! It owns the [`Core`] and a [`Screen`] (its [`Verifier`]), takes inputs (bytes from a
//! peer, execution results, the passing of time, a mempool that has
//! something to offer) and performs the core's actions over narrow
//! [`Ports`]: a safety store, a block store, an outbox, an executor, a
//! payload source and a monitor. It is synchronous and deterministic: no
//! async runtime, no clock reads (time is a value handed in), no sockets,
//! no threads. The node implements the ports with RocksDB, libp2p and the
//! mempool and calls the driver from its event loop; the simulator
//! implements them in memory, with a disk that loses unsynced writes at a
//! crash, so every simulated seed runs the ordering that runs in production.
//!
//! It must never make a protocol decision (that is the core's job) and
//! never perform I/O itself (that is the ports' job).
//!
//! # The contract
//!
//! * **D1 — persist before send.** Actions are performed in list order. A
//!   `Persist` (safety state) returns only once durable, so it completes
//!   before any later `Send` or `Broadcast` of the same list.
//! * **D2 — a block before the signature that names it.** A block written
//!   by `PersistBlock` is durable before any later safety write, vote,
//!   proposal or timeout of the same list: the driver asks the block store
//!   to sync first. (The safety record has its own durable path, so its
//!   write does not cover the blocks.)
//! * **D3 — one list at a time.** Actions caused by performing an action
//!   (a payload handed over at once) are performed after the rest of the
//!   current list, never interleaved with it.
//! * **D4 — commits in height order.** Blocks reach the executor in
//!   consecutive height order, each exactly once; a gap or a repeat is a
//!   bug and stops the process (`assert!`).
//! * **D5 — execution is asynchronous and bounded.** The executor reports
//!   each block back through [`Driver::on_executed`], in height order. At
//!   most [`MAX_UNEXECUTED_BLOCKS`] committed blocks wait for execution
//!   before [`Driver::accepts_input`] turns false; the embedder then stops
//!   feeding messages and payloads (it keeps feeding execution results and
//!   time) until the executor catches up. One action list can overshoot the
//!   bound by the blocks it commits at once (at most the core's uncommitted
//!   tree, itself bounded).
//! * **D6 — checkpoints after their height.** A stable checkpoint is handed
//!   to the block store only once its height has gone to the executor (the
//!   store checks it against the executed block, and the executor runs
//!   jobs in order).
//! * **D7 — a failed port stops the validator.** When a port returns an
//!   error, nothing after it in the list is performed (no message that
//!   depended on the failed write leaves), the error is returned, and every
//!   later call returns [`DriverError::Stopped`].
//! * **D8 — one timer.** Only the latest `SetTimer` counts; its
//!   `TimerFired` is delivered by [`Driver::tick`] once `now` reaches it.
//! * **D9 — one budget for block responses.** A block request for a block
//!   the store holds as committed is answered from the store, any other by
//!   the core; both fill the response with [`take_sync_blocks`] under the
//!   one byte budget [`SYNC_RESPONSE_BYTES_MAX`].
//! * **D10 — far views are rate-limited before signatures.** A message from
//!   beyond the view window is verified (for the certificates it carries)
//!   at most once per peer per [`FAR_VIEW_INTERVAL_MS`]; the rest are
//!   refused without a signature check.
//! * **D11 — payloads are owed, not lost.** When the core asks for a
//!   payload and the source has none ready, the driver owes it: it hands
//!   over whatever the source has when [`Driver::payload_available`] is
//!   called, or an empty payload once `empty_block_delay_ms` has passed; a
//!   payload owed for a view the core has left is forgotten.
//! * **D12 — a leader proposes on executed state.** While more than
//!   [`PROPOSE_MAX_UNEXECUTED`] (0) committed blocks wait for execution, an
//!   owed payload is not asked for; it is asked for again as execution
//!   results arrive. Execution stays off the vote path, but under load a
//!   leader does not cut a new block for every round trip while its
//!   executor falls behind: blocks stay as full as the load makes them,
//!   and the per-block cost (signatures, synced writes) is not paid for
//!   blocks of a handful of transactions.
//! * **D13 — view reports only when asked.** A view report (P19) is
//!   verified only if the core is quarantined, the report carries its
//!   recovery's nonce and its signer has not reported yet: an unsolicited
//!   report costs one decode, never a signature check.
//! * **D14 — a peer that keeps sending invalid messages is graylisted.**
//!   More than [`GRAYLIST_INVALID_MAX`] messages from one peer that no
//!   honest validator sends (undecodable, badly signed, naming the wrong
//!   proposer or payload, carrying a broken certificate) within
//!   [`GRAYLIST_WINDOW_MS`] graylist it for [`GRAYLIST_MS`]: its frames are
//!   then dropped before they are decoded. Transport authentication means
//!   only the peer's own key can earn this; with at most f faulty
//!   validators, dropping one is no worse than it crashing.
//! * **D15 — unsigned requests are rate-limited.** Block requests cost the
//!   sender nothing to make and the server reads to answer: each peer may
//!   have [`BLOCK_REQUESTS_PER_SEC`] answered (bursts of
//!   [`BLOCK_REQUEST_BURST`]); the rest are refused unread
//!   ([`NOT_ADMITTED_REQUEST_RATE`]). An honest validator catching up asks
//!   for up to the sync batch per request, well inside the rate.
//! * **D16 — screening may run elsewhere.** Admission and verification of
//!   a peer's frame (D10, D13, D14 and the [`Verifier`]) form a
//!   [`Screen`]. [`Driver::on_bytes`] runs the driver's own inline; an
//!   embedder with threads runs screens from [`Driver::screen`] away from
//!   the driver, under the latest [`Driver::admission`], and hands each
//!   outcome to [`Driver::on_screened`]. Everything that changes state —
//!   the monitor's reports, graylist counts, the core — happens there, in
//!   arrival order of outcomes. One peer's frames must go to one screen,
//!   in order. A stale admission costs work, never safety: the core checks
//!   views and reports again, and a frame screened while its sender was
//!   being graylisted is dropped in [`Driver::on_screened`].

use std::collections::HashMap;

use phalanx_crypto::{Digest, KeyPair, ValidatorIndex};

use crate::core::{Action, Config, ConfigError, Core, Event, Evidence, PayloadValidator, Restore};
use crate::safety::SafetyState;
use crate::screen::{Admission, Screen, Screened};
pub use crate::screen::{FAR_VIEW_INTERVAL_MS, NOT_ADMITTED_FAR_VIEW, NOT_ADMITTED_REPORT};
use crate::types::{
    Block, BlockRequest, BlockResponse, CheckpointCert, ExecResult, Height, Message, QuorumCert,
    Time, View,
};
use crate::verify::{MAX_MESSAGE_BYTES, MAX_SYNC_BLOCKS, VerifiedMessage, Verifier, VerifyError};

/// Committed blocks that may wait for execution before the driver stops
/// taking new messages and payloads (D5). Sized so that a burst of commits
/// after a stall fits while memory stays small: a block is at most
/// `max_payload_bytes`, so this is a few tens of MiB at the very worst.
pub const MAX_UNEXECUTED_BLOCKS: usize = 32;

/// The byte budget of one block response, shared by the core (uncommitted
/// blocks) and the driver (committed blocks from the store): half the
/// message bound, which leaves room for framing and the blocks' headers.
pub const SYNC_RESPONSE_BYTES_MAX: usize = MAX_MESSAGE_BYTES / 2;

/// What one block costs in a response beyond its payload: header,
/// certificate and framing, rounded up.
const BLOCK_OVERHEAD_BYTES: usize = 512;

/// Committed blocks that may wait for execution while a leader still asks
/// for a payload (D12). Zero: a leader proposes on fully executed state,
/// as when execution ran inline; measured against one (`PERFORMANCE.md`),
/// it gave fewer, fuller blocks and a lower p99 at 10,000 transfers/s.
pub const PROPOSE_MAX_UNEXECUTED: usize = 0;

/// Block requests one peer may have answered per second (D15).
pub const BLOCK_REQUESTS_PER_SEC: u64 = 50;
/// Block requests one peer may have answered at once after a quiet spell
/// (D15).
pub const BLOCK_REQUEST_BURST: u64 = 100;
/// Why a block request over its peer's rate was refused (D15).
pub const NOT_ADMITTED_REQUEST_RATE: &str = "block requests over the rate";

/// Per-peer token buckets for block requests (D15), in thousandths of a
/// request so that refills are exact in integer milliseconds.
#[derive(Debug, Default)]
struct RequestBudget {
    per_peer: HashMap<ValidatorIndex, (u64, u64)>,
}

impl RequestBudget {
    fn take(&mut self, from: ValidatorIndex, now: Time) -> bool {
        const UNIT: u64 = 1000;
        let cap = BLOCK_REQUEST_BURST * UNIT;
        let (tokens, at) = self.per_peer.entry(from).or_insert((cap, now.0));
        let refill = now
            .0
            .saturating_sub(*at)
            .saturating_mul(BLOCK_REQUESTS_PER_SEC);
        *tokens = tokens.saturating_add(refill).min(cap);
        *at = now.0.max(*at);
        if *tokens < UNIT {
            return false;
        }
        *tokens -= UNIT;
        true
    }
}

/// Invalid messages one peer may send within [`GRAYLIST_WINDOW_MS`] before
/// it is graylisted (D14).
pub const GRAYLIST_INVALID_MAX: u32 = 100;
/// The window invalid messages are counted in, ms (D14).
pub const GRAYLIST_WINDOW_MS: u64 = 10_000;
/// How long a graylisted peer's frames are dropped, ms (D14).
pub const GRAYLIST_MS: u64 = 60_000;

/// Peers whose invalid messages are counted, and those graylisted (D14).
#[derive(Debug, Default)]
struct Graylist {
    /// Per peer: start of its counting window and invalid messages in it.
    counts: HashMap<ValidatorIndex, (u64, u32)>,
    /// Per peer: until when it is graylisted.
    until: HashMap<ValidatorIndex, u64>,
}

impl Graylist {
    fn blocks(&self, from: ValidatorIndex, now: Time) -> bool {
        self.until.get(&from).is_some_and(|u| now.0 < *u)
    }

    /// Counts one invalid message; `Some(until)` when it graylists `from`.
    fn invalid(&mut self, from: ValidatorIndex, now: Time) -> Option<Time> {
        let c = self.counts.entry(from).or_insert((now.0, 0));
        if now.0 >= c.0.saturating_add(GRAYLIST_WINDOW_MS) {
            *c = (now.0, 0);
        }
        c.1 += 1;
        if c.1 <= GRAYLIST_INVALID_MAX {
            return None;
        }
        *c = (now.0, 0);
        let until = now.0.saturating_add(GRAYLIST_MS);
        self.until.insert(from, until);
        Some(Time(until))
    }
}

/// Whether an honest validator can never send a message refused with `e`.
fn proves_fault(e: &VerifyError) -> bool {
    match e {
        VerifyError::Decode(_)
        | VerifyError::Signature(_)
        | VerifyError::WrongProposer { .. }
        | VerifyError::PayloadDigest
        | VerifyError::PayloadTooLarge { .. }
        | VerifyError::TimeoutCert(_)
        | VerifyError::Evidence(_) => true,
        // An honest peer ahead of this one, or answering a request that
        // crossed a bound, can send these.
        VerifyError::SyncBound(_) | VerifyError::NotAdmitted(_) => false,
    }
}

/// The verifier for `cfg`'s chain and validators.
fn verifier_for(cfg: &Config) -> Verifier {
    let genesis = Block::genesis(&cfg.chain_id, cfg.genesis_time_ms);
    #[cfg_attr(not(feature = "sim"), allow(unused_mut))]
    let mut verifier = Verifier::new(
        cfg.validators.clone(),
        cfg.chain_id.clone(),
        &genesis,
        cfg.max_payload_bytes,
    );
    #[cfg(feature = "sim")]
    if cfg.flaw == Some(crate::Flaw::TcSkipsMaxView) {
        verifier.skip_tc_max_view();
    }
    verifier
}

/// Fills a block response from `blocks` (walking down a chain): at most
/// `count` (capped at [`MAX_SYNC_BLOCKS`]) and at most
/// [`SYNC_RESPONSE_BYTES_MAX`] bytes, but always the first block. Errors of
/// the source end the walk and are returned.
pub fn take_sync_blocks<E>(
    count: u16,
    blocks: impl Iterator<Item = Result<Block, E>>,
) -> Result<Vec<Block>, E> {
    let count = (count as usize).min(MAX_SYNC_BLOCKS);
    let mut out = Vec::new();
    let mut bytes = 0usize;
    for b in blocks {
        if out.len() >= count {
            break;
        }
        let b = b?;
        bytes += b.payload.len() + BLOCK_OVERHEAD_BYTES;
        if bytes > SYNC_RESPONSE_BYTES_MAX && !out.is_empty() {
            break;
        }
        out.push(b);
    }
    Ok(out)
}

/// A port's failure: local I/O that did not happen. Always fatal to the
/// driver (D7).
#[derive(Debug, thiserror::Error)]
#[error("{port}: {reason}")]
pub struct PortError {
    /// Which port failed.
    pub port: &'static str,
    /// What happened.
    pub reason: String,
}

impl PortError {
    /// A failure of `port`.
    pub fn new(port: &'static str, reason: impl std::fmt::Display) -> PortError {
        PortError {
            port,
            reason: reason.to_string(),
        }
    }
}

/// Why the driver stopped.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// A port failed; the validator must stop (D7).
    #[error("a port failed: {0}")]
    Port(#[from] PortError),
    /// A port failed earlier; nothing more is done.
    #[error("the driver stopped after an earlier failure")]
    Stopped,
    /// The consensus configuration or the restored state is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// The durable safety record. `persist_safety` returns only once the state
/// is durable (synced). It need not make block writes durable: the driver
/// syncs them first (D2).
pub trait SafetyStore {
    /// Writes the safety state durably.
    fn persist_safety(&mut self, state: &SafetyState) -> Result<(), PortError>;
}

/// Blocks: uncommitted ones written for consensus, committed ones read to
/// serve peers, stable checkpoints recorded.
pub trait BlockStore {
    /// Writes an uncommitted block (durable at the next sync at the latest).
    fn persist_block(&mut self, block: &Block) -> Result<(), PortError>;
    /// Makes every block written so far durable.
    fn sync_blocks(&mut self) -> Result<(), PortError>;
    /// The height of a committed (executed) block, if this store has it.
    fn committed_height(&mut self, id: &Digest) -> Result<Option<Height>, PortError>;
    /// The committed block at `height`, if retained.
    fn committed_block(&mut self, height: Height) -> Result<Option<Block>, PortError>;
    /// Records a stable checkpoint (its height has been handed to the
    /// executor: D6).
    fn record_checkpoint(&mut self, cert: &CheckpointCert) -> Result<(), PortError>;
}

/// The network.
pub trait Outbox {
    /// Queues `msg` for validator `to`.
    fn send(&mut self, to: ValidatorIndex, msg: &Message) -> Result<(), PortError>;
    /// Queues `msg` for every other validator.
    fn broadcast(&mut self, msg: &Message) -> Result<(), PortError>;
}

/// Execution of committed blocks. `execute` only hands the block over; the
/// result comes back later through [`Driver::on_executed`] (D5).
pub trait Executor {
    /// Queues a committed block for execution (consecutive heights: D4).
    fn execute(&mut self, block: Block, cert: QuorumCert) -> Result<(), PortError>;
}

/// What the core asks a leader's payload source for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PayloadRequest {
    /// The view being led.
    pub view: View,
    /// The height of the block to be built.
    pub height: Height,
    /// The block it extends (the highest certified block).
    pub parent: Digest,
    /// The core's committed height: blocks between it and `parent` are
    /// certified or proposed but not final.
    pub committed: Height,
    /// Payload bound.
    pub max_bytes: usize,
}

/// The mempool, as seen by a leader.
pub trait PayloadSource {
    /// A payload for `req`. With `wait` true, the source may answer `None`
    /// (nothing to order yet) and the driver asks again later; with `wait`
    /// false it must answer (an empty payload if need be).
    fn payload(&mut self, req: &PayloadRequest, wait: bool) -> Option<Vec<u8>>;
}

/// What the driver noticed, for metrics and logs. Every method has a
/// default that does nothing.
pub trait Monitor {
    /// A message was verified and handed to the core.
    fn received(&mut self, _from: ValidatorIndex, _msg: &VerifiedMessage, _bytes: usize) {}
    /// A message was refused at the edge.
    fn refused(&mut self, _from: ValidatorIndex, _err: &VerifyError) {}
    /// The view's timer fired.
    fn timed_out(&mut self, _view: View) {}
    /// Misbehaviour detected.
    fn evidence(&mut self, _evidence: &Evidence) {}
    /// Another process signs with this validator's key (P21).
    fn own_key_elsewhere(&mut self, _view: View, _kind: &'static str) {}
    /// A proposal's execution result differs from this validator's own
    /// (P22); no vote was cast for it.
    fn execution_mismatch(
        &mut self,
        _proposer: ValidatorIndex,
        _view: View,
        _ours: &ExecResult,
        _theirs: &ExecResult,
    ) {
    }
    /// Committed blocks were served from the store.
    fn served(&mut self, _to: ValidatorIndex, _from: Height, _blocks: usize) {}
    /// A peer was graylisted until `until` (D14).
    fn graylisted(&mut self, _peer: ValidatorIndex, _until: Time) {}
    /// A graylisted peer's frame was dropped unread (D14).
    fn dropped(&mut self, _from: ValidatorIndex) {}
}

/// Every port the driver needs, implemented by one value.
pub trait Ports: SafetyStore + BlockStore + Outbox + Executor + PayloadSource + Monitor {}
impl<T: SafetyStore + BlockStore + Outbox + Executor + PayloadSource + Monitor> Ports for T {}

/// Local tuning of the driver.
#[derive(Clone, Copy, Debug)]
pub struct DriverConfig {
    /// How long a leader with nothing to order waits before proposing an
    /// empty block, ms.
    pub empty_block_delay_ms: u64,
}

/// A payload owed to the core (D11).
#[derive(Clone, Copy, Debug)]
struct Owed {
    req: PayloadRequest,
    /// When to hand over an empty payload if nothing arrives.
    at: Time,
    /// Requested by the action list being performed, not yet asked for.
    fresh: bool,
}

/// The consensus driver of one validator.
pub struct Driver<P: Ports> {
    core: Core,
    /// The inline screen (D16): what [`Driver::on_bytes`] runs.
    screen: Screen,
    ports: P,
    cfg: DriverConfig,
    timer: Option<(View, Time)>,
    owed: Option<Owed>,
    /// Peers sending invalid messages (D14).
    graylist: Graylist,
    /// Block requests each peer may still have answered (D15).
    requests: RequestBudget,
    /// The highest height handed to the executor.
    committed: Height,
    /// The highest height the executor reported.
    executed: Height,
    /// A stable checkpoint above the committed height, kept until it is
    /// reached (D6).
    deferred_checkpoint: Option<CheckpointCert>,
    /// Blocks written since the last sync (D2).
    unsynced_blocks: bool,
    stopped: bool,
}

impl<P: Ports> Driver<P> {
    /// Restores the core from `restore` (what the ports' storage holds) and
    /// performs its first actions.
    pub fn start(
        core_cfg: Config,
        key: KeyPair,
        payload_check: Box<dyn PayloadValidator>,
        restore: Restore,
        ports: P,
        cfg: DriverConfig,
        now: Time,
    ) -> Result<Driver<P>, DriverError> {
        let screen = Screen::new(verifier_for(&core_cfg));
        let head = restore.committed.0.height();
        let (core, actions) = Core::restore(core_cfg, key, payload_check, restore, now)?;
        let mut d = Driver {
            core,
            screen,
            ports,
            cfg,
            timer: None,
            owed: None,
            graylist: Graylist::default(),
            requests: RequestBudget::default(),
            committed: head,
            executed: head,
            deferred_checkpoint: None,
            unsynced_blocks: false,
            stopped: false,
        };
        d.perform_all(now, actions)?;
        Ok(d)
    }

    /// The core, for reading its state.
    pub fn core(&self) -> &Core {
        &self.core
    }

    /// The ports.
    pub fn ports(&self) -> &P {
        &self.ports
    }

    /// The ports, for the embedder's own use between calls (a simulator
    /// feeding its mempool, say).
    pub fn ports_mut(&mut self) -> &mut P {
        &mut self.ports
    }

    /// The highest height handed to the executor.
    pub fn committed_height(&self) -> Height {
        self.committed
    }

    /// The highest height the executor reported done.
    pub fn executed_height(&self) -> Height {
        self.executed
    }

    /// Committed blocks not yet reported executed.
    pub fn unexecuted(&self) -> usize {
        (self.committed.0 - self.executed.0) as usize
    }

    /// False while [`MAX_UNEXECUTED_BLOCKS`] or more committed blocks wait
    /// for execution (D5): the embedder should feed only execution results
    /// and time until it turns true again.
    pub fn accepts_input(&self) -> bool {
        self.unexecuted() < MAX_UNEXECUTED_BLOCKS
    }

    /// D12: no more than [`PROPOSE_MAX_UNEXECUTED`] committed blocks wait
    /// for execution.
    fn executor_caught_up(&self) -> bool {
        self.unexecuted() < PROPOSE_MAX_UNEXECUTED.saturating_add(1)
    }

    /// True while a payload is owed and the embedder should call
    /// [`Driver::payload_available`] when the mempool gains something.
    pub fn awaiting_payload(&self) -> bool {
        self.owed.is_some()
    }

    /// The earliest time [`Driver::tick`] has something to do.
    pub fn next_deadline(&self) -> Option<Time> {
        let timer = self.timer.map(|(_, at)| at);
        // A payload held back by D12 waits for execution, not for time.
        let owed = self
            .owed
            .filter(|_| self.executor_caught_up())
            .map(|o| o.at);
        match (timer, owed) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// True if the driver stopped after a port failure.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    fn check_running(&self) -> Result<(), DriverError> {
        if self.stopped {
            return Err(DriverError::Stopped);
        }
        Ok(())
    }

    /// Wire bytes from peer `from`, screened here: admitted, decoded and
    /// verified at the edge (D10, D13, D14), then handed to the core. A
    /// refused message is reported to the monitor and is not an error.
    pub fn on_bytes(
        &mut self,
        now: Time,
        from: ValidatorIndex,
        bytes: &[u8],
    ) -> Result<(), DriverError> {
        self.check_running()?;
        let adm = self.admission(now);
        let screened = self.screen.screen(now, from, bytes, &adm);
        self.on_screened(now, from, screened, bytes.len())
    }

    /// What a screen running elsewhere needs to know of this driver's state
    /// at `now` (D16). Republish it whenever it changes.
    pub fn admission(&self, now: Time) -> Admission {
        let core = &self.core;
        let reports = core.report_nonce().map(|nonce| {
            let wanted = core
                .config()
                .validators
                .indices()
                .filter(|i| core.wants_report(*i, &nonce))
                .collect();
            (nonce, wanted)
        });
        let mut graylisted: Vec<_> = self
            .graylist
            .until
            .iter()
            .filter(|(_, u)| now.0 < **u)
            .map(|(p, u)| (*p, *u))
            .collect();
        graylisted.sort_unstable();
        Admission {
            view: core.view(),
            window: core.config().future_view_window,
            reports,
            graylisted,
        }
    }

    /// A new screen for this driver's chain and validators, to run away
    /// from the driver (D16). Its caches start empty.
    pub fn screen(&self) -> Screen {
        Screen::new(verifier_for(self.core.config()))
    }

    /// The outcome of screening a `bytes`-long frame from `from`, here or
    /// on a screen from [`Driver::screen`] (D16): reported to the monitor,
    /// counted towards a graylisting (D14) when it proves a fault, and a
    /// verified message handed to the core — unless its sender was
    /// graylisted while it was being screened.
    pub fn on_screened(
        &mut self,
        now: Time,
        from: ValidatorIndex,
        screened: Screened,
        bytes: usize,
    ) -> Result<(), DriverError> {
        self.check_running()?;
        match screened {
            Screened::Dropped => {
                self.ports.dropped(from);
                Ok(())
            }
            Screened::Refused(e) => {
                self.ports.refused(from, &e);
                if proves_fault(&e)
                    && let Some(until) = self.graylist.invalid(from, now)
                {
                    self.ports.graylisted(from, until);
                }
                Ok(())
            }
            Screened::Verified(_) if self.graylist.blocks(from, now) => {
                self.ports.dropped(from);
                Ok(())
            }
            Screened::Verified(msg) => {
                self.ports.received(from, &msg, bytes);
                self.on_verified(now, from, *msg)
            }
        }
    }

    /// A verified message from `from`, for the core.
    fn on_verified(
        &mut self,
        now: Time,
        from: ValidatorIndex,
        msg: VerifiedMessage,
    ) -> Result<(), DriverError> {
        self.check_running()?;
        if let VerifiedMessage::BlockRequest(r) = &msg {
            // D15: checked here, after the verifier, whose cache passes a
            // repeated request without asking.
            if !self.requests.take(from, now) {
                let e = VerifyError::NotAdmitted(NOT_ADMITTED_REQUEST_RATE);
                self.ports.refused(from, &e);
                return Ok(());
            }
            if self.serve_committed(from, r)? {
                return Ok(());
            }
        }
        let actions = self.core.handle(now, Event::Message { from, msg });
        self.perform_all(now, actions)
    }

    /// The executor finished the block at `height`.
    pub fn on_executed(&mut self, now: Time, result: ExecResult) -> Result<(), DriverError> {
        self.check_running()?;
        let height = result.height;
        assert!(
            height == self.executed.next() && height <= self.committed,
            "execution reported height {} out of order (executed {}, committed {})",
            height.0,
            self.executed.0,
            self.committed.0
        );
        self.executed = height;
        let actions = self.core.handle(now, Event::Executed(result));
        self.perform_all(now, actions)?;
        // D12: a payload held back while execution lagged.
        self.payload_available(now)
    }

    /// The payload source may now have something to offer: hands an owed
    /// payload over if it does (D11).
    pub fn payload_available(&mut self, now: Time) -> Result<(), DriverError> {
        self.check_running()?;
        let Some(owed) = self.owed else {
            return Ok(());
        };
        if !self.executor_caught_up() {
            return Ok(());
        }
        if let Some(payload) = self.ports.payload(&owed.req, true) {
            self.hand_over(now, owed.req.view, payload)?;
        }
        Ok(())
    }

    /// Gives the core the payload it was owed for `view`.
    fn hand_over(&mut self, now: Time, view: View, payload: Vec<u8>) -> Result<(), DriverError> {
        self.owed = None;
        let actions = self.core.handle(now, Event::PayloadReady { view, payload });
        self.perform_all(now, actions)
    }

    /// Time passed: fires the view timer and hands over an owed payload
    /// whose wait is over (D8, D11).
    pub fn tick(&mut self, now: Time) -> Result<(), DriverError> {
        self.check_running()?;
        if let Some(owed) = self.owed
            && now >= owed.at
            && self.executor_caught_up()
        {
            let payload = self.ports.payload(&owed.req, false).unwrap_or_default();
            self.hand_over(now, owed.req.view, payload)?;
        }
        if let Some((view, at)) = self.timer
            && now >= at
        {
            self.timer = None;
            self.ports.timed_out(view);
            let actions = self.core.handle(now, Event::TimerFired { view });
            self.perform_all(now, actions)?;
        }
        Ok(())
    }

    /// Answers a request for a block this store holds as committed (D9).
    /// Returns false if the core should answer instead.
    fn serve_committed(
        &mut self,
        to: ValidatorIndex,
        r: &BlockRequest,
    ) -> Result<bool, DriverError> {
        let top = match self.ports.committed_height(&r.id) {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(false),
            Err(e) => return Err(self.fail(e)),
        };
        let ports = &mut self.ports;
        // Genesis is never sent: every validator has it.
        let walk = (1..=top.0)
            .rev()
            .map_while(|h| match ports.committed_block(Height(h)) {
                Ok(Some(b)) => Some(Ok(b)),
                Ok(None) => None,
                Err(e) => Some(Err(e)),
            });
        let blocks = match take_sync_blocks(r.count, walk) {
            Ok(b) => b,
            Err(e) => return Err(self.fail(e)),
        };
        if blocks.is_empty() {
            return Ok(false);
        }
        self.ports.served(to, top, blocks.len());
        let msg = Message::BlockResponse(BlockResponse { blocks });
        if let Err(e) = self.ports.send(to, &msg) {
            return Err(self.fail(e));
        }
        Ok(true)
    }

    fn fail(&mut self, e: PortError) -> DriverError {
        self.stopped = true;
        DriverError::Port(e)
    }

    /// Performs `actions` in order, then whatever they caused (D3).
    fn perform_all(&mut self, now: Time, actions: Vec<Action>) -> Result<(), DriverError> {
        let mut list = actions;
        loop {
            let mut follow = Vec::new();
            for a in list {
                if let Err(e) = self.perform(now, a) {
                    return Err(self.fail(e));
                }
            }
            {
                // A payload owed for a view the core has left would be
                // refused by it, and the mempool would have marked its
                // transactions as taken for nothing.
                if self.owed.is_some_and(|o| o.req.view != self.core.view()) {
                    self.owed = None;
                }
                // A payload requested by this list: asked for now, unless
                // execution lags (D12).
                if let Some(owed) = self.owed.as_mut().filter(|o| o.fresh) {
                    owed.fresh = false;
                    let req = owed.req;
                    if self.executor_caught_up()
                        && let Some(payload) = self.ports.payload(&req, true)
                    {
                        self.owed = None;
                        follow.push(Event::PayloadReady {
                            view: req.view,
                            payload,
                        });
                    }
                }
                if follow.is_empty() {
                    return Ok(());
                }
            }
            list = Vec::new();
            for ev in follow {
                list.extend(self.core.handle(now, ev));
            }
        }
    }

    fn perform(&mut self, now: Time, a: Action) -> Result<(), PortError> {
        match a {
            Action::Persist(s) => {
                if self.unsynced_blocks {
                    self.ports.sync_blocks()?;
                    self.unsynced_blocks = false;
                }
                self.ports.persist_safety(&s)?;
            }
            Action::PersistBlock(b) => {
                self.ports.persist_block(&b)?;
                self.unsynced_blocks = true;
            }
            Action::Send { to, msg } => {
                self.before_send(&msg)?;
                self.ports.send(to, &msg)?;
            }
            Action::Broadcast(msg) => {
                self.before_send(&msg)?;
                self.ports.broadcast(&msg)?;
            }
            Action::SetTimer { view, at } => self.timer = Some((view, at)),
            Action::RequestPayload {
                view,
                height,
                max_bytes,
            } => {
                let req = PayloadRequest {
                    view,
                    height,
                    parent: self.core.safety().high_qc.payload.block_id,
                    committed: self.core.committed().0,
                    max_bytes,
                };
                // Asked for once the whole list is performed (D12: the
                // commits that follow in the list count).
                self.owed = Some(Owed {
                    req,
                    at: now.plus_ms(self.cfg.empty_block_delay_ms),
                    fresh: true,
                });
            }
            Action::Commit { block, cert } => {
                let h = block.height();
                assert!(
                    h == self.committed.next(),
                    "commit of height {} after height {} (D4)",
                    h.0,
                    self.committed.0
                );
                self.committed = h;
                self.ports.execute(block, cert)?;
                if let Some(cp) = self
                    .deferred_checkpoint
                    .take_if(|cp| cp.payload.height <= self.committed)
                {
                    self.ports.record_checkpoint(&cp)?;
                }
            }
            Action::StableCheckpoint(cp) => {
                if cp.payload.height <= self.committed {
                    self.ports.record_checkpoint(&cp)?;
                } else if self
                    .deferred_checkpoint
                    .as_ref()
                    .is_none_or(|d| d.payload.height < cp.payload.height)
                {
                    self.deferred_checkpoint = Some(cp);
                }
            }
            Action::Evidence(e) => self.ports.evidence(&e),
            Action::OwnKeyElsewhere { view, kind } => self.ports.own_key_elsewhere(view, kind),
            Action::ExecutionMismatch {
                proposer,
                view,
                ours,
                theirs,
            } => self
                .ports
                .execution_mismatch(proposer, view, &ours, &theirs),
        }
        Ok(())
    }

    /// D2: signed consensus messages leave only after the blocks written
    /// before them are durable.
    fn before_send(&mut self, msg: &Message) -> Result<(), PortError> {
        let signed = matches!(
            msg,
            Message::Proposal(_) | Message::Vote(_) | Message::Timeout(_)
        );
        if signed && self.unsynced_blocks {
            self.ports.sync_blocks()?;
            self.unsynced_blocks = false;
        }
        Ok(())
    }
}
