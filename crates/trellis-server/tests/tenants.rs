//! Tenants through the real HTTP stack: overlapping ranges across worlds and not within
//! one, peerings, namespaces changing world, per-tenant cluster IPs; every refusal names
//! its field and stores nothing.

mod common;

use common::*;
use serde_json::{json, Value};
use trellis_client::Client;

fn tenant(name: &str, service_cidr: Option<&str>) -> Value {
    let mut t = json!({"apiVersion": "trellis/v1", "kind": "Tenant", "metadata": {"name": name}});
    if let Some(c) = service_cidr {
        t["spec"] = json!({ "serviceCIDR": c });
    }
    t
}

fn tnet(name: &str, tenant: &str, cidr: &str) -> Value {
    json!({"apiVersion": "trellis/v1", "kind": "Network", "metadata": {"name": name},
        "spec": {"cidr": cidr, "tenant": tenant}})
}

fn namespace(name: &str, tenant: Option<&str>) -> Value {
    let mut n = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
    if let Some(t) = tenant {
        n["spec"] = json!({ "tenant": t });
    }
    n
}

fn peering(name: &str, a: &str, b: &str) -> Value {
    json!({"apiVersion": "trellis/v1", "kind": "TenantPeering", "metadata": {"name": name},
        "spec": {"tenants": [a, b]}})
}

