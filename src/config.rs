//! Flags, named and defaulted like etcd's, so an etcd command line starts concord unchanged.

use std::path::PathBuf;

use clap::{CommandFactory, Parser, ValueEnum};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ClusterState {
    New,
    Existing,
}

/// etcd's flags. As with Go's flag package, a flag given twice takes its last value (etcd's own e2e
/// suite passes `--client-cert-auth` twice).
#[derive(Clone, Debug, Parser)]
#[command(
    name = "concord",
    version,
    about = "An etcd-compatible coordination server",
    args_override_self = true
)]
pub struct Config {
    /// Human-readable name for this member.
    #[arg(long, env = "ETCD_NAME", default_value = "default")]
    pub name: String,
    /// Path to the data directory (default: ${name}.concord).
    #[arg(long, env = "ETCD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Path to a dedicated WAL directory (default: ${data-dir}/wal): the Raft log goes there, as etcd's
    /// WAL does, so it can sit on a disk of its own.
    #[arg(long, env = "ETCD_WAL_DIR")]
    pub wal_dir: Option<PathBuf>,
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
    /// More URLs that answer /metrics and /health (and /livez, /readyz, /version) only.
    #[arg(long, env = "ETCD_LISTEN_METRICS_URLS", value_delimiter = ',')]
    pub listen_metrics_urls: Vec<String>,
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
    /// Path to the client certificate revocation list file.
    #[arg(long, env = "ETCD_CLIENT_CRL_FILE")]
    pub client_crl_file: Option<PathBuf>,
    /// Allowed TLS hostname (a name in the certificate) of a client certificate.
    #[arg(long, env = "ETCD_CLIENT_CERT_ALLOWED_HOSTNAME")]
    pub client_cert_allowed_hostname: Option<String>,
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
    /// Path to the peer certificate revocation list file.
    #[arg(long, env = "ETCD_PEER_CRL_FILE")]
    pub peer_crl_file: Option<PathBuf>,
    /// Allowed CN for inter peer authentication.
    #[arg(long, env = "ETCD_PEER_CERT_ALLOWED_CN")]
    pub peer_cert_allowed_cn: Option<String>,
    /// Allowed TLS hostname for inter peer authentication.
    #[arg(long, env = "ETCD_PEER_CERT_ALLOWED_HOSTNAME")]
    pub peer_cert_allowed_hostname: Option<String>,
    /// Comma-separated list of supported TLS cipher suites between client/server and peers (empty will
    /// be auto-populated by Go).
    #[arg(long, env = "ETCD_CIPHER_SUITES", default_value = "")]
    pub cipher_suites: String,
    /// Maximum concurrent streams that each client can open at a time.
    #[arg(long, env = "ETCD_MAX_CONCURRENT_STREAMS", default_value_t = u32::MAX)]
    pub max_concurrent_streams: u32,
    /// Client TLS using generated certificates (when --cert-file is not given).
    #[arg(long, env = "ETCD_AUTO_TLS", default_value_t = false, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub auto_tls: bool,
    /// Peer TLS using generated certificates (when --peer-cert-file is not given).
    #[arg(long, env = "ETCD_PEER_AUTO_TLS", default_value_t = false, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub peer_auto_tls: bool,
    /// The validity period, in years, of the certificates --auto-tls and --peer-auto-tls make.
    #[arg(long, env = "ETCD_SELF_SIGNED_CERT_VALIDITY", default_value_t = 1)]
    pub self_signed_cert_validity: u32,
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
    /// Auto compaction retention for the key-value history (0: no auto compaction). In periodic mode a
    /// Go duration, or a number of hours; in revision mode a number of revisions.
    #[arg(long, env = "ETCD_AUTO_COMPACTION_RETENTION", default_value = "0")]
    pub auto_compaction_retention: String,
    /// How `--auto-compaction-retention` is read: `periodic` (a duration) or `revision` (a count).
    #[arg(long, env = "ETCD_AUTO_COMPACTION_MODE", default_value = "periodic")]
    pub auto_compaction_mode: String,
    /// The leader records what is left of each lease longer than the checkpoint interval, so that a
    /// change of leader does not give leases their whole TTL again.
    #[arg(long, env = "ETCD_EXPERIMENTAL_ENABLE_LEASE_CHECKPOINT", default_value_t = false, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub experimental_enable_lease_checkpoint: bool,
    /// How often a lease is checkpointed (a Go duration; etcd's fixed 5 minutes unless given).
    #[arg(long, env = "ETCD_EXPERIMENTAL_LEASE_CHECKPOINT_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    pub experimental_lease_checkpoint_interval: std::time::Duration,
    /// Force to create a new one-member cluster: a member whose cluster lost its quorum for good
    /// restarts as its only voter, with its data (the other members are removed).
    #[arg(long, env = "ETCD_FORCE_NEW_CLUSTER", default_value_t = false, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub force_new_cluster: bool,
    /// Auth token type: `simple` (random tokens every member learns through the log) or
    /// `jwt,pub-key=FILE,priv-key=FILE,sign-method=ES256,ttl=5m` (signed tokens).
    #[arg(long, env = "ETCD_AUTH_TOKEN", default_value = "simple", value_parser = parse_auth_token)]
    pub auth_token: String,
    /// Time (in seconds) a simple token lives after its last use.
    #[arg(long, env = "ETCD_AUTH_TOKEN_TTL", default_value_t = 300)]
    pub auth_token_ttl: u64,
    /// The cost of the bcrypt hashes of passwords (4 to 31).
    #[arg(long, env = "ETCD_BCRYPT_COST", default_value_t = crate::auth::DEFAULT_BCRYPT_COST)]
    pub bcrypt_cost: u32,
    /// Dial these members at these URLs instead of their advertised peer URLs: name=url,... or
    /// peer-url=url,... Not an etcd flag: the fault suite routes each directed peer link through a proxy
    /// of its own with it.
    #[arg(long, value_delimiter = ',', value_parser = parse_name_url)]
    pub experimental_peer_dial_urls: Vec<(String, String)>,
    /// Log level: debug, info, warn, error.
    #[arg(long, env = "ETCD_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Log format: text, or json (one JSON object per line, in etcd's zap layout). Default: text, or
    /// json with `--logger=zap`.
    #[arg(long, env = "ETCD_LOG_FORMAT", value_parser = ["text", "json"])]
    pub log_format: Option<String>,
    /// etcd's logger: `zap` logs JSON lines (as `--log-format=json`), `capnslog` text.
    #[arg(long, env = "ETCD_LOGGER", value_parser = ["zap", "capnslog"])]
    pub logger: Option<String>,
    /// Where logs go: `default` or `stderr`, `stdout`, or files to append to (comma-separated).
    #[arg(
        long,
        alias = "log-output",
        env = "ETCD_LOG_OUTPUTS",
        value_delimiter = ',',
        default_value = "default"
    )]
    pub log_outputs: Vec<String>,
    /// Enable debug-level logging (etcd 3.4's flag; the same as `--log-level=debug`).
    #[arg(long, env = "ETCD_DEBUG", default_value_t = false, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub debug: bool,
    /// etcd's v2 API. concord serves the v3 API only (as etcd 3.6 does), so only `false` is taken.
    #[arg(long, env = "ETCD_ENABLE_V2", default_value_t = false, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub enable_v2: bool,
    /// Serve the gRPC gateway (the JSON API under /v3/) on the client port.
    #[arg(long, env = "ETCD_ENABLE_GRPC_GATEWAY", default_value_t = true, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub enable_grpc_gateway: bool,
    /// Ping a client connection idle for this long (a Go duration; 0 never pings).
    #[arg(long, env = "ETCD_GRPC_KEEPALIVE_INTERVAL", default_value = "2h", value_parser = parse_duration)]
    pub grpc_keepalive_interval: std::time::Duration,
    /// Close a client connection whose ping is not answered within this (a Go duration).
    #[arg(long, env = "ETCD_GRPC_KEEPALIVE_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub grpc_keepalive_timeout: std::time::Duration,
    #[command(flatten)]
    pub ignored: Ignored,
    /// Path to a configuration file with etcd's YAML keys; when given, the other flags are ignored.
    #[arg(long, env = "ETCD_CONFIG_FILE")]
    pub config_file: Option<PathBuf>,
}

