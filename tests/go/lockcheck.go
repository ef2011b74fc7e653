// lockcheck holds etcd's own concurrency.Mutex (clientv3, etcd 3.4) as told by lines on stdin, so a test
// can make it contend with concord's Rust Mutex for the same name. Commands: "lock", "trylock" (a lock
// attempt of 300 ms), "unlock"; answers: "locked", "busy", "unlocked", or "error: ...".
package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"time"

	"go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/clientv3/concurrency"
)

func main() {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{os.Args[1]}, DialTimeout: 5 * time.Second})
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	defer cli.Close()
	s, err := concurrency.NewSession(cli, concurrency.WithTTL(10))
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	m := concurrency.NewMutex(s, os.Args[2])
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		switch in.Text() {
		case "lock":
			if err := m.Lock(context.Background()); err != nil {
				fmt.Println("error:", err)
			} else {
				fmt.Println("locked", m.Key())
			}
		case "trylock":
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			if err := m.Lock(ctx); err != nil {
				fmt.Println("busy")
			} else {
				fmt.Println("locked", m.Key())
			}
			cancel()
		case "unlock":
			if err := m.Unlock(context.Background()); err != nil {
				fmt.Println("error:", err)
			} else {
				fmt.Println("unlocked")
			}
		}
	}
}
