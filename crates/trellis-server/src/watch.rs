//! Watch responses: one JSON object per line.
//!
//! `{"type":"ADDED"|"MODIFIED"|"DELETED","object":{…}}` for changes;
//! `{"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"R"}}}` every bookmark
//! interval when asked for (`allowWatchBookmarks=true`): every change up to R has been
//! sent; `{"type":"RESYNC","resourceVersion":"R","items":[…]}` when the requested
//! resourceVersion was compacted away: the client replaces its state with `items`.
//! Without a resourceVersion the watch starts with an ADDED event per existing object.
//! The lines are `trellis_api::watch::WatchEvent`s.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use futures::StreamExt;
use serde_json::Value;
use trellis_api::watch::{Bookmark, ListMeta, WatchEvent};
use trellis_store::{Event, Revision, WatchItem};

use crate::resources::{to_object, to_object_at};
use crate::{ApiError, Server};

type Tx = tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>;

async fn send(tx: &Tx, v: &WatchEvent<Value>) -> bool {
    let mut line = serde_json::to_vec(v).unwrap_or_default();
    line.push(b'\n');
    tx.send(Ok(Bytes::from(line))).await.is_ok()
}

fn event_line(e: &Event) -> Option<WatchEvent<Value>> {
    Some(match e {
        Event::Put(kv) => {
            let object = to_object(kv).ok()?;
            if kv.create_revision == kv.mod_revision {
                WatchEvent::Added { object }
            } else {
                WatchEvent::Modified { object }
            }
        }
        // The object as it was, at the revision of its deletion.
        Event::Delete { revision, prev, .. } => WatchEvent::Deleted {
            object: to_object_at(prev.as_ref()?, *revision).ok()?,
        },
    })
}

/// Start a watch of `prefix` (objects of `kind`) and return the streaming body.
pub async fn watch(
    server: Arc<Server>,
    prefix: String,
    kind: &'static str,
    resource_version: Option<Revision>,
    bookmarks: bool,
) -> Result<Body, ApiError> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    // Initial state when no revision is given: ADDED for everything, then changes.
    let (initial, from) = match resource_version {
        Some(r) => (Vec::new(), r + 1),
        None => {
            let (items, rev) = server.store.list(&prefix).await?;
            (items, rev + 1)
        }
    };
    let mut stream = server.store.watch(&prefix, from).await?;
    let interval = server.cfg.bookmark_interval;
    tokio::spawn(async move {
        let mut last = from - 1;
        for kv in &initial {
            let Ok(obj) = to_object(kv) else { continue };
            if !send(&tx, &WatchEvent::Added { object: obj }).await {
                return;
            }
        }
        let mut tick = tokio::time::interval_at(
            tokio::time::Instant::now() + interval,
            interval.max(Duration::from_millis(10)),
        );
        loop {
            tokio::select! {
                item = stream.next() => {
                    let line = match item {
                        Some(Ok(WatchItem::Event(e))) => {
                            last = last.max(e.revision());
                            match event_line(&e) {
                                Some(l) => l,
                                None => continue,
                            }
                        }
                        Some(Ok(WatchItem::Resync { items, revision })) => {
                            last = revision;
                            let items: Vec<Value> = items.iter().filter_map(|kv| to_object(kv).ok()).collect();
                            WatchEvent::Resync { resource_version: revision.to_string(), items }
                        }
                        Some(Err(e)) => {
                            let _ = send(&tx, &WatchEvent::Error { object: ApiError::from(e).body() }).await;
                            return;
                        }
                        None => return,
                    };
                    if !send(&tx, &line).await {
                        return;
                    }
                }
                _ = tick.tick(), if bookmarks => {
                    let b = WatchEvent::Bookmark {
                        object: Bookmark {
                            api_version: "trellis/v1".into(),
                            kind: kind.into(),
                            metadata: ListMeta { resource_version: Some(last.to_string()) },
                        },
                    };
                    if !send(&tx, &b).await {
                        return;
                    }
                }
                _ = tx.closed() => return,
            }
        }
    });
    Ok(Body::from_stream(futures::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|b| (b, rx)) },
    )))
}
