//! The lock workload: workers take one concord `Mutex` (etcd's key layout, on a short session) and do a
//! read-modify-write of a counter while holding it, sometimes slowly. Guarded, the write is a Txn that
//! holds only while the lock key is still the holder's (its create revision is the fencing token);
//! unguarded, it is a plain put. No two increments may write the same value, and the final counter must
//! be explained by the increments. A holder whose session lapses (its keepalives cut off by a fault)
//! keeps running its critical section while another takes the lock: only fencing keeps it safe, and the
//! unguarded variant shows what happens without it.

use std::collections::BTreeMap;
use std::time::Duration;

use concord::client::{Client, Mutex, Session};
use concord::pb::etcdserverpb::{request_op, PutRequest, RangeRequest, RequestOp, TxnRequest};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::{attempt, clients, outcome, settle, Conn, Ctx, Outcome};
use crate::history::{Named, Op, Recorder, Status};

const COUNTER: &str = "lock-counter";
const LOCK: &str = "chaos-lock";
/// The session's TTL in seconds: short, so that faults make holders lose the lock.
const TTL: i64 = 2;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "lowercase")]
pub enum LockOp {
    /// Ok: wrote `read + 1`; Fail: the guard refused it (the lock was lost first).
    Increment {
        read: i64,
        token: i64,
    },
    Final {
        value: i64,
    },
}

impl Named for LockOp {
    fn f(&self) -> &'static str {
        match self {
            LockOp::Increment { .. } => "increment",
            LockOp::Final { .. } => "final",
        }
    }
}

fn counter(kvs: &[concord::pb::mvccpb::KeyValue]) -> i64 {
    kvs.first().and_then(|kv| std::str::from_utf8(&kv.value).ok()?.parse().ok()).unwrap_or(0)
}

pub async fn run(ctx: Ctx, healed: oneshot::Receiver<()>, guarded: bool) -> anyhow::Result<Outcome> {
    let rec = Recorder::new(ctx.start);
    clients(&ctx, |ctx, p| client(ctx, p, rec.clone(), guarded)).await?;
    let _ = healed.await;
    let mut conn = Conn::new(&ctx, ctx.clients);
    let invoke = rec.now();
    let read = settle(&mut conn, Duration::from_secs(30), |mut kv| async move {
        kv.range(RangeRequest { key: COUNTER.into(), ..Default::default() }).await
    })
    .await?;
    rec.record(ctx.clients, invoke, Status::Ok, LockOp::Final { value: counter(&read.kvs) });

    let history = rec.history();
    outcome(&history, &check(&history))
}

async fn client(ctx: Ctx, process: usize, rec: Recorder<LockOp>, guarded: bool) {
    let mut conn = Conn::new(&ctx, process);
    while ctx.running() {
        ctx.pace(&mut conn.rng).await;
        let client = Client::from_channel(conn.channel());
        let Ok(Ok(session)) = tokio::time::timeout(ctx.timeout, Session::new(&client, TTL)).await else {
            conn.failed();
            continue;
        };
        let mut mutex = Mutex::new(&session, LOCK);
        // Waiting for the lock is not an operation of the history: only what is done under it is.
        if !matches!(tokio::time::timeout(Duration::from_secs(5), mutex.lock()).await, Ok(Ok(()))) {
            let _ = tokio::time::timeout(ctx.timeout, session.close()).await;
            conn.failed();
            continue;
        }
        let token = mutex.fencing_token();
        let invoke = rec.now();
        let mut kv = conn.kv();
        let read =
            attempt(ctx.timeout, kv.range(RangeRequest { key: COUNTER.into(), ..Default::default() })).await;
        if let Ok(read) = read {
            let value = counter(&read.kvs);
            // A slow critical section now and then, long enough to outlive a session cut off by a fault.
            let pause =
                if conn.rng.chance(0.1) { conn.rng.between(500, 3000) } else { conn.rng.between(0, 50) };
            tokio::time::sleep(Duration::from_millis(pause)).await;
            let put = PutRequest {
                key: COUNTER.into(),
                value: (value + 1).to_string().into(),
                ..Default::default()
            };
            let status = if guarded {
                let txn = kv.txn(TxnRequest {
                    compare: vec![mutex.is_owner()],
                    success: vec![RequestOp { request: Some(request_op::Request::RequestPut(put)) }],
                    failure: vec![],
                });
                match attempt(ctx.timeout, txn).await {
                    Ok(r) if r.succeeded => Status::Ok,
                    Ok(_) => Status::Fail,
                    Err(s) => s,
                }
            } else {
                attempt(ctx.timeout, kv.put(put)).await.map_or_else(|s| s, |_| Status::Ok)
            };
            rec.record(process, invoke, status, LockOp::Increment { read: value, token });
        }
        let _ = tokio::time::timeout(ctx.timeout, mutex.unlock()).await;
        let _ = tokio::time::timeout(ctx.timeout, session.close()).await;
    }
}

