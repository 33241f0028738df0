//! The BGP controller: the networks with `backend: bgp` are carried by this node's BGP
//! speaker (`trellis-bgp`), in a full iBGP mesh with every other ready node that holds
//! a lease in one of them.
//!
//! Inputs: the served set and the Nodes → desired: the speaker's prefixes (this node's
//! subnets of its bgp networks) and its peers ([`desired`], pure) → the speaker is
//! started once and given its prefixes and peers; a change of either goes out as
//! UPDATEs and never resets another peer's session. Learned subnets are kernel routes of protocol
//! 119 (`trellis_bgp::install`), left in place across an agent restart: the restarted
//! speaker changes them only once its peers have sent their tables, and the peers keep
//! this node's subnet meanwhile (graceful restart).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::Ipv4Net;
use trellis_api::objects::{AnyObject, Backend, Network, Node};
use trellis_bgp::export::LocalRoute;
use trellis_bgp::speaker::{Peer, Speaker, SpeakerConfig};

use super::informer::Informer;
use super::networks::ServedSet;
use super::Served;

/// The cluster's AS for the node mesh (Calico's default).
pub const DEFAULT_ASN: u32 = 64512;

/// What the speaker should be: `None` when no bgp network is served here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Desired {
    pub prefixes: Vec<Ipv4Net>,
    pub peers: BTreeSet<Peer>,
}

/// The speaker of `node` (address `address`) for the served networks whose Network says
/// `backend: bgp`: its subnets announced, every other ready node with a lease in one of
/// those networks a peer.
pub(super) fn desired(
    node: &str,
    served: &[(String, Ipv4Net)],
    networks: &[&Network],
    nodes: &[&Node],
) -> Option<Desired> {
    let bgp: BTreeSet<&str> = networks
        .iter()
        .filter(|n| n.spec.backend == Backend::Bgp)
        .map(|n| n.metadata.name.as_str())
        .collect();
    let prefixes: Vec<Ipv4Net> = served
        .iter()
        .filter(|(name, _)| bgp.contains(name.as_str()))
        .map(|(_, s)| *s)
        .collect();
    if prefixes.is_empty() {
        return None;
    }
    let peers = nodes
        .iter()
        .filter(|n| n.metadata.name != node && n.status.ready)
        .filter(|n| {
            n.status
                .leases
                .iter()
                .any(|l| bgp.contains(l.network.as_str()))
        })
        .map(|n| Peer::new(n.spec.address, DEFAULT_ASN))
        .collect();
    Some(Desired { prefixes, peers })
}

/// Keeps the speaker as [`desired`] says.
pub(super) struct BgpLoop {
    pub(super) node: String,
    pub(super) address: Ipv4Addr,
    pub(super) served: ServedSet,
    pub(super) nodes: Informer,
    pub(super) networks: Informer,
    pub(super) resync: Duration,
}

