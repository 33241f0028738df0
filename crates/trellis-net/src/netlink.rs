//! Links, addresses and routes over rtnetlink, in one network namespace per [`Netlink`].

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo, LinkMessage,
};
use rtnetlink::packet_route::route::{RouteAttribute, RouteMessage};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, RouteMessageBuilder};

use crate::{NetError, Netns, Result};

/// What Trellis needs to know about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// ifindex.
    pub index: u32,
    /// Name.
    pub name: String,
    /// Index of the bridge it is attached to, if any.
    pub master: Option<u32>,
    /// Device group.
    pub group: u32,
    /// Administratively up.
    pub up: bool,
    /// MTU.
    pub mtu: u32,
    /// Hardware address.
    pub mac: Vec<u8>,
    /// `bridge`, `veth`, ... when the kernel reports a kind.
    pub kind: Option<String>,
}

/// An rtnetlink connection bound to one network namespace.
#[derive(Debug, Clone)]
pub struct Netlink {
    pub(crate) handle: Handle,
}

pub(crate) fn nl_err(op: impl Into<String>, e: rtnetlink::Error) -> NetError {
    let errno = match &e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    };
    let msg = match errno {
        Some(n) => std::io::Error::from_raw_os_error(n).to_string(),
        None => e.to_string(),
    };
    NetError::Netlink {
        op: op.into(),
        msg,
        errno,
    }
}

impl Netlink {
    /// Connect in the calling thread's current namespace. Needs a tokio runtime.
    pub fn connect() -> Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|source| NetError::Io {
            what: "open rtnetlink socket".into(),
            source,
        })?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// Connect inside `ns`: the socket stays bound to that namespace for its lifetime,
    /// whatever namespace the calling thread is in later.
    pub fn connect_in(ns: &Netns) -> Result<Self> {
        ns.run(Self::connect)?
    }

    /// All links.
    pub async fn links(&self) -> Result<Vec<LinkInfo>> {
        let mut out = Vec::new();
        let mut s = self.handle.link().get().execute();
        while let Some(m) = s.try_next().await.map_err(|e| nl_err("list links", e))? {
            out.push(link_info(&m));
        }
        Ok(out)
    }

    /// The link called `name`, or `None`.
    pub async fn link(&self, name: &str) -> Result<Option<LinkInfo>> {
        let mut s = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match s.try_next().await {
            Ok(Some(m)) => Ok(Some(link_info(&m))),
            Ok(None) => Ok(None),
            Err(e) => {
                let e = nl_err(format!("get link {name}"), e);
                if e.is_not_found() {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Make sure a bridge `name` exists and is up; returns it and whether it was created.
    /// An existing bridge is adopted as it is (only brought up if it was down). A new
    /// bridge gets the fixed `mac`, so its address does not follow whichever port joined
    /// first.
    pub async fn ensure_bridge(
        &self,
        name: &str,
        mtu: u32,
        mac: [u8; 6],
    ) -> Result<(LinkInfo, bool)> {
        if let Some(l) = self.link(name).await? {
            if l.kind.as_deref() != Some("bridge") {
                return Err(NetError::Netlink {
                    op: format!("adopt bridge {name}"),
                    msg: format!("a link named {name} exists but is a {:?}", l.kind),
                    errno: Some(libc::EEXIST),
                });
            }
            if !l.up {
                self.set_up(l.index).await?;
            }
            return Ok((l, false));
        }
        let msg = LinkBridge::new(name)
            .mtu(mtu)
            .address(mac.to_vec())
            .up()
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| nl_err(format!("create bridge {name}"), e))?;
        let l = self.link(name).await?.ok_or_else(|| NetError::Netlink {
            op: format!("create bridge {name}"),
            msg: "created but not found".into(),
            errno: None,
        })?;
        Ok((l, true))
    }

    /// Create a veth pair in one request: `host` here (attached to `master`, up) and
    /// `peer` directly inside `peer_ns` (down; configure it with a [`Netlink`] there).
    /// Nothing is created in this namespace under the peer's name, so a container-side
    /// `eth0` can never clash with a host link.
    pub async fn create_veth(
        &self,
        host: &str,
        master: u32,
        mtu: u32,
        peer: &str,
        peer_ns: &Netns,
        peer_mac: Option<[u8; 6]>,
    ) -> Result<()> {
        let mut peer_b = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_string())
            .mtu(mtu)
            .setns_by_fd(peer_ns.raw_fd());
        if let Some(mac) = peer_mac {
            peer_b = peer_b.address(mac.to_vec());
        }
        let msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
            .name(host.to_string())
            .mtu(mtu)
            .controller(master)
            .up()
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_b.build())))
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| nl_err(format!("create veth {host} <-> {peer}"), e))
    }

    /// Create a veth pair: `name` here (down) and `peer` directly inside `peer_ns`
    /// (down). Bring both up and give them addresses afterwards.
    pub async fn create_veth_pair(&self, name: &str, peer: &str, peer_ns: &Netns) -> Result<()> {
        let peer_b = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_string())
            .setns_by_fd(peer_ns.raw_fd());
        let msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
            .name(name.to_string())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_b.build())))
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| nl_err(format!("create veth {name} <-> {peer}"), e))
    }

    /// Turn on hairpin mode of bridge port `index`: frames may leave by the port they
    /// came in. A pod reaching itself through a service needs it when the bridge runs
    /// netfilter on bridged frames (`br_netfilter` loaded): the DNATed frame goes back
    /// out of its own port.
    pub async fn set_hairpin(&self, index: u32) -> Result<()> {
        let msg = rtnetlink::LinkBridgePort::new(index).hairpin(true).build();
        self.handle
            .link()
            .set_port(msg)
            .execute()
            .await
            .map_err(|e| nl_err(format!("set hairpin mode on bridge port {index}"), e))
    }

    /// Bring a link up.
    pub async fn set_up(&self, index: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| nl_err(format!("set link {index} up"), e))
    }

    /// Take a link down and move it to device group `group` in one request: the cheap
    /// first half of a deferred delete (see [`Netlink::del_group`]).
    pub async fn retire(&self, index: u32, group: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index)
            .down()
            .link_group(group)
            .build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| nl_err(format!("retire link {index}"), e))
    }

    /// Delete a link by index. Deleting a veth end deletes its peer too.
    pub async fn del_link(&self, index: u32) -> Result<()> {
        self.handle
            .link()
            .del(index)
            .execute()
            .await
            .map_err(|e| nl_err(format!("delete link {index}"), e))
    }

    /// Delete every link in device group `group` in one kernel batch (one RCU grace
    /// period for all of them instead of one each).
    pub async fn del_group(&self, group: u32) -> Result<()> {
        let msg = LinkMessageBuilder::<LinkUnspec>::new()
            .link_group(group)
            .build();
        match self.handle.link().del_with_message(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) => {
                let e = nl_err(format!("delete link group {group}"), e);
                if e.is_not_found() {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    /// IPv4 addresses on a link.
    pub async fn addrs(&self, index: u32) -> Result<Vec<Ipv4Net>> {
        let mut out = Vec::new();
        let mut s = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Some(m) = s
            .try_next()
            .await
            .map_err(|e| nl_err(format!("list addresses of link {index}"), e))?
        {
            if let Some(a) = addr_of(&m) {
                out.push(a);
            }
        }
        Ok(out)
    }

    /// Add an address; an identical existing one is fine.
    pub async fn ensure_addr(&self, index: u32, addr: Ipv4Net) -> Result<()> {
        if self.addrs(index).await?.contains(&addr) {
            return Ok(());
        }
        self.handle
            .address()
            .add(index, IpAddr::V4(addr.addr()), addr.prefix_len())
            .execute()
            .await
            .map_err(|e| nl_err(format!("add address {addr} to link {index}"), e))
    }

    /// Add an address without looking first (for a link just created).
    pub async fn add_addr(&self, index: u32, addr: Ipv4Net) -> Result<()> {
        self.handle
            .address()
            .add(index, IpAddr::V4(addr.addr()), addr.prefix_len())
            .execute()
            .await
            .map_err(|e| nl_err(format!("add address {addr} to link {index}"), e))
    }

    /// Add a default route via `gw` out of link `index`.
    pub async fn add_default_route(&self, index: u32, gw: Ipv4Addr) -> Result<()> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gw)
            .output_interface(index)
            .build();
        self.handle
            .route()
            .add(msg)
            .execute()
            .await
            .map_err(|e| nl_err(format!("add default route via {gw}"), e))
    }

    /// IPv4 routes of the main table as (destination, gateway, output link).
    pub async fn routes(&self) -> Result<Vec<(Ipv4Net, Option<Ipv4Addr>, Option<u32>)>> {
        let mut out = Vec::new();
        let filter = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let mut s = self.handle.route().get(filter).execute();
        while let Some(m) = s.try_next().await.map_err(|e| nl_err("list routes", e))? {
            out.push(route_of(&m));
        }
        Ok(out)
    }
}

