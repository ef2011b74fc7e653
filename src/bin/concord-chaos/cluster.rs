//! The cluster under test: `n` concord processes on 127.0.0.1, each dialling its peers through the
//! fault proxy, each with its own data dir and log under the run's folder.

use std::fs::OpenOptions;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use concord::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use concord::pb::etcdserverpb::StatusRequest;
use tonic::transport::{Channel, Endpoint};

use crate::proxy::Net;

pub struct Member {
    pub name: String,
    pub client_port: u16,
    /// The peer URL it advertises: how the membership names it.
    peer_url: String,
    data_dir: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    bin: PathBuf,
    child: Option<Child>,
    paused: bool,
    /// The strace that fails the member's syncs, while a disk fault lasts.
    failing_disk: Option<Child>,
}

impl Member {
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    pub fn start(&mut self) -> Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        let log = OpenOptions::new().create(true).append(true).open(&self.log)?;
        let child = Command::new(&self.bin)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL: nothing of the shutdown path runs, as in a crash or power loss of the process.
    pub fn kill(&mut self) {
        self.mend_disk();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.paused = false;
    }

    /// A failing disk: from now on every `fdatasync` and `fsync` of the member fails with EIO (strace
    /// attached to all its threads). A member must stop at its first failed sync without acknowledging
    /// what it held, as etcd does; one still running at the heal is killed and restarted with the rest.
    pub fn fail_disk(&mut self) -> Result<()> {
        let Some(c) = &self.child else { return Ok(()) };
        let inject = "inject=fdatasync,fsync:error=EIO";
        let strace = Command::new("strace")
            .args(["-qq", "-f", "-e", "trace=fdatasync,fsync", "-e", inject, "-o", "/dev/null", "-p"])
            .arg(c.id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting strace (the disk nemesis needs it)")?;
        self.failing_disk = Some(strace);
        Ok(())
    }

    /// Ends a disk fault: the member (stopped by it, or not) is killed, to be started again. One that
    /// is still running was not reached by the fault (no sync while it lasted, or strace could not
    /// attach): said on stderr, as a fault that did nothing.
    fn mend_disk(&mut self) {
        if let Some(mut strace) = self.failing_disk.take() {
            let running = self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)));
            if running {
                let attached = matches!(strace.try_wait(), Ok(None));
                eprintln!(
                    "disk fault under {}: still running at the heal (strace attached: {attached})",
                    self.name
                );
            }
            let _ = strace.kill();
            let _ = strace.wait();
            if let Some(mut c) = self.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// SIGSTOP: the process keeps its sockets but answers nothing, as under a long GC or VM pause.
    pub fn pause(&mut self) {
        if self.signal("-STOP") {
            self.paused = true;
        }
    }

    pub fn resume(&mut self) {
        if self.paused {
            self.signal("-CONT");
            self.paused = false;
        }
    }

    fn signal(&self, sig: &str) -> bool {
        let Some(c) = &self.child else { return false };
        Command::new("kill").args([sig, &c.id().to_string()]).status().is_ok_and(|s| s.success())
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.resume();
        self.kill();
    }
}

pub struct Cluster {
    pub members: Vec<Member>,
    pub net: Net,
    channels: Vec<Channel>,
    /// A member may have been removed since the last heal.
    maybe_removed: bool,
}

/// `n` distinct free ports on 127.0.0.1, below the kernel's ephemeral range (32768 and up by default):
/// a port from that range can be handed to some outgoing connection before its member binds it, or
/// while the member is down between a kill and its restart.
/// Member `i`'s name (and the name of its data dir and log under the run's folder).
pub fn member_name(i: usize) -> String {
    format!("n{}", i + 1)
}

fn free_ports(n: usize) -> Result<Vec<u16>> {
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    // A different starting point per harness keeps concurrent ones apart; binding proves a port free.
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.subsec_nanos()
        ^ std::process::id();
    let mut held = Vec::new();
    for i in 0..SPAN {
        if held.len() == n {
            break;
        }
        let port = (LOW + seed.wrapping_add(i) % SPAN) as u16;
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            held.push(l);
        }
    }
    anyhow::ensure!(held.len() == n, "no {n} free ports between {LOW} and {}", LOW + SPAN);
    held.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// What the cluster runs.
#[derive(Clone, Debug)]
pub enum Server {
    Concord(PathBuf),
    /// Real etcd, to validate the harness: it must pass the same workloads.
    Etcd(PathBuf),
}

