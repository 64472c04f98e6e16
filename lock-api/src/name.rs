//! The lock-name rules shared by every backend.

use crate::LockError;

/// The longest lock name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 1024;

/// Checks a lock name against the rules every backend applies.
///
/// A name must be non-empty, at most [`MAX_NAME_LEN`] bytes of UTF-8, and free of control
/// characters (`\0`, `\n`, `\t`, DEL…). Any other text is a name, and distinct names are
/// distinct locks: `a` and `a/b` never block each other.
///
/// # Errors
/// [`LockError::InvalidName`] naming the rule broken.
///
/// ```
/// use locksmith_api::validate_name;
/// assert!(validate_name("jobs/nightly-report").is_ok());
/// let err = validate_name("").unwrap_err();
/// assert_eq!(err.to_string(), r#"invalid lock name "": must not be empty"#);
/// ```
pub fn validate_name(name: &str) -> Result<(), LockError> {
    let rule = if name.is_empty() {
        "must not be empty"
    } else if name.len() > MAX_NAME_LEN {
        "must be at most 1024 bytes"
    } else if !name.bytes().all(|b| (0x20..0x7f).contains(&b))
        // Printable ASCII, the usual case, passes without decoding; anything else is checked
        // character by character (C1 controls such as U+0085 are controls too).
        && name.chars().any(char::is_control)
    {
        "must not contain control characters"
    } else {
        return Ok(());
    };
    Err(LockError::InvalidName {
        name: name.chars().take(64).collect(),
        rule,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        assert!(validate_name("a").is_ok());
        assert!(validate_name("a/b c-ü").is_ok());
        assert!(validate_name(&"x".repeat(MAX_NAME_LEN)).is_ok());
        for (bad, rule) in [
            ("", "must not be empty"),
            ("a\0b", "must not contain control characters"),
            ("line\n", "must not contain control characters"),
            ("\u{7f}", "must not contain control characters"),
            ("ü\u{85}", "must not contain control characters"),
        ] {
            match validate_name(bad) {
                Err(LockError::InvalidName { rule: r, .. }) => assert_eq!(r, rule, "{bad:?}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        let long = "x".repeat(MAX_NAME_LEN + 1);
        let err = validate_name(&long).unwrap_err();
        assert!(err.to_string().contains("at most 1024 bytes"));
        assert!(
            err.to_string().len() < 200,
            "long names are cut in messages"
        );
    }
}
