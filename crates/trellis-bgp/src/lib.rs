//! The agent's BGP speaker: sessions with BGP peers (other nodes, route reflectors,
//! datacenter routers) and the routes exchanged over them.
//!
//! - [`fsm`]: the session state machine of RFC 4271 as a pure function, and the
//!   judgement of the peer's OPEN;
//! - [`session`]: one session over TCP, its timers, our announcements and the peer's
//!   routes as events. Messages are encoded and decoded by `netgauze-bgp-pkt`;
//! - [`rib`]: every peer's routes and the best paths (pure);
//! - [`install`]: the best paths as kernel routes of protocol [`install::BGP_PROTO`];
//! - [`speaker`]: a node's sessions with its peers (one task each, a listener), their
//!   RIB and the kernel kept at its best paths.

pub mod fsm;
pub mod install;
pub mod rib;
pub mod session;
pub mod speaker;
