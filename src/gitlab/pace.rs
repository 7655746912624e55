//! Pacing by GitLab's rate-limit headers, before a 429 happens.
//!
//! Every GitLab answer of a throttled path carries `RateLimit-Name`, `RateLimit-Limit`,
//! `RateLimit-Remaining` and `RateLimit-Reset` (reference §4.2). The [`Pacer`] of an instance
//! keeps the latest of them for each throttle, shared by every request of the process (all
//! clients, every phase of a run, every agent cycle), and admits requests:
//!
//! - while more than a quarter of the limit is left, at once;
//! - below that, spread evenly over the time left until the reset: the quota left, less the
//!   requests already in flight (they will use some of it), divided over that time;
//! - with nothing left after the requests in flight, at the reset.
//!
//! The quarter left is not runner-medic's to use up: a per-address throttle is shared with
//! gitlab-runner's own job requests from the same host, and with the other hosts behind one NAT.
//!
//! Rack::Attack counts requests with a personal access token per user and those with a runner
//! token per client address (GitLab `lib/gitlab/rack_attack.rb`), under throttles of their own,
//! which each answer names. So each kind of request (privileged or not) is paced by the
//! throttle its answers named last; requests in flight count against it whatever their kind,
//! unless their kind is known to answer to another throttle.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// Below `limit / LOW_SHARE` left, requests are spread out.
const LOW_SHARE: u64 = 4;

/// Without a `RateLimit-Limit`, this many left or fewer is low.
const LOW_FLOOR: u64 = 16;

#[derive(Debug, Default)]
struct Quota {
    remaining: Option<u64>,
    limit: Option<u64>,
    reset_at: Option<Instant>,
    /// The earliest start of the next request while requests are spread out.
    next_slot: Option<Instant>,
}

#[derive(Debug, Default)]
struct State {
    /// The throttle each kind of request (`true`: privileged) answered to last.
    names: HashMap<bool, String>,
    quotas: HashMap<String, Quota>,
    /// Requests admitted whose answer has not come back, by kind.
    in_flight: HashMap<bool, u64>,
}

/// The rate-limit state of one GitLab instance (one origin).
#[derive(Debug, Default)]
pub struct Pacer {
    state: Mutex<State>,
}

/// A request admitted by a [`Pacer`]: in flight until dropped.
pub struct Admitted {
    pacer: Arc<Pacer>,
    private: bool,
    /// How long to wait before sending.
    pub wait: Option<Duration>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut s = self.pacer.lock();
        if let Some(n) = s.in_flight.get_mut(&self.private) {
            *n = n.saturating_sub(1);
        }
    }
}

/// What an answer said about the quota.
#[derive(Debug, Clone, Copy, Default)]
pub struct Seen<'a> {
    pub name: Option<&'a str>,
    pub remaining: Option<u64>,
    pub limit: Option<u64>,
    /// Until the quota resets, as a wait from now.
    pub reset_in: Option<Duration>,
    pub rate_limited: bool,
}

impl Pacer {
    /// The pacer of the instance at `origin`, shared by the whole process.
    pub fn of(origin: &str) -> Arc<Pacer> {
        static ALL: OnceLock<Mutex<HashMap<String, Arc<Pacer>>>> = OnceLock::new();
        ALL.get_or_init(Mutex::default)
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(origin.to_string())
            .or_default()
            .clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means another task panicked; the numbers are still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admit one request (`private`: with the personal access token) at `now`: how long it
    /// waits, and its place among those in flight.
    pub fn admit(self: &Arc<Self>, private: bool, now: Instant) -> Admitted {
        let mut s = self.lock();
        let name = s.names.get(&private).cloned();
        // In flight and counting against the same throttle: this kind's, and any kind whose
        // throttle is not known to be another one.
        let others: u64 = s
            .in_flight
            .iter()
            .filter(|(kind, _)| match (s.names.get(kind), &name) {
                (Some(theirs), Some(ours)) => theirs == ours,
                _ => true,
            })
            .map(|(_, n)| *n)
            .sum();
        *s.in_flight.entry(private).or_insert(0) += 1;
        let wait = name
            .and_then(|name| s.quotas.get_mut(&name))
            .and_then(|q| q.admit(others, now));
        drop(s);
        Admitted {
            pacer: self.clone(),
            private,
            wait,
        }
    }

    /// Take in what an answer to a request of this kind said. Answers come back out of order:
    /// within one window the lowest `Remaining` is the latest.
    pub fn seen(&self, private: bool, seen: Seen<'_>, now: Instant) {
        let remaining = if seen.rate_limited {
            Some(0)
        } else {
            seen.remaining
        };
        let (Some(remaining), Some(reset_in)) = (remaining, seen.reset_in) else {
            return;
        };
        let mut s = self.lock();
        let name = seen.name.unwrap_or_default().to_string();
        s.names.insert(private, name.clone());
        s.quotas
            .entry(name)
            .or_default()
            .seen(remaining, seen.limit, now + reset_in);
    }
}

impl Quota {
    fn admit(&mut self, others: u64, now: Instant) -> Option<Duration> {
        if self.reset_at.is_some_and(|at| now >= at) {
            // A new window: the whole quota again.
            self.remaining = None;
            self.reset_at = None;
            self.next_slot = None;
        }
        let (Some(remaining), Some(reset_at)) = (self.remaining, self.reset_at) else {
            return None;
        };
        if !low(remaining, self.limit, others) {
            return None;
        }
        let left = remaining.saturating_sub(others);
        if left == 0 {
            return Some(reset_at - now);
        }
        let spacing = (reset_at - now) / u32::try_from(left).unwrap_or(u32::MAX);
        let start = self.next_slot.map_or(now, |slot| slot.max(now));
        self.next_slot = Some(start + spacing);
        (start > now).then(|| start - now)
    }

