//! State sync over real libp2p sockets: honest peers serve real RocksDB
//! stores with the node's own server; a Byzantine peer answers chunk
//! requests with junk, or not at all. The sync must complete from the
//! honest ones, dropping the liar.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::Multiaddr;
use phalanx_consensus::{CheckpointCert, CheckpointVote, QuorumCert};
use phalanx_crypto::{Certificate, KeyPair, ValidatorIndex, Verified, decode, encode};
use phalanx_ledger::Genesis;
use phalanx_node::metrics::Metrics;
use phalanx_node::net::{NetConfig, Network, peer_id_of, start};
use phalanx_node::statesync::{
    DB_DIR, STATE_PROTOCOL, StateRequest, StateResponse, catch_up, offer, serve,
};
use phalanx_storage::testkit::{genesis, next_block, transfers};
use phalanx_storage::{Store, StoreOptions};

const ACCOUNTS: u64 = 300;
const CHECKPOINT: u64 = 10;

fn validator_key(i: u8) -> KeyPair {
    KeyPair::from_seed([0xf0 + i; 32])
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A quorum's signatures over `payload`, under the chain's consensus id.
fn quorum<T: phalanx_crypto::SignedPayload + Clone + Eq>(
    g: &Genesis,
    payload: T,
) -> Certificate<T> {
    let chain = g.consensus_chain();
    let votes: Vec<_> = (0..3u8)
        .map(|i| {
            Verified::sign(
                &validator_key(i),
                ValidatorIndex(i as u16),
                &chain,
                payload.clone(),
            )
        })
        .collect();
    Certificate::aggregate(&votes, &g.validator_set().unwrap()).unwrap()
}

/// A store that committed `CHECKPOINT + 2` blocks of transfers, each with a
/// real quorum certificate, and holds a real stable checkpoint.
fn source_store(dir: &Path, g: &Genesis) -> Store {
    let s = Store::open(dir, g, StoreOptions::default()).unwrap();
    let chain = s.chain_id().clone();
    for _ in 0..CHECKPOINT + 2 {
        let h = s.head().height + 1;
        let txs = transfers(&s, &chain, ACCOUNTS, h, 11, 40).unwrap();
        let (b, stand_in) = next_block(&s, &txs);
        let qc: QuorumCert = quorum(g, stand_in.payload);
        s.apply_block(&b, &qc).unwrap();
    }
    let h = phalanx_consensus::Height(CHECKPOINT);
    let cp: CheckpointCert = quorum(
        g,
        CheckpointVote {
            height: h,
            block_id: s.block(h).unwrap().unwrap().id(),
            state_root: s.state_root_at(h).unwrap(),
        },
    );
    s.put_stable_checkpoint(&cp).unwrap();
    s
}

fn addr(port: u16) -> Multiaddr {
    format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()
}

/// Validator `i` on `ports[i]`, dialling the validators in `dial`.
fn node(g: &Genesis, ports: &[u16], i: usize, dial: &[usize]) -> (Network, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new(4, &[]));
    let (net, _inbound, _gossip) = start(NetConfig {
        key: validator_key(i as u8),
        listen: addr(ports[i]),
        validators: g.validators.clone(),
        peers: dial
            .iter()
            .map(|&j| (validator_key(j as u8).public(), addr(ports[j])))
            .collect(),
        peer_queue: 64,
        reconnect_base: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(500),
        metrics: metrics.clone(),
        genesis: g.hash(),
        limits: Default::default(),
    })
    .unwrap();
    (net, metrics)
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Lie {
    /// Every chunk claims to end its bucket, with one balance changed.
    Junk,
    /// Chunk requests are never answered.
    Stall,
}

/// Makes honest offers from `store` but lies about its chunks.
fn liar(net: &Network, store: Arc<Store>, lie: Lie) {
    let mut incoming = net.control().accept(STATE_PROTOCOL).unwrap();
    tokio::spawn(async move {
        while let Some((_, mut s)) = incoming.next().await {
            let store = store.clone();
            tokio::spawn(async move {
                let mut len = [0u8; 4];
                if s.read_exact(&mut len).await.is_err() {
                    return;
                }
                let mut req = vec![0u8; u32::from_be_bytes(len) as usize];
                if s.read_exact(&mut req).await.is_err() {
                    return;
                }
                let req: StateRequest = decode(&req, 1024).unwrap();
                let resp = match req {
                    StateRequest::Checkpoint => {
                        StateResponse::Checkpoint(offer(&store).unwrap().map(Box::new))
                    }
                    StateRequest::Chunk { .. } if lie == Lie::Stall => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        return;
                    }
                    StateRequest::Chunk {
                        height,
                        depth,
                        bucket,
                        after,
                    } => {
                        let mut c = store
                            .snapshot_chunk(height, depth, bucket, after, 4096)
                            .unwrap();
                        c.bucket_done = true;
                        if let Some(a) = c.accounts.first_mut() {
                            a.1.balance += 1;
                        }
                        StateResponse::Chunk(c)
                    }
                    StateRequest::Blocks { .. } => StateResponse::Error("not served".into()),
                };
                let bytes = encode(&resp);
                let _ = s.write_all(&(bytes.len() as u32).to_be_bytes()).await;
                let _ = s.write_all(&bytes).await;
                let _ = s.flush().await;
                let _ = s.close().await;
            });
        }
    });
}