fn svc(ns: &str, name: &str, cluster_ip: Option<&str>) -> Value {
    let mut s = json!({"apiVersion": "trellis/v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"selector": {"app": name}, "ports": [{"port": 80}]}});
    if let Some(ip) = cluster_ip {
        s["spec"]["clusterIP"] = json!(ip);
    }
    s
}

async fn names(c: &Client, path: &str) -> Vec<String> {
    let list = c.get(path).await.unwrap();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worlds_may_overlap_and_nothing_crosses_without_a_peering() {
    let (store, _d) = embedded();
    let srv = start(store, false, test_config()).await;
    let c = srv.client(ADMIN);

    // A network may not name a tenant that does not exist.
    let (st, m) = refused(
        c.post("/v1/networks", &tnet("red-pods", "red", "10.244.0.0/16"))
            .await,
    );
    assert_eq!(st, 422);
    assert!(
        m.starts_with("spec.tenant:") && m.contains("does not exist"),
        "{m}"
    );
    assert!(names(&c, "/v1/networks").await.is_empty());

    // Two tenants and the default world use the same pod range.
    c.post("/v1/networks", &network("pods", "10.244.0.0/16"))
        .await
        .unwrap();
    for t in ["red", "blue"] {
        c.post("/v1/tenants", &tenant(t, Some("10.96.0.0/16")))
            .await
            .unwrap();
        c.post(
            "/v1/networks",
            &tnet(&format!("{t}-pods"), t, "10.244.0.0/16"),
        )
        .await
        .unwrap();
    }
    // Within one world it may not.
    let (st, m) = refused(
        c.post("/v1/networks", &tnet("red-more", "red", "10.244.8.0/22"))
            .await,
    );
    assert_eq!(st, 422);
    assert!(
        m.starts_with("spec.cidr:") && m.contains("\"red-pods\""),
        "{m}"
    );
    assert_eq!(names(&c, "/v1/networks").await.len(), 3);
    // A network does not change tenant.
    let mut moved = c.get("/v1/networks/red-pods").await.unwrap();
    moved["spec"]["tenant"] = json!("blue");
    let (st, m) = refused(c.put("/v1/networks/red-pods", &moved).await);
    assert_eq!(st, 422);
    assert!(
        m.starts_with("spec.tenant:") && m.contains("immutable"),
        "{m}"
    );

    // A peering between overlapping tenants is refused, naming both ranges.
    let (st, m) = refused(
        c.post("/v1/tenantpeerings", &peering("rb", "red", "blue"))
            .await,
    );
    assert_eq!(st, 422);
    assert!(
        m.starts_with("spec.tenants:") && m.contains("overlap"),
        "{m}"
    );
    let (st, m) = refused(
        c.post("/v1/tenantpeerings", &peering("rx", "red", "nosuch"))
            .await,
    );
    assert_eq!(st, 422);
    assert!(m.starts_with("spec.tenants[1]:"), "{m}");
    let (st, m) = refused(
        c.post("/v1/tenantpeerings", &peering("rr", "red", "red"))
            .await,
    );
    assert_eq!(st, 422);
    assert!(m.starts_with("spec.tenants[1]:"), "{m}");
    assert!(names(&c, "/v1/tenantpeerings").await.is_empty());
    // Disjoint tenants may peer; afterwards neither may take the other's range.
    c.post("/v1/tenants", &tenant("green", Some("10.97.0.0/16")))
        .await
        .unwrap();
    c.post("/v1/networks", &tnet("green-pods", "green", "10.50.0.0/16"))
        .await
        .unwrap();
    c.post("/v1/tenantpeerings", &peering("red-green", "red", "green"))
        .await
        .unwrap();
    let (st, m) = refused(
        c.post("/v1/networks", &tnet("red-b", "red", "10.50.0.0/20"))
            .await,
    );
    assert_eq!(st, 422);
    assert!(
        m.contains("\"green-pods\"") && m.contains("TenantPeering"),
        "{m}"
    );
    c.post("/v1/networks", &tnet("blue-b", "blue", "10.50.0.0/20"))
        .await
        .unwrap();

    // A tenant is deleted only once nothing names it.
    let (st, m) = refused(c.delete("/v1/tenants/green").await);
    assert_eq!(st, 409);
    assert!(m.contains("green-pods"), "{m}");
    c.delete("/v1/networks/green-pods").await.unwrap();
    let (st, m) = refused(c.delete("/v1/tenants/green").await);
    assert_eq!(st, 409);
    assert!(m.contains("TenantPeering"), "{m}");
    c.delete("/v1/tenantpeerings/red-green").await.unwrap();
    c.delete("/v1/tenants/green").await.unwrap();

    // serviceCIDR is immutable and checked.
    let mut t = c.get("/v1/tenants/red").await.unwrap();
    t["spec"]["serviceCIDR"] = json!("10.98.0.0/16");
    let (st, m) = refused(c.put("/v1/tenants/red", &t).await);
    assert_eq!(st, 422);
    assert!(m.starts_with("spec.serviceCIDR:"), "{m}");
    let (st, m) = refused(
        c.post("/v1/tenants", &tenant("big", Some("10.0.0.0/8")))
            .await,
    );
    assert_eq!(st, 422);
    assert!(m.starts_with("spec.serviceCIDR:"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_change_world_only_when_empty_and_services_allocate_per_tenant() {
    let (store, _d) = embedded();
    let srv = start(store, false, test_config()).await;
    let c = srv.client(ADMIN);
    for t in ["red", "blue"] {
        c.post("/v1/tenants", &tenant(t, Some("10.96.0.0/24")))
            .await
            .unwrap();
    }
    let (st, m) = refused(
        c.post("/v1/namespaces", &namespace("x", Some("nosuch")))
            .await,
    );
    assert_eq!(st, 422);
    assert!(m.starts_with("spec.tenant:"), "{m}");
    c.post("/v1/namespaces", &namespace("r", Some("red")))
        .await
        .unwrap();
    c.post("/v1/namespaces", &namespace("b", Some("blue")))
        .await
        .unwrap();

    // The same cluster IP in both tenants, and in the default world; not twice in one.
    let ip = "10.96.0.10";
    let a = c
        .post("/v1/namespaces/r/services", &svc("r", "web", Some(ip)))
        .await
        .unwrap();
    let b = c
        .post("/v1/namespaces/b/services", &svc("b", "web", Some(ip)))
        .await
        .unwrap();
    c.post(
        "/v1/namespaces/default/services",
        &svc("default", "web", Some(ip)),
    )
    .await
    .unwrap();
    assert_eq!(a["spec"]["clusterIP"], ip);
    assert_eq!(b["spec"]["clusterIP"], ip);
    let (st, m) = refused(
        c.post("/v1/namespaces/r/services", &svc("r", "web2", Some(ip)))
            .await,
    );
    assert_eq!(st, 422);
    assert!(
        m.starts_with("spec.clusterIP:") && m.contains("already allocated"),
        "{m}"
    );
    // A tenant's range bounds its cluster IPs (here a /24, unlike the cluster's /16).
    let (st, m) = refused(
        c.post(
            "/v1/namespaces/r/services",
            &svc("r", "web3", Some("10.96.5.1")),
        )
        .await,
    );
    assert_eq!(st, 422);
    assert!(m.contains("10.96.0.0/24"), "{m}");
    // Picked ones come from the tenant's range.
    let picked = c
        .post("/v1/namespaces/r/services", &svc("r", "api", None))
        .await
        .unwrap();
    let picked: std::net::Ipv4Addr = picked["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(picked.octets()[..3] == [10, 96, 0], "{picked}");
    // Deleting releases the address in its own world.
    c.delete("/v1/namespaces/r/services/web").await.unwrap();
    c.post("/v1/namespaces/r/services", &svc("r", "web", Some(ip)))
        .await
        .unwrap();

    // A namespace with services (or pods) does not change world, nor leave it.
    let mut moved = c.get("/v1/namespaces/r").await.unwrap();
    moved["spec"]["tenant"] = json!("blue");
    let (st, m) = refused(c.put("/v1/namespaces/r", &moved).await);
    assert_eq!(st, 422);
    assert!(
        m.starts_with("spec.tenant:") && m.contains("2 services"),
        "{m}"
    );
    let (st, m) = refused(c.delete("/v1/namespaces/r").await);
    assert_eq!(st, 422);
    assert!(m.starts_with("spec.tenant:"), "{m}");
    assert_eq!(
        c.get("/v1/namespaces/r").await.unwrap()["spec"]["tenant"],
        "red"
    );
    // Nor does one that only holds a pod start in a tenant.
    c.post(
        "/v1/namespaces/p/pods",
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "namespace": "p"}}),
    )
    .await
    .unwrap();
    let (st, m) = refused(c.post("/v1/namespaces", &namespace("p", Some("red"))).await);
    assert_eq!(st, 422);
    assert!(m.contains("1 pod"), "{m}");
    assert!(!names(&c, "/v1/namespaces").await.contains(&"p".to_string()));
    // Emptied, it may move.
    for s in ["web", "api"] {
        c.delete(&format!("/v1/namespaces/r/services/{s}"))
            .await
            .unwrap();
    }
    c.put("/v1/namespaces/r", &moved).await.unwrap();
    // A tenant owning a namespace is not deleted.
    let (st, m) = refused(c.delete("/v1/tenants/blue").await);
    assert_eq!(st, 409);
    assert!(m.contains("namespace"), "{m}");
    // A ClusterNetworkPolicy may be scoped to an existing tenant only, and keeps it.
    let cnp = |tenant: &str| {
        json!({"apiVersion": "trellis/v1", "kind": "ClusterNetworkPolicy", "metadata": {"name": "lock"},
            "spec": {"tenant": tenant, "tier": "Admin", "priority": 1, "subject": {"namespaces": {}},
                "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}})
    };
    let (st, m) = refused(c.post("/v1/clusternetworkpolicies", &cnp("nosuch")).await);
    assert_eq!(st, 422);
    assert!(m.starts_with("spec.tenant:"), "{m}");
    c.post("/v1/tenants", &tenant("green", None)).await.unwrap();
    c.post("/v1/clusternetworkpolicies", &cnp("green"))
        .await
        .unwrap();
    let (st, m) = refused(c.delete("/v1/tenants/green").await);
    assert_eq!(st, 409);
    assert!(m.contains("ClusterNetworkPolicy"), "{m}");
}
