//! Waiting for a key to be deleted.

use etcd_client::{Client, EventType, WatchOptions};

/// How a wait for a delete ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Watched {
    /// The key was deleted.
    Deleted,
    /// The watch could not go on (compaction, a broken stream, a cancelled watch): read the
    /// state again and decide.
    Reread,
}

/// Waits until `key` is deleted at or after `from_revision`.
///
/// Start from the revision after the one the caller read the key at: that revision is not yet
/// reached, so the server delivers the delete as soon as it happens, where a watch from an
/// already-passed revision starts "unsynced" and waits for etcd's 100 ms catch-up loop.
///
/// # Errors
/// The etcd error when the watch cannot be opened.
pub(crate) async fn deleted(
    client: &Client,
    key: &str,
    from_revision: i64,
) -> Result<Watched, etcd_client::Error> {
    let mut client = client.clone();
    let options = WatchOptions::new().with_start_revision(from_revision);
    let mut stream = client.watch(key, Some(options)).await?;
    // If the delete raced ahead of the watch's creation, the watch starts behind the store and
    // etcd would deliver it only from its 100 ms catch-up loop: look once, now that the watch
    // exists, so nothing can fall between the look and the watch.
    if client.get(key, None).await?.kvs().is_empty() {
        return Ok(Watched::Deleted);
    }
    loop {
        let Some(reply) = stream.message().await? else {
            return Ok(Watched::Reread);
        };
        if reply.compact_revision() > 0 || reply.canceled() {
            return Ok(Watched::Reread);
        }
        if reply
            .events()
            .iter()
            .any(|event| event.event_type() == EventType::Delete)
        {
            return Ok(Watched::Deleted);
        }
    }
}
