//! A routed underlay: racks, each an L2 segment of its own behind a router namespace (a
//! top-of-rack), the routers joined by the core segment (the underlay bridge, where the
//! server lives).
//!
//! Rack `k` (from 1) is `192.168.(90+k).0/24`: its router has `.1` there and
//! `192.168.77.(200+k)` on the core; its nodes have `.(10+i)` and a default route via
//! the router. Routers forward, but nothing tells them the other racks' segments or any
//! pod subnet: the tests start BIRD, FRR or GoBGP in them for that. The server's
//! namespace has a static route to each rack (the control plane's path, not the data
//! plane's).

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::{ip, Lab, LabError, Result, NS_PREFIX, UNDERLAY_PREFIX};

/// One rack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rack {
    /// Its number, from 1.
    pub index: usize,
    /// The router's namespace.
    pub router: String,
    /// The router's address on the core segment.
    pub core_addr: Ipv4Addr,
    /// The rack segment's first three octets (`192.168.91`).
    pub prefix: String,
    /// The router's address on the rack segment (the nodes' gateway).
    pub gateway: Ipv4Addr,
}

impl Lab {
    /// A lab owned by this process whose nodes are in racks: `racks[k]` nodes in rack
    /// `k + 1`, none on the core.
    pub fn new_routed(racks: &[usize]) -> Result<Lab> {
        check_racks(racks)?;
        let mut lab = Lab::owned(0)?;
        lab.add_racks(racks)?;
        Ok(lab)
    }

    /// [`Lab::new_routed`] for a lab that outlives this process (`trellis lab up
    /// --racks`), named `name`.
    pub fn new_persistent_routed(name: &str, racks: &[usize]) -> Result<Lab> {
        check_racks(racks)?;
        let mut lab = Lab::persistent_empty(name)?;
        if let Err(e) = lab.add_racks(racks) {
            let _ = lab.destroy();
            return Err(e);
        }
        Ok(lab)
    }

    fn add_racks(&mut self, racks: &[usize]) -> Result<()> {
        for n in racks {
            let r = self.add_rack()?;
            for _ in 0..*n {
                self.join_rack_node(r.index)?;
            }
        }
        self.save()
    }

    /// Add a rack: its router namespace, joined to the core; returns it.
    pub fn add_rack(&mut self) -> Result<Rack> {
        let k = self.state.racks.len() + 1;
        if k > 50 {
            return Err(LabError::Invalid("at most 50 racks".into()));
        }
        let router = format!("{NS_PREFIX}{}-r{k}", self.state.name);
        let prefix = format!("192.168.{}", 90 + k);
        let rack = Rack {
            index: k,
            router: router.clone(),
            core_addr: format!("{UNDERLAY_PREFIX}.{}", 200 + k)
                .parse()
                .expect("an address"),
            prefix: prefix.clone(),
            gateway: format!("{prefix}.1").parse().expect("an address"),
        };
        // Recorded first: teardown removes it whatever fails below.
        ip(&["netns", "add", &router])?;
        self.state.racks.push(rack.clone());
        self.save()?;
        self.ns_up(&router)?;
        let u = self.state.underlay.clone();
        let leg = format!("r{k}");
        ip(&[
            "-n", &u, "link", "add", &leg, "type", "veth", "peer", "name", "core", "netns", &router,
        ])?;
        ip(&["-n", &u, "link", "set", &leg, "master", "trlu0", "up"])?;
        ip(&[
            "-n",
            &router,
            "addr",
            "add",
            &format!("{}/24", rack.core_addr),
            "dev",
            "core",
        ])?;
        ip(&["-n", &router, "link", "set", "core", "up"])?;
        ip(&["-n", &router, "link", "add", "rack", "type", "bridge"])?;
        ip(&[
            "-n",
            &router,
            "addr",
            "add",
            &format!("{}/24", rack.gateway),
            "dev",
            "rack",
        ])?;
        ip(&["-n", &router, "link", "set", "rack", "up"])?;
        self.exec(&router, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        // The server's way to the rack's agents.
        ip(&[
            "-n",
            &u,
            "route",
            "add",
            &format!("{prefix}.0/24"),
            "via",
            &rack.core_addr.to_string(),
        ])?;
        Ok(rack)
    }

    /// Add a node to rack `rack` (from [`Lab::add_rack`]); returns its index.
    pub fn join_rack_node(&mut self, rack: usize) -> Result<usize> {
        let r = self
            .state
            .racks
            .iter()
            .find(|r| r.index == rack)
            .cloned()
            .ok_or_else(|| LabError::Invalid(format!("no rack {rack}")))?;
        let i = self.state.nodes.len() + 1;
        self.add_node_on(i, &r.prefix, &r.router, "rack")?;
        self.save()?;
        Ok(i - 1)
    }
}

fn check_racks(racks: &[usize]) -> Result<()> {
    if racks.is_empty() || racks.iter().sum::<usize>() == 0 {
        return Err(LabError::Invalid(
            "a routed lab needs a node in a rack".into(),
        ));
    }
    if racks.iter().sum::<usize>() > 200 {
        return Err(LabError::Invalid("a lab holds at most 200 nodes".into()));
    }
    Ok(())
}

/// The AS of rack `k`'s router.
pub fn rack_asn(k: usize) -> u32 {
    65000 + k as u32
}

/// The AS [`Lab::routed_bgp_manifest`] gives node `i` (0-based): one AS per node.
pub fn node_asn(i: usize) -> u32 {
    65101 + i as u32
}

/// A running top-of-rack router, and how to ask it about its routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RackRouter {
    /// BIRD 2, with its control socket.
    Bird(std::path::PathBuf),
    /// FRR, with the directory of its vty sockets.
    Frr(std::path::PathBuf),
}

