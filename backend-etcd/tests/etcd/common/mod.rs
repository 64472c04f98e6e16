//! Shared test set-up: a real etcd per test, killed and removed when the test ends.

#![allow(dead_code)]

pub mod hold_proxy;
pub mod observe;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use locksmith_api::conformance::{
    CoordinationFactory, RwLockFactory, RwLockSession, SemaphoreFactory, SemaphoreSession,
    SessionFactory,
};
use locksmith_api::{Coordination, DistributedLock, LockError, LockGuard};
use locksmith_etcd::etcd_client::{Client, GetOptions};
use locksmith_etcd::testing::EtcdServer;
use locksmith_etcd::{EtcdConfig, EtcdLock};
use tokio::task::JoinHandle;

/// The longest one step of a test may take.
pub const GUARD: Duration = Duration::from_secs(20);

/// A namespace no other test uses.
pub fn fresh_namespace() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "test-{}-{}/",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// An etcd of the test's own, and sessions on it under a namespace.
pub struct Etcd {
    pub server: EtcdServer,
    pub config: EtcdConfig,
}

impl Etcd {
    pub fn new() -> Self {
        let server = match EtcdServer::start() {
            Ok(server) => server,
            Err(err) => panic!("cannot start etcd: {err}"),
        };
        let config = EtcdConfig {
            namespace: fresh_namespace(),
            ..EtcdConfig::new([server.endpoint()])
        };
        Etcd { server, config }
    }

    pub fn with_ttl(ttl_secs: u64) -> Self {
        let mut etcd = Etcd::new();
        etcd.config.ttl_secs = ttl_secs;
        etcd
    }

    pub async fn session(&self) -> EtcdLock {
        match tokio::time::timeout(GUARD, EtcdLock::connect(&self.config)).await {
            Ok(Ok(session)) => session,
            Ok(Err(err)) => panic!("connect failed: {err}"),
            Err(_) => panic!("connect hung"),
        }
    }

