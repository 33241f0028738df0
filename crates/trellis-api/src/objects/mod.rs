//! The cluster API objects: `apiVersion: trellis/v1`, Kubernetes-style manifests
//! (`apiVersion`, `kind`, `metadata`, `spec`, `status`), their parsing and validation.
//!
//! | kind | type | scope | plural | spec / status |
//! |---|---|---|---|---|
//! | `Network` | [`Network`] | cluster | `networks` | [`NetworkSpec`] / [`NetworkStatus`] |
//! | `Node` | [`Node`] | cluster | `nodes` | [`NodeSpec`] / [`NodeStatus`] |
//! | `Pod` | [`Pod`] | namespaced | `pods` | [`PodSpec`] (empty, may be left out) / [`NoStatus`] |
//! | `Endpoint` | [`Endpoint`] | namespaced | `endpoints` | [`EndpointSpec`] / [`NoStatus`] |
//! | `Service` | [`Service`] | namespaced | `services` | [`ServiceSpec`] / [`ServiceStatus`] |
//! | `LoadBalancerPool` | [`LoadBalancerPool`] | cluster | `loadbalancerpools` | [`LoadBalancerPoolSpec`] / [`NoStatus`] |
//! | `Namespace` | [`Namespace`] | cluster | `namespaces` | [`NamespaceSpec`] (may be left out) / [`NoStatus`] |
//! | `NetworkPolicy` | [`NetworkPolicy`] | namespaced | `networkpolicies` | [`NetworkPolicySpec`] / [`NoStatus`] |
//! | `ClusterNetworkPolicy` | [`ClusterNetworkPolicy`] | cluster | `clusternetworkpolicies` | [`ClusterNetworkPolicySpec`] / [`NoStatus`] |
//! | `Tenant` | [`Tenant`] | cluster | `tenants` | [`TenantSpec`] (may be left out) / [`NoStatus`] |
//! | `TenantPeering` | [`TenantPeering`] | cluster | `tenantpeerings` | [`TenantPeeringSpec`] / [`NoStatus`] |
//! | `BGPConfiguration` | [`BgpConfiguration`] | cluster | `bgpconfigurations` | [`BgpConfigurationSpec`] / [`NoStatus`] |
//! | `BGPPeer` | [`BgpPeer`] | cluster | `bgppeers` | [`BgpPeerSpec`] / [`NoStatus`] |
//! | `BGPFilter` | [`BgpFilter`] | cluster | `bgpfilters` | [`BgpFilterSpec`] / [`NoStatus`] |
//! | `Secret` | [`Secret`] | namespaced | `secrets` | [`SecretSpec`] / [`NoStatus`] |
//! | `Ingress` | [`Ingress`] | namespaced | `ingresses` | [`IngressSpec`] / [`IngressStatus`] |
//! | `HTTPRoute` | [`HttpRoute`] | namespaced | `httproutes` | [`HttpRouteSpec`] / [`HttpRouteStatus`] |
//!
//! Besides `trellis/v1`, Kubernetes manifests are accepted as they are: `apiVersion:
//! networking.k8s.io/v1` for NetworkPolicy and Ingress, `gateway.networking.k8s.io/v1` for HTTPRoute, `v1` for Namespace, Pod and Secret, and
//! Calico's `projectcalico.org/v3` for the BGP kinds ([`Kind::foreign_api_version`]);
//! objects are always written back as `trellis/v1`.
//!
//! Every kind is an [`Object<S>`] over its spec type; [`AnyObject`] holds any of them, for
//! code (the server, `trellis apply`) that reads manifests of every kind.
//!
//! Three steps, kept apart so a server can fill in what a request leaves out in between:
//!
//! 1. **Parse** ([`parse_json`], [`parse_yaml`], or `serde` on a typed [`Object`]): the
//!    structure. JSON field names are camelCase and an unknown field anywhere is an error
//!    naming its path (`spec.cidrr: unknown field ...`). Field defaults are applied here
//!    (`nodeSubnetPrefix: 24`, `backend: vxlan`, a port's `targetPort` = its `port`, ...).
//!    The namespace is *not* defaulted: the server takes it from the request path, the CLI
//!    from `-n` or [`DEFAULT_NAMESPACE`], through [`AnyObject::default_namespace`].
//! 2. **Fill** server-set fields: `metadata.resourceVersion` (the store's mod revision,
//!    [`ObjectMeta::set_revision`]), `metadata.creationTimestamp`
//!    ([`ObjectMeta::set_creation_time`]), allocations (a Network's VNI, a Service's
//!    clusterIP).
//! 3. **Validate** ([`AnyObject::validate`] / [`Object::validate`]): the rules of one
//!    object. Rules between objects are the server's, with helpers here:
//!    [`networks_overlap`] / [`Network::check_overlap`], and
//!    [`ServiceSpec::validate_node_ports`] with the server's NodePort range
//!    ([`DEFAULT_NODE_PORT_RANGE`] unless configured).
//!
//! Every error is a [`ValidationError`] `{field, message}`, displayed `field: message`.
//! Serializing ([`AnyObject::to_json`], or `serde` on any object) always writes
//! `apiVersion` and `kind`; `status` is left out while it equals its default.

