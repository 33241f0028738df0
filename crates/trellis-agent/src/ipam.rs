//! Node IPAM: hands out addresses of the node's pod subnet, durably.
//!
//! Every reservation is committed to an embedded redb file before it is returned, so a
//! `kill -9` at any point never lets an address be handed out twice. Releases are
//! committed without a sync (see [`Ipam::release`]). The network,
//! gateway and broadcast addresses and any excluded range are never handed out.
//! Allocation walks forward from the last address handed out (like host-local), so a
//! just-released address is not reused at once.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use ipnet::Ipv4Net;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use trellis_api::agent::{AddRequest, Attachment, PortMapping};

const RESERVATIONS: TableDefinition<u32, &str> = TableDefinition::new("reservations");
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");

/// One reserved address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reservation {
    /// The address.
    pub ip: Ipv4Addr,
    /// Who holds it.
    pub attachment: Attachment,
    /// `CNI_NETNS` at ADD time.
    pub netns: String,
    /// Unix time of the reservation.
    pub created: u64,
    /// Published ports.
    #[serde(default)]
    pub port_mappings: Vec<PortMapping>,
    /// Pod namespace from `CNI_ARGS`.
    #[serde(default)]
    pub pod_namespace: Option<String>,
    /// Pod name from `CNI_ARGS`.
    #[serde(default)]
    pub pod_name: Option<String>,
    /// Endpoint labels from `CNI_ARGS` (`LABELS=`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
    /// The MAC the ADD asked for, if any (else the pod gets [`Reservation::mac`]'s
    /// address-derived one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_mac: Option<String>,
}

/// The MAC Trellis derives from an address: `0a:58:` and the address (locally
/// administered, unique per address), as Kubernetes' bridge plugins do.
pub fn mac_of(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x0a, 0x58, o[0], o[1], o[2], o[3]]
}

impl Reservation {
    /// The MAC of the pod's interface: the requested one, else [`mac_of`] its address.
    pub fn mac(&self) -> [u8; 6] {
        self.requested_mac
            .as_deref()
            .and_then(trellis_net::netlink::parse_mac)
            .unwrap_or_else(|| mac_of(self.ip))
    }

    /// The pod's namespace (`K8S_POD_NAMESPACE`, else `default`).
    pub fn namespace(&self) -> &str {
        self.pod_namespace
            .as_deref()
            .unwrap_or(trellis_api::objects::DEFAULT_NAMESPACE)
    }
}

/// IPAM failures.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// No free address.
    #[error("no free address left in {0}")]
    Exhausted(Ipv4Net),
    /// The requested address is held by another attachment.
    #[error("requested address {ip} is in use by container {holder}")]
    InUse {
        /// The address.
        ip: Ipv4Addr,
        /// The container holding it.
        holder: String,
    },
    /// The requested address may not be handed out.
    #[error("requested address {ip} {why}")]
    NotAllowed {
        /// The address.
        ip: Ipv4Addr,
        /// Why.
        why: String,
    },
    /// A host port is already published by another attachment.
    #[error("host port {proto}/{port}{on} is already published by container {holder}")]
    PortInUse {
        /// tcp/udp.
        proto: &'static str,
        /// The port.
        port: u16,
        /// ` on <ip>` or empty.
        on: String,
        /// The container holding it.
        holder: String,
    },
    /// The state file belongs to another subnet.
    #[error("state file {path} holds reservations for {stored}, not {requested}; release them or use another --state-dir")]
    SubnetChanged {
        /// The file.
        path: String,
        /// The subnet in the file.
        stored: Ipv4Net,
        /// The subnet asked for.
        requested: Ipv4Net,
    },
    /// The subnet is unusable.
    #[error("pod subnet {0} is too small: it needs room for a gateway and at least one pod (/30 or larger)")]
    SubnetTooSmall(Ipv4Net),
    /// The embedded database failed.
    #[error("IPAM state file: {0}")]
    Store(String),
}