    /// Waits until the store shows `entries` keys (holder plus waiters) for `name`.
    pub async fn wait_queued(&self, name: &str, entries: usize) {
        let queued = async {
            while SessionFactory::queue_len(self, name).await < entries {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        };
        if tokio::time::timeout(GUARD, queued).await.is_err() {
            panic!("{name:?} never had {entries} entries in the queue");
        }
    }

    /// Waits until etcd has `count` watchers (a waiter's wait, a holder's loss watch), then a
    /// moment longer for the read that follows a waiter's watch (no signal tells it is done).
    pub async fn watches_settle(&self, count: f64) {
        let watching = async {
            while self
                .server
                .metric("etcd_debugging_mvcc_watcher_total")
                .unwrap_or(0.0)
                < count
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        if tokio::time::timeout(GUARD, watching).await.is_err() {
            panic!("etcd never had {count} watchers");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    /// Spawns `session.lock(name)` and returns once it is queued behind one holder.
    pub async fn queued_waiter(
        &self,
        session: &EtcdLock,
        name: &str,
    ) -> JoinHandle<Result<LockGuard, LockError>> {
        let (session, owned) = (session.clone(), name.to_owned());
        let waiter = tokio::spawn(async move { session.lock(&owned).await });
        self.wait_queued(name, 2).await;
        waiter
    }

    /// Requests etcd has served so far: transactions and ranges.
    pub fn requests(&self) -> f64 {
        self.server.metric("etcd_mvcc_txn_total").unwrap()
            + self.server.metric("etcd_mvcc_range_total").unwrap()
    }

    /// A session whose connections go through a TCP proxy of its own (to lose replies, cut
    /// connections), with the proxy.
    pub async fn proxied(&self) -> (locksmith_etcd::testing::TcpProxy, EtcdLock) {
        let proxy = locksmith_etcd::testing::TcpProxy::start(&self.server.endpoint())
            .await
            .unwrap();
        let config = EtcdConfig {
            endpoints: vec![proxy.endpoint()],
            ..self.config.clone()
        };
        let session = within("connect through the proxy", EtcdLock::connect(&config))
            .await
            .unwrap();
        (proxy, session)
    }

    /// A plain etcd client, as an operator or another program would use.
    pub async fn raw(&self) -> Client {
        Client::connect([self.server.client_url()], None)
            .await
            .unwrap()
    }

    /// Every key under `{namespace}{name}/`.
    pub async fn keys(&self, name: &str) -> Vec<String> {
        let prefix = format!("{}{}/", self.config.namespace, name);
        let reply = self
            .raw()
            .await
            .get(
                prefix,
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await
            .unwrap();
        reply
            .kvs()
            .iter()
            .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
            .collect()
    }
}

/// Only the direct children of `{namespace}{name}/`: the waiters and holder of that lock.
fn direct_children(keys: Vec<String>, prefix: &str) -> usize {
    keys.iter()
        .filter(|k| {
            k.strip_prefix(prefix)
                .is_some_and(|rest| !rest.contains('/'))
        })
        .count()
}

#[locksmith_api::async_trait]
impl SessionFactory for Etcd {
    async fn connect(&self) -> Result<Arc<dyn DistributedLock>, LockError> {
        Ok(Arc::new(EtcdLock::connect(&self.config).await?))
    }

    async fn queue_len(&self, name: &str) -> usize {
        let prefix = format!("{}{}/", self.config.namespace, name);
        direct_children(self.keys(name).await, &prefix)
    }
}

#[locksmith_api::async_trait]
impl CoordinationFactory for Etcd {
    async fn connect(&self) -> Result<Arc<dyn Coordination>, LockError> {
        Ok(Arc::new(EtcdLock::connect(&self.config).await?))
    }

    async fn queue_len(&self, name: &str) -> usize {
        SessionFactory::queue_len(self, name).await
    }
}

#[locksmith_api::async_trait]
impl RwLockFactory for Etcd {
    async fn connect(&self) -> Result<Arc<dyn RwLockSession>, LockError> {
        Ok(Arc::new(EtcdLock::connect(&self.config).await?))
    }

    /// Readers and writers: the direct children of `{name}/read/` and `{name}/write/`.
    async fn queue_len(&self, name: &str) -> usize {
        let mut len = 0;
        for side in ["read", "write"] {
            let prefix = format!("{}{}/{side}/", self.config.namespace, name);
            len += direct_children(self.keys(&format!("{name}/{side}")).await, &prefix);
        }
        len
    }
}

#[locksmith_api::async_trait]
impl SemaphoreFactory for Etcd {
    async fn connect(&self) -> Result<Arc<dyn SemaphoreSession>, LockError> {
        Ok(Arc::new(EtcdLock::connect(&self.config).await?))
    }

    /// The keys under the semaphore's own prefix.
    async fn queue_len(&self, name: &str) -> usize {
        let escaped = name.replace('%', "%25").replace('/', "%2F");
        let prefix = format!("{}\u{1f}semaphore/{escaped}/", self.config.namespace);
        let mut client = self.raw().await;
        match client
            .get(
                prefix,
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
        {
            Ok(reply) => usize::try_from(reply.count()).unwrap_or(usize::MAX),
            Err(err) => panic!("cannot read the semaphore's keys: {err}"),
        }
    }
}

/// `fut`, or a panic naming `what` after [`GUARD`].
pub async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(GUARD, fut).await {
        Ok(value) => value,
        Err(_) => panic!("{what} took longer than {GUARD:?}"),
    }
}

/// Waits until the keys of `name` are exactly `expected` (sorted).
pub async fn keys_become(etcd: &Etcd, name: &str, mut expected: Vec<String>) {
    expected.sort();
    within("the queue to settle", async {
        loop {
            let mut keys = etcd.keys(name).await;
            keys.sort();
            if keys == expected {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}
