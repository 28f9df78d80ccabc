//! Talking to the nodes: JSON-RPC over HTTP (jsonrpsee) and plain HTTP
//! GETs (ureq) for probes, metrics and the Prometheus API.

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use jsonrpsee_core::client::ClientT;
use jsonrpsee_core::params::ArrayParams;
use jsonrpsee_http_client::{HttpClient, HttpClientBuilder};
use serde_json::Value;

/// Largest response the tool accepts, bytes (a block notice with receipts
/// of a full block is well under this).
pub const MAX_RESPONSE_BYTES: u32 = 64 << 20;

/// Requests one client has in flight at once. Each may hold a connection,
/// and a node gives one address at most `rpc_connections_per_ip` (64 by
/// default): past that, connections are refused with HTTP 429. Kept well
/// under it, since the tool's clients of one node share the address.
pub const CLIENT_CONCURRENCY: usize = 16;

/// A JSON-RPC client for `url`.
pub fn rpc_client(url: &str, timeout: Duration) -> Result<HttpClient> {
    HttpClientBuilder::default()
        .request_timeout(timeout)
        .max_response_size(MAX_RESPONSE_BYTES)
        .max_concurrent_requests(CLIENT_CONCURRENCY)
        .build(url)
        .with_context(|| format!("JSON-RPC client for {url}"))
}

/// The node's error code for a client address over its request rate.
pub const RATE_LIMITED: i32 = 1021;
/// How long a call keeps retrying while its address is rate-limited.
const RATE_LIMIT_PATIENCE: Duration = Duration::from_secs(60);

/// Whether `e` refused the call for the address's share of the node
/// (request rate, code 1021; connections, HTTP 429): worth retrying, since
/// every client of a local testnet shares one address.
pub fn rate_limited(e: &jsonrpsee_core::ClientError) -> bool {
    match e {
        jsonrpsee_core::ClientError::Call(e) => e.code() == RATE_LIMITED,
        jsonrpsee_core::ClientError::Transport(t) => matches!(
            t.downcast_ref::<jsonrpsee_http_client::transport::Error>(),
            Some(jsonrpsee_http_client::transport::Error::Rejected { status_code: 429 })
        ),
        _ => false,
    }
}

/// One JSON-RPC call. A call refused for the address's share of the node
/// ([`rate_limited`]) is retried with backoff; any other error is
/// returned.
pub async fn call(client: &HttpClient, method: &str, params: Vec<Value>) -> Result<Value> {
    let mut p = ArrayParams::new();
    for v in params {
        p.insert(v).map_err(|e| anyhow!("params: {e}"))?;
    }
    let started = std::time::Instant::now();
    let mut wait = Duration::from_millis(20);
    loop {
        match client.request::<Value, _>(method, p.clone()).await {
            Err(e) if rate_limited(&e) && started.elapsed() < RATE_LIMIT_PATIENCE => {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(1));
            }
            res => return res.map_err(|e| anyhow!("{method}: {e}")),
        }
    }
}

/// One JSON-RPC call to `url` with a fresh client.
pub async fn call_url(url: &str, method: &str, params: Vec<Value>) -> Result<Value> {
    let c = rpc_client(url, Duration::from_secs(10))?;
    call(&c, method, params).await
}

/// A plain HTTP GET: (status, body). Non-2xx statuses are answers, not
/// errors; an unreachable server is an error.
pub fn http_get(url: &str, timeout: Duration) -> Result<(u16, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent
        .get(url)
        .call()
        .with_context(|| format!("GET {url}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(u64::from(MAX_RESPONSE_BYTES))
        .read_to_string()
        .with_context(|| format!("GET {url}: reading the body"))?;
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonrpsee_core::ClientError;
    use jsonrpsee_http_client::transport::Error as Transport;
    use jsonrpsee_http_client::types::ErrorObjectOwned;

    #[test]
    fn only_refusals_for_the_address_share_are_retried() {
        let call = |code| ClientError::Call(ErrorObjectOwned::owned(code, "x", None::<()>));
        let http =
            |status_code| ClientError::Transport(Box::new(Transport::Rejected { status_code }));
        assert!(rate_limited(&call(RATE_LIMITED)));
        assert!(rate_limited(&http(429)));
        // A full admission queue, a bad transaction, a server error: not.
        assert!(!rate_limited(&call(1020)));
        assert!(!rate_limited(&call(1018)));
        assert!(!rate_limited(&http(500)));
        assert!(!rate_limited(&ClientError::RequestTimeout));
    }
}
