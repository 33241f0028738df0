//! `Tenant` and `TenantPeering`: isolated worlds of networks, namespaces and services.
//!
//! A tenant's world is its Networks (`Network.spec.tenant`), its Namespaces
//! (`Namespace.spec.tenant`) with their pods, and the Services of those namespaces.
//! Everything without a tenant forms the cluster's default world. Ranges may overlap
//! between worlds and must not within one; nothing crosses between worlds unless a
//! `TenantPeering` names both tenants, which requires their ranges not to overlap.

use std::collections::BTreeSet;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::network::check_network_address;
use super::{validate_dns1123_label, Kind, Network, NoStatus, Object, Spec, ValidationError};

/// A `Tenant` object (cluster-scoped, plural `tenants`).
pub type Tenant = Object<TenantSpec>;

/// `spec` of a [`Tenant`]; may be left out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TenantSpec {
    /// The range the cluster IPs of the tenant's Services come from (a network address;
    /// at most 65,536 addresses). Unset: the cluster's service range; the tenant still
    /// allocates from it on its own, so its cluster IPs may equal other worlds'.
    #[serde(
        default,
        rename = "serviceCIDR",
        skip_serializing_if = "Option::is_none"
    )]
    pub service_cidr: Option<Ipv4Net>,
}

/// Shortest `spec.serviceCIDR` prefix accepted (a /16: 65,536 addresses).
pub const MIN_SERVICE_CIDR_PREFIX: u8 = 16;

impl Spec for TenantSpec {
    const KIND: Kind = Kind::Tenant;
    type Status = NoStatus;

    fn spec_when_absent() -> Option<Self> {
        Some(TenantSpec::default())
    }

    fn validate(&self, _status: &NoStatus) -> Result<(), ValidationError> {
        if let Some(c) = self.service_cidr {
            check_network_address(c).map_err(|m| ValidationError::new("spec.serviceCIDR", m))?;
            if c.prefix_len() < MIN_SERVICE_CIDR_PREFIX {
                return Err(ValidationError::new(
                    "spec.serviceCIDR",
                    format!("{c} is too large: at most a /{MIN_SERVICE_CIDR_PREFIX}"),
                ));
            }
            if c.prefix_len() > 30 {
                return Err(ValidationError::new(
                    "spec.serviceCIDR",
                    format!("{c} is too small: at least a /30"),
                ));
            }
        }
        Ok(())
    }
}

/// A `TenantPeering` object (cluster-scoped, plural `tenantpeerings`): the two tenants
/// it names reach each other's pods and services as if one world.
pub type TenantPeering = Object<TenantPeeringSpec>;

/// `spec` of a [`TenantPeering`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TenantPeeringSpec {
    /// The two tenants (distinct; order does not matter).
    pub tenants: Vec<String>,
}

impl Spec for TenantPeeringSpec {
    const KIND: Kind = Kind::TenantPeering;
    type Status = NoStatus;

    fn validate(&self, _status: &NoStatus) -> Result<(), ValidationError> {
        if self.tenants.len() != 2 {
            return Err(ValidationError::new(
                "spec.tenants",
                format!("must name exactly two tenants, got {}", self.tenants.len()),
            ));
        }
        for (i, t) in self.tenants.iter().enumerate() {
            validate_dns1123_label(t)
                .map_err(|m| ValidationError::new(format!("spec.tenants[{i}]"), m))?;
        }
        if self.tenants[0] == self.tenants[1] {
            return Err(ValidationError::new(
                "spec.tenants[1]",
                format!("{:?} is the same tenant as tenants[0]", self.tenants[1]),
            ));
        }
        Ok(())
    }
}

impl TenantPeeringSpec {
    /// Whether the peering joins `a` and `b`.
    pub fn joins(&self, a: &str, b: &str) -> bool {
        self.tenants.iter().any(|t| t == a) && self.tenants.iter().any(|t| t == b)
    }

    /// Its two tenants (`None` for a peering that does not name exactly two).
    pub fn pair(&self) -> Option<(&str, &str)> {
        match self.tenants.as_slice() {
            [a, b] => Some((a, b)),
            _ => None,
        }
    }

    /// The other tenant of the peering, if `t` is one of its two.
    pub fn other(&self, t: &str) -> Option<&str> {
        match self.tenants.iter().position(|x| x == t) {
            Some(0) => self.tenants.get(1).map(String::as_str),
            Some(_) => self.tenants.first().map(String::as_str),
            None => None,
        }
    }
}

/// The tenants peered with `tenant` by `peerings`.
pub fn peers_of<'a>(
    tenant: &str,
    peerings: impl IntoIterator<Item = &'a TenantPeering>,
) -> BTreeSet<String> {
    peerings
        .into_iter()
        .filter_map(|p| p.spec.other(tenant).map(str::to_string))
        .collect()
}

