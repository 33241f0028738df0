//! Publishing an Endpoint per attachment: the desired set is computed from the IPAM's
//! reservations whose host veth exists, compared with the Endpoints the server holds for
//! this node (label [`ENDPOINT_NODE_LABEL`](trellis_api::objects::ENDPOINT_NODE_LABEL)), and the difference is written. Runs after every
//! reservation change and periodically, so a crash between an ADD and its publication,
//! or a server that was down, is repaired by the next pass.
//!
//! Only plumbed attachments count: a reservation whose veth is gone (a DEL whose release
//! was lost in a crash: releases are not fsynced) never gets traffic, and a fresh ADD is
//! published once its veth exists (re-checked every [`PLUMB_RECHECK`] while one waits).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use trellis_api::naming::fnv1a64;
use trellis_api::objects::{
    Endpoint, EndpointSpec, ObjectMeta, Pod, ENDPOINT_NETWORK_LABEL as NETWORK_LABEL,
    ENDPOINT_NODE_LABEL as NODE_LABEL,
};
use trellis_api::watch::List;
use trellis_client::{Client, ClientError};

use crate::ipam::Reservation;
use crate::node::Node;

/// While a fresh reservation waits for its veth, the publisher looks again this often.
pub const PLUMB_RECHECK: Duration = Duration::from_millis(200);
/// A reservation without a veth is "fresh" (being plumbed) for this long.
const PLUMB_WINDOW_SECS: u64 = 30;

/// The Endpoint name of an attachment: stable, unique per node and attachment.
pub fn endpoint_name(node: &str, r: &Reservation) -> String {
    let h = fnv1a64([
        node.as_bytes(),
        b"/",
        r.attachment.container_id.as_bytes(),
        b"/",
        r.attachment.ifname.as_bytes(),
    ]);
    let base = r.pod_name.as_deref().unwrap_or("ep");
    let base = &base[..base.len().min(40)];
    format!("{base}-{h:012x}").chars().take(53).collect()
}

/// Keeps this node's Endpoints equal to its reservations.
#[derive(Debug)]
pub struct Publisher {
    pub(super) client: Client,
    pub(super) node_name: String,
    pub(super) network: String,
    pub(super) node: Arc<Node>,
}

impl Publisher {
    /// The Endpoints wanted, and whether a fresh reservation still waits for its veth.
    async fn desired(&self) -> Result<(BTreeMap<String, Endpoint>, bool), String> {
        let mut out = BTreeMap::new();
        let live = self.node.live_links().await?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut waiting = false;
        for r in self.node.ipam().list() {
            let veth = trellis_api::naming::host_veth_name(
                &r.attachment.container_id,
                &r.attachment.ifname,
            );
            if !live.contains(&veth) {
                waiting |= now.saturating_sub(r.created) < PLUMB_WINDOW_SECS;
                continue;
            }
            let ns = r.namespace().to_string();
            let mut labels = r.labels.clone();
            if let Some(pod) = &r.pod_name {
                let path = format!("/v1/namespaces/{ns}/pods/{pod}");
                if let Ok(Ok(p)) = self
                    .client
                    .get(&path)
                    .await
                    .map(serde_json::from_value::<Pod>)
                {
                    if !p.metadata.labels.is_empty() {
                        labels = p.metadata.labels;
                    }
                }
            }
            labels.insert(NODE_LABEL.into(), self.node_name.clone());
            labels.insert(NETWORK_LABEL.into(), self.network.clone());
            let name = endpoint_name(&self.node_name, &r);
            let metadata = ObjectMeta {
                name: name.clone(),
                namespace: Some(ns.clone()),
                labels,
                ..ObjectMeta::default()
            };
            let spec = EndpointSpec {
                container_id: r.attachment.container_id.clone(),
                ifname: r.attachment.ifname.clone(),
                network: self.network.clone(),
                node: self.node_name.clone(),
                ip: r.ip,
                mac: None,
                ready: true,
                pod_name: r.pod_name.clone(),
            };
            out.insert(format!("{ns}/{name}"), Endpoint::new(metadata, spec));
        }
        Ok((out, waiting))
    }

