//! What the fuzz targets share: one small chain (four validators, 64
//! funded accounts, ten blocks, a certified checkpoint at height 5) in a
//! real RocksDB store, opened once per fuzzing process, and the seed inputs
//! each target starts from.
//!
//! The targets call the node's own decoding and handling code — the
//! consensus verifier, the transaction and batch decoders, the state-sync
//! server and client checks, the JSON-RPC method table — never a copy of
//! it. Nothing here runs in the node.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, OnceLock};

use phalanx_consensus::{
    Block, BlockRequest, BlockResponse, CheckpointCert, CheckpointVote, EvidenceReport, Height,
    Message, Proposal, QuorumCert, Statement, Timeout, Verifier, View, Vote,
};
use phalanx_crypto::{Certificate, KeyPair, Signed, ValidatorIndex, Verified, encode};
use phalanx_ledger::Genesis;
use phalanx_node::statesync::{StateRequest, StateResponse};
use phalanx_storage::{Store, StoreOptions, testkit};

/// Validators in the fuzz chain.
pub const VALIDATORS: u8 = 4;
/// Blocks committed on it.
pub const BLOCKS: u64 = 10;
/// Its stable checkpoint.
pub const CHECKPOINT: u64 = 5;

/// Every fuzz target.
pub const TARGETS: [&str; 5] = [
    "consensus_message",
    "transaction",
    "tx_batch",
    "state_sync",
    "rpc_request",
];

/// The chain every target reads.
pub struct Fixture {
    /// Its genesis.
    pub genesis: Genesis,
    /// The validators' keys, by index.
    pub keys: Vec<KeyPair>,
    /// The store, with [`BLOCKS`] blocks and a stable checkpoint.
    pub store: Arc<Store>,
    /// Kept so the store's directory lives as long as the process.
    _dir: tempfile::TempDir,
}

impl Fixture {
    /// A verifier of this chain's consensus messages.
    pub fn verifier(&self) -> Verifier {
        let g = &self.genesis;
        Verifier::new(
            g.validator_set().unwrap(),
            g.consensus_chain(),
            &Block::genesis(&g.consensus_chain(), g.genesis_time_ms),
            g.params.max_block_bytes as usize,
        )
    }

    /// A certificate over `payload` signed by validators 0..3.
    pub fn certify<T>(&self, payload: T) -> Certificate<T>
    where
        T: phalanx_crypto::SignedPayload + Clone + PartialEq,
    {
        let chain = self.genesis.consensus_chain();
        let votes: Vec<Verified<T>> = (0..3u16)
            .map(|i| {
                Verified::sign(
                    &self.keys[i as usize],
                    ValidatorIndex(i),
                    &chain,
                    payload.clone(),
                )
            })
            .collect();
        Certificate::aggregate(&votes, &self.genesis.validator_set().unwrap()).unwrap()
    }

    /// The committed block at `h`.
    pub fn block(&self, h: u64) -> Block {
        self.store.block(Height(h)).unwrap().unwrap()
    }

    /// A message signed by validator `i`.
    pub fn signed<T>(&self, i: u16, payload: T) -> Signed<T>
    where
        T: phalanx_crypto::SignedPayload,
    {
        Verified::sign(
            &self.keys[i as usize],
            ValidatorIndex(i),
            &self.genesis.consensus_chain(),
            payload,
        )
        .into_signed()
    }
}

/// The fixture, built on first use.
pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(build)
}

fn build() -> Fixture {
    let mut genesis = testkit::genesis(64);
    genesis.params.checkpoint_interval = CHECKPOINT;
    let keys: Vec<KeyPair> = (0..VALIDATORS)
        .map(|i| KeyPair::from_seed([0xf0 + i; 32]))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        sync_writes: false,
        // Small buckets, so the snapshot has several.
        snapshot_bucket_accounts: 8,
        ..StoreOptions::default()
    };
    let store = Store::open(dir.path(), &genesis, opts).unwrap();
    let f = Fixture {
        genesis,
        keys,
        store: Arc::new(store),
        _dir: dir,
    };
    let chain = f.genesis.chain_id.clone();
    for h in 1..=BLOCKS {
        let txs = testkit::transfers(&f.store, &chain, 64, h, 7, 8).unwrap();
        let (block, fake) = testkit::next_block(&f.store, &txs);
        let cert = f.certify(fake.payload);
        f.store.apply_block(&block, &cert).unwrap();
    }
    let cp = f.certify(CheckpointVote {
        height: Height(CHECKPOINT),
        block_id: f.block(CHECKPOINT).id(),
        state_root: f.store.state_root_at(Height(CHECKPOINT)).unwrap(),
    });
    f.store.put_stable_checkpoint(&cp).unwrap();
    f
}

