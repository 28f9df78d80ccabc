//! Column families and key encodings. Heights and versions are big-endian so
//! that RocksDB's byte order is numeric order.

pub const CF_META: &str = "meta";
pub const CF_BLOCKS: &str = "blocks";
pub const CF_BLOCK_INDEX: &str = "block_index";
pub const CF_CERTS: &str = "certs";
pub const CF_TXS: &str = "txs";
pub const CF_ACCOUNTS: &str = "accounts";
pub const CF_STATE_ROOTS: &str = "state_roots";
pub const CF_SAFETY: &str = "safety";
pub const CF_PENDING: &str = "pending_blocks";
pub const CF_CHECKPOINTS: &str = "checkpoints";
pub const CF_EVIDENCE: &str = "evidence";
/// Height → the execution result of the block at that height (P22).
pub const CF_EXEC: &str = "exec_results";
/// Height → the receipts of the block at that height, in payload order.
pub const CF_RECEIPTS: &str = "receipts";
/// Height → the height of the committed block whose header certifies the
/// execution result of that height (P22).
pub const CF_CERTIFIED: &str = "certified_by";

pub const ALL_CFS: [&str; 14] = [
    CF_META,
    CF_BLOCKS,
    CF_BLOCK_INDEX,
    CF_CERTS,
    CF_TXS,
    CF_ACCOUNTS,
    CF_STATE_ROOTS,
    CF_SAFETY,
    CF_PENDING,
    CF_CHECKPOINTS,
    CF_EVIDENCE,
    CF_EXEC,
    CF_RECEIPTS,
    CF_CERTIFIED,
];

pub const META_GENESIS: &[u8] = b"genesis_hash";
pub const META_HEAD: &[u8] = b"head";
pub const META_STABLE: &[u8] = b"stable_checkpoint";
pub const META_FORMAT: &[u8] = b"format_version";
/// Present while a state restore is under way (removed by its last batch).
pub const META_RESTORING: &[u8] = b"restoring";
/// The counter of the last safety record written (see `crate::safety`).
pub const SAFETY_COUNTER_KEY: &[u8] = b"counter";

/// The on-disk format version this code writes and reads. 3: the genesis
/// block and every consensus signature bind the genesis hash, and the
/// safety record is a file of its own; a store of format 2 holds a chain
/// whose signatures this version does not accept. 4: block headers carry
/// execution results (P22), so a chain of format 3 has other block ids.
pub const FORMAT_VERSION: u32 = 4;

pub fn height_key(h: u64) -> [u8; 8] {
    h.to_be_bytes()
}

pub fn pending_key(h: u64, id: &phalanx_crypto::Digest) -> Vec<u8> {
    let mut k = h.to_be_bytes().to_vec();
    k.extend_from_slice(&id.0);
    k
}

/// An account version: `key_hash ‖ height`. All versions of an account are
/// adjacent, oldest first, and accounts come in state-tree order.
pub fn account_key(key_hash: &[u8; 32], version: u64) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..32].copy_from_slice(key_hash);
    k[32..].copy_from_slice(&version.to_be_bytes());
    k
}
