//! The validity rule (P6) for ledger blocks: what an honest validator
//! checks of a proposal's payload before it votes.
//!
//! A block is refused if any item is one execution would certainly refuse
//! for a reason its proposer could check: it does not decode, is signed for
//! another chain, has a bad signature, repeats another item's hash, or has
//! a nonce that is not executable in block order (a sender's nonces not
//! consecutive within the block, or the first below the sender's committed
//! nonce, which also covers an item already applied). The rule must never
//! refuse an honest leader's block, so its one state check is one-sided:
//! the committed nonce only grows along the chain the block extends, and
//! an honest leader never proposes a nonce its block's ancestors take (see
//! [`LedgerValidity::taken_nonces`]). What depends on the ancestors'
//! execution (a first nonce above the committed one, funds, the account
//! minimum) is not refused here: such an item's failure receipt takes
//! nothing from the genuine transaction (see
//! `phalanx_ledger::execute_prepared`), so a leader that includes one only
//! spends its own block space.
//!
//! The check runs on the vote's critical path: a lookup in the mempool's
//! verified set for each item it holds, one batch verification for the
//! rest, and a read of the committed state only for senders whose first
//! item in the block the mempool does not hold (the mempool admits no
//! nonce below the committed one and evicts what is applied or passed, so
//! a replayed or stale item is one it does not hold), never waiting for a
//! commit being written. The cluster runs near its CPU limit under load,
//! where every per-block cost shows in latency many times over.
//!
//! This module owns the per-block summaries (each sender's nonce range,
//! for blocks above the executed height) that tell a leader which nonces
//! its block's ancestors take, and the hashes of each block's items, which
//! the runtime reuses. It never writes the store and never blocks on the
//! network.

use std::collections::HashMap as StdHashMap;

// Keys are senders' keys and hashes of clients' choosing: seeded foldhash
// (as in the mempool) resists crafted collisions at a fraction of SipHash's
// cost, and the check runs on every proposal before the vote.
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::sync::{Arc, Mutex};

use phalanx_consensus::{Block, PayloadValidator};
use phalanx_crypto::{ChainId, Digest};
use phalanx_ledger::{
    EncodedTransfer, SignedTransfer, decode_payload, peek_sender_nonce, verify_encoded,
};
use phalanx_storage::Store;
use tracing::debug;

use crate::shared::Shared;

/// Most block summaries kept; the lowest go first. Honest chains hold a
/// handful above the executed height.
pub const MAX_SUMMARIES: usize = 1024;

/// Most items of one proposal the check decodes and verifies itself (those
/// the mempool does not hold yet, because gossip has not brought them).
/// Verifying is about 20 µs an item and sits before the vote: at 10,000
/// transfers a second a lagging gossip once left thousands of a block's
/// items unknown, and verifying them all made the views longer, the blocks
/// bigger and the next check longer still. Items beyond the budget are
/// verified at execution, where a failing signature is receipted under the
/// item's own bytes and takes nothing from anyone.
pub const MAX_VERIFIED_AT_VOTE: usize = 64;

/// A sender's items in one block.
#[derive(Clone, Copy, Debug)]
struct Span {
    min: u64,
    max: u64,
}

impl Span {
    fn of(nonce: u64) -> Span {
        Span {
            min: nonce,
            max: nonce,
        }
    }

    fn add(&mut self, nonce: u64) {
        self.min = self.min.min(nonce);
        self.max = self.max.max(nonce);
    }

    /// Widens `key`'s span in `senders` to take `nonce`.
    fn note(senders: &mut HashMap<[u8; 32], Span>, key: [u8; 32], nonce: u64) {
        senders
            .entry(key)
            .and_modify(|s| s.add(nonce))
            .or_insert_with(|| Span::of(nonce));
    }
}

/// What a leader's choice needs of a block.
struct Summary {
    parent: Digest,
    height: u64,
    senders: HashMap<[u8; 32], Span>,
    /// Hashes of the items' exact bytes, in order.
    raw: Arc<Vec<Digest>>,
    /// The mempool marked the items in flight in this block at the check.
    marked: bool,
    /// Items the check decoded and verified itself (the pool did not hold
    /// them), by the hash of their bytes: execution need not again.
    vouched: Vouched,
}

