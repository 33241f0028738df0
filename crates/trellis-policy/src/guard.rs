//! Anti-spoofing on the pod bridges' ports, always on: the tables `bridge trellis-guard`
//! (the checks) and `inet trellis-guard` (closing the one way around them).
//!
//! A pod sends only from its own MAC and its own addresses (its address and its
//! `allowedSourceAddresses`), answers ARP only for them, never acts as a DHCP server or
//! an IPv6 router, and sends nothing but IPv4, ARP and IPv6 (a VLAN tag is not a way
//! around the checks). Ports are named by interface (the host side veth), so the
//! elements of a pod can be added before its veth exists: the agent adds them during
//! the pod's CNI ADD, before the pod can send its first frame.
//!
//! ```text
//! table bridge trellis-guard {
//!     set pod-ports { type ifname }                     # guarded bridge ports
//!     set port-macs { type ifname . ether_addr }        # port . its pod's MAC
//!     set port-sources {                                # port . allowed IPv4 sources
//!         type ifname . ipv4_addr
//!         flags interval
//!     }
//!     chain prerouting {
//!         type filter hook prerouting priority filter; policy accept;
//!         iifname @pod-ports jump pod-guard
//!     }
//!     chain pod-guard {
//!         iifname . ether saddr != @port-macs drop
//!         ether type arp goto pod-arp
//!         ether type ip goto pod-ipv4
//!         ether type ip6 goto pod-ipv6
//!         drop
//!     }
//!     chain pod-arp {
//!         arp htype 1 arp ptype ip arp hlen 6 arp plen 4 iifname . arp saddr ether @port-macs iifname . arp saddr ip @port-sources return
//!         drop
//!     }
//!     chain pod-ipv4 {
//!         udp sport 67 drop
//!         iifname . ip saddr @port-sources return
//!         drop
//!     }
//!     chain pod-ipv6 {
//!         icmpv6 type nd-router-advert drop
//!         icmpv6 type nd-redirect drop
//!         udp sport 547 drop
//!     }
//! }
//! table inet trellis-guard {
//!     set pod-ports { type ifname }                     # the same ports
//!     chain prerouting {
//!         type filter hook prerouting priority raw; policy accept;
//!         iifname @pod-ports drop
//!     }
//! }
//! ```
//!
//! Choices:
//! - Only frames entering from a port in `pod-ports` are looked at; everything else on
//!   the bridge (the uplink, tunnels, the bridge's own frames) passes untouched. A port
//!   in `pod-ports` without elements in the other sets can send nothing (fail closed).
//! - The ARP and IPv4 checks are positive (`... return`, then `drop`): a frame too short
//!   to hold the fields compared is dropped, not let through.
//! - `port-sources` is an interval set of `ifname . ipv4_addr` (the kernel's `pipapo`
//!   backend), so an allowed prefix is one element. A port's prefixes are merged into
//!   disjoint ranges (the backend refuses overlapping elements); `0.0.0.0` is cut out of
//!   every range, so it is never an allowed source (not even in an ARP probe).
//! - IPv6 source addresses are not checked (pods get no IPv6 addresses from Trellis);
//!   router advertisements, redirects and DHCPv6 server replies are dropped. Non-first
//!   fragments carry no transport header and are not matched by the port checks (the
//!   kernel drops fragmented neighbour discovery itself, RFC 6980).
//! - The kernel forced the second table: a frame to a link-local group address
//!   (`01:80:c2:00:00:0X`, e.g. LLDP's `...:0e`) is not forwarded by the bridge but
//!   handed to the *port's* own network stack, and it skips the bridge's prerouting
//!   hook (LLDP, and STP's `...:00` while STP runs, skip every bridge hook). A pod could
//!   thus deliver packets with any source to the node's own addresses (not to other
//!   pods: the node forwards no multicast-addressed frame). Nothing legitimate enters
//!   the node's IP stack on a bridge port (bridged traffic enters on the bridge, also
//!   with `br_netfilter`), so the inet table drops whatever does, for guarded ports.
//! - Every rule carries a fingerprint of its chain (format, name, hook, every rule's
//!   bytes) as its comment. A sync reads the table and rewrites the chains only when a
//!   fingerprint, a hook or a set's type differs; elements are brought to the desired
//!   ones by difference, in one transaction over both tables. A restart with unchanged
//!   ports writes nothing. Nothing but these tables is ever written; nothing is flushed
//!   but their own chains (when they are rewritten, in the same transaction).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::Ipv4Net;
use trellis_api::naming::fnv1a64;
use trellis_net::nftnl::expr::{
    value_data, Rule, CMP_EQ, META_L4PROTO, NFT_RETURN, PAYLOAD_NETWORK, PAYLOAD_TRANSPORT,
    PROTO_UDP, REG_1, REG_2,
};
use trellis_net::nftnl::{
    attr, attr_be32, attr_str, comment_udata, msg, parse_attrs, udata_comment, Attrs, Message,
    NftError, Socket, FAMILY_BRIDGE, FAMILY_INET, NLM_F_APPEND, NLM_F_CREATE,
};

use crate::PolicyError;

/// The name of both tables (families `bridge` and `inet`).
pub const TABLE: &str = "trellis-guard";
/// The base chain of each table (hook prerouting).
pub const PREROUTING: &str = "prerouting";
/// The checks every frame from a pod port goes through.
pub const POD_GUARD: &str = "pod-guard";
/// ARP from a pod port.
pub const POD_ARP: &str = "pod-arp";
/// IPv4 from a pod port.
pub const POD_IPV4: &str = "pod-ipv4";
/// IPv6 from a pod port.
pub const POD_IPV6: &str = "pod-ipv6";

/// Bumped whenever the encoding of any rule or set changes, so old tables are rewritten.
const FORMAT: &str = "trellis-guard/1";

const IFNAMSIZ: usize = 16;

const PAYLOAD_LL: u32 = 0;
const META_PROTOCOL: u32 = 1;
const META_IIFNAME: u32 = 6;
const NF_DROP: i32 = 0;
const NF_ACCEPT: u32 = 1;
const HOOK_PREROUTING: u32 = 0;
/// The bridge family's `filter` priority.
const PRIORITY_FILTER: i32 = -200;
/// The inet family's `raw` priority.
const PRIORITY_RAW: i32 = -300;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;
const PROTO_ICMPV6: u8 = 58;
const ICMPV6_ROUTER_ADVERT: u8 = 134;
const ICMPV6_REDIRECT: u8 = 137;
const PORT_DHCP_SERVER: u16 = 67;
const PORT_DHCPV6_SERVER: u16 = 547;

// nf_tables set flags and data types.
const SET_INTERVAL: u32 = 0x4;
const SET_CONCAT: u32 = 0x80;
const TYPE_IPADDR: u32 = 7;
const TYPE_ETHERADDR: u32 = 9;
const TYPE_IFNAME: u32 = 41;

// Attribute numbers.
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 2;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_DESC: u16 = 9;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_USERDATA: u16 = 13;
/// `NFTNL_UDATA_SET_KEYBYTEORDER` in a set's user data (read by `nft list` only).
const UDATA_SET_KEYBYTEORDER: u8 = 0;
const NFTA_SET_DESC_CONCAT: u16 = 2;
const NFTA_SET_FIELD_LEN: u16 = 1;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_KEY_END: u16 = 10;
const NFTA_DATA_VALUE: u16 = 1;

/// Largest element list put in one message (a nested attribute's length is 16 bits).
const MAX_ELEM_BYTES: usize = 48 << 10;

