//! Per-address bounds on the JSON-RPC server: connections open at once and
//! requests per second, for each client IP address.
//!
//! This module owns the accounting ([`AddressLimits`]) and the RPC
//! middleware that spends it ([`RateLimited`]); the server's accept loop
//! (`rpc::start`) asks it before serving a connection. It never looks at
//! what a request asks for: every call, and every call inside a batch,
//! costs one token.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use jsonrpsee::MethodResponse;
use jsonrpsee::core::middleware::{Batch, BatchEntry, BatchEntryErr, Notification, RpcServiceT};
use jsonrpsee::types::{ErrorObject, Request};

use crate::metrics::Metrics;
use crate::rpc::codes;

/// Connections one address may hold open at once (default).
pub const DEFAULT_CONNECTIONS_PER_IP: u32 = 64;
/// Requests one address may make per second, sustained (default).
pub const DEFAULT_REQUESTS_PER_SEC: u32 = 2_000;
/// Seconds of the sustained rate an address may spend at once.
pub const BURST_SECONDS: u32 = 2;
/// Addresses whose request buckets are remembered; past it, full buckets
/// (addresses that have been quiet for a while) are forgotten first.
pub const MAX_TRACKED_ADDRESSES: usize = 65_536;

/// The bounds, from the node's config.
#[derive(Clone, Copy, Debug)]
pub struct RpcLimits {
    /// Connections per address.
    pub connections_per_ip: u32,
    /// Requests per second per address.
    pub requests_per_sec: u32,
}

impl Default for RpcLimits {
    fn default() -> Self {
        RpcLimits {
            connections_per_ip: DEFAULT_CONNECTIONS_PER_IP,
            requests_per_sec: DEFAULT_REQUESTS_PER_SEC,
        }
    }
}

/// A token bucket: `rate` tokens a second, at most `rate * BURST_SECONDS`.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Per-address connection counts and request buckets, shared by every
/// connection of the server.
#[derive(Debug)]
pub struct AddressLimits {
    limits: RpcLimits,
    connections: Mutex<HashMap<IpAddr, u32>>,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

/// One open connection, counted against its address until dropped.
#[derive(Debug)]
pub struct ConnectionSlot {
    limits: Arc<AddressLimits>,
    ip: IpAddr,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut c = self
            .limits
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = c.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.remove(&self.ip);
            }
        }
    }
}

impl AddressLimits {
    /// Accounting for `limits`.
    pub fn new(limits: RpcLimits) -> Arc<AddressLimits> {
        Arc::new(AddressLimits {
            limits,
            connections: Mutex::default(),
            buckets: Mutex::default(),
        })
    }

    /// A slot for a new connection from `ip`, or `None` when the address
    /// holds its share already.
    pub fn connect(self: &Arc<Self>, ip: IpAddr) -> Option<ConnectionSlot> {
        let mut c = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        let n = c.entry(ip).or_insert(0);
        if *n >= self.limits.connections_per_ip {
            return None;
        }
        *n += 1;
        Some(ConnectionSlot {
            limits: self.clone(),
            ip,
        })
    }

    /// Spends one request of `ip`'s at `now`; false when its bucket is
    /// empty.
    pub fn take(&self, ip: IpAddr, now: Instant) -> bool {
        let rate = f64::from(self.limits.requests_per_sec);
        let cap = rate * f64::from(BURST_SECONDS);
        let mut b = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if b.len() >= MAX_TRACKED_ADDRESSES && !b.contains_key(&ip) {
            // A full bucket is what a forgotten address starts with again.
            b.retain(|_, k| {
                k.tokens + now.saturating_duration_since(k.at).as_secs_f64() * rate < cap
            });
            if b.len() >= MAX_TRACKED_ADDRESSES {
                return false;
            }
        }
        let k = b.entry(ip).or_insert(Bucket {
            tokens: cap,
            at: now,
        });
        let refill = now.saturating_duration_since(k.at).as_secs_f64() * rate;
        k.tokens = (k.tokens + refill).min(cap);
        k.at = now;
        if k.tokens < 1.0 {
            return false;
        }
        k.tokens -= 1.0;
        true
    }
}

