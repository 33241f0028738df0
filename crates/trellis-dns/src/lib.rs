//! The node's cluster DNS server: answers `<anything>.<domain>` (`cluster.local`) from the
//! service and pod records the agent hands it, and forwards every other query to the
//! node's resolvers.
//!
//! Names served (TTL [`TTL`] seconds, authoritative):
//!
//! - `<svc>.<ns>.svc.<domain>`: `A` the cluster IP; for a headless service the ready
//!   endpoints' addresses; for an ExternalName service a `CNAME` to the external name
//!   (followed for the client: the target's records come after the `CNAME`).
//! - `_<port>._<tcp|udp>.<svc>.<ns>.svc.<domain>`: one `SRV` per named port, target the
//!   service name; for a headless service one per endpoint, target
//!   `<a-b-c-d>.<svc>.<ns>.svc.<domain>` (which has that `A` record). The targets' `A`
//!   records ride in the additional section.
//! - `<a-b-c-d>.<ns>.pod.<domain>`: `A a.b.c.d`, for any namespace and address.
//! - Any other name in the domain: `NXDOMAIN` with the zone's `SOA`; a name that exists
//!   without a record of the asked type: `NOERROR` and no answer (NODATA), with the `SOA`.
//!
//! Usage: build [`Records`] with [`Records::add_service`], [`DnsServer::start`] the server
//! (it runs on a thread of its own) and hand it each new set with
//! [`DnsServer::set_records`] (an atomic swap). Other names are forwarded to the upstreams
//! (see [`upstreams_from_resolv_conf`]); `SERVFAIL` when none answers within
//! [`FORWARD_TIMEOUT`].
//!
//! hickory-server logs every request at `info` (target `hickory_server`): a binary that
//! logs at `info` should filter it, e.g. `info,hickory_server=warn`.

mod forward;
mod records;
mod server;

use std::io;
use std::net::SocketAddr;

pub use forward::upstreams_from_resolv_conf;
pub use records::{NamedPort, Proto, Records, ServiceRecord};
pub use server::DnsServer;

/// Time to live, in seconds, of every answer for a cluster name (and of the negative
/// answers, through the `SOA` minimum).
pub const TTL: u32 = 5;

/// How long a forwarded query may take, over all upstreams and the TCP retry, before the
/// client gets `SERVFAIL`.
pub const FORWARD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// What can go wrong building records or starting the server.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// A domain, namespace, service, port or external name that is not a valid DNS name.
    #[error("invalid DNS name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// Why it was refused.
        reason: String,
    },
    /// The UDP or TCP socket could not be bound.
    #[error("cannot bind DNS {proto} socket on {addr}: {source}")]
    Bind {
        /// `udp` or `tcp`.
        proto: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// The error from the kernel.
        source: io::Error,
    },
    /// The server's thread or its runtime could not be started.
    #[error("cannot start the DNS server thread: {0}")]
    Thread(#[source] io::Error),
}