mod bgp;
mod calico_selector;
mod cnp;
mod endpoint;
mod error;
mod httproute;
mod ingress;
mod lbpool;
mod meta;
mod namespace;
mod netpol;
mod network;
mod node;
mod pod;
mod secret;
mod selector;
mod service;
mod tenant;

use std::fmt;
use std::str::FromStr;

use serde::de::{DeserializeOwned, Error as _};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use bgp::{
    parse_go_duration, parse_peer_ip, AsNumber, BgpConfiguration, BgpConfigurationSpec, BgpFilter,
    BgpFilterRule, BgpFilterSpec, BgpPassword, BgpPeer, BgpPeerSpec, CidrEntry, CommunityValue,
    FilterAction, GoDuration, MatchOperator, NamedCommunity, PrefixAdvertisement, SecretKeyRef,
    BGP_SECRET_NAMESPACE, DEFAULT_AS_NUMBER, DEFAULT_MAX_RESTART_TIME,
};
pub use calico_selector::CalicoSelector;
pub use cnp::{
    ClusterNetworkPolicy, ClusterNetworkPolicySpec, CnpAction, CnpPeer, CnpPort, CnpPortNumber,
    CnpPortRange, CnpRule, NamespacedPods, Subject, Tier, MAX_CNP_PRIORITY, MAX_CNP_RULES,
};
pub use endpoint::{Endpoint, EndpointSpec, ENDPOINT_NETWORK_LABEL, ENDPOINT_NODE_LABEL};
pub use error::ValidationError;
pub use httproute::{
    FilterType, HeaderModifier, HttpBackendRef, HttpHeader, HttpHeaderMatch, HttpMethod,
    HttpPathMatch, HttpPathModifier, HttpRoute, HttpRouteFilter, HttpRouteMatch, HttpRouteRetry,
    HttpRouteRule, HttpRouteSpec, HttpRouteStatus, HttpRouteTimeouts, ParentReference,
    PathMatchType, PathModifierType, RequestRedirect, SessionPersistence, UrlRewrite,
    ValueMatchType, MAX_WEIGHT,
};
pub use ingress::{
    validate_host, validate_path, HttpIngressPath, HttpIngressRuleValue, Ingress, IngressBackend,
    IngressHostRule, IngressLoadBalancerIngress, IngressLoadBalancerStatus, IngressServiceBackend,
    IngressSpec, IngressStatus, IngressTls, PathType, ServiceBackendPort, RATE_LIMIT_ANNOTATION,
    SSL_REDIRECT_ANNOTATION, TLS_SECRET_TYPE,
};
pub use lbpool::{LoadBalancerPool, LoadBalancerPoolSpec};
pub use meta::{
    format_rfc3339, parse_rfc3339, validate_dns1123_label, validate_dns1123_subdomain,
    validate_label_key, validate_label_value, validate_labels, validate_mac, NameRule, ObjectMeta,
    DNS1123_LABEL_MAX, DNS1123_SUBDOMAIN_MAX, LABEL_VALUE_MAX,
};
pub use namespace::{namespace_labels, Namespace, NamespaceSpec, NAMESPACE_NAME_LABEL};
pub use netpol::{
    validate_port_name, EgressRule, IngressRule, IpBlock, NetworkPolicy, NetworkPolicySpec, Peer,
    PolicyPort, PolicyProtocol, PolicyType, PortRef,
};
pub use network::{
    networks_overlap, Backend, Network, NetworkSpec, NetworkStatus, DEFAULT_NODE_SUBNET_PREFIX,
    MAX_NODE_SUBNET_PREFIX, MTU_RANGE, VNI_RANGE,
};
pub use node::{BgpSession, Node, NodeBgp, NodeSpec, NodeStatus, ProgrammedRevisions, SubnetLease};
pub use pod::{ContainerPort, Pod, PodSpec};
pub use secret::{Secret, SecretSpec};
pub use selector::{LabelSelector, SelectorOperator, SelectorRequirement};
pub use service::{
    ExternalTrafficPolicy, Protocol, Service, ServicePort, ServiceSpec, ServiceStatus, ServiceType,
    SessionAffinity, CLUSTER_IP_NONE, DEFAULT_NODE_PORT_RANGE, DEFAULT_SESSION_AFFINITY_TIMEOUT,
    MAX_SESSION_AFFINITY_TIMEOUT,
};
pub use tenant::{
    peering_conflict, peers_of, Tenant, TenantPeering, TenantPeeringSpec, TenantSpec,
    MIN_SERVICE_CIDR_PREFIX,
};

