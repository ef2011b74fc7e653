//! Differential test: the same random KV requests against real etcd and against concord, compared
//! response by response (everything but the member-specific header fields) and error by error.
//!
//! Set `ETCD_BIN` to choose the etcd binary (default: Debian's 3.4, see `common::Etcd`).

mod common;

use common::{Cluster, Etcd};
use concord::pb::etcdserverpb::compare::{CompareTarget, TargetUnion};
use concord::pb::etcdserverpb::kv_client::KvClient;
use concord::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use concord::pb::etcdserverpb::request_op::Request as Op;
use concord::pb::etcdserverpb::response_op::Response as OpResp;
use concord::pb::etcdserverpb::*;
use tonic::transport::Channel;

async fn connect(port: u16) -> KvClient<Channel> {
    common::wait_serving(port).await;
    KvClient::connect(format!("http://127.0.0.1:{port}")).await.expect("connect")
}

/// A small deterministic PRNG (xorshift), so a failure can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len() as u64) as usize]
    }
}

const KEYS: &[&str] = &["a", "a/1", "a/2", "b", "b/1", "c", "d"];
const VALUES: &[&str] = &["", "x", "y", "zz"];

fn key_range(r: &mut Rng) -> (Vec<u8>, Vec<u8>) {
    let key = r.pick(KEYS).as_bytes().to_vec();
    let end = match r.below(5) {
        0 | 1 => vec![],
        2 => vec![0],
        3 => {
            let mut e = key.clone();
            *e.last_mut().unwrap() += 1;
            e
        }
        _ => r.pick(KEYS).as_bytes().to_vec(),
    };
    (key, end)
}

fn gen_range(r: &mut Rng, rev: i64) -> RangeRequest {
    let (key, range_end) = key_range(r);
    RangeRequest {
        key,
        range_end,
        limit: if r.chance(30) { r.below(3) as i64 } else { 0 },
        revision: if r.chance(30) { r.below(rev as u64 + 2) as i64 } else { 0 },
        sort_order: if r.chance(30) { r.below(3) as i32 } else { 0 },
        sort_target: if r.chance(30) { r.below(5) as i32 } else { 0 },
        serializable: r.chance(20),
        keys_only: r.chance(15),
        count_only: r.chance(10),
        min_mod_revision: if r.chance(10) { r.below(rev as u64 + 1) as i64 } else { 0 },
        max_mod_revision: if r.chance(10) { r.below(rev as u64 + 1) as i64 } else { 0 },
        min_create_revision: if r.chance(10) { r.below(rev as u64 + 1) as i64 } else { 0 },
        max_create_revision: if r.chance(10) { r.below(rev as u64 + 1) as i64 } else { 0 },
    }
}

fn gen_put(r: &mut Rng) -> PutRequest {
    let ignore_value = r.chance(10);
    PutRequest {
        key: r.pick(KEYS).as_bytes().to_vec(),
        value: if ignore_value && r.chance(70) { vec![] } else { r.pick(VALUES).as_bytes().to_vec() },
        lease: 0,
        prev_kv: r.chance(40),
        ignore_value,
        ignore_lease: r.chance(5),
    }
}

fn gen_delete(r: &mut Rng) -> DeleteRangeRequest {
    let (key, range_end) = key_range(r);
    DeleteRangeRequest { key, range_end, prev_kv: r.chance(50) }
}

fn gen_compare(r: &mut Rng, rev: i64) -> Compare {
    let (key, range_end) =
        if r.chance(80) { (r.pick(KEYS).as_bytes().to_vec(), vec![]) } else { key_range(r) };
    let target = r.below(5) as i32;
    let n = r.below(rev as u64 + 2) as i64;
    let target_union = Some(match CompareTarget::try_from(target).unwrap() {
        CompareTarget::Version => TargetUnion::Version(r.below(4) as i64),
        CompareTarget::Create => TargetUnion::CreateRevision(n),
        CompareTarget::Mod => TargetUnion::ModRevision(n),
        CompareTarget::Value => TargetUnion::Value(r.pick(VALUES).as_bytes().to_vec()),
        CompareTarget::Lease => TargetUnion::Lease(0),
    });
    Compare { result: r.below(4) as i32, target, key, target_union, range_end }
}

