//! concord's Rust recipes (`concord::client`) against real `concord` processes, and against etcd's own Go
//! concurrency.Mutex on the same names.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::Cluster;
use concord::client::{Client, ClientError, Mutex, Session};
use concord::pb::etcdserverpb::request_op::Request as Op;
use concord::pb::etcdserverpb::{PutRequest, RangeRequest, RequestOp, TxnRequest};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const WAIT: Duration = Duration::from_secs(20);

async fn client(c: &Cluster, i: usize) -> Client {
    c.members[i].client().await;
    Client::connect(&[c.members[i].endpoint()], Duration::from_secs(5)).await.unwrap()
}

async fn counter(client: &Client) -> i64 {
    let r = client.kv().range(RangeRequest { key: b"counter".to_vec(), ..Default::default() }).await.unwrap();
    r.into_inner().kvs.first().map_or(0, |kv| String::from_utf8_lossy(&kv.value).parse().unwrap())
}

#[tokio::test]
async fn the_mutex_excludes_across_sessions() {
    let c = Cluster::start(1, &[]);
    let client = client(&c, 0).await;
    let held = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (client, held) = (client.clone(), held.clone());
        tasks.push(tokio::spawn(async move {
            let session = Session::new(&client, 10).await.unwrap();
            let mut m = Mutex::new(&session, "excl");
            for _ in 0..10 {
                m.lock().await.unwrap();
                assert!(!held.swap(true, Ordering::SeqCst), "two holders at once");
                // A read-modify-write that only the lock makes safe.
                let n = counter(&client).await;
                let put = PutRequest {
                    key: b"counter".to_vec(),
                    value: (n + 1).to_string().into_bytes(),
                    ..Default::default()
                };
                client.kv().put(put).await.unwrap();
                held.store(false, Ordering::SeqCst);
                m.unlock().await.unwrap();
            }
            session.close().await.unwrap();
        }));
    }
    for t in tasks {
        tokio::time::timeout(WAIT * 3, t).await.unwrap().unwrap();
    }
    assert_eq!(counter(&client).await, 40);
}

#[tokio::test]
async fn a_dropped_wait_withdraws_and_an_expired_holder_loses_the_lock() {
    let c = Cluster::start(1, &[]);
    let client = client(&c, 0).await;
    let holder = Session::new(&client, 1).await.unwrap();
    let mut a = Mutex::new(&holder, "l");
    a.lock().await.unwrap();
    let token = a.fencing_token();

    // A waiter that gives up leaves no key behind: otherwise the next waiter would queue behind it.
    let s2 = Session::new(&client, 10).await.unwrap();
    let mut b = Mutex::new(&s2, "l");
    assert!(tokio::time::timeout(Duration::from_millis(300), b.lock()).await.is_err());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let req = RangeRequest {
            key: b"l/".to_vec(),
            range_end: b"l0".to_vec(),
            count_only: true,
            ..Default::default()
        };
        if client.kv().range(req).await.unwrap().into_inner().count == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the abandoned waiter's key is still there");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(matches!(b.try_lock().await, Err(ClientError::Locked)));

    // The holder's session stops keeping its lease alive: the lease expires and the next waiter gets in.
    drop(holder);
    let s3 = Session::new(&client, 10).await.unwrap();
    let mut c3 = Mutex::new(&s3, "l");
    tokio::time::timeout(WAIT, c3.lock())
        .await
        .expect("the lock passes on once the holder's lease expires")
        .unwrap();
    assert!(c3.fencing_token() > token);

    // The stale holder's write, guarded by its ownership, is refused: the fencing token at work.
    let put = RequestOp {
        request: Some(Op::RequestPut(PutRequest {
            key: b"guarded".to_vec(),
            value: b"stale".to_vec(),
            ..Default::default()
        })),
    };
    let txn = TxnRequest { compare: vec![a.is_owner()], success: vec![put.clone()], failure: vec![] };
    assert!(!client.kv().txn(txn).await.unwrap().into_inner().succeeded, "a stale holder cannot write");
    let txn = TxnRequest { compare: vec![c3.is_owner()], success: vec![put], failure: vec![] };
    assert!(client.kv().txn(txn).await.unwrap().into_inner().succeeded, "the holder can");
}

