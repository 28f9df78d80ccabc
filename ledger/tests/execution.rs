//! Execution rules, exactly-once, and property tests over random streams of
//! valid and invalid transactions.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

use phalanx_crypto::{ChainId, Digest, KeyPair, PublicKey};
use phalanx_ledger::{
    Account, EncodedTransfer, LedgerError, Leg, Rules, SignedTransfer, StateTree, StateView,
    Transfer, TxStatus, encode_payload, execute_block, verify_account_proof, verify_encoded,
    verify_signatures,
};
use proptest::prelude::*;

/// A ledger held in memory: accounts, committed hashes and the tree.
struct Ledger {
    chain: ChainId,
    rules: Rules,
    accounts: BTreeMap<PublicKey, Account>,
    committed: BTreeSet<Digest>,
    tree: StateTree,
    version: u64,
    root: Digest,
}

impl StateView for Ledger {
    fn account(&self, a: &PublicKey) -> Result<Option<Account>, LedgerError> {
        Ok(self.accounts.get(a).copied())
    }
    fn tx_committed(&self, h: &Digest) -> Result<bool, LedgerError> {
        Ok(self.committed.contains(h))
    }
}

impl Ledger {
    fn new(balances: &[(PublicKey, u64)]) -> Ledger {
        let mut tree = StateTree::new();
        let accounts: BTreeMap<_, _> = balances
            .iter()
            .map(|(k, b)| {
                (
                    *k,
                    Account {
                        balance: *b,
                        nonce: 0,
                    },
                )
            })
            .collect();
        let root = tree.apply(0, &accounts);
        let chain = ChainId::new("ledger-test").unwrap();
        Ledger {
            rules: Rules {
                chain: chain.clone(),
                min_account_balance: 1,
            },
            chain,
            accounts,
            committed: BTreeSet::new(),
            tree,
            version: 0,
            root,
        }
    }

    fn apply(&mut self, txs: &[Vec<u8>]) -> Vec<TxStatus> {
        let out = execute_block(self, &self.rules.clone(), &encode_payload(txs)).unwrap();
        self.version += 1;
        self.root = self
            .tree
            .apply(self.version, out.changes.iter().map(|(k, a)| (k, a)));
        for (k, a) in &out.changes {
            self.accounts.insert(*k, *a);
        }
        // As the store: only applied transactions count as committed.
        self.committed.extend(out.applied().copied());
        out.receipts.into_iter().map(|r| r.status).collect()
    }

    fn supply(&self) -> u128 {
        self.accounts.values().map(|a| a.balance as u128).sum()
    }
}

fn key(i: u8) -> KeyPair {
    KeyPair::from_seed([i + 1; 32])
}

fn transfer(chain: &ChainId, from: &KeyPair, nonce: u64, legs: &[(u8, u64)]) -> Vec<u8> {
    Transfer {
        chain_id: chain.clone(),
        sender: from.public(),
        nonce,
        legs: legs
            .iter()
            .map(|(to, amount)| Leg {
                to: key(*to).public(),
                amount: *amount,
            })
            .collect(),
    }
    .sign(from)
    .encode()
}

#[test]
fn a_transfer_kept_with_its_bytes_hashes_and_verifies_as_decoded() {
    let chain = ChainId::new("enc").unwrap();
    let good: Vec<Vec<u8>> = (0..5u64)
        .map(|n| transfer(&chain, &key(1), n, &[(2, n + 1), (3, 7)]))
        .collect();
    // A signature byte flipped: still canonical, no longer valid.
    let mut bad = transfer(&chain, &key(4), 0, &[(2, 1)]);
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let all: Vec<Vec<u8>> = good.iter().cloned().chain([bad]).collect();
    let encoded: Vec<EncodedTransfer> = all
        .iter()
        .map(|b| EncodedTransfer::decode(b.clone()).unwrap())
        .collect();
    let decoded: Vec<SignedTransfer> = all
        .iter()
        .map(|b| SignedTransfer::decode(b).unwrap())
        .collect();
    for ((e, d), b) in encoded.iter().zip(&decoded).zip(&all) {
        assert_eq!(e.hash(), d.hash());
        assert_eq!(e.tx(), d);
        assert_eq!(e.bytes(), b.as_slice());
    }
    let by_bytes = verify_encoded(&encoded.iter().collect::<Vec<_>>());
    assert_eq!(
        by_bytes,
        verify_signatures(&decoded.iter().collect::<Vec<_>>())
    );
    assert_eq!(by_bytes, [true, true, true, true, true, false]);
    // Bytes that do not decode canonically are refused, as by
    // `SignedTransfer::decode`.
    let mut longer = all[0].clone();
    longer.push(0);
    assert!(EncodedTransfer::decode(longer).is_err());
    assert!(EncodedTransfer::decode(all[0][..40].to_vec()).is_err());
}

