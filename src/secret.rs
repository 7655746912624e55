//! Tokens as secrets. `RunnerToken` and `AdminToken` wrap `secrecy` values; neither implements
//! `Display`, their `Debug` prints the masked form, and `Masked` is the only printable form.
//!
//! `expose_secret()` is called only in `gitlab/` (building requests), `runner_config/edit.rs`
//! (writing the file) and `rotate/journal.rs` (the 0600 journal), so one grep finds every use.
//!
//! Two guards keep tokens from leaving by other ways: [`mask_tokens_in`] masks the tokens in text
//! that comes from outside (a server's error body) before it is shown, and every token value the
//! process holds is remembered so [`is_secret_value`] can keep it out of child environments.

use std::collections::HashSet;
use std::fmt;
use std::sync::{LazyLock, Mutex, PoisonError};

use secrecy::{ExposeSecret, SecretString};

/// Every token value this process has held, so that no child process (a hook, a service command)
/// is handed one through its environment: see [`is_secret_value`]. Filled by the constructors of
/// [`RunnerToken`] and [`AdminToken`], so no token can be forgotten; each value once. Kept as
/// SHA-256 digests in a hash set: no second copy of a secret, and a constant-time lookup, so
/// holding the tokens of a config.toml with many runners costs linear time.
static SEEN: LazyLock<Mutex<HashSet<[u8; 32]>>> = LazyLock::new(|| Mutex::new(HashSet::new()));

fn digest(value: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(value.as_bytes()).into()
}

/// Shorter values (empty, `1`, `true`) are no token; refusing them to children would break
/// ordinary variables.
const SEEN_MIN_LEN: usize = 8;

fn remember(value: &str) {
    let value = value.trim();
    if value.len() < SEEN_MIN_LEN || value.starts_with(['$', '<']) {
        return;
    }
    SEEN.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(digest(value));
}

/// Whether an environment value must not reach a child process: it is a token this process holds
/// (the privileged token, a runner token from config.toml or from GitLab), or it looks like a
/// GitLab token of any kind.
pub fn is_secret_value(value: &str) -> bool {
    let value = value.trim();
    if value.is_empty() {
        return false;
    }
    let held = SEEN
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .contains(&digest(value));
    held || SHAPE_PREFIXES
        .iter()
        .any(|p| value.starts_with(p) && value.len() - p.len() >= SHAPE_MIN_BODY)
}

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

/// Prefixes that mark a word of free text as a GitLab token, whoever's it is: runner
/// (`glrt-`, `glrtr-`, `GR1348941`), personal/project/group access (`glpat-`), CI job (`glcbt-`),
/// deploy (`gldt-`), trigger (`glptt-`), feed (`glft-`), OAuth (`gloas-`), agent (`glagent-`),
/// incoming mail (`glimt-`), SCIM (`glsoat-`) and feature-flag client (`glffct-`) tokens. The bare
/// `t1_` partition markers are left out: too common in ordinary words to mean a token.
const SHAPE_PREFIXES: &[&str] = &[
    "glagent-",
    "glffct-",
    "glsoat-",
    "glrtr-",
    "glpat-",
    "glcbt-",
    "glptt-",
    "gloas-",
    "glimt-",
    "glrt-",
    "gldt-",
    "glft-",
    "GR1348941",
];

/// A token-shaped word needs at least this many characters after its prefix; shorter ones (a
/// masked `glrt-ab…yz`, a bare `glrt-` in prose) are not tokens.
const SHAPE_MIN_BODY: usize = 8;

/// Characters a GitLab token is made of (routable tokens add `.`-separated parts).
fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')
}

