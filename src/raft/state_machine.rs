//! The state machine: applies committed entries to the MVCC store and persists each batch of entries
//! together with the applied log id in one atomic sled batch.
//!
//! Apply does not sync. The Raft log is the durability point: on a crash, whatever the state machine lost
//! is re-applied from the log after the recorded applied id. sled recovers a prefix of its write order, so
//! the state machine is never ahead of what it records, and the log is never purged past a snapshot.

use std::collections::BTreeMap;
use std::io::SeekFrom;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncSeekExt, BufReader};

use super::types::{
    Entry, LogId, Request, Response, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};
use super::{decode, encode};
use crate::mvcc::{self, Changes, Store};
use crate::storage::{keys, Db, SledBackend};

fn sm_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    StorageError::from_io_error(ErrorSubject::StateMachine, verb, std::io::Error::other(e.to_string()))
}

fn snap_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    StorageError::from_io_error(ErrorSubject::Snapshot(None), verb, std::io::Error::other(e.to_string()))
}

/// The applied state, shared by the Raft core (which applies) and the API (which reads).
pub struct StateMachine {
    db: Arc<Db>,
    store: Arc<RwLock<Store<SledBackend>>>,
    meta: Mutex<Applied>,
    snapshot_dir: PathBuf,
    persister: Persister,
    /// The last applied log index, for those who wait for apply (the log purge).
    applied_tx: tokio::sync::watch::Sender<u64>,
}

/// Writes applied batches to sled on a thread of its own, in apply order, so that sled's insert cost is
/// off the write path (it was ~80% of apply at 64 clients). Until a batch is written, the store serves
/// its records from memory; the next apply lets go of the copies that are in sled by then. `drain` waits
/// for everything sent so far (snapshots, install, shutdown).
///
/// The thread never takes the store's lock: a snapshot holds it while it drains, and a persister
/// waiting for the lock could then never finish the batches the snapshot waits for.
struct Persister {
    tx: std::sync::mpsc::SyncSender<(sled::Batch, mvcc::Revision)>,
    progress: Arc<(Mutex<Progress>, std::sync::Condvar)>,
}

#[derive(Default)]
struct Progress {
    sent: u64,
    written: u64,
    /// Every record up to here is in sled.
    written_through: mvcc::Revision,
    error: Option<String>,
}

/// Record deletions per sled batch when a compaction drops history.
const DELETE_CHUNK: usize = 4096;

/// Applies that may wait in the persister's queue before apply itself has to wait.
const PERSIST_QUEUE: usize = 16;

impl Persister {
    fn start(db: Arc<Db>) -> Result<Persister, StorageError> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<(sled::Batch, mvcc::Revision)>(PERSIST_QUEUE);
        let progress = Arc::new((Mutex::new(Progress::default()), std::sync::Condvar::new()));
        let p = progress.clone();
        std::thread::Builder::new()
            .name("concord-sm-persist".into())
            .spawn(move || {
                while let Ok((batch, through)) = rx.recv() {
                    let err = db.state.apply_batch(batch).err().map(|e| e.to_string());
                    let mut g = p.0.lock().unwrap_or_else(|e| e.into_inner());
                    g.written += 1;
                    match err {
                        // Only records that are in sled may be let go of.
                        None => g.written_through = g.written_through.max(through),
                        Some(e) if g.error.is_none() => g.error = Some(e),
                        Some(_) => {}
                    }
                    drop(g);
                    p.1.notify_all();
                }
            })
            .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        Ok(Persister { tx, progress })
    }

    fn send(&self, batch: sled::Batch, through: mvcc::Revision) -> Result<(), StorageError> {
        {
            let mut g = self.progress.0.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(e) = &g.error {
                return Err(sm_err(ErrorVerb::Write, e));
            }
            g.sent += 1;
        }
        self.tx
            .send((batch, through))
            .map_err(|_| sm_err(ErrorVerb::Write, "state machine persister stopped"))
    }

    fn written_through(&self) -> mvcc::Revision {
        self.progress.0.lock().unwrap_or_else(|e| e.into_inner()).written_through
    }

    /// Blocks until every batch sent so far is in sled.
    fn drain(&self) -> Result<(), StorageError> {
        let mut g = self.progress.0.lock().unwrap_or_else(|e| e.into_inner());
        while g.written < g.sent && g.error.is_none() {
            g = self.progress.1.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        match &g.error {
            Some(e) => Err(sm_err(ErrorVerb::Write, e)),
            None => Ok(()),
        }
    }
}

