//! Canonical binary encoding and domain-separated signing bytes.
//!
//! The wire and signing format is postcard (serde): compact, deterministic
//! for a given value, and maintained. Canonicality is enforced on input by
//! [`decode_canonical`], which re-encodes the decoded value and refuses bytes
//! that differ; signatures and digests are always computed over
//! `encode(value)`, never over bytes received from a peer, so a malleable
//! encoding can never change what was signed.

use std::fmt;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::{CryptoError, Digest};

/// Longest chain id accepted, in bytes.
pub const MAX_CHAIN_ID_LEN: usize = 64;

/// Prefix of every signed byte string; versioned so that a future format can
/// never be confused with this one.
const SIGNING_PREFIX: &[u8] = b"PHALANX-SIG-V1\0";
/// Prefix of signatures under a chain id bound to its genesis: the genesis
/// hash follows the chain id. A different prefix, so that no byte string is
/// both a bound and an unbound signing input.
const SIGNING_PREFIX_BOUND: &[u8] = b"PHALANX-SIG-V2\0";

/// The purpose a signature was made for. Each signed message kind has its own
/// domain, so a signature made for one kind can never verify as another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Domain(pub &'static str);

/// A message kind that is signed: it names its domain.
pub trait SignedPayload: Serialize {
    /// The domain tag mixed into every signature over this kind.
    const DOMAIN: Domain;

    /// The value whose encoding is signed. Defaults to the whole message;
    /// large messages (proposals) sign a small header that commits to the rest.
    fn signed_bytes(&self) -> Vec<u8> {
        encode(self)
    }
}

/// The identifier of one chain, inside every signature so that a message
/// signed for one chain is never valid on another.
///
/// 1 to [`MAX_CHAIN_ID_LEN`] bytes of ASCII letters, digits, `-`, `_` or `.`.
/// Consensus signs with the id **bound to the genesis hash**
/// ([`ChainId::bound_to`]): two chains that share a name and validator keys
/// but differ in anything their genesis holds never accept each other's
/// signatures. The binding is not part of the id's encoding (a transaction
/// carries the name only).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ChainId {
    id: String,
    genesis: Option<Digest>,
}

impl ChainId {
    /// Validates and wraps a chain id.
    pub fn new(id: impl Into<String>) -> Result<ChainId, CryptoError> {
        let id = id.into();
        let reason = if id.is_empty() {
            Some("empty")
        } else if id.len() > MAX_CHAIN_ID_LEN {
            Some("longer than 64 bytes")
        } else if !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            Some("only ASCII letters, digits, '-', '_' and '.' are allowed")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(CryptoError::InvalidChainId { id, reason }),
            None => Ok(ChainId { id, genesis: None }),
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// The same id bound to the hash of its chain's genesis.
    pub fn bound_to(mut self, genesis: Digest) -> ChainId {
        self.genesis = Some(genesis);
        self
    }

    /// The genesis hash this id is bound to, if any.
    pub fn genesis(&self) -> Option<&Digest> {
        self.genesis.as_ref()
    }
}

impl TryFrom<String> for ChainId {
    type Error = CryptoError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        ChainId::new(s)
    }
}

impl From<ChainId> for String {
    fn from(c: ChainId) -> String {
        c.id
    }
}

impl fmt::Debug for ChainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.genesis {
            Some(g) => write!(f, "ChainId({}@{})", self.id, g.short()),
            None => write!(f, "ChainId({})", self.id),
        }
    }
}

impl fmt::Display for ChainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

/// Canonical encoding of a value.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    // Serialising an in-memory value into a growable Vec cannot fail for the
    // types this project defines (no maps with non-string keys, no
    // `serialize_*` errors); a failure here is a bug, not bad input.
    postcard::to_stdvec(value).expect("postcard encoding of an in-memory value")
}

/// Encodes a list of byte strings: exactly [`encode`] of `items`, written
/// a string at a time rather than a byte at a time.
pub fn encode_byte_list(items: &[Vec<u8>]) -> Vec<u8> {
    let refs: Vec<&serde_bytes::Bytes> = items.iter().map(|i| serde_bytes::Bytes::new(i)).collect();
    encode(&refs)
}

