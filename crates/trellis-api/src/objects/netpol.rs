//! `NetworkPolicy`: which traffic the pods of one namespace accept and send, with the
//! semantics of Kubernetes `networking.k8s.io/v1` (manifests of that apiVersion are
//! accepted unchanged).
//!
//! - A policy selects pods of its own namespace (`podSelector`; `{}` selects all). It
//!   applies to the directions in `policyTypes`; left out, that is `Ingress`, plus
//!   `Egress` when the policy has egress rules.
//! - A pod selected for a direction by at least one policy is *isolated* in that
//!   direction: only what some rule of some selecting policy allows passes (the rules of
//!   all policies add up; there is no deny). An empty rule list denies everything.
//! - A rule allows traffic from (`from`) / to (`to`) any of its peers (OR) on any of its
//!   ports (OR); a missing or empty `from`/`to` means every peer, missing or empty
//!   `ports` every port and protocol.
//! - A peer is `podSelector` (pods of the policy's namespace), `namespaceSelector` (every
//!   pod of the matching namespaces), both in one peer (AND: the matching pods of the
//!   matching namespaces), or `ipBlock` (a CIDR minus `except`), alone.
//! - A port is a number or the name of a port the target pod declares (the subject for
//!   ingress, the peer for egress; a pod without it is not matched), for TCP (default),
//!   UDP or SCTP; `endPort` extends a numbered port to a range.

use std::fmt;

use ipnet::Ipv4Net;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::network::check_network_address;
use super::{Kind, LabelSelector, NoStatus, Object, Spec, ValidationError};

/// A `NetworkPolicy` object (namespaced, plural `networkpolicies`, short `netpol`).
pub type NetworkPolicy = Object<NetworkPolicySpec>;

/// `spec` of a [`NetworkPolicy`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// The pods of the policy's namespace it applies to (`{}`: all of them).
    #[serde(default)]
    pub pod_selector: LabelSelector,
    /// The directions it isolates; see [`NetworkPolicySpec::effective_types`] for the
    /// default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_types: Option<Vec<PolicyType>>,
    /// What the selected pods accept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<IngressRule>,
    /// What the selected pods may send.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<EgressRule>,
}

/// A direction of traffic relative to the selected pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PolicyType {
    /// Traffic to the pod.
    Ingress,
    /// Traffic from the pod.
    Egress,
}

/// One ingress rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IngressRule {
    /// Allowed sources (any of them); empty: every source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<Peer>,
    /// Allowed destination ports (any of them); empty: every port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PolicyPort>,
}

/// One egress rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EgressRule {
    /// Allowed destinations (any of them); empty: every destination.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<Peer>,
    /// Allowed destination ports (any of them); empty: every port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PolicyPort>,
}

/// A peer of a rule: pods by selectors, or an address block.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Peer {
    /// Pods (of the policy's namespace unless `namespaceSelector` is set too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Namespaces whose pods (all, or those `podSelector` matches) are peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Addresses; must be alone in its peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_block: Option<IpBlock>,
}

/// `ipBlock`: the addresses of `cidr` except those of `except`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IpBlock {
    /// The block (network address, e.g. `10.0.0.0/8`).
    pub cidr: Ipv4Net,
    /// Blocks inside `cidr` that are not part of it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<Ipv4Net>,
}

/// An L4 protocol a policy port names.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub enum PolicyProtocol {
    /// TCP (the default).
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    /// UDP.
    #[serde(rename = "UDP")]
    Udp,
    /// SCTP.
    #[serde(rename = "SCTP")]
    Sctp,
}

impl PolicyProtocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            PolicyProtocol::Tcp => 6,
            PolicyProtocol::Udp => 17,
            PolicyProtocol::Sctp => 132,
        }
    }

    /// `TCP`, `UDP` or `SCTP`.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyProtocol::Tcp => "TCP",
            PolicyProtocol::Udp => "UDP",
            PolicyProtocol::Sctp => "SCTP",
        }
    }
}

impl fmt::Display for PolicyProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A port: a number (1-65535) or a port name (an IANA service name).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortRef {
    /// A port number.
    Number(u16),
    /// The name of a port the target pod declares (`Pod.spec.ports[].name`).
    Name(String),
}

impl Serialize for PortRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            PortRef::Number(n) => s.serialize_u16(*n),
            PortRef::Name(n) => s.serialize_str(n),
        }
    }
}

impl<'de> Deserialize<'de> for PortRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(i64),
            S(String),
        }
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom("must be a port number or a port name (a string)")
        })? {
            Raw::N(n) => u16::try_from(n)
                .ok()
                .filter(|n| *n != 0)
                .map(PortRef::Number)
                .ok_or_else(|| {
                    serde::de::Error::custom(format!("port {n} is not between 1 and 65535"))
                }),
            Raw::S(s) => Ok(PortRef::Name(s)),
        }
    }
}

