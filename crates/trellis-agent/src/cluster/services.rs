//! Services on this node: the proxy (nftables, `trellis-proxy`) and the cluster DNS
//! (`trellis-dns`), both fed from informers on Services and Endpoints.
//!
//! Change tracking as in kube-proxy: every pass computes each Service's model (its
//! ports, addresses and ready endpoints); the models that differ from the last applied
//! ones (and the services gone) are applied as a partial update. A full sync runs at
//! start, after any error, and every `full_resync`; it compares with the kernel and
//! changes only what differs, so a restart changes nothing.
//!
//! After every pass whose proxy sync succeeded (or had nothing to do), the store
//! revisions the two informers are complete up to are what the node has programmed: the
//! loop publishes them as its Node's `status.programmed` (one Node write when they
//! changed, at most one a second), which `trellis get svc -o wide` (PROGRAMMED) and
//! `trellis lab up` compare with a Service's and its Endpoints' resourceVersions.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use trellis_api::objects::{
    AnyObject, Endpoint, ExternalTrafficPolicy, ProgrammedRevisions, Protocol, Service, ServiceType,
};
use trellis_client::Client;
use trellis_dns::{NamedPort, Proto, Records, ServiceRecord};
use trellis_fabric::Local;
use trellis_net::Netns;
use trellis_proxy::{EndpointModel, PortModel, Proxy, ProxyConfig, ServiceModel};

use super::join::publish_programmed;
use super::networks::{node_ips, ServedSet};
use super::Served;
use trellis_client::informer::Informer;

/// The cluster DNS domain.
pub const DEFAULT_DOMAIN: &str = "cluster.local";
/// The service proxy's nftables table (family `ip`).
pub const PROXY_TABLE: &str = "trellis-svc";

fn key(svc: &Service) -> String {
    format!(
        "{}/{}",
        svc.metadata.namespace.as_deref().unwrap_or_default(),
        svc.metadata.name
    )
}

/// The proxy's model of every Service with a cluster IP.
pub fn models(services: &[Service], endpoints: &[Endpoint], node: &str) -> Vec<ServiceModel> {
    let mut out = Vec::new();
    for svc in services {
        let Some(cluster_ip) = svc.spec.cluster_ipv4() else {
            continue; // headless and ExternalName: DNS only
        };
        let node_ports = svc.spec.type_.has_node_ports();
        let mut eps: Vec<EndpointModel> = endpoints
            .iter()
            .filter(|e| e.spec.ready && svc.selects(e))
            .map(|e| EndpointModel {
                ip: e.spec.ip,
                local: e.spec.node == node,
            })
            .collect();
        eps.sort_by_key(|e| e.ip);
        eps.dedup_by_key(|e| e.ip);
        let mut external_ips = svc.spec.external_ips.clone();
        if svc.spec.type_ == ServiceType::LoadBalancer {
            external_ips.extend(svc.status.load_balancer_ip);
        }
        out.push(ServiceModel {
            key: key(svc),
            cluster_ip: Some(cluster_ip),
            external_ips,
            ports: svc
                .spec
                .ports
                .iter()
                .map(|p| PortModel {
                    name: p.name.clone().unwrap_or_default(),
                    port: p.port,
                    target_port: p.target_port(),
                    protocol: p.protocol,
                    node_port: if node_ports { p.node_port } else { None },
                })
                .collect(),
            affinity_timeout: svc.spec.affinity_timeout(),
            local_only: svc.spec.external_traffic_policy == ExternalTrafficPolicy::Local,
            endpoints: eps,
        });
    }
    out
}

