//! The CNI result, held version-neutral and written in the version the runtime asked for
//! (0.4.0 carries `version` on each IP; 1.1.0 adds the interface `mtu`). Fields this
//! plugin does not know (from a previous plugin's result) are kept as they are.

use serde::{Deserialize, Serialize};

use crate::config::Dns;

type Extra = serde_json::Map<String, serde_json::Value>;

/// An interface in the result.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    /// Name.
    pub name: String,
    /// MAC address.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// Netns path for container interfaces; absent for host interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// MTU (written only for 1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Anything else.
    #[serde(flatten)]
    pub extra: Extra,
}

/// An address in the result.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IpConfig {
    /// CIDR notation.
    pub address: String,
    /// Gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    /// Anything else (the 0.4.0 `version` is dropped on read and re-derived on write).
    #[serde(flatten)]
    pub extra: Extra,
}

/// A route in the result.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Route {
    /// Destination CIDR.
    pub dst: String,
    /// Gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
    /// Anything else.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A whole result.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CniResult {
    /// Interfaces.
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    /// Addresses.
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    /// Routes.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// DNS.
    #[serde(default)]
    pub dns: Dns,
}

impl CniResult {
    /// Read a result of any supported version (e.g. `prevResult`).
    pub fn from_json(v: &serde_json::Value) -> Result<Self, String> {
        let mut v = v.clone();
        if let Some(obj) = v.as_object_mut() {
            obj.remove("cniVersion");
            if let Some(ips) = obj.get_mut("ips").and_then(|i| i.as_array_mut()) {
                for ip in ips {
                    if let Some(o) = ip.as_object_mut() {
                        o.remove("version");
                    }
                }
            }
        }
        serde_json::from_value(v).map_err(|e| e.to_string())
    }

    /// Append `other`, shifting its interface indices past ours (chaining).
    pub fn append(&mut self, other: CniResult) {
        let base = self.interfaces.len();
        self.interfaces.extend(other.interfaces);
        self.ips.extend(other.ips.into_iter().map(|mut ip| {
            ip.interface = ip.interface.map(|i| i + base);
            ip
        }));
        self.routes.extend(other.routes);
        if self.dns.is_empty() {
            self.dns = other.dns;
        }
    }

    /// Encode in `version`.
    pub fn to_json(&self, version: &str) -> serde_json::Value {
        let mut r = self.clone();
        if version != "1.1.0" {
            for i in &mut r.interfaces {
                i.mtu = None;
            }
        }
        let mut v = serde_json::to_value(&r).expect("serializes");
        v["cniVersion"] = version.into();
        if version == "0.4.0" {
            if let Some(ips) = v["ips"].as_array_mut() {
                for ip in ips {
                    let fam = if ip["address"].as_str().unwrap_or_default().contains(':') {
                        "6"
                    } else {
                        "4"
                    };
                    ip["version"] = fam.into();
                }
            }
        }
        if self.dns.is_empty() {
            v.as_object_mut().expect("object").remove("dns");
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_chaining() {
        let prev = CniResult::from_json(&serde_json::json!({
            "cniVersion": "0.4.0",
            "interfaces": [{"name": "x", "mac": "00:11:22:33:44:55", "custom": 1}],
            "ips": [{"version": "4", "address": "10.9.0.2/24", "interface": 0}],
        }))
        .unwrap();
        let mut ours = CniResult {
            interfaces: vec![Interface {
                name: "eth1".into(),
                mtu: Some(1400),
                ..Default::default()
            }],
            ips: vec![IpConfig {
                address: "10.244.1.2/24".into(),
                interface: Some(0),
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut all = prev;
        all.append(ours.clone());
        assert_eq!(all.ips[1].interface, Some(1));
        let v4 = all.to_json("0.4.0");
        assert_eq!(v4["ips"][0]["version"], "4");
        assert_eq!(v4["interfaces"][0]["custom"], 1);
        assert!(v4["interfaces"][1].get("mtu").is_none());
        ours.dns.nameservers.push("10.0.0.10".into());
        let v11 = ours.to_json("1.1.0");
        assert_eq!(v11["interfaces"][0]["mtu"], 1400);
        assert!(v11["ips"][0].get("version").is_none());
        assert_eq!(v11["dns"]["nameservers"][0], "10.0.0.10");
    }
}
