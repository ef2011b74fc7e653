//! `concord bench`: an etcd-style load generator that speaks plain etcd v3 gRPC, so the same run measures
//! concord and etcd alike. Modelled on etcd's `tools/benchmark`: N clients share M connections and issue
//! `--total` requests between them; the report gives throughput and the latency distribution.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

mod watch;

use crate::pb::etcdserverpb::kv_client::KvClient;
use crate::pb::etcdserverpb::lease_client::LeaseClient;
use crate::pb::etcdserverpb::request_op::Request as Op;
use crate::pb::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseKeepAliveResponse, PutRequest, RangeRequest, RequestOp,
    TxnRequest,
};

#[derive(Clone, Debug, Args)]
pub struct Common {
    /// Comma-separated client endpoints.
    #[arg(long, default_value = "127.0.0.1:2379", value_delimiter = ',', global = true)]
    pub endpoints: Vec<String>,
    /// Total number of gRPC connections.
    #[arg(long, default_value_t = 1, global = true)]
    pub conns: usize,
    /// Total number of concurrent clients.
    #[arg(long, default_value_t = 1, global = true)]
    pub clients: usize,
    /// Total number of requests.
    #[arg(long, default_value_t = 10_000, global = true)]
    pub total: u64,
    /// Print the report as JSON (for scripts).
    #[arg(long, global = true)]
    pub json: bool,
    /// Do not draw the progress line.
    #[arg(long, global = true)]
    pub quiet: bool,
}

#[derive(Clone, Debug, Args)]
pub struct Keys {
    /// Key size of each request.
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    /// Value size of each request.
    #[arg(long, default_value_t = 8)]
    pub val_size: usize,
    /// Use sequential keys instead of random ones.
    #[arg(long)]
    pub sequential_keys: bool,
    /// Maximum possible keys.
    #[arg(long, default_value_t = 1)]
    pub key_space_size: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StmIsolation {
    /// SerializableSnapshot.
    Ss,
    /// Serializable.
    S,
    /// RepeatableReads.
    Rr,
    /// ReadCommitted.
    Rc,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Consistency {
    /// Linearizable.
    L,
    /// Serializable.
    S,
}

#[derive(Clone, Debug, Subcommand)]
pub enum Workload {
    /// Puts.
    Put(Keys),
    /// Ranges over `key` [`end`].
    Range {
        key: String,
        end: Option<String>,
        #[arg(long, value_enum, default_value = "l")]
        consistency: Consistency,
    },
    /// Txns, each putting `--txn-ops` keys.
    TxnPut {
        #[command(flatten)]
        keys: Keys,
        #[arg(long, default_value_t = 1)]
        txn_ops: usize,
    },
    /// Txns that read (a range) or write (a put), mixed by `--rw-ratio` reads per write.
    TxnMixed {
        #[command(flatten)]
        keys: Keys,
        #[arg(long, default_value_t = 1.0)]
        rw_ratio: f64,
        #[arg(long, value_enum, default_value = "l")]
        consistency: Consistency,
    },
    /// Lease keepalives: each client grants a lease, then renews it over its own keepalive stream.
    LeaseKeepalive,
    /// Contended STM bank transfers (etcd's `stm` benchmark): each request moves half of a random
    /// account's balance to another, through `concord::client::stm` at `--isolation`.
    Stm {
        /// Number of accounts (fewer means more conflicts).
        #[arg(long, default_value_t = 5)]
        accounts: usize,
        #[arg(long, value_enum, default_value = "ss")]
        isolation: StmIsolation,
    },
    /// Watch fan-out: `--watchers` watchers of one key over `--streams` streams; `--total` puts to that
    /// key by `--clients` writers. Reports events delivered per second and put-to-delivery latency.
    Watch {
        #[arg(long, default_value_t = 1000)]
        watchers: usize,
        #[arg(long, default_value_t = 10)]
        streams: usize,
        #[arg(long, default_value_t = 256)]
        val_size: usize,
    },
}

#[derive(Clone, Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub workload: Workload,
}

/// The outcome of one run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub workload: String,
    pub clients: usize,
    pub conns: usize,
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    pub requests_per_sec: f64,
    pub avg_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "Summary ({}, {} clients, {} conns):", self.workload, self.clients, self.conns)?;
        writeln!(f, "  Total:        {:.4} secs.", self.seconds)?;
        writeln!(f, "  Requests/sec: {:.1}", self.requests_per_sec)?;
        writeln!(f, "  Errors:       {}", self.errors)?;
        writeln!(f, "  Average:      {:.4} ms", self.avg_ms)?;
        writeln!(f, "Latency distribution:")?;
        writeln!(f, "  50%   {:.4} ms", self.p50_ms)?;
        writeln!(f, "  90%   {:.4} ms", self.p90_ms)?;
        writeln!(f, "  99%   {:.4} ms", self.p99_ms)?;
        writeln!(f, "  99.9% {:.4} ms", self.p999_ms)?;
        write!(f, "  max   {:.4} ms", self.max_ms)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("endpoint {0}: {1}")]
    Connect(String, String),
    #[error("--clients and --conns must be at least 1")]
    Args,
}