/// etcd flags for parts of etcd that concord does not have, or that it has in one fixed way: taken with
/// etcd's syntax so that an etcd command line or configuration file starts concord unchanged, and
/// otherwise ignored (each one given is logged at start, with why; see [`Ignored::given`]).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Ignored {
    #[arg(long, env = "ETCD_MAX_SNAPSHOTS", hide = true)]
    pub max_snapshots: Option<String>,
    #[arg(long, env = "ETCD_MAX_WALS", hide = true)]
    pub max_wals: Option<String>,
    #[arg(long, env = "ETCD_BACKEND_BATCH_INTERVAL", hide = true)]
    pub backend_batch_interval: Option<String>,
    #[arg(long, env = "ETCD_BACKEND_BATCH_LIMIT", hide = true)]
    pub backend_batch_limit: Option<String>,
    #[arg(long, env = "ETCD_EXPERIMENTAL_BACKEND_BBOLT_FREELIST_TYPE", hide = true)]
    pub experimental_backend_bbolt_freelist_type: Option<String>,
    #[arg(long, env = "ETCD_EXPERIMENTAL_COMPACTION_BATCH_LIMIT", hide = true)]
    pub experimental_compaction_batch_limit: Option<String>,
    #[arg(long, env = "ETCD_EXPERIMENTAL_WARNING_APPLY_DURATION", hide = true)]
    pub experimental_warning_apply_duration: Option<String>,
    #[arg(long, env = "ETCD_INITIAL_ELECTION_TICK_ADVANCE", hide = true, num_args = 0..=1,
          default_missing_value = "true")]
    pub initial_election_tick_advance: Option<String>,
    #[arg(long, env = "ETCD_PRE_VOTE", hide = true, num_args = 0..=1, default_missing_value = "true")]
    pub pre_vote: Option<String>,
    #[arg(long, env = "ETCD_GRPC_KEEPALIVE_MIN_TIME", hide = true)]
    pub grpc_keepalive_min_time: Option<String>,
    #[arg(long, env = "ETCD_LOG_PACKAGE_LEVELS", hide = true)]
    pub log_package_levels: Option<String>,
    #[arg(long, env = "ETCD_METRICS", hide = true, value_parser = ["basic", "extensive"])]
    pub metrics: Option<String>,
    #[arg(long, env = "ETCD_ENABLE_PPROF", hide = true, num_args = 0..=1, default_missing_value = "true")]
    pub enable_pprof: Option<String>,
    #[arg(long, env = "ETCD_EXPERIMENTAL_ENABLE_LEASE_CHECKPOINT_PERSIST", hide = true, num_args = 0..=1,
          default_missing_value = "true")]
    pub experimental_enable_lease_checkpoint_persist: Option<String>,
}

