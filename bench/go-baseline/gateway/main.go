// go-gateway: the Go baseline of the Switchyard gateway. Clients connect over WebSocket
// (binary messages on /ws) or TCP (4-byte big-endian length, then an encoded Envelope); every
// request is routed over gRPC to a logic server (go-room; with -match, cmd 20 goes to go-match),
// and logic servers push to clients through this process's Gateway gRPC service.
//
// One goroutine reads each connection, one writes it (a bounded channel of envelopes drained
// into a bufio.Writer that is flushed when the channel is empty), and each request runs in its
// own goroutine, like the Rust gateway's tasks.
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/keepalive"

	gatewaypb "gobaseline/pb/switchyard_gateway_v1"
	logicpb "gobaseline/pb/switchyard_logic_v1"
)

// nodeID is what this gateway calls itself towards logic servers.
const nodeID = "go-gateway"

// gatewayAddrKey is the gRPC metadata key carrying this gateway's gRPC address on Logic calls,
// so a go-room or go-match started before the gateway (ports are picked at start) can push
// back to it.
const gatewayAddrKey = "x-switchyard-gateway-grpc"

// quickBackoff retries a lost logic server within a second (grpc-go's default waits up to 2 min).
var quickBackoff = backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second}

func main() {
	wsAddr := flag.String("ws", "127.0.0.1:0", "WebSocket listen address (path /ws)")
	tcpAddr := flag.String("tcp", "127.0.0.1:0", "TCP listen address (length-prefixed frames)")
	grpcAddr := flag.String("grpc", "127.0.0.1:0", "gRPC listen address of the Gateway service")
	roomAddr := flag.String("room", "", "gRPC address of the logic server (go-room), HOST:PORT")
	matchAddr := flag.String("match", "", "gRPC address of the match server (go-match), HOST:PORT; "+
		"optional: without it, every route goes to -room")
	maxFrame := flag.Int("max-frame", 1<<20, "largest frame in bytes")
	outboundQueue := flag.Int("outbound-queue", 1024, "frames queued per session before it is dropped")
	maxInFlight := flag.Int("max-in-flight", 256, "requests in flight per session before reading pauses")
	requestTimeout := flag.Duration("request-timeout", 5*time.Second, "logic server answer limit")
	idleTimeout := flag.Duration("idle-timeout", 30*time.Second, "close sessions silent this long")
	flag.Parse()
	log.SetPrefix("go-gateway: ")
	if *roomAddr == "" {
		log.Fatal("-room HOST:PORT is required")
	}

	wsLn, err := net.Listen("tcp", *wsAddr)
	if err != nil {
		log.Fatalf("ws listen: %v", err)
	}
	tcpLn, err := net.Listen("tcp", *tcpAddr)
	if err != nil {
		log.Fatalf("tcp listen: %v", err)
	}
	grpcLn, err := net.Listen("tcp", *grpcAddr)
	if err != nil {
		log.Fatalf("grpc listen: %v", err)
	}

	room := dialLogic(*roomAddr)
	var match logicpb.LogicClient
	if *matchAddr != "" {
		match = dialLogic(*matchAddr)
	}

	g := newGateway(config{
		maxFrame:       *maxFrame,
		outboundQueue:  *outboundQueue,
		maxInFlight:    *maxInFlight,
		requestTimeout: *requestTimeout,
		idleTimeout:    *idleTimeout,
		grpcAddr:       grpcLn.Addr().String(),
	}, room, match)

	server := grpc.NewServer()
	gatewaypb.RegisterGatewayServer(server, &gatewayService{g: g})
	go func() {
		if err := server.Serve(grpcLn); err != nil {
			log.Fatalf("grpc serve: %v", err)
		}
	}()

	go g.serveTCP(tcpLn)

	mux := http.NewServeMux()
	mux.HandleFunc("/ws", g.serveWS)
	httpServer := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := httpServer.Serve(wsLn); err != nil {
			log.Fatalf("ws serve: %v", err)
		}
	}()

	fmt.Fprintf(os.Stdout, "READY ws=ws://%s/ws tcp=%s grpc=%s\n",
		wsLn.Addr(), tcpLn.Addr(), grpcLn.Addr())
	select {}
}

// dialLogic opens one shared connection to a logic server; grpc-go multiplexes every request
// on it. Calls wait (up to the request timeout) for the connection rather than failing fast,
// so the processes may start in any order.
func dialLogic(addr string) logicpb.LogicClient {
	conn, err := grpc.Dial(addr,
		grpc.WithInsecure(),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: quickBackoff, MinConnectTimeout: 5 * time.Second}),
		grpc.WithDefaultCallOptions(grpc.WaitForReady(true)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second}),
	)
	if err != nil {
		log.Fatalf("dial %s: %v", addr, err)
	}
	return logicpb.NewLogicClient(conn)
}
