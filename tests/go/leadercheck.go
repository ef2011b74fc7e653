// leadercheck drives etcd's "require leader" calls with etcd's own Go client (clientv3, etcd 3.4), as
// Kubernetes makes them: it watches through one member with clientv3.WithRequireLeader and without,
// prints "watching", and waits for a line on stdin, written once the test has stopped every other
// member. Then the member has no leader: the require-leader watch must end with etcd's "no leader"
// error (etcd ends it after three election timeouts), a require-leader read must fail at once with the
// same error, the member's status must report no leader, and the plain watch must stay open. Prints
// "ok" and exits 0 when all four hold.
package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"time"

	"go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/etcdserver/api/v3rpc/rpctypes"
)

func fail(format string, args ...interface{}) {
	fmt.Printf("FAIL: "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	cli, err := clientv3.New(clientv3.Config{Endpoints: os.Args[1:2], DialTimeout: 5 * time.Second})
	if err != nil {
		fail("connect: %v", err)
	}
	defer cli.Close()
	ctx := context.Background()
	if _, err := cli.Put(ctx, "rl", "1"); err != nil {
		fail("put: %v", err)
	}
	required := cli.Watch(clientv3.WithRequireLeader(ctx), "rl")
	plain := cli.Watch(ctx, "rl")
	// Both watches are registered once an event reaches them.
	if _, err := cli.Put(ctx, "rl", "2"); err != nil {
		fail("put: %v", err)
	}
	for _, ch := range []clientv3.WatchChan{required, plain} {
		select {
		case r := <-ch:
			if r.Err() != nil || len(r.Events) != 1 {
				fail("first event: %v %v", r.Err(), r.Events)
			}
		case <-time.After(10 * time.Second):
			fail("no first event")
		}
	}
	fmt.Println("watching")
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		fail("stdin: %v", err)
	}

	deadline := time.After(30 * time.Second)
	for ended := false; !ended; {
		select {
		case r, open := <-required:
			if !open {
				fail("the require-leader watch closed without etcd's error")
			}
			if r.Err() != nil {
				if r.Err() != rpctypes.ErrNoLeader {
					fail("the require-leader watch ended with %v, not %v", r.Err(), rpctypes.ErrNoLeader)
				}
				ended = true
			}
		case <-deadline:
			fail("the require-leader watch is still open 30 s after the member lost its leader")
		}
	}

	rctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(ctx), 10*time.Second)
	defer cancel()
	_, err = cli.Get(rctx, "rl", clientv3.WithSerializable())
	if err != rpctypes.ErrNoLeader {
		fail("a require-leader read without a leader: %v, not %v", err, rpctypes.ErrNoLeader)
	}
	if _, err := cli.Get(ctx, "rl", clientv3.WithSerializable()); err != nil {
		fail("a plain serializable read without a leader: %v", err)
	}

	// Nor does the member report a leader any more (etcd's leader steps down without its quorum).
	st, err := cli.Status(ctx, os.Args[1])
	if err != nil || st.Leader != 0 {
		fail("status without a leader: %v, leader %x", err, st)
	}

	select {
	case r := <-plain:
		fail("the plain watch did not stay open: %v", r.Err())
	default:
	}
	fmt.Println("ok")
}
