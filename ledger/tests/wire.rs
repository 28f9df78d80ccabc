//! The hand-written transfer decoder against serde's canonical decoding:
//! the same answer on valid encodings and on every corruption of them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use phalanx_crypto::{ChainId, KeyPair, decode_canonical};
use phalanx_ledger::{Leg, MAX_TX_BYTES, SignedTransfer, Transfer, peek_sender_nonce};
use proptest::prelude::*;

/// What serde gives: canonical decoding, then the shape rule.
fn reference(bytes: &[u8]) -> Option<SignedTransfer> {
    let tx: SignedTransfer = decode_canonical(bytes, MAX_TX_BYTES).ok()?;
    tx.check_shape().ok()?;
    Some(tx)
}

fn transfer() -> impl Strategy<Value = SignedTransfer> {
    (
        "[a-zA-Z0-9._-]{1,64}",
        any::<u8>(),
        any::<u64>(),
        prop::collection::vec((any::<u8>(), any::<u64>()), 1..=16),
    )
        .prop_map(|(chain, from, nonce, legs)| {
            let key = KeyPair::from_seed([from; 32]);
            Transfer {
                chain_id: ChainId::new(chain).unwrap(),
                sender: key.public(),
                nonce,
                legs: legs
                    .into_iter()
                    .map(|(to, amount)| Leg {
                        to: KeyPair::from_seed([to.wrapping_add(1); 32]).public(),
                        amount,
                    })
                    .collect(),
            }
            .sign(&key)
        })
}

#[derive(Debug, Clone)]
enum Corruption {
    Flip(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    Truncate(usize),
}

fn corrupt(mut bytes: Vec<u8>, c: &Corruption) -> Vec<u8> {
    let at = |i: usize, len: usize| if len == 0 { 0 } else { i % len };
    if bytes.is_empty() && !matches!(c, Corruption::Insert(..)) {
        return bytes;
    }
    match *c {
        Corruption::Flip(i, x) => {
            let i = at(i, bytes.len());
            bytes[i] ^= x.max(1);
        }
        Corruption::Insert(i, x) => {
            let i = at(i, bytes.len() + 1);
            bytes.insert(i, x);
        }
        Corruption::Remove(i) => {
            let i = at(i, bytes.len());
            bytes.remove(i);
        }
        Corruption::Truncate(i) => bytes.truncate(at(i, bytes.len())),
    }
    bytes
}

fn corruption() -> impl Strategy<Value = Corruption> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, x)| Corruption::Flip(i, x)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, x)| Corruption::Insert(i, x)),
        any::<usize>().prop_map(Corruption::Remove),
        any::<usize>().prop_map(Corruption::Truncate),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn valid_encodings_decode_to_the_transfer(tx in transfer()) {
        let bytes = tx.encode();
        prop_assert_eq!(SignedTransfer::decode(&bytes).unwrap(), tx.clone());
        prop_assert_eq!(reference(&bytes), Some(tx));
    }

    #[test]
    fn a_peek_reads_the_sender_and_nonce_of_any_valid_encoding(tx in transfer()) {
        prop_assert_eq!(
            peek_sender_nonce(&tx.encode()),
            Some((tx.transfer.sender.to_bytes(), tx.transfer.nonce))
        );
    }

    #[test]
    fn a_peek_never_panics_and_agrees_with_decoding_where_that_succeeds(
        bytes in prop::collection::vec(any::<u8>(), 0..400),
    ) {
        let peeked = peek_sender_nonce(&bytes);
        if let Ok(tx) = SignedTransfer::decode(&bytes) {
            prop_assert_eq!(peeked, Some((tx.transfer.sender.to_bytes(), tx.transfer.nonce)));
        }
    }

    #[test]
    fn corrupted_encodings_get_the_same_answer_as_serde(
        tx in transfer(),
        cs in prop::collection::vec(corruption(), 1..4),
    ) {
        let bytes = cs.iter().fold(tx.encode(), corrupt);
        prop_assert_eq!(SignedTransfer::decode(&bytes).ok(), reference(&bytes));
    }

    #[test]
    fn arbitrary_bytes_get_the_same_answer_as_serde(
        bytes in prop::collection::vec(any::<u8>(), 0..400),
    ) {
        prop_assert_eq!(SignedTransfer::decode(&bytes).ok(), reference(&bytes));
    }
}

/// The encodings a random corruption rarely produces: integers written
/// longer than needed, or too large, and lengths beyond their bounds.
#[test]
fn non_minimal_and_out_of_range_integers_are_refused_by_both() {
    let key = KeyPair::from_seed([1; 32]);
    let tx = Transfer {
        chain_id: ChainId::new("c").unwrap(),
        sender: key.public(),
        nonce: 5,
        legs: vec![Leg {
            to: KeyPair::from_seed([2; 32]).public(),
            amount: 1,
        }],
    }
    .sign(&key);
    let bytes = tx.encode();
    // chain id length (1), "c", sender (32): the nonce is at 34.
    let nonce_at = 1 + 1 + 32;
    assert_eq!(bytes[nonce_at], 5);
    let with_nonce = |enc: &[u8]| {
        let mut b = bytes[..nonce_at].to_vec();
        b.extend_from_slice(enc);
        b.extend_from_slice(&bytes[nonce_at + 1..]);
        b
    };
    let cases = [
        // 5 in two bytes.
        with_nonce(&[0x85, 0x00]),
        // 5 in ten bytes.
        with_nonce(&[0x85, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00]),
        // Beyond 64 bits.
        with_nonce(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]),
        // Eleven bytes.
        with_nonce(&[
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x81, 0x00,
        ]),
    ];
    for b in &cases {
        assert!(SignedTransfer::decode(b).is_err(), "{b:02x?}");
        assert_eq!(reference(b), None, "{b:02x?}");
    }
    // The largest nonce is fine in ten bytes.
    let max = with_nonce(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
    assert_eq!(
        SignedTransfer::decode(&max).unwrap().transfer.nonce,
        u64::MAX
    );
    assert_eq!(reference(&max).unwrap().transfer.nonce, u64::MAX);
    // Seventeen well-formed legs.
    let mut long = tx.clone();
    long.transfer.legs = vec![long.transfer.legs[0]; 17];
    let b = long.encode();
    assert!(SignedTransfer::decode(&b).is_err());
    assert_eq!(reference(&b), None);
    // A leg count of zero, and of seventeen over one leg's bytes.
    let legs_at = nonce_at + 1;
    assert_eq!(bytes[legs_at], 1);
    for n in [0u8, 17] {
        let mut b = bytes.clone();
        b[legs_at] = n;
        assert!(SignedTransfer::decode(&b).is_err());
        assert_eq!(reference(&b), None);
    }
}
