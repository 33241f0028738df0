//! `Ingress`: HTTP(S) routes from hosts and paths to Services, with the semantics of
//! Kubernetes `networking.k8s.io/v1` (whose manifests are accepted as they are).
//!
//! - A rule's `host` is exact (`foo.example.com`) or a wildcard of exactly one label
//!   (`*.example.com` matches `bar.example.com`, not `example.com` or `a.b.example.com`);
//!   no host matches every host.
//! - `pathType`: `Exact` (the whole path, case-sensitive), `Prefix` (whole path segments:
//!   `/foo` matches `/foo`, `/foo/` and `/foo/bar`, not `/foobar`; a trailing `/` in the
//!   rule is ignored), `ImplementationSpecific` (Trellis: the same as `Prefix`).
//! - A backend is a Service and a port (number or name) in the Ingress's namespace.

use serde::{Deserialize, Serialize};

use super::meta::validate_dns1123_subdomain;
use super::{validate_port_name, Kind, Spec, ValidationError};

/// An `Ingress` object (namespaced, plural `ingresses`).
pub type Ingress = super::Object<IngressSpec>;

/// The Secret type that holds a certificate and its key.
pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";

/// The annotation asking for a per-client rate limit (requests per second) on an
/// Ingress's or HTTPRoute's routes; `nginx.ingress.kubernetes.io/limit-rps` is read too.
pub const RATE_LIMIT_ANNOTATION: &str = "trellis.io/limit-rps";

/// The annotation that turns off the redirect of plain HTTP to HTTPS for an Ingress's
/// TLS hosts (`"false"`); `nginx.ingress.kubernetes.io/ssl-redirect` is read too.
pub const SSL_REDIRECT_ANNOTATION: &str = "trellis.io/ssl-redirect";

/// `spec` of an [`Ingress`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IngressSpec {
    /// The ingress class that serves it; `None`: every `trellis ingress` serves it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_class_name: Option<String>,
    /// Where requests that match no rule go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_backend: Option<IngressBackend>,
    /// Certificates for hosts (served with SNI).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls: Vec<IngressTls>,
    /// Host rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<IngressHostRule>,
}

/// One `spec.tls` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IngressTls {
    /// Hosts the certificate is for (exact or `*.` wildcard).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// A `kubernetes.io/tls` Secret in the Ingress's namespace; `None`: the proxy's
    /// default certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
}

/// One `spec.rules` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IngressHostRule {
    /// The host (exact or `*.` wildcard); `None`: every host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The paths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpIngressRuleValue>,
}

/// `rules[].http`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpIngressRuleValue {
    /// At least one path.
    pub paths: Vec<HttpIngressPath>,
}

/// `rules[].http.paths[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpIngressPath {
    /// The path; must start with `/`. `None`: `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// How `path` matches.
    pub path_type: PathType,
    /// Where matching requests go.
    pub backend: IngressBackend,
}

/// `pathType`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PathType {
    /// The whole path, case-sensitive.
    Exact,
    /// Whole path segments.
    #[default]
    Prefix,
    /// Trellis: as `Prefix`.
    ImplementationSpecific,
}

/// A backend: a Service port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IngressBackend {
    /// The Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<IngressServiceBackend>,
    /// Kubernetes' resource backend: not supported (refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<serde_json::Value>,
}

/// `backend.service`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IngressServiceBackend {
    /// The Service's name, in the Ingress's namespace.
    pub name: String,
    /// Its port.
    pub port: ServiceBackendPort,
}

/// `backend.service.port`: a number or a name, exactly one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceBackendPort {
    /// The Service's port number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<u16>,
    /// The Service's port name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `status` of an [`Ingress`]: where it is served (written by the ingress proxies).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IngressStatus {
    /// The addresses.
    #[serde(default)]
    pub load_balancer: IngressLoadBalancerStatus,
}

/// `status.loadBalancer`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IngressLoadBalancerStatus {
    /// One entry per address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<IngressLoadBalancerIngress>,
}

/// `status.loadBalancer.ingress[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IngressLoadBalancerIngress {
    /// An address the routes are served on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// A host name the routes are served on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

impl Spec for IngressSpec {
    const KIND: Kind = Kind::Ingress;
    type Status = IngressStatus;

    fn validate(&self, _status: &IngressStatus) -> Result<(), ValidationError> {
        if let Some(c) = &self.ingress_class_name {
            validate_dns1123_subdomain(c)
                .map_err(|m| ValidationError::new("spec.ingressClassName", m))?;
        }
        if let Some(b) = &self.default_backend {
            b.validate("spec.defaultBackend")?;
        }
        if self.default_backend.is_none() && self.rules.is_empty() {
            return Err(ValidationError::new(
                "spec",
                "either defaultBackend or rules must be specified",
            ));
        }
        for (i, t) in self.tls.iter().enumerate() {
            for (j, h) in t.hosts.iter().enumerate() {
                validate_host(h)
                    .map_err(|m| ValidationError::new(format!("spec.tls[{i}].hosts[{j}]"), m))?;
            }
            if let Some(s) = &t.secret_name {
                validate_dns1123_subdomain(s)
                    .map_err(|m| ValidationError::new(format!("spec.tls[{i}].secretName"), m))?;
            }
        }
        for (i, r) in self.rules.iter().enumerate() {
            if let Some(h) = &r.host {
                validate_host(h)
                    .map_err(|m| ValidationError::new(format!("spec.rules[{i}].host"), m))?;
            }
            let Some(http) = &r.http else { continue };
            if http.paths.is_empty() {
                return Err(ValidationError::new(
                    format!("spec.rules[{i}].http.paths"),
                    "must have at least one path",
                ));
            }
            for (j, p) in http.paths.iter().enumerate() {
                let field = format!("spec.rules[{i}].http.paths[{j}]");
                if let Some(path) = &p.path {
                    validate_path(path)
                        .map_err(|m| ValidationError::new(format!("{field}.path"), m))?;
                }
                p.backend.validate(&format!("{field}.backend"))?;
            }
        }
        Ok(())
    }
}

