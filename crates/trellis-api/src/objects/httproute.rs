//! `HTTPRoute`: HTTP routing shaped like the Gateway API's (`gateway.networking.k8s.io/v1`
//! manifests are accepted as they are): matches on path, headers, query parameters and
//! method; weighted Service backends; request/response header changes, redirects and URL
//! rewrites; timeouts, retries and cookie session persistence.
//!
//! Hostnames: exact, or `*.` followed by a domain, which (as in the Gateway API) matches
//! one or more labels in front of it. A route without hostnames matches every host.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::ingress::{validate_host, validate_path};
use super::meta::validate_dns1123_label;
use super::{GoDuration, Kind, Spec, ValidationError};

/// An `HTTPRoute` object (namespaced, plural `httproutes`).
pub type HttpRoute = super::Object<HttpRouteSpec>;

/// The largest backend weight.
pub const MAX_WEIGHT: u32 = 1_000_000;

/// `spec` of an [`HttpRoute`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteSpec {
    /// The Gateways it attaches to (kept; every `trellis ingress` serves every route).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parent_refs: Vec<ParentReference>,
    /// Hosts (exact or `*.` wildcard); empty: every host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    /// The rules; empty: nothing is routed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<HttpRouteRule>,
}

/// `spec.parentRefs[]` (kept, not used).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ParentReference {
    /// API group of the parent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Kind of the parent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Namespace of the parent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name of the parent.
    pub name: String,
    /// Listener name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    /// Listener port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// `spec.rules[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteRule {
    /// The rule's name (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Any of these matches selects the rule; empty: a `PathPrefix /` match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<HttpRouteMatch>,
    /// Applied in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<HttpRouteFilter>,
    /// Weighted backends; empty (without a redirect): 500.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backend_refs: Vec<HttpBackendRef>,
    /// Timeouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<HttpRouteTimeouts>,
    /// Retries (idempotent requests only; connect failures always).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<HttpRouteRetry>,
    /// Cookie session persistence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_persistence: Option<SessionPersistence>,
}

/// `rules[].matches[]`: every given part must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteMatch {
    /// The path (default `PathPrefix /`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<HttpPathMatch>,
    /// Headers (names case-insensitive).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HttpHeaderMatch>,
    /// Query parameters (names case-sensitive).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<HttpHeaderMatch>,
    /// The method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<HttpMethod>,
}

/// `matches[].path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpPathMatch {
    /// How `value` matches.
    #[serde(default, rename = "type")]
    pub kind: PathMatchType,
    /// The path (or regular expression).
    #[serde(default = "root")]
    pub value: String,
}

fn root() -> String {
    "/".into()
}

/// `matches[].path.type`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PathMatchType {
    /// The whole path, case-sensitive.
    Exact,
    /// Whole path segments.
    #[default]
    PathPrefix,
    /// A regular expression matching the whole path.
    RegularExpression,
}

/// `matches[].headers[]` and `matches[].queryParams[]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpHeaderMatch {
    /// How `value` matches.
    #[serde(default, rename = "type")]
    pub kind: ValueMatchType,
    /// The header or parameter name.
    pub name: String,
    /// The value (or regular expression).
    pub value: String,
}

/// `headers[].type`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ValueMatchType {
    /// Equal.
    #[default]
    Exact,
    /// A regular expression matching the whole value.
    RegularExpression,
}

/// `matches[].method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[allow(clippy::upper_case_acronyms)]
pub enum HttpMethod {
    /// GET.
    GET,
    /// HEAD.
    HEAD,
    /// POST.
    POST,
    /// PUT.
    PUT,
    /// DELETE.
    DELETE,
    /// CONNECT.
    CONNECT,
    /// OPTIONS.
    OPTIONS,
    /// TRACE.
    TRACE,
    /// PATCH.
    PATCH,
}

