//! A linearizability checker in the style of Wing & Gong with Lowe's memoisation, as porcupine and
//! knossos implement it: search for an order of the operations that respects real time (an operation
//! that completed before another began comes first) and that a sequential model accepts, backtracking
//! on dead ends and never revisiting a (set of linearized operations, model state) pair.
//!
//! An operation whose outcome is unknown (`complete: None`) may take effect at any point after its
//! invocation, or never: it has no return event, so the search may finish without it.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

pub trait Model {
    type State: Clone + Eq + Hash;
    type Op;
    fn init(&self) -> Self::State;
    /// The state after `op`, if `op` (with the result it recorded) can happen in `state`.
    fn step(&self, state: &Self::State, op: &Self::Op) -> Option<Self::State>;
}

pub struct Call<O> {
    pub op: O,
    pub invoke: u64,
    /// `None`: the client never learned the outcome.
    pub complete: Option<u64>,
    /// Calls of one class are interchangeable: the same operation with unknown outcomes. The search
    /// places only the earliest-invoked unplaced call of a class (any order using a later one can use
    /// an earlier one instead), which keeps many unknown writes from multiplying the search.
    pub class: Option<u64>,
}

/// No linearization exists; `stuck` is a completed operation that no order could fit in before it
/// returned (the furthest the search got), `linearized` how many operations had been placed then.
#[derive(Debug, PartialEq, Eq)]
pub struct Violation {
    pub stuck: usize,
    pub linearized: usize,
}

const NIL: usize = usize::MAX;

struct Entry {
    op: usize,
    time: u64,
    /// For a call: the index of its return entry, if it has one.
    ret: Option<usize>,
    is_call: bool,
}

/// A doubly linked list over the entries, with a sentinel head, from which calls (with their returns)
/// are lifted as they are linearized and put back when the search backtracks.
struct List {
    next: Vec<usize>,
    prev: Vec<usize>,
    head: usize,
}

impl List {
    fn new(n: usize) -> List {
        let head = n;
        // head → 0 → 1 → … → n-1 → NIL
        let next = (0..=n).map(|i| {
            if i == head {
                if n == 0 {
                    NIL
                } else {
                    0
                }
            } else if i + 1 < n {
                i + 1
            } else {
                NIL
            }
        });
        let prev = (0..=n).map(|i| {
            if i == head {
                NIL
            } else if i == 0 {
                head
            } else {
                i - 1
            }
        });
        List { next: next.collect(), prev: prev.collect(), head }
    }

