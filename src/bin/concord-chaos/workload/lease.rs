//! The lease workload: clients grant leases, put a key on each, keep some alive for a while (reading
//! the key as they go) and then abandon them. A key must never vanish while an acknowledged keepalive
//! (or the grant) promises its lease is alive; once everything is healed, every abandoned key must
//! vanish within its TTL plus a bound.

use std::collections::BTreeMap;
use std::time::Duration;

use concord::client::prefix_end;
use concord::pb::etcdserverpb::lease_client::LeaseClient;
use concord::pb::etcdserverpb::{LeaseGrantRequest, LeaseKeepAliveRequest, PutRequest, RangeRequest};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::{attempt, clients, outcome, settle, Conn, Ctx, Outcome};
use crate::history::{Named, Op, Recorder, Status};

const PREFIX: &str = "lease/";
const TTL: i64 = 3;
/// After the heal, how long abandoned keys may take to go: a leader change restarts every lease's
/// TTL (plus an election timeout), so allow two TTLs and change.
const VANISH_WITHIN: Duration = Duration::from_secs(2 * TTL as u64 + 5);

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "lowercase")]
pub enum LeaseOp {
    Grant {
        lease: i64,
        ttl: i64,
    },
    Put {
        lease: i64,
        key: String,
    },
    /// `ttl` 0: the lease was not found (expired or revoked).
    KeepAlive {
        lease: i64,
        ttl: i64,
    },
    Read {
        lease: i64,
        key: String,
        present: bool,
    },
    /// Keys still present once every lease was abandoned and the bound had passed.
    Final {
        remaining: Vec<String>,
    },
}

impl Named for LeaseOp {
    fn f(&self) -> &'static str {
        match self {
            LeaseOp::Grant { .. } => "grant",
            LeaseOp::Put { .. } => "put",
            LeaseOp::KeepAlive { .. } => "keepalive",
            LeaseOp::Read { .. } => "read",
            LeaseOp::Final { .. } => "final",
        }
    }
}

