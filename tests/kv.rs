//! The KV service against one real `concord` process, driven by the etcd-client crate.

mod common;

use std::time::Duration;

use common::{etcdctl, status, Cluster};
use etcd_client::{
    CompactionOptions, Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, SortOrder, SortTarget, Txn,
    TxnOp, TxnOpResponse,
};
use tonic::Code;

#[tokio::test]
async fn put_get_delete_and_revisions() {
    let c = Cluster::start(1, &[]);
    let mut kv = c.members[0].client().await;

    let r = kv.get("missing", None).await.unwrap();
    assert_eq!(r.header().unwrap().revision(), 1, "a fresh store is at revision 1");
    assert!(r.kvs().is_empty());

    let r = kv.put("a", "1", None).await.unwrap();
    assert_eq!(r.header().unwrap().revision(), 2);
    let r = kv.put("a", "2", Some(PutOptions::new().with_prev_key())).await.unwrap();
    assert_eq!(r.prev_key().unwrap().value(), b"1");

    let r = kv.get("a", None).await.unwrap();
    let a = &r.kvs()[0];
    assert_eq!((a.create_revision(), a.mod_revision(), a.version(), a.value()), (2, 3, 2, &b"2"[..]));
    let h = r.header().unwrap();
    assert_ne!(h.cluster_id(), 0);
    assert_ne!(h.member_id(), 0);
    assert!(h.raft_term() >= 1);

    let r = kv.delete("a", Some(DeleteOptions::new().with_prev_key())).await.unwrap();
    assert_eq!(r.deleted(), 1);
    assert_eq!(r.prev_kvs()[0].value(), b"2");
    let r = kv.delete("a", None).await.unwrap();
    assert_eq!((r.deleted(), r.header().unwrap().revision()), (0, 4), "deleting nothing is no revision");

    kv.put("a", "3", None).await.unwrap();
    let r = kv.get("a", None).await.unwrap();
    assert_eq!((r.kvs()[0].version(), r.kvs()[0].create_revision()), (1, 5), "re-created key starts over");
    let r = kv.get("a", Some(GetOptions::new().with_revision(3))).await.unwrap();
    assert_eq!(r.kvs()[0].value(), b"2", "history read");
    assert!(kv.get("a", Some(GetOptions::new().with_revision(4))).await.unwrap().kvs().is_empty());
}

