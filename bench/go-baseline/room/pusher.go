package main

import (
	"context"
	"log"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	gatewaypb "gobaseline/pb/switchyard_gateway_v1"
)

const (
	// pushQueue: pushes waiting for the gateway before new ones are dropped (and counted).
	pushQueue = 4096
	// maxBatch: pushes sent in one PushBatch call at most.
	maxBatch = 512
	// gatewayTimeout: how long one PushBatch call may take.
	gatewayTimeout = 3 * time.Second
)

// pusher is the ordered push pipeline to the gateway: one goroutine sends what is queued, in
// queue order, batching whatever has accumulated while the previous call was in flight.
type pusher struct {
	queue   chan *gatewaypb.PushRequest
	dropped uint64 // atomic

	mu     sync.Mutex
	addr   string
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
	p.addr, p.client = addr, gatewaypb.NewGatewayClient(conn)
	return nil
}

func (p *pusher) connected() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.client != nil
}

func (p *pusher) gateway() gatewaypb.GatewayClient {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.client
}

// enqueue queues a push without waiting. Callers queue a room's pushes under the room's lock,
// so every member sees the room's events in one order.
func (p *pusher) enqueue(req *gatewaypb.PushRequest) {
	select {
	case p.queue <- req:
	default:
		if n := atomic.AddUint64(&p.dropped, 1); n&(n-1) == 0 { // log at 1, 2, 4, 8...
			log.Printf("push queue to the gateway is full; %d pushes dropped so far", n)
		}
	}
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
