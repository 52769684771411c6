// go-match: the Go baseline of the Switchyard match server (logic-match). It serves the Logic
// gRPC service: 20:1 enqueue and 20:2 cancel. When a mode's queue holds a full match, it asks
// go-room for its load, has it create a room with the players seated, binds them to go-room
// through the gateway, and pushes MatchFound to them through Gateway.PushBatch.
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	logicpb "gobaseline/pb/switchyard_logic_v1"
)

func main() {
	grpcAddr := flag.String("grpc", "127.0.0.1:0", "gRPC listen address of the Logic service")
	roomAddr := flag.String("room", "", "gRPC address of the room server (go-room), HOST:PORT")
	gatewayAddr := flag.String("gateway", "", "gRPC address of the gateway, HOST:PORT (default: the "+
		"address the gateway sends with its calls, so go-match can start first)")
	modesFlag := flag.String("modes", "duel=2", "modes and their match sizes: name=players, comma separated")
	collectTimeout := flag.Duration("collect-timeout", 500*time.Millisecond, "time go-room has to report its load")
	retry := flag.Duration("retry", time.Second, "delay before a match that could not be placed is queued again")
	flag.Parse()
	log.SetPrefix("go-match: ")
	if *roomAddr == "" {
		log.Fatal("-room HOST:PORT is required")
	}
	modes, err := parseModes(*modesFlag)
	if err != nil {
		log.Fatalf("-modes: %v", err)
	}

	ln, err := net.Listen("tcp", *grpcAddr)
	if err != nil {
		log.Fatalf("grpc listen: %v", err)
	}
	pushes := newPusher()
	if *gatewayAddr != "" {
		if err := pushes.connect(*gatewayAddr); err != nil {
			log.Fatalf("dial %s: %v", *gatewayAddr, err)
		}
	}
	go pushes.run()

	// Calls wait for go-room (up to their timeout), so the processes may start in any order.
	roomConn, err := grpc.Dial(*roomAddr,
		grpc.WithInsecure(),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: 5 * time.Second,
		}),
		grpc.WithDefaultCallOptions(grpc.WaitForReady(true)),
	)
	if err != nil {
		log.Fatalf("dial %s: %v", *roomAddr, err)
	}

	server := grpc.NewServer()
	logicpb.RegisterLogicServer(server, &matchmaker{
		room:           logicpb.NewLogicClient(roomConn),
		pushes:         pushes,
		learnAddr:      *gatewayAddr == "",
		collectTimeout: *collectTimeout,
		retry:          *retry,
		queues:         newQueues(modes),
	})
	fmt.Fprintf(os.Stdout, "READY grpc=%s\n", ln.Addr())
	if err := server.Serve(ln); err != nil {
		log.Fatalf("grpc serve: %v", err)
	}
}
