//! `Network`: a pod address range, how it is cut into node subnets and how nodes carry
//! it (the backend).

use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::{validate_dns1123_label, Kind, Object, Spec, ValidationError};

/// A `Network` object (cluster-scoped, plural `networks`).
pub type Network = Object<NetworkSpec>;

/// `spec.nodeSubnetPrefix` when the manifest leaves it out.
pub const DEFAULT_NODE_SUBNET_PREFIX: u8 = 24;
/// Longest allowed `spec.nodeSubnetPrefix`: a /30 still has two usable addresses.
pub const MAX_NODE_SUBNET_PREFIX: u8 = 30;
/// Allowed VXLAN network identifiers (24 bits, 0 excluded).
pub const VNI_RANGE: RangeInclusive<u32> = 1..=16_777_215;
/// Allowed `spec.mtu` (576 is the IPv4 minimum reassembly size; 9000 a jumbo frame).
pub const MTU_RANGE: RangeInclusive<u32> = 576..=9000;

/// `spec` of a [`Network`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkSpec {
    /// The pod address range (`10.244.0.0/16`): a network address, host bits zero.
    pub cidr: Ipv4Net,
    /// Prefix length of the subnet each node leases from `cidr` (default 24); longer
    /// than `cidr`'s prefix and at most [`MAX_NODE_SUBNET_PREFIX`].
    #[serde(default = "default_node_subnet_prefix")]
    pub node_subnet_prefix: u8,
    /// How nodes carry pod traffic between each other (default `vxlan`).
    #[serde(default)]
    pub backend: Backend,
    /// The VXLAN network identifier for the `vxlan` and `hybrid` backends, in
    /// [`VNI_RANGE`]; when unset the server allocates one into `status.vni`. Refused for
    /// the other backends, which have no use for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vni: Option<u32>,
    /// MTU of pod interfaces, in [`MTU_RANGE`]; unset = derived from the underlay MTU
    /// minus the backend's overhead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The tenant owning the network (a DNS-1123 label). Networks of different tenants
    /// may use overlapping ranges; within one tenant (or among untenanted networks) they
    /// may not ([`networks_overlap`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Whether traffic from pods to addresses outside the cluster's networks is
    /// source-NATed to the node's address (default true).
    #[serde(default = "default_true")]
    pub masquerade: bool,
    /// Ranges inside `cidr` that IPAM must never hand out (for `l2`: the segment's
    /// gateway, hosts and other DHCP ranges).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reserved: Vec<Ipv4Net>,
    /// The nodes that serve the network from the moment it exists (their agents lease a
    /// subnet and build its bridge before any pod needs it). Other nodes serve it from
    /// the first pod that needs it. Unset: only those.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<super::LabelSelector>,
}

fn default_node_subnet_prefix() -> u8 {
    DEFAULT_NODE_SUBNET_PREFIX
}

fn default_true() -> bool {
    true
}

impl NetworkSpec {
    /// A spec with every default: `cidr`, /24 node subnets, vxlan, masquerade.
    pub fn new(cidr: Ipv4Net) -> Self {
        NetworkSpec {
            cidr,
            node_subnet_prefix: DEFAULT_NODE_SUBNET_PREFIX,
            backend: Backend::default(),
            vni: None,
            mtu: None,
            tenant: None,
            masquerade: true,
            reserved: Vec::new(),
            node_selector: None,
        }
    }
}

/// `status` of a [`Network`] (server-set).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkStatus {
    /// The VNI in use: `spec.vni` when given, else the one the server allocated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vni: Option<u32>,
}

/// A Network's backend: how pod traffic crosses between nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// `vxlan`: an overlay; every node reaches every other over the underlay (default).
    #[default]
    Vxlan,
    /// `host-gw`: plain routes via the peer node's address; nodes share an L2 segment.
    HostGw,
    /// `hybrid`: host-gw routes to nodes on the same subnet, vxlan to the others.
    Hybrid,
    /// `udp`: a userspace UDP tunnel (slow; for kernels without VXLAN).
    Udp,
    /// `bgp`: node subnets announced over BGP; no encapsulation.
    Bgp,
    /// `l2`: pods bridged straight onto the underlay segment, addresses from `cidr`.
    L2,
}

