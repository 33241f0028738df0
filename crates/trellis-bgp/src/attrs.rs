//! A route's path attributes ([`Attrs`]) and their wire form: what an UPDATE carries,
//! read with RFC 7606's rules (a malformed or missing mandatory attribute withdraws the
//! UPDATE's prefixes instead of resetting the session), and written back.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use netgauze_bgp_pkt::community::{Community, LargeCommunity};
use netgauze_bgp_pkt::nlri::{Ipv4Unicast, Ipv4UnicastAddress};
use netgauze_bgp_pkt::path_attribute::{
    As4PathSegment, AsPath, AsPathSegmentType, ClusterId, ClusterList, Communities,
    LargeCommunities, LocalPreference, MultiExitDiscriminator, NextHop, Origin, Originator,
    PathAttribute, PathAttributeValue,
};
use netgauze_bgp_pkt::update::BgpUpdateMessage;
use netgauze_bgp_pkt::BgpMessage;

/// The most prefixes in one UPDATE (well under the 4,096-byte message, whatever the
/// attributes).
const PREFIXES_PER_UPDATE: usize = 400;

/// The attributes of one route.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Attrs {
    /// ORIGIN: 0 IGP, 1 EGP, 2 incomplete.
    pub origin: u8,
    /// AS_PATH, nearest AS first (sets flattened).
    pub as_path: Vec<u32>,
    /// NEXT_HOP.
    pub next_hop: Ipv4Addr,
    /// MULTI_EXIT_DISC.
    pub med: Option<u32>,
    /// LOCAL_PREF (iBGP only).
    pub local_pref: Option<u32>,
    /// COMMUNITIES (RFC 1997), each `asn << 16 | value`.
    pub communities: Vec<u32>,
    /// LARGE_COMMUNITY (RFC 8092): global administrator, local data 1, local data 2.
    pub large_communities: Vec<(u32, u32, u32)>,
    /// ORIGINATOR_ID (RFC 4456): the router that first put the route into the AS.
    pub originator_id: Option<Ipv4Addr>,
    /// CLUSTER_LIST (RFC 4456): the reflector clusters the route went through, nearest
    /// first.
    pub cluster_list: Vec<Ipv4Addr>,
}

impl Attrs {
    /// A route of our own: ORIGIN IGP, an empty path, next hop `next_hop`.
    pub fn local(next_hop: Ipv4Addr) -> Self {
        Self {
            origin: 0,
            as_path: Vec::new(),
            next_hop,
            med: None,
            local_pref: None,
            communities: Vec::new(),
            large_communities: Vec::new(),
            originator_id: None,
            cluster_list: Vec::new(),
        }
    }

    /// The wire attributes, in type-code order.
    pub fn to_wire(&self) -> Vec<PathAttribute> {
        let attr = |optional, transitive, v| {
            PathAttribute::from(optional, transitive, false, false, v)
                .expect("attribute flags match their type")
        };
        let mut out = vec![
            attr(
                false,
                true,
                PathAttributeValue::Origin(match self.origin {
                    0 => Origin::IGP,
                    1 => Origin::EGP,
                    _ => Origin::Incomplete,
                }),
            ),
            attr(
                false,
                true,
                PathAttributeValue::AsPath(AsPath::As4PathSegments(
                    if self.as_path.is_empty() {
                        vec![]
                    } else {
                        vec![As4PathSegment::new(
                            AsPathSegmentType::AsSequence,
                            self.as_path.clone(),
                        )]
                    }
                    .into(),
                )),
            ),
            attr(
                false,
                true,
                PathAttributeValue::NextHop(NextHop::new(self.next_hop)),
            ),
        ];
        if let Some(m) = self.med {
            out.push(attr(
                true,
                false,
                PathAttributeValue::MultiExitDiscriminator(MultiExitDiscriminator::new(m)),
            ));
        }
        if let Some(l) = self.local_pref {
            out.push(attr(
                false,
                true,
                PathAttributeValue::LocalPreference(LocalPreference::new(l)),
            ));
        }
        if !self.communities.is_empty() {
            let c: Vec<Community> = self
                .communities
                .iter()
                .map(|c| Community::new(*c))
                .collect();
            out.push(attr(
                true,
                true,
                PathAttributeValue::Communities(Communities::new(c)),
            ));
        }
        if let Some(o) = self.originator_id {
            out.push(attr(
                true,
                false,
                PathAttributeValue::Originator(Originator::new(o)),
            ));
        }
        if !self.cluster_list.is_empty() {
            let c: Vec<ClusterId> = self
                .cluster_list
                .iter()
                .map(|c| ClusterId::new(*c))
                .collect();
            out.push(attr(
                true,
                false,
                PathAttributeValue::ClusterList(ClusterList::new(c)),
            ));
        }
        if !self.large_communities.is_empty() {
            let c: Vec<LargeCommunity> = self
                .large_communities
                .iter()
                .map(|(a, b, c)| LargeCommunity::new(*a, *b, *c))
                .collect();
            out.push(attr(
                true,
                true,
                PathAttributeValue::LargeCommunities(LargeCommunities::new(c)),
            ));
        }
        out
    }
}

