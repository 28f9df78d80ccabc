//! The receipts root: a Merkle tree over a block's receipts, one per
//! payload item in order, with proofs that a receipt sits at its position.
//!
//! This module owns the tree's hashing rules and its proofs; it never
//! stores anything. The shape is RFC 9162's (Certificate Transparency v2):
//! leaves `H(0x00 ‖ encode(receipt))`, nodes `H(0x01 ‖ left ‖ right)`, the
//! left subtree of `n` leaves the largest power of two below `n`, and the
//! empty tree `H()`. The root binds the count as well: it is
//! `H(0x02 ‖ count as 8 bytes little-endian ‖ tree hash)`, so a proof's
//! position and count are both fixed by the root (RFC 9162's audit path
//! alone verifies for some other tree sizes too). A receipt names its
//! transaction's hash, so a receipt's proof also proves which transaction
//! sat at that position of the block.
//!
//! # Why not a crate
//! `rs_merkle` and `ct-merkle` build the same shape, but over their own
//! hasher traits and proof encodings; the state tree's domain separation
//! (0x00 leaves, 0x01 nodes) and the project's canonical encoding are kept
//! here in about a hundred lines, checked against a direct recursive
//! definition by property tests.

use phalanx_crypto::{Digest, decode, encode};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::{LedgerError, MAX_TXS_PER_BLOCK, Receipt};

/// Most siblings a receipt proof holds: the depth of a tree of
/// [`MAX_TXS_PER_BLOCK`] leaves, with room to spare.
pub const MAX_RECEIPT_PROOF_DEPTH: usize = 32;

/// The hash of a receipt's leaf.
pub fn receipt_leaf(r: &Receipt) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(encode(r));
    h.finalize().into()
}

fn node(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The largest power of two strictly below `n` (`n >= 2`).
fn split(n: usize) -> usize {
    debug_assert!(n >= 2);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

fn root_of_leaves(leaves: &[[u8; 32]]) -> [u8; 32] {
    match leaves.len() {
        0 => Sha256::digest([]).into(),
        1 => leaves[0],
        n => {
            let k = split(n);
            node(&root_of_leaves(&leaves[..k]), &root_of_leaves(&leaves[k..]))
        }
    }
}

/// The receipts root of a block's receipts.
pub fn receipts_root(receipts: &[Receipt]) -> Digest {
    let leaves: Vec<[u8; 32]> = receipts.iter().map(receipt_leaf).collect();
    bind_count(receipts.len() as u64, &root_of_leaves(&leaves))
}

fn bind_count(count: u64, tree: &[u8; 32]) -> Digest {
    let mut h = Sha256::new();
    h.update([2u8]);
    h.update(count.to_le_bytes());
    h.update(tree);
    Digest(h.finalize().into())
}

/// A proof that a receipt is the one at `index` of `count` under a
/// receipts root: the sibling hashes from the leaf up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptProof {
    /// The receipt's position in the block.
    pub index: u32,
    /// How many receipts the block has.
    pub count: u32,
    /// Sibling hashes, leaf level first.
    pub siblings: Vec<[u8; 32]>,
}

impl ReceiptProof {
    /// Canonical bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(self)
    }

    /// Parses bytes from [`ReceiptProof::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<ReceiptProof, LedgerError> {
        let p: ReceiptProof = decode(bytes, 64 + 33 * MAX_RECEIPT_PROOF_DEPTH)
            .map_err(|e| LedgerError::Proof(e.to_string()))?;
        if p.siblings.len() > MAX_RECEIPT_PROOF_DEPTH {
            return Err(LedgerError::Proof("receipt proof too deep".into()));
        }
        Ok(p)
    }
}

/// The proof for the receipt at `index`, or `None` past the end.
pub fn prove_receipt(receipts: &[Receipt], index: usize) -> Option<ReceiptProof> {
    if index >= receipts.len() {
        return None;
    }
    let leaves: Vec<[u8; 32]> = receipts.iter().map(receipt_leaf).collect();
    let mut siblings = Vec::new();
    path(index, &leaves, &mut siblings);
    Some(ReceiptProof {
        index: index as u32,
        count: receipts.len() as u32,
        siblings,
    })
}

