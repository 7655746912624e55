//! Hooks like certbot's: `pre` before anything changes, `deploy` once per rotated runner, `post`
//! at the end. They get runner names and actions in the environment, never a token.

use std::time::Duration;

use crate::service::run_command;

pub struct HookEnv {
    pub vars: Vec<(String, String)>,
}

/// Run `command` with `sh -c`, bounded at five minutes. Err carries the stderr.
pub fn run(kind: &str, command: &str, env: &HookEnv) -> Result<(), String> {
    let mut argv = vec!["env".to_string()];
    argv.push(format!("RUNNER_MEDIC_HOOK={kind}"));
    for (k, v) in &env.vars {
        argv.push(format!("{k}={v}"));
    }
    argv.extend(["sh".to_string(), "-c".to_string(), command.to_string()]);
    let out = run_command(&argv, Duration::from_secs(300)).map_err(|e| e.to_string())?;
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
