//! Workloads: each drives clients against the cluster until the nemesis stops, waits for the heal,
//! makes its final reads, and checks the history it recorded.

pub mod bank;
pub mod lease;
pub mod lock;
pub mod register;
pub mod set;
pub mod watch;

use std::future::Future;
use std::time::Duration;

use concord::pb::etcdserverpb::kv_client::KvClient;
use serde::Serialize;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::history::{points, Named, Op, Point, Status};
use crate::rng::Rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Reads, writes and compare-and-sets on a few keys; checked for linearizability per key.
    Register,
    /// Unique adds; a final read must hold every acknowledged add.
    Set,
    /// Transfers between accounts in Txns; reads must see a constant total, in revision order.
    Bank,
    /// Watchers of a prefix (reconnecting from their last revision) must see exactly the final history.
    Watch,
    /// Keys on kept-alive leases never vanish; keys on abandoned leases vanish within TTL plus a bound.
    Lease,
    /// A counter incremented under a concord Mutex with fenced (guarded) writes: no lost increment.
    Lock,
    /// The same with plain writes: shows why fencing is needed (expected to fail under faults).
    LockUnguarded,
}

/// What every workload gets from the harness.
#[derive(Clone)]
pub struct Ctx {
    /// One lazily connected channel per member.
    pub channels: Vec<Channel>,
    pub clients: usize,
    /// Operations per second per client (about).
    pub rate: f64,
    pub timeout: Duration,
    pub start: std::time::Instant,
    pub until: Instant,
    pub seed: u64,
}

/// A workload's verdict, with what the report draws.
pub struct Outcome {
    pub valid: bool,
    pub points: Vec<Point>,
    /// The history, one JSON object per line.
    pub history: Vec<String>,
    /// The checker's findings, for verdict.json.
    pub details: serde_json::Value,
}

impl Ctx {
    /// Waits out the client's share of the rate, with jitter so clients do not move in lockstep.
    pub async fn pace(&self, rng: &mut Rng) {
        let mean = 1000.0 / self.rate.max(0.001);
        tokio::time::sleep(Duration::from_millis(rng.between(0, (2.0 * mean) as u64))).await;
    }

    pub fn running(&self) -> bool {
        Instant::now() < self.until
    }
}

/// One client's view of the cluster: it talks to one member, and moves to another after an error,
/// as an etcd client with several endpoints does.
pub struct Conn {
    channels: Vec<Channel>,
    current: usize,
    pub rng: Rng,
}

impl Conn {
    pub fn new(ctx: &Ctx, process: usize) -> Conn {
        let mut rng =
            Rng::new(ctx.seed ^ (process as u64).wrapping_add(1).wrapping_mul(0x2545_f491_4f6c_dd1d));
        let current = rng.below(ctx.channels.len() as u64) as usize;
        Conn { channels: ctx.channels.clone(), current, rng }
    }

    pub fn kv(&self) -> KvClient<Channel> {
        KvClient::new(self.channel())
    }

    pub fn channel(&self) -> Channel {
        self.channels[self.current].clone()
    }

    pub fn failed(&mut self) {
        self.current = self.rng.below(self.channels.len() as u64) as usize;
    }
}

/// Runs `call` with the client timeout. A write that errs or times out may still have happened
/// (`Info`), unless etcd's answer says it was refused before it was proposed.
pub async fn attempt<T>(
    timeout: Duration,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, Status> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) if definite(&s) => Err(Status::Fail),
        _ => Err(Status::Info),
    }
}

/// Errors etcd returns before a request reaches the log: the request certainly had no effect.
fn definite(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::InvalidArgument | tonic::Code::OutOfRange | tonic::Code::FailedPrecondition
    )
}

/// Retries a read until it succeeds or `within` passes (for the final reads after the heal).
pub async fn settle<T, F, Fut>(conn: &mut Conn, within: Duration, mut read: F) -> anyhow::Result<T>
where
    F: FnMut(KvClient<Channel>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout(Duration::from_secs(2), read(conn.kv())).await {
            Ok(Ok(r)) => return Ok(r.into_inner()),
            Ok(Err(e)) if Instant::now() >= deadline => anyhow::bail!("final read failed: {e}"),
            Err(_) if Instant::now() >= deadline => anyhow::bail!("final read timed out"),
            _ => conn.failed(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn run(kind: Kind, ctx: Ctx, healed: oneshot::Receiver<()>) -> anyhow::Result<Outcome> {
    match kind {
        Kind::Register => register::run(ctx, healed).await,
        Kind::Set => set::run(ctx, healed).await,
        Kind::Bank => bank::run(ctx, healed).await,
        Kind::Watch => watch::run(ctx, healed).await,
        Kind::Lease => lease::run(ctx, healed).await,
        Kind::Lock => lock::run(ctx, healed, true).await,
        Kind::LockUnguarded => lock::run(ctx, healed, false).await,
    }
}

/// A checker's findings.
pub trait Verdict: Serialize {
    fn valid(&self) -> bool;
}

/// Runs `client(ctx, process)` for every client and waits for all of them.
pub async fn clients<F, Fut>(ctx: &Ctx, client: F) -> anyhow::Result<()>
where
    F: Fn(Ctx, usize) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let workers: Vec<_> = (0..ctx.clients).map(|p| tokio::spawn(client(ctx.clone(), p))).collect();
    for w in workers {
        w.await?;
    }
    Ok(())
}

/// A checked history as a run's outcome.
pub fn outcome<V: Named + Serialize>(history: &[Op<V>], verdict: &impl Verdict) -> anyhow::Result<Outcome> {
    Ok(Outcome {
        valid: verdict.valid(),
        points: points(history),
        history: lines(history),
        details: serde_json::to_value(verdict)?,
    })
}

/// Checks a saved history again (`history.jsonl` of a run): whether it is valid, and the findings.
/// The watch workload's verdict rests on its watchers' logs, which are not saved.
pub fn recheck(kind: Kind, history: &str) -> anyhow::Result<(bool, serde_json::Value)> {
    fn judge<V: serde::de::DeserializeOwned, R: Verdict>(
        history: &str,
        check: fn(&[Op<V>]) -> R,
    ) -> anyhow::Result<(bool, serde_json::Value)> {
        let ops: Vec<Op<V>> = history
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?;
        let verdict = check(&ops);
        Ok((verdict.valid(), serde_json::to_value(verdict)?))
    }
    match kind {
        Kind::Register => judge(history, register::check),
        Kind::Set => judge(history, set::check),
        Kind::Bank => judge(history, bank::check),
        Kind::Lease => judge(history, lease::check),
        Kind::Lock | Kind::LockUnguarded => judge(history, lock::check),
        Kind::Watch => anyhow::bail!("a watch run cannot be checked again: its watchers' logs are not saved"),
    }
}

/// Serialises a history, one operation per line.
pub fn lines<T: Serialize>(ops: &[T]) -> Vec<String> {
    ops.iter().filter_map(|o| serde_json::to_string(o).ok()).collect()
}
