//! A list-then-watch cache of one collection of API objects, kept by a background task:
//! list, watch from the list's revision, and on any error or RESYNC start over. Every
//! change bumps a counter the consumers wait on.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use trellis_client::Client;

/// Objects by `namespace/name` (or `name` for cluster-scoped kinds).
pub type Objects = BTreeMap<String, Value>;

/// The cache: a snapshot of the collection and whether it was ever listed.
#[derive(Debug, Clone)]
pub struct Informer {
    state: Arc<Mutex<(Objects, bool)>>,
    changed: tokio::sync::watch::Sender<u64>,
}

fn key(o: &Value) -> String {
    let m = &o["metadata"];
    match m["namespace"].as_str() {
        Some(ns) => format!("{ns}/{}", m["name"].as_str().unwrap_or_default()),
        None => m["name"].as_str().unwrap_or_default().to_string(),
    }
}

impl Informer {
    /// Start keeping `path` (a list path such as `/v1/nodes`) in sync.
    pub fn start(client: Client, path: String) -> Informer {
        let inf = Informer {
            state: Arc::new(Mutex::new((Objects::new(), false))),
            changed: tokio::sync::watch::channel(0).0,
        };
        let me = inf.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = me.run_once(&client, &path).await {
                    tracing::warn!(path, "watch: {e}; listing again");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        inf
    }

    async fn run_once(&self, client: &Client, path: &str) -> Result<(), String> {
        let list = client.get(path).await.map_err(|e| e.to_string())?;
        let rv = list["metadata"]["resourceVersion"]
            .as_str()
            .map(str::to_string);
        self.replace(list["items"].as_array().cloned().unwrap_or_default());
        let mut w = client
            .watch(path, rv.as_deref(), true)
            .await
            .map_err(|e| e.to_string())?;
        while let Some(ev) = w.next().await {
            let ev = ev.map_err(|e| e.to_string())?;
            match ev["type"].as_str() {
                Some("ADDED") | Some("MODIFIED") => self.update(|m| {
                    m.insert(key(&ev["object"]), ev["object"].clone());
                }),
                Some("DELETED") => self.update(|m| {
                    m.remove(&key(&ev["object"]));
                }),
                Some("RESYNC") => self.replace(ev["items"].as_array().cloned().unwrap_or_default()),
                Some("BOOKMARK") => {}
                _ => return Err(format!("watch ended: {ev}")),
            }
        }
        Err("watch stream closed".into())
    }

    fn replace(&self, items: Vec<Value>) {
        let mut s = self.state.lock().expect("informer lock");
        s.0 = items.into_iter().map(|o| (key(&o), o)).collect();
        s.1 = true;
        drop(s);
        self.changed.send_modify(|v| *v += 1);
    }

    fn update(&self, f: impl FnOnce(&mut Objects)) {
        f(&mut self.state.lock().expect("informer lock").0);
        self.changed.send_modify(|v| *v += 1);
    }

    /// The current objects, or `None` before the first list succeeded.
    pub fn snapshot(&self) -> Option<Objects> {
        let s = self.state.lock().expect("informer lock");
        s.1.then(|| s.0.clone())
    }

    /// A receiver that sees a new value after every change.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }
}
