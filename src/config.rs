//! Choosing a backend by configuration: one serde type, URLs, and the environment.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{DistributedLock, LockError, MemoryStore};

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
/// let from_toml: LockConfig = toml::from_str(r#"
///     backend = "memory"
///     store = "billing"
///     ttl_secs = 5
/// "#).map_err(|e| locksmith::LockError::config_with("bad TOML", e))?;
/// assert_eq!(from_url, from_toml);
/// # Ok::<(), locksmith::LockError>(())
/// ```
///
/// | URL | meaning |
/// |---|---|
/// | `memory://` | the process-wide memory store |
/// | `memory://NAME` | the process-wide memory store called NAME |
/// | `…?ttl=SECS` | the session TTL in seconds (default 10) |
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase")]
pub enum LockConfig {
    /// The in-process memory backend.
    Memory(MemoryConfig),
}

/// Settings of the memory backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    /// The named process-wide store to use; `None` for the default one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    /// The session TTL in seconds (10 by default, as Go's `concurrency.Session`).
    #[serde(default = "default_ttl_secs")]
    pub ttl_secs: u64,
}

fn default_ttl_secs() -> u64 {
    10
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
        let parts = UrlParts::split(url)?;
        match parts.scheme {
            "memory" => memory_from_url(&parts),
            other => Err(LockError::config(format!(
                "unknown backend {other:?} in {url:?}: use memory://"
            ))),
        }
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
    pub fn from_toml(text: &str) -> Result<LockConfig, LockError> {
        toml::from_str(text).map_err(|err| LockError::config_with("cannot read TOML config", err))
    }

    /// Reads a JSON document such as `{"backend": "memory"}`.
    ///
    /// # Errors
    /// [`LockError::InvalidConfig`] with the parser's message.
    pub fn from_json(text: &str) -> Result<LockConfig, LockError> {
        serde_json::from_str(text)
            .map_err(|err| LockError::config_with("cannot read JSON config", err))
    }

    /// Opens a new client session on the configured backend.
    ///
    /// # Errors
    /// [`LockError::InvalidConfig`] for unusable settings (a zero TTL), or the backend's error
    /// when it cannot be reached.
    ///
    /// # Cancel safety
    /// Cancel-safe: a session that was being opened is closed again.
    pub async fn connect(&self) -> Result<Arc<dyn DistributedLock>, LockError> {
        match self {
            LockConfig::Memory(config) => {
                let store = match &config.store {
                    Some(name) => MemoryStore::named(name),
                    None => MemoryStore::global(),
                };
                let ttl = Duration::from_secs(config.ttl_secs);
                Ok(Arc::new(store.connect_with_ttl(ttl)?))
            }
        }
    }
}

impl FromStr for LockConfig {
    type Err = LockError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        LockConfig::from_url(url)
    }
}

impl fmt::Display for LockConfig {
    /// The URL form, which [`from_url`](LockConfig::from_url) reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockConfig::Memory(config) => {
                write!(f, "memory://{}", config.store.as_deref().unwrap_or(""))?;
                if config.ttl_secs != default_ttl_secs() {
                    write!(f, "?ttl={}", config.ttl_secs)?;
                }
                Ok(())
            }
        }
    }
}

fn memory_from_url(parts: &UrlParts<'_>) -> Result<LockConfig, LockError> {
    if parts.path.is_some_and(|path| !path.is_empty()) {
        return Err(LockError::config(format!(
            "memory URL {:?} has a path: use memory://STORE",
            parts.url
        )));
    }
    let mut config = MemoryConfig {
        store: Some(parts.authority.to_owned()).filter(|name| !name.is_empty()),
        ..MemoryConfig::default()
    };
    for (key, value) in parts.query()? {
        match key {
            "ttl" => config.ttl_secs = parse_ttl(value)?,
            other => return Err(parts.unknown_parameter(other, "ttl")),
        }
    }
    Ok(LockConfig::Memory(config))
}

/// A TTL in whole seconds, greater than zero.
fn parse_ttl(value: &str) -> Result<u64, LockError> {
    match value.parse::<u64>() {
        Ok(0) => Err(LockError::config("ttl must be at least 1 second, got 0")),
        Ok(secs) => Ok(secs),
        Err(err) => Err(LockError::config_with(
            format!("ttl must be a whole number of seconds, got {value:?}"),
            err,
        )),
    }
}

/// `scheme://authority[/path][?query]`, split without interpretation.
struct UrlParts<'a> {
    url: &'a str,
    scheme: &'a str,
    authority: &'a str,
    path: Option<&'a str>,
    query: Option<&'a str>,
}

impl<'a> UrlParts<'a> {
    fn split(url: &'a str) -> Result<Self, LockError> {
        let Some((scheme, rest)) = url.trim().split_once("://") else {
            return Err(LockError::config(format!(
                "{url:?} is not a locksmith URL: expected memory://…"
            )));
        };
        let (rest, query) = match rest.split_once('?') {
            Some((rest, query)) => (rest, Some(query)),
            None => (rest, None),
        };
        let (authority, path) = match rest.split_once('/') {
            Some((authority, path)) => (authority, Some(path)),
            None => (rest, None),
        };
        Ok(UrlParts {
            url,
            scheme,
            authority,
            path,
            query,
        })
    }

    fn query(&self) -> Result<Vec<(&'a str, &'a str)>, LockError> {
        let Some(query) = self.query else {
            return Ok(Vec::new());
        };
        query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                pair.split_once('=').ok_or_else(|| {
                    LockError::config(format!(
                        "parameter {pair:?} in {:?} has no value: write {pair}=VALUE",
                        self.url
                    ))
                })
            })
            .collect()
    }

    fn unknown_parameter(&self, key: &str, known: &str) -> LockError {
        LockError::config(format!(
            "unknown parameter {key:?} in {:?}: known parameters are {known}",
            self.url
        ))
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

    #[tokio::test]
    async fn zero_ttl_from_serde_is_refused_at_connect() {
        let config = LockConfig::from_toml("backend = \"memory\"\nttl_secs = 0").unwrap();
        match config.connect().await {
            Err(LockError::InvalidConfig { .. }) => {}
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("zero TTL accepted"),
        }
    }
}
