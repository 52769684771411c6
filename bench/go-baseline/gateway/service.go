package main

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	gatewaypb "gobaseline/pb/switchyard_gateway_v1"
	logicpb "gobaseline/pb/switchyard_logic_v1"
)

// gatewayService is the Gateway gRPC service for logic servers. Every call acts on the users
// held here (a single gateway: there is nothing to forward to).
type gatewayService struct {
	gatewaypb.UnimplementedGatewayServer
	g *gateway
}

// Bind changes users' bindings to the logic servers (node ids go-room, go-match). Requests are
// routed by command whatever the bindings (one server per command here); what bindings change
// is who is told when the session closes: go-match binds matched players to go-room, so go-room
// learns of their disconnects as if they had joined their room themselves.
func (svc *gatewayService) Bind(_ context.Context, req *gatewaypb.BindRequest) (*gatewaypb.UserResults, error) {
	g := svc.g
	mode := req.Mode
	if mode == logicpb.BindMode_BIND_MODE_UNSPECIFIED || logicpb.BindMode_name[int32(mode)] == "" {
		return nil, status.Errorf(codes.InvalidArgument, "bad bind mode %d", mode)
	}
	var nodes backends
	for _, id := range req.NodeIds {
		b := g.backendNamed(id)
		if b == 0 && (mode == logicpb.BindMode_BIND_MODE_COVER || mode == logicpb.BindMode_BIND_MODE_APPEND) {
			return nil, status.Errorf(codes.InvalidArgument, "unknown node %q", id)
		}
		nodes |= b
	}
	results := make([]*gatewaypb.UserResult, 0, len(req.UserIds))
	g.mu.RLock()
	for _, user := range req.UserIds {
		result := &gatewaypb.UserResult{UserId: user, Outcome: gatewaypb.Outcome_OUTCOME_NOT_ONLINE}
		if s := g.lookupLocked(user); s != nil && s.bind(mode, nodes) {
			result.Outcome = gatewaypb.Outcome_OUTCOME_APPLIED
			result.GatewayNode = nodeID
		}
		results = append(results, result)
	}
	g.mu.RUnlock()
	return &gatewaypb.UserResults{Results: results}, nil
}

func (svc *gatewayService) Push(_ context.Context, req *gatewaypb.PushRequest) (*gatewaypb.UserResults, error) {
	results := make([]*gatewaypb.UserResult, 0, len(req.UserIds))
	g := svc.g
	g.mu.RLock()
	for _, user := range req.UserIds {
		result := &gatewaypb.UserResult{UserId: user, Outcome: gatewaypb.Outcome_OUTCOME_NOT_ONLINE}
		if s := g.lookupLocked(user); s != nil && s.push(req.Route, req.Payload) {
			result.Outcome = gatewaypb.Outcome_OUTCOME_APPLIED
			result.GatewayNode = nodeID
		}
		results = append(results, result)
	}
	g.mu.RUnlock()
	return &gatewaypb.UserResults{Results: results}, nil
}

// PushBatch applies the pushes in order: each user gets them in the order of the batch.
func (svc *gatewayService) PushBatch(_ context.Context, req *gatewaypb.PushBatchRequest) (*gatewaypb.PushBatchReply, error) {
	var delivered, notOnline uint64
	g := svc.g
	g.mu.RLock()
	for _, push := range req.Pushes {
		for _, user := range push.UserIds {
			if s := g.lookupLocked(user); s != nil && s.push(push.Route, push.Payload) {
				delivered++
			} else {
				notOnline++
			}
		}
	}
	g.mu.RUnlock()
	return &gatewaypb.PushBatchReply{Delivered: delivered, NotOnline: notOnline}, nil
}

func (svc *gatewayService) Kick(_ context.Context, req *gatewaypb.KickRequest) (*gatewaypb.UserResults, error) {
	code := req.Code
	if code == 0 {
		code = codeKicked
	}
	results := make([]*gatewaypb.UserResult, 0, len(req.UserIds))
	g := svc.g
	for _, user := range req.UserIds {
		g.mu.RLock()
		s := g.lookupLocked(user)
		g.mu.RUnlock()
		result := &gatewaypb.UserResult{UserId: user, Outcome: gatewaypb.Outcome_OUTCOME_NOT_ONLINE}
		if s != nil {
			s.kick(code, req.Reason)
			result.Outcome = gatewaypb.Outcome_OUTCOME_APPLIED
			result.GatewayNode = nodeID
		}
		results = append(results, result)
	}
	return &gatewaypb.UserResults{Results: results}, nil
}

func (svc *gatewayService) Presence(_ context.Context, req *gatewaypb.PresenceRequest) (*gatewaypb.PresenceResponse, error) {
	users := make([]*gatewaypb.UserPresence, 0, len(req.UserIds))
	g := svc.g
	g.mu.RLock()
	for _, user := range req.UserIds {
		presence := &gatewaypb.UserPresence{UserId: user}
		if s := g.lookupLocked(user); s != nil {
			presence.Online = true
			presence.GatewayNode = nodeID
			presence.SessionId = s.id
		}
		users = append(users, presence)
	}
	g.mu.RUnlock()
	return &gatewaypb.PresenceResponse{Users: users}, nil
}