#[test]
fn each_rule_has_its_receipt() {
    let mut l = Ledger::new(&[(key(0).public(), 100), (key(1).public(), u64::MAX - 100)]);
    let c = l.chain.clone();
    let other = ChainId::new("other").unwrap();
    let mut bad_sig = transfer(&c, &key(0), 0, &[(2, 1)]);
    let last = bad_sig.len() - 1;
    bad_sig[last] ^= 1;
    let ok = transfer(&c, &key(0), 0, &[(2, 10), (3, 5)]);
    let statuses = l.apply(&[
        vec![1, 2, 3],                           // malformed
        bad_sig,                                 // bad signature
        transfer(&other, &key(0), 0, &[(2, 1)]), // wrong chain
        transfer(&c, &key(0), 1, &[(2, 1)]),     // nonce too high
        ok.clone(),                              // applied
        ok.clone(),                              // duplicate within the block
        transfer(&c, &key(0), 0, &[(2, 2)]),     // nonce too low now
        transfer(&c, &key(0), 1, &[(2, 1000)]),  // insufficient funds
        // A recipient's balance can never overflow (supply fits in u64, and
        // is conserved); this one ends 20 short of the maximum.
        transfer(&c, &key(0), 1, &[(1, 80)]), // applied
        transfer(&c, &key(0), 2, &[(2, u64::MAX), (3, 2)]), // overflow of the sum
    ]);
    assert_eq!(statuses[0], TxStatus::Malformed);
    assert_eq!(statuses[1], TxStatus::BadSignature);
    assert_eq!(statuses[2], TxStatus::WrongChain);
    assert_eq!(
        statuses[3],
        TxStatus::NonceTooHigh {
            expected: 0,
            got: 1
        }
    );
    assert_eq!(statuses[4], TxStatus::Applied);
    assert_eq!(statuses[5], TxStatus::Duplicate);
    assert_eq!(
        statuses[6],
        TxStatus::NonceTooLow {
            expected: 1,
            got: 0
        }
    );
    assert_eq!(
        statuses[7],
        TxStatus::InsufficientFunds {
            balance: 85,
            needed: 1000
        }
    );
    assert_eq!(statuses[8], TxStatus::Applied);
    assert_eq!(statuses[9], TxStatus::Overflow);
    assert_eq!(
        l.accounts[&key(0).public()],
        Account {
            balance: 5,
            nonce: 2
        }
    );
    assert_eq!(l.accounts[&key(1).public()].balance, u64::MAX - 20);
    assert_eq!(l.accounts[&key(2).public()].balance, 10);
    // Resubmitted in a later block: recognised by hash, never applied twice.
    assert_eq!(l.apply(&[ok]), vec![TxStatus::Duplicate]);
    assert_eq!(l.accounts[&key(2).public()].balance, 10);
}

/// A Byzantine leader's burn: a copy of a pending transfer with one
/// signature bit flipped, and the sender's next nonce put after the one
/// above it. Neither refused item consumes the genuine transaction: both
/// apply in a later block.
#[test]
fn refused_copies_and_out_of_order_nonces_leave_the_genuine_transactions_free_to_apply() {
    let mut l = Ledger::new(&[(key(0).public(), 100), (key(1).public(), 100)]);
    let c = l.chain.clone();
    let first = transfer(&c, &key(0), 0, &[(1, 5)]);
    let second = transfer(&c, &key(0), 1, &[(1, 6)]);
    let mut copy = first.clone();
    let last = copy.len() - 1;
    copy[last] ^= 1;
    let burnt = l.apply(&[copy.clone(), second.clone()]);
    assert_eq!(burnt[0], TxStatus::BadSignature);
    assert_eq!(
        burnt[1],
        TxStatus::NonceTooHigh {
            expected: 0,
            got: 1
        }
    );
    // The bad copy's receipt is filed under its own bytes' hash.
    let out = execute_block(&l, &l.rules, &encode_payload(std::slice::from_ref(&copy))).unwrap();
    assert_eq!(out.receipts[0].tx_hash, Digest::of(&copy));
    assert_ne!(
        out.receipts[0].tx_hash,
        SignedTransfer::decode(&first).unwrap().hash()
    );
    assert_eq!(
        l.apply(&[first, second]),
        vec![TxStatus::Applied, TxStatus::Applied]
    );
    assert_eq!(l.accounts[&key(1).public()].balance, 111);
}

#[test]
fn a_leg_creating_an_account_must_bring_the_minimum_and_zero_legs_do_not_decode() {
    let mut l = Ledger::new(&[(key(0).public(), 10_000), (key(1).public(), 1)]);
    l.rules.min_account_balance = 1000;
    let c = l.chain.clone();
    let statuses = l.apply(&[
        // Key 2 does not exist: 999 is short of the minimum.
        transfer(&c, &key(0), 0, &[(1, 5), (2, 999)]),
        transfer(&c, &key(0), 0, &[(1, 5), (2, 1000)]),
        // Key 1 exists: any amount is fine.
        transfer(&c, &key(0), 1, &[(1, 1)]),
    ]);
    assert_eq!(
        statuses,
        vec![
            TxStatus::BelowMinimumBalance {
                leg: 1,
                minimum: 1000
            },
            TxStatus::Applied,
            TxStatus::Applied
        ]
    );
    assert_eq!(l.accounts[&key(2).public()].balance, 1000);
    let zero = transfer(&c, &key(0), 2, &[(1, 0)]);
    let err = SignedTransfer::decode(&zero).unwrap_err().to_string();
    assert!(err.contains("amount of 0"), "{err}");
    assert_eq!(l.apply(&[zero]), vec![TxStatus::Malformed]);
}

