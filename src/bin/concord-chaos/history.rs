//! Operations as the clients saw them: what was asked, what came back (ok, fail, or info: unknown), and
//! the real-time interval in which it happened.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Happened, with the recorded result.
    Ok,
    /// Definitely did not happen.
    Fail,
    /// May or may not have happened (a timeout, a lost connection): checkers must allow both.
    Info,
}

/// One completed operation. `invoke` and `complete` are microseconds since the run started; an `Info`
/// operation's `complete` is only when the client gave up, not a bound on when it took effect.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Op<V> {
    pub process: usize,
    pub status: Status,
    pub invoke: u64,
    pub complete: u64,
    #[serde(flatten)]
    pub value: V,
}

/// The name of an operation's function, for reports (`read`, `write`, `cas`, …).
pub trait Named {
    fn f(&self) -> &'static str;
}

/// Shared by every client of a run.
#[derive(Clone)]
pub struct Recorder<V> {
    start: Instant,
    ops: Arc<Mutex<Vec<Op<V>>>>,
}

impl<V: Clone> Recorder<V> {
    pub fn new(start: Instant) -> Self {
        Recorder { start, ops: Arc::default() }
    }

    pub fn now(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    pub fn record(&self, process: usize, invoke: u64, status: Status, value: V) {
        let op = Op { process, status, invoke, complete: self.now(), value };
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).push(op);
    }

    pub fn history(&self) -> Vec<Op<V>> {
        let mut ops = self.ops.lock().unwrap_or_else(|p| p.into_inner()).clone();
        ops.sort_by_key(|o| (o.invoke, o.complete));
        ops
    }
}

/// What a report needs of any operation.
#[derive(Clone, Debug, Serialize)]
pub struct Point {
    pub f: &'static str,
    pub status: Status,
    pub invoke: u64,
    pub complete: u64,
}

pub fn points<V: Named>(history: &[Op<V>]) -> Vec<Point> {
    history
        .iter()
        .map(|o| Point { f: o.value.f(), status: o.status, invoke: o.invoke, complete: o.complete })
        .collect()
}
