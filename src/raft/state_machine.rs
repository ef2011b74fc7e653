//! The state machine: applies committed entries to the MVCC store, whose records go to the record log
//! ([`crate::storage::records`]) as each batch of entries is applied.
//!
//! Apply does not sync. The Raft log is the durability point: a checkpoint, taken in the background (and
//! before the log is purged), makes the records durable together with the applied log id they match,
//! and on restart openraft re-applies the log from there.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, RwLock, Weak};

use openraft::{EntryPayload, ErrorSubject, ErrorVerb};
use serde::{Deserialize, Serialize};

use super::apply::apply_request;
use super::types::{Attributes, Entry, LogId, Request, Response, StorageError, StoredMembership};
use super::wait::Wait;
use super::{decode, encode};
use crate::auth::{AuthStore, Tokens};
use crate::backup::etcd::BackupState;
use crate::lease::LeaseTable;
use crate::mvcc::{MvccError, Store};
use crate::pb::etcdserverpb::{RangeRequest, RangeResponse};
use crate::pb::mvccpb::{Event, KeyValue};
use crate::storage::records::RecordLog;
use crate::watch::{History, Hub};

mod store;
pub use store::StateMachineStore;
use store::{read_dump_head, read_snapshot_meta, snapshots};

fn sm_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    StorageError::from_io_error(ErrorSubject::StateMachine, verb, std::io::Error::other(e.to_string()))
}

fn snap_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    StorageError::from_io_error(ErrorSubject::Snapshot(None), verb, std::io::Error::other(e.to_string()))
}

/// Live records moved per step when a segment is reclaimed; one step holds the store's write lock.
const RECLAIM_BUDGET: usize = 1024;

/// The marker file of [`StateMachine::restored_unlogged`], in the snapshot dir.
const UNLOGGED: &str = "restored-unlogged";

/// The applied state, shared by the Raft core (which applies) and the API (which reads).
pub struct StateMachine {
    store: RwLock<Store<RecordLog>>,
    meta: Mutex<Applied>,
    snapshot_dir: PathBuf,
    /// Checkpoints complete one at a time, in the order they were taken.
    checkpoint_lock: Mutex<()>,
    /// A failed sync leaves the page cache in an unknown state (it may have dropped the dirty pages):
    /// like etcd, stop applying rather than claim durability later.
    failed: AtomicBool,
    /// The last applied log index, for those who wait for apply (the log purge).
    applied_tx: tokio::sync::watch::Sender<u64>,
    /// Wakes the maintenance thread (reclaiming segments, checkpoints).
    maintenance: mpsc::SyncSender<()>,
    /// Where applied events go to watchers.
    hub: Arc<Hub>,
    /// Requests applied since the last snapshot, and how many call for the next (etcd's
    /// `--snapshot-count`, which counts requests, not Raft entries: ours carry batches).
    since_snapshot: AtomicU64,
    snapshot_count: u64,
    snapshot_due: tokio::sync::Notify,
    /// The log index of the last snapshot: a snapshot sent to a lagging member must cover it, since the
    /// log may be purged up to there.
    snapshot_floor: AtomicU64,
    /// openraft asks for the current snapshot once while starting; see `get_current_snapshot`.
    probed: AtomicBool,
    /// The record files' size as of the last apply or maintenance step: the quota check on every write
    /// reads it without taking the store's lock.
    size: AtomicU64,
    /// The auth state as last applied, for the checks of reads (which do not wait for an apply), and
    /// whether auth is on, for the many requests that need to know nothing else.
    auth: RwLock<Arc<AuthStore>>,
    auth_enabled: AtomicBool,
    /// This member's simple tokens (see `auth::Tokens`).
    tokens: Tokens,
    /// Proposers waiting for their entries (see `wait`).
    wait: Arc<Wait>,
}