    fn seen(&mut self, remaining: u64, limit: Option<u64>, reset_at: Instant) {
        let same_window = self
            .reset_at
            .is_some_and(|at| at.max(reset_at) - at.min(reset_at) <= Duration::from_secs(2));
        self.remaining = Some(match (same_window, self.remaining) {
            (true, Some(before)) => before.min(remaining),
            _ => remaining,
        });
        self.reset_at = Some(match (same_window, self.reset_at) {
            (true, Some(at)) => at.max(reset_at),
            _ => reset_at,
        });
        if limit.is_some() {
            self.limit = limit;
        }
    }
}

/// Whether `remaining` is low enough to spread requests out: under a quarter of the limit, or no
/// more than the requests already in flight would use.
fn low(remaining: u64, limit: Option<u64>, in_flight: u64) -> bool {
    let share = limit.map_or(LOW_FLOOR, |l| l / LOW_SHARE);
    remaining <= share || remaining <= in_flight
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAME: &str = "throttle_authenticated_api";

    fn seen(remaining: u64, limit: u64, reset_in: u64) -> Seen<'static> {
        Seen {
            name: Some(NAME),
            remaining: Some(remaining),
            limit: Some(limit),
            reset_in: Some(Duration::from_secs(reset_in)),
            rate_limited: false,
        }
    }

    #[test]
    fn plenty_left_goes_at_once_and_little_left_is_spread_to_the_reset() {
        let p = Arc::new(Pacer::default());
        let t0 = Instant::now();
        p.seen(true, seen(600, 1000, 60), t0);
        assert!(p.admit(true, t0).wait.is_none());
        // 10 left, 10 s to the reset: about one request a second, shared by every caller.
        p.seen(true, seen(10, 1000, 10), t0);
        let first = p.admit(true, t0);
        let second = p.admit(true, t0);
        let third = p.admit(true, t0);
        assert_eq!(first.wait, None);
        // Each later one counts those still in flight: 9 left over 10 s, then 8.
        let w2 = second.wait.unwrap();
        let w3 = third.wait.unwrap();
        assert!(
            w2 >= Duration::from_millis(900) && w2 <= Duration::from_millis(1200),
            "{w2:?}"
        );
        assert!(w3 > w2, "{w3:?} after {w2:?}");
    }

    #[test]
    fn nothing_left_after_those_in_flight_waits_for_the_reset_and_a_new_window_frees_it() {
        let p = Arc::new(Pacer::default());
        let t0 = Instant::now();
        p.seen(true, seen(2, 100, 5), t0);
        let _a = p.admit(true, t0);
        let _b = p.admit(true, t0);
        let c = p.admit(true, t0);
        assert_eq!(c.wait, Some(Duration::from_secs(5)));
        drop(c);
        // After the reset: the whole quota again.
        let later = t0 + Duration::from_secs(6);
        assert!(p.admit(true, later).wait.is_none());
    }

    #[test]
    fn an_older_answer_does_not_raise_what_is_left_and_a_429_empties_it() {
        let p = Arc::new(Pacer::default());
        let t0 = Instant::now();
        p.seen(true, seen(3, 100, 10), t0);
        p.seen(true, seen(40, 100, 10), t0);
        assert_eq!(p.lock().quotas[NAME].remaining, Some(3));
        p.seen(
            true,
            Seen {
                rate_limited: true,
                ..seen(3, 100, 10)
            },
            t0,
        );
        assert_eq!(p.admit(true, t0).wait, Some(Duration::from_secs(10)));
    }

    #[test]
    fn requests_in_flight_count_against_the_throttle_their_kind_answers_to() {
        let p = Arc::new(Pacer::default());
        let t0 = Instant::now();
        // Sent before any answer: nothing known, nothing paced.
        let runner: Vec<_> = (0..3).map(|_| p.admit(false, t0)).collect();
        assert!(runner.iter().all(|a| a.wait.is_none()));
        // One throttle for both kinds, 3 left: the three in flight use it up.
        p.seen(false, seen(3, 100, 5), t0);
        p.seen(true, seen(3, 100, 5), t0);
        assert_eq!(p.admit(true, t0).wait, Some(Duration::from_secs(5)));
        // Runner requests answer to a throttle of their own: privileged ones no longer count them.
        let p = Arc::new(Pacer::default());
        let _runner: Vec<_> = (0..3).map(|_| p.admit(false, t0)).collect();
        p.seen(
            false,
            Seen {
                name: Some("throttle_unauthenticated_api"),
                ..seen(500, 1000, 5)
            },
            t0,
        );
        p.seen(true, seen(3, 100, 5), t0);
        let admitted = p.admit(true, t0);
        assert_eq!(admitted.wait, None, "3 left, none of ours in flight");
    }
}
