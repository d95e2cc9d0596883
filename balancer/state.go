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