impl HttpMethod {
    /// The method as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpMethod::GET => "GET",
            HttpMethod::HEAD => "HEAD",
            HttpMethod::POST => "POST",
            HttpMethod::PUT => "PUT",
            HttpMethod::DELETE => "DELETE",
            HttpMethod::CONNECT => "CONNECT",
            HttpMethod::OPTIONS => "OPTIONS",
            HttpMethod::TRACE => "TRACE",
            HttpMethod::PATCH => "PATCH",
        }
    }
}

/// `rules[].filters[]`: `type` names which of the other fields is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteFilter {
    /// Which filter.
    #[serde(rename = "type")]
    pub kind: FilterType,
    /// For `RequestHeaderModifier`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_header_modifier: Option<HeaderModifier>,
    /// For `ResponseHeaderModifier`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_header_modifier: Option<HeaderModifier>,
    /// For `RequestRedirect`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_redirect: Option<RequestRedirect>,
    /// For `URLRewrite`.
    #[serde(
        default,
        rename = "urlRewrite",
        skip_serializing_if = "Option::is_none"
    )]
    pub url_rewrite: Option<UrlRewrite>,
}

/// `filters[].type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FilterType {
    /// Set, add or remove request headers.
    RequestHeaderModifier,
    /// Set, add or remove response headers.
    ResponseHeaderModifier,
    /// Answer with a redirect.
    RequestRedirect,
    /// Change the host or path sent to the backend.
    #[serde(rename = "URLRewrite")]
    UrlRewrite,
}

/// Header changes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderModifier {
    /// Replace (or add).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<HttpHeader>,
    /// Append.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<HttpHeader>,
    /// Remove, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// A header name and value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpHeader {
    /// The name.
    pub name: String,
    /// The value.
    pub value: String,
}

/// `RequestRedirect`: what to change in the redirect's location.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestRedirect {
    /// `http` or `https`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// The host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<HttpPathModifier>,
    /// The port (default: the scheme's when the scheme changes, else the request's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// 301, 302 (default), 303, 307 or 308.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
}

/// `URLRewrite`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UrlRewrite {
    /// The `Host` sent to the backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The path sent to the backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<HttpPathModifier>,
}

/// A path change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpPathModifier {
    /// Which of the two.
    #[serde(rename = "type")]
    pub kind: PathModifierType,
    /// For `ReplaceFullPath`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_full_path: Option<String>,
    /// For `ReplacePrefixMatch` (needs a `PathPrefix` match).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_prefix_match: Option<String>,
}

/// `path.type` of a path change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PathModifierType {
    /// The whole path.
    ReplaceFullPath,
    /// The matched prefix.
    ReplacePrefixMatch,
}

/// `rules[].backendRefs[]`: a Service port and its weight.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpBackendRef {
    /// `""` (core) only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// `Service` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The Service.
    pub name: String,
    /// The route's own namespace only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The Service's port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Share of the requests (default 1; 0: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

impl HttpBackendRef {
    /// The weight (default 1).
    pub fn weight(&self) -> u32 {
        self.weight.unwrap_or(1)
    }
}

/// `rules[].timeouts`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteTimeouts {
    /// The whole request, retries included (`0s`: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<GoDuration>,
    /// One try against a backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_request: Option<GoDuration>,
}

/// `rules[].retry`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteRetry {
    /// Status codes (500–599) that make an idempotent request try another endpoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub codes: Vec<u16>,
    /// Tries after the first (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// Pause between tries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<GoDuration>,
}

/// `rules[].sessionPersistence`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SessionPersistence {
    /// The cookie's name (default `trellis-session`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_name: Option<String>,
    /// `Cookie` only.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The cookie's lifetime (`Max-Age`); none: a session cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub absolute_timeout: Option<GoDuration>,
    /// Kept, not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<GoDuration>,
    /// Kept, not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie_config: Option<serde_json::Value>,
}

/// `status` of an [`HttpRoute`] (kept as given).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteStatus {
    /// Per parent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parents: Vec<serde_json::Value>,
}