/// One guarded bridge port: the host side of a pod's veth.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GuardPort {
    /// The port's interface name (at most 15 bytes).
    pub ifname: String,
    /// The pod's MAC address (the only source MAC the port may send from).
    pub mac: [u8; 6],
    /// The IPv4 sources the pod may send from: its own address as a /32 plus its
    /// `allowedSourceAddresses`. `0.0.0.0` is never allowed, whatever the prefixes say.
    pub sources: Vec<Ipv4Net>,
}

impl GuardPort {
    /// A port whose pod has address `addr` and may also send from `allowed`.
    pub fn new(
        ifname: impl Into<String>,
        mac: [u8; 6],
        addr: Ipv4Addr,
        allowed: &[Ipv4Net],
    ) -> Self {
        let mut sources = vec![Ipv4Net::from(addr)];
        sources.extend_from_slice(allowed);
        GuardPort {
            ifname: ifname.into(),
            mac,
            sources,
        }
    }
}

/// What a [`Guard`] call changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Tables created (2 on a fresh node).
    pub tables_created: usize,
    /// Chains created or rewritten (all their rules replaced).
    pub chains_written: usize,
    /// Chains deleted (not ours any more, or recreated for another hook).
    pub chains_deleted: usize,
    /// Rules written (in the chains written).
    pub rules_written: usize,
    /// Sets created (or recreated for another type).
    pub sets_added: usize,
    /// Sets deleted.
    pub sets_deleted: usize,
    /// Set elements added.
    pub elements_added: usize,
    /// Set elements deleted.
    pub elements_deleted: usize,
    /// nf_tables transactions committed (0 when nothing had to change).
    pub transactions: usize,
    /// netlink messages in those transactions.
    pub messages: usize,
}

impl Report {
    /// True when the kernel was left exactly as it was.
    pub fn changed_nothing(&self) -> bool {
        self.transactions == 0
    }

    fn add(&mut self, o: &Report) {
        self.tables_created += o.tables_created;
        self.chains_written += o.chains_written;
        self.chains_deleted += o.chains_deleted;
        self.rules_written += o.rules_written;
        self.sets_added += o.sets_added;
        self.sets_deleted += o.sets_deleted;
        self.elements_added += o.elements_added;
        self.elements_deleted += o.elements_deleted;
        self.transactions += o.transactions;
        self.messages += o.messages;
    }
}

fn invalid(what: String) -> PolicyError {
    PolicyError::InvalidPort(what)
}

/// An interface name as the kernel compares it (`meta iifname`): zero-padded to
/// `IFNAMSIZ`. `None` for a name no interface can have.
fn ifname_key(name: &str) -> Option<[u8; IFNAMSIZ]> {
    trellis_api::naming::validate_ifname(name).ok()?;
    let b = name.as_bytes();
    let mut k = [0u8; IFNAMSIZ];
    k[..b.len()].copy_from_slice(b);
    Some(k)
}

fn validate(p: &GuardPort) -> Result<[u8; IFNAMSIZ], PolicyError> {
    let key = ifname_key(&p.ifname)
        .ok_or_else(|| invalid(format!("guard port {:?}: not an interface name", p.ifname)))?;
    if p.mac[0] & 1 != 0 || p.mac == [0; 6] {
        return Err(invalid(format!(
            "guard port {:?}: {:02x?} is not a unicast MAC address",
            p.ifname, p.mac
        )));
    }
    Ok(key)
}

/// The allowed sources as disjoint, sorted, inclusive ranges without `0.0.0.0`.
fn source_ranges(sources: &[Ipv4Net]) -> Vec<(u32, u32)> {
    let r: Vec<(u32, u32)> = sources
        .iter()
        .filter_map(|n| {
            let (a, b) = (u32::from(n.network()), u32::from(n.broadcast()));
            if b == 0 {
                None
            } else {
                Some((a.max(1), b))
            }
        })
        .collect();
    crate::elements::merge(r)
}

/// The family of one of the two tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Family {
    Bridge,
    Inet,
}

impl Family {
    const ALL: [Family; 2] = [Family::Bridge, Family::Inet];

    fn nfproto(self) -> u8 {
        match self {
            Family::Bridge => FAMILY_BRIDGE,
            Family::Inet => FAMILY_INET,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Family::Bridge => "bridge",
            Family::Inet => "inet",
        }
    }
}

/// The sets of the tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum GuardSet {
    /// `ifname`: the guarded ports.
    PodPorts,
    /// `ifname`: the guarded ports, in the inet table.
    InetPodPorts,
    /// `ifname . ether_addr`.
    PortMacs,
    /// `ifname . ipv4_addr`, intervals.
    PortSources,
}

/// A set's type as declared (and compared with the kernel's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SetSpec {
    flags: u32,
    key_type: u32,
    key_len: u32,
    /// The field lengths of a concatenation with intervals (sent as `NFTA_SET_DESC`).
    fields: &'static [u32],
    /// The key's byte order as `nft` records it for display: 1 (host) for `ifname`, 0
    /// for a concatenation.
    byteorder: u32,
}

impl GuardSet {
    const ALL: [GuardSet; 4] = [
        GuardSet::PodPorts,
        GuardSet::InetPodPorts,
        GuardSet::PortMacs,
        GuardSet::PortSources,
    ];

    fn name(self) -> &'static str {
        match self {
            GuardSet::PodPorts | GuardSet::InetPodPorts => "pod-ports",
            GuardSet::PortMacs => "port-macs",
            GuardSet::PortSources => "port-sources",
        }
    }

    fn family(self) -> Family {
        match self {
            GuardSet::InetPodPorts => Family::Inet,
            _ => Family::Bridge,
        }
    }

    fn from_name(family: Family, name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|s| s.family() == family && s.name() == name)
    }

    fn spec(self) -> SetSpec {
        match self {
            GuardSet::PodPorts | GuardSet::InetPodPorts => SetSpec {
                flags: 0,
                key_type: TYPE_IFNAME,
                key_len: 16,
                fields: &[],
                byteorder: 1,
            },
            GuardSet::PortMacs => SetSpec {
                flags: 0,
                key_type: (TYPE_IFNAME << 6) | TYPE_ETHERADDR,
                key_len: 16 + 8,
                fields: &[],
                byteorder: 0,
            },
            GuardSet::PortSources => SetSpec {
                flags: SET_INTERVAL | SET_CONCAT,
                key_type: (TYPE_IFNAME << 6) | TYPE_IPADDR,
                key_len: 16 + 4,
                fields: &[16, 4],
                byteorder: 0,
            },
        }
    }

    fn is_interval(self) -> bool {
        self.spec().flags & SET_INTERVAL != 0
    }
}

/// One set element. Keys start with the port's name (`IFNAMSIZ` bytes).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Elem {
    set: GuardSet,
    key: Vec<u8>,
    /// The range's last key (interval sets only).
    key_end: Option<Vec<u8>>,
}

impl Elem {
    fn port(&self) -> [u8; IFNAMSIZ] {
        let mut k = [0u8; IFNAMSIZ];
        let n = self.key.len().min(IFNAMSIZ);
        k[..n].copy_from_slice(&self.key[..n]);
        k
    }