fn link_info(m: &LinkMessage) -> LinkInfo {
    let mut l = LinkInfo {
        index: m.header.index,
        name: String::new(),
        master: None,
        group: 0,
        up: m.header.flags.contains(LinkFlags::Up),
        mtu: 0,
        mac: Vec::new(),
        kind: None,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Controller(i) => l.master = Some(*i),
            LinkAttribute::Group(g) => l.group = *g,
            LinkAttribute::Mtu(v) => l.mtu = *v,
            LinkAttribute::Address(a) => l.mac = a.clone(),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let NlLinkInfo::Kind(k) = i {
                        l.kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    l
}

fn addr_of(m: &AddressMessage) -> Option<Ipv4Net> {
    if m.header.family != AddressFamily::Inet {
        return None;
    }
    m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(IpAddr::V4(ip)) | AddressAttribute::Address(IpAddr::V4(ip)) => {
            Ipv4Net::new(*ip, m.header.prefix_len).ok()
        }
        _ => None,
    })
}

fn route_of(m: &RouteMessage) -> (Ipv4Net, Option<Ipv4Addr>, Option<u32>) {
    let mut dst = Ipv4Addr::UNSPECIFIED;
    let mut gw = None;
    let mut oif = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(rtnetlink::packet_route::route::RouteAddress::Inet(d)) => {
                dst = *d
            }
            RouteAttribute::Gateway(rtnetlink::packet_route::route::RouteAddress::Inet(g)) => {
                gw = Some(*g)
            }
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    let net = Ipv4Net::new(dst, m.header.destination_prefix_length).unwrap_or_default();
    (net, gw, oif)
}

/// Format a MAC address as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parse `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 {
            return None;
        }
        mac[i] = u8::from_str_radix(p, 16).ok()?;
    }
    Some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_roundtrip() {
        let m = parse_mac("0a:58:0A:f4:01:05").unwrap();
        assert_eq!(format_mac(&m), "0a:58:0a:f4:01:05");
        assert!(parse_mac("0a:58:0a:f4:01").is_none());
        assert!(parse_mac("0a:58:0a:f4:01:zz").is_none());
        assert!(parse_mac("0a:58:0a:f4:01:055").is_none());
    }
}
