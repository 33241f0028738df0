//! `Node`: one host running a Trellis agent.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::network::check_network_address;
use super::{
    parse_rfc3339, validate_dns1123_label, validate_dns1123_subdomain, validate_mac, Kind, Object,
    Spec, ValidationError,
};

/// A `Node` object (cluster-scoped, plural `nodes`). Its name is a DNS-1123 subdomain
/// (usually the host name); its labels are in `metadata.labels`.
pub type Node = Object<NodeSpec>;

/// `spec` of a [`Node`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeSpec {
    /// The node's underlay address: where other nodes send its pods' traffic.
    pub address: Ipv4Addr,
    /// BGP settings of this node (Calico's Node `spec.bgp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp: Option<NodeBgp>,
}

/// Node `spec.bgp`: the node's own AS and whether it reflects routes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeBgp {
    /// The address BGP uses, with its prefix length (`"192.0.2.11/24"`); the node's
    /// `spec.address` when absent. It must be that address: Trellis peers from it.
    #[serde(
        default,
        rename = "ipv4Address",
        skip_serializing_if = "Option::is_none"
    )]
    pub ipv4_address: Option<String>,
    /// The node's AS (else the BGPConfiguration's, else 64512).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_number: Option<super::AsNumber>,
    /// Makes the node a route reflector of this cluster ID (an IPv4 address).
    #[serde(
        default,
        rename = "routeReflectorClusterID",
        skip_serializing_if = "Option::is_none"
    )]
    pub route_reflector_cluster_id: Option<String>,
}

impl NodeBgp {
    /// The reflector cluster ID, if the node is a reflector (and the ID valid).
    pub fn cluster_id(&self) -> Option<Ipv4Addr> {
        self.route_reflector_cluster_id
            .as_deref()
            .and_then(|c| c.parse().ok())
    }
}

/// `status` of a [`Node`] (agent- and server-set).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeStatus {
    /// Whether the node's agent is up and its heartbeat recent.
    #[serde(default)]
    pub ready: bool,
    /// The agent's last heartbeat, RFC 3339 ([`format_rfc3339`](super::format_rfc3339)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_time: Option<String>,
    /// The node's subnet in each network, at most one per network.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leases: Vec<SubnetLease>,
    /// Names of the nodes this node's agent cannot currently reach.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreachable_peers: Vec<String>,
    /// This node's BGP sessions (agent-set; `trellis bgp status`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bgp: Vec<BgpSession>,
    /// How far the node's service proxy and DNS have got (agent-set), published after
    /// each successful sync (at most once a second); [`Node::has_programmed`] compares
    /// it with what a Service needs
    /// ([`Service::programmed_revisions`](super::Service::programmed_revisions)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub programmed: Option<ProgrammedRevisions>,
}

/// One BGP session of a node, as its agent reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BgpSession {
    /// The peer's address.
    pub peer: Ipv4Addr,
    /// The peer's AS.
    pub as_number: u32,
    /// `Established`, `Connect` or `Idle`.
    pub state: String,
    /// Since when (RFC 3339).
    pub since: String,
    /// Prefixes received from the peer.
    pub received: u32,
    /// Prefixes sent to it.
    pub sent: u32,
    /// The peer's graceful-restart time in seconds, if it announced the capability.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graceful_restart: Option<u16>,
    /// The peer's routes are kept stale (it is restarting).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stale: bool,
    /// The BFD session's state (`Up`, `Down`, `Init`), when BFD runs with the peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bfd: Option<String>,
    /// Why the last session ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Store revisions up to which every change of the Services and of the Endpoints is
/// programmed. The two collections are watched apart, and a quiet collection's watch
/// brings no news, so each has its own revision: one number for both would either stay
/// behind forever or run ahead of the other collection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProgrammedRevisions {
    /// Every Service change up to this revision.
    pub services: u64,
    /// Every Endpoint change up to this revision.
    pub endpoints: u64,
}

impl ProgrammedRevisions {
    /// Whether these revisions reach `want` in both collections.
    pub fn covers(&self, want: &ProgrammedRevisions) -> bool {
        self.services >= want.services && self.endpoints >= want.endpoints
    }
}