fn gen_ops(r: &mut Rng, rev: i64, depth: u32) -> Vec<RequestOp> {
    (0..r.below(4))
        .map(|_| {
            let request = match r.below(if depth < 2 { 4 } else { 3 }) {
                0 => Op::RequestRange(gen_range(r, rev)),
                1 => Op::RequestPut(gen_put(r)),
                2 => Op::RequestDeleteRange(gen_delete(r)),
                _ => Op::RequestTxn(gen_txn(r, rev, depth + 1)),
            };
            RequestOp { request: Some(request) }
        })
        .collect()
}

fn gen_txn(r: &mut Rng, rev: i64, depth: u32) -> TxnRequest {
    let mut t = TxnRequest {
        compare: (0..r.below(3)).map(|_| gen_compare(r, rev)).collect(),
        success: gen_ops(r, rev, depth),
        failure: gen_ops(r, rev, depth),
    };
    if depth == 0 && has_delete(&t) {
        // etcd 3.4 panics (and exits) on a put with ignore_value/ignore_lease of a key that an earlier op
        // of the same txn deleted: its check runs before the txn, its apply finds no key. concord answers
        // such a txn, so it cannot be compared; keep those flags out of txns that delete.
        clear_ignore_flags(&mut t);
    }
    t
}

fn has_delete(t: &TxnRequest) -> bool {
    t.success.iter().chain(&t.failure).any(|op| match &op.request {
        Some(Op::RequestDeleteRange(_)) => true,
        Some(Op::RequestTxn(n)) => has_delete(n),
        _ => false,
    })
}

fn clear_ignore_flags(t: &mut TxnRequest) {
    for op in t.success.iter_mut().chain(t.failure.iter_mut()) {
        match &mut op.request {
            Some(Op::RequestPut(p)) => {
                p.ignore_value = false;
                p.ignore_lease = false;
            }
            Some(Op::RequestTxn(n)) => clear_ignore_flags(n),
            _ => {}
        }
    }
}

fn scrub(h: &mut Option<ResponseHeader>) {
    if let Some(h) = h {
        h.cluster_id = 0;
        h.member_id = 0;
        h.raft_term = 0;
    }
}

fn scrub_txn(t: &mut TxnResponse) {
    scrub(&mut t.header);
    for r in &mut t.responses {
        match &mut r.response {
            Some(OpResp::ResponseRange(x)) => scrub(&mut x.header),
            Some(OpResp::ResponsePut(x)) => scrub(&mut x.header),
            Some(OpResp::ResponseDeleteRange(x)) => scrub(&mut x.header),
            Some(OpResp::ResponseTxn(x)) => scrub_txn(x),
            None => {}
        }
    }
}

fn outcome<T: std::fmt::Debug>(
    r: Result<tonic::Response<T>, tonic::Status>,
    f: impl FnOnce(&mut T),
) -> String {
    match r {
        Ok(resp) => {
            let mut v = resp.into_inner();
            f(&mut v);
            format!("{v:?}")
        }
        Err(s) => format!("error {:?}: {}", s.code(), s.message()),
    }
}

async fn run(c: &mut KvClient<Channel>, req: &Request) -> String {
    match req.clone() {
        Request::Range(x) => outcome(c.range(x).await, |v| scrub(&mut v.header)),
        Request::Put(x) => outcome(c.put(x).await, |v| scrub(&mut v.header)),
        Request::Delete(x) => outcome(c.delete_range(x).await, |v| scrub(&mut v.header)),
        Request::Txn(x) => outcome(c.txn(x).await, scrub_txn),
        Request::Compact(x) => outcome(c.compact(x).await, |v| scrub(&mut v.header)),
    }
}

