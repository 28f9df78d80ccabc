use std::ops::Deref;

use serde::{Deserialize, Serialize};

use crate::{
    ChainId, CryptoError, KeyPair, Signature, SignedPayload, ValidatorIndex, ValidatorSet,
    signing_bytes, verify_one,
};

/// A payload with a validator's signature over it, as it arrives from the
/// wire: **not** checked. Only [`Signed::verify`] turns it into a
/// [`Verified`], which is what the rest of the system accepts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed<T> {
    /// What was signed.
    pub payload: T,
    /// Who claims to have signed it.
    pub signer: ValidatorIndex,
    /// The signature over `signing_bytes(chain, payload)`.
    pub signature: Signature,
}

impl<T: SignedPayload> Signed<T> {
    /// Checks the signer is a member and the signature is valid for `chain`.
    pub fn verify(self, set: &ValidatorSet, chain: &ChainId) -> Result<Verified<T>, CryptoError> {
        let key = set.key(self.signer).ok_or(CryptoError::UnknownSigner {
            signer: self.signer,
            n: set.len(),
        })?;
        if !verify_one(key, &signing_bytes(chain, &self.payload), &self.signature) {
            return Err(CryptoError::InvalidSignature {
                signer: self.signer,
            });
        }
        Ok(Verified(self))
    }
}

/// A [`Signed`] whose signature has been checked against the validator set.
/// It can only be built by verification or by signing, so holding one is
/// proof that the check happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified<T>(Signed<T>);

impl<T: SignedPayload> Verified<T> {
    /// Signs `payload` as validator `signer` on `chain`.
    pub fn sign(key: &KeyPair, signer: ValidatorIndex, chain: &ChainId, payload: T) -> Self {
        let signature = key.sign_raw(&signing_bytes(chain, &payload));
        Verified(Signed {
            payload,
            signer,
            signature,
        })
    }
}

impl<T> Verified<T> {
    /// Marks a message as verified without checking it. Only for a cache that
    /// verified these exact bytes before (verification is a deterministic
    /// function of the bytes); everything else must call [`Signed::verify`].
    pub fn trusted(signed: Signed<T>) -> Self {
        Verified(signed)
    }

    /// The signed message, e.g. to send it on.
    pub fn signed(&self) -> &Signed<T> {
        &self.0
    }

    /// Gives up the proof of verification.
    pub fn into_signed(self) -> Signed<T> {
        self.0
    }
}

impl<T> Deref for Verified<T> {
    type Target = Signed<T>;
    fn deref(&self) -> &Signed<T> {
        &self.0
    }
}
