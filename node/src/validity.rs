//! The validity rule (P6) for ledger blocks: what an honest validator
//! checks of a proposal's payload before it votes.
//!
//! A block is refused if any item is one execution would certainly refuse
//! for a reason its proposer could check: it does not decode, is signed for
//! another chain, has a bad signature, repeats another item's hash, or has
//! a nonce that cannot be executable in block order (a sender's nonces not
//! consecutive within the block, the first below the sender's committed
//! nonce, or above what the uncommitted ancestors can have advanced it
//! to). An already applied transaction needs no lookup: its nonce is below
//! its sender's committed nonce. The rule must never refuse an honest
//! leader's block, so every state check is one-sided: it uses the
//! committed state, which only grows along the chain the block extends,
//! and an upper bound for the blocks in between (each carries a sender's
//! nonce up by at most its item count; the last [`RECENT_BLOCKS`] executed
//! blocks count too, for a leader whose executor lags). A leader in turn
//! never proposes a nonce its block's ancestors take (see
//! [`LedgerValidity::taken_nonces`]). Items that fail on funds or an account
//! minimum are not refused here: their outcome depends on the ancestors'
//! execution, and such a receipt takes nothing from the genuine
//! transaction (see `phalanx_ledger::execute_prepared`).
//!
//! This module owns the per-block summaries the bound needs (each
//! sender's item count and nonce range, for blocks down to
//! [`RECENT_BLOCKS`] below the executed height), which also tell a leader
//! which nonces its block's ancestors take. It never writes the store and
//! never blocks on the network.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use phalanx_consensus::{Block, PayloadValidator};
use phalanx_crypto::{ChainId, Digest};
use phalanx_ledger::{EncodedTransfer, SignedTransfer, decode_payload, verify_encoded};
use phalanx_storage::Store;
use tracing::debug;

use crate::shared::Shared;

/// Most block summaries kept; the lowest go first. Honest chains hold
/// [`RECENT_BLOCKS`] executed ones and a handful above.
pub const MAX_SUMMARIES: usize = 1024;

/// Executed blocks whose items still count towards the nonce bound. A
/// leader whose executor lags this validator's by up to this many blocks
/// counts an ancestor's item as possibly applied where this validator has
/// seen it fail; counting the items of these blocks keeps such a leader's
/// block within the bound.
pub const RECENT_BLOCKS: u64 = 32;

/// A sender's items in one block.
#[derive(Clone, Copy, Debug)]
struct Span {
    count: u64,
    min: u64,
    max: u64,
}

impl Span {
    fn of(nonce: u64) -> Span {
        Span {
            count: 1,
            min: nonce,
            max: nonce,
        }
    }

    fn add(&mut self, nonce: u64) {
        self.count += 1;
        self.min = self.min.min(nonce);
        self.max = self.max.max(nonce);
    }
}

