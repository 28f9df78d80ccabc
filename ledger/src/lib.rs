//! The Phalanx ledger: what a transaction is and how a committed block
//! changes the ledger.
//!
//! This crate owns the transaction format, genesis, deterministic execution
//! (one receipt per transaction, never a panic on anything a leader can put
//! in a block, conservation of supply asserted) and the authenticated state
//! (a Jellyfish Merkle tree over accounts, with proofs of presence and
//! absence). It never does I/O beyond reading a genesis file: state is read
//! through [`StateView`] and the tree through jmt's `TreeReader`, both
//! implemented by the storage crate.

mod account;
mod error;
mod exec;
mod genesis;
mod state;
mod tx;

pub use account::Account;
pub use error::LedgerError;
pub use exec::{
    BlockOutput, PreparedPayload, Receipt, StateView, TxStatus, execute_block, execute_prepared,
    prepare_payload,
};
pub use genesis::{Genesis, GenesisAccount, Params};
/// The state tree crate, re-exported for storage implementations.
pub use jmt;
pub use state::{
    AccountProof, MemTreeStore, StateTree, account_key, account_value, decode_account_value,
    verify_account_proof,
};
/// The hasher the state tree uses.
pub type TreeHasher = sha2_jmt::Sha256;
pub use tx::{
    Leg, MAX_LEGS, MAX_TX_BYTES, MAX_TXS_PER_BLOCK, SignedTransfer, Transfer, decode_payload,
    encode_payload, verify_signatures,
};
