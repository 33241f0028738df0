//! The standard layout and the conformance cases.
//!
//! The layout is the one of the Kubernetes netpol e2e tests and cyclonus: namespaces
//! `x`, `y`, `z` (labels `ns: <name>`), pods `a`, `b`, `c` in each (labels `pod: <name>`;
//! named ports `serve-80-tcp`, `serve-81-tcp`, `serve-80-udp`, `serve-81-udp`), spread
//! over the nodes in turn; every pod is probed from every pod on TCP and UDP ports 80
//! and 81.
//!
//! A [`Case`] is data: the objects to apply (NetworkPolicies, ClusterNetworkPolicies,
//! and Namespace / Pod objects that change labels or named ports). Cases depend on the
//! pods' addresses (ipBlock and network peers), which a lab only knows once its pods
//! exist, so [`cases`] takes the [`Layout`]. The expected matrix of a case is the
//! [oracle](super::oracle)'s.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use trellis_api::objects::{parse_yaml, AnyObject, ContainerPort, Kind, PolicyProtocol};

use super::oracle::{Labels, NamespaceInfo, NodeInfo, Oracle, PodInfo};
use super::{Matrix, PROBE_COLUMNS};

/// The namespaces of the standard layout.
pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
/// The pods of each namespace.
pub const PODS: [&str; 3] = ["a", "b", "c"];

/// The named ports every pod of the standard layout declares.
pub fn standard_ports() -> Vec<ContainerPort> {
    let port = |name: &str, n: u16, protocol| ContainerPort {
        name: name.into(),
        container_port: n,
        protocol,
    };
    vec![
        port("serve-80-tcp", 80, PolicyProtocol::Tcp),
        port("serve-81-tcp", 81, PolicyProtocol::Tcp),
        port("serve-80-udp", 80, PolicyProtocol::Udp),
        port("serve-81-udp", 81, PolicyProtocol::Udp),
    ]
}

fn label(k: &str, v: &str) -> Labels {
    [(k.to_string(), v.to_string())].into_iter().collect()
}

/// The standard pods' `namespace/name`, in layout order (`x/a`, `x/b`, ... `z/c`).
pub fn standard_pod_keys() -> Vec<(String, String)> {
    NAMESPACES
        .iter()
        .flat_map(|ns| PODS.iter().map(move |p| (ns.to_string(), p.to_string())))
        .collect()
}

/// The Namespace and Pod objects of the standard layout (apply them before the pods are
/// attached, so their endpoints bind to them).
pub fn standard_objects() -> Vec<AnyObject> {
    let mut yaml = String::new();
    for ns in NAMESPACES {
        yaml.push_str(&namespace_yaml(ns, &format!("{{ns: {ns}}}")));
    }
    for (ns, pod) in standard_pod_keys() {
        yaml.push_str(&pod_yaml(
            &ns,
            &pod,
            &format!("{{pod: {pod}}}"),
            STANDARD_PORTS_YAML,
        ));
    }
    parse(&yaml)
}

const STANDARD_PORTS_YAML: &str = "[{name: serve-80-tcp, containerPort: 80}, {name: serve-81-tcp, containerPort: 81}, {name: serve-80-udp, containerPort: 80, protocol: UDP}, {name: serve-81-udp, containerPort: 81, protocol: UDP}]";

/// Pods and nodes of a run: the standard layout with real addresses.
#[derive(Debug, Clone)]
pub struct Layout {
    /// `x`, `y`, `z` with their labels.
    pub namespaces: Vec<NamespaceInfo>,
    /// `x/a` ... `z/c`, in that order.
    pub pods: Vec<PodInfo>,
    /// The nodes.
    pub nodes: Vec<NodeInfo>,
}

impl Layout {
    /// The standard layout: pod `i` (in [`standard_pod_keys`] order) has address
    /// `pod_ips[i]` and runs on node `i % nodes.len()`.
    pub fn standard(pod_ips: &[Ipv4Addr], nodes: Vec<NodeInfo>) -> Layout {
        let keys = standard_pod_keys();
        assert_eq!(pod_ips.len(), keys.len(), "one address per standard pod");
        assert!(!nodes.is_empty(), "at least one node");
        let pods = keys
            .into_iter()
            .zip(pod_ips)
            .enumerate()
            .map(|(i, ((ns, name), ip))| PodInfo {
                labels: label("pod", &name),
                namespace: ns,
                name,
                ip: *ip,
                node: nodes[i % nodes.len()].name.clone(),
                ports: standard_ports(),
            })
            .collect();
        Layout {
            namespaces: NAMESPACES
                .iter()
                .map(|ns| NamespaceInfo {
                    name: ns.to_string(),
                    labels: label("ns", ns),
                })
                .collect(),
            pods,
            nodes,
        }
    }

    /// The node index pod `i` runs on in the standard layout.
    pub fn node_of(pod: usize, nodes: usize) -> usize {
        pod % nodes
    }

    /// The address of pod `namespace/name`.
    pub fn ip(&self, key: &str) -> Ipv4Addr {
        self.pods
            .iter()
            .find(|p| p.key() == key)
            .unwrap_or_else(|| panic!("no pod {key}"))
            .ip
    }

    /// The oracle of the layout without any policy.
    pub fn oracle(&self) -> Oracle {
        Oracle::new(&self.namespaces, self.pods.clone(), self.nodes.clone())
    }
}

/// One conformance case: objects to apply on top of the standard layout.
#[derive(Debug, Clone)]
pub struct Case {
    /// A unique, descriptive name.
    pub name: String,
    /// The objects: policies, and Namespace / Pod objects replacing the layout's.
    pub objects: Vec<AnyObject>,
}

impl Case {
    /// The oracle of the layout with this case's objects.
    pub fn oracle(&self, layout: &Layout) -> Oracle {
        let mut o = layout.oracle();
        for obj in &self.objects {
            o.apply(obj);
        }
        o
    }

    /// The expected matrix on [`PROBE_COLUMNS`].
    pub fn expected(&self, layout: &Layout) -> Matrix {
        Matrix::expected(&self.oracle(layout), &PROBE_COLUMNS)
    }

    /// The policies (NetworkPolicy, ClusterNetworkPolicy) of the case: what to delete
    /// after it.
    pub fn policies(&self) -> Vec<&AnyObject> {
        self.objects
            .iter()
            .filter(|o| matches!(o.kind(), Kind::NetworkPolicy | Kind::ClusterNetworkPolicy))
            .collect()
    }

    /// Whether the case changes Namespace or Pod objects (labels, named ports), which
    /// must be put back after it.
    pub fn changes_labels(&self) -> bool {
        self.objects
            .iter()
            .any(|o| matches!(o.kind(), Kind::Namespace | Kind::Pod | Kind::Node))
    }

    /// The standard objects this case replaces (to restore after it).
    pub fn restore_objects(&self) -> Vec<AnyObject> {
        let changed: BTreeSet<(Kind, Option<String>, String)> = self
            .objects
            .iter()
            .filter(|o| matches!(o.kind(), Kind::Namespace | Kind::Pod))
            .map(|o| {
                (
                    o.kind(),
                    o.namespace().map(String::from),
                    o.name().to_string(),
                )
            })
            .collect();
        standard_objects()
            .into_iter()
            .filter(|o| {
                changed.contains(&(
                    o.kind(),
                    o.namespace().map(String::from),
                    o.name().to_string(),
                ))
            })
            .collect()
    }