impl Cluster {
    /// Starts `n` members named n1…nN with small timeouts and `--snapshot-count snapshot_count`, so that
    /// elections, snapshots and log purges all happen within a short run, and `extra` flags.
    pub async fn start(
        server: &Server,
        dir: &Path,
        n: usize,
        snapshot_count: u64,
        extra: &[String],
    ) -> Result<Cluster> {
        let ports = free_ports(2 * n)?;
        let (client_ports, peer_ports) = ports.split_at(n);
        let name = member_name;
        // concord dials each peer through a proxy of its own; etcd dials the URL a peer advertises, so
        // each etcd member advertises the proxy in front of it.
        let (net, bin, advertised) = match server {
            Server::Concord(bin) => {
                let urls = peer_ports.iter().map(|p| format!("http://127.0.0.1:{p}")).collect::<Vec<_>>();
                (Net::start(peer_ports).await?, bin, urls)
            }
            Server::Etcd(bin) => {
                let net = Net::start_by_header(peer_ports).await?;
                let urls = (0..n).map(|j| net.dial_url((j + 1) % n, j)).collect();
                (net, bin, urls)
            }
        };
        let initial_cluster =
            (0..n).map(|i| format!("{}={}", name(i), advertised[i])).collect::<Vec<_>>().join(",");
        let mut members = Vec::new();
        for i in 0..n {
            let client = format!("http://127.0.0.1:{}", client_ports[i]);
            let mut args: Vec<String> = vec![
                "--name".into(),
                name(i),
                "--data-dir".into(),
                dir.join(name(i)).display().to_string(),
                "--listen-client-urls".into(),
                client.clone(),
                "--advertise-client-urls".into(),
                client,
                "--listen-peer-urls".into(),
                format!("http://127.0.0.1:{}", peer_ports[i]),
                "--initial-advertise-peer-urls".into(),
                advertised[i].clone(),
                "--initial-cluster".into(),
                initial_cluster.clone(),
                "--initial-cluster-token".into(),
                "concord-chaos".into(),
                "--heartbeat-interval".into(),
                "50".into(),
                "--election-timeout".into(),
                "500".into(),
                "--snapshot-count".into(),
                snapshot_count.to_string(),
            ];
            args.extend(extra.iter().cloned());
            if matches!(server, Server::Concord(_)) && n > 1 {
                // Keyed by peer URL, which also names a member re-added (under a new id) by the
                // membership nemesis before it has published its name.
                let dial =
                    (0..n).filter(|&j| j != i).map(|j| format!("{}={}", advertised[j], net.dial_url(i, j)));
                args.push("--experimental-peer-dial-urls".into());
                args.push(dial.collect::<Vec<_>>().join(","));
            }
            let mut m = Member {
                name: name(i),
                client_port: client_ports[i],
                peer_url: advertised[i].clone(),
                data_dir: dir.join(name(i)),
                args,
                log: dir.join(format!("{}.log", name(i))),
                bin: bin.clone(),
                child: None,
                paused: false,
                failing_disk: None,
            };
            m.start()?;
            members.push(m);
        }
        let channels = members
            .iter()
            .map(|m| {
                Ok(Endpoint::from_shared(m.endpoint())?
                    .connect_timeout(Duration::from_millis(500))
                    .connect_lazy())
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Cluster { members, net, channels, maybe_removed: false })
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::endpoint).collect()
    }

    /// The member that a reachable member names as leader, if any.
    pub async fn leader(&self) -> Option<usize> {
        let mut ids = Vec::new();
        let mut leader = None;
        for (i, ch) in self.channels.iter().enumerate() {
            if !self.members[i].is_running() || self.members[i].is_paused() {
                continue;
            }
            let mut c = MaintenanceClient::new(ch.clone());
            let Ok(Ok(s)) =
                tokio::time::timeout(Duration::from_millis(500), c.status(StatusRequest {})).await
            else {
                continue;
            };
            let s = s.into_inner();
            ids.push((i, s.header.map_or(0, |h| h.member_id)));
            if s.leader != 0 {
                leader = Some(s.leader);
            }
        }
        let leader = leader?;
        ids.into_iter().find(|(_, id)| *id == leader).map(|(i, _)| i)
    }

    /// Heals every fault: links up, paused members resumed, removed members added back, killed members
    /// restarted.
    pub async fn heal(&mut self) -> Result<()> {
        self.net.heal();
        for m in &mut self.members {
            m.resume();
            m.mend_disk();
            m.start()?;
        }
        if self.maybe_removed {
            self.maybe_removed = !self.rejoin_removed().await;
        }
        Ok(())
    }

    /// The members as `via` lists them: (id, peer URLs).
    async fn member_list(&self, via: usize) -> Result<Vec<(u64, Vec<String>)>> {
        use concord::pb::etcdserverpb::{cluster_client::ClusterClient, MemberListRequest};
        let mut cluster = ClusterClient::new(self.channels[via].clone());
        let list = cluster.member_list(MemberListRequest::default());
        let list = tokio::time::timeout(Duration::from_secs(2), list).await??.into_inner();
        Ok(list.members.into_iter().map(|m| (m.id, m.peer_ur_ls)).collect())
    }

