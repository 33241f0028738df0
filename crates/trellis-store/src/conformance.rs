//! The conformance suite every [`Store`] implementation runs: the embedded store in
//! process (`tests/embedded.rs`) and a real 3-member etcd cluster (`tests/etcd.rs`).
//! Each check panics with a message saying what broke. Every check writes only under
//! its own sub-prefix of the `prefix` it is given, so a shared etcd can host runs side
//! by side.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::{Event, Precondition, Revision, Store, StoreError, Txn, WatchItem, WatchStream};

/// How long any single wait in the suite may take before the check fails.
const WAIT: Duration = Duration::from_secs(20);

/// A key next to the prefix `p` (which ends in `/`) but not under it.
fn outside(p: &str, name: &str) -> String {
    format!("{}-outside/{name}", p.trim_end_matches('/'))
}

/// Run every check, in order.
pub async fn run_all(store: Arc<dyn Store>, prefix: &str) {
    crud_and_preconditions(store.as_ref(), &format!("{prefix}crud/")).await;
    concurrent_cas(store.clone(), &format!("{prefix}cas/"), 32, 20).await;
    watch_order_and_resume(store.as_ref(), &format!("{prefix}watch/")).await;
    lease_expiry(store.as_ref(), &format!("{prefix}lease/")).await;
    compaction_resync(store.as_ref(), &format!("{prefix}compact/")).await;
}

/// The next item of a watch, failing the check after [`WAIT`].
pub async fn next_item(w: &mut WatchStream) -> WatchItem {
    match tokio::time::timeout(WAIT, w.next()).await {
        Ok(Some(Ok(i))) => i,
        Ok(Some(Err(e))) => panic!("watch failed: {e}"),
        Ok(None) => panic!("watch ended"),
        Err(_) => panic!("no watch event within {WAIT:?}"),
    }
}

/// The next event of a watch (a resync fails the check).
pub async fn next_event(w: &mut WatchStream) -> Event {
    match next_item(w).await {
        WatchItem::Event(e) => e,
        r => panic!("expected an event, got {r:?}"),
    }
}

