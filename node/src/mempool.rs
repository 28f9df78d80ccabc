//! The mempool: transactions waiting to be ordered.
//!
//! This module owns admission (chain, nonce window, funds, bounds by count
//! and by bytes, deduplication by hash), the choice of what a leader
//! proposes (arrival order, each sender's transactions in nonce order), and
//! eviction (applied, stale, expired, displaced). Signatures are checked
//! before a transaction gets here, once; entries are indexed by the hash of
//! their exact bytes too, so that execution can skip re-verifying a block's
//! transactions the pool already verified. It never touches the network or
//! the disk.
//!
//! The economics (genesis parameters, see the README): a transaction
//! waiting behind a nonce gap ("future") can never be proposed until the
//! gap closes, so it is what spam costs least to send: each sender may
//! have at most `future_per_sender` of them, all together at most
//! `future_max`, and a full pool evicts them first to admit a transaction
//! that can be proposed now. Every entry leaves after `ttl_ms`, proposed
//! or not. A refused execution (a failure receipt) does not evict: only an
//! applied transaction, or the sender's nonce moving past it, does.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

// Keys are hashes and keys of clients' choosing: a seeded hasher (foldhash,
// hashbrown's default) resists crafted collisions and costs a fraction of
// SipHash on 32-byte keys, which every admission and commit hashes several
// times.
use foldhash::{HashMap, HashMapExt};

use phalanx_crypto::Digest;
use phalanx_ledger::{Account, SignedTransfer};

/// [`Mempool::overdue`] stops counting here: the figure is an alarm, and
/// walking a backlog of old entries every second would cost more than it
/// tells.
pub const OVERDUE_COUNT_MAX: usize = 10_000;

/// Pool limits.
#[derive(Clone, Copy, Debug)]
pub struct MempoolLimits {
    /// Most transactions held.
    pub max_txs: usize,
    /// Most bytes of transactions held.
    pub max_bytes: usize,
    /// How far beyond a sender's next nonce a transaction may be.
    pub max_nonce_gap: u64,
    /// Most transactions one sender may have waiting behind a nonce gap.
    pub future_per_sender: usize,
    /// Most transactions waiting behind a nonce gap, all senders together.
    pub future_max: usize,
    /// How long an entry may stay, ms.
    pub ttl_ms: u64,
}

impl MempoolLimits {
    /// The limits for a node's configured bounds and the chain's genesis
    /// parameters.
    pub fn new(
        max_txs: usize,
        max_bytes: usize,
        max_nonce_gap: u64,
        params: &phalanx_ledger::Params,
    ) -> MempoolLimits {
        MempoolLimits {
            max_txs,
            max_bytes,
            max_nonce_gap,
            future_per_sender: params.mempool_future_per_sender as usize,
            future_max: max_txs * params.mempool_future_share_percent as usize / 100,
            ttl_ms: params.mempool_ttl_ms,
        }
    }
}

impl Default for MempoolLimits {
    fn default() -> Self {
        MempoolLimits::new(100_000, 64 << 20, 64, &phalanx_ledger::Params::default())
    }
}

/// Why a transaction was not admitted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The pool is at its count or byte limit.
    #[error("mempool full ({txs} transactions, {bytes} bytes); retry later")]
    Full {
        /// Transactions held.
        txs: usize,
        /// Bytes held.
        bytes: usize,
    },
    /// The nonce was already used.
    #[error("nonce too low: the sender's next nonce is {expected}, got {got}")]
    NonceTooLow {
        /// The sender's next nonce.
        expected: u64,
        /// The transaction's.
        got: u64,
    },
    /// The nonce is too far ahead.
    #[error(
        "nonce too high: the sender's next nonce is {expected}, got {got} (at most {max_gap} ahead)"
    )]
    NonceTooHigh {
        /// The sender's next nonce.
        expected: u64,
        /// The transaction's.
        got: u64,
        /// The window.
        max_gap: u64,
    },
    /// Another transaction with this sender and nonce is pending.
    #[error("another transaction with nonce {nonce} from this sender is pending")]
    NonceTaken {
        /// The nonce.
        nonce: u64,
    },
    /// The sender cannot pay.
    #[error("insufficient funds: balance {balance}, needed {needed}")]
    InsufficientFunds {
        /// Committed balance.
        balance: u64,
        /// The legs' sum (or `u64::MAX` on overflow).
        needed: u64,
    },
    /// The sender already has the most transactions waiting behind a nonce
    /// gap that one sender may have.
    #[error(
        "this sender has {limit} transactions waiting behind a nonce gap, the most allowed; send the missing nonce first"
    )]
    FutureLimit {
        /// The per-sender limit.
        limit: usize,
    },
    /// The pool's share for transactions waiting behind a nonce gap is
    /// full.
    #[error(
        "the mempool holds its limit of {limit} transactions waiting behind a nonce gap; send the missing nonce first"
    )]
    FutureFull {
        /// The limit, all senders together.
        limit: usize,
    },
}

struct Entry {
    /// Shared with the blocks that execute it (see `verified_by_bytes`).
    tx: Arc<SignedTransfer>,
    bytes: Vec<u8>,
    raw: Digest,
    seq: u64,
    /// When admitted (the node's steady clock, ms).
    added_ms: u64,
    /// Waiting behind a nonce gap: in `Mempool::future`.
    gapped: bool,
    /// The uncommitted block carrying it, if any.
    in_flight: Option<InFlight>,
}

