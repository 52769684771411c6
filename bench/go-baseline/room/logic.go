package main

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/golang/protobuf/proto"
	"google.golang.org/grpc/metadata"

	gatewaypb "gobaseline/pb/switchyard_gateway_v1"
	logicpb "gobaseline/pb/switchyard_logic_v1"
	matchpb "gobaseline/pb/switchyard_matchmaking_v1"
	roompb "gobaseline/pb/switchyard_room_v1"
)

func route(cmd, sub uint32) uint32 { return cmd<<16 | sub }

// Routes (docs/PROTOCOL.md).
var (
	routeLogin      = route(1, 1)
	routeEcho       = route(2, 1)
	routeCreate     = route(10, 1)
	routeJoin       = route(10, 2)
	routeLeave      = route(10, 3)
	routeOp         = route(10, 4)
	routeSetProps   = route(10, 5)
	routeGetProps   = route(10, 6)
	routeMembers    = route(10, 7)
	pushJoined      = route(11, 1)
	pushLeft        = route(11, 2)
	pushOwner       = route(11, 3)
	pushOp          = route(11, 4)
	pushPropsChange = route(11, 5)
)

// Mesh routes (proto/src/lib.rs): calls from go-match, never from a gateway (see handleMesh).
const (
	meshLoad      = 0x1101 // RoomRef → LoadReport
	meshCreateFor = 0x1102 // CreateRoomFor → RoomInfo: a room with the matched players seated
)

// Status codes: client.proto's ErrorCode and room.proto's application codes.
const (
	codeRouteNotFound = 1
	codeLoginRequired = 2
	codeBadRequest    = 5
	codeRoomNotFound  = 1001
	codeRoomFull      = 1002
	codeNotAMember    = 1003
)

// gatewayAddrKey: the metadata key with which go-gateway tells its gRPC address.
const gatewayAddrKey = "x-switchyard-gateway-grpc"

type logicError struct {
	code uint32
	text string
}

func (e *logicError) Error() string { return e.text }

var (
	errRoomNotFound = &logicError{codeRoomNotFound, "no such room"}
	errRoomFull     = &logicError{codeRoomFull, "the room is full"}
	errNotAMember   = &logicError{codeNotAMember, "only members may do this"}
)

type logic struct {
	logicpb.UnimplementedLogicServer
	pushes     *pusher
	maxMembers int
	learnAddr  bool // take the gateway address from call metadata
	nextID     uint64

	mu        sync.RWMutex // the index; taken after a room's lock, never before
	rooms     map[string]*room
	userRooms map[string]map[string]*room
	members   uint64 // memberships in all rooms (the load report's members)
}

func newLogic(pushes *pusher, maxMembers int, learnAddr bool) *logic {
	return &logic{
		pushes:     pushes,
		maxMembers: maxMembers,
		learnAddr:  learnAddr,
		rooms:      make(map[string]*room),
		userRooms:  make(map[string]map[string]*room),
	}
}

func (l *logic) Handle(ctx context.Context, req *logicpb.LogicRequest) (*logicpb.LogicResponse, error) {
	if l.learnAddr && !l.pushes.connected() {
		if md, ok := metadata.FromIncomingContext(ctx); ok {
			if addrs := md.Get(gatewayAddrKey); len(addrs) > 0 {
				_ = l.pushes.connect(addrs[0])
			}
		}
	}
	if req.Route == meshLoad || req.Route == meshCreateFor {
		return l.handleMesh(req)
	}
	if req.Route != routeLogin && req.Route != routeEcho && req.UserId == "" {
		return &logicpb.LogicResponse{Status: codeLoginRequired, Error: "log in first"}, nil
	}
	var (
		reply proto.Message
		resp  = &logicpb.LogicResponse{}
		err   error
	)
	switch req.Route {
	case routeLogin:
		var login matchpb.Login
		if err = decode(req.Payload, &login); err == nil {
			if login.UserId == "" {
				err = &logicError{codeBadRequest, "empty user id"}
			} else {
				reply = &matchpb.LoginOk{UserId: login.UserId}
				resp.LoginUserId = login.UserId
			}
		}
	case routeEcho:
		return &logicpb.LogicResponse{Payload: req.Payload}, nil
	case routeCreate:
		var create roompb.CreateRoom
		if err = decode(req.Payload, &create); err == nil {
			reply, err = l.create(req.UserId, &create)
			resp.WatchSession = true
		}
	case routeJoin:
		var join roompb.JoinRoom
		if err = decode(req.Payload, &join); err == nil {
			reply, err = l.withRoom(join.RoomId, func(r *room) (proto.Message, error) { return l.join(r, req.UserId) })
			resp.WatchSession = true
		}
	case routeLeave:
		var leave roompb.LeaveRoom
		if err = decode(req.Payload, &leave); err == nil {
			reply, err = l.withRoom(leave.RoomId, func(r *room) (proto.Message, error) { return l.leave(r, req.UserId, "left") })
		}
	case routeOp:
		var op roompb.RoomOp
		if err = decode(req.Payload, &op); err == nil {
			reply, err = l.withRoom(op.RoomId, func(r *room) (proto.Message, error) { return l.op(r, req.UserId, op.Payload) })
		}
	case routeSetProps:
		var set roompb.SetProperties
		if err = decode(req.Payload, &set); err == nil {
			reply, err = l.withRoom(set.RoomId, func(r *room) (proto.Message, error) { return l.setProperties(r, req.UserId, set.Properties) })
		}
	case routeGetProps, routeMembers:
		var ref roompb.RoomRef
		if err = decode(req.Payload, &ref); err == nil {
			reply, err = l.withRoom(ref.RoomId, func(r *room) (proto.Message, error) { return r.infoLocked(), nil })
		}
	default:
		return &logicpb.LogicResponse{Status: codeRouteNotFound, Error: "no server serves this route"}, nil
	}
	if err != nil {
		if le, ok := err.(*logicError); ok {
			return &logicpb.LogicResponse{Status: le.code, Error: le.text}, nil
		}
		return nil, err
	}
	if resp.Payload, err = proto.Marshal(reply); err != nil {
		return nil, err
	}
	return resp, nil
}

