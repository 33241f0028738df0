//! The API over the embedded store, in process, through the real HTTP stack and client:
//! every verb, every validation error (and that it changed nothing), the roles, watches
//! with bookmarks and resync, the allocators and node liveness.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use serde_json::{json, Value};
use trellis_client::{Client, ClientError};

fn status_of<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (u16, String) {
    match r {
        Err(ClientError::Api {
            status, message, ..
        }) => (status, message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn rv(v: &Value) -> String {
    v["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_verb() {
    let (store, _d) = embedded();
    let srv = start(store, true, test_config()).await;
    let c = srv.client(ADMIN);
    let created = c
        .post("/v1/networks", &network("pods", "10.244.0.0/16"))
        .await
        .unwrap();
    let rv1 = rv(&created);
    assert!(
        created["status"]["vni"].as_u64().unwrap() >= 1,
        "VNI allocated: {created}"
    );
    assert_eq!(c.get("/v1/networks/pods").await.unwrap(), created);
    let list = c.get("/v1/networks").await.unwrap();
    assert_eq!(list["kind"], "NetworkList");
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(rv(&list), rv1);
    // create again: AlreadyExists
    let (st, msg) = status_of(
        c.post("/v1/networks", &network("pods", "10.244.0.0/16"))
            .await,
    );
    assert_eq!(st, 409);
    assert!(msg.contains("already exists"), "{msg}");
    // update with the current resourceVersion
    let mut upd = created.clone();
    upd["spec"]["mtu"] = json!(1400);
    let updated = c.put("/v1/networks/pods", &upd).await.unwrap();
    assert_ne!(rv(&updated), rv1);
    assert_eq!(updated["spec"]["mtu"], 1400);
    assert_eq!(
        updated["status"]["vni"], created["status"]["vni"],
        "VNI kept"
    );
    assert_eq!(
        updated["metadata"]["creationTimestamp"],
        created["metadata"]["creationTimestamp"]
    );
    // stale resourceVersion: Conflict, nothing changed
    upd["spec"]["mtu"] = json!(1300);
    let (st, msg) = status_of(c.put("/v1/networks/pods", &upd).await);
    assert_eq!(st, 409);
    assert!(msg.contains("stale"), "{msg}");
    assert_eq!(
        c.get("/v1/networks/pods").await.unwrap()["spec"]["mtu"],
        1400
    );
    // without resourceVersion: last write wins
    let mut blind = network("pods", "10.244.0.0/16");
    blind["spec"]["mtu"] = json!(1450);
    assert_eq!(
        c.put("/v1/networks/pods", &blind).await.unwrap()["spec"]["mtu"],
        1450
    );
    // YAML on create
    let yaml = "apiVersion: trellis/v1\nkind: Pod\nmetadata:\n  name: p1\n  labels: {app: web}\n";
    let pod = c
        .request(
            hyper::Method::POST,
            "/v1/namespaces/default/pods",
            Some((yaml.as_bytes().to_vec(), "application/yaml")),
        )
        .await
        .unwrap();
    assert_eq!(pod["metadata"]["namespace"], "default");
    let sel = c.get("/v1/pods?labelSelector=app=web").await.unwrap();
    assert_eq!(sel["items"].as_array().unwrap().len(), 1);
    let sel = c.get("/v1/pods?labelSelector=app=db").await.unwrap();
    assert_eq!(sel["items"].as_array().unwrap().len(), 0);
    // namespaced list paths
    assert_eq!(
        c.get("/v1/namespaces/other/pods").await.unwrap()["items"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    // delete: stale rv refused, then deleted, then NotFound
    let cur = c.get("/v1/networks/pods").await.unwrap();
    let (st, _) = status_of(
        c.delete(&format!("/v1/networks/pods?resourceVersion={rv1}"))
            .await,
    );
    assert_eq!(st, 409);
    let gone = c
        .delete(&format!("/v1/networks/pods?resourceVersion={}", rv(&cur)))
        .await
        .unwrap();
    assert_eq!(gone["metadata"]["name"], "pods");
    assert_eq!(status_of(c.get("/v1/networks/pods").await).0, 404);
    assert_eq!(status_of(c.delete("/v1/networks/pods").await).0, 404);
    assert_eq!(status_of(c.get("/v1/widgets").await).0, 404);
    // a server that is not there: the cause is in the message
    let dead = Client::new(&trellis_client::Config {
        server: "http://127.0.0.1:1".into(),
        ..Default::default()
    })
    .unwrap();
    match dead.get("/v1/networks").await {
        Err(ClientError::Transport { msg, .. }) => assert!(msg.contains("refused"), "{msg}"),
        other => panic!("expected a transport error, got {other:?}"),
    }
    // its VNI was released: a new network may take it explicitly
    let mut again = network("pods2", "10.244.0.0/16");
    again["spec"]["vni"] = created["status"]["vni"].clone();
    c.post("/v1/networks", &again).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_errors_name_the_field_and_change_nothing() {
    let (store, _d) = embedded();
    let srv = start(store.clone(), false, test_config()).await;
    let c = srv.client(ADMIN);
    c.post("/v1/networks", &network("pods", "10.244.0.0/16"))
        .await
        .unwrap();
    let svc = c
        .post(
            "/v1/namespaces/default/services",
            &service(
                "taken",
                json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}),
            ),
        )
        .await
        .unwrap();
    let long = "a".repeat(64);
    let cases: Vec<(&str, &str, Value, u16, &str)> = vec![
        (
            "bad CIDR",
            "/v1/networks",
            network("n1", "10.0.0.0/33"),
            422,
            "spec.cidr",
        ),
        (
            "host bits",
            "/v1/networks",
            network("n1", "10.1.0.1/16"),
            422,
            "spec.cidr",
        ),
        (
            "overlap",
            "/v1/networks",
            network("n1", "10.244.128.0/17"),
            422,
            "overlaps network \"pods\"",
        ),
        (
            "subnet prefix",
            "/v1/networks",
            json!({"apiVersion": "trellis/v1", "kind": "Network", "metadata": {"name": "n1"}, "spec": {"cidr": "10.9.0.0/16", "nodeSubnetPrefix": 16}}),
            422,
            "spec.nodeSubnetPrefix",
        ),
        (
            "unknown field",
            "/v1/networks",
            json!({"apiVersion": "trellis/v1", "kind": "Network", "metadata": {"name": "n1"}, "spec": {"cidr": "10.9.0.0/16", "cidrr": 1}}),
            422,
            "spec.cidrr",
        ),
        (
            "name too long",
            "/v1/networks",
            network(&long, "10.9.0.0/16"),
            422,
            "metadata.name",
        ),
        (
            "name not DNS-1123",
            "/v1/networks",
            network("Bad_Name", "10.9.0.0/16"),
            422,
            "metadata.name",
        ),
        (
            "vni taken",
            "/v1/networks",
            {
                let mut n = network("n1", "10.9.0.0/16");
                n["spec"]["vni"] = json!(svc_vni(&c).await);
                n
            },
            422,
            "spec.vni",
        ),
        (
            "nodePort out of range",
            "/v1/namespaces/default/services",
            service(
                "s1",
                json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 80}]}),
            ),
            422,
            "spec.ports[0].nodePort",
        ),
        (
            "nodePort taken",
            "/v1/namespaces/default/services",
            service(
                "s1",
                json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}),
            ),
            422,
            "spec.ports[0].nodePort: 30080 is already allocated",
        ),
        (
            "clusterIP outside the range",
            "/v1/namespaces/default/services",
            service(
                "s1",
                json!({"clusterIP": "192.168.1.1", "ports": [{"port": 80}]}),
            ),
            422,
            "spec.clusterIP",
        ),
        (
            "kind does not match the URL",
            "/v1/networks",
            service("s1", json!({"ports": [{"port": 80}]})),
            400,
            "kind",
        ),
        (
            "namespace does not match the URL",
            "/v1/namespaces/other/services",
            service("s1", json!({"ports": [{"port": 80}]})),
            400,
            "metadata.namespace",
        ),
        (
            "wrong apiVersion",
            "/v1/networks",
            json!({"apiVersion": "v1", "kind": "Network", "metadata": {"name": "n1"}, "spec": {"cidr": "10.9.0.0/16"}}),
            422,
            "apiVersion",
        ),
    ];
    let (before, rev_before) = store.list("/").await.unwrap();
    for (what, path, body, want_status, want_msg) in cases {
        let (st, msg) = status_of(c.post(path, &body).await);
        assert_eq!(st, want_status, "{what}: {msg}");
        assert!(msg.contains(want_msg), "{what}: {msg:?} lacks {want_msg:?}");
    }
    // not JSON at all
    let r = c
        .request(
            hyper::Method::POST,
            "/v1/networks",
            Some((b"{not json".to_vec(), "application/json")),
        )
        .await;
    assert!(
        matches!(
            r,
            Err(ClientError::Api {
                status: 400 | 422,
                ..
            })
        ),
        "{r:?}"
    );
    let (after, rev_after) = store.list("/").await.unwrap();
    assert_eq!(before, after, "a refused request changed the store");
    assert_eq!(rev_before, rev_after);
    // re-creating an existing object that names its own allocations: AlreadyExists
    let (st, msg) = status_of(c.post("/v1/namespaces/default/services", &svc).await);
    assert_eq!(st, 409, "{msg}");
    assert!(msg.contains("already exists"), "{msg}");
    // immutable fields on update
    let mut s2 = svc.clone();
    s2["spec"]["clusterIP"] = json!("10.96.0.77");
    let (st, msg) = status_of(c.put("/v1/namespaces/default/services/taken", &s2).await);
    assert_eq!(st, 422);
    assert!(msg.contains("spec.clusterIP: field is immutable"), "{msg}");
    let mut n2 = c.get("/v1/networks/pods").await.unwrap();
    n2["spec"]["cidr"] = json!("10.245.0.0/16");
    let (st, msg) = status_of(c.put("/v1/networks/pods", &n2).await);
    assert_eq!((st, msg.contains("spec.cidr")), (422, true), "{msg}");
}

