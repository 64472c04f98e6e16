//! Waiting for a key to be deleted.

use crate::hub::Notice;
use crate::session::Link;

/// How a wait for a delete ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Watched {
    /// The key was deleted.
    Deleted,
    /// The watch could not go on (compaction, a broken stream, a cancelled watch): read the
    /// state again and decide.
    Reread,
}

/// Waits until the queue key `key`, created at `create_revision`, is gone: the wait of a
/// waiter on its predecessor, which should end as soon as etcd can tell.
///
/// The watch starts at the store's current revision, never at one read earlier: by the time
/// the watch is created other clients' writes may have moved the store past any revision read
/// before, and a watch starting behind the store is "unsynced", served only by etcd's 100 ms
/// catch-up loop. Even "from now" can start behind when a write commits while etcd creates
/// the watch; the hub then keeps a twin watch created right after it (see `hub.rs`). Once the
/// watch exists, one read covers everything before it: a key already gone (or recreated under
/// a newer revision) ends the wait at once.
///
/// # Errors
/// The etcd error of that read.
pub(crate) async fn gone(
    link: &Link,
    key: &[u8],
    create_revision: i64,
) -> Result<Watched, etcd_client::Error> {
    let mut watch = link.watches.watch(key, 0);
    if watch.next().await != Notice::Created {
        return Ok(Watched::Reread);
    }
    let mut client = link.client.clone();
    // A member that stops answering must not hold the waiter longer than one attempt: the
    // caller reads again (through a member that answers) after a `Reread`.
    let Some(now) = crate::retry::attempt(link, client.get(key, None)).await else {
        return Ok(Watched::Reread);
    };
    let now = now?;
    if now
        .kvs()
        .first()
        .is_none_or(|kv| kv.create_revision() != create_revision)
    {
        return Ok(Watched::Deleted);
    }
    Ok(outcome(watch.next().await))
}

/// Waits for a delete of `key` at or after `from_revision`: the loss watch of a hold.
///
/// Starting from a known revision means no delete can be missed without an extra read; the
/// delivery may take etcd's 100 ms catch-up loop when the store has moved on, which is fine
/// for learning of a loss (and saves a round trip on every acquisition).
pub(crate) async fn deleted_since(link: &Link, key: &[u8], from_revision: i64) -> Watched {
    let mut watch = link.watches.watch(key, from_revision);
    match watch.next().await {
        Notice::Created => outcome(watch.next().await),
        other => outcome(other),
    }
}

fn outcome(notice: Notice) -> Watched {
    match notice {
        Notice::Deleted => Watched::Deleted,
        Notice::Created | Notice::Reread => Watched::Reread,
    }
}
