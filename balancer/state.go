package balancer

import "strconv"

// State is where a worker is in its life.
type State int

// The states of a worker, in the order it goes through them.
const (
	StateStarting      State = iota // forked, not yet said hello
	StateOnline                     // running
	StateListening                  // worker.Listen succeeded at least once
	StateDisconnecting              // draining: no new connections
	StateDead                       // exited
)

func (s State) String() string {
	switch s {
	case StateStarting:
		return "starting"
	case StateOnline:
		return "online"
	case StateListening:
		return "listening"
	case StateDisconnecting:
		return "disconnecting"
	case StateDead:
		return "dead"
	}
	return "state(" + strconv.Itoa(int(s)) + ")"
}

// health is what the master makes of a live worker's behaviour, beside
// its State: whether it may get connections. Its transitions, all under
// Balancer.mu, are stallLocked (healthy to stalled), unstallLocked
// (stalled to healthy, on a ping's answer) and failLocked (to failed,
// for good).
type health uint8

const (
	// healthy: it gets connections once it listens.
	healthy health = iota
	// stalled: it has connections waiting and reads none; it is routed
	// around, and what it never read is served elsewhere (stall.go).
	stalled
	// failed: it broke the protocol, a send to it failed for good, it
	// stayed stalled and silent for HandoffTimeout, or it left a heartbeat
	// ping unanswered for HeartbeatTimeout. It gets nothing more and is
	// killed; what it never read comes back at its exit.
	failed
)

func (h health) String() string {
	switch h {
	case healthy:
		return "healthy"
	case stalled:
		return "stalled"
	case failed:
		return "failed"
	}
	return "health(" + strconv.Itoa(int(h)) + ")"
}