fn err(field: impl Into<String>, m: impl Into<String>) -> ValidationError {
    ValidationError::new(field, m)
}

/// Check a header name: an HTTP token.
fn validate_header_name(n: &str) -> Result<(), String> {
    if n.is_empty()
        || !n
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    {
        return Err(format!("{n:?} is not a valid header name"));
    }
    Ok(())
}

fn validate_header_value(v: &str) -> Result<(), String> {
    if v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return Err(format!("{v:?} must not contain CR, LF or NUL"));
    }
    Ok(())
}

fn validate_regex(r: &str) -> Result<(), String> {
    regex::Regex::new(r)
        .map(|_| ())
        .map_err(|e| format!("not a regular expression: {e}"))
}

impl HeaderModifier {
    fn validate(&self, field: &str) -> Result<(), ValidationError> {
        let mut seen = BTreeSet::new();
        for (list, name) in [(&self.set, "set"), (&self.add, "add")] {
            for (i, h) in list.iter().enumerate() {
                validate_header_name(&h.name)
                    .map_err(|m| err(format!("{field}.{name}[{i}].name"), m))?;
                validate_header_value(&h.value)
                    .map_err(|m| err(format!("{field}.{name}[{i}].value"), m))?;
                if !seen.insert((name, h.name.to_ascii_lowercase())) {
                    return Err(err(
                        format!("{field}.{name}[{i}].name"),
                        format!("{:?} is named twice", h.name),
                    ));
                }
            }
        }
        for (i, h) in self.remove.iter().enumerate() {
            validate_header_name(h).map_err(|m| err(format!("{field}.remove[{i}]"), m))?;
        }
        Ok(())
    }
}

impl HttpPathModifier {
    fn validate(&self, field: &str, has_prefix_match: bool) -> Result<(), ValidationError> {
        match self.kind {
            PathModifierType::ReplaceFullPath => {
                let p = self.replace_full_path.as_deref().ok_or_else(|| {
                    err(
                        format!("{field}.replaceFullPath"),
                        "is required with type ReplaceFullPath",
                    )
                })?;
                validate_path(p).map_err(|m| err(format!("{field}.replaceFullPath"), m))?;
                if self.replace_prefix_match.is_some() {
                    return Err(err(
                        format!("{field}.replacePrefixMatch"),
                        "must not be set with type ReplaceFullPath",
                    ));
                }
            }
            PathModifierType::ReplacePrefixMatch => {
                let p = self.replace_prefix_match.as_deref().ok_or_else(|| {
                    err(
                        format!("{field}.replacePrefixMatch"),
                        "is required with type ReplacePrefixMatch",
                    )
                })?;
                validate_path(p).map_err(|m| err(format!("{field}.replacePrefixMatch"), m))?;
                if self.replace_full_path.is_some() {
                    return Err(err(
                        format!("{field}.replaceFullPath"),
                        "must not be set with type ReplacePrefixMatch",
                    ));
                }
                if !has_prefix_match {
                    return Err(err(
                        format!("{field}.type"),
                        "ReplacePrefixMatch needs every match of the rule to be a PathPrefix match",
                    ));
                }
            }
        }
        Ok(())
    }
}

impl HttpRouteRule {
    /// Whether every match is a path prefix (what `ReplacePrefixMatch` needs).
    fn prefix_matches_only(&self) -> bool {
        self.matches.is_empty()
            || self.matches.iter().all(|m| {
                m.path
                    .as_ref()
                    .is_none_or(|p| p.kind == PathMatchType::PathPrefix)
            })
    }

