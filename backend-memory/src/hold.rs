//! What the store's table records for each entry, and the hold behind a memory guard.
//!
//! A leaf module: it knows the lock-api vocabulary and nothing of stores or sessions.

use std::sync::Arc;

use async_trait::async_trait;
use locksmith_api::{Hold, LockError, LossReason, LostSignal, Ticket};
use parking_lot::Mutex;

/// What the table records for each holder and waiter.
#[derive(Clone)]
pub(crate) struct HoldTag {
    pub(crate) session: u64,
    pub(crate) lost: LostSignal,
    /// The proclaimed value of a campaign; `None` for a plain lock and the other primitives.
    pub(crate) candidate: Option<Arc<Candidate>>,
}

/// The proclaimed value of one campaign, shared by its table entry and its leadership.
///
/// It is only written with the table locked (by a proclamation of the holder), so what the
/// holder hook reads is the value as of that change.
pub(crate) struct Candidate {
    pub(crate) value: Mutex<Vec<u8>>,
}

impl Candidate {
    pub(crate) fn new(value: &[u8]) -> Arc<Self> {
        Arc::new(Candidate {
            value: Mutex::new(value.to_vec()),
        })
    }
}

/// A granted table entry behind a [`LockGuard`](locksmith_api::LockGuard): a lock,
/// leadership, read, write or permit.
pub(crate) struct MemoryHold {
    pub(crate) ticket: Ticket<HoldTag>,
    pub(crate) lost: LostSignal,
}

impl MemoryHold {
    fn release_here(&mut self) -> Result<(), LockError> {
        if self.ticket.release_in_place() {
            Ok(())
        } else {
            Err(LockError::LockLost {
                name: self.ticket.name().to_owned(),
                reason: self.lost.reason().unwrap_or(LossReason::Unknown),
            })
        }
    }
}

#[async_trait]
impl Hold for MemoryHold {
    async fn release(mut self: Box<Self>) -> Result<(), LockError> {
        self.release_here()
    }

    fn release_now(&mut self) -> Option<Result<(), LockError>> {
        Some(self.release_here())
    }
}
