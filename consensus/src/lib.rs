//! The Phalanx consensus core.
//!
//! A chained two-phase BFT protocol in the HotStuff-2 / Jolteon family, as a
//! pure, deterministic, synchronous state machine: [`Core::handle`] takes an
//! [`Event`] and the current time as a value and returns [`Action`]s. The
//! core holds the validator's key and signs its own messages (ed25519
//! signing is deterministic), but does no I/O, reads no clock and uses no
//! randomness; the node and the simulator drive it identically.
//!
//! * Happy path: the leader of view `v` proposes a block extending the
//!   certificate of view `v-1`; validators vote to the leader of `v+1`, whose
//!   certificate both starts view `v+1` and, when two certified blocks sit in
//!   consecutive views, commits the first (two-chain rule). One block per
//!   round trip (pipelining).
//! * View change: a validator whose timer fires broadcasts a signed timeout
//!   carrying its highest certificate; a quorum forms a timeout certificate
//!   that moves everyone on; timers back off exponentially over consecutive
//!   failed views.
//! * Checkpoints: every K committed blocks, validators sign (height, block,
//!   state root); a quorum is a stable checkpoint.
//!
//! Signatures are checked at the edge by [`Verifier`]; the core accepts only
//! [`VerifiedMessage`]s. The [`Driver`] performs the core's actions over
//! narrow ports in one fixed order, for the node and the simulator alike. The full protocol with pseudocode and proofs is in
//! `docs/PROTOCOL.md`.

mod core;
pub mod driver;
mod safety;
mod screen;
#[cfg(feature = "sim")]
pub mod sim;
mod types;
mod verify;

#[cfg(feature = "sim")]
pub use crate::core::Flaw;
pub use crate::core::{
    AcceptAll, Action, Config, ConfigError, Core, EXEC_LAG, EXEC_RESULTS_KEPT, Event, Evidence,
    PROBE_ROTATIONS, PayloadValidator, Restore, Stats, UNANSWERED_BLOCK_REQUESTS,
};
pub use driver::{
    BLOCK_REQUEST_BURST, BLOCK_REQUESTS_PER_SEC, BlockStore, Driver, DriverConfig, DriverError,
    Executor, GRAYLIST_INVALID_MAX, GRAYLIST_MS, GRAYLIST_WINDOW_MS, MAX_UNEXECUTED_BLOCKS,
    Monitor, NOT_ADMITTED_FAR_VIEW, NOT_ADMITTED_REPORT, NOT_ADMITTED_REQUEST_RATE, Outbox,
    PROPOSE_MAX_UNEXECUTED, PayloadRequest, PayloadSource, PortError, Ports,
    SYNC_RESPONSE_BYTES_MAX, SafetyStore, take_sync_blocks,
};
pub use safety::{SafetyState, commits_parent, safe_to_vote, view_timeout_ms};
pub use screen::{Admission, FAR_VIEW_INTERVAL_MS, Screen, Screened};
pub use types::{
    Block, BlockHeader, BlockRequest, BlockResponse, CheckpointCert, CheckpointVote,
    EvidenceReport, ExecResult, Height, Idleness, MAX_EXEC_PER_BLOCK, MESSAGE_KINDS, Message,
    Proposal, QuorumCert, RecoveryQuery, Statement, Time, Timeout, TimeoutCert, TimeoutEntry,
    TimeoutVote, View, ViewReport, Vote, genesis_qc,
};
pub use verify::{
    MAX_MESSAGE_BYTES, MAX_SYNC_BLOCKS, VerifiedBlocks, VerifiedMessage, Verifier, VerifyError,
};
