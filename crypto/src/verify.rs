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

/// Checks many signatures at once and tells which are valid. A failing
/// batch is split in halves, recursively, so that `k` bad signatures among
/// `n` cost about `2k·log2(n/k)` batch checks more rather than `n` single
/// ones: a sender of one bad signature cannot make a whole batch expensive.
pub fn verify_each(items: &[(&PublicKey, &[u8], &Signature)]) -> Vec<bool> {
    let mut out = vec![false; items.len()];
    bisect(items, &mut out);
    out
}

fn bisect(items: &[(&PublicKey, &[u8], &Signature)], out: &mut [bool]) {
    debug_assert_eq!(items.len(), out.len());
    if items.is_empty() {
        return;
    }
    let msgs: Vec<&[u8]> = items.iter().map(|(_, m, _)| *m).collect();
    let sigs: Vec<ed25519_dalek::Signature> = items.iter().map(|(_, _, s)| s.inner()).collect();
    let keys: Vec<ed25519_dalek::VerifyingKey> = items.iter().map(|(k, _, _)| *k.inner()).collect();
    if ed25519_dalek::verify_batch(&msgs, &sigs, &keys).is_ok() {
        out.fill(true);
        return;
    }
    if items.len() == 1 {
        // A batch of one is the single-signature rule: invalid.
        return;
    }
    let mid = items.len() / 2;
    let (left, right) = out.split_at_mut(mid);
    bisect(&items[..mid], left);
    bisect(&items[mid..], right);
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
    fn verify_each_finds_exactly_the_bad_signatures() {
        let n = 37u8;
        let keys: Vec<KeyPair> = (0..n).map(|i| KeyPair::from_seed([i; 32])).collect();
        let msgs: Vec<Vec<u8>> = (0..n).map(|i| vec![i; 7]).collect();
        let pubs: Vec<PublicKey> = keys.iter().map(|k| k.public()).collect();
        for bad in [
            vec![],
            vec![0],
            vec![36],
            vec![5, 6, 20],
            (0..37).collect::<Vec<usize>>(),
        ] {
            let sigs: Vec<Signature> = keys
                .iter()
                .zip(&msgs)
                .enumerate()
                .map(|(i, (k, m))| {
                    let mut s = k.sign_raw(m);
                    if bad.contains(&i) {
                        s.0[10] ^= 4;
                    }
                    s
                })
                .collect();
            let items: Vec<_> = (0..n as usize)
                .map(|i| (&pubs[i], msgs[i].as_slice(), &sigs[i]))
                .collect();
            let got = verify_each(&items);
            let want: Vec<bool> = items.iter().map(|(k, m, s)| verify_one(k, m, s)).collect();
            assert_eq!(got, want, "bad at {bad:?}");
            assert_eq!(got.iter().filter(|ok| !**ok).count(), bad.len());
        }
        assert!(verify_each(&[]).is_empty());
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
