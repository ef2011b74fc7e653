//! The leader's lease clock. Followers keep none: only the leader decides expiry.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Lessor {
    inner: Mutex<Inner>,
    /// Wakes those waiting for this member's clock to start (see [`Lessor::wait_primary`]).
    promoted: tokio::sync::Notify,
    /// Wakes those waiting for checkpoints in flight to land (see [`Lessor::checkpoints_landed`]).
    landed: tokio::sync::Notify,
    /// How often the leader records what is left of a lease, if it does
    /// (`--experimental-enable-lease-checkpoint`): a lease then survives a change of leader with the
    /// time it had left instead of its whole TTL, so that leader changes cannot keep it alive for ever.
    checkpoint_every: Option<Duration>,
}

#[derive(Default)]
struct Inner {
    /// This member leads and runs the clock.
    primary: bool,
    deadlines: HashMap<i64, Instant>,
    /// Expired leases whose revoke is proposed and not yet applied.
    revoking: HashSet<i64>,
    /// When each lease's remaining TTL is next to be recorded.
    checkpoints: HashMap<i64, Instant>,
    /// Checkpoints computed and not yet applied (or failed), by lease: how many of each. Kept across
    /// promotions and demotions, since the writes carrying them are.
    in_flight: HashMap<i64, usize>,
}