#[test]
fn a_garbage_payload_executes_to_no_receipts() {
    let mut l = Ledger::new(&[(key(0).public(), 1)]);
    let out = execute_block(&l, &l.rules, &[0xff, 0xff, 0xff, 0xff, 0x0f]).unwrap();
    assert!(out.receipts.is_empty() && out.changes.is_empty());
    assert!(l.apply(&[]).is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random streams of valid and invalid transfers: supply conserved,
    /// nonces exact (one per applied transfer), and every account's proof
    /// verifies against the root and fails on a tampered byte.
    #[test]
    fn random_streams_conserve_supply_and_keep_nonces_exact(
        ops in proptest::collection::vec(
            (0u8..6, 0u8..8, 0u64..400, 0u64..3, any::<bool>(), 0usize..4),
            1..60,
        ),
        block_size in 1usize..8,
        tamper in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let genesis: Vec<(PublicKey, u64)> = (0..6u8).map(|i| (key(i).public(), 1000)).collect();
        let mut l = Ledger::new(&genesis);
        let supply = l.supply();
        let chain = l.chain.clone();
        let mut next_nonce = [0u64; 6];
        for chunk in ops.chunks(block_size) {
            let txs: Vec<Vec<u8>> = chunk.iter().map(|(from, to, amount, skew, corrupt, legs)| {
                // Usually the right nonce, sometimes one below or above.
                let nonce = (next_nonce[*from as usize] + skew).saturating_sub(1);
                let legs: Vec<(u8, u64)> = (0..=*legs).map(|i| ((to + i as u8) % 8, *amount)).collect();
                let mut b = transfer(&chain, &key(*from), nonce, &legs);
                if *corrupt && amount % 5 == 0 { let n = b.len() - 3; b[n] ^= 0x20; }
                b
            }).collect();
            let senders: Vec<u8> = chunk.iter().map(|o| o.0).collect();
            let statuses = l.apply(&txs);
            prop_assert_eq!(statuses.len(), txs.len());
            for (s, st) in senders.iter().zip(&statuses) {
                if *st == TxStatus::Applied {
                    next_nonce[*s as usize] += 1;
                }
            }
            prop_assert_eq!(l.supply(), supply);
        }
        for i in 0..6u8 {
            let acct = l.accounts[&key(i).public()];
            prop_assert_eq!(acct.nonce, next_nonce[i as usize]);
            let (got, proof) = l.tree.prove(&key(i).public());
            prop_assert_eq!(got, Some(acct));
            prop_assert!(verify_account_proof(l.root, &key(i).public(), Some(&acct), &proof).is_ok());
            let mut bytes = proof.to_bytes();
            let pos = tamper.index(bytes.len());
            bytes[pos] ^= 1 << bit;
            if let Ok(bad) = phalanx_ledger::AccountProof::from_bytes(&bytes) {
                prop_assert!(verify_account_proof(l.root, &key(i).public(), Some(&acct), &bad).is_err());
            }
        }
    }
}

#[test]
fn items_vouched_for_by_a_mempool_execute_as_if_decoded_and_verified() {
    use phalanx_ledger::{
        SignedTransfer, execute_prepared, prepare_payload, prepare_payload_trusting,
    };
    let l = Ledger::new(&[(key(0).public(), 100), (key(1).public(), 100)]);
    let good = transfer(&l.chain, &key(0), 0, &[(1, 5)]);
    let mut forged = transfer(&l.chain, &key(1), 0, &[(0, 5)]);
    let n = forged.len();
    forged[n - 1] ^= 1; // the signature no longer verifies
    let payload = encode_payload(&[good.clone(), forged.clone(), vec![0xff]]);
    let plain = execute_prepared(&l, &l.rules, prepare_payload(&payload)).unwrap();
    // The mempool vouches for the good item only, handing over its decoding.
    let decoded = SignedTransfer::decode(&good).unwrap();
    let hash = decoded.hash();
    let trusted = execute_prepared(
        &l,
        &l.rules,
        prepare_payload_trusting(&payload, |i| {
            (i == 0).then(|| (std::sync::Arc::new(decoded.clone()), hash))
        }),
    )
    .unwrap();
    assert_eq!(plain.receipts, trusted.receipts);
    assert_eq!(plain.changes, trusted.changes);
    let statuses: Vec<_> = trusted.receipts.iter().map(|r| r.status.name()).collect();
    assert_eq!(statuses, ["applied", "bad_signature", "malformed"]);
}