/// One `ports` item of a rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyPort {
    /// The protocol (default TCP).
    #[serde(default)]
    pub protocol: PolicyProtocol,
    /// The port; left out: every port of `protocol`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortRef>,
    /// The last port of a range starting at the (numbered) `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<u16>,
}

impl Spec for NetworkPolicySpec {
    const KIND: Kind = Kind::NetworkPolicy;
    type Status = NoStatus;

    fn validate(&self, _status: &NoStatus) -> Result<(), ValidationError> {
        self.validate_spec().map_err(|e| e.under("spec"))
    }
}

impl NetworkPolicySpec {
    /// The directions the policy isolates: `policyTypes` when given (and not empty, which
    /// Kubernetes treats as unset), else `Ingress` plus `Egress` when there are egress
    /// rules.
    pub fn effective_types(&self) -> (bool, bool) {
        match &self.policy_types {
            Some(t) if !t.is_empty() => (
                t.contains(&PolicyType::Ingress),
                t.contains(&PolicyType::Egress),
            ),
            _ => (true, !self.egress.is_empty()),
        }
    }

    fn validate_spec(&self) -> Result<(), ValidationError> {
        self.pod_selector
            .validate()
            .map_err(|e| e.under("podSelector"))?;
        if let Some(types) = &self.policy_types {
            for (i, t) in types.iter().enumerate() {
                if types[..i].contains(t) {
                    return Err(ValidationError::new(
                        format!("policyTypes[{i}]"),
                        format!("{t:?} is listed twice"),
                    ));
                }
            }
        }
        for (i, r) in self.ingress.iter().enumerate() {
            let f = format!("ingress[{i}]");
            validate_peers(&r.from).map_err(|e| e.under(&format!("{f}.from")))?;
            validate_ports(&r.ports).map_err(|e| e.under(&format!("{f}.ports")))?;
        }
        for (i, r) in self.egress.iter().enumerate() {
            let f = format!("egress[{i}]");
            validate_peers(&r.to).map_err(|e| e.under(&format!("{f}.to")))?;
            validate_ports(&r.ports).map_err(|e| e.under(&format!("{f}.ports")))?;
        }
        Ok(())
    }
}

fn validate_peers(peers: &[Peer]) -> Result<(), ValidationError> {
    for (i, p) in peers.iter().enumerate() {
        p.validate().map_err(|e| e.under(&format!("[{i}]")))?;
    }
    Ok(())
}

impl Peer {
    fn validate(&self) -> Result<(), ValidationError> {
        if let Some(s) = &self.pod_selector {
            s.validate().map_err(|e| e.under("podSelector"))?;
        }
        if let Some(s) = &self.namespace_selector {
            s.validate().map_err(|e| e.under("namespaceSelector"))?;
        }
        match &self.ip_block {
            Some(b) => {
                if self.pod_selector.is_some() || self.namespace_selector.is_some() {
                    return Err(ValidationError::new(
                        "ipBlock",
                        "must be alone in its peer: put podSelector/namespaceSelector in a separate peer",
                    ));
                }
                b.validate().map_err(|e| e.under("ipBlock"))
            }
            None if self.pod_selector.is_none() && self.namespace_selector.is_none() => Err(
                ValidationError::new("", "a peer needs podSelector, namespaceSelector or ipBlock"),
            ),
            None => Ok(()),
        }
    }
}

impl IpBlock {
    /// Check the block: `cidr` a network address, every `except` strictly inside it.
    pub fn validate(&self) -> Result<(), ValidationError> {
        check_network_address(self.cidr).map_err(|m| ValidationError::new("cidr", m))?;
        for (i, e) in self.except.iter().enumerate() {
            let f = format!("except[{i}]");
            check_network_address(*e).map_err(|m| ValidationError::new(&f, m))?;
            if !self.cidr.contains(e) || e.prefix_len() <= self.cidr.prefix_len() {
                return Err(ValidationError::new(
                    &f,
                    format!("{e} is not inside cidr {}", self.cidr),
                ));
            }
        }
        Ok(())
    }

    /// Whether `ip` is in the block.
    pub fn contains(&self, ip: std::net::Ipv4Addr) -> bool {
        self.cidr.contains(&ip) && !self.except.iter().any(|e| e.contains(&ip))
    }
}

