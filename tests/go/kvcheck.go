// kvcheck drives a server with etcd's own Go client (clientv3, etcd 3.4) through KV, Watch and Lease and exits
// non-zero on the first behaviour that differs from etcd's. Built and run by tests/go_client.rs.
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/etcdserver/api/v3rpc/rpctypes"
)

func check(cond bool, format string, args ...interface{}) {
	if !cond {
		fmt.Printf("FAIL: "+format+"\n", args...)
		os.Exit(1)
	}
}

func must(err error, what string) {
	if err != nil {
		fmt.Printf("FAIL: %s: %v\n", what, err)
		os.Exit(1)
	}
}

func main() {
	cli, err := clientv3.New(clientv3.Config{Endpoints: os.Args[1:], DialTimeout: 5 * time.Second})
	must(err, "connect")
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	r1, err := cli.Put(ctx, "go/a", "1")
	must(err, "put")
	r2, err := cli.Put(ctx, "go/a", "2", clientv3.WithPrevKV())
	must(err, "put prev")
	check(r2.PrevKv != nil && string(r2.PrevKv.Value) == "1", "prev kv %v", r2.PrevKv)
	check(r2.Header.Revision == r1.Header.Revision+1, "revisions %d then %d", r1.Header.Revision, r2.Header.Revision)
	_, err = cli.Put(ctx, "go/b", "3")
	must(err, "put b")

	g, err := cli.Get(ctx, "go/", clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend))
	must(err, "get prefix")
	check(g.Count == 2 && string(g.Kvs[0].Key) == "go/b", "prefix get %v", g.Kvs)
	check(g.Kvs[1].Version == 2 && g.Kvs[1].CreateRevision == r1.Header.Revision, "version/create %v", g.Kvs[1])
	g, err = cli.Get(ctx, "go/a", clientv3.WithRev(r1.Header.Revision))
	must(err, "history get")
	check(string(g.Kvs[0].Value) == "1", "history value %q", g.Kvs[0].Value)
	g, err = cli.Get(ctx, "go/", clientv3.WithPrefix(), clientv3.WithLimit(1), clientv3.WithSerializable())
	must(err, "limit")
	check(len(g.Kvs) == 1 && g.More && g.Count == 2, "limit: %d kvs more=%v count=%d", len(g.Kvs), g.More, g.Count)

	t, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.Value("go/a"), "=", "2"), clientv3.Compare(clientv3.Version("go/b"), ">", 0)).
		Then(clientv3.OpPut("go/c", "4"), clientv3.OpGet("go/c")).
		Else(clientv3.OpDelete("go/a")).
		Commit()
	must(err, "txn")
	check(t.Succeeded && len(t.Responses) == 2, "txn %v", t)
	check(string(t.Responses[1].GetResponseRange().Kvs[0].Value) == "4", "txn read own write")

	_, err = cli.Txn(ctx).Then(clientv3.OpPut("go/d", "1"), clientv3.OpPut("go/d", "2")).Commit()
	check(err == rpctypes.ErrDuplicateKey, "duplicate key error: %v", err)

	d, err := cli.Delete(ctx, "go/", clientv3.WithPrefix(), clientv3.WithPrevKV())
	must(err, "delete")
	check(d.Deleted == 3 && len(d.PrevKvs) == 3, "deleted %d", d.Deleted)

	// Watch: everything from r1 (history), one revision's events together, prev kv, then a live event.
	wctx, wcancel := context.WithCancel(ctx)
	wch := cli.Watch(wctx, "go/", clientv3.WithPrefix(), clientv3.WithRev(r1.Header.Revision), clientv3.WithPrevKV())
	var evs []*clientv3.Event
	for len(evs) < 7 {
		wr := <-wch
		must(wr.Err(), "watch")
		evs = append(evs, wr.Events...)
	}
	check(len(evs) == 7, "history events %d", len(evs))
	check(evs[0].IsCreate() && evs[0].Kv.ModRevision == r1.Header.Revision, "first event %v", evs[0])
	check(evs[1].IsModify() && string(evs[1].PrevKv.Value) == "1", "modify event %v", evs[1])
	for _, e := range evs[4:] {
		check(e.Type == clientv3.EventTypeDelete && e.Kv.ModRevision == d.Header.Revision && e.PrevKv != nil,
			"delete event %v", e)
	}
	p, err := cli.Put(ctx, "go/live", "1")
	must(err, "put live")
	wr := <-wch
	check(len(wr.Events) == 1 && wr.Events[0].Kv.ModRevision == p.Header.Revision, "live event %v", wr.Events)
	must(cli.RequestProgress(ctx), "progress request")
	wr = <-wch
	check(wr.IsProgressNotify() && wr.Header.Revision == p.Header.Revision, "progress %v", wr.Header)
	wcancel()

	_, err = cli.Compact(ctx, d.Header.Revision)
	must(err, "compact")
	wr = <-cli.Watch(ctx, "go/", clientv3.WithPrefix(), clientv3.WithRev(r1.Header.Revision))
	check(wr.CompactRevision == d.Header.Revision && wr.Err() == rpctypes.ErrCompacted, "compacted watch %v", wr.Err())
	_, err = cli.Get(ctx, "go/a", clientv3.WithRev(r1.Header.Revision))
	check(err == rpctypes.ErrCompacted, "compacted error: %v", err)
	_, err = cli.Get(ctx, "go/a", clientv3.WithRev(d.Header.Revision+100))
	check(err == rpctypes.ErrFutureRev, "future revision error: %v", err)
	_, err = cli.Put(ctx, "go/l", "x", clientv3.WithLease(clientv3.LeaseID(12345)))
	check(err == rpctypes.ErrLeaseNotFound, "lease not found error: %v", err)

	// Leases: grant, attach, keepalive, time to live with keys, revoke (keys deleted), errors.
	lg, err := cli.Grant(ctx, 60)
	must(err, "grant")
	check(lg.ID != 0 && lg.TTL == 60, "grant %v", lg)
	_, err = cli.Put(ctx, "go/leased", "v", clientv3.WithLease(lg.ID))
	must(err, "put with lease")
	ka, err := cli.KeepAliveOnce(ctx, lg.ID)
	must(err, "keepalive once")
	check(ka.TTL == 60, "keepalive ttl %d", ka.TTL)
	tl, err := cli.TimeToLive(ctx, lg.ID, clientv3.WithAttachedKeys())
	must(err, "time to live")
	check(tl.GrantedTTL == 60 && tl.TTL > 50 && len(tl.Keys) == 1 && string(tl.Keys[0]) == "go/leased", "ttl %v", tl)
	ll, err := cli.Leases(ctx)
	must(err, "leases")
	check(len(ll.Leases) >= 1, "leases %v", ll.Leases)
	_, err = cli.Revoke(ctx, lg.ID)
	must(err, "revoke")
	g, err = cli.Get(ctx, "go/leased")
	must(err, "get after revoke")
	check(len(g.Kvs) == 0, "leased key after revoke %v", g.Kvs)
	_, err = cli.Revoke(ctx, lg.ID)
	check(err == rpctypes.ErrLeaseNotFound, "revoke twice: %v", err)
	tl, err = cli.TimeToLive(ctx, lg.ID)
	must(err, "time to live of a revoked lease")
	check(tl.TTL == -1, "revoked lease ttl %d", tl.TTL)
	_, err = cli.KeepAliveOnce(ctx, lg.ID)
	check(err == rpctypes.ErrLeaseNotFound, "keepalive of a revoked lease: %v", err)
	_, err = cli.Grant(ctx, 9000000001)
	check(err == rpctypes.ErrLeaseTTLTooLarge, "too large ttl: %v", err)

	ml, err := cli.MemberList(ctx)
	must(err, "member list")
	check(len(ml.Members) >= 1 && len(ml.Members[0].ClientURLs) >= 1, "members %v", ml.Members)
	st, err := cli.Status(ctx, os.Args[1])
	must(err, "status")
	check(st.Leader != 0 && st.Version != "", "status %v", st)
	fmt.Println("ok")
}
