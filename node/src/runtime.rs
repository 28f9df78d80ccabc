//! The runtime: drives the pure consensus core with real time, the network
//! and the store.
//!
//! This module owns the event loop: inbound frames are decoded and verified
//! (the core only ever sees verified messages), timers fire, and the core's
//! actions are carried out strictly in order, so that a safety-state write
//! is durable before any message it guards is queued for the network, and a
//! block is persisted before the vote for it. Committed blocks are executed
//! into the store and their results fed back. It never makes a protocol
//! decision itself.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use phalanx_consensus::VerifiedMessage;
use phalanx_consensus::{
    Action, Block, Config as CoreConfig, Core, Event, Height, PayloadValidator, Restore,
    SafetyState, Time, Verifier, View, genesis_qc,
};
use phalanx_crypto::{Digest, KeyPair, encode};
use phalanx_ledger::{Genesis, decode_payload, encode_payload, prepare_payload_trusting};
use phalanx_storage::Store;
use tokio::sync::{mpsc, watch};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::metrics::{self, Metrics};
use crate::net::{Inbound, Network};
use crate::shared::{CommitNotice, Shared};

/// Runtime failures: all fatal (the node stops rather than run on).
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The store failed.
    #[error(transparent)]
    Storage(#[from] phalanx_storage::StorageError),
    /// The consensus configuration is unusable.
    #[error(transparent)]
    Consensus(#[from] phalanx_consensus::ConfigError),
    /// Genesis is unusable.
    #[error(transparent)]
    Ledger(#[from] phalanx_ledger::LedgerError),
    /// The store is missing a record it must have.
    #[error("store: {0}")]
    Missing(String),
}

/// What the rest of the node can see of consensus.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// Last committed height.
    pub height: u64,
    /// Current view.
    pub view: u64,
    /// Leader of the current view.
    pub leader: u16,
}

/// A payload is votable if it decodes as a list of at most
/// `MAX_TXS_PER_BLOCK` transactions. Transactions that then fail (bad
/// signature, bad nonce…) get failure receipts: execution is total, so a
/// block of them is harmless, and checking signatures here would verify
/// each twice.
struct LedgerPayloads;

impl PayloadValidator for LedgerPayloads {
    fn is_valid(&self, payload: &[u8]) -> bool {
        decode_payload(payload).is_ok()
    }
}

fn now() -> Time {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    Time(ms)
}

/// The consensus configuration of a chain, from its genesis.
pub fn core_config(genesis: &Genesis) -> Result<CoreConfig, RuntimeError> {
    let mut cfg = CoreConfig::new(
        genesis.chain_id.clone(),
        genesis.validator_set()?,
        genesis.genesis_time_ms,
    );
    cfg.checkpoint_interval = genesis.params.checkpoint_interval;
    cfg.base_timeout_ms = genesis.params.base_timeout_ms;
    cfg.max_timeout_ms = genesis.params.max_timeout_ms;
    cfg.max_payload_bytes = genesis.params.max_block_bytes as usize;
    Ok(cfg)
}

/// A block persisted for consensus, as the runtime remembers it.
struct SeenBlock {
    parent: Digest,
    height: u64,
    /// Hashes of the payload items' exact bytes.
    raw: Vec<Digest>,
    /// When this validator first persisted it.
    at: Instant,
}

fn raw_hashes(b: &Block) -> Vec<Digest> {
    decode_payload(&b.payload)
        .map(|items| items.iter().map(|i| Digest::of(i)).collect())
        .unwrap_or_default()
}

/// How often one peer may have a message from beyond the view window
/// verified, ms.
const FAR_VIEW_INTERVAL_MS: u64 = 250;

/// The consensus driver.
pub struct Runtime {
    core: Core,
    verifier: Verifier,
    store: Arc<Store>,
    net: Network,
    shared: Option<Arc<Shared>>,
    max_block_txs: usize,
    timer: Option<(View, Time)>,
    /// A payload this validator owes the core as leader, and when to hand
    /// it over if no transactions arrive before then.
    payload_due: Option<(View, Time)>,
    /// When each peer last had a message from beyond the window verified.
    far_view_at: std::collections::HashMap<u16, u64>,
    /// A stable checkpoint above the head, recorded once the head reaches it.
    deferred_checkpoint: Option<phalanx_consensus::CheckpointCert>,
    /// Blocks persisted and not yet executed, by id.
    seen: std::collections::HashMap<Digest, SeenBlock>,
    payload_height: u64,
    payload_max_bytes: usize,
    empty_block_delay: Duration,
    status: watch::Sender<Status>,
    queue: VecDeque<Action>,
    metrics: Arc<Metrics>,
    last_commit_at: Option<Instant>,
}

impl Runtime {
    /// Builds the core from the store (resuming where the store left off)
    /// and returns the runtime with the core's first actions queued.
    pub fn new(
        genesis: &Genesis,
        key: KeyPair,
        store: Arc<Store>,
        net: Network,
        empty_block_delay: Duration,
    ) -> Result<(Runtime, watch::Receiver<Status>), RuntimeError> {
        let cfg = core_config(genesis)?;
        let genesis_block = Block::genesis(&genesis.chain_id, genesis.genesis_time_ms);
        let verifier = Verifier::new(
            cfg.validators.clone(),
            cfg.chain_id.clone(),
            &genesis_block,
            cfg.max_payload_bytes,
        );
        let head = store.head();
        let block = store
            .block(head.height)?
            .ok_or_else(|| RuntimeError::Missing(format!("head block {}", head.height)))?;
        let cert = store
            .cert(head.height)?
            .ok_or_else(|| RuntimeError::Missing(format!("head certificate {}", head.height)))?;
        let safety = match store.load_safety()? {
            Some(s) => s,
            // Never signed from this store: a new validator, or one whose
            // data was wiped and state-synced (its highest certificate is
            // then the commit certificate of the restored checkpoint).
            None if head.height > 0 => SafetyState::initial(cert.clone()),
            None => SafetyState::initial(genesis_qc(&genesis_block)),
        };
        let restore = Restore {
            safety,
            committed: (block, cert),
            stable: store.stable_checkpoint()?,
            blocks: store.pending_blocks()?,
        };
        let (core, actions) = Core::restore(cfg, key, Box::new(LedgerPayloads), restore, now())?;
        info!(
            height = head.height,
            view = core.view().0,
            "consensus resumed"
        );
        let (status, rx) = watch::channel(Status::default());
        let metrics = net.metrics().clone();
        if let Some(cp) = store.stable_checkpoint()? {
            metrics.checkpoint(cp.payload.height.0);
        }
        let rt = Runtime {
            core,
            verifier,
            store,
            net,
            shared: None,
            max_block_txs: genesis.params.max_block_txs as usize,
            timer: None,
            payload_due: None,
            deferred_checkpoint: None,
            far_view_at: std::collections::HashMap::new(),
            seen: std::collections::HashMap::new(),
            payload_height: 0,
            payload_max_bytes: 0,
            empty_block_delay,
            status,
            queue: actions.into(),
            metrics,
            last_commit_at: None,
        };
        rt.publish();
        Ok((rt, rx))
    }

    /// Connects the runtime to the mempool and the commit stream.
    pub fn attach(&mut self, shared: Arc<Shared>) {
        self.shared = Some(shared);
    }

    fn publish(&self) {
        let view = self.core.view();
        let s = Status {
            height: self.core.committed().0.0,
            view: view.0,
            leader: self.core.config().leader(view).0,
        };
        self.metrics.set_consensus(s.height, s.view);
        self.status.send_if_modified(|old| {
            let changed = *old != s;
            *old = s;
            changed
        });
    }

    /// Runs until `shutdown` fires or a fatal error.
    pub async fn run(
        mut self,
        mut inbound: mpsc::Receiver<Inbound>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), RuntimeError> {
        self.drain()?;
        loop {
            let sleep = match self.timer {
                Some((_, at)) => {
                    let wait = at.0.saturating_sub(now().0);
                    tokio::time::sleep(Duration::from_millis(wait))
                }
                None => tokio::time::sleep(Duration::from_secs(3600)),
            };
            let propose = match self.payload_due {
                Some((_, at)) => {
                    tokio::time::sleep(Duration::from_millis(at.0.saturating_sub(now().0)))
                }
                None => tokio::time::sleep(Duration::from_secs(3600)),
            };
            let shared = self.shared.clone();
            let due = self.payload_due.is_some();
            let new_txs = async {
                match &shared {
                    Some(s) if due => s.new_txs.notified().await,
                    _ => futures::future::pending().await,
                }
            };
            tokio::select! {
                _ = new_txs => {
                    if let Some((view, _)) = self.payload_due.take() {
                        let acts = self.propose(view);
                        self.queue.extend(acts);
                    }
                }
                _ = shutdown.changed() => {
                    info!("consensus stopping");
                    return Ok(());
                }
                frame = inbound.recv() => {
                    let Some(f) = frame else { return Ok(()) };
                    self.on_frame(f)?;
                }
                _ = propose => {
                    if let Some((view, at)) = self.payload_due
                        && now() >= at
                    {
                        self.payload_due = None;
                        let acts = self.propose(view);
                        self.queue.extend(acts);
                    }
                }
                _ = sleep => {
                    if let Some((view, at)) = self.timer
                        && now() >= at
                    {
                        self.timer = None;
                        info!(view = view.0, "view timed out");
                        self.metrics.view_timeout();
                        let acts = self.core.handle(now(), Event::TimerFired { view });
                        self.queue.extend(acts);
                    }
                }
            }
            self.drain()?;
        }
    }

    fn on_frame(&mut self, f: Inbound) -> Result<(), RuntimeError> {
        // Cheap checks before signatures: a message from beyond the view
        // window is verified (for the certificates it carries, which is how
        // a lagging validator catches up) at most once per peer per
        // `FAR_VIEW_INTERVAL`; the rest are dropped unverified.
        let view = self.core.view().0;
        let window = self.core.config().future_view_window;
        let now_ms = now().0;
        let last = self.far_view_at.get(&f.from.0).copied();
        let mut admitted_far = false;
        let admit = |m: &phalanx_consensus::Message| -> Result<(), &'static str> {
            match m.view() {
                Some(v) if v.0 > view.saturating_add(window) => {
                    if last.is_some_and(|t| now_ms < t + FAR_VIEW_INTERVAL_MS) {
                        return Err("beyond the view window");
                    }
                    admitted_far = true;
                    Ok(())
                }
                _ => Ok(()),
            }
        };
        let started = Instant::now();
        let verified = self.verifier.verify_bytes_if(&f.bytes, admit);
        self.metrics
            .verified("consensus_message", started.elapsed());
        if admitted_far {
            self.far_view_at.insert(f.from.0, now_ms);
        }
        match verified {
            Ok(msg) => {
                self.metrics.received(msg.kind(), f.bytes.len());
                if let VerifiedMessage::BlockRequest(r) = &msg
                    && self.serve_from_store(f.from, r)?
                {
                    return Ok(());
                }
                if let (VerifiedMessage::Proposal(p), Some(s)) = (&msg, &self.shared) {
                    // The chain's tip as peers see it (a proposal runs two
                    // blocks ahead of commits), for readiness.
                    s.note_seen(p.payload.block.height().0.saturating_sub(2));
                }
                let acts = self
                    .core
                    .handle(now(), Event::Message { from: f.from, msg });
                self.queue.extend(acts);
            }
            Err(e) => {
                self.metrics
                    .invalid(Some(f.from.0), metrics::invalid_reason(&e));
                debug!(peer = f.from.0, "message refused: {e}");
            }
        }
        Ok(())
    }

    /// Performs queued actions in order. Actions caused by one (the core's
    /// answer to an execution result or a payload) go after everything
    /// already queued: each list keeps its own order, which is all the core
    /// asks for (a `Persist` precedes the messages of its own list).
    fn drain(&mut self) -> Result<(), RuntimeError> {
        while let Some(a) = self.queue.pop_front() {
            let more = self.perform(a)?;
            self.queue.extend(more);
        }
        self.publish();
        Ok(())
    }

    fn perform(&mut self, a: Action) -> Result<Vec<Action>, RuntimeError> {
        match a {
            Action::Persist(s) => {
                let t = Instant::now();
                self.store.put_safety(&s)?;
                self.metrics.storage("safety_write", t.elapsed());
            }
            Action::PersistBlock(b) => {
                let t = Instant::now();
                self.store.put_pending_block(&b)?;
                self.metrics.storage("block_write", t.elapsed());
                let raw = self.track_block(&b);
                if let Some(s) = &self.shared
                    && !raw.is_empty()
                {
                    s.pool().mark_in_flight(&raw, b.height().0, b.id());
                }
            }
            Action::Send { to, msg } => {
                let bytes = Arc::new(encode(&msg));
                self.metrics.sent(msg.kind(), bytes.len(), 1);
                self.net.send(to, bytes);
            }
            Action::Broadcast(msg) => {
                let bytes = Arc::new(encode(&msg));
                self.metrics
                    .sent(msg.kind(), bytes.len(), self.net.peer_count());
                self.net.broadcast(bytes);
            }
            Action::SetTimer { view, at } => {
                self.timer = Some((view, at));
            }
            Action::RequestPayload {
                view,
                height,
                max_bytes,
            } => {
                debug!(view = view.0, height = height.0, "payload requested");
                self.payload_height = height.0;
                self.payload_max_bytes = max_bytes;
                let ready = self
                    .shared
                    .as_ref()
                    .is_some_and(|s| s.pool().has_proposable());
                if ready {
                    return Ok(self.propose(view));
                }
                // Nothing to order yet: wait a little (or until transactions
                // arrive) before proposing an empty block, so an idle chain
                // does not spin.
                self.payload_due = Some((
                    view,
                    Time(now().0 + self.empty_block_delay.as_millis() as u64),
                ));
            }
            Action::Commit { block, cert } => {
                let h = block.height();
                let span = info_span!("commit", height = h.0);
                let id = block.id();
                let seen = self.seen.get(&id);
                let first_seen = seen.map(|s| s.at);
                let prepared = match &self.shared {
                    // Transactions the mempool decoded and verified on
                    // entry are neither decoded (curve points decompressed)
                    // nor verified again. The pool is locked only to look
                    // them up by the items' hashes (kept from when the
                    // block was persisted), not while the rest decode.
                    Some(s) => {
                        let computed;
                        let raw: &[Digest] = match seen {
                            Some(seen) => &seen.raw,
                            None => {
                                computed = raw_hashes(&block);
                                &computed
                            }
                        };
                        let known: Vec<Option<_>> = {
                            let pool = s.pool();
                            raw.iter().map(|d| pool.verified_by_bytes(d)).collect()
                        };
                        prepare_payload_trusting(&block.payload, |i| {
                            known.get(i).cloned().flatten()
                        })
                    }
                    None => phalanx_ledger::prepare_payload(&block.payload),
                };
                let res = span.in_scope(|| self.store.commit_prepared(&block, &cert, prepared))?;
                let m = &self.metrics;
                m.storage("execute", res.timings.execute);
                m.storage("state_root", res.timings.state_root);
                m.storage("commit_write", res.timings.write);
                let now_at = Instant::now();
                m.committed_block(
                    first_seen.map(|t| now_at - t),
                    self.last_commit_at.map(|t| now_at - t),
                    block.payload.len(),
                    res.receipts.iter().map(|r| r.status.name()),
                );
                self.last_commit_at = Some(now_at);
                if let Some(s) = &self.shared {
                    let hashes: Vec<Digest> = res.receipts.iter().map(|r| r.tx_hash).collect();
                    let store = &self.store;
                    s.pool().committed(h.0, &hashes, |sender| {
                        store.account_by_address(sender).map_or(0, |a| a.nonce)
                    });
                    s.note_commit(h.0);
                    s.publish_mempool();
                    // No subscriber is not an error.
                    let _ = s.commits.send(CommitNotice {
                        height: h.0,
                        block_id: id,
                        state_root: res.head.state_root,
                        receipts: Arc::new(res.receipts.clone()),
                    });
                }
                let applied = res
                    .receipts
                    .iter()
                    .filter(|r| r.status == phalanx_ledger::TxStatus::Applied)
                    .count();
                if let Some(cp) = self
                    .deferred_checkpoint
                    .take_if(|cp| cp.payload.height.0 <= h.0)
                {
                    info!(height = cp.payload.height.0, "stable checkpoint");
                    self.store.put_stable_checkpoint(&cp)?;
                    self.metrics.checkpoint(cp.payload.height.0);
                }
                info!(
                    height = h.0,
                    block = %id.to_hex(),
                    view = block.header.view.0,
                    txs = res.receipts.len(),
                    applied,
                    state_root = %res.head.state_root.to_hex(),
                    "committed"
                );
                return Ok(self.core.handle(
                    now(),
                    Event::Executed {
                        height: Height(h.0),
                        block_id: id,
                        state_root: res.head.state_root,
                    },
                ));
            }
            Action::StableCheckpoint(cp) => {
                // A validator catching up can see a checkpoint certified
                // before it has executed that height: keep it until then.
                if cp.payload.height.0 <= self.store.head().height {
                    info!(height = cp.payload.height.0, "stable checkpoint");
                    self.store.put_stable_checkpoint(&cp)?;
                    self.metrics.checkpoint(cp.payload.height.0);
                } else if self
                    .deferred_checkpoint
                    .as_ref()
                    .is_none_or(|d| d.payload.height < cp.payload.height)
                {
                    self.deferred_checkpoint = Some(cp);
                }
            }
            Action::Evidence(e) => {
                self.metrics.equivocation();
                warn!(
                    signer = e.signer.0,
                    round = e.round,
                    "equivocation evidence"
                );
            }
        }
        Ok(Vec::new())
    }
}