/// The VNI the test's first network got (to ask for it again).
async fn svc_vni(c: &Client) -> u64 {
    c.get("/v1/networks/pods").await.unwrap()["status"]["vni"]
        .as_u64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_and_tokens() {
    let (store, _d) = embedded();
    let srv = start(store, true, test_config()).await;
    let admin = srv.client(ADMIN);
    let reader = srv.client(READER);
    let n1 = srv.client(NODE1);
    let nobody = srv.client("wrong-token");
    admin
        .post("/v1/networks", &network("pods", "10.244.0.0/16"))
        .await
        .unwrap();
    admin
        .post("/v1/nodes", &node("n2", "192.168.77.12"))
        .await
        .unwrap();
    assert_eq!(status_of(nobody.get("/v1/networks").await).0, 401);
    let mut anon = trellis_client::Config {
        server: srv.url.clone(),
        ca: srv.ca.clone(),
        ..Default::default()
    };
    assert_eq!(
        status_of(Client::new(&anon).unwrap().get("/v1/networks").await).0,
        401
    );
    // https without the CA: refused by the client
    anon.ca = None;
    assert!(matches!(Client::new(&anon), Err(ClientError::Config(_))));

    // read-only: reads yes, writes no
    reader.get("/v1/networks/pods").await.unwrap();
    assert_eq!(
        status_of(reader.post("/v1/nodes", &node("n3", "192.168.77.13")).await).0,
        403
    );
    assert_eq!(status_of(reader.delete("/v1/networks/pods").await).0, 403);

    // node n1: its own Node, heartbeat, subnet and Endpoints; nothing else
    n1.post("/v1/nodes", &node("n1", "192.168.77.11"))
        .await
        .unwrap();
    n1.post("/v1/nodes/n1/heartbeat", &json!({})).await.unwrap();
    let lease = n1
        .post("/v1/nodes/n1/subnets/pods", &json!({}))
        .await
        .unwrap();
    assert_eq!(lease["network"], "pods");
    n1.post(
        "/v1/namespaces/default/endpoints",
        &endpoint("e1", "n1", "10.244.0.5"),
    )
    .await
    .unwrap();
    let denied: Vec<(&str, Result<Value, ClientError>)> = vec![
        (
            "create another node",
            n1.post("/v1/nodes", &node("n3", "192.168.77.13")).await,
        ),
        (
            "update another node",
            n1.put("/v1/nodes/n2", &node("n2", "192.168.77.99")).await,
        ),
        ("delete another node", n1.delete("/v1/nodes/n2").await),
        (
            "endpoint of another node",
            n1.post(
                "/v1/namespaces/default/endpoints",
                &endpoint("e2", "n2", "10.244.1.5"),
            )
            .await,
        ),
        (
            "heartbeat for another node",
            n1.post("/v1/nodes/n2/heartbeat", &json!({})).await,
        ),
        (
            "subnet for another node",
            n1.post("/v1/nodes/n2/subnets/pods", &json!({})).await,
        ),
        (
            "a service",
            n1.post(
                "/v1/namespaces/default/services",
                &service("s", json!({"ports": [{"port": 80}]})),
            )
            .await,
        ),
        ("a network", n1.delete("/v1/networks/pods").await),
    ];
    for (what, r) in denied {
        let (st, msg) = status_of(r);
        assert_eq!(st, 403, "{what}: {msg}");
    }
    // moving its endpoint to another node is refused too
    let mut e = n1.get("/v1/namespaces/default/endpoints/e1").await.unwrap();
    e["spec"]["node"] = json!("n2");
    assert_eq!(
        status_of(n1.put("/v1/namespaces/default/endpoints/e1", &e).await).0,
        403
    );
    assert!(admin.get("/v1/nodes/n2").await.unwrap()["spec"]["address"] == "192.168.77.12");
}

async fn next_event(w: &mut trellis_client::WatchEvents) -> Value {
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .expect("watch event within 10 s")
            .expect("watch ended")
            .expect("watch error");
        if ev["type"] != "BOOKMARK" {
            return ev;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_events_bookmarks_and_resync() {
    let (store, _d) = embedded();
    let srv = start(store.clone(), false, test_config()).await;
    let c = srv.client(READER);
    let a = srv.client(ADMIN);
    let s = a
        .post(
            "/v1/namespaces/default/services",
            &service("web", json!({"ports": [{"port": 80}]})),
        )
        .await
        .unwrap();
    // without a resourceVersion: the current objects first
    let mut w0 = c.watch("/v1/services", None, false).await.unwrap();
    let e = next_event(&mut w0).await;
    assert_eq!(
        (e["type"].as_str(), e["object"]["metadata"]["name"].as_str()),
        (Some("ADDED"), Some("web"))
    );
    // from a resourceVersion: exactly what came after it, in order
    let mut w = c
        .watch("/v1/namespaces/default/services", Some(&rv(&s)), true)
        .await
        .unwrap();
    let mut s2 = s.clone();
    s2["spec"]["ports"][0]["port"] = json!(8080);
    let m = a
        .put("/v1/namespaces/default/services/web", &s2)
        .await
        .unwrap();
    a.post("/v1/nodes", &node("n9", "192.168.77.9"))
        .await
        .unwrap(); // another kind: not seen
    a.delete("/v1/namespaces/default/services/web")
        .await
        .unwrap();
    let e = next_event(&mut w).await;
    assert_eq!(e["type"], "MODIFIED");
    assert_eq!(rv(&e["object"]), rv(&m));
    assert_eq!(e["object"]["spec"]["ports"][0]["port"], 8080);
    let e = next_event(&mut w).await;
    assert_eq!(e["type"], "DELETED");
    assert_eq!(e["object"]["metadata"]["name"], "web");
    // bookmarks arrive while nothing happens
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(5), w.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if ev["type"] == "BOOKMARK" {
            assert!(
                ev["object"]["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap()
                    .parse::<i64>()
                    .unwrap()
                    > 0
            );
            break;
        }
        assert!(Instant::now() < deadline, "no bookmark");
    }
    // compaction: a watch from before it gets a RESYNC with the current state
    let x = a
        .post(
            "/v1/namespaces/default/services",
            &service("x", json!({"ports": [{"port": 81}]})),
        )
        .await
        .unwrap();
    let now = store.revision().await.unwrap();
    store.compact(now).await.unwrap();
    let mut w = c.watch("/v1/services", Some(&rv(&s)), false).await.unwrap();
    let e = next_event(&mut w).await;
    assert_eq!(e["type"], "RESYNC", "{e}");
    let names: Vec<&str> = e["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["x"]);
    assert_eq!(e["items"][0], x);
    let y = a
        .post(
            "/v1/namespaces/default/services",
            &service("y", json!({"ports": [{"port": 82}]})),
        )
        .await
        .unwrap();
    let e = next_event(&mut w).await;
    assert_eq!(
        (e["type"].as_str(), rv(&e["object"])),
        (Some("ADDED"), rv(&y))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn allocations_are_unique_under_concurrency() {
    let (store, _d) = embedded();
    let srv = start(store, false, test_config()).await;
    let c = srv.client(ADMIN);
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move {
                c.post(
                    "/v1/namespaces/default/services",
                    &service(&format!("s{i}"), json!({"type": "NodePort", "ports": [{"name": "http", "port": 80}, {"name": "https", "port": 443}]})),
                )
                .await
                .unwrap()
            })
        })
        .collect();
    let mut ips = HashSet::new();
    let mut ports = HashSet::new();
    for t in tasks {
        let s = t.await.unwrap();
        assert!(ips.insert(s["spec"]["clusterIP"].as_str().unwrap().to_string()));
        for p in s["spec"]["ports"].as_array().unwrap() {
            let np = p["nodePort"].as_u64().unwrap();
            assert!((30000..=32767).contains(&np));
            assert!(ports.insert(np), "node port {np} given twice");
        }
    }
    assert_eq!((ips.len(), ports.len()), (100, 200));
    // an update keeps the node ports of unchanged ports; dropping a port frees it
    let s0 = c.get("/v1/namespaces/default/services/s0").await.unwrap();
    let mut s0b = s0.clone();
    s0b["spec"]["ports"] = json!([{"name": "http", "port": 80}]);
    let upd = c
        .put("/v1/namespaces/default/services/s0", &s0b)
        .await
        .unwrap();
    assert_eq!(
        upd["spec"]["ports"][0]["nodePort"],
        s0["spec"]["ports"][0]["nodePort"]
    );
    assert_eq!(upd["spec"]["clusterIP"], s0["spec"]["clusterIP"]);
    let freed = s0["spec"]["ports"][1]["nodePort"].clone();
    c.post(
        "/v1/namespaces/default/services",
        &service(
            "reuse",
            json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": freed}]}),
        ),
    )
    .await
    .unwrap();

    // node subnets: distinct, and the same one again for the same node
    c.post("/v1/networks", &network("pods", "10.244.0.0/20"))
        .await
        .unwrap();
    let mut subnets = HashSet::new();
    for i in 0..16 {
        let n = format!("n{i}");
        c.post("/v1/nodes", &node(&n, &format!("192.168.77.{}", 10 + i)))
            .await
            .unwrap();
        let l = c
            .post(&format!("/v1/nodes/{n}/subnets/pods"), &json!({}))
            .await
            .unwrap();
        assert!(subnets.insert(l["cidr"].as_str().unwrap().to_string()));
        let again = c
            .post(&format!("/v1/nodes/{n}/subnets/pods"), &json!({}))
            .await
            .unwrap();
        assert_eq!(again, l, "a node keeps its subnet");
    }
    // the /20 has 16 /24s: the 17th node gets a clear error
    c.post("/v1/nodes", &node("n99", "192.168.77.99"))
        .await
        .unwrap();
    let (st, msg) = status_of(c.post("/v1/nodes/n99/subnets/pods", &json!({})).await);
    assert_eq!(st, 409);
    assert!(msg.contains("no free /24"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_lease_expiry_and_subnet_reclaim() {
    let (store, _d) = embedded();
    let srv = start(store, false, test_config()).await; // ttl 2 s, grace 2 s
    let c = srv.client(ADMIN);
    c.post("/v1/networks", &network("pods", "10.244.0.0/23"))
        .await
        .unwrap();
    for n in ["a", "b", "c"] {
        c.post("/v1/nodes", &node(n, "192.168.77.5")).await.unwrap();
    }
    let la = c
        .post("/v1/nodes/a/subnets/pods", &json!({}))
        .await
        .unwrap();
    let lb = c
        .post("/v1/nodes/b/subnets/pods", &json!({}))
        .await
        .unwrap();
    assert_ne!(la["cidr"], lb["cidr"]);
    assert_eq!(c.get("/v1/nodes/a").await.unwrap()["status"]["ready"], true);
    // a keeps heartbeating, b stops
    let started = Instant::now();
    let mut b_not_ready = None;
    while started.elapsed() < Duration::from_secs(10) {
        c.post("/v1/nodes/a/heartbeat", &json!({})).await.unwrap();
        if b_not_ready.is_none() && c.get("/v1/nodes/b").await.unwrap()["status"]["ready"] == false
        {
            b_not_ready = Some(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(6) && b_not_ready.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let t = b_not_ready.expect("b never became not ready");
    assert!(
        t >= Duration::from_millis(1500),
        "b expired after {t:?}, before its TTL"
    );
    assert_eq!(c.get("/v1/nodes/a").await.unwrap()["status"]["ready"], true);
    // after TTL + grace, b's subnet goes to c (the /23 holds only two /24s)
    let lc = c
        .post("/v1/nodes/c/subnets/pods", &json!({}))
        .await
        .unwrap();
    assert_eq!(
        lc["cidr"], lb["cidr"],
        "the expired node's subnet is reclaimed"
    );
    // a, alive throughout, still has its own
    assert_eq!(
        c.post("/v1/nodes/a/subnets/pods", &json!({}))
            .await
            .unwrap(),
        la
    );
}

/// A Node's agent-set `status.programmed` survives everything the server writes into
/// the Node (heartbeats, lease expiry, subnet leases) and updates that leave the status
/// out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_status_programmed_is_kept_by_server_side_updates() {
    let (store, _d) = embedded();
    let srv = start(store, false, test_config()).await; // ttl 2 s
    let c = srv.client(ADMIN);
    c.post("/v1/networks", &network("pods", "10.244.0.0/16"))
        .await
        .unwrap();
    c.post("/v1/nodes", &node("n1", "192.168.77.5"))
        .await
        .unwrap();
    c.post("/v1/nodes/n1/heartbeat", &json!({})).await.unwrap();
    // The agent's way: read, set the field, write at that version.
    let want = json!({"services": 7, "endpoints": 9});
    let mut n = c.get("/v1/nodes/n1").await.unwrap();
    n["status"]["programmed"] = want.clone();
    c.put("/v1/nodes/n1", &n).await.unwrap();
    let programmed = |c: Client| async move {
        let n = c.get("/v1/nodes/n1").await.unwrap();
        (
            n["status"]["programmed"].clone(),
            n["status"]["ready"].clone(),
        )
    };
    assert_eq!(programmed(c.clone()).await, (want.clone(), json!(true)));
    // A subnet lease lands in the status.
    c.post("/v1/nodes/n1/subnets/pods", &json!({}))
        .await
        .unwrap();
    assert_eq!(programmed(c.clone()).await.0, want);
    // An update without a status (a manifest applied by a user).
    let mut labelled = node("n1", "192.168.77.5");
    labelled["metadata"]["labels"] = json!({"zone": "a"});
    c.put("/v1/nodes/n1", &labelled).await.unwrap();
    assert_eq!(programmed(c.clone()).await, (want.clone(), json!(true)));
    // No heartbeat: the node lifecycle marks it not ready; the heartbeat marks it ready.
    let deadline = Instant::now() + Duration::from_secs(10);
    while programmed(c.clone()).await.1 != json!(false) {
        assert!(
            Instant::now() < deadline,
            "n1 stays ready without heartbeats"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(programmed(c.clone()).await.0, want);
    c.post("/v1/nodes/n1/heartbeat", &json!({})).await.unwrap();
    assert_eq!(programmed(c.clone()).await, (want, json!(true)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subnets_avoid_reserved_ranges_and_host_addresses() {
    let (store, _d) = embedded();
    let srv = start(store, false, test_config()).await;
    let c = srv.client(ADMIN);
    // An l2 network: the hosts' own segment, /28 per node, the router's range reserved.
    let mut net = network("seg", "192.168.77.0/24");
    net["spec"]["backend"] = json!("l2");
    net["spec"]["nodeSubnetPrefix"] = json!(28);
    net["spec"]["reserved"] = json!(["192.168.77.0/28"]);
    c.post("/v1/networks", &net).await.unwrap();
    // n1 sits at .20: the /28 holding it (.16/28) is never leased.
    c.post("/v1/nodes", &node("n1", "192.168.77.20"))
        .await
        .unwrap();
    c.post("/v1/nodes", &node("n2", "192.168.77.2"))
        .await
        .unwrap();
    let a = c
        .post("/v1/nodes/n1/subnets/seg", &json!({}))
        .await
        .unwrap();
    let b = c
        .post("/v1/nodes/n2/subnets/seg", &json!({}))
        .await
        .unwrap();
    assert_eq!(a["cidr"], "192.168.77.32/28");
    assert_eq!(b["cidr"], "192.168.77.48/28");
    // Endpoints of a node follow its liveness.
    c.post(
        "/v1/namespaces/default/endpoints",
        &endpoint("e1", "n1", "192.168.77.33"),
    )
    .await
    .unwrap();
    let ready = |c: Client| async move {
        c.get("/v1/namespaces/default/endpoints/e1").await.unwrap()["spec"]["ready"].clone()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while ready(c.clone()).await != json!(false) {
        assert!(
            std::time::Instant::now() < deadline,
            "n1's endpoint stays ready after its lease expired"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    c.post("/v1/nodes/n1/heartbeat", &json!({})).await.unwrap();
    assert_eq!(ready(c.clone()).await, json!(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_balancer_ips_come_from_pools() {
    let (store, _d) = embedded();
    let srv = start(store, false, test_config()).await;
    let c = srv.client(ADMIN);
    let lb = |name: &str, ip: Option<&str>| {
        let mut spec =
            json!({"type": "LoadBalancer", "selector": {"app": name}, "ports": [{"port": 80}]});
        if let Some(ip) = ip {
            spec["loadBalancerIP"] = json!(ip);
        }
        service(name, spec)
    };
    // No pool yet: the service is pending.
    let a = c
        .post("/v1/namespaces/default/services", &lb("a", None))
        .await
        .unwrap();
    assert!(a["status"]["loadBalancerIP"].is_null(), "{a}");
    let pool = json!({"apiVersion": "trellis/v1", "kind": "LoadBalancerPool",
        "metadata": {"name": "lan"}, "spec": {"cidrs": ["192.168.77.240/30"]}});
    c.post("/v1/loadbalancerpools", &pool).await.unwrap();
    // The allocator gives the pending service the pool's first address.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let a = c.get("/v1/namespaces/default/services/a").await.unwrap();
        if a["status"]["loadBalancerIP"] == "192.168.77.241" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still pending: {a}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // A requested address must be in a pool and free.
    let (st, msg) = status_of(
        c.post(
            "/v1/namespaces/default/services",
            &lb("b", Some("10.9.9.9")),
        )
        .await,
    );
    assert_eq!(st, 422, "{msg}");
    assert!(
        msg.contains("spec.loadBalancerIP: 10.9.9.9 is in no LoadBalancerPool"),
        "{msg}"
    );
    let (st, msg) = status_of(
        c.post(
            "/v1/namespaces/default/services",
            &lb("b", Some("192.168.77.241")),
        )
        .await,
    );
    assert_eq!(st, 422, "{msg}");
    assert!(msg.contains("already allocated"), "{msg}");
    let b = c
        .post("/v1/namespaces/default/services", &lb("b", None))
        .await
        .unwrap();
    assert_eq!(b["status"]["loadBalancerIP"], "192.168.77.242");
    // Exhausted: pending. Deleting a frees its address for the next one.
    let d = c
        .post("/v1/namespaces/default/services", &lb("d", None))
        .await
        .unwrap();
    assert!(d["status"]["loadBalancerIP"].is_null());
    c.delete("/v1/namespaces/default/services/d").await.unwrap();
    c.delete("/v1/namespaces/default/services/a").await.unwrap();
    let e = c
        .post(
            "/v1/namespaces/default/services",
            &lb("e", Some("192.168.77.241")),
        )
        .await
        .unwrap();
    assert_eq!(e["status"]["loadBalancerIP"], "192.168.77.241");
    // Changing the type releases the address.
    let mut b2 = c.get("/v1/namespaces/default/services/b").await.unwrap();
    b2["spec"]["type"] = json!("ClusterIP");
    for p in b2["spec"]["ports"].as_array_mut().unwrap() {
        p.as_object_mut().unwrap().remove("nodePort");
    }
    let b2 = c
        .put("/v1/namespaces/default/services/b", &b2)
        .await
        .unwrap();
    assert!(b2["status"]["loadBalancerIP"].is_null(), "{b2}");
    let f = c
        .post(
            "/v1/namespaces/default/services",
            &lb("f", Some("192.168.77.242")),
        )
        .await
        .unwrap();
    assert_eq!(f["status"]["loadBalancerIP"], "192.168.77.242");
}
