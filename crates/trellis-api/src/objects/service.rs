//! `Service`: a stable address (and name) for the endpoints its selector matches, with
//! L4 load balancing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

use super::node::check_unicast;
use super::{
    validate_dns1123_label, validate_dns1123_subdomain, validate_labels, Endpoint, Kind, Object,
    ProgrammedRevisions, Spec, ValidationError,
};

/// A `Service` object (namespaced, plural `services`).
pub type Service = Object<ServiceSpec>;

/// The NodePort range a server uses unless configured otherwise.
pub const DEFAULT_NODE_PORT_RANGE: RangeInclusive<u16> = 30000..=32767;
/// `spec.sessionAffinityTimeoutSeconds` when `sessionAffinity` is `ClientIP` and it is
/// left out (3 hours).
pub const DEFAULT_SESSION_AFFINITY_TIMEOUT: u32 = 10_800;
/// Longest allowed `spec.sessionAffinityTimeoutSeconds` (1 day).
pub const MAX_SESSION_AFFINITY_TIMEOUT: u32 = 86_400;
/// The `spec.clusterIP` of a headless service: no virtual IP; DNS answers with the
/// endpoints' addresses.
pub const CLUSTER_IP_NONE: &str = "None";

/// `spec` of a [`Service`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceSpec {
    /// How the service is exposed (default `ClusterIP`).
    #[serde(rename = "type", default)]
    pub type_: ServiceType,
    /// Labels an endpoint must all have to back the service. Empty: no endpoints are
    /// selected (they may be managed by hand).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
    /// The ports; required (non-empty) except for `ExternalName` and headless services.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ServicePort>,
    /// The virtual IP: an IPv4 address, or `"None"` ([`CLUSTER_IP_NONE`]) for a headless
    /// service. Allocated by the server when left out (except for `ExternalName`).
    #[serde(rename = "clusterIP", default, skip_serializing_if = "Option::is_none")]
    pub cluster_ip: Option<String>,
    /// Further addresses (owned by the nodes or routed to them) on which the service's
    /// ports are accepted.
    #[serde(rename = "externalIPs", default, skip_serializing_if = "Vec::is_empty")]
    pub external_ips: Vec<Ipv4Addr>,
    /// For `LoadBalancer`: the address wanted from the pool (else the server picks one
    /// and reports it in `status.loadBalancerIP`).
    #[serde(
        rename = "loadBalancerIP",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub load_balancer_ip: Option<Ipv4Addr>,
    /// Whether a client sticks to one endpoint (default `None`).
    #[serde(default)]
    pub session_affinity: SessionAffinity,
    /// How long a `ClientIP` affinity lasts, 1 to 86400 s; defaults to 10800 when
    /// `sessionAffinity` is `ClientIP`; refused otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity_timeout_seconds: Option<u32>,
    /// Whether NodePort / LoadBalancer / external-IP traffic may go to endpoints on other
    /// nodes (`Cluster`, default; source NATed) or only to local ones (`Local`; client
    /// address kept).
    #[serde(default)]
    pub external_traffic_policy: ExternalTrafficPolicy,
    /// For `ExternalName`: the DNS name the service's name is a CNAME of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_name: Option<String>,
}

/// One port of a [`ServiceSpec`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServicePort {
    /// The port's name (a DNS-1123 label), unique in the service; required when the
    /// service has more than one port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The port on the cluster IP (and external / load-balancer IPs), 1 to 65535.
    pub port: u16,
    /// The port on the endpoints; defaults to `port`. A number only: Trellis pods
    /// declare no named container ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u16>,
    /// `TCP` (default) or `UDP`.
    #[serde(default)]
    pub protocol: Protocol,
    /// For `NodePort` / `LoadBalancer`: the port on every node; allocated by the server
    /// from its NodePort range ([`DEFAULT_NODE_PORT_RANGE`]) when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<u16>,
    /// The application protocol (Kubernetes' `appProtocol`); `kubernetes.io/h2c` makes
    /// the ingress speak cleartext HTTP/2 to the endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
}