/// A host port clashes with one published in `st`: the same protocol and port, on the same
/// host address or with either side on every address.
fn port_clash(st: &State, mappings: &[PortMapping]) -> Option<IpamError> {
    mappings.iter().find_map(|pm| {
        let holder = st.by_ip.values().find(|r| {
            r.port_mappings.iter().any(|o| {
                o.protocol == pm.protocol
                    && o.host_port == pm.host_port
                    && (o.host_ip.is_none() || pm.host_ip.is_none() || o.host_ip == pm.host_ip)
            })
        })?;
        Some(IpamError::PortInUse {
            proto: pm.protocol.as_str(),
            port: pm.host_port,
            on: pm.host_ip.map(|i| format!(" on {i}")).unwrap_or_default(),
            holder: holder.attachment.container_id.clone(),
        })
    })
}

fn store_err(e: impl std::fmt::Display) -> IpamError {
    IpamError::Store(e.to_string())
}

#[derive(Debug, Default)]
struct State {
    by_ip: BTreeMap<u32, Reservation>,
    by_attachment: HashMap<Attachment, Ipv4Addr>,
    cursor: u32,
}

/// The node's address allocator.
#[derive(Debug)]
pub struct Ipam {
    subnet: Ipv4Net,
    gateway: Ipv4Addr,
    excluded: Vec<Ipv4Net>,
    /// The cluster's host addresses inside the subnet (`l2`: pods share the hosts'
    /// segment); never handed out. Follows the Nodes as they register.
    hosts: std::sync::RwLock<std::collections::BTreeSet<Ipv4Addr>>,
    /// Addresses that can ever be handed out (computed once: STATUS asks often).
    capacity: u32,
    db: redb::Database,
    state: Mutex<State>,
}

impl Ipam {
    /// Open (or create) the state file at `path` for `subnet`. The first usable address
    /// is the gateway; `excluded` ranges are never handed out.
    pub fn open(path: &Path, subnet: Ipv4Net, excluded: Vec<Ipv4Net>) -> Result<Self, IpamError> {
        let subnet = subnet.trunc();
        if subnet.prefix_len() > 30 {
            return Err(IpamError::SubnetTooSmall(subnet));
        }
        let gateway = Ipv4Addr::from(u32::from(subnet.network()) + 1);
        let db = redb::Database::create(path)
            .map_err(|e| IpamError::Store(format!("open {}: {e}", path.display())))?;
        let mut st = State::default();
        {
            let w = db.begin_write().map_err(store_err)?;
            {
                let mut meta = w.open_table(META).map_err(store_err)?;
                let stored = meta
                    .get("subnet")
                    .map_err(store_err)?
                    .map(|v| v.value().to_string());
                let res = w.open_table(RESERVATIONS).map_err(store_err)?;
                for item in res.iter().map_err(store_err)? {
                    let (k, v) = item.map_err(store_err)?;
                    let r: Reservation = serde_json::from_str(v.value()).map_err(|e| {
                        IpamError::Store(format!("reservation {}: {e}", Ipv4Addr::from(k.value())))
                    })?;
                    st.by_attachment.insert(r.attachment.clone(), r.ip);
                    st.by_ip.insert(k.value(), r);
                }
                if let Some(stored) = stored {
                    let stored: Ipv4Net = stored.parse().map_err(store_err)?;
                    if stored != subnet && !st.by_ip.is_empty() {
                        return Err(IpamError::SubnetChanged {
                            path: path.display().to_string(),
                            stored,
                            requested: subnet,
                        });
                    }
                }
                meta.insert("subnet", subnet.to_string().as_str())
                    .map_err(store_err)?;
                let cursor = meta
                    .get("cursor")
                    .map_err(store_err)?
                    .map(|c| c.value().parse().unwrap_or(0));
                st.cursor = cursor.unwrap_or(0);
            }
            w.commit().map_err(store_err)?;
        }
        let mut ipam = Ipam {
            subnet,
            gateway,
            excluded,
            hosts: Default::default(),
            capacity: 0,
            db,
            state: Mutex::new(st),
        };
        let (first, last) = (u32::from(subnet.network()), u32::from(subnet.broadcast()));
        ipam.capacity = (first..=last)
            .filter(|i| ipam.forbidden(Ipv4Addr::from(*i)).is_none())
            .count() as u32;
        Ok(ipam)
    }

    /// The pod subnet.
    pub fn subnet(&self) -> Ipv4Net {
        self.subnet
    }

    /// The gateway (bridge) address.
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// The gateway as an address with the subnet's prefix length.
    pub fn gateway_net(&self) -> Ipv4Net {
        Ipv4Net::new(self.gateway, self.subnet.prefix_len()).expect("valid prefix")
    }

