//! The watch workload: writers put to keys under a prefix while watchers, each on a member of its
//! own, watch the prefix from revision 1, reconnecting to another member from their last revision + 1
//! whenever their stream breaks, and a compactor compacts the history up to what every watcher has
//! seen. After the heal every watcher must have seen exactly the history fresh watches read: in order,
//! no gaps, no duplicates, never back in time, never told of a compaction, with every acknowledged put
//! in it.

use std::time::Duration;

use concord::client::{prefix_end, Client};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use concord::pb::etcdserverpb::{CompactionRequest, PutRequest, RangeRequest, WatchCreateRequest};
use concord::pb::mvccpb::event::EventType;
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

use super::{attempt, outcome, settle, Conn, Ctx, Outcome};
use crate::history::{Named, Op, Recorder, Status};

const PREFIX: &str = "watch/";

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "lowercase")]
pub enum WatchOp {
    /// `revision` is the put's revision when acknowledged.
    Put { key: String, value: u64, revision: Option<i64> },
}

impl Named for WatchOp {
    fn f(&self) -> &'static str {
        "put"
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Event {
    pub revision: i64,
    pub key: String,
    pub value: String,
    pub delete: bool,
}

impl From<concord::pb::mvccpb::Event> for Event {
    fn from(e: concord::pb::mvccpb::Event) -> Event {
        let kv = e.kv.unwrap_or_default();
        Event {
            revision: kv.mod_revision,
            key: String::from_utf8_lossy(&kv.key).into_owned(),
            value: String::from_utf8_lossy(&kv.value).into_owned(),
            delete: e.r#type == EventType::Delete as i32,
        }
    }
}

pub async fn run(ctx: Ctx, healed: oneshot::Receiver<()>) -> anyhow::Result<Outcome> {
    let rec = Recorder::new(ctx.start);
    let writers = (ctx.clients / 2).max(1);
    let (target_tx, target) = watch::channel(None);
    let progress: Vec<Arc<AtomicI64>> =
        (writers..ctx.clients.max(writers + 2)).map(|_| Arc::new(AtomicI64::new(1))).collect();
    let watchers: Vec<_> = (writers..ctx.clients.max(writers + 2))
        .zip(&progress)
        .map(|(p, seen)| tokio::spawn(watcher(ctx.clone(), p, target.clone(), seen.clone())))
        .collect();
    let puts: Vec<_> =
        (0..writers).map(|p| tokio::spawn(writer(ctx.clone(), p, writers, rec.clone()))).collect();
    let compactor = tokio::spawn(compactor(ctx.clone(), progress));
    for p in puts {
        p.await?;
    }
    let (mut reference, read_up_to) = compactor.await?;
    let _ = healed.await;

    // Everything written is in by now; the watchers must all reach this revision.
    let mut conn = Conn::new(&ctx, usize::MAX);
    let end = prefix_end(PREFIX.as_bytes());
    let last = settle(&mut conn, Duration::from_secs(30), |mut kv| {
        let end = end.clone();
        async move {
            kv.range(RangeRequest {
                key: PREFIX.into(),
                range_end: end,
                count_only: true,
                ..Default::default()
            })
            .await
        }
    })
    .await?;
    let target_revision = last.header.map_or(0, |h| h.revision);
    target_tx.send_replace(Some(target_revision));
    let rest = read_history(&conn, read_up_to + 1, target_revision);
    reference.extend(tokio::time::timeout(Duration::from_secs(30), rest).await??);

    let mut logs = Vec::new();
    for w in watchers {
        logs.push(w.await?);
    }
    let history = rec.history();
    let verdict = WatchVerdict { compacted: read_up_to, ..check(&history, &reference, &logs) };
    outcome(&history, &verdict)
}

/// Compacts the history while the watchers run, as far as every watcher has already seen (a watcher
/// catching up from history then reads right above the compaction point, where etcd once dropped an
/// event). What a compaction removes is first read into the authoritative history, from a fresh watch.
/// Returns that history and the revision it reaches.
async fn compactor(ctx: Ctx, progress: Vec<Arc<AtomicI64>>) -> (Vec<Event>, i64) {
    let mut conn = Conn::new(&ctx, usize::MAX - 1);
    let (mut reference, mut read_up_to) = (Vec::new(), 0);
    while ctx.running() {
        tokio::time::sleep(Duration::from_millis(conn.rng.between(1000, 3000))).await;
        let floor = progress.iter().map(|p| p.load(Ordering::Relaxed)).min().unwrap_or(1) - 1;
        if floor <= read_up_to.max(1) {
            continue;
        }
        let read = tokio::time::timeout(ctx.timeout * 5, read_history(&conn, read_up_to + 1, floor)).await;
        let Ok(Ok(events)) = read else {
            conn.failed();
            continue;
        };
        reference.extend(events);
        read_up_to = floor;
        let mut kv = conn.kv();
        let compact = kv.compact(CompactionRequest { revision: floor, physical: false });
        if attempt(ctx.timeout, compact).await.is_err() {
            conn.failed();
        }
    }
    (reference, read_up_to)
}

async fn writer(ctx: Ctx, process: usize, writers: usize, rec: Recorder<WatchOp>) {
    let mut conn = Conn::new(&ctx, process);
    let mut n = 0u64;
    while ctx.running() {
        ctx.pace(&mut conn.rng).await;
        let key = format!("{PREFIX}{}", conn.rng.below(5));
        // Unique across writers: process + n × writers.
        let value = process as u64 + n * writers as u64;
        n += 1;
        let invoke = rec.now();
        let mut kv = conn.kv();
        let put = kv.put(PutRequest {
            key: key.clone().into_bytes(),
            value: value.to_string().into(),
            ..Default::default()
        });
        let (status, revision) = match attempt(ctx.timeout, put).await {
            Ok(r) => (Status::Ok, r.header.map(|h| h.revision)),
            Err(s) => (s, None),
        };
        if status != Status::Ok {
            conn.failed();
        }
        rec.record(process, invoke, status, WatchOp::Put { key, value, revision });
    }
}

/// One watcher's events, in the order it received them.
#[derive(Debug, Default, Serialize)]
pub struct WatcherLog {
    pub process: usize,
    pub events: Vec<Event>,
    pub reconnects: usize,
    /// Anything the stream said that it should not have (a compaction in this compaction-free run).
    pub anomalies: Vec<String>,
}

async fn watcher(
    ctx: Ctx,
    process: usize,
    mut target: watch::Receiver<Option<i64>>,
    seen: Arc<AtomicI64>,
) -> WatcherLog {
    let mut conn = Conn::new(&ctx, process);
    let mut log = WatcherLog { process, ..Default::default() };
    let mut next = 1;
    let reached = |next: i64, target: &Option<i64>| target.is_some_and(|t| next > t);
    // Past the heal, a watcher that cannot reach the target in this long has stalled.
    let mut healed = target.clone();
    let give_up = async move {
        let _ = healed.wait_for(Option::is_some).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    };
    tokio::pin!(give_up);
    while !reached(next, &target.borrow()) {
        let session = async {
            let client = Client::from_channel(conn.channel());
            let create = WatchCreateRequest {
                key: PREFIX.into(),
                range_end: prefix_end(PREFIX.as_bytes()),
                start_revision: next,
                ..Default::default()
            };
            let mut stream = client.watch(create).await.map_err(|e| e.to_string())?;
            loop {
                tokio::select! {
                    r = stream.next() => {
                        let r = r.map_err(|e| e.to_string())?;
                        if r.compact_revision != 0 {
                            log.anomalies.push(format!("compacted at {} while watching from {next}", r.compact_revision));
                            return Err("compacted".to_string());
                        }
                        for e in r.events {
                            let e = Event::from(e);
                            next = e.revision + 1;
                            log.events.push(e);
                        }
                        seen.store(next, Ordering::Relaxed);
                    }
                    _ = target.changed() => {}
                }
                if reached(next, &target.borrow()) {
                    return Ok(());
                }
            }
        };
        tokio::select! {
            r = session => if r.is_err() {
                log.reconnects += 1;
                conn.failed();
                tokio::time::sleep(Duration::from_millis(100)).await;
            },
            _ = &mut give_up => break,
        }
    }
    log
}

/// The authoritative history of revisions `from..=to`, from a fresh watch. Every revision after the
/// first is a put under the prefix (nothing else writes), so the watch has an event for each.
async fn read_history(conn: &Conn, from: i64, to: i64) -> anyhow::Result<Vec<Event>> {
    let client = Client::from_channel(conn.channel());
    let create = WatchCreateRequest {
        key: PREFIX.into(),
        range_end: prefix_end(PREFIX.as_bytes()),
        start_revision: from,
        ..Default::default()
    };
    let mut stream = client.watch(create).await?;
    let mut events = Vec::new();
    while to >= from.max(2) && events.last().is_none_or(|e: &Event| e.revision < to) {
        let r = stream.next().await?;
        anyhow::ensure!(r.compact_revision == 0, "history from {from} compacted at {}", r.compact_revision);
        events.extend(r.events.into_iter().map(Event::from).filter(|e| e.revision <= to));
    }
    Ok(events)
}

#[derive(Debug, Default, Serialize)]
pub struct WatchVerdict {
    pub events: usize,
    pub watchers: usize,
    pub reconnects: usize,
    /// The revision the history was compacted up to (if the last compaction went through).
    pub compacted: i64,
    pub problems: Vec<String>,
}

impl super::Verdict for WatchVerdict {
    fn valid(&self) -> bool {
        self.problems.is_empty()
    }
}

pub fn check(puts: &[Op<WatchOp>], reference: &[Event], logs: &[WatcherLog]) -> WatchVerdict {
    let mut v = WatchVerdict {
        events: reference.len(),
        watchers: logs.len(),
        reconnects: logs.iter().map(|l| l.reconnects).sum(),
        compacted: 0,
        problems: Vec::new(),
    };
    for pair in reference.windows(2) {
        if pair[1].revision <= pair[0].revision {
            v.problems.push(format!("history: revision {} after {}", pair[1].revision, pair[0].revision));
        }
    }
    let by_revision: std::collections::HashMap<i64, &Event> =
        reference.iter().map(|e| (e.revision, e)).collect();
    let mut attempted = std::collections::HashSet::new();
    for o in puts {
        let WatchOp::Put { key, value, revision } = &o.value;
        if o.status != Status::Fail {
            attempted.insert((key.clone(), value.to_string()));
        }
        if let (Status::Ok, Some(rev)) = (o.status, revision) {
            match by_revision.get(rev) {
                Some(e) if e.key == *key && e.value == value.to_string() => {}
                other => v.problems.push(format!(
                    "acknowledged put {key}={value} at {rev} is not in the history: {other:?}"
                )),
            }
        }
    }
    for e in reference {
        if !attempted.contains(&(e.key.clone(), e.value.clone())) {
            v.problems
                .push(format!("history holds {}={} at {}, which nobody put", e.key, e.value, e.revision));
        }
    }
    let last = reference.last().map_or(0, |e| e.revision);
    for log in logs {
        v.problems.extend(log.anomalies.iter().map(|a| format!("watcher {}: {a}", log.process)));
        let seen: Vec<&Event> = log.events.iter().filter(|e| e.revision <= last).collect();
        if let Some(i) = (0..seen.len().min(reference.len())).find(|&i| *seen[i] != reference[i]) {
            let (got, want) = (seen[i], &reference[i]);
            let what = match i.checked_sub(1).map(|p| seen[p].revision) {
                Some(prev) if got.revision < prev => "went back in time",
                Some(prev) if got.revision == prev => "got an event twice",
                _ if got.revision > want.revision => "skipped an event",
                _ => "saw a different event",
            };
            v.problems.push(format!(
                "watcher {} {what}: event {i} is {got:?}, the history has {want:?}",
                log.process
            ));
        } else if seen.len() > reference.len() {
            v.problems.push(format!(
                "watcher {} got {} events, the history has {}",
                log.process,
                seen.len(),
                reference.len()
            ));
        } else if seen.len() < reference.len() {
            let at = seen.last().map_or(0, |e| e.revision);
            v.problems.push(format!("watcher {} stalled at revision {at} of {last}", log.process));
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(revision: i64) -> Event {
        Event { revision, key: "watch/1".into(), value: revision.to_string(), delete: false }
    }

    fn put(revision: i64) -> Op<WatchOp> {
        let value = WatchOp::Put { key: "watch/1".into(), value: revision as u64, revision: Some(revision) };
        Op { process: 0, status: Status::Ok, invoke: 0, complete: 1, value }
    }

    fn log(revisions: &[i64]) -> WatcherLog {
        WatcherLog { events: revisions.iter().map(|&r| ev(r)).collect(), ..Default::default() }
    }

    fn problems(logs: &[WatcherLog]) -> Vec<String> {
        let reference: Vec<Event> = (2..=5).map(ev).collect();
        let puts: Vec<_> = (2..=5).map(put).collect();
        check(&puts, &reference, logs).problems
    }

    #[test]
    fn watchers_matching_the_history_pass() {
        assert_eq!(problems(&[log(&[2, 3, 4, 5]), log(&[2, 3, 4, 5, 6])]), Vec::<String>::new());
    }

    #[test]
    fn a_duplicated_event_is_flagged() {
        let p = problems(&[log(&[2, 3, 3, 4, 5])]);
        assert!(p[0].contains("twice"), "{p:?}");
    }

    #[test]
    fn a_gap_is_flagged() {
        let p = problems(&[log(&[2, 4, 5])]);
        assert!(p[0].contains("skipped"), "{p:?}");
    }

    #[test]
    fn going_back_in_time_is_flagged() {
        let p = problems(&[log(&[2, 3, 2, 3, 4, 5])]);
        assert!(p[0].contains("back in time"), "{p:?}");
    }

    #[test]
    fn a_stalled_watcher_is_flagged() {
        let p = problems(&[log(&[2, 3])]);
        assert!(p[0].contains("stalled"), "{p:?}");
    }

    #[test]
    fn a_lost_acknowledged_put_is_flagged() {
        let reference: Vec<Event> = vec![ev(2), ev(4)];
        let puts: Vec<_> = (2..=4).map(put).collect();
        let p = check(&puts, &reference, &[]).problems;
        assert!(p.iter().any(|p| p.contains("put watch/1=3 at 3 is not in the history")), "{p:?}");
    }
}