    fn validate(&self, field: &str, namespace: Option<&str>) -> Result<(), ValidationError> {
        if let Some(n) = &self.name {
            validate_dns1123_label(n).map_err(|m| err(format!("{field}.name"), m))?;
        }
        for (i, m) in self.matches.iter().enumerate() {
            let f = format!("{field}.matches[{i}]");
            if let Some(p) = &m.path {
                match p.kind {
                    PathMatchType::RegularExpression => validate_regex(&p.value),
                    _ => validate_path(&p.value),
                }
                .map_err(|e| err(format!("{f}.path.value"), e))?;
            }
            for (list, name) in [(&m.headers, "headers"), (&m.query_params, "queryParams")] {
                let mut seen = BTreeSet::new();
                for (j, h) in list.iter().enumerate() {
                    let hf = format!("{f}.{name}[{j}]");
                    if name == "headers" {
                        validate_header_name(&h.name).map_err(|e| err(format!("{hf}.name"), e))?;
                    } else if h.name.is_empty() {
                        return Err(err(format!("{hf}.name"), "must not be empty"));
                    }
                    let key = if name == "headers" {
                        h.name.to_ascii_lowercase()
                    } else {
                        h.name.clone()
                    };
                    if !seen.insert(key) {
                        return Err(err(
                            format!("{hf}.name"),
                            format!("{:?} is matched twice", h.name),
                        ));
                    }
                    if h.kind == ValueMatchType::RegularExpression {
                        validate_regex(&h.value).map_err(|e| err(format!("{hf}.value"), e))?;
                    }
                }
            }
        }
        let mut kinds = BTreeSet::new();
        let prefix_only = self.prefix_matches_only();
        for (i, flt) in self.filters.iter().enumerate() {
            let f = format!("{field}.filters[{i}]");
            let given = [
                (
                    FilterType::RequestHeaderModifier,
                    flt.request_header_modifier.is_some(),
                    "requestHeaderModifier",
                ),
                (
                    FilterType::ResponseHeaderModifier,
                    flt.response_header_modifier.is_some(),
                    "responseHeaderModifier",
                ),
                (
                    FilterType::RequestRedirect,
                    flt.request_redirect.is_some(),
                    "requestRedirect",
                ),
                (
                    FilterType::UrlRewrite,
                    flt.url_rewrite.is_some(),
                    "urlRewrite",
                ),
            ];
            for (kind, set, name) in given {
                if kind == flt.kind && !set {
                    return Err(err(
                        format!("{f}.{name}"),
                        format!("is required with type {:?}", flt.kind),
                    ));
                }
                if kind != flt.kind && set {
                    return Err(err(
                        format!("{f}.{name}"),
                        format!("must not be set with type {:?}", flt.kind),
                    ));
                }
            }
            if !kinds.insert(flt.kind as u8) {
                return Err(err(
                    format!("{f}.type"),
                    "each filter type may appear once per rule",
                ));
            }
            if let Some(h) = &flt.request_header_modifier {
                h.validate(&format!("{f}.requestHeaderModifier"))?;
            }
            if let Some(h) = &flt.response_header_modifier {
                h.validate(&format!("{f}.responseHeaderModifier"))?;
            }
            if let Some(r) = &flt.request_redirect {
                let rf = format!("{f}.requestRedirect");
                if let Some(s) = &r.scheme {
                    if s != "http" && s != "https" {
                        return Err(err(
                            format!("{rf}.scheme"),
                            format!("must be \"http\" or \"https\", got {s:?}"),
                        ));
                    }
                }
                if let Some(h) = &r.hostname {
                    validate_host(h).map_err(|m| err(format!("{rf}.hostname"), m))?;
                    if h.starts_with('*') {
                        return Err(err(format!("{rf}.hostname"), "must not be a wildcard"));
                    }
                }
                if r.port == Some(0) {
                    return Err(err(format!("{rf}.port"), "must be between 1 and 65535"));
                }
                if let Some(c) = r.status_code {
                    if ![301, 302, 303, 307, 308].contains(&c) {
                        return Err(err(
                            format!("{rf}.statusCode"),
                            format!("must be 301, 302, 303, 307 or 308, got {c}"),
                        ));
                    }
                }
                if let Some(p) = &r.path {
                    p.validate(&format!("{rf}.path"), prefix_only)?;
                }
            }
            if let Some(r) = &flt.url_rewrite {
                let rf = format!("{f}.urlRewrite");
                if let Some(h) = &r.hostname {
                    validate_host(h).map_err(|m| err(format!("{rf}.hostname"), m))?;
                }
                if let Some(p) = &r.path {
                    p.validate(&format!("{rf}.path"), prefix_only)?;
                }
            }
        }
        if kinds.contains(&(FilterType::RequestRedirect as u8))
            && kinds.contains(&(FilterType::UrlRewrite as u8))
        {
            return Err(err(
                format!("{field}.filters"),
                "RequestRedirect and URLRewrite cannot be used together",
            ));
        }
        if kinds.contains(&(FilterType::RequestRedirect as u8)) && !self.backend_refs.is_empty() {
            return Err(err(
                format!("{field}.backendRefs"),
                "must be empty with a RequestRedirect filter",
            ));
        }
        for (i, b) in self.backend_refs.iter().enumerate() {
            let f = format!("{field}.backendRefs[{i}]");
            if b.group.as_deref().is_some_and(|g| !g.is_empty()) {
                return Err(err(
                    format!("{f}.group"),
                    "only the core group (\"\") is supported",
                ));
            }
            if b.kind.as_deref().is_some_and(|k| k != "Service") {
                return Err(err(format!("{f}.kind"), "only Service is supported"));
            }
            validate_dns1123_label(&b.name).map_err(|m| err(format!("{f}.name"), m))?;
            if b.namespace.is_some() && b.namespace.as_deref() != namespace {
                return Err(err(
                    format!("{f}.namespace"),
                    "a backend must be in the route's namespace",
                ));
            }
            match b.port {
                None => return Err(err(format!("{f}.port"), "is required for a Service")),
                Some(0) => return Err(err(format!("{f}.port"), "must be between 1 and 65535")),
                Some(_) => {}
            }
            if b.weight() > MAX_WEIGHT {
                return Err(err(
                    format!("{f}.weight"),
                    format!("must be at most {MAX_WEIGHT}"),
                ));
            }
        }
        if let Some(t) = &self.timeouts {
            if let (Some(r), Some(b)) = (&t.request, &t.backend_request) {
                if !r.get().is_zero() && b.get() > r.get() {
                    return Err(err(
                        format!("{field}.timeouts.backendRequest"),
                        "must not be longer than timeouts.request",
                    ));
                }
            }
        }
        if let Some(r) = &self.retry {
            for (i, c) in r.codes.iter().enumerate() {
                if !(500..=599).contains(c) {
                    return Err(err(
                        format!("{field}.retry.codes[{i}]"),
                        format!("must be between 500 and 599, got {c}"),
                    ));
                }
            }
        }
        if let Some(s) = &self.session_persistence {
            let f = format!("{field}.sessionPersistence");
            if s.kind.as_deref().is_some_and(|k| k != "Cookie") {
                return Err(err(format!("{f}.type"), "only Cookie is supported"));
            }
            if let Some(n) = &s.session_name {
                validate_header_name(n).map_err(|m| err(format!("{f}.sessionName"), m))?;
            }
        }
        Ok(())
    }
}

