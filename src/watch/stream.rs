//! One client's Watch stream: its watchers, the live events they are due, and catching up from history.
//!
//! A watcher is *synced* when every event up to `live` (the revision of the last batch this stream
//! took from the hub) has been delivered to it; live batches serve only synced watchers. Any other
//! watcher (started at an old revision, or left behind when the stream lagged) reads its events from
//! the MVCC history, `CATCH_UP_EVENTS` at a time, up to `live`, and is synced from then on. Everything
//! happens in one task per stream, so a watcher's next revision moves forward in one place only: no
//! event is skipped or sent twice, and a revision's events always travel together.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Range;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;

use super::encoded::{header_field, EncodedEvents, EncodedWatchResponse};
use super::hub::{Batch, Subscription};
use crate::mvcc::MvccError;
use crate::pb::etcdserverpb::watch_request::RequestUnion;
use crate::pb::etcdserverpb::{ResponseHeader, WatchCreateRequest, WatchRequest, WatchResponse};
use crate::pb::mvccpb::{event::EventType, Event, KeyValue};

/// What a stream reads besides live events: the applied store.
pub trait History: Send + Sync + 'static {
    /// See [`crate::mvcc::Store::history`].
    fn events(&self, from: i64, to: i64, max_events: usize, out: &mut Vec<Event>) -> Result<i64, MvccError>;
    fn compacted(&self) -> i64;
    /// The key's value as of `rev`, for `prev_kv` (none if it did not exist then or is compacted).
    fn value_at(&self, key: &[u8], rev: i64) -> Option<KeyValue>;
}

/// Fills a response header for a revision (cluster and member id, term).
pub type Stamp = Arc<dyn Fn(i64) -> ResponseHeader + Send + Sync>;

/// Whether the stream's caller may watch `key`..`range_end` (as the create request gave them); the
/// error is the reason the watch is refused with.
pub type Permit = Arc<dyn Fn(&[u8], &[u8]) -> Result<(), String> + Send + Sync>;

/// Where a stream's responses go, a batch's worth per message: the writer then finds a whole batch of
/// responses at once and frames them into one large HTTP/2 DATA frame (one `writev`), where handing
/// them over one by one let it catch a few at a time, as the two run on different threads (measured:
/// 2.5 writes per stream per applied batch in the fan-out row, against etcd's one).
pub type Outbox = mpsc::Sender<Vec<EncodedWatchResponse>>;

#[derive(Clone, Debug)]
pub struct Options {
    /// Responses of a watcher that asked for fragments are split above this size (etcd's
    /// `--max-request-bytes`).
    pub max_request_bytes: usize,
    /// How often a quiet watcher with `progress_notify` gets an empty response (etcd's default: 10 min).
    pub progress_notify_interval: Duration,
}

/// Events read from history per catch-up step; a revision's events are never split.
const CATCH_UP_EVENTS: usize = 1000;
/// The `watch_id` of responses about no watcher in particular (etcd's `InvalidWatchID`).
const NO_WATCH: i64 = -1;
/// A `watch_id` of 0 in a create request asks the server to choose (etcd's `AutoWatchID`).
const AUTO_WATCH_ID: i64 = 0;
const ERR_EMPTY_RANGE: &str = "mvcc: watcher range is empty";
const ERR_DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";

/// Watchers by id. Ids are small integers, and a batch of the fan-out row looks one up per watcher:
/// SipHash (the default, keyed against collisions an attacker picks) cost ~3% of the server there. A
/// multiplicative hash is enough here: ids that collide on purpose slow down only the stream of the
/// client that chose them, as creating many watchers already could.
type ById<V> = HashMap<i64, V, BuildHasherDefault<IdHasher>>;

#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b) ^ self.0.rotate_left(8));
        }
    }
    fn write_u64(&mut self, n: u64) {
        let x = n.wrapping_mul(0x9e37_79b9_7f4a_7c15); // 2^64 / golden ratio, odd
        self.0 = x ^ (x >> 32);
    }
    fn write_i64(&mut self, n: i64) {
        self.write_u64(n as u64);
    }
}

