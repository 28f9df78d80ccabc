//! Transaction admission: from JSON-RPC and from gossip into the mempool.
//!
//! This module owns the order of checks, cheapest first: size, decoding,
//! chain, already committed or pending (by hash), then signatures, verified
//! in batches on a blocking thread, then the mempool's own rules. Each
//! signature is verified once, here or (for an item of a block that arrived
//! before its gossip) by the validity rule, whose verdict a later copy of
//! the same bytes reuses. New transactions submitted over RPC are
//! handed to gossip in batches. It never decides block contents.

use std::sync::Arc;

use phalanx_crypto::Digest;
use phalanx_ledger::{EncodedTransfer, LedgerError, MAX_TX_BYTES, TxStatus, verify_encoded};
use phalanx_storage::TxRecord;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::mempool::{Admitted, Rejection};
use crate::shared::Shared;

/// Most transactions verified in one batch.
pub const MAX_INGRESS_BATCH: usize = 1024;
/// Submissions queued before RPC callers wait and gossip is dropped.
pub const INGRESS_QUEUE: usize = 16_384;

/// Where a transaction came from.
pub enum Origin {
    /// A client; the answer goes back on the channel.
    Rpc(oneshot::Sender<Result<Submitted, SubmitError>>),
    /// A peer's gossip batch; no answer.
    Gossip,
}

/// One transaction to admit.
pub struct Submission {
    /// Its bytes as received.
    pub bytes: Vec<u8>,
    /// Its origin.
    pub origin: Origin,
}

/// An accepted submission.
#[derive(Clone, Debug)]
pub enum Submitted {
    /// New in the mempool.
    Added(Digest),
    /// Already pending.
    Pending(Digest),
    /// Already committed: its record.
    Committed(Digest, TxRecord),
}

impl Submitted {
    /// Whether it was already committed.
    pub fn is_committed(&self) -> bool {
        matches!(self, Submitted::Committed(..))
    }

    /// The transaction hash.
    pub fn hash(&self) -> Digest {
        match self {
            Submitted::Added(h) | Submitted::Pending(h) | Submitted::Committed(h, _) => *h,
        }
    }
}

/// Why a submission was refused.
#[derive(Clone, Debug, thiserror::Error)]
pub enum SubmitError {
    /// Over the size limit.
    #[error("transaction of {0} bytes exceeds the {MAX_TX_BYTES}-byte limit")]
    TooLarge(usize),
    /// Not a canonical signed transfer.
    #[error("malformed transaction: {0}")]
    Malformed(String),
    /// Signed for another chain.
    #[error("transaction is for chain `{got}`, this is `{expected}`")]
    WrongChain {
        /// This chain.
        expected: String,
        /// The transaction's.
        got: String,
    },
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// A leg moves nothing.
    #[error("leg {leg} moves an amount of 0; every leg moves at least 1")]
    ZeroAmount {
        /// The leg's position.
        leg: usize,
    },
    /// A leg would create an account with less than the chain's minimum.
    #[error(
        "leg {leg} would create account {to} with {amount}, below the chain's minimum balance of {minimum}; send at least {minimum} to a new account"
    )]
    BelowMinimumBalance {
        /// The leg's position.
        leg: usize,
        /// The recipient (hex).
        to: String,
        /// The leg's amount.
        amount: u64,
        /// The chain's minimum.
        minimum: u64,
    },
    /// The mempool refused it.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// A local failure (storage).
    #[error("internal error: {0}")]
    Internal(String),
}

struct Checked {
    tx: EncodedTransfer,
    /// The hash of its exact bytes.
    raw: Digest,
    hash: Digest,
    origin: Origin,
    /// The validity rule verified these exact bytes in a block already.
    vouched: bool,
}

/// The metrics label of a refusal.
pub fn reject_reason(e: &SubmitError) -> &'static str {
    match e {
        SubmitError::TooLarge(_) => "too_large",
        SubmitError::Malformed(_) => "malformed",
        SubmitError::WrongChain { .. } => "wrong_chain",
        SubmitError::BadSignature => "bad_signature",
        SubmitError::ZeroAmount { .. } => "zero_amount",
        SubmitError::BelowMinimumBalance { .. } => "below_minimum_balance",
        SubmitError::Internal(_) => "internal",
        SubmitError::Rejected(r) => match r {
            Rejection::Full { .. } => "mempool_full",
            Rejection::NonceTooLow { .. } => "nonce_too_low",
            Rejection::NonceTooHigh { .. } => "nonce_too_high",
            Rejection::NonceTaken { .. } => "nonce_taken",
            Rejection::InsufficientFunds { .. } => "insufficient_funds",
            Rejection::FutureLimit { .. } => "future_limit",
            Rejection::FutureFull { .. } => "future_full",
        },
    }
}

