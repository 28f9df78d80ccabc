//! The runtime: the async shell around the consensus [`Driver`].
//!
//! It turns sockets, timers and the mempool's signal into driver inputs,
//! and implements the driver's ports with RocksDB ([`Store`]), libp2p
//! ([`Network`]) and the mempool. Execution runs on its own thread (the
//! executor): committed blocks go to it in height order and their results
//! come back as driver inputs, so a slow commit (execution, the state root,
//! the synced batch) never delays a vote, a timeout or a proposal.
//!
//! It never makes a protocol decision and never orders actions itself:
//! the order that keeps a validator safe is the driver's contract
//! (`phalanx_consensus::driver`, D1–D16), the same code the simulator runs.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use phalanx_consensus::{
    Block, BlockStore, CheckpointCert, Config as CoreConfig, Driver, DriverConfig, DriverError,
    EXEC_RESULTS_KEPT, Evidence, ExecResult, Executor, Height, Message, Monitor, Outbox,
    PayloadRequest, PayloadSource, PortError, QuorumCert, Restore, SafetyState, SafetyStore,
    Statement, Time, VerifiedMessage, VerifyError, View, genesis_qc,
};
use phalanx_crypto::{Digest, KeyPair, ValidatorIndex, encode};
use phalanx_ledger::{Genesis, decode_payload, encode_payload, prepare_payload_trusting};
use phalanx_storage::{SafetyRecord, StorageError, Store};
use tokio::sync::{mpsc, watch};
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::metrics::{self, Metrics, StorageOp};
use crate::net::{Inbound, Network};
use crate::safety::StartState;
use crate::screening::{self, ScreenedFrame};
use crate::shared::{CommitNotice, Shared};
use crate::validity::{LedgerValidity, Vouched};

/// Runtime failures: all fatal (the node stops rather than run on).
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The consensus configuration is unusable.
    #[error(transparent)]
    Consensus(#[from] phalanx_consensus::ConfigError),
    /// The driver stopped (a port failed).
    #[error(transparent)]
    Driver(#[from] DriverError),
    /// Genesis is unusable.
    #[error(transparent)]
    Ledger(#[from] phalanx_ledger::LedgerError),
    /// The store is missing a record it must have.
    #[error("store: missing {what} at height {height}")]
    Missing {
        /// Which record.
        what: &'static str,
        /// Where.
        height: u64,
    },
    /// The executor or a screening thread could not be started.
    #[error("starting a thread: {0}")]
    Spawn(std::io::Error),
    /// The executor thread ended without being asked to.
    #[error("the executor stopped")]
    ExecutorStopped,
    /// Certified blocks are further ahead than peers keep blocks, and no
    /// block has committed for a while: block sync cannot close the gap.
    /// The node restarts to state-sync.
    #[error(
        "fell behind: committed height {committed}, peers certify height {seen}, nothing committed for {secs} s"
    )]
    FellBehind {
        /// This validator's executed height.
        committed: u64,
        /// The height peers' certificates show.
        seen: u64,
        /// Seconds without a commit.
        secs: u64,
    },
}

/// What the rest of the node can see of consensus.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// Last executed (committed and written) height.
    pub height: Height,
    /// Current view.
    pub view: View,
    /// Leader of the current view.
    pub leader: ValidatorIndex,
}

/// The chain's tip as a proposal shows it, for readiness and for giving up
/// on block sync: the height its verified certificate certifies, less the
/// one block a commit lags. The block's own height is the proposer's word
/// only: one Byzantine validator could make every node look behind.
pub fn certified_tip(p: &phalanx_consensus::Proposal) -> u64 {
    p.block.header.justify.payload.height.0.saturating_sub(1)
}

/// The core's clock: steady (see [`crate::shared::now_ms`]).
fn now() -> Time {
    Time(crate::shared::now_ms())
}

/// The consensus configuration of a chain, from its genesis.
pub fn core_config(genesis: &Genesis) -> Result<CoreConfig, RuntimeError> {
    let mut cfg = CoreConfig::new(
        genesis.consensus_chain(),
        genesis.validator_set()?,
        genesis.genesis_time_ms,
    );
    cfg.checkpoint_interval = genesis.params.checkpoint_interval;
    cfg.base_timeout_ms = genesis.params.base_timeout_ms;
    cfg.max_timeout_ms = genesis.params.max_timeout_ms;
    cfg.max_payload_bytes = genesis.params.max_block_bytes as usize;
    Ok(cfg)
}

