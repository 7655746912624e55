//! Findings: what is wrong, how bad, and the fix. Codes are the stable ones of docs/reference.md.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

macro_rules! codes {
    ($($variant:ident = $text:literal),+ $(,)?) => {
        /// The stable finding codes of the contract.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum FindingCode { $($variant),+ }

        impl FindingCode {
            pub const ALL: &'static [FindingCode] = &[$(FindingCode::$variant),+];
            pub fn as_str(self) -> &'static str {
                match self { $(FindingCode::$variant => $text),+ }
            }
        }
    };
}

codes! {
    ConfigUnreadable = "config_unreadable",
    ConfigInvalid = "config_invalid",
    TokenMissing = "token_missing",
    TokenMalformed = "token_malformed",
    RegistrationTokenInConfig = "registration_token_in_config",
    DuplicateToken = "duplicate_token",
    UrlInvalid = "url_invalid",
    UrlMismatch = "url_mismatch",
    DnsFailure = "dns_failure",
    ConnectFailure = "connect_failure",
    TlsFailure = "tls_failure",
    ServerError = "server_error",
    TokenExpired = "token_expired",
    TokenRevoked = "token_revoked",
    RunnerDeleted = "runner_deleted",
    RunnerPaused = "runner_paused",
    TokenExpiring = "token_expiring",
    ShortTokenLifetime = "short_token_lifetime",
    ClockSkew = "clock_skew",
    AdminTokenInvalid = "admin_token_invalid",
    AdminTokenExpiring = "admin_token_expiring",
    AdminTokenScopeMissing = "admin_token_scope_missing",
    ConfigChanged = "config_changed",
    ConfigReverted = "config_reverted",
    ConfigUnwritable = "config_unwritable",
    JournalUnwritable = "journal_unwritable",
    TokenFromEnvironment = "token_from_environment",
    TokenRotationDisabled = "token_rotation_disabled",
    RunnerOrphaned = "runner_orphaned",
    SharedToken = "shared_token",
    FleetStoreUnavailable = "fleet_store_unavailable",
    TlsFileUnusable = "tls_file_unusable",
    RunTimeout = "run_timeout",
}

impl FindingCode {
    /// GitLab could not be reached or answered with a failure: the network, DNS, TLS or the
    /// server, not the runner, is what is wrong.
    pub fn is_connectivity(self) -> bool {
        matches!(
            self,
            Self::DnsFailure | Self::ConnectFailure | Self::TlsFailure | Self::ServerError
        )
    }

    /// A cause no new token fixes: a person must act (the finding's fix says how), and rotate
    /// leaves the runner as it is.
    pub fn needs_person(self) -> bool {
        self.is_connectivity()
            || matches!(
                self,
                Self::TokenFromEnvironment
                    | Self::RunnerOrphaned
                    | Self::UrlInvalid
                    | Self::UrlMismatch
            )
    }
}

impl schemars::JsonSchema for FindingCode {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "FindingCode".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let codes: Vec<&str> = FindingCode::ALL.iter().map(|c| c.as_str()).collect();
        schemars::json_schema!({
            "type": "string",
            "description": "A stable finding code (docs/reference.md, \"Finding codes\").",
            "enum": codes
        })
    }
}

impl Serialize for FindingCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Finding {
    pub code: FindingCode,
    pub severity: Severity,
    pub message: String,
    pub fix: String,
    /// Line in config.toml the finding is about, when it is about one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
}

impl Finding {
    pub fn new(
        code: FindingCode,
        severity: Severity,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            code,
            severity,
            message: message.into(),
            fix: fix.into(),
            line: None,
            column: None,
        }
    }

    pub fn error(code: FindingCode, message: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::new(code, Severity::Error, message, fix)
    }

    pub fn warning(code: FindingCode, message: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::new(code, Severity::Warning, message, fix)
    }

    pub fn info(code: FindingCode, message: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::new(code, Severity::Info, message, fix)
    }

    #[must_use]
    pub fn at(mut self, line: Option<usize>) -> Self {
        self.line = line;
        self
    }
}
