package balancer

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// Conn is what a Policy sees of the connection it places.
type Conn struct {
	// Remote is the client's address and port as the master accepted
	// the connection: its peer, from accept4, which behind a proxy is
	// the proxy's (the master reads no PROXY protocol header; a worker
	// may). An IPv4 client of a dual-stack listener has its IPv4-mapped
	// IPv6 address, as the kernel gives it, and an IPv6 zone is dropped.
	// It is the zero AddrPort, not valid, for a Unix socket's client.
	Remote netip.AddrPort
	// Listener is the address the listener that accepted it is bound to.
	Listener net.Addr
}

// WorkerLoad is what a Policy sees of one worker that can take a
// connection on a listener. Its counts include the connections chosen
// for the worker in the dispatch under way, not yet sent to it.
type WorkerLoad struct {
	// ID is the worker's id. Candidates are always in increasing ID order.
	ID int
	// Slot is the worker's place in the pool, from 0 (WorkerStats.Slot).
	// Unlike the ID it stays the same when a crash, a reload or a
	// rolling restart replaces the worker, so a policy that must send a
	// client back to the same place (IPHash) keys on it. During a
	// rolling restart the old and the new worker of a slot can both be
	// candidates; the new one has the higher ID.
	Slot int
	// Active counts the connections handed to the worker and not yet
	// closed by it, including those it has not yet read.
	Active int
	// Unread counts those of Active that the worker has not yet read.
	Unread int
	// Serving reports whether the worker reports its requests in flight
	// in Busy: it serves HTTP through worker.Serve.
	Serving bool
	// Busy counts, for a Serving worker, the connections it read that
	// have a request in flight (an HTTP/1 connection between its request
	// and its response, an HTTP/2 one with a stream open); at most
	// Active - Unread. It is 0 for a worker that is not Serving.
	Busy int
	// Idle counts, for a Serving worker, the connections it read that are
	// idle between requests (HTTP/1 keep-alive); at most Active - Unread
	// - Busy. It is 0 for a worker that is not Serving.
	Idle int
}

// Policy chooses the worker for each new connection on one listener.
//
// The balancer makes one Policy per listener, with Options.Policy, and
// calls Pick for every connection with the connection and the workers
// that can take it right now: those listening on that address, not
// draining, and under their limit of unread handoffs. The slice is never
// empty; it and c are reused after Pick returns, and Pick must not keep
// them. Calls to one Policy never overlap. An index out of range is
// treated as 0. Pick runs under the balancer's lock, on the path of every
// connection: it must be quick, must never block, and should allocate
// nothing.
type Policy interface {
	Pick(c *Conn, candidates []WorkerLoad) int
}

// PolicyFunc adapts a function to Policy.
type PolicyFunc func(c *Conn, candidates []WorkerLoad) int

// Pick calls f.
func (f PolicyFunc) Pick(c *Conn, candidates []WorkerLoad) int { return f(c, candidates) }

// The names of the built-in policies, for PolicyByName: what the handoff
// CLI's --policy and handoff-bench take.
const (
	PolicyRoundRobin    = "round-robin"    // RoundRobin
	PolicyLeastLoaded   = "least-loaded"   // LeastLoaded
	PolicyLeastRequests = "least-requests" // LeastRequests
	PolicyIPHash        = "ip-hash"        // IPHash
)

// policies are the built-in policies by name, in the order errors list them.
var policies = []struct {
	name   string
	policy func() Policy
}{
	{PolicyRoundRobin, RoundRobin},
	{PolicyLeastLoaded, LeastLoaded},
	{PolicyLeastRequests, LeastRequests},
	{PolicyIPHash, IPHash},
}

// PolicyNames returns the names of the built-in policies, which
// PolicyByName takes, in the order its error lists them.
func PolicyNames() []string {
	names := make([]string, len(policies))
	for i, p := range policies {
		names[i] = p.name
	}
	return names
}

// PolicyByName returns the built-in policy called name (PolicyRoundRobin,
// PolicyLeastLoaded, PolicyLeastRequests or PolicyIPHash), for
// Options.Policy, or an error that lists the names.
func PolicyByName(name string) (func() Policy, error) {
	for _, p := range policies {
		if p.name == name {
			return p.policy, nil
		}
	}
	names := PolicyNames()
	return nil, fmt.Errorf("balancer: unknown policy %q; want %s or %s", name,
		strings.Join(names[:len(names)-1], ", "), names[len(names)-1])
}

// RoundRobin returns a Policy that rotates exactly over the candidates, by
// worker id: each connection goes to the next id after the last one chosen,
// wrapping around. Workers that join or leave keep their place in the
// rotation.
func RoundRobin() Policy { return &roundRobin{} }

type roundRobin struct{ last int }

func (p *roundRobin) Pick(_ *Conn, ws []WorkerLoad) int {
	i := after(ws, p.last, func(WorkerLoad) bool { return true })
	p.last = ws[i].ID
	return i
}

// LeastLoaded returns a Policy that picks the candidate with the fewest
// active connections. Ties rotate as in RoundRobin, so equal load behaves
// as round-robin and never as "always the first worker".
func LeastLoaded() Policy { return &leastLoaded{} }