impl BgpLoop {
    pub(super) async fn run(self) {
        let mut served_changed = self.served.clone();
        let mut nodes_changed = self.nodes.subscribe();
        let mut nets_changed = self.networks.subscribe();
        let mut speaker: Option<Speaker> = None;
        let mut applied: Option<Desired> = None;
        loop {
            if let (Some(nodes), Some(nets)) = (self.nodes.snapshot(), self.networks.snapshot()) {
                let served: Vec<(String, Ipv4Net)> = self
                    .served
                    .borrow()
                    .iter()
                    .filter(|s: &&Served| s.world.is_none())
                    .map(|s| (s.name.clone(), s.subnet))
                    .collect();
                let networks: Vec<&Network> = nets
                    .iter()
                    .filter_map(|o| match &**o {
                        AnyObject::Network(n) => Some(n),
                        _ => None,
                    })
                    .collect();
                let nodes: Vec<&Node> = nodes
                    .iter()
                    .filter_map(|o| match &**o {
                        AnyObject::Node(n) => Some(n),
                        _ => None,
                    })
                    .collect();
                let want = desired(&self.node, &served, &networks, &nodes);
                if want != applied {
                    match &want {
                        None => {
                            // No bgp network here any more: its learned routes go too.
                            if let Some(s) = speaker.take() {
                                match s.shutdown().await {
                                    Ok(()) => tracing::info!("bgp speaker stopped"),
                                    Err(e) => {
                                        tracing::warn!("bgp speaker: removing its routes: {e}")
                                    }
                                }
                            }
                        }
                        Some(d) => {
                            if speaker.is_none() {
                                let cfg = SpeakerConfig {
                                    asn: DEFAULT_ASN,
                                    address: self.address,
                                    port: 179,
                                    hold_time: 9,
                                    cluster_id: None,
                                    // A restarted agent leaves the kernel's routes alone
                                    // until its peers have sent their tables.
                                    defer: Duration::from_secs(10),
                                };
                                match Speaker::start(cfg).await {
                                    Ok(s) => {
                                        tracing::info!("bgp speaker started");
                                        speaker = Some(s);
                                    }
                                    Err(e) => tracing::warn!("bgp speaker: {e}"),
                                }
                            }
                            if let Some(s) = &speaker {
                                // Changes of prefixes or peers go out as UPDATEs; no
                                // session is reset.
                                s.set_routes(
                                    &d.prefixes
                                        .iter()
                                        .map(|p| (*p, LocalRoute::default()))
                                        .collect(),
                                );
                                let peers: Vec<Peer> = d.peers.iter().cloned().collect();
                                s.set_peers(&peers);
                            }
                        }
                    }
                    applied = if want.is_none() || speaker.is_some() {
                        want
                    } else {
                        None
                    };
                }
            }
            tokio::select! {
                _ = served_changed.changed() => {}
                _ = nodes_changed.changed() => {}
                _ = nets_changed.changed() => {}
                _ = tokio::time::sleep(self.resync) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn network(name: &str, backend: &str) -> Network {
        serde_json::from_value(json!({
            "apiVersion": "trellis/v1", "kind": "Network", "metadata": {"name": name},
            "spec": {"cidr": "10.244.0.0/16", "backend": backend}
        }))
        .unwrap()
    }

    fn node(name: &str, addr: &str, ready: bool, leases: &[(&str, &str)]) -> Node {
        let leases: Vec<_> = leases
            .iter()
            .map(|(n, c)| json!({"network": n, "cidr": c}))
            .collect();
        serde_json::from_value(json!({
            "apiVersion": "trellis/v1", "kind": "Node", "metadata": {"name": name},
            "spec": {"address": addr},
            "status": {"ready": ready, "leases": leases}
        }))
        .unwrap()
    }

    #[test]
    fn the_mesh_is_every_ready_node_of_a_bgp_network() {
        let nets = [network("pods", "bgp"), network("other", "vxlan")];
        let nets: Vec<&Network> = nets.iter().collect();
        let nodes = [
            node("n1", "192.0.2.1", true, &[("pods", "10.244.0.0/24")]),
            node("n2", "192.0.2.2", true, &[("pods", "10.244.1.0/24")]),
            node("n3", "192.0.2.3", false, &[("pods", "10.244.2.0/24")]),
            node("n4", "192.0.2.4", true, &[("other", "10.1.0.0/24")]),
        ];
        let nodes: Vec<&Node> = nodes.iter().collect();
        let served = [("pods".to_string(), "10.244.0.0/24".parse().unwrap())];
        let d = desired("n1", &served, &nets, &nodes).unwrap();
        assert_eq!(
            d.prefixes,
            vec!["10.244.0.0/24".parse::<Ipv4Net>().unwrap()]
        );
        assert_eq!(
            d.peers
                .iter()
                .map(|p| p.address.to_string())
                .collect::<Vec<_>>(),
            ["192.0.2.2"]
        );
        // No bgp network served here: no speaker.
        let served = [("other".to_string(), "10.1.1.0/24".parse().unwrap())];
        assert_eq!(desired("n1", &served, &nets, &nodes), None);
    }
}
