//! `ClusterNetworkPolicy`: the cluster administrator's policies, in the two tiers of the
//! Kubernetes network-policy-api.
//!
//! Traffic of a pod (ingress to it, egress from it) is decided in this order:
//!
//! 1. **`Admin` tier**: the rules of the Admin policies whose `subject` selects the pod,
//!    by `priority` (0 first; equal priorities by name), each policy's rules in order.
//!    The first rule whose peers and ports match decides: `Accept` allows (nothing
//!    below is consulted), `Deny` drops, `Pass` skips the remaining Admin rules. `Log`
//!    records the packet (nftables log, prefix `trellis <policy>/<rule>`) and goes on.
//! 2. **NetworkPolicies** (namespaced): if any selects the pod for the direction, they
//!    decide (allowed by some rule, else dropped).
//! 3. **`Baseline` tier**: like Admin (no `Pass`); no matching rule: allowed.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::netpol::validate_port_name;
use super::network::check_network_address;
use super::{Kind, LabelSelector, NoStatus, Object, PolicyProtocol, Spec, ValidationError};

/// A `ClusterNetworkPolicy` object (cluster-scoped, plural `clusternetworkpolicies`,
/// short `cnp`).
pub type ClusterNetworkPolicy = Object<ClusterNetworkPolicySpec>;

/// The highest (last evaluated) `priority`.
pub const MAX_CNP_PRIORITY: u32 = 1000;
/// Most rules per direction of one policy.
pub const MAX_CNP_RULES: usize = 100;

/// `spec` of a [`ClusterNetworkPolicy`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterNetworkPolicySpec {
    /// `Admin` (before NetworkPolicies) or `Baseline` (after them).
    pub tier: Tier,
    /// 0 (evaluated first) to 1000.
    pub priority: u32,
    /// The pods the policy applies to.
    pub subject: Subject,
    /// Rules for traffic to the subject pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<CnpRule>,
    /// Rules for traffic from the subject pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<CnpRule>,
    /// The one tenant whose world the policy applies in (a Tenant's name). Unset: it
    /// applies in every world (the default world and each tenant's), its selectors
    /// matching that world's namespaces only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// The tier of a [`ClusterNetworkPolicy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Tier {
    /// Evaluated before NetworkPolicies.
    Admin,
    /// Evaluated after NetworkPolicies, for pods none selects.
    Baseline,
}

/// `spec.subject`: exactly one of `namespaces` or `pods`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Subject {
    /// Every pod of the namespaces this selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    /// The pods this selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPods>,
}

/// Pods by namespace and pod selectors (both must match).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NamespacedPods {
    /// The namespaces (`{}`: all).
    #[serde(default)]
    pub namespace_selector: LabelSelector,
    /// The pods in them (`{}`: all).
    #[serde(default)]
    pub pod_selector: LabelSelector,
}

/// What a rule does with the traffic it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum CnpAction {
    /// Allow; no later rule or tier is consulted.
    Accept,
    /// Drop.
    Deny,
    /// Skip the remaining Admin rules: NetworkPolicies decide (Admin tier only).
    Pass,
    /// Record the packet in the kernel log and go on with the next rule.
    Log,
}

/// One rule of a [`ClusterNetworkPolicy`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CnpRule {
    /// A name for the rule (shown by `trellis policy explain|check` and in log prefixes);
    /// defaults to its index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What to do with matching traffic.
    pub action: CnpAction,
    /// The peers (any of them; at least one): for ingress the sources, for egress the
    /// destinations. Named `from` in ingress rules and `to` in egress rules; either
    /// spelling is accepted.
    #[serde(alias = "from", alias = "to")]
    pub peers: Vec<CnpPeer>,
    /// The destination ports (any of them); empty: every port and protocol.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<CnpPort>,
}

/// A peer of a [`CnpRule`]: exactly one field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CnpPeer {
    /// Every pod of the namespaces this selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    /// Pods by namespace and pod selectors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPods>,
    /// The underlay addresses of the Nodes this selects (by Node labels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<LabelSelector>,
    /// Address blocks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<Ipv4Net>,
}

/// A port of a [`CnpRule`]: exactly one field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CnpPort {
    /// One port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_number: Option<CnpPortNumber>,
    /// A port range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_range: Option<CnpPortRange>,
    /// A port the destination pod declares by this name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub named_port: Option<String>,
}

/// `portNumber`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CnpPortNumber {
    /// The protocol (default TCP).
    #[serde(default)]
    pub protocol: PolicyProtocol,
    /// The port, 1-65535.
    pub port: u16,
}