/// What the nonce bound and a leader's choice need of a block.
struct Summary {
    parent: Digest,
    height: u64,
    senders: HashMap<[u8; 32], Span>,
}

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
    /// A sender's first nonce is beyond what the ancestors can reach.
    NonceTooHigh,
    /// The store could not be read (the vote is withheld: never guess).
    Read,
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
            Refusal::NonceTooHigh => "nonce_too_high",
            Refusal::Read => "read",
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
        let items = decode_payload(&block.payload).map_err(|_| Refusal::Payload)?;
        if items.len() > self.max_block_txs {
            return Err(Refusal::Payload);
        }
        // Decode, taking what the mempool already verified (one lock for
        // the lookups; what it does not hold decodes after).
        let known: Vec<Option<(Arc<SignedTransfer>, Digest)>> = {
            let pool = self.shared.pool();
            items
                .iter()
                .map(|item| pool.verified_by_bytes(&Digest::of(item)))
                .collect()
        };
        let mut txs: Vec<(Arc<SignedTransfer>, Digest)> = Vec::with_capacity(items.len());
        let mut unverified: Vec<EncodedTransfer> = Vec::new();
        for (item, known) in items.iter().zip(known) {
            match known {
                Some(k) => txs.push(k),
                None => {
                    let e =
                        EncodedTransfer::decode(item.clone()).map_err(|_| Refusal::Malformed)?;
                    txs.push((Arc::new(e.tx().clone()), e.hash()));
                    unverified.push(e);
                }
            }
        }
        if txs.iter().any(|(t, _)| t.transfer.chain_id != self.chain) {
            return Err(Refusal::WrongChain);
        }
        if !unverified.is_empty()
            && !verify_encoded(&unverified.iter().collect::<Vec<_>>())
                .into_iter()
                .all(|ok| ok)
        {
            return Err(Refusal::BadSignature);
        }
        let mut hashes: HashSet<Digest> = HashSet::with_capacity(txs.len());
        if !txs.iter().all(|(_, h)| hashes.insert(*h)) {
            return Err(Refusal::Duplicate);
        }
        // Each sender's nonces: consecutive, in block order.
        let mut runs: HashMap<[u8; 32], (Span, usize)> = HashMap::new();
        for (i, (t, _)) in txs.iter().enumerate() {
            let key = t.transfer.sender.to_bytes();
            let n = t.transfer.nonce;
            match runs.get_mut(&key) {
                None => {
                    runs.insert(key, (Span::of(n), i));
                }
                Some((span, _)) if span.max.checked_add(1) == Some(n) => span.add(n),
                Some(_) => return Err(Refusal::NonceOrder),
            }
        }
        // Against the committed state: read the head first, so that every
        // later read is of that state or a later one on the same chain.
        let head = self.store.head();
        let added = self.ancestors_added(block.header.parent, head.height);
        for (key, (Span { min: first, .. }, i)) in &runs {
            let committed = self
                .store
                .account(&txs[*i].0.transfer.sender)
                .map_err(|_| Refusal::Read)?
                .map_or(0, |a| a.nonce);
            if *first < committed {
                return Err(Refusal::NonceTooLow);
            }
            if let Some(added) = &added {
                let most = committed.saturating_add(added.get(key).copied().unwrap_or(0));
                if *first > most {
                    return Err(Refusal::NonceTooHigh);
                }
            }
        }
        let senders = runs.iter().map(|(k, (span, _))| (*k, *span)).collect();
        self.remember(block, senders, head.height);
        Ok(())
    }

    /// Notes a block this validator persisted without checking it here (its
    /// own proposal, a block fetched by id), so that the nonce bound can
    /// see through it. Items the mempool does not hold are decoded.
    pub fn note_block(&self, block: &Block) {
        if self
            .summaries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&block.id())
        {
            return;
        }
        let Ok(items) = decode_payload(&block.payload) else {
            return;
        };
        let known: Vec<Option<([u8; 32], u64)>> = {
            let pool = self.shared.pool();
            items
                .iter()
                .map(|i| {
                    pool.verified_by_bytes(&Digest::of(i))
                        .map(|(t, _)| (t.transfer.sender.to_bytes(), t.transfer.nonce))
                })
                .collect()
        };
        let mut senders: HashMap<[u8; 32], Span> = HashMap::new();
        for (item, known) in items.iter().zip(known) {
            let (key, nonce) = match known {
                Some(k) => k,
                None => match SignedTransfer::decode(item) {
                    Ok(t) => (t.transfer.sender.to_bytes(), t.transfer.nonce),
                    Err(_) => continue,
                },
            };
            senders
                .entry(key)
                .and_modify(|s| s.add(nonce))
                .or_insert_with(|| Span::of(nonce));
        }
        self.remember(block, senders, self.store.head().height);
    }

    /// Items per sender in the blocks from `parent` down to
    /// [`RECENT_BLOCKS`] below the executed height `executed`, if this
    /// validator holds a summary of each; `None` if the chain in between is
    /// not fully known (then no upper bound is applied: never refuse what
    /// might be honest).
    fn ancestors_added(&self, parent: Digest, executed: u64) -> Option<HashMap<[u8; 32], u64>> {
        let floor = executed.saturating_sub(RECENT_BLOCKS);
        let summaries = self.summaries.lock().unwrap_or_else(|e| e.into_inner());
        let mut added: HashMap<[u8; 32], u64> = HashMap::new();
        let mut id = parent;
        loop {
            match summaries.get(&id) {
                Some(s) if s.height > floor => {
                    for (k, span) in &s.senders {
                        *added.entry(*k).or_default() += span.count;
                    }
                    id = s.parent;
                }
                Some(_) => return Some(added),
                // Not summarised: fine only if committed at or below the
                // floor (genesis, early in a chain).
                None => {
                    let h = self.store.height_of(&id).ok()??;
                    return (h.0 <= floor).then_some(added);
                }
            }
        }
    }

    /// The nonces each sender's items take in the blocks from `parent` down
    /// to the executed height (as a range per sender): a leader extending
    /// `parent` proposes none of them again, even signed otherwise (a
    /// sender that signs two transfers with one nonce must not get an
    /// honest leader's block refused).
    pub fn taken_nonces(&self, parent: Digest) -> HashMap<[u8; 32], (u64, u64)> {
        let executed = self.store.head().height;
        let summaries = self.summaries.lock().unwrap_or_else(|e| e.into_inner());
        let mut taken: HashMap<[u8; 32], (u64, u64)> = HashMap::new();
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

    fn remember(&self, block: &Block, senders: HashMap<[u8; 32], Span>, executed: u64) {
        let floor = executed.saturating_sub(RECENT_BLOCKS);
        let mut summaries = self.summaries.lock().unwrap_or_else(|e| e.into_inner());
        summaries.retain(|_, s| s.height > floor);
        if summaries.len() >= MAX_SUMMARIES
            && let Some(lowest) = summaries
                .iter()
                .min_by_key(|(_, s)| s.height)
                .map(|(id, _)| *id)
        {
            summaries.remove(&lowest);
        }
        summaries.insert(
            block.id(),
            Summary {
                parent: block.header.parent,
                height: block.height().0,
                senders,
            },
        );
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
