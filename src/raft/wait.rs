//! Answers a proposer the moment its entry is applied (etcd's `pkg/wait`).
//!
//! openraft 0.9 hands apply results back to its core, and the core then answers `client_write`: one
//! more task hand-off on every write's way back, ~5% of a lone client's put. So the batcher tags each
//! entry it proposes with an id registered here, and the state machine, once a tagged entry is applied
//! and visible, hands the response straight to whoever waits on that id. Ids mean something only to
//! the process that drew them, and they start at a random number: an entry proposed before a restart,
//! applied after it, finds nobody waiting (its proposer got an error or a timeout long ago).
//!
//! openraft still answers every entry, and warns about each answer nobody receives, so a proposer
//! answered here leaves openraft's receiver behind (`keep`) until that answer has arrived.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tokio::sync::oneshot;

use super::types::{Response, WriteAnswer};

/// An applied entry's response and the index of its log entry.
pub type Applied = (Response, u64);

pub struct Wait {
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, oneshot::Sender<Applied>>>,
    /// openraft's answers still due to proposers that were answered here.
    left: Mutex<Vec<WriteAnswer>>,
}

impl Default for Wait {
    fn default() -> Self {
        Wait { next: AtomicU64::new(rand::random()), waiting: Mutex::default(), left: Mutex::default() }
    }
}

impl Wait {
    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Applied>>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh id, and where its entry's response will arrive until the ticket is dropped.
    pub fn register(&self) -> Ticket<'_> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiting().insert(id, tx);
        Ticket { wait: self, id, rx }
    }

    /// Holds `answer` until openraft has answered (dropping the answers that arrived meanwhile).
    pub fn keep(&self, mut answer: WriteAnswer) {
        let due = |a: &mut WriteAnswer| matches!(a.try_recv(), Err(oneshot::error::TryRecvError::Empty));
        if !due(&mut answer) {
            return;
        }
        let mut left = self.left.lock().unwrap_or_else(|p| p.into_inner());
        left.retain_mut(due);
        left.push(answer);
    }

    /// Hands `applied` to the waiter of `id`, or back when there is none (any more).
    pub fn trigger(&self, id: u64, applied: Applied) -> Result<(), Applied> {
        let waiter = self.waiting().remove(&id);
        match waiter {
            Some(tx) => tx.send(applied),
            None => Err(applied),
        }
    }
}

/// A registered wait; dropping it stops waiting (also when the proposer's future is dropped).
pub struct Ticket<'a> {
    wait: &'a Wait,
    pub id: u64,
    pub rx: oneshot::Receiver<Applied>,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.wait.waiting().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_reaches_its_own_waiter_only_once_and_comes_back_when_nobody_waits() {
        let wait = Wait::default();
        let mut a = wait.register();
        let b = wait.register();
        assert_ne!(a.id, b.id);
        assert!(wait.trigger(a.id, (Response::None, 7)).is_ok());
        assert!(matches!(a.rx.try_recv(), Ok((Response::None, 7))));
        assert!(wait.trigger(a.id, (Response::None, 8)).is_err(), "answered already");
        let b_id = b.id;
        drop(b);
        assert!(wait.trigger(b_id, (Response::None, 9)).is_err(), "its ticket was dropped");
        assert!(wait.waiting().is_empty());
    }
}