/// Where a pending transaction sits in an uncommitted block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct InFlight {
    height: u64,
    /// `None`: this node's own proposal, whose id is not known yet.
    block: Option<Digest>,
}

/// An item of an uncommitted block, by its exact bytes.
#[derive(Clone, Copy, Debug)]
struct Seen {
    at: InFlight,
    /// The validity rule verified these bytes' signature (see
    /// [`Mempool::vouch`]).
    verified: bool,
}

/// The pool.
pub struct Mempool {
    limits: MempoolLimits,
    entries: HashMap<Digest, Entry>,
    /// Entries by the hash of their exact bytes, with the decoded
    /// transaction: the validity rule's lookup, one per item of every
    /// proposal, is then one probe.
    by_raw: HashMap<Digest, (Digest, Arc<SignedTransfer>)>,
    by_sender: HashMap<[u8; 32], BTreeMap<u64, Digest>>,
    arrival: BTreeMap<u64, Digest>,
    /// Exact-bytes hashes seen in uncommitted blocks, so a transaction that
    /// arrives after the block carrying it is marked at once.
    in_blocks: HashMap<Digest, Seen>,
    /// Entries marked in flight, by the height they were marked for, so a
    /// commit visits only those rather than the whole pool (which under a
    /// backlog holds tens of thousands).
    flights: BTreeMap<u64, Vec<Digest>>,
    /// Each sender's committed nonce, as last learnt (at admission or at a
    /// commit): where its run of proposable nonces starts.
    base: HashMap<[u8; 32], u64>,
    /// Entries waiting behind a nonce gap, by arrival.
    future: BTreeMap<u64, Digest>,
    next_seq: u64,
    bytes: usize,
}

/// Whether a transaction was new.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admitted {
    /// Added to the pool.
    New,
    /// Already pending: nothing changed.
    Known,
}

impl Mempool {
    /// An empty pool.
    pub fn new(limits: MempoolLimits) -> Mempool {
        Mempool {
            limits,
            entries: HashMap::new(),
            by_raw: HashMap::new(),
            by_sender: HashMap::new(),
            arrival: BTreeMap::new(),
            in_blocks: HashMap::new(),
            flights: BTreeMap::new(),
            base: HashMap::new(),
            future: BTreeMap::new(),
            next_seq: 0,
            bytes: 0,
        }
    }

    /// Entries waiting behind a nonce gap.
    pub fn future_len(&self) -> usize {
        self.future.len()
    }

    /// Transactions held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The bounds.
    pub fn limits(&self) -> &MempoolLimits {
        &self.limits
    }

    /// True if a transaction with this hash is pending.
    pub fn contains(&self, hash: &Digest) -> bool {
        self.entries.contains_key(hash)
    }

    /// True if these exact bytes are pending (and so already verified).
    pub fn holds_bytes(&self, raw: &Digest) -> bool {
        self.by_raw.contains_key(raw)
    }

    /// The decoded (and signature-checked) transaction whose exact bytes
    /// hash to `raw`, with its hash, if pending here.
    pub fn verified_by_bytes(&self, raw: &Digest) -> Option<(Arc<SignedTransfer>, Digest)> {
        self.by_raw.get(raw).map(|(hash, tx)| (tx.clone(), *hash))
    }

    /// True if some transaction is in no block yet. In flight are at most
    /// the few uncommitted blocks' worth, so under a backlog this stops
    /// early rather than visiting the whole pool.
    pub fn has_proposable(&self) -> bool {
        self.entries.values().any(|e| e.in_flight.is_none())
    }

    /// Admits a transaction whose signature and chain were checked, given
    /// its sender's committed account, at `now_ms` (the node's steady
    /// clock).
    pub fn insert(
        &mut self,
        tx: SignedTransfer,
        bytes: Vec<u8>,
        hash: Digest,
        sender: Account,
        now_ms: u64,
    ) -> Result<Admitted, Rejection> {
        let raw = Digest::of(&bytes);
        self.insert_hashed(tx, bytes, raw, hash, sender, now_ms)
    }

