package balancer

import (
	"fmt"
	"strings"
)

// WorkerLoad is what a Policy sees of one worker that can take a
// connection on a listener.
type WorkerLoad struct {
	// ID is the worker's id. Candidates are always in increasing ID order.
	ID int
	// Active counts the connections handed to the worker and not yet
	// closed by it, including those it has not yet acknowledged.
	Active int
}

// Policy chooses the worker for each new connection on one listener.
//
// The balancer makes one Policy per listener, with Options.Policy, and
// calls Pick for every connection with the workers that can take it right
// now: those listening on that address, not draining, and under their
// limit of unacknowledged handoffs. The slice is never empty, is reused
// after Pick returns, and Pick must not keep it. Calls to one Policy never
// overlap. An index out of range is treated as 0. Pick runs under the
// balancer's lock, on the path of every connection: it must be quick and
// must never block.
type Policy interface {
	Pick(candidates []WorkerLoad) int
}

// PolicyFunc adapts a function to Policy.
type PolicyFunc func(candidates []WorkerLoad) int

// Pick calls f.
func (f PolicyFunc) Pick(candidates []WorkerLoad) int { return f(candidates) }

// The names of the built-in policies, for PolicyByName: what the handoff
// CLI's --policy takes.
const (
	PolicyRoundRobin  = "round-robin"  // RoundRobin
	PolicyLeastLoaded = "least-loaded" // LeastLoaded
)

// policies are the built-in policies by name, in the order errors list them.
var policies = []struct {
	name   string
	policy func() Policy
}{
	{PolicyRoundRobin, RoundRobin},
	{PolicyLeastLoaded, LeastLoaded},
}

// PolicyByName returns the built-in policy called name (PolicyRoundRobin
// or PolicyLeastLoaded), for Options.Policy, or an error that lists the
// names.
func PolicyByName(name string) (func() Policy, error) {
	names := make([]string, len(policies))
	for i, p := range policies {
		if p.name == name {
			return p.policy, nil
		}
		names[i] = p.name
	}
	return nil, fmt.Errorf("balancer: unknown policy %q; want %s", name, strings.Join(names, " or "))
}

// RoundRobin returns a Policy that rotates exactly over the candidates, by
// worker id: each connection goes to the next id after the last one chosen,
// wrapping around. Workers that join or leave keep their place in the
// rotation.
func RoundRobin() Policy { return &roundRobin{} }

type roundRobin struct{ last int }

func (p *roundRobin) Pick(ws []WorkerLoad) int {
	i := after(ws, p.last, func(WorkerLoad) bool { return true })
	p.last = ws[i].ID
	return i
}

// LeastLoaded returns a Policy that picks the candidate with the fewest
// active connections. Ties rotate as in RoundRobin, so equal load behaves
// as round-robin and never as "always the first worker".
func LeastLoaded() Policy { return &leastLoaded{} }

type leastLoaded struct{ last int }

func (p *leastLoaded) Pick(ws []WorkerLoad) int {
	least := ws[0].Active
	for _, w := range ws[1:] {
		least = min(least, w.Active)
	}
	i := after(ws, p.last, func(w WorkerLoad) bool { return w.Active == least })
	p.last = ws[i].ID
	return i
}

// after returns the index of the first candidate with ID > last that
// satisfies ok, wrapping around to the first that satisfies ok.
func after(ws []WorkerLoad, last int, ok func(WorkerLoad) bool) int {
	first := -1
	for i, w := range ws {
		if !ok(w) {
			continue
		}
		if w.ID > last {
			return i
		}
		if first < 0 {
			first = i
		}
	}
	return max(first, 0)
}