/// One node's subnet of one network, and what peers need to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SubnetLease {
    /// The network's name.
    pub network: String,
    /// The node's pod subnet, carved from the network's cidr.
    pub cidr: Ipv4Net,
    /// MAC address of the node's VXLAN device (vxlan, hybrid backends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep_mac: Option<String>,
    /// Anything else a backend needs to publish (opaque to the server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_data: Option<serde_json::Value>,
}

impl SubnetLease {
    /// A lease without backend data.
    pub fn new(network: impl Into<String>, cidr: Ipv4Net) -> Self {
        SubnetLease {
            network: network.into(),
            cidr,
            vtep_mac: None,
            backend_data: None,
        }
    }
}

impl Node {
    /// This node's lease in `network`, if any.
    pub fn lease(&self, network: &str) -> Option<&SubnetLease> {
        self.status.leases.iter().find(|l| l.network == network)
    }

    /// Whether the node reports (`status.programmed`) having programmed the Service and
    /// Endpoint changes up to `want`.
    pub fn has_programmed(&self, want: &ProgrammedRevisions) -> bool {
        self.status.programmed.is_some_and(|p| p.covers(want))
    }
}

impl Spec for NodeSpec {
    const KIND: Kind = Kind::Node;
    type Status = NodeStatus;

    fn validate(&self, status: &NodeStatus) -> Result<(), ValidationError> {
        check_unicast(self.address).map_err(|m| ValidationError::new("spec.address", m))?;
        if let Some(b) = &self.bgp {
            if let Some(c) = &b.route_reflector_cluster_id {
                if c.parse::<Ipv4Addr>().is_err() {
                    return Err(ValidationError::new(
                        "spec.bgp.routeReflectorClusterID",
                        format!("{c:?} is not an IPv4 address (a cluster ID is written as one, e.g. \"244.0.0.1\")"),
                    ));
                }
            }
            if let Some(a) = &b.ipv4_address {
                let ip = a
                    .parse::<Ipv4Net>()
                    .map(|n| n.addr())
                    .or_else(|_| a.parse::<Ipv4Addr>())
                    .map_err(|_| {
                        ValidationError::new(
                            "spec.bgp.ipv4Address",
                            format!("{a:?} is not an IPv4 address with a prefix length"),
                        )
                    })?;
                if ip != self.address {
                    return Err(ValidationError::new(
                        "spec.bgp.ipv4Address",
                        format!("{ip} is not the node's spec.address ({})", self.address),
                    ));
                }
            }
        }
        status.validate().map_err(|e| e.under("status"))
    }
}

/// Refuse addresses that cannot be a host's own: unspecified, loopback, broadcast,
/// multicast.
pub(crate) fn check_unicast(addr: Ipv4Addr) -> Result<(), String> {
    let what = if addr.is_unspecified() {
        "the unspecified address"
    } else if addr.is_loopback() {
        "a loopback address"
    } else if addr.is_broadcast() {
        "the broadcast address"
    } else if addr.is_multicast() {
        "a multicast address"
    } else {
        return Ok(());
    };
    Err(format!("{addr} is {what}"))
}

