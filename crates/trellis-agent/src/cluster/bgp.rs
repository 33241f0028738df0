//! The BGP controller: this node's BGP speaker (`trellis-bgp`), as the cluster's objects
//! describe it.
//!
//! Inputs (typed, from informers): the served networks, Nodes, the `default`
//! BGPConfiguration, BGPPeers, BGPFilters, the Secrets of `trellis-system`, and the
//! default world's Services and Endpoints → desired ([`desired`], pure): the speaker's
//! settings (AS, reflector cluster), the prefixes it originates, and its peers →
//! the speaker is started once (again only when its settings change) and given its
//! prefixes and peers; a change of either goes out as UPDATEs and never resets another
//! peer's session. Learned routes are kernel routes of protocol 119
//! (`trellis_bgp::install`), left in place across an agent restart: the restarted
//! speaker changes them only once its peers have sent their tables, and the peers keep
//! this node's routes meanwhile (graceful restart).
//!
//! What is originated: the node's subnet of every `backend: bgp` network it serves (with
//! a blackhole route behind the bridge's, so nothing in it leaks elsewhere), and
//! for the Service ranges the BGPConfiguration lists: the cluster-IP ranges themselves
//! (from every node), and /32s of external and LoadBalancer IPs — from every node, or,
//! for `externalTrafficPolicy: Local`, only from nodes with a ready local endpoint
//! (also cluster IPs of such Services).
//!
//! Who peers: with the node mesh on (the default) and a bgp network here, every other
//! ready node holding a lease in a bgp network; and every BGPPeer that selects this
//! node (`node`, `nodeSelector`, or neither: all nodes) — a router by `peerIP`, or the
//! nodes its `peerSelector` selects — and, the other way round, every BGPPeer whose
//! `peerSelector` selects this node peers it with the nodes that BGPPeer selects. A
//! node with `spec.bgp.routeReflectorClusterID` reflects routes; the nodes it peers
//! with that are not reflectors are its clients.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::Ipv4Net;
use trellis_api::objects::{
    format_rfc3339, AnyObject, Backend, BgpConfiguration, BgpFilter, BgpFilterRule, BgpPassword,
    BgpPeer, BgpSession, CommunityValue, Endpoint, ExternalTrafficPolicy, FilterAction,
    MatchOperator, Network, Node, Secret, Service, ServiceType, BGP_SECRET_NAMESPACE,
    DEFAULT_AS_NUMBER,
};
use trellis_bgp::export::LocalRoute;
use trellis_bgp::policy::{Action, Filter, MatchOp, Rule};
use trellis_bgp::speaker::{Peer, Speaker, SpeakerConfig};

use super::networks::ServedSet;
use super::Served;
use trellis_client::informer::Informer;

/// The hold time proposed to peers that do not set one (short: node failures are
/// noticed within it when BFD is off).
const HOLD_TIME: u16 = 9;

/// What the speaker is, beyond its peers and routes: a change restarts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Settings {
    pub asn: u32,
    pub cluster_id: Option<Ipv4Addr>,
    pub port: u16,
}

/// What the speaker should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Desired {
    pub settings: Settings,
    pub routes: BTreeMap<Ipv4Net, LocalRoute>,
    pub peers: BTreeSet<Peer>,
    /// Peers left out, and why (logged).
    pub problems: Vec<String>,
}

/// The controller's inputs, typed.
pub(super) struct Inputs<'a> {
    pub node: &'a str,
    /// This node's served networks (default world) and its subnet in each.
    pub served: &'a [(String, Ipv4Net)],
    pub networks: &'a [&'a Network],
    pub nodes: &'a [&'a Node],
    pub config: Option<&'a BgpConfiguration>,
    pub peers: &'a [&'a BgpPeer],
    pub filters: &'a [&'a BgpFilter],
    /// The Secrets of [`BGP_SECRET_NAMESPACE`].
    pub secrets: &'a [&'a Secret],
    /// The default world's Services and Endpoints.
    pub services: &'a [&'a Service],
    pub endpoints: &'a [&'a Endpoint],
}

fn filter_rules(rules: &[BgpFilterRule]) -> impl Iterator<Item = Rule> + '_ {
    rules.iter().map(|r| Rule {
        action: match r.action {
            FilterAction::Accept => Action::Accept,
            FilterAction::Reject => Action::Reject,
        },
        op: match r.match_operator {
            MatchOperator::Equal => MatchOp::Equal,
            MatchOperator::NotEqual => MatchOp::NotEqual,
            MatchOperator::In => MatchOp::In,
            MatchOperator::NotIn => MatchOp::NotIn,
        },
        cidr: r.cidr,
    })
}

