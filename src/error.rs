//! The one error a command returns when it could not run at all (exit 2): what went wrong, the
//! fix, and the error that caused it, printed by `main` as `caused by:` lines. Settings, rotate
//! and every command share it, so nothing is flattened on the way up.

/// The command could not run (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CouldNotRun {
    pub message: String,
    pub fix: String,
    /// The underlying error, kept for its `caused by:` chain.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl CouldNotRun {
    pub fn new(message: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            fix: fix.into(),
            source: None,
        }
    }

    /// Keep `cause` as the source, for the `caused by:` chain.
    #[must_use]
    pub fn caused_by(mut self, cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(cause));
        self
    }

    /// The causes below this error, outermost first (each error's `source()`), without lines
    /// that only repeat the message above them.
    pub fn causes(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut next = std::error::Error::source(self);
        while let Some(e) = next {
            let text = e.to_string();
            let shown = out.last().map_or(self.message.as_str(), String::as_str);
            if !shown.contains(&text) {
                out.push(text);
            }
            next = e.source();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_listed_once_each() {
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "permission denied");
        let e = CouldNotRun::new("cannot use the state directory", "fix it").caused_by(io);
        assert_eq!(e.causes(), vec!["permission denied".to_string()]);
        let repeated = std::io::Error::other("cannot use the state directory");
        let e = CouldNotRun::new("cannot use the state directory: x", "fix").caused_by(repeated);
        assert!(e.causes().is_empty());
    }
}
