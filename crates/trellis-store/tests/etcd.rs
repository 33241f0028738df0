//! The etcd store on a real 3-member etcd cluster on 127.0.0.1 (`/usr/bin/etcd`, from
//! Debian's etcd-server): the conformance suite, what only the etcd mapping promises,
//! and writers plus watchers across a member killed with SIGKILL.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::EtcdCluster;
use futures::StreamExt;
use trellis_store::etcd::{EtcdOptions, EtcdStore};
use trellis_store::{
    conformance, Precondition, Revision, Store, StoreError, Txn, WatchItem, WatchStream,
};

/// Bound on a whole test: a hang fails instead of blocking CI.
const TEST_LIMIT: Duration = Duration::from_secs(90);

async fn bounded<F: std::future::Future<Output = T>, T>(what: &str, f: F) -> T {
    match tokio::time::timeout(TEST_LIMIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what} did not finish within {TEST_LIMIT:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_on_etcd() {
    let cluster = EtcdCluster::start(3).await;
    let store: Arc<dyn Store> = Arc::new(EtcdStore::connect(&cluster.endpoints()).await.unwrap());
    bounded(
        "the conformance suite",
        conformance::run_all(store, "/conformance/"),
    )
    .await;
}

/// What the etcd mapping adds to the suite: conflicts name the first failing check
/// among several, a `Revision(0)` check never matches an absent key, lease errors name
/// the lease, compaction errors carry the marks, lists page at one revision, a watch
/// ends with its store, and an unreachable cluster is `Unavailable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_specifics() {
    let cluster = EtcdCluster::start(3).await;
    let opts = EtcdOptions {
        list_page_size: 100,
        ..EtcdOptions::default()
    };
    let s = EtcdStore::connect_with(&cluster.endpoints(), opts)
        .await
        .unwrap();
    bounded("the etcd checks", async {
        // Conflicts: the first failing check of three, with its actual revision.
        let ra = s.create("/x/a", b"a".to_vec(), None).await.unwrap();
        let rb = s.create("/x/b", b"b".to_vec(), None).await.unwrap();
        let err = s
            .txn(
                Txn::new()
                    .check("/x/a", Precondition::Revision(ra))
                    .check("/x/b", Precondition::Revision(ra))
                    .check("/x/a", Precondition::Absent)
                    .put("/x/c", b"c".to_vec(), None),
            )
            .await
            .unwrap_err();
        assert_eq!(
            err,
            StoreError::Conflict {
                key: "/x/b".into(),
                expected: Precondition::Revision(ra),
                actual: Some(rb),
            }
        );
        assert_eq!(s.get("/x/c").await.unwrap(), None);
        // etcd's mod_revision of an absent key is 0: Revision(0) must still conflict.
        assert_eq!(
            s.update("/x/none", b"n".to_vec(), 0, None).await,
            Err(StoreError::Conflict {
                key: "/x/none".into(),
                expected: Precondition::Revision(0),
                actual: None,
            })
        );
        // Checks only: the current revision, nothing written.
        let now = s.revision().await.unwrap();
        assert_eq!(
            s.txn(Txn::new().check("/x/a", Precondition::Revision(ra)))
                .await
                .unwrap(),
            now
        );
        assert_eq!(s.txn(Txn::new()).await.unwrap(), now);
        // The same key twice in one transaction is refused.
        assert!(matches!(
            s.txn(Txn::new().put("/x/d", vec![], None).delete("/x/d"))
                .await,
            Err(StoreError::Backend(_))
        ));

        // Leases: errors name the missing lease.
        let live = s.lease_grant(Duration::from_secs(30)).await.unwrap();
        let gone = s.lease_grant(Duration::from_millis(1500)).await.unwrap();
        assert_eq!(
            s.lease_keep_alive(gone).await.unwrap(),
            Duration::from_secs(2),
            "a TTL rounds up to whole seconds"
        );
        s.lease_revoke(gone).await.unwrap();
        assert_eq!(
            s.txn(
                Txn::new()
                    .put("/x/l1", vec![], Some(live))
                    .put("/x/l2", vec![], Some(gone))
            )
            .await,
            Err(StoreError::LeaseNotFound(gone))
        );
        assert_eq!(
            s.lease_keep_alive(gone).await,
            Err(StoreError::LeaseNotFound(gone))
        );
        assert_eq!(
            s.lease_revoke(gone).await,
            Err(StoreError::LeaseNotFound(gone))
        );
        s.lease_revoke(live).await.unwrap();

        // Compaction: future and non-positive revisions are invalid; the mark is kept.
        let mark = s.create("/x/m", vec![], None).await.unwrap();
        s.compact(mark).await.unwrap();
        s.compact(mark).await.unwrap();
        s.compact(mark - 1).await.unwrap();
        let current = s.revision().await.unwrap();
        for bad in [current + 10, 0] {
            assert_eq!(
                s.compact(bad).await,
                Err(StoreError::InvalidCompaction {
                    requested: bad,
                    current,
                    compacted: mark,
                })
            );
        }

        // Lists page (100 keys a range here) and stay at one revision.
        for chunk in 0..11 {
            let mut t = Txn::new();
            for i in 0..100 {
                let n = chunk * 100 + i;
                if n < 1050 {
                    t = t.put(format!("/big/{n:05}"), n.to_string().into_bytes(), None);
                }
            }
            s.txn(t).await.unwrap();
        }
        s.create("/big0", vec![], None).await.unwrap();
        s.create("/bif", vec![], None).await.unwrap();
        let last = s.create("/big/~", vec![], None).await.unwrap();
        let (items, rev) = s.list("/big/").await.unwrap();
        assert_eq!(rev, last);
        assert_eq!(items.len(), 1051);
        let keys: Vec<&str> = items.iter().map(|kv| kv.key.as_str()).collect();
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        assert_eq!(keys, sorted, "list is sorted");
        assert_eq!(keys[0], "/big/00000");
        assert_eq!(items[1049].value, b"1049");
        assert_eq!(s.list("/nothing/").await.unwrap(), (Vec::new(), last));

        // A watch ends with its store.
        let other = EtcdStore::connect(&cluster.endpoints()).await.unwrap();
        let mut w = other.watch("/x/", 0).await.unwrap();
        let r = s.create("/x/w", b"w".to_vec(), None).await.unwrap();
        match tokio::time::timeout(Duration::from_secs(10), w.next()).await {
            Ok(Some(Ok(WatchItem::Event(e)))) => assert_eq!(e.revision(), r),
            other => panic!("expected the event, got {other:?}"),
        }
        drop(other);
        match tokio::time::timeout(Duration::from_secs(10), w.next()).await {
            Ok(None) => {}
            other => panic!("a watch must end with its store, got {other:?}"),
        }
    })
    .await;

    // Nobody listening: Unavailable, within the retry budget.
    let started = Instant::now();
    let opts = EtcdOptions {
        retry_for: Duration::from_secs(1),
        ..EtcdOptions::default()
    };
    match EtcdStore::connect_with(&["http://127.0.0.1:1".to_string()], opts).await {
        Err(StoreError::Unavailable(_)) => {}
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// One write as the watchers must see it.
type Write = (String, Vec<u8>);

#[derive(Default)]
struct Ledger {
    /// Acknowledged writes: (revision, key, value), and when they were acknowledged.
    acked: Vec<(Revision, Write, Instant)>,
    /// Writes that failed with `Unavailable`: applied or not.
    maybe: HashSet<Write>,
    conflicts: usize,
}

/// Writers CAS their own keys and watchers follow the prefix while the leader — moved
/// first onto a member that serves some of the watch streams — is killed with SIGKILL.
/// Writes must resume within 5 s, and every watcher must see exactly the acknowledged
/// writes plus possibly some whose outcome was unknown, each once, in revision order,
/// without gaps. Then the member comes back and the cluster is healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn member_kill9_writers_and_watchers() {
    const WRITERS: usize = 4;
    const WATCHERS: usize = 4;
    const PREFIX: &str = "/kill9/";
    let mut cluster = EtcdCluster::start(3).await;
    let store = Arc::new(EtcdStore::connect(&cluster.endpoints()).await.unwrap());
    let start = store.revision().await.unwrap();

    let (until_tx, until_rx) = tokio::sync::watch::channel(Revision::MAX);
    let mut watchers = Vec::new();
    for _ in 0..WATCHERS {
        let w = store.watch(PREFIX, 0).await.unwrap();
        watchers.push(tokio::spawn(collect(w, until_rx.clone())));
    }

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|n| {
            let (store, ledger, stop) = (store.clone(), ledger.clone(), stop.clone());
            tokio::spawn(async move { write_loop(n, &*store, &ledger, &stop).await })
        })
        .collect();

    let killed = bounded("the kill", async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // The victim: the member serving the most watch streams, made leader.
        let mut victim = 0;
        let mut most = 0;
        for i in 0..cluster.len() {
            let n = cluster.watch_streams(i).await;
            if n > most {
                (victim, most) = (i, n);
            }
        }
        cluster.move_leader(victim).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let t = Instant::now();
        cluster.kill9(victim);
        eprintln!("killed m{victim} (leader, serving {most} watch streams)");
        tokio::time::sleep(Duration::from_secs(6)).await;
        (victim, t, most)
    })
    .await;
    let (victim, killed_at, streams_on_victim) = killed;

    stop.store(true, Ordering::SeqCst);
    bounded("the writers", async {
        for w in writers {
            w.await.unwrap();
        }
    })
    .await;
    let end = bounded("the final revision", store.revision())
        .await
        .unwrap();
    until_tx.send(end).unwrap();
    let mut seen = Vec::new();
    for w in watchers {
        seen.push(bounded("a watcher", w).await.unwrap());
    }

    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    // Writes resumed soon after the kill.
    let mut times: Vec<Instant> = ledger.acked.iter().map(|a| a.2).collect();
    times.sort();
    let gap = times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    let resumed = times
        .iter()
        .find(|t| **t > killed_at)
        .map(|t| *t - killed_at);
    eprintln!(
        "{} acknowledged writes, {} with unknown outcome, {} conflicts; revisions {}..={end}; \
         longest gap between writes {gap:?}; first write {resumed:?} after the kill",
        ledger.acked.len(),
        ledger.maybe.len(),
        ledger.conflicts,
        start + 1,
    );
    assert!(ledger.acked.len() > 50, "too few writes to mean anything");
    let resumed = resumed.expect("no write succeeded after the kill");
    assert!(
        resumed < Duration::from_secs(5),
        "writes resumed {resumed:?} after the kill"
    );
    assert!(gap < Duration::from_secs(5), "writes stalled for {gap:?}");

    // Every watcher: exactly the applied writes, once each, in order, no gaps.
    let acked: BTreeMap<Revision, &Write> = ledger.acked.iter().map(|(r, w, _)| (*r, w)).collect();
    assert_eq!(
        acked.len(),
        ledger.acked.len(),
        "two writes acknowledged at one revision"
    );
    for (n, events) in seen.iter().enumerate() {
        let revs: Vec<Revision> = events.iter().map(|e| e.0).collect();
        let want: Vec<Revision> = (start + 1..=end).collect();
        assert_eq!(
            revs, want,
            "watcher {n} saw revisions out of order, repeated or missing"
        );
        let by_rev: HashMap<Revision, &Write> = events.iter().map(|(r, w)| (*r, w)).collect();
        for (rev, w) in &acked {
            assert_eq!(
                by_rev.get(rev),
                Some(w),
                "watcher {n} missed the acknowledged write at {rev}"
            );
        }
        for (rev, w) in events {
            assert!(
                acked.get(rev) == Some(&w)
                    || (!acked.contains_key(rev) && ledger.maybe.contains(w)),
                "watcher {n} saw {w:?} at {rev}, which was never attempted (or not there)"
            );
        }
    }
    eprintln!("m{victim} served {streams_on_victim} of the watch streams when killed; all {WATCHERS} watchers agree");

    // The member comes back and catches up; the store writes through the cluster again.
    bounded("the restart", async {
        cluster.restart(victim).await;
        cluster.wait_healthy().await;
        let mut c = common::member_client(&cluster.endpoint(victim))
            .await
            .unwrap();
        let r = store
            .create(&format!("{PREFIX}after"), b"a".to_vec(), None)
            .await
            .unwrap();
        let got = c.get(format!("{PREFIX}after"), None).await.unwrap();
        assert_eq!(
            got.kvs()[0].mod_revision(),
            r,
            "restarted member serves the new write"
        );
    })
    .await;
}