/// etcd's Go concurrency.Mutex, driven line by line.
struct GoLocker {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl GoLocker {
    fn start(endpoint: &str, name: &str) -> GoLocker {
        let mut child = tokio::process::Command::new(common::go_program("lockcheck"))
            .args([endpoint, name])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run lockcheck");
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        GoLocker { child, stdin, lines }
    }

    async fn send(&mut self, cmd: &str) {
        self.stdin.write_all(format!("{cmd}\n").as_bytes()).await.unwrap();
    }

    async fn answer(&mut self) -> String {
        tokio::time::timeout(WAIT, self.lines.next_line()).await.expect("an answer in time").unwrap().unwrap()
    }
}

#[tokio::test]
async fn rust_and_go_holders_of_the_same_name_exclude_each_other() {
    let c = Cluster::start(1, &[]);
    let client = client(&c, 0).await;
    let session = Session::new(&client, 10).await.unwrap();
    let mut rust = Mutex::new(&session, "shared");
    rust.lock().await.unwrap();
    assert_eq!(rust.key(), format!("shared/{:x}", session.lease()).as_bytes(), "etcd's key layout");

    let mut go = GoLocker::start(&c.members[0].endpoint(), "shared");
    go.send("trylock").await;
    assert_eq!(go.answer().await, "busy", "Go cannot take a lock Rust holds");
    go.send("lock").await;
    rust.unlock().await.unwrap();
    let locked = go.answer().await;
    assert!(locked.starts_with("locked shared/"), "{locked}");
    assert!(matches!(rust.try_lock().await, Err(ClientError::Locked)), "Rust cannot take a lock Go holds");
    go.send("unlock").await;
    assert_eq!(go.answer().await, "unlocked");
    tokio::time::timeout(WAIT, rust.lock()).await.unwrap().unwrap();
    drop(go.child);
}

/// The same library against real etcd: what works here is etcd's protocol, not a private agreement.
#[tokio::test]
async fn the_mutex_works_against_real_etcd() {
    let etcd = common::Etcd::start();
    common::wait_serving(etcd.client_port).await;
    let client =
        Client::connect(&[format!("127.0.0.1:{}", etcd.client_port)], Duration::from_secs(5)).await.unwrap();
    let (s1, s2) = (Session::new(&client, 10).await.unwrap(), Session::new(&client, 10).await.unwrap());
    let (mut a, mut b) = (Mutex::new(&s1, "etcd-lock"), Mutex::new(&s2, "etcd-lock"));
    a.lock().await.unwrap();
    assert!(matches!(b.try_lock().await, Err(ClientError::Locked)));
    let waiter = tokio::spawn(async move {
        b.lock().await.unwrap();
        b
    });
    a.unlock().await.unwrap();
    let b = tokio::time::timeout(WAIT, waiter).await.unwrap().unwrap();
    assert!(b.fencing_token() > 0 && b.key().starts_with(b"etcd-lock/"));
    s1.close().await.unwrap();
}

async fn observed(rx: &mut tokio::sync::mpsc::Receiver<concord::pb::mvccpb::KeyValue>) -> String {
    let kv = tokio::time::timeout(WAIT, rx.recv()).await.expect("an observation in time").expect("observing");
    String::from_utf8_lossy(&kv.value).into_owned()
}

#[tokio::test]
async fn an_election_has_one_leader_and_observers_see_every_change() {
    use concord::client::Election;
    let c = Cluster::start(1, &[]);
    let client = client(&c, 0).await;
    let (s1, s2) = (Session::new(&client, 10).await.unwrap(), Session::new(&client, 10).await.unwrap());
    let (mut e1, mut e2) = (Election::new(&s1, "elect"), Election::new(&s2, "elect"));
    let mut seen = Election::new(&s1, "elect").observe();
    assert!(e1.leader().await.is_err(), "no leader yet");

    e1.campaign(b"one").await.unwrap();
    assert_eq!(observed(&mut seen).await, "one");
    let second = tokio::spawn(async move {
        e2.campaign(b"two").await.unwrap();
        e2
    });
    e1.proclaim(b"one again").await.unwrap();
    assert_eq!(observed(&mut seen).await, "one again");
    assert_eq!(e1.leader().await.unwrap().value.as_ref(), b"one again");

    // etcd's own observer (etcdctl elect -l, Go's Election.Observe) sees the Rust leader.
    let out = std::process::Command::new("timeout")
        .env("ETCDCTL_API", "3")
        .args(["2", "/usr/bin/etcdctl", "--endpoints", &c.members[0].endpoint(), "elect", "-l", "elect"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text, format!("elect/{:x}\none again\n", s1.lease()), "etcdctl elect -l");

    e1.resign().await.unwrap();
    let e2 = tokio::time::timeout(WAIT, second).await.unwrap().unwrap();
    assert_eq!(observed(&mut seen).await, "two");
    assert_eq!(e2.leader().await.unwrap().value.as_ref(), b"two");
    let err = e1.proclaim(b"usurper").await.unwrap_err();
    assert_eq!(err.to_string(), "election: not leader");
}

#[tokio::test]
async fn etcdctl_lock_waits_for_a_rust_holder() {
    let c = Cluster::start(1, &[]);
    let client = client(&c, 0).await;
    let session = Session::new(&client, 10).await.unwrap();
    let mut m = Mutex::new(&session, "ctl-lock");
    m.lock().await.unwrap();
    let ctl = |secs: &str| {
        std::process::Command::new("timeout")
            .env("ETCDCTL_API", "3")
            .args([
                secs,
                "/usr/bin/etcdctl",
                "--endpoints",
                &c.members[0].endpoint(),
                "lock",
                "ctl-lock",
                "echo",
                "got it",
            ])
            .output()
            .unwrap()
    };
    let blocked = ctl("1");
    assert_eq!((blocked.status.code(), blocked.stdout.as_slice()), (Some(124), &b""[..]), "etcdctl waited");
    m.unlock().await.unwrap();
    let got = ctl("20");
    assert_eq!((got.status.code(), String::from_utf8_lossy(&got.stdout).as_ref()), (Some(0), "got it\n"));
}

/// Runs tests/go/queuecheck.go to the end; its output lines.
async fn go_queue(endpoint: &str, name: &str, mode: &str, n: usize) -> Vec<String> {
    let out = tokio::process::Command::new(common::go_program("queuecheck"))
        .args([endpoint, name, mode, &n.to_string()])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(WAIT, out).await.expect("queuecheck in time").unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

#[tokio::test]
async fn queue_items_go_to_exactly_one_consumer_in_rust_or_go() {
    use concord::client::Queue;
    let c = Cluster::start(1, &[]);
    let client = client(&c, 0).await;
    let ep = c.members[0].endpoint();
    let q = Queue::new(&client, "jobs");
    // Two Rust consumers and a Go consumer race for 60 items from Rust and Go producers.
    let mut consumers = Vec::new();
    for _ in 0..2 {
        let q = Queue::new(&client, "jobs");
        consumers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..20 {
                got.push(String::from_utf8(q.dequeue().await.unwrap()).unwrap());
            }
            got
        }));
    }
    let go_consumer = {
        let ep = ep.clone();
        tokio::spawn(async move { go_queue(&ep, "jobs", "consume", 20).await })
    };
    for i in 0..30 {
        q.enqueue(format!("rust-{i}").as_bytes()).await.unwrap();
    }
    go_queue(&ep, "jobs", "produce", 30).await;
    let mut all = go_consumer.await.unwrap();
    for t in consumers {
        all.extend(tokio::time::timeout(WAIT, t).await.unwrap().unwrap());
    }
    all.sort();
    let mut want: Vec<String> = (0..30).flat_map(|i| [format!("rust-{i}"), format!("go-{i}")]).collect();
    want.sort();
    assert_eq!(all, want, "every item exactly once");
}