/// The DNS records of every Service.
pub fn dns_records(domain: &str, services: &[Service], endpoints: &[Endpoint]) -> Records {
    let mut r = Records::new(domain);
    for svc in services {
        let ns = svc.metadata.namespace.as_deref().unwrap_or_default();
        let ports: Vec<NamedPort> = svc
            .spec
            .ports
            .iter()
            .filter_map(|p| {
                Some(NamedPort {
                    name: p.name.clone()?,
                    port: p.port,
                    protocol: match p.protocol {
                        Protocol::Tcp => Proto::Tcp,
                        Protocol::Udp => Proto::Udp,
                    },
                })
            })
            .collect();
        let rec = if svc.spec.type_ == ServiceType::ExternalName {
            match &svc.spec.external_name {
                Some(n) => ServiceRecord::ExternalName(n.clone()),
                None => continue,
            }
        } else if let Some(ip) = svc.spec.cluster_ipv4() {
            ServiceRecord::ClusterIp { ip, ports }
        } else if svc.spec.is_headless() {
            let mut ips: Vec<Ipv4Addr> = endpoints
                .iter()
                .filter(|e| e.spec.ready && svc.selects(e))
                .map(|e| e.spec.ip)
                .collect();
            ips.sort();
            ServiceRecord::Headless {
                endpoints: ips,
                ports,
            }
        } else {
            continue;
        };
        r.add_service(ns, &svc.metadata.name, rec);
    }
    r
}

/// Runs the proxy and DNS for this node: one proxy per world (the node's own namespace,
/// and each tenant world with a served network), each fed the Services and Endpoints of
/// its world's namespaces.
#[derive(Debug)]
pub struct ServiceLoop {
    /// Writes the Node's `status.programmed`.
    pub(super) client: Client,
    pub(super) node: String,
    pub(super) services: Informer,
    pub(super) endpoints: Informer,
    /// The nodes' addresses (where a world may reach only its own node ports).
    pub(super) nodes: Informer,
    /// Which tenant each namespace belongs to.
    pub(super) namespaces: Informer,
    /// The served networks: each has a DNS server (answering its world's records), and
    /// their gateways and ranges shape their world's proxy.
    pub(super) served: ServedSet,
    pub(super) local: Local,
    pub(super) domain: String,
    pub(super) full_resync: Duration,
}

/// One world's proxy: where it lives, and what it last applied.
#[derive(Debug)]
struct WorldProxy {
    ns: Option<Arc<Netns>>,
    proxy: Proxy,
    /// `None` until the first sync and after an error: the next pass is a full sync.
    applied: Option<BTreeMap<String, ServiceModel>>,
    last_full: Instant,
    /// The resourceVersions of the world's Services and Endpoints at the last pass
    /// that applied: a pass skips a world whose objects did not change.
    seen: Option<u64>,
}

/// A fingerprint of objects by namespace, name and resourceVersion.
fn fingerprint<'a>(objects: impl Iterator<Item = &'a trellis_api::objects::ObjectMeta>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for m in objects {
        (&m.namespace, &m.name, &m.resource_version).hash(&mut h);
    }
    h.finish()
}

/// The proxy's configuration for the served networks of world `tenant`: node ports on
/// the node's address and every pod gateway (the node's own world only); the
/// networks' ranges are the world's cluster.
fn proxy_config(local: &Local, served: &[Served], tenant: Option<&str>) -> ProxyConfig {
    let node_ips = match tenant {
        None => node_ips(local, served),
        // The pods' gateways, the world's transit address, where the node sends the
        // world's node ports, and the node's address (its pods' connections to it).
        Some(_) => {
            let mine: Vec<&Served> = served.iter().filter(|s| s.tenant() == tenant).collect();
            let mut ips: Vec<Ipv4Addr> = mine.iter().map(|s| s.gateway).collect();
            ips.extend(
                mine.iter()
                    .filter_map(|s| s.world.as_ref())
                    .map(|w| w.transit)
                    .take(1),
            );
            ips.push(local.address);
            ips
        }
    };
    ProxyConfig::new(
        PROXY_TABLE,
        node_ips,
        served
            .iter()
            .filter(|s| s.tenant() == tenant)
            .map(|s| s.cidr)
            .collect(),
    )
}