/// What a checkpoint records next to the records: exactly the state they match. Fields are only ever
/// added at the end (see [`Durable::decode`]).
#[derive(Clone, Serialize, Deserialize)]
struct Durable {
    last_applied: Option<LogId>,
    current: i64,
    compacted: i64,
    membership: StoredMembership,
    attributes: BTreeMap<u64, Attributes>,
    /// Active alarms: (member, AlarmType).
    alarms: BTreeSet<(u64, i32)>,
    /// Every lease (id, granted TTL); attached keys are rebuilt from the store.
    leases: Vec<(i64, i64)>,
    auth: AuthStore,
    /// Leases with a checkpoint: (id, seconds left then).
    lease_checkpoints: Vec<(i64, i64)>,
}

impl Durable {
    /// Reads a checkpoint, also one written before fields were added: bincode writes a struct as its
    /// fields one after another, so an older checkpoint is a prefix of a newer one and reads as one
    /// once completed with the encoding of the added fields' defaults.
    fn decode(bytes: &[u8]) -> Result<Durable, bincode::error::DecodeError> {
        let no_checkpoints = Vec::<(i64, i64)>::new();
        let added = [encode(&no_checkpoints), encode(&(AuthStore::default(), no_checkpoints.clone()))];
        decode(bytes).or_else(|e| {
            let mut older = added.iter().flatten().map(|tail| decode(&[bytes, tail].concat()));
            older.find_map(Result::ok).ok_or(e)
        })
    }
}

impl Default for Durable {
    fn default() -> Self {
        // An empty store is at revision 1 with nothing compacted (-1, like etcd, so that compacting at
        // revision 0 succeeds once).
        Durable {
            last_applied: None,
            current: 1,
            compacted: -1,
            membership: StoredMembership::default(),
            attributes: BTreeMap::new(),
            alarms: BTreeSet::new(),
            leases: Vec::new(),
            auth: AuthStore::default(),
            lease_checkpoints: Vec::new(),
        }
    }
}

/// What the state machine keeps besides the key-value store.
#[derive(Clone, Default)]
pub(super) struct Applied {
    pub(super) last_applied: Option<LogId>,
    pub(super) membership: StoredMembership,
    pub(super) attributes: BTreeMap<u64, Attributes>,
    pub(super) alarms: BTreeSet<(u64, i32)>,
    pub(super) leases: LeaseTable,
    /// Copied on write (auth changes are rare), so the state machine can publish it to readers.
    pub(super) auth: Arc<AuthStore>,
}

impl Applied {
    fn durable(&self, store: &Store<RecordLog>) -> Durable {
        Durable {
            last_applied: self.last_applied,
            current: store.current_revision(),
            compacted: store.compact_revision(),
            membership: self.membership.clone(),
            attributes: self.attributes.clone(),
            alarms: self.alarms.clone(),
            leases: self.leases.leases(),
            auth: (*self.auth).clone(),
            lease_checkpoints: self.leases.checkpoints(),
        }
    }
}

impl Applied {
    /// The applied state a checkpoint describes, with each lease's keys found in `store`.
    fn restore(d: Durable, store: &Store<RecordLog>) -> Applied {
        let mut leases = LeaseTable::with_leases(d.leases);
        for (id, remaining) in d.lease_checkpoints {
            leases.checkpoint(id, remaining);
        }
        for (key, lease) in store.leased_keys() {
            leases.attach(&key, lease);
        }
        Applied {
            last_applied: d.last_applied,
            membership: d.membership,
            attributes: d.attributes,
            alarms: d.alarms,
            leases,
            auth: Arc::new(d.auth),
        }
    }
}

fn decode_durable(bytes: Option<Vec<u8>>) -> Result<Durable, StorageError> {
    match bytes {
        Some(b) => Durable::decode(&b).map_err(|e| sm_err(ErrorVerb::Read, e)),
        None => Ok(Durable::default()),
    }
}

