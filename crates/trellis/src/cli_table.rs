//! The tables of `trellis get`: per kind its columns (and those `-o wide` adds), aligned
//! like kubectl's, with what some columns need from other kinds (a Service's
//! PROGRAMMED, a Tenant's world).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::SystemTime;

use anyhow::{anyhow, bail};
use trellis_api::objects::{self, AnyObject, Kind, ServiceType};
use trellis_client::{list_path, Client};

use crate::cli_cmd::describe;

/// Placeholder for an empty cell, as kubectl prints it.
pub(crate) const NONE: &str = "<none>";

/// The kind-specific columns of one object: `(header, value)` pairs for the table, and
/// those `-o wide` adds after AGE.
type Columns = (Vec<(&'static str, String)>, Vec<(&'static str, String)>);

/// What the PROGRAMMED column of `get services -o wide` is computed from: every Node
/// and every Endpoint.
#[derive(Debug, Default)]
struct Programmed {
    nodes: Vec<objects::Node>,
    endpoints: Vec<objects::Endpoint>,
}

impl Programmed {
    /// List the Nodes and the Endpoints of all namespaces.
    async fn fetch(client: &Client) -> anyhow::Result<Programmed> {
        let mut p = Programmed::default();
        for kind in [Kind::Node, Kind::Endpoint] {
            let list = client.get(&list_path(kind, None)).await.map_err(|e| {
                anyhow!("listing {} for PROGRAMMED: {}", kind.plural(), describe(&e))
            })?;
            for v in list["items"].as_array().cloned().unwrap_or_default() {
                match AnyObject::from_value(v) {
                    Ok(AnyObject::Node(n)) => p.nodes.push(n),
                    Ok(AnyObject::Endpoint(e)) => p.endpoints.push(e),
                    Ok(_) => {}
                    Err(e) => bail!("the server sent a {kind} that does not parse: {e}"),
                }
            }
        }
        Ok(p)
    }

    /// `programmed/ready`: of the ready Nodes, how many report (`status.programmed`)
    /// having programmed the Service's and every selected Endpoint's resourceVersion.
    fn cell(&self, svc: &objects::Service) -> String {
        let want = svc.programmed_revisions(&self.endpoints);
        let ready: Vec<&objects::Node> = self.nodes.iter().filter(|n| n.status.ready).collect();
        let done = ready.iter().filter(|n| n.has_programmed(&want)).count();
        format!("{done}/{}", ready.len())
    }
}

/// Which tenant each namespace belongs to, and the objects a Tenant's row counts.
#[derive(Debug, Default)]
struct Worlds {
    ns_tenant: BTreeMap<String, String>,
    networks: Vec<objects::Network>,
    endpoints: Vec<objects::Endpoint>,
    services: Vec<objects::Service>,
}

impl Worlds {
    /// List Namespaces, Networks, Endpoints and Services.
    async fn fetch(client: &Client) -> anyhow::Result<Worlds> {
        let mut w = Worlds::default();
        for kind in [
            Kind::Namespace,
            Kind::Network,
            Kind::Endpoint,
            Kind::Service,
        ] {
            let list = client.get(&list_path(kind, None)).await.map_err(|e| {
                anyhow!(
                    "listing {} for the tenants: {}",
                    kind.plural(),
                    describe(&e)
                )
            })?;
            for v in list["items"].as_array().cloned().unwrap_or_default() {
                match AnyObject::from_value(v) {
                    Ok(AnyObject::Namespace(n)) => {
                        if let Some(t) = n.spec.tenant {
                            w.ns_tenant.insert(n.metadata.name, t);
                        }
                    }
                    Ok(AnyObject::Network(n)) => w.networks.push(n),
                    Ok(AnyObject::Endpoint(e)) => w.endpoints.push(e),
                    Ok(AnyObject::Service(s)) => w.services.push(s),
                    Ok(_) => {}
                    Err(e) => bail!("the server sent a {kind} that does not parse: {e}"),
                }
            }
        }
        Ok(w)
    }

    /// The tenant of namespace `ns`, or `<none>` (the default world).
    fn tenant_of(&self, ns: Option<&str>) -> String {
        ns.and_then(|ns| self.ns_tenant.get(ns))
            .cloned()
            .unwrap_or_else(|| NONE.to_string())
    }