impl ServiceLoop {
    /// Sync after every change, forever: partial by default, full at start, after an
    /// error and every `full_resync`.
    pub async fn run(self) {
        let mut svc_changed = self.services.subscribe();
        let mut ep_changed = self.endpoints.subscribe();
        let mut ns_changed = self.namespaces.subscribe();
        let mut proxies: BTreeMap<Option<String>, WorldProxy> = BTreeMap::new();
        let (programmed, rx) = tokio::sync::watch::channel(None);
        tokio::spawn(publish_programmed(
            self.client.clone(),
            self.node.clone(),
            rx,
        ));
        let mut served_changed = self.served.clone();
        let mut node_table_written = None;
        let mut vips_written = None;
        loop {
            let served = served_changed.borrow_and_update().clone();
            // The worlds: the node's own, and each with a served network.
            let mut worlds: BTreeMap<Option<String>, Option<Arc<Netns>>> = BTreeMap::new();
            worlds.insert(None, None);
            for s in served.iter() {
                if let Some(w) = &s.world {
                    worlds.insert(Some(w.tenant.clone()), Some(w.ns.clone()));
                }
            }
            proxies.retain(|t, _| worlds.contains_key(t));
            for (t, ns) in &worlds {
                let cfg = proxy_config(&self.local, &served, t.as_deref());
                if proxies.get(t).map(|p| p.proxy.config()) != Some(&cfg) {
                    // A network came or went: a new proxy, fully synced (which adopts
                    // the tables as they are and writes the difference).
                    proxies.insert(
                        t.clone(),
                        WorldProxy {
                            ns: ns.clone(),
                            proxy: Proxy::new(cfg),
                            applied: None,
                            last_full: Instant::now(),
                            seen: None,
                        },
                    );
                }
            }
            let mut all_ok = false;
            if let (Some((svcs, svc_rev)), Some((eps, ep_rev)), Some(nss)) = (
                self.services.snapshot_at(),
                self.endpoints.snapshot_at(),
                self.namespaces.snapshot(),
            ) {
                let tenant_of = super::world::tenants_of(&nss);
                let world_of = |ns: Option<&String>| ns.and_then(|n| tenant_of.get(n)).cloned();
                all_ok = true;
                // Node ports and entry addresses of the tenants served here go to their
                // world; a world reaches no other world's.
                let transit: BTreeMap<&str, Ipv4Addr> = served
                    .iter()
                    .filter_map(|s| s.world.as_ref())
                    .map(|w| (w.tenant.as_str(), w.transit))
                    .collect();
                let nodes = self.nodes.snapshot().unwrap_or_default();
                let entries = super::world::node_entries(
                    svcs.iter().filter_map(|o| match &**o {
                        AnyObject::Service(svc) => Some((
                            svc,
                            tenant_of
                                .get(svc.metadata.namespace.as_deref().unwrap_or_default())
                                .map(String::as_str),
                        )),
                        _ => None,
                    }),
                    &transit,
                    nodes.iter().filter_map(|o| match &**o {
                        AnyObject::Node(n) => Some(n.spec.address),
                        _ => None,
                    }),
                );
                let vips = super::world::vip_routes(&entries, &transit);
                let written = &mut node_table_written;
                if let Err(e) =
                    tokio::task::block_in_place(|| super::world::sync_node_table(&entries, written))
                {
                    tracing::warn!("tenant node ports: {e}");
                    node_table_written = None;
                    all_ok = false;
                }
                if let Err(e) = super::world::sync_vip_routes(&vips, &mut vips_written).await {
                    tracing::warn!("tenant external addresses: {e}");
                    vips_written = None;
                    all_ok = false;
                }
                // Each Service and Endpoint to its world, in one walk.
                let mut by_world: BTreeMap<Option<String>, (Vec<Service>, Vec<Endpoint>)> =
                    BTreeMap::new();
                for o in svcs.iter().chain(eps.iter()) {
                    match &**o {
                        AnyObject::Service(s) => {
                            let t = world_of(s.metadata.namespace.as_ref());
                            if proxies.contains_key(&t) {
                                by_world.entry(t).or_default().0.push(s.clone());
                            }
                        }
                        AnyObject::Endpoint(e) => {
                            let t = world_of(e.metadata.namespace.as_ref());
                            if proxies.contains_key(&t) {
                                by_world.entry(t).or_default().1.push(e.clone());
                            }
                        }
                        _ => {}
                    }
                }
                for (t, wp) in proxies.iter_mut() {
                    let (services, endpoints) = by_world.remove(t).unwrap_or_default();
                    // A world none of whose objects changed has nothing to do (until
                    // its full resync is due).
                    let fp = fingerprint(
                        services
                            .iter()
                            .map(|s| &s.metadata)
                            .chain(endpoints.iter().map(|e| &e.metadata)),
                    );
                    if wp.seen == Some(fp)
                        && wp.applied.is_some()
                        && wp.last_full.elapsed() < self.full_resync
                    {
                        continue;
                    }
                    let records = dns_records(&self.domain, &services, &endpoints);
                    for dns in served
                        .iter()
                        .filter(|s| s.tenant() == t.as_deref())
                        .filter_map(|s| s.dns.as_ref())
                    {
                        dns.set_records(records.clone());
                    }
                    let want: BTreeMap<String, ServiceModel> =
                        models(&services, &endpoints, &self.node)
                            .into_iter()
                            .map(|m| (m.key.clone(), m))
                            .collect();
                    wp.sync(want, self.full_resync, t.as_deref());
                    wp.seen = wp.applied.is_some().then_some(fp);
                    all_ok &= wp.applied.is_some();
                }
                if all_ok {
                    // Every Service and Endpoint change up to the informers' revisions
                    // is in the kernel (and in DNS) now.
                    let new = Some(ProgrammedRevisions {
                        services: svc_rev,
                        endpoints: ep_rev,
                    });
                    programmed.send_if_modified(|r| {
                        let changed = *r != new;
                        *r = new;
                        changed
                    });
                }
            }
            tokio::select! {
                _ = svc_changed.changed() => {}
                _ = ep_changed.changed() => {}
                _ = ns_changed.changed() => {}
                _ = served_changed.changed() => {}
                _ = tokio::time::sleep(if all_ok { self.full_resync } else { Duration::from_secs(1) }) => {}
            }
        }
    }
}

