use std::collections::HashSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{CryptoError, PublicKey};

/// Position of a validator in the ordered validator set.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default, Serialize, Deserialize,
)]
pub struct ValidatorIndex(pub u16);

impl ValidatorIndex {
    /// As a `usize`, for indexing.
    pub fn as_usize(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for ValidatorIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

/// The most validators a set may hold; bounds bitmaps and certificates.
pub const MAX_VALIDATORS: usize = 1024;

/// The ordered public keys of the validators, with the fault bound and
/// quorum size derived from their number.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(try_from = "Vec<PublicKey>", into = "Vec<PublicKey>")]
pub struct ValidatorSet {
    keys: Vec<PublicKey>,
    /// A planted flaw: quorums of 2f instead of 2f + 1 (feature `flaws`,
    /// the consensus simulator's negative controls only).
    #[cfg(feature = "flaws")]
    #[serde(skip)]
    short_quorum: bool,
}

impl ValidatorSet {
    /// Builds a set; refuses an empty set, more than [`MAX_VALIDATORS`], and
    /// a key listed twice (one operator would count as two).
    pub fn new(keys: Vec<PublicKey>) -> Result<ValidatorSet, CryptoError> {
        if keys.is_empty() {
            return Err(CryptoError::InvalidValidatorSet {
                reason: "no validators".into(),
            });
        }
        if keys.len() > MAX_VALIDATORS {
            return Err(CryptoError::InvalidValidatorSet {
                reason: format!("{} validators, at most {MAX_VALIDATORS}", keys.len()),
            });
        }
        let mut seen = HashSet::new();
        for k in &keys {
            if !seen.insert(*k) {
                return Err(CryptoError::InvalidValidatorSet {
                    reason: format!("key {k} listed twice"),
                });
            }
        }
        Ok(ValidatorSet {
            keys,
            #[cfg(feature = "flaws")]
            short_quorum: false,
        })
    }

    /// The same set with quorums one signature short (2f): a planted flaw
    /// for the simulator's negative controls (feature `flaws`).
    #[cfg(feature = "flaws")]
    pub fn with_short_quorum(mut self) -> ValidatorSet {
        self.short_quorum = true;
        self
    }

    /// Number of validators.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Never true: a set has at least one validator.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Faults tolerated: ⌊(n−1)/3⌋.
    pub fn f(&self) -> usize {
        (self.len() - 1) / 3
    }

    /// Signers needed for a certificate: ⌊2n/3⌋+1.
    pub fn quorum(&self) -> usize {
        #[cfg(feature = "flaws")]
        if self.short_quorum {
            return 2 * self.len() / 3;
        }
        2 * self.len() / 3 + 1
    }

    /// Signers that guarantee at least one honest among them: f+1.
    pub fn one_honest(&self) -> usize {
        self.f() + 1
    }

    /// The key at `i`, if `i` is a member.
    pub fn key(&self, i: ValidatorIndex) -> Option<&PublicKey> {
        self.keys.get(i.as_usize())
    }

    /// The index of `key`, if it is a member.
    pub fn index_of(&self, key: &PublicKey) -> Option<ValidatorIndex> {
        self.keys
            .iter()
            .position(|k| k == key)
            .map(|i| ValidatorIndex(i as u16))
    }

    /// All members in order.
    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    /// All indices in order.
    pub fn indices(&self) -> impl Iterator<Item = ValidatorIndex> + '_ {
        (0..self.keys.len()).map(|i| ValidatorIndex(i as u16))
    }
}

impl TryFrom<Vec<PublicKey>> for ValidatorSet {
    type Error = CryptoError;
    fn try_from(v: Vec<PublicKey>) -> Result<Self, CryptoError> {
        ValidatorSet::new(v)
    }
}

impl From<ValidatorSet> for Vec<PublicKey> {
    fn from(s: ValidatorSet) -> Self {
        s.keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyPair;

    fn set(n: usize) -> ValidatorSet {
        ValidatorSet::new(
            (0..n)
                .map(|i| KeyPair::from_seed([i as u8; 32]).public())
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn fault_bound_and_quorum() {
        for (n, f, q) in [
            (1, 0, 1),
            (2, 0, 2),
            (3, 0, 3),
            (4, 1, 3),
            (5, 1, 4),
            (7, 2, 5),
            (10, 3, 7),
            (16, 5, 11),
            (64, 21, 43),
        ] {
            let s = set(n);
            assert_eq!((s.f(), s.quorum()), (f, q), "n = {n}");
            // Two quorums always overlap in at least f+1 members.
            assert!(2 * s.quorum() > n + s.f(), "n = {n}");
        }
    }

    #[test]
    fn duplicate_and_empty_sets_are_refused() {
        let k = KeyPair::from_seed([1; 32]).public();
        assert!(ValidatorSet::new(vec![]).is_err());
        assert!(ValidatorSet::new(vec![k, k]).is_err());
    }
}
