//! Prometheus metrics: one registry per node, served as text at `/metrics`
//! on the metrics port.
//!
//! This module owns every metric's name, help text, labels and buckets, and
//! the small HTTP server that exposes them. Label values come from fixed
//! lists (message kinds, reasons, statuses, RPC methods, validator
//! indices), never from what a peer or client sends, so the number of
//! series is bounded; every series is created at start so that dashboards
//! and alerts see zeros rather than nothing. It never makes a decision from
//! a metric.
//!
//! `prometheus-client` is used rather than the older `prometheus` crate: it
//! is the Prometheus project's own Rust client, is actively released, and is
//! what libp2p's metrics use.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use tracing::debug;

/// Why an inbound consensus message (or stream, or gossip batch) was
/// dropped.
pub const INVALID_REASONS: [&str; 18] = [
    "undecodable",
    "bad_signature",
    "wrong_proposer",
    "payload_digest",
    "payload_too_large",
    "bad_timeout_cert",
    "sync_bound",
    "beyond_view_window",
    "oversized_frame",
    "non_validator_stream",
    "bad_gossip_batch",
    "genesis_mismatch",
    "graylisted",
    "connection_limit",
    "non_validator_idle",
    "request_rate",
    "unsolicited_report",
    "bad_evidence",
];

/// Every reason label of `phalanx_rpc_refused_total`.
pub const RPC_REFUSAL_REASONS: [&str; 2] = ["connections_per_ip", "rate_limited"];

/// The kind label of a transaction gossip batch, beside the consensus
/// message kinds.
pub const TX_BATCH_KIND: &str = "tx_batch";

/// Every value of the `kind` label: the consensus message kinds and
/// [`TX_BATCH_KIND`].
pub fn message_kinds() -> impl Iterator<Item = &'static str> {
    phalanx_consensus::MESSAGE_KINDS
        .iter()
        .copied()
        .chain(std::iter::once(TX_BATCH_KIND))
}

/// Why a submitted transaction was refused at admission.
pub const REJECT_REASONS: [&str; 14] = [
    "too_large",
    "malformed",
    "wrong_chain",
    "bad_signature",
    "zero_amount",
    "below_minimum_balance",
    "mempool_full",
    "nonce_too_low",
    "nonce_too_high",
    "nonce_taken",
    "insufficient_funds",
    "future_limit",
    "future_full",
    "internal",
];

/// Why proposals were refused: by the validity rule
/// (`crate::validity::Refusal::name`), or, `lock`, by the vote rule's
/// certificate condition (P7: a block after a timeout that does not extend
/// the highest certificate the timeout certificate carries).
pub const REFUSAL_REASONS: [&str; 8] = [
    "lock",
    "payload",
    "malformed",
    "wrong_chain",
    "bad_signature",
    "duplicate",
    "nonce_order",
    "nonce_too_low",
];

/// Receipt statuses of committed transactions (`TxStatus::name`).
pub const TX_STATUSES: [&str; 10] = [
    "applied",
    "malformed",
    "bad_signature",
    "wrong_chain",
    "duplicate",
    "nonce_too_low",
    "nonce_too_high",
    "insufficient_funds",
    "overflow",
    "below_minimum_balance",
];

/// A timed storage operation (label `op`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageOp {
    /// Executing a block's transactions (including state reads).
    Execute,
    /// Computing the state root after a block.
    StateRoot,
    /// Writing an executed block's batch (including its WAL sync).
    BlockApply,
    /// Writing the safety state (synced).
    SafetyWrite,
    /// Writing an uncommitted block for consensus.
    BlockWrite,
}

impl StorageOp {
    /// Every operation, for series that exist from the start.
    pub const ALL: [StorageOp; 5] = [
        StorageOp::Execute,
        StorageOp::StateRoot,
        StorageOp::BlockApply,
        StorageOp::SafetyWrite,
        StorageOp::BlockWrite,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            StorageOp::Execute => "execute",
            StorageOp::StateRoot => "state_root",
            StorageOp::BlockApply => "block_apply",
            StorageOp::SafetyWrite => "safety_write",
            StorageOp::BlockWrite => "block_write",
        }
    }
}