/// The only `apiVersion` this build speaks.
pub const API_VERSION: &str = "trellis/v1";

/// The namespace of a namespaced object whose manifest names none (when the client does
/// not say otherwise).
pub const DEFAULT_NAMESPACE: &str = "default";

/// The kinds of object, as written in `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// [`Network`]: a pod address range and how nodes connect it. Cluster-scoped.
    Network,
    /// [`Node`]: one host running an agent. Cluster-scoped.
    Node,
    /// [`Pod`]: a declared pod (namespace/name + labels). Namespaced.
    Pod,
    /// [`Endpoint`]: one pod attachment, published by the agent. Namespaced.
    Endpoint,
    /// [`Service`]: a stable address for a set of pods. Namespaced.
    Service,
    /// [`LoadBalancerPool`]: addresses for `LoadBalancer` Services. Cluster-scoped.
    LoadBalancerPool,
    /// [`Namespace`]: a namespace's labels. Cluster-scoped.
    Namespace,
    /// [`NetworkPolicy`]: what a namespace's pods accept and send. Namespaced.
    NetworkPolicy,
    /// [`ClusterNetworkPolicy`]: the administrator's tiers of policy. Cluster-scoped.
    ClusterNetworkPolicy,
    /// [`Tenant`]: an isolated world of networks, namespaces and services. Cluster-scoped.
    Tenant,
    /// [`TenantPeering`]: two tenants that reach each other. Cluster-scoped.
    TenantPeering,
    /// [`BgpConfiguration`]: the cluster's BGP settings. Cluster-scoped.
    BgpConfiguration,
    /// [`BgpPeer`]: BGP sessions to set up. Cluster-scoped.
    BgpPeer,
    /// [`BgpFilter`]: prefix rules for BGP peers. Cluster-scoped.
    BgpFilter,
    /// [`Secret`]: secret values (BGP passwords, TLS certificates). Namespaced.
    Secret,
    /// [`Ingress`]: HTTP(S) routes to Services (Kubernetes semantics). Namespaced.
    Ingress,
    /// [`HttpRoute`]: HTTP routes shaped like the Gateway API's. Namespaced.
    HttpRoute,
}

impl Kind {
    /// Every kind, in the order error messages list them.
    pub const ALL: [Kind; 17] = [
        Kind::Network,
        Kind::Node,
        Kind::Pod,
        Kind::Endpoint,
        Kind::Service,
        Kind::LoadBalancerPool,
        Kind::Namespace,
        Kind::NetworkPolicy,
        Kind::ClusterNetworkPolicy,
        Kind::Tenant,
        Kind::TenantPeering,
        Kind::BgpConfiguration,
        Kind::BgpPeer,
        Kind::BgpFilter,
        Kind::Secret,
        Kind::Ingress,
        Kind::HttpRoute,
    ];

