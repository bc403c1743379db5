//! Client-side balancing over the replicas of one tier.
//!
//! A [`Pool`] holds one lazily connected [`Channel`] per resolved address of its targets
//! (`host:port`; a name that resolves to several addresses, as a Kubernetes headless Service
//! does, is several replicas). Requests take replicas round-robin. A call that fails with
//! UNAVAILABLE or a local transport error is retried on the next replica, each replica at most
//! once per request; when every replica failed the caller gets UNAVAILABLE naming the tier.
//! Replicas that just failed are tried last for [`EJECT_FOR`] (passive ejection), so a dead pod
//! does not cost every other request a connect attempt until DNS drops it.
//!
//! Addresses are re-resolved periodically ([`spawn_refresh`]): new addresses become replicas,
//! vanished ones are dropped (calls in flight on them finish), and a target whose lookup fails
//! keeps its last known addresses. Follows the idea of tonic's `dynamic_load_balance` example,
//! but owns the retry decision, which tower's balancer cannot make for streaming calls.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Mutex, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::error::GatewayError;

/// How long a replica that failed with a transport error is tried only after the others.
pub const EJECT_FOR: Duration = Duration::from_secs(5);
/// Time allowed to open a TCP connection to a replica.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The tier a pool talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Vision,
    Decoder,
}

impl Tier {
    pub fn name(self) -> &'static str {
        match self {
            Self::Vision => "vision",
            Self::Decoder => "decoder",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One `--vision`/`--decoder` value: a host (name or IP literal) and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    host: String,
    port: u16,
}

impl Target {
    /// Parses `host:port`, `http://host:port` or `[v6]:port`.
    ///
    /// # Errors
    /// A scheme other than `http`, a path, a missing host or an invalid port.
    pub fn parse(value: &str) -> Result<Self, String> {
        let rest = match value.split_once("://") {
            None => value,
            Some(("http", rest)) => rest,
            Some((scheme, _)) => {
                return Err(format!(
                    "scheme `{scheme}` is not supported (use http or none)"
                ));
            }
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') {
            return Err("expected host:port without a path".into());
        }
        let Some((host, port)) = rest.rsplit_once(':') else {
            return Err("expected host:port".into());
        };
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() {
            return Err("missing host".into());
        }
        let port = port
            .parse::<u16>()
            .map_err(|_| format!("invalid port `{port}`"))?;
        Ok(Self {
            host: host.to_string(),
            port,
        })
    }

    fn resolve_blocking(&self) -> std::io::Result<Vec<SocketAddr>> {
        Ok((self.host.as_str(), self.port).to_socket_addrs()?.collect())
    }

