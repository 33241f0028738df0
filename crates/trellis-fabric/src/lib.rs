//! The multi-host pod network ("the fabric"): how pod traffic crosses between nodes.
//!
//! A backend ([`backend`]) only computes what the kernel should hold for the current
//! peers — devices, routes, neighbours and FDB entries ([`Desired`]). One shared
//! [`reconcile::Reconciler`] diffs that against the kernel, applies the difference, and
//! is re-run periodically to repair drift. It touches only what it owns: routes with
//! protocol [`ROUTE_PROTO`], and the devices named by [`naming`] together with their
//! neighbour and FDB entries.
//!
//! The userspace `udp` backend's packet pump lives in [`udp`].

pub mod backend;
pub mod reconcile;
pub mod udp;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

pub use trellis_api::objects::Backend;

/// Fabric failures. Every variant says what was being done.
#[derive(Debug, thiserror::Error)]
pub enum FabricError {
    /// A kernel operation failed.
    #[error(transparent)]
    Net(#[from] trellis_net::NetError),
    /// Another I/O failure (TUN device, UDP socket).
    #[error("{what}: {source}")]
    Io {
        /// What was attempted.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// [`reconcile::Reconciler::apply`] applied what it could but some steps failed.
    #[error("apply fabric: {} step(s) failed: {}", failures.len(), failures.join("; "))]
    Apply {
        /// What was changed nevertheless.
        report: reconcile::ApplyReport,
        /// One message per failed step, saying what was attempted.
        failures: Vec<String>,
    },
}

/// `rtm_protocol` of every route the fabric installs (`ip route ... proto 116`); routes
/// with another protocol are never touched.
pub const ROUTE_PROTO: u8 = 116;

/// UDP port of VXLAN (IANA).
pub const VXLAN_PORT: u16 = 4789;
/// UDP port of the `udp` backend (Flannel's).
pub const UDP_PORT: u16 = 8285;

/// Bytes VXLAN adds: outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14).
pub const VXLAN_OVERHEAD: u32 = 50;
/// Bytes the udp backend adds: outer IPv4 (20) + UDP (8).
pub const UDP_OVERHEAD: u32 = 28;

/// Names of the devices the fabric owns.
pub mod naming {
    /// The VXLAN device of a network with VNI `vni`: `trl.<vni>` (like `flannel.<vni>`).
    pub fn vxlan_device(vni: u32) -> String {
        format!("trl.{vni}")
    }

    /// The TUN device of the udp backend for `network`: `trlu` + 8 hex digits.
    pub fn tun_device(network: &str) -> String {
        let h = trellis_api::naming::fnv1a64([network.as_bytes()]);
        format!("trlu{:08x}", h as u32)
    }

    /// Whether a link name is one the fabric creates (and may delete).
    pub fn is_fabric_device(name: &str) -> bool {
        name.starts_with("trl.") || (name.starts_with("trlu") && name.len() == 12)
    }
}

/// The VTEP MAC of the node holding `subnet`: locally administered, derived from the
/// subnet address, so it survives restarts and needs no publishing (`0e:74:a:b:c:d`).
pub fn vtep_mac(subnet: Ipv4Net) -> [u8; 6] {
    let o = subnet.network().octets();
    [0x0e, 0x74, o[0], o[1], o[2], o[3]]
}

/// This node, as the backends see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    /// Node name.
    pub name: String,
    /// Underlay address (the Node's `spec.address`).
    pub address: Ipv4Addr,
    /// The underlay link carrying `address` (e.g. `eth0`).
    pub uplink: String,
    /// `address` with the uplink's prefix length: peers inside it share our segment.
    pub segment: Ipv4Net,
    /// MTU of the uplink.
    pub uplink_mtu: u32,
}

/// A peer node's subnet in one network.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Peer {
    /// Node name.
    pub name: String,
    /// Underlay address.
    pub address: Ipv4Addr,
    /// Its pod subnet in the network.
    pub subnet: Ipv4Net,
}