/// `text` with every occurrence of a `known` secret and every token-shaped word replaced by its
/// [`Masked`] form. Text that comes from outside (a server's error body) goes through this before
/// it reaches a message, a finding or a log; `known` holds the exact tokens that text may echo
/// (the privileged token, the runner token of the request), which catches tokens of any shape.
pub fn mask_tokens_in(text: &str, known: &[&str]) -> String {
    let mut out = text.to_string();
    for secret in known {
        // A value this short is no token; masking it would garble ordinary text.
        if secret.len() >= 6 && out.contains(secret) {
            out = out.replace(secret, Masked::of(secret).as_str());
        }
    }
    let mut masked = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some((start, prefix)) = next_token_start(rest) {
        masked.push_str(&rest[..start]);
        let word = &rest[start..];
        let body_len = word[prefix.len()..]
            .find(|c: char| !is_token_char(c))
            .unwrap_or(word.len() - prefix.len());
        // A sentence's full stop is not part of the token.
        let token = word[..prefix.len() + body_len].trim_end_matches('.');
        if token.len() - prefix.len() >= SHAPE_MIN_BODY {
            masked.push_str(Masked::of(token).as_str());
        } else {
            masked.push_str(token);
        }
        rest = &word[token.len()..];
    }
    masked.push_str(rest);
    masked
}

/// The first place in `text` where a token prefix starts a word, and the prefix.
fn next_token_start(text: &str) -> Option<(usize, &'static str)> {
    let mut previous: Option<char> = None;
    for (i, c) in text.char_indices() {
        if previous.is_none_or(|p| !is_token_char(p)) {
            if let Some(prefix) = SHAPE_PREFIXES.iter().find(|p| text[i..].starts_with(*p)) {
                return Some((i, prefix));
            }
        }
        previous = Some(c);
    }
    None
}

/// A runner authentication token (`[[runners]].token`).
#[derive(Clone)]
pub struct RunnerToken(SecretString);

/// The privileged (personal, group or project access) token used for admin calls.
#[derive(Clone)]
pub struct AdminToken(SecretString);

impl RunnerToken {
    pub fn new(value: impl Into<String>) -> Self {
        let value = value.into();
        remember(&value);
        Self(SecretString::from(value))
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
        let value = value.into();
        remember(&value);
        Self(SecretString::from(value))
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

impl schemars::JsonSchema for Masked {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "MaskedToken".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A token, masked: its known prefix, at most two characters, `…`, the last two (`glrt-ab…yz`). Never a full token.",
            "pattern": "…"
        })
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
    fn tokens_in_free_text_are_masked() {
        let text =
            "bad token glpat-abcdefghijklmnopqrst, runner \"glrt-t1_ABCDEFGHIJKLMNOPQRST\". \
                    reg GR1348941zyxwvutsrqponmlk and job glcbt-64_abcdefghijklmnop.01.xyz.";
        let out = mask_tokens_in(text, &[]);
        assert_eq!(
            out,
            "bad token glpat-ab…st, runner \"glrt-t1_AB…ST\". reg GR1348941zy…lk and job glcbt-64…yz."
        );
        // Exact secrets of any shape; prose and masked forms stay as they are.
        let out = mask_tokens_in(
            "legacy 0123456789abcdefABCD and glrt-ab…yz, glrt- prefix, notglpat-abcdefghijkl",
            &["0123456789abcdefABCD"],
        );
        assert_eq!(
            out,
            "legacy 01…CD and glrt-ab…yz, glrt- prefix, notglpat-abcdefghijkl"
        );
    }

    #[test]
    fn held_and_token_shaped_values_are_secret() {
        let _held = RunnerToken::new("0123456789legacyrunner");
        assert!(is_secret_value("0123456789legacyrunner"));
        assert!(is_secret_value("glpat-zzzzzzzzzzzzzzzzzzzz"));
        assert!(!is_secret_value("0123456789legacyrunneR"));
        assert!(!is_secret_value("/usr/bin:/bin"));
        assert!(!is_secret_value(""));
        // Placeholders and short values are never held.
        let _placeholder = RunnerToken::new("<new token>");
        assert!(!is_secret_value("<new token>"));
    }

    #[test]
    fn debug_never_shows_the_token() {
        let t = RunnerToken::new("glrt-abcdefghijklmnopqrst");
        assert_eq!(format!("{t:?}"), "RunnerToken(glrt-ab…st)");
        let a = AdminToken::new("glpat-abcdefghijklmnopqrst");
        assert!(!format!("{a:?}").contains("cdefghij"));
    }
}