    /// The name written in `kind`: `Network`, `Node`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Network => "Network",
            Kind::Node => "Node",
            Kind::Pod => "Pod",
            Kind::Endpoint => "Endpoint",
            Kind::Service => "Service",
            Kind::LoadBalancerPool => "LoadBalancerPool",
            Kind::Namespace => "Namespace",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::ClusterNetworkPolicy => "ClusterNetworkPolicy",
            Kind::Tenant => "Tenant",
            Kind::TenantPeering => "TenantPeering",
            Kind::BgpConfiguration => "BGPConfiguration",
            Kind::BgpPeer => "BGPPeer",
            Kind::BgpFilter => "BGPFilter",
            Kind::Secret => "Secret",
            Kind::Ingress => "Ingress",
            Kind::HttpRoute => "HTTPRoute",
        }
    }

    /// The plural used in API paths: `networks`, `nodes`, `pods`, `endpoints`, `services`.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Network => "networks",
            Kind::Node => "nodes",
            Kind::Pod => "pods",
            Kind::Endpoint => "endpoints",
            Kind::Service => "services",
            Kind::LoadBalancerPool => "loadbalancerpools",
            Kind::Namespace => "namespaces",
            Kind::NetworkPolicy => "networkpolicies",
            Kind::ClusterNetworkPolicy => "clusternetworkpolicies",
            Kind::Tenant => "tenants",
            Kind::TenantPeering => "tenantpeerings",
            Kind::BgpConfiguration => "bgpconfigurations",
            Kind::BgpPeer => "bgppeers",
            Kind::BgpFilter => "bgpfilters",
            Kind::Secret => "secrets",
            Kind::Ingress => "ingresses",
            Kind::HttpRoute => "httproutes",
        }
    }

    /// The short name the CLI accepts besides the plural and the singular (`svc`,
    /// `netpol`, `cnp`, `ns`, ...).
    pub fn short_name(self) -> Option<&'static str> {
        match self {
            Kind::Network => Some("net"),
            Kind::Node => Some("no"),
            Kind::Pod => Some("po"),
            Kind::Endpoint => Some("ep"),
            Kind::Service => Some("svc"),
            Kind::LoadBalancerPool => Some("lbpool"),
            Kind::Namespace => Some("ns"),
            Kind::NetworkPolicy => Some("netpol"),
            Kind::ClusterNetworkPolicy => Some("cnp"),
            Kind::Tenant => Some("tn"),
            Kind::TenantPeering => Some("peering"),
            Kind::BgpConfiguration => Some("bgpconfig"),
            Kind::BgpPeer => None,
            Kind::BgpFilter => None,
            Kind::Secret => None,
            Kind::Ingress => Some("ing"),
            Kind::HttpRoute => None,
        }
    }

    /// The Kubernetes `apiVersion` whose manifests of this kind are accepted as they
    /// are, besides [`API_VERSION`]: `networking.k8s.io/v1` (NetworkPolicy), `v1`
    /// (Namespace, Pod).
    pub fn foreign_api_version(self) -> Option<&'static str> {
        match self {
            Kind::NetworkPolicy | Kind::Ingress => Some("networking.k8s.io/v1"),
            Kind::HttpRoute => Some("gateway.networking.k8s.io/v1"),
            Kind::Namespace | Kind::Pod | Kind::Secret => Some("v1"),
            Kind::BgpConfiguration | Kind::BgpPeer | Kind::BgpFilter => {
                Some("projectcalico.org/v3")
            }
            _ => None,
        }
    }

    /// The kind whose plural is `plural`.
    pub fn from_plural(plural: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.plural() == plural)
    }

    /// Whether objects of this kind live in a namespace (Pod, Endpoint, Service) or are
    /// cluster-scoped (Network, Node).
    pub fn namespaced(self) -> bool {
        matches!(
            self,
            Kind::Pod
                | Kind::Endpoint
                | Kind::Service
                | Kind::NetworkPolicy
                | Kind::Secret
                | Kind::Ingress
                | Kind::HttpRoute
        )
    }

    /// The form `metadata.name` must have: a DNS-1123 subdomain (≤ 253 characters, dots
    /// allowed) for a Node, whose name is usually its host name; a DNS-1123 label
    /// (≤ 63 characters) for every other kind.
    pub fn name_rule(self) -> NameRule {
        match self {
            Kind::Node => NameRule::Subdomain,
            _ => NameRule::Label,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = ValidationError;

    /// Parse a `kind` value; the error is `kind: unknown kind "Foo", expected one of ...`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                let all: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
                ValidationError::new(
                    "kind",
                    format!("unknown kind {s:?}, expected one of {}", all.join(", ")),
                )
            })
    }
}

