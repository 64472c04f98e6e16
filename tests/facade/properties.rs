//! Property tests over user input: lock names and configuration text never panic, always give
//! success or a typed error, and distinct names stay independent locks.

use locksmith::{validate_name, DistributedLock, LockConfig, LockError, MemoryStore, MAX_NAME_LEN};
use proptest::prelude::*;

fn config_error(result: Result<LockConfig, LockError>) -> bool {
    match result {
        Ok(_) => true,
        Err(LockError::InvalidConfig { .. }) => true,
        Err(other) => panic!("config input gave a non-config error: {other}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn names_are_valid_or_named_invalid(name in any::<String>()) {
        match validate_name(&name) {
            Ok(()) => {
                prop_assert!(!name.is_empty() && name.len() <= MAX_NAME_LEN);
                prop_assert!(!name.chars().any(char::is_control));
            }
            Err(LockError::InvalidName { rule, .. }) => prop_assert!(!rule.is_empty()),
            Err(other) => prop_assert!(false, "unexpected error {other}"),
        }
    }

    #[test]
    fn any_url_text_is_parsed_or_refused(url in any::<String>()) {
        prop_assert!(config_error(LockConfig::from_url(&url)));
    }

    #[test]
    fn url_shaped_text_is_parsed_or_refused(
        scheme in prop_oneof!["memory", "etcd", "[a-z]{1,6}"],
        authority in "[a-z0-9.:,\\[\\]%@-]{0,30}",
        path in proptest::option::of("[a-z0-9/._%-]{0,20}"),
        query in proptest::option::of("[a-z_]{0,10}(=[a-z0-9./%-]{0,10})?(&[a-z_]{0,10}=[0-9]{0,25})?"),
    ) {
        let mut url = format!("{scheme}://{authority}");
        if let Some(path) = path { url.push('/'); url.push_str(&path); }
        if let Some(query) = query { url.push('?'); url.push_str(&query); }
        let parsed = LockConfig::from_url(&url);
        if let Ok(config) = &parsed {
            // What parses prints back to a URL that parses to the same config (passwords are
            // masked when printed, so those cannot come back).
            if !config.to_string().contains("password=") {
                prop_assert_eq!(&LockConfig::from_url(&config.to_string()).unwrap(), config);
            }
        }
        prop_assert!(config_error(parsed));
    }

    #[cfg(feature = "config-files")]
    #[test]
    fn any_toml_or_json_is_parsed_or_refused(text in any::<String>()) {
        prop_assert!(config_error(LockConfig::from_toml(&text)));
        prop_assert!(config_error(LockConfig::from_json(&text)));
    }

    #[cfg(feature = "config-files")]
    #[test]
    fn toml_shaped_text_is_parsed_or_refused(
        backend in prop_oneof!["memory", "etcd", "[a-z]{0,6}"],
        key in "[a-z_]{1,12}",
        value in prop_oneof!["[0-9]{1,25}", "\"[a-z0-9:./]{0,12}\"", "\\[\"[a-z0-9:.]{0,12}\"\\]"],
    ) {
        let text = format!("backend = \"{backend}\"\n{key} = {value}\n");
        prop_assert!(config_error(LockConfig::from_toml(&text)));
    }
}

/// Credentials, namespaces and paths of any text (issue 10, finding 13): a printed config
/// reads back to itself except for the masked password, and neither its `Debug`, its URL
/// form nor an error about a URL carrying the password shows the password.
#[cfg(feature = "etcd")]
mod credentials {
    use locksmith::{EtcdConfig, EtcdTls, LockConfig};
    use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
    use proptest::prelude::*;

    use crate::support::error_text;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn passwords_round_trip_masked_and_never_show(
            secret in "\\PC{0,24}",
            user in "\\PC{1,12}",
            namespace in "\\PC{0,16}",
            ca in proptest::option::of("/\\PC{1,16}"),
        ) {
            // A marker makes the password distinctive, so that finding it means a leak.
            let password = format!("Zq9{secret}");
            let config = LockConfig::Etcd(EtcdConfig {
                namespace,
                user: Some(user),
                password: Some(password.clone()),
                tls: ca.map(|ca| EtcdTls { ca: Some(ca.into()), ..EtcdTls::default() }),
                ..EtcdConfig::new(["127.0.0.1:2379", "h:2"])
            });
            let shown = config.to_string();
            let LockConfig::Etcd(mut expected) = config.clone() else { unreachable!() };
            expected.password = Some("***".to_owned());
            prop_assert_eq!(LockConfig::from_url(&shown).unwrap(), LockConfig::Etcd(expected));
            for text in [&shown, &format!("{config:?}"), &format!("{config:#?}")] {
                prop_assert!(!text.contains(&password), "{}", text);
            }

            let encoded = utf8_percent_encode(&password, NON_ALPHANUMERIC).to_string();
            let with_password = shown.replace("password=***", &format!("password={encoded}"));
            let LockConfig::Etcd(read) = LockConfig::from_url(&with_password).unwrap() else {
                unreachable!()
            };
            prop_assert_eq!(read.password.as_deref(), Some(password.as_str()));
            for bad in ["ttl=0", "colour=red", "ttl", "connect_timeout_ms=soon"] {
                let url = format!("{with_password}&{bad}");
                match LockConfig::from_url(&url) {
                    Err(err) => {
                        let text = error_text(&err);
                        prop_assert!(!text.contains(&password) && !text.contains(&encoded), "{}", text);
                    }
                    Ok(config) => prop_assert!(false, "{url} read as {config:?}"),
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Two different valid names are two locks: holding one never blocks the other.
    #[test]
    fn distinct_names_are_independent(a in "[^\\p{Cc}]{1,12}", b in "[^\\p{Cc}]{1,12}") {
        prop_assume!(a != b);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let store = MemoryStore::new();
            let (one, two) = (store.connect().unwrap(), store.connect().unwrap());
            let held = one.lock(&a).await.unwrap();
            prop_assert!(two.try_lock(&b).await.unwrap().is_some(), "{a:?} blocked {b:?}");
            prop_assert!(two.try_lock(&a).await.unwrap().is_none());
            held.unlock().await.unwrap();
            Ok(())
        })?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(100_000))]

    /// The config parser under 100,000 generated URLs: typed errors or success, never a panic.
    #[test]
    fn url_parser_survives_100k_cases(
        scheme in prop_oneof!["memory", "etcd", "[a-z+]{0,8}"],
        rest in "[ -~]{0,60}",
    ) {
        let url = format!("{scheme}://{rest}");
        prop_assert!(config_error(LockConfig::from_url(&url)));
    }
}
