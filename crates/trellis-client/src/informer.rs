//! A list-then-watch cache of one collection of API objects, kept by a background task:
//! list, watch from the list's revision, and on any error or RESYNC start over. Objects
//! are parsed into `trellis-api`'s typed objects once, as they arrive (one that does not
//! parse is logged and left out); the envelopes are `trellis_api::watch`'s. Every change
//! bumps a counter the consumers wait on. The cache also knows the store revision it is
//! complete up to (the list's, then each event's and bookmark's), so a consumer can
//! tell how far what it applied reaches.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::Client;
use futures::StreamExt;
use serde_json::Value;
use trellis_api::objects::AnyObject;
use trellis_api::watch::{self, List, ObjectHead, WatchEvent};

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

/// An item of a list or watch event, typed, with its cache key; `None` (logged) when it
/// does not parse.
fn parse(o: Value) -> Option<(String, Arc<AnyObject>)> {
    let k = ObjectHead::of(&o).key();
    match AnyObject::from_value(o) {
        Ok(p) => Some((k, Arc::new(p))),
        Err(e) => {
            tracing::warn!(object = %k, "informer: skipping an object that does not parse: {e}");
            None
        }
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
        let list = client.get(path).await.map_err(|e| e.to_string())?;
        let list: List<Value> =
            serde_json::from_value(list).map_err(|e| format!("the list of {path}: {e}"))?;
        let rv = list.metadata.resource_version.clone();
        self.replace(list.items, list.metadata.revision());
        let mut w = client
            .watch(path, rv.as_deref(), true)
            .await
            .map_err(|e| e.to_string())?;
        while let Some(ev) = w.next().await {
            let ev = ev.map_err(|e| e.to_string())?;
            let ev: WatchEvent<Value> = serde_json::from_value(ev)
                .map_err(|e| format!("watch of {path}: an event that does not parse: {e}"))?;
            match ev {
                WatchEvent::Added { object } | WatchEvent::Modified { object } => {
                    let head = ObjectHead::of(&object);
                    let parsed = parse(object);
                    self.update(head.revision(), |m| match parsed {
                        Some((k, p)) => m.insert(k, p),
                        None => m.remove(&head.key()),
                    })
                }
                // A DELETED event's object carries the revision of its deletion.
                WatchEvent::Deleted { object } => {
                    let head = ObjectHead::of(&object);
                    self.update(head.revision(), |m| m.remove(&head.key()))
                }
                WatchEvent::Resync {
                    resource_version,
                    items,
                } => self.replace(items, watch::revision(Some(&resource_version))),
                // Nothing changed, but everything up to it has been sent.
                WatchEvent::Bookmark { object } => self.advance(object.metadata.revision()),
                WatchEvent::Error { object } => return Err(format!("watch ended: {object}")),
            }
        }
        Err("watch stream closed".into())
    }

    /// Replace the cache with `items`.
    fn replace(&self, items: Vec<Value>, revision: u64) {
        let objects = items.into_iter().filter_map(parse).collect();
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