    /// A manifest of the objects for `trellis apply -f -` / `trellis delete -f -`: a
    /// JSON stream, one object per line.
    pub fn manifest(objects: &[&AnyObject]) -> String {
        objects
            .iter()
            .map(|o| String::from_utf8(o.to_json()).expect("JSON is UTF-8") + "\n")
            .collect()
    }
}

fn parse(yaml: &str) -> Vec<AnyObject> {
    let objects = parse_yaml(yaml).unwrap_or_else(|e| panic!("case YAML: {e}\n{yaml}"));
    for o in &objects {
        o.validate()
            .unwrap_or_else(|e| panic!("case object {}: {e}\n{yaml}", o.name()));
    }
    objects
}

fn namespace_yaml(name: &str, labels: &str) -> String {
    format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {labels}}}\n---\n")
}

fn pod_yaml(ns: &str, name: &str, labels: &str, ports: &str) -> String {
    format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {labels}}}\nspec: {{ports: {ports}}}\n---\n")
}

/// A NetworkPolicy document; `spec` in YAML flow style.
fn np(ns: &str, name: &str, spec: &str) -> String {
    format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n---\n")
}

/// A ClusterNetworkPolicy document; `spec` in YAML flow style.
fn cnp(name: &str, spec: &str) -> String {
    format!("apiVersion: trellis/v1\nkind: ClusterNetworkPolicy\nmetadata: {{name: {name}}}\nspec: {spec}\n---\n")
}

/// `ip/prefix` as a network address.
fn net(ip: Ipv4Addr, prefix: u8) -> String {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    };
    format!("{}/{prefix}", Ipv4Addr::from(u32::from(ip) & mask))
}

struct Gen {
    cases: Vec<Case>,
}

impl Gen {
    fn add(&mut self, name: impl Into<String>, yaml: String) {
        let name = name.into();
        assert!(
            !self.cases.iter().any(|c| c.name == name),
            "case {name} twice"
        );
        self.cases.push(Case {
            name,
            objects: parse(&yaml),
        });
    }
}

/// Every case over `layout` (at least 200).
pub fn cases(layout: &Layout) -> Vec<Case> {
    let mut g = Gen { cases: Vec::new() };
    default_policies(&mut g);
    peers(&mut g, layout);
    ports(&mut g);
    policy_types(&mut g);
    additive(&mut g, layout);
    expressions(&mut g);
    label_changes(&mut g);
    admin(&mut g, layout);
    baseline(&mut g);
    g.cases
}

/// The NetworkPolicy peers (`from` / `to` items) every peer kind is tried with.
fn peer_variants(l: &Layout) -> Vec<(&'static str, String)> {
    let ya = l.ip("y/a");
    let xb = l.ip("x/b");
    let zb = l.ip("z/b");
    let zc = l.ip("z/c");
    let xa = l.ip("x/a");
    let yb = l.ip("y/b");
    vec![
        ("pod-b", "[{podSelector: {matchLabels: {pod: b}}}]".into()),
        ("pods-all", "[{podSelector: {}}]".into()),
        ("ns-y", "[{namespaceSelector: {matchLabels: {ns: y}}}]".into()),
        ("ns-all", "[{namespaceSelector: {}}]".into()),
        (
            "ns-name-z",
            "[{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: z}}}]".into(),
        ),
        (
            "ns-y-and-pod-c",
            "[{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: c}}}]"
                .into(),
        ),
        (
            "ns-all-and-pod-a",
            "[{namespaceSelector: {}, podSelector: {matchLabels: {pod: a}}}]".into(),
        ),
        (
            "ns-y-or-pod-c",
            "[{namespaceSelector: {matchLabels: {ns: y}}}, {podSelector: {matchLabels: {pod: c}}}]"
                .into(),
        ),
        (
            "pod-in-a-b",
            "[{podSelector: {matchExpressions: [{key: pod, operator: In, values: [a, b]}]}}]".into(),
        ),
        (
            "pod-notin-a",
            "[{podSelector: {matchExpressions: [{key: pod, operator: NotIn, values: [a]}]}}]".into(),
        ),
        (
            "pod-exists",
            "[{podSelector: {matchExpressions: [{key: pod, operator: Exists}]}}]".into(),
        ),
        (
            "pod-doesnotexist",
            "[{podSelector: {matchExpressions: [{key: pod, operator: DoesNotExist}]}}]".into(),
        ),
        (
            "ns-in-y-z",
            "[{namespaceSelector: {matchExpressions: [{key: ns, operator: In, values: [y, z]}]}}]"
                .into(),
        ),
        (
            "ns-notin-x",
            "[{namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [x]}]}}]"
                .into(),
        ),
        (
            "ns-doesnotexist",
            "[{namespaceSelector: {matchExpressions: [{key: ns, operator: DoesNotExist}]}}]".into(),
        ),
        (
            "ns-notin-x-and-pod-notin-b",
            "[{namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [x]}]}, podSelector: {matchExpressions: [{key: pod, operator: NotIn, values: [b]}]}}]".into(),
        ),
        ("ipblock-y-a", format!("[{{ipBlock: {{cidr: {}}}}}]", net(ya, 32))),
        ("ipblock-24-of-z-b", format!("[{{ipBlock: {{cidr: {}}}}}]", net(zb, 24))),
        (
            "ipblock-all-except-x-b",
            format!("[{{ipBlock: {{cidr: 0.0.0.0/0, except: [{}]}}}}]", net(xb, 32)),
        ),
        (
            "ipblock-16-except-24-of-y-a",
            format!(
                "[{{ipBlock: {{cidr: {}, except: [{}]}}}}]",
                net(ya, 16),
                net(ya, 24)
            ),
        ),
        (
            "ipblock-24-except-two",
            format!(
                "[{{ipBlock: {{cidr: {}, except: [{}, {}]}}}}]",
                net(xa, 24),
                net(xa, 32),
                net(zc, 32)
            ),
        ),
        ("ipblock-unrelated", "[{ipBlock: {cidr: 192.0.2.0/24}}]".into()),
        (
            "pod-b-or-ipblock-z-c",
            format!(
                "[{{podSelector: {{matchLabels: {{pod: b}}}}}}, {{ipBlock: {{cidr: {}}}}}]",
                net(zc, 32)
            ),
        ),
        (
            "ipblock-two-blocks",
            format!(
                "[{{ipBlock: {{cidr: {}}}}}, {{ipBlock: {{cidr: {}}}}}]",
                net(yb, 32),
                net(xa, 32)
            ),
        ),
    ]
}

/// The NetworkPolicy `ports` lists every port form is tried with.
fn port_variants() -> Vec<(&'static str, &'static str)> {
    vec![
        ("tcp-80", "[{port: 80}]"),
        ("tcp-81-explicit", "[{protocol: TCP, port: 81}]"),
        ("udp-80", "[{protocol: UDP, port: 80}]"),
        ("udp-81", "[{protocol: UDP, port: 81}]"),
        ("udp-only", "[{protocol: UDP}]"),
        ("tcp-only", "[{protocol: TCP}]"),
        ("sctp-only", "[{protocol: SCTP}]"),
        ("named-serve-80-tcp", "[{port: serve-80-tcp}]"),
        (
            "named-serve-81-udp",
            "[{protocol: UDP, port: serve-81-udp}]",
        ),
        (
            "named-wrong-protocol",
            "[{protocol: UDP, port: serve-80-tcp}]",
        ),
        ("named-undeclared", "[{port: serve-82-tcp}]"),
        ("range-80-81", "[{port: 80, endPort: 81}]"),
        (
            "range-81-90-udp",
            "[{protocol: UDP, port: 81, endPort: 90}]",
        ),
        ("range-70-79", "[{port: 70, endPort: 79}]"),
        (
            "range-1-65535-udp",
            "[{protocol: UDP, port: 1, endPort: 65535}]",
        ),
        (
            "tcp-80-or-udp-81",
            "[{port: 80}, {protocol: UDP, port: 81}]",
        ),
        (
            "named-tcp-81-or-udp-80",
            "[{port: serve-81-tcp}, {protocol: UDP, port: 80}]",
        ),
        ("range-80-80", "[{port: 80, endPort: 80}]"),
    ]
}

