//! Joining the cluster: the underlay as the kernel shows it, the Node's registration,
//! a subnet lease of every served network, and the heartbeat that keeps the Node ready
//! (and renews the leases after a lapse); the Node's `status.programmed`.

use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde_json::{json, Value};
use trellis_api::naming::LINK_PREFIX;
use trellis_api::objects::{Node, NodeSpec, NodeStatus, ObjectMeta, ProgrammedRevisions};
use trellis_api::watch::SubnetLease;
use trellis_client::{Client, ClientError};
use trellis_fabric::Local;
use trellis_net::Netlink;

use super::networks::ServedSet;
use super::{ClusterConfig, ClusterError};

/// The underlay as found in the kernel.
#[derive(Debug, Clone)]
pub(super) struct Underlay {
    /// The link carrying the node address (the pod bridge itself once `l2` moved it).
    pub(super) local: Local,
    /// The physical uplink: `local.uplink`, or the bridge's uplink port under `l2`.
    pub(super) port: String,
    /// The default route's gateway.
    pub(super) gateway: Option<Ipv4Addr>,
}

/// The underlay: `uplink` (or the default route's link), its address and MTU.
pub(super) async fn detect_local(
    nl: &Netlink,
    cfg: &ClusterConfig,
) -> Result<Underlay, ClusterError> {
    let links = nl
        .links()
        .await
        .map_err(|e| ClusterError::Setup(e.to_string()))?;
    let routes = nl
        .routes()
        .await
        .map_err(|e| ClusterError::Setup(e.to_string()))?;
    let default = routes.iter().find(|(d, _, _)| d.prefix_len() == 0);
    let mut link = match &cfg.uplink {
        Some(name) => links.iter().find(|l| &l.name == name),
        None => links
            .iter()
            .find(|l| Some(l.index) == default.and_then(|r| r.2)),
    };
    let mut port = link.map(|l| l.name.clone());
    // Under `l2` the node address lives on the pod bridge and the uplink is its port.
    if let Some(br) = link.filter(|l| l.name == cfg.bridge) {
        port = links
            .iter()
            .find(|l| l.master == Some(br.index) && !l.name.starts_with(LINK_PREFIX))
            .map(|l| l.name.clone());
    } else if let Some(br) = links.iter().find(|l| l.name == cfg.bridge) {
        // `--uplink eth0` given after l2 enslaved it: the address is on the bridge.
        if link.is_some_and(|l| l.master == Some(br.index)) {
            link = Some(br);
        }
    }
    let link = link.ok_or_else(|| {
        ClusterError::Setup(match &cfg.uplink {
            Some(n) => format!("uplink {n} does not exist"),
            None => "no default route to find the uplink by; pass --uplink".into(),
        })
    })?;
    let addrs = nl
        .addrs(link.index)
        .await
        .map_err(|e| ClusterError::Setup(e.to_string()))?;
    let segment = match cfg.address {
        Some(a) => addrs
            .iter()
            .find(|n| n.addr() == a)
            .copied()
            .ok_or_else(|| {
                ClusterError::Setup(format!("{a} is not an address of {}", link.name))
            })?,
        None => *addrs.first().ok_or_else(|| {
            ClusterError::Setup(format!("uplink {} has no IPv4 address", link.name))
        })?,
    };
    Ok(Underlay {
        local: Local {
            name: cfg.node.clone(),
            address: segment.addr(),
            uplink: link.name.clone(),
            segment,
            uplink_mtu: link.mtu,
        },
        port: port.unwrap_or_else(|| link.name.clone()),
        gateway: default.and_then(|r| r.1),
    })
}