/// What signature verification is timed for (label `what`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerifyWhat {
    /// One inbound consensus message.
    ConsensusMessage,
    /// A batch of transactions at admission.
    TransactionBatch,
    /// The validity rule's check of a proposal (lookups, and a batch
    /// verification of the items the mempool does not hold).
    ProposalItems,
}

impl VerifyWhat {
    /// Every kind, for series that exist from the start.
    pub const ALL: [VerifyWhat; 3] = [
        VerifyWhat::ConsensusMessage,
        VerifyWhat::TransactionBatch,
        VerifyWhat::ProposalItems,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            VerifyWhat::ConsensusMessage => "consensus_message",
            VerifyWhat::TransactionBatch => "transaction_batch",
            VerifyWhat::ProposalItems => "proposal_items",
        }
    }
}

/// The peer label of a stream whose key is not a validator's.
pub const UNKNOWN_PEER: &str = "unknown";

/// Most distinct RPC method labels (the methods the node registers).
pub const MAX_RPC_METHODS: usize = 32;

/// Largest scrape response kept in memory, bytes (a bound on the encoder's
/// output, far above what the fixed label sets produce).
const MAX_SCRAPE_BYTES: usize = 4 << 20;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Invalid {
    peer: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Status {
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Op {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct What {
    what: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcCall {
    method: &'static str,
    outcome: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn seconds_histogram() -> Histogram {
    // 0.5 ms .. ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

fn fast_seconds_histogram() -> Histogram {
    // 20 µs .. ~1.3 s.
    Histogram::new(exponential_buckets(0.000_02, 2.0, 16))
}

/// Every metric of a node.
pub struct Metrics {
    registry: Registry,
    validators: usize,
    committed_height: Gauge,
    view: Gauge,
    view_changes: Counter,
    view_timeouts: Counter,
    messages_sent: Family<Kind, Counter>,
    messages_received: Family<Kind, Counter>,
    bytes_sent: Family<Kind, Counter>,
    bytes_received: Family<Kind, Counter>,
    invalid: Family<Invalid, Counter>,
    send_queue_drops: Counter,
    commit_latency: Histogram,
    block_interval: Histogram,
    txs_committed: Family<Status, Counter>,
    block_txs: Histogram,
    block_bytes: Histogram,
    mempool_txs: Gauge,
    mempool_bytes: Gauge,
    mempool_capacity_txs: Gauge,
    mempool_capacity_bytes: Gauge,
    txs_rejected: Family<Reason, Counter>,
    proposals_refused: Family<Reason, Counter>,
    validity_skipped: Counter,
    validity_partial: Counter,
    items_verified_at_vote: Counter,
    peers: Gauge,
    verify_seconds: HistogramFamily<What>,
    storage_seconds: HistogramFamily<Op>,
    checkpoint_height: Gauge,
    sync_target_height: Gauge,
    state_sync_buckets_remaining: Gauge,
    state_sync_buckets_total: Gauge,
    state_sync_bytes: Counter,
    state_sync_accounts: Counter,
    state_sync_peer_drops: Family<Reason, Counter>,
    rpc_requests: Family<RpcCall, Counter>,
    rpc_seconds: HistogramFamily<RpcCall>,
    equivocations: Counter,
    own_key_elsewhere: Counter,
    execution_mismatches: Counter,
    graylistings: Counter,
    rpc_refused: Family<Reason, Counter>,
    mempool_overdue: Gauge,
}

impl Metrics {
    /// Registers every metric for a set of `validators`, with every label
    /// combination created at zero.
    pub fn new(validators: usize, rpc_methods: &[&'static str]) -> Metrics {
        let mut r = Registry::with_prefix("phalanx");
        let m = Metrics {
            validators,
            committed_height: Gauge::default(),
            view: Gauge::default(),
            view_changes: Counter::default(),
            view_timeouts: Counter::default(),
            messages_sent: Family::default(),
            messages_received: Family::default(),
            bytes_sent: Family::default(),
            bytes_received: Family::default(),
            invalid: Family::default(),
            send_queue_drops: Counter::default(),
            commit_latency: seconds_histogram(),
            block_interval: seconds_histogram(),
            txs_committed: Family::default(),
            // 1 .. 16384 transactions.
            block_txs: Histogram::new(exponential_buckets(1.0, 2.0, 15)),
            // 256 B .. 64 MiB.
            block_bytes: Histogram::new(exponential_buckets(256.0, 4.0, 10)),
            mempool_txs: Gauge::default(),
            mempool_bytes: Gauge::default(),
            mempool_capacity_txs: Gauge::default(),
            mempool_capacity_bytes: Gauge::default(),
            txs_rejected: Family::default(),
            proposals_refused: Family::default(),
            validity_skipped: Counter::default(),
            validity_partial: Counter::default(),
            items_verified_at_vote: Counter::default(),
            peers: Gauge::default(),
            verify_seconds: Family::new_with_constructor(fast_seconds_histogram),
            storage_seconds: Family::new_with_constructor(fast_seconds_histogram),
            checkpoint_height: Gauge::default(),
            sync_target_height: Gauge::default(),
            state_sync_buckets_remaining: Gauge::default(),
            state_sync_buckets_total: Gauge::default(),
            state_sync_bytes: Counter::default(),
            state_sync_accounts: Counter::default(),
            state_sync_peer_drops: Family::default(),
            rpc_requests: Family::default(),
            rpc_seconds: Family::new_with_constructor(seconds_histogram),
            equivocations: Counter::default(),
            own_key_elsewhere: Counter::default(),
            execution_mismatches: Counter::default(),
            graylistings: Counter::default(),
            rpc_refused: Family::default(),
            mempool_overdue: Gauge::default(),
            registry: Registry::default(),
        };
        r.register(
            "committed_height",
            "Height of the last committed block",
            m.committed_height.clone(),
        );
        r.register("view", "Current consensus view", m.view.clone());
        r.register(
            "view_changes",
            "Views this validator moved to (by certificate or timeout)",
            m.view_changes.clone(),
        );
        r.register(
            "view_timeouts",
            "Views that timed out locally",
            m.view_timeouts.clone(),
        );
        r.register(
            "messages_sent",
            "Consensus messages and transaction batches queued for peers, by kind (a broadcast counts once per peer)",
            m.messages_sent.clone(),
        );
        r.register(
            "messages_received",
            "Consensus messages received and verified, and transaction batches received, by kind",
            m.messages_received.clone(),
        );
        r.register_with_unit(
            "network_sent",
            "Consensus message and transaction batch bytes queued for peers, by kind",
            Unit::Bytes,
            m.bytes_sent.clone(),
        );
        r.register_with_unit(
            "network_received",
            "Consensus message bytes received and verified, and transaction batch bytes received, by kind",
            Unit::Bytes,
            m.bytes_received.clone(),
        );
        r.register(
            "invalid_messages",
            "Inbound messages, streams or gossip batches dropped, by sending peer and reason",
            m.invalid.clone(),
        );
        r.register(
            "send_queue_drops",
            "Outbound consensus messages dropped because a peer's queue was full",
            m.send_queue_drops.clone(),
        );
        r.register_with_unit(
            "commit_latency",
            "Time from this validator first persisting a proposed block to committing it",
            Unit::Seconds,
            m.commit_latency.clone(),
        );
        r.register_with_unit(
            "block_interval",
            "Time between consecutive commits",
            Unit::Seconds,
            m.block_interval.clone(),
        );
        r.register(
            "transactions_committed",
            "Transactions in committed blocks, by receipt status",
            m.txs_committed.clone(),
        );
        r.register(
            "block_transactions",
            "Transactions per committed block",
            m.block_txs.clone(),
        );
        r.register_with_unit(
            "block_size",
            "Payload size of committed blocks",
            Unit::Bytes,
            m.block_bytes.clone(),
        );
        r.register(
            "mempool_transactions",
            "Transactions in the mempool",
            m.mempool_txs.clone(),
        );
        r.register_with_unit(
            "mempool_size",
            "Bytes of transactions in the mempool",
            Unit::Bytes,
            m.mempool_bytes.clone(),
        );
        r.register(
            "mempool_capacity_transactions",
            "Most transactions the mempool holds",
            m.mempool_capacity_txs.clone(),
        );
        r.register_with_unit(
            "mempool_capacity",
            "Most bytes the mempool holds",
            Unit::Bytes,
            m.mempool_capacity_bytes.clone(),
        );
        r.register(
            "proposals_refused",
            "Proposals this validator did not vote for because an item breaks the validity rule, by reason",
            m.proposals_refused.clone(),
        );
        r.register(
            "validity_state_checks_skipped",
            "Proposals whose nonce checks against the committed state were skipped because a commit was being written (the vote never waits for it)",
            m.validity_skipped.clone(),
        );
        r.register(
            "validity_checks_partial",
            "Proposals with more items the mempool did not hold than the check verifies before the vote (the rest are verified at execution)",
            m.validity_partial.clone(),
        );
        r.register(
            "proposal_items_verified",
            "Proposal items the mempool did not hold when the validity rule checked them, so verified then",
            m.items_verified_at_vote.clone(),
        );
        r.register(
            "transactions_rejected",
            "Submitted transactions refused at admission, by reason",
            m.txs_rejected.clone(),
        );
        r.register("peers_connected", "Validators connected", m.peers.clone());
        r.register_with_unit(
            "signature_verification",
            "Time to verify a consensus message or a batch of transaction signatures",
            Unit::Seconds,
            m.verify_seconds.clone(),
        );
        r.register_with_unit(
            "storage_duration",
            "Time per storage operation; the writes include their WAL sync",
            Unit::Seconds,
            m.storage_seconds.clone(),
        );
        r.register(
            "stable_checkpoint_height",
            "Height of the latest stable checkpoint",
            m.checkpoint_height.clone(),
        );
        r.register(
            "sync_target_height",
            "Highest committed height the cluster is known to have reached",
            m.sync_target_height.clone(),
        );
        r.register(
            "state_sync_buckets_remaining",
            "Snapshot buckets still to fetch in a running state sync",
            m.state_sync_buckets_remaining.clone(),
        );
        r.register(
            "state_sync_buckets",
            "Non-empty snapshot buckets of the running state sync",
            m.state_sync_buckets_total.clone(),
        );
        r.register(
            "state_sync_accounts",
            "Accounts restored by state sync",
            m.state_sync_accounts.clone(),
        );
        r.register_with_unit(
            "state_sync",
            "Verified snapshot bytes restored by state sync",
            Unit::Bytes,
            m.state_sync_bytes.clone(),
        );
        r.register(
            "state_sync_peer_drops",
            "Peers a state sync stopped asking, by reason (junk, stalled, not_retained)",
            m.state_sync_peer_drops.clone(),
        );
        r.register(
            "rpc_requests",
            "JSON-RPC calls, by method and outcome",
            m.rpc_requests.clone(),
        );
        r.register_with_unit(
            "rpc_request_duration",
            "JSON-RPC call latency, by method and outcome",
            Unit::Seconds,
            m.rpc_seconds.clone(),
        );
        r.register(
            "equivocations",
            "Equivocation evidence seen (two signed messages for one slot)",
            m.equivocations.clone(),
        );
        r.register(
            "own_key_elsewhere",
            "Views in which a certificate carried this validator's signature of a vote or timeout it never signed: another process holds its key, or it runs on an old copy of its data",
            m.own_key_elsewhere.clone(),
        );
        r.register(
            "execution_mismatches",
            "Heights at which a proposal certified an execution result (state or receipts root) differing from this validator's own; no vote was cast for it (P22)",
            m.execution_mismatches.clone(),
        );
        r.register(
            "graylistings",
            "Validators graylisted for sending invalid messages (their frames are then dropped unread for a while; which one: phalanx_invalid_messages_total{reason=\"graylisted\"})",
            m.graylistings.clone(),
        );
        r.register(
            "rpc_refused",
            "JSON-RPC connections and calls refused by the per-address limits",
            m.rpc_refused.clone(),
        );
        for reason in RPC_REFUSAL_REASONS {
            m.rpc_refused.get_or_create_owned(&Reason { reason });
        }
        r.register(
            "mempool_overdue_transactions",
            "Proposable transactions pending longer than overdue_tx_ms (censorship when seen at f + 1 validators)",
            m.mempool_overdue.clone(),
        );
        for kind in message_kinds() {
            let l = Kind { kind };
            m.messages_sent.get_or_create_owned(&l);
            m.messages_received.get_or_create_owned(&l);
            m.bytes_sent.get_or_create_owned(&l);
            m.bytes_received.get_or_create_owned(&l);
        }
        for reason in INVALID_REASONS {
            for peer in 0..validators {
                m.invalid.get_or_create_owned(&Invalid {
                    peer: peer.to_string(),
                    reason,
                });
            }
        }
        m.invalid.get_or_create_owned(&Invalid {
            peer: UNKNOWN_PEER.into(),
            reason: "non_validator_stream",
        });
        for reason in REJECT_REASONS {
            m.txs_rejected.get_or_create_owned(&Reason { reason });
        }
        for status in TX_STATUSES {
            m.txs_committed.get_or_create_owned(&Status { status });
        }
        for reason in REFUSAL_REASONS {
            m.proposals_refused.get_or_create_owned(&Reason { reason });
        }
        for op in StorageOp::ALL {
            m.storage_seconds
                .get_or_create_owned(&Op { op: op.as_str() });
        }
        for what in VerifyWhat::ALL {
            m.verify_seconds.get_or_create_owned(&What {
                what: what.as_str(),
            });
        }
        for method in rpc_methods.iter().take(MAX_RPC_METHODS) {
            for outcome in ["ok", "error"] {
                let l = RpcCall { method, outcome };
                m.rpc_requests.get_or_create_owned(&l);
                m.rpc_seconds.get_or_create_owned(&l);
            }
        }
        Metrics { registry: r, ..m }
    }

    /// The registry in Prometheus text format (0.0.4).
    pub fn encode(&self) -> String {
        let mut open = String::new();
        if prometheus_client::encoding::text::encode(&mut open, &self.registry).is_err() {
            // Writing to a String cannot fail; an empty scrape is the
            // honest answer if it ever did.
            open.clear();
        }
        debug_assert!(open.len() < MAX_SCRAPE_BYTES);
        to_prometheus_text(&open)
    }

    /// Consensus status after the core handled an event.
    pub fn set_consensus(&self, height: phalanx_consensus::Height, view: phalanx_consensus::View) {
        let (height, view) = (height.0, view.0);
        let old = self.view.set(view as i64);
        if view as i64 > old && old > 0 {
            self.view_changes.inc_by((view as i64 - old) as u64);
        }
        self.committed_height.set(height as i64);
        self.sync_target_height
            .inner()
            .fetch_max(height as i64, std::sync::atomic::Ordering::Relaxed);
    }

    /// A view timed out locally.
    pub fn view_timeout(&self) {
        self.view_timeouts.inc();
    }

    /// `count` copies of a `bytes`-long message of `kind` queued for peers.
    pub fn sent(&self, kind: &'static str, bytes: usize, count: usize) {
        debug_assert!(message_kinds().any(|k| k == kind));
        let l = Kind { kind };
        self.messages_sent.get_or_create(&l).inc_by(count as u64);
        self.bytes_sent
            .get_or_create(&l)
            .inc_by((bytes * count) as u64);
    }

    /// A verified message of `kind` received.
    pub fn received(&self, kind: &'static str, bytes: usize) {
        debug_assert!(message_kinds().any(|k| k == kind));
        let l = Kind { kind };
        self.messages_received.get_or_create(&l).inc();
        self.bytes_received.get_or_create(&l).inc_by(bytes as u64);
    }

    /// An inbound message from validator `peer` (None: not a validator)
    /// dropped for `reason` (one of [`INVALID_REASONS`]).
    pub fn invalid(&self, peer: Option<u16>, reason: &'static str) {
        debug_assert!(INVALID_REASONS.contains(&reason));
        let peer = match peer {
            Some(p) if (p as usize) < self.validators => p.to_string(),
            _ => UNKNOWN_PEER.into(),
        };
        self.invalid.get_or_create(&Invalid { peer, reason }).inc();
    }

    /// An outbound message dropped on a full peer queue.
    pub fn send_queue_drop(&self) {
        self.send_queue_drops.inc();
    }

    /// A block committed: its latency since first persisted (if known),
    /// the time since the previous commit (if any), its size and receipts.
    pub fn committed_block<'a>(
        &self,
        latency: Option<Duration>,
        interval: Option<Duration>,
        payload_bytes: usize,
        statuses: impl Iterator<Item = &'a str>,
    ) {
        if let Some(l) = latency {
            self.commit_latency.observe(l.as_secs_f64());
        }
        if let Some(i) = interval {
            self.block_interval.observe(i.as_secs_f64());
        }
        self.block_bytes.observe(payload_bytes as f64);
        // One lock per status, not per transaction.
        let mut counts = [0u64; TX_STATUSES.len()];
        let mut n = 0u64;
        for s in statuses {
            n += 1;
            if let Some(i) = TX_STATUSES.iter().position(|t| *t == s) {
                counts[i] += 1;
            }
        }
        self.block_txs.observe(n as f64);
        for (status, c) in TX_STATUSES.into_iter().zip(counts) {
            if c > 0 {
                self.txs_committed
                    .get_or_create(&Status { status })
                    .inc_by(c);
            }
        }
    }

    /// A submission refused for `reason` (one of [`REJECT_REASONS`]).
    pub fn rejected(&self, reason: &'static str) {
        debug_assert!(REJECT_REASONS.contains(&reason));
        self.txs_rejected.get_or_create(&Reason { reason }).inc();
    }

    /// A proposal refused by the validity rule for `reason` (one of
    /// [`REFUSAL_REASONS`]).
    pub fn block_refused(&self, reason: &'static str) {
        debug_assert!(REFUSAL_REASONS.contains(&reason));
        self.proposals_refused
            .get_or_create(&Reason { reason })
            .inc();
    }

    /// `n` proposals the vote rule's certificate condition refused.
    pub fn lock_refused(&self, n: u64) {
        self.proposals_refused
            .get_or_create(&Reason { reason: "lock" })
            .inc_by(n);
    }

    /// `n` proposal items verified by the validity rule (not in the pool).
    pub fn items_verified_at_vote(&self, n: usize) {
        self.items_verified_at_vote.inc_by(n as u64);
    }

    /// A proposal only partly checked (too many items not in the pool).
    pub fn validity_partial(&self) {
        self.validity_partial.inc();
    }

    /// A proposal's state checks skipped while a commit was written.
    pub fn validity_state_skipped(&self) {
        self.validity_skipped.inc();
    }

    /// Mempool occupancy and bounds.
    pub fn set_mempool(&self, txs: usize, bytes: usize, max_txs: usize, max_bytes: usize) {
        self.mempool_txs.set(txs as i64);
        self.mempool_bytes.set(bytes as i64);
        self.mempool_capacity_txs.set(max_txs as i64);
        self.mempool_capacity_bytes.set(max_bytes as i64);
    }

    /// A validator connected (`+1`) or disconnected (`-1`).
    pub fn peer_delta(&self, d: i64) {
        self.peers.inc_by(d);
    }

    /// Validators connected.
    pub fn peers(&self) -> u64 {
        self.peers.get().max(0) as u64
    }

    /// Time spent verifying.
    pub fn verified(&self, what: VerifyWhat, d: Duration) {
        self.verify_seconds
            .get_or_create(&What {
                what: what.as_str(),
            })
            .observe(d.as_secs_f64());
    }

    /// Time spent in a storage operation.
    pub fn storage(&self, op: StorageOp, d: Duration) {
        self.storage_seconds
            .get_or_create(&Op { op: op.as_str() })
            .observe(d.as_secs_f64());
    }

    /// A stable checkpoint recorded.
    pub fn checkpoint(&self, height: u64) {
        self.checkpoint_height.set(height as i64);
    }

    /// The highest committed height seen from peers.
    pub fn sync_target(&self, height: u64) {
        self.sync_target_height
            .inner()
            .fetch_max(height as i64, std::sync::atomic::Ordering::Relaxed);
    }

    /// State sync progress: buckets done of `total`, and accounts and
    /// bytes just restored.
    pub fn state_sync(&self, done: usize, total: usize, accounts: u64, bytes: u64) {
        self.state_sync_buckets_remaining
            .set(total.saturating_sub(done) as i64);
        self.state_sync_buckets_total.set(total as i64);
        self.state_sync_accounts.inc_by(accounts);
        self.state_sync_bytes.inc_by(bytes);
    }

    /// A state sync stopped asking a peer.
    pub fn state_sync_peer_drop(&self, reason: &'static str) {
        self.state_sync_peer_drops
            .get_or_create(&Reason { reason })
            .inc();
    }

    /// One JSON-RPC call of `method` finished.
    pub fn rpc(&self, method: &'static str, ok: bool, d: Duration) {
        let outcome = if ok { "ok" } else { "error" };
        let l = RpcCall { method, outcome };
        self.rpc_requests.get_or_create(&l).inc();
        self.rpc_seconds.get_or_create(&l).observe(d.as_secs_f64());
    }

    /// Equivocation evidence seen.
    pub fn equivocation(&self) {
        self.equivocations.inc();
    }

    /// This validator's key signed, elsewhere, what it did not (P21).
    pub fn own_key_elsewhere(&self) {
        self.own_key_elsewhere.inc();
    }

    /// A proposal's execution result differed from this validator's (P22).
    pub fn execution_mismatch(&self) {
        self.execution_mismatches.inc();
    }

    /// A JSON-RPC connection or call refused by a per-address limit.
    pub fn rpc_refused(&self, reason: &'static str) {
        debug_assert!(RPC_REFUSAL_REASONS.contains(&reason));
        self.rpc_refused.get_or_create(&Reason { reason }).inc();
    }

    /// A validator graylisted.
    pub fn graylisting(&self) {
        self.graylistings.inc();
    }

    /// Proposable transactions pending longer than the overdue bound.
    pub fn set_mempool_overdue(&self, n: usize) {
        self.mempool_overdue.set(n as i64);
    }
}

/// Converts the client's OpenMetrics output to the classic Prometheus
/// text format, which every scraper and `promtool check metrics` read: a
/// counter's HELP and TYPE lines name it with its `_total` suffix, and the
/// OpenMetrics-only `# UNIT` and `# EOF` lines go.
fn to_prometheus_text(open: &str) -> String {
    let mut out = String::with_capacity(open.len());
    let mut help: Option<&str> = None;
    for line in open.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let name = if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_string()
            };
            if let Some(h) = help.take() {
                let text = h.split_once(' ').map_or("", |(_, t)| t);
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The label of a verification failure.
pub fn invalid_reason(e: &phalanx_consensus::VerifyError) -> &'static str {
    use phalanx_consensus::VerifyError as E;
    match e {
        E::Decode(_) => "undecodable",
        E::Signature(_) => "bad_signature",
        E::WrongProposer { .. } => "wrong_proposer",
        E::PayloadDigest => "payload_digest",
        E::PayloadTooLarge { .. } => "payload_too_large",
        E::TimeoutCert(_) => "bad_timeout_cert",
        E::SyncBound(_) => "sync_bound",
        E::Evidence(_) => "bad_evidence",
        E::NotAdmitted(why) => match *why {
            phalanx_consensus::NOT_ADMITTED_REQUEST_RATE => "request_rate",
            phalanx_consensus::NOT_ADMITTED_REPORT => "unsolicited_report",
            _ => "beyond_view_window",
        },
    }
}

/// Serves `GET /metrics` on `addr` until the process ends. Returns the
/// address bound.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    debug!("metrics accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let metrics = metrics.clone();
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&req, &metrics)) }
            });
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(stream);
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await
                {
                    debug!("metrics connection: {e}");
                }
            });
        }
    });
    Ok(local)
}