impl IngressBackend {
    fn validate(&self, field: &str) -> Result<(), ValidationError> {
        if self.resource.is_some() {
            return Err(ValidationError::new(
                format!("{field}.resource"),
                "resource backends are not supported; name a service",
            ));
        }
        let Some(s) = &self.service else {
            return Err(ValidationError::new(
                format!("{field}.service"),
                "is required",
            ));
        };
        super::meta::validate_dns1123_label(&s.name)
            .map_err(|m| ValidationError::new(format!("{field}.service.name"), m))?;
        let port = format!("{field}.service.port");
        match (&s.port.number, &s.port.name) {
            (Some(0), _) => Err(ValidationError::new(
                format!("{port}.number"),
                "must be between 1 and 65535",
            )),
            (Some(_), Some(_)) => Err(ValidationError::new(
                port,
                "number and name are mutually exclusive",
            )),
            (None, None) => Err(ValidationError::new(port, "a number or a name is required")),
            (None, Some(n)) => {
                validate_port_name(n).map_err(|m| ValidationError::new(format!("{port}.name"), m))
            }
            (Some(_), None) => Ok(()),
        }
    }
}

/// Check an HTTP path of a route: it starts with `/` and holds no whitespace.
pub fn validate_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!(
            "must be an absolute path starting with '/', got {path:?}"
        ));
    }
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("must not contain whitespace, got {path:?}"));
    }
    Ok(())
}

/// Check a route's host: a DNS-1123 subdomain, optionally `*.` followed by one; not an
/// IP address.
pub fn validate_host(host: &str) -> Result<(), String> {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!(
            "must be a DNS name, not an IP address, got {host:?}"
        ));
    }
    let rest = host.strip_prefix("*.").unwrap_or(host);
    if rest.contains('*') {
        return Err(format!(
            "a wildcard must be a whole first label (\"*.example.com\"), got {host:?}"
        ));
    }
    validate_dns1123_subdomain(rest)
}

#[cfg(test)]
mod tests {
    use crate::objects::AnyObject;
    use serde_json::json;

    fn ingress(spec: serde_json::Value) -> Result<AnyObject, crate::objects::ValidationError> {
        let o = AnyObject::from_value(json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "web", "namespace": "default",
                         "annotations": {"nginx.ingress.kubernetes.io/ssl-redirect": "false"}},
            "spec": spec,
        }))?;
        o.validate()?;
        Ok(o)
    }

    #[test]
    fn a_kubernetes_ingress_is_taken_as_it_is() {
        let o = ingress(json!({
            "ingressClassName": "trellis",
            "tls": [{"hosts": ["a.example.com", "*.b.example.com"], "secretName": "certs"}],
            "defaultBackend": {"service": {"name": "fallback", "port": {"name": "http"}}},
            "rules": [{"host": "a.example.com", "http": {"paths": [
                {"path": "/api", "pathType": "Prefix",
                 "backend": {"service": {"name": "api", "port": {"number": 80}}}},
                {"path": "/", "pathType": "ImplementationSpecific",
                 "backend": {"service": {"name": "web", "port": {"number": 8080}}}}
            ]}}]
        }))
        .unwrap();
        let AnyObject::Ingress(i) = o else { panic!() };
        assert_eq!(i.spec.rules[0].http.as_ref().unwrap().paths.len(), 2);
    }

    #[test]
    fn bad_ingresses_name_the_field() {
        let backend = json!({"service": {"name": "api", "port": {"number": 80}}});
        let cases = [
            (
                json!({"rules": [{"http": {"paths": [{"path": "/", "pathType": "Regex", "backend": backend}]}}]}),
                "spec.rules[0].http.paths[0].pathType",
            ),
            (
                json!({"rules": [{"http": {"paths": [{"path": "api", "pathType": "Prefix", "backend": backend}]}}]}),
                "spec.rules[0].http.paths[0].path",
            ),
            (
                json!({"rules": [{"host": "10.0.0.1", "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": backend}]}}]}),
                "spec.rules[0].host",
            ),
            (
                json!({"rules": [{"host": "a.*.com", "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": backend}]}}]}),
                "spec.rules[0].host",
            ),
            (
                json!({"defaultBackend": {"service": {"name": "x", "port": {}}}}),
                "spec.defaultBackend.service.port",
            ),
            (json!({}), "spec"),
            (
                json!({"defaultBackend": backend, "tls": [{"hosts": ["*"]}]}),
                "spec.tls[0].hosts[0]",
            ),
        ];
        for (spec, field) in cases {
            let e = ingress(spec.clone()).unwrap_err();
            assert!(e.field.starts_with(field), "{spec}: {e}");
        }
    }
}
