// queuecheck uses etcd's own recipe.Queue (contrib/recipes, etcd 3.4) so a test can share a queue
// between Go and concord's Rust Queue: "queuecheck ENDPOINT NAME produce N" enqueues go-0..go-N-1;
// "queuecheck ENDPOINT NAME consume N" dequeues N items and prints each value on a line.
package main

import (
	"fmt"
	"os"
	"strconv"
	"time"

	"go.etcd.io/etcd/clientv3"
	recipe "go.etcd.io/etcd/contrib/recipes"
)

func main() {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{os.Args[1]}, DialTimeout: 5 * time.Second})
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	defer cli.Close()
	q := recipe.NewQueue(cli, os.Args[2])
	n, _ := strconv.Atoi(os.Args[4])
	for i := 0; i < n; i++ {
		if os.Args[3] == "produce" {
			if err := q.Enqueue(fmt.Sprintf("go-%d", i)); err != nil {
				fmt.Println("error:", err)
				os.Exit(1)
			}
		} else {
			v, err := q.Dequeue()
			if err != nil {
				fmt.Println("error:", err)
				os.Exit(1)
			}
			fmt.Println(v)
		}
	}
}
