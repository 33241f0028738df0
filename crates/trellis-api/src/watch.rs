//! The envelopes the API server wraps objects in: a list (`GET /v1/<kind>`), the events
//! of a watch (`?watch=true`, one JSON object per line) and a node's subnet lease.
//!
//! Objects travel as `T`: the server and the agents' informers use
//! `serde_json::Value` items, so that one object that does not parse as this version's
//! types is skipped (and logged) rather than failing the whole list; [`ObjectHead`]
//! reads what they need of such an item (its key and revision) without parsing it.

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// The metadata of a list or bookmark: the store revision it is complete up to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListMeta {
    /// The revision (a decimal string, as Kubernetes sends it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
}

impl ListMeta {
    /// The revision as a number (0 when absent or malformed).
    pub fn revision(&self) -> u64 {
        revision(self.resource_version.as_deref())
    }
}

/// `{"apiVersion", "kind": "<Kind>List", "metadata": {"resourceVersion"}, "items"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct List<T> {
    /// `trellis/v1`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    /// `<Kind>List`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// Up to which revision the items are complete.
    #[serde(default)]
    pub metadata: ListMeta,
    /// The objects.
    #[serde(default = "Vec::new")]
    pub items: Vec<T>,
}

/// A bookmark's object: only its metadata (and `apiVersion`/`kind`, ignored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bookmark {
    /// `trellis/v1`.
    #[serde(default)]
    pub api_version: String,
    /// The kind watched.
    #[serde(default)]
    pub kind: String,
    /// Every change up to this revision has been sent.
    pub metadata: ListMeta,
}

/// One line of a watch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "UPPERCASE")]
pub enum WatchEvent<T> {
    /// A new object.
    Added {
        /// The object.
        object: T,
    },
    /// A changed object.
    Modified {
        /// The object as it is now.
        object: T,
    },
    /// A deleted object, as it was, with the revision of its deletion.
    Deleted {
        /// The object.
        object: T,
    },
    /// Every change up to the bookmark's revision has been sent.
    Bookmark {
        /// The revision.
        object: Bookmark,
    },
    /// The revision asked for was compacted away: replace everything with `items`.
    Resync {
        /// The revision the items are complete up to.
        #[serde(rename = "resourceVersion")]
        resource_version: String,
        /// Every object.
        items: Vec<T>,
    },
    /// The watch failed; the object is the API error.
    Error {
        /// `{"code", "reason", "message"}`.
        object: serde_json::Value,
    },
}

/// What a key and a revision need of an object: its `metadata` names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ObjectHead {
    /// `name`, `namespace` and `resourceVersion`.
    #[serde(default)]
    pub metadata: HeadMeta,
}

/// The names of [`ObjectHead`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeadMeta {
    /// The name.
    #[serde(default)]
    pub name: String,
    /// The namespace (namespaced kinds).
    #[serde(default)]
    pub namespace: Option<String>,
    /// The revision of this version of the object.
    #[serde(default)]
    pub resource_version: Option<String>,
}

impl ObjectHead {
    /// The head of `o` (empty names when `o` has none).
    pub fn of(o: &serde_json::Value) -> ObjectHead {
        ObjectHead::deserialize(o).unwrap_or_default()
    }

    /// `namespace/name`, or `name` for a cluster-scoped object.
    pub fn key(&self) -> String {
        match &self.metadata.namespace {
            Some(ns) => format!("{ns}/{}", self.metadata.name),
            None => self.metadata.name.clone(),
        }
    }

    /// The object's revision (0 when absent or malformed).
    pub fn revision(&self) -> u64 {
        revision(self.metadata.resource_version.as_deref())
    }
}

/// A `resourceVersion` as a number (0 when absent or malformed).
pub fn revision(rv: Option<&str>) -> u64 {
    rv.and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// The answer to `POST /v1/nodes/<node>/subnets/<network>`: the node's subnet of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubnetLease {
    /// The subnet.
    pub cidr: Ipv4Net,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn watch_lines_round_trip() {
        let lines = [
            json!({"type": "ADDED", "object": {"metadata": {"name": "a", "resourceVersion": "3"}}}),
            json!({"type": "DELETED", "object": {"metadata": {"name": "a", "namespace": "x", "resourceVersion": "9"}}}),
            json!({"type": "BOOKMARK", "object": {"apiVersion": "trellis/v1", "kind": "Node", "metadata": {"resourceVersion": "12"}}}),
            json!({"type": "RESYNC", "resourceVersion": "14", "items": []}),
        ];
        let events: Vec<WatchEvent<Value>> = lines
            .iter()
            .map(|l| serde_json::from_value(l.clone()).unwrap())
            .collect();
        let WatchEvent::Added { object } = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!(ObjectHead::of(object).key(), "a");
        assert_eq!(ObjectHead::of(object).revision(), 3);
        let WatchEvent::Deleted { object } = &events[1] else {
            panic!()
        };
        assert_eq!(ObjectHead::of(object).key(), "x/a");
        let WatchEvent::Bookmark { object } = &events[2] else {
            panic!()
        };
        assert_eq!(object.metadata.revision(), 12);
        assert!(
            matches!(&events[3], WatchEvent::Resync { resource_version, .. } if resource_version == "14")
        );
        for (e, l) in events.iter().zip(&lines) {
            assert_eq!(&serde_json::to_value(e).unwrap(), l);
        }
        // An unknown type is an error, not a silent skip.
        assert!(serde_json::from_value::<WatchEvent<Value>>(json!({"type": "NOPE"})).is_err());
        let list: List<Value> =
            serde_json::from_value(json!({"metadata": {"resourceVersion": "5"}, "items": [{}]}))
                .unwrap();
        assert_eq!((list.metadata.revision(), list.items.len()), (5, 1));
    }
}
