//! The bank workload: transfers between accounts, each a Txn that moves money only if neither account
//! changed since it was read (compare on mod revisions), and reads of every account at once. Every
//! read must see the same total and no negative balance; reads at the same revision must agree;
//! revisions must respect real time (a read that began after an operation finished sees its revision);
//! and every read must see exactly the committed transfers up to its revision, replayed in revision
//! order (plus, at most once each, transfers whose outcome is unknown): strict serializability.

use std::collections::BTreeMap;
use std::time::Duration;

use concord::client::prefix_end;
use concord::pb::etcdserverpb::{
    compare, request_op, Compare, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::{attempt, clients, outcome, settle, Conn, Ctx, Outcome};
use crate::history::{Named, Op, Recorder, Status};

const ACCOUNTS: u64 = 5;
const INITIAL: i64 = 100;
const PREFIX: &str = "bank/";

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "lowercase")]
pub enum BankOp {
    /// Ok: moved, at `revision`; Fail: an account had changed since it was read.
    Transfer { from: u64, to: u64, amount: i64, revision: Option<i64> },
    Read {
        #[serde(deserialize_with = "numbered")]
        balances: BTreeMap<u64, i64>,
        revision: i64,
    },
}

/// Accounts by number, from JSON's string keys: serde cannot turn them into numbers by itself inside an
/// internally tagged enum, which `--recheck` reads.
fn numbered<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<u64, i64>, D::Error> {
    let by_name = BTreeMap::<String, i64>::deserialize(d)?;
    by_name.into_iter().map(|(k, v)| k.parse().map(|k| (k, v)).map_err(serde::de::Error::custom)).collect()
}

impl Named for BankOp {
    fn f(&self) -> &'static str {
        match self {
            BankOp::Transfer { .. } => "transfer",
            BankOp::Read { .. } => "read",
        }
    }
}

fn account(i: u64) -> Vec<u8> {
    format!("{PREFIX}{i}").into_bytes()
}

fn read_all() -> RangeRequest {
    RangeRequest { key: PREFIX.into(), range_end: prefix_end(PREFIX.as_bytes()), ..Default::default() }
}

/// Balances and mod revisions by account, and the read's revision.
fn parse(r: &concord::pb::etcdserverpb::RangeResponse) -> (BTreeMap<u64, (i64, i64)>, i64) {
    let accounts = r
        .kvs
        .iter()
        .filter_map(|kv| {
            let i = std::str::from_utf8(&kv.key).ok()?.strip_prefix(PREFIX)?.parse().ok()?;
            let balance = std::str::from_utf8(&kv.value).ok()?.parse().ok()?;
            Some((i, (balance, kv.mod_revision)))
        })
        .collect();
    (accounts, r.header.as_ref().map_or(0, |h| h.revision))
}

pub async fn run(ctx: Ctx, healed: oneshot::Receiver<()>) -> anyhow::Result<Outcome> {
    let rec = Recorder::new(ctx.start);
    // Open the accounts in one Txn before the clients start, only if they do not exist: an attempt that
    // timed out (sent to a paused member, say) may still be applied after the retry succeeded, and
    // must not reset the balances in the middle of the run then.
    let mut conn = Conn::new(&ctx, ctx.clients);
    let absent = Compare {
        key: account(0),
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Create as i32,
        target_union: Some(compare::TargetUnion::CreateRevision(0)),
        ..Default::default()
    };
    let open: Vec<RequestOp> = (0..ACCOUNTS)
        .map(|i| RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: account(i),
                value: INITIAL.to_string().into(),
                ..Default::default()
            })),
        })
        .collect();
    settle(&mut conn, Duration::from_secs(30), |mut kv| {
        let success = open.clone();
        let compare = vec![absent.clone()];
        async move { kv.txn(TxnRequest { compare, success, ..Default::default() }).await }
    })
    .await?;

    clients(&ctx, |ctx, p| client(ctx, p, rec.clone())).await?;
    let _ = healed.await;
    let invoke = rec.now();
    let last = settle(&mut conn, Duration::from_secs(30), |mut kv| async move { kv.range(read_all()).await })
        .await?;
    let (accounts, revision) = parse(&last);
    let balances = accounts.into_iter().map(|(i, (b, _))| (i, b)).collect();
    rec.record(ctx.clients, invoke, Status::Ok, BankOp::Read { balances, revision });

    let history = rec.history();
    outcome(&history, &check(&history))
}