fn default_policies(g: &mut Gen) {
    for ns in NAMESPACES {
        g.add(
            format!("deny-all-ingress-{ns}"),
            np(
                ns,
                "deny-ingress",
                "{podSelector: {}, policyTypes: [Ingress]}",
            ),
        );
        g.add(
            format!("deny-all-egress-{ns}"),
            np(
                ns,
                "deny-egress",
                "{podSelector: {}, policyTypes: [Egress]}",
            ),
        );
        g.add(
            format!("deny-all-{ns}"),
            np(
                ns,
                "deny-all",
                "{podSelector: {}, policyTypes: [Ingress, Egress]}",
            ),
        );
    }
    g.add(
        "deny-ingress-implicit-types",
        np("x", "deny", "{podSelector: {}}"),
    );
    g.add(
        "deny-ingress-one-pod",
        np("y", "deny", "{podSelector: {matchLabels: {pod: b}}}"),
    );
    g.add(
        "deny-egress-one-pod",
        np(
            "z",
            "deny",
            "{podSelector: {matchLabels: {pod: c}}, policyTypes: [Egress]}",
        ),
    );
    g.add(
        "allow-all-ingress-x",
        np("x", "allow", "{podSelector: {}, ingress: [{}]}"),
    );
    g.add(
        "allow-all-egress-x",
        np(
            "x",
            "allow",
            "{podSelector: {}, policyTypes: [Egress], egress: [{}]}",
        ),
    );
    g.add(
        "deny-all-and-allow-all-ingress",
        np("x", "deny", "{podSelector: {}}")
            + &np("x", "allow", "{podSelector: {}, ingress: [{}]}"),
    );
    g.add(
        "deny-all-and-allow-all-egress",
        np(
            "y",
            "deny",
            "{podSelector: {}, policyTypes: [Ingress, Egress]}",
        ) + &np(
            "y",
            "allow",
            "{podSelector: {}, policyTypes: [Egress], egress: [{}]}",
        ),
    );
    g.add(
        "deny-all-everywhere",
        NAMESPACES
            .iter()
            .map(|ns| {
                np(
                    ns,
                    "deny-all",
                    "{podSelector: {}, policyTypes: [Ingress, Egress]}",
                )
            })
            .collect(),
    );
    g.add(
        "deny-ingress-everywhere-allow-from-same-namespace",
        NAMESPACES
            .iter()
            .map(|ns| {
                np(ns, "deny", "{podSelector: {}}")
                    + &np(
                        ns,
                        "same-ns",
                        "{podSelector: {}, ingress: [{from: [{podSelector: {}}]}]}",
                    )
            })
            .collect(),
    );
}

fn peers(g: &mut Gen, l: &Layout) {
    for (name, peers) in peer_variants(l) {
        g.add(
            format!("ingress-x-a-from-{name}"),
            np(
                "x",
                "ingress",
                &format!(
                    "{{podSelector: {{matchLabels: {{pod: a}}}}, ingress: [{{from: {peers}}}]}}"
                ),
            ),
        );
        g.add(
            format!("egress-y-b-to-{name}"),
            np(
                "y",
                "egress",
                &format!("{{podSelector: {{matchLabels: {{pod: b}}}}, policyTypes: [Egress], egress: [{{to: {peers}}}]}}"),
            ),
        );
        g.add(
            format!("both-z-all-with-{name}"),
            np(
                "z",
                "both",
                &format!("{{podSelector: {{}}, ingress: [{{from: {peers}}}], egress: [{{to: {peers}}}]}}"),
            ),
        );
    }
    // Peers and ports in one rule: both must match.
    for (name, peers, ports) in [
        (
            "pod-b-tcp-80",
            "[{podSelector: {matchLabels: {pod: b}}}]",
            "[{port: 80}]",
        ),
        (
            "ns-y-udp",
            "[{namespaceSelector: {matchLabels: {ns: y}}}]",
            "[{protocol: UDP}]",
        ),
        (
            "ns-z-and-pod-a-named-81-tcp",
            "[{namespaceSelector: {matchLabels: {ns: z}}, podSelector: {matchLabels: {pod: a}}}]",
            "[{port: serve-81-tcp}]",
        ),
        (
            "two-peers-two-ports",
            "[{namespaceSelector: {matchLabels: {ns: x}}}, {podSelector: {matchLabels: {pod: c}}}]",
            "[{port: 81}, {protocol: UDP, port: 80, endPort: 81}]",
        ),
    ] {
        g.add(
            format!("ingress-y-all-from-{name}"),
            np(
                "y",
                "peer-port",
                &format!("{{podSelector: {{}}, ingress: [{{from: {peers}, ports: {ports}}}]}}"),
            ),
        );
        g.add(
            format!("egress-x-all-to-{name}"),
            np(
                "x",
                "peer-port",
                &format!("{{podSelector: {{}}, policyTypes: [Egress], egress: [{{to: {peers}, ports: {ports}}}]}}"),
            ),
        );
    }
    // Two rules: OR of rules, each an AND of its peers and ports.
    g.add(
        "ingress-two-rules",
        np(
            "x",
            "rules",
            "{podSelector: {}, ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}], ports: [{port: 80}]}, {from: [{namespaceSelector: {matchLabels: {ns: z}}}], ports: [{protocol: UDP, port: 81}]}]}",
        ),
    );
    g.add(
        "egress-two-rules",
        np(
            "z",
            "rules",
            "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], egress: [{to: [{podSelector: {}}]}, {to: [{namespaceSelector: {matchLabels: {ns: x}}}], ports: [{port: 81}]}]}",
        ),
    );
}

fn ports(g: &mut Gen) {
    for (name, ports) in port_variants() {
        g.add(
            format!("ingress-x-b-ports-{name}"),
            np(
                "x",
                "ports",
                &format!(
                    "{{podSelector: {{matchLabels: {{pod: b}}}}, ingress: [{{ports: {ports}}}]}}"
                ),
            ),
        );
        g.add(
            format!("egress-z-a-ports-{name}"),
            np(
                "z",
                "ports",
                &format!("{{podSelector: {{matchLabels: {{pod: a}}}}, policyTypes: [Egress], egress: [{{ports: {ports}}}]}}"),
            ),
        );
        g.add(
            format!("ingress-y-all-ports-{name}"),
            np(
                "y",
                "ports",
                &format!("{{podSelector: {{}}, ingress: [{{ports: {ports}}}]}}"),
            ),
        );
    }
    // Named ports whose number differs between pods: `web` is 80 on x/a, 81 on y/a and
    // undeclared elsewhere; ingress resolves it on the subject, egress on the peer.
    let web = |ns: &str, pod: &str, port: u16| {
        pod_yaml(
            ns,
            pod,
            &format!("{{pod: {pod}}}"),
            &format!("[{{name: web, containerPort: {port}}}, {{name: web, containerPort: {port}, protocol: UDP}}]"),
        )
    };
    let webs = web("x", "a", 80) + &web("y", "a", 81);
    g.add(
        "named-port-differs-per-pod-ingress",
        webs.clone()
            + &np(
                "x",
                "web",
                "{podSelector: {}, ingress: [{ports: [{port: web}]}]}",
            )
            + &np(
                "y",
                "web",
                "{podSelector: {}, ingress: [{ports: [{port: web, protocol: UDP}]}]}",
            ),
    );
    g.add(
        "named-port-differs-per-pod-egress",
        webs.clone()
            + &np(
                "z",
                "web",
                "{podSelector: {}, policyTypes: [Egress], egress: [{ports: [{port: web}]}]}",
            ),
    );
    g.add(
        "named-port-differs-per-pod-both",
        webs
            + &np("x", "web", "{podSelector: {}, ingress: [{ports: [{port: web, protocol: UDP}]}], egress: [{ports: [{port: web}]}]}"),
    );
    g.add(
        "named-port-removed-from-pod",
        pod_yaml(
            "x",
            "b",
            "{pod: b}",
            "[{name: serve-81-tcp, containerPort: 81}]",
        ) + &np(
            "x",
            "named",
            "{podSelector: {}, ingress: [{ports: [{port: serve-80-tcp}, {port: serve-81-tcp}]}]}",
        ),
    );
}