/// RFC 9162's PATH(m, D[n]), leaf level first.
fn path(m: usize, leaves: &[[u8; 32]], out: &mut Vec<[u8; 32]>) {
    let n = leaves.len();
    if n <= 1 {
        return;
    }
    let k = split(n);
    if m < k {
        path(m, &leaves[..k], out);
        out.push(root_of_leaves(&leaves[k..]));
    } else {
        path(m - k, &leaves[k..], out);
        out.push(root_of_leaves(&leaves[..k]));
    }
}

/// Checks that `receipt` is the one at the proof's position under `root`.
pub fn verify_receipt_proof(
    root: Digest,
    receipt: &Receipt,
    proof: &ReceiptProof,
) -> Result<(), LedgerError> {
    let fail = |why: &str| Err(LedgerError::Proof(why.to_string()));
    if proof.siblings.len() > MAX_RECEIPT_PROOF_DEPTH {
        return fail("receipt proof too deep");
    }
    if proof.index >= proof.count || proof.count as usize > MAX_TXS_PER_BLOCK.max(1) {
        return fail("receipt position out of range");
    }
    // RFC 9162, 2.1.3.2.
    let mut f = u64::from(proof.index);
    let mut s = u64::from(proof.count) - 1;
    let mut r = receipt_leaf(receipt);
    for p in &proof.siblings {
        if s == 0 {
            return fail("receipt proof longer than its tree");
        }
        if f & 1 == 1 || f == s {
            r = node(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return fail("receipt proof shorter than its tree");
    }
    if bind_count(u64::from(proof.count), &r) != root {
        return fail("receipt proof does not lead to the receipts root");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::TxStatus;

    fn receipts(n: usize) -> Vec<Receipt> {
        (0..n)
            .map(|i| Receipt {
                tx_hash: Digest::of(&(i as u64).to_le_bytes()),
                status: if i % 3 == 0 {
                    TxStatus::Applied
                } else {
                    TxStatus::Duplicate
                },
            })
            .collect()
    }

    #[test]
    fn every_receipt_of_every_size_proves_and_no_other_does() {
        for n in 1..=40 {
            let rs = receipts(n);
            let root = receipts_root(&rs);
            for i in 0..n {
                let p = prove_receipt(&rs, i).unwrap();
                verify_receipt_proof(root, &rs[i], &p).unwrap();
                // Another receipt or position fails.
                let other = &rs[(i + 1) % n];
                if n > 1 {
                    assert!(verify_receipt_proof(root, other, &p).is_err());
                    let mut moved = p.clone();
                    moved.index = ((i + 1) % n) as u32;
                    assert!(verify_receipt_proof(root, &rs[i], &moved).is_err());
                }
                let mut grown = p.clone();
                grown.count += 1;
                assert!(verify_receipt_proof(root, &rs[i], &grown).is_err());
                for j in 0..p.siblings.len() {
                    let mut flipped = p.clone();
                    flipped.siblings[j][7] ^= 1;
                    assert!(verify_receipt_proof(root, &rs[i], &flipped).is_err());
                }
            }
            assert!(prove_receipt(&rs, n).is_none());
        }
    }

    #[test]
    fn the_root_is_the_rfc_shape() {
        let rs = receipts(3);
        let l: Vec<_> = rs.iter().map(receipt_leaf).collect();
        assert_eq!(
            receipts_root(&rs),
            bind_count(3, &node(&node(&l[0], &l[1]), &l[2]))
        );
        assert_eq!(receipts_root(&rs[..1]), bind_count(1, &l[0]));
        assert_eq!(
            receipts_root(&[]),
            bind_count(0, &Sha256::digest([]).into())
        );
    }
}
