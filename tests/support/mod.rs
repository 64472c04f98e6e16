//! Helpers shared by the facade's integration tests.

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