fn answer(req: &Request<hyper::body::Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, ctype: &'static str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(ctype),
        );
        r
    };
    if req.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: metrics are at /metrics\n".into(),
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "use GET\n".into(),
        );
    }
    reply(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        metrics.encode(),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_series_exists_at_start_and_counts_move() {
        let m = Metrics::new(4, &["ledger_status"]);
        let text = m.encode();
        for needle in [
            "phalanx_committed_height 0",
            "phalanx_messages_sent_total{kind=\"vote\"} 0",
            "phalanx_invalid_messages_total{peer=\"3\",reason=\"bad_signature\"} 0",
            "phalanx_invalid_messages_total{peer=\"unknown\",reason=\"non_validator_stream\"} 0",
            "phalanx_transactions_rejected_total{reason=\"mempool_full\"} 0",
            "phalanx_rpc_requests_total{method=\"ledger_status\",outcome=\"error\"} 0",
            "phalanx_storage_duration_seconds_count{op=\"block_apply\"} 0",
            // Classic text format: counters declared with their suffix.
            "# TYPE phalanx_view_changes_total counter",
            "# HELP phalanx_network_sent_bytes_total Consensus message and transaction batch bytes",
        ] {
            assert!(text.contains(needle), "missing `{needle}` in\n{text}");
        }
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"));
        m.sent("vote", 100, 3);
        m.invalid(Some(2), "bad_signature");
        m.invalid(Some(999), "oversized_frame");
        m.set_consensus(phalanx_consensus::Height(5), phalanx_consensus::View(7));
        m.set_consensus(phalanx_consensus::Height(6), phalanx_consensus::View(9));
        m.committed_block(
            None,
            None,
            10,
            ["applied", "applied", "duplicate"].into_iter(),
        );
        let text = m.encode();
        for needle in [
            "phalanx_messages_sent_total{kind=\"vote\"} 3",
            "phalanx_network_sent_bytes_total{kind=\"vote\"} 300",
            "phalanx_invalid_messages_total{peer=\"2\",reason=\"bad_signature\"} 1",
            "phalanx_invalid_messages_total{peer=\"unknown\",reason=\"oversized_frame\"} 1",
            "phalanx_view_changes_total 2",
            "phalanx_committed_height 6",
            "phalanx_transactions_committed_total{status=\"applied\"} 2",
            "phalanx_transactions_committed_total{status=\"duplicate\"} 1",
        ] {
            assert!(text.contains(needle), "missing `{needle}` in\n{text}");
        }
    }
}
