//! Allocators and the per-kind rules of create, update and delete.
//!
//! Every allocation is a key under `/alloc/` whose value is the key of its owner; it is
//! written in the same store transaction as the owner, with a precondition that the key
//! is absent. Two servers racing for the same value: one transaction wins, the other
//! gets a conflict on that key and picks again. A value the client asked for (a
//! `spec.clusterIP`, a `nodePort`, a `vni`) is not picked again: its conflict is an
//! error naming the field.
//!
//! | allocation | key | owner |
//! |---|---|---|
//! | cluster IP | `/alloc/clusterips/<ip>` (default world), `/alloc/tenants/<tenant>/clusterips/<ip>` | the Service |
//! | node port | `/alloc/nodeports/<port>` | the Service |
//! | load-balancer IP | `/alloc/lbips/<ip>` | the Service (from a LoadBalancerPool) |
//! | VNI | `/alloc/vnis/<vni>` | the Network |
//! | node subnet | `/alloc/subnets/<network>/<addr>-<len>` | `{"node": …}`, attached to the node's grace lease |
//! | topology | `/alloc/networks` | bumped by every Network, Tenant and TenantPeering change, so the checks between them are serialised |
//!
//! Node liveness: a heartbeat keeps two store leases per node alive: `live`
//! (`node_lease_ttl`, key `/leases/nodes/<node>`) and `grace` (`node_lease_ttl +
//! subnet_grace`, key `/leases/grace/<node>`). Subnet allocations hang on the grace
//! lease: a node that comes back within the grace period finds its subnets; after it,
//! they are free for others.