/// A block persisted for consensus, as the node remembers it until it is
/// executed.
struct SeenBlock {
    parent: Digest,
    height: u64,
    /// Hashes of the payload items' exact bytes.
    raw: Arc<Vec<Digest>>,
    /// When this validator first persisted it.
    at: Instant,
}

fn raw_hashes(b: &Block) -> Vec<Digest> {
    decode_payload(&b.payload)
        .map(|items| items.iter().map(|i| Digest::of(i)).collect())
        .unwrap_or_default()
}

/// Work for the executor thread, done in order.
// Jobs are moved once through a channel, never stored in bulk: boxing the
// large variant would cost an allocation per block for nothing.
#[allow(clippy::large_enum_variant)]
enum Job {
    /// Execute and write a committed block.
    Execute {
        block: Block,
        cert: QuorumCert,
        /// What the runtime knows of the items already.
        items: KnownItems,
        first_seen: Option<Instant>,
    },
    /// Record a stable checkpoint (its height is executed by then: D6).
    Checkpoint(CheckpointCert),
}

/// What the runtime already knows of a committed block's items.
struct KnownItems {
    /// The items' hashes, if known from when the block was persisted.
    raw: Option<Arc<Vec<Digest>>>,
    /// Items the validity rule decoded and verified before the vote
    /// because the mempool did not hold them: not verified again.
    vouched: Vouched,
}

/// The driver's ports in the node.
struct NodePorts {
    store: Arc<Store>,
    /// The safety record: a file of its own (see `phalanx_storage::SafetyRecord`).
    record: SafetyRecord,
    net: Network,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    max_block_txs: usize,
    /// The last safety state written was in recovery (P19).
    quarantined: bool,
    /// Blocks persisted and not yet executed, by id.
    seen: HashMap<Digest, SeenBlock>,
    /// The validity rule's handle, told of every block persisted.
    validity: LedgerValidity,
    jobs: std_mpsc::Sender<Job>,
    /// When the key-used-elsewhere line was last logged (P21).
    elsewhere_logged: Option<Instant>,
    /// When the execution-mismatch line was last logged (P22).
    mismatch_logged: Option<Instant>,
    /// Attack modes, when asked for (feature `byzantine`, test builds).
    #[cfg(feature = "byzantine")]
    attacker: Option<crate::byzantine::Attacker>,
}

/// Whether an alarm line last logged at `last` may be logged again now
/// (once per [`OWN_KEY_LOG_INTERVAL`]); notes the time when it may.
fn log_due(last: &mut Option<Instant>) -> bool {
    let now = Instant::now();
    if last.is_some_and(|t| now.duration_since(t) < OWN_KEY_LOG_INTERVAL) {
        return false;
    }
    *last = Some(now);
    true
}

fn port_err(port: &'static str) -> impl Fn(StorageError) -> PortError {
    move |e| PortError::new(port, e)
}

impl SafetyStore for NodePorts {
    fn persist_safety(&mut self, state: &SafetyState) -> Result<(), PortError> {
        let t = Instant::now();
        let was_quarantined = self.quarantined;
        self.record
            .write_state(state)
            .map_err(port_err("safety store"))?;
        // Unsynced: it reaches the disk with the next synced write, and lets
        // the next start refuse a record file older than the store.
        self.store
            .note_safety_counter(self.record.counter())
            .map_err(port_err("safety store"))?;
        self.metrics.storage(StorageOp::SafetyWrite, t.elapsed());
        self.quarantined = state.quarantine.is_some();
        if was_quarantined && !self.quarantined {
            warn!(
                floor = state.floor.0,
                "recovery (P19) complete: signing again in views above the floor"
            );
        }
        Ok(())
    }
}

impl BlockStore for NodePorts {
    fn persist_block(&mut self, b: &Block) -> Result<(), PortError> {
        let t = Instant::now();
        self.store
            .put_pending_block(b)
            .map_err(port_err("block store"))?;
        self.metrics.storage(StorageOp::BlockWrite, t.elapsed());
        // A block the validity rule checked had its items marked in flight
        // then, under the same lock as its lookups.
        let marked = self.validity.note_block(b);
        let raw = self.track_block(b);
        #[cfg(feature = "byzantine")]
        if let Some(a) = &mut self.attacker {
            a.note_block(b);
        }
        if !raw.is_empty() && !marked {
            self.shared
                .pool()
                .mark_in_flight(&raw, b.height().0, b.id());
        }
        Ok(())
    }

    fn sync_blocks(&mut self) -> Result<(), PortError> {
        self.store.sync_wal().map_err(port_err("block store"))
    }