/// Decoded transfers whose exact bytes (keyed by their hash) verified, with
/// each transfer's hash: what `phalanx_ledger::prepare_payload_trusting`
/// takes.
pub type Vouched = HashMap<Digest, (Arc<SignedTransfer>, Digest)>;

/// The ledger's validity rule, as the core's [`PayloadValidator`]. Clones
/// share the summaries: the runtime notes every block it persists (its own
/// proposals and fetched blocks too) through one.
#[derive(Clone)]
pub struct LedgerValidity {
    store: Arc<Store>,
    shared: Arc<Shared>,
    chain: ChainId,
    max_block_txs: usize,
    summaries: Arc<Mutex<HashMap<Digest, Summary>>>,
}

/// Why a block is refused (for the log and the metric).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The payload is not a list of transactions, or too long.
    Payload,
    /// An item does not decode.
    Malformed,
    /// An item is signed for another chain.
    WrongChain,
    /// An item's signature does not verify.
    BadSignature,
    /// Two items share a hash.
    Duplicate,
    /// A sender's nonces are not consecutive in the block.
    NonceOrder,
    /// A sender's first nonce is below its committed nonce.
    NonceTooLow,
}

impl Refusal {
    /// A stable snake_case name.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::Payload => "payload",
            Refusal::Malformed => "malformed",
            Refusal::WrongChain => "wrong_chain",
            Refusal::BadSignature => "bad_signature",
            Refusal::Duplicate => "duplicate",
            Refusal::NonceOrder => "nonce_order",
            Refusal::NonceTooLow => "nonce_too_low",
        }
    }
}

