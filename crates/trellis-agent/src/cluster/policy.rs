//! Network policy on this node: informers on Namespaces, NetworkPolicies,
//! ClusterNetworkPolicies, Pods, Endpoints and Nodes, plus this node's own IPAM
//! reservations → [`Inputs`] (typed, pure) → `trellis_policy`'s incremental compiler →
//! one reconciler on the table `ip trellis-policy`.
//!
//! - This node's pods come from its IPAM reservations (labels and named ports from
//!   their Pod object, else the ADD's `LABELS`), so a pod is known the moment its
//!   address is reserved: [`PolicyController::admit`] runs a pass before the CNI ADD
//!   answers. Other nodes' pods come from their Endpoints.
//! - A pass applies only the element changes the compiler returns (partial sync); a
//!   full sync (read the kernel, change only the difference) runs at start, after an
//!   error and every `resync`, so drift is repaired and a restart writes nothing.
//! - Nothing is programmed before every informer has listed once; until then an ADD
//!   waits (bounded) and is refused with "try again later" rather than let a pod run
//!   unprotected.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use trellis_api::objects::{AnyObject, Backend, Pod};
use trellis_client::Client;
use trellis_policy::compile::{Change, Compiler};
use trellis_policy::model::{Inputs, PodInfo};
use trellis_policy::table::Table;

use super::networks::ServedSet;
use super::Served;
use crate::gate::{Gate, PodPolicy};
use crate::ipam::Reservation;
use trellis_client::informer::Informer;
use trellis_net::Netns;

/// How long an ADD waits for the first complete view of the policies.
const ADMIT_WAIT: Duration = Duration::from_secs(10);

/// The informers policy reads.
#[derive(Debug, Clone)]
pub(super) struct Informers {
    namespaces: Informer,
    netpols: Informer,
    cnps: Informer,
    pods: Informer,
    endpoints: Informer,
    nodes: Informer,
}

impl Informers {
    /// Start the informers only policy reads; Nodes, Endpoints and Namespaces are
    /// shared with the other loops.
    pub(super) fn start(
        client: &Client,
        nodes: Informer,
        endpoints: Informer,
        namespaces: Informer,
    ) -> Informers {
        let inf = |p: &str| Informer::start(client.clone(), p.to_string());
        Informers {
            namespaces,
            netpols: inf("/v1/networkpolicies"),
            cnps: inf("/v1/clusternetworkpolicies"),
            pods: inf("/v1/pods"),
            endpoints,
            nodes,
        }
    }

    fn all(&self) -> [&Informer; 6] {
        [
            &self.namespaces,
            &self.netpols,
            &self.cnps,
            &self.pods,
            &self.endpoints,
            &self.nodes,
        ]
    }
}

/// One world's policy: the compiler and the table inside the world's namespace.
#[derive(Debug)]
struct State {
    compiler: Compiler,
    /// The node's DNS and own addresses the compiler was built with.
    addrs: NodeAddrs,
    table: Table,
    last_full: Option<Instant>,
    /// Where the table lives (`None`: the node's own namespace).
    ns: Option<Arc<Netns>>,
    /// The fingerprint of the inputs the last successful pass compiled.
    seen: Option<u64>,
}

/// A fingerprint of a world's inputs: its objects by kind, namespace, name and
/// resourceVersion, and this node's reservations in it.
fn fingerprint(objects: &[&Arc<AnyObject>], served: &[Served], tenant: Option<&str>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for o in objects {
        match &***o {
            // Policy reads a Node's labels and address, not its status (which its
            // heartbeat and `status.programmed` keep writing).
            AnyObject::Node(n) => {
                (&n.metadata.name, &n.metadata.labels, n.spec.address).hash(&mut h)
            }
            o => {
                let m = o.metadata();
                (
                    o.kind().as_str(),
                    &m.namespace,
                    &m.name,
                    &m.resource_version,
                )
                    .hash(&mut h);
            }
        }
    }
    for s in served.iter().filter(|s| s.tenant() == tenant) {
        for r in s.node.ipam().list() {
            (r.ip, &r.attachment.container_id, &r.labels, &r.pod_name).hash(&mut h);
        }
    }
    h.finish()
}

impl State {
    fn new(node: &str, addrs: NodeAddrs, ns: Option<Arc<Netns>>) -> State {
        State {
            compiler: Compiler::new(node, &addrs.dns, &addrs.own),
            addrs,
            table: Table::new(),
            last_full: None,
            ns,
            seen: None,
        }
    }

