//! Admission control: what a node lets in at a peak. Open sockets of any kind, new streams
//! per second (a flash crowd or a reconnect storm arrives at a rate the node can take),
//! connections per client IP, and
//! published messages per second per API key and per namespace. A refusal is cheap, says
//! when to come back (`Retry-After`) and changes nothing.

use super::error::ApiError;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A token bucket: `rate` tokens a second, holding at most `burst`.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    pub fn new(rate: f64, burst: f64) -> Self {
        let burst = burst.max(1.0);
        Self {
            rate: rate.max(f64::MIN_POSITIVE),
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Takes `n` tokens (a request larger than the burst needs a full bucket), or says how
    /// long until they would be there; a refusal takes nothing.
    pub fn try_take(&self, n: f64) -> Result<(), Duration> {
        let n = n.min(self.burst);
        let mut g = self.state.lock();
        let now = Instant::now();
        let (tokens, last) = *g;
        let tokens = (tokens + now.duration_since(last).as_secs_f64() * self.rate).min(self.burst);
        if tokens >= n {
            *g = (tokens - n, now);
            Ok(())
        } else {
            *g = (tokens, now);
            Err(Duration::from_secs_f64((n - tokens) / self.rate))
        }
    }
}

/// Open connections per client IP, capped.
pub struct IpSlots {
    cap: u32,
    shards: Vec<Mutex<HashMap<IpAddr, u32>>>,
}

const IP_SHARDS: usize = 16;

impl IpSlots {
    pub fn new(cap: u32) -> Arc<Self> {
        Arc::new(Self {
            cap: cap.max(1),
            shards: (0..IP_SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        })
    }

    fn shard(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, u32>> {
        let h = match ip {
            IpAddr::V4(a) => u32::from(*a) as usize,
            IpAddr::V6(a) => (u128::from(*a) as usize) ^ ((u128::from(*a) >> 64) as usize),
        };
        &self.shards[h % IP_SHARDS]
    }

    /// A slot for one more connection from `ip`, held until dropped; `None` at the cap.
    pub fn enter(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        let mut g = self.shard(&ip).lock();
        let n = g.entry(ip).or_insert(0);
        if *n >= self.cap {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            slots: self.clone(),
            ip,
        })
    }
}

/// One connection counted against its IP.
pub struct IpSlot {
    slots: Arc<IpSlots>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut g = self.slots.shard(&self.ip).lock();
        if let Some(n) = g.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                g.remove(&self.ip);
            }
        }
    }
}

/// Open client sockets of every kind, capped: an idle or half-sent connection holds a file
/// descriptor like a stream does, and the stream cap alone does not bound those.
pub struct Sockets {
    cap: usize,
    open: AtomicUsize,
}

impl Sockets {
    fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            cap: cap.max(1),
            open: AtomicUsize::new(0),
        })
    }

    fn enter(self: &Arc<Self>) -> Option<SocketSlot> {
        self.open
            .fetch_update(Relaxed, Relaxed, |n| (n < self.cap).then_some(n + 1))
            .ok()
            .map(|_| SocketSlot {
                sockets: self.clone(),
            })
    }

    /// Client sockets open now.
    pub fn open(&self) -> usize {
        self.open.load(Relaxed)
    }
}

/// One open socket counted against the cap.
pub struct SocketSlot {
    sockets: Arc<Sockets>,
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        self.sockets.open.fetch_sub(1, Relaxed);
    }
}

/// What an admitted connection holds while it is open.
pub struct ConnectionSlot {
    _socket: SocketSlot,
    _ip: Option<IpSlot>,
}

/// Why a connection was not admitted, and how to answer it.
pub enum Refusal {
    /// At the socket cap: answered at once and closed, with no time spent reading, since
    /// sockets are what is short.
    Sockets(ApiError),
    /// Over its address's cap: answered after reading the request.
    PerIp(ApiError),
}