struct Watcher {
    key: Vec<u8>,
    /// `None`: the key alone; `Some(empty)`: every key from `key` on; `Some(end)`: `[key, end)`.
    end: Option<Vec<u8>>,
    /// The first revision this watcher has not been given yet.
    next: i64,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
    fragment: bool,
    progress_notify: bool,
    /// Nothing was sent to it since the last progress tick.
    quiet: bool,
}

impl Watcher {
    fn matches(&self, key: &[u8]) -> bool {
        match &self.end {
            None => key == self.key,
            Some(end) => key >= &self.key[..] && (end.is_empty() || key < &end[..]),
        }
    }

    fn wants(&self, ev: &Event) -> bool {
        let Some(kv) = &ev.kv else { return false };
        if kv.mod_revision < self.next || !self.matches(&kv.key) {
            return false;
        }
        if ev.r#type == EventType::Put as i32 {
            !self.no_put
        } else {
            !self.no_delete
        }
    }
}

/// The client has gone; the stream ends.
struct Gone;

/// Which events of a batch each watcher is due: positions in the batch, in revision order per watcher.
#[derive(Default)]
struct Due {
    picks: Vec<u32>,
    watchers: Vec<Delivery>,
}

struct Delivery {
    id: i64,
    /// This watcher's part of `Due::picks`.
    picks: Range<usize>,
    prev_kv: bool,
    fragment: bool,
}

pub struct WatchStream<H> {
    history: Arc<H>,
    sub: Subscription,
    stamp: Stamp,
    opts: Options,
    out: Outbox,
    watchers: ById<Watcher>,
    /// Watchers of one key, by key; watchers of ranges.
    singles: HashMap<Vec<u8>, Vec<i64>>,
    ranges: Vec<i64>,
    unsynced: BTreeSet<i64>,
    /// Watchers a compaction canceled. As on etcd their ids stay taken until the client cancels them,
    /// which Go's client does, and is answered.
    lost: HashSet<i64>,
    next_id: i64,
    /// The revision of the last batch taken from the hub: synced watchers have everything up to here.
    live: i64,
    /// A progress request waits until every watcher is synced (its revision must be a promise).
    progress_wanted: bool,
    permit: Option<Permit>,
}

impl<H: History> WatchStream<H> {
    pub fn new(history: Arc<H>, sub: Subscription, stamp: Stamp, opts: Options, out: Outbox) -> Self {
        let live = sub.start;
        WatchStream {
            history,
            sub,
            stamp,
            opts,
            out,
            watchers: ById::default(),
            singles: HashMap::new(),
            ranges: Vec::new(),
            unsynced: BTreeSet::new(),
            lost: HashSet::new(),
            next_id: 0,
            live,
            progress_wanted: false,
            permit: None,
        }
    }

    /// Checks every create request with `permit` (auth's read permission on the watched range).
    pub fn with_permit(self, permit: Permit) -> Self {
        WatchStream { permit: Some(permit), ..self }
    }