    /// [`Mempool::insert`], given the hash of the exact bytes (`raw`), which
    /// admission has computed already.
    pub fn insert_hashed(
        &mut self,
        tx: SignedTransfer,
        bytes: Vec<u8>,
        raw: Digest,
        hash: Digest,
        sender: Account,
        now_ms: u64,
    ) -> Result<Admitted, Rejection> {
        debug_assert_eq!(raw, Digest::of(&bytes));
        self.expire(now_ms);
        if self.entries.contains_key(&hash) {
            return Ok(Admitted::Known);
        }
        let t = &tx.transfer;
        let nonce = t.nonce;
        if t.nonce < sender.nonce {
            return Err(Rejection::NonceTooLow {
                expected: sender.nonce,
                got: t.nonce,
            });
        }
        if t.nonce > sender.nonce.saturating_add(self.limits.max_nonce_gap) {
            return Err(Rejection::NonceTooHigh {
                expected: sender.nonce,
                got: t.nonce,
                max_gap: self.limits.max_nonce_gap,
            });
        }
        let needed = t.total().unwrap_or(u64::MAX);
        if needed > sender.balance {
            return Err(Rejection::InsufficientFunds {
                balance: sender.balance,
                needed,
            });
        }
        let key = t.sender.to_bytes();
        if self
            .by_sender
            .get(&key)
            .is_some_and(|m| m.contains_key(&t.nonce))
        {
            return Err(Rejection::NonceTaken { nonce: t.nonce });
        }
        let base = self.base.get(&key).copied().unwrap_or(0).max(sender.nonce);
        let gapped = t.nonce > self.run_end(&key, base);
        if gapped {
            let mine = self
                .by_sender
                .get(&key)
                .map_or(0, |m| m.values().filter(|h| self.is_gapped(h)).count());
            if mine >= self.limits.future_per_sender {
                return Err(Rejection::FutureLimit {
                    limit: self.limits.future_per_sender,
                });
            }
            if self.future.len() >= self.limits.future_max {
                return Err(Rejection::FutureFull {
                    limit: self.limits.future_max,
                });
            }
        }
        // A transaction that can be proposed now displaces the oldest ones
        // waiting behind a gap rather than be refused.
        while self.entries.len() >= self.limits.max_txs
            || self.bytes + bytes.len() > self.limits.max_bytes
        {
            let victim = match self.future.first_key_value() {
                Some((_, h)) if !gapped => *h,
                _ => {
                    return Err(Rejection::Full {
                        txs: self.entries.len(),
                        bytes: self.bytes,
                    });
                }
            };
            self.remove_and_reclassify(&victim);
        }
        let old_base = self.base.insert(key, base);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.by_sender.entry(key).or_default().insert(t.nonce, hash);
        self.arrival.insert(seq, hash);
        let tx = Arc::new(tx);
        self.by_raw.insert(raw, (hash, tx.clone()));
        self.bytes += bytes.len();
        let in_flight = self.in_blocks.get(&raw).map(|s| s.at);
        if let Some(f) = in_flight {
            self.flights.entry(f.height).or_default().push(hash);
        }
        self.entries.insert(
            hash,
            Entry {
                tx,
                bytes,
                raw,
                seq,
                added_ms: now_ms,
                gapped: false,
                in_flight,
            },
        );
        // The new entry's class is known; only a moved base or a nonce
        // that closes a gap before later entries changes the others'
        // (taking them out from behind the gap). Otherwise, a sender's next
        // nonce being the common case, the walk over its entries is saved.
        let later = self
            .by_sender
            .get(&key)
            .is_some_and(|m| m.range(nonce.saturating_add(1)..).next().is_some());
        if gapped && let Some(e) = self.entries.get_mut(&hash) {
            e.gapped = true;
            self.future.insert(seq, hash);
        }
        if old_base != Some(base) || (later && !gapped) {
            self.reclassify_ungap(&key);
        }
        Ok(Admitted::New)
    }

    /// The first nonce from `base` on that the sender has no entry for.
    fn run_end(&self, key: &[u8; 32], base: u64) -> u64 {
        let mut n = base;
        if let Some(m) = self.by_sender.get(key) {
            for (nonce, _) in m.range(base..) {
                if *nonce != n {
                    break;
                }
                n += 1;
            }
        }
        n
    }

    fn is_gapped(&self, hash: &Digest) -> bool {
        self.entries.get(hash).is_some_and(|e| e.gapped)
    }

    /// Marks which of a sender's entries wait behind a nonce gap (those
    /// after the run of consecutive nonces from its committed nonce).
    fn reclassify(&mut self, key: &[u8; 32]) {
        let base = self.base.get(key).copied().unwrap_or(0);
        let end = self.run_end(key, base);
        let Some(m) = self.by_sender.get(key) else {
            self.base.remove(key);
            return;
        };
        for (nonce, hash) in m {
            if let Some(e) = self.entries.get_mut(hash) {
                let gapped = *nonce > end;
                if gapped != e.gapped {
                    e.gapped = gapped;
                    if gapped {
                        self.future.insert(e.seq, *hash);
                    } else {
                        self.future.remove(&e.seq);
                    }
                }
            }
        }
        debug_assert!(self.future.len() <= self.entries.len());
    }

    /// [`Mempool::reclassify`] after a change that can only take entries
    /// out from behind a gap: a raised base, or a nonce that closes a gap
    /// (removals below the base, as at a commit, change nothing else). With
    /// no entry behind a gap anywhere, the usual state, there is nothing to
    /// do.
    fn reclassify_ungap(&mut self, key: &[u8; 32]) {
        if !self.future.is_empty() {
            self.reclassify(key);
        }
    }

    /// Drops entries older than the time to live; returns how many.
    pub fn expire(&mut self, now_ms: u64) -> usize {
        let mut gone = 0;
        while let Some((_, h)) = self.arrival.first_key_value() {
            let h = *h;
            let Some(e) = self.entries.get(&h) else {
                break;
            };
            if e.added_ms.saturating_add(self.limits.ttl_ms) > now_ms {
                break;
            }
            self.remove_and_reclassify(&h);
            gone += 1;
        }
        gone
    }