impl Runtime {
    /// Answers a block request for a committed block from the store, which
    /// keeps far more history than the core's memory. Returns false if the
    /// block is not committed here (the core answers for uncommitted ones).
    fn serve_from_store(
        &mut self,
        to: phalanx_crypto::ValidatorIndex,
        r: &phalanx_consensus::BlockRequest,
    ) -> Result<bool, RuntimeError> {
        let Some(top) = self.store.height_of(&r.id)? else {
            return Ok(false);
        };
        let count = (r.count as usize).min(phalanx_consensus::MAX_SYNC_BLOCKS);
        let mut blocks = Vec::new();
        let mut bytes = 0usize;
        let mut h = top;
        // Genesis is never sent: every validator has it.
        while h > 0 && blocks.len() < count {
            let Some(b) = self.store.block(h)? else { break };
            bytes += b.payload.len() + 512;
            if bytes > phalanx_consensus::MAX_MESSAGE_BYTES / 2 && !blocks.is_empty() {
                break;
            }
            blocks.push(b);
            h -= 1;
        }
        if blocks.is_empty() {
            return Ok(false);
        }
        debug!(
            peer = to.0,
            from = top,
            blocks = blocks.len(),
            "serving committed blocks"
        );
        let msg =
            phalanx_consensus::Message::BlockResponse(phalanx_consensus::BlockResponse { blocks });
        self.net.send(to, Arc::new(encode(&msg)));
        Ok(true)
    }

