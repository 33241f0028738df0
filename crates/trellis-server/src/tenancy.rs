//! The rules between tenants and the objects of their worlds: which tenant a Network,
//! Namespace or Service belongs to, and what may change.
//!
//! - A Network, Namespace or TenantPeering may name only an existing Tenant; a Tenant
//!   is deleted only once nothing names it.
//! - Networks of one world must not overlap, and neither may the networks (or service
//!   ranges) of two peered tenants.
//! - A tenant's network uses vxlan (its VNI keeps the worlds apart), host-gw or hybrid;
//!   a tenant's host-gw or hybrid network is routed on the underlay as it is, so no
//!   network of any world may overlap it.
//! - A Namespace changes world (`spec.tenant`, including by its creation or deletion)
//!   only while it holds no Pods, Endpoints or Services, so every allocation and address
//!   stays in the world it was made in.
//! - `spec.tenant` of a Network and `spec.serviceCIDR` of a Tenant are immutable.
//!
//! Every change to Networks, Tenants and TenantPeerings bumps the one guard key
//! (`alloc::TOPOLOGY_GUARD`), so these checks are serialised between servers.

use ipnet::Ipv4Net;
use trellis_api::objects::{
    peering_conflict, AnyObject, Backend, Kind, Network, Tenant, TenantPeering,
};

use crate::resources::{kind_prefix, object_key, to_typed};
use crate::{ApiError, Server};

/// The Networks, Tenants and TenantPeerings of the cluster, read for one check.
#[derive(Debug, Default, Clone)]
pub struct Topology {
    /// Every Network.
    pub networks: Vec<Network>,
    /// Every Tenant.
    pub tenants: Vec<Tenant>,
    /// Every TenantPeering.
    pub peerings: Vec<TenantPeering>,
}

impl Topology {
    /// Read it from the store.
    pub async fn load(s: &Server) -> Result<Topology, ApiError> {
        let mut t = Topology::default();
        for kind in [Kind::Network, Kind::Tenant, Kind::TenantPeering] {
            for kv in s.store.list(&kind_prefix(kind, None)).await?.0 {
                match to_typed(&kv)? {
                    AnyObject::Network(n) => t.networks.push(n),
                    AnyObject::Tenant(x) => t.tenants.push(x),
                    AnyObject::TenantPeering(p) => t.peerings.push(p),
                    _ => {}
                }
            }
        }
        Ok(t)
    }

    fn tenant(&self, name: &str) -> Option<&Tenant> {
        self.tenants.iter().find(|t| t.metadata.name == name)
    }

    /// An error on `field` unless tenant `name` exists.
    pub fn require_tenant(&self, field: &str, name: &str) -> Result<(), ApiError> {
        if self.tenant(name).is_none() {
            return Err(ApiError::invalid(format!(
                "{field}: tenant {name:?} does not exist (create the Tenant first)"
            )));
        }
        Ok(())
    }

    /// The service range of tenant `name` (its `serviceCIDR`, else `cluster`).
    pub fn service_range(&self, name: &str, cluster: Ipv4Net) -> Ipv4Net {
        self.tenant(name)
            .and_then(|t| t.spec.service_cidr)
            .unwrap_or(cluster)
    }

