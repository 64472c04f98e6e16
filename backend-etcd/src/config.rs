//! Settings of an etcd client session.

use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
use locksmith_api::LockError;
use serde::{Deserialize, Serialize};

/// How to reach etcd and how to keep the session.
///
/// ```
/// let config = locksmith_etcd::EtcdConfig {
///     endpoints: vec!["127.0.0.1:2379".into()],
///     namespace: "myapp/locks/".into(),
///     ..Default::default()
/// };
/// assert_eq!(config.ttl_secs, 10);
/// ```
///
/// Its `Debug` never shows the password (`password: Some("***")`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// `HOST:PORT`, `http://HOST:PORT` or `https://HOST:PORT`; at least one.
    pub endpoints: Vec<String>,
    /// Prefix of every lock key (`{namespace}{name}/{lease id}`); empty by default, which is
    /// where Go's `concurrency.Mutex` and `etcdctl lock` put their keys.
    #[serde(default)]
    pub namespace: String,
    /// Lease TTL in seconds (10 by default, as `etcdctl lock`; Go's `concurrency.NewSession`
    /// defaults to 60); at least 1.
    #[serde(default = "default_ttl_secs")]
    pub ttl_secs: u64,
    /// How long connecting and granting the lease may take, in milliseconds (5,000 by default).
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// User name, for etcd with authentication enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Password of `user`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// TLS settings; endpoints without a scheme then use `https://`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<EtcdTls>,
}

impl std::fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        /// Stands in for the password.
        struct Masked;
        impl std::fmt::Debug for Masked {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"***\"")
            }
        }
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("namespace", &self.namespace)
            .field("ttl_secs", &self.ttl_secs)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| Masked))
            .field("tls", &self.tls)
            .finish()
    }
}

/// TLS files, in PEM.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdTls {
    /// The CA certificate that signed the server's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// The client certificate, for mutual TLS (with `key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (with `cert`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
}

fn default_ttl_secs() -> u64 {
    10
}

fn default_connect_timeout_ms() -> u64 {
    5_000
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            endpoints: vec!["127.0.0.1:2379".to_owned()],
            namespace: String::new(),
            ttl_secs: default_ttl_secs(),
            connect_timeout_ms: default_connect_timeout_ms(),
            user: None,
            password: None,
            tls: None,
        }
    }
}

impl EtcdConfig {
    /// A config for these endpoints, with every other setting at its default.
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> Self {
        EtcdConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            ..EtcdConfig::default()
        }
    }

    /// The lease TTL.
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl_secs)
    }

    /// How long connecting may take.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// The endpoints, joined for messages.
    pub fn endpoint_list(&self) -> String {
        self.endpoints.join(",")
    }

    /// Checks the settings that need no network.
    ///
    /// # Errors
    /// [`LockError::InvalidConfig`] naming the bad setting.
    pub fn validate(&self) -> Result<(), LockError> {
        if self.endpoints.iter().all(|e| e.trim().is_empty()) {
            return Err(LockError::config(
                "etcd config names no endpoint: give at least one HOST:PORT",
            ));
        }
        if self.ttl_secs == 0 {
            return Err(LockError::config(
                "etcd ttl_secs must be at least 1 (the default is 10)",
            ));
        }
        if i64::try_from(self.ttl_secs).is_err() {
            return Err(LockError::config(format!(
                "etcd ttl_secs {} is too large",
                self.ttl_secs
            )));
        }
        if self.connect_timeout_ms == 0 {
            return Err(LockError::config(
                "etcd connect_timeout_ms must be at least 1 (the default is 5000)",
            ));
        }
        if self.user.is_some() != self.password.is_some() {
            return Err(LockError::config(
                "etcd user and password go together: give both or neither",
            ));
        }
        Ok(())
    }

    /// The endpoints in the form the client takes them.
    pub(crate) fn endpoint_urls(&self) -> Vec<String> {
        self.endpoints
            .iter()
            .map(|e| e.trim())
            .filter(|e| !e.is_empty())
            .map(|e| {
                if e.contains("://") {
                    e.to_owned()
                } else if self.tls.is_some() {
                    format!("https://{e}")
                } else {
                    format!("http://{e}")
                }
            })
            .collect()
    }

    /// The client options: timeouts, HTTP/2 keepalive, credentials and TLS.
    ///
    /// An auth token etcd refuses (it expires after `--auth-token-ttl` without use, 5 minutes
    /// by default, and a quiet hold uses none: keepalives need no token) is renewed and the
    /// request sent again, by the client for every request and by `retry.rs` on top.
    ///
    /// HTTP/2 pings go out after `max(TTL/6, 6 s)` without a frame from the server, and a ping
    /// unanswered for `TTL/6` (1 to 5 s) closes the connection. They go out only on
    /// connections with open streams: etcd answers pings more frequent than every 5 s (its
    /// `--grpc-keepalive-min-time`), or any ping on a connection without streams, with a
    /// GOAWAY after three of them, closing the connection and every watch on it. The lease's
    /// keepalive does not rely on these pings: it watches its own replies (see `session.rs`).
    pub(crate) fn connect_options(&self) -> Result<ConnectOptions, LockError> {
        let ttl = self.ttl();
        let ping_interval = (ttl / 6).max(Duration::from_secs(6));
        let ping_timeout = (ttl / 6).clamp(Duration::from_secs(1), Duration::from_secs(5));
        let mut options = ConnectOptions::new()
            .with_connect_timeout(self.connect_timeout())
            .with_keep_alive(ping_interval, ping_timeout)
            .with_keep_alive_while_idle(false)
            .with_require_leader(true)
            .with_auto_token_refresh(true);
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            options = options.with_user(user.clone(), password.clone());
        }
        if let Some(tls) = &self.tls {
            options = options.with_tls(tls.options()?);
        }
        Ok(options)
    }
}