/// get / create / update / delete with their preconditions, list order and revisions,
/// and multi-key transactions that apply all or nothing.
pub async fn crud_and_preconditions(s: &dyn Store, p: &str) {
    let k = |n: &str| format!("{p}{n}");
    assert_eq!(
        s.get(&k("a")).await.unwrap(),
        None,
        "fresh key must be absent"
    );
    let r1 = s.create(&k("a"), b"1".to_vec(), None).await.unwrap();
    let kv = s.get(&k("a")).await.unwrap().expect("created key");
    assert_eq!(
        (kv.value.as_slice(), kv.create_revision, kv.mod_revision),
        (&b"1"[..], r1, r1)
    );
    match s.create(&k("a"), b"2".to_vec(), None).await {
        Err(StoreError::Conflict {
            key,
            expected: Precondition::Absent,
            actual,
        }) => assert_eq!((key, actual), (k("a"), Some(r1))),
        other => panic!("second create must conflict, got {other:?}"),
    }
    let r2 = s.update(&k("a"), b"2".to_vec(), r1, None).await.unwrap();
    assert!(r2 > r1, "update must get a newer revision");
    let kv = s.get(&k("a")).await.unwrap().unwrap();
    assert_eq!(
        (kv.create_revision, kv.mod_revision),
        (r1, r2),
        "update keeps create_revision"
    );
    match s.update(&k("a"), b"3".to_vec(), r1, None).await {
        Err(StoreError::Conflict { actual, .. }) => assert_eq!(actual, Some(r2)),
        other => panic!("stale update must conflict, got {other:?}"),
    }
    match s.update(&k("missing"), b"3".to_vec(), r1, None).await {
        Err(StoreError::Conflict { actual: None, .. }) => {}
        other => panic!("update of an absent key must conflict, got {other:?}"),
    }
    assert_eq!(s.get(&k("a")).await.unwrap().unwrap().value, b"2");

    // list: sorted, only the prefix, consistent revision
    s.create(&k("c"), b"c".to_vec(), None).await.unwrap();
    let rb = s.create(&k("b"), b"b".to_vec(), None).await.unwrap();
    s.create(&outside(p, "x"), b"x".to_vec(), None)
        .await
        .unwrap();
    let (items, rev) = s.list(p).await.unwrap();
    let keys: Vec<&str> = items.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(
        keys,
        [k("a"), k("b"), k("c")],
        "list must be sorted and prefixed"
    );
    assert!(
        rev >= rb,
        "list revision {rev} older than the last write {rb}"
    );
    assert!(s.revision().await.unwrap() >= rev);

    // transactions: all or nothing, one revision for all writes
    let rb_kv = s.get(&k("b")).await.unwrap().unwrap();
    let err = s
        .txn(
            Txn::new()
                .check(k("b"), Precondition::Revision(rb_kv.mod_revision))
                .check(k("c"), Precondition::Absent)
                .put(k("d"), b"d".to_vec(), None)
                .delete(k("b")),
        )
        .await
        .unwrap_err();
    match err {
        StoreError::Conflict { key, .. } => assert_eq!(key, k("c"), "the failing check is named"),
        e => panic!("expected a conflict, got {e}"),
    }
    assert_eq!(s.get(&k("d")).await.unwrap(), None, "failed txn wrote d");
    assert!(
        s.get(&k("b")).await.unwrap().is_some(),
        "failed txn deleted b"
    );
    let rt = s
        .txn(
            Txn::new()
                .check(k("b"), Precondition::Revision(rb_kv.mod_revision))
                .check(k("d"), Precondition::Absent)
                .put(k("d"), b"d".to_vec(), None)
                .delete(k("b")),
        )
        .await
        .unwrap();
    assert_eq!(s.get(&k("d")).await.unwrap().unwrap().mod_revision, rt);
    assert_eq!(s.get(&k("b")).await.unwrap(), None);

    // delete with precondition
    let kd = s.get(&k("d")).await.unwrap().unwrap();
    assert!(matches!(
        s.delete(&k("d"), kd.mod_revision - 1).await,
        Err(StoreError::Conflict { .. })
    ));
    s.delete(&k("d"), kd.mod_revision).await.unwrap();
    assert_eq!(s.get(&k("d")).await.unwrap(), None);
}

/// `writers` tasks each add `rounds` to one counter with read-modify-CAS; the counter
/// must end at exactly `writers * rounds` (no lost update), and the conflicts must
/// have been reported as such.
pub async fn concurrent_cas(s: Arc<dyn Store>, p: &str, writers: usize, rounds: usize) {
    let key = format!("{p}counter");
    s.create(&key, b"0".to_vec(), None).await.unwrap();
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|_| {
            let s = s.clone();
            let key = key.clone();
            tokio::spawn(async move {
                let mut conflicts = 0usize;
                for _ in 0..rounds {
                    loop {
                        let kv = s.get(&key).await.unwrap().unwrap();
                        let n: usize = String::from_utf8(kv.value).unwrap().parse().unwrap();
                        match s
                            .update(
                                &key,
                                (n + 1).to_string().into_bytes(),
                                kv.mod_revision,
                                None,
                            )
                            .await
                        {
                            Ok(_) => break,
                            Err(StoreError::Conflict { .. }) => conflicts += 1,
                            Err(e) => panic!("CAS writer: {e}"),
                        }
                        assert!(started.elapsed() < WAIT * 3, "CAS writers starved");
                    }
                }
                conflicts
            })
        })
        .collect();
    let mut conflicts = 0;
    for t in tasks {
        conflicts += t.await.unwrap();
    }
    let v = s.get(&key).await.unwrap().unwrap().value;
    assert_eq!(
        String::from_utf8(v).unwrap(),
        (writers * rounds).to_string(),
        "lost updates with {writers} concurrent CAS writers ({conflicts} conflicts)"
    );
}

