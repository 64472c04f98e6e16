//! Helpers shared by the facade's integration tests.

// Each test binary that includes this module uses some of it, some of them none of it in some
// feature combinations.
#![allow(dead_code)]

use locksmith::LockError;

/// An error, its `Debug` and every cause in its source chain, as one string: everything a
/// caller could print of it.
pub fn error_text(err: &LockError) -> String {
    let mut text = format!("{err} {err:?}");
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause} {cause:?}"));
        source = cause.source();
    }
    text
}
