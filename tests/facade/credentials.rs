//! A password never leaks (issue 10, finding 13): against a real etcd with authentication
//! on, neither the errors, the `Debug` forms, the tracing logs nor the `locksmith` binary's
//! output contain it.

use crate::support;

use std::fmt::Write as _;
use std::process::Command;
use std::sync::Arc;

use locksmith::LockConfig;
use locksmith_etcd::testing::{enable_auth, EtcdServer};
use std::sync::Mutex;
use support::error_text;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

const SECRET: &str = "hunter2-Pass&word";

/// Every span and event, at every level, written down as text.
#[derive(Clone, Default)]
struct Recorder {
    text: Arc<Mutex<String>>,
}

impl Visit for Recorder {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = writeln!(self.text.lock().unwrap(), "{}={value:?}", field.name());
    }
}

impl Subscriber for Recorder {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        span.record(&mut self.clone());
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, values: &Record<'_>) {
        values.record(&mut self.clone());
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        event.record(&mut self.clone());
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

fn url(endpoint: &str, password: &str) -> String {
    let password: String = password
        .bytes()
        .map(|byte| match byte {
            b'&' => "%26".to_owned(),
            other => (other as char).to_string(),
        })
        .collect();
    format!("etcd://{endpoint}/creds/?user=alice&password={password}&connect_timeout_ms=2000")
}

/// A session with the right password locks and unlocks; wrong passwords, an unreachable etcd
/// and the configs themselves are printed, logged and failed without the password.
#[tokio::test(flavor = "current_thread")]
async fn no_password_in_errors_debug_or_logs() {
    let etcd = EtcdServer::start().expect("etcd (run `make test`, which installs it)");
    enable_auth(&[etcd.endpoint()], "alice", SECRET)
        .await
        .unwrap();
    let recorder = Recorder::default();
    let _logging = tracing::subscriber::set_default(recorder.clone());

    let right: LockConfig = url(&etcd.endpoint(), SECRET).parse().unwrap();
    let LockConfig::Etcd(etcd_config) = &right else {
        panic!("{right:?}")
    };
    assert_eq!(
        etcd_config.password.as_deref(),
        Some(SECRET),
        "percent-decoded"
    );
    let session = right.connect().await.unwrap();
    let guard = session.lock("job").await.unwrap();
    let shown = format!("{right} {right:?} {right:#?} {etcd_config:?} {guard:?}");
    assert!(!shown.contains(SECRET), "{shown}");
    guard.unlock().await.unwrap();
    session.close().await.unwrap();

    for config in [
        url(&etcd.endpoint(), "wrong-Pass&word"),
        url("127.0.0.1:1", SECRET),
    ] {
        let config: LockConfig = config.parse().unwrap();
        match config.connect().await {
            Err(err) => {
                let text = error_text(&err);
                assert!(
                    !text.contains(SECRET) && !text.contains("wrong-Pass"),
                    "{text}"
                );
            }
            Ok(_) => panic!("connected with {config}"),
        }
    }
    let logged = recorder.text.lock().unwrap().clone();
    assert!(
        !logged.contains(SECRET) && !logged.contains("wrong-Pass"),
        "{logged}"
    );
}

/// The binary with a wrong password on an etcd with authentication: one line, no password.
#[tokio::test(flavor = "current_thread")]
async fn cli_output_has_no_password() {
    let etcd = EtcdServer::start().expect("etcd (run `make test`, which installs it)");
    enable_auth(&[etcd.endpoint()], "alice", SECRET)
        .await
        .unwrap();
    for password in ["wrong-Pass&word", SECRET] {
        let out = Command::new(env!("CARGO_BIN_EXE_locksmith"))
            .args(["--url", &url(&etcd.endpoint(), password), "lock", "job"])
            .args(["--", "sh", "-c", "echo held; exit 3"])
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !text.contains(SECRET) && !text.contains("wrong-Pass"),
            "{text}"
        );
        if password == SECRET {
            assert_eq!((out.status.code(), text.trim()), (Some(3), "held"));
        } else {
            assert_eq!(out.status.code(), Some(1), "{text}");
            assert!(text.starts_with("locksmith: "), "{text}");
        }
    }
}