/// A watch sees every change under its prefix, in revision order, nothing outside it;
/// dropping it and watching again from the last revision + 1 loses and repeats nothing;
/// a watch from an old revision replays history.
pub async fn watch_order_and_resume(s: &dyn Store, p: &str) {
    let start = s.revision().await.unwrap() + 1;
    let mut w = s.watch(p, 0).await.unwrap();
    // The expected history: (revision, key, Some(value) for put / None for delete).
    let mut want: Vec<(Revision, String, Option<Vec<u8>>)> = Vec::new();
    let mut revs: BTreeMap<String, Revision> = BTreeMap::new();
    for i in 0..60 {
        let key = format!("{p}k{}", i % 7);
        let val = format!("v{i}").into_bytes();
        match revs.get(&key).copied() {
            Some(r) if i % 5 == 0 => {
                let rev = s.delete(&key, r).await.unwrap();
                revs.remove(&key);
                want.push((rev, key, None));
            }
            Some(r) => {
                let rev = s.update(&key, val.clone(), r, None).await.unwrap();
                revs.insert(key.clone(), rev);
                want.push((rev, key, Some(val)));
            }
            None => {
                let rev = s.create(&key, val.clone(), None).await.unwrap();
                revs.insert(key.clone(), rev);
                want.push((rev, key, Some(val)));
            }
        }
        if i % 10 == 3 {
            // noise outside the prefix, and a two-key transaction
            s.create(&outside(p, &format!("x{i}")), b"x".to_vec(), None)
                .await
                .unwrap();
            let (a, b) = (format!("{p}t{i}a"), format!("{p}t{i}b"));
            let rev = s
                .txn(Txn::new().put(a.clone(), b"a".to_vec(), None).put(
                    b.clone(),
                    b"b".to_vec(),
                    None,
                ))
                .await
                .unwrap();
            want.push((rev, a, Some(b"a".to_vec())));
            want.push((rev, b, Some(b"b".to_vec())));
        }
    }
    let as_tuple = |e: Event| match e {
        Event::Put(kv) => (kv.mod_revision, kv.key, Some(kv.value)),
        Event::Delete { key, revision, .. } => (revision, key, None),
    };
    // Half through the first watch, the rest through a second one.
    let half = want.len() / 2;
    let mut got = Vec::new();
    for _ in 0..half {
        got.push(as_tuple(next_event(&mut w).await));
    }
    drop(w);
    let last = got.last().map(|g: &(Revision, String, _)| g.0).unwrap();
    // The events of one revision are delivered together: resume after the last full one.
    while got.last().is_some_and(|g| g.0 == last) {
        got.pop();
    }
    let mut w = s.watch(p, last).await.unwrap();
    while got.len() < want.len() {
        got.push(as_tuple(next_event(&mut w).await));
    }
    assert_eq!(
        got, want,
        "watch across a reconnect lost, repeated or reordered events"
    );
    // Nothing more (the noise keys are outside the prefix).
    s.create(&format!("{p}zz-end"), b"e".to_vec(), None)
        .await
        .unwrap();
    assert_eq!(next_event(&mut w).await.key(), format!("{p}zz-end"));

    // Replay from the start.
    let mut w = s.watch(p, start).await.unwrap();
    let mut replay = Vec::new();
    while replay.len() < want.len() {
        replay.push(as_tuple(next_event(&mut w).await));
    }
    assert_eq!(replay, want, "replaying history from revision {start}");
}