    fn committed_height(&mut self, id: &Digest) -> Result<Option<Height>, PortError> {
        self.store.height_of(id).map_err(port_err("block store"))
    }

    fn committed_block(&mut self, height: Height) -> Result<Option<Block>, PortError> {
        self.store.block(height).map_err(port_err("block store"))
    }

    fn record_checkpoint(&mut self, cert: &CheckpointCert) -> Result<(), PortError> {
        self.jobs
            .send(Job::Checkpoint(cert.clone()))
            .map_err(|_| PortError::new("executor", "stopped"))
    }
}

impl Outbox for NodePorts {
    fn send(&mut self, to: ValidatorIndex, msg: &Message) -> Result<(), PortError> {
        #[cfg(feature = "byzantine")]
        if let Some(a) = &mut self.attacker {
            let planned = a.on_send(to, msg);
            self.perform(planned);
            return Ok(());
        }
        let bytes = Arc::new(encode(msg));
        self.metrics.sent(msg.kind(), bytes.len(), 1);
        self.net.send(to, bytes);
        Ok(())
    }

    fn broadcast(&mut self, msg: &Message) -> Result<(), PortError> {
        #[cfg(feature = "byzantine")]
        if let Some(a) = &mut self.attacker {
            let planned = a.on_broadcast(msg);
            self.perform(planned);
            return Ok(());
        }
        let bytes = Arc::new(encode(msg));
        self.metrics
            .sent(msg.kind(), bytes.len(), self.net.peer_count());
        self.net.broadcast(bytes);
        Ok(())
    }
}

impl Executor for NodePorts {
    fn execute(&mut self, block: Block, cert: QuorumCert) -> Result<(), PortError> {
        let seen = self.seen.get(&block.id());
        let job = Job::Execute {
            items: KnownItems {
                raw: seen.map(|s| s.raw.clone()),
                vouched: self.validity.vouched(&block.id()),
            },
            first_seen: seen.map(|s| s.at),
            block,
            cert,
        };
        self.jobs
            .send(job)
            .map_err(|_| PortError::new("executor", "stopped"))
    }
}

impl PayloadSource for NodePorts {
    fn payload(&mut self, req: &PayloadRequest, wait: bool) -> Option<Vec<u8>> {
        let ancestors = self.ancestors(req.parent);
        // With nothing new to order, a leader waits (the chain is idle)
        // unless the chain it extends carries transactions not yet
        // committed: those commit only once two more blocks are certified,
        // so an empty block now is what they wait for.
        if wait
            && !self.shared.pool().has_proposable()
            && !self.uncommitted_work(&ancestors, req.committed)
        {
            return None;
        }
        let store = &self.store;
        // Room for the payload's own length prefixes.
        let budget = req.max_bytes.saturating_sub(64);
        let taken = self.validity.taken_nonces(req.parent);
        let txs = self.shared.pool().select(
            req.height.0,
            self.max_block_txs,
            budget,
            &ancestors,
            &taken,
            |t| {
                store
                    .account(&t.transfer.sender)
                    .ok()
                    .flatten()
                    .unwrap_or_default()
            },
        );
        #[cfg(feature = "byzantine")]
        let txs = match &self.attacker {
            Some(a) => a.on_payload(req.view, txs),
            None => txs,
        };
        if !txs.is_empty() {
            debug!(view = req.view.0, txs = txs.len(), "proposing");
        }
        Some(encode_payload(&txs))
    }
}

impl Monitor for NodePorts {
    fn received(&mut self, _from: ValidatorIndex, msg: &VerifiedMessage, bytes: usize) {
        self.metrics.received(msg.kind(), bytes);
        if let VerifiedMessage::Proposal(p) = msg {
            self.shared.note_seen(certified_tip(&p.payload));
        }
    }

    fn refused(&mut self, from: ValidatorIndex, err: &VerifyError) {
        self.metrics
            .invalid(Some(from.0), metrics::invalid_reason(err));
        debug!(peer = from.0, "message refused: {err}");
    }

    fn timed_out(&mut self, view: View) {
        info!(view = view.0, "view timed out");
        self.metrics.view_timeout();
    }

    fn own_key_elsewhere(&mut self, view: View, kind: &'static str) {
        self.metrics.own_key_elsewhere();
        // At most once per view (the core's bound); views pass quickly, so
        // the line is further limited to one a minute.
        if log_due(&mut self.elsewhere_logged) {
            error!(
                view = view.0,
                kind,
                "another process signs with this validator's key (a certificate holds its {kind} for a view where this process signed none): stop every other copy of this validator, and never run one on an old copy of its data"
            );
        }
    }