impl WorldProxy {
    /// One pass to `want`: partial, or full at the first pass, after an error and
    /// every `full_resync`; inside the world's namespace.
    fn sync(
        &mut self,
        want: BTreeMap<String, ServiceModel>,
        full_resync: Duration,
        tenant: Option<&str>,
    ) {
        let full = self.applied.is_none() || self.last_full.elapsed() >= full_resync;
        let proxy = &mut self.proxy;
        let run =
            |f: &mut dyn FnMut()
                -> Result<trellis_proxy::SyncReport, trellis_proxy::ProxyError>| {
                // Netlink transactions and `conntrack` block: off the async workers' queue,
                // and inside the world (the proxy's socket opens there on first use).
                tokio::task::block_in_place(|| {
                    Netns::run_in(self.ns.as_deref(), f).map_err(|e| e.to_string())
                })
            };
        let res = if full {
            let all: Vec<ServiceModel> = want.values().cloned().collect();
            self.last_full = Instant::now();
            run(&mut || proxy.full_sync(&all))
        } else {
            let old = self.applied.as_ref().expect("partial sync has a base");
            let changed: Vec<ServiceModel> = want
                .values()
                .filter(|m| old.get(&m.key) != Some(m))
                .cloned()
                .collect();
            let removed: Vec<String> = old
                .keys()
                .filter(|k| !want.contains_key(*k))
                .cloned()
                .collect();
            if changed.is_empty() && removed.is_empty() {
                return;
            }
            run(&mut || proxy.update(&changed, &removed))
        };
        match res {
            Ok(Ok(r)) => {
                if let Some(e) = &r.conntrack_error {
                    // The tables are right; stale UDP flows wait for the next full sync.
                    tracing::warn!(tenant, "UDP conntrack clean-up: {e}");
                }
                tracing::debug!(?r, full, tenant, services = want.len(), "services synced");
                self.applied = Some(want);
            }
            Ok(Err(e)) => {
                tracing::warn!(full, tenant, "service proxy: {e}; a full sync follows");
                self.applied = None;
            }
            Err(e) => {
                tracing::warn!(tenant, "service proxy: {e}; a full sync follows");
                self.applied = None;
            }
        }
    }
}

