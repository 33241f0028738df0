//! `trellis policy explain` and `trellis policy check` as text, from the objects alone:
//! which policies select a pod (in evaluation order) and its effective ingress and
//! egress allow-lists, with the pods each rule's peers match right now.

use std::fmt::Write as _;

use trellis_api::objects::{
    CnpPeer, CnpPort, CnpRule, LabelSelector, Peer, PolicyPort, PortRef, Tier,
};

use crate::model::{np_rules, Dir, End, IdentityKey, Inputs, PodInfo, Verdict};

fn labels_text(l: &std::collections::BTreeMap<String, String>) -> String {
    if l.is_empty() {
        "<none>".into()
    } else {
        l.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn np_ports_text(ports: &[PolicyPort]) -> String {
    if ports.is_empty() {
        return "every port".into();
    }
    ports
        .iter()
        .map(|p| match (&p.port, p.end_port) {
            (None, _) => format!("{} (every port)", p.protocol),
            (Some(PortRef::Number(n)), Some(e)) => format!("{} {n}-{e}", p.protocol),
            (Some(PortRef::Number(n)), None) => format!("{} {n}", p.protocol),
            (Some(PortRef::Name(n)), _) => format!("{} port named {n}", p.protocol),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn cnp_ports_text(ports: &[CnpPort]) -> String {
    if ports.is_empty() {
        return "every port".into();
    }
    ports
        .iter()
        .map(|p| {
            if let Some(n) = &p.port_number {
                format!("{} {}", n.protocol, n.port)
            } else if let Some(r) = &p.port_range {
                format!("{} {}-{}", r.protocol, r.start, r.end)
            } else {
                format!("port named {}", p.named_port.clone().unwrap_or_default())
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn sel(s: &LabelSelector) -> String {
    if s.is_empty() {
        "all".into()
    } else {
        s.describe()
    }
}

fn np_peer_text(ns: &str, p: &Peer) -> String {
    if let Some(b) = &p.ip_block {
        let ex = if b.except.is_empty() {
            String::new()
        } else {
            format!(
                " except {}",
                b.except
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            )
        };
        return format!("addresses {}{ex}", b.cidr);
    }
    match (&p.pod_selector, &p.namespace_selector) {
        (Some(ps), Some(ns_sel)) => format!("pods {} in namespaces {}", sel(ps), sel(ns_sel)),
        (Some(ps), None) => format!("pods {} in {ns}", sel(ps)),
        (None, Some(ns_sel)) => format!("every pod in namespaces {}", sel(ns_sel)),
        (None, None) => "nothing".into(),
    }
}

fn cnp_peer_text(p: &CnpPeer) -> String {
    if let Some(n) = &p.namespaces {
        format!("every pod in namespaces {}", sel(n))
    } else if let Some(pods) = &p.pods {
        format!(
            "pods {} in namespaces {}",
            sel(&pods.pod_selector),
            sel(&pods.namespace_selector)
        )
    } else if let Some(n) = &p.nodes {
        format!("nodes {}", sel(n))
    } else {
        format!(
            "networks {}",
            p.networks
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(",")
        )
    }
}

/// The pods NetworkPolicy peers `peers` (of a policy in `ns`) match now.
fn np_matched(inputs: &Inputs, ns: &str, peers: &[Peer]) -> Vec<String> {
    inputs
        .pods
        .values()
        .filter(|q| {
            let k = IdentityKey::of(q);
            peers.is_empty()
                || peers.iter().any(|p| match &p.ip_block {
                    Some(b) => b.contains(q.ip),
                    None => inputs.np_peer_matches(ns, p, &k),
                })
        })
        .map(|q| format!("{}/{} {}", q.namespace, q.name, q.ip))
        .collect()
}

fn matched_text(m: &[String]) -> String {
    match m.len() {
        0 => "no pod now".into(),
        n if n <= 6 => format!("now: {}", m.join(", ")),
        n => format!("now {n} pods: {}, ...", m[..5].join(", ")),
    }
}

fn cnp_rules_text(
    out: &mut String,
    inputs: &Inputs,
    tier: Tier,
    dir: Dir,
    subject: &IdentityKey,
) -> usize {
    let mut n = 0;
    for (name, c) in inputs.cnps_in_order(tier) {
        if !inputs.subject_selects(&c.subject, subject) {
            continue;
        }
        let rules: &[CnpRule] = match dir {
            Dir::Ingress => &c.ingress,
            Dir::Egress => &c.egress,
        };
        for (i, r) in rules.iter().enumerate() {
            let word = if dir == Dir::Ingress { "from" } else { "to" };
            let _ = writeln!(
                out,
                "    {name}/{} (priority {}): {:?} {word} {} on {}",
                r.display_name(i),
                c.priority,
                r.action,
                r.peers
                    .iter()
                    .map(cnp_peer_text)
                    .collect::<Vec<_>>()
                    .join(" or "),
                cnp_ports_text(&r.ports)
            );
            n += 1;
        }
    }
    n
}

/// The explanation of `pod`'s policies.
pub fn explain(inputs: &Inputs, pod: &PodInfo) -> String {
    let s = IdentityKey::of(pod);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Pod {}/{}  {}  on node {}",
        pod.namespace, pod.name, pod.ip, pod.node
    );
    let _ = writeln!(out, "  labels: {}", labels_text(&pod.labels));
    let _ = writeln!(
        out,
        "  namespace labels: {}",
        labels_text(&inputs.ns_labels(&pod.namespace))
    );
    if !pod.ports.is_empty() {
        let ports: Vec<String> = pod
            .ports
            .iter()
            .map(|p| format!("{} {}/{}", p.name, p.container_port, p.protocol))
            .collect();
        let _ = writeln!(out, "  named ports: {}", ports.join(", "));
    }
    let selecting = inputs.selecting(pod);
    if selecting.is_empty() {
        let _ = writeln!(
            out,
            "\nNo policy selects it: all traffic to and from it is allowed."
        );
        return out;
    }
    let _ = writeln!(out, "\nSelected by, in evaluation order:");
    for (i, p) in selecting.iter().enumerate() {
        let _ = writeln!(out, "  {}. {p}", i + 1);
    }
    for dir in [Dir::Ingress, Dir::Egress] {
        let what = match dir {
            Dir::Ingress => "Ingress (to the pod)",
            Dir::Egress => "Egress (from the pod)",
        };
        let _ = writeln!(out, "\n{what}:");
        let _ = writeln!(out, "  1. Admin tier (first match decides):");
        if cnp_rules_text(&mut out, inputs, Tier::Admin, dir, &s) == 0 {
            let _ = writeln!(out, "    none");
        }
        let mut isolating = Vec::new();
        let mut allows = String::new();
        for ((ns, name), np) in &inputs.netpols {
            if !inputs.np_selects(ns, np, &s, dir) {
                continue;
            }
            isolating.push(format!("{ns}/{name}"));
            let rules = np_rules(np, dir);
            for (i, (peers, ports)) in rules.into_iter().enumerate() {
                let peer_text = if peers.is_empty() {
                    "every peer".to_string()
                } else {
                    peers
                        .iter()
                        .map(|p| np_peer_text(ns, p))
                        .collect::<Vec<_>>()
                        .join(" or ")
                };
                let word = if dir == Dir::Ingress { "from" } else { "to" };
                let _ = writeln!(
                    allows,
                    "    allow {word} {peer_text} on {} ({ns}/{name} {}[{i}]; {})",
                    np_ports_text(ports),
                    dir.as_str(),
                    matched_text(&np_matched(inputs, ns, peers))
                );
            }
        }
        if isolating.is_empty() {
            let _ = writeln!(
                out,
                "  2. NetworkPolicies: none selects it for {}",
                dir.as_str()
            );
            let _ = writeln!(
                out,
                "  3. Baseline tier (first match decides, else allowed):"
            );
            if cnp_rules_text(&mut out, inputs, Tier::Baseline, dir, &s) == 0 {
                let _ = writeln!(out, "    none: allowed");
            }
        } else {
            let _ = writeln!(
                out,
                "  2. NetworkPolicies: isolated by {}; only this is allowed:",
                isolating.join(", ")
            );
            if allows.is_empty() {
                let _ = writeln!(out, "    nothing (deny all)");
            } else {
                out.push_str(&allows);
            }
            let _ = writeln!(out, "  3. Baseline tier: not reached (the pod is isolated)");
        }
    }
    out
}

/// The text of a `policy check` verdict.
pub fn verdict_text(src: &End<'_>, dst: &End<'_>, proto: u8, port: u16, v: &Verdict) -> String {
    let name = |e: &End<'_>| match e {
        End::Pod(p) => format!("{}/{} ({})", p.namespace, p.name, p.ip),
        End::Addr(a) => a.to_string(),
    };
    let proto = match proto {
        6 => "TCP".to_string(),
        17 => "UDP".to_string(),
        132 => "SCTP".to_string(),
        n => n.to_string(),
    };
    let mut out = format!(
        "{} {} -> {} port {port}/{proto}\n",
        if v.allowed() { "ALLOWED" } else { "DENIED" },
        name(src),
        name(dst)
    );
    let side = |out: &mut String, what: &str, s: &Option<crate::model::SideVerdict>| match s {
        None => {
            let _ = writeln!(out, "  {what}: not a pod here, no policy applies");
        }
        Some(s) => {
            let _ = writeln!(
                out,
                "  {what}: {} by {}",
                if s.allowed { "allowed" } else { "denied" },
                s.reason
            );
            for l in &s.logged {
                let _ = writeln!(out, "    logged by {l}");
            }
        }
    };
    side(&mut out, "egress of the source", &v.egress);
    side(&mut out, "ingress of the destination", &v.ingress);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PodInfo;
    use std::collections::BTreeMap;
    use trellis_api::objects::{parse_yaml, AnyObject};

    fn pod(ns: &str, name: &str, ip: [u8; 4], labels: &[(&str, &str)]) -> PodInfo {
        PodInfo {
            namespace: ns.into(),
            name: name.into(),
            ip: ip.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            ports: Vec::new(),
            node: "n1".into(),
        }
    }

    fn inputs() -> Inputs {
        let mut i = Inputs::default();
        for p in [
            pod("x", "web", [10, 0, 0, 1], &[("app", "web")]),
            pod("x", "db", [10, 0, 0, 2], &[("app", "db")]),
            pod("y", "client", [10, 0, 0, 3], &[("app", "client")]),
        ] {
            i.pods.insert(p.ip, p);
        }
        let yaml = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db, namespace: x}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}], ports: [{port: 5432}]}]
---
apiVersion: trellis/v1
kind: ClusterNetworkPolicy
metadata: {name: no-y}
spec:
  tier: Admin
  priority: 5
  subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: x}}}
  ingress: [{name: deny-y, action: Deny, from: [{namespaces: {matchLabels: {kubernetes.io/metadata.name: y}}}]}]
"#;
        for o in parse_yaml(yaml).unwrap() {
            match o {
                AnyObject::NetworkPolicy(p) => {
                    i.netpols.insert(
                        (
                            p.metadata.namespace.clone().unwrap(),
                            p.metadata.name.clone(),
                        ),
                        p.spec,
                    );
                }
                AnyObject::ClusterNetworkPolicy(p) => {
                    i.cnps.insert(p.metadata.name.clone(), p.spec);
                }
                _ => unreachable!(),
            }
        }
        i
    }

    #[test]
    fn explain_lists_the_policies_in_order_and_the_allow_list() {
        let i = inputs();
        let db = &i.pods[&[10, 0, 0, 2].into()];
        let text = explain(&i, db);
        let admin = text
            .find("1. ClusterNetworkPolicy no-y (Admin, priority 5)")
            .unwrap();
        let np = text.find("2. NetworkPolicy x/db (Ingress)").unwrap();
        assert!(admin < np, "{text}");
        assert!(
            text.contains(
                "allow from pods app=web in x on TCP 5432 (x/db ingress[0]; now: x/web 10.0.0.1)"
            ),
            "{text}"
        );
        assert!(text.contains("no-y/deny-y (priority 5): Deny from every pod in namespaces kubernetes.io/metadata.name=y"), "{text}");
        let web = &i.pods[&[10, 0, 0, 1].into()];
        assert!(explain(&i, web).contains("2. NetworkPolicies: none selects it for ingress"));
    }

    #[test]
    fn check_names_the_deciding_rule() {
        let i = inputs();
        let p = |ip: [u8; 4]| End::Pod(&i.pods[&ip.into()]);
        let v = i.check(p([10, 0, 0, 1]), p([10, 0, 0, 2]), 6, 5432);
        assert!(v.allowed());
        let t = verdict_text(&p([10, 0, 0, 1]), &p([10, 0, 0, 2]), 6, 5432, &v);
        assert!(
            t.starts_with("ALLOWED x/web (10.0.0.1) -> x/db (10.0.0.2) port 5432/TCP"),
            "{t}"
        );
        assert!(t.contains("NetworkPolicy x/db ingress[0]"), "{t}");
        let v = i.check(p([10, 0, 0, 1]), p([10, 0, 0, 2]), 6, 80);
        assert!(!v.allowed());
        let v = i.check(p([10, 0, 0, 3]), p([10, 0, 0, 1]), 17, 53);
        assert!(!v.allowed(), "the admin Deny wins for y");
        let t = verdict_text(&p([10, 0, 0, 3]), &p([10, 0, 0, 1]), 17, 53, &v);
        assert!(
            t.contains(
                "denied by ClusterNetworkPolicy no-y (Admin, priority 5) ingress[deny-y] (Deny)"
            ),
            "{t}"
        );
        let v = i.check(End::Addr([192, 168, 1, 1].into()), p([10, 0, 0, 1]), 6, 80);
        assert!(v.allowed() && v.egress.is_none());
        // The pod's own node is never policed; another node is.
        let mut i = i.clone();
        for (n, a) in [("n1", [192, 168, 77, 11]), ("n2", [192, 168, 77, 12])] {
            i.nodes.insert(
                n.into(),
                crate::model::NodeInfo {
                    labels: BTreeMap::new(),
                    address: a.into(),
                },
            );
        }
        let db = End::Pod(&i.pods[&[10, 0, 0, 2].into()]);
        assert!(i
            .check(End::Addr([192, 168, 77, 11].into()), db, 6, 80)
            .allowed());
        assert!(!i
            .check(End::Addr([192, 168, 77, 12].into()), db, 6, 80)
            .allowed());
    }
}