/// Create or update our Node with the underlay address.
async fn register(client: &Client, name: &str, address: Ipv4Addr) -> Result<(), ClientError> {
    let path = format!("/v1/nodes/{name}");
    match client.get(&path).await {
        Ok(v) => {
            let mut n: Node = serde_json::from_value(v)
                .map_err(|e| ClientError::Decode(format!("{path}: {e}")))?;
            if n.spec.address != address {
                n.spec.address = address;
                let body = serde_json::to_value(&n).expect("objects serialize");
                client.put(&path, &body).await?;
            }
            Ok(())
        }
        Err(e) if e.status() == Some(404) => {
            let n = Node::new(ObjectMeta::named(name), NodeSpec { address, bgp: None });
            let n = serde_json::to_value(&n).expect("objects serialize");
            match client.post("/v1/nodes", &n).await {
                Ok(_) => Ok(()),
                Err(e) if e.status() == Some(409) => Ok(()),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// Register, heartbeat, lease a subnet of every network and read them, in
/// `cfg.networks` order.
pub(super) async fn join(
    client: &Client,
    cfg: &ClusterConfig,
    local: &Local,
) -> Result<Vec<(Ipv4Net, Value)>, ClientError> {
    register(client, &cfg.node, local.address).await?;
    client
        .post(&format!("/v1/nodes/{}/heartbeat", cfg.node), &json!({}))
        .await?;
    let mut out = Vec::new();
    for network in &cfg.networks {
        let lease = client
            .post(
                &format!("/v1/nodes/{}/subnets/{network}", cfg.node),
                &json!({}),
            )
            .await?;
        let subnet: Ipv4Net = serde_json::from_value::<SubnetLease>(lease)
            .map_err(|e| ClientError::Decode(format!("subnet lease of {network}: {e}")))?
            .cidr;
        let net = client.get(&format!("/v1/networks/{network}")).await?;
        out.push((subnet, net));
    }
    Ok(out)
}

/// Heartbeat forever. After the node's lease lapsed (a partition, a stopped agent) the
/// subnet leases are renewed too; losing a subnet to another node is fatal for its pods
/// and logged loudly.
pub(super) async fn heartbeat_loop(
    client: Client,
    cfg: ClusterConfig,
    served: ServedSet,
    address: Ipv4Addr,
) {
    let path = format!("/v1/nodes/{}/heartbeat", cfg.node);
    loop {
        tokio::time::sleep(cfg.heartbeat).await;
        match client.post(&path, &json!({})).await {
            Ok(v) if v["renewed"] == json!(true) => {}
            Ok(_) => {
                tracing::info!("node lease had lapsed; renewing the subnet leases");
                let leases: Vec<(String, Ipv4Net)> = served
                    .borrow()
                    .iter()
                    .map(|s| (s.name.clone(), s.subnet))
                    .collect();
                for (network, subnet) in &leases {
                    let p = format!("/v1/nodes/{}/subnets/{network}", cfg.node);
                    let lease = client
                        .post(&p, &json!({}))
                        .await
                        .map(|l| serde_json::from_value::<SubnetLease>(l).map(|l| l.cidr));
                    match lease {
                        Ok(Ok(cidr)) if cidr == *subnet => {}
                        Ok(Ok(cidr)) => tracing::error!(
                            "our subnet {subnet} of {network} went to another node meanwhile (now offered {cidr}); restart the agent after draining its pods"
                        ),
                        Ok(Err(e)) => tracing::warn!("renewing the subnet lease of {network}: {e}"),
                        Err(e) => tracing::warn!("renewing the subnet lease of {network}: {e}"),
                    }
                }
            }
            Err(e) if e.status() == Some(404) => {
                tracing::warn!("our Node object is gone; registering again");
                if let Err(e) = register(&client, &cfg.node, address).await {
                    tracing::warn!("registering: {e}");
                }
            }
            Err(e) => tracing::warn!("heartbeat: {e}"),
        }
    }
}

/// The shortest time between two writes of `status.programmed`: changes arriving
/// meanwhile are coalesced into the next write.
const PROGRAMMED_PERIOD: Duration = Duration::from_secs(1);

/// Publish what the service loop has programmed (`revision`, `None` before its first
/// successful sync) as our Node's `status.programmed`: a read and one compare-and-swap
/// write whenever it changed (none when the Node already says so), at most one write per
/// [`PROGRAMMED_PERIOD`]; failures are retried every second. Ends when the service loop
/// is gone.
pub(super) async fn publish_programmed(
    client: Client,
    node: String,
    mut revision: tokio::sync::watch::Receiver<Option<ProgrammedRevisions>>,
) {
    let path = format!("/v1/nodes/{node}");
    let mut published = None;
    loop {
        let want = *revision.borrow_and_update();
        if want.is_some() && want != published {
            match set_programmed(&client, &path, want).await {
                Ok(()) => published = want,
                Err(e) => tracing::warn!("publishing status.programmed: {e}"),
            }
            tokio::time::sleep(PROGRAMMED_PERIOD).await;
            continue;
        }
        if revision.changed().await.is_err() {
            return;
        }
    }
}

/// Set our Node's `status.programmed`.
async fn set_programmed(
    client: &Client,
    path: &str,
    revision: Option<ProgrammedRevisions>,
) -> Result<(), ClientError> {
    update_node_status(client, path, |st| {
        let changed = st.programmed != revision;
        st.programmed = revision;
        changed
    })
    .await
}

/// Change the status of the Node at `path` with `f`, which says whether it changed
/// anything (nothing is written otherwise): read, change, write at the read
/// resourceVersion; a concurrent write of the Node is read again. Every other field
/// is kept.
pub(super) async fn update_node_status(
    client: &Client,
    path: &str,
    mut f: impl FnMut(&mut NodeStatus) -> bool,
) -> Result<(), ClientError> {
    for _ in 0..8 {
        let mut n: Node = serde_json::from_value(client.get(path).await?)
            .map_err(|e| ClientError::Decode(format!("{path}: {e}")))?;
        if !f(&mut n.status) {
            return Ok(());
        }
        let body = serde_json::to_value(&n).expect("objects serialize");
        match client.put(path, &body).await {
            Err(e) if e.status() == Some(409) => continue,
            r => return r.map(|_| ()),
        }
    }
    Err(ClientError::Api {
        status: 409,
        reason: "Conflict".into(),
        message: format!("{path} kept changing while its status was being set"),
    })
}