fn policy_types(g: &mut Gen) {
    let variants = [
        ("implicit-no-rules", "{SEL}"),
        ("ingress-no-rules", "{SEL, policyTypes: [Ingress]}"),
        ("egress-no-rules", "{SEL, policyTypes: [Egress]}"),
        ("both-no-rules", "{SEL, policyTypes: [Ingress, Egress]}"),
        ("implicit-allow-ingress", "{SEL, ingress: [{}]}"),
        ("implicit-egress-rule", "{SEL, egress: [{}]}"),
        ("egress-allow-all", "{SEL, policyTypes: [Egress], egress: [{}]}"),
        ("both-allow-all", "{SEL, policyTypes: [Ingress, Egress], ingress: [{}], egress: [{}]}"),
        (
            "implicit-both-rules",
            "{SEL, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}], egress: [{to: [{namespaceSelector: {matchLabels: {ns: z}}}]}]}",
        ),
        (
            "ingress-only-with-egress-rules",
            "{SEL, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}], egress: [{to: [{namespaceSelector: {matchLabels: {ns: z}}}]}]}",
        ),
        (
            "egress-only-with-ingress-rules",
            "{SEL, policyTypes: [Egress], ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}], egress: [{to: [{namespaceSelector: {matchLabels: {ns: z}}}]}]}",
        ),
        (
            "implicit-egress-ports-only",
            "{SEL, egress: [{ports: [{protocol: UDP, port: 80}]}]}",
        ),
    ];
    for (subject, ns, sel) in [
        ("x-all", "x", "podSelector: {}"),
        ("y-c", "y", "podSelector: {matchLabels: {pod: c}}"),
    ] {
        for (name, spec) in variants {
            g.add(
                format!("types-{subject}-{name}"),
                np(ns, "types", &spec.replace("SEL", sel)),
            );
        }
    }
}

fn additive(g: &mut Gen, l: &Layout) {
    g.add(
        "additive-two-sources",
        np("x", "from-y", "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]}")
            + &np("x", "from-b", "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]}"),
    );
    g.add(
        "additive-ingress-and-egress-policies",
        np("y", "in", "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: x}}}]}]}")
            + &np("y", "out", "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {matchLabels: {ns: z}}}]}]}"),
    );
    g.add(
        "additive-deny-plus-port",
        np(
            "z",
            "deny",
            "{podSelector: {}, policyTypes: [Ingress, Egress]}",
        ) + &np(
            "z",
            "tcp80",
            "{podSelector: {}, ingress: [{ports: [{port: 80}]}], egress: [{ports: [{port: 80}]}]}",
        ),
    );
    g.add(
        "additive-overlapping-selectors",
        np("x", "all", "{podSelector: {}, ingress: [{from: [{podSelector: {matchLabels: {pod: c}}}]}]}")
            + &np("x", "ab", "{podSelector: {matchExpressions: [{key: pod, operator: In, values: [a, b]}]}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}], ports: [{protocol: UDP}]}]}"),
    );
    g.add(
        "additive-policies-in-every-namespace",
        np("x", "p", "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]}")
            + &np("y", "p", "{podSelector: {matchLabels: {pod: b}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}]}]}")
            + &np("z", "p", "{podSelector: {matchLabels: {pod: c}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: x}}}]}]}"),
    );
    g.add(
        "additive-egress-isolation-both-ends",
        np("x", "out", "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {matchLabels: {ns: y}}}]}]}")
            + &np("y", "in", "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}]}]}"),
    );
    g.add(
        "additive-three-port-policies",
        np("y", "a", "{podSelector: {matchLabels: {pod: c}}, ingress: [{ports: [{port: 80}]}]}")
            + &np("y", "b", "{podSelector: {matchLabels: {pod: c}}, ingress: [{ports: [{protocol: UDP, port: 81}]}]}")
            + &np("y", "c", "{podSelector: {matchLabels: {pod: c}}, ingress: [{from: [{podSelector: {}}], ports: [{port: 81}]}]}"),
    );
    g.add(
        "additive-ipblock-and-selector",
        np("z", "ip", &format!("{{podSelector: {{}}, ingress: [{{from: [{{ipBlock: {{cidr: {}}}}}]}}]}}", net(l.ip("x/a"), 32)))
            + &np("z", "sel", "{podSelector: {}, ingress: [{from: [{podSelector: {matchLabels: {pod: a}}, namespaceSelector: {}}]}]}"),
    );
    g.add(
        "additive-same-policy-other-namespace-does-not-apply",
        np("x", "deny", "{podSelector: {matchLabels: {pod: a}}}")
            + &np(
                "y",
                "allow-a",
                "{podSelector: {matchLabels: {pod: a}}, ingress: [{}]}",
            ),
    );
    g.add(
        "additive-egress-deny-and-ingress-allow",
        np(
            "x",
            "deny-out",
            "{podSelector: {matchLabels: {pod: c}}, policyTypes: [Egress]}",
        ) + &np(
            "y",
            "allow-in",
            "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: x}}}]}]}",
        ),
    );
    g.add(
        "additive-ingress-allows-but-egress-denies",
        np("x", "in", "{podSelector: {}, ingress: [{from: [{namespaceSelector: {}}]}]}")
            + &np("z", "out", "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {matchLabels: {ns: y}}}], ports: [{protocol: UDP}]}]}"),
    );
    g.add(
        "additive-named-and-numbered",
        np("z", "named", "{podSelector: {matchLabels: {pod: b}}, ingress: [{ports: [{port: serve-80-udp, protocol: UDP}]}]}")
            + &np("z", "num", "{podSelector: {matchLabels: {pod: b}}, ingress: [{from: [{podSelector: {}}], ports: [{port: 81}]}]}"),
    );
}