    /// Why `ip` may never be handed out, or `None` if it may.
    fn forbidden(&self, ip: Ipv4Addr) -> Option<String> {
        if !self.subnet.contains(&ip) {
            return Some(format!("is outside the node subnet {}", self.subnet));
        }
        if ip == self.subnet.network() {
            return Some(format!("is the network address of {}", self.subnet));
        }
        if ip == self.subnet.broadcast() {
            return Some(format!("is the broadcast address of {}", self.subnet));
        }
        if ip == self.gateway {
            return Some("is the gateway address".into());
        }
        if let Some(x) = self.excluded.iter().find(|x| x.contains(&ip)) {
            return Some(format!("is in the excluded range {x}"));
        }
        if self.hosts.read().expect("hosts lock").contains(&ip) {
            return Some("is the address of a cluster node".into());
        }
        None
    }

    /// Never hand out these host addresses from now on (those outside the subnet are
    /// ignored). Returns the reservations that already hold one of them: an address
    /// conflict on the segment that only an operator can settle. The same set again
    /// is a no-op (nothing returned), so callers may pass it on every pass.
    pub fn set_hosts(&self, hosts: impl IntoIterator<Item = Ipv4Addr>) -> Vec<Reservation> {
        let hosts: std::collections::BTreeSet<Ipv4Addr> = hosts
            .into_iter()
            .filter(|h| self.subnet.contains(h))
            .collect();
        if *self.hosts.read().expect("hosts lock") == hosts {
            return Vec::new();
        }
        let st = self.state.lock().expect("ipam lock");
        let clashes = hosts
            .iter()
            .filter_map(|h| st.by_ip.get(&u32::from(*h)).cloned())
            .collect();
        *self.hosts.write().expect("hosts lock") = hosts;
        clashes
    }

    /// Number of addresses that can ever be handed out.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Number of reservations.
    pub fn len(&self) -> usize {
        self.state.lock().expect("ipam lock").by_ip.len()
    }

    /// True when nothing is reserved.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first of `mappings` that a reservation here already publishes, as the error an
    /// ADD asking for it gets.
    pub fn port_clash(&self, mappings: &[PortMapping]) -> Option<IpamError> {
        port_clash(&self.state.lock().expect("ipam lock"), mappings)
    }

    /// Reserve an address for the attachment in `req`. A retried ADD for an attachment
    /// that already holds an address gets the same reservation back (`true`).
    pub fn reserve(&self, req: &AddRequest) -> Result<(Reservation, bool), IpamError> {
        let mut st = self.state.lock().expect("ipam lock");
        let att = req.attachment();
        if let Some(ip) = st.by_attachment.get(&att) {
            return Ok((st.by_ip[&u32::from(*ip)].clone(), true));
        }
        if let Some(e) = port_clash(&st, &req.port_mappings) {
            return Err(e);
        }
        let ip = match req.requested_ip {
            Some(ip) => {
                if let Some(why) = self.forbidden(ip) {
                    return Err(IpamError::NotAllowed { ip, why });
                }
                if let Some(r) = st.by_ip.get(&u32::from(ip)) {
                    return Err(IpamError::InUse {
                        ip,
                        holder: r.attachment.container_id.clone(),
                    });
                }
                ip
            }
            None => self.next_free(&st)?,
        };
        let r = Reservation {
            ip,
            attachment: att.clone(),
            netns: req.netns.clone(),
            created: now(),
            port_mappings: req.port_mappings.clone(),
            pod_namespace: req.pod_namespace.clone(),
            pod_name: req.pod_name.clone(),
            labels: req.labels.clone(),
            requested_mac: req.mac.clone(),
        };
        let cursor = if req.requested_ip.is_none() {
            u32::from(ip)
        } else {
            st.cursor
        };
        self.persist(true, |res, meta| {
            res.insert(
                u32::from(ip),
                serde_json::to_string(&r).expect("serializes").as_str(),
            )?;
            meta.insert("cursor", cursor.to_string().as_str())?;
            Ok(())
        })?;
        st.cursor = cursor;
        st.by_attachment.insert(att, ip);
        st.by_ip.insert(u32::from(ip), r.clone());
        Ok((r, false))
    }

