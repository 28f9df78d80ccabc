//! The JSON-RPC API (jsonrpsee; HTTP and WebSocket on one port) and the
//! `/livez` and `/readyz` probes.
//!
//! This module owns the method names, the shape of results (JSON objects,
//! hashes and keys in hex) and the stable error codes. Every parameter is
//! checked before use and every failure is a JSON-RPC error with a message
//! that says what is wrong; nothing a client sends can panic the node. It
//! never changes state except by handing transactions to the ingress.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonrpsee::server::middleware::http::ProxyGetRequestLayer;
use jsonrpsee::server::middleware::rpc::RpcServiceBuilder;
use jsonrpsee::server::{
    BatchRequestConfig, PendingSubscriptionSink, PingConfig, RpcModule, Server, ServerConfig,
    ServerHandle, SubscriptionMessage, serve_with_graceful_shutdown, stop_channel,
};
use jsonrpsee::types::{ErrorObject, ErrorObjectOwned, Params};
use phalanx_crypto::{Digest, PublicKey, encode};
use phalanx_ledger::{Receipt, SignedTransfer, TxStatus, decode_payload};
use phalanx_storage::TxRecord;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::ingress::{Origin, Submission, SubmitError, Submitted};
use crate::mempool::Rejection;
pub use crate::rpc_guard::RpcLimits;
use crate::rpc_guard::{AddressLimits, RateLimited};
use crate::shared::{CommitNotice, Shared};

/// Largest request body, bytes.
pub const MAX_REQUEST_BYTES: u32 = 256 * 1024;
/// Largest response body, bytes.
pub const MAX_RESPONSE_BYTES: u32 = 16 * 1024 * 1024;
/// Most simultaneous connections.
pub const MAX_CONNECTIONS: u32 = 512;
/// Most calls in one batch request.
pub const MAX_BATCH: u32 = 64;
/// Most subscriptions one connection may hold.
pub const MAX_SUBSCRIPTIONS_PER_CONNECTION: u32 = 16;
/// A WebSocket connection is pinged this often ...
pub const WS_PING_INTERVAL: Duration = Duration::from_secs(30);
/// ... and closed when nothing has come from it for this long.
pub const WS_INACTIVE_LIMIT: Duration = Duration::from_secs(90);
/// Most transactions in one `ledger_submitTransactions` call (the request
/// body bound allows about a thousand transfers).
pub const MAX_SUBMIT_TXS: usize = 1024;
/// How long `wait = "commit"` waits.
pub const COMMIT_WAIT: Duration = Duration::from_secs(30);
/// Readiness: at most this many blocks behind the best seen.
pub const READY_MAX_LAG: u64 = 5;
/// Readiness: a commit within this long, ms.
pub const READY_MAX_SILENCE_MS: u64 = 10_000;

/// Stable error codes (besides JSON-RPC's own -32700 parse error, -32600
/// invalid request, -32601 unknown method, -32602 invalid params).
pub mod codes {
    /// A hex string that does not decode.
    pub const BAD_HEX: i32 = 1001;
    /// Bytes that are not a canonical signed transfer.
    pub const MALFORMED: i32 = 1002;
    /// A transaction over the size limit.
    pub const TX_TOO_LARGE: i32 = 1003;
    /// A signature that does not verify.
    pub const BAD_SIGNATURE: i32 = 1004;
    /// A transaction for another chain.
    pub const WRONG_CHAIN: i32 = 1005;
    /// Nonce already used.
    pub const NONCE_TOO_LOW: i32 = 1006;
    /// Nonce too far ahead.
    pub const NONCE_TOO_HIGH: i32 = 1007;
    /// The sender cannot pay.
    pub const INSUFFICIENT_FUNDS: i32 = 1008;
    /// The mempool is full.
    pub const MEMPOOL_FULL: i32 = 1009;
    /// Another transaction with this nonce is pending.
    pub const NONCE_TAKEN: i32 = 1010;
    /// `wait = "commit"` timed out (the transaction stays pending).
    pub const COMMIT_TIMEOUT: i32 = 1011;
    /// No such block.
    pub const NOT_FOUND: i32 = 1012;
    /// A parameter of the right type but a bad value.
    pub const BAD_PARAM: i32 = 1013;
    /// Not ready (readiness probe).
    pub const NOT_READY: i32 = 1014;
    /// A local failure.
    pub const INTERNAL: i32 = 1015;
    /// A transfer leg of amount 0.
    pub const ZERO_AMOUNT: i32 = 1016;
    /// A leg would create an account below the chain's minimum balance.
    pub const BELOW_MINIMUM_BALANCE: i32 = 1017;
    /// The sender has the most transactions waiting behind a nonce gap.
    pub const FUTURE_LIMIT: i32 = 1018;
    /// The mempool's share for transactions behind a nonce gap is full.
    pub const FUTURE_FULL: i32 = 1019;
    /// The admission queue is full: the node is overloaded; retry later.
    pub const BUSY: i32 = 1020;
    /// The client's address made more requests than its rate allows.
    pub const RATE_LIMITED: i32 = 1021;
    /// The client's address holds as many connections as it may (sent
    /// as an HTTP 429 answer before the connection is closed).
    pub const TOO_MANY_CONNECTIONS: i32 = 1022;
}