fn answer(shared: &Shared, origin: Origin, res: Result<Submitted, SubmitError>) {
    if let Err(e) = &res {
        shared.metrics.rejected(reject_reason(e));
    }
    if let Origin::Rpc(tx) = origin {
        // The caller may have gone away; nothing to do then.
        let _ = tx.send(res);
    }
}

/// Runs admission until the channel closes. `gossip_out` receives the
/// bytes of transactions newly admitted from RPC.
pub async fn run(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Submission>,
    gossip_out: mpsc::Sender<Vec<u8>>,
) {
    let mut batch: Vec<Submission> = Vec::with_capacity(MAX_INGRESS_BATCH);
    loop {
        let Some(first) = rx.recv().await else { return };
        batch.push(first);
        while batch.len() < MAX_INGRESS_BATCH {
            match rx.try_recv() {
                Ok(s) => batch.push(s),
                Err(_) => break,
            }
        }
        let checked = cheap_checks(&shared, std::mem::take(&mut batch));
        if checked.is_empty() {
            continue;
        }
        let started = std::time::Instant::now();
        let verified = tokio::task::spawn_blocking(move || {
            // A panic must not take the batch's answer channels with it:
            // every caller gets an answer.
            let sigs = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let txs: Vec<&EncodedTransfer> = checked
                    .iter()
                    .filter(|c| !c.vouched)
                    .map(|c| &c.tx)
                    .collect();
                let mut fresh = verify_encoded(&txs).into_iter();
                checked
                    .iter()
                    .map(|c| c.vouched || fresh.next().unwrap_or(false))
                    .collect::<Vec<bool>>()
            }));
            (checked, sigs)
        })
        .await;
        let (checked, sigs) = match verified {
            Ok((checked, Ok(sigs))) => {
                shared.metrics.verified(
                    crate::metrics::VerifyWhat::TransactionBatch,
                    started.elapsed(),
                );
                (checked, sigs)
            }
            Ok((checked, Err(_))) => {
                warn!("signature verification panicked");
                for c in checked {
                    answer(
                        &shared,
                        c.origin,
                        Err(SubmitError::Internal("verification failed".into())),
                    );
                }
                continue;
            }
            Err(e) => {
                // Only when the runtime is shutting down.
                warn!("signature verification task failed: {e}");
                continue;
            }
        };
        // The committed accounts the batch needs (senders, and for clients
        // the recipients of legs below the new-account minimum), read under
        // one lock. A peer's transaction skips the recipients: the peer that
        // admitted it checked them, and execution enforces the minimum
        // anyway (the check is there to give a client a clear refusal).
        let minimum = shared.min_account_balance;
        let mut keys: Vec<phalanx_crypto::PublicKey> = Vec::with_capacity(checked.len());
        for c in &checked {
            let t = &c.tx.tx().transfer;
            keys.push(t.sender);
            if matches!(c.origin, Origin::Rpc(_)) {
                keys.extend(t.legs.iter().filter(|l| l.amount < minimum).map(|l| l.to));
            }
        }
        let accounts: std::collections::HashMap<[u8; 32], phalanx_ledger::Account> = shared
            .store
            .accounts(&keys)
            .into_iter()
            .zip(&keys)
            .filter_map(|(a, k)| a.map(|a| (k.to_bytes(), a)))
            .collect();
        let account = |k: &phalanx_crypto::PublicKey| {
            accounts.get(&k.to_bytes()).copied().unwrap_or_default()
        };
        let mut added = 0usize;
        for (c, ok) in checked.into_iter().zip(sigs) {
            if !ok {
                answer(&shared, c.origin, Err(SubmitError::BadSignature));
                continue;
            }
            let sender = account(&c.tx.tx().transfer.sender);
            if matches!(c.origin, Origin::Rpc(_))
                && let Err(e) = account_minimum(minimum, c.tx.tx(), account)
            {
                answer(&shared, c.origin, Err(e));
                continue;
            }
            let gossip = matches!(c.origin, Origin::Rpc(_)).then(|| c.tx.bytes().to_vec());
            let (tx, bytes) = c.tx.into_parts();
            let res = shared.pool().insert_hashed(
                tx,
                bytes,
                c.raw,
                c.hash,
                sender,
                crate::shared::now_ms(),
            );
            match res {
                Ok(Admitted::New) => {
                    added += 1;
                    if let Some(bytes) = gossip
                        && gossip_out.try_send(bytes).is_err()
                    {
                        debug!("gossip queue full; peers get this transaction from the block");
                    }
                    answer(&shared, c.origin, Ok(Submitted::Added(c.hash)));
                }
                Ok(Admitted::Known) => answer(&shared, c.origin, Ok(Submitted::Pending(c.hash))),
                Err(r) => answer(&shared, c.origin, Err(r.into())),
            }
        }
        if added > 0 {
            shared.new_txs.notify_one();
        }
        shared.publish_mempool();
    }
}