/// The limits of a process, and how often each refused.
pub struct Admission {
    pub sockets: Arc<Sockets>,
    pub refused_sockets: AtomicU64,
    pub stream_opens: Option<RateLimiter>,
    pub per_ip: Option<Arc<IpSlots>>,
    /// By API key name.
    pub publish_per_key: HashMap<String, RateLimiter>,
    /// By namespace.
    pub publish_per_namespace: HashMap<String, RateLimiter>,
    pub refused_stream_rate: AtomicU64,
    pub refused_per_ip: AtomicU64,
    pub refused_publish_rate: AtomicU64,
}

/// Limits as configured.
#[derive(Clone, Debug, Default)]
pub struct Limits {
    /// New streams a second this process accepts (burst: one second's worth); 0 = no limit.
    pub stream_opens_per_sec: u32,
    /// Open connections per client IP; 0 = no limit.
    pub conns_per_ip: u32,
    /// Open client sockets of any kind.
    pub max_sockets: usize,
    /// `(messages/s, burst)` by API key name.
    pub publish_per_key: HashMap<String, (f64, f64)>,
    /// `(messages/s, burst)` by namespace.
    pub publish_per_namespace: HashMap<String, (f64, f64)>,
}

impl Admission {
    pub fn new(limits: &Limits) -> Self {
        let bucket = |(rate, burst): &(f64, f64)| RateLimiter::new(*rate, *burst);
        Self {
            sockets: Sockets::new(limits.max_sockets),
            refused_sockets: AtomicU64::new(0),
            stream_opens: (limits.stream_opens_per_sec > 0).then(|| {
                let r = f64::from(limits.stream_opens_per_sec);
                RateLimiter::new(r, r)
            }),
            per_ip: (limits.conns_per_ip > 0).then(|| IpSlots::new(limits.conns_per_ip)),
            publish_per_key: limits
                .publish_per_key
                .iter()
                .map(|(k, v)| (k.clone(), bucket(v)))
                .collect(),
            publish_per_namespace: limits
                .publish_per_namespace
                .iter()
                .map(|(k, v)| (k.clone(), bucket(v)))
                .collect(),
            refused_stream_rate: AtomicU64::new(0),
            refused_per_ip: AtomicU64::new(0),
            refused_publish_rate: AtomicU64::new(0),
        }
    }

    /// Whether a connection from `ip` may be served: the slots it holds while open, or the
    /// refusal to answer it with.
    pub fn admit_connection(&self, ip: IpAddr) -> Result<ConnectionSlot, Refusal> {
        let Some(socket) = self.sockets.enter() else {
            self.refused_sockets.fetch_add(1, Relaxed);
            return Err(Refusal::Sockets(ApiError::new(
                503,
                "too_many_open_connections",
                "this server has as many connections open as it allows (HERALD_MAX_SOCKETS)",
            )));
        };
        let ip = match &self.per_ip {
            None => None,
            Some(slots) => match slots.enter(ip) {
                Some(slot) => Some(slot),
                None => {
                    self.refused_per_ip.fetch_add(1, Relaxed);
                    return Err(Refusal::PerIp(ApiError::new(
                        429,
                        "too_many_connections_from_ip",
                        "this client address has as many connections open as this server allows",
                    )));
                }
            },
        };
        Ok(ConnectionSlot {
            _socket: socket,
            _ip: ip,
        })
    }

    /// Whether one more stream may open now.
    pub fn admit_stream(&self) -> Result<(), ApiError> {
        let Some(limiter) = &self.stream_opens else {
            return Ok(());
        };
        limiter.try_take(1.0).map_err(|wait| {
            self.refused_stream_rate.fetch_add(1, Relaxed);
            ApiError::new(
                503,
                "overloaded",
                "this node is taking new streams as fast as it is configured to; retry shortly",
            )
            .retry_after(wait)
        })
    }