    fn describe(&self) -> String {
        let port = String::from_utf8_lossy(&self.port())
            .trim_end_matches('\0')
            .to_string();
        let rest = |k: &[u8]| k.get(IFNAMSIZ..).unwrap_or_default().to_vec();
        match &self.key_end {
            Some(e) => format!(
                "{} {port:?} . {:02x?}-{:02x?}",
                self.set.name(),
                rest(&self.key),
                rest(e)
            ),
            None if self.key.len() == IFNAMSIZ => format!("{} {port:?}", self.set.name()),
            None => format!("{} {port:?} . {:02x?}", self.set.name(), rest(&self.key)),
        }
    }
}

/// The elements of one (valid) port.
fn port_elems(key: [u8; IFNAMSIZ], p: &GuardPort) -> BTreeSet<Elem> {
    let with = |tail: &[u8]| {
        let mut k = key.to_vec();
        k.extend_from_slice(tail);
        k
    };
    let mut out = BTreeSet::new();
    for set in [GuardSet::PodPorts, GuardSet::InetPodPorts] {
        out.insert(Elem {
            set,
            key: key.to_vec(),
            key_end: None,
        });
    }
    let mut mac = [0u8; 8];
    mac[..6].copy_from_slice(&p.mac);
    out.insert(Elem {
        set: GuardSet::PortMacs,
        key: with(&mac),
        key_end: None,
    });
    for (a, b) in source_ranges(&p.sources) {
        out.insert(Elem {
            set: GuardSet::PortSources,
            key: with(&a.to_be_bytes()),
            key_end: Some(with(&b.to_be_bytes())),
        });
    }
    out
}

/// A chain and its rules (each the contents of `NFTA_RULE_EXPRESSIONS`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ChainSpec {
    family: Family,
    name: &'static str,
    /// Hook and priority of a base chain (type filter, policy accept).
    base: Option<(u32, i32)>,
    rules: Vec<Arc<[u8]>>,
    /// The comment every rule carries: a fingerprint of the whole chain.
    comment: String,
}

impl ChainSpec {
    fn new(family: Family, name: &'static str, base: Option<(u32, i32)>, rules: Vec<Rule>) -> Self {
        let rules: Vec<Arc<[u8]>> = rules.into_iter().map(Rule::into_bytes).collect();
        let base_text = base
            .map(|(h, p)| format!("filter {h} {p}"))
            .unwrap_or_default();
        let h = fnv1a64(
            [
                FORMAT.as_bytes(),
                family.name().as_bytes(),
                name.as_bytes(),
                base_text.as_bytes(),
            ]
            .into_iter()
            .chain(rules.iter().flat_map(|r| [b"|".as_slice(), &r[..]])),
        );
        ChainSpec {
            family,
            name,
            base,
            rules,
            comment: format!("{h:016x}"),
        }
    }
}

fn rule(f: impl FnOnce(&mut Rule)) -> Rule {
    let mut r = Rule::new();
    f(&mut r);
    r
}

/// `ether type <t>`.
fn ether_type(r: &mut Rule, t: u16) -> &mut Rule {
    r.payload(REG_1, PAYLOAD_LL, 12, 2)
        .cmp(REG_1, CMP_EQ, &t.to_be_bytes())
}

/// `iifname . <payload> @<set>` (`!= @<set>` with `invert`).
fn iifname_concat_in(
    r: &mut Rule,
    base: u32,
    offset: u32,
    len: u32,
    set: GuardSet,
    invert: bool,
) -> &mut Rule {
    r.meta_load(REG_1, META_IIFNAME)
        .payload(REG_2, base, offset, len)
        .lookup(REG_1, set.name(), None, invert)
}

/// `meta l4proto <proto> th sport <port>` (`udp sport <port>` for UDP).
fn l4_sport(r: &mut Rule, proto: u8, port: u16) -> &mut Rule {
    r.meta_load(REG_1, META_L4PROTO)
        .cmp(REG_1, CMP_EQ, &[proto])
        .payload(REG_1, PAYLOAD_TRANSPORT, 0, 2)
        .cmp(REG_1, CMP_EQ, &port.to_be_bytes())
}

fn drop_frame(r: &mut Rule) -> &mut Rule {
    r.immediate_verdict(NF_DROP, None)
}

/// The chains of both tables, in creation order.
fn skeleton() -> Vec<ChainSpec> {
    let prerouting = vec![rule(|r| {
        r.meta_load(REG_1, META_IIFNAME)
            .lookup(REG_1, GuardSet::PodPorts.name(), None, false)
            .jump(POD_GUARD);
    })];
    let guard = vec![
        rule(|r| {
            iifname_concat_in(r, PAYLOAD_LL, 6, 6, GuardSet::PortMacs, true);
            drop_frame(r);
        }),
        rule(|r| {
            ether_type(r, ETH_P_ARP).goto(POD_ARP);
        }),
        rule(|r| {
            ether_type(r, ETH_P_IP).goto(POD_IPV4);
        }),
        rule(|r| {
            ether_type(r, ETH_P_IPV6).goto(POD_IPV6);
        }),
        rule(|r| {
            drop_frame(r);
        }),
    ];
    let arp = vec![
        rule(|r| {
            ether_type(r, ETH_P_ARP)
                // htype 1 (Ethernet), ptype ip
                .payload(REG_1, PAYLOAD_NETWORK, 0, 4)
                .cmp(REG_1, CMP_EQ, &[0, 1, 0x08, 0x00])
                // hlen 6, plen 4
                .payload(REG_1, PAYLOAD_NETWORK, 4, 2)
                .cmp(REG_1, CMP_EQ, &[6, 4]);
            iifname_concat_in(r, PAYLOAD_NETWORK, 8, 6, GuardSet::PortMacs, false);
            iifname_concat_in(r, PAYLOAD_NETWORK, 14, 4, GuardSet::PortSources, false)
                .verdict(NFT_RETURN, None);
        }),
        rule(|r| {
            drop_frame(r);
        }),
    ];
    let ipv4 = vec![
        rule(|r| {
            l4_sport(r, PROTO_UDP, PORT_DHCP_SERVER);
            drop_frame(r);
        }),
        rule(|r| {
            r.meta_load(REG_1, META_PROTOCOL)
                .cmp(REG_1, CMP_EQ, &ETH_P_IP.to_be_bytes());
            iifname_concat_in(r, PAYLOAD_NETWORK, 12, 4, GuardSet::PortSources, false)
                .verdict(NFT_RETURN, None);
        }),
        rule(|r| {
            drop_frame(r);
        }),
    ];
    let icmpv6 = |ty: u8| {
        rule(|r| {
            ether_type(r, ETH_P_IPV6)
                .meta_load(REG_1, META_L4PROTO)
                .cmp(REG_1, CMP_EQ, &[PROTO_ICMPV6])
                .payload(REG_1, PAYLOAD_TRANSPORT, 0, 1)
                .cmp(REG_1, CMP_EQ, &[ty]);
            drop_frame(r);
        })
    };
    let ipv6 = vec![
        icmpv6(ICMPV6_ROUTER_ADVERT),
        icmpv6(ICMPV6_REDIRECT),
        rule(|r| {
            l4_sport(r, PROTO_UDP, PORT_DHCPV6_SERVER);
            drop_frame(r);
        }),
    ];
    let inet = vec![rule(|r| {
        r.meta_load(REG_1, META_IIFNAME)
            .lookup(REG_1, GuardSet::InetPodPorts.name(), None, false);
        drop_frame(r);
    })];
    let bridge = Family::Bridge;
    vec![
        ChainSpec::new(bridge, POD_GUARD, None, guard),
        ChainSpec::new(bridge, POD_ARP, None, arp),
        ChainSpec::new(bridge, POD_IPV4, None, ipv4),
        ChainSpec::new(bridge, POD_IPV6, None, ipv6),
        ChainSpec::new(
            bridge,
            PREROUTING,
            Some((HOOK_PREROUTING, PRIORITY_FILTER)),
            prerouting,
        ),
        ChainSpec::new(
            Family::Inet,
            PREROUTING,
            Some((HOOK_PREROUTING, PRIORITY_RAW)),
            inet,
        ),
    ]
}