impl Spec for HttpRouteSpec {
    const KIND: Kind = Kind::HttpRoute;
    type Status = HttpRouteStatus;

    fn validate(&self, _status: &HttpRouteStatus) -> Result<(), ValidationError> {
        for (i, h) in self.hostnames.iter().enumerate() {
            validate_host(h).map_err(|m| err(format!("spec.hostnames[{i}]"), m))?;
        }
        for (i, p) in self.parent_refs.iter().enumerate() {
            if p.name.is_empty() {
                return Err(err(format!("spec.parentRefs[{i}].name"), "is required"));
            }
        }
        for (i, r) in self.rules.iter().enumerate() {
            r.validate(&format!("spec.rules[{i}]"), None)?;
        }
        Ok(())
    }
}

impl HttpRoute {
    /// Check the route with its namespace known (backends must be in it).
    pub fn validate_backends_namespace(&self) -> Result<(), ValidationError> {
        for (i, r) in self.spec.rules.iter().enumerate() {
            r.validate(&format!("spec.rules[{i}]"), self.namespace())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::objects::AnyObject;
    use serde_json::json;

    fn route(spec: serde_json::Value) -> Result<AnyObject, crate::objects::ValidationError> {
        let o = AnyObject::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "r", "namespace": "default"},
            "spec": spec,
        }))?;
        o.validate()?;
        Ok(o)
    }

    #[test]
    fn a_gateway_route_is_taken_as_it_is() {
        route(json!({
            "parentRefs": [{"name": "gw"}],
            "hostnames": ["*.example.com"],
            "rules": [{
                "matches": [{"path": {"type": "PathPrefix", "value": "/v2"},
                             "headers": [{"name": "X-Canary", "value": "yes"}],
                             "queryParams": [{"type": "RegularExpression", "name": "id", "value": "[0-9]+"}],
                             "method": "GET"}],
                "filters": [
                    {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "X-A", "value": "1"}], "remove": ["X-B"]}},
                    {"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}}}
                ],
                "backendRefs": [{"name": "v1", "port": 80, "weight": 90}, {"name": "v2", "port": 80, "weight": 10}],
                "timeouts": {"request": "10s", "backendRequest": "2s"},
                "retry": {"codes": [503], "attempts": 2},
                "sessionPersistence": {"sessionName": "sticky", "type": "Cookie"}
            }]
        }))
        .unwrap();
    }

    #[test]
    fn bad_routes_name_the_field() {
        let cases = [
            (
                json!({"rules": [{"matches": [{"path": {"type": "Prefix", "value": "/"}}]}]}),
                "spec.rules[0].matches[0].path.type",
            ),
            (
                json!({"rules": [{"matches": [{"path": {"value": "x"}}]}]}),
                "spec.rules[0].matches[0].path.value",
            ),
            (
                json!({"rules": [{"matches": [{"path": {"type": "RegularExpression", "value": "(("}}]}]}),
                "spec.rules[0].matches[0].path.value",
            ),
            (
                json!({"rules": [{"filters": [{"type": "RequestRedirect", "requestRedirect": {"statusCode": 304}}]}]}),
                "spec.rules[0].filters[0].requestRedirect.statusCode",
            ),
            (
                json!({"rules": [{"filters": [{"type": "RequestRedirect"}]}]}),
                "spec.rules[0].filters[0].requestRedirect",
            ),
            (
                json!({"rules": [{"matches": [{"path": {"type": "Exact", "value": "/a"}}],
                    "filters": [{"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}}}]}]}),
                "spec.rules[0].filters[0].urlRewrite.path.type",
            ),
            (
                json!({"rules": [{"backendRefs": [{"name": "a"}]}]}),
                "spec.rules[0].backendRefs[0].port",
            ),
            (
                json!({"rules": [{"backendRefs": [{"name": "a", "port": 80, "weight": 2000000}]}]}),
                "spec.rules[0].backendRefs[0].weight",
            ),
            (
                json!({"rules": [{"retry": {"codes": [404]}}]}),
                "spec.rules[0].retry.codes[0]",
            ),
            (json!({"hostnames": ["1.2.3.4"]}), "spec.hostnames[0]"),
            (
                json!({"rules": [{"timeouts": {"request": "1s", "backendRequest": "2s"}}]}),
                "spec.rules[0].timeouts.backendRequest",
            ),
        ];
        for (spec, field) in cases {
            let e = route(spec.clone()).unwrap_err();
            assert!(e.field.starts_with(field), "{spec}: {e}");
        }
    }
}