/// The error a client over its request rate gets.
pub fn rate_limited() -> ErrorObject<'static> {
    ErrorObject::owned(
        codes::RATE_LIMITED,
        "too many requests from this address; retry later",
        None::<()>,
    )
}

/// RPC middleware charging every call of one connection to its address.
#[derive(Clone)]
pub struct RateLimited<S> {
    inner: S,
    limits: Arc<AddressLimits>,
    ip: IpAddr,
    metrics: Arc<Metrics>,
}

impl<S> RateLimited<S> {
    /// Wraps `inner` for a connection from `ip`.
    pub fn new(inner: S, limits: Arc<AddressLimits>, ip: IpAddr, metrics: Arc<Metrics>) -> Self {
        RateLimited {
            inner,
            limits,
            ip,
            metrics,
        }
    }

    fn take(&self, now: Instant) -> bool {
        let ok = self.limits.take(self.ip, now);
        if !ok {
            self.metrics.rpc_refused("rate_limited");
        }
        ok
    }
}

impl<S> RpcServiceT for RateLimited<S>
where
    S: RpcServiceT<
            MethodResponse = MethodResponse,
            BatchResponse = MethodResponse,
            NotificationResponse = MethodResponse,
        > + Send
        + Sync
        + Clone
        + 'static,
{
    type MethodResponse = MethodResponse;
    type NotificationResponse = MethodResponse;
    type BatchResponse = MethodResponse;

    fn call<'a>(&self, req: Request<'a>) -> impl Future<Output = MethodResponse> + Send + 'a {
        let allowed = self.take(Instant::now());
        let inner = self.inner.clone();
        async move {
            if allowed {
                inner.call(req).await
            } else {
                MethodResponse::error(req.id, rate_limited())
            }
        }
    }

    fn batch<'a>(&self, mut batch: Batch<'a>) -> impl Future<Output = MethodResponse> + Send + 'a {
        let now = Instant::now();
        for entry in batch.iter_mut() {
            let refused = match entry {
                Ok(BatchEntry::Call(req)) if !self.take(now) => {
                    Some(BatchEntryErr::new(req.id.clone(), rate_limited()))
                }
                _ => None,
            };
            if let Some(e) = refused {
                *entry = Err(e);
            }
        }
        let inner = self.inner.clone();
        async move { inner.batch(batch).await }
    }

    fn notification<'a>(
        &self,
        n: Notification<'a>,
    ) -> impl Future<Output = MethodResponse> + Send + 'a {
        let allowed = self.take(Instant::now());
        let inner = self.inner.clone();
        async move {
            if allowed {
                inner.notification(n).await
            } else {
                MethodResponse::notification()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn connections_are_counted_per_address_and_given_back() {
        let l = AddressLimits::new(RpcLimits {
            connections_per_ip: 2,
            requests_per_sec: 10,
        });
        let a = l.connect(ip(1)).unwrap();
        let _b = l.connect(ip(1)).unwrap();
        assert!(l.connect(ip(1)).is_none(), "a third from one address");
        assert!(
            l.connect(ip(2)).is_some(),
            "another address is not affected"
        );
        drop(a);
        assert!(l.connect(ip(1)).is_some(), "the slot comes back");
    }

    #[test]
    fn requests_spend_a_bucket_that_refills_at_the_rate() {
        let l = AddressLimits::new(RpcLimits {
            connections_per_ip: 2,
            requests_per_sec: 10,
        });
        let t0 = Instant::now();
        let burst = 10 * BURST_SECONDS as usize;
        assert!((0..burst).all(|_| l.take(ip(1), t0)));
        assert!(!l.take(ip(1), t0), "past the burst");
        assert!(l.take(ip(2), t0), "another address has its own");
        // A tenth of a second buys one request at 10 a second.
        assert!(l.take(ip(1), t0 + Duration::from_millis(100)));
        assert!(!l.take(ip(1), t0 + Duration::from_millis(100)));
        // Never more than the burst, however long the wait.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(
            (0..2 * burst).filter(|_| l.take(ip(1), later)).count(),
            burst
        );
    }
}
