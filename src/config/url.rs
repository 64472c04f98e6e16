//! The URL form of a [`LockConfig`]: reading it (percent-decoded), printing it
//! (percent-encoded, password masked), and quoting it in messages without its secrets.

use std::fmt;

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use super::{default_ttl_secs, LockConfig, MemoryConfig};
use crate::LockError;
#[cfg(feature = "etcd")]
use crate::{EtcdConfig, EtcdTls};

/// What a printed URL writes as it is in a namespace or a query value: RFC 3986's unreserved
/// characters, `/` and `:`. Everything else (`%`, `&`, `=`, `?`, `#`, `+`, spaces, non-ASCII…)
/// is percent-encoded.
const VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/')
    .remove(b':');

/// A memory store name sits in the authority, where `/` would end it.
const STORE: &AsciiSet = &VALUE.add(b'/');

/// What a printed URL shows instead of a password.
pub(crate) const MASK: &str = "***";

/// Query parameters whose values are not secret, and so are quoted in messages as written.
const NOT_SECRET: [&str; 6] = ["ttl", "connect_timeout_ms", "user", "ca", "cert", "key"];

/// Reads `memory://…` and `etcd://…`.
pub(super) fn parse(url: &str) -> Result<LockConfig, LockError> {
    let parts = UrlParts::split(url)?;
    match parts.scheme {
        "memory" => memory_from_url(&parts),
        #[cfg(feature = "etcd")]
        "etcd" => etcd_from_url(&parts),
        #[cfg(not(feature = "etcd"))]
        "etcd" => Err(LockError::config(super::missing_feature("etcd"))),
        other => Err(LockError::config(format!(
            "unknown backend {other:?} in {:?}: use memory:// or etcd://",
            parts.shown
        ))),
    }
}

/// `url` as it may be quoted in a message or a log: the value of every query parameter that
/// may be secret (`password`, and any parameter not known to be harmless) and the password
/// of a `user:password@` in the authority are replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (url, None),
    };
    let authority_start = head.find("://").map_or(0, |at| at + 3);
    let authority_end = head[authority_start..]
        .find('/')
        .map_or(head.len(), |at| authority_start + at);
    let mut shown = String::with_capacity(url.len());
    match head[authority_start..authority_end].rfind('@') {
        Some(at) => {
            let userinfo = &head[authority_start..authority_start + at];
            shown.push_str(&head[..authority_start]);
            // A lone userinfo may be a token: all of it is masked.
            if let Some((user, _password)) = userinfo.split_once(':') {
                shown.push_str(user);
                shown.push(':');
            }
            shown.push_str(MASK);
            shown.push_str(&head[authority_start + at..]);
        }
        None => shown.push_str(head),
    }
    if let Some(query) = query {
        shown.push('?');
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if !NOT_SECRET.contains(&key) => format!("{key}={MASK}"),
                _ => pair.to_owned(),
            })
            .collect();
        shown.push_str(&pairs.join("&"));
    }
    shown
}

impl fmt::Display for LockConfig {
    /// The URL form, which [`from_url`](LockConfig::from_url) reads back: percent-encoded,
    /// with the password shown as `***`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockConfig::Memory(config) => {
                let store = config.store.as_deref().unwrap_or("");
                write!(f, "memory://{}", utf8_percent_encode(store, STORE))?;
                if config.ttl_secs != default_ttl_secs() {
                    write!(f, "?ttl={}", config.ttl_secs)?;
                }
                Ok(())
            }
            #[cfg(feature = "etcd")]
            LockConfig::Etcd(config) => write_etcd(f, config),
        }
    }
}

#[cfg(feature = "etcd")]
fn write_etcd(f: &mut fmt::Formatter<'_>, config: &EtcdConfig) -> fmt::Result {
    let namespace = utf8_percent_encode(&config.namespace, VALUE);
    write!(f, "etcd://{}/{namespace}", config.endpoints.join(","))?;
    let mut params = Vec::new();
    if config.ttl_secs != default_ttl_secs() {
        params.push(format!("ttl={}", config.ttl_secs));
    }
    if config.connect_timeout_ms != EtcdConfig::default().connect_timeout_ms {
        params.push(format!("connect_timeout_ms={}", config.connect_timeout_ms));
    }
    if let Some(user) = &config.user {
        params.push(format!("user={}", utf8_percent_encode(user, VALUE)));
    }
    if config.password.is_some() {
        // Never print a secret: the URL form is for logs and messages.
        params.push(format!("password={MASK}"));
    }
    let tls = config.tls.clone().unwrap_or_default();
    for (key, path) in [("ca", &tls.ca), ("cert", &tls.cert), ("key", &tls.key)] {
        if let Some(path) = path {
            let path = path.to_string_lossy();
            params.push(format!("{key}={}", utf8_percent_encode(&path, VALUE)));
        }
    }
    if !params.is_empty() {
        write!(f, "?{}", params.join("&"))?;
    }
    Ok(())
}