    /// One pass; returns (created, updated, deleted) and whether to look again soon.
    pub async fn sync(&self) -> Result<((usize, usize, usize), bool), String> {
        let (want, waiting) = self.desired().await?;
        let counts = self.write(&want).await.map_err(|e| e.to_string())?;
        Ok((counts, waiting))
    }

    /// Delete every Endpoint this publisher wrote (its network is no longer served).
    pub async fn withdraw(&self) -> Result<(), String> {
        self.write(&BTreeMap::new())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    async fn write(
        &self,
        want: &BTreeMap<String, Endpoint>,
    ) -> Result<(usize, usize, usize), trellis_client::ClientError> {
        let list = self
            .client
            .get(&format!(
                "/v1/endpoints?labelSelector={NODE_LABEL}={},{NETWORK_LABEL}={}",
                self.node_name, self.network
            ))
            .await?;
        let mut have: BTreeMap<String, Endpoint> = BTreeMap::new();
        let items = serde_json::from_value::<List<serde_json::Value>>(list)
            .map_err(|e| ClientError::Decode(format!("the list of endpoints: {e}")))?
            .items;
        // The server validated every Endpoint it stores, so each parses; one that does
        // not is logged and left alone.
        let parsed =
            items
                .into_iter()
                .filter_map(|o| match serde_json::from_value::<Endpoint>(o) {
                    Ok(e) => Some(e),
                    Err(e) => {
                        tracing::warn!("publishing endpoints: skipping a stored Endpoint: {e}");
                        None
                    }
                });
        for o in parsed {
            let key = format!(
                "{}/{}",
                o.metadata.namespace.as_deref().unwrap_or_default(),
                o.metadata.name
            );
            have.insert(key, o);
        }
        let (mut created, mut updated, mut deleted) = (0, 0, 0);
        for (k, w) in want {
            let (ns, name) = k.split_once('/').expect("ns/name");
            let path = format!("/v1/namespaces/{ns}/endpoints");
            match have.get(k) {
                None => {
                    self.client.post(&path, &to_value(w)).await?;
                    created += 1;
                }
                Some(h) => {
                    // Readiness follows the node's liveness, which the server owns.
                    let mut o = w.clone();
                    o.spec.ready = h.spec.ready;
                    if h.spec == o.spec && h.metadata.labels == o.metadata.labels {
                        continue;
                    }
                    o.metadata.resource_version = h.metadata.resource_version.clone();
                    self.client
                        .put(&format!("{path}/{name}"), &to_value(&o))
                        .await?;
                    updated += 1;
                }
            }
        }
        for k in have.keys().filter(|k| !want.contains_key(*k)) {
            let (ns, name) = k.split_once('/').expect("ns/name");
            match self
                .client
                .delete(&format!("/v1/namespaces/{ns}/endpoints/{name}"))
                .await
            {
                Ok(_) => deleted += 1,
                Err(e) if e.status() == Some(404) => {}
                Err(e) => return Err(e),
            }
        }
        Ok((created, updated, deleted))
    }

    /// Sync after every reservation change and every `every`, forever.
    pub async fn run(self, every: Duration) {
        let mut changes = self.node.subscribe();
        loop {
            let next = match self.sync().await {
                Ok(((c, u, d), waiting)) => {
                    if c + u + d > 0 {
                        tracing::info!(
                            created = c,
                            updated = u,
                            deleted = d,
                            "endpoints published"
                        );
                    }
                    if waiting {
                        PLUMB_RECHECK
                    } else {
                        every
                    }
                }
                Err(e) => {
                    tracing::warn!("publishing endpoints: {e}");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep(next) => {}
            }
        }
    }
}

/// The JSON body of an Endpoint write.
fn to_value(e: &Endpoint) -> serde_json::Value {
    serde_json::to_value(e).expect("objects serialize to JSON")
}