fn endpoint_url(e: &str) -> String {
    if e.contains("://") {
        e.to_string()
    } else {
        format!("http://{e}")
    }
}

/// A small xorshift PRNG per client: key choice must not contend on a shared generator.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// etcd's benchmark key: the index as a varint-sized integer padded to `--key-size` bytes.
fn key(keys: &Keys, i: u64, rng: &mut Rng) -> Vec<u8> {
    let n =
        if keys.sequential_keys { i % keys.key_space_size.max(1) } else { rng.below(keys.key_space_size) };
    let mut k = vec![0u8; keys.key_size.max(8)];
    k[..8].copy_from_slice(&n.to_le_bytes());
    k.truncate(keys.key_size.max(1));
    if keys.key_size < 8 {
        // Keep distinct keys distinct even when the size is smaller than a u64.
        k = n.to_le_bytes()[..keys.key_size.max(1)].to_vec();
    }
    k
}

fn workload_name(w: &Workload) -> String {
    match w {
        Workload::Put(_) => "put".into(),
        Workload::Range { consistency, .. } => format!("range-{consistency:?}").to_lowercase(),
        Workload::TxnPut { .. } => "txn-put".into(),
        Workload::TxnMixed { .. } => "txn-mixed".into(),
        Workload::LeaseKeepalive => "lease-keepalive".into(),
        Workload::Stm { .. } => "stm".into(),
        Workload::Watch { .. } => "watch".into(),
    }
}

/// What one client holds between requests.
enum Client {
    Kv(KvClient<Channel>),
    Stm(crate::client::Client),
    /// A lease and the keepalive stream that renews it.
    Lease {
        id: i64,
        tx: tokio::sync::mpsc::Sender<LeaseKeepAliveRequest>,
        rx: tonic::Streaming<LeaseKeepAliveResponse>,
    },
}

impl Client {
    async fn new(channel: Channel, w: &Workload) -> Result<Client, tonic::Status> {
        if let Workload::Stm { .. } = w {
            return Ok(Client::Stm(crate::client::Client::from_channel(channel)));
        }
        if !matches!(w, Workload::LeaseKeepalive) {
            let kv = KvClient::new(channel)
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX);
            return Ok(Client::Kv(kv));
        }
        let mut lease = LeaseClient::new(channel);
        let id = lease.lease_grant(LeaseGrantRequest { ttl: 600, id: 0 }).await?.into_inner().id;
        // The first keepalive goes out with the call: grpc-go (etcd) sends no response headers on a
        // stream before its first message, so waiting for the call before sending anything would hang.
        let (tx, reqs) = tokio::sync::mpsc::channel(1);
        tx.send(LeaseKeepAliveRequest { id })
            .await
            .map_err(|_| tonic::Status::unavailable("keepalive stream"))?;
        let mut rx =
            lease.lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(reqs)).await?.into_inner();
        rx.message().await?;
        Ok(Client::Lease { id, tx, rx })
    }
}

