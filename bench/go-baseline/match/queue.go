package main

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// ticket is a queued player and the gateway holding them.
type ticket struct {
	user    string
	gateway string
}

var (
	errUnknownMode   = errors.New("no such mode")
	errAlreadyQueued = errors.New("already queued")
)

// queues holds one FIFO per mode and one entry per user. It does no IO; the matchmaker guards
// it with one mutex.
type queues struct {
	sizes   map[string]int
	waiting map[string][]ticket
	queued  map[string]string // user → the mode they wait in
	placing map[string]bool   // users taken out for placement → disconnected meanwhile
}

func newQueues(sizes map[string]int) *queues {
	return &queues{
		sizes:   sizes,
		waiting: make(map[string][]ticket, len(sizes)),
		queued:  make(map[string]string),
		placing: make(map[string]bool),
	}
}

// enqueue queues a player; it returns their 1-based position and, when the queue now holds a
// full match, the tickets taken out for it.
func (q *queues) enqueue(mode string, t ticket) (int, []ticket, error) {
	size, ok := q.sizes[mode]
	if !ok {
		return 0, nil, errUnknownMode
	}
	if _, ok := q.queued[t.user]; ok {
		return 0, nil, errAlreadyQueued
	}
	if _, ok := q.placing[t.user]; ok {
		return 0, nil, errAlreadyQueued
	}
	q.queued[t.user] = mode
	q.waiting[mode] = append(q.waiting[mode], t)
	position := len(q.waiting[mode])
	return position, q.takeMatch(mode, size), nil
}

func (q *queues) takeMatch(mode string, size int) []ticket {
	waiting := q.waiting[mode]
	if len(waiting) < size {
		return nil
	}
	formed := append([]ticket(nil), waiting[:size]...)
	q.waiting[mode] = waiting[size:]
	for _, t := range formed {
		delete(q.queued, t.user)
		q.placing[t.user] = false
	}
	return formed
}

// cancel takes a player out of their queue; true if they were queued.
func (q *queues) cancel(user string) bool {
	mode, ok := q.queued[user]
	if !ok {
		return false
	}
	delete(q.queued, user)
	waiting := q.waiting[mode]
	for i, t := range waiting {
		if t.user == user {
			q.waiting[mode] = append(waiting[:i:i], waiting[i+1:]...)
			break
		}
	}
	return true
}

// disconnected: a player's session closed. Out of the queue, or marked if being placed.
func (q *queues) disconnected(user string) bool {
	if _, ok := q.placing[user]; ok {
		q.placing[user] = true
		return true
	}
	return q.cancel(user)
}

// placed: a placement ended; its players may queue again.
func (q *queues) placed(formed []ticket) {
	for _, t := range formed {
		delete(q.placing, t.user)
	}
}

// requeue: a placement failed. Its players go back to the front of the queue, in their order,
// except those who disconnected meanwhile. It returns a match if one forms again.
func (q *queues) requeue(mode string, formed []ticket) []ticket {
	size, ok := q.sizes[mode]
	if !ok {
		return nil
	}
	back := make([]ticket, 0, len(formed)+len(q.waiting[mode]))
	for _, t := range formed {
		if gone, ok := q.placing[t.user]; ok && !gone {
			back = append(back, t)
			q.queued[t.user] = mode
		}
		delete(q.placing, t.user)
	}
	q.waiting[mode] = append(back, q.waiting[mode]...)
	return q.takeMatch(mode, size)
}

// parseModes parses "duel=2,squad=4" (logic-match's --modes): sizes 1 to 1000.
func parseModes(text string) (map[string]int, error) {
	modes := make(map[string]int)
	for _, part := range strings.Split(text, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, sizeText, ok := strings.Cut(part, "=")
		if !ok {
			return nil, fmt.Errorf("mode %q is not name=size", part)
		}
		name = strings.TrimSpace(name)
		size, err := strconv.Atoi(strings.TrimSpace(sizeText))
		if err != nil {
			return nil, fmt.Errorf("bad size in %q", part)
		}
		if name == "" || size < 1 || size > 1000 {
			return nil, fmt.Errorf("mode %q: a name and a size of 1 to 1000 are needed", part)
		}
		modes[name] = size
	}
	if len(modes) == 0 {
		return nil, errors.New("no modes configured")
	}
	return modes, nil
}