/// Decodes what [`encode_byte_list`] (or [`encode`] of a `Vec<Vec<u8>>`)
/// wrote, with [`decode`]'s checks, and only that: a list whose lengths are
/// written as over-long varints is refused, so one list has one encoding
/// (postcard itself accepts over-long varints).
pub fn decode_byte_list(bytes: &[u8], max_len: usize) -> Result<Vec<Vec<u8>>, CryptoError> {
    let items: Vec<serde_bytes::ByteBuf> = decode(bytes, max_len)?;
    // Every byte was consumed; any over-long varint makes the input longer
    // than the canonical encoding, whose length is computed here without
    // writing it.
    let canonical = varint_len(items.len())
        + items
            .iter()
            .map(|i| varint_len(i.len()) + i.len())
            .sum::<usize>();
    if canonical != bytes.len() {
        return Err(CryptoError::NonCanonical);
    }
    Ok(items
        .into_iter()
        .map(serde_bytes::ByteBuf::into_vec)
        .collect())
}

/// Bytes of the shortest LEB128 varint of `n`, as postcard writes it.
fn varint_len(n: usize) -> usize {
    let bits = usize::BITS - (n | 1).leading_zeros();
    bits.div_ceil(7) as usize
}

/// Decodes `bytes`, refusing input over `max_len` before looking at it and
/// refusing trailing bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], max_len: usize) -> Result<T, CryptoError> {
    if bytes.len() > max_len {
        return Err(CryptoError::TooLarge {
            len: bytes.len(),
            max: max_len,
        });
    }
    let (value, rest) = postcard::take_from_bytes(bytes).map_err(|e| CryptoError::Decode {
        reason: e.to_string(),
    })?;
    if !rest.is_empty() {
        return Err(CryptoError::Decode {
            reason: format!("{} trailing bytes", rest.len()),
        });
    }
    Ok(value)
}

/// [`decode`], then checks that the bytes are exactly the canonical encoding
/// of the decoded value (no over-long varints, no alternative forms).
pub fn decode_canonical<T: DeserializeOwned + Serialize>(
    bytes: &[u8],
    max_len: usize,
) -> Result<T, CryptoError> {
    let value: T = decode(bytes, max_len)?;
    if encode(&value) != bytes {
        return Err(CryptoError::NonCanonical);
    }
    Ok(value)
}

/// The exact bytes an ed25519 signature covers for `payload` on `chain`:
/// version prefix, domain, chain id (both length-prefixed), then the
/// payload's signed bytes.
pub fn signing_bytes<T: SignedPayload + ?Sized>(chain: &ChainId, payload: &T) -> Vec<u8> {
    signing_bytes_of(T::DOMAIN, chain, &payload.signed_bytes())
}