fn err(code: i32, msg: impl Into<String>) -> ErrorObjectOwned {
    ErrorObject::owned(code, msg.into(), None::<()>)
}

fn submit_error(e: SubmitError) -> ErrorObjectOwned {
    let code = match &e {
        SubmitError::TooLarge(_) => codes::TX_TOO_LARGE,
        SubmitError::Malformed(_) => codes::MALFORMED,
        SubmitError::WrongChain { .. } => codes::WRONG_CHAIN,
        SubmitError::BadSignature => codes::BAD_SIGNATURE,
        SubmitError::ZeroAmount { .. } => codes::ZERO_AMOUNT,
        SubmitError::BelowMinimumBalance { .. } => codes::BELOW_MINIMUM_BALANCE,
        SubmitError::Internal(_) => codes::INTERNAL,
        SubmitError::Rejected(r) => match r {
            Rejection::Full { .. } => codes::MEMPOOL_FULL,
            Rejection::NonceTooLow { .. } => codes::NONCE_TOO_LOW,
            Rejection::NonceTooHigh { .. } => codes::NONCE_TOO_HIGH,
            Rejection::NonceTaken { .. } => codes::NONCE_TAKEN,
            Rejection::InsufficientFunds { .. } => codes::INSUFFICIENT_FUNDS,
            Rejection::FutureLimit { .. } => codes::FUTURE_LIMIT,
            Rejection::FutureFull { .. } => codes::FUTURE_FULL,
        },
    };
    err(code, e.to_string())
}

fn internal(e: impl std::fmt::Display) -> ErrorObjectOwned {
    err(codes::INTERNAL, e.to_string())
}

fn hex_bytes(s: &str, what: &str) -> Result<Vec<u8>, ErrorObjectOwned> {
    let s = s.strip_prefix("0x").unwrap_or(s);
    hex::decode(s).map_err(|e| err(codes::BAD_HEX, format!("{what}: not hex: {e}")))
}

fn digest_param(s: &str) -> Result<Digest, ErrorObjectOwned> {
    let b = hex_bytes(s, "hash")?;
    let arr: [u8; 32] = b
        .try_into()
        .map_err(|_| err(codes::BAD_PARAM, "hash: expected 32 bytes"))?;
    Ok(Digest(arr))
}

fn address_param(s: &str) -> Result<PublicKey, ErrorObjectOwned> {
    let b = hex_bytes(s, "address")?;
    let arr: [u8; 32] = b
        .try_into()
        .map_err(|_| err(codes::BAD_PARAM, "address: expected 32 bytes"))?;
    PublicKey::from_bytes(&arr).map_err(|e| err(codes::BAD_PARAM, format!("address: {e}")))
}

/// A receipt as JSON.
pub fn receipt_json(r: &Receipt) -> Value {
    let mut v = json!({ "status": r.status.name() });
    match &r.status {
        TxStatus::NonceTooLow { expected, got } | TxStatus::NonceTooHigh { expected, got } => {
            v["expected_nonce"] = json!(expected);
            v["nonce"] = json!(got);
        }
        TxStatus::InsufficientFunds { balance, needed } => {
            v["balance"] = json!(balance);
            v["needed"] = json!(needed);
        }
        TxStatus::BelowMinimumBalance { leg, minimum } => {
            v["leg"] = json!(leg);
            v["minimum"] = json!(minimum);
        }
        _ => {}
    }
    v
}

/// A committed transaction as JSON.
fn committed_json(hash: &Digest, rec: &TxRecord) -> Value {
    json!({
        "hash": hash.to_hex(),
        "status": "committed",
        "height": rec.height,
        "index": rec.index,
        "receipt": receipt_json(&rec.receipt),
    })
}