    /// How many proposable entries (not behind a nonce gap, not in an
    /// uncommitted block) were admitted `bound_ms` or more before `now_ms`,
    /// counted up to [`OVERDUE_COUNT_MAX`]. Every validator receives every
    /// admitted transaction, so a count above zero at f + 1 validators
    /// means honest validators hold a valid transaction that leaders keep
    /// leaving out: censorship, or a chain that has stopped.
    pub fn overdue(&self, now_ms: u64, bound_ms: u64) -> usize {
        let mut n = 0;
        for h in self.arrival.values() {
            let Some(e) = self.entries.get(h) else {
                continue;
            };
            if e.added_ms.saturating_add(bound_ms) > now_ms || n >= OVERDUE_COUNT_MAX {
                break;
            }
            if !e.gapped && e.in_flight.is_none() {
                n += 1;
            }
        }
        n
    }

    fn remove_and_reclassify(&mut self, hash: &Digest) {
        let Some(key) = self
            .entries
            .get(hash)
            .map(|e| e.tx.transfer.sender.to_bytes())
        else {
            return;
        };
        self.remove(hash);
        self.reclassify(&key);
    }

    /// Chooses up to `max_txs` transactions and `max_bytes` bytes for a
    /// block at `height`, oldest first, each sender's in nonce order
    /// starting at its committed nonce (`account_of` gives the committed
    /// account) and past those already in the new block's uncommitted
    /// ancestors (`ancestors`; a transaction in a block off that chain,
    /// which can never commit, is proposed again) and past the nonces those
    /// ancestors' items take whoever signed them (`taken`, a range per
    /// sender). A sender's run stops at the first gap, at an entry in
    /// flight or a taken nonce once the run has begun (so its nonces in the
    /// block are consecutive, as the validity rule demands), and where the
    /// committed balance no longer pays. The chosen are marked in flight.
    pub fn select(
        &mut self,
        height: u64,
        max_txs: usize,
        max_bytes: usize,
        ancestors: &HashSet<Digest>,
        taken: &std::collections::HashMap<[u8; 32], (u64, u64)>,
        account_of: impl Fn(&SignedTransfer) -> Account,
    ) -> Vec<Vec<u8>> {
        // In flight on the chain being extended: never proposed twice.
        let blocked = |f: &Option<InFlight>| match f {
            None => false,
            Some(InFlight { block: None, .. }) => true,
            Some(InFlight {
                block: Some(id), ..
            }) => ancestors.contains(id),
        };
        let mut done: HashSet<[u8; 32]> = HashSet::new();
        let mut chosen: Vec<Digest> = Vec::new();
        let mut bytes = 0usize;
        'outer: for h in self.arrival.values() {
            let Some(e) = self.entries.get(h) else {
                continue;
            };
            if blocked(&e.in_flight) {
                continue;
            }
            let key = e.tx.transfer.sender.to_bytes();
            if !done.insert(key) {
                continue;
            }
            let Some(by_nonce) = self.by_sender.get(&key) else {
                continue;
            };
            let account = account_of(&e.tx);
            let mut n = account.nonce;
            let mut funds = account.balance;
            let mut begun = false;
            let taken = taken.get(&key).copied();
            // Take this sender's run of consecutive nonces from `n`.
            loop {
                if let Some((lo, hi)) = taken
                    && (lo..=hi).contains(&n)
                {
                    if begun {
                        break;
                    }
                    n = hi.saturating_add(1);
                    continue;
                }
                let Some(hash) = by_nonce.get(&n) else {
                    break;
                };
                let Some(cand) = self.entries.get(hash) else {
                    break;
                };
                if blocked(&cand.in_flight) {
                    if begun {
                        break;
                    }
                } else {
                    let Some(rest) = cand.tx.transfer.total().and_then(|t| funds.checked_sub(t))
                    else {
                        break;
                    };
                    if chosen.len() == max_txs || bytes + cand.bytes.len() > max_bytes {
                        break 'outer;
                    }
                    funds = rest;
                    begun = true;
                    bytes += cand.bytes.len();
                    chosen.push(*hash);
                }
                n += 1;
            }
        }
        let mut out = Vec::with_capacity(chosen.len());
        for h in chosen {
            if let Some(e) = self.entries.get_mut(&h) {
                e.in_flight = Some(InFlight {
                    height,
                    block: None,
                });
                self.flights.entry(height).or_default().push(h);
                out.push(e.bytes.clone());
            }
        }
        out
    }

    /// Marks a block's transactions (by exact bytes hash) as in flight in
    /// block `block` at `height`, so that a leader extending that block
    /// does not propose them again. Remembered for transactions that arrive
    /// later, until a block at that height commits.
    pub fn mark_in_flight(&mut self, raw_hashes: &[Digest], height: u64, block: Digest) {
        let f = InFlight {
            height,
            block: Some(block),
        };
        for r in raw_hashes {
            self.in_blocks
                .entry(*r)
                .and_modify(|s| s.at = f)
                .or_insert(Seen {
                    at: f,
                    verified: false,
                });
            if let Some((h, _)) = self.by_raw.get(r)
                && let Some(e) = self.entries.get_mut(h)
            {
                e.in_flight = Some(f);
                self.flights.entry(height).or_default().push(*h);
            }
        }
    }

    /// Notes that the validity rule verified the signatures of these items
    /// of an uncommitted block it marked (by exact bytes hash), so that a
    /// copy arriving later by gossip is not verified again (see
    /// [`Mempool::verified_in_block`]). Forgotten with the marks.
    pub fn vouch(&mut self, raw_hashes: &[Digest]) {
        for r in raw_hashes {
            if let Some(s) = self.in_blocks.get_mut(r) {
                s.verified = true;
            }
        }
    }

    /// True if these exact bytes are an item of an uncommitted block whose
    /// signature the validity rule verified.
    pub fn verified_in_block(&self, raw: &Digest) -> bool {
        self.in_blocks.get(raw).is_some_and(|s| s.verified)
    }

    /// A block at `height` committed, applying the transactions with
    /// these hashes: they leave the pool; transactions of touched senders
    /// whose nonce is now used leave too (`nonce_of` gives committed
    /// nonces); entries past their time to live at `now_ms` leave; and
    /// transactions in flight in blocks at or below `height` that did not
    /// apply are proposable again. (An item refused at execution, such as
    /// a Byzantine leader's copy with a broken signature, names no entry
    /// here and evicts nothing.)
    pub fn committed(
        &mut self,
        height: u64,
        applied: &[Digest],
        nonce_of: impl Fn(&[u8; 32]) -> u64,
        now_ms: u64,
    ) {
        let mut senders: Vec<[u8; 32]> = Vec::new();
        for h in applied {
            if let Some(e) = self.entries.get(h) {
                senders.push(e.tx.transfer.sender.to_bytes());
            }
            self.remove(h);
        }
        senders.sort_unstable();
        senders.dedup();
        for s in senders {
            let floor = nonce_of(&s);
            let stale: Vec<Digest> = self
                .by_sender
                .get(&s)
                .map(|m| m.range(..floor).map(|(_, h)| *h).collect())
                .unwrap_or_default();
            for h in stale {
                self.remove(&h);
            }
            if self.by_sender.contains_key(&s) {
                let base = self.base.entry(s).or_default();
                *base = (*base).max(floor);
            } else {
                self.base.remove(&s);
            }
            self.reclassify_ungap(&s);
        }
        self.expire(now_ms);
        let later = self.flights.split_off(&(height + 1));
        for h in std::mem::replace(&mut self.flights, later)
            .into_values()
            .flatten()
        {
            if let Some(e) = self.entries.get_mut(&h)
                && e.in_flight.is_some_and(|f| f.height <= height)
            {
                e.in_flight = None;
            }
        }
        debug_assert!(
            self.entries
                .values()
                .all(|e| e.in_flight.is_none_or(|f| f.height > height)),
            "an entry in flight at or below a committed height"
        );
        self.in_blocks.retain(|_, s| s.at.height > height);
    }

    fn remove(&mut self, hash: &Digest) {
        let Some(e) = self.entries.remove(hash) else {
            return;
        };
        self.bytes -= e.bytes.len();
        self.arrival.remove(&e.seq);
        self.future.remove(&e.seq);
        self.by_raw.remove(&e.raw);
        let key = e.tx.transfer.sender.to_bytes();
        if let Some(m) = self.by_sender.get_mut(&key) {
            m.remove(&e.tx.transfer.nonce);
            if m.is_empty() {
                self.by_sender.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use phalanx_crypto::{ChainId, KeyPair, encode};
    use phalanx_ledger::{Leg, Transfer};

    fn key(i: u8) -> KeyPair {
        KeyPair::from_seed([i; 32])
    }

    fn tx(from: u8, nonce: u64, amount: u64) -> (SignedTransfer, Vec<u8>, Digest) {
        let t = Transfer {
            chain_id: ChainId::new("c").unwrap(),
            sender: key(from).public(),
            nonce,
            legs: vec![Leg {
                to: key(99).public(),
                amount,
            }],
        }
        .sign(&key(from));
        let bytes = encode(&t);
        let h = t.hash();
        (t, bytes, h)
    }

    fn none() -> HashSet<Digest> {
        HashSet::new()
    }

    fn no_taken() -> std::collections::HashMap<[u8; 32], (u64, u64)> {
        std::collections::HashMap::new()
    }

    fn acct(balance: u64, nonce: u64) -> Account {
        Account { balance, nonce }
    }

    fn add(p: &mut Mempool, from: u8, nonce: u64) -> Result<Admitted, Rejection> {
        let (t, b, h) = tx(from, nonce, 1);
        p.insert(t, b, h, acct(100, 0), 0)
    }

    /// Every entry's class, recomputed from scratch: behind a gap exactly
    /// when its nonce is past the run of consecutive nonces from its
    /// sender's base; `future` holds exactly those.
    fn assert_classes(p: &Mempool) {
        for (key, m) in &p.by_sender {
            let base = p.base.get(key).copied().unwrap_or(0);
            let end = p.run_end(key, base);
            for (nonce, h) in m {
                let e = &p.entries[h];
                assert_eq!(e.gapped, *nonce > end, "nonce {nonce}, run end {end}");
                assert_eq!(p.future.get(&e.seq) == Some(h), e.gapped);
            }
        }
        assert_eq!(
            p.future.len(),
            p.entries.values().filter(|e| e.gapped).count()
        );
        // No base outlives its sender's entries (the map stays bounded).
        assert!(p.base.keys().all(|k| p.by_sender.contains_key(k)));
    }

    #[test]
    fn classes_kept_as_entries_come_and_go_match_a_full_recount() {
        // A fixed pseudo-random walk (xorshift) of admissions in any nonce
        // order, with committed nonces that move ahead of the pool's view.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let mut p = Mempool::new(limits(10_000, 64, 10_000));
        let mut committed = [0u64; 4];
        for step in 0..3_000u64 {
            let from = next(4) as usize;
            match next(10) {
                0 => {
                    // A block applied some of this sender's nonces, which
                    // this pool may or may not hold.
                    committed[from] += next(3);
                    let c = committed;
                    let sender = key(from as u8 + 1).public().to_bytes();
                    let applied: Vec<Digest> = p
                        .by_sender
                        .get(&sender)
                        .map(|m| m.range(..c[from]).map(|(_, h)| *h).collect())
                        .unwrap_or_default();
                    let nonce_of = |k: &[u8; 32]| {
                        (0..4)
                            .find(|i| key(*i as u8 + 1).public().to_bytes() == *k)
                            .map_or(0, |i| c[i])
                    };
                    p.committed(step, &applied, nonce_of, 0);
                }
                _ => {
                    let nonce = committed[from] + next(12);
                    let (t, b, h) = tx(from as u8 + 1, nonce, 1);
                    let _ = p.insert(t, b, h, acct(1_000_000, committed[from]), 0);
                }
            }
            assert_classes(&p);
        }
        assert!(p.future_len() > 0 && p.future_len() < p.len());
    }

    #[test]
    fn admission_rules_each_give_their_reason() {
        let limits = MempoolLimits {
            max_txs: 3,
            max_bytes: 1 << 20,
            max_nonce_gap: 4,
            ..MempoolLimits::default()
        };
        let mut p = Mempool::new(limits);
        let (t, b, h) = tx(1, 0, 10);
        assert_eq!(
            p.insert(t.clone(), b.clone(), h, acct(100, 0), 0),
            Ok(Admitted::New)
        );
        assert_eq!(p.insert(t, b, h, acct(100, 0), 0), Ok(Admitted::Known));
        let (t, b, h) = tx(1, 0, 11);
        assert_eq!(
            p.insert(t, b, h, acct(100, 0), 0),
            Err(Rejection::NonceTaken { nonce: 0 })
        );
        let (t, b, h) = tx(2, 0, 1);
        assert!(matches!(
            p.insert(t, b, h, acct(100, 1), 0),
            Err(Rejection::NonceTooLow {
                expected: 1,
                got: 0
            })
        ));
        let (t, b, h) = tx(2, 9, 1);
        assert!(matches!(
            p.insert(t, b, h, acct(100, 0), 0),
            Err(Rejection::NonceTooHigh { .. })
        ));
        let (t, b, h) = tx(2, 0, 500);
        assert!(matches!(
            p.insert(t, b, h, acct(100, 0), 0),
            Err(Rejection::InsufficientFunds {
                balance: 100,
                needed: 500
            })
        ));
        add(&mut p, 3, 0).unwrap();
        add(&mut p, 4, 0).unwrap();
        assert!(matches!(
            add(&mut p, 5, 0),
            Err(Rejection::Full { txs: 3, .. })
        ));
        assert_eq!(p.len(), 3);
    }

    #[test]
    fn selection_follows_nonces_and_skips_what_is_in_flight() {
        let mut p = Mempool::new(MempoolLimits::default());
        // Sender 1's nonce 1 arrives before nonce 0.
        add(&mut p, 1, 1).unwrap();
        add(&mut p, 2, 0).unwrap();
        add(&mut p, 1, 0).unwrap();
        add(&mut p, 1, 3).unwrap(); // gap: not proposable yet
        let block = p.select(1, 100, 1 << 20, &none(), &no_taken(), |_| acct(100, 0));
        assert_eq!(block.len(), 3, "1/0, 1/1 and 2/0; 1/3 waits for 1/2");
        // In flight: nothing more to propose at the next height.
        assert!(
            p.select(2, 100, 1 << 20, &none(), &no_taken(), |_| acct(100, 0))
                .is_empty()
        );
        // The block at 1 never commits: at the commit of height 1 by another
        // block, they are proposable again.
        p.committed(1, &[], |_| 0, 0);
        assert_eq!(
            p.select(2, 2, 1 << 20, &none(), &no_taken(), |_| acct(100, 0))
                .len(),
            2,
            "bounded by count"
        );
    }

    #[test]
    fn commits_evict_included_and_stale_transactions() {
        let mut p = Mempool::new(MempoolLimits::default());
        let (t0, b0, h0) = tx(1, 0, 1);
        p.insert(t0, b0, h0, acct(100, 0), 0).unwrap();
        add(&mut p, 1, 1).unwrap();
        add(&mut p, 1, 2).unwrap();
        assert_eq!(p.len(), 3);
        // Block committed h0, and the sender's nonce is now 2 (another
        // node's copy of nonce 1 made it in under another hash).
        p.committed(5, &[h0], |_| 2, 0);
        assert_eq!(p.len(), 1, "only nonce 2 remains");
        assert_eq!(
            p.select(6, 10, 1 << 20, &none(), &no_taken(), |_| acct(100, 2))
                .len(),
            1
        );
    }

    #[test]
    fn byte_bound_and_exact_bytes_index() {
        let (t, b, h) = tx(1, 0, 1);
        let mut p = Mempool::new(MempoolLimits {
            max_bytes: b.len() * 2,
            ..MempoolLimits::default()
        });
        p.insert(t, b.clone(), h, acct(100, 0), 0).unwrap();
        assert!(p.holds_bytes(&Digest::of(&b)));
        add(&mut p, 2, 0).unwrap();
        assert!(matches!(add(&mut p, 3, 0), Err(Rejection::Full { .. })));
        assert_eq!(p.bytes(), b.len() * 2);
        let block = Digest::of(b"block");
        assert!(!Mempool::new(MempoolLimits::default()).has_proposable());
        p.mark_in_flight(&[Digest::of(&b)], 4, block);
        assert!(p.has_proposable());
        // In flight on the chain being extended: skipped; in a block off
        // that chain: proposed again.
        let on_chain: HashSet<Digest> = [block].into();
        assert_eq!(
            p.select(5, 10, 1 << 20, &on_chain, &no_taken(), |_| acct(100, 0))
                .len(),
            1
        );
        p.committed(4, &[], |_| 0, 0);
        let (t2, b2, h2) = tx(7, 0, 1);
        let mut q = Mempool::new(MempoolLimits::default());
        q.mark_in_flight(&[Digest::of(&b2)], 9, block);
        q.insert(t2, b2, h2, acct(100, 0), 0).unwrap();
        assert!(
            q.select(10, 10, 1 << 20, &on_chain, &no_taken(), |_| acct(100, 0))
                .is_empty(),
            "marked on arrival"
        );
        assert_eq!(
            q.select(10, 10, 1 << 20, &none(), &no_taken(), |_| acct(100, 0))
                .len(),
            1,
            "dead block: proposed again"
        );
    }

    fn limits(max_txs: usize, per_sender: usize, future_max: usize) -> MempoolLimits {
        MempoolLimits {
            max_txs,
            future_per_sender: per_sender,
            future_max,
            ..MempoolLimits::default()
        }
    }

    fn add_at(p: &mut Mempool, from: u8, nonce: u64, now: u64) -> Result<Admitted, Rejection> {
        let (t, b, h) = tx(from, nonce, 1);
        p.insert(t, b, h, acct(100, 0), now)
    }

    #[test]
    fn waiting_behind_a_gap_is_capped_per_sender_and_in_total() {
        let mut p = Mempool::new(limits(1000, 3, 5));
        // Sender 1: nonce 0 is missing, so 1, 2, 3 wait; a fourth is one
        // too many for one sender.
        for n in 1..=3 {
            add_at(&mut p, 1, n, 0).unwrap();
        }
        assert_eq!(
            add_at(&mut p, 1, 4, 0),
            Err(Rejection::FutureLimit { limit: 3 })
        );
        assert_eq!(p.future_len(), 3);
        add_at(&mut p, 2, 1, 0).unwrap();
        add_at(&mut p, 2, 2, 0).unwrap();
        assert_eq!(
            add_at(&mut p, 3, 1, 0),
            Err(Rejection::FutureFull { limit: 5 })
        );
        // Proposable transactions are not counted: sender 3's nonce 0 is.
        add_at(&mut p, 3, 0, 0).unwrap();
        // The missing nonce closes sender 1's gap: its run is proposable
        // and no longer counts against either cap.
        add_at(&mut p, 1, 0, 0).unwrap();
        assert_eq!(p.future_len(), 2);
        add_at(&mut p, 1, 4, 0).unwrap();
        assert_eq!(
            p.select(1, 100, 1 << 20, &none(), &no_taken(), |_| acct(100, 0))
                .len(),
            6,
            "1/0-4 and 3/0; sender 2 waits for its nonce 0"
        );
    }

    #[test]
    fn a_full_pool_displaces_what_waits_behind_a_gap_for_what_can_be_proposed() {
        let mut p = Mempool::new(limits(4, 4, 4));
        add_at(&mut p, 1, 0, 0).unwrap();
        add_at(&mut p, 2, 5, 0).unwrap(); // waits (oldest such)
        add_at(&mut p, 3, 5, 0).unwrap(); // waits
        add_at(&mut p, 4, 0, 0).unwrap();
        // Full: another gapped one is refused …
        assert!(matches!(
            add_at(&mut p, 5, 5, 0),
            Err(Rejection::Full { .. })
        ));
        // … a proposable one displaces the oldest gapped one.
        assert_eq!(add_at(&mut p, 6, 0, 0), Ok(Admitted::New));
        assert_eq!(p.len(), 4);
        assert_eq!(p.future_len(), 1);
        assert!(!p.contains(&tx(2, 5, 1).2) && p.contains(&tx(3, 5, 1).2));
        assert_eq!(add_at(&mut p, 7, 0, 0), Ok(Admitted::New));
        // Nothing left to displace: full.
        assert!(matches!(
            add_at(&mut p, 8, 0, 0),
            Err(Rejection::Full { .. })
        ));
    }

    #[test]
    fn every_entry_leaves_after_its_time_to_live() {
        let ttl = MempoolLimits::default().ttl_ms;
        let mut p = Mempool::new(MempoolLimits::default());
        add_at(&mut p, 1, 0, 1_000).unwrap();
        add_at(&mut p, 2, 3, 2_000).unwrap();
        add_at(&mut p, 3, 0, 5_000).unwrap();
        assert_eq!(p.expire(1_000 + ttl - 1), 0);
        assert_eq!(p.expire(2_000 + ttl), 2, "the two oldest");
        assert_eq!(p.len(), 1);
        assert_eq!(p.future_len(), 0);
        // Admission and commits expire too.
        add_at(&mut p, 4, 0, 5_000 + ttl).unwrap();
        assert!(!p.contains(&tx(3, 0, 1).2));
        p.committed(1, &[], |_| 0, 5_000 + 2 * ttl);
        assert!(p.is_empty());
    }

    #[test]
    fn overdue_counts_proposable_entries_older_than_the_bound_only() {
        let mut p = Mempool::new(MempoolLimits::default());
        add_at(&mut p, 1, 0, 1_000).unwrap();
        add_at(&mut p, 2, 3, 1_000).unwrap(); // behind a gap: not proposable
        add_at(&mut p, 3, 0, 2_000).unwrap();
        add_at(&mut p, 4, 0, 9_000).unwrap();
        assert_eq!(p.overdue(5_000, 10_000), 0, "nothing is that old yet");
        assert_eq!(p.overdue(11_000, 10_000), 1, "sender 1's only");
        assert_eq!(p.overdue(12_500, 10_000), 2, "and sender 3's");
        // In a block: a leader took it; it is not left out.
        p.select(1, 100, 1 << 20, &none(), &no_taken(), |_| acct(100, 0));
        assert_eq!(p.overdue(12_500, 10_000), 0);
        // The block never commits: proposable, and overdue, again.
        p.committed(1, &[], |_| 0, 12_500);
        assert_eq!(p.overdue(30_000, 10_000), 3);
    }

    /// The flood: 200 fresh keys each queueing 64 future-nonce
    /// transfers, funded keys doing the same, and zero-amount transfers
    /// from unfunded keys, then an honest funded transfer.
    #[test]
    fn a_flood_of_future_nonces_never_shuts_out_a_funded_transfer() {
        let mut p = Mempool::new(MempoolLimits::new(
            2_000,
            64 << 20,
            64,
            &phalanx_ledger::Params::default(),
        ));
        let (mut refused, mut admitted) = (0, 0);
        for k in 0..200u32 {
            let mut seed = [7u8; 32];
            seed[..4].copy_from_slice(&k.to_le_bytes());
            let fresh = KeyPair::from_seed(seed);
            // Unfunded: refused, whatever the nonce.
            for n in 1..=64 {
                let t = Transfer {
                    chain_id: ChainId::new("c").unwrap(),
                    sender: fresh.public(),
                    nonce: n,
                    legs: vec![Leg {
                        to: key(99).public(),
                        amount: 1,
                    }],
                }
                .sign(&fresh);
                let (b, h) = (encode(&t), t.hash());
                match p.insert(t.clone(), b.clone(), h, acct(0, 0), 0) {
                    Err(Rejection::InsufficientFunds { .. }) => refused += 1,
                    other => panic!("unfunded admitted: {other:?}"),
                }
                // The same key, funded: only the per-sender cap gets in,
                // and only until the total share is full.
                if p.insert(t, b, h, acct(1_000, 0), 0).is_ok() {
                    admitted += 1;
                }
            }
        }
        assert_eq!(refused, 200 * 64);
        // 10 % of 2,000, from the first 13 senders (16 each).
        let share = 200;
        assert_eq!(admitted, share);
        assert_eq!(p.future_len(), share);
        // The honest transfer is admitted and proposed.
        let (t, b, h) = tx(42, 0, 5);
        assert_eq!(p.insert(t, b, h, acct(100, 0), 0), Ok(Admitted::New));
        let block = p.select(1, 10_000, 1 << 24, &none(), &no_taken(), |t| {
            if t.transfer.sender == key(42).public() {
                acct(100, 0)
            } else {
                acct(1_000, 0)
            }
        });
        assert_eq!(block.len(), 1);
    }

    /// A sender that signed two transfers with one nonce: the leader whose
    /// pool holds the one its block's ancestors do not carry skips that
    /// nonce, and a run stops at a taken nonce once begun.
    #[test]
    fn selection_skips_nonces_the_ancestors_take() {
        let mut p = Mempool::new(MempoolLimits::default());
        for n in 0..3 {
            add(&mut p, 1, n).unwrap();
        }
        let sender = key(1).public().to_bytes();
        let taken: std::collections::HashMap<[u8; 32], (u64, u64)> = [(sender, (0, 0))].into();
        let block = p.select(1, 10, 1 << 20, &none(), &taken, |_| acct(100, 0));
        let nonces: Vec<u64> = block
            .iter()
            .map(|b| SignedTransfer::decode(b).unwrap().transfer.nonce)
            .collect();
        assert_eq!(nonces, [1, 2]);
        p.committed(1, &[], |_| 0, 0);
        let taken: std::collections::HashMap<[u8; 32], (u64, u64)> = [(sender, (1, 1))].into();
        let block = p.select(2, 10, 1 << 20, &none(), &taken, |_| acct(100, 0));
        assert_eq!(block.len(), 1, "nonce 0 only: 1 is taken, 2 would skip it");
    }
}
