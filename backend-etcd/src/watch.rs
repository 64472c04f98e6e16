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

/// Waits until `key` is deleted at or after `from_revision`, on the session's shared stream.
///
/// Start from the revision after the one the caller read the key at: that revision is not yet
/// reached, so the server delivers the delete as soon as it happens, where a watch from an
/// already-passed revision starts "unsynced" and waits for etcd's 100 ms catch-up loop.
///
/// # Errors
/// The etcd error of the one read it makes.
pub(crate) async fn deleted(
    link: &Link,
    key: &str,
    from_revision: i64,
) -> Result<Watched, etcd_client::Error> {
    let mut watch = link.watches.watch(key, from_revision);
    if watch.next().await != Notice::Created {
        return Ok(Watched::Reread);
    }
    // If the delete raced ahead of the watch's creation, the watch starts behind the store and
    // etcd would deliver it only from its 100 ms catch-up loop: look once, now that the watch
    // exists, so nothing can fall between the look and the watch.
    let mut client = link.client.clone();
    if client.get(key, None).await?.kvs().is_empty() {
        return Ok(Watched::Deleted);
    }
    Ok(match watch.next().await {
        Notice::Deleted => Watched::Deleted,
        Notice::Created | Notice::Reread => Watched::Reread,
    })
}
