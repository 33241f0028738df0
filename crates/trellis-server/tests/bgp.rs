//! The BGP kinds through the real HTTP stack: Calico manifests taken as they are, and
//! every refusal (a peer address that is a node's own, a password Secret or key that
//! does not exist, a filter that does not exist, a cluster ID that is not an IPv4
//! address, a bad AS number) names its field and stores nothing. Secrets are hidden
//! from read-only tokens.

mod common;

use common::*;
use serde_json::{json, Value};
use trellis_client::Client;

fn peer(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "projectcalico.org/v3", "kind": "BGPPeer",
           "metadata": {"name": name}, "spec": spec})
}

async fn count(c: &Client, path: &str) -> usize {
    c.get(path).await.unwrap()["items"]
        .as_array()
        .unwrap()
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bgp_objects_and_their_refusals() {
    let (store, _d) = embedded();
    let srv = start(store, false, test_config()).await;
    let c = srv.client(ADMIN);
    c.post("/v1/nodes", &node("n1", "192.168.77.11"))
        .await
        .unwrap();
    // A peer at a node's own address.
    let (st, msg) = refused(
        c.post(
            "/v1/bgppeers",
            &peer("tor", json!({"peerIP": "192.168.77.11", "asNumber": 65001})),
        )
        .await,
    );
    assert_eq!(st, 422);
    assert!(
        msg.starts_with("spec.peerIP:") && msg.contains("n1"),
        "{msg}"
    );
    // An AS number in no known form.
    let (st, msg) = refused(
        c.post(
            "/v1/bgppeers",
            &peer(
                "tor",
                json!({"peerIP": "192.168.77.1", "asNumber": "AS65001"}),
            ),
        )
        .await,
    );
    assert_eq!(st, 422);
    assert!(msg.starts_with("spec.asNumber:"), "{msg}");
    // A password Secret that does not exist, then one without the key.
    let with_password = peer(
        "tor",
        json!({"peerIP": "192.168.77.1", "asNumber": 65001,
               "password": {"secretKeyRef": {"name": "bgp-secrets", "key": "tor"}}}),
    );
    let (st, msg) = refused(c.post("/v1/bgppeers", &with_password).await);
    assert_eq!(st, 422);
    assert!(
        msg.starts_with("spec.password.secretKeyRef.name:") && msg.contains("does not exist"),
        "{msg}"
    );
    let secret = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "bgp-secrets", "namespace": "trellis-system"},
        "type": "Opaque", "stringData": {"other": "x"}});
    c.post("/v1/namespaces/trellis-system/secrets", &secret)
        .await
        .unwrap();
    let (_, msg) = refused(c.post("/v1/bgppeers", &with_password).await);
    assert!(msg.starts_with("spec.password.secretKeyRef.key:"), "{msg}");
    // A filter that does not exist.
    let (_, msg) = refused(
        c.post(
            "/v1/bgppeers",
            &peer(
                "tor",
                json!({"peerIP": "192.168.77.1", "asNumber": 65001, "filters": ["nope"]}),
            ),
        )
        .await,
    );
    assert!(msg.starts_with("spec.filters[0]:"), "{msg}");
    assert_eq!(count(&c, "/v1/bgppeers").await, 0, "nothing was stored");
    // With the key, it is taken; the value is stored as base64 and read back.
    let mut secret = c
        .get("/v1/namespaces/trellis-system/secrets/bgp-secrets")
        .await
        .unwrap();
    secret["spec"]["data"]["tor"] = json!("c2VjcmV0");
    c.put("/v1/namespaces/trellis-system/secrets/bgp-secrets", &secret)
        .await
        .unwrap();
    c.post("/v1/bgppeers", &with_password).await.unwrap();
    // Read-only tokens do not see Secrets.
    let (st, _) = refused(
        srv.client(READER)
            .get("/v1/namespaces/trellis-system/secrets/bgp-secrets")
            .await,
    );
    assert_eq!(st, 403);
    let (st, _) = refused(srv.client(READER).get("/v1/secrets").await);
    assert_eq!(st, 403);
    // A reflector cluster ID that is not an IPv4 address.
    let mut n1 = c.get("/v1/nodes/n1").await.unwrap();
    n1["spec"]["bgp"] = json!({"routeReflectorClusterID": "rr-1"});
    let (st, msg) = refused(c.put("/v1/nodes/n1", &n1).await);
    assert_eq!(st, 422);
    assert!(
        msg.starts_with("spec.bgp.routeReflectorClusterID:"),
        "{msg}"
    );
    n1["spec"]["bgp"] = json!({"routeReflectorClusterID": "244.0.0.1", "asNumber": 64512});
    c.put("/v1/nodes/n1", &n1).await.unwrap();
    // The cluster configuration, as Calico writes it.
    c.post(
        "/v1/bgpconfigurations",
        &json!({"apiVersion": "projectcalico.org/v3", "kind": "BGPConfiguration",
            "metadata": {"name": "default"},
            "spec": {"nodeToNodeMeshEnabled": false, "asNumber": 64512,
                     "serviceClusterIPs": [{"cidr": "10.96.0.0/12"}]}}),
    )
    .await
    .unwrap();
    let cfg = c.get("/v1/bgpconfigurations/default").await.unwrap();
    assert_eq!(cfg["apiVersion"], "trellis/v1");
    assert_eq!(cfg["spec"]["serviceClusterIPs"][0]["cidr"], "10.96.0.0/12");
}
