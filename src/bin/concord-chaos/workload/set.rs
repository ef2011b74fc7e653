//! The set workload: every client adds unique elements (one key each); after the heal one
//! linearizable read must hold every acknowledged add, and nothing that was never attempted.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use concord::client::prefix_end;
use concord::pb::etcdserverpb::{PutRequest, RangeRequest};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::{attempt, clients, outcome, settle, Conn, Ctx, Outcome};
use crate::history::{Named, Op, Recorder, Status};

const PREFIX: &str = "set/";

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "lowercase")]
pub enum SetOp {
    Add { element: u64 },
    Read { elements: BTreeSet<u64> },
}

impl Named for SetOp {
    fn f(&self) -> &'static str {
        match self {
            SetOp::Add { .. } => "add",
            SetOp::Read { .. } => "read",
        }
    }
}

pub async fn run(ctx: Ctx, healed: oneshot::Receiver<()>) -> anyhow::Result<Outcome> {
    let rec = Recorder::new(ctx.start);
    let next = Arc::new(AtomicU64::new(0));
    clients(&ctx, |ctx, p| client(ctx, p, rec.clone(), next.clone())).await?;
    let _ = healed.await;

    let mut conn = Conn::new(&ctx, ctx.clients);
    let invoke = rec.now();
    let read = settle(&mut conn, Duration::from_secs(30), |mut kv| async move {
        let end = prefix_end(PREFIX.as_bytes());
        kv.range(RangeRequest { key: PREFIX.into(), range_end: end, keys_only: true, ..Default::default() })
            .await
    })
    .await?;
    let elements = read
        .kvs
        .iter()
        .filter_map(|kv| std::str::from_utf8(&kv.key).ok()?.strip_prefix(PREFIX)?.parse().ok())
        .collect();
    rec.record(ctx.clients, invoke, Status::Ok, SetOp::Read { elements });

    let history = rec.history();
    outcome(&history, &check(&history))
}

async fn client(ctx: Ctx, process: usize, rec: Recorder<SetOp>, next: Arc<AtomicU64>) {
    let mut conn = Conn::new(&ctx, process);
    while ctx.running() {
        ctx.pace(&mut conn.rng).await;
        let element = next.fetch_add(1, Ordering::Relaxed);
        let invoke = rec.now();
        let mut kv = conn.kv();
        let put = kv.put(PutRequest { key: format!("{PREFIX}{element}").into(), ..Default::default() });
        let status = attempt(ctx.timeout, put).await.map_or_else(|s| s, |_| Status::Ok);
        if status != Status::Ok {
            conn.failed();
        }
        rec.record(process, invoke, status, SetOp::Add { element });
    }
}

#[derive(Debug, Default, Serialize, PartialEq)]
pub struct SetVerdict {
    pub acknowledged: usize,
    /// Unknown adds that turned out to have happened.
    pub recovered: usize,
    /// Acknowledged adds missing from the final read.
    pub lost: Vec<u64>,
    /// Elements present that were never added, or whose add was refused.
    pub unexpected: Vec<u64>,
    pub final_read: bool,
}

impl super::Verdict for SetVerdict {
    fn valid(&self) -> bool {
        self.final_read && self.lost.is_empty() && self.unexpected.is_empty()
    }
}

pub fn check(history: &[Op<SetOp>]) -> SetVerdict {
    let final_read = history.iter().rev().find_map(|o| match &o.value {
        SetOp::Read { elements } if o.status == Status::Ok => Some(elements),
        _ => None,
    });
    let mut v = SetVerdict { final_read: final_read.is_some(), ..Default::default() };
    let empty = BTreeSet::new();
    let present = final_read.unwrap_or(&empty);
    let mut attempted = BTreeSet::new();
    for o in history {
        let SetOp::Add { element } = o.value else { continue };
        match o.status {
            Status::Ok => {
                v.acknowledged += 1;
                attempted.insert(element);
                if !present.contains(&element) {
                    v.lost.push(element);
                }
            }
            Status::Info => {
                attempted.insert(element);
                v.recovered += usize::from(present.contains(&element));
            }
            Status::Fail => {}
        }
    }
    v.unexpected = present.difference(&attempted).copied().collect();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Verdict;

    fn add(status: Status, element: u64) -> Op<SetOp> {
        Op {
            process: 0,
            status,
            invoke: element * 10,
            complete: element * 10 + 5,
            value: SetOp::Add { element },
        }
    }

    fn read(elements: &[u64]) -> Op<SetOp> {
        let value = SetOp::Read { elements: elements.iter().copied().collect() };
        Op { process: 1, status: Status::Ok, invoke: 1000, complete: 1001, value }
    }

    #[test]
    fn every_acknowledged_add_present_passes() {
        let v = check(&[add(Status::Ok, 1), add(Status::Info, 2), add(Status::Info, 3), read(&[1, 3])]);
        assert!(v.valid(), "{v:?}");
        assert_eq!((v.acknowledged, v.recovered), (1, 1));
    }

    #[test]
    fn a_lost_add_is_flagged() {
        let v = check(&[add(Status::Ok, 1), add(Status::Ok, 2), read(&[1])]);
        assert_eq!(v.lost, vec![2]);
        assert!(!v.valid());
    }

    #[test]
    fn a_refused_add_that_happened_is_flagged() {
        let v = check(&[add(Status::Fail, 1), read(&[1, 7])]);
        assert_eq!(v.unexpected, vec![1, 7]);
        assert!(!v.valid());
    }

    #[test]
    fn no_final_read_is_not_a_pass() {
        assert!(!check(&[add(Status::Ok, 1)]).valid());
    }
}