/// What the speaker of `inputs.node` should be: `None` when it has no bgp network and no
/// BGPPeer selects it.
pub(super) fn desired(inputs: &Inputs) -> Option<Desired> {
    let me = inputs
        .nodes
        .iter()
        .find(|n| n.metadata.name == inputs.node)?;
    let cluster_asn = inputs.config.map_or(DEFAULT_AS_NUMBER, |c| c.spec.asn());
    let asn_of = |n: &Node| {
        n.spec
            .bgp
            .as_ref()
            .and_then(|b| b.as_number)
            .map_or(cluster_asn, |a| a.0)
    };
    let cluster_of = |n: &Node| n.spec.bgp.as_ref().and_then(|b| b.cluster_id());
    let settings = Settings {
        asn: asn_of(me),
        cluster_id: cluster_of(me),
        port: inputs
            .config
            .and_then(|c| c.spec.listen_port)
            .unwrap_or(179),
    };
    let bgp_nets: BTreeSet<&str> = inputs
        .networks
        .iter()
        .filter(|n| n.spec.backend == Backend::Bgp && n.spec.tenant.is_none())
        .map(|n| n.metadata.name.as_str())
        .collect();
    let subnets: Vec<Ipv4Net> = inputs
        .served
        .iter()
        .filter(|(name, _)| bgp_nets.contains(name.as_str()))
        .map(|(_, s)| *s)
        .collect();
    // Peerings that concern this node, with the nodes (or router) on the other side.
    let mine: Vec<&BgpPeer> = inputs
        .peers
        .iter()
        .filter(|p| p.spec.selects_node(&me.metadata.name, &me.metadata.labels))
        .copied()
        .collect();
    let reverse: Vec<&BgpPeer> = inputs
        .peers
        .iter()
        .filter(|p| {
            p.spec
                .peer_selector
                .as_ref()
                .is_some_and(|s| s.matches(&me.metadata.labels))
        })
        .copied()
        .collect();
    if subnets.is_empty() && mine.is_empty() && reverse.is_empty() {
        return None;
    }
    let mut problems = Vec::new();
    let secret = |pw: &BgpPassword, what: &str, problems: &mut Vec<String>| -> Result<String, ()> {
        let r = &pw.secret_key_ref;
        let value = inputs
            .secrets
            .iter()
            .find(|s| s.metadata.name == r.name)
            .and_then(|s| s.spec.get(&r.key));
        match value.map(String::from_utf8) {
            Some(Ok(v)) => Ok(v),
            _ => {
                problems.push(format!(
                    "{what}: password Secret {BGP_SECRET_NAMESPACE}/{} has no key {:?}: not peering",
                    r.name, r.key
                ));
                Err(())
            }
        }
    };
    let mesh_password = match inputs
        .config
        .and_then(|c| c.spec.node_mesh_password.as_ref())
    {
        Some(pw) => match secret(pw, "node mesh", &mut problems) {
            Ok(v) => Some(Some(v)),
            Err(()) => None,
        },
        None => Some(None),
    };
    let mesh_restart = inputs
        .config
        .and_then(|c| c.spec.node_mesh_max_restart_time.as_ref())
        .map(|t| t.get().as_secs().min(4095) as u16);
    let ready_other = |n: &&&Node| n.metadata.name != me.metadata.name && n.status.ready;
    let node_peer = |n: &Node| Peer {
        client: settings.cluster_id.is_some() && cluster_of(n).is_none(),
        ..Peer::new(n.spec.address, asn_of(n))
    };
    let mut peers: BTreeMap<Ipv4Addr, Peer> = BTreeMap::new();
    if inputs.config.is_none_or(|c| c.spec.mesh()) && !subnets.is_empty() {
        if let Some(password) = &mesh_password {
            for n in inputs.nodes.iter().filter(ready_other).filter(|n| {
                n.status
                    .leases
                    .iter()
                    .any(|l| bgp_nets.contains(l.network.as_str()))
            }) {
                peers.insert(
                    n.spec.address,
                    Peer {
                        password: password.clone(),
                        hold_time: Some(HOLD_TIME),
                        restart_time: mesh_restart,
                        ..node_peer(n)
                    },
                );
            }
        }
    }
    // The options a BGPPeer gives its sessions: password, timers, filters.
    let options = |p: &BgpPeer, base: Peer, problems: &mut Vec<String>| -> Option<Peer> {
        let what = format!("BGPPeer {}", p.metadata.name);
        let password = match &p.spec.password {
            Some(pw) => Some(secret(pw, &what, problems).ok()?),
            None => None,
        };
        let mut import = Filter::default();
        let mut export = Filter::default();
        for name in &p.spec.filters {
            match inputs.filters.iter().find(|f| &f.metadata.name == name) {
                Some(f) => {
                    import.rules.extend(filter_rules(&f.spec.import_v4));
                    export.rules.extend(filter_rules(&f.spec.export_v4));
                }
                None => {
                    problems.push(format!(
                        "{what}: BGPFilter {name:?} does not exist: not peering"
                    ));
                    return None;
                }
            }
        }
        let hold = p
            .spec
            .hold_time
            .as_ref()
            .map(|h| h.get())
            .or_else(|| p.spec.keepalive_time.as_ref().map(|k| k.get() * 3))
            .map(|d| d.as_secs().min(65535) as u16);
        Some(Peer {
            password,
            import,
            export,
            hold_time: hold.or(base.hold_time),
            bfd: p.spec.bfd_enabled,
            restart_time: p
                .spec
                .max_restart_time
                .as_ref()
                .map(|t| t.get().as_secs().min(4095) as u16)
                .or(base.restart_time),
            ..base
        })
    };
    for p in &mine {
        match (p.spec.peer_address(), &p.spec.peer_selector) {
            (Some(Ok(addr)), _) => {
                let Some(asn) = p.spec.as_number else {
                    continue;
                };
                if *addr.ip() == me.spec.address {
                    continue;
                }
                let base = Peer {
                    port: (addr.port() != 179).then_some(addr.port()),
                    ..Peer::new(*addr.ip(), asn.0)
                };
                if let Some(peer) = options(p, base, &mut problems) {
                    peers.insert(peer.address, peer);
                }
            }
            (_, Some(sel)) => {
                for n in inputs
                    .nodes
                    .iter()
                    .filter(ready_other)
                    .filter(|n| sel.matches(&n.metadata.labels))
                {
                    if let Some(peer) = options(p, node_peer(n), &mut problems) {
                        peers.insert(peer.address, peer);
                    }
                }
            }
            _ => {}
        }
    }
    for p in &reverse {
        for n in inputs
            .nodes
            .iter()
            .filter(ready_other)
            .filter(|n| p.spec.selects_node(&n.metadata.name, &n.metadata.labels))
        {
            if let Some(peer) = options(p, node_peer(n), &mut problems) {
                peers.entry(peer.address).or_insert(peer);
            }
        }
    }
    let routes = originated(inputs, &subnets);
    Some(Desired {
        settings,
        routes,
        peers: peers.into_values().collect(),
        problems,
    })
}