/// A base chain's hook as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LiveBase {
    kind: String,
    hook: u32,
    priority: i32,
    policy: u32,
}

/// A chain as read back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct LiveChain {
    base: Option<LiveBase>,
    rules: usize,
    /// The comments of the rules, deduplicated (one entry when all agree).
    comments: Vec<String>,
}

/// One table as read back.
#[derive(Debug, Clone, Default)]
struct LiveTable {
    exists: bool,
    chains: BTreeMap<String, LiveChain>,
    /// Name -> (flags, key type, key length).
    sets: BTreeMap<String, (u32, u32, u32)>,
}

/// Both tables as read back.
#[derive(Debug, Clone, Default)]
struct Live {
    tables: BTreeMap<Family, LiveTable>,
    /// The elements of our sets (of those whose type is right).
    elems: BTreeSet<Elem>,
}

impl Live {
    fn table(&self, f: Family) -> Option<&LiveTable> {
        self.tables.get(&f).filter(|t| t.exists)
    }

    fn set_ok(&self, s: GuardSet) -> bool {
        let spec = s.spec();
        self.table(s.family()).and_then(|t| t.sets.get(s.name()))
            == Some(&(spec.flags, spec.key_type, spec.key_len))
    }
}

fn table_attrs(ty: u16) -> Attrs {
    let mut a = Attrs::new();
    a.put_str(ty, TABLE);
    a
}

/// Read both tables: chains, rule comments, sets and the elements of our sets.
fn read_live(sock: &mut Socket) -> Result<Live, PolicyError> {
    let mut live = Live::default();
    for f in Family::ALL {
        let t = read_table(sock, f)?;
        live.tables.insert(f, t);
    }
    for set in GuardSet::ALL {
        if !live.set_ok(set) {
            continue;
        }
        let mut a = Attrs::new();
        a.put_str(NFTA_SET_ELEM_LIST_TABLE, TABLE)
            .put_str(NFTA_SET_ELEM_LIST_SET, set.name());
        for m in sock.dump(set.family().nfproto(), msg::GETSETELEM, &a)? {
            let Some(list) = attr(&m, NFTA_SET_ELEM_LIST_ELEMENTS) else {
                continue;
            };
            for (ty, e) in parse_attrs(list) {
                if ty != NFTA_LIST_ELEM {
                    continue;
                }
                let value = |t| attr(e, t).and_then(|k| attr(k, NFTA_DATA_VALUE));
                let Some(key) = value(NFTA_SET_ELEM_KEY) else {
                    continue;
                };
                let key_end = if set.is_interval() {
                    Some(value(NFTA_SET_ELEM_KEY_END).unwrap_or(key).to_vec())
                } else {
                    None
                };
                live.elems.insert(Elem {
                    set,
                    key: key.to_vec(),
                    key_end,
                });
            }
        }
    }
    Ok(live)
}

/// Read the chains, rule comments and sets of the table of family `f`.
fn read_table(sock: &mut Socket, f: Family) -> Result<LiveTable, PolicyError> {
    let fam = f.nfproto();
    let exists = sock
        .dump(fam, msg::GETTABLE, &Attrs::new())?
        .iter()
        .any(|m| attr_str(m, NFTA_TABLE_NAME).as_deref() == Some(TABLE));
    let mut live = LiveTable {
        exists,
        ..Default::default()
    };
    if !exists {
        return Ok(live);
    }
    // The kernel does not filter chain dumps by table.
    for m in sock.dump(fam, msg::GETCHAIN, &table_attrs(NFTA_CHAIN_TABLE))? {
        let m = &m[..];
        if attr_str(m, NFTA_CHAIN_TABLE).as_deref() != Some(TABLE) {
            continue;
        }
        let Some(name) = attr_str(m, NFTA_CHAIN_NAME) else {
            continue;
        };
        let base = attr(m, NFTA_CHAIN_HOOK).map(|hook| LiveBase {
            kind: attr_str(m, NFTA_CHAIN_TYPE).unwrap_or_default(),
            hook: attr_be32(hook, NFTA_HOOK_HOOKNUM).unwrap_or(u32::MAX),
            priority: attr_be32(hook, NFTA_HOOK_PRIORITY).map_or(i32::MIN, |p| p as i32),
            policy: attr_be32(m, NFTA_CHAIN_POLICY).unwrap_or(NF_ACCEPT),
        });
        live.chains.insert(
            name,
            LiveChain {
                base,
                ..Default::default()
            },
        );
    }
    for m in sock.dump(fam, msg::GETRULE, &table_attrs(NFTA_RULE_TABLE))? {
        let m = &m[..];
        if attr_str(m, NFTA_RULE_TABLE).as_deref() != Some(TABLE) {
            continue;
        }
        let Some(chain) = attr_str(m, NFTA_RULE_CHAIN) else {
            continue;
        };
        let comment = attr(m, NFTA_RULE_USERDATA)
            .and_then(udata_comment)
            .unwrap_or_default();
        if let Some(c) = live.chains.get_mut(&chain) {
            c.rules += 1;
            if !c.comments.contains(&comment) {
                c.comments.push(comment);
            }
        }
    }
    for m in sock.dump(fam, msg::GETSET, &table_attrs(NFTA_SET_TABLE))? {
        let m = &m[..];
        if attr_str(m, NFTA_SET_TABLE).as_deref() != Some(TABLE) {
            continue;
        }
        let Some(name) = attr_str(m, NFTA_SET_NAME) else {
            continue;
        };
        live.sets.insert(
            name,
            (
                attr_be32(m, NFTA_SET_FLAGS).unwrap_or(0),
                attr_be32(m, NFTA_SET_KEY_TYPE).unwrap_or(0),
                attr_be32(m, NFTA_SET_KEY_LEN).unwrap_or(0),
            ),
        );
    }
    Ok(live)
}

/// One step of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    NewTable(Family),
    FlushChain(Family, String),
    DelElem(Elem),
    DelSet(Family, String),
    DelChain(Family, String),
    NewSet(GuardSet),
    /// Index into the skeleton.
    NewChain(usize),
    /// Chain (index into the skeleton) and rule index.
    NewRule(usize, usize),
    NewElem(Elem),
}

impl Op {
    /// Order inside one transaction: references are dropped before what they point to
    /// is deleted, and created before they are used.
    fn phase(&self) -> u8 {
        match self {
            Op::NewTable(_) => 0,
            Op::FlushChain(..) => 1,
            Op::DelElem(_) => 2,
            Op::DelSet(..) | Op::DelChain(..) => 3,
            Op::NewSet(_) | Op::NewChain(_) => 4,
            Op::NewRule(..) => 5,
            Op::NewElem(_) => 6,
        }
    }

    /// The family of the table the op changes.
    fn family(&self, chains: &[ChainSpec]) -> Family {
        match self {
            Op::NewTable(f) | Op::FlushChain(f, _) | Op::DelSet(f, _) | Op::DelChain(f, _) => *f,
            Op::DelElem(e) | Op::NewElem(e) => e.set.family(),
            Op::NewSet(s) => s.family(),
            Op::NewChain(c) | Op::NewRule(c, _) => chains[*c].family,
        }
    }

