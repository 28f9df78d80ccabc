//! JSON-RPC requests from clients, through the node's method table (its
//! parameter parsing and handlers, the ingress behind submissions) on a
//! real store. Time is paused and advances when the node waits, so a
//! submission that waits for a commit that never comes times out at once.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    phalanx_fuzz::rpc::call(text);
});