/// What `m/applied` holds: the last applied log id, the current and the compacted revision.
type Position = (Option<LogId>, i64, i64);

#[derive(Clone, Default)]
struct Applied {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    client_urls: BTreeMap<u64, Vec<String>>,
    client_urls_changed: bool,
}

impl StateMachine {
    pub fn open(db: Arc<Db>, snapshot_dir: PathBuf) -> Result<Arc<Self>, StorageError> {
        std::fs::create_dir_all(&snapshot_dir).map_err(|e| snap_err(ErrorVerb::Write, e))?;
        let store = Arc::new(RwLock::new(Self::open_store(&db)?));
        let meta = Self::load_meta(&db)?;
        let persister = Persister::start(db.clone())?;
        let applied_tx = tokio::sync::watch::Sender::new(meta.last_applied.map_or(0, |l| l.index));
        Ok(Arc::new(StateMachine { db, store, meta: Mutex::new(meta), snapshot_dir, persister, applied_tx }))
    }

    fn load_meta(db: &Db) -> Result<Applied, StorageError> {
        fn get<T: serde::de::DeserializeOwned + Default>(db: &Db, k: &[u8]) -> Result<T, StorageError> {
            match db.state.get(k).map_err(|e| sm_err(ErrorVerb::Read, e))? {
                Some(v) => decode(&v).map_err(|e| sm_err(ErrorVerb::Read, e)),
                None => Ok(T::default()),
            }
        }
        let (last_applied, _, _): Position = get(db, keys::APPLIED)?;
        Ok(Applied {
            last_applied,
            membership: get(db, keys::MEMBERSHIP)?,
            client_urls: get(db, keys::CLIENT_URLS)?,
            client_urls_changed: false,
        })
    }

    /// The client URLs each member published (etcd's member attributes).
    pub fn client_urls(&self) -> BTreeMap<u64, Vec<String>> {
        self.meta.lock().unwrap_or_else(|p| p.into_inner()).client_urls.clone()
    }

    fn open_store(db: &Db) -> Result<Store<SledBackend>, StorageError> {
        let position: Option<Position> =
            match db.state.get(keys::APPLIED).map_err(|e| sm_err(ErrorVerb::Read, e))? {
                Some(v) => Some(decode(&v).map_err(|e| sm_err(ErrorVerb::Read, e))?),
                None => None,
            };
        // An empty store is at revision 1 with nothing compacted (-1, like etcd, so that compacting at
        // revision 0 succeeds once).
        let (_, current, compacted) = position.unwrap_or((None, 1, -1));
        Store::open(SledBackend::new(db.state.clone()), current, compacted)
            .map_err(|e| sm_err(ErrorVerb::Read, e))
    }

    /// Runs `f` on the store as currently applied. Reads never wait for the disk, only for an apply that
    /// is in progress (an in-memory index update and one unsynced sled batch).
    pub fn read<T>(&self, f: impl FnOnce(&Store<SledBackend>) -> T) -> T {
        let store = self.store.read().unwrap_or_else(|p| p.into_inner());
        f(&store)
    }

    pub fn last_applied(&self) -> Option<LogId> {
        self.meta.lock().unwrap_or_else(|p| p.into_inner()).last_applied
    }

    pub fn membership(&self) -> StoredMembership {
        self.meta.lock().unwrap_or_else(|p| p.into_inner()).membership.clone()
    }

    pub fn db(&self) -> &Arc<Db> {
        &self.db
    }