/// The seed inputs of `target`: valid encodings of what each decoder
/// accepts, so fuzzing starts past the first length check.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    let f = fixture();
    match target {
        "consensus_message" => consensus_seeds(f),
        "transaction" => {
            let chain = f.genesis.chain_id.clone();
            testkit::transfers(&f.store, &chain, 64, BLOCKS + 1, 11, 4).unwrap()
        }
        "tx_batch" => {
            let chain = f.genesis.chain_id.clone();
            let txs = testkit::transfers(&f.store, &chain, 64, BLOCKS + 1, 13, 3).unwrap();
            vec![
                phalanx_crypto::encode_byte_list(&txs),
                phalanx_crypto::encode_byte_list(&txs[..1]),
            ]
        }
        "state_sync" => state_sync_seeds(f),
        "rpc_request" => rpc_seeds(f),
        other => panic!("no target {other}"),
    }
}

fn consensus_seeds(f: &Fixture) -> Vec<Vec<u8>> {
    let head = f.block(BLOCKS);
    let qc: QuorumCert = f.store.cert(Height(BLOCKS)).unwrap().unwrap();
    let vote = Vote {
        view: View(BLOCKS),
        height: Height(BLOCKS),
        block_id: head.id(),
    };
    let (next, _) = testkit::next_block(&f.store, &[]);
    let mut next = next;
    next.header.justify = qc.clone();
    next.header.proposer = ValidatorIndex(((BLOCKS + 1) % 4) as u16);
    next.header.view = View(BLOCKS + 1);
    let proposal = Proposal {
        block: next.clone(),
        tc: None,
    };
    let other = Vote {
        block_id: f.block(BLOCKS - 1).id(),
        ..vote
    };
    let evidence = EvidenceReport {
        first: Statement::Vote(f.signed(1, vote)),
        second: Statement::Vote(f.signed(1, other)),
    };
    let msgs = [
        Message::Evidence(Box::new(evidence)),
        Message::Vote(f.signed(1, vote)),
        Message::Proposal(f.signed(next.header.proposer.0, proposal)),
        Message::Timeout(f.signed(
            2,
            Timeout {
                view: View(BLOCKS + 1),
                high_qc: qc,
                high_tc: None,
            },
        )),
        Message::Checkpoint(f.signed(
            3,
            CheckpointVote {
                height: Height(CHECKPOINT),
                block_id: f.block(CHECKPOINT).id(),
                state_root: f.store.state_root_at(Height(CHECKPOINT)).unwrap(),
            },
        )),
        Message::BlockRequest(BlockRequest {
            id: head.id(),
            count: 3,
        }),
        Message::BlockResponse(BlockResponse {
            blocks: vec![f.block(3), f.block(2)],
        }),
    ];
    msgs.iter().map(encode).collect()
}

fn state_sync_seeds(f: &Fixture) -> Vec<Vec<u8>> {
    // The first byte picks the side: even, a request this node answers;
    // odd, a response this node checks.
    let side = |tag: u8, body: Vec<u8>| {
        let mut v = vec![tag];
        v.extend(body);
        v
    };
    let manifest = f.store.snapshot_manifest().unwrap().unwrap();
    let chunk = StateRequest::Chunk {
        height: CHECKPOINT,
        depth: manifest.depth,
        bucket: 1,
        after: None,
    };
    let offer = phalanx_node::statesync::answer(&f.store, StateRequest::Checkpoint);
    let chunk_resp = phalanx_node::statesync::answer(&f.store, chunk.clone());
    vec![
        side(0, encode(&StateRequest::Checkpoint)),
        side(0, encode(&chunk)),
        side(1, encode(&offer)),
        side(1, encode(&chunk_resp)),
        side(1, encode(&StateResponse::Error("no".into()))),
    ]
}