/// A prefix and its path identifier (RFC 7911 add-path; 0 on a session without it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PathKey {
    /// The prefix.
    pub prefix: Ipv4Net,
    /// The path identifier.
    pub path_id: u32,
}

impl PathKey {
    /// `prefix` without a path identifier.
    pub fn plain(prefix: Ipv4Net) -> Self {
        Self { prefix, path_id: 0 }
    }
}

/// What one received UPDATE says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// End-of-RIB for IPv4 unicast (RFC 4724).
    EndOfRib,
    /// Routes withdrawn and announced.
    Routes {
        /// Withdrawn prefixes (including, under RFC 7606's treat-as-withdraw, the
        /// announced ones of a malformed UPDATE).
        withdrawn: Vec<PathKey>,
        /// Announced prefixes, with their attributes.
        announced: Vec<PathKey>,
        /// The attributes of `announced` (present when it is not empty).
        attrs: Option<Attrs>,
        /// Why announced prefixes were treated as withdrawn, if they were.
        malformed: Option<String>,
    },
}

/// Read an UPDATE. `attr_errors` are the attributes the decoder found malformed and
/// left out: with any of them, or without ORIGIN, AS_PATH or NEXT_HOP, the announced
/// prefixes are withdrawn instead (RFC 7606 §3 d, §7).
pub fn read_update(u: &BgpUpdateMessage, attr_errors: &[String]) -> Update {
    if u.end_of_rib().is_some() {
        return Update::EndOfRib;
    }
    let mut withdrawn: Vec<PathKey> = u
        .withdraw_routes()
        .iter()
        .map(|w| PathKey {
            prefix: w.network().address(),
            path_id: w.path_id().unwrap_or(0),
        })
        .collect();
    let announced: Vec<PathKey> = u
        .nlri()
        .iter()
        .map(|n| PathKey {
            prefix: n.network().address(),
            path_id: n.path_id().unwrap_or(0),
        })
        .collect();
    if announced.is_empty() {
        return Update::Routes {
            withdrawn,
            announced,
            attrs: None,
            malformed: None,
        };
    }
    let mut a = Attrs::local(Ipv4Addr::UNSPECIFIED);
    let (mut origin, mut path, mut next_hop) = (false, false, false);
    for attr in u.path_attributes() {
        match attr.value() {
            PathAttributeValue::Origin(o) => {
                origin = true;
                a.origin = *o as u8;
            }
            PathAttributeValue::AsPath(AsPath::As4PathSegments(segs)) => {
                path = true;
                a.as_path = segs.iter().flat_map(|s| s.as_numbers().to_vec()).collect();
            }
            PathAttributeValue::AsPath(AsPath::As2PathSegments(segs)) => {
                path = true;
                a.as_path = segs
                    .iter()
                    .flat_map(|s| s.as_numbers().iter().map(|n| u32::from(*n)))
                    .collect();
            }
            PathAttributeValue::NextHop(n) => {
                next_hop = true;
                a.next_hop = n.next_hop();
            }
            PathAttributeValue::MultiExitDiscriminator(m) => a.med = Some(m.metric()),
            PathAttributeValue::LocalPreference(l) => a.local_pref = Some(l.metric()),
            PathAttributeValue::Communities(c) => {
                a.communities = c.communities().iter().map(|c| c.value()).collect();
            }
            PathAttributeValue::LargeCommunities(c) => {
                a.large_communities = c
                    .communities()
                    .iter()
                    .map(|c| (c.global_admin(), c.local_data1(), c.local_data2()))
                    .collect();
            }
            PathAttributeValue::Originator(o) => a.originator_id = Some(o.id()),
            PathAttributeValue::ClusterList(c) => {
                a.cluster_list = c.cluster_list().iter().map(|c| c.id()).collect();
            }
            _ => {}
        }
    }
    let missing: Vec<&str> = [
        (origin, "ORIGIN"),
        (path, "AS_PATH"),
        (next_hop, "NEXT_HOP"),
    ]
    .into_iter()
    .filter(|(have, _)| !have)
    .map(|(_, name)| name)
    .collect();
    let malformed = if !attr_errors.is_empty() {
        Some(format!("malformed attributes: {}", attr_errors.join("; ")))
    } else if !missing.is_empty() {
        Some(format!("missing {}", missing.join(", ")))
    } else {
        None
    };
    if malformed.is_some() {
        withdrawn.extend(announced);
        return Update::Routes {
            withdrawn,
            announced: Vec::new(),
            attrs: None,
            malformed,
        };
    }
    Update::Routes {
        withdrawn,
        announced,
        attrs: Some(a),
        malformed: None,
    }
}