impl Ignored {
    /// The flags given, each with why it changes nothing (for the log at start).
    pub fn given(&self) -> Vec<(String, &'static str)> {
        let reasons = [
            (&self.max_snapshots, "max-snapshots", "concord keeps one snapshot file"),
            (&self.max_wals, "max-wals", "concord removes Raft log segments once a snapshot covers them"),
            (&self.backend_batch_interval, "backend-batch-interval", "concord has no bbolt"),
            (&self.backend_batch_limit, "backend-batch-limit", "concord has no bbolt"),
            (
                &self.experimental_backend_bbolt_freelist_type,
                "experimental-backend-bbolt-freelist-type",
                "concord has no bbolt",
            ),
            (
                &self.experimental_compaction_batch_limit,
                "experimental-compaction-batch-limit",
                "concord compacts in one step",
            ),
            (
                &self.experimental_warning_apply_duration,
                "experimental-warning-apply-duration",
                "no slow-apply warning",
            ),
            (
                &self.initial_election_tick_advance,
                "initial-election-tick-advance",
                "a lone voter elects itself at once",
            ),
            (
                &self.pre_vote,
                "pre-vote",
                "openraft has no pre-vote; a follower that hears from its leader refuses to vote",
            ),
            (&self.grpc_keepalive_min_time, "grpc-keepalive-min-time", "client pings are not limited"),
            (&self.log_package_levels, "log-package-levels", "see --log-level"),
            (&self.metrics, "metrics", "concord's /metrics has one set of metrics"),
            (&self.enable_pprof, "enable-pprof", "Go's profiler"),
            (
                &self.experimental_enable_lease_checkpoint_persist,
                "experimental-enable-lease-checkpoint-persist",
                "lease checkpoints are always kept on disk",
            ),
        ];
        reasons
            .into_iter()
            .filter_map(|(v, flag, why)| Some((format!("--{flag}={}", v.as_ref()?), why)))
            .collect()
    }
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

/// The hosts of `urls` (for a self-signed certificate's names), `localhost` among them.
fn url_hosts(urls: &[String]) -> Vec<String> {
    let mut hosts: Vec<String> = urls.iter().filter_map(|u| url_host(u)).collect();
    hosts.push("localhost".into());
    hosts.sort();
    hosts.dedup();
    hosts
}

/// `--auth-token`: the token providers concord has (a JWT's keys are read when the server starts).
fn parse_auth_token(s: &str) -> Result<String, String> {
    match s.split(',').next() {
        Some("simple" | "jwt") => Ok(s.to_string()),
        _ => Err(format!("unknown token type {s:?} (expected simple or jwt,...)")),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--config-file {0}: {1}")]
    File(PathBuf, String),
    #[error("--initial-cluster: {0}")]
    InitialCluster(String),
    #[error("invalid URL {0:?}: expected http://host:port or https://host:port")]
    Url(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error(transparent)]
    Jwt(#[from] crate::auth::JwtError),
    #[error("--enable-v2: concord serves etcd's v3 API only, as etcd 3.6 does")]
    EnableV2,
    #[error("unknown auto-compaction-mode {0:?}")]
    AutoCompactionMode(String),
    #[error("error parsing CompactionRetention: time: {0}")]
    AutoCompactionRetention(String),
}

impl Config {
    /// Reads etcd's YAML configuration file: each key is the flag of the same name, and the
    /// `client-transport-security` / `peer-transport-security` sections hold the TLS flags. Keys concord
    /// does not support are refused by name unless they hold etcd's default (a sample etcd config file,
    /// which lists every key, works as it is).
    pub fn from_yaml(path: &std::path::Path) -> Result<Config, ConfigError> {
        let err = |e: String| ConfigError::File(path.to_path_buf(), e);
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let doc: serde_yaml::Mapping = serde_yaml::from_str(&text).map_err(|e| err(e.to_string()))?;
        let mut args = vec!["concord".to_string()];
        for (key, value) in &doc {
            let key = key.as_str().ok_or_else(|| err(format!("key {key:?} is not a string")))?;
            match (key, value) {
                (
                    "client-transport-security" | "peer-transport-security",
                    serde_yaml::Value::Mapping(section),
                ) => {
                    let prefix = if key.starts_with("peer") { "peer-" } else { "" };
                    for (k, v) in section {
                        let k = k.as_str().ok_or_else(|| err(format!("{key}: a key is not a string")))?;
                        yaml_flag(&format!("{prefix}{k}"), v, &mut args).map_err(err)?;
                    }
                }
                _ => yaml_flag(key, value, &mut args).map_err(err)?,
            }
        }
        let config = Config::try_parse_from(&args).map_err(|e| err(e.to_string()))?;
        Ok(Config { config_file: Some(path.to_path_buf()), ..config })
    }

    /// Whether logs are JSON lines: `--log-format`, else etcd's `--logger` (zap's lines are JSON).
    pub fn log_json(&self) -> bool {
        match &self.log_format {
            Some(format) => format == "json",
            None => self.logger.as_deref() == Some("zap"),
        }
    }

    /// The client side's TLS files (`--cert-file`, ...), or with `--auto-tls` and no certificate given
    /// a self-signed one in the data dir (etcd's `fixtures/client`).
    pub fn client_tls(&self) -> Result<crate::tls::Tls, ConfigError> {
        if self.auto_tls && self.cert_file.is_none() {
            let dir = self.data_dir().join("fixtures").join("client");
            return crate::tls::Tls::auto(
                &dir,
                &url_hosts(&self.listen_client_urls),
                self.self_signed_cert_validity,
            )?
            .with_cipher_suites(&self.cipher_suites());
        }
        crate::tls::Tls::load(crate::tls::Flags {
            prefix: "",
            cert: self.cert_file.clone(),
            key: self.key_file.clone(),
            ca: self.trusted_ca_file.clone(),
            crl: self.client_crl_file.clone(),
            client_cert_auth: self.client_cert_auth,
            allowed_cn: None,
            allowed_hostname: self.client_cert_allowed_hostname.clone(),
        })?
        .with_cipher_suites(&self.cipher_suites())
    }

    /// `--cipher-suites`, one name per entry.
    fn cipher_suites(&self) -> Vec<String> {
        self.cipher_suites.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
    }

    /// The peer side's TLS files (`--peer-cert-file`, ...), or with `--peer-auto-tls` a self-signed one.
    pub fn peer_tls(&self) -> Result<crate::tls::Tls, ConfigError> {
        if self.peer_auto_tls && self.peer_cert_file.is_none() {
            let dir = self.data_dir().join("fixtures").join("peer");
            return crate::tls::Tls::auto(
                &dir,
                &url_hosts(&self.listen_peer_urls),
                self.self_signed_cert_validity,
            )?
            .with_cipher_suites(&self.cipher_suites());
        }
        crate::tls::Tls::load(crate::tls::Flags {
            prefix: "peer-",
            cert: self.peer_cert_file.clone(),
            key: self.peer_key_file.clone(),
            ca: self.peer_trusted_ca_file.clone(),
            crl: self.peer_crl_file.clone(),
            client_cert_auth: self.peer_client_cert_auth,
            allowed_cn: self.peer_cert_allowed_cn.clone(),
            allowed_hostname: self.peer_cert_allowed_hostname.clone(),
        })?
        .with_cipher_suites(&self.cipher_suites())
    }

    /// The JWT provider `--auth-token jwt,...` describes; `None` for simple tokens.
    pub fn jwt(&self) -> Result<Option<crate::auth::Jwt>, ConfigError> {
        match self.auth_token.strip_prefix("jwt") {
            Some(options) => Ok(Some(crate::auth::Jwt::from_options(options.trim_start_matches(','))?)),
            None => Ok(None),
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| PathBuf::from(format!("{}.concord", self.name)))
    }

    /// How often leases are checkpointed, if they are: `--experimental-lease-checkpoint-interval`, with
    /// 0 meaning etcd's 5 minutes, as in etcd.
    pub fn lease_checkpoints(&self) -> Option<std::time::Duration> {
        let every = self.experimental_lease_checkpoint_interval;
        let every = if every.is_zero() { std::time::Duration::from_secs(300) } else { every };
        self.experimental_enable_lease_checkpoint.then_some(every)
    }

    /// `--auto-compaction-mode` and `--auto-compaction-retention`, read as etcd reads them (a bare
    /// number is hours in periodic mode, revisions in revision mode; a duration in revision mode counts
    /// its nanoseconds, as etcd's does). `None`: no auto compaction.
    pub fn auto_compaction(&self) -> Result<Option<crate::compactor::Mode>, ConfigError> {
        use crate::compactor::Mode;
        let mode = self.auto_compaction_mode.as_str();
        if !matches!(mode, "periodic" | "revision") {
            return Err(ConfigError::AutoCompactionMode(mode.to_string()));
        }
        let retention = self.auto_compaction_retention.trim();
        let parsed = match retention.parse::<i64>() {
            Ok(n) if n >= 0 && mode == "revision" => Mode::Revision(n),
            Ok(n) if n >= 0 => {
                Mode::Periodic(std::time::Duration::from_secs((n as u64).saturating_mul(3600)))
            }
            _ => {
                let d = parse_duration(retention).map_err(ConfigError::AutoCompactionRetention)?;
                match mode {
                    "revision" => Mode::Revision(d.as_nanos().min(i64::MAX as u128) as i64),
                    _ => Mode::Periodic(d),
                }
            }
        };
        Ok(match parsed {
            Mode::Revision(0) => None,
            Mode::Periodic(d) if d.is_zero() => None,
            m => Some(m),
        })
    }

    /// Where the Raft log goes: `--wal-dir`, or `wal` in the data dir.
    pub fn wal_dir(&self) -> PathBuf {
        self.wal_dir.clone().unwrap_or_else(|| self.data_dir().join("wal"))
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
            // etcd's words (its embed config and etcdutl's restore say the same).
            return Err(ConfigError::InitialCluster(format!(
                "couldn't find local name {:?} in the initial cluster configuration",
                self.name
            )));
        }
        Ok(members)
    }
}

/// One YAML key as a flag. A key that is not a concord flag is refused unless it holds a default.
fn yaml_flag(key: &str, value: &serde_yaml::Value, args: &mut Vec<String>) -> Result<(), String> {
    use serde_yaml::Value;
    let text = match value {
        Value::Null => return Ok(()),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Sequence(items) => {
            items.iter().filter_map(|i| i.as_str().map(str::to_string)).collect::<Vec<_>>().join(",")
        }
        Value::Mapping(_) | Value::Tagged(_) => return Err(format!("{key}: unexpected value")),
    };
    let known = Config::command().get_arguments().any(|a| a.get_long() == Some(key)) && key != "config-file";
    if known {
        args.push(format!("--{key}={text}"));
        return Ok(());
    }
    // etcd's sample configuration lists every key with its default; those mean "nothing to do".
    if matches!(text.as_str(), "" | "false" | "0" | "0s") {
        return Ok(());
    }
    Err(format!("{key}: {text:?} is not supported by concord"))
}

/// `http://host:port` → `host:port`.
/// The host of a URL, without the brackets of an IPv6 address.
pub fn url_host(url: &str) -> Option<String> {
    let hp = host_port(url).ok()?;
    hp.rsplit_once(':').map(|(h, _)| h.trim_matches(['[', ']']).to_string())
}

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

/// A member's id as etcd derives it from what every member knows at bootstrap (`membership.NewMember`):
/// the first 8 bytes, big-endian, of the SHA-1 of its sorted peer URLs and the cluster token. A cluster
/// started with etcd's flags so has etcd's ids (the default member is 8e9e05c52164694d, as in etcd's
/// docs), and tools that name members by id see the same ones.
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    use sha1::Digest;
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let digest = sha1::Sha1::new().chain_update(urls.concat()).chain_update(token).finalize();
    u64::from_be_bytes(digest[..8].try_into().unwrap_or_default()).max(1)
}

/// The cluster's id as etcd derives it (`RaftCluster.genID`): the SHA-1 of its members' sorted ids.
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    use sha1::Digest;
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let digest = ids.iter().fold(sha1::Sha1::new(), |h, id| h.chain_update(id.to_be_bytes())).finalize();
    u64::from_be_bytes(digest[..8].try_into().unwrap_or_default()).max(1)
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
    fn auto_compaction_is_read_as_etcd_reads_it() {
        use crate::compactor::Mode;
        let read = |mode: &str, retention: &str| {
            let c = Config {
                auto_compaction_mode: mode.into(),
                auto_compaction_retention: retention.into(),
                ..Config::default()
            };
            c.auto_compaction().map_err(|e| e.to_string())
        };
        use std::time::Duration;
        let hours = |h: u64| Ok(Some(Mode::Periodic(Duration::from_secs(h * 3600))));
        assert_eq!(Config::default().auto_compaction().unwrap(), None);
        assert_eq!(read("periodic", "0"), Ok(None));
        assert_eq!(read("periodic", "2"), hours(2));
        assert_eq!(read("periodic", "90m"), Ok(Some(Mode::Periodic(Duration::from_secs(5400)))));
        assert_eq!(read("revision", "1000"), Ok(Some(Mode::Revision(1000))));
        assert_eq!(read("revision", "0"), Ok(None));
        // etcd reads a duration in revision mode too, and keeps its nanoseconds as the count.
        assert_eq!(read("revision", "1s"), Ok(Some(Mode::Revision(1_000_000_000))));
        assert_eq!(read("foo", "1"), Err("unknown auto-compaction-mode \"foo\"".into()));
        assert_eq!(
            read("periodic", "bogus"),
            Err("error parsing CompactionRetention: time: invalid duration \"bogus\"".into())
        );
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
    fn etcd_config_files_are_read_key_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etcd.yaml");
        let yaml = "name: 'n1'\ndata-dir: /tmp/n1\nwal-dir:\nsnapshot-count: 5000\nheartbeat-interval: 50\n\
                    listen-client-urls: http://127.0.0.1:2379\ninitial-cluster-state: 'new'\nenable-v2: false\n\
                    client-transport-security:\n  cert-file: /c.pem\n  client-cert-auth: true\n  auto-tls: false\n\
                    peer-transport-security:\n  trusted-ca-file: /ca.pem\nlogger: zap\n";
        std::fs::write(&path, yaml).unwrap();
        let c = Config::from_yaml(&path).unwrap();
        assert_eq!((c.name.as_str(), c.snapshot_count, c.heartbeat_interval), ("n1", 5000, 50));
        assert_eq!(c.data_dir(), PathBuf::from("/tmp/n1"));
        assert_eq!(c.cert_file, Some(PathBuf::from("/c.pem")));
        assert!(c.client_cert_auth);
        assert_eq!(c.peer_trusted_ca_file, Some(PathBuf::from("/ca.pem")));
        std::fs::write(&path, "name: n1\ndiscovery: 'https://discovery.etcd.io/x'\n").unwrap();
        let err = Config::from_yaml(&path).unwrap_err().to_string();
        assert!(err.contains("discovery"), "{err}");
        std::fs::write(&path, "name: n1\nauto-compaction-retention: '1'\n").unwrap();
        assert_eq!(Config::from_yaml(&path).unwrap().auto_compaction_retention, "1");
    }