type leastLoaded struct{ last int }

func (p *leastLoaded) Pick(_ *Conn, ws []WorkerLoad) int {
	least := ws[0].Active
	for _, w := range ws[1:] {
		least = min(least, w.Active)
	}
	i := after(ws, p.last, func(w WorkerLoad) bool { return w.Active == least })
	p.last = ws[i].ID
	return i
}

// LeastRequests returns a Policy that picks the candidate with the fewest
// requests in flight, for a load whose requests differ in cost: a worker
// busy with a slow request gets no new connection while another is idle,
// however few connections it holds.
//
// A worker's requests in flight are, if it is Serving, its Active
// connections less its Idle ones: every connection it holds that is not
// waiting between requests is counted, those with a request in flight
// (Busy), those still Unread (each will carry a request as soon as the
// worker reads it), and those it has read but whose request it has not
// begun because its CPU is busy with another, which neither Unread nor
// Busy sees and which are what makes a busy worker slow. Hijacked
// connections (WebSockets) count too: they hold the worker as long as
// they are open. For a worker that does not report them, they are its
// Active connections, as LeastLoaded counts, which is never fewer. Idle
// keep-alive connections therefore weigh nothing on a Serving worker.
//
// Of the workers with the fewest requests in flight, the one with the
// fewest Active connections wins (an idle keep-alive connection will
// send another request), and ties of both rotate as in RoundRobin.
func LeastRequests() Policy { return &leastRequests{} }

type leastRequests struct{ last int }

// inFlight is LeastRequests' measure of w.
func inFlight(w WorkerLoad) int {
	if w.Serving {
		return max(w.Active-w.Idle, 0)
	}
	return w.Active
}

func (p *leastRequests) Pick(_ *Conn, ws []WorkerLoad) int {
	least, conns := inFlight(ws[0]), ws[0].Active
	for _, w := range ws[1:] {
		switch n := inFlight(w); {
		case n < least:
			least, conns = n, w.Active
		case n == least:
			conns = min(conns, w.Active)
		}
	}
	i := after(ws, p.last, func(w WorkerLoad) bool { return inFlight(w) == least && w.Active == conns })
	p.last = ws[i].ID
	return i
}

// IPHash returns a Policy that sends every connection from one client IP
// address (whatever its port) to the same slot, for servers that keep a
// client's state in the worker's memory (socket.io's long polling, say).
//
// It is rendezvous (highest random weight) hashing: each candidate's
// weight is a hash of the client's IP and the candidate's Slot, and the
// heaviest wins. Keyed on slots, not worker ids, a client goes back to
// its slot's worker after a crash, a reload or a rolling restart
// replaced it; while that slot has no candidate (its worker is down, or
// cannot take a connection right now) its clients go to the next slot in
// their own order, each to its own, and come back when it returns;
// adding a slot moves only the clients that it now wins. If two
// candidates share a slot (the old and the new worker of a rolling
// restart), the new one, with the higher ID, wins.
//
// The address hashed is Conn.Remote's, the peer's: behind a proxy every
// client has the proxy's address, and all go to one worker. The master
// reads no PROXY protocol header, so IPHash is not for a master behind a
// proxy that speaks it. Clients of a Unix socket have no address to tell
// them apart; hashing would send them all to one worker, so they rotate
// as in RoundRobin instead. An IPv4 client and its IPv4-mapped IPv6
// address hash alike.
func IPHash() Policy { return &ipHash{} }

type ipHash struct{ last int } // the round-robin of clients without an IP

func (p *ipHash) Pick(c *Conn, ws []WorkerLoad) int {
	if c == nil || !c.Remote.Addr().IsValid() {
		i := after(ws, p.last, func(WorkerLoad) bool { return true })
		p.last = ws[i].ID
		return i
	}
	key := ipKey(c.Remote.Addr())
	best, bi := uint64(0), 0
	for i, w := range ws {
		// >=: of two candidates of one slot, the later one, whose
		// ID is higher, wins.
		if wt := rendezvousWeight(key, w.Slot); i == 0 || wt >= best {
			best, bi = wt, i
		}
	}
	return bi
}

// ipKey hashes an IP address, FNV-1a over its 16-byte form, in which an
// IPv4 address and its IPv4-mapped IPv6 one are the same.
func ipKey(a netip.Addr) uint64 {
	b := a.As16()
	h := uint64(14695981039346656037)
	for _, x := range b {
		h ^= uint64(x)
		h *= 1099511628211
	}
	return h
}

// rendezvousWeight is slot's weight for the client whose ipKey is key:
// splitmix64's finaliser of the two mixed, so that each slot orders the
// clients independently of the others.
func rendezvousWeight(key uint64, slot int) uint64 {
	return mix64(key ^ mix64(uint64(slot)+0x9e3779b97f4a7c15))
}

// mix64 is splitmix64's finaliser: every input bit flips about half of
// the output bits.
func mix64(z uint64) uint64 {
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return z ^ z>>31
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
