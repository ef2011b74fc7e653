//! Flags, named and defaulted like etcd's, so an etcd command line starts concord unchanged.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ClusterState {
    New,
    Existing,
}

#[derive(Clone, Debug, Parser)]
#[command(name = "concord", version, about = "An etcd-compatible coordination server")]
pub struct Config {
    /// Human-readable name for this member.
    #[arg(long, env = "ETCD_NAME", default_value = "default")]
    pub name: String,
    /// Path to the data directory (default: ${name}.concord).
    #[arg(long, env = "ETCD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// URLs to listen on for client traffic.
    #[arg(
        long,
        env = "ETCD_LISTEN_CLIENT_URLS",
        default_value = "http://localhost:2379",
        value_delimiter = ','
    )]
    pub listen_client_urls: Vec<String>,
    /// This member's client URLs to advertise to the rest of the cluster.
    #[arg(
        long,
        env = "ETCD_ADVERTISE_CLIENT_URLS",
        default_value = "http://localhost:2379",
        value_delimiter = ','
    )]
    pub advertise_client_urls: Vec<String>,
    /// URLs to listen on for peer traffic.
    #[arg(
        long,
        env = "ETCD_LISTEN_PEER_URLS",
        default_value = "http://localhost:2380",
        value_delimiter = ','
    )]
    pub listen_peer_urls: Vec<String>,
    /// This member's peer URLs to advertise to the rest of the cluster.
    #[arg(
        long,
        env = "ETCD_INITIAL_ADVERTISE_PEER_URLS",
        default_value = "http://localhost:2380",
        value_delimiter = ','
    )]
    pub initial_advertise_peer_urls: Vec<String>,
    /// Initial cluster configuration for bootstrapping: name=peer-url,...
    /// (default: ${name}=${initial-advertise-peer-urls}).
    #[arg(long, env = "ETCD_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// Initial cluster state ('new' or 'existing').
    #[arg(long, env = "ETCD_INITIAL_CLUSTER_STATE", value_enum, default_value = "new")]
    pub initial_cluster_state: ClusterState,
    /// Initial cluster token for the cluster during bootstrap.
    #[arg(long, env = "ETCD_INITIAL_CLUSTER_TOKEN", default_value = "etcd-cluster")]
    pub initial_cluster_token: String,
    /// Maximum client request size in bytes the server will accept.
    #[arg(long, env = "ETCD_MAX_REQUEST_BYTES", default_value_t = 1536 * 1024)]
    pub max_request_bytes: usize,
    /// Maximum number of operations permitted in a transaction.
    #[arg(long, env = "ETCD_MAX_TXN_OPS", default_value_t = 128)]
    pub max_txn_ops: usize,
    /// Number of committed transactions to trigger a snapshot to disk.
    #[arg(long, env = "ETCD_SNAPSHOT_COUNT", default_value_t = 100_000)]
    pub snapshot_count: u64,
    /// Time (in milliseconds) of a heartbeat interval.
    #[arg(long, env = "ETCD_HEARTBEAT_INTERVAL", default_value_t = 100)]
    pub heartbeat_interval: u64,
    /// Time (in milliseconds) for an election to timeout.
    #[arg(long, env = "ETCD_ELECTION_TIMEOUT", default_value_t = 1000)]
    pub election_timeout: u64,
    /// Interval of progress notifications to watchers that ask for them (a Go duration: 10m, 30s, 500ms).
    #[arg(
        long,
        env = "ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL",
        default_value = "10m",
        value_parser = parse_duration
    )]
    pub experimental_watch_progress_notify_interval: std::time::Duration,
    /// Path to the client server TLS cert file.
    #[arg(long, env = "ETCD_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    /// Path to the client server TLS key file.
    #[arg(long, env = "ETCD_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// Path to the client server TLS trusted CA cert file.
    #[arg(long, env = "ETCD_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Enable client cert authentication.
    #[arg(long, env = "ETCD_CLIENT_CERT_AUTH", default_value_t = false, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub client_cert_auth: bool,
    /// Path to the peer server TLS cert file.
    #[arg(long, env = "ETCD_PEER_CERT_FILE")]
    pub peer_cert_file: Option<PathBuf>,
    /// Path to the peer server TLS key file.
    #[arg(long, env = "ETCD_PEER_KEY_FILE")]
    pub peer_key_file: Option<PathBuf>,
    /// Path to the peer server TLS trusted CA file.
    #[arg(long, env = "ETCD_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Enable peer client cert authentication.
    #[arg(long, env = "ETCD_PEER_CLIENT_CERT_AUTH", default_value_t = false, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub peer_client_cert_auth: bool,
    /// Duration of time between cluster corruption check passes (0: never; a Go duration, e.g. 5m).
    #[arg(long, env = "ETCD_EXPERIMENTAL_CORRUPT_CHECK_TIME", default_value = "0s", value_parser = parse_duration)]
    pub experimental_corrupt_check_time: std::time::Duration,
    /// Check the data against the peers' before serving.
    #[arg(long, env = "ETCD_EXPERIMENTAL_INITIAL_CORRUPT_CHECK", default_value_t = false, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub experimental_initial_corrupt_check: bool,
    /// Raise alarms when backend size exceeds the given quota (0 defaults to 2 GiB; negative: none).
    #[arg(long, env = "ETCD_QUOTA_BACKEND_BYTES", default_value_t = 0, allow_negative_numbers = true)]
    pub quota_backend_bytes: i64,
    /// Reject reconfiguration requests that would cause quorum loss.
    #[arg(
        long,
        env = "ETCD_STRICT_RECONFIG_CHECK",
        default_value_t = true,
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    pub strict_reconfig_check: bool,
    /// Dial these members at these URLs instead of their advertised peer URLs: name=url,... or
    /// peer-url=url,... Not an etcd flag: the fault suite routes each directed peer link through a proxy
    /// of its own with it.
    #[arg(long, value_delimiter = ',', value_parser = parse_name_url)]
    pub experimental_peer_dial_urls: Vec<(String, String)>,
    /// Log level: debug, info, warn, error.
    #[arg(long, env = "ETCD_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

