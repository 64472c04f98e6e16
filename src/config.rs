//! Choosing a backend by configuration: one serde type, URLs, and the environment.

use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{Coordination, DistributedLock, LockError};
#[cfg(feature = "etcd")]
use crate::{EtcdConfig, EtcdLock};
#[cfg(feature = "memory")]
use crate::{MemoryLock, MemoryStore};

mod url;
pub use self::url::redact_url;

/// The environment variable [`LockConfig::from_env`] reads.
pub const URL_ENV: &str = "LOCKSMITH_URL";

/// Which backend to use, and how; every [`connect`](LockConfig::connect) opens a new client
/// session on it.
///
/// Read it from a URL ([`from_url`](LockConfig::from_url), [`FromStr`]), from the
/// `LOCKSMITH_URL` environment variable ([`from_env`](LockConfig::from_env)), or with serde
/// from TOML, JSON or any other format, tagged by `backend`:
///
/// ```
/// use locksmith::LockConfig;
///
/// let from_url: LockConfig = "memory://billing?ttl=5".parse()?;
/// # #[cfg(feature = "config-files")] {
/// let from_toml = LockConfig::from_toml(r#"
///     backend = "memory"
///     store = "billing"
///     ttl_secs = 5
/// "#)?;
/// assert_eq!(from_url, from_toml);
/// # }
/// # Ok::<(), locksmith::LockError>(())
/// ```
///
/// | URL | meaning |
/// |---|---|
/// | `memory://` | the process-wide memory store |
/// | `memory://NAME` | the process-wide memory store called NAME |
/// | `etcd://HOST:PORT[,HOST:PORT…]/[NAMESPACE]` | etcd at these endpoints; keys under NAMESPACE |
/// | `…?ttl=SECS` | the session TTL in seconds (default 10; memory: at most 9,000,000,000) |
/// | `etcd://…?connect_timeout_ms=MS` | how long connecting may take (default 5000) |
/// | `etcd://…?user=U&password=P` | etcd credentials |
/// | `etcd://…?ca=PATH&cert=PATH&key=PATH` | TLS files (PEM); endpoints then use https |
///
/// The store name, the namespace and every query value are percent-decoded (`password=a%26b`
/// is `a&b`; `+` is a plus, a space is `%20`), and [`Display`](std::fmt::Display) prints the
/// URL percent-encoded, so that it reads back to the same config, except that the password
/// is printed as `***`. Neither `Display`, `Debug` nor any error message shows a password:
/// a message that quotes a URL quotes it [`redact_url`]ed.
///
/// [`from_toml`](LockConfig::from_toml) and [`from_json`](LockConfig::from_json) need the
/// `config-files` feature (on by default); without it, `LockConfig` still implements serde's
/// traits for the parser of your choice.
///
/// In TOML: `backend = "etcd"`, `endpoints = ["127.0.0.1:2379"]`, `namespace`, `ttl_secs`,
/// `connect_timeout_ms`, `user`, `password`, and a `[tls]` table with `ca`, `cert`, `key`.
///
/// # Features
/// [`LockConfig::Etcd`] exists only with the `etcd` feature, since it carries the etcd
/// backend's [`EtcdConfig`]. Without it, an `etcd://` URL or a
/// `backend = "etcd"` document is read as [`LockError::InvalidConfig`] ("built without the
/// `etcd` feature"), so a program that reads configs compiles either way and says why at run
/// time. [`LockConfig::Memory`] always exists; without the `memory` feature
/// [`connect`](LockConfig::connect) refuses it the same way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase")]
#[cfg_attr(not(feature = "etcd"), serde(try_from = "ConfigDocument"))]
pub enum LockConfig {
    /// The in-process memory backend.
    Memory(MemoryConfig),
    /// The etcd backend.
    #[cfg(feature = "etcd")]
    #[cfg_attr(docsrs, doc(cfg(feature = "etcd")))]
    Etcd(EtcdConfig),
}