#[tokio::test]
async fn every_range_option() {
    let c = Cluster::start(1, &[]);
    let mut kv = c.members[0].client().await;
    for (k, v) in [("k/c", "1"), ("k/a", "3"), ("k/b", "2"), ("other", "x")] {
        kv.put(k, v, None).await.unwrap(); // revisions 2..=5
    }
    kv.put("k/b", "2", None).await.unwrap(); // 6: k/b version 2
    let keys = |r: &etcd_client::GetResponse| -> Vec<String> {
        r.kvs().iter().map(|kv| kv.key_str().unwrap().to_string()).collect()
    };
    let prefix = || GetOptions::new().with_prefix();

    let r = kv.get("k/", Some(prefix())).await.unwrap();
    assert_eq!(keys(&r), ["k/a", "k/b", "k/c"]);
    let r = kv.get("k/", Some(prefix().with_limit(2))).await.unwrap();
    assert_eq!((keys(&r), r.more(), r.count()), (vec!["k/a".into(), "k/b".into()], true, 3));
    let r = kv.get("k/b", Some(GetOptions::new().with_from_key())).await.unwrap();
    assert_eq!(keys(&r), ["k/b", "k/c", "other"]);
    let r = kv.get("k/a", Some(GetOptions::new().with_range("k/c"))).await.unwrap();
    assert_eq!(keys(&r), ["k/a", "k/b"]);
    let r = kv.get("", Some(GetOptions::new().with_all_keys())).await.unwrap();
    assert_eq!(r.count(), 4);
    let r = kv.get("k/", Some(prefix().with_count_only())).await.unwrap();
    assert_eq!((r.kvs().len(), r.count()), (0, 3));
    let r = kv.get("k/", Some(prefix().with_keys_only())).await.unwrap();
    assert!(r.kvs().iter().all(|kv| kv.value().is_empty()));
    assert_eq!(r.kvs().len(), 3);
    let r = kv.get("k/", Some(prefix().with_serializable())).await.unwrap();
    assert_eq!(r.count(), 3);

    let sorted = |t, o| prefix().with_sort(t, o);
    let r = kv.get("k/", Some(sorted(SortTarget::Key, SortOrder::Descend))).await.unwrap();
    assert_eq!(keys(&r), ["k/c", "k/b", "k/a"]);
    let r = kv.get("k/", Some(sorted(SortTarget::Value, SortOrder::Ascend))).await.unwrap();
    assert_eq!(keys(&r), ["k/c", "k/b", "k/a"]);
    let r = kv.get("k/", Some(sorted(SortTarget::Create, SortOrder::Descend))).await.unwrap();
    assert_eq!(keys(&r), ["k/b", "k/a", "k/c"]);
    let r = kv.get("k/", Some(sorted(SortTarget::Mod, SortOrder::Descend).with_limit(1))).await.unwrap();
    assert_eq!((keys(&r), r.more()), (vec!["k/b".to_string()], true));
    let r = kv.get("k/", Some(sorted(SortTarget::Version, SortOrder::Descend))).await.unwrap();
    assert_eq!(keys(&r)[0], "k/b");

    let r = kv.get("k/", Some(prefix().with_min_mod_revision(3).with_max_mod_revision(4))).await.unwrap();
    assert_eq!(keys(&r), ["k/a"]);
    let r =
        kv.get("k/", Some(prefix().with_min_create_revision(3).with_max_create_revision(4))).await.unwrap();
    assert_eq!(keys(&r), ["k/a", "k/b"]);
    let r = kv.get("k/", Some(prefix().with_revision(3))).await.unwrap();
    assert_eq!(keys(&r), ["k/a", "k/c"]);

    let e = status(kv.get("", None).await.unwrap_err());
    assert_eq!((e.code(), e.message()), (Code::InvalidArgument, "etcdserver: key is not provided"));
}