    /// Whether `publisher` may publish these messages (their channels) now. Every limit
    /// involved must have room; a refusal takes from none of them.
    pub fn admit_publish<'a>(
        &self,
        publisher: &str,
        channels: impl Iterator<Item = &'a str>,
    ) -> Result<(), ApiError> {
        if self.publish_per_key.is_empty() && self.publish_per_namespace.is_empty() {
            return Ok(());
        }
        let mut per_ns: HashMap<&str, f64> = HashMap::new();
        let mut total = 0.0;
        for c in channels {
            total += 1.0;
            *per_ns.entry(herald_proto::namespace_of(c)).or_default() += 1.0;
        }
        let mut taken: Vec<(&RateLimiter, f64)> = Vec::new();
        let mut refusal = None;
        if let Some(l) = self.publish_per_key.get(publisher) {
            match l.try_take(total) {
                Ok(()) => taken.push((l, total)),
                Err(wait) => {
                    refusal = Some((
                        wait,
                        format!("publisher '{publisher}' is over its message rate"),
                    ))
                }
            }
        }
        for (ns, n) in per_ns {
            if refusal.is_some() {
                break;
            }
            if let Some(l) = self.publish_per_namespace.get(ns) {
                match l.try_take(n) {
                    Ok(()) => taken.push((l, n)),
                    Err(wait) => {
                        refusal = Some((wait, format!("namespace '{ns}' is over its message rate")))
                    }
                }
            }
        }
        if let Some((wait, what)) = refusal {
            for (l, n) in taken {
                l.give_back(n);
            }
            self.refused_publish_rate.fetch_add(1, Relaxed);
            return Err(ApiError::new(429, "rate_limited", what).retry_after(wait));
        }
        Ok(())
    }
}

impl RateLimiter {
    /// Returns tokens taken for a request that was refused by another limit.
    fn give_back(&self, n: f64) {
        let mut g = self.state.lock();
        g.0 = (g.0 + n.min(self.burst)).min(self.burst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_gives_its_burst_then_says_how_long_to_wait() {
        let l = RateLimiter::new(10.0, 3.0);
        for _ in 0..3 {
            assert!(l.try_take(1.0).is_ok());
        }
        let wait = l.try_take(1.0).unwrap_err();
        assert!(wait > Duration::from_millis(50) && wait <= Duration::from_millis(100));
    }

    #[test]
    fn ip_slots_are_given_back() {
        let s = IpSlots::new(2);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let a = s.enter(ip).unwrap();
        let _b = s.enter(ip).unwrap();
        assert!(s.enter(ip).is_none());
        assert!(s.enter("10.0.0.2".parse().unwrap()).is_some());
        drop(a);
        assert!(s.enter(ip).is_some());
    }

    #[test]
    fn sockets_over_the_cap_are_refused_and_slots_given_back() {
        let a = Admission::new(&Limits {
            max_sockets: 2,
            conns_per_ip: 1,
            ..Limits::default()
        });
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let first = a.admit_connection(ip).ok().unwrap();
        // Over the per-IP cap: refused, and its socket slot given back at once.
        assert!(matches!(a.admit_connection(ip), Err(Refusal::PerIp(_))));
        let _second = a
            .admit_connection("10.0.0.2".parse().unwrap())
            .ok()
            .unwrap();
        assert!(matches!(
            a.admit_connection("10.0.0.3".parse().unwrap()),
            Err(Refusal::Sockets(_))
        ));
        assert_eq!(a.sockets.open(), 2);
        drop(first);
        assert!(a.admit_connection(ip).is_ok());
    }

    #[test]
    fn a_refused_publish_takes_from_no_limit() {
        let mut limits = Limits::default();
        limits.publish_per_key.insert("k".into(), (1.0, 5.0));
        limits
            .publish_per_namespace
            .insert("live".into(), (1.0, 2.0));
        let a = Admission::new(&limits);
        assert!(a.admit_publish("other", ["live:a"; 2].into_iter()).is_ok());
        // The namespace is empty now: it refuses, and the key gets its token back.
        assert!(a.admit_publish("k", ["live:a"].into_iter()).is_err());
        assert!(a.admit_publish("k", ["chat:a"; 5].into_iter()).is_ok());
        assert!(a.admit_publish("k", ["chat:a"].into_iter()).is_err());
    }
}
