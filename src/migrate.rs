//! `concord migrate`: moves a live etcd into concord. It copies everything under a prefix as of one
//! revision, then mirrors every later change from a watch that starts right after that revision, so
//! writes that go on during the migration all arrive (like etcd's `make-mirror`, but with leases and
//! transactions kept). When stopped (Ctrl-C or SIGTERM, once clients point at concord), it waits until
//! both sides hold the same keys and values and says so, or fails.
//!
//! Leases keep their ids, so clients keep renewing them after switching; a transaction on the source
//! (all events of one revision) is applied as one transaction on the target. Either side may be
//! `https://`, with etcdctl-style certificate flags.

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

use crate::client::{prefix_end, Client, ClientError};
use crate::pb::etcdserverpb::request_op::Request as Op;
use crate::pb::etcdserverpb::{
    DeleteRangeRequest, LeaseGrantRequest, LeaseTimeToLiveRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest, WatchCreateRequest,
};
use crate::pb::mvccpb::{event::EventType, Event, KeyValue};

/// Keys per page while copying, and operations per transaction on the target (etcd's default
/// `--max-txn-ops`).
const PAGE: i64 = 1000;
const TXN_OPS: usize = 128;
/// How long the final check may take to see both sides agree.
const SETTLE: Duration = Duration::from_secs(30);

#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// The etcd to copy from (an etcd v3 client endpoint).
    #[arg(long)]
    pub from: String,
    /// The concord (or any etcd v3 server) to copy into.
    #[arg(long)]
    pub to: String,
    /// Only keys under this prefix (default: every key).
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// TLS to the source (for an https:// --from): CA to trust, and a client certificate and key.
    #[arg(long)]
    pub from_cacert: Option<std::path::PathBuf>,
    #[arg(long)]
    pub from_cert: Option<std::path::PathBuf>,
    #[arg(long)]
    pub from_key: Option<std::path::PathBuf>,
    /// TLS to the target (for an https:// --to), like the --from-* flags.
    #[arg(long)]
    pub to_cacert: Option<std::path::PathBuf>,
    #[arg(long)]
    pub to_cert: Option<std::path::PathBuf>,
    #[arg(long)]
    pub to_key: Option<std::path::PathBuf>,
    /// The source's user, as etcdctl's `--user`: name:password.
    #[arg(long)]
    pub from_user: Option<String>,
    /// The target's user, name:password.
    #[arg(long)]
    pub to_user: Option<String>,
}

/// How often a migration authenticates again: well within etcd's default token TTL (5 minutes), which
/// an idle mirror would otherwise outlive.
const RENEW_TOKEN: Duration = Duration::from_secs(60);

/// A client of one side: connected to `url` (TLS from its files), authenticated as `user`
/// (name:password) if given, its token kept fresh while the migration runs.
async fn connect(
    url: &str,
    tls: tonic::transport::ClientTlsConfig,
    user: &Option<String>,
) -> Result<Client, MigrateError> {
    let client = Client::connect_tls(&[url.to_string()], Duration::from_secs(5), Some(tls)).await?;
    let Some(user) = user else { return Ok(client) };
    let (name, password) = user.split_once(':').ok_or_else(|| MigrateError::User(user.clone()))?;
    let client = client.authenticate(name, password).await?;
    let (renewing, name, password) = (client.clone(), name.to_string(), password.to_string());
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(RENEW_TOKEN).await;
            if let Err(e) = renewing.renew_token(&name, &password).await {
                tracing::warn!("authenticating again as {name}: {e}");
            }
        }
    });
    Ok(client)
}

/// A client TLS configuration from etcdctl-style files (`--cacert --cert --key`).
fn tls(
    cacert: &Option<std::path::PathBuf>,
    cert: &Option<std::path::PathBuf>,
    key: &Option<std::path::PathBuf>,
) -> Result<tonic::transport::ClientTlsConfig, MigrateError> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let read = |p: &std::path::PathBuf| {
        std::fs::read(p).map_err(|e| MigrateError::Tls(format!("{}: {e}", p.display())))
    };
    let mut config = ClientTlsConfig::new();
    if let Some(ca) = cacert {
        config = config.ca_certificate(Certificate::from_pem(read(ca)?));
    }
    match (cert, key) {
        (Some(c), Some(k)) => config = config.identity(Identity::from_pem(read(c)?, read(k)?)),
        (None, None) => {}
        _ => {
            return Err(MigrateError::Tls(
                "a client certificate needs its key, and the other way round".into(),
            ))
        }
    }
    Ok(config)
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("a user is name:password, not {0:?}")]
    User(String),
    #[error("the source compacted revision {0} before it could be mirrored; run the migration again")]
    Compacted(i64),
    #[error("source and target still differ after {SETTLE:?}: {0} keys (digest {1:016x}) against {2} keys (digest {3:016x})")]
    Differ(usize, u64, usize, u64),
}

