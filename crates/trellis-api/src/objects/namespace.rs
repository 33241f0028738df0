//! `Namespace`: a cluster-scoped object carrying a namespace's labels, which
//! `namespaceSelector`s match.
//!
//! Every namespace carries the automatic label `kubernetes.io/metadata.name: <name>`
//! ([`NAMESPACE_NAME_LABEL`]): the server sets it on every write, and a namespace that
//! has pods but no object is treated as one with only that label
//! ([`namespace_labels`]). `apiVersion: v1` manifests are accepted as they are.
//!
//! `spec.tenant` puts the namespace, its pods and its Services in a tenant's world (see
//! `tenant`); without it they are in the cluster's default world.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{validate_dns1123_label, Kind, NoStatus, Object, Spec, ValidationError};

/// A `Namespace` object (cluster-scoped, plural `namespaces`, short `ns`).
pub type Namespace = Object<NamespaceSpec>;

/// The label every namespace carries, whose value is its name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// `spec` of a [`Namespace`]; may be left out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NamespaceSpec {
    /// The tenant whose world the namespace belongs to (a `Tenant`'s name); unset: the
    /// cluster's default world. It may change only while the namespace holds no pods,
    /// endpoints or services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Accepted for Kubernetes manifests; not used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finalizers: Vec<String>,
}

impl Spec for NamespaceSpec {
    const KIND: Kind = Kind::Namespace;
    type Status = NoStatus;

    fn spec_when_absent() -> Option<Self> {
        Some(NamespaceSpec::default())
    }

    fn validate(&self, _status: &NoStatus) -> Result<(), ValidationError> {
        if let Some(t) = &self.tenant {
            validate_dns1123_label(t).map_err(|m| ValidationError::new("spec.tenant", m))?;
        }
        Ok(())
    }
}

impl Namespace {
    /// Set the automatic name label (the server does it on every write).
    pub fn add_name_label(&mut self) {
        let name = self.metadata.name.clone();
        self.metadata
            .labels
            .insert(NAMESPACE_NAME_LABEL.to_string(), name);
    }
}

/// The labels of namespace `name`: its object's `labels` (if it has an object) plus
/// the automatic name label.
pub fn namespace_labels(
    name: &str,
    labels: Option<&BTreeMap<String, String>>,
) -> BTreeMap<String, String> {
    let mut l = labels.cloned().unwrap_or_default();
    l.insert(NAMESPACE_NAME_LABEL.to_string(), name.to_string());
    l
}
