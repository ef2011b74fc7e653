//! concord-chaos: a Jepsen-style fault suite for concord.
//!
//! Each run starts a fresh cluster of real `concord` processes whose peer links each pass through a
//! proxy this program controls, drives one workload against it through the etcd v3 API while a
//! nemesis, on a schedule drawn from the seed, partitions, kills, pauses, slows members and fails their
//! disks; then heals everything, makes the workload's final reads and checks the history. Every run
//! leaves a folder with the history, the faults, the verdict and an HTML report, and prints one summary
//! line.

mod cluster;
mod history;
mod linear;
mod nemesis;
mod proxy;
mod report;
mod rng;
mod workload;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use tokio::sync::oneshot;
use tonic::transport::Endpoint;

use crate::cluster::{Cluster, Server};
use crate::history::Status;
use crate::rng::Rng;
use crate::workload::Ctx;

#[derive(Parser, Debug)]
#[command(about = "Jepsen-style fault runs against a concord cluster")]
struct Args {
    /// Workloads, one run each per seed.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "register,set,bank,watch,lease,lock")]
    workload: Vec<workload::Kind>,
    /// Faults to draw from.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "partition,kill,pause,delay")]
    nemesis: Vec<nemesis::Kind>,
    /// Run without faults (a baseline for the checkers).
    #[arg(long)]
    no_faults: bool,
    /// Seconds of load (and faults) per run.
    #[arg(long, default_value_t = 60)]
    time: u64,
    /// The first seed (default: from the clock); run k uses seed + k.
    #[arg(long)]
    seed: Option<u64>,
    /// Seeds to run (each runs every workload).
    #[arg(long, default_value_t = 1)]
    runs: u64,
    #[arg(long, default_value_t = 3)]
    members: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 10)]
    clients: usize,
    /// Operations per second per client (about).
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Client timeout per operation, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
    /// `--snapshot-count` of the members: small, so snapshots and log purges happen during faults.
    #[arg(long, default_value_t = 100)]
    snapshot_count: u64,
    /// A flag for every member, as `--server-flag=--experimental-enable-lease-checkpoint` (repeatable):
    /// runs the workloads against a server option.
    #[arg(long = "server-flag", allow_hyphen_values = true)]
    server_flags: Vec<String>,
    /// Where each run's folder goes.
    #[arg(long, default_value = "chaos-results")]
    out: PathBuf,
    /// The concord binary (default: the one beside this program).
    #[arg(long)]
    concord: Option<PathBuf>,
    /// Run real etcd (this binary) instead of concord, to validate the harness and the checkers. Peer
    /// links then go through one proxy per member, which tells senders apart by etcd's headers.
    #[arg(long, value_name = "ETCD_BIN")]
    etcd: Option<PathBuf>,
    /// Keep the members' data dirs of valid runs too (they are kept for invalid ones).
    #[arg(long)]
    keep_data: bool,
    /// Check a finished run's history again (its folder), with the first `--workload`'s checker.
    #[arg(long, value_name = "RUN_DIR")]
    recheck: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(dir) = &args.recheck {
        let history = std::fs::read_to_string(dir.join("history.jsonl"))?;
        let (valid, details) = workload::recheck(args.workload[0], &history)?;
        println!("{}", serde_json::to_string_pretty(&details)?);
        anyhow::ensure!(valid, "invalid: {}", dir.display());
        return Ok(());
    }
    let server = match (&args.etcd, &args.concord) {
        (Some(etcd), _) => Server::Etcd(etcd.clone()),
        (None, Some(b)) => Server::Concord(b.clone()),
        (None, None) => Server::Concord(std::env::current_exe()?.with_file_name("concord")),
    };
    let (Server::Concord(bin) | Server::Etcd(bin)) = &server;
    anyhow::ensure!(bin.exists(), "no server binary at {} (build concord, or pass --concord)", bin.display());
    if args.nemesis.contains(&nemesis::Kind::Member) {
        // etcd's proxies tell senders apart by member id, which a re-added member changes.
        anyhow::ensure!(matches!(server, Server::Concord(_)), "the member nemesis runs against concord only");
        anyhow::ensure!(args.members >= 3, "the member nemesis needs at least 3 members");
    }
    let first = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
    });
    let mut invalid = 0;
    for seed in first..first + args.runs {
        for &kind in &args.workload {
            // A run the harness could not carry out (a member that would not start) counts as invalid.
            let (summary, valid) = match run(&args, &server, kind, seed).await {
                Ok(done) => done,
                Err(e) => (format!("server=? workload={kind:?} seed={seed} error={e:#} valid=false"), false),
            };
            println!("{summary}");
            invalid += usize::from(!valid);
        }
    }
    anyhow::ensure!(invalid == 0, "{invalid} invalid run(s)");
    Ok(())
}

