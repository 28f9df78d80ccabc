//! Signed transfers and block payloads.

use phalanx_crypto::{
    ChainId, CryptoError, Digest, Domain, KeyPair, MAX_CHAIN_ID_LEN, PublicKey, Signature,
    SignedPayload, decode_byte_list, encode, encode_byte_list, signing_bytes, signing_bytes_of,
    verify_each,
};
use serde::{Deserialize, Serialize};

use crate::LedgerError;

/// Most legs in one transfer.
pub const MAX_LEGS: usize = 16;
/// Largest encoded signed transaction, bytes.
pub const MAX_TX_BYTES: usize = 1024;
/// Most transactions in one block payload.
pub const MAX_TXS_PER_BLOCK: usize = 20_000;

/// One recipient and amount.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leg {
    /// Recipient account.
    pub to: PublicKey,
    /// Amount moved.
    pub amount: u64,
}

/// A transfer from one sender to one or more recipients, applied all or
/// nothing. There is no fee: every leg moves at least 1, so only a funded
/// sender gets anything applied; a leg that creates an account moves at
/// least the genesis minimum balance; and the mempool bounds what each
/// sender may queue and for how long (see the README's "Economics").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    /// The chain this transfer is for.
    pub chain_id: ChainId,
    /// Paying account; must sign.
    pub sender: PublicKey,
    /// Must equal the sender's account nonce.
    pub nonce: u64,
    /// 1 to [`MAX_LEGS`] recipients.
    pub legs: Vec<Leg>,
}

impl SignedPayload for Transfer {
    const DOMAIN: Domain = Domain("phalanx/ledger/transfer");
}

impl Transfer {
    /// The transaction hash: SHA-256 over the domain tag and the canonical
    /// encoding of the unsigned transfer. The same transfer has the same
    /// hash whatever signature accompanies it, so a resubmission is always
    /// recognised.
    pub fn hash(&self) -> Digest {
        Self::hash_of_encoding(&encode(self))
    }

    /// The hash of the transfer whose encoding is `body`.
    fn hash_of_encoding(body: &[u8]) -> Digest {
        Digest::of_parts(&[Self::DOMAIN.0.as_bytes(), body])
    }

    /// Sum of the legs, or `None` on overflow.
    pub fn total(&self) -> Option<u64> {
        self.legs
            .iter()
            .try_fold(0u64, |acc, l| acc.checked_add(l.amount))
    }

    /// Signs with `key` (which must be the sender's).
    pub fn sign(self, key: &KeyPair) -> SignedTransfer {
        let signature = key.sign_raw(&signing_bytes(&self.chain_id, &self));
        SignedTransfer {
            transfer: self,
            signature,
        }
    }
}

/// A transfer with the sender's signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedTransfer {
    /// The transfer.
    pub transfer: Transfer,
    /// The sender's signature over it (domain- and chain-separated).
    pub signature: Signature,
}

impl SignedTransfer {
    /// Decodes wire bytes, checking the size bound, canonical encoding and
    /// the leg count.
    ///
    /// Accepts exactly what serde's canonical decoding (`decode_canonical`)
    /// followed by [`SignedTransfer::check_shape`] accepts, with the same
    /// result; a property test holds the two together.
    pub fn decode(bytes: &[u8]) -> Result<SignedTransfer, LedgerError> {
        if bytes.len() > MAX_TX_BYTES {
            return Err(LedgerError::Malformed(format!(
                "{} bytes, at most {MAX_TX_BYTES}",
                bytes.len()
            )));
        }
        let mut r = Reader { bytes };
        let chain_len = r.length(MAX_CHAIN_ID_LEN)?.map_err(|n| {
            LedgerError::Malformed(format!("chain id of {n} bytes, at most {MAX_CHAIN_ID_LEN}"))
        })?;
        let chain = std::str::from_utf8(r.take(chain_len)?)
            .map_err(|_| LedgerError::Malformed("chain id is not UTF-8".into()))?;
        let chain_id = ChainId::new(chain).map_err(|e| LedgerError::Malformed(e.to_string()))?;
        let sender = r.key()?;
        let nonce = r.varint()?;
        let n = match r.length(MAX_LEGS)? {
            Ok(0) => return Err(legs_error(0)),
            Ok(n) => n,
            Err(n) => return Err(legs_error(usize::try_from(n).unwrap_or(usize::MAX))),
        };
        let mut legs = Vec::with_capacity(n);
        for i in 0..n {
            let to = r.key()?;
            let amount = r.varint()?;
            if amount == 0 {
                return Err(zero_leg_error(i));
            }
            legs.push(Leg { to, amount });
        }
        let signature = Signature(r.array::<SIGNATURE_BYTES>()?);
        if !r.bytes.is_empty() {
            return Err(LedgerError::Malformed(format!(
                "{} trailing bytes",
                r.bytes.len()
            )));
        }
        Ok(SignedTransfer {
            transfer: Transfer {
                chain_id,
                sender,
                nonce,
                legs,
            },
            signature,
        })
    }