/// Refuses a leg that would create an account (by the committed state,
/// `account`) with less than the chain's minimum balance: it would fail at
/// execution.
fn account_minimum(
    minimum: u64,
    tx: &phalanx_ledger::SignedTransfer,
    account: impl Fn(&phalanx_crypto::PublicKey) -> phalanx_ledger::Account,
) -> Result<(), SubmitError> {
    for (leg, l) in tx.transfer.legs.iter().enumerate() {
        if l.amount >= minimum || l.to == tx.transfer.sender {
            continue;
        }
        if account(&l.to) == phalanx_ledger::Account::default() {
            return Err(SubmitError::BelowMinimumBalance {
                leg,
                to: l.to.to_string(),
                amount: l.amount,
                minimum,
            });
        }
    }
    Ok(())
}

/// Size, decoding, chain, and the by-hash lookups; answers what fails or is
/// already known, returns the rest for signature checks.
fn cheap_checks(shared: &Shared, batch: Vec<Submission>) -> Vec<Checked> {
    let mut out = Vec::with_capacity(batch.len());
    for s in batch {
        if s.bytes.len() > MAX_TX_BYTES {
            let n = s.bytes.len();
            answer(shared, s.origin, Err(SubmitError::TooLarge(n)));
            continue;
        }
        let tx = match EncodedTransfer::decode(s.bytes) {
            Ok(t) => t,
            Err(LedgerError::ZeroAmount { leg }) => {
                answer(shared, s.origin, Err(SubmitError::ZeroAmount { leg }));
                continue;
            }
            Err(e) => {
                answer(shared, s.origin, Err(SubmitError::Malformed(e.to_string())));
                continue;
            }
        };
        // (Decoding checked the shape.)
        if tx.tx().transfer.chain_id != shared.chain {
            answer(
                shared,
                s.origin,
                Err(SubmitError::WrongChain {
                    expected: shared.chain.to_string(),
                    got: tx.tx().transfer.chain_id.to_string(),
                }),
            );
            continue;
        }
        let hash = tx.hash();
        // Only a client needs the receipt of a transaction committed
        // before: a peer's copy of one is refused by the mempool's nonce
        // rule, or at worst ordered again and executed as a duplicate. The
        // index lookup is about a quarter of admission's cost.
        // A failure receipt is not final (the transaction may still
        // apply): only an applied record answers for it.
        let committed = match s.origin {
            Origin::Rpc(_) => shared
                .store
                .transaction(&hash)
                .map(|r| r.filter(|r| r.receipt.status == TxStatus::Applied)),
            Origin::Gossip => Ok(None),
        };
        match committed {
            Ok(Some(rec)) => {
                answer(shared, s.origin, Ok(Submitted::Committed(hash, rec)));
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                answer(shared, s.origin, Err(SubmitError::Internal(e.to_string())));
                continue;
            }
        }
        // (The exact-bytes hash, a fraction of a microsecond, under the
        // lock: a copy already pending, gossip's common case, skips it.)
        let pool = shared.pool();
        if pool.contains(&hash) {
            drop(pool);
            answer(shared, s.origin, Ok(Submitted::Pending(hash)));
            continue;
        }
        let raw = Digest::of(tx.bytes());
        let vouched = pool.verified_in_block(&raw);
        drop(pool);
        out.push(Checked {
            tx,
            raw,
            hash,
            origin: s.origin,
            vouched,
        });
    }
    out
}