#[derive(Clone, Debug)]
enum Request {
    Range(RangeRequest),
    Put(PutRequest),
    Delete(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact(CompactionRequest),
}

/// Sends the same seeded random requests to etcd and to the member at `port`, comparing every answer.
/// `linearizable_only` turns serializable reads into linearizable ones: a follower's serializable read may
/// lag its own forwarded write, as on etcd, which an exact comparison with one etcd cannot allow.
async fn compare_with_etcd(port: u16, seed: u64, steps: usize, linearizable_only: bool) {
    let etcd = Etcd::start();
    let mut reference = connect(etcd.client_port).await;
    let mut ours = connect(port).await;
    let mut r = Rng(seed);
    let mut rev = 1i64;
    for step in 0..steps {
        let mut req = match r.below(100) {
            0..=29 => Request::Range(gen_range(&mut r, rev)),
            30..=54 => Request::Put(gen_put(&mut r)),
            55..=64 => Request::Delete(gen_delete(&mut r)),
            65..=96 => Request::Txn(gen_txn(&mut r, rev, 0)),
            _ => Request::Compact(CompactionRequest {
                revision: r.below(rev as u64 + 2) as i64,
                physical: r.chance(50),
            }),
        };
        if linearizable_only {
            match &mut req {
                Request::Range(x) => x.serializable = false,
                Request::Txn(t) => {
                    linearize(t);
                    // etcd serves a txn whose ops are all serializable ranges locally, and an empty txn
                    // counts (isTxnSerializable): give it one linearizable read.
                    if t.success.is_empty() && t.failure.is_empty() {
                        let probe = RangeRequest { key: b"a".to_vec(), ..Default::default() };
                        t.success.push(RequestOp { request: Some(Op::RequestRange(probe)) });
                    }
                }
                _ => {}
            }
        }
        let want = run(&mut reference, &req).await;
        let got = run(&mut ours, &req).await;
        assert_eq!(got, want, "step {step} (seed {seed:#x}) diverged on {req:?}");
        // Track etcd's revision so generated revisions stay near the interesting range.
        let probe = RangeRequest { key: b"a".to_vec(), serializable: true, ..Default::default() };
        rev = reference.range(probe).await.unwrap().into_inner().header.map_or(rev, |h| h.revision);
    }
    // The same history must hash the same: HashKV is etcd's corruption check, and a member that hashes
    // its records another way could never sit beside etcd's tools.
    let mut reference =
        MaintenanceClient::connect(format!("http://127.0.0.1:{}", etcd.client_port)).await.unwrap();
    let mut ours = MaintenanceClient::connect(format!("http://127.0.0.1:{port}")).await.unwrap();
    for revision in [0, rev - 1, rev / 2] {
        let req = HashKvRequest { revision };
        let want = outcome(reference.hash_kv(req).await, |v| scrub(&mut v.header));
        let got = outcome(ours.hash_kv(req).await, |v| scrub(&mut v.header));
        assert_eq!(got, want, "HashKV at {revision} (seed {seed:#x})");
    }
}

fn linearize(t: &mut TxnRequest) {
    for op in t.success.iter_mut().chain(t.failure.iter_mut()) {
        match &mut op.request {
            Some(Op::RequestRange(x)) => x.serializable = false,
            Some(Op::RequestTxn(n)) => linearize(n),
            _ => {}
        }
    }
}

fn seed_and_steps(default_steps: usize) -> (u64, usize) {
    let seed = std::env::var("DIFF_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_c0c0_u64);
    let steps = std::env::var("DIFF_STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(default_steps);
    (seed, steps)
}

#[tokio::test]
async fn random_kv_requests_match_real_etcd() {
    let cluster = Cluster::start(1, &[]);
    cluster.members[0].client().await;
    let (seed, steps) = seed_and_steps(1000);
    compare_with_etcd(cluster.members[0].client_port, seed, steps, false).await;
}

/// The same through a follower of three members: every write is forwarded to the leader and every read
/// goes through the read index, and the answers must still be etcd's.
#[tokio::test]
async fn random_kv_requests_through_a_follower_match_real_etcd() {
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let (seed, steps) = seed_and_steps(500);
    compare_with_etcd(cluster.members[follower].client_port, seed ^ 0x3, steps, true).await;
}
