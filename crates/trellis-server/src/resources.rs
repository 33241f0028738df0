//! The object endpoints: list, get, create, update, delete and watch, the same for every
//! kind; what differs per kind (allocations, immutable fields, cross-object rules) is
//! in [`crate::alloc`].

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{json, Value};
use trellis_api::objects::{self, AnyObject, Kind, ValidationError};
use trellis_api::watch::{List, ListMeta};
use trellis_store::{KeyValue, Precondition, Revision, StoreError};

use crate::alloc;
use crate::auth::Role;
use crate::{watch, ApiError, Server};

/// How often a create or update is retried when an allocation it chose automatically
/// was taken by a concurrent request.
const ALLOC_RETRIES: usize = 16;

/// The store key of an object.
pub fn object_key(kind: Kind, ns: Option<&str>, name: &str) -> String {
    match ns {
        Some(ns) => format!("/registry/{}/{ns}/{name}", kind.plural()),
        None => format!("/registry/{}/{name}", kind.plural()),
    }
}

/// The store prefix of a kind (in one namespace, or all).
pub fn kind_prefix(kind: Kind, ns: Option<&str>) -> String {
    match ns {
        Some(ns) => format!("/registry/{}/{ns}/", kind.plural()),
        None => format!("/registry/{}/", kind.plural()),
    }
}

/// A stored object as the API shows it: its JSON with `metadata.resourceVersion` set to
/// the key's mod revision.
pub fn to_object(kv: &KeyValue) -> Result<Value, ApiError> {
    to_object_at(kv, kv.mod_revision)
}

/// A stored object's JSON with `metadata.resourceVersion` set to `revision` (a deleted
/// object, as of its deletion).
pub fn to_object_at(kv: &KeyValue, revision: trellis_store::Revision) -> Result<Value, ApiError> {
    Ok(to_typed_at(kv, revision)?.to_value())
}

/// A stored object, typed, with its resourceVersion.
pub fn to_typed(kv: &KeyValue) -> Result<AnyObject, ApiError> {
    to_typed_at(kv, kv.mod_revision)
}

/// A stored object, typed, with `metadata.resourceVersion` set to `revision`.
fn to_typed_at(kv: &KeyValue, revision: trellis_store::Revision) -> Result<AnyObject, ApiError> {
    let v: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::internal(format!("corrupt object at {}: {e}", kv.key)))?;
    let mut o = AnyObject::from_value(v)
        .map_err(|e| ApiError::internal(format!("stored object {} does not parse: {e}", kv.key)))?;
    o.metadata_mut().set_revision(revision as u64);
    Ok(o)
}

/// The bytes an object is stored as (without its resourceVersion, which is the key's).
pub fn stored_bytes(obj: &AnyObject) -> Vec<u8> {
    let mut o = obj.clone();
    o.metadata_mut().resource_version = None;
    o.to_json()
}

fn kind_of(plural: &str) -> Result<Kind, ApiError> {
    Kind::from_plural(plural).ok_or_else(|| {
        ApiError::not_found(format!(
            "resource type {plural:?} (known: networks, nodes, pods, endpoints, services)"
        ))
    })
}

fn invalid(e: ValidationError) -> ApiError {
    ApiError::invalid(e.to_string())
}

/// Decode a request body: YAML when the content type says so, JSON otherwise.
fn parse_body(headers: &HeaderMap, body: &Bytes) -> Result<AnyObject, ApiError> {
    let ct = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    if ct.contains("yaml") {
        let mut docs = objects::parse_yaml(body.as_ref()).map_err(invalid)?;
        match docs.len() {
            1 => Ok(docs.remove(0)),
            n => Err(ApiError::bad_request(format!(
                "the body must hold exactly one object, found {n}"
            ))),
        }
    } else {
        objects::parse_json(body).map_err(invalid)
    }
}