fn tx_hash_of_item(item: &[u8]) -> Digest {
    match SignedTransfer::decode(item) {
        Ok(t) => t.hash(),
        Err(_) => Digest::of(item),
    }
}

/// A digest written as 64 hex characters without a heap allocation.
struct Hex<'a>(&'a Digest);

impl serde::Serialize for Hex<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; 64];
        hex::encode_to_slice(self.0.0, &mut buf).map_err(serde::ser::Error::custom)?;
        s.serialize_str(std::str::from_utf8(&buf).map_err(serde::ser::Error::custom)?)
    }
}

/// One transaction's line in a block notice.
#[derive(serde::Serialize)]
struct NoticeReceipt<'a> {
    hash: Hex<'a>,
    status: &'static str,
}

/// A block notice, serialized straight from the commit's receipts: a
/// subscriber with receipts gets one entry per transaction of every block,
/// which as a `serde_json::Value` tree cost a map and three strings each.
#[derive(serde::Serialize)]
struct Notice<'a> {
    height: u64,
    block_id: Hex<'a>,
    state_root: Hex<'a>,
    transactions: usize,
    applied: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    receipts: Option<NoticeReceipts<'a>>,
}

struct NoticeReceipts<'a>(&'a [Receipt]);

impl serde::Serialize for NoticeReceipts<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|r| NoticeReceipt {
            hash: Hex(&r.tx_hash),
            status: r.status.name(),
        }))
    }
}

fn notice_json(
    n: &CommitNotice,
    with_txs: bool,
) -> Result<Box<serde_json::value::RawValue>, serde_json::Error> {
    let notice = Notice {
        height: n.height,
        block_id: Hex(&n.block_id),
        state_root: Hex(&n.state_root),
        transactions: n.receipts.len(),
        applied: n
            .receipts
            .iter()
            .filter(|r| r.status == TxStatus::Applied)
            .count(),
        receipts: with_txs.then(|| NoticeReceipts(&n.receipts)),
    };
    serde_json::value::to_raw_value(&notice)
}

fn json_message(v: &Value) -> Result<SubscriptionMessage, serde_json::Error> {
    Ok(serde_json::value::to_raw_value(v)?.into())
}

