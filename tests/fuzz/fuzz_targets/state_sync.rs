//! State-sync frames. First byte even: a request from a peer, answered from
//! the store as the server does. Odd: a response a peer sends back, checked
//! as the restoring node checks it (offers against the validator set,
//! chunks against a restore of this chain's checkpoint).
#![no_main]

use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;
use phalanx_crypto::{decode, encode};
use phalanx_node::statesync::{
    MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES, StateRequest, StateResponse, answer, check_offer,
};

fuzz_target!(|data: &[u8]| {
    let Some((&side, body)) = data.split_first() else {
        return;
    };
    let f = phalanx_fuzz::fixture();
    if side % 2 == 0 {
        if let Ok(req) = decode::<StateRequest>(body, MAX_REQUEST_BYTES) {
            let resp = answer(&f.store, req);
            // What a node answers, its peers can decode.
            decode::<StateResponse>(&encode(&resp), MAX_RESPONSE_BYTES)
                .expect("an answer that does not decode");
        }
        return;
    }
    match decode::<StateResponse>(body, MAX_RESPONSE_BYTES) {
        Ok(StateResponse::Checkpoint(Some(offer))) => {
            let _ = check_offer(&offer, &f.genesis, &mut f.verifier());
        }
        Ok(StateResponse::Chunk(chunk)) => {
            static RESTORE: Mutex<Option<phalanx_fuzz::Restore>> = Mutex::new(None);
            let mut r = RESTORE.lock().unwrap_or_else(|e| e.into_inner());
            phalanx_fuzz::Restore::add(&mut r, chunk);
        }
        _ => {}
    }
});