fn parse_rv(s: Option<&str>, field: &str) -> Result<Option<Revision>, ApiError> {
    match s {
        None | Some("") => Ok(None),
        Some(s) => s
            .parse::<Revision>()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("{field}: {s:?} is not a resourceVersion"))),
    }
}

/// What the server sets on every write: a Namespace's automatic name label.
fn normalize(obj: &mut AnyObject) {
    if let AnyObject::Namespace(ns) = obj {
        ns.add_name_label();
    }
}

/// Fields only an admin may set: a Pod source prefix of `/0` (any IPv4 source). An
/// update that keeps a `/0` the stored Pod already has is not a new grant. An ingress
/// token changes only an existing Ingress's status.
fn check_privileged(role: &Role, obj: &AnyObject, old: Option<&AnyObject>) -> Result<(), ApiError> {
    if let Role::Ingress { name } = role {
        let same = match (obj, old) {
            (AnyObject::Ingress(new), Some(AnyObject::Ingress(old))) => {
                new.spec == old.spec && new.metadata.labels == old.metadata.labels
            }
            _ => false,
        };
        if !same {
            return Err(ApiError::forbidden(format!(
                "ingress {name} may change only the status of an existing Ingress"
            )));
        }
    }
    let any_source = |o: &AnyObject| matches!(o, AnyObject::Pod(p) if p.spec.allows_any_source());
    if *role != Role::Admin && any_source(obj) && !old.is_some_and(any_source) {
        return Err(ApiError::forbidden(
            "spec.allowedSourceAddresses: a /0 prefix (any source address) needs an admin token",
        ));
    }
    Ok(())
}

/// The node an object belongs to, for node-token authorization.
fn node_of(obj: &AnyObject) -> Option<&str> {
    match obj {
        AnyObject::Endpoint(e) => Some(e.spec.node.as_str()),
        AnyObject::Node(n) => Some(n.metadata.name.as_str()),
        _ => None,
    }
}

/// Where a request points: the kind, and the namespace for namespaced kinds.
struct Target {
    kind: Kind,
    ns: Option<String>,
}

/// The URL's path parameters: `plural`, and `ns` and `name` where the route has them.
pub type PathParams = HashMap<String, String>;

impl Target {
    /// The target and the object name (empty on list and create paths) of a route.
    fn from_path(p: &PathParams) -> Result<(Self, String), ApiError> {
        let plural = p.get("plural").map(String::as_str).unwrap_or_default();
        let t = Target::new(plural, p.get("ns").cloned())?;
        Ok((t, p.get("name").cloned().unwrap_or_default()))
    }

    /// From the URL. A namespaced kind at a cluster path (`/v1/services`) gets its
    /// namespace from the object later; a cluster kind under `/namespaces/` is an error.
    fn new(plural: &str, ns: Option<String>) -> Result<Self, ApiError> {
        let kind = kind_of(plural)?;
        if !kind.namespaced() && ns.is_some() {
            return Err(ApiError::not_found(format!(
                "{plural} are not namespaced: use /v1/{plural}"
            )));
        }
        Ok(Target { kind, ns })
    }

    fn key(&self, name: &str) -> Result<String, ApiError> {
        if self.kind.namespaced() && self.ns.is_none() {
            return Err(ApiError::bad_request(format!(
                "{} are namespaced: use /v1/namespaces/<ns>/{}/{name}",
                self.kind.plural(),
                self.kind.plural()
            )));
        }
        Ok(object_key(self.kind, self.ns.as_deref(), name))
    }

    /// Check the object against the URL and fill its namespace from it.
    fn adopt(&self, obj: &mut AnyObject, name: Option<&str>) -> Result<(), ApiError> {
        if obj.kind() != self.kind {
            return Err(ApiError::bad_request(format!(
                "kind: {} does not match the URL ({})",
                obj.kind().as_str(),
                self.kind.plural()
            )));
        }
        if let Some(n) = name {
            if obj.name() != n {
                return Err(ApiError::bad_request(format!(
                    "metadata.name: {:?} does not match the URL ({n:?})",
                    obj.name()
                )));
            }
        }
        if self.kind.namespaced() {
            let ns = self
                .ns
                .as_deref()
                .or(obj.namespace())
                .unwrap_or(objects::DEFAULT_NAMESPACE)
                .to_string();
            if obj.namespace().is_some_and(|o| o != ns) {
                return Err(ApiError::bad_request(format!(
                    "metadata.namespace: {:?} does not match the URL ({ns:?})",
                    obj.namespace().unwrap_or_default()
                )));
            }
            obj.default_namespace(&ns);
        }
        Ok(())
    }
}