    /// Run `f` (a table write) inside the world.
    fn in_world<T>(
        ns: &Option<Arc<Netns>>,
        f: impl FnOnce() -> Result<T, trellis_policy::PolicyError>,
    ) -> Result<T, String> {
        Netns::run_in(ns.as_deref(), f)
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }
}

/// Every pod's DNS servers (its gateway, or the node under `l2`), which stay reachable
/// whatever the egress policy says; and the node's own addresses, whose connections to
/// its pods are never policed (under `l2` the pods' gateway is the segment's router,
/// not the node's).
#[derive(Debug, Clone, PartialEq, Eq)]
struct NodeAddrs {
    dns: Vec<Ipv4Addr>,
    own: Vec<Ipv4Addr>,
}

impl NodeAddrs {
    /// Those of world `tenant`: its networks' gateways; the node's own address too
    /// for the node's own world.
    fn of(address: Ipv4Addr, served: &[Served], tenant: Option<&str>) -> NodeAddrs {
        let mine = || served.iter().filter(move |s| s.tenant() == tenant);
        let mut own: Vec<Ipv4Addr> = tenant.is_none().then_some(address).into_iter().collect();
        own.extend(
            mine()
                .filter(|s| s.started_backend != Backend::L2)
                .map(|s| s.gateway),
        );
        NodeAddrs {
            dns: mine().map(|s| s.gateway).collect(),
            own,
        }
    }
}

/// The policy controller of one node.
#[derive(Debug)]
pub struct PolicyController {
    node: String,
    address: Ipv4Addr,
    served: ServedSet,
    informers: Informers,
    /// Per world: `None` is the node's own namespace.
    state: Mutex<BTreeMap<Option<String>, State>>,
    gate: Arc<Gate>,
    resync: Duration,
}

/// The informers' objects; `None` until every informer has listed once.
fn snapshot(inf: &Informers) -> Option<Vec<Arc<AnyObject>>> {
    let mut objects = Vec::new();
    for i in inf.all() {
        objects.extend(i.snapshot()?);
    }
    Some(objects)
}

/// The inputs of world `tenant` from the informers' objects and this node's
/// reservations in that world: its namespaces, their policies and pods, so every
/// selector matches inside the world only.
fn build_inputs(
    node: &str,
    objects: &[&Arc<AnyObject>],
    served: &[Served],
    tenant: Option<&str>,
) -> Inputs {
    let mut inputs = Inputs::from_objects(objects.iter().map(|o| &***o));
    // Our own pods come from IPAM: known from the moment their address is reserved.
    inputs.pods.retain(|_, p| p.node != node);
    let pods: BTreeMap<(String, String), &Pod> = objects
        .iter()
        .filter_map(|o| match &***o {
            AnyObject::Pod(p) => Some((
                (
                    p.metadata.namespace.clone().unwrap_or_default(),
                    p.metadata.name.clone(),
                ),
                p,
            )),
            _ => None,
        })
        .collect();
    for n in served.iter().filter(|s| s.tenant() == tenant) {
        for r in n.node.ipam().list() {
            let pod = r
                .pod_name
                .as_ref()
                .and_then(|name| pods.get(&(r.namespace().to_string(), name.clone())));
            inputs.pods.insert(r.ip, local_pod(node, &r, pod.copied()));
        }
    }
    inputs
}

/// The policy view of a reservation of this node: labels and named ports from its Pod
/// object when it names one that exists, else the ADD's `LABELS`.
fn local_pod(node: &str, r: &Reservation, pod: Option<&Pod>) -> PodInfo {
    PodInfo {
        namespace: r.namespace().to_string(),
        name: r
            .pod_name
            .clone()
            .unwrap_or(r.attachment.container_id.clone()),
        ip: r.ip,
        labels: pod
            .map(|p| p.metadata.labels.clone())
            .unwrap_or_else(|| r.labels.clone()),
        ports: pod.map(|p| p.spec.ports.clone()).unwrap_or_default(),
        node: node.to_string(),
    }
}

impl PolicyController {
    /// A controller over `informers`; [`PolicyController::run`] does the passes.
    pub(super) fn new(
        informers: Informers,
        node: &str,
        served: ServedSet,
        address: Ipv4Addr,
        gate: Arc<Gate>,
        resync: Duration,
    ) -> Arc<Self> {
        Arc::new(PolicyController {
            node: node.to_string(),
            address,
            served,
            informers,
            state: Mutex::default(),
            gate,
            resync,
        })
    }