impl ServicePort {
    /// A TCP port whose target port is the same.
    pub fn tcp(port: u16) -> Self {
        ServicePort {
            port,
            ..Default::default()
        }
    }

    /// The port on the endpoints: `targetPort`, else `port`.
    pub fn target_port(&self) -> u16 {
        self.target_port.unwrap_or(self.port)
    }
}

/// `status` of a [`Service`] (server-set).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceStatus {
    /// The load-balancer address in use, for `LoadBalancer` services.
    #[serde(
        rename = "loadBalancerIP",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub load_balancer_ip: Option<Ipv4Addr>,
}

/// How a service is exposed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ServiceType {
    /// `ClusterIP`: a virtual IP reachable inside the cluster (default).
    #[default]
    #[serde(rename = "ClusterIP")]
    ClusterIp,
    /// `NodePort`: ClusterIP plus a port on every node.
    NodePort,
    /// `LoadBalancer`: NodePort plus an address from a load-balancer pool.
    LoadBalancer,
    /// `ExternalName`: only a DNS CNAME to `externalName`; no proxying.
    ExternalName,
}

impl ServiceType {
    /// The name written in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIp => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
            ServiceType::ExternalName => "ExternalName",
        }
    }

    /// Whether the type has node ports (`NodePort`, `LoadBalancer`).
    pub fn has_node_ports(self) -> bool {
        matches!(self, ServiceType::NodePort | ServiceType::LoadBalancer)
    }
}

impl fmt::Display for ServiceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A service port's L4 protocol.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub enum Protocol {
    /// `TCP` (default).
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    /// `UDP`.
    #[serde(rename = "UDP")]
    Udp,
}

impl Protocol {
    /// `TCP` or `UDP`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether connections from one client stick to one endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SessionAffinity {
    /// `None`: every connection is balanced on its own (default).
    #[default]
    None,
    /// `ClientIP`: a client address keeps its endpoint for the affinity timeout.
    #[serde(rename = "ClientIP")]
    ClientIp,
}

/// Where NodePort / LoadBalancer / external-IP traffic may be sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ExternalTrafficPolicy {
    /// `Cluster`: to any endpoint, source NATed to the node (default).
    #[default]
    Cluster,
    /// `Local`: only to endpoints on the receiving node; the client address is kept.
    Local,
}

impl ServiceSpec {
    /// Whether the service is headless (`clusterIP: "None"`).
    pub fn is_headless(&self) -> bool {
        self.cluster_ip.as_deref() == Some(CLUSTER_IP_NONE)
    }

    /// The cluster IP as an address (`None` when unset, headless, or not an address).
    pub fn cluster_ipv4(&self) -> Option<Ipv4Addr> {
        self.cluster_ip.as_deref()?.parse().ok()
    }

    /// Whether the server still has to allocate a cluster IP: not `ExternalName` and
    /// `clusterIP` left out.
    pub fn needs_cluster_ip(&self) -> bool {
        self.type_ != ServiceType::ExternalName && self.cluster_ip.is_none()
    }

    /// The affinity timeout in force: `None` without `ClientIP` affinity, else the set
    /// value or [`DEFAULT_SESSION_AFFINITY_TIMEOUT`].
    pub fn affinity_timeout(&self) -> Option<u32> {
        match self.session_affinity {
            SessionAffinity::None => None,
            SessionAffinity::ClientIp => Some(
                self.session_affinity_timeout_seconds
                    .unwrap_or(DEFAULT_SESSION_AFFINITY_TIMEOUT),
            ),
        }
    }