// ---- list / watch

fn is_true(q: &HashMap<String, String>, k: &str) -> bool {
    q.get(k).is_some_and(|v| v == "true" || v == "1")
}

/// `GET /v1/[namespaces/<ns>/]<plural>`: the objects (across namespaces at the cluster
/// path), or a watch with `?watch=true`.
pub async fn list(
    State(s): State<Arc<Server>>,
    Extension(role): Extension<Role>,
    Path(path): Path<PathParams>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let (t, _) = Target::from_path(&path)?;
    role.check_read(t.kind, t.ns.as_deref())?;
    let prefix = kind_prefix(t.kind, t.ns.as_deref());
    if is_true(&q, "watch") {
        let rv = parse_rv(
            q.get("resourceVersion").map(String::as_str),
            "resourceVersion",
        )?;
        let body = watch::watch(
            s.clone(),
            prefix,
            t.kind.as_str(),
            rv,
            is_true(&q, "allowWatchBookmarks"),
        )
        .await?;
        return Ok((
            [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
            body,
        )
            .into_response());
    }
    let (items, rev) = s.store.list(&prefix).await?;
    let selector = q
        .get("labelSelector")
        .map(|s| parse_selector(s))
        .transpose()?;
    let mut out = Vec::with_capacity(items.len());
    for kv in &items {
        // With a selector, the labels are read from the typed object.
        if let Some(sel) = &selector {
            if !matches_labels(&to_typed(kv)?.metadata().labels, sel) {
                continue;
            }
        }
        out.push(to_object(kv)?);
    }
    let items = out;
    Ok(Json(List {
        api_version: objects::API_VERSION.into(),
        kind: format!("{}List", t.kind.as_str()),
        metadata: ListMeta {
            resource_version: Some(rev.to_string()),
        },
        items,
    })
    .into_response())
}

/// `a=b,c=d` → pairs.
fn parse_selector(s: &str) -> Result<Vec<(String, String)>, ApiError> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| {
                    ApiError::bad_request(format!("labelSelector: {p:?} is not key=value"))
                })
        })
        .collect()
}

