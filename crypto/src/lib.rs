//! Cryptographic foundation of Phalanx.
//!
//! This crate owns everything that turns bytes into trust: SHA-256 digests,
//! ed25519 keys and key files, the canonical encoding of signed messages
//! (with a domain tag per message kind and the chain id inside what is
//! signed), the single signature-validity rule, `Signed<T>` / `Verified<T>`,
//! validator sets and quorum certificates.
//!
//! It must never do I/O beyond reading and writing key files, never keep a
//! clock, and never depend on any other Phalanx crate: everything else points
//! inward to it.

mod cert;
mod digest;
mod encoding;
mod error;
mod keys;
mod signed;
mod validators;
mod verify;

pub use cert::{Certificate, SignerBitmap};
pub use digest::Digest;
pub use encoding::{
    ChainId, Domain, MAX_CHAIN_ID_LEN, SignedPayload, decode, decode_byte_list, decode_canonical,
    encode, encode_byte_list, signing_bytes, signing_bytes_of,
};
pub use error::CryptoError;
pub use keys::{KeyPair, PublicKey, Signature};
pub use signed::{Signed, Verified};
pub use validators::{ValidatorIndex, ValidatorSet};
pub use verify::{verify_batch, verify_each, verify_one};
