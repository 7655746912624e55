//! Pacing by GitLab's rate-limit headers, before a 429 happens.
//!
//! Every GitLab answer of a throttled path carries `RateLimit-Limit`, `RateLimit-Remaining` and
//! `RateLimit-Reset` (reference §4.2). A [`Pacer`] keeps the latest of them for one throttle,
//! shared by every request of the process that counts against it (all clients of one instance,
//! in every phase of a run and every agent cycle), and admits requests:
//!
//! - while more than a quarter of the limit is left, at once;
//! - below that, spread evenly over the time left until the reset: the quota left, less the
//!   requests already in flight (they will use some of it), divided over that time;
//! - with nothing left after the requests in flight, at the reset.
//!
//! Rack::Attack counts requests with a personal access token per user and those with a runner
//! token per client address (GitLab `lib/gitlab/rack_attack.rb`), under throttles of their own,
//! which each answer names (`RateLimit-Name`). So a pacer is one named throttle of one instance,
//! and each kind of request (privileged or not) is paced by the throttle its answers named last;
//! until one has answered, by a pacer of its own.

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
    /// Requests admitted whose answer has not come back.
    in_flight: u64,
    /// The earliest start of the next request while requests are spread out.
    next_slot: Option<Instant>,
}

#[derive(Default)]
struct Registry {
    /// The throttle each kind of request to an origin counts against, as its answers named it.
    names: HashMap<(String, bool), String>,
    pacers: HashMap<(String, String), Arc<Pacer>>,
}

fn registry() -> &'static Mutex<Registry> {
    static ALL: OnceLock<Mutex<Registry>> = OnceLock::new();
    ALL.get_or_init(Mutex::default)
}

#[derive(Debug, Default)]
pub struct Pacer {
    quota: Mutex<Quota>,
}

/// A request admitted by a [`Pacer`]: in flight until dropped.
pub struct Admitted {
    pacer: Arc<Pacer>,
    /// How long to wait before sending.
    pub wait: Option<Duration>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut q = self.pacer.lock();
        q.in_flight = q.in_flight.saturating_sub(1);
    }
}

/// What an answer said about the quota.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    pub remaining: Option<u64>,
    pub limit: Option<u64>,
    /// Until the quota resets, as a wait from now.
    pub reset_in: Option<Duration>,
    pub rate_limited: bool,
}

impl Pacer {
    /// The pacer requests to `origin` with a personal access token (`private`), or with a
    /// runner token or none, count against: the throttle their answers named last.
    pub fn shared(origin: &str, private: bool) -> Arc<Pacer> {
        let mut all = registry().lock().unwrap_or_else(PoisonError::into_inner);
        let name = all
            .names
            .get(&(origin.to_string(), private))
            .cloned()
            .unwrap_or_else(|| format!("(unnamed, private: {private})"));
        all.pacers
            .entry((origin.to_string(), name))
            .or_default()
            .clone()
    }