// handleMesh serves go-match: the load report and rooms created for a match. Gateways number
// their sessions from 1, so a call with a session id comes from a client and is refused.
func (l *logic) handleMesh(req *logicpb.LogicRequest) (*logicpb.LogicResponse, error) {
	if req.SessionId != 0 {
		return &logicpb.LogicResponse{Status: codeRouteNotFound, Error: "no server serves this route"}, nil
	}
	var (
		reply proto.Message
		err   error
	)
	switch req.Route {
	case meshLoad:
		l.mu.RLock()
		reply = &roompb.LoadReport{NodeId: nodeID, Rooms: uint64(len(l.rooms)), Members: l.members}
		l.mu.RUnlock()
	case meshCreateFor:
		var create roompb.CreateRoomFor
		if err = decode(req.Payload, &create); err == nil {
			reply, err = l.createFor(&create)
		}
	}
	if err != nil {
		if le, ok := err.(*logicError); ok {
			return &logicpb.LogicResponse{Status: le.code, Error: le.text}, nil
		}
		return nil, err
	}
	payload, err := proto.Marshal(reply)
	if err != nil {
		return nil, err
	}
	return &logicpb.LogicResponse{Payload: payload}, nil
}

func (l *logic) SessionClosed(_ context.Context, req *logicpb.SessionEnded) (*logicpb.SessionClosedAck, error) {
	l.mu.RLock()
	rooms := make([]*room, 0, len(l.userRooms[req.UserId]))
	for _, r := range l.userRooms[req.UserId] {
		rooms = append(rooms, r)
	}
	l.mu.RUnlock()
	for _, r := range rooms {
		r.mu.Lock()
		if !r.removed {
			_, _ = l.leave(r, req.UserId, "disconnected")
		}
		r.mu.Unlock()
	}
	return &logicpb.SessionClosedAck{}, nil
}

func decode(payload []byte, m proto.Message) error {
	if err := proto.Unmarshal(payload, m); err != nil {
		return &logicError{codeBadRequest, "undecodable request: " + err.Error()}
	}
	return nil
}

// ---- rooms ----

// room is one room; its lock orders its commands, so its seq and its pushes share one order.
type room struct {
	id         string
	mu         sync.Mutex
	owner      string
	members    []string // join order: the next owner is the longest-standing member
	maxMembers int
	properties map[string]string
	opSeq      uint64
	removed    bool
}

func (l *logic) create(user string, req *roompb.CreateRoom) (proto.Message, error) {
	max := int(req.MaxMembers)
	if max == 0 {
		max = l.maxMembers
	}
	r := l.addRoom(max, req.Properties)
	defer r.mu.Unlock()
	return l.join(r, user)
}

// createFor creates a room for a match with its players seated (logic-room's create-for-match):
// each joins in the list's order, so the first owns the room.
func (l *logic) createFor(req *roompb.CreateRoomFor) (proto.Message, error) {
	if len(req.Members) == 0 {
		return nil, &logicError{codeBadRequest, "a room for a match needs members"}
	}
	for _, m := range req.Members {
		if m.GetUserId() == "" {
			return nil, &logicError{codeBadRequest, "empty user id"}
		}
	}
	max := int(req.MaxMembers)
	if max < len(req.Members) {
		max = len(req.Members)
	}
	r := l.addRoom(max, req.Properties)
	defer r.mu.Unlock()
	for _, m := range req.Members {
		if _, err := l.join(r, m.UserId); err != nil {
			return nil, err
		}
	}
	return r.infoLocked(), nil
}