/// A config document as written, backends left out of this build included; read into a
/// [`LockConfig`] only to say which feature is missing.
#[cfg(not(feature = "etcd"))]
#[derive(Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase")]
enum ConfigDocument {
    Memory(MemoryConfig),
    Etcd(serde::de::IgnoredAny),
}

#[cfg(not(feature = "etcd"))]
impl TryFrom<ConfigDocument> for LockConfig {
    type Error = String;

    fn try_from(document: ConfigDocument) -> Result<Self, Self::Error> {
        match document {
            ConfigDocument::Memory(config) => Ok(LockConfig::Memory(config)),
            ConfigDocument::Etcd(_) => Err(missing_feature("etcd")),
        }
    }
}

/// A session of one of the backends this build has.
enum Opened {
    #[cfg(feature = "memory")]
    Memory(MemoryLock),
    #[cfg(feature = "etcd")]
    Etcd(EtcdLock),
}

/// The message for a backend this build was compiled without.
#[cfg(not(all(feature = "etcd", feature = "memory")))]
fn missing_feature(backend: &str) -> String {
    format!(
        "locksmith was built without the `{backend}` feature: enable it in Cargo.toml \
         (features = [\"{backend}\"]) to use {backend}:// configs"
    )
}

/// Settings of the memory backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    /// The named process-wide store to use; `None` for the default one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    /// The session TTL in seconds (10 by default, as the etcd backend's and `etcdctl lock`'s).
    #[serde(default = "default_ttl_secs")]
    pub ttl_secs: u64,
}

fn default_ttl_secs() -> u64 {
    10
}

impl MemoryConfig {
    #[cfg(feature = "memory")]
    fn connect(&self) -> Result<MemoryLock, LockError> {
        let store = match &self.store {
            Some(name) => MemoryStore::named(name),
            None => MemoryStore::global(),
        };
        let ttl = std::time::Duration::from_secs(self.ttl_secs);
        store.connect_with_ttl(ttl)
    }
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            store: None,
            ttl_secs: default_ttl_secs(),
        }
    }
}

impl Default for LockConfig {
    /// The process-wide memory store, `memory://`.
    fn default() -> Self {
        LockConfig::Memory(MemoryConfig::default())
    }
}

impl LockConfig {
    /// Reads a configuration URL such as `memory://` or `memory://tests?ttl=3`.
    ///
    /// # Errors
    /// [`LockError::InvalidConfig`] naming what is wrong: an unknown scheme, a bad parameter.
    pub fn from_url(url: &str) -> Result<LockConfig, LockError> {
        url::parse(url)
    }

    /// Reads the URL in the `LOCKSMITH_URL` environment variable.
    ///
    /// # Errors
    /// [`LockError::InvalidConfig`] when it is unset, not UTF-8, or not a valid URL.
    pub fn from_env() -> Result<LockConfig, LockError> {
        match std::env::var(URL_ENV) {
            Ok(url) => LockConfig::from_url(&url),
            Err(err) => Err(LockError::config_with(
                format!("{URL_ENV} must hold a locksmith URL such as memory://"),
                err,
            )),
        }
    }

    /// Reads a TOML document such as `backend = "memory"`.
    ///
    /// # Errors
    /// [`LockError::InvalidConfig`] with the parser's message.
    #[cfg(feature = "config-files")]
    #[cfg_attr(docsrs, doc(cfg(feature = "config-files")))]
    pub fn from_toml(text: &str) -> Result<LockConfig, LockError> {
        toml::from_str(text).map_err(|err| LockError::config_with("cannot read TOML config", err))
    }

    /// Reads a JSON document such as `{"backend": "memory"}`.
    ///
    /// # Errors
    /// [`LockError::InvalidConfig`] with the parser's message.
    #[cfg(feature = "config-files")]
    #[cfg_attr(docsrs, doc(cfg(feature = "config-files")))]
    pub fn from_json(text: &str) -> Result<LockConfig, LockError> {
        serde_json::from_str(text)
            .map_err(|err| LockError::config_with("cannot read JSON config", err))
    }