/// A key attached to a lease lives while the lease is kept alive and is deleted (with a
/// watch event) once it is not; keep-alive of an expired lease fails; revoke deletes at
/// once.
pub async fn lease_expiry(s: &dyn Store, p: &str) {
    let ttl = Duration::from_secs(2);
    let lease = s.lease_grant(ttl).await.unwrap();
    let key = format!("{p}held");
    s.create(&key, b"h".to_vec(), Some(lease)).await.unwrap();
    assert_eq!(s.get(&key).await.unwrap().unwrap().lease, Some(lease));
    let mut w = s.watch(p, 0).await.unwrap();
    // Kept alive past several TTLs: still there.
    let until = Instant::now() + ttl * 2;
    while Instant::now() < until {
        let got = s.lease_keep_alive(lease).await.unwrap();
        assert!(
            got >= Duration::from_secs(1),
            "keep-alive returned TTL {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        s.get(&key).await.unwrap().is_some(),
        "key of a live lease vanished"
    );
    // Not kept alive: gone, with a delete event.
    let stopped = Instant::now();
    match next_event(&mut w).await {
        Event::Delete { key: k, prev, .. } => {
            assert_eq!(k, key);
            assert_eq!(prev.map(|p| p.value), Some(b"h".to_vec()));
        }
        e => panic!("expected the lease's delete, got {e:?}"),
    }
    let took = stopped.elapsed();
    assert!(
        took >= ttl - Duration::from_millis(500),
        "lease expired after {took:?}, before its TTL {ttl:?}"
    );
    assert_eq!(s.get(&key).await.unwrap(), None);
    assert!(matches!(
        s.lease_keep_alive(lease).await,
        Err(StoreError::LeaseNotFound(_))
    ));
    assert!(
        matches!(
            s.create(&key, b"h".to_vec(), Some(lease)).await,
            Err(StoreError::LeaseNotFound(_))
        ),
        "attaching a key to an expired lease must fail"
    );
    // Revoke: immediate.
    let lease = s.lease_grant(Duration::from_secs(60)).await.unwrap();
    s.create(&key, b"r".to_vec(), Some(lease)).await.unwrap();
    s.create(&format!("{key}2"), b"r".to_vec(), Some(lease))
        .await
        .unwrap();
    s.lease_revoke(lease).await.unwrap();
    assert_eq!(s.get(&key).await.unwrap(), None);
    assert_eq!(s.get(&format!("{key}2")).await.unwrap(), None);
}

/// After a compaction, a watch from an older revision starts with a resync snapshot of
/// the prefix, then continues with live events.
pub async fn compaction_resync(s: &dyn Store, p: &str) {
    let r_old = s
        .create(&format!("{p}a"), b"1".to_vec(), None)
        .await
        .unwrap();
    let r_b = s
        .create(&format!("{p}b"), b"1".to_vec(), None)
        .await
        .unwrap();
    s.delete(&format!("{p}a"), r_old).await.unwrap();
    let r_c = s
        .create(&format!("{p}c"), b"1".to_vec(), None)
        .await
        .unwrap();
    s.compact(r_c).await.unwrap();
    // Compacting again at or below the mark is harmless.
    s.compact(r_b).await.unwrap();
    let mut w = s.watch(p, r_old).await.unwrap();
    match next_item(&mut w).await {
        WatchItem::Resync { items, revision } => {
            let keys: Vec<String> = items.into_iter().map(|kv| kv.key).collect();
            assert_eq!(keys, [format!("{p}b"), format!("{p}c")]);
            assert!(revision >= r_c, "resync at {revision}, older than {r_c}");
        }
        i => panic!("watch from a compacted revision must resync first, got {i:?}"),
    }
    let r_d = s
        .create(&format!("{p}d"), b"1".to_vec(), None)
        .await
        .unwrap();
    let e = next_event(&mut w).await;
    assert_eq!((e.key(), e.revision()), (format!("{p}d").as_str(), r_d));
    // A watch from a revision still in history gets events, not a resync.
    let mut w = s.watch(p, r_c).await.unwrap();
    let e = next_event(&mut w).await;
    assert_eq!(
        e.revision(),
        r_c,
        "history from the compaction mark on is kept"
    );
}
