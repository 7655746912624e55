//! Exit status of the contract.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Every runner is healthy at the end.
    Healthy = 0,
    /// At least one runner is still broken, failed, or needs a person.
    StillBroken = 1,
    /// The command could not run: bad arguments, unusable settings, a lock held.
    CouldNotRun = 2,
}

impl ExitStatus {
    pub fn code(self) -> u8 {
        self as u8
    }
}
