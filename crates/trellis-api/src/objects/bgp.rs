//! The BGP kinds, with the names and fields of Calico's `projectcalico.org/v3`
//! resources (manifests with that `apiVersion` are taken as they are):
//!
//! - `BGPConfiguration`: the cluster's AS, whether nodes mesh, which Service addresses
//!   are announced, graceful-restart time, communities. The one named `default` counts.
//! - `BGPPeer`: sessions to set up: from the nodes it selects (`node`, `nodeSelector`,
//!   or every node) to a router (`peerIP`, `asNumber`) or to other nodes
//!   (`peerSelector`), with a password from a Secret, timers, BFD and filters.
//! - `BGPFilter`: ordered prefix rules for what a peer may send and be sent.
//!
//! A node's own AS and its route-reflector cluster are in Node `spec.bgp`
//! ([`NodeBgp`](super::NodeBgp)).

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::str::FromStr;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::calico_selector::CalicoSelector;
use super::{Kind, NoStatus, Spec, ValidationError};

/// The AS of a node mesh when nothing says otherwise (Calico's default).
pub const DEFAULT_AS_NUMBER: u32 = 64512;

/// Calico's graceful-restart time when nothing says otherwise.
pub const DEFAULT_MAX_RESTART_TIME: Duration = Duration::from_secs(120);

/// An AS number: written as a number (`64512`), or as a string in asplain (`"64512"`)
/// or asdot (`"1.10"` = 65546) form. Serialized as a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AsNumber(pub u32);

impl FromStr for AsNumber {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "{s:?} is not an AS number (0 to 4294967295, or asdot \"high.low\" with both 0 to 65535)"
            )
        };
        match s.split_once('.') {
            None => s.parse::<u32>().map(AsNumber).map_err(|_| bad()),
            Some((hi, lo)) => {
                let hi: u16 = hi.parse().map_err(|_| bad())?;
                let lo: u16 = lo.parse().map_err(|_| bad())?;
                Ok(AsNumber((u32::from(hi) << 16) | u32::from(lo)))
            }
        }
    }
}

impl Serialize for AsNumber {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.0)
    }
}

impl<'de> Deserialize<'de> for AsNumber {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(i64),
            F(f64),
            S(String),
        }
        let bad = |s: String| {
            serde::de::Error::custom(format!(
                "{s} is not an AS number (0 to 4294967295, or asdot \"high.low\")"
            ))
        };
        match Raw::deserialize(d)? {
            Raw::N(n) => u32::try_from(n)
                .map(AsNumber)
                .map_err(|_| bad(n.to_string())),
            // YAML reads an unquoted asdot 1.10 as the number 1.1: ambiguous, refused.
            Raw::F(f) => Err(serde::de::Error::custom(format!(
                "{f} is not an AS number (write asdot in quotes, e.g. \"1.10\")"
            ))),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl fmt::Display for AsNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A Go-style duration (`"120s"`, `"1m30s"`, `"500ms"`), as Calico writes timers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GoDuration {
    text: String,
    value: Duration,
}

impl GoDuration {
    /// The duration.
    pub fn get(&self) -> Duration {
        self.value
    }
}

/// Parse a Go duration: numbers (with an optional fraction) each followed by `h`, `m`,
/// `s`, `ms`, `us` or `ns`.
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration (e.g. \"90s\", \"1m30s\", \"500ms\")");
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let n: f64 = rest[..num_end].parse().map_err(|_| bad())?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(bad()),
        };
        total += n * scale;
        rest = &rest[unit_end..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

impl Serialize for GoDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let value = parse_go_duration(&text).map_err(serde::de::Error::custom)?;
        Ok(Self { text, value })
    }
}

/// A BGP community: standard `"aa:nn"` (RFC 1997) or large `"aa:nn:mm"` (RFC 8092).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CommunityValue {
    /// `asn << 16 | value`.
    Standard(u32),
    /// Global administrator, local data 1, local data 2.
    Large(u32, u32, u32),
}

impl FromStr for CommunityValue {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "{s:?} is not a community (\"aa:nn\" with both 0 to 65535, or large \"aa:nn:mm\")"
            )
        };
        let parts: Vec<&str> = s.split(':').collect();
        match parts[..] {
            [a, b] => {
                let a: u16 = a.parse().map_err(|_| bad())?;
                let b: u16 = b.parse().map_err(|_| bad())?;
                Ok(CommunityValue::Standard(
                    (u32::from(a) << 16) | u32::from(b),
                ))
            }
            [a, b, c] => Ok(CommunityValue::Large(
                a.parse().map_err(|_| bad())?,
                b.parse().map_err(|_| bad())?,
                c.parse().map_err(|_| bad())?,
            )),
            _ => Err(bad()),
        }
    }
}