async fn client(ctx: Ctx, process: usize, rec: Recorder<BankOp>) {
    let mut conn = Conn::new(&ctx, process);
    while ctx.running() {
        ctx.pace(&mut conn.rng).await;
        let invoke = rec.now();
        let mut kv = conn.kv();
        let read = attempt(ctx.timeout, kv.range(read_all())).await;
        let Ok(read) = read else {
            rec.record(
                process,
                invoke,
                Status::Fail,
                BankOp::Read { balances: BTreeMap::new(), revision: 0 },
            );
            conn.failed();
            continue;
        };
        let (accounts, revision) = parse(&read);
        if conn.rng.chance(0.5) {
            let balances = accounts.iter().map(|(i, (b, _))| (*i, *b)).collect();
            rec.record(process, invoke, Status::Ok, BankOp::Read { balances, revision });
            continue;
        }
        // A transfer: between two accounts as just read, if neither has changed since.
        let from = conn.rng.below(ACCOUNTS);
        let to = (from + 1 + conn.rng.below(ACCOUNTS - 1)) % ACCOUNTS;
        let (Some(&(from_balance, from_rev)), Some(&(to_balance, to_rev))) =
            (accounts.get(&from), accounts.get(&to))
        else {
            continue;
        };
        let amount = conn.rng.between(0, 5).min(from_balance.max(0) as u64) as i64;
        let same = |key: u64, rev: i64| Compare {
            key: account(key),
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Mod as i32,
            target_union: Some(compare::TargetUnion::ModRevision(rev)),
            ..Default::default()
        };
        let set = |key: u64, balance: i64| RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: account(key),
                value: balance.to_string().into(),
                ..Default::default()
            })),
        };
        let txn = kv.txn(TxnRequest {
            compare: vec![same(from, from_rev), same(to, to_rev)],
            success: vec![set(from, from_balance - amount), set(to, to_balance + amount)],
            failure: vec![],
        });
        let (status, revision) = match attempt(ctx.timeout, txn).await {
            Ok(r) if r.succeeded => (Status::Ok, r.header.map(|h| h.revision)),
            Ok(_) => (Status::Fail, None),
            Err(s) => (s, None),
        };
        if matches!(status, Status::Info) {
            conn.failed();
        }
        rec.record(process, invoke, status, BankOp::Transfer { from, to, amount, revision });
    }
}

#[derive(Debug, Default, Serialize)]
pub struct BankVerdict {
    pub reads: usize,
    pub transfers: usize,
    pub problems: Vec<String>,
}

impl super::Verdict for BankVerdict {
    fn valid(&self) -> bool {
        self.problems.is_empty()
    }
}

pub fn check(history: &[Op<BankOp>]) -> BankVerdict {
    let mut v = BankVerdict::default();
    let total = INITIAL * ACCOUNTS as i64;
    let mut at_revision: BTreeMap<i64, &BTreeMap<u64, i64>> = BTreeMap::new();
    // (revision, invoke, complete) of everything acknowledged, for the real-time check.
    let mut done: Vec<(i64, u64, u64, usize)> = Vec::new();
    for (n, o) in history.iter().enumerate() {
        if o.status != Status::Ok {
            continue;
        }
        match &o.value {
            BankOp::Read { balances, revision } => {
                v.reads += 1;
                let sum: i64 = balances.values().sum();
                if sum != total || balances.len() != ACCOUNTS as usize || balances.values().any(|b| *b < 0) {
                    v.problems.push(format!(
                        "read at revision {revision} saw {balances:?} (total {sum}, want {total})"
                    ));
                }
                match at_revision.insert(*revision, balances) {
                    Some(other) if other != balances => v.problems.push(format!(
                        "two reads at revision {revision} disagree: {other:?} and {balances:?}"
                    )),
                    _ => {}
                }
                done.push((*revision, o.invoke, o.complete, n));
            }
            BankOp::Transfer { revision, .. } => {
                v.transfers += 1;
                if let Some(r) = revision {
                    done.push((*r, o.invoke, o.complete, n));
                }
            }
        }
    }
    // Strictly serializable in revision order: whatever completed before another operation began
    // must have a revision no greater than what that operation saw or wrote.
    let mut by_complete = done.clone();
    by_complete.sort_by_key(|d| d.2);
    let mut by_invoke = done;
    by_invoke.sort_by_key(|d| d.1);
    let (mut i, mut highest): (usize, Option<(i64, usize)>) = (0, None);
    for &(rev, invoke, _, n) in &by_invoke {
        while i < by_complete.len() && by_complete[i].2 < invoke {
            let (r, _, _, m) = by_complete[i];
            if highest.is_none_or(|(h, _)| r > h) {
                highest = Some((r, m));
            }
            i += 1;
        }
        if let Some((h, m)) = highest {
            if rev < h {
                v.problems.push(format!(
                    "operation {n} ({:?}) at revision {rev} began after operation {m} ({:?}) at revision {h} \
                     had finished",
                    history[n].value, history[m].value
                ));
            }
        }
    }
    replay(history, &mut v);
    v
}

