//! Consensus frames from a validator: decode and verify, as the node does
//! with every frame before the core sees it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phalanx_consensus::{MAX_MESSAGE_BYTES, Message};
use phalanx_crypto::{decode, encode};

fuzz_target!(|data: &[u8]| {
    let f = phalanx_fuzz::fixture();
    let mut verifier = f.verifier();
    let verified = verifier.verify_bytes(data);
    if let Ok(msg) = decode::<Message>(data, MAX_MESSAGE_BYTES) {
        // Decoding is a function of the bytes: what decodes re-encodes to
        // a message that decodes the same, and verifies the same.
        let again = encode(&msg);
        assert_eq!(decode::<Message>(&again, MAX_MESSAGE_BYTES).ok(), Some(msg));
        assert_eq!(
            f.verifier().verify_bytes(&again).is_ok(),
            verified.is_ok(),
            "verification depends on more than the message"
        );
    } else {
        assert!(verified.is_err(), "undecodable bytes verified");
    }
});