    /// Opens a new client session on the configured backend.
    ///
    /// # Errors
    /// [`LockError::InvalidConfig`] for unusable settings (a zero TTL) or a backend this build
    /// was compiled without, or the backend's error when it cannot be reached.
    ///
    /// # Cancel safety
    /// Cancel-safe: a session that was being opened is closed again.
    // Built without a backend, `open` always fails and what follows it is unreachable.
    #[cfg_attr(
        not(any(feature = "memory", feature = "etcd")),
        allow(unreachable_code)
    )]
    pub async fn connect(&self) -> Result<Arc<dyn DistributedLock>, LockError> {
        Ok(match self.open().await? {
            #[cfg(feature = "memory")]
            Opened::Memory(session) => Arc::new(session),
            #[cfg(feature = "etcd")]
            Opened::Etcd(session) => Arc::new(session),
        })
    }

    /// Opens a new client session on the configured backend offering every primitive: locks
    /// ([`DistributedLock`]), leader election ([`LeaderElection`](crate::LeaderElection)),
    /// reader-writer locks ([`DistributedRwLock`](crate::DistributedRwLock)) and semaphores
    /// ([`DistributedSemaphore`](crate::DistributedSemaphore)).
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let session = locksmith::LockConfig::from_url("memory://docs-coordination")?
    ///     .connect_coordination()
    ///     .await?;
    /// let leading = session.campaign("scheduler", b"host-a").await?;
    /// assert_eq!(session.leader("scheduler").await?, Some(leading.info()));
    /// let guard = session.lock("reports").await?;
    /// guard.unlock().await?;
    /// leading.resign().await?;
    /// # Ok::<(), locksmith::LockError>(())
    /// # }).unwrap();
    /// ```
    ///
    /// # Errors
    /// As [`connect`](Self::connect).
    ///
    /// # Cancel safety
    /// As [`connect`](Self::connect).
    // Built without a backend, `open` always fails and what follows it is unreachable.
    #[cfg_attr(
        not(any(feature = "memory", feature = "etcd")),
        allow(unreachable_code)
    )]
    pub async fn connect_coordination(&self) -> Result<Arc<dyn Coordination>, LockError> {
        Ok(match self.open().await? {
            #[cfg(feature = "memory")]
            Opened::Memory(session) => Arc::new(session),
            #[cfg(feature = "etcd")]
            Opened::Etcd(session) => Arc::new(session),
        })
    }

    /// Opens a session of the configured backend.
    async fn open(&self) -> Result<Opened, LockError> {
        match self {
            #[cfg(feature = "memory")]
            LockConfig::Memory(config) => Ok(Opened::Memory(config.connect()?)),
            #[cfg(not(feature = "memory"))]
            LockConfig::Memory(_) => Err(LockError::config(missing_feature("memory"))),
            #[cfg(feature = "etcd")]
            LockConfig::Etcd(config) => Ok(Opened::Etcd(EtcdLock::connect(config).await?)),
        }
    }
}

