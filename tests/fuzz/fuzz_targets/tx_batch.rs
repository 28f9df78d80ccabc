//! Transaction batches (gossip frames) and block payloads from peers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phalanx_crypto::encode_byte_list;
use phalanx_ledger::decode_payload;
use phalanx_node::net::{MAX_GOSSIP_BATCH_TXS, MAX_GOSSIP_BYTES, decode_batch};

fuzz_target!(|data: &[u8]| {
    if let Some(txs) = decode_batch(data) {
        assert!(!txs.is_empty() && txs.len() <= MAX_GOSSIP_BATCH_TXS);
        assert!(data.len() <= MAX_GOSSIP_BYTES);
        assert_eq!(encode_byte_list(&txs), data, "batch encoding not canonical");
    }
    if let Ok(txs) = decode_payload(data) {
        assert_eq!(
            encode_byte_list(&txs),
            data,
            "payload encoding not canonical"
        );
        // A block executes what decodes; the rest is a receipt.
        let _ = phalanx_ledger::prepare_payload(data);
    }
});