    fn describe(&self, chains: &[ChainSpec]) -> String {
        let t = format!("{} {TABLE}", self.family(chains).name());
        match self {
            Op::NewTable(_) => format!("add table {t}"),
            Op::FlushChain(_, c) => format!("flush chain {t} {c}"),
            Op::DelElem(e) => format!("delete element {t} {}", e.describe()),
            Op::DelSet(_, s) => format!("delete set {t} {s}"),
            Op::DelChain(_, c) => format!("delete chain {t} {c}"),
            Op::NewSet(s) => format!("add set {t} {}", s.name()),
            Op::NewChain(c) => format!("add chain {t} {}", chains[*c].name),
            Op::NewRule(c, _) => format!("add rule {t} {}", chains[*c].name),
            Op::NewElem(e) => format!("add element {t} {}", e.describe()),
        }
    }
}

/// Ops plus the counts they stand for.
#[derive(Debug, Default)]
struct Plan {
    ops: Vec<Op>,
    report: Report,
}

impl Plan {
    fn del_elem(&mut self, e: &Elem) {
        self.ops.push(Op::DelElem(e.clone()));
        self.report.elements_deleted += 1;
    }

    fn new_elem(&mut self, e: &Elem) {
        self.ops.push(Op::NewElem(e.clone()));
        self.report.elements_added += 1;
    }

    /// Bring the skeleton (tables, sets, chains, rules) to `chains`; returns the sets
    /// created by the plan (whose elements all have to be added).
    fn skeleton(&mut self, live: &Live, chains: &[ChainSpec]) -> BTreeSet<GuardSet> {
        let mut created = BTreeSet::new();
        for f in Family::ALL {
            let empty = LiveTable::default();
            let table = live.table(f).unwrap_or(&empty);
            let chains: Vec<(usize, &ChainSpec)> = chains
                .iter()
                .enumerate()
                .filter(|(_, c)| c.family == f)
                .collect();
            self.table_skeleton(f, live, table, &chains, &mut created);
        }
        created
    }

    /// The skeleton of the table of family `f` (`table` as read back).
    fn table_skeleton(
        &mut self,
        f: Family,
        live: &Live,
        table: &LiveTable,
        chains: &[(usize, &ChainSpec)],
        created: &mut BTreeSet<GuardSet>,
    ) {
        if !table.exists {
            self.ops.push(Op::NewTable(f));
            self.report.tables_created += 1;
        }
        let sets: Vec<GuardSet> = GuardSet::ALL
            .into_iter()
            .filter(|s| s.family() == f)
            .collect();
        let sets_ok = sets.iter().all(|s| live.set_ok(*s))
            && table
                .sets
                .keys()
                .all(|n| GuardSet::from_name(f, n).is_some());
        let base_ok = |spec: &ChainSpec, l: &LiveChain| match (spec.base, &l.base) {
            (None, None) => true,
            (Some((hook, priority)), Some(lb)) => {
                lb.kind == "filter"
                    && lb.hook == hook
                    && lb.priority == priority
                    && lb.policy == NF_ACCEPT
            }
            _ => false,
        };
        let chain_ok = |spec: &ChainSpec| {
            table.chains.get(spec.name).is_some_and(|l| {
                base_ok(spec, l)
                    && l.rules == spec.rules.len()
                    && l.comments == std::slice::from_ref(&spec.comment)
            })
        };
        let chains_ok = chains.iter().all(|(_, c)| chain_ok(c))
            && table
                .chains
                .keys()
                .all(|n| chains.iter().any(|(_, c)| c.name == n));
        if table.exists && sets_ok && chains_ok {
            return;
        }
        // Something differs: every chain of the table is flushed and rewritten in this
        // transaction (so no rule refers to a set or chain being replaced).
        for name in table.chains.keys() {
            self.ops.push(Op::FlushChain(f, name.clone()));
        }
        for (name, l) in &table.chains {
            let keep = chains.iter().any(|(_, c)| c.name == name && base_ok(c, l));
            if !keep {
                self.ops.push(Op::DelChain(f, name.clone()));
                self.report.chains_deleted += 1;
            }
        }
        for name in table.sets.keys() {
            let keep = GuardSet::from_name(f, name).is_some_and(|s| live.set_ok(s));
            if !keep {
                self.ops.push(Op::DelSet(f, name.clone()));
                self.report.sets_deleted += 1;
            }
        }
        for s in sets {
            if !live.set_ok(s) {
                self.ops.push(Op::NewSet(s));
                self.report.sets_added += 1;
                created.insert(s);
            }
        }
        for (i, c) in chains {
            let kept = table.chains.get(c.name).is_some_and(|l| base_ok(c, l));
            if !kept {
                self.ops.push(Op::NewChain(*i));
            }
            for j in 0..c.rules.len() {
                self.ops.push(Op::NewRule(*i, j));
            }
            self.report.chains_written += 1;
            self.report.rules_written += c.rules.len();
        }
    }

    /// Bring the elements from `live` to `want`; the sets in `created` are new (empty).
    fn elements(
        &mut self,
        live: &BTreeSet<Elem>,
        want: &BTreeSet<Elem>,
        created: &BTreeSet<GuardSet>,
    ) {
        for e in live {
            if !created.contains(&e.set) && !want.contains(e) {
                self.del_elem(e);
            }
        }
        for e in want {
            if created.contains(&e.set) || !live.contains(e) {
                self.new_elem(e);
            }
        }
    }
}