#[derive(Debug, Default, Serialize)]
pub struct LockVerdict {
    pub increments: usize,
    pub refused: usize,
    pub final_value: Option<i64>,
    pub problems: Vec<String>,
}

impl super::Verdict for LockVerdict {
    fn valid(&self) -> bool {
        self.problems.is_empty()
    }
}

pub fn check(history: &[Op<LockOp>]) -> LockVerdict {
    let mut v = LockVerdict::default();
    // The value each increment wrote, and by whom: two writers of one value both read the same count,
    // so their critical sections overlapped and one increment was lost.
    let mut wrote: BTreeMap<i64, Vec<&Op<LockOp>>> = BTreeMap::new();
    let mut unknown = 0;
    for o in history {
        match (&o.value, o.status) {
            (LockOp::Increment { read, .. }, Status::Ok) => {
                v.increments += 1;
                wrote.entry(read + 1).or_default().push(o);
            }
            (LockOp::Increment { .. }, Status::Fail) => v.refused += 1,
            (LockOp::Increment { .. }, Status::Info) => unknown += 1,
            (LockOp::Final { value }, Status::Ok) => v.final_value = Some(*value),
            _ => {}
        }
    }
    for (value, writers) in &wrote {
        if writers.len() > 1 {
            let who: Vec<String> = writers
                .iter()
                .map(|o| match &o.value {
                    LockOp::Increment { token, .. } => {
                        format!("process {} (token {token}) at {}..{} µs", o.process, o.invoke, o.complete)
                    }
                    LockOp::Final { .. } => String::new(),
                })
                .collect();
            v.problems.push(format!("{} holders both wrote {value}: {}", writers.len(), who.join("; ")));
        }
    }
    match v.final_value {
        None => v.problems.push("no final read".into()),
        Some(f) => {
            let acknowledged = wrote.len() as i64;
            if f < acknowledged || f > acknowledged + unknown {
                v.problems.push(format!(
                    "the counter ends at {f}, but {acknowledged} distinct increments were acknowledged and \
                     {unknown} had unknown outcomes"
                ));
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inc(process: usize, status: Status, read: i64) -> Op<LockOp> {
        let t = read as u64 * 100;
        Op {
            process,
            status,
            invoke: t,
            complete: t + 50,
            value: LockOp::Increment { read, token: read + 2 },
        }
    }

    fn last(value: i64) -> Op<LockOp> {
        Op {
            process: 9,
            status: Status::Ok,
            invoke: 10_000,
            complete: 10_001,
            value: LockOp::Final { value },
        }
    }

    #[test]
    fn serial_increments_pass() {
        let v = check(&[
            inc(0, Status::Ok, 0),
            inc(1, Status::Fail, 1),
            inc(1, Status::Ok, 1),
            inc(0, Status::Info, 2),
            last(3),
        ]);
        assert_eq!(v.problems, Vec::<String>::new());
    }

    #[test]
    fn two_holders_at_once_are_flagged() {
        // Split brain: both read 1 under "the" lock and wrote 2.
        let v = check(&[inc(0, Status::Ok, 0), inc(0, Status::Ok, 1), inc(1, Status::Ok, 1), last(2)]);
        assert!(v.problems[0].contains("both wrote 2"), "{:?}", v.problems);
    }

    #[test]
    fn a_counter_that_lost_an_acknowledged_increment_is_flagged() {
        let v = check(&[inc(0, Status::Ok, 0), inc(0, Status::Ok, 1), last(1)]);
        assert!(v.problems[0].contains("ends at 1"), "{:?}", v.problems);
    }
}