/// Check a `ports` list (fields relative to it: `[0].endPort`).
pub(crate) fn validate_ports(ports: &[PolicyPort]) -> Result<(), ValidationError> {
    for (i, p) in ports.iter().enumerate() {
        let f = |x: &str| format!("[{i}].{x}");
        match (&p.port, p.end_port) {
            (Some(PortRef::Name(n)), end) => {
                validate_port_name(n).map_err(|m| ValidationError::new(f("port"), m))?;
                if end.is_some() {
                    return Err(ValidationError::new(
                        f("endPort"),
                        format!("must not be set with a named port ({n:?}): a range needs a numbered port"),
                    ));
                }
            }
            (Some(PortRef::Number(start)), Some(end)) if end < *start => {
                return Err(ValidationError::new(
                    f("endPort"),
                    format!("{end} is below port {start}"),
                ))
            }
            (None, Some(_)) => {
                return Err(ValidationError::new(
                    f("endPort"),
                    "must not be set without port",
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// An IANA service name, as Kubernetes port names must be: 1-15 characters, lowercase
/// letters, digits and `-`, at least one letter, no `-` at either end or twice in a row.
pub fn validate_port_name(n: &str) -> Result<(), String> {
    if n.is_empty() || n.len() > 15 {
        return Err(format!("port name {n:?} must be 1 to 15 characters"));
    }
    if !n
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(format!(
            "port name {n:?} may hold only lowercase letters, digits and '-'"
        ));
    }
    if !n.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(format!("port name {n:?} must contain a letter"));
    }
    if n.starts_with('-') || n.ends_with('-') || n.contains("--") {
        return Err(format!(
            "port name {n:?} must not start or end with '-' or hold '--'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::{parse_yaml, AnyObject};

    fn parse(yaml: &str) -> Result<NetworkPolicy, ValidationError> {
        let mut v = parse_yaml(yaml)?;
        let AnyObject::NetworkPolicy(mut p) = v.remove(0) else {
            panic!("not a policy")
        };
        p.default_namespace("default");
        p.validate()?;
        Ok(p)
    }

    #[test]
    fn a_kubernetes_manifest_is_accepted_unchanged() {
        let p = parse(
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: test-network-policy
  namespace: default
  annotations: {team: a}
spec:
  podSelector:
    matchLabels:
      role: db
  policyTypes:
  - Ingress
  - Egress
  ingress:
  - from:
    - ipBlock:
        cidr: 172.17.0.0/16
        except:
        - 172.17.1.0/24
    - namespaceSelector:
        matchLabels:
          project: myproject
    - podSelector:
        matchLabels:
          role: frontend
    ports:
    - protocol: TCP
      port: 6379
  egress:
  - to:
    - ipBlock:
        cidr: 10.0.0.0/24
    ports:
    - protocol: TCP
      port: 32000
      endPort: 32768
"#,
        )
        .unwrap();
        assert_eq!(p.spec.ingress[0].from.len(), 3);
        assert_eq!(p.spec.egress[0].ports[0].end_port, Some(32768));
        assert_eq!(p.spec.effective_types(), (true, true));
    }

    #[test]
    fn policy_types_default() {
        let mut s = NetworkPolicySpec::default();
        assert_eq!(s.effective_types(), (true, false));
        s.egress.push(EgressRule::default());
        assert_eq!(s.effective_types(), (true, true));
        s.policy_types = Some(vec![PolicyType::Egress]);
        assert_eq!(s.effective_types(), (false, true));
        s.policy_types = Some(vec![]);
        assert_eq!(
            s.effective_types(),
            (true, true),
            "an empty list is the default"
        );
    }

    #[test]
    fn bad_input_names_the_field() {
        let head = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\n";
        let err = |spec: &str| parse(&format!("{head}spec: {spec}")).unwrap_err();
        let e = err("{podSelector: {}, ingres: []}");
        assert!(e.to_string().contains("unknown field `ingres`"), "{e}");
        let e = err("{podSelector: {matchExpressions: [{key: a, operator: Is, values: [x]}]}}");
        assert!(
            e.to_string()
                .contains("spec.podSelector.matchExpressions[0].operator"),
            "{e}"
        );
        let e = err("{ingress: [{ports: [{port: http, endPort: 90}]}]}");
        assert_eq!(e.field, "spec.ingress[0].ports[0].endPort");
        let e = err("{ingress: [{ports: [{port: 90, endPort: 80}]}]}");
        assert_eq!(e.field, "spec.ingress[0].ports[0].endPort");
        let e =
            err("{ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [192.168.0.0/16]}}]}]}");
        assert_eq!(e.field, "spec.ingress[0].from[0].ipBlock.except[0]");
        let e = err("{ingress: [{from: [{ipBlock: {cidr: 10.0.0.1/8}}]}]}");
        assert_eq!(e.field, "spec.ingress[0].from[0].ipBlock.cidr");
        let e = err("{egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]}");
        assert_eq!(e.field, "spec.egress[0].to[0].ipBlock");
        let e = err("{egress: [{to: [{}]}]}");
        assert_eq!(e.field, "spec.egress[0].to[0]");
        let e = err("{ingress: [{ports: [{protocol: ICMP}]}]}");
        assert!(
            e.to_string().contains("spec.ingress[0].ports[0].protocol"),
            "{e}"
        );
        let e = err("{ingress: [{ports: [{port: 70000}]}]}");
        assert!(e.to_string().contains("between 1 and 65535"), "{e}");
        let e = err("{ingress: [{ports: [{port: Http_1}]}]}");
        assert_eq!(e.field, "spec.ingress[0].ports[0].port");
        let e = err("{policyTypes: [Ingress, Ingress]}");
        assert_eq!(e.field, "spec.policyTypes[1]");
    }
}
