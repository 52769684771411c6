package main

import (
	"reflect"
	"testing"
)

func testQueues(t *testing.T) *queues {
	modes, err := parseModes("duel=2,trio=3")
	if err != nil {
		t.Fatal(err)
	}
	return newQueues(modes)
}

func users(formed []ticket) []string {
	if formed == nil {
		return nil
	}
	return userIDs(formed)
}

func mustQueue(t *testing.T, q *queues, mode, user string) (int, []ticket) {
	t.Helper()
	position, formed, err := q.enqueue(mode, ticket{user: user})
	if err != nil {
		t.Fatalf("enqueue %s in %s: %v", user, mode, err)
	}
	return position, formed
}

func TestAFullQueueFormsAMatchInArrivalOrder(t *testing.T) {
	q := testQueues(t)
	for i, user := range []string{"a", "b"} {
		if position, formed := mustQueue(t, q, "trio", user); position != i+1 || formed != nil {
			t.Fatalf("%s: position %d, formed %v", user, position, formed)
		}
	}
	position, formed := mustQueue(t, q, "trio", "c")
	if position != 3 || !reflect.DeepEqual(users(formed), []string{"a", "b", "c"}) {
		t.Fatalf("position %d, formed %v", position, users(formed))
	}
	if len(q.queued) != 0 || len(q.waiting["trio"]) != 0 {
		t.Fatalf("still waiting: %v", q.queued)
	}
}

func TestOneEntryPerUserAndKnownModesOnly(t *testing.T) {
	q := testQueues(t)
	mustQueue(t, q, "trio", "a")
	if _, _, err := q.enqueue("trio", ticket{user: "a"}); err != errAlreadyQueued {
		t.Fatalf("same mode: %v", err)
	}
	if _, _, err := q.enqueue("duel", ticket{user: "a"}); err != errAlreadyQueued {
		t.Fatalf("other mode: %v", err)
	}
	if _, _, err := q.enqueue("chess", ticket{user: "b"}); err != errUnknownMode {
		t.Fatalf("unknown mode: %v", err)
	}
}

func TestCancelAndDisconnectLeaveTheQueue(t *testing.T) {
	q := testQueues(t)
	mustQueue(t, q, "trio", "a")
	mustQueue(t, q, "trio", "b")
	if !q.cancel("a") || q.cancel("a") {
		t.Fatal("cancel: true once, then false")
	}
	if !q.disconnected("b") || len(q.waiting["trio"]) != 0 {
		t.Fatalf("after disconnect: %v", q.waiting["trio"])
	}
	if position, _ := mustQueue(t, q, "trio", "a"); position != 1 {
		t.Fatalf("queued again at %d", position)
	}
}

func TestAFailedPlacementRequeuesAtTheFrontWithoutTheDisconnected(t *testing.T) {
	q := testQueues(t)
	mustQueue(t, q, "duel", "a")
	_, formed := mustQueue(t, q, "duel", "b")
	mustQueue(t, q, "duel", "c")
	if _, _, err := q.enqueue("duel", ticket{user: "a"}); err != errAlreadyQueued {
		t.Fatalf("being placed counts as queued: %v", err)
	}
	q.disconnected("b")
	if again := q.requeue("duel", formed); !reflect.DeepEqual(users(again), []string{"a", "c"}) {
		t.Fatalf("a goes first again and pairs with c: %v", users(again))
	}

	q = testQueues(t)
	mustQueue(t, q, "duel", "x")
	_, formed = mustQueue(t, q, "duel", "y")
	q.placed(formed)
	if position, _ := mustQueue(t, q, "duel", "x"); position != 1 {
		t.Fatalf("placed users may queue again: position %d", position)
	}
}

func TestModesParse(t *testing.T) {
	modes, err := parseModes("duel=2, squad=4")
	if err != nil || modes["squad"] != 4 || modes["duel"] != 2 {
		t.Fatalf("%v %v", modes, err)
	}
	for _, bad := range []string{"duel", "duel=0", "duel=1001", "duel=x", "", " , "} {
		if _, err := parseModes(bad); err == nil {
			t.Fatalf("%q accepted", bad)
		}
	}
}