/// Encode `ops` (already in phase order) as messages; consecutive element operations on
/// one set share a message. Also returns, per message, the index of its first op.
fn encode(chains: &[ChainSpec], ops: &[Op]) -> (Vec<Message>, Vec<usize>) {
    let mut msgs = Vec::new();
    let mut first = Vec::new();
    let mut i = 0;
    while i < ops.len() {
        first.push(i);
        let mut a = Attrs::new();
        let family = ops[i].family(chains).nfproto();
        let (kind, flags) = match &ops[i] {
            Op::NewTable(_) => {
                a.put_str(NFTA_TABLE_NAME, TABLE)
                    .put_be32(NFTA_TABLE_FLAGS, 0);
                (msg::NEWTABLE, NLM_F_CREATE)
            }
            Op::FlushChain(_, c) => {
                a.put_str(NFTA_RULE_TABLE, TABLE)
                    .put_str(NFTA_RULE_CHAIN, c);
                (msg::DELRULE, 0)
            }
            Op::DelSet(_, s) => {
                a.put_str(NFTA_SET_TABLE, TABLE).put_str(NFTA_SET_NAME, s);
                (msg::DELSET, 0)
            }
            Op::DelChain(_, c) => {
                a.put_str(NFTA_CHAIN_TABLE, TABLE)
                    .put_str(NFTA_CHAIN_NAME, c);
                (msg::DELCHAIN, 0)
            }
            Op::NewSet(s) => {
                let spec = s.spec();
                a.put_str(NFTA_SET_TABLE, TABLE)
                    .put_str(NFTA_SET_NAME, s.name())
                    .put_be32(NFTA_SET_FLAGS, spec.flags)
                    .put_be32(NFTA_SET_KEY_TYPE, spec.key_type)
                    .put_be32(NFTA_SET_KEY_LEN, spec.key_len)
                    .put_be32(NFTA_SET_ID, u32::try_from(i).unwrap_or(0));
                let mut udata = vec![UDATA_SET_KEYBYTEORDER, 4];
                udata.extend_from_slice(&spec.byteorder.to_ne_bytes());
                a.put(NFTA_SET_USERDATA, &udata);
                if !spec.fields.is_empty() {
                    a.nest(NFTA_SET_DESC, |d| {
                        d.nest(NFTA_SET_DESC_CONCAT, |c| {
                            for f in spec.fields {
                                c.nest(NFTA_LIST_ELEM, |e| {
                                    e.put_be32(NFTA_SET_FIELD_LEN, *f);
                                });
                            }
                        });
                    });
                }
                (msg::NEWSET, NLM_F_CREATE)
            }
            Op::NewChain(c) => {
                let c = &chains[*c];
                a.put_str(NFTA_CHAIN_TABLE, TABLE)
                    .put_str(NFTA_CHAIN_NAME, c.name);
                if let Some((hook, priority)) = c.base {
                    a.nest(NFTA_CHAIN_HOOK, |h| {
                        h.put_be32(NFTA_HOOK_HOOKNUM, hook)
                            .put_be32(NFTA_HOOK_PRIORITY, priority as u32);
                    })
                    .put_be32(NFTA_CHAIN_POLICY, NF_ACCEPT)
                    .put_str(NFTA_CHAIN_TYPE, "filter");
                }
                (msg::NEWCHAIN, NLM_F_CREATE)
            }
            Op::NewRule(c, r) => {
                let c = &chains[*c];
                a.put_str(NFTA_RULE_TABLE, TABLE)
                    .put_str(NFTA_RULE_CHAIN, c.name)
                    .nest_raw(NFTA_RULE_EXPRESSIONS, &c.rules[*r])
                    .put(NFTA_RULE_USERDATA, &comment_udata(&c.comment));
                (msg::NEWRULE, NLM_F_CREATE | NLM_F_APPEND)
            }
            Op::NewElem(e) | Op::DelElem(e) => {
                let add = matches!(ops[i], Op::NewElem(_));
                let set = e.set;
                a.put_str(NFTA_SET_ELEM_LIST_TABLE, TABLE)
                    .put_str(NFTA_SET_ELEM_LIST_SET, set.name());
                let mut list = Attrs::new();
                while i < ops.len() && list.len() < MAX_ELEM_BYTES {
                    let e = match (&ops[i], add) {
                        (Op::NewElem(e), true) | (Op::DelElem(e), false) if e.set == set => e,
                        _ => break,
                    };
                    list.nest(NFTA_LIST_ELEM, |l| {
                        l.nest(NFTA_SET_ELEM_KEY, |k| value_data(k, &e.key));
                        if let Some(end) = &e.key_end {
                            l.nest(NFTA_SET_ELEM_KEY_END, |k| value_data(k, end));
                        }
                    });
                    i += 1;
                }
                a.nest_raw(NFTA_SET_ELEM_LIST_ELEMENTS, list.bytes());
                msgs.push(Message {
                    family,
                    kind: if add {
                        msg::NEWSETELEM
                    } else {
                        msg::DELSETELEM
                    },
                    flags: if add { NLM_F_CREATE } else { 0 },
                    attrs: a,
                });
                continue;
            }
        };
        msgs.push(Message {
            family,
            kind,
            flags,
            attrs: a,
        });
        i += 1;
    }
    (msgs, first)
}

/// Identity (device, inode) of the calling thread's network namespace.
fn current_netns() -> Result<(u64, u64), PolicyError> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata("/proc/thread-self/ns/net").map_err(|source| {
        PolicyError::Nft(NftError::Netlink {
            what: "read /proc/thread-self/ns/net".into(),
            source,
        })
    })?;
    Ok((m.dev(), m.ino()))
}

/// Elements by port.
type ByPort = BTreeMap<[u8; IFNAMSIZ], BTreeSet<Elem>>;

fn by_port(elems: impl IntoIterator<Item = Elem>) -> ByPort {
    let mut out = ByPort::new();
    for e in elems {
        out.entry(e.port()).or_default().insert(e);
    }
    out
}

/// The anti-spoofing tables of one node (in the network namespace of the calling
/// thread). Nothing is read or written before the first call.
#[derive(Debug)]
pub struct Guard {
    chains: Vec<ChainSpec>,
    /// The elements the kernel holds, by port, when known (after a successful sync or
    /// change in the socket's namespace); `None` makes the next change read the table.
    applied: Option<ByPort>,
    /// The netlink socket and the network namespace it was opened in (kept open:
    /// closing a netfilter netlink socket waits for an RCU grace period).
    sock: Option<(Socket, (u64, u64))>,
}

impl Default for Guard {
    fn default() -> Self {
        Self::new()
    }
}

impl Guard {
    /// A guard; nothing is read or written before the first call.
    pub fn new() -> Self {
        Guard {
            chains: skeleton(),
            applied: None,
            sock: None,
        }
    }

    /// Make both tables exactly the desired state for `ports` (a port named twice: the
    /// last one counts): creates tables, sets and chains when missing, rewrites the
    /// chains (and sets) of a table that differs, and adds and deletes elements by
    /// difference, in one transaction. On tables that already match (an agent restart
    /// with the same pods) nothing is written. Invalid ports (a name no interface can
    /// have, a multicast or zero MAC) fail the call before anything is read.
    pub fn full_sync(&mut self, ports: &[GuardPort]) -> Result<Report, PolicyError> {
        let mut want = ByPort::new();
        for p in ports {
            let key = validate(p)?;
            want.insert(key, port_elems(key, p));
        }
        let all: BTreeSet<Elem> = want.values().flatten().cloned().collect();
        self.applied = None;
        let (mut sock, ns) = self.take_socket()?;
        let res = self.sync_on(&mut sock, &all);
        self.sock = Some((sock, ns));
        let report = res?;
        self.applied = Some(want);
        Ok(report)
    }

    /// Add or replace the elements of one port (its MAC and sources) in one small
    /// transaction. Call it before the pod can send: until then the port is not
    /// guarded. Without a known state (before the first sync, after a failed change,
    /// or when the tables were changed behind the guard's back, which makes the small
    /// transaction fail) it reads the tables first, creating them when missing, and
    /// leaves the other ports' elements as they are.
    pub fn add_port(&mut self, port: &GuardPort) -> Result<Report, PolicyError> {
        let key = validate(port)?;
        self.change(key, port_elems(key, port))
    }

    /// Delete the elements of port `ifname` in one small transaction; a port that is not
    /// there (or a name no interface can have) is success without a change.
    pub fn remove_port(&mut self, ifname: &str) -> Result<Report, PolicyError> {
        let Some(key) = ifname_key(ifname) else {
            return Ok(Report::default());
        };
        self.change(key, BTreeSet::new())
    }

    fn take_socket(&mut self) -> Result<(Socket, (u64, u64)), PolicyError> {
        let ns = current_netns()?;
        match self.sock.take() {
            Some((s, n)) if n == ns => Ok((s, n)),
            _ => {
                // Another namespace: what was applied elsewhere says nothing here.
                self.applied = None;
                Ok((Socket::open()?, ns))
            }
        }
    }

    fn change(&mut self, port: [u8; IFNAMSIZ], new: BTreeSet<Elem>) -> Result<Report, PolicyError> {
        let (mut sock, ns) = self.take_socket()?;
        let res = self.change_on(&mut sock, port, new);
        self.sock = Some((sock, ns));
        res
    }

