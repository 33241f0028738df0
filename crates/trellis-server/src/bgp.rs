//! The rules between BGP objects and the others, checked on create and update:
//!
//! - a BGPPeer's `peerIP` is no node's own address (nodes peer through `peerSelector`);
//! - a password names a Secret (in [`BGP_SECRET_NAMESPACE`]) that exists and has the key;
//! - a BGPPeer's `filters` name BGPFilters that exist.

use trellis_api::objects::{
    AnyObject, BgpConfiguration, BgpPassword, BgpPeer, Kind, BGP_SECRET_NAMESPACE,
};

use crate::resources::{kind_prefix, object_key, to_typed};
use crate::{ApiError, Server};

/// Refuse a BGPPeer that breaks a rule above; the error names the field.
pub async fn check_peer(s: &Server, p: &BgpPeer) -> Result<(), ApiError> {
    if let Some(Ok(addr)) = p.spec.peer_address() {
        for kv in s.store.list(&kind_prefix(Kind::Node, None)).await?.0 {
            if let AnyObject::Node(n) = to_typed(&kv)? {
                if n.spec.address == *addr.ip() {
                    return Err(ApiError::invalid(format!(
                        "spec.peerIP: {} is the address of node {:?} (to peer with nodes, use spec.peerSelector)",
                        addr.ip(),
                        n.metadata.name
                    )));
                }
            }
        }
    }
    if let Some(pw) = &p.spec.password {
        check_password(s, pw, "spec.password").await?;
    }
    for (i, f) in p.spec.filters.iter().enumerate() {
        if s.store
            .get(&object_key(Kind::BgpFilter, None, f))
            .await?
            .is_none()
        {
            return Err(ApiError::invalid(format!(
                "spec.filters[{i}]: BGPFilter {f:?} does not exist"
            )));
        }
    }
    Ok(())
}

/// Refuse a BGPConfiguration whose mesh password names a missing Secret or key.
pub async fn check_configuration(s: &Server, c: &BgpConfiguration) -> Result<(), ApiError> {
    match &c.spec.node_mesh_password {
        Some(pw) => check_password(s, pw, "spec.nodeMeshPassword").await,
        None => Ok(()),
    }
}

async fn check_password(s: &Server, pw: &BgpPassword, field: &str) -> Result<(), ApiError> {
    let r = &pw.secret_key_ref;
    let key = object_key(Kind::Secret, Some(BGP_SECRET_NAMESPACE), &r.name);
    let Some(kv) = s.store.get(&key).await? else {
        return Err(ApiError::invalid(format!(
            "{field}.secretKeyRef.name: Secret {BGP_SECRET_NAMESPACE}/{} does not exist",
            r.name
        )));
    };
    match to_typed(&kv)? {
        AnyObject::Secret(secret) if secret.spec.get(&r.key).is_some() => Ok(()),
        _ => Err(ApiError::invalid(format!(
            "{field}.secretKeyRef.key: Secret {BGP_SECRET_NAMESPACE}/{} has no key {:?}",
            r.name, r.key
        ))),
    }
}