impl Lessor {
    pub fn new(checkpoint_every: Option<Duration>) -> Lessor {
        Lessor { checkpoint_every, ..Lessor::default() }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the leader records what is left of leases.
    pub fn checkpoints(&self) -> bool {
        self.checkpoint_every.is_some()
    }

    /// Starts the clock of a lease it has not seen yet (granted since the last tick): `ttl` from `now`.
    fn start(&self, inner: &mut Inner, id: i64, ttl: i64, now: Instant) -> Instant {
        let deadline = now + secs(ttl);
        inner.deadlines.insert(id, deadline);
        self.schedule(inner, id, secs(ttl), now);
        deadline
    }

    /// Plans lease `id`'s next checkpoint, if `left` is longer than the interval (etcd's
    /// `scheduleCheckpointIfNeeded`).
    fn schedule(&self, inner: &mut Inner, id: i64, left: Duration, now: Instant) {
        match self.checkpoint_every {
            Some(every) if left > every => inner.checkpoints.insert(id, now + every),
            _ => inner.checkpoints.remove(&id),
        };
    }

    pub fn is_primary(&self) -> bool {
        self.lock().primary
    }

    /// Waits until this member runs the clock: a new leader answers for leases only once it has
    /// started them from what they had left, not a moment before with every lease's whole TTL.
    pub async fn wait_primary(&self) {
        loop {
            // Created before the check: a promotion in between still wakes it.
            let promoted = self.promoted.notified();
            if self.is_primary() {
                return;
            }
            promoted.await;
        }
    }

    /// This member became the leader: every lease gets `ttl` plus `extend` from now (etcd's
    /// `Promote`), since the old leader's clock is gone with it; `ttl` is the lease's whole TTL, or what
    /// was left at its last checkpoint.
    pub fn promote(&self, leases: &[(i64, i64)], extend: Duration) {
        let mut inner = self.lock();
        let now = Instant::now();
        inner.primary = true;
        inner.revoking.clear();
        inner.deadlines = leases.iter().map(|(id, ttl)| (*id, now + secs(*ttl) + extend)).collect();
        inner.checkpoints.clear();
        for (id, ttl) in leases {
            self.schedule(&mut inner, *id, secs(*ttl), now);
        }
        drop(inner);
        self.promoted.notify_waiters();
    }

    pub fn demote(&self) {
        let mut inner = self.lock();
        inner.primary = false;
        inner.deadlines.clear();
        inner.revoking.clear();
        inner.checkpoints.clear();
    }

    /// Renews lease `id` of granted TTL `ttl` (if it exists); returns the TTL to report, 0 if the lease
    /// is unknown or already expired (a revoke is on its way), as etcd answers a keepalive.
    pub fn renew(&self, id: i64, ttl: Option<i64>) -> i64 {
        let Some(ttl) = ttl else { return 0 };
        let mut inner = self.lock();
        let now = Instant::now();
        if inner.revoking.contains(&id) || inner.deadlines.get(&id).is_some_and(|d| *d <= now) {
            return 0;
        }
        inner.deadlines.insert(id, now + secs(ttl));
        self.schedule(&mut inner, id, secs(ttl), now);
        ttl
    }

    /// Seconds left on lease `id` of granted TTL `ttl`, rounded down as etcd reports it: a lease the
    /// clock has not seen yet (granted since its last tick) starts now, as the tick would start it, and
    /// so reports `ttl - 1` right after its grant, as etcd's does.
    pub fn remaining(&self, id: i64, ttl: i64) -> i64 {
        let mut inner = self.lock();
        let now = Instant::now();
        let deadline = match inner.deadlines.get(&id) {
            Some(d) if inner.primary => *d,
            _ if inner.primary => self.start(&mut inner, id, ttl, now),
            _ => now + secs(ttl),
        };
        // Measured a moment after the start, so a lease started now reports `ttl - 1`, as etcd's does.
        deadline.saturating_duration_since(Instant::now()).as_secs() as i64
    }

    /// Brings the clock in line with `leases` (new ones start now, revoked ones go) and returns the
    /// expired leases not already being revoked, marking them as being revoked.
    pub fn expired(&self, leases: &[(i64, i64)]) -> Vec<i64> {
        let mut inner = self.lock();
        if !inner.primary {
            return Vec::new();
        }
        let now = Instant::now();
        let live: HashSet<i64> = leases.iter().map(|(id, _)| *id).collect();
        inner.deadlines.retain(|id, _| live.contains(id));
        inner.revoking.retain(|id| live.contains(id));
        inner.checkpoints.retain(|id, _| live.contains(id));
        for (id, ttl) in leases {
            if !inner.deadlines.contains_key(id) {
                self.start(&mut inner, *id, *ttl, now);
            }
        }
        let expired: Vec<i64> = inner
            .deadlines
            .iter()
            .filter(|(id, d)| **d <= now && !inner.revoking.contains(id))
            .map(|(id, _)| *id)
            .collect();
        inner.revoking.extend(expired.iter().copied());
        expired
    }

    /// The leases whose checkpoint is due, with the seconds they have left (rounded up, as etcd's) if
    /// that is less than their granted TTL (`granted`: id, TTL); the next checkpoint of each is
    /// planned if what is left is still longer than the interval (etcd's
    /// `findDueScheduledCheckpoints`). They count as in flight until [`Lessor::checkpoints_done`].
    pub fn due_checkpoints(&self, granted: &[(i64, i64)]) -> Vec<(i64, i64)> {
        self.due_checkpoints_at(granted, Instant::now())
    }

    fn due_checkpoints_at(&self, granted: &[(i64, i64)], now: Instant) -> Vec<(i64, i64)> {
        let mut inner = self.lock();
        if !inner.primary || inner.checkpoints.is_empty() {
            return Vec::new();
        }
        let due: Vec<i64> =
            inner.checkpoints.iter().filter(|(_, at)| **at <= now).map(|(id, _)| *id).collect();
        let granted: HashMap<i64, i64> = granted.iter().copied().collect();
        let mut out = Vec::new();
        for id in due {
            let (Some(deadline), Some(ttl)) = (inner.deadlines.get(&id).copied(), granted.get(&id)) else {
                inner.checkpoints.remove(&id);
                continue;
            };
            let left = deadline.saturating_duration_since(now);
            let remaining = left.as_secs() as i64 + i64::from(left.subsec_nanos() > 0);
            if remaining > 0 && remaining < *ttl {
                out.push((id, remaining));
                // Marked under the same lock the remainder was computed under: a renewal after this
                // moment sees it in flight.
                *inner.in_flight.entry(id).or_default() += 1;
            }
            self.schedule(&mut inner, id, left, now);
        }
        out
    }

    /// The write of checkpoints from [`Lessor::due_checkpoints`] was applied, or failed.
    pub fn checkpoints_done(&self, done: &[(i64, i64)]) {
        let mut inner = self.lock();
        for (id, _) in done {
            if let Some(n) = inner.in_flight.get_mut(id) {
                *n -= 1;
                if *n == 0 {
                    inner.in_flight.remove(id);
                }
            }
        }
        drop(inner);
        self.landed.notify_waiters();
    }

    /// Waits until no checkpoint of lease `id` is in flight; whether one was. A renewal clears the
    /// lease's checkpoint through the log; a checkpoint computed before the renewal and applied after
    /// the clear would bring back the shorter remainder, and a new leader would start the renewed
    /// lease from it.
    pub async fn checkpoints_landed(&self, id: i64) -> bool {
        let mut waited = false;
        loop {
            // Created before the check: a landing in between still wakes it.
            let landed = self.landed.notified();
            if !self.lock().in_flight.contains_key(&id) {
                return waited;
            }
            waited = true;
            landed.await;
        }
    }

    /// A revoke failed (e.g. leadership moved): let the next round try again.
    pub fn retry(&self, id: i64) {
        self.lock().revoking.remove(&id);
    }
}

fn secs(ttl: i64) -> Duration {
    Duration::from_secs(ttl.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_primary_expires_and_promotion_restarts_every_clock() {
        let l = Lessor::default();
        assert!(l.expired(&[(1, 0)]).is_empty(), "a follower decides nothing");
        l.promote(&[(1, 0), (2, 100)], Duration::ZERO);
        assert_eq!(l.expired(&[(1, 0), (2, 100)]), [1]);
        assert!(l.expired(&[(1, 0), (2, 100)]).is_empty(), "one revoke per expiry");
        assert_eq!(l.renew(1, Some(0)), 0, "an expired lease is not renewed");
        assert_eq!(l.renew(2, Some(100)), 100);
        assert_eq!(l.renew(3, None), 0);
        assert!((99..=100).contains(&l.remaining(2, 100)));
        assert_eq!(l.remaining(7, 10), 9, "a lease granted since the last tick starts now");
        assert!(l.expired(&[(7, 10)]).is_empty());
        assert_eq!(l.remaining(7, 10), 9, "and keeps the deadline it got");
        l.retry(1);
        assert_eq!(l.expired(&[(1, 0), (2, 100)]), [1]);
        l.promote(&[(1, 5)], Duration::from_secs(1));
        assert!(l.expired(&[(1, 5)]).is_empty());
        l.demote();
        assert_eq!(l.renew(1, Some(5)), 5, "renewing without a clock just answers the TTL");
    }

    /// etcd's lease checkpoints: a lease longer than the interval is checkpointed once the interval has
    /// passed, with what is left of it, rounded up; one no longer than the interval never is; without
    /// the flag nothing is.
    #[test]
    fn checkpoints_record_what_is_left_of_leases_longer_than_the_interval() {
        let every = Duration::from_secs(1);
        let l = Lessor::new(Some(every));
        let granted = [(1, 10), (2, 1)];
        l.promote(&[(1, 3), (2, 1)], Duration::ZERO);
        assert!(l.due_checkpoints(&granted).is_empty(), "not due yet");
        let later = Instant::now() + every;
        assert_eq!(l.due_checkpoints_at(&granted, later), [(1, 2)], "2 s left (rounded up), of 10 granted");
        assert!(l.due_checkpoints_at(&granted, later).is_empty(), "the next one is an interval later");
        l.demote();
        assert!(l.due_checkpoints_at(&granted, later + every).is_empty(), "a follower records nothing");

        let off = Lessor::default();
        off.promote(&[(1, 3)], Duration::ZERO);
        assert!(off.due_checkpoints_at(&granted, later).is_empty());
    }

    /// A renewal waits for the checkpoints computed before it: each is in flight from the moment its
    /// remainder is taken until its write is done, through a change of leader.
    #[test]
    fn checkpoints_are_in_flight_until_their_write_is_done() {
        use futures::FutureExt;
        let every = Duration::from_secs(1);
        let l = Lessor::new(Some(every));
        let granted = [(1, 10), (2, 10)];
        l.promote(&[(1, 10), (2, 10)], Duration::ZERO);
        let later = Instant::now() + every;
        let first = l.due_checkpoints_at(&granted, later);
        assert_eq!(first.len(), 2);
        let second = l.due_checkpoints_at(&granted, later + every);
        assert_eq!(second.len(), 2, "the next round, before the first one's write is done");
        l.demote();
        assert!(l.checkpoints_landed(1).now_or_never().is_none(), "two in flight");
        l.checkpoints_done(&first);
        assert!(l.checkpoints_landed(1).now_or_never().is_none(), "one still in flight");
        let (of_1, of_2): (Vec<_>, Vec<_>) = second.iter().partition(|(id, _)| *id == 1);
        l.checkpoints_done(&of_1);
        assert_eq!(l.checkpoints_landed(1).now_or_never(), Some(false), "none left to wait for");
        assert!(l.checkpoints_landed(2).now_or_never().is_none());
        l.checkpoints_done(&of_2);
        assert_eq!(l.checkpoints_landed(2).now_or_never(), Some(false));
        assert_eq!(l.checkpoints_landed(3).now_or_never(), Some(false), "never checkpointed");
    }
}