/// [`signing_bytes`] from a payload's signed bytes as they already are (cut
/// from a canonical encoding, say), rather than encoding the payload again.
pub fn signing_bytes_of(domain: Domain, chain: &ChainId, body: &[u8]) -> Vec<u8> {
    let domain = domain.0.as_bytes();
    let genesis = chain.genesis().copied();
    let chain = chain.as_str().as_bytes();
    let mut out = Vec::with_capacity(
        SIGNING_PREFIX_BOUND.len() + 2 + domain.len() + chain.len() + 32 + body.len(),
    );
    out.extend_from_slice(match genesis {
        Some(_) => SIGNING_PREFIX_BOUND,
        None => SIGNING_PREFIX,
    });
    // Both lengths fit in a byte: domains are short constants and chain ids
    // are at most 64 bytes (checked by `ChainId::new`).
    debug_assert!(domain.len() < 256 && chain.len() <= MAX_CHAIN_ID_LEN);
    out.push(domain.len() as u8);
    out.extend_from_slice(domain);
    out.push(chain.len() as u8);
    out.extend_from_slice(chain);
    if let Some(g) = genesis {
        out.extend_from_slice(&g.0);
    }
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_lists_encode_exactly_as_sequences_of_bytes() {
        let lists: Vec<Vec<Vec<u8>>> = vec![
            vec![],
            vec![vec![]],
            vec![vec![1, 2, 3], vec![], (0..=255).collect(), vec![7; 300]],
        ];
        for l in lists {
            let fast = encode_byte_list(&l);
            assert_eq!(fast, encode(&l), "{l:?}");
            assert_eq!(decode_byte_list(&fast, usize::MAX).unwrap(), l);
            assert_eq!(decode::<Vec<Vec<u8>>>(&fast, usize::MAX).unwrap(), l);
        }
        let bytes = encode_byte_list(&[vec![1; 10]]);
        assert!(
            decode_byte_list(&bytes, bytes.len() - 1).is_err(),
            "over the bound"
        );
        assert!(
            decode_byte_list(&bytes[..bytes.len() - 1], usize::MAX).is_err(),
            "truncated"
        );
    }

    #[derive(Serialize)]
    struct A(u64);
    impl SignedPayload for A {
        const DOMAIN: Domain = Domain("test/a");
    }
    #[derive(Serialize)]
    struct B(u64);
    impl SignedPayload for B {
        const DOMAIN: Domain = Domain("test/b");
    }

    #[test]
    fn domain_and_chain_separate_signing_bytes() {
        let c1 = ChainId::new("one").unwrap();
        let c2 = ChainId::new("two").unwrap();
        assert_ne!(signing_bytes(&c1, &A(7)), signing_bytes(&c1, &B(7)));
        assert_ne!(signing_bytes(&c1, &A(7)), signing_bytes(&c2, &A(7)));
        assert_eq!(signing_bytes(&c1, &A(7)), signing_bytes(&c1, &A(7)));
    }

    #[test]
    fn a_chain_id_bound_to_a_genesis_separates_signatures_and_keeps_its_encoding() {
        let c = ChainId::new("one").unwrap();
        let g1 = c.clone().bound_to(Digest::of(b"genesis 1"));
        let g2 = c.clone().bound_to(Digest::of(b"genesis 2"));
        let a = signing_bytes(&c, &A(7));
        assert_ne!(a, signing_bytes(&g1, &A(7)));
        assert_ne!(signing_bytes(&g1, &A(7)), signing_bytes(&g2, &A(7)));
        // A bound input never equals an unbound one, whatever the body: the
        // prefixes differ.
        assert_ne!(signing_bytes(&g1, &A(7))[..15], a[..15]);
        assert_eq!(encode(&g1), encode(&c), "the binding is not encoded");
        assert_eq!(g1.as_str(), "one");
    }

    #[test]
    fn chain_id_rules() {
        assert!(ChainId::new("phalanx-testnet.1_a").is_ok());
        assert!(ChainId::new("").is_err());
        assert!(ChainId::new("a b").is_err());
        assert!(ChainId::new("x".repeat(65)).is_err());
        let bad: Result<ChainId, _> = decode(&encode(&"a b".to_string()), 100);
        assert!(bad.is_err(), "deserialisation validates chain ids");
    }

    /// Found by fuzzing (target `tx_batch`): a list whose count is the
    /// over-long varint `8a 00` decoded, so one batch had two encodings.
    #[test]
    fn byte_lists_with_over_long_varints_are_refused() {
        let found = [
            0x8a, 0, 0, 0, 1, 0, 0, 0, 0x0a, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0x90, 0, 0,
        ];
        assert!(matches!(
            decode_byte_list(&found, usize::MAX),
            Err(CryptoError::NonCanonical)
        ));
        let list = vec![vec![7u8; 200], vec![], vec![1]];
        let good = encode_byte_list(&list);
        assert_eq!(decode_byte_list(&good, usize::MAX).unwrap(), list);
        // The same list with its count written in two bytes.
        let mut long = vec![0x83, 0x00];
        long.extend_from_slice(&good[1..]);
        let plain: Vec<serde_bytes::ByteBuf> = decode(&long, usize::MAX).unwrap();
        assert_eq!(plain.len(), 3, "postcard alone takes it");
        assert!(decode_byte_list(&long, usize::MAX).is_err());
        for n in [0usize, 1, 127, 128, 16_383, 16_384, usize::MAX] {
            assert_eq!(varint_len(n), encode(&(n as u64)).len(), "{n}");
        }
    }

    #[test]
    fn decode_refuses_oversize_trailing_and_noncanonical() {
        let bytes = encode(&300u64);
        assert!(matches!(
            decode::<u64>(&bytes, 1),
            Err(CryptoError::TooLarge { .. })
        ));
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(decode::<u64>(&trailing, 100).is_err());
        // 5 encoded as an over-long varint: 0x85 0x00.
        let overlong = [0x85u8, 0x00];
        assert_eq!(decode::<u64>(&overlong, 100).ok(), Some(5));
        assert_eq!(
            decode_canonical::<u64>(&overlong, 100),
            Err(CryptoError::NonCanonical)
        );
        assert_eq!(decode_canonical::<u64>(&bytes, 100), Ok(300));
    }
}
