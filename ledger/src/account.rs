use serde::{Deserialize, Serialize};

/// An account's state. Accounts are named by their ed25519 public key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// Spendable balance.
    pub balance: u64,
    /// Number of transactions applied from this account; the next valid
    /// transaction carries exactly this nonce.
    pub nonce: u64,
}
