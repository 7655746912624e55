//! When and how long to wait before trying a request again.

use std::time::Duration;

use rand::Rng;

use super::Error;

/// Exponential backoff with full jitter, bounded in attempts and in total time. The statuses
/// retried are gitlab-runner's own (reference §4.3), minus 500 for calls that change state.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// No retry starts once this much time has passed since the first attempt.
    pub max_total: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
            max_total: Duration::from_secs(90),
        }
    }
}

/// How safe it is to send a request twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idempotency {
    /// Reads, verify, delete by id, reset by id (the last answer holds the valid token).
    Safe,
    /// Creations and self-resets: a second send after an uncertain outcome can do harm, so only
    /// answers that prove the first was not acted on (429, a refused connection) are retried.
    Unsafe,
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1`, or `None` to give up with `err`.
    pub fn next_delay(&self, attempt: u32, err: &Error, kind: Idempotency) -> Option<Duration> {
        if attempt + 1 >= self.max_attempts {
            return None;
        }
        let retryable = match (err, kind) {
            (Error::Http { status: 429, .. }, _) => true,
            (Error::Http { status, .. }, Idempotency::Safe) => {
                matches!(status, 408 | 500 | 502 | 503 | 504) || *status >= 512
            }
            (Error::Dns { .. }, _) => true,
            (Error::Connect { reason, .. }, Idempotency::Unsafe) => {
                reason.to_lowercase().contains("refused")
            }
            (Error::Connect { .. } | Error::Timeout { .. }, Idempotency::Safe) => true,
            _ => false,
        };
        if !retryable {
            return None;
        }
        if let Error::Http {
            retry_after: Some(after),
            ..
        } = err
        {
            return Some((*after).min(self.max_delay.max(*after).min(self.max_total)));
        }
        let exp = self
            .base_delay
            .saturating_mul(2u32.saturating_pow(attempt))
            .min(self.max_delay);
        let jittered = rand::thread_rng().gen_range(exp / 2..=exp);
        Some(jittered)
    }
}