fn expressions(g: &mut Gen) {
    for (name, sel) in [
        ("in", "{matchExpressions: [{key: pod, operator: In, values: [a, c]}]}"),
        ("notin", "{matchExpressions: [{key: pod, operator: NotIn, values: [a, c]}]}"),
        ("exists", "{matchExpressions: [{key: pod, operator: Exists}]}"),
        ("doesnotexist", "{matchExpressions: [{key: pod, operator: DoesNotExist}]}"),
        ("notin-absent-key", "{matchExpressions: [{key: tier, operator: NotIn, values: [db]}]}"),
        (
            "labels-and-expression",
            "{matchLabels: {pod: b}, matchExpressions: [{key: pod, operator: In, values: [a, b]}]}",
        ),
        (
            "two-expressions",
            "{matchExpressions: [{key: pod, operator: Exists}, {key: pod, operator: NotIn, values: [b]}]}",
        ),
    ] {
        g.add(
            format!("subject-expression-{name}"),
            np(
                "y",
                "expr",
                &format!("{{podSelector: {sel}, policyTypes: [Ingress, Egress], ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{ns: x}}}}}}]}}]}}"),
            ),
        );
    }
    g.add(
        "peer-expressions-both-selectors",
        np("x", "expr", "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: ns, operator: In, values: [y, z]}, {key: kubernetes.io/metadata.name, operator: NotIn, values: [z]}]}, podSelector: {matchExpressions: [{key: pod, operator: In, values: [a, b]}]}}]}]}"),
    );
}

fn label_changes(g: &mut Gen) {
    g.add(
        "namespace-label-added",
        namespace_yaml("y", "{ns: y, team: blue}")
            + &np("x", "team", "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: blue}}}]}]}"),
    );
    g.add(
        "namespace-label-changed",
        namespace_yaml("z", "{ns: x}")
            + &np("x", "ns-x", "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: x}}}]}]}"),
    );
    g.add(
        "namespace-label-removed",
        namespace_yaml("y", "{}")
            + &np("z", "ns-y", "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {matchLabels: {ns: y}}}]}]}"),
    );
    g.add(
        "pod-label-added-to-peer",
        pod_yaml("z", "b", "{pod: b, role: db}", STANDARD_PORTS_YAML)
            + &np("x", "db", "{podSelector: {}, ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {role: db}}}]}]}"),
    );
    g.add(
        "pod-label-added-to-subject",
        pod_yaml("y", "a", "{pod: a, role: db}", STANDARD_PORTS_YAML)
            + &np(
                "y",
                "db",
                "{podSelector: {matchLabels: {role: db}}, policyTypes: [Ingress, Egress]}",
            ),
    );
    g.add(
        "pod-label-changed-out-of-subject",
        pod_yaml("x", "a", "{pod: z}", STANDARD_PORTS_YAML)
            + &np("x", "deny-a", "{podSelector: {matchLabels: {pod: a}}}"),
    );
    g.add(
        "pod-labels-removed-doesnotexist",
        pod_yaml("z", "c", "{}", STANDARD_PORTS_YAML)
            + &np("z", "unlabelled", "{podSelector: {matchExpressions: [{key: pod, operator: DoesNotExist}]}, ingress: [{from: [{podSelector: {matchExpressions: [{key: pod, operator: DoesNotExist}]}, namespaceSelector: {}}]}]}"),
    );
    g.add(
        "namespace-and-pod-labels",
        namespace_yaml("x", "{ns: x, env: prod}")
            + &pod_yaml("y", "c", "{pod: c, env: prod}", STANDARD_PORTS_YAML)
            + &np("z", "prod", "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {env: prod}}}, {namespaceSelector: {}, podSelector: {matchLabels: {env: prod}}}]}]}"),
    );
    g.add(
        "cnp-subject-by-changed-namespace-label",
        namespace_yaml("z", "{ns: z, restricted: \"true\"}")
            + &cnp("restricted", "{tier: Admin, priority: 10, subject: {namespaces: {matchLabels: {restricted: \"true\"}}}, ingress: [{action: Deny, from: [{namespaces: {matchLabels: {ns: x}}}]}]}"),
    );
}

const NS_X: &str = "{namespaces: {matchLabels: {ns: x}}}";

