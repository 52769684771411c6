package main

import (
	"context"
	"fmt"
	"log"
	"sync"
	"time"

	"github.com/golang/protobuf/proto"
	"google.golang.org/grpc/metadata"

	gatewaypb "gobaseline/pb/switchyard_gateway_v1"
	logicpb "gobaseline/pb/switchyard_logic_v1"
	matchpb "gobaseline/pb/switchyard_matchmaking_v1"
	roompb "gobaseline/pb/switchyard_room_v1"
)

func route(cmd, sub uint32) uint32 { return cmd<<16 | sub }

// Routes (docs/PROTOCOL.md) and go-room's mesh routes (proto/src/lib.rs).
var (
	routeEnqueue     = route(20, 1)
	routeCancel      = route(20, 2)
	pushMatchFound   = route(21, 1)
	pushMatchDelayed = route(21, 2)
)

const (
	roomLoad      = 0x1101 // RoomRef → LoadReport
	roomCreateFor = 0x1102 // CreateRoomFor → RoomInfo
)

// Status codes: client.proto's ErrorCode and matchmaking's application codes.
const (
	codeRouteNotFound = 1
	codeLoginRequired = 2
	codeBadRequest    = 5
	codeUnknownMode   = 1101
	codeAlreadyQueued = 1102
)

// gatewayAddrKey: the metadata key with which go-gateway tells its gRPC address.
const gatewayAddrKey = "x-switchyard-gateway-grpc"

// roomTimeout: how long go-room may take to create a room.
const roomTimeout = 5 * time.Second

// notPlaced: why a match could not be placed; reason is for the players, cause for the log.
type notPlaced struct {
	reason string
	cause  error
}

func (e *notPlaced) Error() string { return e.reason + ": " + e.cause.Error() }

type matchmaker struct {
	logicpb.UnimplementedLogicServer
	room           logicpb.LogicClient
	pushes         *pusher
	learnAddr      bool // take the gateway address from call metadata
	collectTimeout time.Duration
	retry          time.Duration

	mu     sync.Mutex
	queues *queues
}

func (m *matchmaker) Handle(ctx context.Context, req *logicpb.LogicRequest) (*logicpb.LogicResponse, error) {
	if m.learnAddr && m.pushes.gateway() == nil {
		if md, ok := metadata.FromIncomingContext(ctx); ok {
			if addrs := md.Get(gatewayAddrKey); len(addrs) > 0 {
				_ = m.pushes.connect(addrs[0])
			}
		}
	}
	if req.UserId == "" {
		return &logicpb.LogicResponse{Status: codeLoginRequired, Error: "log in first"}, nil
	}
	switch req.Route {
	case routeEnqueue:
		var enqueue matchpb.Enqueue
		if err := proto.Unmarshal(req.Payload, &enqueue); err != nil {
			return &logicpb.LogicResponse{Status: codeBadRequest, Error: "undecodable request: " + err.Error()}, nil
		}
		m.mu.Lock()
		position, formed, err := m.queues.enqueue(enqueue.Mode, ticket{user: req.UserId, gateway: req.GatewayNode})
		m.mu.Unlock()
		if err != nil {
			code := uint32(codeAlreadyQueued)
			if err == errUnknownMode {
				code = codeUnknownMode
			}
			return &logicpb.LogicResponse{Status: code, Error: err.Error()}, nil
		}
		if formed != nil {
			go m.place(enqueue.Mode, formed)
		}
		// Watch the session: a player who disconnects leaves the queue.
		return reply(&matchpb.Queued{Mode: enqueue.Mode, Position: uint32(position)}, true)
	case routeCancel:
		m.mu.Lock()
		wasQueued := m.queues.cancel(req.UserId)
		m.mu.Unlock()
		return reply(&matchpb.Cancelled{WasQueued: wasQueued}, false)
	default:
		return &logicpb.LogicResponse{Status: codeRouteNotFound, Error: "no server serves this route"}, nil
	}
}

func (m *matchmaker) SessionClosed(_ context.Context, req *logicpb.SessionEnded) (*logicpb.SessionClosedAck, error) {
	m.mu.Lock()
	m.queues.disconnected(req.UserId)
	m.mu.Unlock()
	return &logicpb.SessionClosedAck{}, nil
}

