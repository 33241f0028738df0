//! UDP conntrack clean-up with the `conntrack` tool, one service port and endpoint at a
//! time (never a flush).
//!
//! UDP has no connection end: a client that keeps sending to a service address keeps
//! its conntrack entry, and with it the endpoint chosen for its first packet, even after
//! that endpoint is gone. So when an endpoint leaves a UDP service port, exactly the
//! entries whose translation points at it for that service address and port are
//! deleted. And when a UDP service address becomes served (its first endpoint, or the
//! service is new), entries created before, which were not translated at all, are
//! deleted too.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Command;

use crate::{Protocol, ProxyError, ServiceModel};

/// A UDP destination: `Some(address)` and port, or `None` and a node port (any node
/// address).
type Dest = (Option<Ipv4Addr>, u16);

/// The UDP flows a set of services allows.
#[derive(Debug, Default)]
pub(crate) struct UdpState {
    /// (destination, endpoint) pairs.
    flows: BTreeSet<(Dest, Ipv4Addr)>,
    /// Destinations with at least one endpoint for their traffic.
    served: BTreeSet<Dest>,
}

impl UdpState {
    pub(crate) fn add(&mut self, svc: &ServiceModel) {
        let Some(cip) = svc.cluster_ip else { return };
        let any = !svc.endpoints.is_empty();
        let any_local = svc.endpoints.iter().any(|e| e.local);
        let external_served = if svc.local_only { any_local } else { any };
        for p in &svc.ports {
            if p.protocol != Protocol::Udp {
                continue;
            }
            let mut dests: Vec<(Dest, bool)> = vec![((Some(cip), p.port), any)];
            for ip in &svc.external_ips {
                dests.push(((Some(*ip), p.port), external_served));
            }
            if let Some(np) = p.node_port {
                dests.push(((None, np), external_served));
            }
            for (d, served) in dests {
                if served {
                    self.served.insert(d);
                }
                for ep in &svc.endpoints {
                    self.flows.insert((d, ep.ip));
                }
            }
        }
    }
}

/// Delete the entries `before` allowed and `after` does not, and the untranslated
/// entries of destinations that became served. Returns how many were deleted.
pub(crate) fn clean(
    before: &UdpState,
    after: &UdpState,
    node_ips: &[Ipv4Addr],
) -> Result<usize, ProxyError> {
    let mut n = 0;
    for ((dst, port), ep) in before.flows.difference(&after.flows) {
        n += delete(*dst, *port, *ep)?;
    }
    for (dst, port) in after.served.difference(&before.served) {
        match dst {
            Some(a) => n += delete(Some(*a), *port, *a)?,
            None => {
                for a in node_ips {
                    n += delete(Some(*a), *port, *a)?;
                }
            }
        }
    }
    Ok(n)
}

/// `conntrack -D -p udp [--orig-dst dst] --orig-port-dst port --reply-src reply_src`.
fn delete(dst: Option<Ipv4Addr>, port: u16, reply_src: Ipv4Addr) -> Result<usize, ProxyError> {
    let mut cmd = Command::new("conntrack");
    cmd.args(["-D", "-p", "udp"]);
    if let Some(d) = dst {
        cmd.args(["--orig-dst", &d.to_string()]);
    }
    cmd.args(["--orig-port-dst", &port.to_string()]);
    cmd.args(["--reply-src", &reply_src.to_string()]);
    let out = cmd.output().map_err(|e| {
        ProxyError::Conntrack(format!(
            "run conntrack (is conntrack-tools installed?): {e}"
        ))
    })?;
    let err = String::from_utf8_lossy(&out.stderr);
    // "conntrack v1.4.7 (conntrack-tools): 2 flow entries have been deleted." (exit
    // status 1 when there were none).
    if let Some(count) = deleted_count(&err) {
        return Ok(count);
    }
    Err(ProxyError::Conntrack(format!("{cmd:?}: {}", err.trim())))
}

fn deleted_count(stderr: &str) -> Option<usize> {
    let line = stderr
        .lines()
        .find(|l| l.contains("flow entries have been deleted"))?;
    let before = line.split(" flow entries").next()?;
    before.rsplit(' ').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EndpointModel, PortModel};

    #[test]
    fn parses_the_count() {
        assert_eq!(
            deleted_count(
                "conntrack v1.4.7 (conntrack-tools): 2 flow entries have been deleted.\n"
            ),
            Some(2)
        );
        assert_eq!(deleted_count("conntrack v1.4.7: bad"), None);
    }

    #[test]
    fn removed_endpoint_is_the_difference() {
        let mut s = ServiceModel {
            key: "a/b".into(),
            cluster_ip: Some("10.96.0.53".parse().unwrap()),
            external_ips: vec![],
            ports: vec![PortModel {
                name: "dns".into(),
                port: 53,
                target_port: 5353,
                protocol: Protocol::Udp,
                node_port: None,
            }],
            affinity_timeout: None,
            local_only: false,
            endpoints: vec![
                EndpointModel {
                    ip: "10.244.1.2".parse().unwrap(),
                    local: true,
                },
                EndpointModel {
                    ip: "10.244.1.3".parse().unwrap(),
                    local: true,
                },
            ],
        };
        let mut before = UdpState::default();
        before.add(&s);
        s.endpoints.pop();
        let mut after = UdpState::default();
        after.add(&s);
        let gone: Vec<_> = before.flows.difference(&after.flows).collect();
        assert_eq!(
            gone,
            vec![&(
                (Some("10.96.0.53".parse().unwrap()), 53),
                "10.244.1.3".parse().unwrap()
            )]
        );
        assert!(after.served.difference(&before.served).next().is_none());
    }
}