    fn execution_mismatch(
        &mut self,
        proposer: ValidatorIndex,
        view: View,
        ours: &ExecResult,
        theirs: &ExecResult,
    ) {
        self.metrics.execution_mismatch();
        // At most once per height (the core's bound); a lying leader can
        // name a new height in every view it leads, so one line a minute.
        if log_due(&mut self.mismatch_logged) {
            error!(
                view = view.0,
                proposer = proposer.0,
                height = ours.height.0,
                our_state_root = %ours.state_root.to_hex(),
                their_state_root = %theirs.state_root.to_hex(),
                our_receipts_root = %ours.receipts_root.to_hex(),
                their_receipts_root = %theirs.receipts_root.to_hex(),
                "a proposal certifies an execution result that differs from this validator's own: no vote cast. If other validators' proposals differ too, this validator's execution diverged (check its binary and data); otherwise the proposer lies"
            );
        }
    }

    fn evidence(&mut self, e: &Evidence) {
        self.metrics.equivocation();
        warn!(
            signer = e.signer.0,
            round = e.round,
            kind = e.first.kind(),
            "equivocation evidence"
        );
        // Kept for `ledger_getEvidence`. Consensus does not depend on it: a
        // failed write loses only this record, so it is logged, not fatal.
        let kind = match e.first {
            Statement::Proposal(_) => 0,
            Statement::Vote(_) => 1,
            Statement::Timeout(_) => 2,
            Statement::Checkpoint(_) => 3,
        };
        let rec = phalanx_storage::EvidenceRecord {
            signer: e.signer.0,
            round: e.round,
            kind,
            bytes: encode(&phalanx_consensus::EvidenceReport {
                first: e.first.clone(),
                second: e.second.clone(),
            }),
        };
        if let Err(err) = self.store.put_evidence(&rec) {
            warn!(signer = e.signer.0, "evidence not stored: {err}");
        }
    }

    fn graylisted(&mut self, peer: ValidatorIndex, until: phalanx_consensus::Time) {
        self.metrics.graylisting();
        warn!(
            peer = peer.0,
            for_ms = until.0.saturating_sub(now().0),
            "validator graylisted: too many invalid messages; its frames are dropped unread for a while"
        );
    }

    fn dropped(&mut self, from: ValidatorIndex) {
        self.metrics.invalid(Some(from.0), "graylisted");
    }

    fn served(&mut self, to: ValidatorIndex, from: Height, blocks: usize) {
        debug!(
            peer = to.0,
            from = from.0,
            blocks,
            "serving committed blocks"
        );
    }
}

impl NodePorts {
    /// Sends what the attacker planned, each message after its delay.
    #[cfg(feature = "byzantine")]
    fn perform(&self, planned: Vec<crate::byzantine::Planned>) {
        use crate::byzantine::To;
        for p in planned {
            let bytes = Arc::new(encode(&p.msg));
            let count = match p.to {
                To::One(_) => 1,
                To::All => self.net.peer_count(),
            };
            self.metrics.sent(p.msg.kind(), bytes.len(), count);
            let net = self.net.clone();
            let send = move || match p.to {
                To::One(v) => net.send(v, bytes),
                To::All => net.broadcast(bytes),
            };
            if p.after.is_zero() {
                send();
            } else {
                tokio::spawn(async move {
                    tokio::time::sleep(p.after).await;
                    send();
                });
            }
        }
    }

    /// Remembers an uncommitted block's parent and the hashes of its items'
    /// exact bytes (for the mempool, now and at execution); returns the
    /// hashes.
    fn track_block(&mut self, b: &Block) -> Arc<Vec<Digest>> {
        // Hashed once per block: the validity rule did it at the check.
        let raw = self
            .validity
            .raw_hashes(&b.id())
            .unwrap_or_else(|| Arc::new(raw_hashes(b)));
        // A block persisted again (re-proposed, or fetched after a vote)
        // keeps its first time, which commit latency is measured from.
        let at = self.seen.get(&b.id()).map_or_else(Instant::now, |s| s.at);
        self.seen.insert(
            b.id(),
            SeenBlock {
                parent: b.header.parent,
                height: b.height().0,
                raw: raw.clone(),
                at,
            },
        );
        raw
    }

    /// Forgets blocks at or below the executed height.
    fn executed(&mut self, height: u64) {
        self.seen.retain(|_, s| s.height > height);
    }

