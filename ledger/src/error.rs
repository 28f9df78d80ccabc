/// Errors of the ledger crate.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// A genesis file that cannot be used.
    #[error("genesis: {0}")]
    Genesis(String),
    /// A transaction that cannot be decoded or breaks a format rule.
    #[error("malformed transaction: {0}")]
    Malformed(String),
    /// A transfer leg that moves nothing.
    #[error("leg {leg} moves an amount of 0; every leg moves at least 1")]
    ZeroAmount {
        /// The leg's position.
        leg: usize,
    },
    /// The state tree or its storage failed.
    #[error("state tree: {0}")]
    State(String),
    /// A proof that does not verify against the root.
    #[error("proof does not verify: {0}")]
    Proof(String),
    /// The state view (storage) failed.
    #[error("state read failed: {0}")]
    Read(String),
}