    /// The id of member `target`, as `via` lists it.
    async fn member_id(&self, via: usize, target: usize) -> Result<u64> {
        let list = self.member_list(via).await?;
        let url = &self.members[target].peer_url;
        Ok(list.iter().find(|(_, urls)| urls.contains(url)).context("not a member")?.0)
    }

    /// Hands leadership from `leader` to member `target` (etcd's MoveLeader, sent to the leader).
    pub async fn move_leader(&self, leader: usize, target: usize) -> Result<()> {
        use concord::pb::etcdserverpb::MoveLeaderRequest;
        let target_id = self.member_id(leader, target).await?;
        let mut maintenance = MaintenanceClient::new(self.channels[leader].clone());
        let moved = maintenance.move_leader(MoveLeaderRequest { target_id });
        tokio::time::timeout(Duration::from_secs(10), moved).await??;
        Ok(())
    }

    /// Removes member `target` from the cluster through member `via` (etcd's MemberRemove). The removed
    /// process is left alone: it should stop serving by itself.
    pub async fn remove_member(&mut self, target: usize, via: usize) -> Result<()> {
        use concord::pb::etcdserverpb::{cluster_client::ClusterClient, MemberRemoveRequest};
        // Even a failed request may have removed it.
        self.maybe_removed = true;
        let id = self.member_id(via, target).await?;
        let mut cluster = ClusterClient::new(self.channels[via].clone());
        let remove = cluster.member_remove(MemberRemoveRequest { id });
        tokio::time::timeout(Duration::from_secs(5), remove).await??;
        Ok(())
    }

    /// Adds every member that is no longer in the membership back as a new member, as an operator
    /// would: `member add`, an empty data dir, `--initial-cluster-state existing`. Best effort: returns
    /// whether every member is in the membership again (one still missing at the end of the run fails
    /// the final health check).
    async fn rejoin_removed(&mut self) -> bool {
        use concord::pb::etcdserverpb::{cluster_client::ClusterClient, MemberAddRequest};
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::time::Instant::now() < deadline {
            let running: Vec<usize> =
                (0..self.members.len()).filter(|&i| self.members[i].is_running()).collect();
            let mut listed = None;
            for &via in &running {
                if let Ok(list) = self.member_list(via).await {
                    listed = Some((via, list));
                    break;
                }
            }
            let Some((via, list)) = listed else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let missing =
                self.members.iter().position(|m| !list.iter().any(|(_, urls)| urls.contains(&m.peer_url)));
            let Some(i) = missing else {
                // Every member is listed: start the ones added back (their data dirs are empty).
                for m in &mut self.members {
                    let _ = m.start();
                }
                return true;
            };
            let m = &mut self.members[i];
            m.kill();
            let _ = std::fs::remove_dir_all(&m.data_dir);
            if !m.args.iter().any(|a| a == "--initial-cluster-state") {
                m.args.extend(["--initial-cluster-state".to_string(), "existing".to_string()]);
            }
            let mut cluster = ClusterClient::new(self.channels[via].clone());
            let add = cluster
                .member_add(MemberAddRequest { peer_ur_ls: vec![m.peer_url.clone()], is_learner: false });
            // A failed add may still have happened: the next round lists the members again. (A cluster
            // that has not heard from every voter for 5 s refuses it as unhealthy: ask again shortly.)
            if !matches!(tokio::time::timeout(Duration::from_secs(5), add).await, Ok(Ok(_))) {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
        false
    }
}

impl Cluster {
    /// Tells the proxies which member id is which member (for etcd's `X-Server-From`).
    pub async fn name_members(&self) -> Result<()> {
        use concord::pb::etcdserverpb::{cluster_client::ClusterClient, MemberListRequest};
        let mut cluster = ClusterClient::new(self.channels[0].clone());
        let list = cluster.member_list(MemberListRequest::default());
        let list = tokio::time::timeout(Duration::from_secs(5), list).await??.into_inner();
        let ids = list
            .members
            .iter()
            .filter_map(|m| Some((m.id, self.members.iter().position(|x| x.name == m.name)?)))
            .collect();
        self.net.name_senders(ids);
        Ok(())
    }

    /// Waits until every member answers a linearizable read (so it has a leader it can reach).
    pub async fn wait_healthy(&self, timeout: Duration) -> Result<()> {
        use concord::pb::etcdserverpb::{kv_client::KvClient, RangeRequest};
        let deadline = tokio::time::Instant::now() + timeout;
        for (m, ch) in self.members.iter().zip(&self.channels) {
            loop {
                let mut kv = KvClient::new(ch.clone());
                let read = kv.range(RangeRequest { key: b"health".to_vec(), ..Default::default() });
                if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), read).await {
                    break;
                }
                anyhow::ensure!(
                    tokio::time::Instant::now() < deadline,
                    "{} is not serving after the heal",
                    m.name
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }
}
