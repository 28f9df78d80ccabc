//! The validity rule (P6) against a real RocksDB store and mempool: a
//! Byzantine leader's burnt blocks get no vote, an honest leader's block
//! always does.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use phalanx_consensus::{Block, BlockHeader, Height, PayloadValidator, View};
use phalanx_crypto::{ChainId, Digest, KeyPair, ValidatorIndex};
use phalanx_ledger::{Genesis, Leg, SignedTransfer, Transfer, encode_payload};
use phalanx_node::mempool::MempoolLimits;
use phalanx_node::metrics::Metrics;
use phalanx_node::shared::Shared;
use phalanx_node::validity::{LedgerValidity, Refusal};
use phalanx_storage::testkit::{account_key, genesis, next_block};
use phalanx_storage::{Store, StoreOptions};

const ACCOUNTS: u64 = 50;

struct Fixture {
    _dir: tempfile::TempDir,
    g: Genesis,
    store: Arc<Store>,
    shared: Arc<Shared>,
    rule: LedgerValidity,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let g = genesis(ACCOUNTS);
    let store = Arc::new(Store::open(dir.path(), &g, StoreOptions::default()).unwrap());
    let metrics = Arc::new(Metrics::new(4, &[]));
    let (shared, _status) = Shared::new(
        store.clone(),
        &g,
        KeyPair::from_seed([1; 32]).public(),
        MempoolLimits::default(),
        metrics,
    );
    let shared = Arc::new(shared);
    let rule = LedgerValidity::new(
        store.clone(),
        shared.clone(),
        g.chain_id.clone(),
        g.params.max_block_txs as usize,
    );
    Fixture {
        _dir: dir,
        g,
        store,
        shared,
        rule,
    }
}

fn transfer_on(chain: &ChainId, from: u64, nonce: u64, amount: u64) -> SignedTransfer {
    let key = account_key(from);
    Transfer {
        chain_id: chain.clone(),
        sender: key.public(),
        nonce,
        legs: vec![Leg {
            to: account_key(from + 1).public(),
            amount,
        }],
    }
    .sign(&key)
}

impl Fixture {
    fn tx(&self, from: u64, nonce: u64) -> SignedTransfer {
        transfer_on(&self.g.chain_id, from, nonce, 1)
    }

    /// A block on `parent` (at `height`) carrying `items`.
    fn block_on(&self, parent: Digest, height: u64, items: &[Vec<u8>]) -> Block {
        let (mut b, _) = next_block(&self.store, &[]);
        b.payload = encode_payload(items);
        b.header = BlockHeader {
            parent,
            height: Height(height),
            view: View(height),
            proposer: ValidatorIndex(0),
            payload_digest: Digest::of(&b.payload),
            ..b.header
        };
        b
    }

    /// A block on the executed head.
    fn block(&self, items: &[Vec<u8>]) -> Block {
        let head = self.store.head();
        self.block_on(head.block_id, head.height + 1, items)
    }

    fn pool(&self, tx: &SignedTransfer) {
        let acct = self.store.account(&tx.transfer.sender).unwrap().unwrap();
        self.shared
            .pool()
            .insert(tx.clone(), tx.encode(), tx.hash(), acct, 0)
            .unwrap();
    }
}

#[test]
fn an_honest_block_is_valid_whether_or_not_the_pool_holds_its_items() {
    let f = fixture();
    let (a0, a1, b0) = (f.tx(1, 0), f.tx(1, 1), f.tx(2, 0));
    f.pool(&a0);
    let block = f.block(&[a0.encode(), b0.encode(), a1.encode()]);
    assert_eq!(f.rule.check(&block), Ok(()));
    assert!(f.rule.is_valid(&block));
    // What the check verified itself (b0, a1: not in the pool) execution
    // takes as verified; what the pool holds it takes from the pool.
    let vouched = f.rule.vouched(&block.id());
    assert_eq!(vouched.len(), 2);
    assert_eq!(vouched[&Digest::of(&b0.encode())].1, b0.hash());
    assert!(!vouched.contains_key(&Digest::of(&a0.encode())));
    // And a copy gossip brings later is not verified again.
    let pool = f.shared.pool();
    assert!(pool.verified_in_block(&Digest::of(&b0.encode())));
    assert!(!pool.verified_in_block(&Digest::of(&a0.encode())));
    drop(pool);
    // More items than the check verifies before the vote: the rest are
    // left to execution, and an honest block stays valid.
    let many: Vec<Vec<u8>> = (10..10 + 2 * phalanx_node::validity::MAX_VERIFIED_AT_VOTE as u64)
        .map(|i| f.tx(i % ACCOUNTS, i / ACCOUNTS).encode())
        .collect();
    assert_eq!(f.rule.check(&f.block(&many)), Ok(()));
    // A transfer that will fail on funds is not the proposer's to know
    // (its ancestors may pay the sender): it is not refused.
    let broke = transfer_on(&f.g.chain_id, 3, 0, u64::MAX / 2);
    assert_eq!(f.rule.check(&f.block(&[broke.encode()])), Ok(()));
}

