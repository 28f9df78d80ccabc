//! Deterministic execution of a block's transactions.
//!
//! Total: every payload item gets exactly one receipt, whatever a Byzantine
//! leader put there; nothing here panics on input. The only error is a
//! failing state read (a local disk fault, fatal to the node).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use phalanx_crypto::{ChainId, Digest, PublicKey};
use serde::{Deserialize, Serialize};

use crate::{Account, LedgerError, SignedTransfer, decode_payload, verify_signatures};

/// Read access to the state before a block.
pub trait StateView {
    /// An account, or `None` if it never received anything.
    fn account(&self, addr: &PublicKey) -> Result<Option<Account>, LedgerError>;
    /// Whether a transaction with this hash was applied in a committed
    /// block (a failure receipt under the hash does not count).
    fn tx_committed(&self, hash: &Digest) -> Result<bool, LedgerError>;

    /// [`StateView::tx_committed`] for many hashes at once (a store can
    /// batch the lookups); `hashes` is sorted.
    fn txs_committed(&self, hashes: &[Digest]) -> Result<Vec<bool>, LedgerError> {
        hashes.iter().map(|h| self.tx_committed(h)).collect()
    }
}

/// The outcome of one transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxStatus {
    /// Applied: balances moved and the sender's nonce advanced.
    Applied,
    /// Not a decodable, well-formed transaction.
    Malformed,
    /// The signature does not verify.
    BadSignature,
    /// Signed for another chain.
    WrongChain,
    /// Already in an earlier block, or earlier in this one: not applied again.
    Duplicate,
    /// The nonce was already used.
    NonceTooLow {
        /// The sender's next nonce.
        expected: u64,
        /// The transaction's.
        got: u64,
    },
    /// The nonce skips ahead of the sender's next nonce.
    NonceTooHigh {
        /// The sender's next nonce.
        expected: u64,
        /// The transaction's.
        got: u64,
    },
    /// The sender cannot pay the sum of the legs.
    InsufficientFunds {
        /// The sender's balance.
        balance: u64,
        /// The sum of the legs.
        needed: u64,
    },
    /// The legs' sum or a recipient's balance would overflow.
    Overflow,
    /// A leg would create an account with less than the chain's minimum
    /// balance.
    BelowMinimumBalance {
        /// The leg's position in the transfer.
        leg: u32,
        /// The chain's minimum for a new account.
        minimum: u64,
    },
}

impl TxStatus {
    /// A stable snake_case name, for metrics and RPC.
    pub fn name(&self) -> &'static str {
        match self {
            TxStatus::Applied => "applied",
            TxStatus::Malformed => "malformed",
            TxStatus::BadSignature => "bad_signature",
            TxStatus::WrongChain => "wrong_chain",
            TxStatus::Duplicate => "duplicate",
            TxStatus::NonceTooLow { .. } => "nonce_too_low",
            TxStatus::NonceTooHigh { .. } => "nonce_too_high",
            TxStatus::InsufficientFunds { .. } => "insufficient_funds",
            TxStatus::Overflow => "overflow",
            TxStatus::BelowMinimumBalance { .. } => "below_minimum_balance",
        }
    }
}

/// The chain-wide rules execution applies, fixed at genesis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rules {
    /// The chain transfers must be signed for.
    pub chain: ChainId,
    /// Least amount a leg may move into an account that does not exist
    /// yet: creating state costs the creator funds, so the number of
    /// accounts (each held in memory by every validator) is bounded by the
    /// supply over this minimum.
    pub min_account_balance: u64,
}

/// One transaction's receipt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The transaction hash (for a malformed item or one whose signature
    /// fails: SHA-256 of its exact bytes).
    pub tx_hash: Digest,
    /// What happened.
    pub status: TxStatus,
}

/// Everything a block's execution produced.
#[derive(Clone, Debug, Default)]
pub struct BlockOutput {
    /// One per payload item, in order.
    pub receipts: Vec<Receipt>,
    /// New state of every account the block changed, ascending by address.
    pub changes: Vec<(PublicKey, Account)>,
    /// The raw bytes of each payload item, in order (for the transaction
    /// index).
    pub tx_bytes: Vec<Vec<u8>>,
}

impl BlockOutput {
    /// Hashes of the applied transactions.
    pub fn applied(&self) -> impl Iterator<Item = &Digest> {
        self.receipts
            .iter()
            .filter(|r| r.status == TxStatus::Applied)
            .map(|r| &r.tx_hash)
    }
}

