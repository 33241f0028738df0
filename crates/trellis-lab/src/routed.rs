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
        if racks.is_empty() || racks.iter().sum::<usize>() == 0 {
            return Err(LabError::Invalid(
                "a routed lab needs a node in a rack".into(),
            ));
        }
        let mut lab = Lab::owned(0)?;
        for n in racks {
            let r = lab.add_rack()?;
            for _ in 0..*n {
                lab.join_rack_node(r.index)?;
            }
        }
        Ok(lab)
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