use std::collections::{BTreeSet, HashSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use trellis_api::objects::{
    AnyObject, Kind, Network, Service, ServiceType, SubnetLease, DEFAULT_NAMESPACE,
};
use trellis_store::{KeyValue, LeaseId, Precondition, StoreError, Txn, TxnOp};

use crate::resources::{kind_prefix, object_key, stored_bytes, to_typed};
use crate::tenancy::{
    require_empty_namespace, require_spec_tenant, tenant_of_namespace, tenant_service_range,
    Topology,
};
use crate::{ApiError, Server};

/// The guard key bumped by every Network, Tenant and TenantPeering create, update and
/// delete, so the checks between them (`tenancy`) are serialised.
const TOPOLOGY_GUARD: &str = "/alloc/networks";

/// The store writes an object change needs besides the object itself, and how to react
/// when one of their preconditions fails.
#[derive(Debug, Default)]
pub struct Plan {
    /// Checks and writes to add to the object's transaction.
    pub txn: Txn,
    /// Allocation keys the client asked for, with the error to answer when taken.
    requested: Vec<(String, ApiError)>,
}

impl Plan {
    /// A conflict on `key`: an error for a requested value, `Ok` (retry) otherwise.
    pub fn on_conflict(&self, key: &str) -> Result<(), ApiError> {
        match self.requested.iter().find(|(k, _)| k == key) {
            Some((_, e)) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn check(&mut self, key: impl Into<String>, p: Precondition) {
        self.txn.checks.push((key.into(), p));
    }

    fn put(&mut self, key: impl Into<String>, value: &str) {
        self.txn.ops.push(TxnOp::Put {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            lease: None,
        });
    }

    fn claim(&mut self, key: String, owner: &str) {
        self.check(key.clone(), Precondition::Absent);
        self.put(key, owner);
    }

    fn claim_requested(&mut self, key: String, owner: &str, err: ApiError) {
        self.requested.push((key.clone(), err));
        self.claim(key, owner);
    }

    fn release(&mut self, key: String) {
        self.txn.ops.push(TxnOp::Delete { key });
    }
}

/// The prefix of the cluster IP keys of a world (`None`: the default world).
fn clusterip_prefix(tenant: Option<&str>) -> String {
    match tenant {
        None => "/alloc/clusterips/".to_string(),
        Some(t) => format!("/alloc/tenants/{t}/clusterips/"),
    }
}
fn clusterip_key(tenant: Option<&str>, ip: Ipv4Addr) -> String {
    format!("{}{ip}", clusterip_prefix(tenant))
}
fn lbip_key(ip: Ipv4Addr) -> String {
    format!("/alloc/lbips/{ip}")
}
fn nodeport_key(port: u16) -> String {
    format!("/alloc/nodeports/{port}")
}
fn vni_key(vni: u32) -> String {
    format!("/alloc/vnis/{vni}")
}
fn subnet_prefix(network: &str) -> String {
    format!("/alloc/subnets/{network}/")
}
fn subnet_key(network: &str, cidr: Ipv4Net) -> String {
    format!(
        "/alloc/subnets/{network}/{}-{}",
        cidr.addr(),
        cidr.prefix_len()
    )
}

/// Who holds an allocation (the owner key, or the node for subnets).
async fn holders(s: &Server, prefix: &str) -> Result<Vec<KeyValue>, ApiError> {
    Ok(s.store.list(prefix).await?.0)
}

/// The last path element of every key under `prefix`.
async fn taken(s: &Server, prefix: &str) -> Result<HashSet<String>, ApiError> {
    Ok(holders(s, prefix)
        .await?
        .into_iter()
        .filter_map(|kv| kv.key.strip_prefix(prefix).map(str::to_string))
        .collect())
}

/// A start point that spreads concurrent allocators over the range, so racing servers
/// rarely collide.
fn spread(n: u64) -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    if n == 0 {
        0
    } else {
        (t ^ (t >> 7).wrapping_mul(0x9e37_79b9)) % n
    }
}

/// What to add to a create's transaction; fills allocated fields into `obj`.
pub async fn plan_create(s: &Server, key: &str, obj: &mut AnyObject) -> Result<Plan, ApiError> {
    let mut plan = Plan::default();
    match obj {
        AnyObject::Network(n) => {
            network_guard(s, &mut plan, n).await?;
            if let Some(v) = n.spec.vni {
                n.status.vni = Some(v);
                plan.claim_requested(
                    vni_key(v),
                    key,
                    ApiError::invalid(format!("spec.vni: {v} is already used by another network")),
                );
            } else {
                let v = pick_vni(s).await?;
                n.status.vni = Some(v);
                plan.claim(vni_key(v), key);
            }
        }
        AnyObject::Service(svc) => {
            service_cluster_ip(s, &mut plan, key, svc, None).await?;
            service_node_ports(s, &mut plan, key, svc, None).await?;
            service_lb_ip(s, &mut plan, key, svc, None).await?;
        }
        AnyObject::Namespace(n) => {
            if n.spec.tenant.is_some() {
                require_spec_tenant(s, n.spec.tenant.as_deref()).await?;
                require_empty_namespace(s, &n.metadata.name, "created in a tenant").await?;
            }
        }
        AnyObject::Tenant(t) => {
            topology_guard(s, &mut plan, &t.metadata.name, |_| Ok(())).await?;
        }
        AnyObject::TenantPeering(p) => {
            let cluster = s.cfg.service_cidr;
            topology_guard(s, &mut plan, &p.metadata.name, |t| {
                t.check_peering(p, cluster)
            })
            .await?;
        }
        AnyObject::ClusterNetworkPolicy(p) => {
            require_spec_tenant(s, p.spec.tenant.as_deref()).await?;
        }
        AnyObject::BgpPeer(p) => crate::bgp::check_peer(s, p).await?,
        AnyObject::BgpConfiguration(c) => crate::bgp::check_configuration(s, c).await?,
        AnyObject::Ingress(i) => crate::ingress::check_ingress(s, i).await?,
        AnyObject::HttpRoute(r) => crate::ingress::check_route(s, r).await?,
        AnyObject::Secret(secret) => crate::ingress::check_secret(secret)?,
        AnyObject::Node(_)
        | AnyObject::Pod(_)
        | AnyObject::Endpoint(_)
        | AnyObject::LoadBalancerPool(_)
        | AnyObject::NetworkPolicy(_)
        | AnyObject::BgpFilter(_) => {}
    }
    Ok(plan)
}

/// What to add to an update's transaction: immutable fields, kept allocations, status
/// kept when the update leaves it out.
pub async fn plan_update(
    s: &Server,
    key: &str,
    old: &AnyObject,
    new: &mut AnyObject,
) -> Result<Plan, ApiError> {
    let mut plan = Plan::default();
    match (old, new) {
        (AnyObject::Network(o), AnyObject::Network(n)) => {
            if n.spec.cidr != o.spec.cidr {
                return Err(immutable("spec.cidr", &o.spec.cidr));
            }
            if n.spec.node_subnet_prefix != o.spec.node_subnet_prefix {
                return Err(immutable(
                    "spec.nodeSubnetPrefix",
                    &o.spec.node_subnet_prefix,
                ));
            }
            if n.spec.tenant != o.spec.tenant {
                return Err(immutable(
                    "spec.tenant",
                    &o.spec.tenant.as_deref().unwrap_or("<none>"),
                ));
            }
            network_guard(s, &mut plan, n).await?;
            let old_vni = o.vni();
            match n.spec.vni {
                Some(v) if Some(v) != old_vni => {
                    plan.claim_requested(
                        vni_key(v),
                        key,
                        ApiError::invalid(format!(
                            "spec.vni: {v} is already used by another network"
                        )),
                    );
                    if let Some(ov) = old_vni {
                        plan.release(vni_key(ov));
                    }
                    n.status.vni = Some(v);
                }
                _ => n.status.vni = old_vni,
            }
        }
        (AnyObject::Service(o), AnyObject::Service(n)) => {
            if n.status == Default::default() {
                n.status = o.status.clone();
            }
            service_cluster_ip(s, &mut plan, key, n, Some(o)).await?;
            service_node_ports(s, &mut plan, key, n, Some(o)).await?;
            service_lb_ip(s, &mut plan, key, n, Some(o)).await?;
        }
        (AnyObject::Node(o), AnyObject::Node(n)) if n.status == Default::default() => {
            n.status = o.status.clone();
        }
        (AnyObject::Namespace(o), AnyObject::Namespace(n)) if n.spec.tenant != o.spec.tenant => {
            require_spec_tenant(s, n.spec.tenant.as_deref()).await?;
            require_empty_namespace(s, &n.metadata.name, "moved to another tenant").await?;
        }
        (AnyObject::Tenant(o), AnyObject::Tenant(n))
            if n.spec.service_cidr != o.spec.service_cidr =>
        {
            let was = o
                .spec
                .service_cidr
                .map_or("<none>".to_string(), |c| c.to_string());
            return Err(immutable("spec.serviceCIDR", &was));
        }
        (AnyObject::ClusterNetworkPolicy(_), AnyObject::ClusterNetworkPolicy(p)) => {
            require_spec_tenant(s, p.spec.tenant.as_deref()).await?;
        }
        (AnyObject::TenantPeering(_), AnyObject::TenantPeering(p)) => {
            let cluster = s.cfg.service_cidr;
            topology_guard(s, &mut plan, &p.metadata.name, |t| {
                t.check_peering(p, cluster)
            })
            .await?;
        }
        (AnyObject::BgpPeer(_), AnyObject::BgpPeer(p)) => crate::bgp::check_peer(s, p).await?,
        (AnyObject::BgpConfiguration(_), AnyObject::BgpConfiguration(c)) => {
            crate::bgp::check_configuration(s, c).await?
        }
        (_, AnyObject::Ingress(i)) => crate::ingress::check_ingress(s, i).await?,
        (_, AnyObject::HttpRoute(r)) => crate::ingress::check_route(s, r).await?,
        (_, AnyObject::Secret(secret)) => crate::ingress::check_secret(secret)?,
        _ => {}
    }
    Ok(plan)
}

/// What to add to a delete's transaction: the object's allocations go with it.
pub async fn plan_delete(s: &Server, _key: &str, old: &AnyObject) -> Result<Plan, ApiError> {
    let mut plan = Plan::default();
    match old {
        AnyObject::Tenant(t) => {
            let name = t.metadata.name.as_str();
            topology_guard(s, &mut plan, name, |topo| topo.check_tenant_unused(name)).await?;
            for kind in [Kind::Namespace, Kind::ClusterNetworkPolicy] {
                for kv in s.store.list(&kind_prefix(kind, None)).await?.0 {
                    let named = match to_typed(&kv)? {
                        AnyObject::Namespace(n) => (n.spec.tenant.as_deref() == Some(name))
                            .then_some(("namespace", n.metadata.name)),
                        AnyObject::ClusterNetworkPolicy(p) => (p.spec.tenant.as_deref()
                            == Some(name))
                        .then_some(("ClusterNetworkPolicy", p.metadata.name)),
                        _ => None,
                    };
                    if let Some((what, obj)) = named {
                        return Err(ApiError::conflict(format!(
                            "tenant {name:?} is still named by {what} {obj:?}: delete it or move it first"
                        )));
                    }
                }
            }
        }
        AnyObject::TenantPeering(p) => {
            topology_guard(s, &mut plan, &p.metadata.name, |_| Ok(())).await?;
        }
        AnyObject::Namespace(n) if n.spec.tenant.is_some() => {
            require_empty_namespace(s, &n.metadata.name, "deleted, back to the default world")
                .await?;
        }
        AnyObject::Network(n) => {
            let guard = s.store.get(TOPOLOGY_GUARD).await?;
            guard_check(&mut plan, guard.as_ref(), n.metadata.name.as_str());
            if let Some(v) = n.vni() {
                plan.release(vni_key(v));
            }
            for kv in holders(s, &subnet_prefix(&n.metadata.name)).await? {
                plan.release(kv.key);
            }
        }
        AnyObject::Service(svc) => {
            if let Some(ip) = cluster_ip(svc) {
                let tenant = tenant_of_namespace(
                    s,
                    svc.metadata
                        .namespace
                        .as_deref()
                        .unwrap_or(DEFAULT_NAMESPACE),
                )
                .await?;
                plan.release(clusterip_key(tenant.as_deref(), ip));
            }
            for p in &svc.spec.ports {
                if let Some(np) = p.node_port {
                    plan.release(nodeport_key(np));
                }
            }
            if let Some(ip) = svc.status.load_balancer_ip {
                plan.release(lbip_key(ip));
            }
        }
        _ => {}
    }
    Ok(plan)
}

/// A `LoadBalancer` Service's address (`status.loadBalancerIP`): kept while it still
/// matches `spec.loadBalancerIP`; the requested one (it must lie in a pool); else the
/// first free address of the pools. With no pool or no free address the service stays
/// pending (no address) until [`run_lb_allocator`] finds one. Other types release it.
async fn service_lb_ip(
    s: &Server,
    plan: &mut Plan,
    key: &str,
    svc: &mut Service,
    old: Option<&Service>,
) -> Result<(), ApiError> {
    let old_ip = old.and_then(|o| o.status.load_balancer_ip);
    let release_old = |plan: &mut Plan| {
        if let Some(ip) = old_ip {
            plan.release(lbip_key(ip));
        }
    };
    if svc.spec.type_ != ServiceType::LoadBalancer {
        release_old(plan);
        svc.status.load_balancer_ip = None;
        if svc.spec.load_balancer_ip.is_some() {
            return Err(ApiError::invalid(
                "spec.loadBalancerIP: only for type LoadBalancer",
            ));
        }
        return Ok(());
    }
    match (svc.spec.load_balancer_ip, old_ip) {
        (None, Some(o)) => {
            svc.status.load_balancer_ip = Some(o);
            return Ok(());
        }
        (Some(w), Some(o)) if w == o => {
            svc.status.load_balancer_ip = Some(o);
            return Ok(());
        }
        _ => release_old(plan),
    }
    let mut pools = Vec::new();
    for kv in s
        .store
        .list(&kind_prefix(Kind::LoadBalancerPool, None))
        .await?
        .0
    {
        if let AnyObject::LoadBalancerPool(p) = to_typed(&kv)? {
            pools.push(p);
        }
    }
    if let Some(ip) = svc.spec.load_balancer_ip {
        if !pools.iter().any(|p| p.spec.contains(ip)) {
            return Err(ApiError::invalid(format!(
                "spec.loadBalancerIP: {ip} is in no LoadBalancerPool"
            )));
        }
        plan.claim_requested(
            lbip_key(ip),
            key,
            ApiError::invalid(format!("spec.loadBalancerIP: {ip} is already allocated")),
        );
        svc.status.load_balancer_ip = Some(ip);
        return Ok(());
    }
    let used = taken(s, "/alloc/lbips/").await?;
    let free = pools
        .iter()
        .flat_map(|p| p.spec.addresses())
        .find(|ip| !used.contains(&ip.to_string()));
    svc.status.load_balancer_ip = free;
    if let Some(ip) = free {
        plan.claim(lbip_key(ip), key);
    }
    Ok(())
}

/// Give pending `LoadBalancer` Services an address when a pool appears or grows: on every
/// LoadBalancerPool change (and every 10 s), re-run the allocation for each pending one.
pub async fn run_lb_allocator(s: std::sync::Arc<Server>) {
    use futures::StreamExt;
    loop {
        if let Err(e) = assign_pending_lb_ips(&s).await {
            tracing::warn!("load-balancer allocator: {e}");
        }
        let rev = s.store.revision().await.unwrap_or(0);
        let mut w = match s
            .store
            .watch(&kind_prefix(Kind::LoadBalancerPool, None), rev + 1)
            .await
        {
            Ok(w) => w,
            Err(_) => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), w.next()).await;
    }
}

async fn assign_pending_lb_ips(s: &Server) -> Result<(), ApiError> {
    let prefix = format!("/registry/{}/", Kind::Service.plural());
    for kv in s.store.list(&prefix).await?.0 {
        let AnyObject::Service(old) = to_typed(&kv)? else {
            continue;
        };
        if old.spec.type_ != ServiceType::LoadBalancer || old.status.load_balancer_ip.is_some() {
            continue;
        }
        let mut new = old.clone();
        let mut plan = Plan::default();
        service_lb_ip(s, &mut plan, &kv.key, &mut new, Some(&old)).await?;
        if new.status.load_balancer_ip.is_none() {
            continue;
        }
        let txn = std::mem::take(&mut plan.txn)
            .check(kv.key.clone(), Precondition::Revision(kv.mod_revision))
            .put(kv.key.clone(), stored_bytes(&AnyObject::Service(new)), None);
        match s.store.txn(txn).await {
            // Lost a race (the service or the address changed): the next pass retries.
            Ok(_) | Err(StoreError::Conflict { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn immutable(field: &str, was: &impl std::fmt::Display) -> ApiError {
    ApiError::invalid(format!("{field}: field is immutable (was {was})"))
}

fn guard_check(plan: &mut Plan, guard: Option<&KeyValue>, name: &str) {
    let p = match guard {
        Some(kv) => Precondition::Revision(kv.mod_revision),
        None => Precondition::Absent,
    };
    plan.check(TOPOLOGY_GUARD, p);
    plan.put(TOPOLOGY_GUARD, name);
}

/// The checks of a Network against the others and the tenants (`tenancy`),
/// serialised through the guard key: a concurrent change makes this transaction fail
/// and the request re-check.
async fn network_guard(s: &Server, plan: &mut Plan, n: &Network) -> Result<(), ApiError> {
    let guard = s.store.get(TOPOLOGY_GUARD).await?;
    Topology::load(s).await?.check_network(n)?;
    guard_check(plan, guard.as_ref(), &n.metadata.name);
    Ok(())
}

/// Bump the guard for a Tenant or TenantPeering change, after `check` passed on the
/// topology read after the guard.
async fn topology_guard(
    s: &Server,
    plan: &mut Plan,
    name: &str,
    check: impl FnOnce(&Topology) -> Result<(), ApiError>,
) -> Result<(), ApiError> {
    let guard = s.store.get(TOPOLOGY_GUARD).await?;
    check(&Topology::load(s).await?)?;
    guard_check(plan, guard.as_ref(), name);
    Ok(())
}

async fn pick_vni(s: &Server) -> Result<u32, ApiError> {
    let used = taken(s, "/alloc/vnis/").await?;
    let (lo, hi) = (*s.cfg.vni_range.start(), *s.cfg.vni_range.end());
    let n = u64::from(hi - lo) + 1;
    // Low VNIs first (readable), from a spread start among the first thousand.
    let start = spread(n.min(1000));
    (0..n)
        .map(|i| lo + ((start + i) % n) as u32)
        .find(|v| !used.contains(&v.to_string()))
        .ok_or_else(|| ApiError::invalid("spec.vni: no free VNI left"))
}

fn cluster_ip(svc: &Service) -> Option<Ipv4Addr> {
    svc.spec.cluster_ip.as_deref().and_then(|s| s.parse().ok())
}

fn wants_cluster_ip(svc: &Service) -> bool {
    svc.spec.type_ != ServiceType::ExternalName
}

fn wants_node_ports(svc: &Service) -> bool {
    matches!(
        svc.spec.type_,
        ServiceType::NodePort | ServiceType::LoadBalancer
    )
}

/// A Service's cluster IP: the requested one (checked and claimed), the old one (kept;
/// it is immutable), or a free one from the service CIDR.
async fn service_cluster_ip(
    s: &Server,
    plan: &mut Plan,
    key: &str,
    svc: &mut Service,
    old: Option<&Service>,
) -> Result<(), ApiError> {
    let old_ip = old.and_then(|o| o.spec.cluster_ip.clone());
    // The Service's world: its namespace's tenant, which cannot change while the
    // namespace holds Services (`tenancy`).
    let tenant = tenant_of_namespace(
        s,
        svc.metadata
            .namespace
            .as_deref()
            .unwrap_or(DEFAULT_NAMESPACE),
    )
    .await?;
    let tenant = tenant.as_deref();
    if !wants_cluster_ip(svc) {
        if let Some(ip) = old.and_then(cluster_ip) {
            plan.release(clusterip_key(tenant, ip));
        }
        if svc.spec.cluster_ip.is_some() {
            return Err(ApiError::invalid(
                "spec.clusterIP: must be empty for type ExternalName",
            ));
        }
        return Ok(());
    }
    match (&svc.spec.cluster_ip, &old_ip) {
        (None, Some(o)) => {
            svc.spec.cluster_ip = Some(o.clone());
            return Ok(());
        }
        (Some(n), Some(o)) if n == o => return Ok(()),
        (Some(_), Some(o)) => return Err(immutable("spec.clusterIP", o)),
        _ => {}
    }
    let cidr = match tenant {
        None => s.cfg.service_cidr,
        Some(t) => tenant_service_range(s, t).await?,
    };
    match svc.spec.cluster_ip.as_deref() {
        Some(trellis_api::objects::CLUSTER_IP_NONE) => Ok(()),
        Some(ip) => {
            let ip: Ipv4Addr = ip.parse().map_err(|_| {
                ApiError::invalid(format!(
                    "spec.clusterIP: {ip:?} is not an IPv4 address or None"
                ))
            })?;
            if !cidr.contains(&ip) || ip == cidr.network() || ip == cidr.broadcast() {
                return Err(ApiError::invalid(format!(
                    "spec.clusterIP: {ip} is not a usable address of the service range {cidr}"
                )));
            }
            plan.claim_requested(
                clusterip_key(tenant, ip),
                key,
                ApiError::invalid(format!("spec.clusterIP: {ip} is already allocated")),
            );
            Ok(())
        }
        None => {
            let used = taken(s, &clusterip_prefix(tenant)).await?;
            let first = u32::from(cidr.network()) + 1;
            let n = u64::from(u32::from(cidr.broadcast()) - first);
            let start = spread(n);
            let ip = (0..n)
                .map(|i| Ipv4Addr::from(first + ((start + i) % n) as u32))
                .find(|ip| !used.contains(&ip.to_string()))
                .ok_or_else(|| {
                    ApiError::invalid(format!("spec.clusterIP: the service range {cidr} is full"))
                })?;
            svc.spec.cluster_ip = Some(ip.to_string());
            plan.claim(clusterip_key(tenant, ip), key);
            Ok(())
        }
    }
}

/// A Service's node ports: requested ones checked against the range and claimed, old
/// ones kept for the same port, the rest picked; ports the update dropped are released.
async fn service_node_ports(
    s: &Server,
    plan: &mut Plan,
    key: &str,
    svc: &mut Service,
    old: Option<&Service>,
) -> Result<(), ApiError> {
    let old_ports: Vec<_> = old.map(|o| o.spec.ports.clone()).unwrap_or_default();
    let old_set: BTreeSet<u16> = old_ports.iter().filter_map(|p| p.node_port).collect();
    let mut keep = BTreeSet::new();
    if !wants_node_ports(svc) {
        for (i, p) in svc.spec.ports.iter().enumerate() {
            if p.node_port.is_some() {
                return Err(ApiError::invalid(format!(
                    "spec.ports[{i}].nodePort: only for type NodePort or LoadBalancer"
                )));
            }
        }
    } else {
        svc.spec
            .validate_node_ports(&s.cfg.node_port_range)
            .map_err(|e| ApiError::invalid(e.to_string()))?;
        let mut used: Option<HashSet<String>> = None;
        let range = s.cfg.node_port_range.clone();
        let mut mine = BTreeSet::new();
        for i in 0..svc.spec.ports.len() {
            let p = &svc.spec.ports[i];
            match p.node_port {
                Some(np) => {
                    if !mine.insert(np) {
                        return Err(ApiError::invalid(format!(
                            "spec.ports[{i}].nodePort: {np} is used twice in this service"
                        )));
                    }
                    if old_set.contains(&np) {
                        keep.insert(np);
                    } else {
                        plan.claim_requested(
                            nodeport_key(np),
                            key,
                            ApiError::invalid(format!(
                                "spec.ports[{i}].nodePort: {np} is already allocated"
                            )),
                        );
                    }
                }
                None => {
                    // Keep the node port the same port had before.
                    let prev = old_ports
                        .iter()
                        .find(|o| o.port == p.port && o.protocol == p.protocol)
                        .and_then(|o| o.node_port)
                        .filter(|np| !mine.contains(np));
                    let np = match prev {
                        Some(np) => {
                            keep.insert(np);
                            np
                        }
                        None => {
                            if used.is_none() {
                                used = Some(taken(s, "/alloc/nodeports/").await?);
                            }
                            let used = used.as_ref().expect("filled above");
                            let lo = *range.start();
                            let n = u64::from(range.end() - lo) + 1;
                            let start = spread(n);
                            let np = (0..n)
                                .map(|j| lo + ((start + j) % n) as u16)
                                .find(|np| !used.contains(&np.to_string()) && !mine.contains(np))
                                .ok_or_else(|| {
                                    ApiError::invalid(format!(
                                        "spec.ports[{i}].nodePort: no free node port in {}-{}",
                                        range.start(),
                                        range.end()
                                    ))
                                })?;
                            plan.claim(nodeport_key(np), key);
                            np
                        }
                    };
                    mine.insert(np);
                    svc.spec.ports[i].node_port = Some(np);
                }
            }
        }
    }
    for np in old_set.difference(&keep) {
        plan.release(nodeport_key(*np));
    }
    Ok(())
}

// ---- node liveness and subnets

const LIVE_PREFIX: &str = "/leases/nodes/";
const GRACE_PREFIX: &str = "/leases/grace/";

/// The value of a subnet allocation.
#[derive(Debug, Serialize, Deserialize)]
struct SubnetHolder {
    node: String,
}

/// Keep the node's lease under `prefix` alive, creating a new one when it expired.
/// Returns the lease and whether it already existed.
async fn ensure_lease(
    s: &Server,
    prefix: &str,
    node: &str,
    ttl: Duration,
) -> Result<(LeaseId, bool), ApiError> {
    let key = format!("{prefix}{node}");
    for _ in 0..8 {
        let cur = s.store.get(&key).await?;
        if let Some(kv) = &cur {
            if let Some(id) = kv.lease {
                match s.store.lease_keep_alive(id).await {
                    Ok(_) => return Ok((id, true)),
                    Err(StoreError::LeaseNotFound(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let id = s.store.lease_grant(ttl).await?;
        let pre = match &cur {
            Some(kv) => Precondition::Revision(kv.mod_revision),
            None => Precondition::Absent,
        };
        match s
            .store
            .txn(Txn::new().check(key.clone(), pre).put(
                key.clone(),
                node.as_bytes().to_vec(),
                Some(id),
            ))
            .await
        {
            Ok(_) => return Ok((id, false)),
            Err(StoreError::Conflict { .. }) => {
                // Another server renewed it first: use theirs.
                let _ = s.store.lease_revoke(id).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::conflict(format!(
        "lease of node {node} kept changing; retry"
    )))
}

/// What a heartbeat found and renewed.
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    /// The node was alive already (false: it had expired, or this is its first
    /// heartbeat).
    pub was_alive: bool,
    /// The grace lease its subnet allocations hang on.
    pub grace: LeaseId,
}

/// A heartbeat: keep the node's leases alive.
pub async fn heartbeat(s: &Server, node: &str) -> Result<Liveness, ApiError> {
    if s.store
        .get(&object_key(Kind::Node, None, node))
        .await?
        .is_none()
    {
        return Err(ApiError::not_found(format!(
            "Node {node:?} (create it first)"
        )));
    }
    let ttl = s.cfg.node_lease_ttl;
    let (_, was_alive) = ensure_lease(s, LIVE_PREFIX, node, ttl).await?;
    let (grace, _) = ensure_lease(s, GRACE_PREFIX, node, ttl + s.cfg.subnet_grace).await?;
    if !was_alive {
        set_node_status(s, node, |st| st.ready = true).await?;
        set_endpoints_ready(s, node, true).await?;
    }
    Ok(Liveness { was_alive, grace })
}

/// Change a Node's status with read-modify-CAS.
pub async fn set_node_status(
    s: &Server,
    node: &str,
    f: impl Fn(&mut trellis_api::objects::NodeStatus),
) -> Result<(), ApiError> {
    let key = object_key(Kind::Node, None, node);
    for _ in 0..16 {
        let Some(kv) = s.store.get(&key).await? else {
            return Ok(());
        };
        let AnyObject::Node(mut n) = to_typed(&kv)? else {
            return Ok(());
        };
        let before = n.status.clone();
        f(&mut n.status);
        if n.status == before {
            return Ok(());
        }
        n.status.heartbeat_time = Some(trellis_api::objects::format_rfc3339(
            std::time::SystemTime::now(),
        ));
        match s
            .store
            .update(
                &key,
                stored_bytes(&AnyObject::Node(n)),
                kv.mod_revision,
                None,
            )
            .await
        {
            Ok(_) => return Ok(()),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::conflict(format!(
        "status of node {node} kept changing"
    )))
}

/// Mark every Endpoint published for `node` ready or not ready (the node's liveness
/// decides whether its pods should get traffic).
async fn set_endpoints_ready(s: &Server, node: &str, ready: bool) -> Result<(), ApiError> {
    let prefix = format!("/registry/{}/", Kind::Endpoint.plural());
    let (items, _) = s.store.list(&prefix).await?;
    for kv in items {
        let AnyObject::Endpoint(mut ep) = to_typed(&kv)? else {
            continue;
        };
        if ep.spec.node != node || ep.spec.ready == ready {
            continue;
        }
        ep.spec.ready = ready;
        match s
            .store
            .update(
                &kv.key,
                stored_bytes(&AnyObject::Endpoint(ep)),
                kv.mod_revision,
                None,
            )
            .await
        {
            // Changed meanwhile (the agent republished it): the newer write wins.
            Ok(_) | Err(StoreError::Conflict { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The node's subnet of `network`: the one it holds, or the first free one. Subnets
/// overlapping the network's reserved ranges or holding a node's underlay address (an
/// `l2` network shares the hosts' segment) are never handed out.
pub async fn acquire_subnet(
    s: &Server,
    node: &str,
    network: &str,
) -> Result<SubnetLease, ApiError> {
    let net = match s
        .store
        .get(&object_key(Kind::Network, None, network))
        .await?
    {
        Some(kv) => match to_typed(&kv)? {
            AnyObject::Network(n) => n,
            _ => return Err(ApiError::internal("network key holds another kind")),
        },
        None => return Err(ApiError::not_found(format!("Network {network:?}"))),
    };
    let grace = heartbeat(s, node).await?.grace;
    let prefix = subnet_prefix(network);
    let mut host_addrs = Vec::new();
    for kv in s.store.list(&kind_prefix(Kind::Node, None)).await?.0 {
        if let AnyObject::Node(n) = to_typed(&kv)? {
            host_addrs.push(n.spec.address);
        }
    }
    let blocked = |c: &Ipv4Net| {
        net.spec
            .reserved
            .iter()
            .any(|r| r.contains(c) || c.contains(r))
            || host_addrs.iter().any(|a| c.contains(a))
    };
    for _ in 0..64 {
        let held = holders(s, &prefix).await?;
        let mut used = HashSet::new();
        let mut mine = None;
        for kv in &held {
            let cidr = parse_subnet_key(&prefix, &kv.key);
            let holder: Option<SubnetHolder> = serde_json::from_slice(&kv.value).ok();
            if holder.as_ref().is_some_and(|h| h.node == node) {
                mine = cidr.map(|c| (c, kv.clone()));
            }
            if let Some(c) = cidr {
                used.insert(c);
            }
        }
        let value = serde_json::to_vec(&SubnetHolder {
            node: node.to_string(),
        })
        .map_err(|e| ApiError::internal(e.to_string()))?;
        let (cidr, txn) = match mine {
            Some((cidr, kv)) if kv.lease == Some(grace) => {
                publish_lease(s, node, network, cidr).await?;
                return Ok(lease_of(network, cidr));
            }
            // Held, but on an older grace lease: move it to the current one.
            Some((cidr, kv)) => (
                cidr,
                Txn::new()
                    .check(kv.key.clone(), Precondition::Revision(kv.mod_revision))
                    .put(kv.key, value, Some(grace)),
            ),
            None => {
                let free = net
                    .spec
                    .cidr
                    .subnets(net.spec.node_subnet_prefix)
                    .map_err(|e| ApiError::internal(e.to_string()))?
                    .find(|c| !used.contains(c) && !blocked(c))
                    .ok_or_else(|| {
                        ApiError::conflict(format!(
                            "network {network} ({}) has no free /{} subnet left",
                            net.spec.cidr, net.spec.node_subnet_prefix
                        ))
                    })?;
                let k = subnet_key(network, free);
                (
                    free,
                    Txn::new()
                        .check(k.clone(), Precondition::Absent)
                        .put(k, value, Some(grace)),
                )
            }
        };
        match s.store.txn(txn).await {
            Ok(_) => {
                publish_lease(s, node, network, cidr).await?;
                return Ok(lease_of(network, cidr));
            }
            Err(StoreError::Conflict { .. }) => continue,
            Err(StoreError::LeaseNotFound(_)) => {
                return Err(ApiError::unavailable("node lease expired meanwhile; retry"))
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::conflict("subnet allocation kept racing; retry"))
}

fn parse_subnet_key(prefix: &str, key: &str) -> Option<Ipv4Net> {
    let (a, l) = key.strip_prefix(prefix)?.split_once('-')?;
    Ipv4Net::new(a.parse().ok()?, l.parse().ok()?).ok()
}

fn lease_of(network: &str, cidr: Ipv4Net) -> SubnetLease {
    SubnetLease::new(network, cidr)
}

/// Record the lease in the Node's status (agents watch Nodes).
async fn publish_lease(
    s: &Server,
    node: &str,
    network: &str,
    cidr: Ipv4Net,
) -> Result<(), ApiError> {
    set_node_status(s, node, |st| {
        st.leases.retain(|l| l.network != network);
        st.leases.push(lease_of(network, cidr));
        st.leases.sort_by(|a, b| a.network.cmp(&b.network));
    })
    .await
}

/// Keep Node status in step with the leases the store expires: a node whose live lease
/// expired is not ready; a node whose grace lease expired lost its subnets (the store
/// deleted their keys with the lease). Every server runs it; the updates are idempotent.
/// Each (re)start first reconciles every Node against the lease keys, so expiries that
/// happened while no server watched are caught too.
pub async fn run_node_lifecycle(s: std::sync::Arc<Server>) {
    use futures::StreamExt;
    loop {
        let rev = match reconcile_node_status(&s).await {
            Ok(rev) => rev,
            Err(e) => {
                tracing::warn!("node lifecycle: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut w = match s.store.watch("/leases/", rev + 1).await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!("node lifecycle watch: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(item) = w.next().await {
            let key = match item {
                Ok(trellis_store::WatchItem::Event(trellis_store::Event::Delete {
                    key, ..
                })) => key,
                // A resync or an error: start over with a full reconcile.
                Ok(trellis_store::WatchItem::Resync { .. }) | Err(_) => break,
                Ok(_) => continue,
            };
            if let Err(e) = on_lease_gone(&s, &key).await {
                tracing::warn!(key, "node lifecycle: {e}");
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// React to the deletion of a lease key (if it is still gone).
async fn on_lease_gone(s: &Server, key: &str) -> Result<(), ApiError> {
    if s.store.get(key).await?.is_some() {
        return Ok(());
    }
    if let Some(node) = key.strip_prefix(LIVE_PREFIX) {
        tracing::info!(node, "node lease expired: not ready");
        set_node_status(s, node, |st| st.ready = false).await?;
        set_endpoints_ready(s, node, false).await?;
    } else if let Some(node) = key.strip_prefix(GRACE_PREFIX) {
        tracing::info!(node, "node grace period over: its subnets are free");
        set_node_status(s, node, |st| st.leases.clear()).await?;
    }
    Ok(())
}

/// Bring every Node's `ready` and `leases` in line with the lease keys; returns the
/// revision the check was made at.
async fn reconcile_node_status(s: &Server) -> Result<trellis_store::Revision, ApiError> {
    let (live, rev) = s.store.list(LIVE_PREFIX).await?;
    let (grace, _) = s.store.list(GRACE_PREFIX).await?;
    let (nodes, _) = s.store.list(&kind_prefix(Kind::Node, None)).await?;
    let has = |set: &[KeyValue], prefix: &str, n: &str| {
        set.iter().any(|kv| kv.key.strip_prefix(prefix) == Some(n))
    };
    for kv in &nodes {
        let AnyObject::Node(n) = to_typed(kv)? else {
            continue;
        };
        let name = n.metadata.name.as_str();
        if n.status.ready && !has(&live, LIVE_PREFIX, name) {
            set_node_status(s, name, |st| st.ready = false).await?;
            set_endpoints_ready(s, name, false).await?;
        }
        if !n.status.leases.is_empty() && !has(&grace, GRACE_PREFIX, name) {
            set_node_status(s, name, |st| st.leases.clear()).await?;
        }
    }
    Ok(rev)
}