/// The UPDATEs that announce `routes` (grouped by equal attributes) and withdraw
/// `withdrawn`; with `add_path`, every prefix carries its path identifier (RFC 7911).
pub fn updates<'a>(
    withdrawn: &[PathKey],
    routes: impl IntoIterator<Item = (&'a PathKey, &'a Attrs)>,
    add_path: bool,
) -> Vec<BgpMessage> {
    let nlri = |k: &PathKey| unicast(k.prefix, add_path.then_some(k.path_id));
    let mut out = Vec::new();
    for chunk in withdrawn.chunks(PREFIXES_PER_UPDATE) {
        out.push(BgpMessage::Update(BgpUpdateMessage::new(
            chunk.iter().filter_map(nlri).collect::<Vec<_>>(),
            vec![],
            vec![],
        )));
    }
    let mut groups: std::collections::BTreeMap<&Attrs, Vec<PathKey>> = Default::default();
    for (k, a) in routes {
        groups.entry(a).or_default().push(*k);
    }
    for (a, keys) in groups {
        let wire = a.to_wire();
        for chunk in keys.chunks(PREFIXES_PER_UPDATE) {
            out.push(BgpMessage::Update(BgpUpdateMessage::new(
                vec![],
                wire.clone(),
                chunk.iter().filter_map(nlri).collect::<Vec<_>>(),
            )));
        }
    }
    out
}

/// The End-of-RIB marker for IPv4 unicast: an empty UPDATE.
pub fn end_of_rib() -> BgpMessage {
    BgpMessage::Update(BgpUpdateMessage::new(vec![], vec![], vec![]))
}

fn unicast(p: Ipv4Net, path_id: Option<u32>) -> Option<Ipv4UnicastAddress> {
    Ipv4Unicast::from_net(p.trunc())
        .ok()
        .map(|n| Ipv4UnicastAddress::new(path_id, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> Attrs {
        Attrs {
            origin: 2,
            as_path: vec![65001, 4_200_000_000],
            next_hop: Ipv4Addr::new(192, 0, 2, 7),
            med: Some(10),
            local_pref: Some(200),
            communities: vec![(64512 << 16) | 300],
            large_communities: vec![(64512, 1, 2)],
            originator_id: Some(Ipv4Addr::new(192, 0, 2, 1)),
            cluster_list: vec![Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)],
        }
    }

    #[test]
    fn attributes_survive_the_wire_and_updates_group_by_them() {
        let a = full();
        let b = Attrs::local(Ipv4Addr::new(192, 0, 2, 8));
        let (p1, p2, p3): (Ipv4Net, Ipv4Net, Ipv4Net) = (
            "10.244.1.0/24".parse().unwrap(),
            "10.244.2.0/24".parse().unwrap(),
            "10.96.0.10/32".parse().unwrap(),
        );
        let k = PathKey::plain;
        let (k1, k2, k3) = (k(p1), k(p2), k(p3));
        let msgs = updates(&[k3], [(&k1, &a), (&k2, &b), (&k3, &a)], false);
        assert_eq!(msgs.len(), 3, "{msgs:?}");
        let read: Vec<Update> = msgs
            .iter()
            .map(|m| match m {
                BgpMessage::Update(u) => read_update(u, &[]),
                _ => panic!(),
            })
            .collect();
        assert_eq!(
            read[0],
            Update::Routes {
                withdrawn: vec![k3],
                announced: vec![],
                attrs: None,
                malformed: None
            }
        );
        assert!(read.contains(&Update::Routes {
            withdrawn: vec![],
            announced: vec![k1, k3],
            attrs: Some(a.clone()),
            malformed: None
        }));
        assert!(read.contains(&Update::Routes {
            withdrawn: vec![],
            announced: vec![k2],
            attrs: Some(b),
            malformed: None
        }));
        let BgpMessage::Update(eor) = end_of_rib() else {
            panic!()
        };
        assert_eq!(read_update(&eor, &[]), Update::EndOfRib);
    }

    #[test]
    fn a_malformed_update_withdraws_what_it_announces() {
        let p: Ipv4Net = "10.244.1.0/24".parse().unwrap();
        let kp = PathKey::plain(p);
        let msgs = updates(&[], [(&kp, &full())], false);
        let BgpMessage::Update(u) = &msgs[0] else {
            panic!()
        };
        // An attribute the decoder could not read (RFC 7606 treat-as-withdraw).
        let Update::Routes {
            withdrawn,
            announced,
            malformed,
            ..
        } = read_update(u, &["bad COMMUNITIES length".into()])
        else {
            panic!()
        };
        assert_eq!((withdrawn, announced), (vec![kp], vec![]));
        assert!(malformed.unwrap().contains("COMMUNITIES"));
        // A missing mandatory attribute.
        let bare = BgpUpdateMessage::new(vec![], vec![], vec![unicast(p, None).unwrap()]);
        let Update::Routes {
            withdrawn,
            malformed,
            ..
        } = read_update(&bare, &[])
        else {
            panic!()
        };
        assert_eq!(withdrawn, vec![kp]);
        assert_eq!(
            malformed.as_deref(),
            Some("missing ORIGIN, AS_PATH, NEXT_HOP")
        );
    }
}
