//! Per-client rate limits: a token bucket per (route, client address), refilled at the
//! route's rate with one second's worth of burst. Buckets idle for a minute are dropped,
//! so memory stays bounded by the clients of the last minute.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SHARDS: usize = 16;
const IDLE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// The buckets, sharded by client address.
#[derive(Debug)]
pub struct RateLimiter {
    shards: Vec<Mutex<HashMap<(usize, IpAddr), Bucket>>>,
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

impl RateLimiter {
    /// Whether a request of `client` on route `route` is within `rps`.
    pub fn allow(&self, route: usize, client: IpAddr, rps: u32) -> bool {
        self.allow_at(route, client, rps, Instant::now())
    }

    fn allow_at(&self, route: usize, client: IpAddr, rps: u32, now: Instant) -> bool {
        let shard = match client {
            IpAddr::V4(a) => a.octets()[3] as usize,
            IpAddr::V6(a) => a.octets()[15] as usize,
        } % SHARDS;
        let mut m = self.shards[shard].lock().expect("rate limit lock");
        if m.len() > 10_000 {
            m.retain(|_, b| now.duration_since(b.last) < IDLE);
        }
        let rate = f64::from(rps);
        let b = m.entry((route, client)).or_insert(Bucket {
            tokens: rate,
            last: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * rate).min(rate);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let l = RateLimiter::default();
        let t0 = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let ok = (0..20).filter(|_| l.allow_at(1, a, 10, t0)).count();
        assert_eq!(ok, 10);
        assert!(
            l.allow_at(1, b, 10, t0),
            "another client has its own bucket"
        );
        assert!(l.allow_at(2, a, 10, t0), "another route has its own bucket");
        let t1 = t0 + Duration::from_millis(250);
        let ok = (0..20).filter(|_| l.allow_at(1, a, 10, t1)).count();
        assert_eq!(ok, 2);
    }
}
