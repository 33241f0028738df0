//! `Secret`: named secret values (BGP passwords). Kubernetes `v1` manifests are taken as
//! they are: their top-level `type`, `data` (base64) and `stringData` become `spec`.
//! `stringData` is folded into `data` when parsed, as Kubernetes does on write.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::{Kind, NoStatus, Spec, ValidationError};

/// A `Secret` object (namespaced, plural `secrets`).
pub type Secret = super::Object<SecretSpec>;

/// `spec` of a [`Secret`] (top-level fields in a Kubernetes manifest).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecretSpec {
    /// Kubernetes' `type` (`Opaque` when absent); kept, not used.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Values by key, base64.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
    /// Values by key, plain (folded into `data` when parsed).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub string_data: BTreeMap<String, String>,
    /// Kubernetes' `immutable`; kept, not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub immutable: Option<bool>,
}

impl SecretSpec {
    /// The value of `key`, decoded.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.data
            .get(key)
            .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
    }
}

impl Spec for SecretSpec {
    const KIND: Kind = Kind::Secret;
    type Status = NoStatus;

    fn spec_when_absent() -> Option<Self> {
        Some(Self::default())
    }

    fn apply_defaults(&mut self) {
        for (k, v) in std::mem::take(&mut self.string_data) {
            self.data
                .insert(k, base64::engine::general_purpose::STANDARD.encode(v));
        }
    }

    fn validate(&self, _status: &NoStatus) -> Result<(), ValidationError> {
        for (k, v) in &self.data {
            if k.is_empty()
                || !k
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
            {
                return Err(ValidationError::new(
                    format!("data[{k:?}]"),
                    "a key must consist of alphanumerics, '-', '_' or '.'",
                ));
            }
            if base64::engine::general_purpose::STANDARD.decode(v).is_err() {
                return Err(ValidationError::new(
                    format!("data[{k:?}]"),
                    "is not base64",
                ));
            }
        }
        Ok(())
    }
}

/// Move a Kubernetes Secret's top-level `type`, `data`, `stringData` and `immutable`
/// into `spec` (a manifest that already has `spec` is left alone).
pub(super) fn lift_kubernetes_fields(value: &mut serde_json::Value) {
    let Some(obj) = value.as_object_mut() else {
        return;
    };
    if obj.contains_key("spec") {
        return;
    }
    let mut spec = serde_json::Map::new();
    for k in ["type", "data", "stringData", "immutable"] {
        if let Some(v) = obj.remove(k) {
            spec.insert(k.to_string(), v);
        }
    }
    obj.insert("spec".into(), serde_json::Value::Object(spec));
}

#[cfg(test)]
mod tests {
    use crate::objects::AnyObject;
    use serde_json::json;

    #[test]
    fn a_kubernetes_secret_is_taken_as_it_is() {
        let s = AnyObject::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "bgp-secrets", "namespace": "trellis-system"},
            "type": "Opaque",
            "data": {"a": "c2VjcmV0"},
            "stringData": {"rr-password": "very-secret"}
        }))
        .unwrap();
        s.validate().unwrap();
        let AnyObject::Secret(s) = s else { panic!() };
        assert_eq!(s.spec.get("a").unwrap(), b"secret");
        assert_eq!(s.spec.get("rr-password").unwrap(), b"very-secret");
        assert!(s.spec.string_data.is_empty());
        let bad = AnyObject::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "x", "namespace": "trellis-system"},
            "data": {"a": "not base64!"}
        }))
        .unwrap()
        .validate()
        .unwrap_err();
        assert_eq!(bad.field, "data[\"a\"]");
    }
}
