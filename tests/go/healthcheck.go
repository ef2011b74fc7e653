// healthcheck asks a member's gRPC health service (grpc.health.v1, as gRPC load balancers and probes
// do) with grpc-go's own client: Check of the server as a whole (""), Check of a name the server does
// not know, and the first answer of a Watch. Prints one line per answer, to compare with etcd's.
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := grpc.DialContext(ctx, os.Args[1], grpc.WithInsecure(), grpc.WithBlock())
	if err != nil {
		fmt.Printf("FAIL: dial: %v\n", err)
		os.Exit(1)
	}
	defer conn.Close()
	client := healthpb.NewHealthClient(conn)
	for _, service := range []string{"", "etcdserverpb.KV.nothing"} {
		resp, err := client.Check(ctx, &healthpb.HealthCheckRequest{Service: service})
		if err != nil {
			s, _ := status.FromError(err)
			fmt.Printf("check %q: %v %q\n", service, s.Code(), s.Message())
		} else {
			fmt.Printf("check %q: %v\n", service, resp.Status)
		}
	}
	stream, err := client.Watch(ctx, &healthpb.HealthCheckRequest{Service: ""})
	if err != nil {
		fmt.Printf("FAIL: watch: %v\n", err)
		os.Exit(1)
	}
	first, err := stream.Recv()
	if err != nil {
		fmt.Printf("FAIL: watch: %v\n", err)
		os.Exit(1)
	}
	fmt.Printf("watch \"\": %v\n", first.Status)
}