    /// Serves the stream until the client goes away.
    pub async fn run(mut self, mut requests: impl Stream<Item = WatchRequest> + Unpin) {
        let period = self.opts.progress_notify_interval;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            let catching_up = !self.unsynced.is_empty();
            let step = tokio::select! {
                req = requests.next() => match req {
                    Some(r) => self.on_request(r).await,
                    None => return,
                },
                batch = self.sub.rx.recv() => match batch {
                    Some(b) => self.on_batch(&b).await,
                    None => return,
                },
                _ = tick.tick() => self.on_tick().await,
                // The client is gone (its response stream dropped), with nothing to send it.
                () = self.out.closed() => return,
                () = std::future::ready(()), if catching_up => self.catch_up().await,
            };
            if step.is_err() {
                return;
            }
            if self.sub.lagged() && self.sub.rx.is_empty() {
                self.rejoin();
            }
            if self.progress_wanted && self.unsynced.is_empty() {
                self.progress_wanted = false;
                if self.send_control(NO_WATCH, |_| {}).await.is_err() {
                    return;
                }
            }
        }
    }

    async fn on_request(&mut self, req: WatchRequest) -> Result<(), Gone> {
        // The batches already published go first: a watcher created right after an acknowledged write
        // starts after it, and the answer's header has the revision etcd's would (its store's).
        while let Ok(batch) = self.sub.rx.try_recv() {
            self.on_batch(&batch).await?;
        }
        match req.request_union {
            Some(RequestUnion::CreateRequest(c)) => self.create(c).await,
            Some(RequestUnion::CancelRequest(c)) => {
                // etcd ignores a cancel for a watcher it does not have.
                if self.remove(c.watch_id) || self.lost.remove(&c.watch_id) {
                    self.send_control(c.watch_id, |r| r.canceled = true).await?;
                }
                Ok(())
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                self.progress_wanted = true;
                Ok(())
            }
            None => Ok(()),
        }
    }

    async fn create(&mut self, c: WatchCreateRequest) -> Result<(), Gone> {
        // As etcd: an empty key is the smallest key, and a range end of "\0" means every key from `key`.
        let key = if c.key.is_empty() { vec![0] } else { c.key };
        let refuse = |reason: String| {
            move |r: &mut WatchResponse| {
                r.created = true;
                r.canceled = true;
                r.cancel_reason = reason;
            }
        };
        if let Some(Err(reason)) = self.permit.as_ref().map(|p| p(&key, &c.range_end)) {
            return self.send_control(NO_WATCH, refuse(reason)).await;
        }
        let end = match c.range_end {
            e if e.is_empty() => None,
            e if e == [0] => Some(Vec::new()),
            e => Some(e),
        };
        if end.as_ref().is_some_and(|e| !e.is_empty() && key >= *e) {
            return self.send_control(NO_WATCH, refuse(ERR_EMPTY_RANGE.into())).await;
        }
        let taken = |id| self.watchers.contains_key(&id) || self.lost.contains(&id);
        let id = if c.watch_id == AUTO_WATCH_ID {
            let mut id = self.next_id;
            while taken(id) {
                id += 1;
            }
            self.next_id = id + 1;
            id
        } else if taken(c.watch_id) {
            return self.send_control(NO_WATCH, refuse(ERR_DUPLICATE_ID.into())).await;
        } else {
            c.watch_id
        };
        let next = if c.start_revision == 0 { self.live + 1 } else { c.start_revision.max(1) };
        let has = |f: i32| c.filters.contains(&f);
        let w = Watcher {
            key,
            end,
            next,
            no_put: has(0),
            no_delete: has(1),
            prev_kv: c.prev_kv,
            fragment: c.fragment,
            progress_notify: c.progress_notify,
            quiet: true,
        };
        // The created response goes first; the watcher's events can only follow it.
        self.send_control(id, |r| r.created = true).await?;
        match &w.end {
            None => self.singles.entry(w.key.clone()).or_default().push(id),
            Some(_) => self.ranges.push(id),
        }
        if w.next <= self.live {
            self.unsynced.insert(id);
        }
        self.watchers.insert(id, w);
        Ok(())
    }

    fn remove(&mut self, id: i64) -> bool {
        let Some(w) = self.watchers.remove(&id) else { return false };
        match w.end {
            None => {
                if let Some(ids) = self.singles.get_mut(&w.key) {
                    ids.retain(|i| *i != id);
                    if ids.is_empty() {
                        self.singles.remove(&w.key);
                    }
                }
            }
            Some(_) => self.ranges.retain(|i| *i != id),
        }
        self.unsynced.remove(&id);
        true
    }

    /// The events of `events` each watcher is due, among synced (`synced`) or unsynced ones. Those
    /// watchers are about to be sent something: no longer quiet.
    fn due(&mut self, events: &[Event], synced: bool) -> Due {
        let mut due = Due::default();
        // A watcher of one key looks only at that key's events.
        let mut by_key: BTreeMap<&[u8], Vec<u32>> = BTreeMap::new();
        for (i, ev) in events.iter().enumerate() {
            let Some(kv) = &ev.kv else { continue };
            if self.singles.contains_key(kv.key.as_ref()) {
                by_key.entry(kv.key.as_ref()).or_default().push(i as u32);
            }
        }
        let all: Vec<u32> =
            if self.ranges.is_empty() { Vec::new() } else { (0..events.len() as u32).collect() };
        let singles = by_key
            .iter()
            .flat_map(|(key, at)| self.singles.get(*key).into_iter().flatten().map(move |id| (id, at)));
        for (id, candidates) in singles.chain(self.ranges.iter().map(|id| (id, &all))) {
            if self.unsynced.contains(id) == synced {
                continue;
            }
            let Some(w) = self.watchers.get_mut(id) else { continue };
            let start = due.picks.len();
            due.picks.extend(candidates.iter().filter(|p| w.wants(&events[**p as usize])));
            if due.picks.len() > start {
                w.quiet = false;
                let (prev_kv, fragment) = (w.prev_kv, w.fragment);
                due.watchers.push(Delivery { id: *id, picks: start..due.picks.len(), prev_kv, fragment });
            }
        }
        due
    }

    async fn on_batch(&mut self, batch: &Batch) -> Result<(), Gone> {
        if batch.revision <= self.live {
            return Ok(());
        }
        if batch.restored {
            self.fall_behind(batch.revision);
            return Ok(());
        }
        let due = if self.watchers.len() > self.unsynced.len() {
            self.due(&batch.events, true)
        } else {
            Due::default()
        };
        self.live = batch.revision;
        self.deliver(&batch.events, &batch.encoded, due).await
    }

    /// The hub dropped batches for this stream: what it missed comes from history.
    fn rejoin(&mut self) {
        let published = self.sub.rejoin();
        self.fall_behind(published);
    }

    /// Everything after `live` up to `revision` reached the store without reaching this stream: every
    /// synced watcher reads it from history.
    fn fall_behind(&mut self, revision: i64) {
        if revision <= self.live {
            return;
        }
        for (id, w) in &mut self.watchers {
            if !self.unsynced.contains(id) {
                w.next = w.next.max(self.live + 1);
                if w.next <= revision {
                    self.unsynced.insert(*id);
                }
            }
        }
        self.live = revision;
    }

    async fn catch_up(&mut self) -> Result<(), Gone> {
        let compacted = self.history.compacted();
        let lost: Vec<i64> = self
            .unsynced
            .iter()
            .copied()
            .filter(|id| self.watchers.get(id).is_some_and(|w| w.next < compacted))
            .collect();
        for id in lost {
            self.remove(id);
            self.lost.insert(id);
            // As etcd: the compaction point, the watcher is gone, and the header has no revision (etcd's
            // compaction response carries none).
            let header = (self.stamp)(0);
            self.send_control(id, |r| {
                r.header = Some(header);
                r.compact_revision = compacted;
                r.canceled = true;
            })
            .await?;
        }
        let Some(from) = self.unsynced.iter().filter_map(|id| self.watchers.get(id)).map(|w| w.next).min()
        else {
            return Ok(());
        };
        let mut events = Vec::new();
        let covered = match self.history.events(from, self.live, CATCH_UP_EVENTS, &mut events) {
            Ok(c) => c,
            // Compacted meanwhile: the next step sends the compaction responses.
            Err(MvccError::Compacted) => return Ok(()),
            Err(e) => {
                for id in std::mem::take(&mut self.unsynced) {
                    self.remove(id);
                    let reason = e.to_string();
                    self.send_control(id, |r| {
                        r.canceled = true;
                        r.cancel_reason = reason;
                    })
                    .await?;
                }
                return Ok(());
            }
        };
        let due = self.due(&events, false);
        for id in &self.unsynced {
            if let Some(w) = self.watchers.get_mut(id) {
                if w.next <= covered {
                    w.next = covered + 1;
                }
            }
        }
        let (live, watchers) = (self.live, &self.watchers);
        self.unsynced.retain(|id| watchers.get(id).is_some_and(|w| w.next <= live));
        self.deliver(&events, &OnceLock::new(), due).await
    }

    async fn on_tick(&mut self) -> Result<(), Gone> {
        let quiet: Vec<i64> = self
            .watchers
            .iter()
            .filter(|(id, w)| w.progress_notify && w.quiet && !self.unsynced.contains(id))
            .map(|(id, _)| *id)
            .collect();
        for w in self.watchers.values_mut() {
            w.quiet = true;
        }
        for id in quiet {
            self.send_control(id, |_| {}).await?;
        }
        Ok(())
    }

    /// Sends each watcher in `due` its events. Watchers due the same events share one encoding of them
    /// (`encoded`, made here by the first stream that needs it); one with `prev_kv` or `fragment` gets
    /// a response of its own.
    async fn deliver(
        &self,
        events: &[Event],
        encoded: &OnceLock<EncodedEvents>,
        due: Due,
    ) -> Result<(), Gone> {
        let header = (self.stamp)(self.live);
        let mut head: Option<Bytes> = None;
        // Watchers of one key come one after another in `due`: most find their events in `last`.
        let mut last: Option<(&[u32], Bytes)> = None;
        let mut tails: HashMap<&[u32], Bytes> = HashMap::new();
        let mut batch = Vec::with_capacity(due.watchers.len());
        for d in &due.watchers {
            let picks = &due.picks[d.picks.clone()];
            if d.prev_kv || d.fragment {
                let events = picks.iter().map(|p| events[*p as usize].clone()).collect();
                self.deliver_own(d.id, header, d.prev_kv, d.fragment, events).await?;
                continue;
            }
            let tail = match &last {
                Some((p, tail)) if *p == picks => tail.clone(),
                _ => {
                    let tail = tails
                        .entry(picks)
                        .or_insert_with(|| encoded.get_or_init(|| EncodedEvents::new(events)).pick(picks))
                        .clone();
                    last = Some((picks, tail.clone()));
                    tail
                }
            };
            let head = head.get_or_insert_with(|| header_field(&header)).clone();
            batch.push(EncodedWatchResponse::shared(head, d.id, tail));
        }
        if batch.is_empty() {
            return Ok(());
        }
        self.out.send(batch).await.map_err(|_| Gone)
    }

    async fn deliver_own(
        &self,
        id: i64,
        header: ResponseHeader,
        prev_kv: bool,
        fragment: bool,
        mut events: Vec<Event>,
    ) -> Result<(), Gone> {
        if prev_kv {
            for ev in &mut events {
                let Some(kv) = &ev.kv else { continue };
                let created = ev.r#type == EventType::Put as i32 && kv.create_revision == kv.mod_revision;
                if !created {
                    ev.prev_kv = self.history.value_at(&kv.key, kv.mod_revision - 1);
                }
            }
        }
        let resp = WatchResponse { header: Some(header), watch_id: id, events, ..Default::default() };
        if fragment {
            self.send_fragments(resp).await
        } else {
            self.send(resp).await
        }
    }

    async fn send_control(&self, id: i64, f: impl FnOnce(&mut WatchResponse)) -> Result<(), Gone> {
        let mut r =
            WatchResponse { header: Some((self.stamp)(self.live)), watch_id: id, ..Default::default() };
        f(&mut r);
        self.send(r).await
    }

    async fn send(&self, r: WatchResponse) -> Result<(), Gone> {
        self.out.send(vec![EncodedWatchResponse::message(&r)]).await.map_err(|_| Gone)
    }

    /// Splits a response above `max_request_bytes` into fragments, as etcd's `sendFragments` does.
    async fn send_fragments(&self, resp: WatchResponse) -> Result<(), Gone> {
        use prost::Message;
        let max = self.opts.max_request_bytes;
        if resp.encoded_len() < max || resp.events.len() < 2 {
            return self.send(resp).await;
        }
        let mut rest = std::collections::VecDeque::from(resp.events);
        let template = WatchResponse { events: Vec::new(), fragment: true, ..resp };
        let base = template.encoded_len();
        while !rest.is_empty() {
            let (mut size, mut n) = (base, 0);
            for ev in &rest {
                let len = ev.encoded_len();
                let add = 1 + prost::length_delimiter_len(len) + len;
                if n > 0 && size + add >= max {
                    break;
                }
                size += add;
                n += 1;
            }
            let mut part = template.clone();
            part.events = rest.drain(..n).collect();
            part.fragment = !rest.is_empty();
            self.send(part).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::RwLock;

    use super::*;
    use crate::mvcc::{MemBackend, Store};
    use crate::pb::etcdserverpb::{PutRequest, RangeRequest, WatchCancelRequest};
    use crate::watch::Hub;

    struct Mem(RwLock<Store<MemBackend>>);

    impl History for Mem {
        fn events(&self, from: i64, to: i64, max: usize, out: &mut Vec<Event>) -> Result<i64, MvccError> {
            self.0.read().unwrap().history(from, to, max, out)
        }
        fn compacted(&self) -> i64 {
            self.0.read().unwrap().compact_revision()
        }
        fn value_at(&self, key: &[u8], rev: i64) -> Option<KeyValue> {
            let req = RangeRequest { key: key.to_vec(), revision: rev, ..Default::default() };
            self.0.read().unwrap().range(&req).ok()?.kvs.into_iter().next()
        }
    }

    /// Applies a put and publishes its events, as the state machine does.
    fn put(mem: &Mem, hub: &Hub, key: &str) {
        let mut s = mem.0.write().unwrap();
        let req = PutRequest { key: key.into(), value: b"v".to_vec(), ..Default::default() };
        let applied = s.put(&req, &|_| false).unwrap();
        s.commit().unwrap();
        hub.publish(s.current_revision(), applied.events);
    }

    fn create(key: &str, start: i64) -> WatchRequest {
        WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: key.into(),
                range_end: b"\0".to_vec(),
                start_revision: start,
                ..Default::default()
            })),
        }
    }

    /// A stream's responses as its client reads them, one at a time.
    struct Received {
        rx: mpsc::Receiver<Vec<EncodedWatchResponse>>,
        batch: std::collections::VecDeque<EncodedWatchResponse>,
    }

    fn start(mem: &Arc<Mem>, hub: &Arc<Hub>, out: usize) -> (mpsc::Sender<WatchRequest>, Received) {
        let (req_tx, req_rx) = mpsc::channel(16);
        let (tx, rx) = mpsc::channel(out);
        let stamp: Stamp = Arc::new(|revision| ResponseHeader { revision, ..Default::default() });
        let opts = Options { max_request_bytes: 1 << 20, progress_notify_interval: Duration::from_secs(600) };
        let stream = WatchStream::new(mem.clone(), hub.subscribe(), stamp, opts, tx);
        tokio::spawn(stream.run(Box::pin(tokio_stream::wrappers::ReceiverStream::new(req_rx))));
        (req_tx, Received { rx, batch: Default::default() })
    }

    async fn next(rx: &mut Received) -> WatchResponse {
        while rx.batch.is_empty() {
            let batch = tokio::time::timeout(Duration::from_secs(10), rx.rx.recv()).await.unwrap().unwrap();
            rx.batch.extend(batch);
        }
        rx.batch.pop_front().unwrap().decode().unwrap()
    }

    async fn revisions(rx: &mut Received, n: usize) -> Vec<i64> {
        let mut revs = Vec::new();
        while revs.len() < n {
            let r = next(rx).await;
            revs.extend(r.events.iter().map(|e| e.kv.as_ref().unwrap().mod_revision));
        }
        revs
    }

    #[tokio::test]
    async fn a_stream_that_falls_behind_catches_up_from_history_without_gaps_or_repeats() {
        let mem = Arc::new(Mem(RwLock::new(Store::open(MemBackend::default(), 1, -1).unwrap())));
        let hub = Hub::new(1);
        // An output queue of one batch that nobody reads yet: the stream blocks, its hub queue fills.
        let (req, mut rx) = start(&mem, &hub, 1);
        req.send(create("a", 0)).await.unwrap();
        let created = next(&mut rx).await;
        assert!(created.created);
        for i in 0..600 {
            put(&mem, &hub, &format!("k{i}"));
        }
        assert_eq!(revisions(&mut rx, 600).await, (2..602).collect::<Vec<_>>());
        put(&mem, &hub, "live");
        assert_eq!(revisions(&mut rx, 1).await, [602], "live again after catching up");
    }

    #[tokio::test]
    async fn a_snapshot_install_sends_synced_watchers_to_history_for_what_it_brought() {
        let mem = Arc::new(Mem(RwLock::new(Store::open(MemBackend::default(), 1, -1).unwrap())));
        let hub = Hub::new(1);
        let (req, mut rx) = start(&mem, &hub, 64);
        req.send(create("k", 0)).await.unwrap();
        assert!(next(&mut rx).await.created);
        put(&mem, &hub, "k0");
        assert_eq!(revisions(&mut rx, 1).await, [2]);
        // An install: the store moves on by revisions 3..=7, and the hub hears of them without events.
        let installed = {
            let mut s = mem.0.write().unwrap();
            for i in 1..=5 {
                s.put(&PutRequest { key: format!("k{i}").into(), ..Default::default() }, &|_| false).unwrap();
            }
            s.commit().unwrap();
            s.current_revision()
        };
        hub.restored(installed);
        put(&mem, &hub, "k6");
        assert_eq!(revisions(&mut rx, 6).await, (3..=8).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn history_then_live_events_with_a_compaction_in_between() {
        let mem = Arc::new(Mem(RwLock::new(Store::open(MemBackend::default(), 1, -1).unwrap())));
        let hub = Hub::new(1);
        for i in 0..2500 {
            put(&mem, &hub, &format!("k{i}"));
        }
        let (req, mut rx) = start(&mem, &hub, 64);
        // 2,500 revisions of history are read in steps of CATCH_UP_EVENTS, while live puts go on.
        req.send(create("k", 2)).await.unwrap();
        assert!(next(&mut rx).await.created);
        for i in 0..10 {
            put(&mem, &hub, &format!("k-live{i}"));
        }
        assert_eq!(revisions(&mut rx, 2510).await, (2..2512).collect::<Vec<_>>());

        mem.0.write().unwrap().compact(100).unwrap();
        req.send(create("k", 50)).await.unwrap();
        let created = next(&mut rx).await;
        let compacted = next(&mut rx).await;
        assert_eq!(
            (compacted.watch_id, compacted.compact_revision, compacted.canceled),
            (created.watch_id, 100, true)
        );
        assert_eq!(compacted.header.map(|h| h.revision), Some(0), "etcd's compaction response has none");

        // As on etcd, the lost watcher's id stays taken until the client cancels it, and that is answered.
        let id = created.watch_id;
        let mut again = create("k", 0);
        if let Some(RequestUnion::CreateRequest(c)) = &mut again.request_union {
            c.watch_id = id;
        }
        req.send(again.clone()).await.unwrap();
        let refused = next(&mut rx).await;
        assert_eq!((refused.watch_id, refused.cancel_reason.as_str()), (NO_WATCH, ERR_DUPLICATE_ID));
        req.send(create("k", 0)).await.unwrap();
        assert_eq!(next(&mut rx).await.watch_id, id + 1, "an automatic id skips it");
        let cancel = WatchCancelRequest { watch_id: id };
        req.send(WatchRequest { request_union: Some(RequestUnion::CancelRequest(cancel)) }).await.unwrap();
        let canceled = next(&mut rx).await;
        assert_eq!(
            (canceled.watch_id, canceled.canceled, canceled.header.map(|h| h.revision)),
            (id, true, Some(2511))
        );
        req.send(again).await.unwrap();
        let reused = next(&mut rx).await;
        assert_eq!((reused.watch_id, reused.created, reused.canceled), (id, true, false));
    }
}
