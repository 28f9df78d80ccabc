//! Certificate verification: every rejection class has its own error, and
//! property tests over random sets, signer subsets and tampering.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use phalanx_crypto::{
    Certificate, ChainId, CryptoError, Digest, Domain, KeyPair, SignedPayload, ValidatorIndex,
    ValidatorSet, Verified, decode, decode_canonical, encode,
};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Vote {
    view: u64,
    block: Digest,
}
impl SignedPayload for Vote {
    const DOMAIN: Domain = Domain("test/vote");
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Other {
    view: u64,
    block: Digest,
}
impl SignedPayload for Other {
    const DOMAIN: Domain = Domain("test/other");
}

fn keys(n: usize) -> (Vec<KeyPair>, ValidatorSet) {
    let keys: Vec<KeyPair> = (0..n)
        .map(|i| {
            let mut s = [0u8; 32];
            s[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
            KeyPair::from_seed(s)
        })
        .collect();
    let set = ValidatorSet::new(keys.iter().map(|k| k.public()).collect()).unwrap();
    (keys, set)
}

fn chain() -> ChainId {
    ChainId::new("test-chain").unwrap()
}

fn vote(view: u64) -> Vote {
    Vote {
        view,
        block: Digest::of(&view.to_le_bytes()),
    }
}

fn sign_all(keys: &[KeyPair], who: &[usize], v: &Vote) -> Vec<Verified<Vote>> {
    who.iter()
        .map(|&i| Verified::sign(&keys[i], ValidatorIndex(i as u16), &chain(), v.clone()))
        .collect()
}

#[test]
fn each_rejection_has_its_own_error() {
    let (keys, set) = keys(4);
    let v = vote(1);
    let good = sign_all(&keys, &[0, 1, 2], &v);
    let cert = Certificate::aggregate(&good, &set).unwrap();
    assert_eq!(cert.verify(&set, &chain()), Ok(()));

    // Duplicate signer.
    let mut dup = good.clone();
    dup.push(good[1].clone());
    assert_eq!(
        Certificate::aggregate(&dup, &set),
        Err(CryptoError::DuplicateSigner {
            signer: ValidatorIndex(1)
        })
    );

    // Below quorum, when aggregating and when verifying a trimmed certificate.
    assert!(matches!(
        Certificate::aggregate(&good[..2], &set),
        Err(CryptoError::BelowQuorum { got: 2, quorum: 3 })
    ));
    let mut trimmed = cert.clone();
    // Keep only signers 0 and 1.
    trimmed.signers = serde_roundtrip_bitmap(&cert.signers, 0b0000_0011);
    trimmed.signatures.truncate(2);
    assert!(matches!(
        trimmed.verify(&set, &chain()),
        Err(CryptoError::BelowQuorum { got: 2, quorum: 3 })
    ));

    // Unknown signer: a bit beyond the set (bitmap has 8 bits for n = 4).
    let mut unknown = cert.clone();
    unknown.signers = serde_roundtrip_bitmap(&cert.signers, 0b0001_0111);
    unknown.signatures.push(cert.signatures[0]);
    assert!(matches!(
        unknown.verify(&set, &chain()),
        Err(CryptoError::UnknownSigner { .. })
    ));

    // A signature over another message.
    let mixed = vec![
        good[0].clone(),
        good[1].clone(),
        Verified::sign(&keys[2], ValidatorIndex(2), &chain(), vote(2)),
    ];
    assert_eq!(
        Certificate::aggregate(&mixed, &set),
        Err(CryptoError::MessageMismatch {
            signer: ValidatorIndex(2)
        })
    );
    // Inside a certificate, such a signature simply fails to verify, and the
    // error names the culprit.
    let mut forged = cert.clone();
    forged.signatures[2] = mixed[2].signature;
    assert_eq!(
        forged.verify(&set, &chain()),
        Err(CryptoError::InvalidSignature {
            signer: ValidatorIndex(2)
        })
    );

    // A signature made for another domain or another chain never verifies.
    let other_domain = Verified::sign(
        &keys[2],
        ValidatorIndex(2),
        &chain(),
        Other {
            view: v.view,
            block: v.block,
        },
    );
    let mut cross = cert.clone();
    cross.signatures[2] = other_domain.signature;
    assert!(cross.verify(&set, &chain()).is_err());
    assert!(
        cert.verify(&set, &ChainId::new("other-chain").unwrap())
            .is_err()
    );

    // Unknown signer on a single signed message.
    let mut s = good[0].clone().into_signed();
    s.signer = ValidatorIndex(9);
    assert!(matches!(
        s.verify(&set, &chain()),
        Err(CryptoError::UnknownSigner { .. })
    ));
}

/// Replaces a bitmap's single byte through its wire form (the type keeps its
/// bytes private so that valid code cannot build a malformed one).
fn serde_roundtrip_bitmap(
    b: &phalanx_crypto::SignerBitmap,
    byte: u8,
) -> phalanx_crypto::SignerBitmap {
    let mut bytes = encode(b);
    assert_eq!(
        bytes.len(),
        2,
        "n = 4 gives one length byte and one bitmap byte"
    );
    bytes[1] = byte;
    decode(&bytes, 16).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn certificate_round_trips_and_verifies(
        n in 1usize..20,
        view in any::<u64>(),
        extra in any::<u64>(),
    ) {
        let (keys, set) = keys(n);
        // A random subset of at least a quorum, chosen from `extra`'s bits.
        let mut who: Vec<usize> = (0..n).filter(|i| extra >> i & 1 == 1).collect();
        for i in 0..n {
            if who.len() >= set.quorum() { break; }
            if !who.contains(&i) { who.push(i); }
        }
        let v = vote(view);
        let cert = Certificate::aggregate(&sign_all(&keys, &who, &v), &set).unwrap();
        let bytes = encode(&cert);
        let back: Certificate<Vote> = decode_canonical(&bytes, 1 << 20).unwrap();
        prop_assert_eq!(&back, &cert);
        prop_assert_eq!(back.verify(&set, &chain()), Ok(()));
        prop_assert_eq!(back.signers.count(), who.len());
    }

    #[test]
    fn any_flipped_bit_in_a_signature_is_caught(
        n in 4usize..12,
        which in any::<usize>(),
        bit in 0usize..512,
    ) {
        let (keys, set) = keys(n);
        let who: Vec<usize> = (0..set.quorum()).collect();
        let mut cert = Certificate::aggregate(&sign_all(&keys, &who, &vote(3)), &set).unwrap();
        let i = which % cert.signatures.len();
        cert.signatures[i].0[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(cert.verify(&set, &chain()).is_err());
    }

    #[test]
    fn encoding_round_trips(view in any::<u64>(), bytes in any::<[u8; 32]>(), id in "[a-z0-9._-]{1,64}") {
        let v = Vote { view, block: Digest(bytes) };
        prop_assert_eq!(decode_canonical::<Vote>(&encode(&v), 100).unwrap(), v);
        let c = ChainId::new(id).unwrap();
        prop_assert_eq!(decode_canonical::<ChainId>(&encode(&c), 100).unwrap(), c);
    }

    #[test]
    fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode::<Certificate<Vote>>(&bytes, 1 << 16);
    }
}
