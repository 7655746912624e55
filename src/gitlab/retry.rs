//! When and how long to wait before trying a request again.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;

use super::Error;

/// Exponential backoff with full jitter, bounded in attempts and in total time. The statuses
/// retried are gitlab-runner's own (reference §4.3), minus 500 for calls that change state.
///
/// A 429 is different: GitLab says when to come back (`RateLimit-Reset`/`RateLimit-ResetTime`,
/// `Retry-After`), or (GitLab.com has sent 429s without any header, gitlab-org/gitlab#365728)
/// runner-medic backs off. Such waits are not bounded by `max_attempts` or `max_total` but by the
/// run's [`RetryBudget`], shared by every request of the run.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// No retry of a failure other than 429 starts once this much time has passed since the
    /// request's first attempt.
    pub max_total: Duration,
    /// What the whole run may spend waiting between attempts.
    pub budget: RetryBudget,
}

/// Rate-limited attempts of one request at most, whatever the budget: a server that answers 429
/// forever with a wait of zero must not make a run loop.
pub const MAX_RATE_LIMITED_ATTEMPTS: u32 = 50;

/// Time left for waiting between attempts, shared by every clone (one run, many clients).
#[derive(Debug, Clone)]
pub struct RetryBudget {
    total: Duration,
    left: Arc<Mutex<Duration>>,
}

impl RetryBudget {
    pub fn new(total: Duration) -> Self {
        Self {
            total,
            left: Arc::new(Mutex::new(total)),
        }
    }

    /// A whole budget of the same size, not shared with this one (the agent's next cycle).
    #[must_use]
    pub fn renewed(&self) -> Self {
        Self::new(self.total)
    }

    /// Spend `wait` if that much is left.
    pub fn take(&self, wait: Duration) -> bool {
        let mut left = self
            .left
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *left >= wait {
            *left -= wait;
            true
        } else {
            false
        }
    }

    pub fn left(&self) -> Duration {
        *self
            .left
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self::new(Duration::from_secs(600))
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
            max_total: Duration::from_secs(90),
            budget: RetryBudget::default(),
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
    /// The exponential wait before attempt `attempt + 1` (0-based), before jitter: the base
    /// delay doubled per attempt, capped at the maximum.
    pub fn backoff(&self, attempt: u32) -> Duration {
        self.base_delay
            .saturating_mul(2u32.saturating_pow(attempt))
            .min(self.max_delay)
    }

    /// The wait before attempt `attempt + 1`, or `None` to give up with `err`. The caller still
    /// checks the wait against `max_total` (not for 429) and takes it from the budget.
    pub fn next_delay(&self, attempt: u32, err: &Error, kind: Idempotency) -> Option<Duration> {
        let rate_limited = err.status() == Some(429);
        let limit = if rate_limited {
            MAX_RATE_LIMITED_ATTEMPTS.max(self.max_attempts)
        } else {
            self.max_attempts
        };
        if attempt + 1 >= limit {
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
            return Some(*after);
        }
        let exp = self.backoff(attempt);
        let jittered = rand::thread_rng().gen_range(exp / 2..=exp);
        Some(jittered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(status: u16, retry_after: Option<Duration>) -> Error {
        Error::Http {
            url: "u".into(),
            status,
            message: String::new(),
            retry_after,
        }
    }

    #[test]
    fn a_429_is_retried_past_max_attempts_with_the_wait_gitlab_asked_for() {
        let p = RetryPolicy::default();
        let wait = Some(Duration::from_secs(120));
        assert_eq!(
            p.next_delay(10, &http(429, wait), Idempotency::Unsafe),
            wait
        );
        assert!(p
            .next_delay(
                MAX_RATE_LIMITED_ATTEMPTS,
                &http(429, wait),
                Idempotency::Safe
            )
            .is_none());
        // Without a header: backoff.
        let d = p
            .next_delay(1, &http(429, None), Idempotency::Safe)
            .unwrap();
        assert!(d <= p.max_delay);
        // Other failures keep the attempt limit.
        assert!(p
            .next_delay(4, &http(503, None), Idempotency::Safe)
            .is_none());
    }

    #[test]
    fn the_budget_is_shared_by_clones() {
        let p = RetryPolicy {
            budget: RetryBudget::new(Duration::from_secs(10)),
            ..RetryPolicy::default()
        };
        let q = p.clone();
        assert!(p.budget.take(Duration::from_secs(6)));
        assert!(!q.budget.take(Duration::from_secs(6)));
        assert!(q.budget.take(Duration::from_secs(4)));
        assert_eq!(p.budget.left(), Duration::ZERO);
        assert_eq!(p.budget.renewed().left(), Duration::from_secs(10));
    }
}
