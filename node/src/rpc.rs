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
use phalanx_ledger::{Receipt, TxStatus, decode_payload};
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
    /// The node has not committed the read's `min_height` (after waiting
    /// up to 10 s); `data` holds its height.
    pub const BEHIND: i32 = 1023;
    /// No committed block certifies the execution of the height a proof is
    /// for yet (after waiting up to 10 s); retry.
    pub const NOT_CERTIFIED: i32 = 1024;
    /// The height asked for is not retained (pruned, or a state other
    /// than the head's).
    pub const NOT_RETAINED: i32 = 1025;
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
    forward: Option<Forward>,
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
    let methods: jsonrpsee::Methods = module(shared.clone(), ingress, forward)?.into();
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
    Ok(module(shared, ingress, None)?.into())
}

struct Ctx {
    shared: Arc<Shared>,
    ingress: mpsc::Sender<Submission>,
    /// A full node's: where submissions go instead of the ingress.
    forward: Option<Forward>,
}

/// How long a forwarded submission may take (a commit wait included).
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(40);

/// A full node's submission path: the validators' JSON-RPC endpoints,
/// tried in turn from the last one that answered.
pub struct Forward {
    clients: Vec<(String, jsonrpsee_http_client::HttpClient)>,
    next: std::sync::atomic::AtomicUsize,
}

impl Forward {
    /// Clients for `urls` (none: submissions are refused with a message
    /// saying so).
    pub fn new(urls: &[String]) -> anyhow::Result<Forward> {
        let mut clients = Vec::new();
        for u in urls {
            let c = jsonrpsee_http_client::HttpClient::builder()
                .request_timeout(FORWARD_TIMEOUT)
                .build(u)
                .map_err(|e| anyhow::anyhow!("forward_rpc `{u}`: {e}"))?;
            clients.push((u.clone(), c));
        }
        Ok(Forward {
            clients,
            next: Default::default(),
        })
    }

    /// Sends `method` with `params` to a validator: its answer, or its
    /// JSON-RPC error as is; the next validator on a transport failure.
    async fn call(&self, method: &str, params: Vec<Value>) -> RpcResult {
        use jsonrpsee_core::client::ClientT;
        use std::sync::atomic::Ordering;
        if self.clients.is_empty() {
            return Err(err(
                codes::BUSY,
                "this full node forwards submissions nowhere: set forward_rpc in its config",
            ));
        }
        let start = self.next.load(Ordering::Relaxed);
        let mut last = String::new();
        for k in 0..self.clients.len() {
            let i = (start + k) % self.clients.len();
            let (url, client) = &self.clients[i];
            let mut p = jsonrpsee_core::params::ArrayParams::new();
            for v in &params {
                p.insert(v).map_err(internal)?;
            }
            match client.request::<Value, _>(method, p).await {
                Ok(v) => {
                    self.next.store(i, Ordering::Relaxed);
                    return Ok(v);
                }
                Err(jsonrpsee_core::ClientError::Call(e)) => {
                    self.next.store(i, Ordering::Relaxed);
                    return Err(e.into_owned());
                }
                Err(e) => last = format!("{url}: {e}"),
            }
        }
        Err(err(
            codes::BUSY,
            format!("no validator took the submission (last: {last}); retry later"),
        ))
    }
}

/// One JSON-RPC method: its name, what the OpenRPC document says of it,
/// and its handler. [`API`] is the one table both the server and
/// `rpc.discover` are built from.
pub struct MethodSpec {
    /// The method name.
    pub name: &'static str,
    /// One line on what it does.
    pub summary: &'static str,
    /// Its positional parameters.
    pub params: &'static [ParamSpec],
    /// The JSON Schema of its result.
    pub result: &'static str,
    handler: Handler,
}

/// One positional parameter of a method.
pub struct ParamSpec {
    /// Its name.
    pub name: &'static str,
    /// Whether it must be given.
    pub required: bool,
    /// Its JSON Schema.
    pub schema: &'static str,
    /// What it means.
    pub description: &'static str,
}

type BoxedResult = std::pin::Pin<Box<dyn std::future::Future<Output = RpcResult> + Send>>;