pub async fn run(ctx: Ctx, healed: oneshot::Receiver<()>) -> anyhow::Result<Outcome> {
    let rec = Recorder::new(ctx.start);
    clients(&ctx, |ctx, p| client(ctx, p, rec.clone())).await?;
    let _ = healed.await;

    // Every lease is abandoned now: wait for their keys to go, up to the bound.
    let mut conn = Conn::new(&ctx, ctx.clients);
    let invoke = rec.now();
    let deadline = tokio::time::Instant::now() + VANISH_WITHIN;
    let remaining = loop {
        let read = settle(&mut conn, Duration::from_secs(30), |mut kv| async move {
            let end = prefix_end(PREFIX.as_bytes());
            kv.range(RangeRequest {
                key: PREFIX.into(),
                range_end: end,
                keys_only: true,
                ..Default::default()
            })
            .await
        })
        .await?;
        let keys: Vec<String> =
            read.kvs.iter().map(|kv| String::from_utf8_lossy(&kv.key).into_owned()).collect();
        if keys.is_empty() || tokio::time::Instant::now() >= deadline {
            break keys;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    rec.record(ctx.clients, invoke, Status::Ok, LeaseOp::Final { remaining });

    let history = rec.history();
    outcome(&history, &check(&history))
}

/// One keepalive over a stream of its own: the lease's TTL, or 0 if it is gone.
async fn keep_alive(
    mut lease: LeaseClient<tonic::transport::Channel>,
    id: i64,
) -> Result<tonic::Response<i64>, tonic::Status> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(LeaseKeepAliveRequest { id }).await.map_err(|_| tonic::Status::cancelled("closed"))?;
    let mut responses =
        lease.lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
    match responses.message().await? {
        Some(r) => Ok(tonic::Response::new(r.ttl)),
        None => Err(tonic::Status::unavailable("keepalive stream ended")),
    }
}

async fn client(ctx: Ctx, process: usize, rec: Recorder<LeaseOp>) {
    let mut conn = Conn::new(&ctx, process);
    // Keepalives stay with their member until one fails, as a client's keepalive stream does, so a
    // member that only believes it leads keeps getting them; reads go wherever they succeed.
    let mut renewer = Conn::new(&ctx, process + ctx.clients);
    let mut n = 0;
    while ctx.running() {
        ctx.pace(&mut conn.rng).await;
        let invoke = rec.now();
        let mut leases = LeaseClient::new(conn.channel());
        let grant = leases.lease_grant(LeaseGrantRequest { ttl: TTL, id: 0 });
        let lease = match attempt(ctx.timeout, grant).await {
            Ok(r) => {
                rec.record(process, invoke, Status::Ok, LeaseOp::Grant { lease: r.id, ttl: r.ttl });
                r.id
            }
            Err(s) => {
                rec.record(process, invoke, s, LeaseOp::Grant { lease: 0, ttl: 0 });
                conn.failed();
                continue;
            }
        };
        n += 1;
        let key = format!("{PREFIX}{process}/{n}");
        let invoke = rec.now();
        let mut kv = conn.kv();
        let put = kv.put(PutRequest { key: key.clone().into(), lease, ..Default::default() });
        let status = attempt(ctx.timeout, put).await.map_or_else(|s| s, |_| Status::Ok);
        rec.record(process, invoke, status, LeaseOp::Put { lease, key: key.clone() });
        if status != Status::Ok {
            conn.failed();
            continue;
        }
        // Kept alive for a while (or not at all), then abandoned.
        let keep_until = tokio::time::Instant::now() + Duration::from_millis(conn.rng.between(0, 6000));
        while ctx.running() && tokio::time::Instant::now() < keep_until {
            let invoke = rec.now();
            match attempt(ctx.timeout, keep_alive(LeaseClient::new(renewer.channel()), lease)).await {
                Ok(ttl) => {
                    rec.record(process, invoke, Status::Ok, LeaseOp::KeepAlive { lease, ttl });
                    if ttl == 0 {
                        break;
                    }
                }
                Err(s) => {
                    rec.record(process, invoke, s, LeaseOp::KeepAlive { lease, ttl: 0 });
                    renewer.failed();
                }
            }
            let invoke = rec.now();
            let mut kv = conn.kv();
            let read = kv.range(RangeRequest { key: key.clone().into(), ..Default::default() });
            match attempt(ctx.timeout, read).await {
                Ok(r) => {
                    let present = !r.kvs.is_empty();
                    rec.record(
                        process,
                        invoke,
                        Status::Ok,
                        LeaseOp::Read { lease, key: key.clone(), present },
                    );
                }
                Err(_) => {
                    rec.record(
                        process,
                        invoke,
                        Status::Fail,
                        LeaseOp::Read { lease, key: key.clone(), present: false },
                    );
                    conn.failed();
                }
            }
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct LeaseVerdict {
    pub leases: usize,
    pub keepalives: usize,
    pub reads: usize,
    pub problems: Vec<String>,
}

impl super::Verdict for LeaseVerdict {
    fn valid(&self) -> bool {
        self.problems.is_empty()
    }
}

pub fn check(history: &[Op<LeaseOp>]) -> LeaseVerdict {
    let mut v = LeaseVerdict::default();
    // Per lease: the latest instant (µs) until which an acknowledged grant or keepalive promised it alive.
    // A renewal took effect no earlier than its invocation, so it promises invoke + TTL.
    let mut promised: BTreeMap<i64, (u64, usize)> = BTreeMap::new();
    for (n, o) in history.iter().enumerate() {
        if o.status != Status::Ok {
            continue;
        }
        match &o.value {
            LeaseOp::Grant { lease, ttl } | LeaseOp::KeepAlive { lease, ttl } if *ttl > 0 => {
                let until = o.invoke + *ttl as u64 * 1_000_000;
                let p = promised.entry(*lease).or_insert((until, n));
                if until > p.0 {
                    *p = (until, n);
                }
                v.leases += usize::from(matches!(o.value, LeaseOp::Grant { .. }));
                v.keepalives += usize::from(matches!(o.value, LeaseOp::KeepAlive { .. }));
            }
            _ => {}
        }
    }
    for o in history.iter().filter(|o| o.status == Status::Ok) {
        let (lease, what) = match &o.value {
            LeaseOp::Read { lease, key, present } => {
                v.reads += 1;
                if *present {
                    continue;
                }
                (*lease, format!("key {key} was gone"))
            }
            LeaseOp::KeepAlive { lease, ttl: 0 } => (*lease, format!("lease {lease:x} was not found")),
            LeaseOp::Final { remaining } => {
                if !remaining.is_empty() {
                    v.problems.push(format!(
                        "{} key(s) on abandoned leases still present {} s after the heal: {:?}",
                        remaining.len(),
                        VANISH_WITHIN.as_secs(),
                        &remaining[..remaining.len().min(10)]
                    ));
                }
                continue;
            }
            _ => continue,
        };
        if let Some(&(until, by)) = promised.get(&lease) {
            if o.complete < until {
                v.problems.push(format!(
                    "{what} at {}..{} µs, but {:?} (at {} µs) promised the lease alive until {until} µs",
                    o.invoke, o.complete, history[by].value, history[by].invoke
                ));
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(invoke: u64, complete: u64, value: LeaseOp) -> Op<LeaseOp> {
        Op { process: 0, status: Status::Ok, invoke, complete, value }
    }

    const S: u64 = 1_000_000;

    fn history(read_at: u64, present: bool) -> Vec<Op<LeaseOp>> {
        vec![
            op(0, 1000, LeaseOp::Grant { lease: 7, ttl: 3 }),
            op(2000, 3000, LeaseOp::Put { lease: 7, key: "lease/0/1".into() }),
            op(2 * S, 2 * S + 1000, LeaseOp::KeepAlive { lease: 7, ttl: 3 }),
            op(read_at, read_at + 1000, LeaseOp::Read { lease: 7, key: "lease/0/1".into(), present }),
            op(20 * S, 20 * S, LeaseOp::Final { remaining: vec![] }),
        ]
    }

    #[test]
    fn a_key_gone_after_its_promise_ran_out_passes() {
        let v = check(&history(5 * S + 1, false));
        assert_eq!(v.problems, Vec::<String>::new());
        assert_eq!((v.leases, v.keepalives, v.reads), (1, 1, 1));
    }

    #[test]
    fn a_key_gone_while_a_keepalive_promised_its_lease_is_flagged() {
        let v = check(&history(4 * S, false));
        assert!(v.problems[0].contains("was gone"), "{:?}", v.problems);
    }

    #[test]
    fn a_lease_not_found_while_promised_is_flagged() {
        let mut h = history(3 * S, true);
        h.insert(3, op(3 * S, 3 * S + 10, LeaseOp::KeepAlive { lease: 7, ttl: 0 }));
        assert!(check(&h).problems[0].contains("not found"));
    }

    #[test]
    fn keys_outliving_their_abandoned_leases_are_flagged() {
        let mut h = history(3 * S, true);
        h.push(op(30 * S, 30 * S, LeaseOp::Final { remaining: vec!["lease/0/1".into()] }));
        assert!(check(&h).problems[0].contains("still present"));
    }
}
