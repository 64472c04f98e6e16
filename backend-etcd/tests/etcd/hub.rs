//! The session's watch stream against etcd authentication and odd keys (issue 10, findings 6
//! and 7): a waiter on a refused stream, or behind a key that is not UTF-8, does not spin.

use crate::common;

use std::time::Duration;

use common::{fresh_namespace, GUARD};
use locksmith_api::DistributedLock;
use locksmith_etcd::etcd_client::Client;
use locksmith_etcd::testing::{self, EtcdServer};
use locksmith_etcd::{EtcdConfig, EtcdLock};

/// How many RPCs (keepalives aside) a waiting session may start in the measured 2 s: a settled
/// waiter starts none; the refused-stream loop before the fix started 2 (its backoff at 1 s).
const A_HANDFUL: f64 = 1.0;

/// RPCs started on the server, keepalives left out (`grpc_server_started_total`).
fn requests_started(server: &EtcdServer) -> f64 {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(server.endpoint()).expect("metrics");
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").expect("metrics request");
    let mut body = String::new();
    stream.read_to_string(&mut body).expect("metrics body");
    body.lines()
        .filter(|line| line.starts_with("grpc_server_started_total{"))
        .filter(|line| !line.contains("LeaseKeepAlive"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn count_over(server: &EtcdServer, period: Duration) -> f64 {
    let before = requests_started(server);
    tokio::time::sleep(period).await;
    requests_started(server) - before
}

async fn connect(config: &EtcdConfig) -> EtcdLock {
    tokio::time::timeout(GUARD, EtcdLock::connect(config))
        .await
        .expect("connect hung")
        .expect("connect")
}

/// `--auth-token-ttl 2` and a quiet 5 s: every stream's token has expired, so a new watch on
/// an old stream is refused. The waiter that needs one (its predecessor withdrew) must reopen
/// its stream with a fresh token, not re-read and re-watch in a loop; and it acquires once the
/// holder goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_on_a_stream_with_an_expired_token_does_not_spin() {
    let server = EtcdServer::start_with(&["--auth-token-ttl", "2"]).expect("etcd");
    testing::enable_auth(&[server.endpoint()], "locker", "pw")
        .await
        .expect("auth");
    let config = EtcdConfig {
        namespace: fresh_namespace(),
        user: Some("locker".into()),
        password: Some("pw".into()),
        ..EtcdConfig::new([server.endpoint()])
    };
    let (holder, first, second) = (
        connect(&config).await,
        connect(&config).await,
        connect(&config).await,
    );
    let guard = holder.lock("n").await.expect("lock");
    // Its session stays: only the lock call is dropped, which withdraws the key.
    let withdrawn = {
        let first = first.clone();
        tokio::spawn(async move { first.lock("n").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let waiting = tokio::spawn(async move { second.lock("n").await.map(|g| (g, second)) });
    tokio::time::sleep(Duration::from_secs(5)).await;

    // The first waiter leaves: the second must watch the holder now, on a stale stream.
    withdrawn.abort();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = count_over(&server, Duration::from_secs(2)).await;
    eprintln!("requests started in 2 s: {started}");
    assert!(started <= A_HANDFUL, "{started} requests in 2 s");
    tokio::time::timeout(GUARD, guard.unlock())
        .await
        .expect("unlock hung")
        .expect("unlock");
    let (guard, _second) = tokio::time::timeout(Duration::from_secs(3), waiting)
        .await
        .expect("the waiter did not get the lock within 3 s")
        .expect("waiter task")
        .expect("waiter lock");
    assert!(!guard.is_lost());
}

/// A key under the lock's prefix whose name is not UTF-8, older than the waiter: the waiter
/// watches it (as bytes), waits without spinning, and acquires once it is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_key_that_is_not_utf8_is_waited_for_without_spinning() {
    let server = EtcdServer::start().expect("etcd");
    let config = EtcdConfig {
        namespace: fresh_namespace(),
        ..EtcdConfig::new([server.endpoint()])
    };
    let mut raw = Client::connect([server.client_url()], None)
        .await
        .expect("raw");
    let mut foreign = format!("{}n/", config.namespace).into_bytes();
    foreign.extend_from_slice(&[0xff, 0xfe, b'x']);
    raw.put(foreign.clone(), "", None).await.expect("put");

    let session = connect(&config).await;
    let waiting = tokio::spawn(async move { session.lock("n").await.map(|g| (g, session)) });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = count_over(&server, Duration::from_secs(2)).await;
    eprintln!("requests started in 2 s: {started}");
    assert!(started <= A_HANDFUL, "{started} requests in 2 s");
    assert!(!waiting.is_finished());

    raw.delete(foreign, None).await.expect("delete");
    let (guard, _session) = tokio::time::timeout(Duration::from_secs(3), waiting)
        .await
        .expect("the waiter did not get the lock within 3 s")
        .expect("waiter task")
        .expect("waiter lock");
    assert!(!guard.is_lost());
}
