//! Process-wide counters and histograms, exposed in Prometheus' text format under etcd's metric names
//! (like etcd, which registers its metrics in Prometheus' default registry). The storage layer times its
//! syncs here; gauges that the Raft node already knows are read when `/metrics` is scraped.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

mod process;

/// A histogram with Prometheus' exponential buckets: `N` buckets from `first` seconds, doubling.
pub struct Histogram<const N: usize = 14> {
    first: f64,
    buckets: [AtomicU64; N],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    pub const fn new(first: f64) -> Self {
        Histogram {
            first,
            buckets: [const { AtomicU64::new(0) }; N],
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }

    fn bound(&self, i: usize) -> f64 {
        self.first * f64::from(1u32 << i)
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = (0..N).find(|&i| secs <= self.bound(i)) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Runs `f` and records how long it took.
    pub fn time<T>(&self, f: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let out = f();
        self.observe(start.elapsed());
        out
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        self.render_series(name, "", out);
    }

    /// The series of one label set (`labels` like `To="a1b2",`, or empty).
    fn render_series(&self, name: &str, labels: &str, out: &mut String) {
        let mut cumulative = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative += b.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{}\"}} {cumulative}", self.bound(i));
        }
        let count = self.count.load(Ordering::Relaxed);
        let braces =
            |l: &str| if l.is_empty() { String::new() } else { format!("{{{}}}", l.trim_end_matches(',')) };
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum{} {}",
            braces(labels),
            self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9
        );
        let _ = writeln!(out, "{name}_count{} {count}", braces(labels));
    }
}

/// etcd's disk histograms: `prometheus.ExponentialBuckets(0.001, 2, 14)`, 1 ms to 8 s.
/// The latency of each sync of the Raft log.
pub static WAL_FSYNC: Histogram = Histogram::new(0.001);
/// The latency of each checkpoint of the MVCC records (etcd's backend commit).
pub static BACKEND_COMMIT: Histogram = Histogram::new(0.001);

/// etcd's peer round-trip histogram: `ExponentialBuckets(0.0001, 2, 16)`, 0.1 ms to 3.3 s.
pub type PeerRtt = Histogram<16>;

/// The round trip to each peer (by member id), measured on the heartbeats this member sends as leader.
static PEER_RTT: LazyLock<Mutex<BTreeMap<u64, Arc<PeerRtt>>>> = LazyLock::new(Default::default);

/// The round-trip histogram of the peer `to`, created on first use.
pub fn peer_rtt(to: u64) -> Arc<PeerRtt> {
    let mut all = PEER_RTT.lock().unwrap_or_else(|p| p.into_inner());
    all.entry(to).or_insert_with(|| Arc::new(Histogram::new(0.0001))).clone()
}
/// Leaders this member has seen elected.
pub static LEADER_CHANGES: AtomicU64 = AtomicU64::new(0);

/// The operations this member's MVCC store has seen (`etcd_mvcc_*_total`), counted as etcd's
/// `metricsTxnWrite` counts them: each range, put and delete-range, on its own or in a transaction, and
/// each transaction of more than one operation. Writes are counted where they are applied, so on every
/// member; reads where they are served.
pub static MVCC_RANGES: AtomicU64 = AtomicU64::new(0);
pub static MVCC_PUTS: AtomicU64 = AtomicU64::new(0);
pub static MVCC_DELETES: AtomicU64 = AtomicU64::new(0);
pub static MVCC_TXNS: AtomicU64 = AtomicU64::new(0);

/// Adds one to a counter.
pub fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// One gRPC method's counters. They exist for every method of concord's protos from the first call
/// on, so counting a call takes no lock and no allocation.
pub struct GrpcMethod {
    /// go-grpc-prometheus's `grpc_type`.
    kind: &'static str,
    service: String,
    method: String,
    started: AtomicU64,
    /// By `tonic::Code` value (0 to 16).
    handled: [AtomicU64; 17],
}

impl GrpcMethod {
    pub fn started(&self) {
        self.started.fetch_add(1, Ordering::Relaxed);
    }