/// The burn: a copy of a pending transfer with one signature bit
/// flipped, and a sender's nonces out of order. Without the rule such a
/// block was voted for, and its receipts burnt the genuine transactions.
#[test]
fn a_burnt_block_gets_no_vote() {
    let f = fixture();
    let (a0, a1) = (f.tx(1, 0), f.tx(1, 1));
    f.pool(&a0);
    f.pool(&a1);
    let mut copy = a0.encode();
    let last = copy.len() - 1;
    copy[last] ^= 1;
    let copy_bytes = copy.clone();
    let b0 = f.tx(2, 0);
    let burnt = f.block(&[b0.encode(), copy, a1.encode()]);
    assert_eq!(f.rule.check(&burnt), Err(Refusal::BadSignature));
    assert!(!f.rule.is_valid(&burnt));
    // Bytes that failed are never taken as verified, nor is anything of
    // the batch they failed in.
    assert!(!f.shared.pool().verified_in_block(&Digest::of(&copy_bytes)));
    assert!(!f.shared.pool().verified_in_block(&Digest::of(&b0.encode())));
    let reordered = f.block(&[a1.encode(), a0.encode()]);
    assert_eq!(f.rule.check(&reordered), Err(Refusal::NonceOrder));
    // The genuine pair in order is valid.
    assert_eq!(f.rule.check(&f.block(&[a0.encode(), a1.encode()])), Ok(()));
}

#[test]
fn each_certain_refusal_has_its_reason() {
    let f = fixture();
    let other = ChainId::new("another-chain").unwrap();
    let a0 = f.tx(1, 0);
    let cases: Vec<(Vec<Vec<u8>>, Refusal)> = vec![
        (vec![vec![1, 2, 3]], Refusal::Malformed),
        (
            vec![transfer_on(&other, 1, 0, 1).encode()],
            Refusal::WrongChain,
        ),
        (vec![a0.encode(), a0.encode()], Refusal::Duplicate),
        (
            vec![f.tx(1, 0).encode(), f.tx(1, 2).encode()],
            Refusal::NonceOrder,
        ),
    ];
    for (items, why) in cases {
        assert_eq!(f.rule.check(&f.block(&items)), Err(why), "{why:?}");
    }
    let mut garbage = f.block(&[]);
    garbage.payload = vec![0xff; 9];
    assert_eq!(f.rule.check(&garbage), Err(Refusal::Payload));
    // Applied in a block the store executed: its nonce is used.
    let (b, c) = next_block(&f.store, &[a0.encode()]);
    f.store.apply_block(&b, &c).unwrap();
    assert_eq!(
        f.rule.check(&f.block(&[a0.encode()])),
        Err(Refusal::NonceTooLow)
    );
}

/// A first nonce above the committed one is not refused: whether it is
/// executable depends on the ancestors' execution, and its failure receipt
/// would take nothing from the genuine transaction. A leader learns which
/// nonces its block's ancestors take, executed blocks no longer count, and
/// the hashes of each checked block's items are kept for the runtime.
#[test]
fn what_depends_on_the_ancestors_is_left_to_execution_and_leaders_see_taken_nonces() {
    let f = fixture();
    let head = f.store.head();
    assert_eq!(f.rule.check(&f.block(&[f.tx(1, 5).encode()])), Ok(()));
    let a0 = f.tx(1, 0);
    let a = f.block(&[a0.encode(), f.tx(1, 1).encode()]);
    assert_eq!(f.rule.check(&a), Ok(()));
    let sender = account_key(1).public().to_bytes();
    assert_eq!(f.rule.taken_nonces(a.id()).get(&sender), Some(&(0, 1)));
    assert_eq!(
        f.rule.raw_hashes(&a.id()).unwrap().first(),
        Some(&Digest::of(&a0.encode()))
    );
    // A block the node persisted without checking (its own proposal) is
    // noted, and counts.
    let a2 = f.tx(1, 2);
    f.pool(&a2);
    let own = f.block_on(a.id(), head.height + 2, &[a2.encode()]);
    f.rule.note_block(&own);
    assert_eq!(f.rule.taken_nonces(own.id()).get(&sender), Some(&(0, 2)));
    // Executed: no longer taken.
    let mut cert = next_block(&f.store, &[]).1;
    cert.payload.block_id = a.id();
    f.store.apply_block(&a, &cert).unwrap();
    assert_eq!(f.rule.taken_nonces(own.id()).get(&sender), Some(&(2, 2)));
}

/// A leader never proposes a nonce its block's ancestors take, even where
/// it never held the ancestor's item: a block noted without the check (one
/// fetched by id) and a block whose unknown items outran the check's
/// verification budget still count every item's sender and nonce. (A
/// 30-minute chaos run once committed a sender's nonce twice in a row,
/// the second with receipt `nonce_too_low`, because the summary of the
/// first block left out an item its leader had not held.)
#[test]
fn ancestors_items_the_pool_never_held_still_take_their_nonces() {
    let f = fixture();
    let head = f.store.head();
    let sender = account_key(1).public().to_bytes();
    let fetched = f.block(&[f.tx(1, 0).encode()]);
    assert!(!f.rule.note_block(&fetched));
    assert_eq!(
        f.rule.taken_nonces(fetched.id()).get(&sender),
        Some(&(0, 0))
    );

    // Past the budget of items verified at the vote, sender 2's item is
    // left to execution; its nonce is taken all the same.
    let budget = phalanx_node::validity::MAX_VERIFIED_AT_VOTE as u64;
    let mut items: Vec<Vec<u8>> = (0..budget).map(|n| f.tx(1, 1 + n).encode()).collect();
    items.push(f.tx(2, 0).encode());
    let over = f.block_on(fetched.id(), head.height + 2, &items);
    assert_eq!(f.rule.check(&over), Ok(()));
    let taken = f.rule.taken_nonces(over.id());
    assert_eq!(taken.get(&sender), Some(&(0, budget)));
    assert_eq!(
        taken.get(&account_key(2).public().to_bytes()),
        Some(&(0, 0))
    );
}