/// Starts the server on `addr`, under the per-address `limits`.
///
/// Connections are accepted here rather than by jsonrpsee's own loop so
/// that each is charged to its client's address ([`crate::rpc_guard`]):
/// an address over its connection share is answered HTTP 429 with a
/// JSON-RPC error ([`codes::TOO_MANY_CONNECTIONS`]) and closed, and every
/// call on a connection spends its address's request rate.
pub async fn start(
    addr: SocketAddr,
    shared: Arc<Shared>,
    ingress: mpsc::Sender<Submission>,
    limits: RpcLimits,
) -> anyhow::Result<(ServerHandle, SocketAddr)> {
    let probes =
        ProxyGetRequestLayer::new([("/livez", "health_live"), ("/readyz", "health_ready")])?;
    let config = ServerConfig::builder()
        .max_request_body_size(MAX_REQUEST_BYTES)
        .max_response_body_size(MAX_RESPONSE_BYTES)
        .max_connections(MAX_CONNECTIONS)
        .max_subscriptions_per_connection(MAX_SUBSCRIPTIONS_PER_CONNECTION)
        .set_batch_request_config(BatchRequestConfig::Limit(MAX_BATCH))
        .enable_ws_ping(
            PingConfig::new()
                .ping_interval(WS_PING_INTERVAL)
                .inactive_limit(WS_INACTIVE_LIMIT),
        )
        .build();
    let builder = Server::builder()
        .set_config(config)
        .set_http_middleware(tower::ServiceBuilder::new().layer(probes))
        .to_service_builder();
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let methods = methods(shared.clone(), ingress)?;
    let (stop, handle) = stop_channel();
    let guard = AddressLimits::new(limits);
    tokio::spawn(async move {
        let mut refused_warned: Option<Instant> = None;
        loop {
            let (sock, remote) = tokio::select! {
                res = listener.accept() => match res {
                    Ok(s) => s,
                    Err(e) => {
                        // Out of file descriptors, say: wait, do not spin.
                        tracing::debug!("rpc accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stop.clone().shutdown() => break,
            };
            let ip = remote.ip();
            let Some(slot) = guard.connect(ip) else {
                shared.metrics.rpc_refused("connections_per_ip");
                if refused_warned.is_none_or(|t| t.elapsed() >= REFUSED_WARN_INTERVAL) {
                    refused_warned = Some(Instant::now());
                    tracing::warn!(%ip, max = limits.connections_per_ip, "JSON-RPC connection refused: too many from one address");
                }
                tokio::spawn(refuse_connection(sock));
                continue;
            };
            let layer = RateLimitLayer {
                limits: guard.clone(),
                ip,
                metrics: shared.metrics.clone(),
            };
            let svc = PerConnection {
                builder: builder
                    .clone()
                    .set_rpc_middleware(RpcServiceBuilder::new().layer(layer)),
                methods: methods.clone(),
                stop: stop.clone(),
            };
            let stopped = stop.clone().shutdown();
            tokio::spawn(async move {
                let _slot = slot;
                let _ = serve_with_graceful_shutdown(sock, svc, stopped).await;
            });
        }
    });
    Ok((handle, local))
}

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The HTTP service of one connection: jsonrpsee's, with the connection's
/// rate limit in its RPC middleware. A named type rather than a closure:
/// with a closure, the compiler loses the error type's lifetime inside the
/// spawned task (rust-lang/rust#102211).
#[derive(Clone)]
struct PerConnection<B> {
    builder: B,
    methods: jsonrpsee::Methods,
    stop: jsonrpsee::server::StopHandle,
}

type ConnBuilder = jsonrpsee::server::TowerServiceBuilder<
    tower::layer::util::Stack<RateLimitLayer, tower::layer::util::Identity>,
    tower::layer::util::Stack<ProxyGetRequestLayer, tower::layer::util::Identity>,
>;

impl tower::Service<jsonrpsee::server::HttpRequest<hyper::body::Incoming>>
    for PerConnection<ConnBuilder>
{
    type Response = jsonrpsee::server::HttpResponse;
    type Error = BoxError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, BoxError>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: jsonrpsee::server::HttpRequest<hyper::body::Incoming>) -> Self::Future {
        let mut svc = self
            .builder
            .clone()
            .build(self.methods.clone(), self.stop.clone());
        Box::pin(async move { tower::Service::call(&mut svc, req).await })
    }
}

/// Puts [`RateLimited`] around each connection's RPC service.
#[derive(Clone)]
struct RateLimitLayer {
    limits: Arc<AddressLimits>,
    ip: std::net::IpAddr,
    metrics: Arc<crate::metrics::Metrics>,
}

impl<S> tower::Layer<S> for RateLimitLayer {
    type Service = RateLimited<S>;

    fn layer(&self, inner: S) -> RateLimited<S> {
        RateLimited::new(inner, self.limits.clone(), self.ip, self.metrics.clone())
    }
}

/// At most one warning this often for refused connections.
const REFUSED_WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Answers a connection over its address's share and closes it.
async fn refuse_connection(mut sock: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let body = json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": {
            "code": codes::TOO_MANY_CONNECTIONS,
            "message": "too many connections from this address; close one and retry",
        },
    })
    .to_string();
    let answer = format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = sock.write_all(answer.as_bytes()).await;
        let _ = sock.shutdown().await;
    })
    .await;
}

/// Every method the server answers, bound to `shared` and `ingress`
/// (also what the fuzz target of request handling calls in-process).
pub fn methods(
    shared: Arc<Shared>,
    ingress: mpsc::Sender<Submission>,
) -> anyhow::Result<jsonrpsee::Methods> {
    Ok(module(shared, ingress)?.into())
}

struct Ctx {
    shared: Arc<Shared>,
    ingress: mpsc::Sender<Submission>,
}

/// The methods answered with a single result (counted and timed in
/// metrics), besides the block subscription.
pub const METHODS: [&str; 9] = [
    "health_live",
    "health_ready",
    "ledger_submitTransaction",
    "ledger_submitTransactions",
    "ledger_getTransaction",
    "ledger_getBlock",
    "ledger_getAccount",
    "ledger_status",
    "ledger_getEvidence",
];

type RpcResult = Result<Value, ErrorObjectOwned>;

