package balancer

import "syscall"

// stats are the master's counters, under Balancer.mu.
type stats struct {
	accepted       uint64
	acceptErrors   map[syscall.Errno]uint64
	redispatched   uint64
	dropped        uint64
	forked         uint64
	restarts       uint64
	protocolErrors uint64
	bogusIDs       uint64
	stuckKills     uint64
}

func (s *stats) acceptError(e syscall.Errno) {
	if s.acceptErrors == nil {
		s.acceptErrors = make(map[syscall.Errno]uint64)
	}
	s.acceptErrors[e]++
}

// workerStats are one worker's counters, under Balancer.mu.
type workerStats struct {
	dispatched uint64
	acked      uint64
	closed     uint64
}
