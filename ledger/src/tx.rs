//! Signed transfers and block payloads.

use phalanx_crypto::{
    ChainId, CryptoError, Digest, Domain, KeyPair, PublicKey, Signature, SignedPayload,
    decode_byte_list, encode, encode_byte_list, signing_bytes, verify_each,
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
/// nothing. There is no fee: spam is bounded by the mempool's per-sender and
/// total limits and by the nonce rule, which lets each sender have one
/// transaction applied per nonce.
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
        Digest::of_parts(&[Self::DOMAIN.0.as_bytes(), &encode(self)])
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
    pub fn decode(bytes: &[u8]) -> Result<SignedTransfer, LedgerError> {
        let tx: SignedTransfer = phalanx_crypto::decode_canonical(bytes, MAX_TX_BYTES)
            .map_err(|e| LedgerError::Malformed(e.to_string()))?;
        tx.check_shape()?;
        Ok(tx)
    }

    /// Canonical wire bytes.
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// The transaction hash (of the unsigned transfer).
    pub fn hash(&self) -> Digest {
        self.transfer.hash()
    }

    /// Format rules that do not need state: leg count.
    pub fn check_shape(&self) -> Result<(), LedgerError> {
        let n = self.transfer.legs.len();
        if n == 0 || n > MAX_LEGS {
            return Err(LedgerError::Malformed(format!(
                "{n} legs; a transfer has 1 to {MAX_LEGS}"
            )));
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
    let msgs: Vec<Vec<u8>> = txs
        .iter()
        .map(|t| signing_bytes(&t.transfer.chain_id, &t.transfer))
        .collect();
    let items: Vec<_> = txs
        .iter()
        .zip(&msgs)
        .map(|(t, m)| (&t.transfer.sender, m.as_slice(), &t.signature))
        .collect();
    verify_each(&items)
}

/// Encodes a block payload: the list of signed transaction bytes.
pub fn encode_payload(txs: &[Vec<u8>]) -> Vec<u8> {
    encode_byte_list(txs)
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
