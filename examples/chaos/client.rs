//! One chaos client process: lock a random name, write fenced, hold a moment, unlock; again.

use std::path::Path;
use std::time::Duration;

use locksmith::etcd_client::{Compare, CompareOp, TxnOp};
use locksmith::{DistributedLock, EtcdConfig, EtcdLock, LockError};
use rand::Rng;
use tokio::signal::unix::{signal, SignalKind};

use crate::log::{Event, Log};

pub const NAMESPACE: &str = "chaos/locks/";
pub const NAMES: [&str; 3] = ["a", "b", "c"];

/// The key holding the last accepted fencing token of `name`.
pub fn fence_key(name: &str) -> String {
    format!("chaos/fence/{name}")
}

/// Tokens as fixed-width decimal, so etcd's byte comparison orders them as numbers.
pub fn fence_value(token: u64) -> String {
    format!("{token:020}")
}

pub async fn run(id: &str, endpoints: Vec<String>, ttl_secs: u64, log_path: &Path) {
    let Ok(mut log) = Log::open(log_path, id) else {
        eprintln!("chaos client {id}: cannot open {}", log_path.display());
        return;
    };
    let Ok(mut terminate) = signal(SignalKind::terminate()) else {
        return;
    };
    let config = EtcdConfig {
        namespace: NAMESPACE.into(),
        ttl_secs,
        connect_timeout_ms: 3_000,
        ..EtcdConfig::new(endpoints)
    };
    let mut session: Option<EtcdLock> = None;
    loop {
        let current = match &session {
            Some(current) => current.clone(),
            None => match EtcdLock::connect(&config).await {
                Ok(opened) => {
                    log.write(Event {
                        event: "session".into(),
                        lease: format!("{:x}", opened.lease_id()),
                        ..Event::default()
                    });
                    session = Some(opened.clone());
                    opened
                }
                Err(err) => {
                    log.write(error_event("", &err));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        let stop = tokio::select! {
            biased;
            _ = terminate.recv() => true,
            outcome = one_round(&current, &mut log) => {
                if let Err(err) = outcome {
                    let lost = err.is_session_lost();
                    log.write(error_event("", &err));
                    if lost {
                        session = None;
                    }
                }
                false
            }
        };
        if stop {
            if let Some(current) = session.take() {
                let _ = tokio::time::timeout(Duration::from_secs(3), current.close()).await;
            }
            return;
        }
    }
}

fn error_event(name: &str, err: &LockError) -> Event {
    Event {
        event: "error".into(),
        name: name.into(),
        detail: err.to_string(),
        ..Event::default()
    }
}

async fn one_round(session: &EtcdLock, log: &mut Log) -> Result<(), LockError> {
    let name = NAMES[rand::thread_rng().gen_range(0..NAMES.len())];
    let lease = format!("{:x}", session.lease_id());
    log.write(Event {
        event: "attempt".into(),
        name: name.into(),
        lease: lease.clone(),
        ..Event::default()
    });
    let guard = match tokio::time::timeout(Duration::from_secs(15), session.lock(name)).await {
        Ok(guard) => guard?,
        Err(_) => {
            log.write(Event {
                event: "error".into(),
                name: name.into(),
                detail: "lock took over 15 s".into(),
                ..Event::default()
            });
            return Ok(());
        }
    };
    let token = guard.fencing_token().get();
    log.write(Event {
        event: "acquired".into(),
        name: name.into(),
        token,
        lease: lease.clone(),
        ..Event::default()
    });

    // The fenced write: accepted only if our token is above the last accepted one.
    let fence = fence_key(name);
    let mut client = session.client();
    let txn = locksmith::etcd_client::Txn::new()
        .when([Compare::value(
            fence.as_str(),
            CompareOp::Less,
            fence_value(token),
        )])
        .and_then([TxnOp::put(fence.as_str(), fence_value(token), None)]);
    let (accepted, rev) = match client.txn(txn).await {
        Ok(reply) => (
            Some(reply.succeeded()),
            reply.header().map_or(0, |h| h.revision().unsigned_abs()),
        ),
        Err(_) => (None, 0),
    };
    log.write(Event {
        event: "write".into(),
        name: name.into(),
        token,
        accepted,
        rev,
        ..Event::default()
    });
    // The unfenced write a paused holder would also make: counted, not prevented.
    let plain = client
        .put(format!("chaos/plain/{name}"), fence_value(token), None)
        .await
        .is_ok();
    log.write(Event {
        event: "plain_write".into(),
        name: name.into(),
        token,
        accepted: Some(plain),
        ..Event::default()
    });

    let hold = Duration::from_millis(rand::thread_rng().gen_range(0..40));
    tokio::select! {
        () = tokio::time::sleep(hold) => {}
        reason = guard.lost() => {
            log.write(Event {
                event: "lost".into(),
                name: name.into(),
                token,
                detail: reason.to_string(),
                ..Event::default()
            });
        }
    }
    log.write(Event {
        event: "releasing".into(),
        name: name.into(),
        token,
        ..Event::default()
    });
    let released = guard.unlock().await;
    log.write(Event {
        event: if released.is_ok() { "released" } else { "lost" }.into(),
        name: name.into(),
        token,
        ..Event::default()
    });
    Ok(())
}