impl RackRouter {
    /// The router's BGP table, as its own CLI prints it.
    pub fn routes(&self) -> String {
        match self {
            RackRouter::Bird(sock) => crate::routers::birdc(sock, &["show", "route"]),
            RackRouter::Frr(dir) => crate::routers::vtysh(dir, "show ip bgp"),
        }
    }
}

impl Lab {
    /// The rack (its number) node `node` is in.
    pub fn rack_of(&self, node: usize) -> Option<usize> {
        let addr = self.state.nodes.get(node)?.addr.to_string();
        self.state
            .racks
            .iter()
            .find(|r| addr.starts_with(&format!("{}.", r.prefix)))
            .map(|r| r.index)
    }

    /// Start every rack's router: BIRD in odd racks, FRR in even ones; each peers over
    /// eBGP with its rack's nodes (AS [`node_asn`]) and with the other routers over the
    /// core (AS [`rack_asn`]), announces its rack segment, and programs its kernel.
    /// Routers keep a restarting node's routes (graceful restart).
    pub fn start_rack_routers(&mut self) -> Result<Vec<RackRouter>> {
        let racks = self.state.racks.clone();
        let mut out = Vec::new();
        for r in &racks {
            let mut neighbors: Vec<crate::routers::Neighbor> = (0..self.state.nodes.len())
                .filter(|n| self.rack_of(*n) == Some(r.index))
                .map(|n| (self.state.nodes[n].addr, node_asn(n)))
                .collect();
            neighbors.extend(
                racks
                    .iter()
                    .filter(|o| o.index != r.index)
                    .map(|o| (o.core_addr, rack_asn(o.index))),
            );
            let tag = format!("r{}", r.index);
            let router = crate::routers::Router {
                netns: &r.router,
                tag: &tag,
                asn: rack_asn(r.index),
                id: r.core_addr,
                neighbors: &neighbors,
            };
            out.push(if r.index % 2 == 0 {
                RackRouter::Frr(crate::routers::start_frr(self, &router)?)
            } else {
                RackRouter::Bird(crate::routers::start_bird(
                    self,
                    &router,
                    &["rack"],
                    "graceful restart on;",
                )?)
            });
        }
        Ok(out)
    }

    /// The cluster objects of a routed lab on BGP: each Node with its `rack` label
    /// (`r1`, ...) and own AS, a BGPPeer per rack to its router, the node mesh off.
    pub fn routed_bgp_manifest(&self) -> String {
        let mut m = String::new();
        for (i, n) in self.state.nodes.iter().enumerate() {
            let Some(rack) = self.rack_of(i) else {
                continue;
            };
            m.push_str(&format!(
                "---\napiVersion: trellis/v1\nkind: Node\nmetadata: {{name: {}, labels: {{rack: r{rack}}}}}\n\
                 spec: {{address: {}, bgp: {{asNumber: {}}}}}\n",
                n.name,
                n.addr,
                node_asn(i)
            ));
        }
        for r in &self.state.racks {
            m.push_str(&format!(
                "---\napiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {{name: rack{k}-tor}}\n\
                 spec: {{nodeSelector: rack == 'r{k}', peerIP: '{}', asNumber: {}}}\n",
                r.gateway,
                rack_asn(r.index),
                k = r.index
            ));
        }
        m.push_str(
            "---\napiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata: {name: default}\n\
             spec: {nodeToNodeMeshEnabled: false}\n",
        );
        m
    }
}