/// A reference to one key of a Secret (in the namespace [`BGP_SECRET_NAMESPACE`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    pub name: String,
    /// The key in its data.
    pub key: String,
}

/// Where a BGP password comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BgpPassword {
    /// A Secret's key.
    pub secret_key_ref: SecretKeyRef,
}

/// The namespace of the Secrets BGP passwords name (Calico reads them from its own
/// namespace; ours is this one).
pub const BGP_SECRET_NAMESPACE: &str = "trellis-system";

/// One `cidr` entry of the Service lists of a [`BgpConfigurationSpec`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CidrEntry {
    /// The range.
    pub cidr: Ipv4Net,
}

/// A named community, for `prefixAdvertisements`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NamedCommunity {
    /// Its name.
    pub name: String,
    /// Its value (`"aa:nn"` or `"aa:nn:mm"`).
    pub value: String,
}

/// Communities to attach to the announcements of prefixes within `cidr`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PrefixAdvertisement {
    /// The prefixes concerned (those within it).
    pub cidr: Ipv4Net,
    /// Community names (from `communities`) or values.
    #[serde(default)]
    pub communities: Vec<String>,
}

/// A `BGPConfiguration` object (cluster-scoped, plural `bgpconfigurations`).
pub type BgpConfiguration = super::Object<BgpConfigurationSpec>;

/// `spec` of a [`BgpConfiguration`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BgpConfigurationSpec {
    /// Calico's log level: accepted, not used (the agent's log level is its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_severity_screen: Option<String>,
    /// Whether every node peers with every other (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_to_node_mesh_enabled: Option<bool>,
    /// The cluster's AS (default 64512); a node's `spec.bgp.asNumber` overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_number: Option<AsNumber>,
    /// Announce the cluster IPs of Services within these ranges.
    #[serde(
        default,
        rename = "serviceClusterIPs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub service_cluster_ips: Vec<CidrEntry>,
    /// Announce the external IPs of Services within these ranges.
    #[serde(
        default,
        rename = "serviceExternalIPs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub service_external_ips: Vec<CidrEntry>,
    /// Announce the LoadBalancer IPs of Services within these ranges.
    #[serde(
        default,
        rename = "serviceLoadBalancerIPs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub service_load_balancer_ips: Vec<CidrEntry>,
    /// The port to listen on and to reach peers at (default 179).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_port: Option<u16>,
    /// Named communities.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub communities: Vec<NamedCommunity>,
    /// Communities per announced range.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefix_advertisements: Vec<PrefixAdvertisement>,
    /// The password of the node-to-node mesh sessions (TCP MD5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_mesh_password: Option<BgpPassword>,
    /// How long peers keep a restarting node's routes (graceful restart; default 120s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_mesh_max_restart_time: Option<GoDuration>,
}

impl BgpConfigurationSpec {
    /// Whether the node mesh is on.
    pub fn mesh(&self) -> bool {
        self.node_to_node_mesh_enabled.unwrap_or(true)
    }

    /// The cluster's AS.
    pub fn asn(&self) -> u32 {
        self.as_number.map_or(DEFAULT_AS_NUMBER, |a| a.0)
    }

    /// The communities for `prefix`, from `prefixAdvertisements` (names resolved).
    pub fn communities_for(&self, prefix: Ipv4Net) -> Vec<CommunityValue> {
        self.prefix_advertisements
            .iter()
            .filter(|p| p.cidr.contains(&prefix))
            .flat_map(|p| p.communities.iter())
            .filter_map(|c| {
                let v = self
                    .communities
                    .iter()
                    .find(|n| &n.name == c)
                    .map_or(c.as_str(), |n| n.value.as_str());
                v.parse().ok()
            })
            .collect()
    }
}

impl Spec for BgpConfigurationSpec {
    const KIND: Kind = Kind::BgpConfiguration;
    type Status = NoStatus;

    fn validate(&self, _status: &NoStatus) -> Result<(), ValidationError> {
        for (i, c) in self.communities.iter().enumerate() {
            c.value
                .parse::<CommunityValue>()
                .map_err(|m| ValidationError::new(format!("spec.communities[{i}].value"), m))?;
        }
        for (i, p) in self.prefix_advertisements.iter().enumerate() {
            for (j, c) in p.communities.iter().enumerate() {
                if !self.communities.iter().any(|n| &n.name == c) {
                    c.parse::<CommunityValue>().map_err(|m| {
                        ValidationError::new(
                            format!("spec.prefixAdvertisements[{i}].communities[{j}]"),
                            format!("{m}, nor the name of one in spec.communities"),
                        )
                    })?;
                }
            }
        }
        if self.listen_port == Some(0) {
            return Err(ValidationError::new("spec.listenPort", "must not be 0"));
        }
        Ok(())
    }
}