/// The prefixes this node originates, with their communities.
fn originated(inputs: &Inputs, subnets: &[Ipv4Net]) -> BTreeMap<Ipv4Net, LocalRoute> {
    let mut out: BTreeSet<Ipv4Net> = subnets.iter().copied().collect();
    if let Some(c) = inputs.config {
        let within = |ranges: &[trellis_api::objects::CidrEntry], ip: Ipv4Addr| {
            ranges.iter().any(|r| r.cidr.contains(&ip))
        };
        out.extend(c.spec.service_cluster_ips.iter().map(|r| r.cidr.trunc()));
        for svc in inputs.services {
            let local_only = svc.spec.external_traffic_policy == ExternalTrafficPolicy::Local;
            let has_local = inputs
                .endpoints
                .iter()
                .any(|e| e.spec.ready && e.spec.node == inputs.node && svc.selects(e));
            if local_only && !has_local {
                continue;
            }
            let host = |ip: Ipv4Addr| Ipv4Net::new(ip, 32).expect("/32");
            if let Some(ip) = svc.spec.cluster_ipv4() {
                if local_only && within(&c.spec.service_cluster_ips, ip) {
                    out.insert(host(ip));
                }
            }
            for ip in &svc.spec.external_ips {
                if within(&c.spec.service_external_ips, *ip) {
                    out.insert(host(*ip));
                }
            }
            if svc.spec.type_ == ServiceType::LoadBalancer {
                if let Some(ip) = svc.status.load_balancer_ip {
                    if within(&c.spec.service_load_balancer_ips, ip) {
                        out.insert(host(ip));
                    }
                }
            }
        }
    }
    out.into_iter()
        .map(|p| {
            let mut r = LocalRoute {
                blackhole: subnets.contains(&p),
                ..LocalRoute::default()
            };
            for c in inputs
                .config
                .map(|c| c.spec.communities_for(p))
                .unwrap_or_default()
            {
                match c {
                    CommunityValue::Standard(v) => r.communities.push(v),
                    CommunityValue::Large(a, b, c) => r.large_communities.push((a, b, c)),
                }
            }
            (p, r)
        })
        .collect()
}

