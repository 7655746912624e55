//! Hooks like certbot's: `pre` before anything changes, `deploy` once per rotated runner, `post`
//! at the end. They get runner names and actions in the environment, never a token: they run
//! through the service module's one command runner, which
//! gives every child a cleared environment plus an allowlist (PATH, LANG, `LC_*`, TZ, HOME and
//! the hook variables), so no secret runner-medic's own environment holds can reach them.

use std::time::Duration;

use crate::service::run_command_with_env;

pub struct HookEnv {
    pub vars: Vec<(String, String)>,
}

/// Run `command` with `sh -c`, bounded at five minutes. Err carries the stderr.
pub fn run(kind: &str, command: &str, env: &HookEnv) -> Result<(), String> {
    let mut vars = vec![("RUNNER_MEDIC_HOOK".to_string(), kind.to_string())];
    vars.extend(env.vars.iter().cloned());
    let argv = ["sh".to_string(), "-c".to_string(), command.to_string()];
    let out =
        run_command_with_env(&argv, &vars, Duration::from_secs(300)).map_err(|e| e.to_string())?;
    if out.success() {
        tracing::info!(hook = kind, "hook ran");
        Ok(())
    } else {
        Err(format!(
            "the {kind} hook `{command}` failed (exit {:?}): {}",
            out.code,
            out.stderr.trim()
        ))
    }
}
