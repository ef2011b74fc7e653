//! The `concord` binary: etcd's command line in front of `concord::Server`, plus `concord bench`.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::io::Write;
use tracing_subscriber::fmt::writer::{BoxMakeWriter, MakeWriterExt};

use concord::bench::BenchArgs;
use concord::server::Stopped;
use concord::{Config, Server};

#[derive(Parser)]
#[command(
    name = "concord",
    version,
    about = "An etcd-compatible coordination server",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(flatten)]
    config: Config,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Load generator speaking etcd v3 gRPC (runs against concord or etcd).
    Bench(BenchArgs),
    /// etcd's recipe demos (lock, rwlock, queue, pqueue, barrier, double-barrier, bank), driven by stdin.
    Demo(concord::client::demo::DemoArgs),
    /// Copies a live etcd into concord, then mirrors its changes until stopped (Ctrl-C or SIGTERM), and
    /// checks that both sides hold the same keys and values.
    Migrate(concord::migrate::MigrateArgs),
    /// Backups: `snapshot restore` (take one with `etcdctl snapshot save`).
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Builds a new member's data dir (`--data-dir`, default ${name}.concord) from a backup, like
    /// `etcdutl snapshot restore`; then start the member with the new cluster's `--initial-cluster`.
    Restore {
        /// The file `etcdctl snapshot save` wrote (from concord or etcd), or an etcd member's
        /// `member/snap/db` with `--skip-hash-check`.
        file: std::path::PathBuf,
        /// Accept a file without the sha256 a saved snapshot ends with (etcdutl's flag).
        #[arg(long)]
        skip_hash_check: bool,
        #[command(flatten)]
        config: Box<Config>,
    },
}

/// jemalloc instead of glibc's malloc, for the server and the load generator alike. Under load, glibc's
/// malloc and free took about a quarter of the server's CPU: a buffer allocated on one worker is often
/// freed on the other, and freeing it takes the arena lock of the thread that allocated it, so the two
/// workers wake each other through that lock (futex wake-ups inside `malloc` and `free`). jemalloc's
/// per-thread caches return such frees in batches. Server CPU per put at 64 and 500 clients fell by
/// 20-30%, peak RSS rose ~10% (docs/benchmarks.md, finding 26).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// tokio's multi-thread runtime, without its LIFO slot when built with `--cfg tokio_unstable` (as
/// `.cargo/config.toml` does). With the slot, a task woken by the running one runs next on the same worker,
/// where the other worker cannot take it: the tasks openraft's core wakes wait there while the core syncs
/// the next entry. Without it, puts at 64 and 500 clients are 3-12% faster, and one client's requests
/// no slower since each connection's calls run inside its task (docs/benchmarks.md, findings 14, 29, 31).
fn main() -> anyhow::Result<()> {
    // Every flag also reads CONCORD_<FLAG>, standing in for etcd's ETCD_<FLAG> (which wins when both are set).
    for (key, value) in std::env::vars() {
        if let Some(flag) = key.strip_prefix("CONCORD_") {
            let etcd = format!("ETCD_{flag}");
            if std::env::var_os(&etcd).is_none() {
                std::env::set_var(etcd, value);
            }
        }
    }
    let cli = Cli::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    #[cfg(tokio_unstable)]
    rt.disable_lifo_slot();
    if let Some(Command::Bench(args)) = &cli.command {
        // A load generator's own wake-ups count in every latency it reports. One connection's requests
        // cannot use a second worker, which would only take each wake-up to the other core: one client's
        // serializable ranges measured ~6,300/s with two workers and ~8,600/s with one, against the same
        // server (docs/benchmarks.md, finding 21). TOKIO_WORKER_THREADS still decides when it is set.
        if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            rt.worker_threads(args.common.conns.clamp(1, cores));
        }
    }
    rt.build()?.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Bench(args)) => {
            let report = concord::bench::run(&args).await?;
            let text = if args.common.json { serde_json::to_string(&report)? } else { report.to_string() };
            // A closed stdout (`| head`) is not worth a panic.
            let _ = writeln!(std::io::stdout(), "{text}");
            Ok(())
        }
        Some(Command::Demo(args)) => Ok(concord::client::demo::run(args).await?),
        Some(Command::Migrate(args)) => {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            let stop = async move {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            };
            let summary = concord::migrate::run(&args, stop).await?;
            println!("{summary}");
            Ok(())
        }
        Some(Command::Snapshot(SnapshotCommand::Restore { file, skip_hash_check, config })) => {
            // etcdutl's check: the member being restored must be one of the new cluster's.
            config.initial_members()?;
            let dir = config.data_dir();
            concord::backup::restore(&file, &dir, skip_hash_check)?;
            println!("restored {} into {}", file.display(), dir.display());
            Ok(())
        }
        None => serve(cli.config).await,
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let config = match &config.config_file {
        Some(path) => Config::from_yaml(path)?,
        None => config,
    };
    let level = if config.debug { "debug" } else { config.log_level.as_str() };
    let filter = tracing_subscriber::EnvFilter::try_new(format!("{level},openraft=warn"))
        .with_context(|| format!("--log-level {level}"))?;
    let terminal = config.log_outputs.iter().all(|o| matches!(o.as_str(), "default" | "stderr" | "stdout"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(terminal)
        .with_writer(log_writer(&config.log_outputs)?);
    if config.log_json() {
        logs.event_format(concord::logging::ZapJson).init();
    } else {
        logs.init();
    }

    let server = Server::start(config).await.context("starting concord")?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stopped = tokio::select! {
        _ = tokio::signal::ctrl_c() => None,
        _ = term.recv() => None,
        why = server.stopped() => Some(why),
    };
    if let Some(Stopped::Failed(why)) = stopped {
        // As etcd's fatal log: exit at once, with nothing more written. A restart replays the log.
        tracing::error!(error = %why, "the Raft core stopped; stopping the member");
        std::process::exit(1);
    }
    tracing::info!("shutting down");
    server.shutdown().await.context("shutting down")?;
    if let Some(Stopped::Removed) = stopped {
        anyhow::bail!("{}", concord::raft::network::REMOVED);
    }
    Ok(())
}

/// `--log-outputs`: stderr (etcd's `default`), stdout, and files appended to, all at once.
fn log_writer(outputs: &[String]) -> anyhow::Result<BoxMakeWriter> {
    let mut writer: Option<BoxMakeWriter> = None;
    for output in outputs {
        let next = match output.as_str() {
            "default" | "stderr" => BoxMakeWriter::new(std::io::stderr),
            "stdout" => BoxMakeWriter::new(std::io::stdout),
            path => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("--log-outputs {path}"))?;
                BoxMakeWriter::new(std::sync::Arc::new(file))
            }
        };
        writer = Some(match writer {
            None => next,
            Some(before) => BoxMakeWriter::new(before.and(next)),
        });
    }
    Ok(writer.unwrap_or_else(|| BoxMakeWriter::new(std::io::stderr)))
}