/// Registers a synchronous method, counted and timed.
fn method<F>(m: &mut RpcModule<Ctx>, name: &'static str, f: F) -> anyhow::Result<()>
where
    F: Fn(Params<'_>, &Ctx) -> RpcResult + Send + Sync + Clone + 'static,
{
    debug_assert!(METHODS.contains(&name));
    m.register_method(name, move |params, ctx, _| {
        let started = Instant::now();
        let res = f(params, ctx);
        ctx.shared.metrics.rpc(name, res.is_ok(), started.elapsed());
        res
    })?;
    Ok(())
}

/// Registers a synchronous method that runs on the blocking pool rather
/// than an async worker (it may read and decode megabytes), counted and
/// timed.
fn blocking_method<F>(m: &mut RpcModule<Ctx>, name: &'static str, f: F) -> anyhow::Result<()>
where
    F: Fn(Params<'_>, &Ctx) -> RpcResult + Send + Sync + Clone + 'static,
{
    debug_assert!(METHODS.contains(&name));
    m.register_blocking_method(name, move |params, ctx, _| {
        let started = Instant::now();
        let res = f(params, &ctx);
        ctx.shared.metrics.rpc(name, res.is_ok(), started.elapsed());
        res
    })?;
    Ok(())
}

/// Registers an asynchronous method, counted and timed.
fn async_method<F, Fut>(m: &mut RpcModule<Ctx>, name: &'static str, f: F) -> anyhow::Result<()>
where
    F: Fn(Params<'static>, Arc<Ctx>) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = RpcResult> + Send + 'static,
{
    debug_assert!(METHODS.contains(&name));
    m.register_async_method(name, move |params, ctx, _| {
        let f = f.clone();
        async move {
            let started = Instant::now();
            let res = f(params, ctx.clone()).await;
            ctx.shared.metrics.rpc(name, res.is_ok(), started.elapsed());
            res
        }
    })?;
    Ok(())
}

fn module(
    shared: Arc<Shared>,
    ingress: mpsc::Sender<Submission>,
) -> anyhow::Result<RpcModule<Ctx>> {
    let mut m = RpcModule::new(Ctx { shared, ingress });

    method(&mut m, "health_live", |_, _| Ok(json!({"live": true})))?;
    method(&mut m, "health_ready", |_, ctx| {
        ctx.shared
            .ready(READY_MAX_LAG, READY_MAX_SILENCE_MS)
            .map(|()| json!({"ready": true}))
            .map_err(|why| err(codes::NOT_READY, why))
    })?;

    async_method(&mut m, "ledger_submitTransaction", submit)?;
    async_method(&mut m, "ledger_submitTransactions", submit_many)?;

    method(&mut m, "ledger_getTransaction", |params, ctx| {
        let (hash,): (String,) = params.parse()?;
        let hash = digest_param(&hash)?;
        let store = &ctx.shared.store;
        let rec = store.transaction(&hash).map_err(internal)?;
        if let Some(rec) = &rec
            && rec.receipt.status == TxStatus::Applied
        {
            return Ok(committed_json(&hash, rec));
        }
        // A failure receipt is not final while the transaction is pending
        // again (a leader may have put it out of nonce order).
        if ctx.shared.pool().contains(&hash) {
            let mut v = json!({ "hash": hash.to_hex(), "status": "pending" });
            if let Some(rec) = &rec {
                v["last_failure"] = committed_json(&hash, rec);
            }
            return Ok(v);
        }
        if let Some(rec) = &rec {
            return Ok(committed_json(&hash, rec));
        }
        // Records go with their blocks: with history pruned, an unknown
        // hash may be one committed below what this node keeps.
        let from = store.first_retained_block().map_err(internal)?.0;
        if from > 1 {
            return Ok(json!({
                "hash": hash.to_hex(),
                "status": "not_retained",
                "retained_from": from,
                "message": format!(
                    "not pending and not in the blocks this node keeps (heights {from} on); \
                     a transaction committed below them has been pruned"
                ),
            }));
        }
        Ok(json!({ "hash": hash.to_hex(), "status": "unknown" }))
    })?;

    // A block is up to the payload bound (megabytes) to read, decode and
    // hash: off the async workers, which serve every other connection.
    blocking_method(&mut m, "ledger_getBlock", |params, ctx| {
        let (which,): (Value,) = params.parse()?;
        let store = &ctx.shared.store;
        let height = match &which {
            Value::String(s) if s == "latest" => store.head().height,
            Value::Number(n) => n
                .as_u64()
                .ok_or_else(|| err(codes::BAD_PARAM, "height: expected a non-negative integer"))?,
            _ => {
                return Err(err(codes::BAD_PARAM, "expected a height or \"latest\""));
            }
        };
        let block = store
            .block(phalanx_consensus::Height(height))
            .map_err(internal)?
            .ok_or_else(|| err(codes::NOT_FOUND, format!("no block at height {height}")))?;
        let cert = store
            .cert(phalanx_consensus::Height(height))
            .map_err(internal)?;
        let txs: Vec<String> = decode_payload(&block.payload)
            .map(|items| items.iter().map(|i| tx_hash_of_item(i).to_hex()).collect())
            .unwrap_or_default();
        let h = &block.header;
        Ok(json!({
            "height": height,
            "block_id": block.id().to_hex(),
            "parent": h.parent.to_hex(),
            "view": h.view.0,
            "proposer": h.proposer.0,
            "timestamp_ms": h.timestamp_ms,
            "payload_digest": h.payload_digest.to_hex(),
            "transactions": txs,
            "certificate": cert.map(|c| json!({
                "view": c.payload.view.0,
                "block_id": c.payload.block_id.to_hex(),
                "signers": c.signers.iter().map(|i| i.0).collect::<Vec<_>>(),
                "bytes": hex::encode(encode(&c)),
            })),
        }))
    })?;

    method(&mut m, "ledger_getAccount", |params, ctx| {
        let (addr,): (String,) = params.parse()?;
        let addr = address_param(&addr)?;
        let (head, account, proof) = ctx
            .shared
            .store
            .account_with_proof(&addr)
            .map_err(internal)?;
        #[cfg(feature = "byzantine")]
        let account = crate::byzantine::read_account(&addr, account);
        let a = account.unwrap_or_default();
        Ok(json!({
            "address": addr.to_hex(),
            "exists": account.is_some(),
            "balance": a.balance,
            "nonce": a.nonce,
            "height": head.height,
            "state_root": head.state_root.to_hex(),
            "proof": hex::encode(proof.to_bytes()),
        }))
    })?;

    method(&mut m, "ledger_getEvidence", |params, ctx| {
        // Optional: one culprit's validator index.
        let signer: Option<u64> = params.sequence().optional_next()?;
        let store = &ctx.shared.store;
        let records = match signer {
            Some(i) => {
                let i = u16::try_from(i)
                    .ok()
                    .filter(|i| usize::from(*i) < ctx.shared.validators)
                    .ok_or_else(|| {
                        err(
                            codes::BAD_PARAM,
                            format!(
                                "signer: no validator {i} in a set of {}",
                                ctx.shared.validators
                            ),
                        )
                    })?;
                store.evidence_of(i).map_err(internal)?
            }
            None => store.evidence().map_err(internal)?,
        };
        const KINDS: [&str; 4] = ["proposal", "vote", "timeout", "checkpoint"];
        let list: Vec<Value> = records
            .iter()
            .map(|r| {
                json!({
                    "signer": r.signer,
                    "round": r.round,
                    "kind": KINDS.get(usize::from(r.kind)).copied().unwrap_or("unknown"),
                    "report": hex::encode(&r.bytes),
                })
            })
            .collect();
        Ok(json!({ "evidence": list }))
    })?;

    method(&mut m, "ledger_status", |_, ctx| {
        let s = ctx.shared.status.borrow().clone();
        let store = &ctx.shared.store;
        let head = store.head();
        let stable = store.stable_checkpoint().map_err(internal)?;
        let pool = ctx.shared.pool();
        Ok(json!({
            "chain_id": ctx.shared.chain.to_string(),
            "validator": ctx.shared.validator.to_hex(),
            "height": head.height,
            "block_id": head.block_id.to_hex(),
            "state_root": head.state_root.to_hex(),
            "view": s.view.0,
            "leader": s.leader.0,
            "peers": ctx.shared.metrics.peers(),
            "syncing": ctx.shared.ready(READY_MAX_LAG, u64::MAX).is_err(),
            "stable_checkpoint": stable.map(|c| json!({
                "height": c.payload.height.0,
                "block_id": c.payload.block_id.to_hex(),
                "state_root": c.payload.state_root.to_hex(),
            })),
            "mempool": { "transactions": pool.len(), "bytes": pool.bytes() },
        }))
    })?;

    m.register_subscription(
        "ledger_subscribeBlocks",
        "ledger_block",
        "ledger_unsubscribeBlocks",
        |params, pending: PendingSubscriptionSink, ctx, _| async move {
            // Optional: `true` adds each transaction's hash and status.
            let with_txs = match params.sequence().optional_next::<bool>() {
                Ok(b) => b.unwrap_or(false),
                Err(e) => {
                    pending.reject(e).await;
                    return Ok(());
                }
            };
            let mut rx = ctx.shared.commits.subscribe();
            let sink = pending.accept().await?;
            loop {
                tokio::select! {
                    _ = sink.closed() => return Ok(()),
                    n = rx.recv() => match n {
                        Ok(n) => {
                            let msg = SubscriptionMessage::from(notice_json(&n, with_txs)?);
                            sink.send(msg).await?;
                        }
                        Err(broadcast::error::RecvError::Lagged(k)) => {
                            // Told, not silently dropped: a last notification
                            // says how much was missed, then the
                            // subscription ends.
                            let msg = json_message(&json!({
                                "error": "lagged",
                                "missed_blocks": k,
                                "message": format!("subscriber fell behind by {k} blocks; resubscribe and fetch the gap with ledger_getBlock"),
                            }))?;
                            let _ = sink.send(msg).await;
                            return Err(format!("subscriber fell behind by {k} blocks").into());
                        }
                        Err(broadcast::error::RecvError::Closed) => return Ok(()),
                    }
                }
            }
        },
    )?;
    Ok(m)
}

fn shutting_down() -> ErrorObjectOwned {
    err(codes::INTERNAL, "node is shutting down")
}

/// Hands `bytes` to the ingress; the answer arrives on the returned
/// channel. A full queue is answered at once with [`codes::BUSY`]: a
/// client that floods the node gets an error to back off on, and never
/// holds a request (and its connection's slot) waiting for room.
fn admit(
    ctx: &Ctx,
    bytes: Vec<u8>,
) -> Result<oneshot::Receiver<Result<Submitted, SubmitError>>, ErrorObjectOwned> {
    admit_to(&ctx.ingress, bytes)
}

fn admit_to(
    ingress: &mpsc::Sender<Submission>,
    bytes: Vec<u8>,
) -> Result<oneshot::Receiver<Result<Submitted, SubmitError>>, ErrorObjectOwned> {
    let (tx, rx) = oneshot::channel();
    ingress
        .try_send(Submission {
            bytes,
            origin: Origin::Rpc(tx),
        })
        .map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => err(
                codes::BUSY,
                "the node's admission queue is full; retry later",
            ),
            mpsc::error::TrySendError::Closed(_) => shutting_down(),
        })?;
    Ok(rx)
}

/// The result of an accepted submission that is not waited on.
fn submitted_json(s: &Submitted) -> Value {
    match s {
        Submitted::Committed(hash, rec) => committed_json(hash, rec),
        Submitted::Added(hash) | Submitted::Pending(hash) => {
            json!({ "hash": hash.to_hex(), "status": "pending" })
        }
    }
}

/// `ledger_submitTransactions(txs_hex)`: many transactions in one call,
/// admitted together. One result per transaction, in order: what
/// `ledger_submitTransaction` without waiting returns, or `{"error":
/// {"code", "message"}}` for one that was refused (a full admission queue
/// refuses the rest of a batch item by item, so the client learns which
/// were taken). Only a bad parameter as a whole fails the call.
async fn submit_many(params: Params<'static>, ctx: Arc<Ctx>) -> RpcResult {
    let (txs,): (Vec<String>,) = params.parse()?;
    if txs.is_empty() || txs.len() > MAX_SUBMIT_TXS {
        return Err(err(
            codes::BAD_PARAM,
            format!(
                "txs: expected 1 to {MAX_SUBMIT_TXS} transactions, got {}",
                txs.len()
            ),
        ));
    }
    let error_json =
        |e: ErrorObjectOwned| json!({ "error": { "code": e.code(), "message": e.message() } });
    // Every transaction is queued before any answer is awaited, so the
    // ingress sees them together.
    let mut pending = Vec::with_capacity(txs.len());
    for tx_hex in &txs {
        pending.push(match hex_bytes(tx_hex, "transaction") {
            Ok(bytes) => admit(&ctx, bytes),
            Err(e) => Err(e),
        });
    }
    let mut out = Vec::with_capacity(pending.len());
    for p in pending {
        out.push(match p {
            Ok(rx) => match rx.await.map_err(|_| shutting_down())? {
                Ok(s) => submitted_json(&s),
                Err(e) => error_json(submit_error(e)),
            },
            Err(e) => error_json(e),
        });
    }
    Ok(Value::Array(out))
}

async fn submit(params: Params<'static>, ctx: Arc<Ctx>) -> Result<Value, ErrorObjectOwned> {
    let (tx_hex, wait): (String, Option<String>) = params.parse()?;
    let wait_commit = match wait.as_deref() {
        None | Some("none") => false,
        Some("commit") => true,
        Some(other) => {
            return Err(err(
                codes::BAD_PARAM,
                format!("wait `{other}`: expected \"none\" or \"commit\""),
            ));
        }
    };
    let bytes = hex_bytes(&tx_hex, "transaction")?;
    // Subscribe before submitting, so the commit cannot slip by unseen.
    let mut commits = wait_commit.then(|| ctx.shared.commits.subscribe());
    let outcome = admit(&ctx, bytes)?
        .await
        .map_err(|_| shutting_down())?
        .map_err(submit_error)?;
    let hash = outcome.hash();
    // Not waiting, or nothing to wait for: answer now.
    let Some(commits) = commits.as_mut().filter(|_| !outcome.is_committed()) else {
        return Ok(submitted_json(&outcome));
    };
    let wait = async {
        loop {
            match commits.recv().await {
                Ok(n) => {
                    if let Some((i, r)) = n
                        .receipts
                        .iter()
                        .enumerate()
                        .find(|(_, r)| r.tx_hash == hash)
                    {
                        return Ok(TxRecord {
                            height: n.height,
                            index: i as u32,
                            receipt: r.clone(),
                        });
                    }
                }
                // Missed notices: the index has the answer.
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    if let Ok(Some(rec)) = ctx.shared.store.transaction(&hash) {
                        return Ok(rec);
                    }
                }
                Err(broadcast::error::RecvError::Closed) => {
                    return Err(err(codes::INTERNAL, "node is shutting down"));
                }
            }
        }
    };
    match tokio::time::timeout(COMMIT_WAIT, wait).await {
        Ok(Ok(seen)) => {
            // The receipt in the block may be `duplicate` when another copy
            // applied first; the index holds the first receipt of a hash.
            let first = ctx.shared.store.transaction(&hash).map_err(internal)?;
            Ok(committed_json(&hash, &first.unwrap_or(seen)))
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(err(
            codes::COMMIT_TIMEOUT,
            format!(
                "not committed within {} s; it stays pending (ask ledger_getTransaction)",
                COMMIT_WAIT.as_secs()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_full_admission_queue_is_answered_at_once_with_busy() {
        let (tx, mut rx) = mpsc::channel(2);
        let _a = admit_to(&tx, vec![1]).unwrap();
        let _b = admit_to(&tx, vec![2]).unwrap();
        // No await anywhere: a wait for room would hang this test.
        let e = admit_to(&tx, vec![3]).unwrap_err();
        assert_eq!(e.code(), codes::BUSY);
        assert!(e.message().contains("retry later"), "{}", e.message());
        // Room again once the ingress takes one.
        assert_eq!(rx.try_recv().unwrap().bytes, vec![1]);
        assert!(admit_to(&tx, vec![4]).is_ok());
        // A stopped ingress is a shutdown, not busy.
        drop(rx);
        assert_eq!(admit_to(&tx, vec![5]).unwrap_err().code(), codes::INTERNAL);
    }

    fn notice() -> CommitNotice {
        CommitNotice {
            height: 7,
            block_id: Digest::of(b"block"),
            state_root: Digest::of(b"root"),
            receipts: Arc::new(vec![
                Receipt {
                    tx_hash: Digest::of(b"a"),
                    status: TxStatus::Applied,
                },
                Receipt {
                    tx_hash: Digest::of(b"b"),
                    status: TxStatus::NonceTooLow {
                        expected: 3,
                        got: 1,
                    },
                },
            ]),
        }
    }

    fn as_value(raw: Result<Box<serde_json::value::RawValue>, serde_json::Error>) -> Value {
        serde_json::from_str(raw.unwrap().get()).unwrap()
    }

    #[test]
    fn block_notice_lists_receipts_only_when_asked() {
        let n = notice();
        let header = json!({
            "height": 7,
            "block_id": Digest::of(b"block").to_hex(),
            "state_root": Digest::of(b"root").to_hex(),
            "transactions": 2,
            "applied": 1,
        });
        assert_eq!(as_value(notice_json(&n, false)), header);
        let mut full = header;
        full["receipts"] = json!([
            { "hash": Digest::of(b"a").to_hex(), "status": "applied" },
            { "hash": Digest::of(b"b").to_hex(), "status": "nonce_too_low" },
        ]);
        assert_eq!(as_value(notice_json(&n, true)), full);
    }
}