/// Keeps the speaker as [`desired`] says.
pub(super) struct BgpLoop {
    pub(super) client: trellis_client::Client,
    pub(super) node: String,
    pub(super) address: Ipv4Addr,
    pub(super) served: ServedSet,
    pub(super) nodes: Informer,
    pub(super) networks: Informer,
    pub(super) configs: Informer,
    pub(super) peers: Informer,
    pub(super) filters: Informer,
    pub(super) secrets: Informer,
    pub(super) namespaces: Informer,
    pub(super) services: Informer,
    pub(super) endpoints: Informer,
    pub(super) resync: Duration,
}

/// How often the sessions' status is looked at (and published when it changed).
const STATUS_EVERY: Duration = Duration::from_secs(3);

/// The speaker's sessions as the Node's status shows them.
fn session_status(s: &Speaker) -> Vec<BgpSession> {
    s.status()
        .into_iter()
        .map(|st| BgpSession {
            peer: st.peer.address,
            as_number: st.peer.asn,
            state: st.state,
            since: format_rfc3339(st.since),
            received: st.received as u32,
            sent: st.sent as u32,
            graceful_restart: st.graceful_restart,
            stale: st.stale,
            bfd: st.bfd,
            last_error: st.last_error,
        })
        .collect()
}

/// The objects of one kind in a snapshot.
fn of<'a, T>(
    objs: &'a [std::sync::Arc<AnyObject>],
    f: impl Fn(&'a AnyObject) -> Option<&'a T>,
) -> Vec<&'a T> {
    objs.iter().filter_map(|o| f(o)).collect()
}

impl BgpLoop {
    /// The inputs' snapshots, once every informer has listed.
    fn desired(&self) -> Option<Option<Desired>> {
        let nodes = self.nodes.snapshot()?;
        let nets = self.networks.snapshot()?;
        let configs = self.configs.snapshot()?;
        let peers = self.peers.snapshot()?;
        let filters = self.filters.snapshot()?;
        let secrets = self.secrets.snapshot()?;
        let namespaces = self.namespaces.snapshot()?;
        let services = self.services.snapshot()?;
        let endpoints = self.endpoints.snapshot()?;
        let served: Vec<(String, Ipv4Net)> = self
            .served
            .borrow()
            .iter()
            .filter(|s: &&Served| s.world.is_none())
            .map(|s| (s.name.clone(), s.subnet))
            .collect();
        // Tenants' addresses overlap: only the default world's Services are announced.
        let tenant_ns: BTreeSet<&str> = namespaces
            .iter()
            .filter_map(|o| match &**o {
                AnyObject::Namespace(n) if n.spec.tenant.is_some() => {
                    Some(n.metadata.name.as_str())
                }
                _ => None,
            })
            .collect();
        let default_world = |ns: Option<&str>| !tenant_ns.contains(ns.unwrap_or_default());
        let inputs = Inputs {
            node: &self.node,
            served: &served,
            networks: &of(&nets, |o| match o {
                AnyObject::Network(n) => Some(n),
                _ => None,
            }),
            nodes: &of(&nodes, |o| match o {
                AnyObject::Node(n) => Some(n),
                _ => None,
            }),
            config: configs.iter().find_map(|o| match &**o {
                AnyObject::BgpConfiguration(c) if c.metadata.name == "default" => Some(c),
                _ => None,
            }),
            peers: &of(&peers, |o| match o {
                AnyObject::BgpPeer(p) => Some(p),
                _ => None,
            }),
            filters: &of(&filters, |o| match o {
                AnyObject::BgpFilter(f) => Some(f),
                _ => None,
            }),
            secrets: &of(&secrets, |o| match o {
                AnyObject::Secret(s) => Some(s),
                _ => None,
            }),
            services: &of(&services, |o| match o {
                AnyObject::Service(s) if default_world(s.namespace()) => Some(s),
                _ => None,
            }),
            endpoints: &of(&endpoints, |o| match o {
                AnyObject::Endpoint(e) if default_world(e.namespace()) => Some(e),
                _ => None,
            }),
        };
        Some(desired(&inputs))
    }

