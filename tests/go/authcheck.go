// authcheck drives a cluster with auth on through etcd's own Go client (clientv3, etcd 3.4): it sets
// users and roles up as root, then works as a user limited to /app/: KV inside and outside its range,
// a watch, a lock and an election from the concurrency package, and a put after its token expired
// (the server runs with a short --auth-token-ttl; the client must authenticate again by itself), and
// the same client's requests once root has turned auth off (its token is then refused). It
// exits non-zero on the first behaviour that differs from etcd's. Run by tests/auth.rs against concord
// and against real etcd: authcheck <token-ttl-seconds> <endpoint>...
package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"time"

	"go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/clientv3/concurrency"
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
	ttl, err := strconv.Atoi(os.Args[1])
	must(err, "token ttl")
	endpoints := os.Args[2:]
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	admin, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second})
	must(err, "connect")
	_, err = admin.UserAdd(ctx, "root", "rootpw")
	must(err, "user add root")
	_, err = admin.UserGrantRole(ctx, "root", "root")
	must(err, "grant root")
	_, err = admin.RoleAdd(ctx, "app")
	must(err, "role add")
	_, err = admin.RoleGrantPermission(ctx, "app", "/app/", clientv3.GetPrefixRangeEnd("/app/"),
		clientv3.PermissionType(clientv3.PermReadWrite))
	must(err, "grant permission")
	_, err = admin.UserAdd(ctx, "alice", "alicepw")
	must(err, "user add alice")
	_, err = admin.UserGrantRole(ctx, "alice", "app")
	must(err, "grant app")
	_, err = admin.Put(ctx, "/secret", "s")
	must(err, "put secret")
	_, err = admin.AuthEnable(ctx)
	must(err, "auth enable")
	_, err = admin.Get(ctx, "/secret")
	check(err == rpctypes.ErrUserEmpty, "get without a user after enabling: %v", err)
	admin.Close()

	_, err = clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second,
		Username: "alice", Password: "wrong"})
	check(err == rpctypes.ErrAuthFailed, "a wrong password: %v", err)

	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second,
		Username: "alice", Password: "alicepw"})
	must(err, "connect as alice")
	defer cli.Close()

	_, err = cli.Put(ctx, "/app/a", "1")
	must(err, "put inside the range")
	resp, err := cli.Get(ctx, "/app/", clientv3.WithPrefix())
	must(err, "get inside the range")
	check(len(resp.Kvs) == 1 && string(resp.Kvs[0].Value) == "1", "get /app/: %v", resp.Kvs)
	_, err = cli.Get(ctx, "/secret")
	check(err == rpctypes.ErrPermissionDenied, "get outside the range: %v", err)
	_, err = cli.Put(ctx, "/secret", "x")
	check(err == rpctypes.ErrPermissionDenied, "put outside the range: %v", err)
	_, err = cli.Txn(ctx).If(clientv3.Compare(clientv3.Value("/app/a"), "=", "1")).
		Then(clientv3.OpPut("/app/b", "2")).Else(clientv3.OpGet("/secret")).Commit()
	check(err == rpctypes.ErrPermissionDenied, "a txn reaching outside in its else branch: %v", err)
	_, err = cli.UserList(ctx)
	check(err == rpctypes.ErrPermissionDenied, "user list as alice: %v", err)

	// A watch inside the range sees a put; one outside is cancelled.
	wctx, wcancel := context.WithCancel(ctx)
	wch := cli.Watch(wctx, "/app/w")
	_, err = cli.Put(ctx, "/app/w", "v")
	must(err, "put watched key")
	w := <-wch
	check(w.Err() == nil && len(w.Events) == 1 && string(w.Events[0].Kv.Value) == "v", "watch: %v %v", w.Err(), w.Events)
	denied := <-cli.Watch(wctx, "/secret")
	check(denied.Canceled, "a watch outside the range was not cancelled: %+v", denied)
	wcancel()

	// The concurrency recipes, with the user's keys.
	session, err := concurrency.NewSession(cli, concurrency.WithTTL(10))
	must(err, "session")
	mu := concurrency.NewMutex(session, "/app/lock")
	must(mu.Lock(ctx), "lock")
	must(mu.Unlock(ctx), "unlock")
	e := concurrency.NewElection(session, "/app/election")
	must(e.Campaign(ctx, "me"), "campaign")
	leader, err := e.Leader(ctx)
	must(err, "leader")
	check(string(leader.Kvs[0].Value) == "me", "leader %v", leader.Kvs)
	must(e.Resign(ctx), "resign")
	outside := concurrency.NewMutex(session, "/locks/other")
	err = outside.Lock(ctx)
	check(err == rpctypes.ErrPermissionDenied, "a lock outside the range: %v", err)
	session.Close()

	// The token expires; the client notices and authenticates again.
	time.Sleep(time.Duration(ttl)*time.Second + 1500*time.Millisecond)
	_, err = cli.Put(ctx, "/app/after", "1")
	must(err, "put after the token expired")

	// auth disable leaves alice's token stale. etcd refuses a token it does not know even with auth
	// off; the client then asks for a new token, which fails as auth is off, and that is the answer.
	root, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second,
		Username: "root", Password: "rootpw"})
	must(err, "connect as root")
	defer root.Close()
	_, err = root.AuthDisable(ctx)
	must(err, "auth disable")
	_, err = cli.Put(ctx, "/app/stale", "1")
	check(rpctypes.Error(err) == rpctypes.ErrAuthNotEnabled, "a put with a token from before auth disable: %v", err)
	_, err = cli.Get(ctx, "/secret")
	check(rpctypes.Error(err) == rpctypes.ErrAuthNotEnabled, "a get with a token from before auth disable: %v", err)
	anon, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second})
	must(err, "connect without a user")
	defer anon.Close()
	got, err := anon.Get(ctx, "/secret")
	must(err, "a get without a user once auth is off")
	check(len(got.Kvs) == 1 && string(got.Kvs[0].Value) == "s", "/secret once auth is off: %v", got.Kvs)

	fmt.Println("OK")
}