    /// Remembers an uncommitted block's parent and the hashes of its items'
    /// exact bytes (for the mempool, now and at commit); returns the hashes.
    fn track_block(&mut self, b: &Block) -> Vec<Digest> {
        let raw = raw_hashes(b);
        // Kept until the block is executed, not merely committed.
        let executed = self.store.head().height;
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
        self.seen.retain(|_, s| s.height > executed);
        raw
    }

    /// The uncommitted blocks the next proposal extends: from the highest
    /// certified block down to the last commit.
    fn ancestors(&self) -> std::collections::HashSet<Digest> {
        let mut out = std::collections::HashSet::new();
        let mut id = self.core.safety().high_qc.payload.block_id;
        while let Some(seen) = self.seen.get(&id) {
            if !out.insert(id) {
                break;
            }
            id = seen.parent;
        }
        out
    }

    fn propose(&mut self, view: View) -> Vec<Action> {
        let ancestors = self.ancestors();
        let txs = match &self.shared {
            Some(s) => {
                let store = &self.store;
                // Room for the payload's own length prefixes.
                let budget = self.payload_max_bytes.saturating_sub(64);
                s.pool().select(
                    self.payload_height,
                    self.max_block_txs,
                    budget,
                    &ancestors,
                    |t| {
                        store
                            .account(&t.transfer.sender)
                            .ok()
                            .flatten()
                            .map_or(0, |a| a.nonce)
                    },
                )
            }
            None => Vec::new(),
        };
        if !txs.is_empty() {
            debug!(view = view.0, txs = txs.len(), "proposing");
        }
        let payload = encode_payload(&txs);
        self.core
            .handle(now(), Event::PayloadReady { view, payload })
    }
}

/// Runs the runtime inside a span naming this validator.
pub async fn run_instrumented(
    rt: Runtime,
    inbound: mpsc::Receiver<Inbound>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), RuntimeError> {
    let me = rt.core.index().0;
    rt.run(inbound, shutdown)
        .instrument(info_span!("consensus", validator = me))
        .await
}