    /// A Tenant's NETWORKS, NAMESPACES, PODS (attachments) and SERVICES cells.
    fn cells(&self, tenant: &str) -> [(&'static str, String); 4] {
        let in_world = |ns: Option<&str>| self.tenant_of(ns) == tenant;
        let networks = self
            .networks
            .iter()
            .filter(|n| n.spec.tenant.as_deref() == Some(tenant))
            .map(|n| n.metadata.name.clone());
        let namespaces = self
            .ns_tenant
            .iter()
            .filter(|(_, t)| *t == tenant)
            .map(|(ns, _)| ns.clone());
        let pods = self
            .endpoints
            .iter()
            .filter(|e| in_world(e.metadata.namespace.as_deref()))
            .count();
        let services = self
            .services
            .iter()
            .filter(|s| in_world(s.metadata.namespace.as_deref()))
            .count();
        [
            ("NETWORKS", join_or_none(networks)),
            ("NAMESPACES", join_or_none(namespaces)),
            ("PODS", pods.to_string()),
            ("SERVICES", services.to_string()),
        ]
    }
}

/// What some columns need from other kinds, fetched only when shown.
#[derive(Debug, Default)]
pub(crate) struct Extra {
    /// For `get services -o wide`.
    programmed: Option<Programmed>,
    /// For `get tenants`, and the TENANT column of `get pods|endpoints -o wide`.
    worlds: Option<Worlds>,
}

impl Extra {
    /// Fetch what a table of `kind` needs.
    pub(crate) async fn fetch(client: &Client, kind: Kind, wide: bool) -> anyhow::Result<Extra> {
        let mut x = Extra::default();
        if wide && kind == Kind::Service {
            x.programmed = Some(Programmed::fetch(client).await?);
        }
        if kind == Kind::Tenant || (wide && matches!(kind, Kind::Pod | Kind::Endpoint)) {
            x.worlds = Some(Worlds::fetch(client).await?);
        }
        Ok(x)
    }
}

/// The table of `objs` (all of one kind): `[NAMESPACE] NAME <kind columns> AGE [wide
/// columns]`, aligned like kubectl's (three spaces between columns). With what `extra`
/// holds: a Service's wide columns end with PROGRAMMED, a Pod's and an Endpoint's with
/// TENANT; a Tenant's columns count its world.
pub(crate) fn table(
    objs: &[AnyObject],
    wide: bool,
    with_ns: bool,
    extra: &Extra,
    now: SystemTime,
) -> String {
    let mut header = Vec::new();
    let mut rows = Vec::new();
    for o in objs {
        let (cols, wide_cols) = columns(o);
        let mut row: Vec<(&str, String)> = Vec::new();
        if with_ns {
            row.push(("NAMESPACE", o.namespace().unwrap_or_default().to_string()));
        }
        row.push(("NAME", o.name().to_string()));
        row.extend(cols);
        if let (AnyObject::Tenant(t), Some(w)) = (o, &extra.worlds) {
            row.extend(w.cells(&t.metadata.name));
        }
        row.push(("AGE", age(o.metadata().creation_timestamp.as_deref(), now)));
        if wide {
            row.extend(wide_cols);
            match (o, &extra.programmed, &extra.worlds) {
                (AnyObject::Service(s), Some(p), _) => row.push(("PROGRAMMED", p.cell(s))),
                (AnyObject::Pod(_) | AnyObject::Endpoint(_), _, Some(w)) => {
                    row.push(("TENANT", w.tenant_of(o.namespace())));
                }
                _ => {}
            }
        }
        if header.is_empty() {
            header = row.iter().map(|(h, _)| h.to_string()).collect();
        }
        rows.push(row.into_iter().map(|(_, v)| v).collect());
    }
    align(&header, &rows)
}

/// Columns per kind.
fn columns(o: &AnyObject) -> Columns {
    match o {
        AnyObject::Network(n) => (
            vec![
                ("CIDR", n.spec.cidr.to_string()),
                ("BACKEND", n.spec.backend.as_str().to_string()),
                ("VNI", or_none(n.vni().map(|v| v.to_string()))),
                ("SUBNET-PREFIX", format!("/{}", n.spec.node_subnet_prefix)),
                ("TENANT", or_none(n.spec.tenant.clone())),
            ],
            vec![],
        ),
        AnyObject::Node(n) => (
            vec![
                ("ADDRESS", n.spec.address.to_string()),
                ("READY", bool_cell(n.status.ready)),
                (
                    "SUBNETS",
                    join_or_none(n.status.leases.iter().map(|l| l.cidr.to_string())),
                ),
            ],
            vec![("LABELS", labels(&n.metadata.labels))],
        ),
        AnyObject::Pod(p) => (vec![("LABELS", labels(&p.metadata.labels))], vec![]),
        AnyObject::Endpoint(e) => (
            vec![
                ("NODE", e.spec.node.clone()),
                ("IP", e.spec.ip.to_string()),
                ("READY", bool_cell(e.spec.ready)),
            ],
            vec![
                ("CONTAINER", e.spec.container_id.clone()),
                ("IFNAME", e.spec.ifname.clone()),
                ("NETWORK", e.spec.network.clone()),
            ],
        ),
        AnyObject::Service(s) => (
            vec![
                ("TYPE", s.spec.type_.as_str().to_string()),
                ("CLUSTER-IP", or_none(s.spec.cluster_ip.clone())),
                ("EXTERNAL-IP", external_ip(s)),
                (
                    "PORT(S)",
                    join_or_none(s.spec.ports.iter().map(|p| match p.node_port {
                        Some(np) => format!("{}:{np}/{}", p.port, p.protocol),
                        None => format!("{}/{}", p.port, p.protocol),
                    })),
                ),
            ],
            vec![("SELECTOR", labels(&s.spec.selector))],
        ),
        AnyObject::LoadBalancerPool(p) => (
            vec![(
                "CIDRS",
                join_or_none(p.spec.cidrs.iter().map(|c| c.to_string())),
            )],
            vec![],
        ),
        AnyObject::Namespace(n) => (
            vec![
                ("TENANT", or_none(n.spec.tenant.clone())),
                ("LABELS", labels(&n.metadata.labels)),
            ],
            vec![],
        ),
        AnyObject::Tenant(t) => (
            vec![(
                "SERVICE-CIDR",
                t.spec
                    .service_cidr
                    .map_or_else(|| "<cluster>".to_string(), |c| c.to_string()),
            )],
            vec![],
        ),
        AnyObject::TenantPeering(p) => (vec![("TENANTS", p.spec.tenants.join(","))], vec![]),
        AnyObject::BgpConfiguration(c) => (
            vec![
                ("AS", c.spec.asn().to_string()),
                ("MESH", bool_cell(c.spec.mesh())),
                (
                    "ADVERTISED",
                    join_or_none(
                        c.spec
                            .service_cluster_ips
                            .iter()
                            .chain(&c.spec.service_external_ips)
                            .chain(&c.spec.service_load_balancer_ips)
                            .map(|e| e.cidr.to_string()),
                    ),
                ),
            ],
            vec![],
        ),
        AnyObject::BgpPeer(p) => (
            vec![
                (
                    "NODES",
                    match (&p.spec.node, &p.spec.node_selector) {
                        (Some(n), _) => n.clone(),
                        (None, Some(s)) => s.to_string(),
                        (None, None) => "all()".to_string(),
                    },
                ),
                (
                    "PEER",
                    match (&p.spec.peer_ip, &p.spec.peer_selector) {
                        (Some(ip), _) => ip.clone(),
                        (None, Some(s)) => s.to_string(),
                        (None, None) => "<none>".to_string(),
                    },
                ),
                ("AS", or_none(p.spec.as_number.map(|a| a.to_string()))),
            ],
            vec![
                ("BFD", bool_cell(p.spec.bfd_enabled)),
                ("FILTERS", join_or_none(p.spec.filters.iter().cloned())),
            ],
        ),
        AnyObject::BgpFilter(f) => (
            vec![
                ("EXPORT-RULES", f.spec.export_v4.len().to_string()),
                ("IMPORT-RULES", f.spec.import_v4.len().to_string()),
            ],
            vec![],
        ),
        AnyObject::Ingress(i) => {
            let mut hosts: Vec<String> = i
                .spec
                .rules
                .iter()
                .map(|r| r.host.clone().unwrap_or_else(|| "*".into()))
                .collect();
            hosts.dedup();
            let addresses = i
                .status
                .load_balancer
                .ingress
                .iter()
                .filter_map(|a| a.ip.clone().or_else(|| a.hostname.clone()));
            let ports = if i.spec.tls.is_empty() {
                "80"
            } else {
                "80, 443"
            };
            (
                vec![
                    ("CLASS", or_none(i.spec.ingress_class_name.clone())),
                    ("HOSTS", join_or_none(hosts.into_iter())),
                    ("ADDRESS", join_or_none(addresses)),
                    ("PORTS", ports.to_string()),
                ],
                vec![],
            )
        }
        AnyObject::HttpRoute(r) => (
            vec![
                ("HOSTNAMES", join_or_none(r.spec.hostnames.iter().cloned())),
                ("RULES", r.spec.rules.len().to_string()),
            ],
            vec![],
        ),
        // Never the values.
        AnyObject::Secret(s) => (
            vec![
                (
                    "TYPE",
                    s.spec.kind.clone().unwrap_or_else(|| "Opaque".into()),
                ),
                ("DATA", s.spec.data.len().to_string()),
            ],
            vec![],
        ),
        AnyObject::NetworkPolicy(p) => {
            let (ing, eg) = p.spec.effective_types();
            let types = [(ing, "Ingress"), (eg, "Egress")]
                .into_iter()
                .filter(|(on, _)| *on)
                .map(|(_, t)| t.to_string());
            (
                vec![("POD-SELECTOR", p.spec.pod_selector.describe())],
                vec![
                    ("POLICY-TYPES", join_or_none(types)),
                    ("INGRESS-RULES", p.spec.ingress.len().to_string()),
                    ("EGRESS-RULES", p.spec.egress.len().to_string()),
                ],
            )
        }
        AnyObject::ClusterNetworkPolicy(p) => {
            let subject = match (&p.spec.subject.namespaces, &p.spec.subject.pods) {
                (Some(n), _) => format!("namespaces:{}", n.describe()),
                (_, Some(pods)) => format!(
                    "pods:{}/{}",
                    pods.namespace_selector.describe(),
                    pods.pod_selector.describe()
                ),
                _ => NONE.to_string(),
            };
            (
                vec![
                    ("TIER", format!("{:?}", p.spec.tier)),
                    ("PRIORITY", p.spec.priority.to_string()),
                    ("SUBJECT", subject),
                ],
                vec![
                    ("INGRESS-RULES", p.spec.ingress.len().to_string()),
                    ("EGRESS-RULES", p.spec.egress.len().to_string()),
                ],
            )
        }
    }
}

/// A Service's EXTERNAL-IP cell: the external name, external IPs and load-balancer
/// address; `<pending>` for a LoadBalancer still waiting for one.
fn external_ip(s: &objects::Service) -> String {
    if s.spec.type_ == ServiceType::ExternalName {
        return or_none(s.spec.external_name.clone());
    }
    let mut ips: Vec<String> = s
        .spec
        .external_ips
        .iter()
        .map(|ip| ip.to_string())
        .collect();
    let lb = s.status.load_balancer_ip.or(s.spec.load_balancer_ip);
    if let Some(ip) = lb {
        ips.push(ip.to_string());
    } else if s.spec.type_ == ServiceType::LoadBalancer {
        ips.push("<pending>".into());
    }
    join_or_none(ips.into_iter())
}

/// `True` / `False`.
fn bool_cell(b: bool) -> String {
    if b { "True" } else { "False" }.to_string()
}

/// The value, or `<none>`.
fn or_none(v: Option<String>) -> String {
    v.unwrap_or_else(|| NONE.to_string())
}

/// Comma-joined, or `<none>` when empty.
fn join_or_none(items: impl Iterator<Item = String>) -> String {
    let v: Vec<String> = items.collect();
    if v.is_empty() {
        NONE.to_string()
    } else {
        v.join(",")
    }
}

/// `k=v,k2=v2`, or `<none>`.
fn labels(m: &std::collections::BTreeMap<String, String>) -> String {
    join_or_none(m.iter().map(|(k, v)| format!("{k}={v}")))
}

/// kubectl-style age of an object created at `ts`: `42s`, `17m`, `5h`, `12d`, `3y`.
fn age(ts: Option<&str>, now: SystemTime) -> String {
    let Some(created) = ts.and_then(|t| objects::parse_rfc3339(t).ok()) else {
        return "<unknown>".into();
    };
    let s = now.duration_since(created).unwrap_or_default().as_secs();
    match s {
        0..120 => format!("{s}s"),
        120..10_800 => format!("{}m", s / 60),
        10_800..172_800 => format!("{}h", s / 3600),
        _ if s < 2 * 365 * 86_400 => format!("{}d", s / 86_400),
        _ => format!("{}y", s / (365 * 86_400)),
    }
}

/// Left-aligned columns, three spaces apart, the last one unpadded.
pub(crate) fn align(header: &[String], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for line in std::iter::once(header).chain(rows.iter().map(Vec::as_slice)) {
        for (i, (cell, w)) in line.iter().zip(&widths).enumerate() {
            if i + 1 == line.len() {
                out.push_str(cell);
            } else {
                let _ = write!(out, "{cell:<w$}   ");
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn programmed_counts_ready_nodes_that_reached_the_revision() {
        let parse = |v: Value| AnyObject::from_value(v).unwrap();
        // `rev`: the revision programmed in both collections.
        let node = |name: &str, ready: bool, rev: Option<u64>| {
            let mut status = serde_json::json!({"ready": ready});
            if let Some(r) = rev {
                status["programmed"] = serde_json::json!({"services": r, "endpoints": r});
            }
            match parse(
                serde_json::json!({"apiVersion": "trellis/v1", "kind": "Node",
                "metadata": {"name": name}, "spec": {"address": "192.0.2.1"}, "status": status}),
            ) {
                AnyObject::Node(n) => n,
                o => panic!("{o:?}"),
            }
        };
        let endpoint = |name: &str, app: &str, rv: &str| match parse(serde_json::json!({
            "apiVersion": "trellis/v1", "kind": "Endpoint",
            "metadata": {"name": name, "namespace": "default", "labels": {"app": app},
                "resourceVersion": rv},
            "spec": {"containerId": name, "ifname": "eth0", "network": "pods", "node": "n1",
                "ip": "10.244.1.2"}}))
        {
            AnyObject::Endpoint(e) => e,
            o => panic!("{o:?}"),
        };
        let svc = match parse(
            serde_json::json!({"apiVersion": "trellis/v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "default", "resourceVersion": "20"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}),
        ) {
            AnyObject::Service(s) => s,
            o => panic!("{o:?}"),
        };
        let mut p = Programmed {
            nodes: vec![
                node("a", true, Some(30)),
                node("b", true, Some(25)),
                node("c", true, None),
                node("d", false, Some(99)),
            ],
            endpoints: vec![endpoint("e1", "web", "10"), endpoint("e2", "db", "50")],
        };
        // The Service (20) is the newest of what it selects: a and b reached it, c
        // reported nothing, d is not ready and not counted.
        assert_eq!(p.cell(&svc), "2/3");
        // A selected Endpoint at 28: only a.
        p.endpoints.push(endpoint("e3", "web", "28"));
        assert_eq!(p.cell(&svc), "1/3");
        p.nodes.clear();
        assert_eq!(p.cell(&svc), "0/0");
        // The column sits at the end of the wide table.
        p.nodes.push(node("a", true, Some(30)));
        let extra = Extra {
            programmed: Some(p),
            worlds: None,
        };
        let t = table(
            &[AnyObject::Service(svc)],
            true,
            false,
            &extra,
            SystemTime::now(),
        );
        let header = t.lines().next().unwrap();
        assert!(header.ends_with("SELECTOR   PROGRAMMED"), "{t}");
        assert!(t.lines().nth(1).unwrap().ends_with("app=web    1/1"), "{t}");
    }

    #[test]
    fn ages() {
        let now = objects::parse_rfc3339("2024-05-10T12:00:00Z").unwrap();
        for (ts, want) in [
            ("2024-05-10T11:59:55Z", "5s"),
            ("2024-05-10T11:57:00Z", "3m"),
            ("2024-05-10T10:00:00Z", "120m"),
            ("2024-05-10T08:00:00Z", "4h"),
            ("2024-05-06T12:00:00Z", "4d"),
            ("2020-05-10T12:00:00Z", "4y"),
        ] {
            assert_eq!(age(Some(ts), now), want, "{ts}");
        }
        assert_eq!(age(None, now), "<unknown>");
        assert_eq!(age(Some("garbage"), now), "<unknown>");
    }

    #[test]
    fn aligned() {
        let t = align(
            &["NAME".into(), "IP".into()],
            &[vec!["a-long-name".into(), "10.0.0.1".into()]],
        );
        assert_eq!(t, "NAME          IP\na-long-name   10.0.0.1\n");
    }
}