    /// The server's NodePort check: every `nodePort` set must lie in `range` (the
    /// server's configured range, [`DEFAULT_NODE_PORT_RANGE`] by default). The error
    /// names `spec.ports[i].nodePort`. Uniqueness across services is the allocator's.
    pub fn validate_node_ports(&self, range: &RangeInclusive<u16>) -> Result<(), ValidationError> {
        for (i, p) in self.ports.iter().enumerate() {
            if let Some(np) = p.node_port {
                if !range.contains(&np) {
                    return Err(ValidationError::new(
                        format!("spec.ports[{i}].nodePort"),
                        format!(
                            "{np} is outside the NodePort range {}-{}",
                            range.start(),
                            range.end()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate_spec(&self) -> Result<(), ValidationError> {
        let ty = self.type_;
        validate_labels(&self.selector).map_err(|e| e.under("selector"))?;

        // clusterIP / externalName, by type.
        if ty == ServiceType::ExternalName {
            let Some(name) = &self.external_name else {
                return Err(ValidationError::new(
                    "externalName",
                    "is required for type ExternalName",
                ));
            };
            let bare = name.strip_suffix('.').unwrap_or(name);
            validate_dns1123_subdomain(bare)
                .map_err(|m| ValidationError::new("externalName", m))?;
            if self.cluster_ip.is_some() {
                return Err(ValidationError::new(
                    "clusterIP",
                    "must not be set for type ExternalName (it has no cluster IP)",
                ));
            }
        } else if self.external_name.is_some() {
            return Err(ValidationError::new(
                "externalName",
                format!("is only used by type ExternalName, not {ty}"),
            ));
        }
        if let Some(ip) = &self.cluster_ip {
            if ip == CLUSTER_IP_NONE {
                if ty != ServiceType::ClusterIp {
                    return Err(ValidationError::new(
                        "clusterIP",
                        format!("\"None\" (headless) is only allowed for type ClusterIP, not {ty}"),
                    ));
                }
            } else {
                let addr: Ipv4Addr = ip.parse().map_err(|_| {
                    ValidationError::new(
                        "clusterIP",
                        format!(
                            "{ip:?} is neither an IPv4 address nor \"None\"; leave it out to \
                             have one allocated"
                        ),
                    )
                })?;
                check_unicast(addr).map_err(|m| ValidationError::new("clusterIP", m))?;
            }
        }

        // Ports.
        if self.ports.is_empty() && ty != ServiceType::ExternalName && !self.is_headless() {
            return Err(ValidationError::new(
                "ports",
                "at least one port is required (except for ExternalName and headless services)",
            ));
        }
        let mut names = HashMap::new();
        let mut ports = HashMap::new();
        let mut node_ports = HashMap::new();
        for (i, p) in self.ports.iter().enumerate() {
            let at = |f: &str| format!("ports[{i}].{f}");
            match &p.name {
                Some(name) => {
                    validate_dns1123_label(name)
                        .map_err(|m| ValidationError::new(at("name"), m))?;
                    if let Some(j) = names.insert(name, i) {
                        return Err(ValidationError::new(
                            at("name"),
                            format!("duplicate port name {name:?} (also spec.ports[{j}])"),
                        ));
                    }
                }
                None if self.ports.len() > 1 => {
                    return Err(ValidationError::new(
                        at("name"),
                        "is required when a service has more than one port",
                    ))
                }
                None => {}
            }
            if p.port == 0 {
                return Err(ValidationError::new(
                    at("port"),
                    "must be between 1 and 65535",
                ));
            }
            if p.target_port == Some(0) {
                return Err(ValidationError::new(
                    at("targetPort"),
                    "must be between 1 and 65535 (leave it out to use the port)",
                ));
            }
            if let Some(j) = ports.insert((p.port, p.protocol), i) {
                return Err(ValidationError::new(
                    at("port"),
                    format!(
                        "duplicate port {}/{} (also spec.ports[{j}])",
                        p.port, p.protocol
                    ),
                ));
            }
            if let Some(np) = p.node_port {
                if !ty.has_node_ports() {
                    return Err(ValidationError::new(
                        at("nodePort"),
                        format!("may only be set for type NodePort or LoadBalancer, not {ty}"),
                    ));
                }
                if np == 0 {
                    return Err(ValidationError::new(
                        at("nodePort"),
                        "must be between 1 and 65535 (leave it out to have one allocated)",
                    ));
                }
                if let Some(j) = node_ports.insert((np, p.protocol), i) {
                    return Err(ValidationError::new(
                        at("nodePort"),
                        format!(
                            "duplicate node port {np}/{} (also spec.ports[{j}])",
                            p.protocol
                        ),
                    ));
                }
            }
        }

        // External addresses.
        let mut seen = BTreeSet::new();
        for (i, ip) in self.external_ips.iter().enumerate() {
            let field = format!("externalIPs[{i}]");
            check_unicast(*ip).map_err(|m| ValidationError::new(&field, m))?;
            if !seen.insert(ip) {
                return Err(ValidationError::new(
                    &field,
                    format!("duplicate address {ip}"),
                ));
            }
        }
        if let Some(ip) = self.load_balancer_ip {
            if ty != ServiceType::LoadBalancer {
                return Err(ValidationError::new(
                    "loadBalancerIP",
                    format!("may only be set for type LoadBalancer, not {ty}"),
                ));
            }
            check_unicast(ip).map_err(|m| ValidationError::new("loadBalancerIP", m))?;
        }

        // Affinity and traffic policy.
        if let Some(t) = self.session_affinity_timeout_seconds {
            if self.session_affinity != SessionAffinity::ClientIp {
                return Err(ValidationError::new(
                    "sessionAffinityTimeoutSeconds",
                    "may only be set when sessionAffinity is ClientIP",
                ));
            }
            if !(1..=MAX_SESSION_AFFINITY_TIMEOUT).contains(&t) {
                return Err(ValidationError::new(
                    "sessionAffinityTimeoutSeconds",
                    format!("must be between 1 and {MAX_SESSION_AFFINITY_TIMEOUT}, got {t}"),
                ));
            }
        }
        if self.external_traffic_policy == ExternalTrafficPolicy::Local
            && !ty.has_node_ports()
            && self.external_ips.is_empty()
        {
            return Err(ValidationError::new(
                "externalTrafficPolicy",
                format!(
                    "Local only applies to NodePort and LoadBalancer services or services \
                     with externalIPs, not to a {ty} without externalIPs"
                ),
            ));
        }
        Ok(())
    }
}

impl Spec for ServiceSpec {
    const KIND: Kind = Kind::Service;
    type Status = ServiceStatus;

    /// A port's `targetPort` = its `port`; `sessionAffinityTimeoutSeconds` = 10800 with
    /// `ClientIP` affinity.
    fn apply_defaults(&mut self) {
        for p in &mut self.ports {
            p.target_port.get_or_insert(p.port);
        }
        if self.session_affinity == SessionAffinity::ClientIp {
            self.session_affinity_timeout_seconds
                .get_or_insert(DEFAULT_SESSION_AFFINITY_TIMEOUT);
        }
    }

    fn validate(&self, status: &ServiceStatus) -> Result<(), ValidationError> {
        self.validate_spec().map_err(|e| e.under("spec"))?;
        if let Some(ip) = status.load_balancer_ip {
            check_unicast(ip).map_err(|m| ValidationError::new("status.loadBalancerIP", m))?;
        }
        Ok(())
    }
}

impl Service {
    /// Whether it can be entered from outside the cluster at every node: node ports,
    /// external IPs or a load-balancer address.
    pub fn is_entry(&self) -> bool {
        self.spec.type_.has_node_ports()
            || !self.spec.external_ips.is_empty()
            || self.status.load_balancer_ip.is_some()
    }

    /// See [`ServiceSpec::validate_node_ports`].
    pub fn validate_node_ports(&self, range: &RangeInclusive<u16>) -> Result<(), ValidationError> {
        self.spec.validate_node_ports(range)
    }

    /// Whether `ep` backs this Service (ready or not): the same namespace, and every
    /// label of a non-empty selector on the Endpoint. A Service without a selector
    /// selects nothing.
    pub fn selects(&self, ep: &Endpoint) -> bool {
        !self.spec.selector.is_empty()
            && ep.metadata.namespace == self.metadata.namespace
            && self
                .spec
                .selector
                .iter()
                .all(|(k, v)| ep.metadata.labels.get(k) == Some(v))
    }

    /// What a node must have programmed (its `status.programmed`,
    /// [`Node::has_programmed`](super::Node::has_programmed)) to serve this Service as it
    /// stands: the Service's `resourceVersion`, and the highest of the Endpoints of
    /// `endpoints` it selects (0 when none). A missing resourceVersion counts as 0. (An
    /// Endpoint deleted since is not in the list, so its removal is not covered.)
    pub fn programmed_revisions<'a>(
        &self,
        endpoints: impl IntoIterator<Item = &'a Endpoint>,
    ) -> ProgrammedRevisions {
        ProgrammedRevisions {
            services: self.metadata.revision().unwrap_or(0),
            endpoints: endpoints
                .into_iter()
                .filter(|e| self.selects(e))
                .map(|e| e.metadata.revision().unwrap_or(0))
                .max()
                .unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::ObjectMeta;

    fn svc(spec: ServiceSpec) -> Service {
        Service::new(ObjectMeta::namespaced("default", "web"), spec)
    }

    fn basic() -> ServiceSpec {
        ServiceSpec {
            selector: [("app".to_string(), "web".to_string())].into(),
            ports: vec![ServicePort::tcp(80)],
            ..Default::default()
        }
    }

    fn two_ports() -> ServiceSpec {
        ServiceSpec {
            ports: vec![
                ServicePort {
                    name: Some("http".into()),
                    ..ServicePort::tcp(80)
                },
                ServicePort {
                    name: Some("https".into()),
                    target_port: Some(8443),
                    ..ServicePort::tcp(443)
                },
            ],
            ..basic()
        }
    }

    fn endpoint(ns: &str, name: &str, app: &str, rv: u64) -> Endpoint {
        let mut meta = ObjectMeta::namespaced(ns, name);
        meta.labels.insert("app".into(), app.into());
        meta.set_revision(rv);
        Endpoint::new(
            meta,
            crate::objects::EndpointSpec {
                container_id: name.into(),
                ifname: "eth0".into(),
                network: "pods".into(),
                node: "n1".into(),
                ip: "10.244.1.2".parse().unwrap(),
                mac: None,
                ready: false,
                pod_name: None,
            },
        )
    }

    #[test]
    fn selected_endpoints_and_the_revision_to_program() {
        let mut s = svc(basic());
        s.metadata.set_revision(10);
        let eps = [
            endpoint("default", "a", "web", 7),
            endpoint("default", "b", "web", 12),
            endpoint("default", "c", "db", 30),
            endpoint("other", "d", "web", 40),
        ];
        let picked: Vec<&str> = eps
            .iter()
            .filter(|e| s.selects(e))
            .map(|e| e.name())
            .collect();
        assert_eq!(
            picked,
            ["a", "b"],
            "same namespace, matching labels, ready or not"
        );
        let want = |services, endpoints| ProgrammedRevisions {
            services,
            endpoints,
        };
        assert_eq!(s.programmed_revisions(&eps), want(10, 12));
        assert_eq!(s.programmed_revisions(&eps[..1]), want(10, 7));
        s.spec.selector.clear();
        assert!(!s.selects(&eps[0]), "no selector, no endpoints");
        assert_eq!(s.programmed_revisions(&eps), want(10, 0));
    }

    #[track_caller]
    fn assert_err(spec: ServiceSpec, field: &str, fragment: &str) {
        let e = svc(spec).validate().expect_err("should not validate");
        assert_eq!(e.field, field, "{e}");
        assert!(e.message.contains(fragment), "{e:?} lacks {fragment:?}");
    }

    #[test]
    fn valid_services() {
        svc(basic()).validate().unwrap();
        svc(two_ports()).validate().unwrap();
        let mut lb = two_ports();
        lb.type_ = ServiceType::LoadBalancer;
        lb.ports[0].node_port = Some(30080);
        lb.load_balancer_ip = Some("192.168.50.100".parse().unwrap());
        lb.external_traffic_policy = ExternalTrafficPolicy::Local;
        lb.session_affinity = SessionAffinity::ClientIp;
        lb.session_affinity_timeout_seconds = Some(MAX_SESSION_AFFINITY_TIMEOUT);
        lb.cluster_ip = Some("10.96.0.10".into());
        lb.external_ips = vec!["192.168.50.7".parse().unwrap()];
        svc(lb).validate().unwrap();
        // Headless without ports.
        svc(ServiceSpec {
            cluster_ip: Some("None".into()),
            ports: vec![],
            ..basic()
        })
        .validate()
        .unwrap();
        // ExternalName with neither ports nor selector (trailing dot allowed).
        svc(ServiceSpec {
            type_: ServiceType::ExternalName,
            external_name: Some("db.example.com.".into()),
            ..Default::default()
        })
        .validate()
        .unwrap();
        // Same port number, different protocols.
        let mut dns = two_ports();
        dns.ports[1].port = 80;
        dns.ports[1].protocol = Protocol::Udp;
        svc(dns).validate().unwrap();
    }

    #[test]
    fn port_rules() {
        assert_err(
            ServiceSpec {
                ports: vec![],
                ..basic()
            },
            "spec.ports",
            "at least one port",
        );
        assert_err(
            ServiceSpec {
                ports: vec![ServicePort::tcp(0)],
                ..basic()
            },
            "spec.ports[0].port",
            "between 1 and 65535",
        );
        let mut s = basic();
        s.ports[0].target_port = Some(0);
        assert_err(s, "spec.ports[0].targetPort", "between 1 and 65535");

        let mut s = two_ports();
        s.ports[1].name = None;
        assert_err(s, "spec.ports[1].name", "more than one port");
        let mut s = two_ports();
        s.ports[1].name = Some("http".into());
        assert_err(
            s,
            "spec.ports[1].name",
            r#"duplicate port name "http" (also spec.ports[0])"#,
        );
        let mut s = two_ports();
        s.ports[0].name = Some("HTTP".into());
        assert_err(s, "spec.ports[0].name", "uppercase");
        let mut s = two_ports();
        s.ports[1].port = 80;
        assert_err(
            s,
            "spec.ports[1].port",
            "duplicate port 80/TCP (also spec.ports[0])",
        );
    }

    #[test]
    fn node_port_rules() {
        let mut s = two_ports();
        s.ports[1].node_port = Some(30443);
        assert_err(
            s.clone(),
            "spec.ports[1].nodePort",
            "only be set for type NodePort or LoadBalancer, not ClusterIP",
        );
        s.type_ = ServiceType::NodePort;
        svc(s.clone()).validate().unwrap();
        s.ports[0].node_port = Some(30443);
        assert_err(
            s.clone(),
            "spec.ports[1].nodePort",
            "duplicate node port 30443/TCP",
        );
        s.ports[0].node_port = Some(0);
        assert_err(s.clone(), "spec.ports[0].nodePort", "leave it out");
        s.ports[0].node_port = Some(80);
        svc(s.clone()).validate().unwrap();
        let e = svc(s.clone())
            .validate_node_ports(&DEFAULT_NODE_PORT_RANGE)
            .unwrap_err();
        assert_eq!(e.field, "spec.ports[0].nodePort");
        assert_eq!(
            e.to_string(),
            "spec.ports[0].nodePort: 80 is outside the NodePort range 30000-32767"
        );
        s.validate_node_ports(&(1..=65535)).unwrap();
        s.ports[0].node_port = None;
        s.validate_node_ports(&DEFAULT_NODE_PORT_RANGE).unwrap();
        s.ports[1].node_port = Some(40000);
        let e = s.validate_node_ports(&(30000..=39999)).unwrap_err();
        assert_eq!(e.field, "spec.ports[1].nodePort");
        assert!(e.message.contains("30000-39999"), "{e}");
    }

    #[test]
    fn cluster_ip_rules() {
        let with = |ip: &str| ServiceSpec {
            cluster_ip: Some(ip.into()),
            ..basic()
        };
        svc(with("10.96.0.1")).validate().unwrap();
        assert_err(
            with("10.96.0"),
            "spec.clusterIP",
            "neither an IPv4 address nor \"None\"",
        );
        assert_err(with(""), "spec.clusterIP", "leave it out");
        assert_err(with("none"), "spec.clusterIP", "neither");
        assert_err(with("0.0.0.0"), "spec.clusterIP", "unspecified");
        let mut s = with("None");
        s.type_ = ServiceType::NodePort;
        assert_err(
            s,
            "spec.clusterIP",
            "headless) is only allowed for type ClusterIP, not NodePort",
        );
    }

    #[test]
    fn external_name_rules() {
        let ext = ServiceSpec {
            type_: ServiceType::ExternalName,
            ..Default::default()
        };
        assert_err(
            ext.clone(),
            "spec.externalName",
            "is required for type ExternalName",
        );
        let mut s = ext.clone();
        s.external_name = Some("Bad_Name".into());
        assert_err(s, "spec.externalName", "not a DNS-1123 subdomain");
        let mut s = ext.clone();
        s.external_name = Some("db.example.com".into());
        s.cluster_ip = Some("10.96.0.3".into());
        assert_err(s, "spec.clusterIP", "must not be set for type ExternalName");
        let mut s = basic();
        s.external_name = Some("db.example.com".into());
        assert_err(
            s,
            "spec.externalName",
            "only used by type ExternalName, not ClusterIP",
        );
    }

    #[test]
    fn address_and_policy_rules() {
        let mut s = basic();
        s.external_ips = vec![
            "192.168.50.7".parse().unwrap(),
            "192.168.50.7".parse().unwrap(),
        ];
        assert_err(
            s.clone(),
            "spec.externalIPs[1]",
            "duplicate address 192.168.50.7",
        );
        s.external_ips = vec!["224.1.1.1".parse().unwrap()];
        assert_err(s, "spec.externalIPs[0]", "multicast");

        let mut s = basic();
        s.load_balancer_ip = Some("192.168.50.100".parse().unwrap());
        assert_err(
            s.clone(),
            "spec.loadBalancerIP",
            "only be set for type LoadBalancer",
        );
        s.type_ = ServiceType::LoadBalancer;
        s.load_balancer_ip = Some(Ipv4Addr::BROADCAST);
        assert_err(s, "spec.loadBalancerIP", "broadcast");

        let mut s = basic();
        s.session_affinity_timeout_seconds = Some(60);
        assert_err(
            s.clone(),
            "spec.sessionAffinityTimeoutSeconds",
            "only be set when sessionAffinity is ClientIP",
        );
        s.session_affinity = SessionAffinity::ClientIp;
        svc(s.clone()).validate().unwrap();
        s.session_affinity_timeout_seconds = Some(86_401);
        assert_err(
            s.clone(),
            "spec.sessionAffinityTimeoutSeconds",
            "between 1 and 86400, got 86401",
        );
        s.session_affinity_timeout_seconds = Some(0);
        assert_err(s, "spec.sessionAffinityTimeoutSeconds", "got 0");

        let mut s = basic();
        s.external_traffic_policy = ExternalTrafficPolicy::Local;
        assert_err(
            s.clone(),
            "spec.externalTrafficPolicy",
            "Local only applies",
        );
        s.external_ips = vec!["192.168.50.7".parse().unwrap()];
        svc(s).validate().unwrap();

        let mut s = basic();
        s.selector.insert("app/".into(), "x".into());
        assert_err(s, r#"spec.selector["app/"]"#, "name part must not be empty");

        let mut bad = svc(basic());
        bad.status.load_balancer_ip = Some(Ipv4Addr::UNSPECIFIED);
        let e = bad.validate().unwrap_err();
        assert_eq!(e.field, "status.loadBalancerIP");
    }

    #[test]
    fn helpers() {
        let mut s = basic();
        assert!(s.needs_cluster_ip());
        assert!(!s.is_headless());
        assert_eq!(s.affinity_timeout(), None);
        s.session_affinity = SessionAffinity::ClientIp;
        assert_eq!(s.affinity_timeout(), Some(DEFAULT_SESSION_AFFINITY_TIMEOUT));
        s.cluster_ip = Some("10.96.0.1".into());
        assert_eq!(s.cluster_ipv4(), Some(Ipv4Addr::new(10, 96, 0, 1)));
        assert!(!s.needs_cluster_ip());
        s.cluster_ip = Some("None".into());
        assert!(s.is_headless());
        assert_eq!(s.cluster_ipv4(), None);
        assert_eq!(ServicePort::tcp(80).target_port(), 80);
        let ext = ServiceSpec {
            type_: ServiceType::ExternalName,
            ..Default::default()
        };
        assert!(!ext.needs_cluster_ip());
    }
}
