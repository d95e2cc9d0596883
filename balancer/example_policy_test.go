package balancer_test

import (
	"fmt"
	"net/netip"

	"github.com/handoff-go/handoff/balancer"
)

// PolicyByName turns a policy's name, from a flag say, into
// Options.Policy.
func ExamplePolicyByName() {
	newPolicy, err := balancer.PolicyByName(balancer.PolicyLeastLoaded)
	if err != nil {
		panic(err)
	}
	p := newPolicy()
	var c balancer.Conn
	workers := []balancer.WorkerLoad{{ID: 1, Active: 3}, {ID: 2, Active: 1}, {ID: 3, Active: 1}}
	for range 3 {
		i := p.Pick(&c, workers)
		fmt.Println("worker", workers[i].ID)
		workers[i].Active++
	}
	_, err = balancer.PolicyByName("random")
	fmt.Println(err)
	// Output:
	// worker 2
	// worker 3
	// worker 2
	// balancer: unknown policy "random"; want round-robin, least-loaded, least-requests or ip-hash
}

// LeastRequests counts requests in flight for the workers that report
// them (worker.Serve) and connections for the others: worker 1 holds
// many idle keep-alive connections and no request, worker 2 one slow
// request.
func ExampleLeastRequests() {
	p := balancer.LeastRequests()
	workers := []balancer.WorkerLoad{
		{ID: 1, Active: 40, Serving: true, Idle: 40}, // 40 idle keep-alives
		{ID: 2, Active: 1, Serving: true, Busy: 1},
		{ID: 3, Active: 2}, // not Serving: its 2 connections count
	}
	for range 3 {
		i := p.Pick(&balancer.Conn{}, workers)
		fmt.Println("worker", workers[i].ID)
		workers[i].Active++
		workers[i].Unread++ // not read yet: it will carry a request
	}
	// Output:
	// worker 1
	// worker 2
	// worker 1
}

// IPHash sends a client to the same slot whatever its port, and to the
// new worker of that slot after a restart.
func ExampleIPHash() {
	p := balancer.IPHash()
	workers := []balancer.WorkerLoad{{ID: 1, Slot: 0}, {ID: 2, Slot: 1}, {ID: 3, Slot: 2}}
	slotOf := func(ws []balancer.WorkerLoad, client string) int {
		c := balancer.Conn{Remote: netip.MustParseAddrPort(client)}
		return ws[p.Pick(&c, ws)].Slot
	}
	a, b := slotOf(workers, "192.0.2.7:40000"), slotOf(workers, "192.0.2.7:40001")
	fmt.Println("same slot for both ports:", a == b)
	// Slot a's worker is replaced: the new one has a new ID, the highest.
	var replaced []balancer.WorkerLoad
	for _, w := range workers {
		if w.Slot != a {
			replaced = append(replaced, w)
		}
	}
	replaced = append(replaced, balancer.WorkerLoad{ID: 4, Slot: a})
	fmt.Println("same slot after the restart:", slotOf(replaced, "192.0.2.7:40002") == a)
	// Output:
	// same slot for both ports: true
	// same slot after the restart: true
}