#[tokio::test]
async fn txn_compares_branches_and_errors() {
    let c = Cluster::start(1, &[]);
    let mut kv = c.members[0].client().await;
    kv.put("k", "v", None).await.unwrap(); // 2
    kv.put("k", "v", None).await.unwrap(); // 3 (version 2)

    use CompareOp::*;
    let cases = [
        (Compare::version("k", Equal, 2), true),
        (Compare::version("k", Greater, 2), false),
        (Compare::version("k", Less, 3), true),
        (Compare::version("k", NotEqual, 2), false),
        (Compare::create_revision("k", Equal, 2), true),
        (Compare::mod_revision("k", Greater, 2), true),
        (Compare::mod_revision("k", Less, 3), false),
        (Compare::value("k", Equal, "v"), true),
        (Compare::value("k", Greater, "a"), true),
        (Compare::value("k", Less, "a"), false),
        (Compare::value("k", NotEqual, "v"), false),
        (Compare::lease("k", Equal, 0), true),
        (Compare::version("nope", Equal, 0), true),
        (Compare::value("nope", NotEqual, "x"), false),
        (Compare::value("k", Equal, "v").with_prefix(), true),
    ];
    for (cmp, want) in cases {
        let dbg = format!("{cmp:?}");
        let r = kv.txn(Txn::new().when([cmp])).await.unwrap();
        assert_eq!(r.succeeded(), want, "{dbg}");
        assert_eq!(r.header().unwrap().revision(), 3, "read-only txn is no revision");
    }

    let r = kv
        .txn(
            Txn::new()
                .when([Compare::value("k", Equal, "v")])
                .and_then([TxnOp::put("x", "1", None), TxnOp::put("y", "2", None), TxnOp::get("x", None)])
                .or_else([TxnOp::put("failed", "1", None)]),
        )
        .await
        .unwrap();
    assert!(r.succeeded());
    assert_eq!(r.header().unwrap().revision(), 4, "a txn is one revision");
    let TxnOpResponse::Get(g) = &r.op_responses()[2] else { panic!("expected a get") };
    assert_eq!(g.kvs()[0].value(), b"1", "reads in a txn see its earlier writes");
    let x = kv.get("x", None).await.unwrap();
    let y = kv.get("y", None).await.unwrap();
    assert_eq!((x.kvs()[0].mod_revision(), y.kvs()[0].mod_revision()), (4, 4));

    let r = kv
        .txn(Txn::new().when([Compare::version("k", Equal, 99)]).or_else([TxnOp::delete("x", None)]))
        .await
        .unwrap();
    assert!(!r.succeeded());
    assert!(kv.get("x", None).await.unwrap().kvs().is_empty());

    let e = status(
        kv.txn(Txn::new().and_then([TxnOp::put("d", "1", None), TxnOp::put("d", "2", None)]))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (e.code(), e.message()),
        (Code::InvalidArgument, "etcdserver: duplicate key given in txn request")
    );
    let many: Vec<TxnOp> = (0..129).map(|i| TxnOp::put(format!("m{i}"), "v", None)).collect();
    let e = status(kv.txn(Txn::new().and_then(many)).await.unwrap_err());
    assert_eq!(e.message(), "etcdserver: too many operations in txn request");
    let nested = Txn::new().and_then([TxnOp::put("n", "1", None)]);
    let r = kv.txn(Txn::new().and_then([TxnOp::txn(nested)])).await.unwrap();
    assert!(r.succeeded());
    assert_eq!(kv.get("n", None).await.unwrap().kvs()[0].value(), b"1");
}

#[tokio::test]
async fn compaction_and_history_errors() {
    let c = Cluster::start(1, &[]);
    let mut kv = c.members[0].client().await;
    for i in 0..5 {
        kv.put("h", i.to_string(), None).await.unwrap(); // 2..=6
    }
    let e = status(kv.get("h", Some(GetOptions::new().with_revision(7))).await.unwrap_err());
    assert_eq!(
        (e.code(), e.message()),
        (Code::OutOfRange, "etcdserver: mvcc: required revision is a future revision")
    );

    kv.compact(4, Some(CompactionOptions::new().with_physical())).await.unwrap();
    let e = status(kv.get("h", Some(GetOptions::new().with_revision(3))).await.unwrap_err());
    assert_eq!(
        (e.code(), e.message()),
        (Code::OutOfRange, "etcdserver: mvcc: required revision has been compacted")
    );
    let r = kv.get("h", Some(GetOptions::new().with_revision(4))).await.unwrap();
    assert_eq!(r.kvs()[0].value(), b"2", "the compaction point itself stays readable");

    let e = status(kv.compact(4, None).await.unwrap_err());
    assert_eq!(e.message(), "etcdserver: mvcc: required revision has been compacted");
    let e = status(kv.compact(100, None).await.unwrap_err());
    assert_eq!(e.message(), "etcdserver: mvcc: required revision is a future revision");
    let e = status(
        kv.txn(Txn::new().and_then([TxnOp::get("h", Some(GetOptions::new().with_revision(2)))]))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code(), Code::OutOfRange);
}

