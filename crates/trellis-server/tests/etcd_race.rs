//! Two API servers on one real 3-member etcd cluster allocate concurrently: 500 cluster
//! IPs (with 500 node ports) and 500 node subnets, half through each server, and no
//! value is handed out twice.

mod common;
#[path = "../../trellis-store/tests/common/mod.rs"]
mod etcd;

use std::collections::HashSet;
use std::sync::Arc;

use common::*;
use serde_json::json;
use trellis_store::etcd::EtcdStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_one_etcd_no_duplicate_allocation() {
    let cluster = etcd::EtcdCluster::start(3).await;
    let eps = cluster.endpoints();
    let mut servers = Vec::new();
    for _ in 0..2 {
        let store = Arc::new(EtcdStore::connect(&eps).await.unwrap());
        // Long leases: the test's nodes never heartbeat after acquiring their subnet.
        let cfg = trellis_server::ServerConfig {
            node_lease_ttl: std::time::Duration::from_secs(120),
            ..test_config()
        };
        servers.push(start(store, false, cfg).await);
    }
    let clients: Vec<_> = servers.iter().map(|s| s.client(ADMIN)).collect();
    clients[0]
        .post("/v1/networks", &network("pods", "10.0.0.0/14"))
        .await
        .unwrap();
    const N: usize = 500;
    let sem = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = Vec::new();
    for i in 0..N {
        let c = clients[i % 2].clone();
        let sem = sem.clone();
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire().await.unwrap();
            let s = c
                .post(
                    "/v1/namespaces/default/services",
                    &service(
                        &format!("s{i}"),
                        json!({"type": "NodePort", "ports": [{"port": 80}]}),
                    ),
                )
                .await
                .unwrap();
            let n = format!("n{i}");
            c.post("/v1/nodes", &node(&n, "192.168.77.10"))
                .await
                .unwrap();
            let l = c
                .post(&format!("/v1/nodes/{n}/subnets/pods"), &json!({}))
                .await
                .unwrap();
            (
                s["spec"]["clusterIP"].as_str().unwrap().to_string(),
                s["spec"]["ports"][0]["nodePort"].as_u64().unwrap(),
                l["cidr"].as_str().unwrap().to_string(),
            )
        }));
    }
    let (mut ips, mut ports, mut subnets) = (HashSet::new(), HashSet::new(), HashSet::new());
    for t in tasks {
        let (ip, port, subnet) = t.await.unwrap();
        assert!(ips.insert(ip.clone()), "cluster IP {ip} handed out twice");
        assert!(ports.insert(port), "node port {port} handed out twice");
        assert!(
            subnets.insert(subnet.clone()),
            "subnet {subnet} handed out twice"
        );
    }
    assert_eq!((ips.len(), ports.len(), subnets.len()), (N, N, N));
    // What the servers answered is what the store holds.
    let (held, _) = servers[1]
        .server
        .store
        .list("/alloc/subnets/pods/")
        .await
        .unwrap();
    assert_eq!(held.len(), N);
    let (held, _) = servers[0]
        .server
        .store
        .list("/alloc/clusterips/")
        .await
        .unwrap();
    assert_eq!(held.len(), N);
}