    /// Network `n` (new or changed) against the rest: its tenant exists, it overlaps
    /// no network of its own world, nor one of a tenant peered with its own.
    pub fn check_network(&self, n: &Network) -> Result<(), ApiError> {
        if let Some(t) = &n.spec.tenant {
            self.require_tenant("spec.tenant", t)?;
        }
        n.check_overlap(&self.networks)
            .map_err(|e| ApiError::invalid(e.to_string()))?;
        // A tenant's host-gw network is routed on the underlay as it is: its range must
        // be the cluster's only one, in every world.
        let world = |t: &Option<String>| match t {
            Some(t) => format!("tenant {t:?}"),
            None => "the default world".to_string(),
        };
        let direct = |o: &Network| {
            o.spec.tenant.is_some() && matches!(o.spec.backend, Backend::HostGw | Backend::Hybrid)
        };
        for o in &self.networks {
            if o.metadata.name == n.metadata.name
                || o.spec.tenant == n.spec.tenant
                || !overlap(o.spec.cidr, n.spec.cidr)
            {
                continue;
            }
            if direct(n) {
                return Err(ApiError::invalid(format!(
                    "spec.cidr: a tenant's {} network is routed on the underlay as it is, so its range must be the cluster's only one; {} overlaps network {:?} ({}) of {} (use vxlan, or another range)",
                    n.spec.backend.as_str(),
                    n.spec.cidr,
                    o.metadata.name,
                    o.spec.cidr,
                    world(&o.spec.tenant)
                )));
            }
            if direct(o) {
                return Err(ApiError::invalid(format!(
                    "spec.cidr: {} overlaps network {:?} ({}) of {}, a {} network routed on the underlay as it is",
                    n.spec.cidr,
                    o.metadata.name,
                    o.spec.cidr,
                    world(&o.spec.tenant),
                    o.spec.backend.as_str()
                )));
            }
        }
        let Some(t) = &n.spec.tenant else {
            return Ok(());
        };
        if !matches!(
            n.spec.backend,
            Backend::Vxlan | Backend::HostGw | Backend::Hybrid
        ) {
            return Err(ApiError::invalid(format!(
                "spec.backend: a tenant's network uses vxlan (its own VNI keeps the worlds apart), or host-gw or hybrid (routed as it is, in a range no other world uses); {} cannot keep tenant {t:?}'s world apart",
                n.spec.backend.as_str()
            )));
        }
        for p in &self.peerings {
            let Some(peer) = p.spec.other(t) else {
                continue;
            };
            for o in &self.networks {
                if o.metadata.name != n.metadata.name
                    && o.spec.tenant.as_deref() == Some(peer)
                    && overlap(o.spec.cidr, n.spec.cidr)
                {
                    return Err(ApiError::invalid(format!(
                        "spec.cidr: {} overlaps network {:?} ({}) of tenant {peer:?}, which TenantPeering {:?} joins with {t:?}",
                        n.spec.cidr, o.metadata.name, o.spec.cidr, p.metadata.name
                    )));
                }
            }
        }
        Ok(())
    }

    /// A TenantPeering (new or changed): both tenants exist and their ranges are
    /// disjoint (`cluster`: the cluster's service range).
    pub fn check_peering(&self, p: &TenantPeering, cluster: Ipv4Net) -> Result<(), ApiError> {
        for (i, t) in p.spec.tenants.iter().enumerate() {
            self.require_tenant(&format!("spec.tenants[{i}]"), t)?;
        }
        let (a, b) = (&p.spec.tenants[0], &p.spec.tenants[1]);
        if let Some(m) = peering_conflict(
            a,
            b,
            &self.networks,
            self.service_range(a, cluster),
            self.service_range(b, cluster),
        ) {
            return Err(ApiError::invalid(format!("spec.tenants: {m}")));
        }
        Ok(())
    }

    /// Whether a Tenant may be deleted: nothing here names it (namespaces are checked
    /// by the caller).
    pub fn check_tenant_unused(&self, name: &str) -> Result<(), ApiError> {
        if let Some(n) = self
            .networks
            .iter()
            .find(|n| n.spec.tenant.as_deref() == Some(name))
        {
            return Err(ApiError::conflict(format!(
                "tenant {name:?} still owns network {:?}: delete it first",
                n.metadata.name
            )));
        }
        if let Some(p) = self
            .peerings
            .iter()
            .find(|p| p.spec.tenants.iter().any(|t| t == name))
        {
            return Err(ApiError::conflict(format!(
                "tenant {name:?} is still joined by TenantPeering {:?}: delete it first",
                p.metadata.name
            )));
        }
        Ok(())
    }
}

fn overlap(a: Ipv4Net, b: Ipv4Net) -> bool {
    let (x, y) = (a.trunc(), b.trunc());
    x.contains(&y.network()) || y.contains(&x.network())
}

/// The tenant of namespace `ns`: its Namespace's `spec.tenant` (`None`: the default
/// world, also for a namespace without an object).
pub async fn tenant_of_namespace(s: &Server, ns: &str) -> Result<Option<String>, ApiError> {
    let Some(kv) = s.store.get(&object_key(Kind::Namespace, None, ns)).await? else {
        return Ok(None);
    };
    match to_typed(&kv)? {
        AnyObject::Namespace(n) => Ok(n.spec.tenant),
        _ => Ok(None),
    }
}