impl Backend {
    /// The name written in manifests: `vxlan`, `host-gw`, `hybrid`, `udp`, `bgp`, `l2`.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Vxlan => "vxlan",
            Backend::HostGw => "host-gw",
            Backend::Hybrid => "hybrid",
            Backend::Udp => "udp",
            Backend::Bgp => "bgp",
            Backend::L2 => "l2",
        }
    }

    /// Whether the backend needs a VNI (`vxlan`, `hybrid`).
    pub fn uses_vni(self) -> bool {
        matches!(self, Backend::Vxlan | Backend::Hybrid)
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Spec for NetworkSpec {
    const KIND: Kind = Kind::Network;
    type Status = NetworkStatus;

    fn validate(&self, status: &NetworkStatus) -> Result<(), ValidationError> {
        self.validate_spec().map_err(|e| e.under("spec"))?;
        if let Some(vni) = status.vni {
            check_vni(vni).map_err(|m| ValidationError::new("status.vni", m))?;
        }
        Ok(())
    }
}

impl NetworkSpec {
    fn validate_spec(&self) -> Result<(), ValidationError> {
        check_network_address(self.cidr).map_err(|m| ValidationError::new("cidr", m))?;
        if let Some(sel) = &self.node_selector {
            sel.validate().map_err(|e| e.under("nodeSelector"))?;
        }
        let prefix = self.cidr.prefix_len();
        if self.node_subnet_prefix <= prefix {
            return Err(ValidationError::new(
                "nodeSubnetPrefix",
                format!(
                    "/{} must be longer than the network's prefix /{prefix}",
                    self.node_subnet_prefix
                ),
            ));
        }
        if self.node_subnet_prefix > MAX_NODE_SUBNET_PREFIX {
            return Err(ValidationError::new(
                "nodeSubnetPrefix",
                format!(
                    "/{} is too long: at most /{MAX_NODE_SUBNET_PREFIX}, which leaves a node \
                     two pod addresses",
                    self.node_subnet_prefix
                ),
            ));
        }
        if let Some(vni) = self.vni {
            if !self.backend.uses_vni() {
                return Err(ValidationError::new(
                    "vni",
                    format!(
                        "is only used by the vxlan and hybrid backends, not {}",
                        self.backend
                    ),
                ));
            }
            check_vni(vni).map_err(|m| ValidationError::new("vni", m))?;
        }
        if let Some(mtu) = self.mtu {
            if !MTU_RANGE.contains(&mtu) {
                return Err(ValidationError::new(
                    "mtu",
                    format!(
                        "must be between {} and {}, got {mtu}",
                        MTU_RANGE.start(),
                        MTU_RANGE.end()
                    ),
                ));
            }
        }
        if let Some(tenant) = &self.tenant {
            validate_dns1123_label(tenant).map_err(|m| ValidationError::new("tenant", m))?;
        }
        for (i, r) in self.reserved.iter().enumerate() {
            let field = format!("reserved[{i}]");
            check_network_address(*r).map_err(|m| ValidationError::new(&field, m))?;
            if !self.cidr.contains(r) {
                return Err(ValidationError::new(
                    &field,
                    format!("{r} is not inside the network's cidr {}", self.cidr),
                ));
            }
        }
        Ok(())
    }
}

fn check_vni(vni: u32) -> Result<(), String> {
    if VNI_RANGE.contains(&vni) {
        Ok(())
    } else {
        Err(format!(
            "must be between {} and {} (24 bits), got {vni}",
            VNI_RANGE.start(),
            VNI_RANGE.end()
        ))
    }
}

/// A CIDR must be written with its network address: `10.244.0.1/16` is refused with a
/// hint to `10.244.0.0/16`.
pub(crate) fn check_network_address(net: Ipv4Net) -> Result<(), String> {
    if net.addr() == net.network() {
        Ok(())
    } else {
        Err(format!(
            "{net} has host bits set; did you mean {}?",
            net.trunc()
        ))
    }
}

/// Whether two networks may not coexist: their ranges overlap and they belong to the same
/// tenant (both without a tenant counts as the same). Networks of different tenants may
/// overlap: tenants are isolated from each other.
pub fn networks_overlap(a: &Network, b: &Network) -> bool {
    if a.spec.tenant != b.spec.tenant {
        return false;
    }
    let (x, y) = (a.spec.cidr.trunc(), b.spec.cidr.trunc());
    x.contains(&y.network()) || y.contains(&x.network())
}

impl Network {
    /// The server's cross-object check: an error on `spec.cidr` naming the first of
    /// `others` that [overlaps](networks_overlap) this network. An object with this
    /// network's own name is skipped, so the stored version of an updated network can be
    /// among `others`.
    pub fn check_overlap<'a>(
        &self,
        others: impl IntoIterator<Item = &'a Network>,
    ) -> Result<(), ValidationError> {
        for other in others {
            if other.metadata.name != self.metadata.name && networks_overlap(self, other) {
                let tenant = match &other.spec.tenant {
                    Some(t) => format!(" of the same tenant {t:?}"),
                    None => String::new(),
                };
                return Err(ValidationError::new(
                    "spec.cidr",
                    format!(
                        "{} overlaps network {:?} ({}){tenant}",
                        self.spec.cidr, other.metadata.name, other.spec.cidr
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The VNI in use: `spec.vni`, else `status.vni` (allocated by the server).
    pub fn vni(&self) -> Option<u32> {
        self.spec.vni.or(self.status.vni)
    }

    /// Whether the server still has to allocate a VNI: the backend uses one and neither
    /// `spec.vni` nor `status.vni` is set.
    pub fn needs_vni(&self) -> bool {
        self.spec.backend.uses_vni() && self.vni().is_none()
    }

    /// Whether `addr` is inside `spec.cidr` but in none of the `spec.reserved` ranges.
    pub fn assignable(&self, addr: Ipv4Addr) -> bool {
        self.spec.cidr.contains(&addr) && !self.spec.reserved.iter().any(|r| r.contains(&addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::ObjectMeta;

    fn net(name: &str, cidr: &str) -> Network {
        Network::new(
            ObjectMeta::named(name),
            NetworkSpec::new(cidr.parse().unwrap()),
        )
    }

    fn err(n: &Network) -> ValidationError {
        n.validate().expect_err("should not validate")
    }

    #[track_caller]
    fn assert_err(e: ValidationError, field: &str, fragment: &str) {
        assert_eq!(e.field, field, "{e}");
        assert!(e.message.contains(fragment), "{e:?} lacks {fragment:?}");
    }

    #[test]
    fn valid_network() {
        let mut n = net("pods", "10.244.0.0/16");
        n.validate().unwrap();
        n.spec.vni = Some(1);
        n.spec.mtu = Some(1450);
        n.spec.tenant = Some("blue".into());
        n.spec.reserved = vec!["10.244.0.0/24".parse().unwrap()];
        n.status.vni = Some(1);
        n.validate().unwrap();
    }

    #[test]
    fn cidr_host_bits() {
        let n = net("pods", "10.244.0.1/16");
        let e = err(&n);
        assert_err(e.clone(), "spec.cidr", "did you mean 10.244.0.0/16?");
        assert_eq!(
            e.to_string(),
            "spec.cidr: 10.244.0.1/16 has host bits set; did you mean 10.244.0.0/16?"
        );
    }

    #[test]
    fn node_subnet_prefix() {
        let mut n = net("pods", "10.244.0.0/16");
        n.spec.node_subnet_prefix = 16;
        assert_err(
            err(&n),
            "spec.nodeSubnetPrefix",
            "must be longer than the network's prefix /16",
        );
        n.spec.node_subnet_prefix = 12;
        assert_err(err(&n), "spec.nodeSubnetPrefix", "prefix /16");
        n.spec.node_subnet_prefix = 31;
        assert_err(err(&n), "spec.nodeSubnetPrefix", "at most /30");
        n.spec.node_subnet_prefix = 30;
        n.validate().unwrap();
    }

    #[test]
    fn vni_rules() {
        let mut n = net("pods", "10.244.0.0/16");
        n.spec.vni = Some(0);
        assert_err(err(&n), "spec.vni", "between 1 and 16777215");
        n.spec.vni = Some(16_777_216);
        assert_err(err(&n), "spec.vni", "got 16777216");
        n.spec.vni = Some(16_777_215);
        n.validate().unwrap();
        n.spec.backend = Backend::Hybrid;
        n.validate().unwrap();
        n.spec.backend = Backend::HostGw;
        assert_err(err(&n), "spec.vni", "not host-gw");
        n.spec.vni = None;
        n.status.vni = Some(0);
        assert_err(err(&n), "status.vni", "between 1");
    }

    #[test]
    fn mtu_and_tenant() {
        let mut n = net("pods", "10.244.0.0/16");
        n.spec.mtu = Some(575);
        assert_err(err(&n), "spec.mtu", "between 576 and 9000, got 575");
        n.spec.mtu = Some(9001);
        assert_err(err(&n), "spec.mtu", "got 9001");
        n.spec.mtu = Some(9000);
        n.validate().unwrap();
        n.spec.tenant = Some("Blue".into());
        assert_err(err(&n), "spec.tenant", "uppercase");
    }

    #[test]
    fn reserved_ranges() {
        let mut n = net("pods", "10.244.0.0/16");
        n.spec.reserved = vec![
            "10.244.0.0/30".parse().unwrap(),
            "10.245.0.0/24".parse().unwrap(),
        ];
        assert_err(
            err(&n),
            "spec.reserved[1]",
            "not inside the network's cidr 10.244.0.0/16",
        );
        n.spec.reserved[1] = "10.244.1.1/24".parse().unwrap();
        assert_err(err(&n), "spec.reserved[1]", "did you mean 10.244.1.0/24?");
        n.spec.reserved[1] = "10.0.0.0/8".parse().unwrap();
        assert_err(err(&n), "spec.reserved[1]", "not inside");
        n.spec.reserved.pop();
        n.validate().unwrap();
        assert!(!n.assignable("10.244.0.2".parse().unwrap()));
        assert!(n.assignable("10.244.0.4".parse().unwrap()));
        assert!(!n.assignable("10.245.0.4".parse().unwrap()));
    }

    #[test]
    fn name_rules() {
        let n = net("Pods", "10.244.0.0/16");
        assert_err(err(&n), "metadata.name", "uppercase 'P'");
        let n = net("a.b", "10.244.0.0/16");
        assert_err(err(&n), "metadata.name", "not a DNS-1123 label");
        let n = net("", "10.244.0.0/16");
        assert_err(err(&n), "metadata.name", "is required");
        let mut n = net("pods", "10.244.0.0/16");
        n.metadata.namespace = Some("default".into());
        assert_err(err(&n), "metadata.namespace", "cluster-scoped");
    }

    #[test]
    fn overlap() {
        let a = net("a", "10.244.0.0/16");
        let b = net("b", "10.244.128.0/17");
        let c = net("c", "10.245.0.0/16");
        assert!(networks_overlap(&a, &b));
        assert!(networks_overlap(&b, &a));
        assert!(!networks_overlap(&a, &c));
        let e = b.check_overlap([&c, &a]).unwrap_err();
        assert_err(
            e.clone(),
            "spec.cidr",
            r#"overlaps network "a" (10.244.0.0/16)"#,
        );
        assert_eq!(
            e.to_string(),
            r#"spec.cidr: 10.244.128.0/17 overlaps network "a" (10.244.0.0/16)"#
        );
        // The stored version of the same network is not a conflict.
        a.check_overlap([&a.clone(), &c]).unwrap();

        // Different tenants may overlap; the same tenant may not.
        let mut red = net("red", "10.244.0.0/16");
        red.spec.tenant = Some("red".into());
        let mut blue = net("blue", "10.244.0.0/16");
        blue.spec.tenant = Some("blue".into());
        assert!(!networks_overlap(&red, &blue));
        assert!(!networks_overlap(&red, &a));
        red.check_overlap([&a, &blue]).unwrap();
        let mut red2 = net("red2", "10.244.7.0/24");
        red2.spec.tenant = Some("red".into());
        assert_err(
            red2.check_overlap([&red]).unwrap_err(),
            "spec.cidr",
            r#"overlaps network "red" (10.244.0.0/16) of the same tenant "red""#,
        );
    }

    #[test]
    fn vni_helpers() {
        let mut n = net("pods", "10.244.0.0/16");
        assert!(n.needs_vni());
        n.status.vni = Some(7);
        assert_eq!(n.vni(), Some(7));
        assert!(!n.needs_vni());
        n.spec.vni = Some(9);
        assert_eq!(n.vni(), Some(9));
        let mut h = net("h", "10.1.0.0/16");
        h.spec.backend = Backend::HostGw;
        assert!(!h.needs_vni());
    }
}