impl Serialize for Kind {
    fn serialize<Ser: Serializer>(&self, s: Ser) -> Result<Ser::Ok, Ser::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|e: ValidationError| D::Error::custom(e.message))
    }
}

/// What ties a spec type to its kind: implemented by [`NetworkSpec`], [`NodeSpec`],
/// [`PodSpec`], [`EndpointSpec`] and [`ServiceSpec`].
pub trait Spec:
    Serialize + DeserializeOwned + Clone + fmt::Debug + PartialEq + Send + Sync + 'static
{
    /// The kind whose `spec` this is.
    const KIND: Kind;
    /// The kind's `status` type (defaults when a manifest has none).
    type Status: Serialize
        + DeserializeOwned
        + Default
        + Clone
        + fmt::Debug
        + PartialEq
        + Send
        + Sync
        + 'static;

    /// The spec of a manifest that leaves `spec` out, for kinds where that is allowed
    /// (Pod); `None` makes `spec` required.
    fn spec_when_absent() -> Option<Self> {
        None
    }

    /// Fill defaults that depend on other fields (run at every deserialization).
    fn apply_defaults(&mut self) {}

    /// The kind's own rules for `spec` and `status`; error fields start with `spec.` or
    /// `status.`.
    fn validate(&self, status: &Self::Status) -> Result<(), ValidationError>;
}

/// One object of the kind `S::KIND`: `{apiVersion, kind, metadata, spec, status}`.
///
/// `apiVersion` and `kind` are not stored: serialization writes them, deserialization
/// checks them (after the other fields parse: a manifest of another kind may fail on a
/// field first; [`parse_json`] / [`AnyObject::from_value`] check `kind` first).
#[derive(Debug, Clone, PartialEq)]
pub struct Object<S: Spec> {
    /// Name, namespace, labels and the server-set fields.
    pub metadata: ObjectMeta,
    /// What the user (or agent) wants.
    pub spec: S,
    /// What the system reports (server- or agent-set).
    pub status: S::Status,
}

impl<S: Spec> Object<S> {
    /// An object with a default status.
    pub fn new(metadata: ObjectMeta, spec: S) -> Self {
        Object {
            metadata,
            spec,
            status: S::Status::default(),
        }
    }

    /// `S::KIND`.
    pub fn kind(&self) -> Kind {
        S::KIND
    }

    /// `metadata.name`.
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// `metadata.namespace` (`None` for cluster-scoped kinds).
    pub fn namespace(&self) -> Option<&str> {
        self.metadata.namespace.as_deref()
    }

    /// For a namespaced kind, set `metadata.namespace` to `namespace` when it is absent;
    /// cluster-scoped kinds are left alone. A present namespace is never changed: a server
    /// taking the namespace from the request path should compare it.
    pub fn default_namespace(&mut self, namespace: &str) {
        if S::KIND.namespaced() && self.metadata.namespace.is_none() {
            self.metadata.namespace = Some(namespace.to_string());
        }
    }

    /// Check the object: metadata (name form, namespace presence, labels, server-set
    /// fields' form), then the kind's spec and status rules. Returns the first error.
    pub fn validate(&self) -> Result<(), ValidationError> {
        self.metadata.validate(S::KIND)?;
        self.spec.validate(&self.status)
    }