/// The first pair of ranges, one of tenant `a` and one of tenant `b`, that overlap:
/// their networks' pod ranges and their service ranges (`service_a`/`service_b`, each
/// the tenant's `serviceCIDR` or the cluster's). `None` when the two may be peered.
pub fn peering_conflict(
    a: &str,
    b: &str,
    networks: &[Network],
    service_a: Ipv4Net,
    service_b: Ipv4Net,
) -> Option<String> {
    let of = |t: &str| -> Vec<(String, Ipv4Net)> {
        networks
            .iter()
            .filter(|n| n.spec.tenant.as_deref() == Some(t))
            .map(|n| {
                (
                    format!("network {:?}", n.metadata.name),
                    n.spec.cidr.trunc(),
                )
            })
            .collect()
    };
    let mut ra = of(a);
    ra.push((format!("the service range of {a:?}"), service_a.trunc()));
    let mut rb = of(b);
    rb.push((format!("the service range of {b:?}"), service_b.trunc()));
    for (na, x) in &ra {
        for (nb, y) in &rb {
            if x.contains(&y.network()) || y.contains(&x.network()) {
                return Some(format!(
                    "tenants {a:?} and {b:?} overlap: {na} ({x}) and {nb} ({y}); peered tenants must use disjoint ranges"
                ));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::{parse_yaml, AnyObject, NetworkSpec, ObjectMeta};

    fn net(name: &str, tenant: &str, cidr: &str) -> Network {
        let mut spec = NetworkSpec::new(cidr.parse().unwrap());
        spec.tenant = Some(tenant.into());
        Network::new(ObjectMeta::named(name), spec)
    }

    #[test]
    fn tenant_parses_and_validates() {
        let mut t =
            parse_yaml("apiVersion: trellis/v1\nkind: Tenant\nmetadata: {name: red}\n").unwrap();
        let Some(AnyObject::Tenant(t)) = t.pop() else {
            panic!()
        };
        assert_eq!(t.spec.service_cidr, None);
        t.validate().unwrap();
        for (cidr, msg) in [
            ("10.96.0.1/16", "host bits"),
            ("10.0.0.0/8", "too large"),
            ("10.96.0.0/31", "too small"),
        ] {
            let mut t = t.clone();
            t.spec.service_cidr = Some(cidr.parse().unwrap());
            let e = t.validate().unwrap_err();
            assert_eq!(e.field, "spec.serviceCIDR", "{cidr}");
            assert!(e.message.contains(msg), "{cidr}: {e}");
        }
        let e = parse_yaml(
            "apiVersion: trellis/v1\nkind: Tenant\nmetadata: {name: red}\nspec: {serviceCidr: 10.96.0.0/16}\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("spec.serviceCidr"), "{e}");
    }

    #[test]
    fn peering_rules() {
        let p = |a: &str, b: &str| {
            TenantPeering::new(
                ObjectMeta::named("p"),
                TenantPeeringSpec {
                    tenants: vec![a.into(), b.into()],
                },
            )
        };
        p("red", "blue").validate().unwrap();
        let e = p("red", "red").validate().unwrap_err();
        assert_eq!(e.field, "spec.tenants[1]");
        let e = p("red", "Blue").validate().unwrap_err();
        assert_eq!(e.field, "spec.tenants[1]");
        let mut three = p("a", "b");
        three.spec.tenants.push("c".into());
        assert_eq!(three.validate().unwrap_err().field, "spec.tenants");
        assert_eq!(p("red", "blue").spec.other("blue"), Some("red"));
        assert_eq!(p("red", "blue").spec.other("green"), None);
        assert_eq!(
            peers_of("red", &[p("red", "blue"), p("green", "red"), p("x", "y")]),
            ["blue".to_string(), "green".to_string()].into()
        );
    }

    #[test]
    fn peering_conflicts() {
        let nets = vec![
            net("r1", "red", "10.1.0.0/16"),
            net("b1", "blue", "10.2.0.0/16"),
            net("g1", "green", "10.1.128.0/17"),
        ];
        let (s1, s2): (Ipv4Net, Ipv4Net) = (
            "10.96.0.0/16".parse().unwrap(),
            "10.97.0.0/16".parse().unwrap(),
        );
        assert_eq!(peering_conflict("red", "blue", &nets, s1, s2), None);
        let m = peering_conflict("red", "green", &nets, s1, s2).unwrap();
        assert!(
            m.contains("network \"r1\"") && m.contains("network \"g1\""),
            "{m}"
        );
        let m = peering_conflict("red", "blue", &nets, s1, s1).unwrap();
        assert!(m.contains("service range"), "{m}");
    }
}
