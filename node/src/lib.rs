//! The Phalanx validator node.
//!
//! This crate owns the node's edges: the config file, libp2p networking, and
//! the runtime that drives the pure consensus core with real time, real
//! sockets and the RocksDB store. Protocol decisions live in
//! `phalanx-consensus`, transaction rules in `phalanx-ledger`, durability in
//! `phalanx-storage`; this crate only connects them.

#[cfg(feature = "byzantine")]
pub mod byzantine;
pub mod config;
pub mod follow;
pub mod ingress;
pub mod light;
pub mod mempool;
pub mod metrics;
pub mod net;
pub mod rpc;
pub mod rpc_guard;
pub mod runtime;
pub mod safety;
pub mod screening;
pub mod shared;
pub mod statesync;
pub mod validity;