fn admin(g: &mut Gen, l: &Layout) {
    // Every action over three NetworkPolicy states, in both directions.
    let nps = [
        ("no-np", String::new()),
        ("np-deny-all-x", np("x", "deny-all", "{podSelector: {}, policyTypes: [Ingress, Egress]}")),
        (
            "np-allow-y-only-x",
            np("x", "allow-y", "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}], egress: [{to: [{namespaceSelector: {matchLabels: {ns: z}}}]}]}"),
        ),
    ];
    for action in ["Accept", "Deny", "Pass", "Log"] {
        for (np_name, nps) in &nps {
            g.add(
                format!("admin-{}-ingress-from-y-{np_name}", action.to_lowercase()),
                nps.clone()
                    + &cnp("admin", &format!("{{tier: Admin, priority: 10, subject: {NS_X}, ingress: [{{action: {action}, from: [{{namespaces: {{matchLabels: {{ns: y}}}}}}]}}]}}")),
            );
            g.add(
                format!("admin-{}-egress-to-z-{np_name}", action.to_lowercase()),
                nps.clone()
                    + &cnp("admin", &format!("{{tier: Admin, priority: 10, subject: {NS_X}, egress: [{{action: {action}, to: [{{namespaces: {{matchLabels: {{ns: z}}}}}}]}}]}}")),
            );
        }
    }
    // Priorities and names.
    let rule = |action: &str| format!("[{{action: {action}, from: [{{namespaces: {{}}}}]}}]");
    g.add(
        "admin-lower-priority-accept-wins",
        cnp(
            "a-deny",
            &format!(
                "{{tier: Admin, priority: 20, subject: {NS_X}, ingress: {}}}",
                rule("Deny")
            ),
        ) + &cnp(
            "b-accept",
            &format!(
                "{{tier: Admin, priority: 10, subject: {NS_X}, ingress: {}}}",
                rule("Accept")
            ),
        ),
    );
    g.add(
        "admin-lower-priority-deny-wins",
        np("x", "allow", "{podSelector: {}, ingress: [{}]}")
            + &cnp(
                "a-accept",
                &format!(
                    "{{tier: Admin, priority: 20, subject: {NS_X}, ingress: {}}}",
                    rule("Accept")
                ),
            )
            + &cnp(
                "b-deny",
                &format!(
                    "{{tier: Admin, priority: 10, subject: {NS_X}, ingress: {}}}",
                    rule("Deny")
                ),
            ),
    );
    g.add(
        "admin-equal-priority-by-name-deny",
        cnp(
            "a-deny",
            &format!(
                "{{tier: Admin, priority: 10, subject: {NS_X}, ingress: {}}}",
                rule("Deny")
            ),
        ) + &cnp(
            "b-accept",
            &format!(
                "{{tier: Admin, priority: 10, subject: {NS_X}, ingress: {}}}",
                rule("Accept")
            ),
        ),
    );
    g.add(
        "admin-equal-priority-by-name-accept",
        np("x", "deny", "{podSelector: {}}")
            + &cnp(
                "a-accept",
                &format!(
                    "{{tier: Admin, priority: 10, subject: {NS_X}, ingress: {}}}",
                    rule("Accept")
                ),
            )
            + &cnp(
                "b-deny",
                &format!(
                    "{{tier: Admin, priority: 10, subject: {NS_X}, ingress: {}}}",
                    rule("Deny")
                ),
            ),
    );
    g.add(
        "admin-priority-0-and-1000",
        cnp("last", "{tier: Admin, priority: 1000, subject: {namespaces: {}}, ingress: [{action: Deny, from: [{namespaces: {}}]}]}")
            + &cnp("first", "{tier: Admin, priority: 0, subject: {namespaces: {}}, ingress: [{action: Accept, from: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {pod: a}}}}]}]}"),
    );
    g.add(
        "admin-pass-skips-later-deny",
        cnp(
            "pass",
            &format!(
                "{{tier: Admin, priority: 5, subject: {NS_X}, ingress: {}}}",
                rule("Pass")
            ),
        ) + &cnp(
            "deny",
            &format!(
                "{{tier: Admin, priority: 10, subject: {NS_X}, ingress: {}}}",
                rule("Deny")
            ),
        ),
    );
    g.add(
        "admin-pass-to-baseline-deny",
        cnp("pass", &format!("{{tier: Admin, priority: 5, subject: {NS_X}, ingress: [{{action: Pass, from: [{{namespaces: {{matchLabels: {{ns: y}}}}}}]}}]}}"))
            + &cnp("base", &format!("{{tier: Baseline, priority: 5, subject: {NS_X}, ingress: {}}}", rule("Deny"))),
    );
    g.add(
        "admin-pass-to-np-over-baseline",
        cnp("pass", &format!("{{tier: Admin, priority: 5, subject: {NS_X}, ingress: {}}}", rule("Pass")))
            + &np("x", "allow-z", "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}]}]}")
            + &cnp("base", &format!("{{tier: Baseline, priority: 5, subject: {NS_X}, ingress: {}}}", rule("Deny"))),
    );
    g.add(
        "admin-deny-after-pass-elsewhere",
        cnp("pass-y", &format!("{{tier: Admin, priority: 5, subject: {NS_X}, ingress: [{{action: Pass, from: [{{namespaces: {{matchLabels: {{ns: y}}}}}}]}}]}}"))
            + &cnp("deny", &format!("{{tier: Admin, priority: 10, subject: {NS_X}, ingress: {}}}", rule("Deny"))),
    );
    // Rule order inside one policy.
    g.add(
        "admin-rule-order-deny-first",
        cnp("order", "{tier: Admin, priority: 10, subject: {namespaces: {matchLabels: {ns: y}}}, ingress: [{action: Deny, from: [{namespaces: {}}], ports: [{portNumber: {port: 81}}]}, {action: Accept, from: [{namespaces: {}}]}]}")
            + &np("y", "deny", "{podSelector: {}}"),
    );
    g.add(
        "admin-rule-order-accept-first",
        cnp("order", "{tier: Admin, priority: 10, subject: {namespaces: {matchLabels: {ns: y}}}, ingress: [{action: Accept, from: [{namespaces: {matchLabels: {ns: z}}}]}, {action: Deny, from: [{namespaces: {}}], ports: [{portNumber: {port: 81}}]}]}"),
    );
    g.add(
        "admin-log-then-deny",
        cnp("log", "{tier: Admin, priority: 1, subject: {namespaces: {}}, ingress: [{name: log-all, action: Log, from: [{namespaces: {}}]}]}")
            + &cnp("deny", "{tier: Admin, priority: 2, subject: {namespaces: {matchLabels: {ns: z}}}, ingress: [{action: Deny, from: [{namespaces: {matchLabels: {ns: x}}}]}]}"),
    );
    // Peer kinds, both directions.
    let ya = l.ip("y/a");
    let zc = l.ip("z/c");
    let peer_kinds = [
        ("namespaces", "{namespaces: {matchLabels: {ns: y}}}".to_string()),
        (
            "pods",
            "{pods: {namespaceSelector: {matchExpressions: [{key: ns, operator: In, values: [y, z]}]}, podSelector: {matchLabels: {pod: b}}}}".to_string(),
        ),
        ("pods-all", "{pods: {namespaceSelector: {}, podSelector: {}}}".to_string()),
        ("network-pod", format!("{{networks: [{}]}}", net(ya, 32))),
        ("network-node-subnet", format!("{{networks: [{}]}}", net(zc, 24))),
        (
            "networks-two",
            format!("{{networks: [{}, {}]}}", net(ya, 32), net(zc, 32)),
        ),
        ("nodes", "{nodes: {}}".to_string()),
    ];
    for (name, peer) in &peer_kinds {
        g.add(
            format!("admin-deny-ingress-peer-{name}"),
            cnp("peer", &format!("{{tier: Admin, priority: 10, subject: {NS_X}, ingress: [{{action: Deny, from: [{peer}]}}]}}")),
        );
        g.add(
            format!("admin-deny-egress-peer-{name}"),
            cnp("peer", &format!("{{tier: Admin, priority: 10, subject: {NS_X}, egress: [{{action: Deny, to: [{peer}]}}]}}")),
        );
        g.add(
            format!("baseline-deny-ingress-peer-{name}"),
            cnp("peer", &format!("{{tier: Baseline, priority: 10, subject: {{namespaces: {{}}}}, ingress: [{{action: Deny, from: [{peer}]}}]}}")),
        );
    }
    // Port forms.
    for (name, ports) in [
        ("number-tcp-80", "[{portNumber: {port: 80}}]"),
        ("number-udp-81", "[{portNumber: {protocol: UDP, port: 81}}]"),
        ("range-80-81", "[{portRange: {start: 80, end: 81}}]"),
        (
            "range-udp-81-100",
            "[{portRange: {protocol: UDP, start: 81, end: 100}}]",
        ),
        ("named-serve-80-tcp", "[{namedPort: serve-80-tcp}]"),
        ("named-serve-81-udp", "[{namedPort: serve-81-udp}]"),
        ("named-undeclared", "[{namedPort: serve-99-tcp}]"),
        (
            "two-forms",
            "[{portNumber: {protocol: UDP, port: 80}}, {namedPort: serve-81-tcp}]",
        ),
    ] {
        g.add(
            format!("admin-deny-ingress-ports-{name}"),
            cnp("ports", &format!("{{tier: Admin, priority: 10, subject: {{namespaces: {{matchLabels: {{ns: y}}}}}}, ingress: [{{action: Deny, from: [{{namespaces: {{}}}}], ports: {ports}}}]}}")),
        );
        g.add(
            format!("admin-deny-egress-ports-{name}"),
            cnp("ports", &format!("{{tier: Admin, priority: 10, subject: {{namespaces: {{matchLabels: {{ns: y}}}}}}, egress: [{{action: Deny, to: [{{namespaces: {{}}}}], ports: {ports}}}]}}")),
        );
    }
    // Subject forms.
    for (name, subject) in [
        ("pods", "{pods: {namespaceSelector: {}, podSelector: {matchLabels: {pod: c}}}}"),
        (
            "pods-in-namespace",
            "{pods: {namespaceSelector: {matchLabels: {ns: z}}, podSelector: {matchExpressions: [{key: pod, operator: NotIn, values: [c]}]}}}",
        ),
        (
            "namespaces-expression",
            "{namespaces: {matchExpressions: [{key: ns, operator: In, values: [x, z]}]}}",
        ),
        ("namespaces-all", "{namespaces: {}}"),
    ] {
        g.add(
            format!("admin-subject-{name}"),
            cnp("subject", &format!("{{tier: Admin, priority: 10, subject: {subject}, ingress: [{{action: Deny, from: [{{namespaces: {{matchLabels: {{ns: y}}}}}}]}}], egress: [{{action: Deny, to: [{{namespaces: {{matchLabels: {{ns: x}}}}}}], ports: [{{portNumber: {{protocol: UDP, port: 81}}}}]}}]}}")),
        );
    }
    // Admin over NetworkPolicy ports.
    g.add(
        "admin-accept-port-over-np-deny",
        np("z", "deny-all", "{podSelector: {}, policyTypes: [Ingress, Egress]}")
            + &cnp("dns-like", "{tier: Admin, priority: 3, subject: {namespaces: {matchLabels: {ns: z}}}, ingress: [{action: Accept, from: [{namespaces: {}}], ports: [{portNumber: {protocol: UDP, port: 80}}]}], egress: [{action: Accept, to: [{namespaces: {}}], ports: [{portNumber: {protocol: UDP, port: 80}}]}]}"),
    );
    g.add(
        "admin-deny-isolates-namespace-pair",
        cnp("isolate", "{tier: Admin, priority: 1, subject: {namespaces: {matchLabels: {ns: x}}}, ingress: [{action: Deny, from: [{namespaces: {matchLabels: {ns: z}}}]}], egress: [{action: Deny, to: [{namespaces: {matchLabels: {ns: z}}}]}]}")
            + &np("z", "allow", "{podSelector: {}, ingress: [{}], egress: [{}]}"),
    );
}