/// A block payload decoded, hashed and signature-checked, ready to execute.
/// Preparing is where signatures are verified (in one batch), so it can be
/// done, and measured, apart from execution; a validator prepares a
/// proposal's payload before voting for it.
#[derive(Clone, Debug, Default)]
pub struct PreparedPayload {
    items: Vec<Vec<u8>>,
    /// Shared, not owned: a node's mempool lends the transfers it already
    /// holds rather than copying each one into every block it executes.
    checked: Vec<Option<(Arc<SignedTransfer>, Digest, bool)>>,
}

impl PreparedPayload {
    /// Number of payload items.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True if the payload holds no items (or did not decode).
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// Decodes a payload and batch-verifies its signatures. An undecodable
/// payload prepares to nothing, and so executes to no receipts.
pub fn prepare_payload(payload: &[u8]) -> PreparedPayload {
    prepare_payload_trusting(payload, |_| None)
}

/// [`prepare_payload`], taking from `verified` the items (by position in
/// the payload) whose exact bytes were decoded and signature-checked before
/// (a node's mempool did so on entry): `verified(i)` returns that decoding
/// and its hash, and item `i` is then neither decoded again (which
/// decompresses curve points) nor verified again. The receipts are the same
/// as [`prepare_payload`]'s as long as `verified` only vouches for items
/// that are the decoding of those bytes and do verify.
pub fn prepare_payload_trusting(
    payload: &[u8],
    verified: impl Fn(usize) -> Option<(Arc<SignedTransfer>, Digest)>,
) -> PreparedPayload {
    let Ok(items) = decode_payload(payload) else {
        return PreparedPayload::default();
    };
    // (transfer, known hash): a known hash means already verified.
    let decoded: Vec<Option<(Arc<SignedTransfer>, Option<Digest>)>> = items
        .iter()
        .enumerate()
        .map(|(i, b)| match verified(i) {
            Some((t, h)) => Some((t, Some(h))),
            None => SignedTransfer::decode(b).ok().map(|t| (Arc::new(t), None)),
        })
        .collect();
    let to_check: Vec<&SignedTransfer> = decoded
        .iter()
        .flatten()
        .filter(|(_, known)| known.is_none())
        .map(|(t, _)| &**t)
        .collect();
    let mut sig = verify_signatures(&to_check).into_iter();
    let checked = decoded
        .into_iter()
        .map(|d| {
            d.map(|(t, known)| match known {
                Some(hash) => (t, hash, true),
                None => {
                    let hash = t.hash();
                    let ok = sig.next().unwrap_or(false);
                    (t, hash, ok)
                }
            })
        })
        .collect();
    PreparedPayload { items, checked }
}

/// Decodes, batch-verifies and executes a block payload.
pub fn execute_block(
    view: &impl StateView,
    rules: &Rules,
    payload: &[u8],
) -> Result<BlockOutput, LedgerError> {
    execute_prepared(view, rules, prepare_payload(payload))
}

/// Executes a prepared payload.
///
/// A refused item is harmless to the genuine transaction it may copy: an
/// item whose signature fails gets the hash of its exact bytes as its
/// receipt's hash, never the transfer's (only the sender can sign the
/// transfer, so a copy with a bad signature is not the sender's
/// transaction); and [`StateView::tx_committed`] answers only for applied
/// transactions, so a correctly signed item refused for its nonce or funds
/// leaves its hash free to apply later.
pub fn execute_prepared(
    view: &impl StateView,
    rules: &Rules,
    prepared: PreparedPayload,
) -> Result<BlockOutput, LedgerError> {
    let chain = &rules.chain;
    let PreparedPayload { items, checked } = prepared;
    debug_assert_eq!(items.len(), checked.len());
    // One batched lookup for every hash that could apply.
    let mut candidates: Vec<Digest> = checked
        .iter()
        .flatten()
        .filter(|(t, _, ok)| *ok && t.transfer.chain_id == *chain)
        .map(|(_, h, _)| *h)
        .collect();
    candidates.sort_unstable();
    candidates.dedup();
    let found = view.txs_committed(&candidates)?;
    if found.len() != candidates.len() {
        return Err(LedgerError::Read(format!(
            "{} answers for {} lookups",
            found.len(),
            candidates.len()
        )));
    }
    let committed: BTreeSet<Digest> = candidates
        .into_iter()
        .zip(found)
        .filter_map(|(h, f)| f.then_some(h))
        .collect();
    // Touched accounts by address bytes: (key, state before the block,
    // state now). Hashed, not ordered: a block touches thousands.
    let mut overlay: HashMap<[u8; 32], (PublicKey, Account, Account)> = HashMap::new();
    let mut seen: BTreeSet<Digest> = BTreeSet::new();
    let mut receipts = Vec::with_capacity(items.len());

    let load = |addr: &PublicKey,
                overlay: &mut HashMap<[u8; 32], (PublicKey, Account, Account)>|
     -> Result<Account, LedgerError> {
        let k = addr.to_bytes();
        if let Some((_, _, now)) = overlay.get(&k) {
            return Ok(*now);
        }
        let a = view.account(addr)?.unwrap_or_default();
        overlay.insert(k, (*addr, a, a));
        Ok(a)
    };

    for (bytes, item) in items.iter().zip(checked) {
        let Some((tx, hash, sig_ok)) = item else {
            receipts.push(Receipt {
                tx_hash: Digest::of(bytes),
                status: TxStatus::Malformed,
            });
            continue;
        };
        if !sig_ok {
            receipts.push(Receipt {
                tx_hash: Digest::of(bytes),
                status: TxStatus::BadSignature,
            });
            continue;
        }
        let status = 'status: {
            let t = &tx.transfer;
            if t.chain_id != *chain {
                break 'status TxStatus::WrongChain;
            }
            if seen.contains(&hash) || committed.contains(&hash) {
                break 'status TxStatus::Duplicate;
            }
            let sender = load(&t.sender, &mut overlay)?;
            if t.nonce < sender.nonce {
                break 'status TxStatus::NonceTooLow {
                    expected: sender.nonce,
                    got: t.nonce,
                };
            }
            if t.nonce > sender.nonce {
                break 'status TxStatus::NonceTooHigh {
                    expected: sender.nonce,
                    got: t.nonce,
                };
            }
            let Some(total) = t.total() else {
                break 'status TxStatus::Overflow;
            };
            if sender.balance < total {
                break 'status TxStatus::InsufficientFunds {
                    balance: sender.balance,
                    needed: total,
                };
            }
            // Check every credit before changing anything: all or nothing.
            // At most 1 + MAX_LEGS entries: a vector beats a map here.
            let mut staged: Vec<(&PublicKey, Account)> = Vec::with_capacity(t.legs.len() + 1);
            staged.push((
                &t.sender,
                Account {
                    balance: sender.balance - total,
                    nonce: sender.nonce + 1,
                },
            ));
            for (i, leg) in t.legs.iter().enumerate() {
                let pos = staged.iter().position(|(k, _)| **k == leg.to);
                let cur = match pos {
                    Some(i) => staged[i].1,
                    None => load(&leg.to, &mut overlay)?,
                };
                // An account exists once it has a balance or has sent; a
                // leg creating one must bring the minimum.
                if cur == Account::default() && leg.amount < rules.min_account_balance {
                    break 'status TxStatus::BelowMinimumBalance {
                        leg: i as u32,
                        minimum: rules.min_account_balance,
                    };
                }
                let Some(balance) = cur.balance.checked_add(leg.amount) else {
                    break 'status TxStatus::Overflow;
                };
                let next = Account { balance, ..cur };
                match pos {
                    Some(i) => staged[i].1 = next,
                    None => staged.push((&leg.to, next)),
                }
            }
            for (k, a) in staged {
                if let Some(e) = overlay.get_mut(&k.to_bytes()) {
                    e.2 = a;
                }
            }
            seen.insert(hash);
            TxStatus::Applied
        };
        receipts.push(Receipt {
            tx_hash: hash,
            status,
        });
    }

    // Conservation of supply: balances only move between accounts. A
    // violation is a bug that would corrupt the ledger; stop here.
    let delta: i128 = overlay
        .values()
        .map(|(_, before, now)| now.balance as i128 - before.balance as i128)
        .sum();
    assert_eq!(delta, 0, "block execution changed the total supply");

    let mut changes: Vec<([u8; 32], PublicKey, Account)> = overlay
        .into_iter()
        .filter(|(_, (_, before, now))| before != now)
        .map(|(b, (k, _, now))| (b, k, now))
        .collect();
    changes.sort_unstable_by_key(|x| x.0);
    let changes = changes.into_iter().map(|(_, k, a)| (k, a)).collect();
    Ok(BlockOutput {
        receipts,
        changes,
        tx_bytes: items,
    })
}
