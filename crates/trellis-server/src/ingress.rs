//! The rules between the ingress objects and the others, checked on create and update:
//!
//! - a backend's port exists on its Service, when the Service exists (a Service made
//!   later is fine: the route answers 503 until it has ready endpoints);
//! - an HTTPRoute's backends are in its own namespace;
//! - a `kubernetes.io/tls` Secret holds a PEM certificate chain and the private key that
//!   matches it.

use trellis_api::objects::{
    AnyObject, HttpRoute, Ingress, IngressBackend, Kind, Secret, Service, TLS_SECRET_TYPE,
};
use trellis_ingress::tls::{certified_key, CERT_KEY, KEY_KEY};

use crate::resources::{object_key, to_typed};
use crate::{ApiError, Server};

async fn service(s: &Server, ns: &str, name: &str) -> Result<Option<Service>, ApiError> {
    let Some(kv) = s
        .store
        .get(&object_key(Kind::Service, Some(ns), name))
        .await?
    else {
        return Ok(None);
    };
    match to_typed(&kv)? {
        AnyObject::Service(svc) => Ok(Some(svc)),
        _ => Ok(None),
    }
}

fn ports_of(svc: &Service) -> String {
    let ports: Vec<String> = svc
        .spec
        .ports
        .iter()
        .map(|p| match &p.name {
            Some(n) => format!("{} ({n})", p.port),
            None => p.port.to_string(),
        })
        .collect();
    if ports.is_empty() {
        "none".into()
    } else {
        ports.join(", ")
    }
}

async fn check_backend(
    s: &Server,
    ns: &str,
    b: &IngressBackend,
    field: &str,
) -> Result<(), ApiError> {
    let Some(sb) = &b.service else { return Ok(()) };
    let Some(svc) = service(s, ns, &sb.name).await? else {
        return Ok(());
    };
    let (ok, f, what) = match (&sb.port.number, &sb.port.name) {
        (Some(n), _) => (
            svc.spec.ports.iter().any(|p| p.port == *n),
            "number",
            n.to_string(),
        ),
        (None, Some(name)) => (
            svc.spec.ports.iter().any(|p| p.name.as_ref() == Some(name)),
            "name",
            format!("{name:?}"),
        ),
        (None, None) => return Ok(()),
    };
    if ok {
        return Ok(());
    }
    Err(ApiError::invalid(format!(
        "{field}.service.port.{f}: Service {ns}/{} has no port {what} (its ports: {})",
        sb.name,
        ports_of(&svc)
    )))
}

/// Refuse an Ingress whose backend names a port its Service lacks.
pub async fn check_ingress(s: &Server, ing: &Ingress) -> Result<(), ApiError> {
    let ns = ing.namespace().unwrap_or_default();
    if let Some(b) = &ing.spec.default_backend {
        check_backend(s, ns, b, "spec.defaultBackend").await?;
    }
    for (i, r) in ing.spec.rules.iter().enumerate() {
        let Some(http) = &r.http else { continue };
        for (j, p) in http.paths.iter().enumerate() {
            let field = format!("spec.rules[{i}].http.paths[{j}].backend");
            check_backend(s, ns, &p.backend, &field).await?;
        }
    }
    Ok(())
}

/// Refuse an HTTPRoute whose backend is in another namespace or names a port its Service
/// lacks.
pub async fn check_route(s: &Server, r: &HttpRoute) -> Result<(), ApiError> {
    r.validate_backends_namespace()
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let ns = r.namespace().unwrap_or_default();
    for (i, rule) in r.spec.rules.iter().enumerate() {
        for (j, b) in rule.backend_refs.iter().enumerate() {
            let Some(svc) = service(s, ns, &b.name).await? else {
                continue;
            };
            if !svc.spec.ports.iter().any(|p| Some(p.port) == b.port) {
                return Err(ApiError::invalid(format!(
                    "spec.rules[{i}].backendRefs[{j}].port: Service {ns}/{} has no port {} (its ports: {})",
                    b.name,
                    b.port.unwrap_or_default(),
                    ports_of(&svc)
                )));
            }
        }
    }
    Ok(())
}

/// Refuse a `kubernetes.io/tls` Secret without a usable certificate and matching key.
pub fn check_secret(secret: &Secret) -> Result<(), ApiError> {
    if secret.spec.kind.as_deref() != Some(TLS_SECRET_TYPE) {
        return Ok(());
    }
    let get = |k: &'static str| {
        secret.spec.get(k).ok_or_else(|| {
            ApiError::invalid(format!(
                "data[{k:?}]: is required in a {TLS_SECRET_TYPE} Secret"
            ))
        })
    };
    let (crt, key) = (get(CERT_KEY)?, get(KEY_KEY)?);
    certified_key(&crt, &key)
        .map(|_| ())
        .map_err(|e| ApiError::invalid(e.to_string()))
}