/// A `BGPPeer` object (cluster-scoped, plural `bgppeers`).
pub type BgpPeer = super::Object<BgpPeerSpec>;

/// `spec` of a [`BgpPeer`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BgpPeerSpec {
    /// The one node that peers (else `nodeSelector`, else every node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The nodes that peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<CalicoSelector>,
    /// The router to peer with: `"a.b.c.d"` or `"a.b.c.d:port"`.
    #[serde(default, rename = "peerIP", skip_serializing_if = "Option::is_none")]
    pub peer_ip: Option<String>,
    /// The router's AS (required with `peerIP`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_number: Option<AsNumber>,
    /// Instead of `peerIP`: the nodes to peer with (both ways).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_selector: Option<CalicoSelector>,
    /// The session's password (TCP MD5, RFC 2385).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<BgpPassword>,
    /// How long the peer keeps our routes while we restart (graceful restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_restart_time: Option<GoDuration>,
    /// The keepalive interval we propose (a third of the hold time by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_time: Option<GoDuration>,
    /// The hold time we propose (Trellis; default 9s for nodes, 90s for routers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_time: Option<GoDuration>,
    /// Run BFD with the peer (Trellis; RFC 5880 single hop).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bfd_enabled: bool,
    /// `BGPFilter` names, applied in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<String>,
    /// Announce routes with their next hop unchanged (accepted; Trellis always does for
    /// reflected routes and sets itself for its own).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_original_next_hop: bool,
}

impl BgpPeerSpec {
    /// `peerIP` as an address and port (179 unless given).
    pub fn peer_address(&self) -> Option<Result<SocketAddrV4, String>> {
        self.peer_ip.as_deref().map(parse_peer_ip)
    }

    /// Whether this peering applies to the node `name` with `labels`.
    pub fn selects_node(
        &self,
        name: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> bool {
        match (&self.node, &self.node_selector) {
            (Some(n), _) => n == name,
            (None, Some(s)) => s.matches(labels),
            (None, None) => true,
        }
    }
}

/// Parse `peerIP`: `"a.b.c.d"` or `"a.b.c.d:port"`.
pub fn parse_peer_ip(s: &str) -> Result<SocketAddrV4, String> {
    if let Ok(a) = s.parse::<Ipv4Addr>() {
        return Ok(SocketAddrV4::new(a, 179));
    }
    s.parse::<SocketAddrV4>()
        .map_err(|_| format!("{s:?} is not an IPv4 address (or address:port)"))
}

impl Spec for BgpPeerSpec {
    const KIND: Kind = Kind::BgpPeer;
    type Status = NoStatus;

    fn validate(&self, _status: &NoStatus) -> Result<(), ValidationError> {
        if self.node.is_some() && self.node_selector.is_some() {
            return Err(ValidationError::new(
                "spec.nodeSelector",
                "give spec.node or spec.nodeSelector, not both",
            ));
        }
        match (&self.peer_ip, &self.peer_selector) {
            (Some(_), Some(_)) => {
                return Err(ValidationError::new(
                    "spec.peerSelector",
                    "give spec.peerIP or spec.peerSelector, not both",
                ))
            }
            (None, None) => {
                return Err(ValidationError::new(
                    "spec.peerIP",
                    "is required (or spec.peerSelector)",
                ))
            }
            (Some(ip), None) => {
                let a = parse_peer_ip(ip).map_err(|m| ValidationError::new("spec.peerIP", m))?;
                if a.ip().is_unspecified() || a.ip().is_broadcast() || a.ip().is_multicast() {
                    return Err(ValidationError::new(
                        "spec.peerIP",
                        format!("{} is not a unicast address", a.ip()),
                    ));
                }
                if self.as_number.is_none() {
                    return Err(ValidationError::new(
                        "spec.asNumber",
                        "is required with spec.peerIP",
                    ));
                }
            }
            (None, Some(_)) => {}
        }
        if let Some(p) = &self.password {
            if p.secret_key_ref.name.is_empty() {
                return Err(ValidationError::new(
                    "spec.password.secretKeyRef.name",
                    "must not be empty",
                ));
            }
            if p.secret_key_ref.key.is_empty() {
                return Err(ValidationError::new(
                    "spec.password.secretKeyRef.key",
                    "must not be empty",
                ));
            }
        }
        if let Some(h) = &self.hold_time {
            let s = h.get().as_secs_f64();
            if s != 0.0 && !(3.0..=65535.0).contains(&s) {
                return Err(ValidationError::new(
                    "spec.holdTime",
                    "must be 0 or 3s to 65535s (RFC 4271)",
                ));
            }
        }
        for (i, f) in self.filters.iter().enumerate() {
            if f.is_empty() {
                return Err(ValidationError::new(
                    format!("spec.filters[{i}]"),
                    "must not be empty",
                ));
            }
        }
        Ok(())
    }
}

/// A `BGPFilter` object (cluster-scoped, plural `bgpfilters`).
pub type BgpFilter = super::Object<BgpFilterSpec>;

/// `spec` of a [`BgpFilter`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BgpFilterSpec {
    /// Rules for what we send.
    #[serde(default, rename = "exportV4", skip_serializing_if = "Vec::is_empty")]
    pub export_v4: Vec<BgpFilterRule>,
    /// Rules for what we take.
    #[serde(default, rename = "importV4", skip_serializing_if = "Vec::is_empty")]
    pub import_v4: Vec<BgpFilterRule>,
}

