//! Tokens as secrets. `RunnerToken` and `AdminToken` wrap `secrecy` values; neither implements
//! `Display`, their `Debug` prints the masked form, and `Masked` is the only printable form.
//!
//! `expose_secret()` is called only in `gitlab/` (building requests), `runner_config/edit.rs`
//! (writing the file) and `rotate/journal.rs` (the 0600 journal), so one grep finds every use.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};

/// Token prefixes GitLab uses, longest first so `glrt-t1_` wins over `glrt-`.
const PREFIXES: &[&str] = &[
    "glrt-t1_",
    "glrt-t2_",
    "glrt-t3_",
    "glrtr-",
    "glrt-",
    "glpat-",
    "glcbt-",
    "GR1348941",
    "t1_",
    "t2_",
    "t3_",
];

/// A runner authentication token (`[[runners]].token`).
#[derive(Clone)]
pub struct RunnerToken(SecretString);

/// The privileged (personal, group or project access) token used for admin calls.
#[derive(Clone)]
pub struct AdminToken(SecretString);

impl RunnerToken {
    pub fn new(value: impl Into<String>) -> Self {
        Self(SecretString::from(value.into()))
    }

    pub fn masked(&self) -> Masked {
        Masked::of(self.0.expose_secret())
    }

    /// The raw value. Callers are limited to request building, the config editor and the journal.
    pub fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }

    /// A registration token (`GR1348941…`) where an authentication token belongs.
    pub fn is_registration_token(&self) -> bool {
        self.0.expose_secret().starts_with("GR1348941")
    }

    /// `$VAR` / `${VAR}` anywhere in the value: gitlab-runner 18.10+ expands it from its own
    /// environment (reference §6.2). No token GitLab issues contains `$` (reference §1).
    pub fn is_env_reference(&self) -> bool {
        self.0.expose_secret().contains('$')
    }

    /// The names of the variables the value refers to (names are not secret; the value is never
    /// returned).
    pub fn env_variables(&self) -> Vec<String> {
        env_variables(self.0.expose_secret())
    }

    /// Why the value cannot be an authentication token, if it cannot. Tokens are opaque
    /// (reference §1): only values no GitLab would issue are flagged.
    pub fn unusable_reason(&self) -> Option<&'static str> {
        let token = self.0.expose_secret();
        if token.trim().is_empty() {
            Some("it is empty")
        } else if token.starts_with('<') || token.ends_with('>') {
            Some("it is a placeholder")
        } else if token
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '\'')
        {
            Some("it contains whitespace, quotes or control characters")
        } else {
            None
        }
    }

    /// Same token value, compared without exposing either to the caller.
    pub fn same_as(&self, other: &RunnerToken) -> bool {
        self.0.expose_secret() == other.0.expose_secret()
    }
}

impl AdminToken {
    pub fn new(value: impl Into<String>) -> Self {
        Self(SecretString::from(value.into()))
    }

    pub fn masked(&self) -> Masked {
        Masked::of(self.0.expose_secret())
    }

    pub fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for RunnerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RunnerToken({})", self.masked())
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AdminToken({})", self.masked())
    }
}

/// The variables `$NAME` and `${NAME}` in `text`, in order, each once. Names are what Go's
/// `os.Expand` reads, which gitlab-runner uses for `token` and `url` (gitlab-org/gitlab-runner
/// MR !6068, 18.10): letters, digits and `_`, or anything up to `}` in the braced form.
pub fn env_variables(text: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        rest = &rest[pos + 1..];
        let name = if let Some(braced) = rest.strip_prefix('{') {
            match braced.find('}') {
                Some(end) => {
                    let n = &braced[..end];
                    rest = &braced[end + 1..];
                    n
                }
                None => "",
            }
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            let n = &rest[..end];
            rest = &rest[end..];
            n
        };
        if !name.is_empty() && !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    names
}

/// The displayable form of a token: the known prefix, at most two characters after it, `…`, and
/// the last two. Short values show less so that a mask never reveals most of a token.
#[derive(Clone, PartialEq, Eq)]
pub struct Masked(String);

impl Masked {
    pub fn of(token: &str) -> Self {
        let prefix = PREFIXES
            .iter()
            .find(|p| token.starts_with(*p))
            .map_or("", |p| *p);
        let body: Vec<char> = token[prefix.len()..].chars().collect();
        let masked = if body.len() >= 8 {
            let head: String = body[..2].iter().collect();
            let tail: String = body[body.len() - 2..].iter().collect();
            format!("{prefix}{head}…{tail}")
        } else if body.is_empty() {
            format!("{prefix}…")
        } else {
            // Too short to show any of it safely.
            format!("{prefix}…")
        };
        Self(masked)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Masked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Masked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for Masked {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_keep_prefix_two_and_two() {
        assert_eq!(
            Masked::of("glrt-t3_abcdefghijklmnopqrst").as_str(),
            "glrt-t3_ab…st"
        );
        assert_eq!(
            Masked::of("glrt-abcdefghijklmnopqrst").as_str(),
            "glrt-ab…st"
        );
        assert_eq!(
            Masked::of("glpat-abcdefghijklmnopqrst").as_str(),
            "glpat-ab…st"
        );
        assert_eq!(Masked::of("0123456789abcdef0123").as_str(), "01…23");
        assert_eq!(Masked::of("short").as_str(), "…");
        assert_eq!(Masked::of("").as_str(), "…");
    }

    #[test]
    fn environment_references_are_named() {
        assert_eq!(env_variables("$RUNNER_TOKEN"), vec!["RUNNER_TOKEN"]);
        assert_eq!(env_variables("${TOKEN_1}"), vec!["TOKEN_1"]);
        assert_eq!(
            env_variables("https://${HOST}:$PORT/x"),
            vec!["HOST", "PORT"]
        );
        assert!(env_variables("glrt-abcdefghijklmnopqrst").is_empty());
        assert!(RunnerToken::new("${A}").is_env_reference());
        assert!(!RunnerToken::new("glrt-abcdefghijklmnopqrst").is_env_reference());
    }

    #[test]
    fn debug_never_shows_the_token() {
        let t = RunnerToken::new("glrt-abcdefghijklmnopqrst");
        assert_eq!(format!("{t:?}"), "RunnerToken(glrt-ab…st)");
        let a = AdminToken::new("glpat-abcdefghijklmnopqrst");
        assert!(!format!("{a:?}").contains("cdefghij"));
    }
}