impl StateMachine {
    /// Opens the records in `records_dir` at their last checkpoint, and starts the maintenance thread
    /// (it ends with the state machine).
    pub fn open(
        records_dir: &Path,
        snapshot_dir: PathBuf,
        snapshot_count: u64,
    ) -> Result<Arc<Self>, StorageError> {
        std::fs::create_dir_all(&snapshot_dir).map_err(|e| snap_err(ErrorVerb::Write, e))?;
        let (log, meta) = RecordLog::open(records_dir).map_err(|e| sm_err(ErrorVerb::Read, e))?;
        let durable = decode_durable(meta)?;
        let store =
            Store::open(log, durable.current, durable.compacted).map_err(|e| sm_err(ErrorVerb::Read, e))?;
        let applied_index = durable.last_applied.map_or(0, |l| l.index);
        let applied = Applied::restore(durable, &store);
        let auth = applied.auth.clone();
        let applied_tx = tokio::sync::watch::Sender::new(applied_index);
        let (tx, rx) = mpsc::sync_channel(1);
        let hub = Hub::new(store.current_revision());
        let sm = Arc::new(StateMachine {
            hub,
            store: RwLock::new(store),
            meta: Mutex::new(applied),
            snapshot_dir,
            checkpoint_lock: Mutex::new(()),
            failed: AtomicBool::new(false),
            applied_tx,
            maintenance: tx,
            since_snapshot: AtomicU64::new(0),
            snapshot_count: snapshot_count.max(1),
            snapshot_due: tokio::sync::Notify::new(),
            snapshot_floor: AtomicU64::new(applied_index),
            probed: AtomicBool::new(false),
            size: AtomicU64::new(0),
            auth_enabled: AtomicBool::new(auth.enabled()),
            auth: RwLock::new(auth),
            tokens: Tokens::default(),
            wait: Arc::default(),
        });
        sm.size.store(sm.db_size().0, Ordering::Relaxed);
        let weak = Arc::downgrade(&sm);
        std::thread::Builder::new()
            .name("concord-sm-maint".into())
            .spawn(move || maintenance_loop(weak, rx))
            .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        Ok(sm)
    }

    /// The active alarms: (member, AlarmType).
    pub fn alarms(&self) -> Vec<(u64, i32)> {
        self.meta().alarms.iter().copied().collect()
    }

    /// The auth state as last applied.
    pub fn auth(&self) -> Arc<AuthStore> {
        self.auth.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether auth is on (lock-free).
    pub fn auth_enabled(&self) -> bool {
        self.auth_enabled.load(Ordering::Relaxed)
    }

    pub fn tokens(&self) -> &Tokens {
        &self.tokens
    }

    fn publish_auth(&self, auth: &Arc<AuthStore>) {
        *self.auth.write().unwrap_or_else(|p| p.into_inner()) = auth.clone();
        self.auth_enabled.store(auth.enabled(), Ordering::Relaxed);
    }

    /// The name and client URLs each member published (etcd's member attributes).
    pub fn attributes(&self) -> BTreeMap<u64, Attributes> {
        self.meta().attributes.clone()
    }

    fn meta(&self) -> std::sync::MutexGuard<'_, Applied> {
        self.meta.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn store_mut(&self) -> std::sync::RwLockWriteGuard<'_, Store<RecordLog>> {
        self.store.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the store as currently applied. Reads never wait for the disk, only for an apply that
    /// is in progress (in-memory index updates and one unsynced append).
    pub fn read<T>(&self, f: impl FnOnce(&Store<RecordLog>) -> T) -> T {
        let store = self.store.read().unwrap_or_else(|p| p.into_inner());
        f(&store)
    }

    /// etcd's HashKV at `rev` (0: now): hash, current and compacted revision. The store's lock is held
    /// only to fix what is hashed; the records are read from a view of them, on a blocking thread, while
    /// applies go on, as etcd hashes from a read transaction (with a million records, hashing under the
    /// lock held writes up for a second).
    pub async fn hash_kv(&self, rev: i64) -> Result<(u32, i64, i64), MvccError> {
        let (mut hasher, view) = {
            let store = self.store.read().unwrap_or_else(|p| p.into_inner());
            (store.hasher(rev)?, store.backend().view())
        };
        let backend = |e: &dyn std::fmt::Display| MvccError::Backend(e.to_string());
        tokio::task::spawn_blocking(move || {
            view.for_each(&mut |r, kv| {
                hasher.add(r, &kv);
                Ok(())
            })
            .map_err(|e| backend(&e))?;
            Ok(hasher.finish())
        })
        .await
        .map_err(|e| backend(&e))?
    }

    /// A Range. The store's lock is held to find the keys, not to read their values: a range over many
    /// keys (a Kubernetes list) would otherwise hold every write up while it reads them.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, MvccError> {
        let (mut resp, later) = self.read(|s| s.range_later(req))?;
        Store::<RecordLog>::fill(&mut resp, later)?;
        Ok(resp)
    }