/// Transfers whose outcome is unknown are searched for a subset that explains a read; past this many,
/// the search is skipped rather than run for ever.
const MAX_UNKNOWN: usize = 16;

/// Serializability of the transfers themselves: every read must see exactly the committed transfers up
/// to its revision, applied in revision order, plus some of the transfers whose outcome is unknown
/// (each at most once, only if invoked before the read finished, and for good once a read has seen it).
/// A lost or phantom transfer shows up as a read that no such replay explains.
fn replay(history: &[Op<BankOp>], v: &mut BankVerdict) {
    let mut committed: Vec<(i64, u64, u64, i64)> = Vec::new();
    // (invoked at, from, to, amount)
    let mut unknown: Vec<(u64, u64, u64, i64)> = Vec::new();
    let mut reads: Vec<(i64, u64, &BTreeMap<u64, i64>)> = Vec::new();
    for o in history {
        match (&o.value, o.status) {
            (BankOp::Transfer { from, to, amount, revision: Some(r) }, Status::Ok) => {
                committed.push((*r, *from, *to, *amount))
            }
            (BankOp::Transfer { from, to, amount, .. }, Status::Info) => {
                unknown.push((o.invoke, *from, *to, *amount))
            }
            (BankOp::Read { balances, revision }, Status::Ok) => {
                reads.push((*revision, o.complete, balances))
            }
            _ => {}
        }
    }
    if unknown.len() > MAX_UNKNOWN {
        return;
    }
    committed.sort_unstable();
    reads.sort_by_key(|(r, _, _)| *r);
    let mut state: BTreeMap<u64, i64> = (0..ACCOUNTS).map(|a| (a, INITIAL)).collect();
    let mut pending = unknown;
    let mut next = 0;
    for (revision, complete, balances) in reads {
        while next < committed.len() && committed[next].0 <= revision {
            let (_, from, to, amount) = committed[next];
            *state.entry(from).or_default() -= amount;
            *state.entry(to).or_default() += amount;
            next += 1;
        }
        let diff: BTreeMap<u64, i64> = (0..ACCOUNTS)
            .map(|a| (a, balances.get(&a).copied().unwrap_or(0) - state.get(&a).copied().unwrap_or(0)))
            .filter(|(_, d)| *d != 0)
            .collect();
        if diff.is_empty() {
            continue;
        }
        // A transfer invoked after the read finished cannot be in what it saw. (Without this, two
        // unknown transfers that undo each other could both be spent on an early read, and a later read
        // that saw one of them would look wrong.)
        let candidates: Vec<usize> = (0..pending.len()).filter(|&i| pending[i].0 < complete).collect();
        let options: Vec<(u64, u64, i64)> =
            candidates.iter().map(|&i| (pending[i].1, pending[i].2, pending[i].3)).collect();
        match explain(&diff, &options) {
            Some(used) => {
                for j in used.iter().rev() {
                    let (_, from, to, amount) = pending.remove(candidates[*j]);
                    *state.entry(from).or_default() -= amount;
                    *state.entry(to).or_default() += amount;
                }
            }
            None => v.problems.push(format!(
                "read at revision {revision} saw {balances:?}, but the transfers committed up to it give {state:?}"
            )),
        }
    }
}