    /// Canonical wire bytes.
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// The transaction hash (of the unsigned transfer).
    pub fn hash(&self) -> Digest {
        self.transfer.hash()
    }

    /// Format rules that do not need state: the leg count, and no leg of
    /// amount 0 (a zero leg moves nothing, and would let an unfunded key
    /// get transactions applied and accounts created for free).
    pub fn check_shape(&self) -> Result<(), LedgerError> {
        let n = self.transfer.legs.len();
        if n == 0 || n > MAX_LEGS {
            return Err(legs_error(n));
        }
        if let Some(i) = self.transfer.legs.iter().position(|l| l.amount == 0) {
            return Err(zero_leg_error(i));
        }
        Ok(())
    }

    /// Verifies the sender's signature for the transfer's own chain id.
    pub fn verify(&self) -> bool {
        phalanx_crypto::verify_one(
            &self.transfer.sender,
            &signing_bytes(&self.transfer.chain_id, &self.transfer),
            &self.signature,
        )
    }
}

/// Batch-verifies signatures; `out[i]` tells whether `txs[i]` is validly
/// signed. Uses the project's one validity rule, so batch and single
/// verification agree; a few bad signatures in a batch cost a few more
/// batch checks, not a check of each.
pub fn verify_signatures(txs: &[&SignedTransfer]) -> Vec<bool> {
    let bodies: Vec<Vec<u8>> = txs.iter().map(|t| encode(&t.transfer)).collect();
    verify_bodies(txs.iter().copied().zip(bodies.iter().map(Vec::as_slice)))
}

/// [`verify_signatures`] for transfers kept with their encoding, which
/// supplies the signed bytes without encoding each transfer again.
pub fn verify_encoded(txs: &[&EncodedTransfer]) -> Vec<bool> {
    verify_bodies(txs.iter().map(|e| (&e.tx, e.body())))
}

/// Batch-verifies transfers given the encoding of each one's `transfer`.
fn verify_bodies<'a>(txs: impl Iterator<Item = (&'a SignedTransfer, &'a [u8])>) -> Vec<bool> {
    let (txs, msgs): (Vec<&SignedTransfer>, Vec<Vec<u8>>) = txs
        .map(|(t, body)| {
            let msg = signing_bytes_of(Transfer::DOMAIN, &t.transfer.chain_id, body);
            (t, msg)
        })
        .unzip();
    let items: Vec<_> = txs
        .iter()
        .zip(&msgs)
        .map(|(t, m)| (&t.transfer.sender, m.as_slice(), &t.signature))
        .collect();
    verify_each(&items)
}

/// Bytes of the signature that ends every encoded [`SignedTransfer`] (two
/// fixed halves, no length prefix).
const SIGNATURE_BYTES: usize = 64;

/// A signed transfer decoded from canonical bytes and kept with them.
///
/// Canonical decoding makes the bytes before the signature exactly the
/// transfer's encoding, so the hash and the signed bytes are taken from
/// there: admission used to encode each transfer twice more for them.
#[derive(Clone, Debug)]
pub struct EncodedTransfer {
    tx: SignedTransfer,
    bytes: Vec<u8>,
}

impl EncodedTransfer {
    /// Decodes canonical bytes, as [`SignedTransfer::decode`].
    pub fn decode(bytes: Vec<u8>) -> Result<EncodedTransfer, LedgerError> {
        let tx = SignedTransfer::decode(&bytes)?;
        // Canonical, and a signature is a fixed 64 bytes at the end.
        assert!(bytes.len() > SIGNATURE_BYTES);
        let e = EncodedTransfer { tx, bytes };
        debug_assert_eq!(e.body(), encode(&e.tx.transfer).as_slice());
        Ok(e)
    }

