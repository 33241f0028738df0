//! The conformance suite on the embedded store, and what only it promises: a reopened
//! file has every acknowledged write, its revision, its history and its leases.

use std::sync::Arc;
use std::time::Duration;

use trellis_store::embedded::EmbeddedStore;
use trellis_store::{conformance, Store, StoreError, Txn, WatchItem};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_on_embedded() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir.path().join("s.redb")).unwrap());
    conformance::run_all(store, "/conformance/").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_keeps_writes_history_and_leases() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let (rev, lease) = {
        let s = EmbeddedStore::open(&path).unwrap();
        // 200 concurrent acknowledged writes
        let s = Arc::new(s);
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move {
                    s.create(&format!("/k/{i:03}"), vec![i as u8], None)
                        .await
                        .unwrap()
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let lease = s.lease_grant(Duration::from_secs(30)).await.unwrap();
        let rev = s
            .txn(Txn::new().put("/l/held", b"x".to_vec(), Some(lease)))
            .await
            .unwrap();
        (rev, lease)
        // dropped: the writer stops
    };
    let s = EmbeddedStore::open(&path).unwrap();
    let (items, r) = s.list("/k/").await.unwrap();
    assert_eq!(items.len(), 200);
    assert!(items
        .iter()
        .enumerate()
        .all(|(i, kv)| kv.value == [i as u8]));
    assert_eq!(r, rev, "revision survives a reopen");
    assert_eq!(s.get("/l/held").await.unwrap().unwrap().lease, Some(lease));
    s.lease_keep_alive(lease).await.unwrap();
    // history survives: a watch from revision 1 replays all 201 writes
    let mut w = s.watch("/", 1).await.unwrap();
    for _ in 0..201 {
        match conformance::next_item(&mut w).await {
            WatchItem::Event(_) => {}
            i => panic!("unexpected {i:?}"),
        }
    }
    // new lease ids never reuse old ones
    let l2 = s.lease_grant(Duration::from_secs(5)).await.unwrap();
    assert!(l2 > lease);
    s.lease_revoke(lease).await.unwrap();
    assert_eq!(s.get("/l/held").await.unwrap(), None);
    assert!(matches!(
        s.lease_revoke(lease).await,
        Err(StoreError::LeaseNotFound(_))
    ));
}