func reply(msg proto.Message, watch bool) (*logicpb.LogicResponse, error) {
	payload, err := proto.Marshal(msg)
	if err != nil {
		return nil, err
	}
	return &logicpb.LogicResponse{Payload: payload, WatchSession: watch}, nil
}

// place places a formed match: a room on go-room, the players bound to it, then told. When
// go-room cannot take the match, the players are told it is delayed and queued again (at the
// front) after the retry delay.
func (m *matchmaker) place(mode string, formed []ticket) {
	for {
		info, err := m.createRoom(mode, formed)
		if err == nil {
			m.announce(mode, formed, info)
			m.mu.Lock()
			m.queues.placed(formed)
			m.mu.Unlock()
			return
		}
		log.Printf("match of %d in %s not placed; players stay queued: %v", len(formed), mode, err)
		m.push(userIDs(formed), pushMatchDelayed, &matchpb.MatchDelayed{Mode: mode, Reason: err.reason})
		time.Sleep(m.retry)
		m.mu.Lock()
		formed = m.queues.requeue(mode, formed)
		m.mu.Unlock()
		if formed == nil {
			return
		}
	}
}

// createRoom asks go-room for its load, then for a room with the players seated.
func (m *matchmaker) createRoom(mode string, formed []ticket) (*roompb.RoomInfo, *notPlaced) {
	var load roompb.LoadReport
	if err := m.callRoom(m.collectTimeout, roomLoad, &roompb.RoomRef{}, &load); err != nil {
		return nil, &notPlaced{"no room server is available", fmt.Errorf("load report: %w", err)}
	}
	if load.Capacity != 0 && load.Rooms >= load.Capacity {
		return nil, &notPlaced{"no room server is available", fmt.Errorf("%s hosts its maximum of rooms", load.NodeId)}
	}
	create := &roompb.CreateRoomFor{
		Members:    make([]*roompb.Member, len(formed)),
		MaxMembers: uint32(len(formed)),
		Properties: map[string]string{"mode": mode},
	}
	for i, t := range formed {
		create.Members[i] = &roompb.Member{UserId: t.user, GatewayNode: t.gateway}
	}
	info := new(roompb.RoomInfo)
	if err := m.callRoom(roomTimeout, roomCreateFor, create, info); err != nil {
		return nil, &notPlaced{"every room server refused the room", fmt.Errorf("room creation: %w", err)}
	}
	return info, nil
}

func (m *matchmaker) callRoom(timeout time.Duration, route uint32, req, resp proto.Message) error {
	payload, err := proto.Marshal(req)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	answer, err := m.room.Handle(ctx, &logicpb.LogicRequest{Route: route, Payload: payload})
	if err != nil {
		return err
	}
	if answer.Status != 0 {
		return fmt.Errorf("%s (status %d)", answer.Error, answer.Status)
	}
	return proto.Unmarshal(answer.Payload, resp)
}

// announce binds the players to the room's server (so it hears of their disconnects), then
// tells them where their match is.
func (m *matchmaker) announce(mode string, formed []ticket, info *roompb.RoomInfo) {
	users := userIDs(formed)
	if gateway := m.pushes.gateway(); gateway != nil {
		ctx, cancel := context.WithTimeout(context.Background(), gatewayTimeout)
		_, err := gateway.Bind(ctx, &gatewaypb.BindRequest{
			Mode:      logicpb.BindMode_BIND_MODE_COVER,
			UserIds:   users,
			NodeIds:   []string{info.NodeId},
			LocalOnly: true,
		})
		cancel()
		if err != nil {
			log.Printf("binding the players of room %s to %s failed: %v", info.RoomId, info.NodeId, err)
		}
	}
	m.push(users, pushMatchFound, &matchpb.MatchFound{
		Mode:     mode,
		RoomId:   info.RoomId,
		RoomNode: info.NodeId,
		Members:  users,
	})
}

func (m *matchmaker) push(users []string, route uint32, msg proto.Message) {
	payload, err := proto.Marshal(msg)
	if err != nil {
		log.Printf("push %#x: %v", route, err)
		return
	}
	m.pushes.enqueue(&gatewaypb.PushRequest{UserIds: users, Route: route, Payload: payload, LocalOnly: true})
}

func userIDs(formed []ticket) []string {
	users := make([]string, len(formed))
	for i, t := range formed {
		users[i] = t.user
	}
	return users
}