/// The node's DNS upstreams: `/etc/resolv.conf`'s, minus our own address.
pub fn upstreams(own: SocketAddr) -> Vec<SocketAddr> {
    trellis_dns::upstreams_from_resolv_conf("/etc/resolv.conf")
        .into_iter()
        .filter(|u| *u != own)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(name: &str, spec: serde_json::Value, status: serde_json::Value) -> Service {
        match AnyObject::from_value(json!({"apiVersion": "trellis/v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"}, "spec": spec, "status": status}))
        {
            Ok(AnyObject::Service(s)) => s,
            other => panic!("{other:?}"),
        }
    }

    fn endpoint(name: &str, ns: &str, ip: &str, node: &str, ready: bool) -> Endpoint {
        match AnyObject::from_value(json!({"apiVersion": "trellis/v1", "kind": "Endpoint",
            "metadata": {"name": name, "namespace": ns, "labels": {"app": "web"}},
            "spec": {"containerId": name, "ifname": "eth0", "network": "default",
                "node": node, "ip": ip, "ready": ready}}))
        {
            Ok(AnyObject::Endpoint(e)) => e,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn models_take_ready_endpoints_of_the_namespace_only() {
        let svcs = vec![
            service(
                "web",
                json!({"type": "LoadBalancer", "clusterIP": "10.96.0.10", "selector": {"app": "web"},
                    "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30080}],
                    "externalIPs": ["203.0.113.5"]}),
                json!({"loadBalancerIP": "203.0.113.20"}),
            ),
            service(
                "plain",
                json!({"clusterIP": "10.96.0.11", "selector": {"app": "web"},
                    "ports": [{"port": 80, "nodePort": 30081}]}),
                json!({}),
            ),
            service(
                "headless",
                json!({"clusterIP": "None", "selector": {"app": "web"}, "ports": [{"port": 80}]}),
                json!({}),
            ),
        ];
        let eps = vec![
            endpoint("a", "default", "10.244.1.2", "n1", true),
            endpoint("b", "default", "10.244.2.2", "n2", true),
            endpoint("c", "default", "10.244.2.3", "n2", false),
            endpoint("d", "other", "10.244.2.4", "n2", true),
        ];
        let m = models(&svcs, &eps, "n1");
        assert_eq!(m.len(), 2, "headless services have no model: {m:?}");
        let web = &m[0];
        assert_eq!(web.key, "default/web");
        assert_eq!(
            web.endpoints,
            vec![
                EndpointModel {
                    ip: "10.244.1.2".parse().unwrap(),
                    local: true
                },
                EndpointModel {
                    ip: "10.244.2.2".parse().unwrap(),
                    local: false
                },
            ],
            "not ready and other namespaces are left out"
        );
        assert_eq!(
            web.external_ips,
            vec![
                "203.0.113.5".parse::<Ipv4Addr>().unwrap(),
                "203.0.113.20".parse().unwrap()
            ]
        );
        assert_eq!(web.ports[0].node_port, Some(30080));
        assert_eq!(web.ports[0].target_port, 8080);
        assert_eq!(
            m[1].ports[0].node_port, None,
            "a ClusterIP service has no node port"
        );
        let recs = dns_records(DEFAULT_DOMAIN, &svcs, &eps);
        let text = format!("{recs:?}");
        assert!(text.contains("10.244.2.2"), "{text}");
        assert!(
            !text.contains("10.244.2.3") && !text.contains("10.244.2.4"),
            "{text}"
        );
    }
}
