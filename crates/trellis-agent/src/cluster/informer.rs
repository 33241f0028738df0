//! A list-then-watch cache of one collection of API objects, kept by a background task:
//! list, watch from the list's revision, and on any error or RESYNC start over. Objects
//! are parsed into `trellis-api`'s typed objects once, as they arrive (one that does not
//! parse is logged and left out). Every change bumps a counter the consumers wait on. The cache also knows the store revision
//! it is complete up to (the list's, then each event's and bookmark's), so a consumer can
//! tell how far what it applied reaches.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use trellis_api::objects::AnyObject;
use trellis_client::Client;

/// What the cache holds.
#[derive(Debug, Default)]
struct State {
    /// Objects by `namespace/name` (or `name` for cluster-scoped kinds).
    objects: BTreeMap<String, Arc<AnyObject>>,
    /// Whether a list ever succeeded.
    listed: bool,
    /// Every change of the collection up to this store revision is in `objects`. (Each
    /// API write changes one object, so no later event of the same revision can follow
    /// the one that set it.)
    revision: u64,
}

/// The cache: a snapshot of the collection and whether it was ever listed.
#[derive(Debug, Clone)]
pub struct Informer {
    state: Arc<Mutex<State>>,
    changed: tokio::sync::watch::Sender<u64>,
}

/// A `resourceVersion` string as a revision (0 when absent or malformed).
fn revision(v: &Value) -> u64 {
    v.as_str().and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// The object of a list item or watch event, typed; `None` (logged) when it does not
/// parse.
fn parse(o: Value) -> Option<Arc<AnyObject>> {
    let k = key(&o);
    match AnyObject::from_value(o) {
        Ok(p) => Some(Arc::new(p)),
        Err(e) => {
            tracing::warn!(object = %k, "informer: skipping an object that does not parse: {e}");
            None
        }
    }
}

/// The cache key of an object as the server sends it.
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
            state: Arc::new(Mutex::new(State::default())),
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
        let mut list = client.get(path).await.map_err(|e| e.to_string())?;
        let rv = list["metadata"]["resourceVersion"]
            .as_str()
            .map(str::to_string);
        let revision_listed = revision(&list["metadata"]["resourceVersion"]);
        self.replace(list["items"].take(), revision_listed);
        let mut w = client
            .watch(path, rv.as_deref(), true)
            .await
            .map_err(|e| e.to_string())?;
        while let Some(ev) = w.next().await {
            let mut ev = ev.map_err(|e| e.to_string())?;
            // A DELETED event's object carries the revision of its deletion.
            let rv = revision(&ev["object"]["metadata"]["resourceVersion"]);
            match ev["type"].as_str() {
                Some("ADDED") | Some("MODIFIED") => {
                    let object = ev["object"].take();
                    let (k, parsed) = (key(&object), parse(object));
                    self.update(rv, |m| match parsed {
                        Some(p) => m.insert(k, p),
                        None => m.remove(&k),
                    })
                }
                Some("DELETED") => self.update(rv, |m| m.remove(&key(&ev["object"]))),
                Some("RESYNC") => {
                    let revision_sent = revision(&ev["resourceVersion"]);
                    self.replace(ev["items"].take(), revision_sent)
                }
                // Nothing changed, but everything up to `rv` has been sent.
                Some("BOOKMARK") => self.advance(rv),
                _ => return Err(format!("watch ended: {ev}")),
            }
        }
        Err("watch stream closed".into())
    }

    /// Replace the cache with `items` (a JSON array; anything else empties it).
    fn replace(&self, items: Value, revision: u64) {
        let items = match items {
            Value::Array(items) => items,
            _ => Vec::new(),
        };
        let objects = items
            .into_iter()
            .filter_map(|o| Some((key(&o), parse(o)?)))
            .collect();
        let mut s = self.state.lock().expect("informer lock");
        s.objects = objects;
        s.listed = true;
        s.revision = s.revision.max(revision);
        drop(s);
        self.changed.send_modify(|v| *v += 1);
    }

    fn update<T>(&self, revision: u64, f: impl FnOnce(&mut BTreeMap<String, Arc<AnyObject>>) -> T) {
        let mut s = self.state.lock().expect("informer lock");
        f(&mut s.objects);
        s.revision = s.revision.max(revision);
        drop(s);
        self.changed.send_modify(|v| *v += 1);
    }

    fn advance(&self, revision: u64) {
        let mut s = self.state.lock().expect("informer lock");
        s.revision = s.revision.max(revision);
    }

    /// The current objects, or `None` before the first list succeeded.
    pub fn snapshot(&self) -> Option<Vec<Arc<AnyObject>>> {
        self.snapshot_at().map(|(objects, _)| objects)
    }

    /// The current objects and the store revision they are complete up to (every
    /// change of the collection up to it is in them), or `None` before the first list
    /// succeeded.
    pub fn snapshot_at(&self) -> Option<(Vec<Arc<AnyObject>>, u64)> {
        let s = self.state.lock().expect("informer lock");
        s.listed
            .then(|| (s.objects.values().cloned().collect(), s.revision))
    }

    /// The store revision the cache is complete up to (`None` before the first list).
    pub fn revision(&self) -> Option<u64> {
        let s = self.state.lock().expect("informer lock");
        s.listed.then_some(s.revision)
    }

    /// The object at `key` (`namespace/name`, or `name`), if present.
    pub fn get(&self, key: &str) -> Option<Arc<AnyObject>> {
        self.state
            .lock()
            .expect("informer lock")
            .objects
            .get(key)
            .cloned()
    }

    /// A receiver that sees a new value after every change.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }
}