/// An error on `spec.tenant` unless it is unset or names an existing Tenant (one
/// store read, not the whole topology).
pub async fn require_spec_tenant(s: &Server, t: Option<&str>) -> Result<(), ApiError> {
    let Some(t) = t else { return Ok(()) };
    if s.store
        .get(&object_key(Kind::Tenant, None, t))
        .await?
        .is_none()
    {
        return Err(ApiError::invalid(format!(
            "spec.tenant: tenant {t:?} does not exist (create the Tenant first)"
        )));
    }
    Ok(())
}

/// The service range of tenant `t`: its `spec.serviceCIDR`, else the cluster's.
pub async fn tenant_service_range(s: &Server, t: &str) -> Result<Ipv4Net, ApiError> {
    let kv = s.store.get(&object_key(Kind::Tenant, None, t)).await?;
    let range = match kv.as_ref().map(to_typed).transpose()? {
        Some(AnyObject::Tenant(x)) => x.spec.service_cidr,
        _ => None,
    };
    Ok(range.unwrap_or(s.cfg.service_cidr))
}

/// An error unless namespace `ns` is empty of Pods, Endpoints and Services (`doing`:
/// what would move it, for the message).
pub async fn require_empty_namespace(s: &Server, ns: &str, doing: &str) -> Result<(), ApiError> {
    let mut held = Vec::new();
    for (kind, one, many) in [
        (Kind::Pod, "pod", "pods"),
        (Kind::Endpoint, "endpoint", "endpoints"),
        (Kind::Service, "service", "services"),
    ] {
        let n = s.store.list(&kind_prefix(kind, Some(ns))).await?.0.len();
        match n {
            0 => {}
            1 => held.push(format!("1 {one}")),
            n => held.push(format!("{n} {many}")),
        }
    }
    if held.is_empty() {
        return Ok(());
    }
    Err(ApiError::invalid(format!(
        "spec.tenant: namespace {ns:?} holds {}; it can change tenant ({doing}) only while empty",
        held.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_api::objects::{NetworkSpec, ObjectMeta, TenantPeeringSpec, TenantSpec};

    fn net(name: &str, tenant: Option<&str>, cidr: &str) -> Network {
        let mut spec = NetworkSpec::new(cidr.parse().unwrap());
        spec.tenant = tenant.map(str::to_string);
        Network::new(ObjectMeta::named(name), spec)
    }

    fn tenant(name: &str, svc: Option<&str>) -> Tenant {
        Tenant::new(
            ObjectMeta::named(name),
            TenantSpec {
                service_cidr: svc.map(|s| s.parse().unwrap()),
            },
        )
    }

    fn peering(a: &str, b: &str) -> TenantPeering {
        TenantPeering::new(
            ObjectMeta::named(format!("{a}-{b}")),
            TenantPeeringSpec {
                tenants: vec![a.into(), b.into()],
            },
        )
    }

    fn topo() -> Topology {
        Topology {
            networks: vec![
                net("default", None, "10.244.0.0/16"),
                net("red-a", Some("red"), "10.244.0.0/16"),
                net("blue-a", Some("blue"), "10.244.0.0/16"),
                net("green-a", Some("green"), "10.50.0.0/16"),
            ],
            tenants: vec![
                tenant("red", None),
                tenant("blue", None),
                tenant("green", Some("10.97.0.0/16")),
            ],
            peerings: vec![peering("red", "green")],
        }
    }

    fn msg(r: Result<(), ApiError>) -> String {
        r.expect_err("should be refused").message
    }

    #[test]
    fn networks_per_world() {
        let t = topo();
        // Same range in another world: fine.
        t.check_network(&net("blue-b", Some("blue"), "10.1.0.0/16"))
            .unwrap();
        let m = msg(t.check_network(&net("red-b", Some("red"), "10.244.7.0/24")));
        assert!(
            m.starts_with("spec.cidr:") && m.contains("\"red-a\""),
            "{m}"
        );
        let m = msg(t.check_network(&net("x", Some("nosuch"), "10.9.0.0/16")));
        assert!(
            m.starts_with("spec.tenant:") && m.contains("does not exist"),
            "{m}"
        );
        // Red is peered with green: red may not take green's range.
        let m = msg(t.check_network(&net("red-b", Some("red"), "10.50.1.0/24")));
        assert!(
            m.contains("\"green-a\"") && m.contains("TenantPeering"),
            "{m}"
        );
        // Blue is not peered with green: it may.
        t.check_network(&net("blue-b", Some("blue"), "10.50.1.0/24"))
            .unwrap();
        // A network's update is not checked against itself.
        t.check_network(&net("red-a", Some("red"), "10.244.0.0/16"))
            .unwrap();
    }

    #[test]
    fn host_gw_tenant_networks_need_a_range_of_their_own() {
        let mut t = topo();
        let hostgw = |name: &str, tenant: &str, cidr: &str| {
            let mut n = net(name, Some(tenant), cidr);
            n.spec.backend = Backend::HostGw;
            n
        };
        // Overlapping another world's range: refused, naming the other network.
        let m = msg(t.check_network(&hostgw("blue-direct", "blue", "10.50.1.0/24")));
        assert!(
            m.starts_with("spec.cidr:") && m.contains("\"green-a\"") && m.contains("host-gw"),
            "{m}"
        );
        // A range of its own: fine; then no other world may overlap it.
        t.check_network(&hostgw("blue-direct", "blue", "10.70.0.0/16"))
            .unwrap();
        t.networks
            .push(hostgw("blue-direct", "blue", "10.70.0.0/16"));
        let m = msg(t.check_network(&net("red-b", Some("red"), "10.70.5.0/24")));
        assert!(
            m.contains("\"blue-direct\"") && m.contains("host-gw"),
            "{m}"
        );
        let m = msg(t.check_network(&net("plain", None, "10.70.0.0/24")));
        assert!(m.contains("\"blue-direct\""), "{m}");
        // Other backends cannot keep a world apart.
        let mut udp = net("red-u", Some("red"), "10.80.0.0/16");
        udp.spec.backend = Backend::Udp;
        let m = msg(t.check_network(&udp));
        assert!(m.starts_with("spec.backend:") && m.contains("udp"), "{m}");
        // Hybrid is routed as it is between nodes of one segment: a range of its own.
        let mut hybrid = net("blue-h", Some("blue"), "10.50.8.0/21");
        hybrid.spec.backend = Backend::Hybrid;
        let m = msg(t.check_network(&hybrid));
        assert!(m.starts_with("spec.cidr:") && m.contains("hybrid"), "{m}");
    }

    #[test]
    fn peerings() {
        let t = topo();
        let cluster: Ipv4Net = "10.96.0.0/16".parse().unwrap();
        t.check_peering(&peering("red", "green"), cluster).unwrap();
        let m = msg(t.check_peering(&peering("red", "blue"), cluster));
        assert!(
            m.starts_with("spec.tenants:") && m.contains("overlap"),
            "{m}"
        );
        let m = msg(t.check_peering(&peering("red", "nosuch"), cluster));
        assert!(m.starts_with("spec.tenants[1]:"), "{m}");
        // Disjoint pods but the same (cluster) service range.
        let mut t2 = t.clone();
        t2.networks.retain(|n| n.metadata.name != "blue-a");
        let m = msg(t2.check_peering(&peering("red", "blue"), cluster));
        assert!(m.contains("service range"), "{m}");
        assert_eq!(
            t.service_range("green", cluster).to_string(),
            "10.97.0.0/16"
        );
        assert_eq!(t.service_range("red", cluster), cluster);
    }

    #[test]
    fn tenant_delete() {
        let t = topo();
        let m = msg(t.check_tenant_unused("blue"));
        assert!(m.contains("\"blue-a\""), "{m}");
        let mut t2 = t.clone();
        t2.networks.retain(|n| n.spec.tenant.is_none());
        let m = msg(t2.check_tenant_unused("green"));
        assert!(m.contains("TenantPeering"), "{m}");
        t2.check_tenant_unused("blue").unwrap();
    }
}
