//! The one signature-validity rule used everywhere in Phalanx.
//!
//! ed25519 implementations disagree at the edges: `verify_strict` checks the
//! cofactorless equation `[s]B = R + [k]A`, while batch verification can only
//! check the cofactored one `[8][s]B = [8]R + [8][k]A`. A validator that
//! batch-verifies and one that verifies singly would then disagree on a
//! signature crafted with a torsion component, and so on whether a
//! certificate is valid. Phalanx therefore defines validity once:
//!
//! * the public key is a canonical, non-small-order point (checked when a
//!   [`PublicKey`] is built, so every key in a validator set passed it);
//! * `s` is a canonical scalar (`s < ℓ`), and `R` decodes;
//! * the **cofactored** equation holds.
//!
//! [`verify_one`] is a batch of one and [`verify_batch`] a batch of many,
//! both through ed25519-dalek's `verify_batch`, so single and batch
//! verification accept exactly the same signatures (the batch's random
//! linear combination fails to detect a bad member with probability
//! at most 2^-128). When a batch fails, each member is re-checked singly
//! under the same rule to find the culprit.

use crate::{CryptoError, PublicKey, Signature};

/// Checks one signature under the project's validity rule.
pub fn verify_one(key: &PublicKey, msg: &[u8], sig: &Signature) -> bool {
    ed25519_dalek::verify_batch(&[msg], &[sig.inner()], &[*key.inner()]).is_ok()
}

/// Checks many signatures at once. On failure, returns the position of the
/// first invalid entry (found by single verification under the same rule).
pub fn verify_batch(items: &[(&PublicKey, &[u8], &Signature)]) -> Result<(), usize> {
    if items.is_empty() {
        return Ok(());
    }
    let msgs: Vec<&[u8]> = items.iter().map(|(_, m, _)| *m).collect();
    let sigs: Vec<ed25519_dalek::Signature> = items.iter().map(|(_, _, s)| s.inner()).collect();
    let keys: Vec<ed25519_dalek::VerifyingKey> = items.iter().map(|(k, _, _)| *k.inner()).collect();
    if ed25519_dalek::verify_batch(&msgs, &sigs, &keys).is_ok() {
        return Ok(());
    }
    match items.iter().position(|(k, m, s)| !verify_one(k, m, s)) {
        Some(i) => Err(i),
        // The batch failed but every member passes alone: only possible with
        // probability 2^-128; treat the whole batch as invalid at entry 0.
        None => Err(0),
    }
}

/// Maps a failed batch position to an error naming the signer.
pub(crate) fn invalid_at<I: Copy>(
    signers: &[I],
    pos: usize,
    f: impl Fn(I) -> CryptoError,
) -> CryptoError {
    match signers.get(pos) {
        Some(s) => f(*s),
        None => CryptoError::BadSignature,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyPair;

    #[test]
    fn single_and_batch_agree_on_valid_and_invalid() {
        let keys: Vec<KeyPair> = (0..8u8).map(|i| KeyPair::from_seed([i; 32])).collect();
        let msgs: Vec<Vec<u8>> = (0..8u8).map(|i| vec![i; 10]).collect();
        let mut sigs: Vec<Signature> = keys.iter().zip(&msgs).map(|(k, m)| k.sign_raw(m)).collect();
        let pubs: Vec<PublicKey> = keys.iter().map(|k| k.public()).collect();
        let items = |sigs: &[Signature]| {
            pubs.iter()
                .zip(&msgs)
                .zip(sigs.to_vec())
                .map(|((k, m), s)| (*k, m.clone(), s))
                .collect::<Vec<_>>()
        };
        let owned = items(&sigs);
        let refs: Vec<_> = owned.iter().map(|(k, m, s)| (k, m.as_slice(), s)).collect();
        assert_eq!(verify_batch(&refs), Ok(()));
        for (k, m, s) in &refs {
            assert!(verify_one(k, m, s));
        }
        sigs[5].0[3] ^= 1;
        let owned = items(&sigs);
        let refs: Vec<_> = owned.iter().map(|(k, m, s)| (k, m.as_slice(), s)).collect();
        assert_eq!(verify_batch(&refs), Err(5));
        assert!(!verify_one(refs[5].0, refs[5].1, refs[5].2));
    }

    #[test]
    fn non_canonical_s_is_rejected() {
        let k = KeyPair::from_seed([1; 32]);
        let mut sig = k.sign_raw(b"m");
        // Set the top bits of s: s >= l, which the rule refuses.
        sig.0[63] |= 0xf0;
        assert!(!verify_one(&k.public(), b"m", &sig));
    }
}