    fn next_free(&self, st: &State) -> Result<Ipv4Addr, IpamError> {
        let first = u32::from(self.subnet.network());
        let last = u32::from(self.subnet.broadcast());
        let size = last - first + 1;
        let start = if st.cursor >= first && st.cursor <= last {
            st.cursor - first + 1
        } else {
            0
        };
        for i in 0..size {
            let cand = first + (start + i) % size;
            let ip = Ipv4Addr::from(cand);
            if !st.by_ip.contains_key(&cand) && self.forbidden(ip).is_none() {
                return Ok(ip);
            }
        }
        Err(IpamError::Exhausted(self.subnet))
    }

    /// Release the attachment's address; returns what it held, `None` if nothing.
    pub fn release(&self, att: &Attachment) -> Result<Option<Reservation>, IpamError> {
        let mut st = self.state.lock().expect("ipam lock");
        let Some(ip) = st.by_attachment.get(att).copied() else {
            return Ok(None);
        };
        // A release need not reach the disk before we answer: if it is lost in a crash,
        // the reservation comes back, its veth is gone, and the sweep frees it again.
        // (A lost *reservation* would be a duplicate address, so those are synced.)
        // The next synced commit persists it anyway.
        self.persist(false, |res, _| {
            res.remove(u32::from(ip))?;
            Ok(())
        })?;
        st.by_attachment.remove(att);
        Ok(st.by_ip.remove(&u32::from(ip)))
    }

    /// The reservation of an attachment.
    pub fn get(&self, att: &Attachment) -> Option<Reservation> {
        let st = self.state.lock().expect("ipam lock");
        st.by_attachment
            .get(att)
            .map(|ip| st.by_ip[&u32::from(*ip)].clone())
    }

    /// All reservations, by address.
    pub fn list(&self) -> Vec<Reservation> {
        self.state
            .lock()
            .expect("ipam lock")
            .by_ip
            .values()
            .cloned()
            .collect()
    }

    /// Re-read the file and compare with memory (used by tests to prove durability).
    pub fn reload_from_disk(&self) -> Result<Vec<Reservation>, IpamError> {
        let r = self.db.begin_read().map_err(store_err)?;
        let t = r.open_table(RESERVATIONS).map_err(store_err)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(store_err)? {
            let (_, v) = item.map_err(store_err)?;
            out.push(serde_json::from_str(v.value()).map_err(store_err)?);
        }
        Ok(out)
    }

    fn persist(
        &self,
        durable: bool,
        f: impl FnOnce(
            &mut redb::Table<u32, &str>,
            &mut redb::Table<&str, &str>,
        ) -> Result<(), redb::StorageError>,
    ) -> Result<(), IpamError> {
        let mut w = self.db.begin_write().map_err(store_err)?;
        if !durable {
            w.set_durability(redb::Durability::None)
                .map_err(store_err)?;
        }
        {
            let mut res = w.open_table(RESERVATIONS).map_err(store_err)?;
            let mut meta = w.open_table(META).map_err(store_err)?;
            f(&mut res, &mut meta).map_err(store_err)?;
        }
        w.commit().map_err(store_err)
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_api::agent::Protocol;

    fn req(id: &str) -> AddRequest {
        AddRequest {
            container_id: id.into(),
            ifname: "eth0".into(),
            netns: "/x".into(),
            requested_ip: None,
            port_mappings: vec![],
            pod_namespace: None,
            pod_name: None,
            labels: Default::default(),
            mac: None,
        }
    }

    #[test]
    fn never_hands_out_reserved_addresses_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipam.redb");
        let net: Ipv4Net = "10.1.0.0/29".parse().unwrap();
        let ipam = Ipam::open(&path, net, vec![]).unwrap();
        assert_eq!(ipam.capacity(), 5); // 8 - network - broadcast - gateway
        let mut got = vec![];
        for i in 0..5 {
            got.push(ipam.reserve(&req(&format!("c{i}"))).unwrap().0.ip);
        }
        let want: Vec<Ipv4Addr> = (2..=6).map(|i| Ipv4Addr::new(10, 1, 0, i)).collect();
        assert_eq!(got, want);
        assert!(matches!(
            ipam.reserve(&req("c9")),
            Err(IpamError::Exhausted(_))
        ));
        // same attachment again: same address
        let (r, existing) = ipam.reserve(&req("c1")).unwrap();
        assert!(existing);
        assert_eq!(r.ip, Ipv4Addr::new(10, 1, 0, 3));
        drop(ipam);
        let ipam = Ipam::open(&path, net, vec![]).unwrap();
        assert_eq!(ipam.list().len(), 5);
        ipam.release(&req("c1").attachment()).unwrap().unwrap();
        assert!(ipam.release(&req("c1").attachment()).unwrap().is_none());
        // a different subnet with live reservations is refused
        drop(ipam);
        let e = Ipam::open(&path, "10.2.0.0/24".parse().unwrap(), vec![]).unwrap_err();
        assert!(e.to_string().contains("10.1.0.0/29"), "{e}");
    }