    /// The JSON encoding, with `apiVersion` and `kind`.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("objects serialize to JSON")
    }
}

impl<S: Spec> Serialize for Object<S> {
    fn serialize<Ser: Serializer>(&self, s: Ser) -> Result<Ser::Ok, Ser::Error> {
        let with_status = self.status != S::Status::default();
        let mut st = s.serialize_struct("Object", 4 + usize::from(with_status))?;
        st.serialize_field("apiVersion", API_VERSION)?;
        st.serialize_field("kind", S::KIND.as_str())?;
        st.serialize_field("metadata", &self.metadata)?;
        st.serialize_field("spec", &self.spec)?;
        if with_status {
            st.serialize_field("status", &self.status)?;
        } else {
            st.skip_field("status")?;
        }
        st.end()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", bound = "S: Spec")]
struct RawObject<S: Spec> {
    api_version: Option<String>,
    kind: Option<String>,
    #[serde(default)]
    metadata: ObjectMeta,
    #[serde(default)]
    spec: Option<S>,
    #[serde(default)]
    status: Option<S::Status>,
}

impl<'de, S: Spec> Deserialize<'de> for Object<S> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawObject::<S>::deserialize(d)?;
        check_type_meta(
            raw.api_version.as_deref(),
            raw.kind.as_deref(),
            Some(S::KIND),
        )
        .map_err(|e| D::Error::custom(e.to_string()))?;
        let Some(mut spec) = raw.spec.or_else(S::spec_when_absent) else {
            return Err(D::Error::missing_field("spec"));
        };
        spec.apply_defaults();
        Ok(Object {
            metadata: raw.metadata,
            spec,
            status: raw.status.unwrap_or_default(),
        })
    }
}

/// Check `apiVersion` and `kind` (and that `kind` is `expected`, when given).
fn check_type_meta(
    api_version: Option<&str>,
    kind: Option<&str>,
    expected: Option<Kind>,
) -> Result<Kind, ValidationError> {
    let kind: Kind = kind
        .ok_or_else(|| ValidationError::new("kind", "is required"))?
        .parse()?;
    match api_version {
        None => return Err(ValidationError::new("apiVersion", "is required")),
        Some(API_VERSION) => {}
        Some(v) if Some(v) == kind.foreign_api_version() => {}
        Some(v) => {
            let also = kind
                .foreign_api_version()
                .map(|f| format!(" (or {f:?})"))
                .unwrap_or_default();
            return Err(ValidationError::new(
                "apiVersion",
                format!("must be {API_VERSION:?}{also} for {kind}, got {v:?}"),
            ));
        }
    }
    match expected {
        Some(want) if want != kind => Err(ValidationError::new(
            "kind",
            format!("must be {:?}, got {:?}", want.as_str(), kind.as_str()),
        )),
        _ => Ok(kind),
    }
}

/// Any object, for code that reads manifests of every kind.
///
/// Serializes as the object itself; deserializes by dispatching on `kind` (errors carry
/// the field path in their message; [`AnyObject::from_value`] returns them as
/// [`ValidationError`]s).
#[derive(Debug, Clone, PartialEq)]
pub enum AnyObject {
    /// A `Network`.
    Network(Network),
    /// A `Node`.
    Node(Node),
    /// A `Pod`.
    Pod(Pod),
    /// An `Endpoint`.
    Endpoint(Endpoint),
    /// A `Service`.
    Service(Service),
    /// A `LoadBalancerPool`.
    LoadBalancerPool(LoadBalancerPool),
    /// A `Namespace`.
    Namespace(Namespace),
    /// A `NetworkPolicy`.
    NetworkPolicy(NetworkPolicy),
    /// A `ClusterNetworkPolicy`.
    ClusterNetworkPolicy(ClusterNetworkPolicy),
    /// A `Tenant`.
    Tenant(Tenant),
    /// A `TenantPeering`.
    TenantPeering(TenantPeering),
    /// A `BGPConfiguration`.
    BgpConfiguration(BgpConfiguration),
    /// A `BGPPeer`.
    BgpPeer(BgpPeer),
    /// A `BGPFilter`.
    BgpFilter(BgpFilter),
    /// A `Secret`.
    Secret(Secret),
    /// An `Ingress`.
    Ingress(Ingress),
    /// An `HTTPRoute`.
    HttpRoute(HttpRoute),
}

