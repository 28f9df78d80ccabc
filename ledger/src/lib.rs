//! The Phalanx ledger: what a transaction is and how a committed block
//! changes the ledger.
//!
//! This crate owns the transaction format, genesis, deterministic execution
//! (one receipt per transaction, never a panic on anything a leader can put
//! in a block, conservation of supply asserted) and the authenticated state
//! (a binary sparse Merkle tree over accounts, in memory, with proofs of
//! presence and absence). It never does I/O beyond reading a genesis file:
//! state is read through [`StateView`], which the storage crate implements.

mod account;
mod error;
mod exec;
mod genesis;
mod receipts;
mod state;
mod tx;

pub use account::Account;
pub use error::LedgerError;
pub use exec::{
    BlockOutput, PreparedPayload, Receipt, Rules, StateView, TxStatus, execute_block,
    execute_prepared, prepare_payload, prepare_payload_trusting,
};
pub use genesis::{Genesis, GenesisAccount, Params};
pub use receipts::{
    MAX_RECEIPT_PROOF_DEPTH, ReceiptProof, prove_receipt, receipt_leaf, receipts_root,
    verify_receipt_proof,
};
pub use state::{
    AccountProof, EMPTY_HASH, KeyHash, MAX_PROOF_DEPTH, ProofLeaf, StateTree, Subtree, account_key,
    account_leaf, account_value, decode_account_value, key_of_bytes, leaf_hash, leaf_of_bytes,
    root_of_summaries, summarise_accounts, verify_account_proof,
};
pub use tx::{
    EncodedTransfer, Leg, MAX_LEGS, MAX_TX_BYTES, MAX_TXS_PER_BLOCK, SignedTransfer, Transfer,
    decode_payload, encode_payload, peek_sender_nonce, verify_encoded, verify_signatures,
};
