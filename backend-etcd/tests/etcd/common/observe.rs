//! Reading a `LeaderWatch` in tests, with the guard timeout.

use locksmith_api::{LeaderState, LeaderWatch};

use super::GUARD;

/// The next item; a panic if the watch ends or stays silent past [`GUARD`].
pub async fn next(watch: &mut LeaderWatch) -> LeaderState {
    match tokio::time::timeout(GUARD, watch.next()).await {
        Ok(Some(Ok(state))) => state,
        Ok(other) => panic!("the watch ended: {other:?}"),
        Err(_) => panic!("no observation within {GUARD:?}"),
    }
}

/// Reads the watch until it shows `value` (states in between may be coalesced or not).
pub async fn until_value(watch: &mut LeaderWatch, value: &[u8]) -> LeaderState {
    loop {
        let state = next(watch).await;
        if state.as_ref().is_some_and(|l| l.value() == value) {
            return state;
        }
    }
}

/// Reads the watch until nobody leads.
pub async fn until_vacant(watch: &mut LeaderWatch) {
    while next(watch).await.is_some() {}
}
