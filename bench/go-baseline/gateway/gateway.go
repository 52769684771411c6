package main

import (
	"context"
	"errors"
	"log"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golang/protobuf/proto"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	clientpb "gobaseline/pb/switchyard_client_v1"
	logicpb "gobaseline/pb/switchyard_logic_v1"
)

// Status codes of client.proto's ErrorCode that this gateway sends.
const (
	codeRouteNotFound     = uint32(clientpb.ErrorCode_ERROR_CODE_ROUTE_NOT_FOUND)
	codeLoginRequired     = uint32(clientpb.ErrorCode_ERROR_CODE_LOGIN_REQUIRED)
	codeBadRequest        = uint32(clientpb.ErrorCode_ERROR_CODE_BAD_REQUEST)
	codeTooLarge          = uint32(clientpb.ErrorCode_ERROR_CODE_TOO_LARGE)
	codeInternal          = uint32(clientpb.ErrorCode_ERROR_CODE_INTERNAL)
	codeUpstreamTimeout   = uint32(clientpb.ErrorCode_ERROR_CODE_UPSTREAM_TIMEOUT)
	codeUpstreamFailed    = uint32(clientpb.ErrorCode_ERROR_CODE_UPSTREAM_FAILED)
	codeSlowConsumer      = uint32(clientpb.ErrorCode_ERROR_CODE_SLOW_CONSUMER)
	codeIdleTimeout       = uint32(clientpb.ErrorCode_ERROR_CODE_IDLE_TIMEOUT)
	codeLoggedInElsewhere = uint32(clientpb.ErrorCode_ERROR_CODE_LOGGED_IN_ELSEWHERE)
	codeKicked            = uint32(clientpb.ErrorCode_ERROR_CODE_KICKED)
)

// routeLogin (1:1) is the only public route: the one request allowed before login.
const routeLogin = 1<<16 | 1

// cmdMatch: requests with this command go to go-match (when the gateway has one).
const cmdMatch = 20

// backends is a set of the logic servers behind this gateway.
type backends uint8

const (
	backendRoom backends = 1 << iota
	backendMatch
)

// Node ids of the logic servers, as they name themselves in Gateway.Bind calls.
const (
	roomNode  = "go-room"
	matchNode = "go-match"
)

type config struct {
	maxFrame       int
	outboundQueue  int
	maxInFlight    int
	requestTimeout time.Duration
	idleTimeout    time.Duration
	grpcAddr       string
}

type gateway struct {
	cfg    config
	room   logicpb.LogicClient
	match  logicpb.LogicClient // nil: every route goes to room
	callMD metadata.MD
	nextID uint64 // atomic

	mu    sync.RWMutex
	users map[string]*session
}

func newGateway(cfg config, room, match logicpb.LogicClient) *gateway {
	return &gateway{
		cfg:    cfg,
		room:   room,
		match:  match,
		callMD: metadata.Pairs(gatewayAddrKey, cfg.grpcAddr),
		users:  make(map[string]*session),
	}
}

// serve runs one connection: the writer in its own goroutine, the reader in this one.
func (g *gateway) serve(t transport) {
	s := newSession(atomic.AddUint64(&g.nextID, 1), g.cfg.outboundQueue, g.cfg.maxInFlight, t)
	go s.writeLoop()
	g.readLoop(s)
	s.finish()
	g.sessionEnded(s)
}

func (g *gateway) readLoop(s *session) {
	for {
		if err := s.t.setReadDeadline(time.Now().Add(g.cfg.idleTimeout)); err != nil {
			return
		}
		frame, err := s.t.readFrame()
		switch {
		case err == nil:
		case errors.Is(err, errTooLarge):
			s.send(errorEnvelope(0, 0, codeTooLarge, "frame exceeds the size limit"))
			return
		case errors.Is(err, errUnsupported):
			s.send(errorEnvelope(0, 0, codeBadRequest, "text messages are not supported"))
			continue
		case isTimeout(err):
			s.kick(codeIdleTimeout, "no traffic within the idle timeout")
			return
		default:
			return // closed by the client, or a transport error
		}
		env := new(clientpb.Envelope)
		if err := proto.Unmarshal(frame, env); err != nil {
			s.send(errorEnvelope(0, 0, codeBadRequest, "undecodable envelope"))
			continue
		}
		switch env.Kind {
		case clientpb.Kind_KIND_REQUEST:
			g.dispatch(s, env)
		case clientpb.Kind_KIND_HEARTBEAT:
			s.send(&clientpb.Envelope{Kind: clientpb.Kind_KIND_HEARTBEAT})
		default:
			s.send(errorEnvelope(env.MsgId, env.Route, codeBadRequest, "unexpected envelope kind"))
		}
	}
}