/// CAS writes of `w{n}` values on one key until `stop`, recording every outcome.
async fn write_loop(n: usize, s: &dyn Store, ledger: &Mutex<Ledger>, stop: &AtomicBool) {
    let key = format!("/kill9/w{n}");
    let mut current: Option<Revision> = None;
    let mut seq = 0u64;
    while !stop.load(Ordering::SeqCst) {
        seq += 1;
        let value = format!("w{n}-{seq}").into_bytes();
        let result = match current {
            None => s.create(&key, value.clone(), None).await,
            Some(r) => s.update(&key, value.clone(), r, None).await,
        };
        let unavailable = matches!(result, Err(StoreError::Unavailable(_)));
        {
            let mut l = ledger.lock().unwrap();
            match result {
                Ok(rev) => {
                    l.acked.push((rev, (key.clone(), value), Instant::now()));
                    current = Some(rev);
                }
                // Maybe applied: the next CAS conflicts if it was, and says the revision.
                Err(StoreError::Unavailable(_)) => {
                    l.maybe.insert((key.clone(), value));
                }
                Err(StoreError::Conflict { actual, .. }) => {
                    l.conflicts += 1;
                    current = actual;
                }
                Err(e) => panic!("writer {n}: {e}"),
            }
        }
        if unavailable {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Collect a watch's events as (revision, (key, value)) until the revision `until`
/// names has been seen. Deletes and resyncs fail the test (the writers only put).
async fn collect(
    mut w: WatchStream,
    mut until: tokio::sync::watch::Receiver<Revision>,
) -> Vec<(Revision, Write)> {
    let mut seen: Vec<(Revision, Write)> = Vec::new();
    loop {
        let last = seen.last().map_or(0, |e| e.0);
        if last >= *until.borrow() {
            return seen;
        }
        let item = tokio::select! {
            item = w.next() => item,
            _ = until.changed() => continue,
        };
        match item {
            Some(Ok(WatchItem::Event(trellis_store::Event::Put(kv)))) => {
                seen.push((kv.mod_revision, (kv.key, kv.value)))
            }
            other => panic!("watcher: unexpected {other:?}"),
        }
    }
}