impl Default for Config {
    fn default() -> Self {
        Config::parse_from(["concord"])
    }
}

fn parse_name_url(s: &str) -> Result<(String, String), String> {
    let (name, url) = s.split_once('=').ok_or_else(|| format!("expected name=url, got {s:?}"))?;
    Ok((name.to_string(), url.to_string()))
}

/// A Go-style duration (`1h`, `10m`, `30s`, `500ms`, `1m30s`), as etcd's duration flags take.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("invalid duration {s:?}");
    let mut total = 0f64;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        let n: f64 = rest[..num_end].parse().map_err(|_| bad())?;
        rest = &rest[num_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let secs = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(bad()),
        };
        total += n * secs;
        rest = &rest[unit_end..];
    }
    Ok(std::time::Duration::from_secs_f64(total))
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--initial-cluster: {0}")]
    InitialCluster(String),
    #[error("invalid URL {0:?}: expected http://host:port or https://host:port")]
    Url(String),
    #[error("TLS: {0}")]
    Tls(String),
}

impl Config {
    /// The client side's TLS files (`--cert-file`, ...).
    pub fn client_tls(&self) -> Result<crate::tls::Tls, ConfigError> {
        crate::tls::Tls::load(
            "",
            &self.cert_file,
            &self.key_file,
            &self.trusted_ca_file,
            self.client_cert_auth,
        )
    }

    /// The peer side's TLS files (`--peer-cert-file`, ...).
    pub fn peer_tls(&self) -> Result<crate::tls::Tls, ConfigError> {
        crate::tls::Tls::load(
            "peer-",
            &self.peer_cert_file,
            &self.peer_key_file,
            &self.peer_trusted_ca_file,
            self.peer_client_cert_auth,
        )
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| PathBuf::from(format!("{}.concord", self.name)))
    }

    /// The members named by `--initial-cluster`, in order: (name, peer URLs).
    pub fn initial_members(&self) -> Result<Vec<(String, Vec<String>)>, ConfigError> {
        let spec = match &self.initial_cluster {
            Some(s) => s.clone(),
            None => self
                .initial_advertise_peer_urls
                .iter()
                .map(|u| format!("{}={u}", self.name))
                .collect::<Vec<_>>()
                .join(","),
        };
        let mut members: Vec<(String, Vec<String>)> = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, url) = part
                .split_once('=')
                .ok_or_else(|| ConfigError::InitialCluster(format!("{part:?} is not name=url")))?;
            host_port(url)?;
            match members.iter_mut().find(|(n, _)| n == name) {
                Some((_, urls)) => urls.push(url.to_string()),
                None => members.push((name.to_string(), vec![url.to_string()])),
            }
        }
        if !members.iter().any(|(n, _)| *n == self.name) {
            return Err(ConfigError::InitialCluster(format!("it does not name this member {:?}", self.name)));
        }
        Ok(members)
    }
}