fn matches_labels(
    labels: &std::collections::BTreeMap<String, String>,
    sel: &[(String, String)],
) -> bool {
    sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

// ---- get

/// `GET /v1/[namespaces/<ns>/]<plural>/<name>`.
pub async fn get(
    State(s): State<Arc<Server>>,
    Extension(role): Extension<Role>,
    Path(path): Path<PathParams>,
) -> Result<Response, ApiError> {
    let (t, name) = Target::from_path(&path)?;
    role.check_read(t.kind, t.ns.as_deref())?;
    let key = t.key(&name)?;
    match s.store.get(&key).await? {
        Some(kv) => Ok(Json(to_object(&kv)?).into_response()),
        None => Err(ApiError::not_found(format!("{} {name:?}", t.kind.as_str()))),
    }
}

// ---- create

/// `POST /v1/[namespaces/<ns>/]<plural>`.
pub async fn create(
    State(s): State<Arc<Server>>,
    Extension(role): Extension<Role>,
    Path(path): Path<PathParams>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (mut t, _) = Target::from_path(&path)?;
    let mut obj = parse_body(&headers, &body)?;
    t.adopt(&mut obj, None)?;
    if t.kind.namespaced() {
        t.ns = obj.namespace().map(str::to_string);
    }
    role.check_write(t.kind.plural(), obj.name(), node_of(&obj))?;
    check_privileged(&role, &obj, None)?;
    normalize(&mut obj);
    obj.metadata_mut().resource_version = None;
    obj.metadata_mut()
        .set_creation_time(std::time::SystemTime::now());
    let key = t.key(obj.name())?;
    // The object's own rules first; again after allocation filled fields in.
    obj.validate().map_err(invalid)?;
    for _ in 0..ALLOC_RETRIES {
        let mut candidate = obj.clone();
        let mut plan = alloc::plan_create(&s, &key, &mut candidate).await?;
        candidate.validate().map_err(invalid)?;
        // The object's own check first: both stores report the first failing check, so
        // an existing object is AlreadyExists, not a taken allocation.
        plan.txn
            .checks
            .insert(0, (key.clone(), Precondition::Absent));
        let txn = std::mem::take(&mut plan.txn).put(key.clone(), stored_bytes(&candidate), None);
        match s.store.txn(txn).await {
            Ok(rev) => {
                candidate.metadata_mut().set_revision(rev as u64);
                return Ok((StatusCode::CREATED, Json(candidate.to_value())).into_response());
            }
            Err(StoreError::Conflict { key: k, .. }) if k == key => {
                return Err(ApiError::already_exists(format!(
                    "{} {:?}",
                    t.kind.as_str(),
                    obj.name()
                )))
            }
            Err(StoreError::Conflict { key: k, .. }) => plan.on_conflict(&k)?,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::conflict(
        "allocation kept racing with other requests; retry",
    ))
}

// ---- update

/// `PUT /v1/[namespaces/<ns>/]<plural>/<name>`.
pub async fn update(
    State(s): State<Arc<Server>>,
    Extension(role): Extension<Role>,
    Path(path): Path<PathParams>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (t, name) = Target::from_path(&path)?;
    let mut obj = parse_body(&headers, &body)?;
    t.adopt(&mut obj, Some(&name))?;
    normalize(&mut obj);
    let key = t.key(&name)?;
    let wanted_rv = obj.metadata().revision().map(|r| r as Revision);
    obj.validate().map_err(invalid)?;
    for _ in 0..ALLOC_RETRIES {
        let cur = s
            .store
            .get(&key)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("{} {name:?}", t.kind.as_str())))?;
        let rv = wanted_rv.unwrap_or(cur.mod_revision);
        if rv != cur.mod_revision {
            return Err(stale(t.kind, &name, rv, cur.mod_revision));
        }
        let old = to_typed(&cur)?;
        role.check_write(t.kind.plural(), &name, node_of(&old))?;
        role.check_write(t.kind.plural(), &name, node_of(&obj))?;
        check_privileged(&role, &obj, Some(&old))?;
        let mut candidate = obj.clone();
        candidate.metadata_mut().creation_timestamp = old.metadata().creation_timestamp.clone();
        candidate.metadata_mut().resource_version = None;
        let mut plan = alloc::plan_update(&s, &key, &old, &mut candidate).await?;
        candidate.validate().map_err(invalid)?;
        let txn = std::mem::take(&mut plan.txn)
            .check(key.clone(), Precondition::Revision(rv))
            .put(key.clone(), stored_bytes(&candidate), None);
        match s.store.txn(txn).await {
            Ok(rev) => {
                candidate.metadata_mut().set_revision(rev as u64);
                return Ok(Json(candidate.to_value()).into_response());
            }
            Err(StoreError::Conflict { key: k, actual, .. }) if k == key => {
                if wanted_rv.is_some() {
                    return Err(stale(t.kind, &name, rv, actual.unwrap_or(0)));
                }
            }
            Err(StoreError::Conflict { key: k, .. }) => plan.on_conflict(&k)?,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::conflict(
        "update kept racing with other requests; retry",
    ))
}

fn stale(kind: Kind, name: &str, rv: Revision, cur: Revision) -> ApiError {
    ApiError::conflict(format!(
        "{} {name:?} was modified: resourceVersion {rv} is stale (current {cur}); read it again and retry",
        kind.as_str()
    ))
}

// ---- delete

/// `DELETE /v1/[namespaces/<ns>/]<plural>/<name>`.
pub async fn delete(
    State(s): State<Arc<Server>>,
    Extension(role): Extension<Role>,
    Path(path): Path<PathParams>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let (t, name) = Target::from_path(&path)?;
    let key = t.key(&name)?;
    let wanted_rv = parse_rv(
        q.get("resourceVersion").map(String::as_str),
        "resourceVersion",
    )?;
    for _ in 0..ALLOC_RETRIES {
        let cur = s
            .store
            .get(&key)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("{} {name:?}", t.kind.as_str())))?;
        let rv = wanted_rv.unwrap_or(cur.mod_revision);
        if rv != cur.mod_revision {
            return Err(stale(t.kind, &name, rv, cur.mod_revision));
        }
        let old = to_typed(&cur)?;
        role.check_write(t.kind.plural(), &name, node_of(&old))?;
        if let Role::Ingress { name: me } = &role {
            return Err(ApiError::forbidden(format!(
                "ingress {me} may not delete {}/{name}",
                t.kind.plural()
            )));
        }
        let plan = alloc::plan_delete(&s, &key, &old).await?;
        let txn = plan
            .txn
            .check(key.clone(), Precondition::Revision(rv))
            .delete(key.clone());
        match s.store.txn(txn).await {
            Ok(_) => return Ok(Json(to_object(&cur)?).into_response()),
            // Changed since it was read: refuse if the client named a version, else
            // read it again (gone meanwhile: the next round answers NotFound).
            Err(StoreError::Conflict { key: k, actual, .. }) if k == key && wanted_rv.is_some() => {
                return Err(stale(t.kind, &name, rv, actual.unwrap_or(0)));
            }
            Err(StoreError::Conflict { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::conflict(
        "delete kept racing with other requests; retry",
    ))
}

// ---- node liveness and subnet leases

/// `POST /v1/nodes/<name>/heartbeat`: renew the node's liveness.
pub async fn heartbeat(
    State(s): State<Arc<Server>>,
    Extension(role): Extension<Role>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    role.check_node(&name)?;
    let l = alloc::heartbeat(&s, &name).await?;
    Ok(Json(json!({"node": name, "renewed": l.was_alive})).into_response())
}

/// `POST /v1/nodes/<name>/subnets/<network>`: the node's subnet of a network, allocated
/// on first call and the same one on every later call (also after restarts, while the
/// node's grace period has not run out).
pub async fn acquire_subnet(
    State(s): State<Arc<Server>>,
    Extension(role): Extension<Role>,
    Path((name, network)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    role.check_node(&name)?;
    let lease = alloc::acquire_subnet(&s, &name, &network).await?;
    Ok(Json(lease).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_api::objects::parse_yaml;

    fn pod(sources: &str) -> AnyObject {
        parse_yaml(&format!(
            "apiVersion: trellis/v1\nkind: Pod\nmetadata: {{name: p, namespace: x}}\nspec: {{allowedSourceAddresses: [{sources}]}}\n"
        ))
        .unwrap()
        .remove(0)
    }

    #[test]
    fn only_an_admin_grants_any_source() {
        let node = Role::Node { node: "n1".into() };
        let (any, some) = (pod("0.0.0.0/0"), pod("10.9.0.0/16"));
        check_privileged(&Role::Admin, &any, None).unwrap();
        check_privileged(&node, &some, None).unwrap();
        let e = check_privileged(&node, &any, None).unwrap_err();
        assert!(
            format!("{e:?}").contains("spec.allowedSourceAddresses"),
            "{e:?}"
        );
        check_privileged(&node, &any, Some(&some)).unwrap_err();
        // Keeping a /0 an admin granted is not a new grant.
        check_privileged(&node, &any, Some(&any)).unwrap();
    }
}