impl EtcdTls {
    fn options(&self) -> Result<TlsOptions, LockError> {
        let mut options = TlsOptions::new();
        if let Some(ca) = &self.ca {
            options = options.ca_certificate(Certificate::from_pem(read_pem(ca, "CA")?));
        }
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                options = options.identity(Identity::from_pem(
                    read_pem(cert, "client certificate")?,
                    read_pem(key, "client key")?,
                ));
            }
            (None, None) => {}
            _ => {
                return Err(LockError::config(
                    "etcd TLS cert and key go together: give both or neither",
                ))
            }
        }
        Ok(options)
    }
}

fn read_pem(path: &PathBuf, what: &str) -> Result<Vec<u8>, LockError> {
    let pem = std::fs::read(path).map_err(|err| {
        LockError::config_with(
            format!("cannot read etcd TLS {what} {}", path.display()),
            err,
        )
    })?;
    if !pem.starts_with(b"-----BEGIN") && !String::from_utf8_lossy(&pem).contains("-----BEGIN") {
        return Err(LockError::config(format!(
            "etcd TLS {what} {} is not PEM",
            path.display()
        )));
    }
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_password() {
        let config = EtcdConfig {
            user: Some("alice".into()),
            password: Some("hunter2-secret".into()),
            ..EtcdConfig::default()
        };
        for shown in [format!("{config:?}"), format!("{config:#?}")] {
            assert!(!shown.contains("hunter2-secret"), "{shown}");
            assert!(
                shown.contains("alice") && shown.contains("\"***\""),
                "{shown}"
            );
        }
        assert!(format!("{:?}", EtcdConfig::default()).contains("password: None"));
    }

    #[test]
    fn validation_names_the_setting() {
        let ok = EtcdConfig::default();
        assert!(ok.validate().is_ok());
        for (config, says) in [
            (EtcdConfig::new(Vec::<String>::new()), "no endpoint"),
            (
                EtcdConfig {
                    ttl_secs: 0,
                    ..ok.clone()
                },
                "ttl_secs",
            ),
            (
                EtcdConfig {
                    ttl_secs: u64::MAX,
                    ..ok.clone()
                },
                "too large",
            ),
            (
                EtcdConfig {
                    connect_timeout_ms: 0,
                    ..ok.clone()
                },
                "connect_timeout_ms",
            ),
            (
                EtcdConfig {
                    user: Some("u".into()),
                    ..ok.clone()
                },
                "password",
            ),
        ] {
            let err = config.validate().unwrap_err();
            assert!(err.to_string().contains(says), "{err}");
        }
    }

    #[test]
    fn endpoints_get_a_scheme() {
        let mut config = EtcdConfig::new(["127.0.0.1:2379", "http://[::1]:2379", " "]);
        assert_eq!(
            config.endpoint_urls(),
            vec!["http://127.0.0.1:2379", "http://[::1]:2379"]
        );
        config.tls = Some(EtcdTls::default());
        assert_eq!(config.endpoint_urls()[0], "https://127.0.0.1:2379");
    }

    #[test]
    fn missing_tls_files_are_config_errors() {
        let tls = EtcdTls {
            ca: Some("/nonexistent/ca.pem".into()),
            ..EtcdTls::default()
        };
        let err = tls.options().unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }

    #[test]
    fn serde_defaults() {
        let config: EtcdConfig =
            serde_json::from_str(r#"{"endpoints":["127.0.0.1:2379"]}"#).unwrap();
        assert_eq!(config, EtcdConfig::default());
    }
}