impl NodeStatus {
    fn validate(&self) -> Result<(), ValidationError> {
        if let Some(t) = &self.heartbeat_time {
            parse_rfc3339(t).map_err(|m| ValidationError::new("heartbeatTime", m))?;
        }
        let mut networks = BTreeSet::new();
        for (i, lease) in self.leases.iter().enumerate() {
            let at = |f: &str| format!("leases[{i}].{f}");
            validate_dns1123_label(&lease.network)
                .map_err(|m| ValidationError::new(at("network"), m))?;
            if !networks.insert(&lease.network) {
                return Err(ValidationError::new(
                    at("network"),
                    format!("a second lease in network {:?}", lease.network),
                ));
            }
            check_network_address(lease.cidr).map_err(|m| ValidationError::new(at("cidr"), m))?;
            if let Some(mac) = &lease.vtep_mac {
                validate_mac(mac).map_err(|m| ValidationError::new(at("vtepMac"), m))?;
            }
        }
        for (i, peer) in self.unreachable_peers.iter().enumerate() {
            validate_dns1123_subdomain(peer)
                .map_err(|m| ValidationError::new(format!("unreachablePeers[{i}]"), m))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::ObjectMeta;

    fn node(name: &str) -> Node {
        Node::new(
            ObjectMeta::named(name),
            NodeSpec {
                address: "192.168.50.2".parse().unwrap(),
                bgp: None,
            },
        )
    }

    #[track_caller]
    fn assert_err(n: &Node, field: &str, fragment: &str) {
        let e = n.validate().expect_err("should not validate");
        assert_eq!(e.field, field, "{e}");
        assert!(e.message.contains(fragment), "{e:?} lacks {fragment:?}");
    }

    #[test]
    fn valid_node() {
        let mut n = node("node-1.lab.example");
        n.validate().unwrap();
        n.metadata.labels.insert("zone".into(), "a".into());
        n.status = NodeStatus {
            ready: true,
            heartbeat_time: Some("2024-05-01T12:00:00Z".into()),
            leases: vec![SubnetLease {
                vtep_mac: Some("0a:58:0a:f4:01:02".into()),
                backend_data: Some(serde_json::json!({"port": 8472})),
                ..SubnetLease::new("pods", "10.244.1.0/24".parse().unwrap())
            }],
            unreachable_peers: vec!["node-2".into()],
            bgp: vec![],
            programmed: Some(ProgrammedRevisions {
                services: 41,
                endpoints: 50,
            }),
        };
        n.validate().unwrap();
        assert_eq!(n.lease("pods").unwrap().cidr.to_string(), "10.244.1.0/24");
        assert!(n.lease("other").is_none());
        let want = |services, endpoints| ProgrammedRevisions {
            services,
            endpoints,
        };
        assert!(n.has_programmed(&want(41, 50)) && n.has_programmed(&want(3, 0)));
        assert!(!n.has_programmed(&want(42, 0)) && !n.has_programmed(&want(0, 51)));
        n.status.programmed = None;
        assert!(
            !n.has_programmed(&want(0, 0)),
            "a node that reported nothing programmed nothing"
        );
    }

    #[test]
    fn names() {
        // A Node name may be a subdomain (a host name), up to 253 characters.
        let long = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61),
        ]
        .join(".");
        assert_eq!(long.len(), 253);
        node(&long).validate().unwrap();
        assert_err(&node(&format!("{long}e")), "metadata.name", "at most 253");
        assert_err(&node("Node1"), "metadata.name", "uppercase");
        assert_err(&node("node..1"), "metadata.name", "empty part");
        let mut n = node("n");
        n.metadata.namespace = Some("default".into());
        assert_err(&n, "metadata.namespace", "cluster-scoped");
    }

    #[test]
    fn address() {
        for (addr, what) in [
            ("0.0.0.0", "unspecified"),
            ("127.0.0.1", "loopback"),
            ("255.255.255.255", "broadcast"),
            ("224.0.0.1", "multicast"),
        ] {
            let mut n = node("n");
            n.spec.address = addr.parse().unwrap();
            assert_err(&n, "spec.address", what);
        }
    }

    #[test]
    fn status_rules() {
        let mut n = node("n");
        n.status.heartbeat_time = Some("yesterday".into());
        assert_err(&n, "status.heartbeatTime", "not an RFC 3339 time");
        n.status.heartbeat_time = None;
        n.status.leases = vec![
            SubnetLease::new("pods", "10.244.1.0/24".parse().unwrap()),
            SubnetLease::new("pods", "10.244.2.0/24".parse().unwrap()),
        ];
        assert_err(&n, "status.leases[1].network", "a second lease");
        n.status.leases[1].network = "Other".into();
        assert_err(&n, "status.leases[1].network", "uppercase");
        n.status.leases[1].network = "other".into();
        n.status.leases[1].cidr = "10.244.2.1/24".parse().unwrap();
        assert_err(&n, "status.leases[1].cidr", "did you mean 10.244.2.0/24?");
        n.status.leases[1].cidr = "10.244.2.0/24".parse().unwrap();
        n.status.leases[1].vtep_mac = Some("zz".into());
        assert_err(&n, "status.leases[1].vtepMac", "not a MAC address");
        n.status.leases[1].vtep_mac = None;
        n.status.unreachable_peers = vec!["ok".into(), "Bad".into()];
        assert_err(&n, "status.unreachablePeers[1]", "uppercase");
    }
}