    pub(super) async fn run(self) {
        let mut served_changed = self.served.clone();
        let mut changed: Vec<tokio::sync::watch::Receiver<u64>> = [
            &self.nodes,
            &self.networks,
            &self.configs,
            &self.peers,
            &self.filters,
            &self.secrets,
            &self.namespaces,
            &self.services,
            &self.endpoints,
        ]
        .iter()
        .map(|i| i.subscribe())
        .collect();
        let mut speaker: Option<(Settings, Speaker)> = None;
        let mut applied: Option<Desired> = None;
        let mut published: Option<Vec<BgpSession>> = None;
        loop {
            if let Some(want) = self.desired() {
                if want != applied {
                    self.apply(&want, &mut speaker).await;
                    for p in want.iter().flat_map(|d| &d.problems) {
                        if applied.as_ref().is_none_or(|a| !a.problems.contains(p)) {
                            tracing::warn!("bgp: {p}");
                        }
                    }
                    applied = if want.is_none() || speaker.is_some() {
                        want
                    } else {
                        None
                    };
                }
            }
            let sessions = speaker
                .as_ref()
                .map(|(_, s)| session_status(s))
                .unwrap_or_default();
            if published.as_ref() != Some(&sessions) {
                match self.publish(&sessions).await {
                    Ok(()) => published = Some(sessions),
                    Err(e) => tracing::warn!("bgp: publishing the sessions' status: {e}"),
                }
            }
            let any =
                futures::future::select_all(changed.iter_mut().map(|c| Box::pin(c.changed())));
            tokio::select! {
                _ = served_changed.changed() => {}
                _ = any => {}
                _ = tokio::time::sleep(self.resync.min(STATUS_EVERY)) => {}
            }
        }
    }

    /// Record the sessions in our Node's status.
    async fn publish(&self, sessions: &[BgpSession]) -> Result<(), trellis_client::ClientError> {
        let path = format!("/v1/nodes/{}", self.node);
        super::join::update_node_status(&self.client, &path, |st| {
            if st.bgp == sessions {
                return false;
            }
            st.bgp = sessions.to_vec();
            true
        })
        .await
    }

    async fn apply(&self, want: &Option<Desired>, speaker: &mut Option<(Settings, Speaker)>) {
        let Some(d) = want else {
            // Nothing for BGP here any more: its learned routes go too.
            if let Some((_, s)) = speaker.take() {
                match s.shutdown().await {
                    Ok(()) => tracing::info!("bgp speaker stopped"),
                    Err(e) => tracing::warn!("bgp speaker: removing its routes: {e}"),
                }
            }
            return;
        };
        if speaker.as_ref().is_some_and(|(s, _)| *s != d.settings) {
            // A new AS or cluster: the sessions restart (peers keep our routes through
            // graceful restart, and the kernel keeps theirs).
            *speaker = None;
        }
        if speaker.is_none() {
            let cfg = SpeakerConfig {
                asn: d.settings.asn,
                address: self.address,
                port: d.settings.port,
                hold_time: HOLD_TIME,
                cluster_id: d.settings.cluster_id,
                // A restarted agent leaves the kernel's routes alone until its peers
                // have sent their tables.
                defer: Duration::from_secs(10),
            };
            match Speaker::start(cfg).await {
                Ok(s) => {
                    tracing::info!(asn = d.settings.asn, cluster = ?d.settings.cluster_id, "bgp speaker started");
                    *speaker = Some((d.settings, s));
                }
                Err(e) => tracing::warn!("bgp speaker: {e}"),
            }
        }
        if let Some((_, s)) = speaker {
            s.set_routes(&d.routes);
            let peers: Vec<Peer> = d.peers.iter().cloned().collect();
            s.set_peers(&peers);
        }
    }
}

#[cfg(test)]
mod tests;
