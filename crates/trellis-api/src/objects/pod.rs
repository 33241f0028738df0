//! `Pod`: a pod declared by the user, so endpoints can be bound to its name, labels and
//! named ports, and its anti-spoofing lifted for given source prefixes.

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::netpol::validate_port_name;
use super::network::check_network_address;
use super::{Kind, NoStatus, Object, PolicyProtocol, Spec, ValidationError};

/// A `Pod` object (namespaced, plural `pods`): namespace/name and labels. A CNI ADD with
/// `K8S_POD_NAMESPACE`/`K8S_POD_NAME` binds its endpoint to it.
pub type Pod = Object<PodSpec>;

/// `spec` of a [`Pod`]: may be left out of a manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodSpec {
    /// Named ports, which NetworkPolicy and ClusterNetworkPolicy ports may name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ContainerPort>,
    /// Source prefixes the pod may send from besides its own address (anti-spoofing
    /// lets them through). `0.0.0.0/0` only by an admin.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_source_addresses: Vec<Ipv4Net>,
}

/// One named port of a pod.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ContainerPort {
    /// The name (an IANA service name: at most 15 lowercase letters, digits and `-`).
    pub name: String,
    /// The port number, 1-65535.
    pub container_port: u16,
    /// The protocol (default TCP).
    #[serde(default)]
    pub protocol: PolicyProtocol,
}

impl Spec for PodSpec {
    const KIND: Kind = Kind::Pod;
    type Status = NoStatus;

    fn spec_when_absent() -> Option<Self> {
        Some(PodSpec::default())
    }

    fn validate(&self, _status: &NoStatus) -> Result<(), ValidationError> {
        for (i, p) in self.ports.iter().enumerate() {
            let f = |x: &str| format!("spec.ports[{i}].{x}");
            validate_port_name(&p.name).map_err(|m| ValidationError::new(f("name"), m))?;
            if p.container_port == 0 {
                return Err(ValidationError::new(
                    f("containerPort"),
                    "must be between 1 and 65535",
                ));
            }
            if let Some(j) = self.ports[..i]
                .iter()
                .position(|o| o.name == p.name && o.protocol == p.protocol)
            {
                return Err(ValidationError::new(
                    f("name"),
                    format!("{:?} is already spec.ports[{j}]'s name", p.name),
                ));
            }
        }
        for (i, a) in self.allowed_source_addresses.iter().enumerate() {
            check_network_address(*a).map_err(|m| {
                ValidationError::new(format!("spec.allowedSourceAddresses[{i}]"), m)
            })?;
        }
        Ok(())
    }
}

impl PodSpec {
    /// The number of the port named `name` for `protocol`, if the pod declares one.
    pub fn named_port(&self, name: &str, protocol: PolicyProtocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.name == name && p.protocol == protocol)
            .map(|p| p.container_port)
    }

    /// Whether any allowed source prefix is `/0` (the pod may send from any IPv4
    /// source; its MAC, ARP and DHCP checks stay; only an admin may set it).
    pub fn allows_any_source(&self) -> bool {
        self.allowed_source_addresses
            .iter()
            .any(|a| a.prefix_len() == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::ObjectMeta;

    #[test]
    fn pod_rules() {
        let mut p = Pod::new(
            ObjectMeta::namespaced("default", "web-1"),
            PodSpec::default(),
        );
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

    #[test]
    fn named_ports_and_source_prefixes() {
        let mut p = Pod::new(
            ObjectMeta::namespaced("default", "web-1"),
            PodSpec::default(),
        );
        p.spec.ports.push(ContainerPort {
            name: "http".into(),
            container_port: 8080,
            protocol: PolicyProtocol::Tcp,
        });
        p.validate().unwrap();
        assert_eq!(p.spec.named_port("http", PolicyProtocol::Tcp), Some(8080));
        assert_eq!(p.spec.named_port("http", PolicyProtocol::Udp), None);
        p.spec.ports.push(p.spec.ports[0].clone());
        assert_eq!(p.validate().unwrap_err().field, "spec.ports[1].name");
        p.spec.ports[1].name = "HTTP".into();
        assert_eq!(p.validate().unwrap_err().field, "spec.ports[1].name");
        p.spec.ports.pop();
        p.spec.allowed_source_addresses = vec!["10.9.0.0/16".parse().unwrap()];
        p.validate().unwrap();
        assert!(!p.spec.allows_any_source());
        p.spec
            .allowed_source_addresses
            .push("10.9.0.1/16".parse().unwrap());
        assert_eq!(
            p.validate().unwrap_err().field,
            "spec.allowedSourceAddresses[1]"
        );
        p.spec.allowed_source_addresses[1] = "0.0.0.0/0".parse().unwrap();
        assert!(p.spec.allows_any_source());
    }
}