#[tokio::test]
async fn put_options_and_their_errors() {
    let c = Cluster::start(1, &[]);
    let mut kv = c.members[0].client().await;
    let e = status(kv.put("p", "", Some(PutOptions::new().with_ignore_value())).await.unwrap_err());
    assert_eq!((e.code(), e.message()), (Code::InvalidArgument, "etcdserver: key not found"));
    let e = status(kv.put("p", "v", Some(PutOptions::new().with_ignore_value())).await.unwrap_err());
    assert_eq!(e.message(), "etcdserver: value is provided");
    let e = status(
        kv.put("p", "v", Some(PutOptions::new().with_lease(7).with_ignore_lease())).await.unwrap_err(),
    );
    assert_eq!(e.message(), "etcdserver: lease is provided");
    let e = status(kv.put("p", "v", Some(PutOptions::new().with_lease(7))).await.unwrap_err());
    assert_eq!((e.code(), e.message()), (Code::NotFound, "etcdserver: requested lease not found"));

    kv.put("p", "v", None).await.unwrap();
    kv.put("p", "", Some(PutOptions::new().with_ignore_value())).await.unwrap();
    let r = kv.get("p", None).await.unwrap();
    assert_eq!((r.kvs()[0].value(), r.kvs()[0].version()), (&b"v"[..], 2));
}

#[tokio::test]
async fn request_size_limit() {
    let c = Cluster::start(1, &[]);
    let mut kv = c.members[0].client().await;
    let fits = vec![b'x'; 1024 * 1024 + 512 * 1024 - 64];
    kv.put("big", fits.clone(), None).await.unwrap();
    assert_eq!(kv.get("big", None).await.unwrap().kvs()[0].value().len(), fits.len());

    let too_big = vec![b'x'; 1024 * 1024 + 512 * 1024 + 1];
    let e = status(kv.put("big", too_big, None).await.unwrap_err());
    assert_eq!((e.code(), e.message()), (Code::InvalidArgument, "etcdserver: request is too large"));
    let way_too_big = vec![b'x'; 3 * 1024 * 1024];
    let e = status(kv.put("big", way_too_big, None).await.unwrap_err());
    assert_eq!(e.code(), Code::ResourceExhausted, "gRPC refuses it before concord sees it, as with etcd");
    assert_eq!(kv.get("big", None).await.unwrap().kvs()[0].version(), 1);
}

/// Responses from a hundred bytes to a few hundred KiB: the server gathers large HTTP/2 frames into one
/// write and may put a flush off until its connection's next turn (`src/api/coalesce.rs`). Each must
/// reach a client that then waits without sending anything; a stall is a timeout here.
#[tokio::test]
async fn responses_of_every_size_reach_a_waiting_client() {
    let c = Cluster::start(1, &[]);
    let mut kv = c.members[0].client().await;
    let mut watcher = c.members[0].client().await;
    let (_w, mut events) = watcher.watch("w", None).await.unwrap();
    let limit = Duration::from_secs(10);
    for (i, size) in [100, 4_000, 4_200, 16_384, 20_000, 65_000, 70_000, 300_000].into_iter().enumerate() {
        let value: String = (0..size).map(|j| char::from(b'a' + ((i + j) % 26) as u8)).collect();
        let key = format!("k{size}");
        kv.put(key.as_str(), value.as_str(), None).await.unwrap();
        let got =
            tokio::time::timeout(limit, kv.get(key.as_str(), None)).await.expect("get stalled").unwrap();
        assert_eq!(got.kvs()[0].value(), value.as_bytes(), "{size} bytes");
        // Go's client, whose maximum frame (16 KiB) splits the larger ones.
        let (ok, out, err) = etcdctl(&c.members[0].endpoint(), &["get", &key, "--print-value-only"], None);
        assert!(ok && out.trim_end() == value, "etcdctl get of {size} bytes: {err}");

        kv.put("w", value.as_str(), None).await.unwrap();
        let r = tokio::time::timeout(limit, events.message()).await.expect("watch stalled").unwrap().unwrap();
        assert_eq!(r.events()[0].kv().unwrap().value(), value.as_bytes(), "event of {size} bytes");
    }
}