#[tokio::test]
async fn a_priority_queue_serves_lower_numbers_first_and_fifo_within_one() {
    use concord::client::PriorityQueue;
    let c = Cluster::start(1, &[]);
    let client = client(&c, 0).await;
    let q = PriorityQueue::new(&client, "pq");
    for (v, p) in [("c1", 3), ("a1", 1), ("c2", 3), ("b1", 2), ("a2", 1)] {
        q.enqueue(v.as_bytes(), p).await.unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(String::from_utf8(q.dequeue().await.unwrap()).unwrap());
    }
    assert_eq!(got, ["a1", "a2", "b1", "c1", "c2"]);
    // A consumer waiting on an empty queue gets the next item enqueued.
    let waiting = tokio::spawn({
        let q = PriorityQueue::new(&client, "pq");
        async move { q.dequeue().await.unwrap() }
    });
    q.enqueue(b"late", 7).await.unwrap();
    assert_eq!(tokio::time::timeout(WAIT, waiting).await.unwrap().unwrap(), b"late");
}

type Log = Arc<std::sync::Mutex<Vec<String>>>;

fn note(log: &Log, what: impl Into<String>) {
    log.lock().unwrap().push(what.into());
}

async fn wait_for_keys(client: &Client, prefix: &str, n: i64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let end = concord::client::prefix_end(prefix.as_bytes());
    loop {
        let req = RangeRequest {
            key: prefix.into(),
            range_end: end.clone(),
            count_only: true,
            ..Default::default()
        };
        if client.kv().range(req).await.unwrap().into_inner().count == n {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{n} keys under {prefix} never appeared");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn readers_share_writers_exclude_and_a_waiting_writer_holds_back_later_readers() {
    use concord::client::RWMutex;
    let c = Cluster::start(1, &[]);
    let client = client(&c, 0).await;
    let log: Log = Default::default();
    let session = |client: Client| async move { Session::new(&client, 10).await.unwrap() };
    let (s1, s2, s3, sw) = (
        session(client.clone()).await,
        session(client.clone()).await,
        session(client.clone()).await,
        session(client.clone()).await,
    );
    let (mut r1, mut r2) = (RWMutex::new(&s1, "rw"), RWMutex::new(&s2, "rw"));
    r1.read_lock().await.unwrap();
    r2.read_lock().await.unwrap(); // readers share

    let (release_w, released) = tokio::sync::oneshot::channel::<()>();
    let mut w = RWMutex::new(&sw, "rw");
    let writer = tokio::spawn({
        let log = log.clone();
        async move {
            w.write_lock().await.unwrap();
            note(&log, "w+");
            released.await.unwrap();
            note(&log, "w-");
            w.unlock().await.unwrap();
        }
    });
    wait_for_keys(&client, "rw/write", 1).await;
    note(&log, "r-");
    r1.unlock().await.unwrap();
    r2.unlock().await.unwrap();
    // A reader that queues while the writer waits or holds comes after it.
    let mut r3 = RWMutex::new(&s3, "rw");
    let reader = tokio::spawn({
        let log = log.clone();
        async move {
            r3.read_lock().await.unwrap();
            note(&log, "r3+");
        }
    });
    wait_for_keys(&client, "rw/read", 1).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !log.lock().unwrap().contains(&"w+".to_string()) {
        assert!(tokio::time::Instant::now() < deadline, "the writer never got the lock");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    release_w.send(()).unwrap();
    tokio::time::timeout(WAIT, writer).await.unwrap().unwrap();
    tokio::time::timeout(WAIT, reader).await.unwrap().unwrap();
    assert_eq!(*log.lock().unwrap(), ["r-", "w+", "w-", "r3+"]);
}

#[tokio::test]
async fn barriers_hold_until_released_and_double_barriers_move_together() {
    use concord::client::{Barrier, DoubleBarrier};
    let c = Cluster::start(1, &[]);
    let client = client(&c, 0).await;
    let log: Log = Default::default();

    let b = Barrier::new(&client, "gate");
    b.hold().await.unwrap();
    assert!(b.hold().await.is_err(), "a barrier is held once");
    let mut waiters = Vec::new();
    for i in 0..3 {
        let (client, log) = (client.clone(), log.clone());
        waiters.push(tokio::spawn(async move {
            Barrier::new(&client, "gate").wait().await.unwrap();
            note(&log, format!("passed {i}"));
        }));
    }
    note(&log, "released");
    b.release().await.unwrap();
    for w in waiters {
        tokio::time::timeout(WAIT, w).await.unwrap().unwrap();
    }
    assert_eq!(log.lock().unwrap()[0], "released", "nobody passed early");
    Barrier::new(&client, "gate").wait().await.unwrap();

    // Two parties arrive and must wait for the third; then all three leave together.
    let log: Log = Default::default();
    let mut parties = Vec::new();
    for i in 0..3 {
        if i == 2 {
            wait_for_keys(&client, "double/waiters", 2).await;
            note(&log, "third arrives");
        }
        let (client, log) = (client.clone(), log.clone());
        parties.push(tokio::spawn(async move {
            let s = Session::new(&client, 10).await.unwrap();
            let mut d = DoubleBarrier::new(&s, "double", 3);
            note(&log, format!("entering {i}"));
            d.enter().await.unwrap();
            note(&log, format!("entered {i}"));
            note(&log, format!("leaving {i}"));
            d.leave().await.unwrap();
            note(&log, format!("left {i}"));
        }));
    }
    for p in parties {
        tokio::time::timeout(WAIT, p).await.unwrap().unwrap();
    }
    let log = log.lock().unwrap().clone();
    let pos = |p: &str| {
        log.iter().enumerate().filter(|(_, l)| l.starts_with(p)).map(|(i, _)| i).collect::<Vec<_>>()
    };
    assert!(
        pos("entered").iter().min() > pos("third arrives").iter().max(),
        "nobody entered before the third arrived: {log:?}"
    );
    assert!(
        pos("left").iter().min() > pos("leaving").iter().max(),
        "nobody left before all were leaving: {log:?}"
    );
}

/// etcd's STM bank demo: 5 accounts of 100, 10 tasks each making transfers of half the source balance.
/// At every isolation level that claims safety, the total stays 500.
#[tokio::test]
async fn stm_transfers_preserve_the_total_at_every_safe_isolation_level() {
    use concord::client::{stm, Isolation};
    let c = Cluster::start(1, &[]);
    let client = client(&c, 0).await;
    for iso in [Isolation::SerializableSnapshot, Isolation::Serializable, Isolation::RepeatableReads] {
        let account = move |i: usize| format!("bank-{iso:?}/{i}").into_bytes();
        for i in 0..5 {
            let put = PutRequest { key: account(i), value: b"100".to_vec(), ..Default::default() };
            client.kv().put(put).await.unwrap();
        }
        let mut tasks = Vec::new();
        for t in 0..10usize {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                for n in 0..20usize {
                    let (from, to) = ((t + n) % 5, (t + 2 * n + 1) % 5);
                    if from == to {
                        continue;
                    }
                    let (from, to) = (account(from), account(to));
                    stm::run(&client, iso, &[], |s| {
                        let (from, to) = (from.clone(), to.clone());
                        Box::pin(async move {
                            let balance = |v: Vec<u8>| String::from_utf8(v).unwrap().parse::<i64>().unwrap();
                            let (a, b) = (balance(s.get(&from).await?), balance(s.get(&to).await?));
                            s.put(&from, (a - a / 2).to_string().as_bytes());
                            s.put(&to, (b + a / 2).to_string().as_bytes());
                            Ok(())
                        })
                    })
                    .await
                    .unwrap();
                }
            }));
        }
        for t in tasks {
            tokio::time::timeout(WAIT * 3, t).await.unwrap().unwrap();
        }
        let mut total = 0;
        for i in 0..5 {
            let r = client.kv().range(RangeRequest { key: account(i), ..Default::default() }).await.unwrap();
            let v: i64 = String::from_utf8_lossy(&r.into_inner().kvs[0].value).parse().unwrap();
            assert!(v >= 0);
            total += v;
        }
        assert_eq!(total, 500, "{iso:?}");
    }
}