    /// True if one of `ancestors` above the committed height carries
    /// transactions.
    fn uncommitted_work(&self, ancestors: &HashSet<Digest>, committed: Height) -> bool {
        ancestors.iter().any(|id| {
            self.seen
                .get(id)
                .is_some_and(|s| s.height > committed.0 && !s.raw.is_empty())
        })
    }

    /// The blocks a proposal on `parent` extends, down to the last executed
    /// one: their transactions are in flight and never proposed again.
    fn ancestors(&self, parent: Digest) -> HashSet<Digest> {
        let mut out = HashSet::new();
        let mut id = parent;
        while let Some(seen) = self.seen.get(&id) {
            if !out.insert(id) {
                break;
            }
            id = seen.parent;
        }
        out
    }
}

/// The executor thread: executes committed blocks into the store in
/// height order, updates the mempool and the commit stream, records stable
/// checkpoints, and reports each block back. It stops at the first store
/// error (reported) or when the runtime drops its queue.
fn execute_loop(
    store: Arc<Store>,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    jobs: std_mpsc::Receiver<Job>,
    done: mpsc::UnboundedSender<Result<ExecResult, StorageError>>,
) {
    let mut last_commit_at: Option<Instant> = None;
    while let Ok(job) = jobs.recv() {
        let result = match job {
            Job::Execute {
                block,
                cert,
                items,
                first_seen,
            } => execute_one(
                &store,
                &shared,
                &metrics,
                &block,
                &cert,
                items,
                first_seen,
                &mut last_commit_at,
            )
            .map(Some),
            Job::Checkpoint(cp) => {
                info!(height = cp.payload.height.0, "stable checkpoint");
                store
                    .put_stable_checkpoint(&cp)
                    .map(|()| metrics.checkpoint(cp.payload.height.0))
                    .map(|()| None)
            }
        };
        let failed = result.is_err();
        // A runtime that stopped listening is shutting down: the blocks
        // already handed over are still written.
        if let Some(r) = result.transpose() {
            let _ = done.send(r);
        }
        if failed {
            return;
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn execute_one(
    store: &Store,
    shared: &Shared,
    metrics: &Metrics,
    block: &Block,
    cert: &QuorumCert,
    items: KnownItems,
    first_seen: Option<Instant>,
    last_commit_at: &mut Option<Instant>,
) -> Result<ExecResult, StorageError> {
    let h = block.height();
    let span = info_span!("execute", height = h.0);
    let _enter = span.enter();
    let id = block.id();
    // Transactions the mempool decoded and verified on entry, or the
    // validity rule before the vote, are neither decoded (curve points
    // decompressed) nor verified again. The pool is locked only to look
    // them up by the items' hashes, not while the rest decode.
    let raw = items.raw.unwrap_or_else(|| Arc::new(raw_hashes(block)));
    let known: Vec<Option<_>> = {
        let pool = shared.pool();
        raw.iter()
            .map(|d| {
                pool.verified_by_bytes(d)
                    .or_else(|| items.vouched.get(d).cloned())
            })
            .collect()
    };
    let prepared = prepare_payload_trusting(&block.payload, |i| known.get(i).cloned().flatten());
    let res = store.apply_prepared(block, cert, prepared)?;
    metrics.storage(StorageOp::Execute, res.timings.execute);
    metrics.storage(StorageOp::StateRoot, res.timings.state_root);
    metrics.storage(StorageOp::BlockApply, res.timings.write);
    let now_at = Instant::now();
    metrics.committed_block(
        first_seen.map(|t| now_at - t),
        last_commit_at.map(|t| now_at - t),
        block.payload.len(),
        res.receipts.iter().map(|r| r.status.name()),
    );
    *last_commit_at = Some(now_at);
    let applied: Vec<Digest> = res
        .receipts
        .iter()
        .filter(|r| r.status == phalanx_ledger::TxStatus::Applied)
        .map(|r| r.tx_hash)
        .collect();
    shared.pool().committed(
        h.0,
        &applied,
        |sender| store.account_by_address(sender).map_or(0, |a| a.nonce),
        crate::shared::now_ms(),
    );
    shared.note_commit(h.0);
    shared.publish_mempool();
    let applied = applied.len();
    info!(
        height = h.0,
        block = %id.to_hex(),
        view = block.header.view.0,
        txs = res.receipts.len(),
        applied,
        state_root = %res.head.state_root.to_hex(),
        "committed"
    );
    // No subscriber is not an error.
    let _ = shared.commits.send(CommitNotice {
        height: h.0,
        block_id: id,
        state_root: res.head.state_root,
        receipts: Arc::new(res.receipts),
    });
    Ok(res.exec)
}

/// A validator's own settings the runtime needs (from its config file).
#[derive(Clone, Copy, Debug)]
pub struct LocalOptions {
    /// How long a leader with nothing to order waits before proposing an
    /// empty block.
    pub empty_block_delay: Duration,
    /// Committed blocks kept below the stable checkpoint for peers.
    pub retained_blocks: u64,
    /// When a pending proposable transaction counts as overdue.
    pub overdue_tx: Duration,
}

/// The consensus shell of one validator.
pub struct Runtime {
    driver: Driver<NodePorts>,
    done: mpsc::UnboundedReceiver<Result<ExecResult, StorageError>>,
    executor: std::thread::JoinHandle<()>,
    status: watch::Sender<Status>,
    /// What screening threads admit frames under (D16).
    admission: watch::Sender<Arc<phalanx_consensus::Admission>>,
    metrics: Arc<Metrics>,
    shared: Arc<Shared>,
    /// Blocks peers keep below their stable checkpoint (`None`: never
    /// give up on block sync).
    catch_up_limit: Option<u64>,
    /// The executed height and when it last moved.
    progress: (u64, Instant),
    overdue_tx: Duration,
    /// The core's count of proposals refused by the lock, as last exported.
    lock_refused: u64,
    /// When the pool was last checked for overdue transactions.
    overdue_checked: Instant,
    /// When overdue transactions were last logged (at most once per
    /// [`OVERDUE_LOG_EVERY`]: a client can keep the count up).
    overdue_logged: Option<Instant>,
}

/// Overdue transactions are logged at most this often.
const OVERDUE_LOG_EVERY: Duration = Duration::from_secs(10);

/// At most one key-used-elsewhere line (P21) per this interval.
const OWN_KEY_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// The event loop wakes at least this often (to check [`FELL_BEHIND_AFTER`]).
const BEHIND_CHECK_EVERY: Duration = Duration::from_secs(1);

/// How long a validator further behind than peers keep blocks waits for a
/// commit before it restarts to state-sync.
pub const FELL_BEHIND_AFTER: Duration = Duration::from_secs(20);

impl Runtime {
    /// Builds the driver from the store (resuming where the store left
    /// off), starts the executor thread and performs the core's first
    /// actions. `status` is where the rest of the node reads consensus
    /// status from.
    // One call builds the shell from everything it needs; a builder would
    // only move the list elsewhere.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        genesis: &Genesis,
        key: KeyPair,
        store: Arc<Store>,
        record: SafetyRecord,
        start: StartState,
        net: Network,
        local: LocalOptions,
        shared: Arc<Shared>,
        status: watch::Sender<Status>,
    ) -> Result<Runtime, RuntimeError> {
        let mut cfg = core_config(genesis)?;
        // What this validator keeps of committed blocks, in memory too: a
        // peer further behind state-syncs (and the runtime gives up on
        // block sync past it, see `check_behind`).
        cfg.retained_blocks = cfg
            .retained_blocks
            .min(local.retained_blocks)
            .max(cfg.checkpoint_interval);
        let empty_block_delay = local.empty_block_delay;
        let genesis_block = Block::genesis(&genesis.consensus_chain(), genesis.genesis_time_ms);
        let head = store.head();
        let block = store
            .block(Height(head.height))?
            .ok_or(RuntimeError::Missing {
                what: "head block",
                height: head.height,
            })?;
        let cert = store
            .cert(Height(head.height))?
            .ok_or(RuntimeError::Missing {
                what: "head certificate",
                height: head.height,
            })?;
        let safety = match start {
            // Never signed: a new validator, perhaps state-synced (its
            // highest certificate is then the restored checkpoint's commit
            // certificate).
            StartState::Fresh if head.height > 0 => SafetyState::initial(cert.clone()),
            StartState::Fresh => SafetyState::initial(genesis_qc(&genesis_block)),
            StartState::Resume(mut s) => {
                // A recovering validator's record was made before its state
                // sync: follow on from what the store holds now.
                if s.quarantine.is_some() && cert.payload.view > s.high_qc.payload.view {
                    s.high_qc = cert.clone();
                }
                *s
            }
        };
        let quarantined = safety.quarantine.is_some();
        let pending = store.pending_blocks()?;
        let restore = Restore {
            safety,
            committed: (block, cert),
            stable: store.stable_checkpoint()?,
            blocks: pending.clone(),
            executed: store.recent_results(EXEC_RESULTS_KEPT)?,
        };
        let metrics = net.metrics().clone();
        if let Some(cp) = &restore.stable {
            metrics.checkpoint(cp.payload.height.0);
        }
        let (jobs_tx, jobs_rx) = std_mpsc::channel();
        let (done_tx, done) = mpsc::unbounded_channel();
        let executor = {
            let (store, shared, metrics) = (store.clone(), shared.clone(), metrics.clone());
            std::thread::Builder::new()
                .name("executor".into())
                .spawn(move || execute_loop(store, shared, metrics, jobs_rx, done_tx))
                .map_err(RuntimeError::Spawn)?
        };
        let validity = LedgerValidity::new(
            store.clone(),
            shared.clone(),
            genesis.chain_id.clone(),
            genesis.params.max_block_txs as usize,
        );
        let mut ports = NodePorts {
            validity: validity.clone(),
            store,
            record,
            quarantined,
            net,
            shared: shared.clone(),
            metrics: metrics.clone(),
            max_block_txs: genesis.params.max_block_txs as usize,
            seen: HashMap::new(),
            jobs: jobs_tx,
            elsewhere_logged: None,
            mismatch_logged: None,
            #[cfg(feature = "byzantine")]
            attacker: None,
        };
        // Blocks persisted before a restart: a leader must know them as
        // ancestors (never propose their transactions again) and the
        // validity rule must see through them.
        for b in &pending {
            let _ = ports.validity.note_block(b);
            ports.track_block(b);
        }
        let driver_cfg = DriverConfig {
            empty_block_delay_ms: empty_block_delay.as_millis() as u64,
        };
        let driver = Driver::start(
            cfg,
            key,
            Box::new(validity),
            restore,
            ports,
            driver_cfg,
            now(),
        )?;
        info!(
            height = head.height,
            view = driver.core().view().0,
            "consensus resumed"
        );
        let (admission, _) = watch::channel(Arc::new(driver.admission(now())));
        let mut rt = Runtime {
            driver,
            done,
            executor,
            status,
            admission,
            metrics,
            shared,
            catch_up_limit: None,
            progress: (head.height, Instant::now()),
            overdue_tx: local.overdue_tx,
            overdue_checked: Instant::now(),
            overdue_logged: None,
            lock_refused: 0,
        };
        rt.publish();
        Ok(rt)
    }

    /// Turns this validator into an attacker running `modes` (feature
    /// `byzantine`, test builds only). Returns the flood to spawn when
    /// `spam` is among them.
    #[cfg(feature = "byzantine")]
    pub fn attack(
        &mut self,
        modes: crate::byzantine::Modes,
        key: KeyPair,
        genesis: &Genesis,
    ) -> Option<crate::byzantine::Spammer> {
        use crate::byzantine::{Attacker, Mode, Spammer};
        let me = self.driver.core().index();
        let chain = genesis.consensus_chain();
        let spam = modes.has(Mode::Spam).then(|| Spammer {
            key: key.clone(),
            me,
            chain: chain.clone(),
            genesis_qc: genesis_qc(&Block::genesis(&chain, genesis.genesis_time_ms)),
            genesis: genesis.hash(),
        });
        self.driver.ports_mut().attacker = Some(Attacker::new(
            modes,
            key,
            me,
            genesis.validators.len(),
            chain,
            Duration::from_millis(genesis.params.base_timeout_ms),
        ));
        spam
    }

    fn publish(&mut self) {
        let core = self.driver.core();
        let lock_refused = core.stats().lock_refused;
        if lock_refused > self.lock_refused {
            self.metrics.lock_refused(lock_refused - self.lock_refused);
            self.lock_refused = lock_refused;
        }
        let view = core.view();
        let s = Status {
            height: self.driver.executed_height(),
            view,
            leader: core.leader(),
        };
        self.metrics.set_consensus(s.height, s.view);
        self.status.send_if_modified(|old| {
            let changed = *old != s;
            *old = s;
            changed
        });
        let adm = self.driver.admission(now());
        self.admission.send_if_modified(|old| {
            let changed = **old != adm;
            if changed {
                *old = Arc::new(adm);
            }
            changed
        });
    }

    /// Starts screening `inbound` on [`screening::thread_count`] threads
    /// (D16): the queue [`Runtime::run`] takes.
    pub fn start_screening(
        &self,
        inbound: mpsc::Receiver<Inbound>,
    ) -> Result<mpsc::Receiver<ScreenedFrame>, RuntimeError> {
        let screens = (0..screening::thread_count())
            .map(|_| self.driver.screen())
            .collect();
        screening::start(
            screens,
            self.admission.subscribe(),
            inbound,
            self.metrics.clone(),
        )
        .map_err(RuntimeError::Spawn)
    }

    /// Runs until `shutdown` fires or a fatal error, then lets the executor
    /// finish what it was handed.
    pub async fn run(
        mut self,
        inbound: mpsc::Receiver<ScreenedFrame>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(), RuntimeError> {
        let result = self.event_loop(inbound, shutdown).await;
        let Runtime {
            driver, executor, ..
        } = self;
        // Dropping the driver drops the executor's queue: it finishes the
        // blocks already handed to it and ends.
        drop(driver);
        let _ = tokio::task::spawn_blocking(move || executor.join()).await;
        result
    }

    /// Gives up on block sync (returning [`RuntimeError::FellBehind`])
    /// when peers certify blocks more than `blocks` ahead of this
    /// validator's executed height and nothing has committed for
    /// [`FELL_BEHIND_AFTER`]: peers no longer keep the blocks in between.
    pub fn set_catch_up_limit(&mut self, blocks: u64) {
        self.catch_up_limit = Some(blocks);
    }

    /// Counts the pool's overdue transactions into the metric, and logs
    /// them now and then.
    fn check_overdue(&mut self) {
        let n = self
            .shared
            .pool()
            .overdue(crate::shared::now_ms(), self.overdue_tx.as_millis() as u64);
        self.metrics.set_mempool_overdue(n);
        if n > 0
            && self
                .overdue_logged
                .is_none_or(|t| t.elapsed() >= OVERDUE_LOG_EVERY)
        {
            self.overdue_logged = Some(Instant::now());
            warn!(
                overdue = n,
                bound_ms = self.overdue_tx.as_millis() as u64,
                "proposable transactions pending past the bound: leaders may be censoring them"
            );
        }
    }

    fn check_behind(&mut self) -> Result<(), RuntimeError> {
        let executed = self.driver.executed_height().0;
        if executed != self.progress.0 {
            self.progress = (executed, Instant::now());
            return Ok(());
        }
        let Some(limit) = self.catch_up_limit else {
            return Ok(());
        };
        let seen = self
            .shared
            .best_seen_height
            .load(std::sync::atomic::Ordering::Relaxed);
        let stalled = self.progress.1.elapsed();
        if seen > executed.saturating_add(limit) && stalled >= FELL_BEHIND_AFTER {
            return Err(RuntimeError::FellBehind {
                committed: executed,
                seen,
                secs: stalled.as_secs(),
            });
        }
        Ok(())
    }

    async fn event_loop(
        &mut self,
        mut inbound: mpsc::Receiver<ScreenedFrame>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), RuntimeError> {
        loop {
            self.check_behind()?;
            if self.overdue_checked.elapsed() >= BEHIND_CHECK_EVERY {
                self.overdue_checked = Instant::now();
                self.check_overdue();
            }
            let wait = match self.driver.next_deadline() {
                Some(at) => Duration::from_millis(at.0.saturating_sub(now().0)),
                None => Duration::from_secs(3600),
            };
            // D5: while too many commits wait for execution, only execution
            // results, time and shutdown are taken; peers' messages queue
            // in the (bounded) inbound channel.
            let input = self.driver.accepts_input();
            let want_payload = input && self.driver.awaiting_payload();
            let shared = self.shared.clone();
            let new_txs = async {
                if want_payload {
                    shared.new_txs.notified().await
                } else {
                    futures::future::pending().await
                }
            };
            tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    info!("consensus stopping");
                    return Ok(());
                }
                done = self.done.recv() => match done {
                    Some(Ok(e)) => {
                        self.driver.ports_mut().executed(e.height.0);
                        self.driver.on_executed(now(), e)?;
                    }
                    Some(Err(e)) => return Err(e.into()),
                    None => return Err(RuntimeError::ExecutorStopped),
                },
                frame = inbound.recv(), if input => {
                    let Some(f) = frame else { return Ok(()) };
                    self.driver.on_screened(now(), f.from, f.outcome, f.len)?;
                }
                _ = new_txs => self.driver.payload_available(now())?,
                _ = tokio::time::sleep(wait.min(BEHIND_CHECK_EVERY)) => self.driver.tick(now())?,
            }
            self.publish();
        }
    }
}

/// Runs the runtime inside a span naming this validator.
pub async fn run_instrumented(
    rt: Runtime,
    inbound: mpsc::Receiver<ScreenedFrame>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), RuntimeError> {
    let me = rt.driver.core().index().0;
    rt.run(inbound, shutdown)
        .instrument(info_span!("consensus", validator = me))
        .await
}