/// Indices (ascending) of a smallest subset of `pending` transfers whose net effect is `diff`, if there
/// is one. Spending the fewest unknown transfers on one read is a heuristic, not a search over every
/// choice: a false alarm stays possible when two different subsets explain a read.
fn explain(diff: &BTreeMap<u64, i64>, pending: &[(u64, u64, i64)]) -> Option<Vec<usize>> {
    fn search(
        i: usize,
        budget: usize,
        pending: &[(u64, u64, i64)],
        left: &mut BTreeMap<u64, i64>,
        chosen: &mut Vec<usize>,
    ) -> bool {
        if left.values().all(|d| *d == 0) {
            return true;
        }
        if i == pending.len() || chosen.len() == budget {
            return false;
        }
        let (from, to, amount) = pending[i];
        *left.entry(from).or_default() += amount;
        *left.entry(to).or_default() -= amount;
        chosen.push(i);
        if search(i + 1, budget, pending, left, chosen) {
            return true;
        }
        chosen.pop();
        *left.entry(from).or_default() -= amount;
        *left.entry(to).or_default() += amount;
        search(i + 1, budget, pending, left, chosen)
    }
    (1..=pending.len()).find_map(|budget| {
        let mut left = diff.clone();
        let mut chosen = Vec::new();
        search(0, budget, pending, &mut left, &mut chosen).then_some(chosen)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(invoke: u64, revision: i64, balances: &[i64]) -> Op<BankOp> {
        let balances = balances.iter().enumerate().map(|(i, b)| (i as u64, *b)).collect();
        Op {
            process: 0,
            status: Status::Ok,
            invoke,
            complete: invoke + 5,
            value: BankOp::Read { balances, revision },
        }
    }

    fn transfer(invoke: u64, revision: i64) -> Op<BankOp> {
        let value = BankOp::Transfer { from: 0, to: 1, amount: 10, revision: Some(revision) };
        Op { process: 1, status: Status::Ok, invoke, complete: invoke + 5, value }
    }

    #[test]
    fn consistent_reads_pass() {
        let h = [read(0, 2, &[100; 5]), transfer(10, 3), read(20, 3, &[90, 110, 100, 100, 100])];
        assert_eq!(check(&h).problems, Vec::<String>::new());
    }

    #[test]
    fn a_changed_total_is_flagged() {
        let h = [read(0, 3, &[90, 100, 100, 100, 100])];
        assert!(check(&h).problems[0].contains("total 490"));
    }

    #[test]
    fn a_read_behind_a_finished_transfer_is_flagged() {
        let h = [transfer(0, 5), read(20, 4, &[100; 5])];
        assert!(check(&h).problems[0].contains("began after"), "{:?}", check(&h).problems);
    }

    fn unknown(invoke: u64, amount: i64) -> Op<BankOp> {
        let value = BankOp::Transfer { from: 2, to: 3, amount, revision: None };
        Op { process: 2, status: Status::Info, invoke, complete: invoke + 5, value }
    }

    #[test]
    fn saved_reads_load_again_for_recheck() {
        let op = read(0, 2, &[100; 5]);
        let line = serde_json::to_string(&op).unwrap();
        let back: Op<BankOp> = serde_json::from_str(&line).unwrap();
        assert!(matches!(back.value, BankOp::Read { balances, revision: 2 } if balances.len() == 5));
    }

    #[test]
    fn a_lost_transfer_is_flagged() {
        // Acknowledged at revision 3, yet a later read sees the balances it changed untouched.
        let h = [transfer(0, 3), read(20, 4, &[100; 5])];
        let problems = check(&h).problems;
        assert!(problems.iter().any(|p| p.contains("committed up to it")), "{problems:?}");
    }

    #[test]
    fn transfers_of_unknown_outcome_may_have_happened_once() {
        let moved = [100, 100, 93, 107, 100];
        let h = [unknown(0, 7), read(20, 4, &moved), read(30, 5, &moved)];
        assert_eq!(check(&h).problems, Vec::<String>::new());
        // ...but not come undone, nor happen twice.
        let h = [unknown(0, 7), read(20, 4, &moved), read(30, 5, &[100; 5])];
        assert!(!check(&h).problems.is_empty());
        let h = [unknown(0, 7), read(20, 4, &[100, 100, 86, 114, 100])];
        assert!(!check(&h).problems.is_empty());
    }

    /// Seen in a campaign (bank, seed 91503): two unknown transfers that undo each other, the second
    /// invoked long after an early read, were both spent explaining that read, and a later read that saw
    /// only the second was flagged.
    #[test]
    fn an_unknown_transfer_invoked_after_a_read_does_not_explain_it() {
        let unknown = |invoke, from, to, amount| Op {
            process: 2,
            status: Status::Info,
            invoke,
            complete: invoke + 5,
            value: BankOp::Transfer { from, to, amount, revision: None },
        };
        let h = [
            unknown(0, 2, 3, 1),
            unknown(1, 3, 4, 5),
            read(10, 4, &[100, 100, 100, 95, 105]),
            unknown(100, 3, 2, 1),
            read(200, 6, &[100, 100, 101, 94, 105]),
        ];
        assert_eq!(check(&h).problems, Vec::<String>::new());
    }

    #[test]
    fn reads_disagreeing_at_one_revision_are_flagged() {
        let h = [read(0, 4, &[100; 5]), read(10, 4, &[90, 110, 100, 100, 100])];
        assert!(check(&h).problems[0].contains("disagree"));
    }
}
