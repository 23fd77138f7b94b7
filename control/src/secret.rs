//! A string whose `Debug`/`Display` never reveal it, and the redaction rule for admin output.
use std::fmt;

/// A secret value (credential secret, token, master key text). Formatting redacts it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The clear value. Call sites are few and deliberate: encryption, snapshots, auth.
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// Redacted form for admin output: `…` plus the last 4 characters, or only `…`
    /// when the secret is shorter than 12 characters (showing 4 of 8 would leak too much).
    pub fn redacted(&self) -> String {
        redact(&self.0)
    }
}

/// See [`Secret::redacted`].
pub fn redact(s: &str) -> String {
    let n = s.chars().count();
    if n < 12 {
        "…".to_string()
    } else {
        let tail: String = s.chars().skip(n - 4).collect();
        format!("…{tail}")
    }
}

/// True if `s` looks like output of [`redact`] (so Apply keeps the stored secret).
pub fn is_redacted(s: &str) -> bool {
    s.starts_with('…')
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction() {
        assert_eq!(redact("short"), "…");
        assert_eq!(redact("sk-0123456789abcd"), "…abcd");
        assert_eq!(format!("{:?}", Secret::new("topsecret")), "Secret(…)");
        assert!(is_redacted(&redact("x")));
    }
}
