use std::path::PathBuf;

use crate::ValidatorIndex;

/// Every way a cryptographic check or key-file operation can fail.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CryptoError {
    /// A signature does not verify under the signer's key for this message.
    #[error("invalid signature from validator {signer}")]
    InvalidSignature {
        /// Who claimed to sign.
        signer: ValidatorIndex,
    },
    /// A signature failed verification where no validator index applies.
    #[error("invalid signature")]
    BadSignature,
    /// A signer index that is not in the validator set.
    #[error("unknown signer {signer} (validator set has {n} members)")]
    UnknownSigner {
        /// The index given.
        signer: ValidatorIndex,
        /// Size of the set.
        n: usize,
    },
    /// The same validator appears twice in one certificate.
    #[error("duplicate signer {signer} in certificate")]
    DuplicateSigner {
        /// The repeated index.
        signer: ValidatorIndex,
    },
    /// Fewer distinct signers than a quorum.
    #[error("certificate has {got} signers, quorum is {quorum}")]
    BelowQuorum {
        /// Distinct signers present.
        got: usize,
        /// Signers required.
        quorum: usize,
    },
    /// A signature in an aggregate was made over a different message.
    #[error("signature from validator {signer} is over another message")]
    MessageMismatch {
        /// The signer whose message differs.
        signer: ValidatorIndex,
    },
    /// The signer bitmap and the signature list disagree, or the bitmap is
    /// longer than the validator set needs.
    #[error("malformed certificate: {reason}")]
    MalformedCertificate {
        /// What is wrong.
        reason: &'static str,
    },
    /// Bytes that are not a valid public key, or a small-order (weak) key.
    #[error("invalid public key: {reason}")]
    InvalidPublicKey {
        /// What is wrong.
        reason: &'static str,
    },
    /// A validator set that cannot be used.
    #[error("invalid validator set: {reason}")]
    InvalidValidatorSet {
        /// What is wrong.
        reason: String,
    },
    /// A chain id outside the allowed alphabet or length.
    #[error("invalid chain id {id:?}: {reason}")]
    InvalidChainId {
        /// The rejected id.
        id: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// Bytes that do not decode to the expected type.
    #[error("decode failed: {reason}")]
    Decode {
        /// The decoder's message.
        reason: String,
    },
    /// Input larger than the caller's bound, refused before decoding.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Bytes offered.
        len: usize,
        /// Bytes allowed.
        max: usize,
    },
    /// Bytes that decode but are not the canonical encoding of their value.
    #[error("non-canonical encoding")]
    NonCanonical,
    /// A key file is readable or writable by group or others.
    #[error(
        "key file {path} has permissions {mode:o}; it must be readable only by its owner (chmod 600)"
    )]
    KeyFilePermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A key file that does not hold a key.
    #[error("key file {path} is malformed: {reason}")]
    KeyFileFormat {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An I/O error on a key file.
    #[error("key file {path}: {message}")]
    KeyFileIo {
        /// The file.
        path: PathBuf,
        /// The OS error.
        message: String,
    },
    /// The operating system's random source failed.
    #[error("random source failed: {0}")]
    Random(String),
}