    /// The transfer.
    pub fn tx(&self) -> &SignedTransfer {
        &self.tx
    }

    /// Its exact bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The transfer's hash, as [`SignedTransfer::hash`].
    pub fn hash(&self) -> Digest {
        Transfer::hash_of_encoding(self.body())
    }

    /// The transfer and its bytes.
    pub fn into_parts(self) -> (SignedTransfer, Vec<u8>) {
        (self.tx, self.bytes)
    }

    fn body(&self) -> &[u8] {
        &self.bytes[..self.bytes.len() - SIGNATURE_BYTES]
    }
}

/// Encodes a block payload: the list of signed transaction bytes.
pub fn encode_payload(txs: &[Vec<u8>]) -> Vec<u8> {
    encode_byte_list(txs)
}

/// The sender's key bytes and the nonce of an encoded transfer, read
/// without decoding the rest or checking the key or the signature: a hint
/// for items of blocks a quorum has checked, cheap enough for thousands.
pub fn peek_sender_nonce(bytes: &[u8]) -> Option<([u8; 32], u64)> {
    let mut r = Reader { bytes };
    let chain_len = r.length(MAX_CHAIN_ID_LEN).ok()?.ok()?;
    r.take(chain_len).ok()?;
    let sender = r.array::<32>().ok()?;
    let nonce = r.varint().ok()?;
    Some((sender, nonce))
}

/// Decodes a block payload into raw transaction byte strings. A payload that
/// is not a list of byte strings, or lists more than [`MAX_TXS_PER_BLOCK`],
/// is an error: such a block executes to no receipts (deterministically).
pub fn decode_payload(payload: &[u8]) -> Result<Vec<Vec<u8>>, LedgerError> {
    let txs = decode_byte_list(payload, usize::MAX)
        .map_err(|e: CryptoError| LedgerError::Malformed(e.to_string()))?;
    if txs.len() > MAX_TXS_PER_BLOCK {
        return Err(LedgerError::Malformed(format!(
            "{} transactions in one block, at most {MAX_TXS_PER_BLOCK}",
            txs.len()
        )));
    }
    Ok(txs)
}

fn zero_leg_error(leg: usize) -> LedgerError {
    LedgerError::ZeroAmount { leg }
}

fn legs_error(n: usize) -> LedgerError {
    // (`n` saturates: a count beyond `usize` is as wrong as any other.)
    LedgerError::Malformed(format!("{n} legs; a transfer has 1 to {MAX_LEGS}"))
}

/// Reads the fields of an encoded [`SignedTransfer`] in order, in the
/// encoding serde and postcard give it: LEB128 varints for integers and
/// lengths, raw bytes for keys and the signature.
///
/// Hand-written because admission decodes every transaction at every
/// validator, and through serde that visited the 128 bytes of keys and
/// signature one at a time, then encoded the value again to prove the
/// input canonical. Here only the minimal varint is accepted, which makes
/// the input canonical by construction.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], LedgerError> {
        if self.bytes.len() < n {
            return Err(LedgerError::Malformed("unexpected end of input".into()));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], LedgerError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn key(&mut self) -> Result<PublicKey, LedgerError> {
        PublicKey::from_bytes(&self.array::<32>()?)
            .map_err(|e| LedgerError::Malformed(e.to_string()))
    }

    /// A minimally encoded LEB128 u64 (at most 10 bytes).
    fn varint(&mut self) -> Result<u64, LedgerError> {
        let mut value = 0u64;
        for i in 0..10 {
            let [b] = self.array::<1>()?;
            // The tenth byte holds the top bit of 64 and nothing more.
            if i == 9 && b > 1 {
                return Err(LedgerError::Malformed("varint overflows 64 bits".into()));
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                if b == 0 && i > 0 {
                    return Err(LedgerError::Malformed("varint is not minimal".into()));
                }
                return Ok(value);
            }
        }
        Err(LedgerError::Malformed("varint overflows 64 bits".into()))
    }

    /// A length, as `usize`, if at most `max`; else the length read.
    fn length(&mut self, max: usize) -> Result<Result<usize, u64>, LedgerError> {
        let n = self.varint()?;
        Ok(usize::try_from(n).ok().filter(|n| *n <= max).ok_or(n))
    }
}
