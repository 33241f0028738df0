//! `LoadBalancerPool`: address ranges the server hands out to `LoadBalancer` Services.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::network::check_network_address;
use super::{Kind, NoStatus, Object, Spec, ValidationError};

/// A `LoadBalancerPool` object (cluster-scoped, plural `loadbalancerpools`).
pub type LoadBalancerPool = Object<LoadBalancerPoolSpec>;

/// `spec` of a [`LoadBalancerPool`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LoadBalancerPoolSpec {
    /// The ranges (network addresses, e.g. `192.168.77.240/28`); their network and
    /// broadcast addresses are never handed out for prefixes shorter than /31.
    pub cidrs: Vec<Ipv4Net>,
}

impl Spec for LoadBalancerPoolSpec {
    const KIND: Kind = Kind::LoadBalancerPool;
    type Status = NoStatus;

    fn validate(&self, _status: &NoStatus) -> Result<(), ValidationError> {
        if self.cidrs.is_empty() {
            return Err(ValidationError::new("spec.cidrs", "must not be empty"));
        }
        for (i, c) in self.cidrs.iter().enumerate() {
            let field = format!("spec.cidrs[{i}]");
            check_network_address(*c).map_err(|m| ValidationError::new(&field, m))?;
            if let Some(j) = self.cidrs[..i]
                .iter()
                .position(|o| o.contains(c) || c.contains(o))
            {
                return Err(ValidationError::new(
                    &field,
                    format!("{c} overlaps spec.cidrs[{j}] ({})", self.cidrs[j]),
                ));
            }
        }
        Ok(())
    }
}

impl LoadBalancerPoolSpec {
    /// The addresses the pool may hand out, in order.
    pub fn addresses(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.cidrs.iter().flat_map(|c| {
            let (lo, hi) = (u32::from(c.network()), u32::from(c.broadcast()));
            let (lo, hi) = if c.prefix_len() < 31 {
                (lo + 1, hi - 1)
            } else {
                (lo, hi)
            };
            (lo..=hi).map(Ipv4Addr::from)
        })
    }

    /// Whether the pool may hand out `ip`.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.cidrs.iter().any(|c| {
            c.contains(&ip) && (c.prefix_len() >= 31 || (ip != c.network() && ip != c.broadcast()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::{AnyObject, ObjectMeta};

    #[test]
    fn pool_rules_and_addresses() {
        let p = LoadBalancerPool::new(
            ObjectMeta::named("lan"),
            LoadBalancerPoolSpec {
                cidrs: vec!["192.168.77.240/30".parse().unwrap()],
            },
        );
        p.validate().unwrap();
        let a: Vec<String> = p.spec.addresses().map(|a| a.to_string()).collect();
        assert_eq!(a, ["192.168.77.241", "192.168.77.242"]);
        assert!(!p.spec.contains("192.168.77.240".parse().unwrap()));
        let mut bad = p.clone();
        bad.spec.cidrs.push("192.168.77.240/29".parse().unwrap());
        assert_eq!(bad.validate().unwrap_err().field, "spec.cidrs[1]");
        bad.spec.cidrs = vec!["192.168.77.241/30".parse().unwrap()];
        assert_eq!(bad.validate().unwrap_err().field, "spec.cidrs[0]");
        bad.spec.cidrs.clear();
        assert_eq!(bad.validate().unwrap_err().field, "spec.cidrs");
        let any = AnyObject::from_value(serde_json::json!({
            "apiVersion": "trellis/v1", "kind": "LoadBalancerPool",
            "metadata": {"name": "lan"}, "spec": {"cidrs": ["10.0.0.0/24"], "bogus": 1}
        }))
        .unwrap_err();
        assert!(any.field.contains("spec"), "{any}");
    }
}
