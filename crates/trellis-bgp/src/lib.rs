//! The agent's BGP speaker: sessions with BGP peers (other nodes, route reflectors,
//! datacenter routers) and the routes exchanged over them.
//!
//! - [`fsm`]: the session state machine of RFC 4271 as a pure function, and the
//!   judgement of the peer's OPEN;
//! - [`attrs`]: a route's path attributes and UPDATEs, read with RFC 7606's rules.
//!   Messages are encoded and decoded by `netgauze-bgp-pkt`;
//! - [`session`]: one session over TCP, its timers, the table sent and the peer's routes
//!   as events;
//! - [`rib`]: every peer's routes and the best paths (pure);
//! - [`policy`]: prefix filters and loop checks (pure);
//! - [`export`]: what goes to each kind of peer, route reflection (RFC 4456) (pure);
//! - [`bfd`]: BFD sessions (RFC 5880/5881) that tell a dead peer in 300 ms;
//! - [`md5`]: TCP MD5 session passwords (RFC 2385);
//! - [`install`]: the best paths as kernel routes of protocol [`install::BGP_PROTO`];
//! - [`speaker`]: a node's sessions with its peers (one task each, a listener), their
//!   RIB, its exports and the kernel kept at its best paths.

pub mod attrs;
pub mod bfd;
pub mod export;
pub mod fsm;
pub mod install;
pub mod md5;
pub mod policy;
pub mod rib;
pub mod session;
pub mod speaker;

/// Bind with `bind`, trying again for up to a second while the address is in use: a
/// speaker replaced by a new one (its AS changed) frees its ports only once its tasks
/// have been cancelled, which the runtime does a moment later.
pub(crate) async fn bind_retrying<T, F, Fut>(mut bind: F) -> std::io::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<T>>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        match bind().await {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            r => return r,
        }
    }
}