/// etcd's v3lock and v3election services, driven by the etcd-client crate (which speaks their protos).
#[tokio::test]
async fn the_lock_and_election_services_speak_etcds_protocol() {
    use etcd_client::{LockOptions, ProclaimOptions, ResignOptions};
    let c = Cluster::start(1, &[]);
    let mut ec = c.members[0].client().await;
    let ours = client(&c, 0).await;
    let (l1, l2) =
        (ec.lease_grant(10, None).await.unwrap().id(), ec.lease_grant(10, None).await.unwrap().id());
    let k1 = ec.lock("svc", Some(LockOptions::new().with_lease(l1))).await.unwrap().key().to_vec();
    assert_eq!(k1, format!("svc/{l1:x}").into_bytes());
    let mut ec2 = ec.clone();
    let second = tokio::spawn(async move {
        ec2.lock("svc", Some(LockOptions::new().with_lease(l2))).await.unwrap().key().to_vec()
    });
    wait_for_keys(&ours, "svc/", 2).await;
    assert!(!second.is_finished(), "the second lock waits");
    ec.unlock(k1).await.unwrap();
    let k2 = tokio::time::timeout(WAIT, second).await.unwrap().unwrap();
    assert_eq!(k2, format!("svc/{l2:x}").into_bytes());

    let campaign = ec.campaign("svc-e", "v1", l1).await.unwrap();
    let leader = campaign.leader().unwrap().clone();
    let mut observed = ec.observe("svc-e").await.unwrap();
    let first = tokio::time::timeout(WAIT, observed.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(first.kv().unwrap().value(), b"v1");
    ec.proclaim("v2", Some(ProclaimOptions::new().with_leader(leader.clone()))).await.unwrap();
    let next = tokio::time::timeout(WAIT, observed.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(next.kv().unwrap().value(), b"v2");
    assert_eq!(ec.leader("svc-e").await.unwrap().kv().unwrap().value(), b"v2");
    ec.resign(Some(ResignOptions::new().with_leader(leader))).await.unwrap();
    let err = common::status(ec.leader("svc-e").await.unwrap_err());
    assert_eq!(err.message(), "election: no leader");
}

/// Lock exclusion holds through a leader crash: holders on the two surviving members keep taking turns
/// while the leader is killed (a step that fails while there is no leader is simply tried again).
#[tokio::test]
async fn the_mutex_keeps_exclusion_when_the_leader_dies() {
    let mut c = Cluster::start(3, &[]);
    let leader = c.leader().await;
    let held = Arc::new(AtomicBool::new(false));
    let turns = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for m in (0..3).filter(|m| *m != leader) {
        let client = client(&c, m).await;
        let (held, turns) = (held.clone(), turns.clone());
        tasks.push(tokio::spawn(async move {
            let session = loop {
                if let Ok(s) = Session::new(&client, 5).await {
                    break s;
                }
            };
            let mut lock = Mutex::new(&session, "failover");
            for _ in 0..15 {
                while lock.lock().await.is_err() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                assert!(!held.swap(true, Ordering::SeqCst), "two holders at once");
                turns.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await; // hold it for a moment
                held.store(false, Ordering::SeqCst);
                while lock.unlock().await.is_err() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }));
    }
    // Kill the leader once the holders are under way.
    let deadline = tokio::time::Instant::now() + WAIT;
    while turns.load(Ordering::SeqCst) < 5 {
        assert!(tokio::time::Instant::now() < deadline, "no progress before the crash");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    c.members[leader].kill();
    for t in tasks {
        tokio::time::timeout(WAIT * 3, t).await.unwrap().unwrap();
    }
    assert_eq!(turns.load(Ordering::SeqCst), 30);
}

fn demo(endpoint: &str, args: &[&str], input: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(["demo", "--endpoints", endpoint])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("concord demo");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "concord demo {args:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Every demo, driven through stdin, against the server at `ep`.
fn check_demos(ep: &str) {
    let bank = demo(ep, &["bank"], "");
    assert!(bank.ends_with("account sum is 500\n"), "{bank}");
    assert_eq!(demo(ep, &["queue", "q"], "push a\npush b\npop\npop\n"), "a\nb\n");
    assert_eq!(demo(ep, &["pqueue", "p"], "push low 9\npush high 1\npop\npop\n"), "high\nlow\n");
    let lock = demo(ep, &["lock", "demo-lock"], "\n");
    assert!(lock.starts_with("acquired lock demo-lock/") && lock.ends_with("released\n"), "{lock}");
    assert_eq!(
        demo(ep, &["rwlock", "rw"], "r\n\nw\n\n"),
        "acquired read lock\nreleased\nacquired write lock\nreleased\n"
    );
    assert_eq!(
        demo(ep, &["barrier", "b"], "hold\nrelease\nwait\n"),
        "hold: done\nrelease: done\nwait: done\n"
    );
    assert_eq!(demo(ep, &["double-barrier", "db", "1"], "\n"), "entered\nleft\n");
}

#[tokio::test]
async fn the_demos_run_against_a_server() {
    let c = Cluster::start(1, &[]);
    c.members[0].client().await;
    let ep = c.members[0].endpoint();
    check_demos(&ep);
}

#[tokio::test]
async fn a_locker_guard_releases_when_dropped() {
    use concord::client::Locker;
    let c = Cluster::start(1, &[]);
    let client = client(&c, 0).await;
    let (s1, s2) = (Session::new(&client, 10).await.unwrap(), Session::new(&client, 10).await.unwrap());
    let (l1, l2) = (Locker::new(&s1, "guarded"), Locker::new(&s2, "guarded"));
    let held = l1.lock().await.unwrap();
    assert!(held.fencing_token() > 0);
    let waiting = tokio::spawn(async move { l2.lock().await.unwrap().unlock().await.unwrap() });
    wait_for_keys(&client, "guarded/", 2).await;
    drop(held);
    tokio::time::timeout(WAIT, waiting).await.expect("the dropped guard released the lock").unwrap();
}

/// The demos (and so the recipes under them) against real etcd 3.4: the library speaks etcd's protocol.
#[tokio::test]
async fn the_demos_run_against_real_etcd() {
    let etcd = common::Etcd::start();
    let ep = format!("127.0.0.1:{}", etcd.client_port);
    common::wait_serving(etcd.client_port).await;
    check_demos(&ep);
}

/// etcd's Go Election (as `etcdctl elect` runs it) and the Rust one campaign for the same name.
#[tokio::test]
async fn rust_and_go_candidates_share_an_election() {
    use concord::client::Election;
    let c = Cluster::start(1, &[]);
    let client = client(&c, 0).await;
    let session = Session::new(&client, 10).await.unwrap();
    let mut rust = Election::new(&session, "shared-e");
    rust.campaign(b"rust").await.unwrap();
    let mut go = tokio::process::Command::new("/usr/bin/etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &c.members[0].endpoint(), "elect", "shared-e", "go"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(go.stdout.take().unwrap()).lines();
    wait_for_keys(&client, "shared-e/", 2).await;
    assert_eq!(rust.leader().await.unwrap().value.as_ref(), b"rust", "the Go candidate waits");
    rust.resign().await.unwrap();
    // etcdctl prints the leader key and its value once it leads.
    let key = tokio::time::timeout(WAIT, lines.next_line()).await.unwrap().unwrap().unwrap();
    let value = tokio::time::timeout(WAIT, lines.next_line()).await.unwrap().unwrap().unwrap();
    assert!(key.starts_with("shared-e/") && value == "go", "{key} {value}");
    assert_eq!(rust.leader().await.unwrap().value.as_ref(), b"go");
    let _ = go.kill().await;
}

#[tokio::test]
async fn session_done_fires_when_its_lease_is_gone_and_stm_deletes_and_reads_revisions() {
    use concord::client::{stm, Isolation};
    use concord::pb::etcdserverpb::LeaseRevokeRequest;
    let c = Cluster::start(1, &[]);
    let client = client(&c, 0).await;
    let session = Session::new(&client, 10).await.unwrap();
    client.lease().lease_revoke(LeaseRevokeRequest { id: session.lease() }).await.unwrap();
    tokio::time::timeout(WAIT, session.done()).await.expect("done() resolves once the lease is revoked");

    let put = PutRequest { key: b"s/a".to_vec(), value: b"1".to_vec(), ..Default::default() };
    let rev = client.kv().put(put).await.unwrap().into_inner().header.unwrap().revision;
    stm::run(&client, Isolation::SerializableSnapshot, &[b"s/a".to_vec()], |s| {
        Box::pin(async move {
            assert_eq!(s.rev(b"s/a").await?, rev);
            assert_eq!(s.rev(b"s/missing").await?, 0);
            s.del(b"s/a");
            assert_eq!(s.get(b"s/a").await?, b"", "a transaction sees its own delete");
            Ok(())
        })
    })
    .await
    .unwrap();
    let r = client.kv().range(RangeRequest { key: b"s/a".to_vec(), ..Default::default() }).await.unwrap();
    assert!(r.into_inner().kvs.is_empty());
}
