//! Reader-writer locks on a real etcd: Go's `recipe.RWMutex` key layout, sharing, writer
//! preference, the `try_` forms, and cleanup of every path that gives a key up.

use crate::common;

use std::time::Duration;

use common::{within, Etcd};
use locksmith_api::{DistributedLock, DistributedRwLock};
use locksmith_etcd::etcd_client::GetOptions;

/// How long a blocked call is watched to make sure it stays blocked.
const QUIET: Duration = Duration::from_millis(300);

/// Every key under `{namespace}{name}/`, relative to it, in create order.
async fn rw_keys(etcd: &Etcd, name: &str) -> Vec<String> {
    let prefix = format!("{}{name}/", etcd.config.namespace);
    let reply = etcd
        .raw()
        .await
        .get(
            prefix.as_str(),
            Some(GetOptions::new().with_prefix().with_sort(
                locksmith_etcd::etcd_client::SortTarget::Create,
                locksmith_etcd::etcd_client::SortOrder::Ascend,
            )),
        )
        .await
        .unwrap();
    reply
        .kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap()[prefix.len()..].to_owned())
        .collect()
}

async fn rw_keys_become(etcd: &Etcd, name: &str, count: usize) -> Vec<String> {
    within("the keys to settle", async {
        loop {
            let keys = rw_keys(etcd, name).await;
            if keys.len() == count {
                return keys;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_share_and_writers_exclude_with_go_s_keys() {
    let etcd = Etcd::new();
    let (a, b) = (etcd.session().await, etcd.session().await);
    let r1 = a.read("doc").await.unwrap();
    let r2 = a.read("doc").await.unwrap();
    let r3 = b.read("doc").await.unwrap();
    let keys = rw_keys(&etcd, "doc").await;
    assert_eq!(keys.len(), 3);
    assert!(keys.iter().all(|k| k.starts_with("read/")), "{keys:?}");
    assert!(r1
        .key()
        .starts_with(&format!("{}doc/read/", etcd.config.namespace)));
    // A session's own read guard blocks its own write, as anyone's.
    assert!(a.try_write("doc").await.unwrap().is_none());
    let writing = {
        let b = b.clone();
        tokio::spawn(async move { b.write("doc").await })
    };
    rw_keys_become(&etcd, "doc", 4).await;
    tokio::time::sleep(QUIET).await;
    assert!(!writing.is_finished(), "a writer beside readers");
    let last_reader = r3.fencing_token().max(r2.fencing_token());
    r1.unlock().await.unwrap();
    drop(r2);
    assert!(!writing.is_finished());
    r3.unlock().await.unwrap();
    let writer = within("the writer", writing).await.unwrap().unwrap();
    assert!(writer.fencing_token() > last_reader);
    assert!(
        writer.key().contains("/doc/write/")
            || writer
                .key()
                .starts_with(&format!("{}doc/write/", etcd.config.namespace))
    );
    assert!(a.try_read("doc").await.unwrap().is_none());
    writer.unlock().await.unwrap();
    rw_keys_become(&etcd, "doc", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_after_a_waiting_writer_queue_behind_it() {
    let etcd = Etcd::new();
    let (a, b, c) = (
        etcd.session().await,
        etcd.session().await,
        etcd.session().await,
    );
    let first = a.read("doc").await.unwrap();
    let writing = {
        let b = b.clone();
        tokio::spawn(async move { b.write("doc").await })
    };
    rw_keys_become(&etcd, "doc", 2).await;
    // A writer waits: new readers neither try nor wait past it.
    assert!(c.try_read("doc").await.unwrap().is_none());
    let reading = {
        let c = c.clone();
        tokio::spawn(async move { c.read("doc").await })
    };
    rw_keys_become(&etcd, "doc", 3).await;
    tokio::time::sleep(QUIET).await;
    assert!(!reading.is_finished(), "a reader overtook a waiting writer");
    first.unlock().await.unwrap();
    let writer = within("the writer", writing).await.unwrap().unwrap();
    tokio::time::sleep(QUIET).await;
    assert!(!reading.is_finished(), "a reader beside the writer");
    let token = writer.fencing_token();
    writer.unlock().await.unwrap();
    let reader = within("the reader", reading).await.unwrap().unwrap();
    assert!(reader.fencing_token() > token);
    reader.unlock().await.unwrap();
    rw_keys_become(&etcd, "doc", 0).await;
}

/// A writer tracks every older reader on one watch (up to 48 of them) and holds at the last
/// one's delete, whatever order they go in; behind more it waits for the newest and reads
/// again. Both paths: 60 readers over two sessions, released out of order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_waits_for_every_older_reader_in_any_order() {
    const READERS: usize = 60;
    let etcd = Etcd::new();
    let (a, b, w) = (
        etcd.session().await,
        etcd.session().await,
        etcd.session().await,
    );
    let mut readers = Vec::new();
    for i in 0..READERS {
        let session = if i % 2 == 0 { &a } else { &b };
        readers.push(session.read("many").await.unwrap());
    }
    let newest_reader = readers.iter().map(|r| r.fencing_token()).max().unwrap();
    let writing = {
        let w = w.clone();
        tokio::spawn(async move { w.write("many").await })
    };
    rw_keys_become(&etcd, "many", READERS + 1).await;
    // Newest first for a while (the path behind more than it tracks), then from both ends.
    let mut order: Vec<usize> = (0..READERS).rev().take(20).collect();
    let rest: Vec<usize> = (0..READERS - 20).collect();
    let (front, back) = rest.split_at(rest.len() / 2);
    order.extend(
        front
            .iter()
            .zip(back.iter().rev())
            .flat_map(|(x, y)| [*x, *y]),
    );
    let mut readers: Vec<Option<_>> = readers.into_iter().map(Some).collect();
    let (last, before_last) = order.split_last().unwrap();
    for index in before_last {
        readers[*index].take().unwrap().unlock().await.unwrap();
        assert!(!writing.is_finished(), "a writer beside a reader");
    }
    tokio::time::sleep(QUIET).await;
    assert!(!writing.is_finished(), "a writer beside the last reader");
    readers[*last].take().unwrap().unlock().await.unwrap();
    let writer = within("the writer", writing).await.unwrap().unwrap();
    assert!(writer.fencing_token() > newest_reader);
    writer.unlock().await.unwrap();
    rw_keys_become(&etcd, "many", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_tries_and_dropped_waits_leave_no_key() {
    let etcd = Etcd::new();
    let (a, b) = (etcd.session().await, etcd.session().await);
    let writer = a.write("doc").await.unwrap();
    for _ in 0..5 {
        assert!(b.try_read("doc").await.unwrap().is_none());
        assert!(b.try_write("doc").await.unwrap().is_none());
    }
    for cut in [0u64, 1, 3, 10, 50] {
        let _ = tokio::time::timeout(Duration::from_millis(cut), b.read("doc")).await;
        let _ = tokio::time::timeout(Duration::from_millis(cut), b.write("doc")).await;
    }
    rw_keys_become(&etcd, "doc", 1).await;
    writer.unlock().await.unwrap();
    rw_keys_become(&etcd, "doc", 0).await;
    // Uncontended tries take the lock at once.
    let read = b.try_read("doc").await.unwrap().unwrap();
    assert!(b.try_read("doc").await.unwrap().is_some());
    drop(read);
    rw_keys_become(&etcd, "doc", 0).await;
    let write = b.try_write("doc").await.unwrap().unwrap();
    write.unlock().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_session_s_waiter_fails_and_rw_names_are_not_lock_names() {
    let etcd = Etcd::new();
    let (a, b) = (etcd.session().await, etcd.session().await);
    let writer = a.write("doc").await.unwrap();
    // The mutex `doc` is another lock (its keys are direct children of `doc/`).
    let mutex = b.lock("doc").await.unwrap();
    mutex.unlock().await.unwrap();
    let waiting = {
        let b = b.clone();
        tokio::spawn(async move { b.read("doc").await })
    };
    rw_keys_become(&etcd, "doc", 2).await;
    b.close().await.unwrap();
    let err = within("the waiter to fail", waiting)
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.is_session_lost(), "{err}");
    rw_keys_become(&etcd, "doc", 1).await;
    assert!(!writer.is_lost());
    writer.unlock().await.unwrap();
}