/// Run `$e` with `$o` bound to the typed object inside an [`AnyObject`].
macro_rules! each {
    ($self:expr, $o:ident => $e:expr) => {
        match $self {
            AnyObject::Network($o) => $e,
            AnyObject::Node($o) => $e,
            AnyObject::Pod($o) => $e,
            AnyObject::Endpoint($o) => $e,
            AnyObject::Service($o) => $e,
            AnyObject::LoadBalancerPool($o) => $e,
            AnyObject::Namespace($o) => $e,
            AnyObject::NetworkPolicy($o) => $e,
            AnyObject::ClusterNetworkPolicy($o) => $e,
            AnyObject::Tenant($o) => $e,
            AnyObject::TenantPeering($o) => $e,
            AnyObject::BgpConfiguration($o) => $e,
            AnyObject::BgpPeer($o) => $e,
            AnyObject::BgpFilter($o) => $e,
            AnyObject::Secret($o) => $e,
            AnyObject::Ingress($o) => $e,
            AnyObject::HttpRoute($o) => $e,
        }
    };
}

impl AnyObject {
    /// Decode one object from a JSON value: `kind` first (unknown kind → error on
    /// `kind`), then `apiVersion`, then the typed object with paths in errors
    /// (`spec.ports[0].port: invalid type: ...`). Applies field defaults; does not
    /// validate.
    pub fn from_value(value: serde_json::Value) -> Result<AnyObject, ValidationError> {
        let serde_json::Value::Object(map) = &value else {
            return Err(ValidationError::new(
                "",
                format!("a manifest must be an object, got {}", json_type(&value)),
            ));
        };
        let string_field = |name: &str| -> Result<Option<&str>, ValidationError> {
            match map.get(name) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s)),
                Some(v) => Err(ValidationError::new(
                    name,
                    format!("must be a string, got {}", json_type(v)),
                )),
            }
        };
        let kind = check_type_meta(string_field("apiVersion")?, string_field("kind")?, None)?;
        Ok(match kind {
            Kind::Network => AnyObject::Network(typed(value)?),
            Kind::Node => AnyObject::Node(typed(value)?),
            Kind::Pod => AnyObject::Pod(typed(value)?),
            Kind::Endpoint => AnyObject::Endpoint(typed(value)?),
            Kind::Service => AnyObject::Service(typed(value)?),
            Kind::LoadBalancerPool => AnyObject::LoadBalancerPool(typed(value)?),
            Kind::Namespace => AnyObject::Namespace(typed(value)?),
            Kind::NetworkPolicy => AnyObject::NetworkPolicy(typed(value)?),
            Kind::ClusterNetworkPolicy => AnyObject::ClusterNetworkPolicy(typed(value)?),
            Kind::Tenant => AnyObject::Tenant(typed(value)?),
            Kind::TenantPeering => AnyObject::TenantPeering(typed(value)?),
            Kind::BgpConfiguration => AnyObject::BgpConfiguration(typed(value)?),
            Kind::BgpPeer => AnyObject::BgpPeer(typed(value)?),
            Kind::BgpFilter => AnyObject::BgpFilter(typed(value)?),
            Kind::Secret => {
                let mut value = value;
                secret::lift_kubernetes_fields(&mut value);
                AnyObject::Secret(typed(value)?)
            }
            Kind::Ingress => AnyObject::Ingress(typed(value)?),
            Kind::HttpRoute => AnyObject::HttpRoute(typed(value)?),
        })
    }

    /// The object's kind.
    pub fn kind(&self) -> Kind {
        each!(self, o => o.kind())
    }

    /// `metadata.name`.
    pub fn name(&self) -> &str {
        &self.metadata().name
    }

    /// `metadata.namespace` (`None` for cluster-scoped kinds).
    pub fn namespace(&self) -> Option<&str> {
        self.metadata().namespace.as_deref()
    }

    /// The object's metadata.
    pub fn metadata(&self) -> &ObjectMeta {
        each!(self, o => &o.metadata)
    }

    /// The object's metadata, to set server-set fields.
    pub fn metadata_mut(&mut self) -> &mut ObjectMeta {
        each!(self, o => &mut o.metadata)
    }

    /// See [`Object::default_namespace`].
    pub fn default_namespace(&mut self, namespace: &str) {
        each!(self, o => o.default_namespace(namespace))
    }

    /// See [`Object::validate`].
    pub fn validate(&self) -> Result<(), ValidationError> {
        each!(self, o => o.validate())
    }

    /// The JSON encoding, with `apiVersion` and `kind`.
    pub fn to_json(&self) -> Vec<u8> {
        each!(self, o => o.to_json())
    }

    /// The object as a JSON value, with `apiVersion` and `kind`.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("objects serialize to JSON")
    }
}