    pub fn handled(&self, code: tonic::Code) {
        if let Some(n) = self.handled.get(code as usize) {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Every method of the protos, by its path (`/etcdserverpb.KV/Range`).
static GRPC: LazyLock<HashMap<String, GrpcMethod>> = LazyLock::new(|| {
    let Some(pool) = crate::pb::descriptors() else { return HashMap::new() };
    pool.services()
        .flat_map(|s| s.methods().collect::<Vec<_>>())
        .map(|m| {
            let kind = match (m.is_client_streaming(), m.is_server_streaming()) {
                (true, true) => "bidi_stream",
                (false, true) => "server_stream",
                (true, false) => "client_stream",
                (false, false) => "unary",
            };
            let service = m.parent_service().full_name().to_string();
            let counters = GrpcMethod {
                kind,
                method: m.name().to_string(),
                started: AtomicU64::new(0),
                handled: [const { AtomicU64::new(0) }; 17],
                service,
            };
            (format!("/{}/{}", counters.service, counters.method), counters)
        })
        .collect()
});

/// The counters of the gRPC method at `path`, if it is one of concord's.
pub fn grpc_method(path: &str) -> Option<&'static GrpcMethod> {
    GRPC.get(path)
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

/// A gauge or counter line with its help and type.
pub fn sample(out: &mut String, name: &str, kind: &str, help: &str, value: f64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
}

/// A gauge of value 1 whose one label carries the information (etcd's `etcd_server_version`, ...).
pub fn info(out: &mut String, name: &str, help: &str, label: &str, value: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{{label}=\"{value}\"}} 1");
}

/// Everything kept here, in the text format.
pub fn render_process(out: &mut String) {
    for (name, what, counter) in [
        ("etcd_mvcc_range_total", "ranges", &MVCC_RANGES),
        ("etcd_mvcc_put_total", "puts", &MVCC_PUTS),
        ("etcd_mvcc_delete_total", "deletes", &MVCC_DELETES),
        ("etcd_mvcc_txn_total", "txns", &MVCC_TXNS),
    ] {
        let help = format!("Total number of {what} seen by this member.");
        sample(out, name, "counter", &help, counter.load(Ordering::Relaxed) as f64);
    }
    WAL_FSYNC.render(
        "etcd_disk_wal_fsync_duration_seconds",
        "The latency distributions of fsync called by WAL.",
        out,
    );
    BACKEND_COMMIT.render(
        "etcd_disk_backend_commit_duration_seconds",
        "The latency distributions of commit called by backend.",
        out,
    );
    let peers: Vec<(u64, Arc<PeerRtt>)> =
        PEER_RTT.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(k, v)| (*k, v.clone())).collect();
    if !peers.is_empty() {
        let name = "etcd_network_peer_round_trip_time_seconds";
        let _ =
            writeln!(out, "# HELP {name} Round-Trip-Time histogram between peers\n# TYPE {name} histogram");
        for (to, h) in peers {
            h.render_series(name, &format!("To=\"{to:x}\","), out);
        }
    }
    let changes = LEADER_CHANGES.load(Ordering::Relaxed) as f64;
    sample(
        out,
        "etcd_server_leader_changes_seen_total",
        "counter",
        "The number of leader changes seen.",
        changes,
    );
    let mut methods: Vec<&GrpcMethod> = GRPC.values().collect();
    methods.sort_by_key(|m| (m.kind, &m.service, &m.method));
    let _ = writeln!(out, "# HELP grpc_server_started_total Total number of RPCs started on the server.");
    let _ = writeln!(out, "# TYPE grpc_server_started_total counter");
    for m in &methods {
        let n = m.started.load(Ordering::Relaxed);
        if n > 0 {
            let (kind, service, method) = (m.kind, &m.service, &m.method);
            let _ = writeln!(
                out,
                "grpc_server_started_total{{grpc_method=\"{method}\",grpc_service=\"{service}\",grpc_type=\"{kind}\"}} {n}"
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP grpc_server_handled_total Total number of RPCs completed on the server, regardless of success or failure."
    );
    let _ = writeln!(out, "# TYPE grpc_server_handled_total counter");
    for m in &methods {
        let mut by_code: Vec<(&str, u64)> = (0..17)
            .map(|c| (code_name(tonic::Code::from_i32(c)), m.handled[c as usize].load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect();
        by_code.sort_unstable();
        for (code, n) in by_code {
            let (kind, service, method) = (m.kind, &m.service, &m.method);
            let _ = writeln!(
                out,
                "grpc_server_handled_total{{grpc_code=\"{code}\",grpc_method=\"{method}\",grpc_service=\"{service}\",grpc_type=\"{kind}\"}} {n}"
            );
        }
    }
    process::render(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h: Histogram = Histogram::new(0.001);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(20));
        let mut out = String::new();
        h.render("x", "help", &mut out);
        assert!(out.contains("x_bucket{le=\"0.001\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.004\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"8.192\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count 3\n"), "{out}");
    }

    #[test]
    fn grpc_paths_become_labels() {
        let range = grpc_method("/etcdserverpb.KV/Range").expect("Range");
        assert_eq!(
            (range.kind, range.service.as_str(), range.method.as_str()),
            ("unary", "etcdserverpb.KV", "Range")
        );
        assert_eq!(grpc_method("/etcdserverpb.Watch/Watch").map(|m| m.kind), Some("bidi_stream"));
        assert_eq!(grpc_method("/etcdserverpb.Maintenance/Snapshot").map(|m| m.kind), Some("server_stream"));
        assert!(grpc_method("/health").is_none());
    }
}