    fn remove(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    fn restore(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = e;
        if n != NIL {
            self.prev[n] = e;
        }
    }
}

pub fn check<M: Model>(model: &M, calls: &[Call<M::Op>]) -> Result<(), Violation> {
    let mut entries = Vec::with_capacity(calls.len() * 2);
    for (i, c) in calls.iter().enumerate() {
        entries.push(Entry { op: i, time: c.invoke, ret: None, is_call: true });
        if let Some(t) = c.complete {
            entries.push(Entry { op: i, time: t, ret: None, is_call: false });
        }
    }
    // At equal times calls go first: the two operations are then taken as concurrent.
    entries.sort_by_key(|e| (e.time, !e.is_call));
    let mut return_of = vec![None; calls.len()];
    for (i, e) in entries.iter().enumerate() {
        if !e.is_call {
            return_of[e.op] = Some(i);
        }
    }
    for e in entries.iter_mut().filter(|e| e.is_call) {
        e.ret = return_of[e.op];
    }

    // Each classed call's rank among its class by invocation; a call may be placed only when every
    // earlier one of its class is (`placed` counts them).
    let mut rank = vec![0usize; calls.len()];
    let mut by_class: HashMap<u64, Vec<usize>> = HashMap::new();
    for (i, c) in calls.iter().enumerate() {
        if let Some(k) = c.class {
            by_class.entry(k).or_default().push(i);
        }
    }
    for members in by_class.values_mut() {
        members.sort_by_key(|&i| (calls[i].invoke, i));
        for (r, &i) in members.iter().enumerate() {
            rank[i] = r;
        }
    }
    let mut placed: HashMap<u64, usize> = HashMap::new();
    let turn = |op: usize, placed: &HashMap<u64, usize>| {
        calls[op].class.is_none_or(|k| placed.get(&k).copied().unwrap_or(0) == rank[op])
    };

    let mut list = List::new(entries.len());
    let mut linearized = vec![0u64; calls.len().div_ceil(64)];
    let mut seen: HashSet<(Vec<u64>, M::State)> = HashSet::new();
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    let mut state = model.init();
    let mut furthest = Violation { stuck: 0, linearized: 0 };
    let mut e = list.next[list.head];
    loop {
        if e == NIL {
            return Ok(());
        }
        let entry = &entries[e];
        if entry.is_call {
            let op = entry.op;
            let next = if turn(op, &placed) { model.step(&state, &calls[op].op) } else { None };
            if let Some(next) = next {
                linearized[op / 64] |= 1 << (op % 64);
                if seen.insert((linearized.clone(), next.clone())) {
                    if let Some(k) = calls[op].class {
                        *placed.entry(k).or_default() += 1;
                    }
                    stack.push((e, std::mem::replace(&mut state, next)));
                    list.remove(e);
                    if let Some(r) = entry.ret {
                        list.remove(r);
                    }
                    e = list.next[list.head];
                    continue;
                }
                linearized[op / 64] &= !(1 << (op % 64));
            }
            e = list.next[e];
        } else {
            if stack.len() >= furthest.linearized {
                furthest = Violation { stuck: entry.op, linearized: stack.len() };
            }
            let Some((call, previous)) = stack.pop() else { return Err(furthest) };
            state = previous;
            let op = entries[call].op;
            linearized[op / 64] &= !(1 << (op % 64));
            if let Some(k) = calls[op].class {
                *placed.entry(k).or_default() -= 1;
            }
            if let Some(r) = entries[call].ret {
                list.restore(r);
            }
            list.restore(call);
            e = list.next[call];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A register holding an integer (0 at first).
    struct Register;

    #[derive(Clone, Copy)]
    enum Op {
        Read(i64),
        Write(i64),
    }

    impl Model for Register {
        type State = i64;
        type Op = Op;
        fn init(&self) -> i64 {
            0
        }
        fn step(&self, s: &i64, op: &Op) -> Option<i64> {
            match *op {
                Op::Read(v) => (v == *s).then_some(*s),
                Op::Write(v) => Some(v),
            }
        }
    }

    fn call(op: Op, invoke: u64, complete: u64) -> Call<Op> {
        Call { op, invoke, complete: Some(complete), class: None }
    }

    #[test]
    fn empty_history_is_linearizable() {
        assert_eq!(check(&Register, &[]), Ok(()));
    }

    #[test]
    fn concurrent_read_may_see_either_value() {
        let h = [call(Op::Write(1), 0, 10), call(Op::Read(0), 1, 5), call(Op::Read(1), 2, 6)];
        assert_eq!(check(&Register, &h), Ok(()));
    }

    #[test]
    fn stale_read_is_flagged() {
        // The write of 1 completed before the read began, which still saw 0.
        let h = [call(Op::Write(1), 0, 10), call(Op::Read(0), 20, 30)];
        assert_eq!(check(&Register, &h), Err(Violation { stuck: 1, linearized: 1 }));
    }

    #[test]
    fn lost_write_is_flagged() {
        // Two sequential writes, then a read of the first: the second write was lost.
        let h = [call(Op::Write(1), 0, 10), call(Op::Write(2), 20, 30), call(Op::Read(1), 40, 50)];
        assert!(check(&Register, &h).is_err());
    }

    #[test]
    fn reads_may_not_go_back_in_time() {
        let h = [
            call(Op::Write(1), 0, 100),
            call(Op::Read(1), 10, 20), // saw the write, so it took effect by 20
            call(Op::Read(0), 30, 40), // then the old value: not linearizable
        ];
        assert!(check(&Register, &h).is_err());
    }

    #[test]
    fn unknown_write_may_happen_late_or_never() {
        let info = |v, t| Call { op: Op::Write(v), invoke: t, complete: None, class: None };
        let late = [info(1, 0), call(Op::Read(0), 10, 20), call(Op::Read(1), 30, 40)];
        assert_eq!(check(&Register, &late), Ok(()));
        let never = [info(1, 0), call(Op::Read(0), 10, 20)];
        assert_eq!(check(&Register, &never), Ok(()));
        // But not before it was invoked.
        let early = [call(Op::Read(1), 0, 10), info(1, 20)];
        assert!(check(&Register, &early).is_err());
    }

    #[test]
    fn interchangeable_unknown_writes_are_placed_earliest_first_and_still_explain_reads() {
        let info = |t| Call { op: Op::Write(9), invoke: t, complete: None, class: Some(0) };
        // 60 unknown writes of the same value, then reads that need two of them (the value comes back
        // after being overwritten): found quickly, and only with writes invoked before each read.
        let mut h: Vec<Call<Op>> = (0..60).map(|i| info(i * 10)).collect();
        h.push(call(Op::Read(9), 1000, 1010));
        h.push(call(Op::Write(1), 1020, 1030));
        h.push(call(Op::Read(9), 1040, 1050));
        assert_eq!(check(&Register, &h), Ok(()));
        let mut late: Vec<Call<Op>> = vec![call(Op::Read(9), 0, 10), info(20)];
        late.push(call(Op::Read(0), 30, 40));
        assert!(check(&Register, &late).is_err());
    }
}