impl From<tonic::Status> for MigrateError {
    fn from(s: tonic::Status) -> Self {
        MigrateError::Client(s.into())
    }
}

/// What a finished migration did.
#[derive(Debug)]
pub struct Summary {
    pub revision: i64,
    pub copied: usize,
    pub mirrored: usize,
    pub keys: usize,
    pub digest: u64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "copied {} keys at revision {}, mirrored {} events; source and target hold the same {} keys (digest {:016x})",
            self.copied, self.revision, self.mirrored, self.keys, self.digest
        )
    }
}

struct Migration {
    src: Client,
    dst: Client,
    start: Vec<u8>,
    end: Vec<u8>,
    /// Leases already granted on the target.
    leases: HashSet<i64>,
    quiet: bool,
}

/// Runs until `stop` resolves, then checks both sides agree.
pub async fn run(args: &MigrateArgs, stop: impl Future<Output = ()>) -> Result<Summary, MigrateError> {
    let (start, end) = match args.prefix.as_bytes() {
        [] => (vec![0], vec![0]),
        p => (p.to_vec(), prefix_end(p)),
    };
    let mut m = Migration {
        src: connect(&args.from, tls(&args.from_cacert, &args.from_cert, &args.from_key)?, &args.from_user)
            .await?,
        dst: connect(&args.to, tls(&args.to_cacert, &args.to_cert, &args.to_key)?, &args.to_user).await?,
        start,
        end,
        leases: HashSet::new(),
        quiet: args.quiet,
    };
    let (revision, copied) = m.copy().await?;
    let watch = WatchCreateRequest {
        key: m.start.clone(),
        range_end: m.end.clone(),
        start_revision: revision + 1,
        ..Default::default()
    };
    let mut events = m.src.watch(watch).await?;
    m.progress(format_args!("copied {copied} keys at revision {revision}; mirroring"));

    let mut mirrored = 0;
    tokio::pin!(stop);
    let mut stopping: Option<tokio::time::Instant> = None;
    let mut check = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = &mut stop, if stopping.is_none() => {
                m.progress(format_args!("stopping: waiting for both sides to agree"));
                stopping = Some(tokio::time::Instant::now() + SETTLE);
            }
            resp = events.next() => {
                let resp = resp?;
                if resp.compact_revision > 0 {
                    return Err(MigrateError::Compacted(resp.compact_revision));
                }
                mirrored += resp.events.len();
                m.apply(resp.events).await?;
                m.progress(format_args!("mirrored {mirrored} events"));
            }
            _ = check.tick(), if stopping.is_some() => {
                let (src, dst) = (m.digest(&m.src).await?, m.digest(&m.dst).await?);
                if src == dst {
                    return Ok(Summary { revision, copied, mirrored, keys: src.0, digest: src.1 });
                }
                if stopping.is_some_and(|deadline| tokio::time::Instant::now() >= deadline) {
                    return Err(MigrateError::Differ(src.0, src.1, dst.0, dst.1));
                }
            }
        }
    }
}

impl Migration {
    fn progress(&self, what: std::fmt::Arguments<'_>) {
        if !self.quiet {
            eprintln!("migrate: {what}");
        }
    }

    /// Copies every key as of one revision (the first page's), page by page; returns that revision and
    /// the number of keys.
    async fn copy(&mut self) -> Result<(i64, usize), MigrateError> {
        let mut pages = Pages::new(&self.start, &self.end);
        let mut copied = 0;
        while let Some(kvs) = pages.next(&self.src).await? {
            copied += kvs.len();
            for chunk in kvs.chunks(TXN_OPS) {
                let mut ops = Vec::new();
                for kv in chunk {
                    ops.push(self.put(kv).await?);
                }
                self.dst.kv().txn(TxnRequest { success: ops, ..Default::default() }).await?;
            }
            self.progress(format_args!("copied {copied} keys"));
        }
        Ok((pages.revision, copied))
    }