/// `portRange`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CnpPortRange {
    /// The protocol (default TCP).
    #[serde(default)]
    pub protocol: PolicyProtocol,
    /// The first port.
    pub start: u16,
    /// The last port (≥ `start`).
    pub end: u16,
}

impl Spec for ClusterNetworkPolicySpec {
    const KIND: Kind = Kind::ClusterNetworkPolicy;
    type Status = NoStatus;

    fn validate(&self, _status: &NoStatus) -> Result<(), ValidationError> {
        self.validate_spec().map_err(|e| e.under("spec"))
    }
}

impl ClusterNetworkPolicySpec {
    fn validate_spec(&self) -> Result<(), ValidationError> {
        if let Some(t) = &self.tenant {
            super::validate_dns1123_label(t).map_err(|m| ValidationError::new("tenant", m))?;
        }
        if self.priority > MAX_CNP_PRIORITY {
            return Err(ValidationError::new(
                "priority",
                format!(
                    "{} is out of range: 0 (first) to {MAX_CNP_PRIORITY}",
                    self.priority
                ),
            ));
        }
        self.subject.validate().map_err(|e| e.under("subject"))?;
        for (dir, rules) in [("ingress", &self.ingress), ("egress", &self.egress)] {
            if rules.len() > MAX_CNP_RULES {
                return Err(ValidationError::new(
                    dir,
                    format!("has {} rules; at most {MAX_CNP_RULES}", rules.len()),
                ));
            }
            for (i, r) in rules.iter().enumerate() {
                r.validate(self.tier, dir)
                    .map_err(|e| e.under(&format!("{dir}[{i}]")))?;
            }
        }
        Ok(())
    }
}

impl Subject {
    fn validate(&self) -> Result<(), ValidationError> {
        match (&self.namespaces, &self.pods) {
            (Some(n), None) => n.validate().map_err(|e| e.under("namespaces")),
            (None, Some(p)) => p.validate().map_err(|e| e.under("pods")),
            _ => Err(ValidationError::new(
                "",
                "needs exactly one of namespaces or pods",
            )),
        }
    }
}

impl NamespacedPods {
    fn validate(&self) -> Result<(), ValidationError> {
        self.namespace_selector
            .validate()
            .map_err(|e| e.under("namespaceSelector"))?;
        self.pod_selector
            .validate()
            .map_err(|e| e.under("podSelector"))
    }
}

impl CnpRule {
    /// The rule's name: `name`, or its index.
    pub fn display_name(&self, index: usize) -> String {
        self.name.clone().unwrap_or_else(|| index.to_string())
    }

    fn validate(&self, tier: Tier, dir: &str) -> Result<(), ValidationError> {
        if let Some(n) = &self.name {
            super::validate_dns1123_label(n).map_err(|m| ValidationError::new("name", m))?;
        }
        if self.action == CnpAction::Pass && tier == Tier::Baseline {
            return Err(ValidationError::new(
                "action",
                "Pass is only allowed in the Admin tier (Baseline is the last tier)",
            ));
        }
        let peers = if dir == "ingress" { "from" } else { "to" };
        if self.peers.is_empty() {
            return Err(ValidationError::new(peers, "needs at least one peer"));
        }
        for (i, p) in self.peers.iter().enumerate() {
            p.validate()
                .map_err(|e| e.under(&format!("{peers}[{i}]")))?;
        }
        for (i, p) in self.ports.iter().enumerate() {
            p.validate().map_err(|e| e.under(&format!("ports[{i}]")))?;
        }
        Ok(())
    }
}

impl CnpPeer {
    fn validate(&self) -> Result<(), ValidationError> {
        let set = usize::from(self.namespaces.is_some())
            + usize::from(self.pods.is_some())
            + usize::from(self.nodes.is_some())
            + usize::from(!self.networks.is_empty());
        if set != 1 {
            return Err(ValidationError::new(
                "",
                "needs exactly one of namespaces, pods, nodes or networks",
            ));
        }
        if let Some(n) = &self.namespaces {
            n.validate().map_err(|e| e.under("namespaces"))?;
        }
        if let Some(p) = &self.pods {
            p.validate().map_err(|e| e.under("pods"))?;
        }
        if let Some(n) = &self.nodes {
            n.validate().map_err(|e| e.under("nodes"))?;
        }
        for (i, n) in self.networks.iter().enumerate() {
            check_network_address(*n)
                .map_err(|m| ValidationError::new(format!("networks[{i}]"), m))?;
        }
        Ok(())
    }

    /// Whether `ip` is in one of `networks`.
    pub fn networks_contain(&self, ip: Ipv4Addr) -> bool {
        self.networks.iter().any(|n| n.contains(&ip))
    }
}