impl FromStr for LockConfig {
    type Err = LockError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        LockConfig::from_url(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory(store: Option<&str>, ttl_secs: u64) -> LockConfig {
        LockConfig::Memory(MemoryConfig {
            store: store.map(str::to_owned),
            ttl_secs,
        })
    }

    #[test]
    fn memory_urls() {
        assert_eq!(LockConfig::from_url("memory://").unwrap(), memory(None, 10));
        assert_eq!(
            LockConfig::from_url("memory://tests?ttl=3").unwrap(),
            memory(Some("tests"), 3)
        );
        for url in ["memory://", "memory://tests", "memory://x?ttl=3"] {
            let config = LockConfig::from_url(url).unwrap();
            assert_eq!(config.to_string(), url);
            assert_eq!(LockConfig::from_url(&config.to_string()).unwrap(), config);
        }
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        for (url, says) in [
            ("", "not a locksmith URL"),
            ("memory:", "not a locksmith URL"),
            ("redis://x", "unknown backend \"redis\""),
            ("memory://?ttl=0", "at least 1 second"),
            ("memory://?ttl=ten", "whole number of seconds"),
            ("memory://?ttl", "has no value"),
            ("memory://?color=red", "unknown parameter \"color\""),
            ("memory://a/b", "has a path"),
        ] {
            match LockConfig::from_url(url) {
                Err(err @ LockError::InvalidConfig { .. }) => {
                    assert!(err.to_string().contains(says), "{url:?}: {err}")
                }
                other => panic!("{url:?}: {other:?}"),
            }
        }
    }

    #[cfg(feature = "etcd")]
    #[test]
    fn etcd_urls() {
        let config =
            LockConfig::from_url("etcd://127.0.0.1:2379,[::1]:2380/myapp/locks/?ttl=3").unwrap();
        let LockConfig::Etcd(etcd) = &config else {
            panic!("{config:?}")
        };
        assert_eq!(etcd.endpoints, vec!["127.0.0.1:2379", "[::1]:2380"]);
        assert_eq!(etcd.namespace, "myapp/locks/");
        assert_eq!(etcd.ttl_secs, 3);
        assert_eq!(LockConfig::from_url(&config.to_string()).unwrap(), config);

        let bare = LockConfig::from_url("etcd://h:1").unwrap();
        assert_eq!(bare, LockConfig::Etcd(EtcdConfig::new(["h:1"])));
        assert_eq!(bare.to_string(), "etcd://h:1/");

        let full = LockConfig::from_url(
            "etcd://h:1/?connect_timeout_ms=250&user=u&password=p&ca=/c.pem&cert=/x.pem&key=/k.pem",
        )
        .unwrap();
        let LockConfig::Etcd(full) = full else {
            panic!()
        };
        assert_eq!(full.connect_timeout_ms, 250);
        assert_eq!(
            (full.user.as_deref(), full.password.as_deref()),
            (Some("u"), Some("p"))
        );
        let tls = full.tls.clone().unwrap();
        assert_eq!(tls.ca.as_deref(), Some(std::path::Path::new("/c.pem")));
        let shown = LockConfig::Etcd(full).to_string();
        assert!(
            shown.contains("password=***") && !shown.contains("password=p"),
            "{shown}"
        );
    }

    #[cfg(feature = "etcd")]
    #[test]
    fn bad_etcd_urls_say_what_is_wrong() {
        for (url, says) in [
            ("etcd://", "names no endpoint"),
            ("etcd://,/", "names no endpoint"),
            ("etcd://h:1/?ttl=0", "at least 1 second"),
            ("etcd://h:1/?connect_timeout_ms=soon", "milliseconds"),
            ("etcd://h:1/?tls=yes", "unknown parameter \"tls\""),
        ] {
            match LockConfig::from_url(url) {
                Err(err @ LockError::InvalidConfig { .. }) => {
                    assert!(err.to_string().contains(says), "{url:?}: {err}")
                }
                other => panic!("{url:?}: {other:?}"),
            }
        }
    }

    #[cfg(feature = "config-files")]
    #[cfg(feature = "etcd")]
    #[test]
    fn etcd_from_toml_and_json() {
        let toml = LockConfig::from_toml(
            "backend = \"etcd\"\nendpoints = [\"127.0.0.1:2379\"]\nnamespace = \"app/\"\nttl_secs = 5\n[tls]\nca = \"/ca.pem\"\n",
        )
        .unwrap();
        let LockConfig::Etcd(etcd) = &toml else {
            panic!("{toml:?}")
        };
        assert_eq!((etcd.namespace.as_str(), etcd.ttl_secs), ("app/", 5));
        assert!(etcd.tls.is_some());
        let json = LockConfig::from_json(&serde_json::to_string(&toml).unwrap()).unwrap();
        assert_eq!(json, toml);
        let unknown = LockConfig::from_json(r#"{"backend":"etcd","endpoints":[],"ttl":3}"#);
        assert!(unknown.is_err());
    }

    #[cfg(feature = "etcd")]
    #[tokio::test]
    async fn unreachable_etcd_fails_within_the_connect_timeout() {
        let config = LockConfig::from_url("etcd://127.0.0.1:1/?connect_timeout_ms=300").unwrap();
        let started = std::time::Instant::now();
        match config.connect().await {
            Err(err @ LockError::Unavailable { .. }) => {
                assert!(err.to_string().contains("127.0.0.1:1"), "{err}")
            }
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("connected to nothing"),
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }

    #[cfg(feature = "config-files")]
    #[test]
    fn serde_forms() {
        let toml = LockConfig::from_toml("backend = \"memory\"").unwrap();
        assert_eq!(toml, memory(None, 10));
        let json = LockConfig::from_json(r#"{"backend":"memory","store":"s","ttl_secs":4}"#);
        assert_eq!(json.unwrap(), memory(Some("s"), 4));
        let unknown = LockConfig::from_json(r#"{"backend":"memory","colour":"red"}"#);
        assert!(unknown.unwrap_err().to_string().contains("JSON"));
        let no_backend = LockConfig::from_toml("store = \"x\"");
        assert!(no_backend.is_err());
        let round_trip = serde_json::to_string(&memory(Some("s"), 4)).unwrap();
        assert_eq!(
            LockConfig::from_json(&round_trip).unwrap(),
            memory(Some("s"), 4)
        );
    }

    #[cfg(feature = "config-files")]
    #[cfg(feature = "memory")]
    #[tokio::test]
    async fn zero_ttl_from_serde_is_refused_at_connect() {
        let config = LockConfig::from_toml("backend = \"memory\"\nttl_secs = 0").unwrap();
        match config.connect().await {
            Err(LockError::InvalidConfig { .. }) => {}
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("zero TTL accepted"),
        }
    }

    /// A TTL past the memory backend's maximum is refused at connect (it used to panic the
    /// session's keepalive task).
    #[cfg(feature = "memory")]
    #[tokio::test]
    async fn overflowing_memory_ttl_is_refused_at_connect() {
        let config = LockConfig::from_url("memory://?ttl=18446744073709551615").unwrap();
        match config.connect().await {
            Err(err @ LockError::InvalidConfig { .. }) => {
                assert!(err.to_string().contains("too long"), "{err}")
            }
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("TTL of u64::MAX seconds accepted"),
        }
    }

    #[cfg(not(feature = "etcd"))]
    #[test]
    fn etcd_configs_need_the_etcd_feature() {
        match LockConfig::from_url("etcd://127.0.0.1:2379/") {
            Err(err @ LockError::InvalidConfig { .. }) => {
                let text = format!("{err}: {:?}", std::error::Error::source(&err));
                assert!(text.contains("without the `etcd` feature"), "{text}");
            }
            other => panic!("{other:?}"),
        }
        // Through serde, whatever the format (and so through `from_toml` and `from_json`).
        let from_toml = toml::from_str::<LockConfig>("backend = \"etcd\"\nendpoints = [\"h:1\"]");
        let from_json =
            serde_json::from_str::<LockConfig>(r#"{"backend":"etcd","endpoints":["h:1"]}"#);
        for text in [
            from_toml.unwrap_err().to_string(),
            from_json.unwrap_err().to_string(),
        ] {
            assert!(text.contains("without the `etcd` feature"), "{text}");
        }
        assert_eq!(
            toml::from_str::<LockConfig>("backend = \"memory\"").unwrap(),
            memory(None, 10)
        );
    }

    #[cfg(not(feature = "memory"))]
    #[tokio::test]
    async fn memory_configs_need_the_memory_feature() {
        match LockConfig::default().connect().await {
            Err(err @ LockError::InvalidConfig { .. }) => {
                assert!(err.to_string().contains("`memory` feature"), "{err}")
            }
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("connected without the memory backend"),
        }
    }
}