/// One network as the fabric needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkFabric {
    /// Network name.
    pub name: String,
    /// Its backend.
    pub backend: Backend,
    /// VNI (vxlan, hybrid).
    pub vni: Option<u32>,
    /// `spec.mtu`, if set.
    pub mtu: Option<u32>,
    /// This node's subnet in it.
    pub subnet: Ipv4Net,
}

/// A VXLAN device the fabric should have.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct VxlanDevice {
    /// `trl.<vni>`.
    pub name: String,
    /// VNI.
    pub vni: u32,
    /// Local tunnel endpoint (the node's underlay address).
    pub local: Ipv4Addr,
    /// ifindex of the uplink the tunnel rides on.
    pub uplink: String,
    /// UDP port.
    pub port: u16,
    /// Device MTU.
    pub mtu: u32,
    /// Device MAC ([`vtep_mac`] of the local subnet).
    pub mac: [u8; 6],
    /// Address on the device: the local subnet's network address as a /32 (the next
    /// hop peers' routes point at, as in Flannel).
    pub address: Ipv4Net,
}

/// A TUN device of the udp backend.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TunDevice {
    /// `trlu<hash>`.
    pub name: String,
    /// Device MTU.
    pub mtu: u32,
    /// Address on the device (the local subnet's network address as a /32).
    pub address: Ipv4Net,
}

/// A route the fabric owns (always installed with [`ROUTE_PROTO`], main table).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    /// Destination.
    pub dst: Ipv4Net,
    /// Next hop, if any.
    pub via: Option<Ipv4Addr>,
    /// Output device name.
    pub dev: String,
    /// `onlink`: the next hop is reachable on `dev` without a covering route.
    pub onlink: bool,
}

/// A permanent neighbour (ARP) entry on a fabric device.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Neighbour {
    /// Device name.
    pub dev: String,
    /// IP address.
    pub ip: Ipv4Addr,
    /// Link-layer address.
    pub mac: [u8; 6],
}

/// A permanent FDB entry on a VXLAN device: frames for `mac` go to `dst`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fdb {
    /// Device name.
    pub dev: String,
    /// Destination MAC.
    pub mac: [u8; 6],
    /// Remote tunnel endpoint.
    pub dst: Ipv4Addr,
}

/// Everything the fabric wants in the kernel, for all networks of the node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// VXLAN devices.
    pub vxlan: BTreeSet<VxlanDevice>,
    /// TUN devices (created and pumped by [`udp`]; the reconciler only routes to them).
    pub tun: BTreeSet<TunDevice>,
    /// Routes.
    pub routes: BTreeSet<Route>,
    /// Neighbour entries.
    pub neighbours: BTreeSet<Neighbour>,
    /// FDB entries.
    pub fdb: BTreeSet<Fdb>,
    /// Peers the backends cannot reach (e.g. host-gw peers off our segment), by name.
    pub unreachable: BTreeSet<String>,
}

impl Desired {
    /// Merge another network's desired state into this one.
    pub fn merge(&mut self, other: Desired) {
        self.vxlan.extend(other.vxlan);
        self.tun.extend(other.tun);
        self.routes.extend(other.routes);
        self.neighbours.extend(other.neighbours);
        self.fdb.extend(other.fdb);
        self.unreachable.extend(other.unreachable);
    }
}

/// Pod MTU for a network: `spec.mtu` when set, else the uplink's MTU minus the
/// backend's encapsulation overhead.
pub fn pod_mtu(net: &NetworkFabric, local: &Local) -> u32 {
    if let Some(m) = net.mtu {
        return m;
    }
    let overhead = match net.backend {
        Backend::Vxlan | Backend::Hybrid => VXLAN_OVERHEAD,
        Backend::Udp => UDP_OVERHEAD,
        Backend::HostGw | Backend::Bgp | Backend::L2 => 0,
    };
    local.uplink_mtu.saturating_sub(overhead)
}