    /// The pacer of the throttle an answer named (`RateLimit-Name`), which requests of this kind
    /// count against from now on; without a name, [`Pacer::shared`].
    pub fn named(origin: &str, private: bool, name: Option<&str>) -> Arc<Pacer> {
        let Some(name) = name.filter(|n| !n.is_empty()) else {
            return Self::shared(origin, private);
        };
        let mut all = registry().lock().unwrap_or_else(PoisonError::into_inner);
        all.names
            .insert((origin.to_string(), private), name.to_string());
        all.pacers
            .entry((origin.to_string(), name.to_string()))
            .or_default()
            .clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Quota> {
        // A poisoned lock only means another task panicked; the numbers are still usable.
        self.quota.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admit one request at `now`: how long it waits, and its place among those in flight.
    pub fn admit(self: &Arc<Self>, now: Instant) -> Admitted {
        let mut q = self.lock();
        if q.reset_at.is_some_and(|at| now >= at) {
            // A new window: the whole quota again.
            q.remaining = None;
            q.reset_at = None;
            q.next_slot = None;
        }
        let others = q.in_flight;
        q.in_flight += 1;
        let wait = match (q.remaining, q.reset_at) {
            (Some(remaining), Some(reset_at)) if low(remaining, q.limit, others) => {
                let left = remaining.saturating_sub(others);
                if left == 0 {
                    Some(reset_at - now)
                } else {
                    let spacing = (reset_at - now) / u32::try_from(left).unwrap_or(u32::MAX);
                    let start = q.next_slot.map_or(now, |slot| slot.max(now));
                    q.next_slot = Some(start + spacing);
                    (start > now).then(|| start - now)
                }
            }
            _ => None,
        };
        drop(q);
        Admitted {
            pacer: self.clone(),
            wait,
        }
    }

    /// Take in what an answer said. Answers come back out of order: within one window the
    /// lowest `Remaining` is the latest.
    pub fn seen(&self, seen: Seen, now: Instant) {
        let remaining = if seen.rate_limited {
            Some(0)
        } else {
            seen.remaining
        };
        let (Some(remaining), Some(reset_in)) = (remaining, seen.reset_in) else {
            return;
        };
        let reset_at = now + reset_in;
        let mut q = self.lock();
        let same_window = q
            .reset_at
            .is_some_and(|at| at.max(reset_at) - at.min(reset_at) <= Duration::from_secs(2));
        q.remaining = Some(match (same_window, q.remaining) {
            (true, Some(before)) => before.min(remaining),
            _ => remaining,
        });
        q.reset_at = Some(if same_window {
            q.reset_at.map_or(reset_at, |at| at.max(reset_at))
        } else {
            reset_at
        });
        if seen.limit.is_some() {
            q.limit = seen.limit;
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

    fn seen(remaining: u64, limit: u64, reset_in: u64) -> Seen {
        Seen {
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
        p.seen(seen(600, 1000, 60), t0);
        assert!(p.admit(t0).wait.is_none());
        // 10 left, 10 s to the reset: one request a second, shared by every caller.
        p.seen(seen(10, 1000, 10), t0);
        let first = p.admit(t0);
        let second = p.admit(t0);
        let third = p.admit(t0);
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
        p.seen(seen(2, 100, 5), t0);
        let _a = p.admit(t0);
        let _b = p.admit(t0);
        let c = p.admit(t0);
        assert_eq!(c.wait, Some(Duration::from_secs(5)));
        drop(c);
        // After the reset: the whole quota again.
        let later = t0 + Duration::from_secs(6);
        assert!(p.admit(later).wait.is_none());
    }

    #[test]
    fn an_older_answer_does_not_raise_what_is_left_and_a_429_empties_it() {
        let p = Arc::new(Pacer::default());
        let t0 = Instant::now();
        p.seen(seen(3, 100, 10), t0);
        p.seen(seen(40, 100, 10), t0);
        assert_eq!(p.lock().remaining, Some(3));
        p.seen(
            Seen {
                rate_limited: true,
                ..seen(3, 100, 10)
            },
            t0,
        );
        assert_eq!(p.admit(t0).wait, Some(Duration::from_secs(10)));
    }

    #[test]
    fn a_throttle_is_shared_by_the_requests_its_answers_name() {
        let origin = "https://pace-test.example.com";
        let a = Pacer::shared(origin, true);
        let b = Pacer::shared(origin, false);
        assert!(Arc::ptr_eq(&a, &Pacer::shared(origin, true)));
        assert!(!Arc::ptr_eq(&a, &b));
        // Both kinds answered by one throttle: one pacer.
        let named = Pacer::named(origin, true, Some("throttle_authenticated_api"));
        Pacer::named(origin, false, Some("throttle_authenticated_api"));
        assert!(Arc::ptr_eq(&named, &Pacer::shared(origin, true)));
        assert!(Arc::ptr_eq(&named, &Pacer::shared(origin, false)));
        // Apart again once the answers name two.
        Pacer::named(origin, false, Some("throttle_unauthenticated_api"));
        assert!(!Arc::ptr_eq(
            &Pacer::shared(origin, true),
            &Pacer::shared(origin, false)
        ));
    }
}
