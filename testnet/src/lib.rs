//! What the `phalanx-testnet` tool shares with the multi-process tests:
//! picking local ports that stay free until a child process binds them, and
//! creating validator homes with `phalanx init`.

pub mod init;
pub mod ports;
