//! Quorum certificates: signatures of at least a quorum of distinct
//! validators over one message, with a signer bitmap.

use serde::{Deserialize, Serialize};

use crate::verify::invalid_at;
use crate::{
    ChainId, CryptoError, Signature, SignedPayload, ValidatorIndex, ValidatorSet, Verified,
    signing_bytes, verify_batch,
};

/// Which validators signed, one bit per validator index (bit `i % 8` of byte
/// `i / 8`). Its length is exactly ⌈n/8⌉ bytes for a set of n.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct SignerBitmap(Vec<u8>);

impl SignerBitmap {
    /// An empty bitmap sized for `n` validators.
    pub fn new(n: usize) -> SignerBitmap {
        SignerBitmap(vec![0; n.div_ceil(8)])
    }

    /// Whether `i` is set.
    pub fn contains(&self, i: ValidatorIndex) -> bool {
        let i = i.as_usize();
        self.0.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0)
    }

    fn insert(&mut self, i: ValidatorIndex) {
        let i = i.as_usize();
        self.0[i / 8] |= 1 << (i % 8);
    }

    /// Number of signers.
    pub fn count(&self) -> usize {
        self.0.iter().map(|b| b.count_ones() as usize).sum()
    }

    /// Signer indices in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = ValidatorIndex> + '_ {
        (0..self.0.len() * 8)
            .map(|i| ValidatorIndex(i as u16))
            .filter(|i| self.contains(*i))
    }
}

/// A quorum certificate over one payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate<T> {
    /// The message every signer signed.
    pub payload: T,
    /// Who signed.
    pub signers: SignerBitmap,
    /// One signature per set bit, in ascending signer order.
    pub signatures: Vec<Signature>,
}

impl<T: SignedPayload + Clone + PartialEq> Certificate<T> {
    /// Aggregates individually verified signed messages into a certificate.
    /// Refuses an unknown or duplicate signer, a message that differs from
    /// the first, and fewer than a quorum of signers.
    pub fn aggregate(votes: &[Verified<T>], set: &ValidatorSet) -> Result<Self, CryptoError> {
        let Some(first) = votes.first() else {
            return Err(CryptoError::BelowQuorum {
                got: 0,
                quorum: set.quorum(),
            });
        };
        let mut signers = SignerBitmap::new(set.len());
        let mut sorted: Vec<&Verified<T>> = Vec::with_capacity(votes.len());
        for v in votes {
            if set.key(v.signer).is_none() {
                return Err(CryptoError::UnknownSigner {
                    signer: v.signer,
                    n: set.len(),
                });
            }
            if v.payload != first.payload {
                return Err(CryptoError::MessageMismatch { signer: v.signer });
            }
            if signers.contains(v.signer) {
                return Err(CryptoError::DuplicateSigner { signer: v.signer });
            }
            signers.insert(v.signer);
            sorted.push(v);
        }
        if sorted.len() < set.quorum() {
            return Err(CryptoError::BelowQuorum {
                got: sorted.len(),
                quorum: set.quorum(),
            });
        }
        sorted.sort_by_key(|v| v.signer);
        Ok(Certificate {
            payload: first.payload.clone(),
            signers,
            signatures: sorted.iter().map(|v| v.signature).collect(),
        })
    }

    /// Verifies the certificate against `set` on `chain`: bitmap shape,
    /// members only, a quorum of distinct signers, and every signature valid
    /// over this payload (batch-verified).
    pub fn verify(&self, set: &ValidatorSet, chain: &ChainId) -> Result<(), CryptoError> {
        if self.signers.0.len() != set.len().div_ceil(8) {
            return Err(CryptoError::MalformedCertificate {
                reason: "signer bitmap length does not match the validator set",
            });
        }
        let signers: Vec<ValidatorIndex> = self.signers.iter().collect();
        if let Some(bad) = signers.iter().find(|i| set.key(**i).is_none()) {
            return Err(CryptoError::UnknownSigner {
                signer: *bad,
                n: set.len(),
            });
        }
        if signers.len() != self.signatures.len() {
            return Err(CryptoError::MalformedCertificate {
                reason: "signature count differs from signer count",
            });
        }
        if signers.len() < set.quorum() {
            return Err(CryptoError::BelowQuorum {
                got: signers.len(),
                quorum: set.quorum(),
            });
        }
        let msg = signing_bytes(chain, &self.payload);
        let keys: Vec<_> = signers.iter().filter_map(|i| set.key(*i)).collect();
        let items: Vec<_> = keys
            .iter()
            .zip(&self.signatures)
            .map(|(k, s)| (*k, msg.as_slice(), s))
            .collect();
        verify_batch(&items).map_err(|pos| {
            invalid_at(&signers, pos, |signer| CryptoError::InvalidSignature {
                signer,
            })
        })
    }
}