    pub fn last_applied(&self) -> Option<LogId> {
        self.meta().last_applied
    }

    /// The log id the newest snapshot file covers. Such a file is written from the applied state, so
    /// everything up to it was committed, even if this member was killed before its own state was
    /// durable that far (a leader writes one for a lagging member from its state in memory).
    pub async fn newest_snapshot(&self) -> Option<LogId> {
        let (_, path) = snapshots(&self.snapshot_dir).await.into_iter().next()?;
        let mut file = tokio::fs::File::open(&path).await.ok()?;
        read_snapshot_meta(&mut file).await.ok()?.last_log_id
    }

    pub fn membership(&self) -> StoredMembership {
        self.meta().membership.clone()
    }

    /// A lease's granted TTL and (if `keys`) its attached keys; `None` if it does not exist.
    pub fn lease(&self, id: i64, keys: bool) -> Option<(i64, Vec<Vec<u8>>)> {
        let meta = self.meta();
        let ttl = meta.leases.ttl(id)?;
        Some((ttl, if keys { meta.leases.keys(id) } else { Vec::new() }))
    }

    /// Every lease: (id, granted TTL).
    pub fn leases(&self) -> Vec<(i64, i64)> {
        self.meta().leases.leases()
    }

    /// Every lease: (id, the TTL a new leader's clock starts it with; see `LeaseTable::clocks`).
    pub fn lease_clocks(&self) -> Vec<(i64, i64)> {
        self.meta().leases.clocks()
    }

    /// The seconds left at lease `id`'s last checkpoint, 0 if none.
    pub fn lease_checkpointed(&self, id: i64) -> i64 {
        self.meta().leases.checkpointed(id)
    }

