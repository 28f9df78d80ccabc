//! The JSON-RPC server's per-address bounds, over real HTTP and WebSocket
//! connections: connections per address, calls per second (each call of a
//! batch counted), subscriptions per connection, and a slow `getBlock`
//! that does not hold up other clients.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use phalanx_crypto::KeyPair;
use phalanx_node::ingress::{self, INGRESS_QUEUE};
use phalanx_node::mempool::MempoolLimits;
use phalanx_node::metrics::Metrics;
use phalanx_node::rpc::{self, MAX_SUBSCRIPTIONS_PER_CONNECTION, RpcLimits, codes};
use phalanx_node::shared::Shared;
use phalanx_storage::testkit::{genesis, next_block};
use phalanx_storage::{Store, StoreOptions};
use serde_json::{Value, json};

struct Server {
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    _rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

fn server(limits: RpcLimits) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let g = genesis(10);
    let store = Arc::new(Store::open(dir.path(), &g, StoreOptions::default()).unwrap());
    let (b, c) = next_block(&store, &[]);
    store.apply_block(&b, &c).unwrap();
    let metrics = Arc::new(Metrics::new(4, &rpc::method_names()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let addr = rt.block_on(async {
        let (shared, status) = Shared::new(
            store,
            &g,
            KeyPair::from_seed([1; 32]).public(),
            MempoolLimits::default(),
            metrics.clone(),
        );
        std::mem::forget(status);
        let shared = Arc::new(shared);
        let (tx, rx) = tokio::sync::mpsc::channel(INGRESS_QUEUE);
        let (gossip, mut gossip_rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(ingress::run(shared.clone(), rx, gossip));
        tokio::spawn(async move { while gossip_rx.recv().await.is_some() {} });
        let (handle, addr) = rpc::start("127.0.0.1:0".parse().unwrap(), shared, tx, limits, None)
            .await
            .unwrap();
        std::mem::forget(handle);
        addr
    });
    Server {
        addr,
        metrics,
        _rt: rt,
        _dir: dir,
    }
}

/// An HTTP/1.1 keep-alive connection speaking JSON-RPC.
struct Conn {
    r: BufReader<TcpStream>,
}

impl Conn {
    fn open(addr: SocketAddr) -> Conn {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        Conn {
            r: BufReader::new(s),
        }
    }

    /// Posts `body`; the status code and the parsed answer.
    fn post(&mut self, body: &Value) -> (u16, Value) {
        let body = body.to_string();
        let req = format!(
            "POST / HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        self.r.get_mut().write_all(req.as_bytes()).unwrap();
        self.read_answer()
    }

    fn read_answer(&mut self) -> (u16, Value) {
        let mut line = String::new();
        self.r.read_line(&mut line).unwrap();
        let status: u16 = line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut len = 0;
        loop {
            let mut h = String::new();
            self.r.read_line(&mut h).unwrap();
            if h == "\r\n" {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; len];
        self.r.read_exact(&mut body).unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }
}

fn call(method: &str, id: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": []})
}

fn series(m: &Metrics, name: &str) -> f64 {
    m.encode()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(-1.0)
}

fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_address_over_its_connection_share_is_answered_429_and_gets_its_slot_back() {
    let s = server(RpcLimits {
        connections_per_ip: 3,
        requests_per_sec: 10_000,
    });
    let mut open: Vec<Conn> = (0..3).map(|_| Conn::open(s.addr)).collect();
    for (i, c) in open.iter_mut().enumerate() {
        let (status, v) = c.post(&call("ledger_status", i as u64));
        assert_eq!(status, 200, "{v}");
        assert!(v["result"]["height"].is_u64(), "{v}");
    }
    // A fourth from the same address: refused with the code, then closed.
    let mut fourth = Conn::open(s.addr);
    let (status, v) = fourth.read_answer();
    assert_eq!(status, 429);
    assert_eq!(v["error"]["code"], codes::TOO_MANY_CONNECTIONS);
    assert!(
        series(
            &s.metrics,
            "phalanx_rpc_refused_total{reason=\"connections_per_ip\"}"
        ) >= 1.0
    );
    // Closing one gives its slot back.
    drop(open.pop());
    eventually("a slot comes back", || {
        let mut c = Conn::open(s.addr);
        c.post(&call("ledger_status", 9)).0 == 200
    });
}

#[test]
fn calls_past_an_address_rate_are_refused_with_their_code_until_it_refills() {
    let rate = 5u32;
    let burst = (2 * rate) as usize;
    let s = server(RpcLimits {
        connections_per_ip: 8,
        requests_per_sec: rate,
    });
    let mut c = Conn::open(s.addr);
    let started = Instant::now();
    // Every call of a batch counts.
    let batch: Vec<Value> = (0..8).map(|i| call("ledger_status", i)).collect();
    let (_, v) = c.post(&Value::Array(batch));
    let limited = |v: &Value| v["error"]["code"] == codes::RATE_LIMITED;
    let mut answers: Vec<Value> = v.as_array().unwrap().clone();
    for i in 0..60 {
        let (status, v) = c.post(&call("ledger_status", 100 + i));
        assert_eq!(
            status, 200,
            "a refused call is a JSON-RPC error, not an HTTP one"
        );
        answers.push(v);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let refused = answers.iter().filter(|a| limited(a)).count();
    let ok = answers.len() - refused;
    // The burst at least, and no more than the burst and what refilled
    // while the calls ran.
    let most = burst + (elapsed * f64::from(rate)).ceil() as usize + 1;
    assert!(
        ok >= burst && ok <= most,
        "{ok} answered in {elapsed:.2} s (burst {burst}, at most {most})"
    );
    assert!(refused >= 1, "{refused} refused in {elapsed:.2} s");
    assert_eq!(
        series(
            &s.metrics,
            "phalanx_rpc_refused_total{reason=\"rate_limited\"}"
        ),
        refused as f64
    );
    eventually("the rate refills", || {
        !limited(&c.post(&call("ledger_status", 7)).1)
    });
}

#[test]
fn a_connection_holds_a_bounded_number_of_subscriptions() {
    use jsonrpsee_core::client::SubscriptionClientT;
    let s = server(RpcLimits::default());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ws = jsonrpsee_ws_client::WsClientBuilder::default()
            .build(format!("ws://{}", s.addr))
            .await
            .unwrap();
        let mut subs = Vec::new();
        for _ in 0..MAX_SUBSCRIPTIONS_PER_CONNECTION {
            let sub: jsonrpsee_core::client::Subscription<Value> = ws
                .subscribe(
                    "ledger_subscribeBlocks",
                    jsonrpsee_core::rpc_params![],
                    "ledger_unsubscribeBlocks",
                )
                .await
                .unwrap();
            subs.push(sub);
        }
        let over: Result<jsonrpsee_core::client::Subscription<Value>, _> = ws
            .subscribe(
                "ledger_subscribeBlocks",
                jsonrpsee_core::rpc_params![],
                "ledger_unsubscribeBlocks",
            )
            .await;
        assert!(over.is_err(), "one past the bound");
        let msg = over.err().unwrap().to_string();
        assert!(msg.contains("Too many subscriptions"), "{msg}");
        // Giving one back makes room (once the server has let it go).
        subs.pop().unwrap().unsubscribe().await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let again: Result<jsonrpsee_core::client::Subscription<Value>, _> = ws
                .subscribe(
                    "ledger_subscribeBlocks",
                    jsonrpsee_core::rpc_params![],
                    "ledger_unsubscribeBlocks",
                )
                .await;
            if again.is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "no room after an unsubscribe");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}
