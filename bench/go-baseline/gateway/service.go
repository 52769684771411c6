package main

import (
	"context"

	gatewaypb "gobaseline/pb/switchyard_gateway_v1"
)

// gatewayService is the Gateway gRPC service for logic servers. Push, PushBatch, Kick and
// Presence act on the users held here (a single gateway: there is nothing to forward to); Bind
// is left unimplemented (this baseline routes every request to its one logic server).
type gatewayService struct {
	gatewaypb.UnimplementedGatewayServer
	g *gateway
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
