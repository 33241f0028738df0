//! Publishing an Endpoint per attachment: the desired set is computed from the IPAM's
//! reservations whose host veth exists, compared with the Endpoints the server holds for
//! this node (label [`NODE_LABEL`]), and the difference is written. Runs after every
//! reservation change and periodically, so a crash between an ADD and its publication,
//! or a server that was down, is repaired by the next pass.
//!
//! Only plumbed attachments count: a reservation whose veth is gone (a DEL whose release
//! was lost in a crash: releases are not fsynced) never gets traffic, and a fresh ADD is
//! published once its veth exists (re-checked every [`PLUMB_RECHECK`] while one waits).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use trellis_api::naming::fnv1a64;
use trellis_client::Client;

use crate::ipam::Reservation;
use crate::node::Node;

/// While a fresh reservation waits for its veth, the publisher looks again this often.
pub const PLUMB_RECHECK: Duration = Duration::from_millis(200);
/// A reservation without a veth is "fresh" (being plumbed) for this long.
const PLUMB_WINDOW_SECS: u64 = 30;

/// Label naming the node that published an Endpoint.
pub const NODE_LABEL: &str = "trellis.io/node";
/// Label naming the Endpoint's network.
pub const NETWORK_LABEL: &str = "trellis.io/network";

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
    async fn desired(&self) -> Result<(BTreeMap<String, Value>, bool), String> {
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
                if let Ok(p) = self.client.get(&path).await {
                    if let Some(m) = p["metadata"]["labels"].as_object() {
                        labels = m
                            .iter()
                            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                            .collect();
                    }
                }
            }
            labels.insert(NODE_LABEL.into(), self.node_name.clone());
            labels.insert(NETWORK_LABEL.into(), self.network.clone());
            let name = endpoint_name(&self.node_name, &r);
            let mut spec = json!({
                "containerId": r.attachment.container_id,
                "ifname": r.attachment.ifname,
                "network": self.network,
                "node": self.node_name,
                "ip": r.ip,
                "ready": true,
            });
            if let Some(pod) = &r.pod_name {
                spec["podName"] = json!(pod);
            }
            out.insert(
                format!("{ns}/{name}"),
                json!({
                    "apiVersion": "trellis/v1",
                    "kind": "Endpoint",
                    "metadata": {"name": name, "namespace": ns, "labels": labels},
                    "spec": spec,
                }),
            );
        }
        Ok((out, waiting))
    }

    /// One pass; returns (created, updated, deleted) and whether to look again soon.
    pub async fn sync(&self) -> Result<((usize, usize, usize), bool), String> {
        let (want, waiting) = self.desired().await?;
        let counts = self.write(&want).await.map_err(|e| e.to_string())?;
        Ok((counts, waiting))
    }

    async fn write(
        &self,
        want: &BTreeMap<String, Value>,
    ) -> Result<(usize, usize, usize), trellis_client::ClientError> {
        let list = self
            .client
            .get(&format!(
                "/v1/endpoints?labelSelector={NODE_LABEL}={},{NETWORK_LABEL}={}",
                self.node_name, self.network
            ))
            .await?;
        let mut have: BTreeMap<String, Value> = BTreeMap::new();
        for o in list["items"].as_array().into_iter().flatten() {
            let m = &o["metadata"];
            have.insert(
                format!(
                    "{}/{}",
                    m["namespace"].as_str().unwrap_or_default(),
                    m["name"].as_str().unwrap_or_default()
                ),
                o.clone(),
            );
        }
        let (mut created, mut updated, mut deleted) = (0, 0, 0);
        for (k, w) in want {
            let (ns, name) = k.split_once('/').expect("ns/name");
            let path = format!("/v1/namespaces/{ns}/endpoints");
            match have.get(k) {
                None => {
                    self.client.post(&path, w).await?;
                    created += 1;
                }
                Some(h) => {
                    // Readiness follows the node's liveness, which the server owns.
                    let mut o = w.clone();
                    o["spec"]["ready"] = h["spec"]["ready"].clone();
                    if h["spec"] == o["spec"] && h["metadata"]["labels"] == o["metadata"]["labels"]
                    {
                        continue;
                    }
                    o["metadata"]["resourceVersion"] = h["metadata"]["resourceVersion"].clone();
                    self.client.put(&format!("{path}/{name}"), &o).await?;
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