fn memory_from_url(parts: &UrlParts<'_>) -> Result<LockConfig, LockError> {
    if parts.path.is_some_and(|path| !path.is_empty()) {
        return Err(LockError::config(format!(
            "memory URL {:?} has a path: use memory://STORE",
            parts.shown
        )));
    }
    let store = decode("the memory store name", parts.authority, false)?;
    let mut config = MemoryConfig {
        store: Some(store).filter(|name| !name.is_empty()),
        ..MemoryConfig::default()
    };
    for (key, value) in parts.query()? {
        match key {
            "ttl" => config.ttl_secs = parse_ttl(&decode("ttl", value, false)?)?,
            other => return Err(parts.unknown_parameter(other, "ttl")),
        }
    }
    Ok(LockConfig::Memory(config))
}

#[cfg(feature = "etcd")]
fn etcd_from_url(parts: &UrlParts<'_>) -> Result<LockConfig, LockError> {
    if parts.authority.contains('@') {
        return Err(LockError::config(format!(
            "etcd URL {:?} has credentials before its endpoints: write ?user=U&password=P",
            parts.shown
        )));
    }
    let endpoints: Vec<String> = parts
        .authority
        .split(',')
        .map(str::trim)
        .filter(|endpoint| !endpoint.is_empty())
        .map(str::to_owned)
        .collect();
    if endpoints.is_empty() {
        return Err(LockError::config(format!(
            "etcd URL {:?} names no endpoint: use etcd://HOST:PORT[,HOST:PORT…]/[NAMESPACE]",
            parts.shown
        )));
    }
    let mut config = EtcdConfig {
        endpoints,
        namespace: decode("the namespace", parts.path.unwrap_or(""), false)?,
        ..EtcdConfig::default()
    };
    let mut tls = EtcdTls::default();
    for (key, value) in parts.query()? {
        let value = decode(key, value, !NOT_SECRET.contains(&key))?;
        match key {
            "ttl" => config.ttl_secs = parse_ttl(&value)?,
            "connect_timeout_ms" => {
                config.connect_timeout_ms = value.parse().map_err(|err| {
                    LockError::config_with(
                        format!(
                        "connect_timeout_ms must be a whole number of milliseconds, got {value:?}"
                    ),
                        err,
                    )
                })?
            }
            "user" => config.user = Some(value),
            "password" => config.password = Some(value),
            "ca" => tls.ca = Some(value.into()),
            "cert" => tls.cert = Some(value.into()),
            "key" => tls.key = Some(value.into()),
            other => {
                return Err(parts.unknown_parameter(
                    other,
                    "ttl, connect_timeout_ms, user, password, ca, cert, key",
                ))
            }
        }
    }
    if tls != EtcdTls::default() {
        config.tls = Some(tls);
    }
    Ok(LockConfig::Etcd(config))
}

/// A percent-decoded URL part (RFC 3986: `+` stays a plus; write a space as `%20`). A `secret`
/// value is never quoted in the error.
fn decode(what: &str, value: &str, secret: bool) -> Result<String, LockError> {
    match percent_decode_str(value).decode_utf8() {
        Ok(decoded) => Ok(decoded.into_owned()),
        Err(err) if secret => Err(LockError::config_with(
            format!("{what} is not UTF-8 once percent-decoded"),
            err,
        )),
        Err(err) => Err(LockError::config_with(
            format!("{what} {value:?} is not UTF-8 once percent-decoded"),
            err,
        )),
    }
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
    /// The URL as messages may quote it ([`redact_url`]ed).
    shown: String,
    scheme: &'a str,
    authority: &'a str,
    path: Option<&'a str>,
    query: Option<&'a str>,
}