// addRoom registers a new room and returns it locked, so nobody sees it before its creators
// have joined.
func (l *logic) addRoom(max int, properties map[string]string) *room {
	r := &room{
		id:         strconv.FormatUint(atomic.AddUint64(&l.nextID, 1), 10) + "@" + nodeID,
		maxMembers: max,
		properties: make(map[string]string, len(properties)),
	}
	for k, v := range properties {
		r.properties[k] = v
	}
	r.mu.Lock()
	l.mu.Lock()
	l.rooms[r.id] = r
	l.mu.Unlock()
	return r
}

// withRoom runs f on the room under its lock.
func (l *logic) withRoom(id string, f func(*room) (proto.Message, error)) (proto.Message, error) {
	l.mu.RLock()
	r := l.rooms[id]
	l.mu.RUnlock()
	if r == nil {
		return nil, errRoomNotFound
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.removed {
		return nil, errRoomNotFound
	}
	return f(r)
}

func (l *logic) join(r *room, user string) (proto.Message, error) {
	if r.memberIndex(user) >= 0 {
		return r.infoLocked(), nil // joining again is harmless
	}
	if len(r.members) >= r.maxMembers {
		return nil, errRoomFull
	}
	r.members = append(r.members, user)
	if r.owner == "" {
		r.owner = user
	}
	l.mu.Lock()
	mine := l.userRooms[user]
	if mine == nil {
		mine = make(map[string]*room)
		l.userRooms[user] = mine
	}
	mine[r.id] = r
	l.members++
	l.mu.Unlock()
	l.broadcast(r, pushJoined, &roompb.MemberEvent{RoomId: r.id, UserId: user, Reason: "joined"})
	return r.infoLocked(), nil
}

func (l *logic) leave(r *room, user, reason string) (proto.Message, error) {
	i := r.memberIndex(user)
	if i < 0 {
		return nil, errNotAMember
	}
	r.members = append(r.members[:i], r.members[i+1:]...)
	l.mu.Lock()
	l.members--
	if mine := l.userRooms[user]; mine != nil {
		delete(mine, r.id)
		if len(mine) == 0 {
			delete(l.userRooms, user)
		}
	}
	if len(r.members) == 0 {
		r.removed = true
		delete(l.rooms, r.id)
	}
	l.mu.Unlock()
	l.broadcast(r, pushLeft, &roompb.MemberEvent{RoomId: r.id, UserId: user, Reason: reason})
	if r.owner == user {
		r.owner = ""
		if len(r.members) > 0 {
			r.owner = r.members[0]
			l.broadcast(r, pushOwner, &roompb.OwnerChanged{RoomId: r.id, Owner: r.owner})
		}
	}
	return r.infoLocked(), nil
}

func (l *logic) op(r *room, user string, payload []byte) (proto.Message, error) {
	if r.memberIndex(user) < 0 {
		return nil, errNotAMember
	}
	r.opSeq++
	l.broadcast(r, pushOp, &roompb.RoomOpEvent{RoomId: r.id, Seq: r.opSeq, From: user, Payload: payload})
	return &roompb.OpAccepted{Seq: r.opSeq}, nil
}

func (l *logic) setProperties(r *room, user string, props map[string]string) (proto.Message, error) {
	if r.memberIndex(user) < 0 {
		return nil, errNotAMember
	}
	for k, v := range props {
		if v == "" {
			delete(r.properties, k)
		} else {
			r.properties[k] = v
		}
	}
	l.broadcast(r, pushPropsChange, &roompb.PropertiesChanged{RoomId: r.id, Properties: copyMap(r.properties)})
	return r.infoLocked(), nil
}

// broadcast queues one push to every member; called under the room's lock.
func (l *logic) broadcast(r *room, route uint32, event proto.Message) {
	if len(r.members) == 0 {
		return
	}
	payload, err := proto.Marshal(event)
	if err != nil {
		return
	}
	l.pushes.enqueue(&gatewaypb.PushRequest{
		UserIds:   append([]string(nil), r.members...),
		Route:     route,
		Payload:   payload,
		LocalOnly: true,
	})
}

func (r *room) memberIndex(user string) int {
	for i, m := range r.members {
		if m == user {
			return i
		}
	}
	return -1
}

func (r *room) infoLocked() *roompb.RoomInfo {
	return &roompb.RoomInfo{
		RoomId:     r.id,
		NodeId:     nodeID,
		Owner:      r.owner,
		Members:    append([]string(nil), r.members...),
		MaxMembers: uint32(r.maxMembers),
		Properties: copyMap(r.properties),
	}
}

func copyMap(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