async fn keepalive(
    id: i64,
    tx: &tokio::sync::mpsc::Sender<LeaseKeepAliveRequest>,
    rx: &mut tonic::Streaming<LeaseKeepAliveResponse>,
) -> Result<(), tonic::Status> {
    tx.send(LeaseKeepAliveRequest { id })
        .await
        .map_err(|_| tonic::Status::unavailable("keepalive stream closed"))?;
    match rx.message().await? {
        Some(r) if r.ttl > 0 => Ok(()),
        _ => Err(tonic::Status::not_found("lease not found")),
    }
}

async fn one_request(client: &mut Client, w: &Workload, i: u64, rng: &mut Rng) -> Result<(), tonic::Status> {
    let kv = match client {
        Client::Kv(kv) => kv,
        Client::Lease { id, tx, rx } => return keepalive(*id, tx, rx).await,
        Client::Stm(c) => {
            let Workload::Stm { accounts, isolation } = w else {
                return Err(tonic::Status::internal("not stm"));
            };
            return transfer(c, *accounts, *isolation, rng).await;
        }
    };
    match w {
        Workload::LeaseKeepalive | Workload::Watch { .. } | Workload::Stm { .. } => {
            Err(tonic::Status::internal("not a KV workload"))
        }
        Workload::Put(keys) => {
            let req =
                PutRequest { key: key(keys, i, rng), value: vec![b'v'; keys.val_size], ..Default::default() };
            kv.put(req).await.map(|_| ())
        }
        Workload::Range { key, end, consistency } => {
            let req = RangeRequest {
                key: key.as_bytes().to_vec(),
                range_end: end.as_deref().unwrap_or("").as_bytes().to_vec(),
                serializable: *consistency == Consistency::S,
                ..Default::default()
            };
            kv.range(req).await.map(|_| ())
        }
        Workload::TxnPut { keys, txn_ops } => {
            let mut seen = std::collections::HashSet::new();
            let success = (0..*txn_ops)
                .filter_map(|j| {
                    let k = key(keys, i * *txn_ops as u64 + j as u64, rng);
                    seen.insert(k.clone()).then(|| RequestOp {
                        request: Some(Op::RequestPut(PutRequest {
                            key: k,
                            value: vec![b'v'; keys.val_size],
                            ..Default::default()
                        })),
                    })
                })
                .collect();
            kv.txn(TxnRequest { compare: vec![], success, failure: vec![] }).await.map(|_| ())
        }
        Workload::TxnMixed { keys, rw_ratio, consistency } => {
            let read = (rng.below(1_000_000) as f64) < 1_000_000.0 * rw_ratio / (rw_ratio + 1.0);
            let k = key(keys, i, rng);
            let op = if read {
                Op::RequestRange(RangeRequest {
                    key: k,
                    serializable: *consistency == Consistency::S,
                    ..Default::default()
                })
            } else {
                Op::RequestPut(PutRequest { key: k, value: vec![b'v'; keys.val_size], ..Default::default() })
            };
            let txn = TxnRequest {
                compare: vec![],
                success: vec![RequestOp { request: Some(op) }],
                failure: vec![],
            };
            kv.txn(txn).await.map(|_| ())
        }
    }
}

/// One STM transfer of half an account's balance (a missing account reads as 100).
async fn transfer(
    client: &crate::client::Client,
    accounts: usize,
    isolation: StmIsolation,
    rng: &mut Rng,
) -> Result<(), tonic::Status> {
    use crate::client::Isolation;
    let n = accounts.max(2) as u64;
    let from = rng.below(n);
    let to = (from + 1 + rng.below(n - 1)) % n;
    let (from, to) = (format!("bench-stm/{from}").into_bytes(), format!("bench-stm/{to}").into_bytes());
    let iso = match isolation {
        StmIsolation::Ss => Isolation::SerializableSnapshot,
        StmIsolation::S => Isolation::Serializable,
        StmIsolation::Rr => Isolation::RepeatableReads,
        StmIsolation::Rc => Isolation::ReadCommitted,
    };
    crate::client::demo::transfer_half(client, iso, &from, &to, 100).await.map_err(tonic::Status::from)
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx] as f64 / 1000.0
}