fn rpc_seeds(f: &Fixture) -> Vec<Vec<u8>> {
    let chain = f.genesis.chain_id.clone();
    let txs = testkit::transfers(&f.store, &chain, 64, BLOCKS + 1, 19, 2).unwrap();
    let hex0 = hex::encode(&txs[0]);
    let hex1 = hex::encode(&txs[1]);
    let addr = testkit::account_key(3).public().to_hex();
    let committed = phalanx_ledger::decode_payload(&f.block(4).payload).unwrap();
    let committed = phalanx_ledger::SignedTransfer::decode(&committed[0])
        .unwrap()
        .hash()
        .to_hex();
    let req = |method: &str, params: serde_json::Value| {
        serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
            .to_string()
            .into_bytes()
    };
    use serde_json::json;
    vec![
        req("ledger_status", json!([])),
        req("health_ready", json!([])),
        req("ledger_getBlock", json!([3])),
        req("ledger_getBlock", json!(["latest"])),
        req("ledger_getAccount", json!([addr])),
        req("ledger_getTransaction", json!([committed])),
        req("ledger_submitTransaction", json!([hex0, "none"])),
        req("ledger_submitTransaction", json!([hex1.clone(), "commit"])),
        req("ledger_submitTransactions", json!([[hex1]])),
    ]
}

/// A state restore of the fixture's checkpoint, fed the chunks a fuzzed
/// peer sends: each is checked as a restoring node checks it.
pub struct Restore {
    restore: phalanx_storage::StateRestore,
    _dir: tempfile::TempDir,
}

impl Restore {
    fn new(f: &Fixture) -> Restore {
        let dir = tempfile::tempdir().unwrap();
        let opts = StoreOptions {
            sync_writes: false,
            ..StoreOptions::default()
        };
        let fresh = Store::open(dir.path(), &f.genesis, opts).unwrap();
        let cp: CheckpointCert = f.store.stable_checkpoint().unwrap().unwrap();
        let manifest = (*f.store.snapshot_manifest().unwrap().unwrap()).clone();
        let restore = phalanx_storage::StateRestore::new(fresh, cp, manifest).unwrap();
        Restore { restore, _dir: dir }
    }

    /// Offers `chunk` to the restore in `slot` (made on first use, and
    /// made again once a restore has every bucket).
    pub fn add(slot: &mut Option<Restore>, chunk: phalanx_storage::StateChunk) {
        let r = slot.get_or_insert_with(|| Restore::new(fixture()));
        let before = r.restore.progress();
        match r.restore.add_chunk(chunk) {
            Ok(()) => assert!(r.restore.progress().0 >= before.0),
            // A refused chunk starts its bucket over: nothing of it stays.
            Err(_) => assert_eq!(r.restore.progress().0, before.0),
        }
        if r.restore.next_request().is_none() {
            *slot = None;
        }
    }
}

/// The node's JSON-RPC method table over the fixture's store.
pub mod rpc {
    use std::sync::{Arc, OnceLock};

    use phalanx_node::ingress;
    use phalanx_node::mempool::MempoolLimits;
    use phalanx_node::metrics::Metrics;
    use phalanx_node::shared::Shared;

    struct Server {
        rt: tokio::runtime::Runtime,
        methods: jsonrpsee::Methods,
    }

    fn server() -> &'static Server {
        static S: OnceLock<Server> = OnceLock::new();
        S.get_or_init(|| {
            let f = super::fixture();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            let methods = rt.block_on(async {
                let metrics = Arc::new(Metrics::new(
                    f.genesis.validators.len(),
                    &phalanx_node::rpc::method_names(),
                ));
                let (shared, status) = Shared::new(
                    f.store.clone(),
                    &f.genesis,
                    f.keys[0].public(),
                    MempoolLimits::default(),
                    metrics,
                );
                // Nobody drives consensus: the status stays at its start.
                std::mem::forget(status);
                let shared = Arc::new(shared);
                let (tx, rx) = tokio::sync::mpsc::channel(ingress::INGRESS_QUEUE);
                let (gossip, mut gossip_rx) = tokio::sync::mpsc::channel(1024);
                tokio::spawn(ingress::run(shared.clone(), rx, gossip));
                tokio::spawn(async move { while gossip_rx.recv().await.is_some() {} });
                phalanx_node::rpc::methods(shared, tx).unwrap()
            });
            Server { rt, methods }
        })
    }

    /// Answers one request as the node would; the answer is always a
    /// JSON-RPC response object.
    pub fn call(request: &str) {
        let s = server();
        s.rt.block_on(async {
            if let Ok((resp, _subscription)) = s.methods.raw_json_request(request, 16).await {
                let v: serde_json::Value =
                    serde_json::from_str(resp.get()).expect("a response that is not JSON");
                assert!(
                    v.get("result").is_some() != v.get("error").is_some(),
                    "a response with neither or both of result and error: {v}"
                );
            }
        });
    }
}
