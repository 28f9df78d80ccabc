//! Local ports for listeners chosen at run time.
//!
//! A port is taken from below the kernel's ephemeral range
//! (`/proc/sys/net/ipv4/ip_local_port_range`), where outgoing connections
//! never take their source port, so a port picked now is still free when
//! its process binds it a moment later; it must bind now, and it is never
//! handed out twice by one process.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::{Mutex, OnceLock};

/// The lowest port handed out.
pub const LOWEST_PORT: u16 = 10_000;

/// Tries before giving up on finding a port.
const TRIES: usize = 10_000;

fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .filter(|low| *low > LOWEST_PORT + 1000)
        .unwrap_or(32_768)
}

/// A local port that binds now, outside the ephemeral range, not handed
/// out before by this process; None if none is found.
pub fn free_port() -> Option<u16> {
    static GIVEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let given = GIVEN.get_or_init(|| Mutex::new(HashSet::new()));
    let span = u64::from(ephemeral_low() - LOWEST_PORT);
    // Start somewhere that differs between processes, then walk.
    let mut seed = [0u8; 8];
    let start = match getrandom::fill(&mut seed) {
        Ok(()) => u64::from_le_bytes(seed) % span,
        Err(_) => u64::from(std::process::id()) % span,
    };
    let mut given = given.lock().unwrap_or_else(|e| e.into_inner());
    for i in 0..TRIES as u64 {
        let port = LOWEST_PORT + ((start + i) % span) as u16;
        if given.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return Some(port);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let low = ephemeral_low();
        let ports: Vec<u16> = (0..200).map(|_| free_port().unwrap()).collect();
        let distinct: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
        for p in ports {
            assert!((LOWEST_PORT..low).contains(&p));
        }
    }
}