impl<'a> UrlParts<'a> {
    fn split(url: &'a str) -> Result<Self, LockError> {
        let shown = redact_url(url);
        let Some((scheme, rest)) = url.trim().split_once("://") else {
            return Err(LockError::config(format!(
                "{shown:?} is not a locksmith URL: expected memory://… or etcd://HOST:PORT/…"
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
            shown,
            scheme,
            authority,
            path,
            query,
        })
    }

    /// The `key=value` pairs, values still percent-encoded.
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
                        self.shown
                    ))
                })
            })
            .collect()
    }

    fn unknown_parameter(&self, key: &str, known: &str) -> LockError {
        LockError::config(format!(
            "unknown parameter {key:?} in {:?}: known parameters are {known}",
            self.shown
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error's message and every cause, as one line.
    fn full_text(err: &LockError) -> String {
        let mut text = err.to_string();
        let mut source = std::error::Error::source(err);
        while let Some(cause) = source {
            text.push_str(&format!(": {cause} {cause:?}"));
            source = cause.source();
        }
        format!("{text} {err:?}")
    }

    #[test]
    fn redact_masks_passwords_and_userinfo() {
        for (url, shown) in [
            (
                "etcd://h:1/?password=s3&ttl=3",
                "etcd://h:1/?password=***&ttl=3",
            ),
            (
                "etcd://h:1/?user=u&password=",
                "etcd://h:1/?user=u&password=***",
            ),
            ("etcd://u:s3@h:1,h:2/ns@x", "etcd://u:***@h:1,h:2/ns@x"),
            ("etcd://tok@h:1/", "etcd://***@h:1/"),
            ("h:1?token=s3&ca=/c.pem", "h:1?token=***&ca=/c.pem"),
            ("memory://store?ttl=3", "memory://store?ttl=3"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    #[allow(irrefutable_let_patterns)] // without the etcd feature, Memory is the only variant
    fn memory_store_names_are_percent_coded() {
        let config = parse("memory://a%2Fb%20c?ttl=3").unwrap();
        let LockConfig::Memory(memory) = &config else {
            panic!("{config:?}")
        };
        assert_eq!(memory.store.as_deref(), Some("a/b c"));
        assert_eq!(config.to_string(), "memory://a%2Fb%20c?ttl=3");
        assert_eq!(parse(&config.to_string()).unwrap(), config);
    }

    #[cfg(feature = "etcd")]
    #[test]
    fn etcd_url_parts_are_percent_decoded_and_printed_encoded() {
        let config = parse(
            "etcd://h:1/my%20ns/%3F/?user=al%40ice&password=a%26b%3Dc%25+d&ca=/p%20a.pem&ttl=%33",
        )
        .unwrap();
        let LockConfig::Etcd(etcd) = &config else {
            panic!("{config:?}")
        };
        assert_eq!(etcd.namespace, "my ns/?/");
        assert_eq!(etcd.user.as_deref(), Some("al@ice"));
        assert_eq!(etcd.password.as_deref(), Some("a&b=c%+d"));
        assert_eq!(etcd.ttl_secs, 3);
        let ca = etcd.tls.as_ref().and_then(|tls| tls.ca.clone());
        assert_eq!(ca, Some("/p a.pem".into()));

        let shown = config.to_string();
        assert_eq!(
            shown,
            "etcd://h:1/my%20ns/%3F/?ttl=3&user=al%40ice&password=***&ca=/p%20a.pem"
        );
        let mut masked = etcd.clone();
        masked.password = Some(MASK.to_owned());
        assert_eq!(parse(&shown).unwrap(), LockConfig::Etcd(masked));
    }

    #[cfg(feature = "etcd")]
    #[test]
    fn debug_never_shows_the_password() {
        let config = parse("etcd://h:1/?user=u&password=hunter2%26x").unwrap();
        for shown in [
            format!("{config:?}"),
            format!("{config:#?}"),
            config.to_string(),
        ] {
            assert!(!shown.contains("hunter2"), "{shown}");
        }
    }

    #[test]
    fn errors_never_quote_a_password() {
        for url in [
            "etcd://h:1/?password=hunter2&ttl=0",
            "etcd://h:1/?password=hunter2&colour=red",
            "etcd://h:1/?pasword=hunter2",
            "etcd://h:1/?password=hunter2&ttl",
            "etcd://h:1/?password=%ffhunter2",
            "etcd://?password=hunter2",
            "etcd://alice:hunter2@h:1/",
            "memory://x/y?password=hunter2",
            "memory://?password=hunter2",
            "redis://h?password=hunter2",
            "h:1/?password=hunter2",
        ] {
            match parse(url) {
                Err(err @ LockError::InvalidConfig { .. }) => {
                    let text = full_text(&err);
                    assert!(!text.contains("hunter2"), "{url}: {text}");
                }
                other => panic!("{url}: {other:?}"),
            }
        }
    }
}