#[derive(Clone, Copy)]
enum Handler {
    /// Answered on the async worker that received it (cheap reads).
    Sync(fn(Params<'_>, &Ctx) -> RpcResult),
    /// Awaits (commits, the ingress, a blocking-pool read).
    Async(fn(Params<'static>, Arc<Ctx>) -> BoxedResult),
    /// The block subscription (and, named apart, its unsubscribe method).
    Subscription { unsubscribe: &'static str },
    /// The unsubscribe method, registered with its subscription.
    Unsubscribe,
}

const READ_OPTS: ParamSpec = ParamSpec {
    name: "options",
    required: false,
    schema: r#"{"type":"object","additionalProperties":false,"properties":{"min_height":{"type":"integer","minimum":0,"description":"answer only once this node has committed this height (waits up to 10 s, else error 1023)"},"proof":{"type":"boolean","description":"attach a proof bundle (hex) checkable against the genesis"}}}"#,
    description: "read options: min_height (read your writes) and proof",
};

const HASH_SCHEMA: &str = r#"{"type":"string","pattern":"^(0x)?[0-9a-fA-F]{64}$"}"#;
const OBJECT: &str = r#"{"type":"object"}"#;

/// Every method the server answers.
pub static API: [MethodSpec; 13] = [
    MethodSpec {
        name: "health_live",
        summary: "Liveness: the process answers (also GET /livez).",
        params: &[],
        result: r#"{"type":"object","properties":{"live":{"type":"boolean"}}}"#,
        handler: Handler::Sync(|_, _| Ok(json!({"live": true}))),
    },
    MethodSpec {
        name: "health_ready",
        summary: "Readiness: committing and not behind its peers (also GET /readyz); error 1014 otherwise.",
        params: &[],
        result: r#"{"type":"object","properties":{"ready":{"type":"boolean"}}}"#,
        handler: Handler::Sync(|_, ctx| {
            ctx.shared
                .ready(READY_MAX_LAG, READY_MAX_SILENCE_MS)
                .map(|()| json!({"ready": true}))
                .map_err(|why| err(codes::NOT_READY, why))
        }),
    },
    MethodSpec {
        name: "ledger_submitTransaction",
        summary: "Submits one signed transfer (hex); with wait \"commit\", answers once it is committed, with its height.",
        params: &[
            ParamSpec {
                name: "tx",
                required: true,
                schema: r#"{"type":"string","pattern":"^(0x)?[0-9a-fA-F]*$"}"#,
                description: "the signed transfer's canonical bytes, hex",
            },
            ParamSpec {
                name: "wait",
                required: false,
                schema: r#"{"type":"string","enum":["none","commit"]}"#,
                description: "\"commit\" to answer once committed (up to 30 s)",
            },
        ],
        result: OBJECT,
        handler: Handler::Async(|p, c| Box::pin(submit(p, c))),
    },
    MethodSpec {
        name: "ledger_submitTransactions",
        summary: "Submits up to 1024 signed transfers; one result or error per transfer, in order.",
        params: &[ParamSpec {
            name: "txs",
            required: true,
            schema: r#"{"type":"array","items":{"type":"string"},"minItems":1,"maxItems":1024}"#,
            description: "signed transfers, hex",
        }],
        result: r#"{"type":"array","items":{"type":"object"}}"#,
        handler: Handler::Async(|p, c| Box::pin(submit_many(p, c))),
    },
    MethodSpec {
        name: "ledger_getTransaction",
        summary: "A transaction's status: committed (height, index, receipt), pending, not_retained or unknown; with proof, its receipt's proof bundle.",
        params: &[
            ParamSpec {
                name: "hash",
                required: true,
                schema: HASH_SCHEMA,
                description: "the transaction hash, hex",
            },
            READ_OPTS,
        ],
        result: OBJECT,
        handler: Handler::Async(|p, c| Box::pin(get_transaction_proved(p, c))),
    },
    MethodSpec {
        name: "ledger_getBlock",
        summary: "A committed block by height (or \"latest\"): header fields, transaction hashes, certificate; with proof, the block, its certificate and the header certifying its execution.",
        params: &[
            ParamSpec {
                name: "block",
                required: true,
                schema: r#"{"oneOf":[{"type":"integer","minimum":0},{"type":"string","enum":["latest"]}]}"#,
                description: "a height, or \"latest\"",
            },
            READ_OPTS,
        ],
        result: OBJECT,
        handler: Handler::Async(|p, c| Box::pin(read(p, c, 1, get_block, Pool::Blocking))),
    },
    MethodSpec {
        name: "ledger_getAccount",
        summary: "An account's balance and nonce at the head, with its Merkle proof; with proof, a bundle that proves it against the genesis validators.",
        params: &[
            ParamSpec {
                name: "address",
                required: true,
                schema: HASH_SCHEMA,
                description: "the account's public key, hex",
            },
            ParamSpec {
                name: "options",
                required: false,
                schema: r#"{"type":"object","additionalProperties":false,"properties":{"min_height":{"type":"integer","minimum":0},"proof":{"type":"boolean"},"height":{"type":"integer","minimum":0,"description":"the height whose state is wanted: this node holds the state at its head only, so another height is answered with error 1025"}}}"#,
                description: "read options: min_height, proof, height",
            },
        ],
        result: OBJECT,
        handler: Handler::Async(|p, c| Box::pin(get_account(p, c))),
    },
    MethodSpec {
        name: "ledger_status",
        summary: "The node's chain, head, view, peers, stable checkpoint and mempool.",
        params: &[READ_OPTS],
        result: OBJECT,
        handler: Handler::Async(|p, c| Box::pin(read(p, c, 0, status, Pool::Async))),
    },
    MethodSpec {
        name: "ledger_getEvidence",
        summary: "Equivocation evidence this node holds, for every validator or one.",
        params: &[
            ParamSpec {
                name: "signer",
                required: false,
                schema: r#"{"type":["integer","null"],"minimum":0}"#,
                description: "one validator's index (null: all)",
            },
            READ_OPTS,
        ],
        result: OBJECT,
        handler: Handler::Async(|p, c| Box::pin(read(p, c, 1, get_evidence, Pool::Async))),
    },
    MethodSpec {
        name: "ledger_subscribeBlocks",
        summary: "WebSocket: a `ledger_block` notification per committed block (with transaction hashes and statuses when the parameter is true).",
        params: &[ParamSpec {
            name: "with_transactions",
            required: false,
            schema: r#"{"type":"boolean"}"#,
            description: "include each transaction's hash and status",
        }],
        result: r#"{"type":"string","description":"the subscription id"}"#,
        handler: Handler::Subscription {
            unsubscribe: "ledger_unsubscribeBlocks",
        },
    },
    MethodSpec {
        name: "ledger_unsubscribeBlocks",
        summary: "Ends a block subscription.",
        params: &[ParamSpec {
            name: "subscription",
            required: true,
            schema: r#"{"type":"string"}"#,
            description: "the id ledger_subscribeBlocks returned",
        }],
        result: r#"{"type":"boolean"}"#,
        handler: Handler::Unsubscribe,
    },
    MethodSpec {
        name: "rpc.discover",
        summary: "This API as an OpenRPC document, generated from the table the server registers its methods from.",
        params: &[],
        result: r#"{"type":"object","description":"an OpenRPC 1.2.6 document"}"#,
        handler: Handler::Sync(|_, _| Ok(openrpc_document())),
    },
    MethodSpec {
        name: "ledger_getExecution",
        summary: "The execution result of a committed height (block id, state root, receipts root) and, once committed, the height of the block whose header certifies it.",
        params: &[
            ParamSpec {
                name: "height",
                required: true,
                schema: r#"{"type":"integer","minimum":1}"#,
                description: "a committed height",
            },
            READ_OPTS,
        ],
        result: OBJECT,
        handler: Handler::Async(|p, c| Box::pin(read(p, c, 1, get_execution, Pool::Async))),
    },
];

/// The names of the methods answered with a single result (counted and
/// timed in metrics).
pub fn method_names() -> Vec<&'static str> {
    API.iter()
        .filter(|m| matches!(m.handler, Handler::Sync(_) | Handler::Async(_)))
        .map(|m| m.name)
        .collect()
}

/// The OpenRPC document of [`API`].
pub fn openrpc_document() -> Value {
    let schema = |s: &str| serde_json::from_str::<Value>(s).unwrap_or_else(|_| json!({}));
    let methods: Vec<Value> = API
        .iter()
        .map(|m| {
            json!({
                "name": m.name,
                "summary": m.summary,
                "paramStructure": "by-position",
                "params": m.params.iter().map(|p| json!({
                    "name": p.name,
                    "required": p.required,
                    "description": p.description,
                    "schema": schema(p.schema),
                })).collect::<Vec<_>>(),
                "result": { "name": "result", "schema": schema(m.result) },
            })
        })
        .collect();
    json!({
        "openrpc": "1.2.6",
        "info": {
            "title": "Phalanx JSON-RPC",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "A Phalanx node's API. Errors carry stable codes (1001-1025); see the README.",
        },
        "methods": methods,
    })
}

type RpcResult = Result<Value, ErrorObjectOwned>;

fn module(
    shared: Arc<Shared>,
    ingress: mpsc::Sender<Submission>,
    forward: Option<Forward>,
) -> anyhow::Result<RpcModule<Ctx>> {
    let mut m = RpcModule::new(Ctx {
        shared,
        ingress,
        forward,
    });
    for spec in &API {
        let name = spec.name;
        match spec.handler {
            Handler::Sync(f) => {
                m.register_method(name, move |params, ctx, _| {
                    let started = Instant::now();
                    let res = f(params, ctx);
                    ctx.shared.metrics.rpc(name, res.is_ok(), started.elapsed());
                    res
                })?;
            }
            Handler::Async(f) => {
                m.register_async_method(name, move |params, ctx, _| async move {
                    let started = Instant::now();
                    let res = f(params, ctx.clone()).await;
                    ctx.shared.metrics.rpc(name, res.is_ok(), started.elapsed());
                    res
                })?;
            }
            Handler::Subscription { unsubscribe } => subscribe_blocks(&mut m, name, unsubscribe)?,
            Handler::Unsubscribe => {}
        }
    }
    Ok(m)
}

fn subscribe_blocks(
    m: &mut RpcModule<Ctx>,
    name: &'static str,
    unsubscribe: &'static str,
) -> anyhow::Result<()> {
    m.register_subscription(
        name,
        "ledger_block",
        unsubscribe,
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
    Ok(())
}

/// How long a read with `min_height` waits for this node to reach it.
pub const MIN_HEIGHT_WAIT: Duration = Duration::from_secs(10);
/// A `min_height` further than this above the head is answered at once:
/// no node commits that much within [`MIN_HEIGHT_WAIT`].
pub const MIN_HEIGHT_MAX_AHEAD: u64 = 100_000;
/// How long a read with a proof waits for the block that certifies the
/// head's execution result to commit (a few blocks after the head).
pub const PROOF_WAIT: Duration = Duration::from_secs(10);

/// The options object every read method takes.
#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadOpts {
    min_height: Option<u64>,
    #[serde(default)]
    proof: bool,
    height: Option<u64>,
}

/// The read options at position `pos` of `params` (absent or null: none).
fn read_opts(params: &Params<'_>, pos: usize) -> Result<ReadOpts, ErrorObjectOwned> {
    let Some(raw) = params.as_str() else {
        return Ok(ReadOpts::default());
    };
    let v: Value = serde_json::from_str(raw)
        .map_err(|e| err(jsonrpsee::types::error::INVALID_PARAMS_CODE, e.to_string()))?;
    match v.get(pos) {
        None | Some(Value::Null) => Ok(ReadOpts::default()),
        Some(o) => serde_json::from_value(o.clone())
            .map_err(|e| err(codes::BAD_PARAM, format!("options: {e}"))),
    }
}

/// Waits until this node has committed `min` (bounded), or says how far
/// behind it is.
async fn reach(ctx: &Ctx, min: Option<u64>) -> Result<(), ErrorObjectOwned> {
    let Some(min) = min else { return Ok(()) };
    let mut commits = ctx.shared.commits.subscribe();
    let behind = |h: u64| {
        ErrorObject::owned(
            codes::BEHIND,
            format!(
                "this node has committed height {h}, below min_height {min}; retry, or ask another node"
            ),
            Some(json!({ "height": h, "min_height": min })),
        )
    };
    let head = ctx.shared.store.head_height().0;
    if head >= min {
        return Ok(());
    }
    if min - head > MIN_HEIGHT_MAX_AHEAD {
        return Err(behind(head));
    }
    let wait = async {
        loop {
            match commits.recv().await {
                Ok(n) if n.height >= min => return Ok(()),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    if ctx.shared.store.head_height().0 >= min {
                        return Ok(());
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return Err(shutting_down()),
            }
        }
    };
    match tokio::time::timeout(MIN_HEIGHT_WAIT, wait).await {
        Ok(r) => r,
        Err(_) => Err(behind(ctx.shared.store.head_height().0)),
    }
}

/// Where a read runs once its `min_height` is reached.
#[derive(Clone, Copy)]
enum Pool {
    /// On the async worker that received it (cheap reads).
    Async,
    /// On the blocking pool, off the async workers that serve every other
    /// connection (a read that may decode megabytes).
    Blocking,
}

/// A read: waits for `min_height` (options at `pos`), then answers.
async fn read(
    params: Params<'static>,
    ctx: Arc<Ctx>,
    pos: usize,
    f: fn(Params<'_>, &Ctx, ReadOpts) -> RpcResult,
    pool: Pool,
) -> RpcResult {
    let opts = read_opts(&params, pos)?;
    reach(&ctx, opts.min_height).await?;
    match pool {
        Pool::Async => f(params, &ctx, opts),
        Pool::Blocking => {
            let c = ctx.clone();
            tokio::task::spawn_blocking(move || f(params, &c, opts))
                .await
                .map_err(internal)?
        }
    }
}

/// The first positional parameter, parsed.
fn first<T: serde::de::DeserializeOwned>(params: &Params<'_>) -> Result<T, ErrorObjectOwned> {
    let mut seq = params.sequence();
    seq.next()
}

/// The committed block certifying the execution result of `height`, with
/// its certificate, once one is committed.
fn certified_header(
    store: &phalanx_storage::Store,
    height: u64,
) -> Result<Option<crate::light::CertifiedHeader>, ErrorObjectOwned> {
    let Some(by) = store
        .certified_by(phalanx_consensus::Height(height))
        .map_err(internal)?
    else {
        return Ok(None);
    };
    let block = store.block(by).map_err(internal)?;
    let cert = store.cert(by).map_err(internal)?;
    Ok(match (block, cert) {
        (Some(b), Some(cert)) => Some(crate::light::CertifiedHeader {
            header: b.header,
            cert,
        }),
        _ => None,
    })
}

/// Waits (bounded) for the block certifying `height`'s execution result
/// to commit.
async fn await_certified(
    ctx: &Ctx,
    height: u64,
) -> Result<crate::light::CertifiedHeader, ErrorObjectOwned> {
    let mut commits = ctx.shared.commits.subscribe();
    let store = &ctx.shared.store;
    let wait = async {
        loop {
            if let Some(c) = certified_header(store, height)? {
                return Ok(c);
            }
            match commits.recv().await {
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return Err(shutting_down()),
            }
        }
    };
    match tokio::time::timeout(PROOF_WAIT, wait).await {
        Ok(r) => r,
        Err(_) => Err(err(
            codes::NOT_CERTIFIED,
            format!(
                "no committed block certifies the execution of height {height} yet (waited {} s); retry",
                PROOF_WAIT.as_secs()
            ),
        )),
    }
}

fn not_retained(store: &phalanx_storage::Store, what: String) -> ErrorObjectOwned {
    let from = store.first_retained_block().map(|h| h.0).unwrap_or(0);
    ErrorObject::owned(
        codes::NOT_RETAINED,
        format!("{what} is not retained: this node keeps heights {from} on"),
        Some(json!({ "retained_from": from })),
    )
}

/// What `ledger_getTransaction` answers for `hash`, with its record.
fn transaction_answer(
    ctx: &Ctx,
    hash: &Digest,
) -> Result<(Value, Option<TxRecord>), ErrorObjectOwned> {
    let hash = *hash;
    let store = &ctx.shared.store;
    let rec = store.transaction(&hash).map_err(internal)?;
    if let Some(rec) = &rec
        && rec.receipt.status == TxStatus::Applied
    {
        return Ok((committed_json(&hash, rec), Some(rec.clone())));
    }
    // A failure receipt is not final while the transaction is pending
    // again (a leader may have put it out of nonce order).
    if ctx.shared.pool().contains(&hash) {
        let mut v = json!({ "hash": hash.to_hex(), "status": "pending" });
        if let Some(rec) = &rec {
            v["last_failure"] = committed_json(&hash, rec);
        }
        return Ok((v, rec));
    }
    if let Some(rec) = rec {
        return Ok((committed_json(&hash, &rec), Some(rec)));
    }
    // Records go with their blocks: with history pruned, an unknown
    // hash may be one committed below what this node keeps.
    let from = store.first_retained_block().map_err(internal)?.0;
    if from > 1 {
        return Ok((
            json!({
                "hash": hash.to_hex(),
                "status": "not_retained",
                "retained_from": from,
                "message": format!(
                    "not pending and not in the blocks this node keeps (heights {from} on); \
                     a transaction committed below them has been pruned"
                ),
            }),
            None,
        ));
    }
    Ok((json!({ "hash": hash.to_hex(), "status": "unknown" }), None))
}

/// `ledger_getTransaction`, with the receipt's proof bundle when asked.
async fn get_transaction_proved(params: Params<'static>, ctx: Arc<Ctx>) -> RpcResult {
    let opts = read_opts(&params, 1)?;
    reach(&ctx, opts.min_height).await?;
    let hash: String = first(&params)?;
    let (mut v, rec) = transaction_answer(&ctx, &digest_param(&hash)?)?;
    let store = &ctx.shared.store;
    let Some(rec) = rec.filter(|_| opts.proof && v["status"] == "committed") else {
        return Ok(v);
    };
    let height = phalanx_consensus::Height(rec.height);
    let receipts = store
        .receipts(height)
        .map_err(internal)?
        .ok_or_else(|| not_retained(store, format!("the receipts of height {}", rec.height)))?;
    let proof = phalanx_ledger::prove_receipt(&receipts, rec.index as usize).ok_or_else(|| {
        internal(format!(
            "transaction index {} past the {} receipts of height {}",
            rec.index,
            receipts.len(),
            rec.height
        ))
    })?;
    let receipt = receipts[rec.index as usize].clone();
    let certified = await_certified(&ctx, rec.height).await?;
    v["proof"] = json!(crate::light::to_hex(&crate::light::ReceiptBundle {
        height,
        receipt,
        proof,
        certified,
    }));
    Ok(v)
}

fn get_block(params: Params<'_>, ctx: &Ctx, opts: ReadOpts) -> RpcResult {
    let which: Value = first(&params)?;
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
    let head = store.head().height;
    let block = match store
        .block(phalanx_consensus::Height(height))
        .map_err(internal)?
    {
        Some(b) => b,
        None if height <= head => {
            return Err(not_retained(store, format!("block {height}")));
        }
        None => {
            return Err(err(
                codes::NOT_FOUND,
                format!("no block at height {height}: this node has committed up to {head}"),
            ));
        }
    };
    let cert = store
        .cert(phalanx_consensus::Height(height))
        .map_err(internal)?;
    let txs: Vec<String> = decode_payload(&block.payload)
        .map(|items| {
            items
                .iter()
                .map(|i| crate::light::item_hash(i).to_hex())
                .collect()
        })
        .unwrap_or_default();
    let h = &block.header;
    let mut v = json!({
        "height": height,
        "block_id": block.id().to_hex(),
        "parent": h.parent.to_hex(),
        "view": h.view.0,
        "proposer": h.proposer.0,
        "timestamp_ms": h.timestamp_ms,
        "payload_digest": h.payload_digest.to_hex(),
        "transactions": txs,
        "certifies": h.exec.iter().map(exec_json).collect::<Vec<_>>(),
        "certificate": cert.as_ref().map(|c| json!({
            "view": c.payload.view.0,
            "block_id": c.payload.block_id.to_hex(),
            "signers": c.signers.iter().map(|i| i.0).collect::<Vec<_>>(),
            "bytes": hex::encode(encode(&c)),
        })),
    });
    // The state after this block, once a committed header certifies it:
    // this node's own result, which equals the certified one (it checked
    // it, or voted on it), without reading the certifying block.
    let h = phalanx_consensus::Height(height);
    let certified = height > 0 && store.certified_by(h).map_err(internal)?.is_some();
    v["certified_state_root"] = json!(if certified {
        store
            .exec_result(h)
            .map_err(internal)?
            .map(|r| r.state_root.to_hex())
    } else {
        None
    });
    if opts.proof {
        let cert = cert.ok_or_else(|| internal(format!("block {height} has no certificate")))?;
        let execution = if certified {
            certified_header(store, height)?
        } else {
            None
        };
        v["proof"] = json!(crate::light::to_hex(&crate::light::BlockBundle {
            block,
            cert,
            execution,
        }));
    }
    Ok(v)
}

fn exec_json(r: &phalanx_consensus::ExecResult) -> Value {
    json!({
        "height": r.height.0,
        "block_id": r.block_id.to_hex(),
        "state_root": r.state_root.to_hex(),
        "receipts_root": r.receipts_root.to_hex(),
    })
}

fn get_execution(params: Params<'_>, ctx: &Ctx, _: ReadOpts) -> RpcResult {
    let height: u64 = first(&params)?;
    let store = &ctx.shared.store;
    let head = store.head().height;
    if height == 0 || height > head {
        return Err(err(
            codes::NOT_FOUND,
            format!("no execution result for height {height}: this node has executed 1 to {head}"),
        ));
    }
    let r = store
        .exec_result(phalanx_consensus::Height(height))
        .map_err(internal)?
        .ok_or_else(|| not_retained(store, format!("the execution result of height {height}")))?;
    let by = store
        .certified_by(phalanx_consensus::Height(height))
        .map_err(internal)?;
    let mut v = exec_json(&r);
    v["certified_by"] = json!(by.map(|h| h.0));
    Ok(v)
}

async fn get_account(params: Params<'static>, ctx: Arc<Ctx>) -> RpcResult {
    let opts = read_opts(&params, 1)?;
    reach(&ctx, opts.min_height).await?;
    let addr: String = first(&params)?;
    let addr = address_param(&addr)?;
    let store = &ctx.shared.store;
    let (head, account, proof) = store.account_with_proof(&addr).map_err(internal)?;
    if let Some(h) = opts.height
        && h != head.height
    {
        return Err(ErrorObject::owned(
            codes::NOT_RETAINED,
            format!(
                "the state at height {h} is not retained: this node holds the state at its head only (height {}); ask without `height`, with `min_height` to read at or above a height",
                head.height
            ),
            Some(json!({ "head": head.height })),
        ));
    }
    #[cfg(feature = "byzantine")]
    let account = crate::byzantine::read_account(&addr, account);
    let a = account.unwrap_or_default();
    let mut v = json!({
        "address": addr.to_hex(),
        "exists": account.is_some(),
        "balance": a.balance,
        "nonce": a.nonce,
        "height": head.height,
        "state_root": head.state_root.to_hex(),
        "proof": hex::encode(proof.to_bytes()),
    });
    if opts.proof {
        if head.height == 0 {
            return Err(err(
                codes::NOT_CERTIFIED,
                "the genesis state is given by the genesis file, not certified by a quorum",
            ));
        }
        let certified = await_certified(&ctx, head.height).await?;
        v["certified_proof"] = json!(crate::light::to_hex(&crate::light::AccountBundle {
            height: phalanx_consensus::Height(head.height),
            account,
            proof,
            certified,
        }));
    }
    Ok(v)
}

fn get_evidence(params: Params<'_>, ctx: &Ctx, _: ReadOpts) -> RpcResult {
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
}

fn status(_: Params<'_>, ctx: &Ctx, _: ReadOpts) -> RpcResult {
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
    if let Some(f) = &ctx.forward {
        return f.call("ledger_submitTransactions", vec![json!(txs)]).await;
    }
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
    if let Some(f) = &ctx.forward {
        let mut p = vec![json!(tx_hex)];
        if let Some(w) = wait {
            p.push(json!(w));
        }
        return f.call("ledger_submitTransaction", p).await;
    }
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