    #[test]
    fn unknown_flags_are_refused_by_name() {
        let err =
            Config::try_parse_from(["concord", "--discovery", "https://discovery.etcd.io/x"]).unwrap_err();
        assert!(err.to_string().contains("--discovery"), "{err}");
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
    fn a_flag_given_twice_takes_its_last_value_as_in_go() {
        let c =
            Config::try_parse_from(["concord", "--client-cert-auth", "--name", "a", "--client-cert-auth"]);
        assert!(c.expect("a repeated flag").client_cert_auth);
        let c = Config::try_parse_from(["concord", "--name", "a", "--name", "b"]).expect("a repeated flag");
        assert_eq!(c.name, "b");
    }

    #[test]
    fn ids_are_etcds() {
        // etcd's well-known default member and cluster, and those it gave other flags (etcd 3.5.1 run
        // with the same --initial-advertise-peer-urls and --initial-cluster-token).
        let default = member_id(&["http://localhost:2380".into()], "etcd-cluster");
        assert_eq!((default, cluster_id(&[default])), (0x8e9e05c52164694d, 0xcdf818194e3a8c32));
        let m = member_id(&["http://127.0.0.1:26380".into()], "etcd-cluster");
        assert_eq!((m, cluster_id(&[m])), (0x8876210cd96651c6, 0x7e1de051b63089b8));
        assert_ne!(m, member_id(&["http://127.0.0.1:26380".into()], "other"));
        let urls = ["http://b:2380".to_string(), "http://a:2380".to_string()];
        assert_eq!(member_id(&urls, "t"), member_id(&[urls[1].clone(), urls[0].clone()], "t"));
    }
}
