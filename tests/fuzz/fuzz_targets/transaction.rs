//! Transaction bytes from a client or a peer: decode, check the signature.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phalanx_ledger::{EncodedTransfer, SignedTransfer};

fuzz_target!(|data: &[u8]| {
    let decoded = SignedTransfer::decode(data);
    let encoded = EncodedTransfer::decode(data.to_vec());
    assert_eq!(
        decoded.is_ok(),
        encoded.is_ok(),
        "the two decoders disagree"
    );
    if let (Ok(tx), Ok(e)) = (decoded, encoded) {
        // Canonical: the only encoding of this transfer is these bytes.
        assert_eq!(tx.encode(), data, "decoded bytes that are not canonical");
        assert_eq!(e.hash(), tx.hash());
        let _ = tx.verify();
    }
});
