//! What the `phalanx-testnet` tool shares with the multi-process tests:
//! picking local ports that stay free until a child process binds them.

pub mod ports;