/// One run: returns its summary line and whether it was valid.
async fn run(args: &Args, server: &Server, kind: workload::Kind, seed: u64) -> Result<(String, bool)> {
    let name = format!("{kind:?}").to_lowercase();
    let dir = args.out.join(format!("{name}-{seed}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut cluster =
        Cluster::start(server, &dir, args.members, args.snapshot_count, &args.server_flags).await?;
    cluster.wait_healthy(Duration::from_secs(30)).await?;
    cluster.name_members().await?;

    let start = std::time::Instant::now();
    let until = tokio::time::Instant::now() + Duration::from_secs(args.time);
    let channels = cluster
        .endpoints()
        .into_iter()
        .map(|e| Ok(Endpoint::from_shared(e)?.connect_timeout(Duration::from_millis(500)).connect_lazy()))
        .collect::<Result<Vec<_>>>()?;
    let mut rng = Rng::new(seed);
    let ctx = Ctx {
        channels,
        clients: args.clients,
        rate: args.rate,
        timeout: Duration::from_millis(args.timeout_ms),
        start,
        until,
        seed: rng.next_u64(),
    };
    let (healed, healed_rx) = oneshot::channel();
    let work = tokio::spawn(workload::run(kind, ctx, healed_rx));
    let kinds = if args.no_faults { &[][..] } else { &args.nemesis[..] };
    let faults = nemesis::run(&mut cluster, kinds, rng.fork(), start, until).await?;
    // A cluster that does not recover once every fault is healed is a failed run, not a pass.
    let recovered = cluster.wait_healthy(Duration::from_secs(60)).await;
    let _ = healed.send(());
    let outcome = match recovered {
        Ok(()) => work.await??,
        Err(e) => {
            work.abort();
            workload::Outcome {
                valid: false,
                points: Vec::new(),
                history: Vec::new(),
                details: serde_json::json!({ "error": e.to_string() }),
            }
        }
    };
    drop(cluster);

    let count = |s: Status| outcome.points.iter().filter(|p| p.status == s).count();
    let nemesis = if kinds.is_empty() {
        "none".to_string()
    } else {
        kinds.iter().map(|k| format!("{k:?}").to_lowercase()).collect::<Vec<_>>().join(",")
    };
    let server = match server {
        Server::Concord(_) => "concord",
        Server::Etcd(_) => "etcd",
    };
    let summary = format!(
        "server={server} workload={name} nemesis={nemesis} seed={seed} ops={} ok={} fail={} info={} faults={} valid={}",
        outcome.points.len(),
        count(Status::Ok),
        count(Status::Fail),
        count(Status::Info),
        faults.len(),
        outcome.valid
    );
    std::fs::write(dir.join("history.jsonl"), outcome.history.join("\n") + "\n")?;
    std::fs::write(dir.join("nemesis.json"), serde_json::to_string_pretty(&faults)?)?;
    let verdict =
        serde_json::json!({ "valid": outcome.valid, "summary": summary, "checker": outcome.details });
    std::fs::write(dir.join("verdict.json"), serde_json::to_string_pretty(&verdict)?)?;
    let html = report::html(&summary, &outcome.details, &outcome.points, &faults, args.time as f64);
    std::fs::write(dir.join("report.html"), html)?;
    if outcome.valid && !args.keep_data {
        for i in 0..args.members {
            let _ = std::fs::remove_dir_all(dir.join(cluster::member_name(i)));
        }
    }
    Ok((summary, outcome.valid))
}
