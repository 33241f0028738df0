//! What must be in the kernel before a pod's CNI ADD returns, so the pod is protected
//! from its first packet: its anti-spoofing port (table `bridge trellis-guard`, every
//! mode) and, in cluster mode, the policy elements that concern it (table
//! `ip trellis-policy`, through [`PodPolicy`]).
//!
//! One gate per agent, shared by every network's [`Node`]: the guard table holds the
//! ports of all of them, so its full sync (at start, every resync, after a Pod's
//! `allowedSourceAddresses` changed) reads the reservations of every registered node.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use ipnet::Ipv4Net;
use trellis_api::naming::host_veth_name;
use trellis_net::Netns;
use trellis_policy::guard::{Guard, GuardPort};

use crate::ipam::Reservation;
use crate::node::Node;

/// The policy side of admission (cluster mode).
pub trait PodPolicy: Send + Sync + std::fmt::Debug {
    /// Program the policy elements of pod `r` (whose address is reserved) in the world
    /// of `tenant` (`None`: the node's own) before returning; an error fails the ADD.
    fn admit(&self, r: &Reservation, tenant: Option<&str>) -> Result<(), String>;
    /// The `allowedSourceAddresses` of pod `namespace/name`, if it is declared.
    fn allowed_sources(&self, namespace: &str, name: &str) -> Vec<Ipv4Net>;
}

/// Admission of pods into the kernel's protections.
#[derive(Debug, Default)]
pub struct Gate {
    guard: Mutex<Guard>,
    /// The ports the last full sync wrote.
    synced: Mutex<Option<Vec<GuardPort>>>,
    policy: OnceLock<Arc<dyn PodPolicy>>,
    nodes: Mutex<Vec<Weak<Node>>>,
    /// The tenant world whose anti-spoofing tables this gate keeps (`None`: the node's
    /// own namespace), and its tenant.
    world: Option<(Arc<Netns>, String)>,
}

impl Gate {
    /// A gate with anti-spoofing only (policy joins with [`Gate::set_policy`]).
    pub fn new() -> Arc<Gate> {
        Arc::new(Gate::default())
    }

    /// A gate for the pods of tenant `tenant`'s world: anti-spoofing in the world's own
    /// tables, and (once set) the policy of that world.
    pub fn for_world(world: Arc<Netns>, tenant: &str) -> Arc<Gate> {
        Arc::new(Gate {
            world: Some((world, tenant.to_string())),
            ..Gate::default()
        })
    }

    /// Run `f` on the guard, inside the gate's world.
    fn with_guard<T>(&self, f: impl FnOnce(&mut Guard) -> T) -> Result<T, String> {
        let mut g = self.guard.lock().expect("gate lock");
        let ns = self.world.as_ref().map(|(ns, _)| &**ns);
        Netns::run_in(ns, || f(&mut g)).map_err(|e| e.to_string())
    }

    /// Enforce policy too (cluster mode).
    pub fn set_policy(&self, p: Arc<dyn PodPolicy>) {
        let _ = self.policy.set(p);
    }

    /// Count `node`'s reservations in full syncs.
    pub fn register(&self, node: &Arc<Node>) {
        self.nodes
            .lock()
            .expect("gate lock")
            .push(Arc::downgrade(node));
    }

    fn port(&self, r: &Reservation) -> GuardPort {
        let allowed = match (self.policy.get(), &r.pod_name) {
            (Some(p), Some(name)) => p.allowed_sources(r.namespace(), name),
            _ => Vec::new(),
        };
        GuardPort::new(
            host_veth_name(&r.attachment.container_id, &r.attachment.ifname),
            r.mac(),
            r.ip,
            &allowed,
        )
    }

    /// Admit a pod whose address is reserved: its guard port, then the policy.
    pub fn admit(&self, r: &Reservation) -> Result<(), String> {
        let port = self.port(r);
        self.with_guard(|g| g.add_port(&port))?
            .map_err(|e| format!("anti-spoofing for {}: {e}", port.ifname))?;
        if let Some(p) = self.policy.get() {
            let tenant = self.world.as_ref().map(|(_, t)| t.as_str());
            p.admit(r, tenant)
                .map_err(|e| format!("network policy: {e}"))?;
        }
        Ok(())
    }

    /// A pod is gone: its guard port goes (its policy elements leave with the next
    /// policy pass, which follows reservation changes).
    pub fn forget(&self, r: &Reservation) -> Result<(), String> {
        let name = host_veth_name(&r.attachment.container_id, &r.attachment.ifname);
        self.with_guard(|g| g.remove_port(&name))?
            .map(|_| ())
            .map_err(|e| format!("anti-spoofing for {name}: {e}"))
    }

    /// The guard ports of the registered nodes' reservations.
    fn ports(&self) -> Vec<GuardPort> {
        let nodes: Vec<Arc<Node>> = {
            let mut v = self.nodes.lock().expect("gate lock");
            v.retain(|w| w.strong_count() > 0);
            v.iter().filter_map(Weak::upgrade).collect()
        };
        let mut ports: BTreeMap<String, GuardPort> = BTreeMap::new();
        for n in nodes {
            for r in n.ipam().list() {
                let p = self.port(&r);
                ports.insert(p.ifname.clone(), p);
            }
        }
        ports.into_values().collect()
    }

    /// Bring the guard table to exactly the registered nodes' reservations (reads the
    /// kernel: drift repair).
    pub fn sync(&self) -> Result<(), String> {
        self.write(self.ports())
    }

    /// [`Gate::sync`] when the ports differ from the last sync's (a Pod's
    /// `allowedSourceAddresses` changed); nothing otherwise.
    pub fn refresh(&self) -> Result<(), String> {
        let ports = self.ports();
        if self.synced.lock().expect("gate lock").as_ref() == Some(&ports) {
            return Ok(());
        }
        self.write(ports)
    }

    fn write(&self, ports: Vec<GuardPort>) -> Result<(), String> {
        let report = self
            .with_guard(|g| g.full_sync(&ports))?
            .map_err(|e| format!("anti-spoofing full sync: {e}"))?;
        if !report.changed_nothing() {
            tracing::info!(?report, "anti-spoofing table synced");
        }
        *self.synced.lock().expect("gate lock") = Some(ports);
        Ok(())
    }
}