/// `http://host:port` → `host:port`.
pub fn host_port(url: &str) -> Result<String, ConfigError> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .or_else(|| url.strip_prefix("unix://"))
        .ok_or_else(|| ConfigError::Url(url.to_string()))?;
    let hp = rest.trim_end_matches('/');
    if hp.rsplit_once(':').is_none_or(|(_, p)| p.parse::<u16>().is_err()) {
        return Err(ConfigError::Url(url.to_string()));
    }
    Ok(hp.to_string())
}

/// A stable 64-bit FNV-1a hash: member and cluster IDs must come out the same on every member and
/// every release.
pub fn fnv64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for p in parts {
        for b in p.iter().chain(std::iter::once(&0xffu8)) {
            h ^= *b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    h
}

/// A member's ID, derived from what every member knows about it at bootstrap.
pub fn member_id(name: &str, peer_urls: &[String], token: &str) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let joined = urls.join(",");
    fnv64(&[name.as_bytes(), joined.as_bytes(), token.as_bytes()]).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_defaults_and_flag_names() {
        let c = Config::default();
        assert_eq!(c.name, "default");
        assert_eq!(c.data_dir(), PathBuf::from("default.concord"));
        assert_eq!(c.listen_client_urls, ["http://localhost:2379"]);
        assert_eq!(c.max_request_bytes, 1572864);
        assert_eq!(
            c.initial_members().unwrap(),
            [("default".to_string(), vec!["http://localhost:2380".to_string()])]
        );

        let c = Config::try_parse_from([
            "concord",
            "--name",
            "n2",
            "--initial-cluster",
            "n1=http://127.0.0.1:1,n2=http://127.0.0.1:2",
            "--initial-cluster-state=existing",
            "--snapshot-count",
            "5",
        ])
        .unwrap();
        assert_eq!(c.initial_members().unwrap().len(), 2);
        assert_eq!(c.initial_cluster_state, ClusterState::Existing);
    }

    #[test]
    fn go_durations() {
        use std::time::Duration;
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(
            parse_duration("10").is_err() && parse_duration("").is_err() && parse_duration("5x").is_err()
        );
        assert_eq!(Config::default().experimental_watch_progress_notify_interval, Duration::from_secs(600));
    }

    #[test]
    fn etcd_environment_variables_set_flags() {
        // clap reads the environment at parse time; set only variables no other test reads.
        std::env::set_var("ETCD_INITIAL_CLUSTER_TOKEN", "from-env");
        std::env::set_var("ETCD_MAX_TXN_OPS", "7");
        let c = Config::try_parse_from(["concord", "--max-txn-ops", "9"]).unwrap();
        assert_eq!(c.initial_cluster_token, "from-env");
        assert_eq!(c.max_txn_ops, 9, "a flag wins over the environment");
        std::env::remove_var("ETCD_INITIAL_CLUSTER_TOKEN");
        std::env::remove_var("ETCD_MAX_TXN_OPS");
    }

    #[test]
    fn unknown_flags_are_refused_by_name() {
        let err = Config::try_parse_from(["concord", "--auto-compaction-retention", "1"]).unwrap_err();
        assert!(err.to_string().contains("--auto-compaction-retention"), "{err}");
    }

    #[test]
    fn bad_initial_cluster_is_refused() {
        let c =
            Config::try_parse_from(["concord", "--name", "x", "--initial-cluster", "a=http://127.0.0.1:1"])
                .unwrap();
        assert!(c.initial_members().is_err());
        let c = Config::try_parse_from(["concord", "--initial-cluster", "default=nope"]).unwrap();
        assert!(c.initial_members().is_err());
    }

    #[test]
    fn ids_are_stable() {
        let a = member_id("n1", &["http://127.0.0.1:2380".into()], "tok");
        assert_eq!(a, member_id("n1", &["http://127.0.0.1:2380".into()], "tok"));
        assert_ne!(a, member_id("n1", &["http://127.0.0.1:2380".into()], "other"));
    }
}