/// One rule of a [`BgpFilterSpec`]: the first that matches decides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BgpFilterRule {
    /// `Accept` or `Reject`.
    pub action: FilterAction,
    /// `Equal`, `NotEqual`, `In` or `NotIn`.
    pub match_operator: MatchOperator,
    /// The range compared.
    pub cidr: Ipv4Net,
}

/// `action` of a [`BgpFilterRule`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FilterAction {
    /// Take or send the route.
    Accept,
    /// Drop it.
    Reject,
}

/// `matchOperator` of a [`BgpFilterRule`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MatchOperator {
    /// The prefix is the CIDR.
    Equal,
    /// The prefix is not the CIDR.
    NotEqual,
    /// The prefix lies within the CIDR.
    In,
    /// The prefix does not lie within the CIDR.
    NotIn,
}

impl Spec for BgpFilterSpec {
    const KIND: Kind = Kind::BgpFilter;
    type Status = NoStatus;

    fn validate(&self, _status: &NoStatus) -> Result<(), ValidationError> {
        for (list, rules) in [("exportV4", &self.export_v4), ("importV4", &self.import_v4)] {
            for (i, r) in rules.iter().enumerate() {
                if r.cidr != r.cidr.trunc() {
                    return Err(ValidationError::new(
                        format!("spec.{list}[{i}].cidr"),
                        format!(
                            "{} has host bits set (did you mean {}?)",
                            r.cidr,
                            r.cidr.trunc()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::AnyObject;
    use serde_json::json;

    fn err(v: serde_json::Value) -> ValidationError {
        match AnyObject::from_value(v) {
            Ok(o) => o.validate().unwrap_err(),
            Err(e) => e,
        }
    }

    #[test]
    fn calico_manifests_are_taken_as_they_are() {
        let cfg = AnyObject::from_value(json!({
            "apiVersion": "projectcalico.org/v3", "kind": "BGPConfiguration",
            "metadata": {"name": "default"},
            "spec": {"logSeverityScreen": "Info", "nodeToNodeMeshEnabled": false,
                     "asNumber": 63400, "serviceClusterIPs": [{"cidr": "10.96.0.0/12"}],
                     "serviceLoadBalancerIPs": [{"cidr": "192.0.2.0/28"}],
                     "communities": [{"name": "cluster", "value": "63400:100"}],
                     "prefixAdvertisements": [{"cidr": "10.96.0.0/12",
                                               "communities": ["cluster", "63400:1:2"]}],
                     "nodeMeshMaxRestartTime": "2m"}
        }))
        .unwrap();
        cfg.validate().unwrap();
        let AnyObject::BgpConfiguration(c) = &cfg else {
            panic!()
        };
        assert!(!c.spec.mesh());
        assert_eq!(c.spec.asn(), 63400);
        assert_eq!(
            c.spec.communities_for("10.96.0.10/32".parse().unwrap()),
            vec![
                CommunityValue::Standard((63400 << 16) | 100),
                CommunityValue::Large(63400, 1, 2)
            ]
        );
        assert_eq!(
            c.spec.node_mesh_max_restart_time.as_ref().unwrap().get(),
            Duration::from_secs(120)
        );
        let peer = AnyObject::from_value(json!({
            "apiVersion": "projectcalico.org/v3", "kind": "BGPPeer",
            "metadata": {"name": "rack1-tor"},
            "spec": {"nodeSelector": "rack == 'rack-1'", "peerIP": "192.20.30.40",
                     "asNumber": "1.10", "keepaliveTime": "10s", "filters": ["only-pods"],
                     "password": {"secretKeyRef": {"name": "bgp-secrets", "key": "rr-password"}}}
        }))
        .unwrap();
        peer.validate().unwrap();
        let AnyObject::BgpPeer(p) = &peer else {
            panic!()
        };
        assert_eq!(p.spec.as_number, Some(AsNumber(65546)));
        assert_eq!(
            p.spec.peer_address().unwrap().unwrap().to_string(),
            "192.20.30.40:179"
        );
        let labels = [("rack".to_string(), "rack-1".to_string())].into();
        assert!(p.spec.selects_node("n1", &labels));
        assert!(!p.spec.selects_node("n1", &Default::default()));
        let rr = AnyObject::from_value(json!({
            "apiVersion": "projectcalico.org/v3", "kind": "BGPPeer",
            "metadata": {"name": "peer-with-route-reflectors"},
            "spec": {"nodeSelector": "all()", "peerSelector": "route-reflector == 'true'"}
        }))
        .unwrap();
        rr.validate().unwrap();
        let f = AnyObject::from_value(json!({
            "apiVersion": "projectcalico.org/v3", "kind": "BGPFilter",
            "metadata": {"name": "only-pods"},
            "spec": {"exportV4": [{"action": "Accept", "matchOperator": "In", "cidr": "10.244.0.0/16"},
                                  {"action": "Reject", "matchOperator": "NotIn", "cidr": "10.244.0.0/16"}]}
        }))
        .unwrap();
        f.validate().unwrap();
        // Written back as trellis/v1, read again the same.
        let again = AnyObject::from_value(peer.to_value()).unwrap();
        assert_eq!(again, peer);
    }

    #[test]
    fn bad_input_names_its_field() {
        let peer = |spec: serde_json::Value| {
            json!({"apiVersion": "projectcalico.org/v3", "kind": "BGPPeer",
                   "metadata": {"name": "p"}, "spec": spec})
        };
        let cases = [
            (
                peer(json!({"peerIP": "192.0.2.1", "asNumber": "AS65001"})),
                "spec.asNumber",
            ),
            (
                peer(json!({"peerIP": "192.0.2.1", "asNumber": 1.1})),
                "spec.asNumber",
            ),
            (
                peer(json!({"peerIP": "192.0.2.1", "asNumber": 4294967296u64})),
                "spec.asNumber",
            ),
            (peer(json!({"peerIP": "192.0.2.1"})), "spec.asNumber"),
            (
                peer(json!({"peerIP": "tor-1", "asNumber": 65001})),
                "spec.peerIP",
            ),
            (peer(json!({"asNumber": 65001})), "spec.peerIP"),
            (
                peer(
                    json!({"peerIP": "192.0.2.1", "asNumber": 65001, "nodeSelector": "rack = 'a'"}),
                ),
                "spec.nodeSelector",
            ),
            (
                peer(
                    json!({"peerIP": "192.0.2.1", "asNumber": 65001, "keepaliveTime": "10 seconds"}),
                ),
                "spec.keepaliveTime",
            ),
            (
                peer(json!({"peerIP": "192.0.2.1", "asNumber": 65001, "holdTime": "1s"})),
                "spec.holdTime",
            ),
            (
                peer(
                    json!({"peerIP": "192.0.2.1", "asNumber": 65001, "password": {"secretKeyRef": {"name": "", "key": "k"}}}),
                ),
                "spec.password.secretKeyRef.name",
            ),
            (
                json!({"apiVersion": "projectcalico.org/v3", "kind": "BGPConfiguration",
                    "metadata": {"name": "default"},
                    "spec": {"communities": [{"name": "x", "value": "70000:1"}]}}),
                "spec.communities[0].value",
            ),
            (
                json!({"apiVersion": "projectcalico.org/v3", "kind": "BGPFilter",
                    "metadata": {"name": "f"},
                    "spec": {"importV4": [{"action": "Drop", "matchOperator": "In", "cidr": "10.0.0.0/8"}]}}),
                "spec.importV4[0].action",
            ),
        ];
        for (v, field) in cases {
            let e = err(v.clone());
            assert_eq!(e.field, field, "{v}: {e}");
        }
        assert_eq!(parse_go_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(
            parse_go_duration("500ms").unwrap(),
            Duration::from_millis(500)
        );
        assert!(parse_go_duration("5").is_err());
    }
}