// dispatch starts one request in its own goroutine; it waits (and so stops reading) while the
// session has its maximum of requests in flight.
func (g *gateway) dispatch(s *session, req *clientpb.Envelope) {
	user := s.userID()
	if user == "" && req.Route != routeLogin {
		s.send(errorEnvelope(req.MsgId, req.Route, codeLoginRequired, "log in first"))
		return
	}
	s.inFlight <- struct{}{}
	go func() {
		defer func() { <-s.inFlight }()
		s.send(g.handle(s, req, user))
	}()
}

// backendFor picks the logic server of a route: cmd 20 goes to go-match, the rest to go-room.
func (g *gateway) backendFor(route uint32) backends {
	if g.match != nil && route>>16 == cmdMatch {
		return backendMatch
	}
	return backendRoom
}

func (g *gateway) client(b backends) logicpb.LogicClient {
	if b == backendMatch {
		return g.match
	}
	return g.room
}

// backendNamed maps a node id of a Bind call to its logic server (0: unknown).
func (g *gateway) backendNamed(node string) backends {
	switch {
	case node == roomNode:
		return backendRoom
	case node == matchNode && g.match != nil:
		return backendMatch
	}
	return 0
}

// handle routes one request to its logic server and turns the answer into the response.
func (g *gateway) handle(s *session, req *clientpb.Envelope, user string) *clientpb.Envelope {
	ctx, cancel := context.WithTimeout(metadata.NewOutgoingContext(context.Background(), g.callMD), g.cfg.requestTimeout)
	defer cancel()
	backend := g.backendFor(req.Route)
	reply, err := g.client(backend).Handle(ctx, &logicpb.LogicRequest{
		Route:       req.Route,
		Payload:     req.Payload,
		SessionId:   s.id,
		UserId:      user,
		GatewayNode: nodeID,
	})
	if err != nil {
		switch status.Code(err) {
		case codes.DeadlineExceeded:
			return errorEnvelope(req.MsgId, req.Route, codeUpstreamTimeout, "the logic server did not answer in time")
		case codes.Unavailable:
			return errorEnvelope(req.MsgId, req.Route, codeUpstreamFailed, "the logic server is unreachable")
		case codes.Unimplemented:
			return errorEnvelope(req.MsgId, req.Route, codeRouteNotFound, "no server serves this route")
		default:
			log.Printf("session %d: route %#x: %v", s.id, req.Route, err)
			return errorEnvelope(req.MsgId, req.Route, codeInternal, "internal error")
		}
	}
	if reply.LoginUserId != "" && reply.Status == 0 {
		g.attach(s, reply.LoginUserId)
	}
	if reply.WatchSession {
		s.watch(backend)
	}
	return &clientpb.Envelope{
		Kind:    clientpb.Kind_KIND_RESPONSE,
		Route:   req.Route,
		MsgId:   req.MsgId,
		Status:  reply.Status,
		Error:   reply.Error,
		Payload: reply.Payload,
	}
}

// attach gives the session its user; an older session of the same user is kicked.
func (g *gateway) attach(s *session, user string) {
	g.mu.Lock()
	previous := s.setUser(user)
	if previous != "" && previous != user && g.users[previous] == s {
		delete(g.users, previous)
	}
	older := g.users[user]
	g.users[user] = s
	g.mu.Unlock()
	if older != nil && older != s {
		older.kick(codeLoggedInElsewhere, "logged in on another connection")
	}
}

// sessionEnded forgets the session's user and tells the logic servers that watch the session
// or that the user is bound to.
func (g *gateway) sessionEnded(s *session) {
	user := s.userID()
	if user == "" {
		return
	}
	g.mu.Lock()
	held := g.users[user] == s
	if held {
		delete(g.users, user)
	}
	g.mu.Unlock()
	tell := s.toTell()
	if !held || tell == 0 {
		return
	}
	closed := &logicpb.SessionEnded{
		SessionId:   s.id,
		UserId:      user,
		GatewayNode: nodeID,
		Reason:      "session ended",
	}
	for _, b := range []backends{backendRoom, backendMatch} {
		if tell&b == 0 {
			continue
		}
		go func(logic logicpb.LogicClient) {
			ctx, cancel := context.WithTimeout(metadata.NewOutgoingContext(context.Background(), g.callMD), g.cfg.requestTimeout)
			defer cancel()
			if _, err := logic.SessionClosed(ctx, closed); err != nil {
				log.Printf("session %d: telling a logic server it closed: %v", s.id, err)
			}
		}(g.client(b))
	}
}

// lookup returns the session holding user, if any. Callers hold g.mu for reading.
func (g *gateway) lookupLocked(user string) *session {
	return g.users[user]
}

func errorEnvelope(msgID, route, code uint32, text string) *clientpb.Envelope {
	return &clientpb.Envelope{
		Kind:   clientpb.Kind_KIND_RESPONSE,
		Route:  route,
		MsgId:  msgID,
		Status: code,
		Error:  text,
	}
}