    fn apply_entries(&self, entries: Vec<Entry>) -> Result<Vec<Response>, StorageError> {
        let mut store = self.store.write().unwrap_or_else(|p| p.into_inner());
        store.release(self.persister.written_through());
        let mut meta = self.meta.lock().unwrap_or_else(|p| p.into_inner());
        let (membership_before, clients_before) = (*meta.membership.log_id(), meta.client_urls.len());
        let mut responses = Vec::with_capacity(entries.len());
        for entry in entries {
            meta.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => Response::None,
                EntryPayload::Membership(m) => {
                    meta.membership = StoredMembership::new(Some(entry.log_id), m);
                    Response::None
                }
                EntryPayload::Normal(req) => apply_request(&mut store, &mut meta, req),
            };
            responses.push(response);
        }
        let members_changed = *meta.membership.log_id() != membership_before
            || meta.client_urls.len() != clients_before
            || meta.client_urls_changed;
        meta.client_urls_changed = false;
        let changes = store.take_changes();
        self.persist(changes, &meta, members_changed)?;
        if let Some(l) = meta.last_applied {
            self.applied_tx.send_replace(l.index);
        }
        Ok(responses)
    }

    /// One sled batch per apply: the records, then the applied position (with the revisions, so that
    /// they can never disagree), and the member data only when it changed.
    /// Waits until the state machine has applied (or installed a snapshot covering) `index`.
    pub async fn wait_applied(&self, index: u64) {
        let mut rx = self.applied_tx.subscribe();
        let _ = rx.wait_for(|a| *a >= index).await;
    }

    /// Waits until every applied batch is in sled (not necessarily synced).
    pub fn wait_persisted(&self) -> Result<(), StorageError> {
        self.persister.drain()
    }

    fn persist(&self, changes: Changes, meta: &Applied, members_changed: bool) -> Result<(), StorageError> {
        let Changes { puts, mut deletes, current_revision, compact_revision } = changes;
        let w = |e: bincode::error::EncodeError| sm_err(ErrorVerb::Write, e);
        let mut batch = sled::Batch::default();
        for (rev, kv) in &puts {
            batch.insert(&keys::record(*rev), kv.encode_to_vec());
        }
        // A compaction can drop millions of records, and one sled batch holds all its operations in memory
        // (a 600,000-record compaction took 4 GB). Deletions go in batches of their own, in ascending
        // revision order, after this one: a crash part-way leaves only records below the compaction point,
        // which reads never reach and the next open drops (`Store::open` compacts again).
        deletes.sort_unstable();
        let position = (meta.last_applied, current_revision, compact_revision);
        batch.insert(keys::APPLIED, encode(&position).map_err(w)?);
        if members_changed {
            batch.insert(keys::MEMBERSHIP, encode(&meta.membership).map_err(w)?);
            batch.insert(keys::CLIENT_URLS, encode(&meta.client_urls).map_err(w)?);
        }
        let through = puts.last().map_or(mvcc::Revision::default(), |(r, _)| *r);
        self.persister.send(batch, through)?;
        for chunk in deletes.chunks(DELETE_CHUNK) {
            let mut batch = sled::Batch::default();
            for rev in chunk {
                batch.remove(&keys::record(*rev));
            }
            self.persister.send(batch, through)?;
        }
        Ok(())
    }

    fn snapshot_path(&self, id: &str) -> PathBuf {
        self.snapshot_dir.join(format!("{id}.snap"))
    }
}

/// Applies one request. Deterministic: the same request on the same state gives the same result on
/// every member.
fn apply_request(store: &mut Store<SledBackend>, meta: &mut Applied, req: Request) -> Response {
    use crate::pb::etcdserverpb::{CompactionResponse, ResponseHeader};
    // Leases arrive with the Lease service; until then no lease exists.
    let no_leases = |_: i64| false;
    let result = match req {
        Request::Put(r) => store.put(&r, &no_leases).map(|a| Response::Put(a.response)),
        Request::DeleteRange(r) => store.delete_range(&r).map(|a| Response::DeleteRange(a.response)),
        Request::Txn(r) => store.txn(&r, &no_leases).map(|a| Response::Txn(a.response)),
        Request::Compact(r) => store.compact(r.revision).map(|()| {
            let header = Some(ResponseHeader { revision: store.current_revision(), ..Default::default() });
            Response::Compact(CompactionResponse { header })
        }),
        Request::Publish { id, client_urls } => {
            meta.client_urls.insert(id, client_urls);
            meta.client_urls_changed = true;
            Ok(Response::None)
        }
        Request::Batch(reqs) => {
            Ok(Response::Batch(reqs.into_iter().map(|r| apply_request(store, meta, r)).collect()))
        }
    };
    result.unwrap_or_else(Response::Error)
}

