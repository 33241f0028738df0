//! UDP conntrack clean-up with the `conntrack` tool, one service destination and
//! endpoint at a time (never a flush).
//!
//! UDP has no connection end: a client that keeps sending to a service address keeps
//! its conntrack entry, and with it the endpoint chosen for its first packet, even after
//! that endpoint is gone. So when an endpoint leaves a UDP service port, exactly the
//! entries whose translation points at it (endpoint address and target port) for that
//! service address and port are deleted. And when a UDP service address becomes served
//! (its first endpoint, or the service is new), entries created before, which were not
//! translated at all, are deleted too.
//!
//! Two ways to find them: [`clean`] diffs the services before and after a partial
//! update (no table dump on the hot path); [`sweep`], run by every full sync, reads the
//! kernel's UDP entries and deletes those the current services do not allow, so an
//! endpoint that left while the agent was down, or during a failed update, is cleaned
//! up too.

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
    /// (destination, endpoint address, target port).
    flows: BTreeSet<(Dest, Ipv4Addr, u16)>,
    /// Every UDP service destination.
    dests: BTreeSet<Dest>,
    /// Destinations with at least one endpoint for their traffic.
    served: BTreeSet<Dest>,
}

impl UdpState {
    /// The flows `services` allow.
    pub(crate) fn of<'a>(services: impl IntoIterator<Item = &'a ServiceModel>) -> Self {
        let mut st = UdpState::default();
        for s in services {
            st.add(s);
        }
        st
    }

    fn add(&mut self, svc: &ServiceModel) {
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
                self.dests.insert(d);
                if served {
                    self.served.insert(d);
                }
                for ep in &svc.endpoints {
                    self.flows.insert((d, ep.ip, p.target_port));
                }
            }
        }
    }
}

/// One deletion: entries to `dst` (`None`: any address) and `port` whose reply comes
/// from `reply` (address and port).
type Deletion = (Option<Ipv4Addr>, u16, Ipv4Addr, u16);

/// What a clean-up did: entries deleted, and the first failure (the other deletions
/// were still tried).
pub(crate) type Outcome = (usize, Option<ProxyError>);

/// Delete the entries `before` allowed and `after` does not, and the untranslated
/// entries of destinations that became served, running `program` (conntrack-tools).
pub(crate) fn clean(
    program: &str,
    before: &UdpState,
    after: &UdpState,
    node_ips: &[Ipv4Addr],
) -> Outcome {
    let mut dels: BTreeSet<Deletion> = BTreeSet::new();
    for ((dst, port), ep, target) in before.flows.difference(&after.flows) {
        match dst {
            Some(_) => {
                dels.insert((*dst, *port, *ep, *target));
            }
            None if node_ips.is_empty() => {
                dels.insert((None, *port, *ep, *target));
            }
            None => dels.extend(node_ips.iter().map(|a| (Some(*a), *port, *ep, *target))),
        }
    }
    for (dst, port) in after.served.difference(&before.served) {
        let addrs = match dst {
            Some(a) => vec![*a],
            None => node_ips.to_vec(),
        };
        dels.extend(addrs.into_iter().map(|a| (Some(a), *port, a, *port)));
    }
    delete_all(program, dels)
}

