//! The `concord` binary: etcd's command line in front of `concord::Server`.

use anyhow::Context;
use clap::Parser;
use concord::{Config, Server};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(format!("{},openraft=warn", config.log_level))
        .with_context(|| format!("--log-level {}", config.log_level))?;
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();

    let server = Server::start(config).await.context("starting concord")?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    server.shutdown().await.context("shutting down")?;
    Ok(())
}