    async fn resolve(&self) -> std::io::Result<Vec<SocketAddr>> {
        Ok(tokio::net::lookup_host((self.host.as_str(), self.port))
            .await?
            .collect())
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// One replica: an address and its lazily connected channel.
#[derive(Debug)]
pub struct Replica {
    pub addr: SocketAddr,
    channel: Channel,
    /// Milliseconds since the pool's epoch until which this replica is tried last; 0 = healthy.
    ejected_until_ms: AtomicU64,
}

/// The replicas of one tier.
#[derive(Debug)]
pub struct Pool {
    tier: Tier,
    targets: Vec<Target>,
    epoch: Instant,
    next: AtomicUsize,
    replicas: watch::Sender<Arc<Vec<Arc<Replica>>>>,
    /// Last successful resolution of each target (same order as `targets`); refresh only.
    resolved: Mutex<Vec<Vec<SocketAddr>>>,
}

impl Pool {
    /// Resolves `targets` (blocking DNS) and creates a lazy channel per address. A target that
    /// does not resolve yet (e.g. a headless Service with no ready pod) is only logged: it is
    /// retried on every refresh. Must run inside a Tokio runtime (channels spawn a worker).
    pub fn new(tier: Tier, targets: Vec<Target>) -> Self {
        let resolved: Vec<Vec<SocketAddr>> = targets
            .iter()
            .map(|t| match t.resolve_blocking() {
                Ok(addrs) => addrs,
                Err(e) => {
                    tracing::warn!(%tier, target = %t, error = %e, "cannot resolve replica address yet");
                    Vec::new()
                }
            })
            .collect();
        let pool = Self {
            tier,
            targets,
            epoch: Instant::now(),
            next: AtomicUsize::new(0),
            replicas: watch::Sender::new(Arc::new(Vec::new())),
            resolved: Mutex::new(resolved.clone()),
        };
        pool.set_addresses(resolved.into_iter().flatten());
        pool
    }

    pub fn tier(&self) -> Tier {
        self.tier
    }

    /// Addresses of the current replicas, sorted.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.replicas.borrow().iter().map(|r| r.addr).collect()
    }

    /// Resolves every target again and applies the result; a target whose lookup fails or
    /// returns nothing keeps its previous addresses.
    pub async fn refresh(&self) {
        let mut resolved = self.resolved.lock().await;
        resolved.resize(self.targets.len(), Vec::new());
        for (target, last) in self.targets.iter().zip(resolved.iter_mut()) {
            match target.resolve().await {
                Ok(addrs) if !addrs.is_empty() => *last = addrs,
                Ok(_) => {
                    tracing::warn!(tier = %self.tier, %target, "no addresses; keeping the last known")
                }
                Err(e) => {
                    tracing::warn!(tier = %self.tier, %target, error = %e, "cannot resolve; keeping the last known")
                }
            }
        }
        self.set_addresses(resolved.iter().flatten().copied());
    }

    /// Makes `addrs` the replica set: existing replicas (and their connections) are kept, new
    /// addresses get a lazy channel, others are dropped.
    pub fn set_addresses(&self, addrs: impl IntoIterator<Item = SocketAddr>) {
        let current: BTreeMap<SocketAddr, Arc<Replica>> = self
            .replicas
            .borrow()
            .iter()
            .map(|r| (r.addr, Arc::clone(r)))
            .collect();
        let mut next = BTreeMap::new();
        for addr in addrs {
            if next.contains_key(&addr) {
                continue;
            }
            let replica = match current.get(&addr) {
                Some(r) => Arc::clone(r),
                None => match connect_lazy(addr) {
                    Ok(channel) => Arc::new(Replica {
                        addr,
                        channel,
                        ejected_until_ms: AtomicU64::new(0),
                    }),
                    Err(e) => {
                        tracing::error!(tier = %self.tier, %addr, error = %e, "invalid replica endpoint");
                        continue;
                    }
                },
            };
            next.insert(addr, replica);
        }
        let added = next.keys().filter(|a| !current.contains_key(a)).count();
        let removed = current.keys().filter(|a| !next.contains_key(a)).count();
        if added > 0 || removed > 0 {
            let addrs: Vec<_> = next.keys().map(ToString::to_string).collect();
            tracing::info!(tier = %self.tier, added, removed, replicas = ?addrs, "replica set changed");
        }
        self.replicas
            .send_replace(Arc::new(next.into_values().collect()));
    }

    /// The replicas one request may try, in order: round-robin start, ejected ones last.
    fn order(&self) -> Vec<Arc<Replica>> {
        let replicas = Arc::clone(&*self.replicas.borrow());
        if replicas.is_empty() {
            return Vec::new();
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % replicas.len();
        let now = self.now_ms();
        let (healthy, ejected): (Vec<_>, Vec<_>) = replicas[start..]
            .iter()
            .chain(&replicas[..start])
            .cloned()
            .partition(|r| r.ejected_until_ms.load(Ordering::Relaxed) <= now);
        healthy.into_iter().chain(ejected).collect()
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Runs `call` on one replica after another until one succeeds or fails with an error that
    /// is not a transport failure ([`is_retryable`]).
    ///
    /// `call` must report success only once nothing retryable can happen any more (e.g. the
    /// first generated token arrived): a later failure cannot be retried.
    ///
    /// # Errors
    /// [`GatewayError::NoReplicas`] when nothing resolved; [`GatewayError::Peer`] with the
    /// replica's own status for a non-retryable failure; [`GatewayError::TierUnavailable`]
    /// when every replica failed with a retryable one.
    pub async fn call<T, F, Fut>(&self, request_id: &str, mut call: F) -> Result<T, GatewayError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let order = self.order();
        if order.is_empty() {
            let targets: Vec<_> = self.targets.iter().map(ToString::to_string).collect();
            return Err(GatewayError::NoReplicas {
                tier: self.tier,
                targets: targets.join(", "),
            });
        }
        let mut last = None;
        let mut busy = None;
        let mut tried = 0;
        for replica in order {
            tried += 1;
            tracing::debug!(request_id, tier = %self.tier, replica = %replica.addr, "calling");
            match call(replica.channel.clone()).await {
                Ok(value) => {
                    replica.ejected_until_ms.store(0, Ordering::Relaxed);
                    return Ok(value);
                }
                Err(status) if is_busy(&status) => {
                    // Full, not broken: try the next replica but do not eject this one.
                    tracing::debug!(
                        request_id,
                        tier = %self.tier,
                        replica = %replica.addr,
                        error = %status.message(),
                        "replica busy; trying the next"
                    );
                    busy = Some(status);
                }
                Err(status) if is_retryable(&status) => {
                    tracing::warn!(
                        request_id,
                        tier = %self.tier,
                        replica = %replica.addr,
                        code = ?status.code(),
                        error = %status.message(),
                        "replica failed; trying the next"
                    );
                    let until = self.now_ms().saturating_add(duration_ms(EJECT_FOR));
                    replica.ejected_until_ms.store(until, Ordering::Relaxed);
                    last = Some(status);
                }
                Err(status) => {
                    return Err(GatewayError::Peer {
                        tier: self.tier,
                        status,
                    });
                }
            }
        }
        if let Some(status) = busy {
            // Every reachable replica was full: pass the overload on so the client backs off.
            return Err(GatewayError::Peer {
                tier: self.tier,
                status,
            });
        }
        Err(GatewayError::TierUnavailable {
            tier: self.tier,
            tried,
            last: last.map(|s| s.message().to_string()).unwrap_or_default(),
        })
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn connect_lazy(addr: SocketAddr) -> Result<Channel, tonic::transport::Error> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .connect_lazy())
}

/// Whether a failed call may be retried on another replica: the replica said UNAVAILABLE
/// (down, warming up, draining), or the status was made locally from a transport failure
/// (connection refused or reset; such statuses carry a source error, statuses received from a
/// peer never do).
pub fn is_retryable(status: &Status) -> bool {
    status.code() == Code::Unavailable || std::error::Error::source(status).is_some()
}

/// Whether a replica refused a call for lack of room (its queue or cache is full): another
/// replica may have room, and this one is healthy.
pub fn is_busy(status: &Status) -> bool {
    status.code() == Code::ResourceExhausted && std::error::Error::source(status).is_none()
}

/// Re-resolves every pool each `interval` until `shutdown`.
pub fn spawn_refresh(pools: Vec<Arc<Pool>>, interval: Duration, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await; // the first tick is immediate; the pools were just resolved
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            for pool in &pools {
                pool.refresh().await;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn targets_parse_with_or_without_scheme() {
        let t = Target::parse("http://vision.ns.svc:50051").unwrap();
        assert_eq!(t.to_string(), "vision.ns.svc:50051");
        assert_eq!(Target::parse("10.0.0.1:7").unwrap().port, 7);
        assert_eq!(Target::parse("[::1]:9").unwrap().to_string(), "[::1]:9");
        assert!(Target::parse("https://x:1").unwrap_err().contains("https"));
        assert!(Target::parse("x").unwrap_err().contains("host:port"));
        assert!(Target::parse("x:99999").unwrap_err().contains("port"));
        assert!(Target::parse(":80").unwrap_err().contains("host"));
    }

    #[tokio::test]
    async fn set_addresses_keeps_existing_replicas_and_drops_vanished_ones() {
        let pool = Pool::new(Tier::Vision, Vec::new());
        pool.set_addresses([addr(1), addr(2)]);
        let before = Arc::clone(&pool.replicas.borrow()[0]);
        pool.set_addresses([addr(3), addr(1), addr(1)]);
        assert_eq!(pool.addresses(), [addr(1), addr(3)]);
        assert!(Arc::ptr_eq(&before, &pool.replicas.borrow()[0]));
    }

    #[tokio::test]
    async fn requests_start_round_robin_and_try_ejected_replicas_last() {
        let pool = Pool::new(Tier::Decoder, Vec::new());
        pool.set_addresses([addr(1), addr(2), addr(3)]);
        let firsts: Vec<_> = (0..4).map(|_| pool.order()[0].addr).collect();
        assert_eq!(firsts, [addr(1), addr(2), addr(3), addr(1)]);
        pool.replicas.borrow()[1]
            .ejected_until_ms
            .store(u64::MAX, Ordering::Relaxed);
        let order: Vec<_> = pool.order().iter().map(|r| r.addr).collect();
        assert_eq!(order, [addr(3), addr(1), addr(2)]);
    }

    #[tokio::test]
    async fn a_pool_without_replicas_fails_naming_the_tier_and_targets() {
        let pool = Pool::new(Tier::Vision, Vec::new());
        let err = pool
            .call("r", |_| async { Ok::<(), Status>(()) })
            .await
            .unwrap_err();
        let status = Status::from(err);
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.message().contains("vision tier"), "{status:?}");
    }

    #[tokio::test]
    async fn non_retryable_errors_stop_at_the_first_replica() {
        let pool = Pool::new(Tier::Vision, Vec::new());
        pool.set_addresses([addr(1), addr(2)]);
        let mut calls = 0;
        let err = pool
            .call("r", |_| {
                calls += 1;
                async { Err::<(), _>(Status::invalid_argument("bad image")) }
            })
            .await
            .unwrap_err();
        assert_eq!(calls, 1);
        let status = Status::from(err);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "bad image");
    }

    #[tokio::test]
    async fn retryable_errors_try_each_replica_once_then_name_the_tier() {
        let pool = Pool::new(Tier::Decoder, Vec::new());
        pool.set_addresses([addr(1), addr(2)]);
        let mut calls = 0;
        let err = pool
            .call("r", |_| {
                calls += 1;
                async { Err::<(), _>(Status::unavailable("draining")) }
            })
            .await
            .unwrap_err();
        assert_eq!(calls, 2);
        let status = Status::from(err);
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(
            status.message(),
            "decoder tier unavailable: 2 replicas tried, last error: draining"
        );
    }

    #[tokio::test]
    async fn a_busy_replica_passes_the_call_on_without_being_ejected() {
        let pool = Pool::new(Tier::Vision, Vec::new());
        pool.set_addresses([addr(1), addr(2)]);
        let mut calls = 0;
        let value = pool
            .call("r", |_| {
                calls += 1;
                let first = calls == 1;
                async move {
                    if first {
                        Err(Status::resource_exhausted("vision queue full"))
                    } else {
                        Ok(7)
                    }
                }
            })
            .await
            .unwrap();
        assert_eq!((value, calls), (7, 2));
        let ejected = pool
            .replicas
            .borrow()
            .iter()
            .filter(|r| r.ejected_until_ms.load(Ordering::Relaxed) > 0)
            .count();
        assert_eq!(ejected, 0, "busy is not broken");

        // All full: the client gets RESOURCE_EXHAUSTED, not UNAVAILABLE.
        let err = pool
            .call("r", |_| async {
                Err::<(), _>(Status::resource_exhausted("vision queue full"))
            })
            .await
            .unwrap_err();
        let status = Status::from(err);
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(status.message(), "vision queue full");
    }
}
