//! One name's FIFO queue and its grant rule: which entries hold and which wait.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::Claim;
use crate::{FencingToken, LockError};

/// What a waiter is sent: the shared name and its token, or why it was removed.
pub(super) type Wake = oneshot::Sender<Result<(Arc<str>, FencingToken), LockError>>;

/// The entries of one name, oldest first. The granted entries are always a prefix: every
/// grant rule only looks at older entries, and a waiter is never served before an older one.
pub(super) struct NameQueue<T> {
    /// The name, shared with every ticket and guard of it.
    pub(super) name: Arc<str>,
    pub(super) entries: VecDeque<Entry<T>>,
    /// How many entries, from the front, hold.
    pub(super) granted: usize,
    /// True while the name is in the table's list of idle names.
    pub(super) listed_idle: bool,
}

pub(super) struct Entry<T> {
    pub(super) ticket: u64,
    pub(super) claim: Claim,
    pub(super) tag: T,
    pub(super) state: EntryState,
}

pub(super) enum EntryState {
    /// Holds, with this fencing token.
    Granted(FencingToken),
    /// Waits; woken through this sender.
    Waiting(Wake),
}

impl<T> NameQueue<T> {
    pub(super) fn new(name: &str) -> Self {
        NameQueue {
            name: Arc::from(name),
            entries: VecDeque::new(),
            granted: 0,
            listed_idle: false,
        }
    }

    pub(super) fn is_idle(&self) -> bool {
        self.entries.is_empty()
    }

    /// The grant rule: whether an entry claiming `claim`, placed right after the granted
    /// prefix, may hold now.
    ///
    /// - a lock (or campaign) or a writer: when it is the oldest entry;
    /// - a reader: when no writer holds (a granted writer holds alone, so the oldest entry
    ///   tells) — older waiting writers are covered by the prefix rule;
    /// - a permit: when fewer than `limit` older entries hold.
    #[inline]
    pub(super) fn admits(&self, claim: Claim) -> bool {
        match claim {
            Claim::Lock | Claim::Write => self.granted == 0,
            Claim::Read => {
                self.granted == 0 || self.entries.front().is_some_and(|o| o.claim == Claim::Read)
            }
            Claim::Permit { limit } => self.granted < limit as usize,
        }
    }

    /// Whether a new entry claiming `claim` would hold at once: nobody waits and the grant
    /// rule admits it.
    #[inline]
    pub(super) fn admits_now(&self, claim: Claim) -> bool {
        self.granted == self.entries.len() && self.admits(claim)
    }

    /// Fails with [`LockError::LimitMismatch`] when the name is in use with another limit
    /// than `claim`'s (the limit of a name is its oldest entry's).
    #[inline]
    pub(super) fn check_limit(&self, claim: Claim) -> Result<(), LockError> {
        let (Claim::Permit { limit }, Some(oldest)) = (claim, self.entries.front()) else {
            return Ok(());
        };
        match oldest.claim {
            Claim::Permit { limit: in_use } if in_use != limit => Err(LockError::LimitMismatch {
                name: self.name.to_string(),
                limit,
                in_use,
            }),
            _ => Ok(()),
        }
    }

    /// Appends a granted entry; returns the shared name and its token.
    #[inline]
    pub(super) fn push_granted(
        &mut self,
        ticket: u64,
        claim: Claim,
        tag: T,
        last_token: &mut u64,
    ) -> (Arc<str>, FencingToken) {
        let token = next_token(last_token);
        self.entries.push_back(Entry {
            ticket,
            claim,
            tag,
            state: EntryState::Granted(token),
        });
        self.granted += 1;
        (Arc::clone(&self.name), token)
    }

    /// The oldest holder, if the oldest entry holds.
    #[inline]
    pub(super) fn front_holder(&self) -> Option<(&T, FencingToken)> {
        match self.entries.front()?.state {
            EntryState::Granted(token) => Some((&self.entries[0].tag, token)),
            EntryState::Waiting(_) => None,
        }
    }

    #[inline]
    pub(super) fn front_holder_ticket(&self) -> Option<u64> {
        self.entries
            .front()
            .filter(|_| self.granted > 0)
            .map(|e| e.ticket)
    }

    /// Removes the entry of `ticket` if it holds; true when it did.
    #[inline]
    pub(super) fn release(&mut self, ticket: u64) -> bool {
        // The usual case, a lock's only holder, without searching.
        if self.granted > 0 && self.entries.front().is_some_and(|e| e.ticket == ticket) {
            self.granted -= 1;
            return self.entries.pop_front().is_some();
        }
        let mut held = self.entries.iter().take(self.granted);
        match held.position(|e| e.ticket == ticket) {
            Some(at) => self.remove_at(at).is_some(),
            None => false,
        }
    }

    /// True when `ticket` holds.
    pub(super) fn holds(&self, ticket: u64) -> bool {
        self.entries
            .iter()
            .take(self.granted)
            .any(|e| e.ticket == ticket)
    }

    /// Removes the entry of `ticket`, holding or waiting; returns it if it was there.
    pub(super) fn remove(&mut self, ticket: u64) -> Option<Entry<T>> {
        let at = self.entries.iter().position(|e| e.ticket == ticket)?;
        self.remove_at(at)
    }

    /// Removes the entry at `at`, keeping the granted count right.
    pub(super) fn remove_at(&mut self, at: usize) -> Option<Entry<T>> {
        let entry = self.entries.remove(at)?;
        if at < self.granted {
            self.granted -= 1;
        }
        Some(entry)
    }

    /// Removes every entry `matches` picks, oldest first.
    pub(super) fn extract(&mut self, matches: impl Fn(&Entry<T>) -> bool) -> Vec<Entry<T>> {
        let mut taken = Vec::new();
        let mut at = 0;
        while at < self.entries.len() {
            if matches(&self.entries[at]) {
                taken.extend(self.remove_at(at));
            } else {
                at += 1;
            }
        }
        taken
    }

    /// Grants waiters, oldest first, while the grant rule admits them; a waiter whose future
    /// was dropped no longer listens and is skipped. True when the name is left idle (it is
    /// then listed in `idle`, with `family`).
    pub(super) fn hand_over<F: Copy>(
        &mut self,
        last_token: &mut u64,
        idle: &mut VecDeque<(F, Arc<str>)>,
        family: F,
    ) -> bool {
        while self.granted < self.entries.len() {
            let at = self.granted;
            if !self.admits(self.entries[at].claim) {
                return false;
            }
            let token = next_token(last_token);
            let state = std::mem::replace(&mut self.entries[at].state, EntryState::Granted(token));
            let listening = match state {
                EntryState::Waiting(wake) => wake.send(Ok((Arc::clone(&self.name), token))).is_ok(),
                EntryState::Granted(_) => true,
            };
            if listening {
                self.granted += 1;
            } else {
                self.entries.remove(at);
            }
        }
        if self.entries.is_empty() && !self.listed_idle {
            self.listed_idle = true;
            idle.push_back((family, Arc::clone(&self.name)));
        }
        self.entries.is_empty()
    }
}

fn next_token(last_token: &mut u64) -> FencingToken {
    *last_token += 1;
    FencingToken::new(*last_token)
}