    #[test]
    fn requested_addresses_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let net: Ipv4Net = "10.1.0.0/24".parse().unwrap();
        let ipam = Ipam::open(
            &dir.path().join("s"),
            net,
            vec!["10.1.0.200/29".parse().unwrap()],
        )
        .unwrap();
        let mut r = req("a");
        for (ip, frag) in [
            ("10.2.0.5", "outside"),
            ("10.1.0.0", "network"),
            ("10.1.0.1", "gateway"),
            ("10.1.0.255", "broadcast"),
            ("10.1.0.201", "excluded"),
        ] {
            r.requested_ip = Some(ip.parse().unwrap());
            let e = ipam.reserve(&r).unwrap_err();
            assert!(e.to_string().contains(frag), "{ip}: {e}");
        }
        r.requested_ip = Some("10.1.0.9".parse().unwrap());
        assert_eq!(ipam.reserve(&r).unwrap().0.ip, Ipv4Addr::new(10, 1, 0, 9));
        let mut b = req("b");
        b.requested_ip = r.requested_ip;
        assert!(matches!(ipam.reserve(&b), Err(IpamError::InUse { .. })));
    }

    #[test]
    fn host_addresses_are_never_handed_out() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::open(
            &dir.path().join("s"),
            "10.1.0.0/29".parse().unwrap(),
            vec![],
        )
        .unwrap();
        assert_eq!(
            ipam.reserve(&req("a")).unwrap().0.ip,
            Ipv4Addr::new(10, 1, 0, 2)
        );
        // A host registers with .3 (and one outside the subnet, ignored); .2 clashes.
        let clashes = ipam.set_hosts([
            Ipv4Addr::new(10, 1, 0, 3),
            Ipv4Addr::new(10, 1, 0, 2),
            Ipv4Addr::new(10, 9, 0, 1),
        ]);
        assert_eq!(clashes.len(), 1);
        assert_eq!(clashes[0].ip, Ipv4Addr::new(10, 1, 0, 2));
        // Told again: nothing new to report.
        assert!(ipam
            .set_hosts([Ipv4Addr::new(10, 1, 0, 3), Ipv4Addr::new(10, 1, 0, 2)])
            .is_empty());
        assert_eq!(
            ipam.reserve(&req("b")).unwrap().0.ip,
            Ipv4Addr::new(10, 1, 0, 4)
        );
        let mut r = req("c");
        r.requested_ip = Some(Ipv4Addr::new(10, 1, 0, 3));
        let e = ipam.reserve(&r).unwrap_err();
        assert!(e.to_string().contains("cluster node"), "{e}");
        // The host left: its address is free again.
        ipam.set_hosts([]);
        assert_eq!(ipam.reserve(&r).unwrap().0.ip, Ipv4Addr::new(10, 1, 0, 3));
    }

    #[test]
    fn host_ports_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::open(
            &dir.path().join("s"),
            "10.1.0.0/24".parse().unwrap(),
            vec![],
        )
        .unwrap();
        let pm = PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol: Protocol::Tcp,
            host_ip: None,
        };
        let mut a = req("a");
        a.port_mappings = vec![pm];
        ipam.reserve(&a).unwrap();
        let mut b = req("b");
        b.port_mappings = vec![PortMapping {
            host_ip: Some("192.168.1.1".parse().unwrap()),
            ..pm
        }];
        assert!(matches!(ipam.reserve(&b), Err(IpamError::PortInUse { .. })));
        b.port_mappings[0].protocol = Protocol::Udp;
        ipam.reserve(&b).unwrap();
    }
}
