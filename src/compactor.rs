//! etcd's auto-compaction (`--auto-compaction-mode`, `--auto-compaction-retention`): the leader
//! compacts the key-value history on its own, with a Compact request through the log like a client's.
//!
//! As in etcd (`etcdserver/api/v3compactor`), every member keeps the window and only the leader acts,
//! so a member that becomes leader compacts at once if its window is full:
//! - periodic: the revision is sampled every tenth of the retention (of an hour at most); once a full
//!   retention has passed since the start or the last compaction (then once an hour at most), the
//!   history is compacted to the revision sampled a retention ago. A failed compaction is tried again a
//!   tenth later.
//! - revision: every 5 minutes, the history is compacted to the current revision less the retention,
//!   unless that is where it was compacted last.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::mvcc::MvccError;
use crate::pb::etcdserverpb::CompactionRequest;
use crate::raft::{RaftNode, Request, Response};

/// What `--auto-compaction-retention` keeps, as `--auto-compaction-mode` reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The history of the last this long.
    Periodic(Duration),
    /// The last this many revisions.
    Revision(i64),
}

const HOUR: Duration = Duration::from_secs(3600);
/// How often the revision mode looks (etcd's `revInterval`).
const REVISION_INTERVAL: Duration = Duration::from_secs(300);
/// A proposal that takes longer than this (no quorum) is given up and tried again on a later tick.
const PROPOSAL_TIMEOUT: Duration = Duration::from_secs(10);

/// The periodic mode's sliding window of sampled revisions. Pure: the caller brings the clock and the
/// revisions.
#[derive(Debug)]
pub struct Window {
    period: Duration,
    revisions: VecDeque<i64>,
    last_success: Instant,
    /// How long after the last success the next compaction is due: the whole period at first, then
    /// the period up to an hour (etcd's compact interval).
    wait: Duration,
}

impl Window {
    pub fn new(period: Duration, now: Instant) -> Window {
        Window { period, revisions: VecDeque::new(), last_success: now, wait: period }
    }

    /// How often the revision is sampled, and a failed compaction retried.
    pub fn interval(&self) -> Duration {
        (self.period.min(HOUR) / 10).max(Duration::from_millis(1))
    }

    /// Records the current revision; the oldest kept is the one of a period ago.
    pub fn sample(&mut self, revision: i64) {
        let keep = (self.period.as_nanos() / self.interval().as_nanos()) as usize + 1;
        self.revisions.push_back(revision);
        while self.revisions.len() > keep {
            self.revisions.pop_front();
        }
    }

    /// The revision to compact to, if a compaction is due at `now`.
    pub fn due(&mut self, now: Instant) -> Option<i64> {
        if now.duration_since(self.last_success) < self.wait {
            return None;
        }
        self.wait = self.period.min(HOUR);
        self.revisions.front().copied()
    }

    pub fn compacted(&mut self, now: Instant) {
        self.last_success = now;
    }
}

/// Runs the compactor of `mode` until `stop`.
pub async fn run(node: RaftNode, mode: Mode, mut stop: watch::Receiver<bool>) {
    let revision = || node.sm.read(|s| s.current_revision());
    let leads = || node.leader() == Some(node.id);
    match mode {
        Mode::Periodic(period) => {
            let mut window = Window::new(period, Instant::now());
            loop {
                window.sample(revision());
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    _ = tokio::time::sleep(window.interval()) => {}
                }
                if !leads() {
                    continue;
                }
                if let Some(rev) = window.due(Instant::now()) {
                    if compact(&node, rev).await {
                        window.compacted(Instant::now());
                    }
                }
            }
        }
        Mode::Revision(retention) => {
            let mut last = 0;
            loop {
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    _ = tokio::time::sleep(REVISION_INTERVAL) => {}
                }
                let rev = revision().saturating_sub(retention);
                if !leads() || rev <= 0 || rev == last {
                    continue;
                }
                if compact(&node, rev).await {
                    last = rev;
                }
            }
        }
    }
}

/// Proposes the compaction; whether it was carried out (or the history was compacted past it already).
async fn compact(node: &RaftNode, revision: i64) -> bool {
    tracing::info!(revision, "starting auto compaction");
    let request = Request::Compact(CompactionRequest { revision, physical: false });
    let outcome = tokio::time::timeout(PROPOSAL_TIMEOUT, node.write_as_leader(request)).await;
    match outcome {
        Ok(Ok((Response::Compact(_) | Response::Error(MvccError::Compacted), _))) => {
            tracing::info!(revision, "completed auto compaction");
            true
        }
        Ok(Ok((other, _))) => {
            tracing::warn!(revision, "failed auto compaction: {other:?}");
            false
        }
        Ok(Err(e)) => {
            tracing::warn!(revision, "failed auto compaction: {e}");
            false
        }
        Err(_) => {
            tracing::warn!(revision, "failed auto compaction: no answer in {PROPOSAL_TIMEOUT:?}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The compactions of `ticks` rounds of the run loop (sample, wait an interval, maybe compact) with
    /// the revision counting the samples, as etcd's fake revision getter does.
    fn compactions(period: Duration, ticks: u32) -> Vec<(u32, i64)> {
        let start = Instant::now();
        let mut w = Window::new(period, start);
        let mut done = Vec::new();
        for tick in 1..=ticks {
            w.sample(tick as i64);
            let now = start + w.interval() * tick;
            if let Some(rev) = w.due(now) {
                done.push((tick, rev));
                w.compacted(now);
            }
        }
        done
    }

    /// etcd's `TestPeriodicHourly`: a 2 h retention samples every 6 minutes, compacts first after 2 h
    /// to the first revision, then hourly to the revisions 10, 20, 30.
    #[test]
    fn a_retention_in_hours_compacts_hourly_as_etcds_does() {
        assert_eq!(Window::new(2 * HOUR, Instant::now()).interval(), Duration::from_secs(360));
        assert_eq!(compactions(2 * HOUR, 50), [(20, 1), (30, 10), (40, 20), (50, 30)]);
    }

    /// etcd's `TestPeriodicMinutes`: a 5 minute retention samples every 30 s and compacts every 5
    /// minutes, to the revisions 1, 10, 20, ...
    #[test]
    fn a_retention_in_minutes_compacts_every_retention_as_etcds_does() {
        assert_eq!(
            Window::new(5 * 60 * Duration::from_secs(1), Instant::now()).interval(),
            Duration::from_secs(30)
        );
        let want: Vec<(u32, i64)> = (0..6).map(|i| (10 + 10 * i, (10 * i as i64).max(1))).collect();
        assert_eq!(compactions(Duration::from_secs(300), 60), want);
    }

    /// A failed compaction (the member was not leading, no quorum) is due again on the next tick.
    #[test]
    fn a_compaction_not_carried_out_is_due_again_at_the_next_interval() {
        let start = Instant::now();
        let mut w = Window::new(Duration::from_secs(10), start);
        for tick in 1..=10u32 {
            w.sample(tick as i64);
        }
        assert_eq!(w.due(start + Duration::from_secs(10)), Some(1));
        w.sample(11);
        assert_eq!(w.due(start + Duration::from_secs(11)), Some(1));
        w.compacted(start + Duration::from_secs(11));
        w.sample(12);
        assert_eq!(w.due(start + Duration::from_secs(12)), None);
    }
}