async fn sync_past(lie: Lie) {
    let g = genesis(ACCOUNTS);
    let src_dir = tempfile::tempdir().unwrap();
    let src = Arc::new(source_store(src_dir.path(), &g));
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    // Validator 0 lies; 1 and 2 serve honestly; 3 syncs.
    let (liar_net, _) = node(&g, &ports, 0, &[]);
    liar(&liar_net, src.clone(), lie);
    let mut servers = Vec::new();
    for i in [1, 2] {
        let (net, _) = node(&g, &ports, i, &[]);
        let (tx, rx) = tokio::sync::watch::channel(Some(src.clone()));
        tokio::spawn(serve(
            net.control(),
            Arc::new(net.validator_peer_ids()),
            rx,
            net.outsider_activity(),
        ));
        servers.push((net, tx));
    }
    let (client, metrics) = node(&g, &ports, 3, &[0, 1, 2]);
    let data = tempfile::tempdir().unwrap();
    let opts = StoreOptions::default();
    let fresh = Store::open(&data.path().join(DB_DIR), &g, opts.clone()).unwrap();
    // The liar first: its offer is taken and it is asked first.
    let liar_id = peer_id_of(&validator_key(0).public()).unwrap();
    let mut peers = client.other_validators();
    peers.sort_by_key(|p| *p != liar_id);
    let restored = tokio::time::timeout(
        Duration::from_secs(120),
        catch_up(
            client.control(),
            peers,
            &g,
            fresh,
            (data.path(), &opts),
            &metrics,
        ),
    )
    .await
    .expect("the sync completes in time")
    .expect("the sync completes");
    let cp = src.stable_checkpoint().unwrap().unwrap();
    assert_eq!(restored.head().height, CHECKPOINT);
    assert_eq!(restored.head().state_root, cp.payload.state_root);
    let reason = if lie == Lie::Junk { "junk" } else { "stalled" };
    let text = metrics.encode();
    let drops = format!("phalanx_state_sync_peer_drops_total{{reason=\"{reason}\"}} 1");
    assert!(
        text.contains(&drops),
        "the liar is dropped, once: {}",
        text.lines()
            .filter(|l| l.contains("state_sync"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(!data.path().join("db.restore").exists(), "swapped in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_sync_fed_junk_by_one_peer_completes_from_the_others() {
    sync_past(Lie::Junk).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_sync_stalled_by_one_peer_completes_from_the_others() {
    sync_past(Lie::Stall).await;
}

/// How many connections of keys outside the set `m`'s node closed as idle.
fn idle_closed(m: &Metrics) -> f64 {
    m.encode()
        .lines()
        .filter(|l| l.contains("reason=\"non_validator_idle\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A key outside the validator set (a full node) is served committed blocks
/// with their certificates, and keeps its connection past the grace while
/// it keeps asking; once it stops, the connection is closed as idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_outside_the_set_is_served_blocks_and_kept_connected_while_it_asks() {
    let g = genesis(ACCOUNTS);
    let dir = tempfile::tempdir().unwrap();
    let src = Arc::new(source_store(dir.path(), &g));
    let (server_port, outsider_port) = (free_port(), free_port());
    let grace = Duration::from_millis(600);
    let server_metrics = Arc::new(Metrics::new(4, &[]));
    let (server, _inbound, _gossip) = start(NetConfig {
        key: validator_key(0),
        listen: addr(server_port),
        validators: g.validators.clone(),
        peers: vec![],
        peer_queue: 64,
        reconnect_base: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(500),
        metrics: server_metrics.clone(),
        genesis: g.hash(),
        limits: phalanx_node::net::ConnLimits {
            grace,
            ..Default::default()
        },
    })
    .unwrap();
    let (_tx, rx) = tokio::sync::watch::channel(Some(src.clone()));
    tokio::spawn(serve(
        server.control(),
        Arc::new(server.validator_peer_ids()),
        rx,
        server.outsider_activity(),
    ));
    let outsider_key = KeyPair::from_seed([0x77; 32]);
    assert!(!g.validators.contains(&outsider_key.public()));
    let (outsider, _i, _g) = start(NetConfig {
        key: outsider_key,
        listen: addr(outsider_port),
        validators: g.validators.clone(),
        peers: vec![(validator_key(0).public(), addr(server_port))],
        peer_queue: 64,
        // Not redialled within the test: a closed connection stays closed.
        reconnect_base: Duration::from_secs(60),
        reconnect_max: Duration::from_secs(60),
        metrics: Arc::new(Metrics::new(4, &[])),
        genesis: g.hash(),
        limits: Default::default(),
    })
    .unwrap();
    let server_id = peer_id_of(&validator_key(0).public()).unwrap();
    let mut control = outsider.control();
    // Asking every 100 ms for four graces: served each time, never closed.
    let asked_until = std::time::Instant::now() + 4 * grace;
    let mut answers = 0;
    while std::time::Instant::now() < asked_until {
        let req = StateRequest::Blocks { from: 1, max: 5 };
        if let Some(StateResponse::Blocks {
            head,
            blocks,
            stable,
        }) = phalanx_node::statesync::request(&mut control, server_id, &req).await
        {
            assert_eq!(head, src.head().height);
            assert_eq!(blocks.len(), 5);
            assert_eq!(
                blocks[0].0.id(),
                src.block(phalanx_consensus::Height(1))
                    .unwrap()
                    .unwrap()
                    .id()
            );
            assert!(stable.is_some());
            answers += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answers >= 10, "{answers} answers");
    assert_eq!(
        idle_closed(&server_metrics),
        0.0,
        "closed while it was asking"
    );
    // Idle now: closed within a grace or two.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while idle_closed(&server_metrics) < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "an idle outsider kept its connection"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