    fn change_on(
        &mut self,
        sock: &mut Socket,
        port: [u8; IFNAMSIZ],
        new: BTreeSet<Elem>,
    ) -> Result<Report, PolicyError> {
        let mut report = Report::default();
        if let Some(applied) = self.applied.as_mut() {
            let old = applied.get(&port).cloned().unwrap_or_default();
            let mut plan = Plan::default();
            plan.elements(&old, &new, &BTreeSet::new());
            match apply(sock, &self.chains, plan) {
                Ok(r) => {
                    if new.is_empty() {
                        applied.remove(&port);
                    } else {
                        applied.insert(port, new);
                    }
                    return Ok(r);
                }
                // The kernel is not what was remembered (someone changed the table):
                // read it and try once more.
                Err(_) => self.applied = None,
            }
        }
        let live = read_live(sock)?;
        let mut want: BTreeSet<Elem> = live
            .elems
            .iter()
            .filter(|e| e.port() != port)
            .cloned()
            .collect();
        want.extend(new);
        let r = self.sync_with(sock, &live, &want)?;
        report.add(&r);
        self.applied = Some(by_port(want));
        Ok(report)
    }

    /// Read the table and bring it to the skeleton and exactly the elements `want`.
    fn sync_on(&self, sock: &mut Socket, want: &BTreeSet<Elem>) -> Result<Report, PolicyError> {
        let live = read_live(sock)?;
        self.sync_with(sock, &live, want)
    }

    fn sync_with(
        &self,
        sock: &mut Socket,
        live: &Live,
        want: &BTreeSet<Elem>,
    ) -> Result<Report, PolicyError> {
        let mut plan = Plan::default();
        let created = plan.skeleton(live, &self.chains);
        plan.elements(&live.elems, want, &created);
        apply(sock, &self.chains, plan)
    }
}