impl LedgerValidity {
    /// The rule for the chain `chain`, reading `store` and the mempool's
    /// verified transactions.
    pub fn new(
        store: Arc<Store>,
        shared: Arc<Shared>,
        chain: ChainId,
        max_block_txs: usize,
    ) -> LedgerValidity {
        LedgerValidity {
            store,
            shared,
            chain,
            max_block_txs,
            summaries: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Checks `block`; `Err` names the first reason found.
    pub fn check(&self, block: &Block) -> Result<(), Refusal> {
        let started = std::time::Instant::now();
        let out = self.check_timed(block);
        self.shared
            .metrics
            .verified(crate::metrics::VerifyWhat::ProposalItems, started.elapsed());
        out
    }

    fn check_timed(&self, block: &Block) -> Result<(), Refusal> {
        let items = decode_payload(&block.payload).map_err(|_| Refusal::Payload)?;
        if items.len() > self.max_block_txs {
            return Err(Refusal::Payload);
        }
        // Decode, taking what the mempool already verified (one lock for
        // the lookups; what it does not hold decodes after).
        let id = block.id();
        let raw: Vec<Digest> = items.iter().map(|i| Digest::of(i)).collect();
        // One lock on the vote path, as before the rule: the lookups, and
        // the in-flight marks the runtime would otherwise take it again for
        // when it persists the block. (Marks for a block refused below are
        // harmless: an item counts as in flight only in a block on the
        // chain a leader extends, and marks go at the next commit of their
        // height.)
        let known: Vec<Option<(Arc<SignedTransfer>, Digest)>> = {
            let mut pool = self.shared.pool();
            let known = raw.iter().map(|r| pool.verified_by_bytes(r)).collect();
            if !raw.is_empty() {
                pool.mark_in_flight(&raw, block.height().0, id);
            }
            known
        };
        let mut txs: Vec<(Arc<SignedTransfer>, Digest)> = Vec::with_capacity(items.len());
        // Items the mempool holds: admitted with a nonce not below the
        // committed one, and evicted once applied or passed.
        let mut pooled: Vec<bool> = Vec::with_capacity(items.len());
        let mut unverified: Vec<(Digest, EncodedTransfer)> = Vec::new();
        // Items beyond the budget are left to execution, unchecked here;
        // their senders' nonces still count as taken (see `taken_nonces`).
        let mut partial = false;
        let mut peeked: Vec<([u8; 32], u64)> = Vec::new();
        for ((item, r), known) in items.iter().zip(&raw).zip(known) {
            match known {
                Some(k) => {
                    pooled.push(true);
                    txs.push(k);
                }
                None if unverified.len() < MAX_VERIFIED_AT_VOTE => {
                    let e =
                        EncodedTransfer::decode(item.clone()).map_err(|_| Refusal::Malformed)?;
                    pooled.push(false);
                    txs.push((Arc::new(e.tx().clone()), e.hash()));
                    unverified.push((*r, e));
                }
                None => {
                    partial = true;
                    peeked.extend(peek_sender_nonce(item));
                }
            }
        }
        if partial {
            self.shared.metrics.validity_partial();
        }
        if txs.iter().any(|(t, _)| t.transfer.chain_id != self.chain) {
            return Err(Refusal::WrongChain);
        }
        self.shared.metrics.items_verified_at_vote(unverified.len());
        if !unverified.is_empty()
            && !verify_encoded(&unverified.iter().map(|(_, e)| e).collect::<Vec<_>>())
                .into_iter()
                .all(|ok| ok)
        {
            return Err(Refusal::BadSignature);
        }
        if !unverified.is_empty() {
            // The copies gossip brings later need no second verification.
            self.shared
                .pool()
                .vouch(&unverified.iter().map(|(r, _)| *r).collect::<Vec<_>>());
        }
        let vouched: Vouched = unverified
            .into_iter()
            .map(|(r, e)| {
                let hash = e.hash();
                (r, (Arc::new(e.into_parts().0), hash))
            })
            .collect();
        let mut hashes: HashSet<Digest> = HashSet::with_capacity(txs.len());
        if !txs.iter().all(|(_, h)| hashes.insert(*h)) {
            return Err(Refusal::Duplicate);
        }
        // Each sender's nonces: consecutive, in block order (unless items
        // were left unchecked: a run may then have holes).
        let mut runs: HashMap<[u8; 32], (Span, usize)> = HashMap::new();
        for (i, (t, _)) in txs.iter().enumerate() {
            let key = t.transfer.sender.to_bytes();
            let n = t.transfer.nonce;
            match runs.get_mut(&key) {
                None => {
                    runs.insert(key, (Span::of(n), i));
                }
                Some((span, _)) if span.max.checked_add(1) == Some(n) => span.add(n),
                Some((span, _)) if partial => span.add(n),
                Some(_) => return Err(Refusal::NonceOrder),
            }
        }
        // Against the committed state, for runs whose first item the
        // mempool does not hold (a replayed or stale item is one no pool
        // holds; reading every sender's state cost the vote path more than
        // the rest of the check). The vote never waits for a commit's
        // synced write: while one is under way the check is skipped (the
        // rule only refuses when certain, so skipping is always safe).
        let executed = self.store.head_height().0;
        for (Span { min: first, .. }, i) in runs.values() {
            if pooled[*i] {
                continue;
            }
            let Some(account) = self.store.try_account(&txs[*i].0.transfer.sender) else {
                self.shared.metrics.validity_state_skipped();
                break;
            };
            if *first < account.map_or(0, |a| a.nonce) {
                return Err(Refusal::NonceTooLow);
            }
        }
        let mut senders: HashMap<[u8; 32], Span> =
            runs.iter().map(|(k, (span, _))| (*k, *span)).collect();
        for (key, nonce) in peeked {
            Span::note(&mut senders, key, nonce);
        }
        self.remember(
            id,
            Summary {
                parent: block.header.parent,
                height: block.height().0,
                senders,
                raw: Arc::new(raw),
                marked: true,
                vouched,
            },
            executed,
        );
        Ok(())
    }

    /// The items of block `id` the check decoded and verified itself (empty
    /// if none, or if the summary is gone).
    pub fn vouched(&self, id: &Digest) -> Vouched {
        self.summaries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .map(|s| s.vouched.clone())
            .unwrap_or_default()
    }

    /// The hashes of a checked or noted block's items' exact bytes, if this
    /// validator still holds its summary (computed once per block).
    pub fn raw_hashes(&self, id: &Digest) -> Option<Arc<Vec<Digest>>> {
        self.summaries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .map(|s| s.raw.clone())
    }

    /// Notes a block this validator persisted without checking it here (its
    /// own proposal, a block fetched by id), so that a leader extending it
    /// knows the nonces it takes.
    ///
    /// Returns whether the check already marked the block's items in flight
    /// in the mempool.
    pub fn note_block(&self, block: &Block) -> bool {
        if let Some(s) = self
            .summaries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&block.id())
        {
            return s.marked;
        }
        let Ok(items) = decode_payload(&block.payload) else {
            return false;
        };
        let raw: Vec<Digest> = items.iter().map(|i| Digest::of(i)).collect();
        let known: Vec<Option<([u8; 32], u64)>> = {
            let pool = self.shared.pool();
            raw.iter()
                .map(|r| {
                    pool.verified_by_bytes(r)
                        .map(|(t, _)| (t.transfer.sender.to_bytes(), t.transfer.nonce))
                })
                .collect()
        };
        let mut senders: HashMap<[u8; 32], Span> = HashMap::new();
        // Items the mempool does not hold are peeked at, not decoded (a
        // block fetched by id can hold thousands): a leader that never held
        // an ancestor's item must still not propose another transfer of
        // its sender with its nonce. A 30-minute chaos run found that.
        for (known, item) in known.into_iter().zip(&items) {
            let Some((key, nonce)) = known.or_else(|| peek_sender_nonce(item)) else {
                continue;
            };
            Span::note(&mut senders, key, nonce);
        }
        let executed = self.store.head_height().0;
        self.remember(
            block.id(),
            Summary {
                parent: block.header.parent,
                height: block.height().0,
                senders,
                raw: Arc::new(raw),
                marked: false,
                vouched: Vouched::default(),
            },
            executed,
        );
        false
    }

    /// The nonces each sender's items take in the blocks from `parent` down
    /// to the executed height (as a range per sender): a leader extending
    /// `parent` proposes none of them again, even signed otherwise (a
    /// sender that signs two transfers with one nonce must not get an
    /// honest leader's block refused).
    pub fn taken_nonces(&self, parent: Digest) -> StdHashMap<[u8; 32], (u64, u64)> {
        let executed = self.store.head_height().0;
        let summaries = self.summaries.lock().unwrap_or_else(|e| e.into_inner());
        let mut taken: StdHashMap<[u8; 32], (u64, u64)> = StdHashMap::new();
        let mut id = parent;
        while let Some(s) = summaries.get(&id) {
            if s.height <= executed {
                break;
            }
            for (k, span) in &s.senders {
                taken
                    .entry(*k)
                    .and_modify(|(lo, hi)| {
                        *lo = (*lo).min(span.min);
                        *hi = (*hi).max(span.max);
                    })
                    .or_insert((span.min, span.max));
            }
            id = s.parent;
        }
        taken
    }

    /// Keeps `summary` of block `id`, forgetting executed blocks first.
    fn remember(&self, id: Digest, summary: Summary, executed: u64) {
        let mut summaries = self.summaries.lock().unwrap_or_else(|e| e.into_inner());
        summaries.retain(|_, s| s.height > executed);
        if summaries.len() >= MAX_SUMMARIES
            && let Some(lowest) = summaries
                .iter()
                .min_by_key(|(_, s)| s.height)
                .map(|(id, _)| *id)
        {
            summaries.remove(&lowest);
        }
        summaries.insert(id, summary);
    }
}

impl PayloadValidator for LedgerValidity {
    fn is_valid(&self, block: &Block) -> bool {
        match self.check(block) {
            Ok(()) => true,
            Err(why) => {
                self.shared.metrics.block_refused(why.name());
                debug!(
                    height = block.height().0,
                    view = block.view().0,
                    reason = why.name(),
                    "proposal refused by the validity rule"
                );
                false
            }
        }
    }
}
