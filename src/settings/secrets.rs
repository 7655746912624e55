//! The privileged token: where it comes from (environment, file, systemd credential) and the
//! rules a file holding it must meet.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use url::Url;

use super::{bad, Environment, SettingsError};
use crate::gitlab::AdminCredential;
use crate::secret::AdminToken;

/// The name of the privileged token among systemd's credentials: with `LoadCredential=` (or
/// `SetCredentialEncrypted=`) under this name, the token is read from
/// `$CREDENTIALS_DIRECTORY/runner-medic-admin-token` when no other source is given.
pub const ADMIN_TOKEN_CREDENTIAL: &str = "runner-medic-admin-token";

/// Whether a token file of this owner and mode may be used, and if not, why and the fix. The rule
/// of ssh for a private key, widened for mounted secrets: the owner (root or this user) alone may
/// read it (`0600`, `0400`); or, for a read-only file owned by root, its group may too (`0440`, as
/// Docker and Kubernetes mount secrets). Never writable by group or others, never readable by
/// others, never owned by another user.
fn token_file_refusal(path: &Path, uid: u32, mode: u32) -> Option<(String, String)> {
    let shown = path.display();
    let euid = nix::unistd::geteuid().as_raw();
    if uid != 0 && uid != euid {
        return Some((
            format!(
                "the admin token file `{shown}` is owned by uid {uid}, not by root or this user; refusing to use it"
            ),
            format!("chown root {shown} (or this user)"),
        ));
    }
    if mode & 0o022 != 0 {
        return Some((
            format!(
                "the admin token file `{shown}` is writable by others (mode {mode:04o}); refusing to use it"
            ),
            format!("chmod 600 {shown}"),
        ));
    }
    if mode & 0o007 != 0 {
        return Some((
            format!(
                "the admin token file `{shown}` is readable by others (mode {mode:04o}); refusing to use it"
            ),
            format!("chmod 600 {shown}"),
        ));
    }
    let read_only_secret = uid == 0 && mode & 0o222 == 0;
    if mode & 0o070 != 0 && !read_only_secret {
        return Some((
            format!(
                "the admin token file `{shown}` is readable by others (its group; mode {mode:04o}); refusing to use it"
            ),
            format!("chmod 600 {shown} (a read-only secret owned by root may be 0440)"),
        ));
    }
    None
}

/// Read the privileged token from a file the way ssh treats a private key (see
/// [`token_file_refusal`] for the modes accepted).
pub fn read_admin_token_file(path: &Path) -> Result<AdminToken, SettingsError> {
    read_secret_file("admin token file", path)
}

/// A one-line secret from a file that neither the group nor others may read.
pub(super) fn read_secret_file(what: &str, path: &Path) -> Result<AdminToken, SettingsError> {
    let meta = fs_err::metadata(path).map_err(|e| {
        bad(
            format!("cannot read the {what} `{}`: {}", path.display(), e.kind()),
            format!(
                "create it with `install -m 0600 /dev/null {}` and write the token into it",
                path.display()
            ),
        )
    })?;
    if !meta.is_file() {
        return Err(bad(
            format!("the {what} `{}` is not a regular file", path.display()),
            "point `--admin-token-file` at the file that holds the token",
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    if let Some((message, fix)) =
        token_file_refusal(path, std::os::unix::fs::MetadataExt::uid(&meta), mode)
    {
        return Err(bad(message, fix));
    }
    let text = fs_err::read_to_string(path).map_err(|e| {
        bad(
            format!("cannot read the {what} `{}`: {}", path.display(), e.kind()),
            "check its permissions",
        )
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(bad(
            format!("the {what} `{}` is empty", path.display()),
            "write the access token (scopes `create_runner` and `manage_runner`, or `api`) into it",
        ));
    }
    Ok(AdminToken::new(token))
}

/// The privileged token and the one URL it may be sent to: `RUNNER_MEDIC_ADMIN_TOKEN`, else the
/// token file (flag, then settings), else systemd's credential; refused without a GitLab URL.
pub(super) fn admin_credential(
    env: &Environment,
    token_file: Option<&Path>,
    gitlab_url: Option<&Url>,
) -> Result<Option<AdminCredential>, SettingsError> {
    let token = match (&env.admin_token, token_file) {
        (Some(t), _) if !t.trim().is_empty() => Some(AdminToken::new(t.trim())),
        (Some(_), _) => {
            return Err(bad(
                "RUNNER_MEDIC_ADMIN_TOKEN is set but empty",
                "unset it or put the access token in it",
            ))
        }
        (None, Some(path)) => Some(read_admin_token_file(path)?),
        (None, None) => match &env.credentials_dir {
            // systemd's credentials: used when present, and only when nothing else is set.
            Some(dir) if dir.join(ADMIN_TOKEN_CREDENTIAL).exists() => {
                Some(read_admin_token_file(&dir.join(ADMIN_TOKEN_CREDENTIAL))?)
            }
            _ => None,
        },
    };
    match (token, gitlab_url) {
        (Some(token), Some(url)) => {
            let loopback = url.host_str().is_some_and(|h| {
                h == "localhost"
                    || h == "[::1]"
                    || h.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
            });
            if url.scheme() == "http" && !loopback {
                // Allowed (internal instances exist), but never silently.
                tracing::warn!(url = %url, "the privileged token will travel over plain HTTP; use https");
            }
            Ok(Some(AdminCredential {
                url: url.clone(),
                token,
            }))
        }
        (Some(_), None) => Err(bad(
            "a privileged token was given but no `--gitlab-url`; runner-medic sends it only to a URL you name",
            "add `--gitlab-url https://your.gitlab` (or `gitlab_url` in the settings file)",
        )),
        (None, _) => Ok(None),
    }
}
