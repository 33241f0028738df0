//! `Pod`: a pod declared by the user, so endpoints can be bound to its name and labels.

use serde::{Deserialize, Serialize};

use super::{Kind, NoStatus, Object, Spec, ValidationError};

/// A `Pod` object (namespaced, plural `pods`): namespace/name and labels. A CNI ADD with
/// `K8S_POD_NAMESPACE`/`K8S_POD_NAME` binds its endpoint to it.
pub type Pod = Object<PodSpec>;

/// `spec` of a [`Pod`]: empty today, and may be left out of a manifest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodSpec {}

impl Spec for PodSpec {
    const KIND: Kind = Kind::Pod;
    type Status = NoStatus;

    fn spec_when_absent() -> Option<Self> {
        Some(PodSpec {})
    }

    fn validate(&self, _status: &NoStatus) -> Result<(), ValidationError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::ObjectMeta;

    #[test]
    fn pod_rules() {
        let mut p = Pod::new(ObjectMeta::namespaced("default", "web-1"), PodSpec {});
        p.metadata.labels.insert("app".into(), "web".into());
        p.validate().unwrap();

        p.metadata.namespace = None;
        let e = p.validate().unwrap_err();
        assert_eq!(e.field, "metadata.namespace");
        assert!(
            e.message.contains("is required: Pod is a namespaced kind"),
            "{e}"
        );
        p.default_namespace("team-a");
        assert_eq!(p.namespace(), Some("team-a"));
        p.default_namespace("other");
        assert_eq!(p.namespace(), Some("team-a"), "a present namespace is kept");

        p.metadata.namespace = Some("Team".into());
        assert_eq!(p.validate().unwrap_err().field, "metadata.namespace");
        p.metadata.namespace = Some("default".into());

        p.metadata.name = "web_1".into();
        assert_eq!(p.validate().unwrap_err().field, "metadata.name");
        p.metadata.name = "a".repeat(64);
        let e = p.validate().unwrap_err();
        assert_eq!(e.field, "metadata.name");
        assert!(e.message.contains("at most 63"), "{e}");
        p.metadata.name = "web-1".into();

        p.metadata.labels.insert("bad key".into(), "x".into());
        let e = p.validate().unwrap_err();
        assert_eq!(e.field, r#"metadata.labels["bad key"]"#);
        assert!(e.message.contains("' ' is not allowed"), "{e}");
        p.metadata.labels.remove("bad key");
        p.metadata.labels.insert("tier".into(), "-front".into());
        let e = p.validate().unwrap_err();
        assert_eq!(e.field, r#"metadata.labels["tier"]"#);
        assert!(e.message.contains("start and end"), "{e}");
        p.metadata.labels.remove("tier");

        p.metadata.resource_version = Some("12a".into());
        let e = p.validate().unwrap_err();
        assert_eq!(e.field, "metadata.resourceVersion");
        p.metadata.set_revision(12);
        p.metadata.creation_timestamp = Some("now".into());
        let e = p.validate().unwrap_err();
        assert_eq!(e.field, "metadata.creationTimestamp");
        p.metadata.creation_timestamp = Some("2024-05-01T12:00:00Z".into());
        p.validate().unwrap();
    }
}
