//! etcd with authentication and short-lived auth tokens: a session outlives its token.

use std::time::{Duration, Instant};

use locksmith_api::DistributedLock;
use locksmith_etcd::etcd_client::TxnOp;
use locksmith_etcd::testing::{self, EtcdServer};
use locksmith_etcd::{EtcdConfig, EtcdLock};

/// The longest one step of a test may take.
const GUARD: Duration = Duration::from_secs(20);
/// How soon a waiter must get a lock after its release, token expiry or not.
const HANDOFF: Duration = Duration::from_secs(3);
/// Longer than the tokens live (`--auth-token-ttl 2`).
const QUIET: Duration = Duration::from_secs(5);

/// etcd with auth on and tokens that expire after 2 s without use, and a config for a user.
async fn etcd_with_short_tokens() -> (EtcdServer, EtcdConfig) {
    let server = EtcdServer::start_with(&["--auth-token-ttl", "2"]).unwrap();
    testing::enable_auth(&[server.endpoint()], "locker", "s3cret")
        .await
        .unwrap();
    let config = EtcdConfig {
        user: Some("locker".into()),
        password: Some("s3cret".into()),
        namespace: "auth/".into(),
        ..EtcdConfig::new([server.endpoint()])
    };
    (server, config)
}

async fn connect(config: &EtcdConfig) -> EtcdLock {
    tokio::time::timeout(GUARD, EtcdLock::connect(config))
        .await
        .unwrap()
        .unwrap()
}

/// A hold quiet for longer than the token lives: the unlock works, and the session that was
/// already waiting gets the lock at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_hold_outlives_its_token() {
    let (_server, config) = etcd_with_short_tokens().await;
    let (holder, waiter) = (connect(&config).await, connect(&config).await);
    let held = holder.lock("quiet").await.unwrap();
    let waiting = {
        let waiter = waiter.clone();
        tokio::spawn(async move {
            let guard = waiter.lock("quiet").await?;
            Ok::<_, locksmith_api::LockError>((guard, Instant::now()))
        })
    };
    tokio::time::sleep(QUIET).await;
    assert!(!held.is_lost(), "the hold ended while quiet");
    let write = [TxnOp::put("auth/data", "x", None)];
    let fenced = tokio::time::timeout(GUARD, holder.txn_if_owner(&held, [], write))
        .await
        .unwrap()
        .unwrap();
    assert!(
        fenced.succeeded(),
        "the fenced write of the holder was refused"
    );
    let released = Instant::now();
    tokio::time::timeout(GUARD, held.unlock())
        .await
        .unwrap()
        .unwrap();
    let (next, acquired) = tokio::time::timeout(GUARD, waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let handoff = acquired - released;
    assert!(
        handoff < HANDOFF,
        "the waiter got the lock {handoff:?} after the release"
    );
    tokio::time::timeout(GUARD, next.unlock())
        .await
        .unwrap()
        .unwrap();
}

/// Sessions quiet for longer than the token lives still take locks: try_lock, lock, and a
/// lock another session waits for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_sessions_lock_after_token_expiry() {
    let (_server, config) = etcd_with_short_tokens().await;
    let (first, second) = (connect(&config).await, connect(&config).await);
    tokio::time::sleep(QUIET).await;

    let tried = tokio::time::timeout(GUARD, first.try_lock("after"))
        .await
        .unwrap()
        .unwrap();
    let tried = tried.expect("try_lock of a free lock after a quiet period");
    let refused = tokio::time::timeout(GUARD, second.try_lock("after"))
        .await
        .unwrap()
        .unwrap();
    assert!(refused.is_none(), "try_lock took a held lock");
    let waiting = {
        let second = second.clone();
        tokio::spawn(async move { second.lock("after").await })
    };
    let released = Instant::now();
    tokio::time::timeout(GUARD, tried.unlock())
        .await
        .unwrap()
        .unwrap();
    let next = tokio::time::timeout(HANDOFF + (Instant::now() - released), waiting)
        .await
        .expect("the next session waited too long")
        .unwrap()
        .unwrap();
    next.unlock().await.unwrap();

    let locked = tokio::time::timeout(GUARD, first.lock("other"))
        .await
        .unwrap()
        .unwrap();
    locked.unlock().await.unwrap();
}

/// A session closed after a quiet period revokes its lease (which needs a valid token): its
/// lock passes on at once, not after the TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_after_quiet_passes_the_lock_on() {
    let (_server, config) = etcd_with_short_tokens().await;
    let (holder, waiter) = (connect(&config).await, connect(&config).await);
    let held = holder.lock("closed").await.unwrap();
    let waiting = {
        let waiter = waiter.clone();
        tokio::spawn(async move { waiter.lock("closed").await })
    };
    tokio::time::sleep(QUIET).await;
    tokio::time::timeout(GUARD, holder.close())
        .await
        .unwrap()
        .unwrap();
    assert!(held.is_lost());
    let next = tokio::time::timeout(HANDOFF, waiting)
        .await
        .expect("the lock did not pass on after close")
        .unwrap()
        .unwrap();
    next.unlock().await.unwrap();
}