/// The handle openraft owns; cheap to clone.
#[derive(Clone)]
pub struct StateMachineStore {
    pub sm: Arc<StateMachine>,
}

/// Snapshot file layout: `u32` length + bincode `SnapshotMeta`, then records of `u32` key length, key,
/// `u32` value length, value — every key of the state machine tree, in order (integers big-endian).
async fn write_snapshot(sm: Arc<StateMachine>, tmp: PathBuf) -> Result<SnapshotMeta, StorageError> {
    tokio::task::spawn_blocking(move || dump(&sm, &tmp)).await.map_err(|e| snap_err(ErrorVerb::Write, e))?
}

/// Streams the state machine tree into `tmp`, on a blocking thread (never a tokio worker): memory stays
/// flat whatever the store's size. Applies wait while the dump runs, so the records and the applied
/// position agree.
fn dump(sm: &StateMachine, tmp: &std::path::Path) -> Result<SnapshotMeta, StorageError> {
    use std::io::Write;
    let we = |e: std::io::Error| snap_err(ErrorVerb::Write, e);
    let _store = sm.store.read().unwrap_or_else(|p| p.into_inner());
    // No apply can run now; let the ones before reach sled, which the dump reads.
    sm.persister.drain()?;
    let applied = sm.meta.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let snapshot_id = match applied.last_applied {
        Some(l) => format!("{}-{}", l.leader_id.term, l.index),
        None => "0-0".to_string(),
    };
    let meta =
        SnapshotMeta { last_log_id: applied.last_applied, last_membership: applied.membership, snapshot_id };
    let mut w = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(tmp).map_err(we)?);
    let header = encode(&meta).map_err(|e| snap_err(ErrorVerb::Write, e))?;
    w.write_all(&(header.len() as u32).to_be_bytes()).map_err(we)?;
    w.write_all(&header).map_err(we)?;
    for item in sm.db.state.iter() {
        let (k, v) = item.map_err(|e| snap_err(ErrorVerb::Read, e))?;
        w.write_all(&(k.len() as u32).to_be_bytes()).map_err(we)?;
        w.write_all(&k).map_err(we)?;
        w.write_all(&(v.len() as u32).to_be_bytes()).map_err(we)?;
        w.write_all(&v).map_err(we)?;
    }
    let file = w.into_inner().map_err(|e| we(e.into_error()))?;
    file.sync_all().map_err(we)?;
    Ok(meta)
}

async fn read_snapshot_meta(file: &mut tokio::fs::File) -> std::io::Result<SnapshotMeta> {
    file.seek(SeekFrom::Start(0)).await?;
    let len = file.read_u32().await? as usize;
    let mut header = vec![0; len];
    file.read_exact(&mut header).await?;
    decode(&header).map_err(std::io::Error::other)
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        // Each build its own file: a build may overlap another (openraft spawns them).
        static BUILDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self.sm.snapshot_dir.join(format!("building-{n}.tmp"));
        let meta = write_snapshot(self.sm.clone(), tmp.clone()).await?;
        let path = self.sm.snapshot_path(&meta.snapshot_id);
        tokio::fs::rename(&tmp, &path).await.map_err(|e| snap_err(ErrorVerb::Write, e))?;
        remove_older_snapshots(&self.sm.snapshot_dir, &path).await;
        tracing::info!(snapshot = %meta.snapshot_id, "built snapshot");
        let file = tokio::fs::File::open(&path).await.map_err(|e| snap_err(ErrorVerb::Read, e))?;
        Ok(Snapshot { meta, snapshot: Box::new(file) })
    }
}

/// The log index a snapshot file covers, from its name (`<term>-<index>-<records>.snap`).
fn snapshot_index(p: &std::path::Path) -> Option<u64> {
    if p.extension()? != "snap" {
        return None;
    }
    p.file_stem()?.to_str()?.split('-').nth(1)?.parse().ok()
}