fn baseline(g: &mut Gen) {
    let deny_all_in = "{tier: Baseline, priority: 10, subject: {namespaces: {}}, ingress: [{action: Deny, from: [{namespaces: {}}]}]}";
    g.add("baseline-deny-all-ingress", cnp("base", deny_all_in));
    g.add(
        "baseline-deny-all-with-np-in-x",
        cnp("base", deny_all_in)
            + &np("x", "allow-y", "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]}"),
    );
    g.add(
        "baseline-deny-with-egress-only-np",
        cnp("base", deny_all_in)
            + &np(
                "y",
                "egress",
                "{podSelector: {}, policyTypes: [Egress], egress: [{}]}",
            ),
    );
    g.add(
        "baseline-accept-before-deny",
        cnp("base", deny_all_in)
            + &cnp("first", "{tier: Baseline, priority: 1, subject: {namespaces: {}}, ingress: [{action: Accept, from: [{namespaces: {matchLabels: {ns: y}}}]}]}"),
    );
    g.add(
        "baseline-deny-before-accept",
        cnp("base", "{tier: Baseline, priority: 10, subject: {namespaces: {}}, ingress: [{action: Accept, from: [{namespaces: {}}]}]}")
            + &cnp("first", "{tier: Baseline, priority: 1, subject: {namespaces: {}}, ingress: [{action: Deny, from: [{namespaces: {matchLabels: {ns: y}}}]}]}"),
    );
    g.add(
        "baseline-egress-deny-to-z",
        cnp("base", "{tier: Baseline, priority: 10, subject: {namespaces: {}}, egress: [{action: Deny, to: [{namespaces: {matchLabels: {ns: z}}}]}]}"),
    );
    g.add(
        "baseline-log-then-deny-udp",
        cnp("base", "{tier: Baseline, priority: 10, subject: {namespaces: {}}, ingress: [{action: Log, from: [{namespaces: {}}]}, {action: Deny, from: [{namespaces: {}}], ports: [{portRange: {protocol: UDP, start: 1, end: 65535}}]}]}"),
    );
    g.add(
        "admin-baseline-and-np",
        cnp("admin", "{tier: Admin, priority: 10, subject: {namespaces: {}}, ingress: [{action: Deny, from: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {pod: c}}}}]}, {action: Pass, from: [{namespaces: {matchLabels: {ns: z}}}]}]}")
            + &cnp("base", deny_all_in)
            + &np("y", "allow-z", "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}], ports: [{port: 80}]}]}"),
    );
    g.add(
        "baseline-same-priority-by-name",
        cnp("b-accept", "{tier: Baseline, priority: 5, subject: {namespaces: {matchLabels: {ns: y}}}, egress: [{action: Accept, to: [{namespaces: {}}]}]}")
            + &cnp("a-deny", "{tier: Baseline, priority: 5, subject: {namespaces: {matchLabels: {ns: y}}}, egress: [{action: Deny, to: [{namespaces: {matchLabels: {ns: x}}}]}]}"),
    );
    g.add(
        "baseline-accept-is-like-no-policy",
        cnp("base", "{tier: Baseline, priority: 10, subject: {namespaces: {}}, ingress: [{action: Accept, from: [{namespaces: {}}]}], egress: [{action: Accept, to: [{namespaces: {}}]}]}"),
    );
    g.add(
        "baseline-and-admin-accept",
        cnp("base", deny_all_in)
            + &cnp("admin", "{tier: Admin, priority: 100, subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {pod: a}}}}, ingress: [{action: Accept, from: [{namespaces: {matchLabels: {ns: x}}}]}]}"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::oracle::Probe;
    use crate::conformance::PortProto;

    /// A layout like the lab's: node `n1` pods in 10.244.1.0/24, `n2` in 10.244.2.0/24.
    pub(crate) fn test_layout() -> Layout {
        let nodes = vec![
            NodeInfo {
                name: "n1".into(),
                labels: Labels::new(),
                address: "192.168.77.11".parse().unwrap(),
            },
            NodeInfo {
                name: "n2".into(),
                labels: Labels::new(),
                address: "192.168.77.12".parse().unwrap(),
            },
        ];
        let ips: Vec<Ipv4Addr> = (0..9)
            .map(|i| Ipv4Addr::new(10, 244, 1 + (i % 2) as u8, 2 + (i / 2) as u8))
            .collect();
        Layout::standard(&ips, nodes)
    }

    fn allowed(c: &Case, l: &Layout, from: &str, to: &str, col: PortProto) -> bool {
        let o = c.oracle(l);
        o.allows(&Probe {
            src: o.pod(from),
            dst: o.pod(to),
            port: col.port,
            protocol: col.protocol,
        })
    }

    fn case<'a>(all: &'a [Case], name: &str) -> &'a Case {
        all.iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no case {name}"))
    }

    #[test]
    fn standard_objects_match_the_layout() {
        let l = test_layout();
        let objs = standard_objects();
        assert_eq!(objs.len(), 12);
        let mut o = l.oracle();
        let before = Matrix::expected(&o, &PROBE_COLUMNS);
        for obj in &objs {
            o.apply(obj);
        }
        assert_eq!(o.pods, l.pods, "the Pod objects say what the layout says");
        assert_eq!(Matrix::expected(&o, &PROBE_COLUMNS), before);
        assert_eq!(before.allowed_count(), before.len());
        assert_eq!(l.pods[1].node, "n2");
        assert_eq!(l.pods[2].node, "n1");
    }

    #[test]
    fn there_are_enough_distinct_cases() {
        let l = test_layout();
        let all = cases(&l);
        assert!(all.len() >= 200, "only {} cases", all.len());
        let mut names = BTreeSet::new();
        let mut trivial = Vec::new();
        let mut matrices = BTreeSet::new();
        for c in &all {
            assert!(names.insert(c.name.clone()), "{} twice", c.name);
            assert!(!c.objects.is_empty());
            let m = c.expected(&l);
            if m.allowed_count() == m.len() {
                trivial.push(c.name.clone());
            }
            let cells: Vec<bool> = (0..m.columns.len())
                .flat_map(|col| {
                    let m = &m;
                    (0..9).flat_map(move |s| (0..9).map(move |d| m.get(col, s, d)))
                })
                .collect();
            matrices.insert(cells);
        }
        eprintln!(
            "{} cases, {} distinct expected matrices, {} expecting everything reachable",
            all.len(),
            matrices.len(),
            trivial.len()
        );
        // Cases that expect no change at all are the deliberate no-ops (selectors that
        // match nothing, node peers, ports no probe uses, accept-all).
        assert!(
            trivial.len() <= 35,
            "{} trivial cases: {trivial:?}",
            trivial.len()
        );
        assert!(
            matrices.len() >= 150,
            "only {} distinct matrices among {} cases",
            matrices.len(),
            all.len()
        );
    }

    #[test]
    fn every_kind_of_object_is_used() {
        let l = test_layout();
        let all = cases(&l);
        let kinds: BTreeSet<Kind> = all
            .iter()
            .flat_map(|c| c.objects.iter().map(|o| o.kind()))
            .collect();
        for k in [
            Kind::NetworkPolicy,
            Kind::ClusterNetworkPolicy,
            Kind::Namespace,
            Kind::Pod,
        ] {
            assert!(kinds.contains(&k), "{k}");
        }
        let c = case(&all, "namespace-label-added");
        assert!(c.changes_labels());
        assert_eq!(c.restore_objects().len(), 1);
        assert_eq!(c.policies().len(), 1);
        assert!(!case(&all, "deny-all-x").changes_labels());
        let m = Case::manifest(&c.policies());
        assert!(m.contains("\"kind\":\"NetworkPolicy\""), "{m}");
    }

    #[test]
    fn hand_checked_cases() {
        let l = test_layout();
        let all = cases(&l);
        let t80 = PortProto::tcp(80);
        let t81 = PortProto::tcp(81);
        let u80 = PortProto::udp(80);
        let u81 = PortProto::udp(81);
        // Default deny ingress in x: nothing reaches x, x reaches everything else.
        let c = case(&all, "deny-all-ingress-x");
        assert!(!allowed(c, &l, "y/a", "x/b", t80));
        assert!(!allowed(c, &l, "x/a", "x/b", u81));
        assert!(allowed(c, &l, "x/a", "y/b", t80));
        let m = c.expected(&l);
        assert_eq!(m.len() - m.allowed_count(), 4 * 9 * 3);
        // AND vs OR.
        let c = case(&all, "ingress-x-a-from-ns-y-and-pod-c");
        assert!(allowed(c, &l, "y/c", "x/a", t80));
        assert!(!allowed(c, &l, "y/b", "x/a", t80));
        assert!(!allowed(c, &l, "x/c", "x/a", t80));
        let c = case(&all, "ingress-x-a-from-ns-y-or-pod-c");
        assert!(allowed(c, &l, "y/b", "x/a", t80));
        assert!(allowed(c, &l, "x/c", "x/a", t80));
        assert!(!allowed(c, &l, "z/c", "x/a", t80));
        // ipBlock except.
        let c = case(&all, "ingress-x-a-from-ipblock-all-except-x-b");
        assert!(!allowed(c, &l, "x/b", "x/a", u80));
        assert!(allowed(c, &l, "x/c", "x/a", u80));
        // y/a is on n2 (10.244.2.0/24): the /16 except that /24 leaves n1's pods.
        let c = case(&all, "egress-y-b-to-ipblock-16-except-24-of-y-a");
        assert!(allowed(c, &l, "y/b", "x/a", t80));
        assert!(!allowed(c, &l, "y/b", "x/b", t80));
        // Egress podSelector peers are in the policy's namespace.
        let c = case(&all, "egress-y-b-to-pod-b");
        assert!(allowed(c, &l, "y/b", "y/b", t81));
        assert!(!allowed(c, &l, "y/b", "x/b", t81));
        assert!(allowed(c, &l, "x/b", "y/b", t81), "ingress not isolated");
        // Named ports.
        let c = case(&all, "ingress-x-b-ports-named-serve-81-udp");
        assert!(allowed(c, &l, "z/a", "x/b", u81));
        assert!(!allowed(c, &l, "z/a", "x/b", u80));
        assert!(!allowed(c, &l, "z/a", "x/b", t81));
        let c = case(&all, "ingress-x-b-ports-named-wrong-protocol");
        assert!(!allowed(c, &l, "z/a", "x/b", u80) && !allowed(c, &l, "z/a", "x/b", t80));
        let c = case(&all, "named-port-differs-per-pod-egress");
        assert!(allowed(c, &l, "z/a", "x/a", t80));
        assert!(!allowed(c, &l, "z/a", "x/a", t81));
        assert!(allowed(c, &l, "z/a", "y/a", t81));
        assert!(!allowed(c, &l, "z/a", "y/a", t80));
        assert!(!allowed(c, &l, "z/a", "x/b", t80));
        assert!(!allowed(c, &l, "z/a", "x/a", u80), "the rule's port is TCP");
        // endPort.
        let c = case(&all, "egress-z-a-ports-range-81-90-udp");
        assert!(allowed(c, &l, "z/a", "x/a", u81));
        assert!(!allowed(c, &l, "z/a", "x/a", u80));
        assert!(!allowed(c, &l, "z/a", "x/a", t81));
        // Policy types.
        let c = case(&all, "types-x-all-implicit-egress-rule");
        assert!(allowed(c, &l, "x/a", "y/a", t80));
        assert!(!allowed(c, &l, "y/a", "x/a", t80));
        let c = case(&all, "types-x-all-egress-only-with-ingress-rules");
        assert!(allowed(c, &l, "z/a", "x/a", t80), "ingress rules ignored");
        assert!(!allowed(c, &l, "x/a", "y/a", t80));
        assert!(allowed(c, &l, "x/a", "z/b", t80));
        // Admin.
        let c = case(&all, "admin-accept-ingress-from-y-np-deny-all-x");
        assert!(allowed(c, &l, "y/a", "x/a", t80));
        assert!(!allowed(c, &l, "z/a", "x/a", t80));
        let c = case(&all, "admin-pass-ingress-from-y-np-deny-all-x");
        assert!(!allowed(c, &l, "y/a", "x/a", t80));
        let c = case(&all, "admin-deny-ingress-from-y-np-allow-y-only-x");
        assert!(!allowed(c, &l, "y/a", "x/a", t80));
        let c = case(&all, "admin-log-ingress-from-y-np-allow-y-only-x");
        assert!(allowed(c, &l, "y/a", "x/a", t80));
        assert!(!allowed(c, &l, "z/a", "x/a", t80));
        let c = case(&all, "admin-pass-to-baseline-deny");
        assert!(!allowed(c, &l, "y/a", "x/a", t80));
        assert!(!allowed(c, &l, "z/a", "x/a", t80));
        assert!(allowed(c, &l, "x/a", "y/a", t80));
        let c = case(&all, "admin-deny-egress-peer-nodes");
        let m = c.expected(&l);
        assert_eq!(m.allowed_count(), m.len(), "node peers never match pods");
        let c = case(&all, "admin-deny-ingress-ports-named-serve-81-udp");
        assert!(!allowed(c, &l, "x/a", "y/a", u81));
        assert!(allowed(c, &l, "x/a", "y/a", u80));
        // Baseline yields to NetworkPolicies, per direction.
        let c = case(&all, "baseline-deny-all-with-np-in-x");
        assert!(allowed(c, &l, "y/a", "x/a", t80));
        assert!(!allowed(c, &l, "z/a", "x/a", t80));
        assert!(!allowed(c, &l, "x/a", "y/a", t80));
        // Label changes.
        let c = case(&all, "namespace-label-changed");
        assert!(allowed(c, &l, "z/a", "x/a", t80));
        assert!(!allowed(c, &l, "y/a", "x/a", t80));
        let c = case(&all, "pod-label-changed-out-of-subject");
        assert!(allowed(c, &l, "y/a", "x/a", t80));
        // Loopback is judged like any other traffic.
        let c = case(&all, "deny-all-ingress-x");
        assert!(!allowed(c, &l, "x/a", "x/a", t80));
    }
}
