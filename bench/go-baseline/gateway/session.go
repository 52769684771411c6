package main

import (
	"log"
	"sync"
	"time"

	clientpb "gobaseline/pb/switchyard_client_v1"
	logicpb "gobaseline/pb/switchyard_logic_v1"
)

// writeTimeout: how long one flush may block before the client counts as not reading.
const writeTimeout = 5 * time.Second

// session is one client connection. Frames leave through out, a bounded queue drained by the
// writer goroutine; a nil entry means "flush what is queued, then close".
type session struct {
	id       uint64
	t        transport
	out      chan *clientpb.Envelope
	inFlight chan struct{}

	mu      sync.Mutex // guards the fields below and the order of sends on out
	user    string
	seq     uint64   // last push sequence number
	closing bool     // no more frames are accepted
	watched backends // logic servers that asked for SessionClosed (watch_session)
	bound   backends // logic servers the user is bound to (Gateway.Bind); told too
}

func newSession(id uint64, queue, maxInFlight int, t transport) *session {
	return &session{
		id:       id,
		t:        t,
		out:      make(chan *clientpb.Envelope, queue),
		inFlight: make(chan struct{}, maxInFlight),
	}
}

func (s *session) userID() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.user
}

// setUser attaches a user and returns the previous one.
func (s *session) setUser(user string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	previous := s.user
	s.user = user
	return previous
}

func (s *session) watch(b backends) {
	s.mu.Lock()
	s.watched |= b
	s.mu.Unlock()
}

// bind changes the user's bindings; false when the session is closing.
func (s *session) bind(mode logicpb.BindMode, nodes backends) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	switch mode {
	case logicpb.BindMode_BIND_MODE_COVER:
		s.bound = nodes
	case logicpb.BindMode_BIND_MODE_APPEND:
		s.bound |= nodes
	case logicpb.BindMode_BIND_MODE_REMOVE:
		s.bound &^= nodes
	case logicpb.BindMode_BIND_MODE_CLEAR:
		s.bound = 0
	}
	return true
}

// toTell: the logic servers to send SessionClosed to.
func (s *session) toTell() backends {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.watched | s.bound
}

// send queues one frame; false when the session is closing or was just dropped as a slow
// consumer (its queue was full).
func (s *session) send(env *clientpb.Envelope) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.enqueueLocked(env)
}

// push queues a server push with the session's next sequence number. Numbering and queueing
// happen under one lock, so the client sees seq 1, 2, 3... in order.
func (s *session) push(route uint32, payload []byte) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.seq++
	return s.enqueueLocked(&clientpb.Envelope{
		Kind:    clientpb.Kind_KIND_PUSH,
		Route:   route,
		Payload: payload,
		Seq:     s.seq,
	})
}

func (s *session) enqueueLocked(env *clientpb.Envelope) bool {
	if s.closing {
		return false
	}
	select {
	case s.out <- env:
		return true
	default:
		// The client does not read fast enough: drop it (a kick could not be queued anyway).
		log.Printf("session %d: outbound queue full; dropping the slow consumer", s.id)
		s.closing = true
		s.t.close()
		return false
	}
}

// kick sends a KICK envelope, then closes the connection once it is written.
func (s *session) kick(code uint32, reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.enqueueLocked(&clientpb.Envelope{
		Kind: clientpb.Kind_KIND_KICK,
		Kick: &clientpb.Kick{Code: code, Reason: reason},
	}) {
		return
	}
	s.closeLocked()
}

// finish is called when the reader stops: the writer flushes what is queued and closes.
func (s *session) finish() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closeLocked()
}

func (s *session) closeLocked() {
	if s.closing {
		return
	}
	s.closing = true
	select {
	case s.out <- nil:
	default:
		s.t.close()
	}
}

// abort is the writer giving up (write error or timeout).
func (s *session) abort() {
	s.mu.Lock()
	s.closing = true
	s.mu.Unlock()
	s.t.close()
}

// writeLoop writes queued frames into the transport's buffer and flushes whenever the queue is
// empty, so a burst of pushes costs one write system call, not one per frame.
func (s *session) writeLoop() {
	defer s.t.close()
	for {
		env := <-s.out
		if env == nil {
			_ = s.t.flush() // e.g. a WebSocket close reply written by the reader
			return
		}
		if err := s.t.setWriteDeadline(time.Now().Add(writeTimeout)); err != nil {
			s.abort()
			return
		}
		last := false
	batch:
		for {
			if err := s.t.writeEnvelope(env); err != nil {
				s.writeFailed(err)
				return
			}
			select {
			case env = <-s.out:
				if env == nil {
					last = true
					break batch
				}
			default:
				break batch
			}
		}
		if err := s.t.flush(); err != nil {
			s.writeFailed(err)
			return
		}
		if last {
			return
		}
	}
}

func (s *session) writeFailed(err error) {
	if isTimeout(err) {
		log.Printf("session %d: a write blocked for %v; dropping the slow consumer", s.id, writeTimeout)
	}
	s.abort()
}
