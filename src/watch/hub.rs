//! The hub: the one place applied events leave the write path.
//!
//! The state machine publishes each applied batch's events once, as one shared [`Batch`]; every watch
//! stream gets a reference to it through a bounded queue and does its own matching, off the write path.
//! A stream whose queue is full is marked lagged and sent nothing more: publishing never waits for a
//! slow consumer, and memory stays bounded. The stream notices once it has drained its queue, rejoins,
//! and reads what it missed from the MVCC history (see `stream.rs`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use tokio::sync::mpsc;

use super::encoded::EncodedEvents;
use crate::pb::mvccpb::Event;

/// Batches a stream may have queued before it counts as lagging (etcd's watch channels hold 128).
const QUEUE: usize = 128;

/// The events of one applied batch, in revision order, and the store's revision after it.
#[derive(Debug)]
pub struct Batch {
    pub revision: i64,
    pub events: Vec<Event>,
    /// A snapshot replaced the state: whatever happened up to `revision` is only in the history, and
    /// `events` is empty.
    pub restored: bool,
    /// `events` encoded, by the first stream that sends any of them; shared by all.
    pub encoded: OnceLock<EncodedEvents>,
}

pub struct Hub {
    inner: Mutex<Inner>,
}

struct Inner {
    /// The revision of the last batch published: every stream has seen, or will read from history,
    /// everything up to here.
    published: i64,
    next_id: u64,
    streams: HashMap<u64, Entry>,
}

struct Entry {
    tx: mpsc::Sender<Arc<Batch>>,
    lagged: Arc<AtomicBool>,
}

impl Hub {
    pub fn new(revision: i64) -> Arc<Hub> {
        Arc::new(Hub {
            inner: Mutex::new(Inner { published: revision, next_id: 0, streams: HashMap::new() }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes the batch that took the store to `revision`.
    pub fn publish(&self, revision: i64, events: Vec<Event>) {
        self.send(Batch { revision, events, restored: false, encoded: OnceLock::new() });
    }

    /// Tells every stream that a snapshot install took the store to `revision` without events: their
    /// watchers read what it brought from history (or learn that it was compacted).
    pub fn restored(&self, revision: i64) {
        self.send(Batch { revision, events: Vec::new(), restored: true, encoded: OnceLock::new() });
    }

    fn send(&self, batch: Batch) {
        let mut inner = self.lock();
        inner.published = batch.revision;
        if inner.streams.is_empty() {
            return;
        }
        let batch = Arc::new(batch);
        inner.streams.retain(|_, e| {
            if e.lagged.load(Ordering::Relaxed) {
                return true;
            }
            match e.tx.try_send(batch.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    e.lagged.store(true, Ordering::Relaxed);
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
    }

    pub fn published(&self) -> i64 {
        self.lock().published
    }

    /// A new stream: it receives every batch published after the returned revision.
    pub fn subscribe(self: &Arc<Self>) -> Subscription {
        let (tx, rx) = mpsc::channel(QUEUE);
        let lagged = Arc::new(AtomicBool::new(false));
        let mut inner = self.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        inner.streams.insert(id, Entry { tx, lagged: lagged.clone() });
        Subscription { hub: self.clone(), id, rx, lagged, start: inner.published }
    }

    pub fn streams(&self) -> usize {
        self.lock().streams.len()
    }
}

/// A stream's end of the hub; unsubscribes when dropped.
pub struct Subscription {
    hub: Arc<Hub>,
    id: u64,
    pub rx: mpsc::Receiver<Arc<Batch>>,
    lagged: Arc<AtomicBool>,
    /// The revision published when the stream subscribed.
    pub start: i64,
}

impl Subscription {
    /// Whether batches were dropped for this stream since it last rejoined.
    pub fn lagged(&self) -> bool {
        self.lagged.load(Ordering::Relaxed)
    }

    /// Resumes delivery; returns the revision through which the stream must read history instead. Call
    /// only with an empty queue, so that nothing published before the returned revision is still queued.
    pub fn rejoin(&self) -> i64 {
        let inner = self.hub.lock();
        self.lagged.store(false, Ordering::Relaxed);
        inner.published
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.lock().streams.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_marks_the_stream_lagged_and_rejoining_resumes_it() {
        let hub = Hub::new(1);
        let mut sub = hub.subscribe();
        assert_eq!(sub.start, 1);
        for rev in 2..2 + QUEUE as i64 + 5 {
            hub.publish(rev, vec![]);
        }
        assert!(sub.lagged());
        let mut last = 0;
        while let Ok(b) = sub.rx.try_recv() {
            last = b.revision;
        }
        assert_eq!(last, 1 + QUEUE as i64, "the queue kept the oldest batches");
        assert_eq!(sub.rejoin(), 1 + QUEUE as i64 + 5);
        hub.publish(200, vec![]);
        assert_eq!(sub.rx.try_recv().map(|b| b.revision).ok(), Some(200));
        drop(sub);
        assert_eq!(hub.streams(), 0);
    }
}
