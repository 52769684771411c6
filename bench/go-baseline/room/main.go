// go-room: the Go baseline of the Switchyard room server. It serves the Logic gRPC service
// (login, echo, the room routes, and go-match's load report and rooms created for a match)
// and pushes room events to clients through the gateway's Gateway.PushBatch, from one ordered,
// batching sender goroutine.
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"os"

	"google.golang.org/grpc"

	logicpb "gobaseline/pb/switchyard_logic_v1"
)

// nodeID names this server in room ids ("<n>@go-room") and RoomInfo.node_id.
const nodeID = "go-room"

func main() {
	grpcAddr := flag.String("grpc", "127.0.0.1:0", "gRPC listen address of the Logic service")
	gatewayAddr := flag.String("gateway", "", "gRPC address of the gateway, HOST:PORT (default: the "+
		"address the gateway sends with its calls, so go-room can start first)")
	maxMembers := flag.Int("max-members", 16, "member limit of rooms created without one")
	flag.Parse()
	log.SetPrefix("go-room: ")

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

	server := grpc.NewServer()
	logicpb.RegisterLogicServer(server, newLogic(pushes, *maxMembers, *gatewayAddr == ""))
	fmt.Fprintf(os.Stdout, "READY grpc=%s\n", ln.Addr())
	if err := server.Serve(ln); err != nil {
		log.Fatalf("grpc serve: %v", err)
	}
}