/// Encode and commit `plan` as one transaction (nothing when it is empty).
fn apply(sock: &mut Socket, chains: &[ChainSpec], mut plan: Plan) -> Result<Report, PolicyError> {
    if plan.ops.is_empty() {
        return Ok(plan.report);
    }
    plan.ops.sort_by_key(Op::phase);
    let (msgs, first) = encode(chains, &plan.ops);
    let ops = &plan.ops;
    sock.transact(&msgs, &|i| {
        first
            .get(i)
            .and_then(|o| ops.get(*o))
            .map(|o| o.describe(chains))
            .unwrap_or_else(|| format!("message {i}"))
    })?;
    plan.report.transactions = 1;
    plan.report.messages = msgs.len();
    Ok(plan.report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn port(name: &str, last: u8, allowed: &[&str]) -> GuardPort {
        let allowed: Vec<Ipv4Net> = allowed.iter().map(|s| net(s)).collect();
        GuardPort::new(
            name,
            [2, 0, 0, 0, 0, last],
            Ipv4Addr::new(10, 77, 0, last),
            &allowed,
        )
    }

    fn key(name: &str) -> [u8; IFNAMSIZ] {
        ifname_key(name).unwrap()
    }

    #[test]
    fn interface_names_are_padded_and_checked() {
        let k = key("vp1");
        assert_eq!(&k[..4], b"vp1\0");
        assert_eq!(k[3..], [0; 13]);
        assert!(ifname_key("abcdefghijklmno").is_some());
        for bad in ["", "abcdefghijklmnop", "a/b", "a b", ".", "..", "a\0b"] {
            assert!(ifname_key(bad).is_none(), "{bad:?}");
        }
        let mut p = port("vp1", 1, &[]);
        p.mac = [1, 0, 0, 0, 0, 1];
        assert!(validate(&p).is_err(), "multicast MAC");
        p.mac = [0; 6];
        assert!(validate(&p).is_err(), "zero MAC");
        p.mac = [2, 0, 0, 0, 0, 1];
        p.ifname = "x".repeat(16);
        assert!(validate(&p).is_err(), "long name");
    }

    #[test]
    fn sources_merge_and_never_allow_zero() {
        let r = source_ranges(&[
            net("10.0.0.5/32"),
            net("10.0.0.0/24"),
            net("10.0.1.0/24"),
            net("10.99.0.0/16"),
            net("10.99.3.4/32"),
        ]);
        let ip = |s: &str| u32::from(s.parse::<Ipv4Addr>().unwrap());
        assert_eq!(
            r,
            vec![
                (ip("10.0.0.0"), ip("10.0.1.255")),
                (ip("10.99.0.0"), ip("10.99.255.255"))
            ]
        );
        assert_eq!(source_ranges(&[net("0.0.0.0/0")]), vec![(1, u32::MAX)]);
        assert_eq!(
            source_ranges(&[net("0.0.0.0/8")]),
            vec![(1, ip("0.255.255.255"))]
        );
        assert!(source_ranges(&[net("0.0.0.0/32")]).is_empty());
        assert_eq!(
            source_ranges(&[net("255.255.255.255/32"), net("128.0.0.0/1")]),
            vec![(ip("128.0.0.0"), u32::MAX)]
        );
        assert!(source_ranges(&[]).is_empty());
    }

    #[test]
    fn elements_encode_like_nft() {
        let p = port("vp1", 0x11, &["10.99.0.0/16"]);
        let mut e: Vec<Elem> = port_elems(key("vp1"), &p).into_iter().collect();
        assert_eq!(e.len(), 5);
        assert_eq!(e[1].set, GuardSet::InetPodPorts);
        assert_eq!(e[1].key, key("vp1").to_vec());
        e.remove(1);
        assert_eq!(e[0].set, GuardSet::PodPorts);
        assert_eq!(e[0].key, key("vp1").to_vec());
        assert_eq!(e[1].set, GuardSet::PortMacs);
        assert_eq!(e[1].key.len(), 24);
        assert_eq!(e[1].key[16..], [2, 0, 0, 0, 0, 0x11, 0, 0]);
        assert_eq!(e[2].set, GuardSet::PortSources);
        // nft's encoding of `"vp1" . 10.77.0.17-10.77.0.17`
        assert_eq!(e[2].key[16..], [10, 77, 0, 0x11]);
        assert_eq!(e[2].key_end.as_ref().unwrap()[16..], [10, 77, 0, 0x11]);
        assert_eq!(e[3].key[16..], [10, 99, 0, 0]);
        assert_eq!(e[3].key_end.as_ref().unwrap()[16..], [10, 99, 255, 255]);
        for x in &e {
            assert_eq!(x.port(), key("vp1"));
            assert_eq!(x.key.len(), x.set.spec().key_len as usize);
        }
    }

    #[test]
    fn element_diff_touches_only_the_difference() {
        let a = port_elems(key("vp1"), &port("vp1", 1, &[]));
        let b = port_elems(key("vp2"), &port("vp2", 2, &[]));
        let b2 = port_elems(key("vp2"), &port("vp2", 2, &["10.99.0.0/16"]));
        let live: BTreeSet<Elem> = a.iter().chain(&b).cloned().collect();

        let mut same = Plan::default();
        same.elements(&live, &live, &BTreeSet::new());
        assert!(same.ops.is_empty());

        let want: BTreeSet<Elem> = b2.iter().cloned().collect();
        let mut p = Plan::default();
        p.elements(&live, &want, &BTreeSet::new());
        // vp1's four elements (two pod-ports, MAC, source) go, vp2 gains one source range.
        assert_eq!(p.report.elements_deleted, 4);
        assert_eq!(p.report.elements_added, 1);
        assert!(p
            .ops
            .iter()
            .all(|o| matches!(o, Op::DelElem(e) if e.port() == key("vp1"))
                || matches!(o, Op::NewElem(e) if e.port() == key("vp2"))));

        // A recreated set gets all its elements again and deletes none.
        let mut r = Plan::default();
        r.elements(&live, &want, &BTreeSet::from([GuardSet::PortSources]));
        let added_sources = r
            .ops
            .iter()
            .filter(|o| matches!(o, Op::NewElem(e) if e.set == GuardSet::PortSources))
            .count();
        assert_eq!(added_sources, 2);
        assert!(!r
            .ops
            .iter()
            .any(|o| matches!(o, Op::DelElem(e) if e.set == GuardSet::PortSources)));
    }

    fn live_of(chains: &[ChainSpec]) -> Live {
        let mut live = Live::default();
        for f in Family::ALL {
            live.tables.insert(
                f,
                LiveTable {
                    exists: true,
                    ..Default::default()
                },
            );
        }
        for s in GuardSet::ALL {
            let spec = s.spec();
            live.tables
                .get_mut(&s.family())
                .unwrap()
                .sets
                .insert(s.name().into(), (spec.flags, spec.key_type, spec.key_len));
        }
        for c in chains {
            live.tables.get_mut(&c.family).unwrap().chains.insert(
                c.name.into(),
                LiveChain {
                    base: c.base.map(|(hook, priority)| LiveBase {
                        kind: "filter".into(),
                        hook,
                        priority,
                        policy: NF_ACCEPT,
                    }),
                    rules: c.rules.len(),
                    comments: vec![c.comment.clone()],
                },
            );
        }
        live
    }

    #[test]
    fn skeleton_is_adopted_created_or_rewritten() {
        let chains = skeleton();
        assert_eq!(chains, skeleton(), "stable");
        let names: BTreeSet<(Family, &str)> = chains.iter().map(|c| (c.family, c.name)).collect();
        assert_eq!(names.len(), chains.len());
        assert_eq!(chains.len(), 6);

        let mut adopt = Plan::default();
        assert!(adopt.skeleton(&live_of(&chains), &chains).is_empty());
        assert!(adopt.ops.is_empty());

        let mut create = Plan::default();
        let created = create.skeleton(&Live::default(), &chains);
        assert_eq!(created.len(), 4);
        assert_eq!(create.report.tables_created, 2);
        assert_eq!(create.report.chains_written, chains.len());
        let rules: usize = chains.iter().map(|c| c.rules.len()).sum();
        assert_eq!(create.report.rules_written, rules);
        let (msgs, first) = encode(&chains, &{
            let mut o = create.ops.clone();
            o.sort_by_key(Op::phase);
            o
        });
        assert_eq!(msgs.len(), 2 + 4 + chains.len() + rules);
        assert_eq!(first.len(), msgs.len());
        let inet = msgs.iter().filter(|m| m.family == FAMILY_INET).count();
        // table, set, chain, rule
        assert_eq!(inet, 4);
        assert!(msgs
            .iter()
            .all(|m| m.family == FAMILY_INET || m.family == FAMILY_BRIDGE));

        let bridge = |live: &mut Live| live.tables.get_mut(&Family::Bridge).unwrap().clone();
        // A rule changed by hand: every chain of that table is rewritten, nothing
        // recreated, the other table untouched.
        let mut live = live_of(&chains);
        let mut t = bridge(&mut live);
        t.chains.get_mut(POD_IPV4).unwrap().rules = 2;
        live.tables.insert(Family::Bridge, t);
        let mut fix = Plan::default();
        assert!(fix.skeleton(&live, &chains).is_empty());
        assert_eq!(fix.report.chains_written, 5);
        assert!(fix.ops.iter().all(|o| o.family(&chains) == Family::Bridge));
        assert_eq!(fix.report.chains_deleted, 0);
        assert!(!fix.ops.iter().any(|o| matches!(o, Op::NewChain(_))));

        // Another priority, a foreign chain and a set of another type.
        let mut live = live_of(&chains);
        let mut t = bridge(&mut live);
        t.chains
            .get_mut(PREROUTING)
            .unwrap()
            .base
            .as_mut()
            .unwrap()
            .priority = 0;
        t.chains.insert("old".into(), LiveChain::default());
        t.sets.get_mut("port-macs").unwrap().2 = 22;
        live.tables.insert(Family::Bridge, t);
        let mut fix = Plan::default();
        let created = fix.skeleton(&live, &chains);
        assert_eq!(created, BTreeSet::from([GuardSet::PortMacs]));
        assert_eq!(fix.report.chains_deleted, 2);
        assert_eq!(fix.report.sets_deleted, 1);
        let br = Family::Bridge;
        assert!(fix.ops.contains(&Op::DelChain(br, "old".into())));
        assert!(fix.ops.contains(&Op::DelChain(br, PREROUTING.into())));
        assert!(fix.ops.contains(&Op::DelSet(br, "port-macs".into())));
        assert!(!fix
            .ops
            .contains(&Op::DelChain(Family::Inet, PREROUTING.into())));

        // The inet table missing alone.
        let mut live = live_of(&chains);
        live.tables.remove(&Family::Inet);
        let mut fix = Plan::default();
        let created = fix.skeleton(&live, &chains);
        assert_eq!(created, BTreeSet::from([GuardSet::InetPodPorts]));
        assert_eq!(fix.report.tables_created, 1);
        assert_eq!(
            (fix.report.chains_written, fix.report.rules_written),
            (1, 1)
        );
    }

    #[test]
    fn fingerprints_follow_the_rules() {
        let a = ChainSpec::new(
            Family::Bridge,
            "c",
            None,
            vec![rule(|r| {
                drop_frame(r);
            })],
        );
        let b = ChainSpec::new(
            Family::Bridge,
            "c",
            None,
            vec![rule(|r| {
                r.verdict(NFT_RETURN, None);
            })],
        );
        let c = ChainSpec::new(
            Family::Bridge,
            "c",
            Some((0, -200)),
            vec![rule(|r| {
                drop_frame(r);
            })],
        );
        let d = ChainSpec::new(
            Family::Inet,
            "c",
            None,
            vec![rule(|r| {
                drop_frame(r);
            })],
        );
        assert_ne!(a.comment, b.comment);
        assert_ne!(a.comment, c.comment);
        assert_ne!(a.comment, d.comment);
        assert_eq!(a.comment.len(), 16);
    }

    #[test]
    fn elements_share_messages() {
        let chains = skeleton();
        let mut ops: Vec<Op> = (0..3000u32)
            .flat_map(|i| {
                let name = format!("p{i}");
                port_elems(key(&name), &port(&name, 1, &["10.99.0.0/16"]))
            })
            .map(Op::NewElem)
            .collect();
        ops.sort_by_key(|o| match o {
            Op::NewElem(e) => (e.set, e.key.clone()),
            _ => unreachable!(),
        });
        let (msgs, first) = encode(&chains, &ops);
        // 15,000 elements in four sets: a few messages each.
        assert!((4..20).contains(&msgs.len()), "{}", msgs.len());
        let inet = msgs.iter().filter(|m| m.family == FAMILY_INET).count();
        assert!((1..5).contains(&inet), "{inet}");
        assert_eq!(first.len(), msgs.len());
        assert!(msgs.iter().all(|m| m.kind == msg::NEWSETELEM));
    }
}
