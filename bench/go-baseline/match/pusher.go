package main

import (
	"context"
	"log"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	gatewaypb "gobaseline/pb/switchyard_gateway_v1"
)

const (
	// pushQueue: pushes waiting for the gateway.
	pushQueue = 4096
	// maxBatch: pushes sent in one PushBatch call at most.
	maxBatch = 512
	// gatewayTimeout: how long one call to the gateway may take.
	gatewayTimeout = 3 * time.Second
)

// pusher is go-room's push pipeline to the gateway: one goroutine sends what is queued, in
// queue order, batching whatever has accumulated while the previous call was in flight. Unlike
// go-room, which queues under a room's lock and so drops when the queue is full, go-match
// queues from placement goroutines, which wait for room instead: a dropped MatchFound would
// strand its player.
type pusher struct {
	queue chan *gatewaypb.PushRequest

	mu     sync.Mutex
	client gatewaypb.GatewayClient
}

func newPusher() *pusher {
	return &pusher{queue: make(chan *gatewaypb.PushRequest, pushQueue)}
}

// connect sets the gateway (once; later addresses are ignored).
func (p *pusher) connect(addr string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.client != nil {
		return nil
	}
	conn, err := grpc.Dial(addr,
		grpc.WithInsecure(),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: 5 * time.Second,
		}),
		grpc.WithDefaultCallOptions(grpc.WaitForReady(true)),
	)
	if err != nil {
		return err
	}
	p.client = gatewaypb.NewGatewayClient(conn)
	return nil
}

// gateway returns the gateway's client, nil while no gateway is known.
func (p *pusher) gateway() gatewaypb.GatewayClient {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.client
}

// enqueue queues a push, waiting while the queue is full.
func (p *pusher) enqueue(req *gatewaypb.PushRequest) {
	p.queue <- req
}

func (p *pusher) run() {
	batch := make([]*gatewaypb.PushRequest, 0, maxBatch)
	for first := range p.queue {
		batch = append(batch[:0], first)
	fill:
		for len(batch) < maxBatch {
			select {
			case next := <-p.queue:
				batch = append(batch, next)
			default:
				break fill
			}
		}
		client := p.gateway()
		if client == nil {
			log.Printf("no gateway known yet; %d pushes dropped", len(batch))
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), gatewayTimeout)
		_, err := client.PushBatch(ctx, &gatewaypb.PushBatchRequest{Pushes: batch})
		cancel()
		if err != nil {
			log.Printf("PushBatch of %d pushes failed: %v", len(batch), err)
		}
		for i := range batch {
			batch[i] = nil
		}
	}
}