/// Snapshot files in `dir`, newest (highest index) first.
async fn snapshots(dir: &std::path::Path) -> Vec<(u64, PathBuf)> {
    let mut out = Vec::new();
    if let Ok(mut rd) = tokio::fs::read_dir(dir).await {
        while let Ok(Some(e)) = rd.next_entry().await {
            let p = e.path();
            if let Some(i) = snapshot_index(&p) {
                out.push((i, p));
            }
        }
    }
    out.sort_by_key(|(i, _)| std::cmp::Reverse(*i));
    out
}

/// Removes snapshots older than the one at `keep` (a build and an install can finish in either order:
/// never let the older one delete the newer).
async fn remove_older_snapshots(dir: &std::path::Path, keep: &std::path::Path) {
    let Some(keep_index) = snapshot_index(keep) else { return };
    for (i, p) in snapshots(dir).await {
        if i < keep_index {
            let _ = tokio::fs::remove_file(p).await;
        }
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let meta = self.sm.meta.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Ok((meta.last_applied, meta.membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        self.sm.apply_entries(entries)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let path = self.sm.snapshot_dir.join("receiving.tmp");
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        mut snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let re = |e: std::io::Error| snap_err(ErrorVerb::Read, e);
        snapshot.sync_all().await.map_err(re)?;
        read_snapshot_meta(&mut snapshot).await.map_err(re)?;
        let mut r = BufReader::new(*snapshot);
        let mut pairs = Vec::new();
        loop {
            let klen = match r.read_u32().await {
                Ok(n) => n as usize,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(re(e)),
            };
            let mut k = vec![0; klen];
            r.read_exact(&mut k).await.map_err(re)?;
            let vlen = r.read_u32().await.map_err(re)? as usize;
            let mut v = vec![0; vlen];
            r.read_exact(&mut v).await.map_err(re)?;
            pairs.push((k, v));
        }
        let sm = self.sm.clone();
        let snapshot_id = meta.snapshot_id.clone();
        let meta = meta.clone();
        tokio::task::spawn_blocking(move || -> Result<(), StorageError> {
            let we = |e: sled::Error| snap_err(ErrorVerb::Write, e);
            let mut store = sm.store.write().unwrap_or_else(|p| p.into_inner());
            // Nothing of the old state may land after the new one.
            sm.persister.drain()?;
            let mut batch = sled::Batch::default();
            for k in sm.db.state.iter().keys() {
                batch.remove(k.map_err(we)?);
            }
            for (k, v) in pairs {
                batch.insert(k, v);
            }
            sm.db.state.apply_batch(batch).map_err(we)?;
            sm.db.sync().map_err(|e| snap_err(ErrorVerb::Write, e))?;
            *store = StateMachine::open_store(&sm.db)?;
            *sm.meta.lock().unwrap_or_else(|p| p.into_inner()) = StateMachine::load_meta(&sm.db)?;
            if let Some(l) = meta.last_log_id {
                sm.applied_tx.send_replace(l.index);
            }
            tracing::info!(snapshot = %meta.snapshot_id, "installed snapshot from the leader");
            Ok(())
        })
        .await
        .map_err(|e| snap_err(ErrorVerb::Write, e))??;
        // Only once the state is durable does the file become the current snapshot.
        let path = self.sm.snapshot_path(&snapshot_id);
        tokio::fs::rename(self.sm.snapshot_dir.join("receiving.tmp"), &path).await.map_err(re)?;
        remove_older_snapshots(&self.sm.snapshot_dir, &path).await;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let Some((_, p)) = snapshots(&self.sm.snapshot_dir).await.into_iter().next() else { return Ok(None) };
        let mut file = tokio::fs::File::open(&p).await.map_err(|e| snap_err(ErrorVerb::Read, e))?;
        let meta = read_snapshot_meta(&mut file).await.map_err(|e| snap_err(ErrorVerb::Read, e))?;
        file.seek(SeekFrom::Start(0)).await.map_err(|e| snap_err(ErrorVerb::Read, e))?;
        Ok(Some(Snapshot { meta, snapshot: Box::new(file) }))
    }
}
