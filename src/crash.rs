//! Named crash points for the crash-safety tests.
//!
//! `main` reads `RUNNER_MEDIC_CRASH_AT` once and hands the name here. When execution reaches the
//! checkpoint of that name the process aborts on the spot, as a power cut or `kill -9` would,
//! so the tests can prove that the next run repairs whatever was left half-done. `name#n`
//! aborts the `n`-th time the checkpoint is reached (a later save of the journal, say).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

static CRASH_AT: OnceLock<(String, usize)> = OnceLock::new();
static REACHED: AtomicUsize = AtomicUsize::new(0);
static PAUSE_AT: OnceLock<String> = OnceLock::new();

/// Every checkpoint the code defines, so tests can iterate over all of them.
pub const CHECKPOINTS: &[&str] = &[
    "after-journal-planned",
    "after-token-obtained",
    "after-journal-batch",
    "after-journal-obtained",
    "after-backup",
    "after-temp-write",
    "after-rename",
    "after-stop",
    "after-journal-written",
    "after-start",
    "after-verify",
    "after-delete-replaced",
];

pub fn arm(name: Option<String>) {
    if let Some(name) = name.filter(|n| !n.is_empty()) {
        let armed = match name.rsplit_once('#') {
            Some((point, n)) => (point.to_string(), n.parse().unwrap_or(1)),
            None => (name, 1),
        };
        // Set once at start-up; a second call is ignored on purpose.
        let _ = CRASH_AT.set(armed);
    }
}

/// `RUNNER_MEDIC_PAUSE_AT`: at the checkpoint of that name the process stops itself (SIGSTOP),
/// frozen exactly there, so that a test can kill it (SIGKILL) or change the world around it and
/// let it go on (SIGCONT).
pub fn arm_pause(name: Option<String>) {
    if let Some(name) = name.filter(|n| !n.is_empty()) {
        let _ = PAUSE_AT.set(name);
    }
}

/// Abort the process if the armed crash point is `name`; stop it if the armed pause point is.
pub fn checkpoint(name: &str) {
    if PAUSE_AT.get().is_some_and(|armed| armed == name) {
        tracing::warn!(checkpoint = name, "pause point reached, stopping");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGSTOP);
    }
    let Some((armed, nth)) = CRASH_AT.get() else {
        return;
    };
    if armed == name && REACHED.fetch_add(1, Ordering::SeqCst) + 1 == *nth {
        tracing::warn!(checkpoint = name, "crash point reached, aborting");
        std::process::abort();
    }
}