impl Serialize for AnyObject {
    fn serialize<Ser: Serializer>(&self, s: Ser) -> Result<Ser::Ok, Ser::Error> {
        each!(self, o => o.serialize(s))
    }
}

impl<'de> Deserialize<'de> for AnyObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        AnyObject::from_value(value).map_err(|e| D::Error::custom(e.to_string()))
    }
}

macro_rules! any_from {
    ($($variant:ident),*) => {$(
        impl From<$variant> for AnyObject {
            fn from(o: $variant) -> Self {
                AnyObject::$variant(o)
            }
        }
    )*};
}
any_from!(
    Network,
    Node,
    Pod,
    Endpoint,
    Service,
    LoadBalancerPool,
    Namespace,
    NetworkPolicy,
    ClusterNetworkPolicy,
    Tenant,
    TenantPeering,
    BgpConfiguration,
    BgpPeer,
    BgpFilter,
    Secret,
    Ingress,
    HttpRoute
);

/// Deserialize a typed object from a JSON value, errors naming the field path.
fn typed<S: Spec>(value: serde_json::Value) -> Result<Object<S>, ValidationError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        ValidationError::new(path, e.into_inner().to_string())
    })
}

fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Parse one JSON manifest (any kind). Field defaults are applied; the object is not
/// validated (call [`AnyObject::validate`] once server-side fields are filled).
pub fn parse_json(bytes: &[u8]) -> Result<AnyObject, ValidationError> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ValidationError::new("", format!("invalid JSON: {e}")))?;
    AnyObject::from_value(value)
}

/// The `---`-separated documents of a YAML input as JSON values (an empty document is
/// `null`), in order; a syntax error is the last item.
pub fn yaml_documents<T: AsRef<[u8]> + ?Sized>(
    input: &T,
) -> Vec<Result<serde_json::Value, String>> {
    let mut docs = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_slice(input.as_ref()) {
        let v = serde_json::Value::deserialize(doc).map_err(|e| e.to_string());
        let stop = v.is_err();
        docs.push(v);
        if stop {
            break;
        }
    }
    docs
}

/// Parse a YAML stream of one or more manifests separated by `---` (empty documents are
/// skipped). Each document goes through the same path as [`parse_json`], so errors are
/// the same; when the stream holds several documents, a message ends with
/// `(YAML document N)`, counting from 1. Takes `&str` or `&[u8]`.
pub fn parse_yaml<T: AsRef<[u8]> + ?Sized>(input: &T) -> Result<Vec<AnyObject>, ValidationError> {
    let mut values = Vec::new();
    for (i, doc) in yaml_documents(input).into_iter().enumerate() {
        let value = doc.map_err(|e| {
            ValidationError::new("", format!("invalid YAML (document {}): {e}", i + 1))
        })?;
        values.push(value);
    }
    let several = values.len() > 1;
    values
        .into_iter()
        .enumerate()
        .filter(|(_, v)| !v.is_null())
        .map(|(i, v)| {
            AnyObject::from_value(v).map_err(|mut e| {
                if several {
                    e.message = format!("{} (YAML document {})", e.message, i + 1);
                }
                e
            })
        })
        .collect()
}

/// Status type of kinds that have none (Pod, Endpoint): always `{}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoStatus {}

#[cfg(test)]
mod tests;