/// Runs one workload and reports it.
pub async fn run(args: &BenchArgs) -> Result<Report, BenchError> {
    let c = &args.common;
    if c.clients == 0 || c.conns == 0 {
        return Err(BenchError::Args);
    }
    let mut channels = Vec::with_capacity(c.conns);
    for i in 0..c.conns {
        let url = endpoint_url(&c.endpoints[i % c.endpoints.len()]);
        let ep = Endpoint::from_shared(url.clone())
            .map_err(|e| BenchError::Connect(url.clone(), e.to_string()))?;
        let ch = ep
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| BenchError::Connect(url.clone(), e.to_string()))?;
        channels.push(ch);
    }
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let total = c.total;
    let progress = (!c.quiet && !c.json).then(|| {
        let done = done.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let d = done.load(Ordering::Relaxed);
                let width = 40;
                let filled = (d * width / total.max(1)) as usize;
                eprint!("\r [{}{}] {d}/{total}", "#".repeat(filled), " ".repeat(width as usize - filled));
                if d >= total {
                    eprintln!();
                    return;
                }
            }
        })
    });
    let mut tasks = Vec::with_capacity(c.clients);
    if let Workload::Watch { watchers, streams, val_size } = args.workload {
        return watch::run(c, &channels, watchers, streams, val_size).await;
    }
    let mut clients = Vec::with_capacity(c.clients);
    for id in 0..c.clients {
        let channel = channels[id % channels.len()].clone();
        let client = Client::new(channel, &args.workload)
            .await
            .map_err(|e| BenchError::Connect(c.endpoints[0].clone(), e.to_string()))?;
        clients.push(client);
    }
    let start = Instant::now();
    for (id, mut kv) in clients.into_iter().enumerate() {
        let workload = args.workload.clone();
        let (next, done, errors) = (next.clone(), done.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(0x9e3779b97f4a7c15 ^ (id as u64 + 1).wrapping_mul(0xbf58476d1ce4e5b9));
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return lat;
                }
                let t = Instant::now();
                let res = one_request(&mut kv, &workload, i, &mut rng).await;
                lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                if res.is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let mut lat: Vec<u32> = Vec::with_capacity(total as usize);
    for t in tasks {
        lat.extend(t.await.unwrap_or_default());
    }
    let seconds = start.elapsed().as_secs_f64();
    if let Some(p) = progress {
        let _ = p.await;
    }
    Ok(Report::new(workload_name(&args.workload), c, lat, errors.load(Ordering::Relaxed), seconds))
}

impl Report {
    /// A report from latencies in microseconds.
    fn new(workload: String, c: &Common, mut lat: Vec<u32>, errors: u64, seconds: f64) -> Report {
        lat.sort_unstable();
        let avg_ms = if lat.is_empty() {
            0.0
        } else {
            lat.iter().map(|&x| x as f64).sum::<f64>() / lat.len() as f64 / 1000.0
        };
        Report {
            workload,
            clients: c.clients,
            conns: c.conns,
            requests: lat.len() as u64,
            errors,
            seconds,
            requests_per_sec: lat.len() as f64 / seconds,
            avg_ms,
            p50_ms: percentile(&lat, 0.5),
            p90_ms: percentile(&lat, 0.9),
            p99_ms: percentile(&lat, 0.99),
            p999_ms: percentile(&lat, 0.999),
            max_ms: lat.last().map_or(0.0, |&m| m as f64 / 1000.0),
        }
    }
}
