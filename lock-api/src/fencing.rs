//! Fencing tokens.

use std::fmt;

/// A number that grows strictly from one holder of a lock name to the next.
///
/// Pass it along with every write the lock protects, and have the storage reject a write
/// whose token is lower than one it has already seen: a holder that was paused past its
/// session's TTL, and so lost the lock without knowing, is then refused instead of
/// overwriting the newer holder's work.
///
/// On etcd the token is the create revision of the holder's key; in memory it comes from a
/// per-store counter. Tokens of different names, or of different stores, are not comparable.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct FencingToken(u64);

impl FencingToken {
    /// Wraps a raw token value.
    pub const fn new(value: u64) -> Self {
        FencingToken(value)
    }

    /// The raw value.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl From<FencingToken> for u64 {
    fn from(token: FencingToken) -> u64 {
        token.0
    }
}