    /// One pass: compile the current inputs and write the change (a full sync at the
    /// first pass, after an error and every `resync`). `Ok(false)` when the informers
    /// have not all listed yet.
    pub fn pass(&self) -> Result<bool, String> {
        let served = self.served.borrow().clone();
        let Some(all) = snapshot(&self.informers) else {
            return Ok(false);
        };
        // The worlds: the node's own, and each tenant's with a served network.
        let mut worlds: BTreeMap<Option<String>, Option<Arc<Netns>>> = BTreeMap::new();
        worlds.insert(None, None);
        for s in served.iter() {
            if let Some(w) = &s.world {
                worlds.insert(Some(w.tenant.clone()), Some(w.ns.clone()));
            }
        }
        let tenant_of = trellis_policy::model::tenants_of(all.iter().map(|o| &**o));
        // Each object to the worlds it belongs to, in one walk (not one per world).
        let mut by_world: BTreeMap<Option<String>, Vec<&Arc<AnyObject>>> = BTreeMap::new();
        for o in &all {
            match trellis_policy::model::world_of(o, &tenant_of) {
                Some(t) => {
                    if worlds.contains_key(&t) {
                        by_world.entry(t).or_default().push(o);
                    }
                }
                None => {
                    for t in worlds.keys() {
                        by_world.entry(t.clone()).or_default().push(o);
                    }
                }
            }
        }
        let mut states = self.state.lock().expect("policy lock");
        states.retain(|t, _| worlds.contains_key(t));
        let mut errors = Vec::new();
        for (tenant, ns) in worlds {
            let addrs = NodeAddrs::of(self.address, &served, tenant.as_deref());
            let st = states
                .entry(tenant.clone())
                .or_insert_with(|| State::new(&self.node, addrs.clone(), ns.clone()));
            if addrs != st.addrs {
                // A network came or went: its gateway joins or leaves the addresses.
                *st = State::new(&self.node, addrs, ns);
            }
            let objects = by_world.get(&tenant).cloned().unwrap_or_default();
            // A world none of whose inputs changed has nothing to do (until its full
            // sync is due): its objects' versions and its reservations.
            let fp = fingerprint(&objects, &served, tenant.as_deref());
            let due = st.last_full.is_none_or(|t| t.elapsed() >= self.resync);
            if st.seen == Some(fp) && !due {
                continue;
            }
            let inputs = build_inputs(&self.node, &objects, &served, tenant.as_deref());
            let r = self.sync(st, inputs, tenant.as_deref());
            st.seen = r.is_ok().then_some(fp);
            if let Err(e) = r {
                errors.push(match &tenant {
                    Some(t) => format!("tenant {t}: {e}"),
                    None => e,
                });
            }
        }
        if errors.is_empty() {
            Ok(true)
        } else {
            Err(errors.join("; "))
        }
    }

    /// Compile one world's inputs and write the change (full at its first pass, after
    /// an error and every `resync`).
    fn sync(&self, st: &mut State, inputs: Inputs, tenant: Option<&str>) -> Result<(), String> {
        let delta = st.compiler.update(inputs);
        let full = st.last_full.is_none_or(|t| t.elapsed() >= self.resync);
        let (table, compiler) = (&mut st.table, &st.compiler);
        let r = if full {
            State::in_world(&st.ns, || table.full_sync(compiler))
        } else {
            State::in_world(&st.ns, || table.apply(compiler, &delta))
        };
        match r {
            Ok(report) => {
                if full && st.last_full.is_none() {
                    // The first full sync since start (or since an error): what a
                    // restart repaired, if anything.
                    tracing::info!(?report, tenant, "network policy: table in sync");
                }
                if full {
                    st.last_full = Some(Instant::now());
                }
                if !report.changed_nothing() {
                    tracing::debug!(?report, full, tenant, "policy table updated");
                }
                Ok(())
            }
            Err(e) => {
                st.last_full = None;
                Err(e)
            }
        }
    }