    /// Applies mirrored events, the ones of each source revision in one transaction.
    async fn apply(&mut self, events: Vec<Event>) -> Result<(), MigrateError> {
        let mut i = 0;
        while i < events.len() {
            let rev = events[i].kv.as_ref().map_or(0, |kv| kv.mod_revision);
            let mut ops = Vec::new();
            while i < events.len() && events[i].kv.as_ref().map_or(0, |kv| kv.mod_revision) == rev {
                let e = &events[i];
                let kv = e.kv.clone().unwrap_or_default();
                ops.push(if e.r#type == EventType::Delete as i32 {
                    RequestOp {
                        request: Some(Op::RequestDeleteRange(DeleteRangeRequest {
                            key: kv.key.to_vec(),
                            ..Default::default()
                        })),
                    }
                } else {
                    self.put(&kv).await?
                });
                i += 1;
            }
            for chunk in ops.chunks(TXN_OPS) {
                self.dst.kv().txn(TxnRequest { success: chunk.to_vec(), ..Default::default() }).await?;
            }
        }
        Ok(())
    }

    /// The put that recreates `kv` on the target, granting its lease there first (same id, the TTL it
    /// was granted with) if the lease is still alive on the source.
    async fn put(&mut self, kv: &KeyValue) -> Result<RequestOp, MigrateError> {
        let mut lease = kv.lease;
        if lease != 0 && !self.leases.contains(&lease) {
            let ttl =
                self.src.lease().lease_time_to_live(LeaseTimeToLiveRequest { id: lease, keys: false }).await;
            match ttl.map(|r| r.into_inner()) {
                Ok(t) if t.ttl > 0 => {
                    let grant = LeaseGrantRequest { id: lease, ttl: t.granted_ttl };
                    match self.dst.lease().lease_grant(grant).await {
                        Ok(_) => {}
                        // Granted by an earlier run of the migration.
                        Err(s) if s.message().contains("lease already exists") => {}
                        Err(s) => return Err(s.into()),
                    }
                    self.leases.insert(lease);
                }
                // Gone on the source: its keys are about to be deleted there, and the deletes mirrored.
                _ => lease = 0,
            }
        }
        let put = PutRequest { key: kv.key.to_vec(), value: kv.value.to_vec(), lease, ..Default::default() };
        Ok(RequestOp { request: Some(Op::RequestPut(put)) })
    }

    /// The number of keys under the prefix and a digest of every key and value, read linearizably.
    async fn digest(&self, side: &Client) -> Result<(usize, u64), MigrateError> {
        let mut h: u64 = 0xcbf29ce484222325;
        let mut fold = |bytes: &[u8]| {
            for b in (bytes.len() as u64).to_be_bytes().iter().chain(bytes) {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x100000001b3);
            }
        };
        let (mut pages, mut count) = (Pages::new(&self.start, &self.end), 0);
        while let Some(kvs) = pages.next(side).await? {
            for kv in &kvs {
                fold(&kv.key);
                fold(&kv.value);
            }
            count += kvs.len();
        }
        Ok((count, h))
    }
}

/// Every key in `[key, end)`, a page at a time, all pages read at the revision of the first.
struct Pages {
    key: Vec<u8>,
    end: Vec<u8>,
    revision: i64,
    done: bool,
}

impl Pages {
    fn new(start: &[u8], end: &[u8]) -> Pages {
        Pages { key: start.to_vec(), end: end.to_vec(), revision: 0, done: false }
    }

    async fn next(&mut self, side: &Client) -> Result<Option<Vec<KeyValue>>, MigrateError> {
        if self.done {
            return Ok(None);
        }
        let page = RangeRequest {
            key: self.key.clone(),
            range_end: self.end.clone(),
            limit: PAGE,
            revision: self.revision,
            ..Default::default()
        };
        let resp = side.kv().range(page).await?.into_inner();
        if self.revision == 0 {
            self.revision = resp.header.map_or(0, |h| h.revision);
        }
        match resp.kvs.last() {
            Some(last) if resp.more => {
                self.key = last.key.to_vec();
                self.key.push(0);
            }
            _ => self.done = true,
        }
        Ok(Some(resp.kvs))
    }
}