    /// Where a proposer waits for its entry to be applied.
    pub fn wait(&self) -> &Arc<Wait> {
        &self.wait
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Bytes of the record files, and the part of them still in use (etcd's db size and size in use).
    pub fn db_size(&self) -> (u64, u64) {
        self.read(|s| s.backend().size())
    }

    /// The record files' size, as last noted (see `size`).
    pub fn db_size_noted(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    fn apply_entries(&self, entries: Vec<Entry>) -> Result<Vec<Response>, StorageError> {
        if self.failed.load(Ordering::Relaxed) {
            return Err(sm_err(ErrorVerb::Write, "an earlier sync of the records failed"));
        }
        let mut store = self.store_mut();
        let mut meta = self.meta();
        let auth_before = meta.auth.clone();
        let mut responses = Vec::with_capacity(entries.len());
        let mut requests = 0;
        let mut events = Vec::new();
        // (position in `responses`, waiter id, log index) of the entries proposers wait on.
        let mut waited = Vec::new();
        for entry in entries {
            meta.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => {
                    requests += 1;
                    Response::None
                }
                EntryPayload::Membership(m) => {
                    requests += 1;
                    meta.membership = StoredMembership::new(Some(entry.log_id), m);
                    Response::None
                }
                EntryPayload::Normal(req) => {
                    requests += req.requests();
                    let req = match req {
                        Request::Proposed { id, request } => {
                            waited.push((responses.len(), id, entry.log_id.index));
                            *request
                        }
                        req => req,
                    };
                    apply_request(&mut store, &mut meta, &self.tokens, req, &mut events)
                }
            };
            responses.push(response);
        }
        store.commit().map_err(|e| sm_err(ErrorVerb::Write, e))?;
        if !Arc::ptr_eq(&auth_before, &meta.auth) {
            self.publish_auth(&meta.auth);
        }
        self.size.store(store.backend().size().0, Ordering::Relaxed);
        let due = store.backend().maintenance_due();
        let revision = store.current_revision();
        if let Some(l) = meta.last_applied {
            self.applied_tx.send_replace(l.index);
        }
        drop((meta, store));
        // In apply order (applies never overlap), after the store shows the batch: a watcher catching up
        // from history never reads past what the hub has published.
        if !events.is_empty() {
            self.hub.publish(revision, events);
        }
        if self.since_snapshot.fetch_add(requests, Ordering::Relaxed) + requests >= self.snapshot_count {
            self.snapshot_due.notify_one();
        }
        if due {
            // Full means a wake-up is pending already.
            let _ = self.maintenance.try_send(());
        }
        // Last, once everything above shows the entries: a client answered here may read its write at
        // once. A response nobody waits for goes the usual way, through openraft.
        for (at, id, index) in waited {
            let response = std::mem::replace(&mut responses[at], Response::None);
            if let Err((response, _)) = self.wait.trigger(id, (response, index)) {
                responses[at] = response;
            }
        }
        Ok(responses)
    }

    /// Waits until the state machine has applied (or installed a snapshot covering) `index`.
    pub async fn wait_applied(&self, index: u64) {
        let mut rx = self.applied_tx.subscribe();
        let _ = rx.wait_for(|a| *a >= index).await;
    }

    /// Resolves when enough requests were applied since the last snapshot (`--snapshot-count`).
    pub async fn snapshot_due(&self) {
        self.snapshot_due.notified().await
    }

    /// Makes everything applied so far durable, with the applied position it matches.
    /// Blocking: the syncs run without the store's lock, so applies and reads go on meanwhile.
    pub fn checkpoint(&self) -> Result<(), StorageError> {
        self.checkpoint_state().map(|_| ())
    }

    fn checkpoint_state(&self) -> Result<Durable, StorageError> {
        let _one = self.checkpoint_lock.lock().unwrap_or_else(|p| p.into_inner());
        let (point, durable) = {
            let mut store = self.store_mut();
            let durable = self.meta().durable(&store);
            let bytes = encode(&durable).map_err(|e| sm_err(ErrorVerb::Write, e))?;
            (store.backend_mut().sync_point(bytes), durable)
        };
        if let Err(e) = point.complete() {
            self.failed.store(true, Ordering::Relaxed);
            tracing::error!(error = %e, "syncing the records failed; this member stops applying");
            return Err(sm_err(ErrorVerb::Write, e));
        }
        self.store_mut().backend_mut().synced(&point);
        Ok(durable)
    }

    /// etcd's Defragment: reclaims every segment that holds a dead record and checkpoints, so the space
    /// goes back to the file system now. Returns the record files' size before and after.
    pub fn defragment(&self) -> Result<(u64, u64), StorageError> {
        let w = |e| sm_err(ErrorVerb::Write, e);
        let before = self.db_size().0;
        self.store_mut().backend_mut().start_defrag().map_err(w)?;
        while self.store_mut().backend_mut().reclaim_step(RECLAIM_BUDGET).map_err(w)? {}
        self.checkpoint()?;
        let after = self.db_size().0;
        self.size.store(after, Ordering::Relaxed);
        Ok((before, after))
    }

    /// Reclaims mostly-dead segments a step at a time, then checkpoints if that (or the amount written)
    /// calls for it.
    fn maintain(&self) -> Result<(), StorageError> {
        while self
            .store_mut()
            .backend_mut()
            .reclaim_step(RECLAIM_BUDGET)
            .map_err(|e| sm_err(ErrorVerb::Write, e))?
        {}
        if self.read(|s| s.backend().checkpoint_due()) {
            self.checkpoint()?;
        }
        self.size.store(self.db_size().0, Ordering::Relaxed);
        Ok(())
    }

    /// Replaces the state with a snapshot's, read from `file` (blocking), and makes it durable.
    fn install(&self, file: std::fs::File, snapshot_id: &str) -> Result<(), StorageError> {
        let mut r = std::io::BufReader::with_capacity(1 << 20, file);
        let durable = read_dump_head(&mut r)?;
        self.replace_state(durable.clone(), &mut r)?;
        if let Some(l) = durable.last_applied {
            self.applied_tx.send_replace(l.index);
        }
        self.hub.restored(self.read(|s| s.current_revision()));
        tracing::info!(snapshot = %snapshot_id, "installed snapshot from the leader");
        Ok(())
    }

    /// A consistent copy of the whole state (blocking; applies go on meanwhile) as etcd's backend file,
    /// for etcd's Maintenance.Snapshot, in a file already unlinked, so that nothing is left behind
    /// however the reader ends.
    pub fn backup(&self) -> Result<std::fs::File, StorageError> {
        static BACKUPS: AtomicU64 = AtomicU64::new(0);
        let path = self.snapshot_dir.join(format!("backup-{}.tmp", BACKUPS.fetch_add(1, Ordering::Relaxed)));
        let (state, view, dropped) = {
            let store = self.store.read().unwrap_or_else(|p| p.into_inner());
            let d = self.meta().durable(&store);
            let state = BackupState {
                current: d.current,
                compacted: d.compacted,
                consistent_index: d.last_applied.map_or(0, |l| l.index),
                leases: d.leases,
                auth: d.auth,
            };
            let dropped: std::collections::HashSet<_> = store.dropped_records().iter().copied().collect();
            (state, store.backend().view(), dropped)
        };
        let live = |f: &mut dyn FnMut(_, _) -> std::io::Result<()>| {
            view.for_each(&mut |rev, kv| if dropped.contains(&rev) { Ok(()) } else { f(rev, kv) })
        };
        let written = std::fs::File::create(&path)
            .and_then(|f| crate::backup::etcd::write(f, &state, live))
            .and_then(|_| std::fs::File::open(&path))
            .map_err(|e| snap_err(ErrorVerb::Write, e));
        let _ = std::fs::remove_file(&path);
        written
    }

    /// Fills this (new, empty) state machine from a backup, as the first state of a new cluster
    /// (etcd's `snapshot restore`): `records` in the record log's format, in revision order. The data,
    /// revisions, leases and auth are kept; the log position and the membership are not, since the
    /// restored cluster starts its own log.
    pub fn restore(&self, state: BackupState, records: &mut impl Read) -> Result<(), StorageError> {
        let BackupState { current, compacted, leases, auth, consistent_index: _ } = state;
        self.replace_state(Durable { current, compacted, leases, auth, ..Durable::default() }, records)?;
        let we = |e| snap_err(ErrorVerb::Write, e);
        std::fs::write(self.snapshot_dir.join(UNLOGGED), b"").map_err(we)?;
        crate::storage::sync_dir(&self.snapshot_dir).map_err(we)
    }

    /// Whether this state was restored (or taken over from etcd) and no snapshot carries it yet. Until
    /// one does, the log starts from nothing while the state does not: a member added to the cluster
    /// would be sent the log alone, without what was restored. See `server::snapshot_restored`.
    pub fn restored_unlogged(&self) -> bool {
        Self::restored_unlogged_in(&self.snapshot_dir)
    }

    /// The same, for the state machine whose snapshot dir is `snapshot_dir`, before it is opened.
    pub fn restored_unlogged_in(snapshot_dir: &Path) -> bool {
        snapshot_dir.join(UNLOGGED).exists()
    }

    /// Records that a snapshot now carries the restored state, and the log before it is purged.
    pub fn restored_logged(&self) -> std::io::Result<()> {
        std::fs::remove_file(self.snapshot_dir.join(UNLOGGED))?;
        crate::storage::sync_dir(&self.snapshot_dir)
    }

    /// Applies requests that come from outside this cluster's log (the tail of an etcd member's WAL
    /// when concord takes over its data dir) on top of a restored state, and makes the result durable.
    /// Like a restore, it leaves the log position alone. Returns how many requests changed nothing
    /// (refused, or already in the state: etcd replays such a tail too and counts on the same).
    pub fn replay(&self, requests: Vec<Request>) -> Result<usize, StorageError> {
        let mut refused = 0;
        {
            let mut store = self.store_mut();
            let mut meta = self.meta();
            let mut events = Vec::new();
            for request in requests {
                let response = apply_request(&mut store, &mut meta, &self.tokens, request, &mut events);
                let why = match &response {
                    Response::Error(e) => e.to_string(),
                    Response::Denied(e) => e.to_string(),
                    _ => continue,
                };
                tracing::info!(error = %why, "a replayed request changed nothing");
                refused += 1;
            }
            store.commit().map_err(|e| sm_err(ErrorVerb::Write, e))?;
            self.publish_auth(&meta.auth);
        }
        self.checkpoint()?;
        Ok(refused)
    }

    /// The same from a dump as `dump` writes it (concord's backups before they were etcd's files).
    pub fn restore_dump(&self, mut dump: impl Read) -> Result<(), StorageError> {
        let d = read_dump_head(&mut dump)?;
        let state = BackupState {
            current: d.current,
            compacted: d.compacted,
            consistent_index: 0,
            leases: d.leases,
            auth: d.auth,
        };
        self.restore(state, &mut dump)
    }

    /// Replaces the state with `durable` and the records read from `records`, and makes it durable.
    fn replace_state(&self, durable: Durable, records: &mut impl Read) -> Result<(), StorageError> {
        let bytes = encode(&durable).map_err(|e| snap_err(ErrorVerb::Write, e))?;
        let _one = self.checkpoint_lock.lock().unwrap_or_else(|p| p.into_inner());
        let point = {
            let mut store = self.store_mut();
            // Half-replaced records are of no use to anyone: a failure here stops this member.
            let replaced =
                store.backend_mut().replace(records).map_err(|e| snap_err(ErrorVerb::Read, e)).and_then(
                    |()| {
                        store
                            .rebuild(durable.current, durable.compacted)
                            .map_err(|e| snap_err(ErrorVerb::Read, e))
                    },
                );
            if let Err(e) = replaced {
                self.failed.store(true, Ordering::Relaxed);
                return Err(e);
            }
            let applied = Applied::restore(durable.clone(), &store);
            self.publish_auth(&applied.auth);
            // Tokens were issued under the state being replaced; clients authenticate again.
            self.tokens.clear();
            *self.meta() = applied;
            store.backend_mut().sync_point(bytes)
        };
        if let Err(e) = point.complete() {
            self.failed.store(true, Ordering::Relaxed);
            return Err(snap_err(ErrorVerb::Write, e));
        }
        self.store_mut().backend_mut().synced(&point);
        Ok(())
    }

    fn snapshot_path(&self, id: &str) -> PathBuf {
        self.snapshot_dir.join(format!("{id}.snap"))
    }
}

impl History for StateMachine {
    fn events(&self, from: i64, to: i64, max_events: usize, out: &mut Vec<Event>) -> Result<i64, MvccError> {
        self.read(|s| s.history(from, to, max_events, out))
    }

    fn compacted(&self) -> i64 {
        self.read(|s| s.compact_revision())
    }

    fn value_at(&self, key: &[u8], rev: i64) -> Option<KeyValue> {
        let req = RangeRequest { key: key.to_vec(), revision: rev, ..Default::default() };
        self.read(|s| s.range(&req).ok()?.kvs.into_iter().next())
    }
}

fn maintenance_loop(sm: Weak<StateMachine>, wake: mpsc::Receiver<()>) {
    while wake.recv().is_ok() {
        let Some(sm) = sm.upgrade() else { return };
        if let Err(e) = sm.maintain() {
            tracing::error!(error = %e, "state machine maintenance failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::store::dump;
    use super::*;

    /// A data dir checkpointed before auth existed still opens: its checkpoint decodes with no users,
    /// auth off.
    #[test]
    fn a_checkpoint_from_before_auth_still_loads() {
        let leases: Vec<(i64, i64)> = vec![(7, 60)];
        let old = (
            None::<LogId>,
            42i64,
            3i64,
            StoredMembership::default(),
            BTreeMap::<u64, Attributes>::new(),
            BTreeSet::from([(1u64, 1i32)]),
            leases.clone(),
        );
        let d = Durable::decode(&encode(&old).unwrap()).unwrap();
        assert_eq!((d.current, d.compacted, &d.leases, d.alarms.len()), (42, 3, &leases, 1));
        assert_eq!(d.auth, AuthStore::default());
        let now = Durable { auth: AuthStore::default(), ..Durable::default() };
        assert_eq!(Durable::decode(&encode(&now).unwrap()).unwrap().current, 1);
        // Written with auth, before lease checkpoints.
        let with_auth = (old.0, old.1, old.2, old.3, old.4, old.5, old.6, AuthStore::default());
        let d = Durable::decode(&encode(&with_auth).unwrap()).unwrap();
        assert_eq!((d.current, d.leases, d.lease_checkpoints), (42, leases, vec![]));
        let checkpointed = Durable { lease_checkpoints: vec![(7, 20)], ..Durable::default() };
        assert_eq!(Durable::decode(&encode(&checkpointed).unwrap()).unwrap().lease_checkpoints, [(7, 20)]);
    }

    /// concord's backups before they were etcd's files carry the snapshot dump; one still restores.
    #[test]
    fn a_dump_restores_into_a_new_state_machine() {
        let dir = tempfile::tempdir().unwrap();
        let open = |name: &str| {
            let at = dir.path().join(name);
            StateMachine::open(&at.join("records"), at.join("snap"), u64::MAX).unwrap()
        };
        let kv = KeyValue {
            key: "k".into(),
            value: "v".into(),
            create_revision: 5,
            mod_revision: 5,
            version: 1,
            lease: 7,
        };
        let mut records = Vec::new();
        crate::storage::records::encode_record(crate::mvcc::Revision::new(5, 0), &kv, &mut records);
        let state = BackupState {
            current: 5,
            compacted: -1,
            consistent_index: 0,
            leases: vec![(7, 60)],
            auth: AuthStore::default(),
        };
        let source = open("a");
        source.restore(state, &mut records.as_slice()).unwrap();
        let file = dir.path().join("dump");
        dump(&source, &file).unwrap();

        let target = open("b");
        target.restore_dump(std::io::BufReader::new(std::fs::File::open(&file).unwrap())).unwrap();
        let got = target.range(&RangeRequest { key: "k".into(), ..Default::default() }).unwrap();
        assert_eq!(got.kvs, vec![kv]);
        assert_eq!(got.header.map(|h| h.revision), Some(5));
        assert_eq!(target.meta().leases.leases(), vec![(7, 60)]);
    }
}