    /// Follow every change of the informers and of this node's reservations.
    pub async fn run(self: Arc<Self>) {
        let mut informers: Vec<tokio::sync::watch::Receiver<u64>> =
            self.informers.all().iter().map(|i| i.subscribe()).collect();
        // Each served network's reservations, followed from when it is first seen.
        let mut reservations: BTreeMap<String, tokio::sync::watch::Receiver<u64>> = BTreeMap::new();
        let mut served_changed = self.served.clone();
        let mut pods_seen = None;
        loop {
            let served = served_changed.borrow_and_update().clone();
            reservations.retain(|name, _| served.iter().any(|s| &s.name == name));
            for s in served.iter() {
                reservations
                    .entry(s.name.clone())
                    .or_insert_with(|| s.node.subscribe());
            }
            // Compiling and the netlink transaction block: keep them off the async
            // workers' queue.
            match tokio::task::block_in_place(|| self.pass()) {
                Ok(_) => {}
                Err(e) => tracing::warn!("network policy: {e}; a full sync follows"),
            }
            // A Pod's allowedSourceAddresses may have changed the guards' ports.
            let pods_now = self.informers.pods.revision();
            if pods_now != pods_seen {
                pods_seen = pods_now;
                let mut gates = vec![self.gate.clone()];
                gates.extend(
                    served
                        .iter()
                        .filter_map(|s| s.world.as_ref().map(|w| w.gate.clone())),
                );
                gates.dedup_by(|a, b| Arc::ptr_eq(a, b));
                for g in gates {
                    if let Err(e) = tokio::task::block_in_place(|| g.refresh()) {
                        tracing::warn!("{e}");
                    }
                }
            }
            let mut rx: Vec<&mut tokio::sync::watch::Receiver<u64>> = Vec::new();
            rx.extend(informers.iter_mut());
            rx.extend(reservations.values_mut());
            let changed =
                futures::future::select_all(rx.into_iter().map(|r| Box::pin(r.changed())));
            tokio::select! {
                _ = served_changed.changed() => {}
                _ = changed => {
                    // Coalesce a burst of events into one pass.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                _ = tokio::time::sleep(self.resync) => {}
            }
        }
    }
}

impl PodPolicy for PolicyController {
    fn admit(&self, r: &Reservation, tenant: Option<&str>) -> Result<(), String> {
        // Once a pass has compiled the pod's world, the new pod is one change: its
        // elements only, whatever the cluster's size.
        {
            let mut states = self.state.lock().expect("policy lock");
            let key = tenant.map(str::to_string);
            if let Some(st) = states.get_mut(&key).filter(|st| st.last_full.is_some()) {
                let ns = r.namespace();
                let pod = r
                    .pod_name
                    .as_ref()
                    .and_then(|name| self.informers.pods.get(&format!("{ns}/{name}")));
                let pod = pod.as_deref().and_then(|o| match o {
                    AnyObject::Pod(p) => Some(p),
                    _ => None,
                });
                let info = local_pod(&self.node, r, pod);
                let delta = st.compiler.apply(vec![Change::Pod(r.ip, Some(info))]);
                let (table, compiler) = (&mut st.table, &st.compiler);
                return match State::in_world(&st.ns, || table.apply(compiler, &delta)) {
                    Ok(_) => Ok(()),
                    Err(e) => {
                        st.last_full = None;
                        Err(e)
                    }
                };
            }
        }
        let deadline = Instant::now() + ADMIT_WAIT;
        loop {
            if self.pass()? {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(
                    "the node has not received the cluster's policies yet (server unreachable?); try again later"
                        .into(),
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn allowed_sources(&self, namespace: &str, name: &str) -> Vec<Ipv4Net> {
        match self
            .informers
            .pods
            .get(&format!("{namespace}/{name}"))
            .as_deref()
        {
            Some(AnyObject::Pod(p)) => p.spec.allowed_source_addresses.clone(),
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_api::objects::parse_yaml;
    use trellis_policy::model::world_of;

    fn obj(yaml: &str) -> AnyObject {
        parse_yaml(yaml).unwrap().pop().unwrap()
    }

    #[test]
    fn objects_go_to_their_world() {
        let tenant_of: BTreeMap<String, String> = [("shop".to_string(), "red".to_string())].into();
        let red = Some(Some("red".to_string()));
        let np = |ns: &str| {
            obj(&format!(
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: {ns}}}\nspec: {{podSelector: {{}}}}\n"
            ))
        };
        assert_eq!(world_of(&np("shop"), &tenant_of), red);
        assert_eq!(world_of(&np("default"), &tenant_of), Some(None));
        let ns =
            obj("apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\nspec: {tenant: red}\n");
        assert_eq!(world_of(&ns, &tenant_of), red);
        let cnp = |tenant: &str| {
            obj(&format!(
                "apiVersion: trellis/v1\nkind: ClusterNetworkPolicy\nmetadata: {{name: c}}\nspec: {{tier: Admin, priority: 1, subject: {{namespaces: {{}}}}{tenant}}}\n"
            ))
        };
        assert_eq!(world_of(&cnp(""), &tenant_of), None);
        assert_eq!(world_of(&cnp(", tenant: red"), &tenant_of), red);
        let node = obj("apiVersion: trellis/v1\nkind: Node\nmetadata: {name: n1}\nspec: {address: 192.0.2.1}\n");
        assert_eq!(world_of(&node, &tenant_of), None);
    }
}