impl CnpPort {
    fn validate(&self) -> Result<(), ValidationError> {
        let set = usize::from(self.port_number.is_some())
            + usize::from(self.port_range.is_some())
            + usize::from(self.named_port.is_some());
        if set != 1 {
            return Err(ValidationError::new(
                "",
                "needs exactly one of portNumber, portRange or namedPort",
            ));
        }
        if let Some(p) = &self.port_number {
            if p.port == 0 {
                return Err(ValidationError::new(
                    "portNumber.port",
                    "must be between 1 and 65535",
                ));
            }
        }
        if let Some(r) = &self.port_range {
            if r.start == 0 {
                return Err(ValidationError::new(
                    "portRange.start",
                    "must be between 1 and 65535",
                ));
            }
            if r.end < r.start {
                return Err(ValidationError::new(
                    "portRange.end",
                    format!("{} is below start {}", r.end, r.start),
                ));
            }
        }
        if let Some(n) = &self.named_port {
            validate_port_name(n).map_err(|m| ValidationError::new("namedPort", m))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::{parse_yaml, AnyObject};

    fn parse(spec: &str) -> Result<ClusterNetworkPolicy, ValidationError> {
        let yaml = format!(
            "apiVersion: trellis/v1\nkind: ClusterNetworkPolicy\nmetadata: {{name: c}}\nspec: {spec}"
        );
        let AnyObject::ClusterNetworkPolicy(p) = parse_yaml(&yaml)?.remove(0) else {
            panic!("kind")
        };
        p.validate()?;
        Ok(p)
    }

    #[test]
    fn a_full_policy_parses() {
        let p = parse(
            r#"
  tier: Admin
  priority: 10
  subject: {namespaces: {matchLabels: {team: a}}}
  ingress:
  - name: from-monitoring
    action: Accept
    from: [{namespaces: {matchLabels: {kubernetes.io/metadata.name: monitoring}}}]
    ports: [{portNumber: {protocol: TCP, port: 9090}}, {namedPort: metrics}, {portRange: {start: 8000, end: 8100}}]
  - action: Pass
    from: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: x}}}}]
  egress:
  - action: Deny
    to: [{networks: [192.168.0.0/16]}, {nodes: {}}]
  - action: Log
    to: [{namespaces: {}}]
"#,
        )
        .unwrap();
        assert_eq!(p.spec.ingress[0].ports.len(), 3);
        assert_eq!(p.spec.egress[0].peers.len(), 2);
        assert_eq!(p.spec.ingress[1].display_name(1), "1");
    }

    #[test]
    fn bad_input_names_the_field() {
        let subj = "subject: {namespaces: {}}";
        let e = parse(&format!("{{tier: Admin, priority: 1001, {subj}}}")).unwrap_err();
        assert_eq!(e.field, "spec.priority");
        let e = parse(&format!("{{tier: Top, priority: 1, {subj}}}")).unwrap_err();
        assert!(e.to_string().contains("spec.tier"), "{e}");
        let e = parse(&format!(
            "{{tier: Baseline, priority: 1, {subj}, ingress: [{{action: Pass, from: [{{namespaces: {{}}}}]}}]}}"
        ))
        .unwrap_err();
        assert_eq!(e.field, "spec.ingress[0].action");
        let e = parse("{tier: Admin, priority: 1, subject: {}}").unwrap_err();
        assert_eq!(e.field, "spec.subject");
        let e = parse(&format!(
            "{{tier: Admin, priority: 1, {subj}, egress: [{{action: Deny, to: []}}]}}"
        ))
        .unwrap_err();
        assert_eq!(e.field, "spec.egress[0].to");
        let e = parse(&format!(
            "{{tier: Admin, priority: 1, {subj}, egress: [{{action: Deny, to: [{{networks: [10.0.0.1/8]}}]}}]}}"
        ))
        .unwrap_err();
        assert_eq!(e.field, "spec.egress[0].to[0].networks[0]");
        let e = parse(&format!(
            "{{tier: Admin, priority: 1, {subj}, egress: [{{action: Deny, to: [{{nodes: {{}}}}], ports: [{{portRange: {{start: 9, end: 2}}}}]}}]}}"
        ))
        .unwrap_err();
        assert_eq!(e.field, "spec.egress[0].ports[0].portRange.end");
        let e = parse(&format!(
            "{{tier: Admin, priority: 1, {subj}, egress: [{{action: Allow, to: [{{nodes: {{}}}}]}}]}}"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("spec.egress[0].action"), "{e}");
    }
}