/// A connection's calls share its task on the server; a range over many keys must not hold up the
/// others (one etcd client sends everything, watches and keepalives too, over one connection).
#[tokio::test]
async fn a_wide_range_does_not_hold_up_the_other_calls_of_its_connection() {
    const KEYS: usize = 20_000;
    let c = Cluster::start(1, &[]);
    let client = c.members[0].client().await;
    let mut kv = client.kv_client();
    for batch in 0..KEYS / 125 {
        let puts =
            (0..125).map(|i| TxnOp::put(format!("wide/{:06}", batch * 125 + i), "0123456789abcdef", None));
        kv.txn(Txn::new().and_then(puts.collect::<Vec<_>>())).await.unwrap();
    }
    // Clones of one client share its connection.
    let mut wide = kv.clone();
    let range = tokio::spawn(async move { wide.get("wide/", Some(GetOptions::new().with_prefix())).await });
    let mut answered = 0;
    while !range.is_finished() {
        kv.get("wide/000000", None).await.unwrap();
        answered += 1;
    }
    assert_eq!(range.await.unwrap().unwrap().kvs().len(), KEYS);
    // Held up, only the gets sent before the range started would be answered before it.
    assert!(answered >= 10, "{answered} gets answered while the range ran");
}

#[tokio::test]
async fn restart_keeps_everything() {
    let mut c = Cluster::start(1, &[]);
    {
        let mut kv = c.members[0].client().await;
        for i in 0..50 {
            kv.put(format!("r/{i:02}"), format!("v{i}"), None).await.unwrap();
        }
        kv.delete("r/00", None).await.unwrap();
        kv.compact(10, None).await.unwrap();
    }
    // kill -9: only what was acknowledged (and so fsynced) may be relied on.
    c.members[0].kill();
    c.members[0].start();
    let mut kv = c.members[0].client().await;
    let r = kv.get("r/", Some(GetOptions::new().with_prefix())).await.unwrap();
    assert_eq!(r.count(), 49);
    assert_eq!(r.header().unwrap().revision(), 52);
    assert_eq!(r.kvs()[0].value(), b"v1");
    let e = status(kv.get("r/05", Some(GetOptions::new().with_revision(9))).await.unwrap_err());
    assert_eq!(e.code(), Code::OutOfRange, "the compaction survived the restart");
    let r = kv.put("r/new", "x", None).await.unwrap();
    assert_eq!(r.header().unwrap().revision(), 53);
}

/// `--auto-compaction-retention=2s`: the history is compacted, on its own, to the revision of a
/// retention ago; never sooner. The same flags on real etcd 3.4 and on concord, the same observations.
#[tokio::test]
async fn periodic_auto_compaction_keeps_the_history_of_the_retention() {
    let flags = ["--auto-compaction-mode=periodic", "--auto-compaction-retention=2s"];
    let etcd = common::Etcd::start_with(&flags);
    common::wait_serving(etcd.client_port).await;
    let c = Cluster::start(1, &flags);
    for endpoint in [format!("http://127.0.0.1:{}", etcd.client_port), c.members[0].endpoint()] {
        let mut kv = etcd_client::Client::connect([endpoint.as_str()], None).await.unwrap();
        let first = kv.put("h", "0", None).await.unwrap().header().unwrap().revision();
        for i in 1..5 {
            kv.put("h", i.to_string(), None).await.unwrap();
        }
        let written = std::time::Instant::now();
        let at = |rev| Some(GetOptions::new().with_revision(rev));
        common::eventually(&format!("{endpoint} compacts its history"), || {
            let mut kv = kv.clone();
            async move { kv.get("h", at(first + 3)).await.is_err() }
        })
        .await;
        assert!(written.elapsed() >= std::time::Duration::from_secs(2), "{endpoint}: compacted too soon");
        let e = status(kv.get("h", at(first + 3)).await.unwrap_err());
        assert_eq!(e.message(), "etcdserver: mvcc: required revision has been compacted", "{endpoint}");
        let r = kv.get("h", at(first + 4)).await.unwrap();
        assert_eq!(r.kvs()[0].value(), b"4", "{endpoint}: the newest revision stays readable");
    }
}