/// Run every deletion, keeping going after a failure.
fn delete_all(program: &str, dels: BTreeSet<Deletion>) -> Outcome {
    let mut deleted = 0;
    let mut first_error = None;
    for d in dels {
        match delete(program, d) {
            Ok(n) => deleted += n,
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    (deleted, first_error)
}

/// One UDP conntrack entry: its original destination and its reply source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    dst: Ipv4Addr,
    dport: u16,
    reply_src: Ipv4Addr,
    reply_sport: u16,
}

/// Read the kernel's UDP entries and delete those `state` does not allow: translated to
/// an endpoint (address and port) the destination no longer has, or untranslated to a
/// destination that is served now. Node ports count on `node_ips` (with none given, only
/// translated entries are judged).
pub(crate) fn sweep(program: &str, state: &UdpState, node_ips: &[Ipv4Addr]) -> Outcome {
    if state.dests.is_empty() {
        return (0, None);
    }
    let out = match Command::new(program).args(["-L", "-p", "udp"]).output() {
        Ok(out) => out,
        Err(e) => return (0, Some(not_runnable(program, e))),
    };
    if !out.status.success() {
        let e = ProxyError::Conntrack(format!(
            "{program} -L -p udp: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
        return (0, Some(e));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let dels: BTreeSet<Deletion> = text
        .lines()
        .filter_map(parse_entry)
        .filter_map(|e| stale(state, node_ips, &e))
        .collect();
    delete_all(program, dels)
}

fn not_runnable(program: &str, e: std::io::Error) -> ProxyError {
    ProxyError::Conntrack(format!(
        "run {program} (is conntrack-tools installed?): {e}"
    ))
}

/// The deletion `e` calls for, if `state` does not allow it.
fn stale(state: &UdpState, node_ips: &[Ipv4Addr], e: &Entry) -> Option<Deletion> {
    let translated = (e.reply_src, e.reply_sport) != (e.dst, e.dport);
    let exact = (Some(e.dst), e.dport);
    let dest = if state.dests.contains(&exact) {
        exact
    } else if state.dests.contains(&(None, e.dport))
        && (node_ips.contains(&e.dst) || (node_ips.is_empty() && translated))
    {
        (None, e.dport)
    } else {
        return None;
    };
    let allowed = if translated {
        state.flows.contains(&(dest, e.reply_src, e.reply_sport))
    } else {
        !state.served.contains(&dest)
    };
    (!allowed).then_some((Some(e.dst), e.dport, e.reply_src, e.reply_sport))
}

/// `udp 17 29 src=A dst=B sport=P dport=Q [UNREPLIED] src=C dst=D sport=R dport=S ...`:
/// the first `dst`/`dport` are the original destination, the second `src`/`sport`
/// the reply source.
fn parse_entry(line: &str) -> Option<Entry> {
    let mut dst = Vec::new();
    let mut dport = Vec::new();
    let mut src = Vec::new();
    let mut sport = Vec::new();
    for w in line.split_whitespace() {
        if let Some(v) = w.strip_prefix("dst=") {
            dst.push(v);
        } else if let Some(v) = w.strip_prefix("dport=") {
            dport.push(v);
        } else if let Some(v) = w.strip_prefix("src=") {
            src.push(v);
        } else if let Some(v) = w.strip_prefix("sport=") {
            sport.push(v);
        }
    }
    Some(Entry {
        dst: dst.first()?.parse().ok()?,
        dport: dport.first()?.parse().ok()?,
        reply_src: src.get(1)?.parse().ok()?,
        reply_sport: sport.get(1)?.parse().ok()?,
    })
}

/// `conntrack -D -p udp [--orig-dst dst] --orig-port-dst port --reply-src r --reply-port-src rp`.
fn delete(
    program: &str,
    (dst, port, reply_src, reply_port): Deletion,
) -> Result<usize, ProxyError> {
    let mut cmd = Command::new(program);
    cmd.args(["-D", "-p", "udp"]);
    if let Some(d) = dst {
        cmd.args(["--orig-dst", &d.to_string()]);
    }
    cmd.args(["--orig-port-dst", &port.to_string()]);
    cmd.args(["--reply-src", &reply_src.to_string()]);
    cmd.args(["--reply-port-src", &reply_port.to_string()]);
    let out = cmd.output().map_err(|e| not_runnable(program, e))?;
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

    /// A UDP service `10.96.0.53:53 -> :5353` with endpoints `10.244.1.<last>`.
    fn dns_service(node_port: Option<u16>, last: &[u8]) -> ServiceModel {
        ServiceModel {
            key: "a/b".into(),
            cluster_ip: Some("10.96.0.53".parse().unwrap()),
            external_ips: vec![],
            ports: vec![PortModel {
                name: "dns".into(),
                port: 53,
                target_port: 5353,
                protocol: Protocol::Udp,
                node_port,
            }],
            affinity_timeout: None,
            local_only: false,
            endpoints: last
                .iter()
                .map(|l| EndpointModel {
                    ip: Ipv4Addr::new(10, 244, 1, *l),
                    local: true,
                })
                .collect(),
        }
    }

    #[test]
    fn removed_endpoint_is_the_difference() {
        let mut s = dns_service(None, &[2, 3]);
        let before = UdpState::of([&s]);
        s.endpoints.pop();
        let after = UdpState::of([&s]);
        let gone: Vec<_> = before.flows.difference(&after.flows).collect();
        assert_eq!(
            gone,
            vec![&(
                (Some("10.96.0.53".parse().unwrap()), 53),
                "10.244.1.3".parse().unwrap(),
                5353
            )]
        );
        assert!(after.served.difference(&before.served).next().is_none());
    }

    fn entry(line: &str) -> Entry {
        parse_entry(line).unwrap_or_else(|| panic!("unparsed: {line}"))
    }

    #[test]
    fn sweep_judges_kernel_entries_against_the_services() {
        let mut s = dns_service(Some(30053), &[2]);
        let state = UdpState::of([&s]);
        let node: Vec<Ipv4Addr> = vec!["192.168.1.10".parse().unwrap()];
        let to_gone = entry("udp      17 29 src=10.244.2.9 dst=10.96.0.53 sport=4000 dport=53 src=10.244.1.3 dst=10.244.2.9 sport=5353 dport=4000 mark=0 use=1");
        assert_eq!(
            stale(&state, &node, &to_gone),
            Some((
                Some("10.96.0.53".parse().unwrap()),
                53,
                "10.244.1.3".parse().unwrap(),
                5353
            ))
        );
        let to_current = entry("udp 17 29 src=10.244.2.9 dst=10.96.0.53 sport=4001 dport=53 [UNREPLIED] src=10.244.1.2 dst=10.244.2.9 sport=5353 dport=4001 mark=0 use=1");
        assert_eq!(stale(&state, &node, &to_current), None);
        // Served now: an untranslated entry from before goes.
        let untranslated = entry("udp 17 29 src=192.168.1.99 dst=192.168.1.10 sport=4002 dport=30053 [UNREPLIED] src=192.168.1.10 dst=192.168.1.99 sport=30053 dport=4002 mark=0 use=1");
        assert!(stale(&state, &node, &untranslated).is_some());
        // Another address, or a port no service uses: not ours to judge.
        let other = entry("udp 17 29 src=10.244.2.9 dst=10.244.3.3 sport=4003 dport=53 src=10.244.3.3 dst=10.244.2.9 sport=53 dport=4003 mark=0 use=1");
        assert_eq!(stale(&state, &node, &other), None);
        let pod_port = entry("udp 17 29 src=10.244.2.9 dst=10.244.3.3 sport=4004 dport=30053 src=10.244.3.3 dst=10.244.2.9 sport=30053 dport=4004 mark=0 use=1");
        assert_eq!(stale(&state, &node, &pod_port), None);
        // A service without endpoints keeps untranslated entries (they are rejected anyway).
        s.endpoints.clear();
        let empty = UdpState::of([&s]);
        assert_eq!(stale(&empty, &node, &untranslated), None);
        assert!(stale(&empty, &node, &to_current).is_some());
    }
}
