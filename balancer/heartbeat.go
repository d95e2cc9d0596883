//go:build linux

package balancer

import (
	"time"
)

// The heartbeat (Options.Heartbeat) finds a worker that is hung even when
// it has no connection, which the stall check (stall.go) cannot see: that
// one watches a worker's progress on the connections it was handed, and
// is quiet while there are none. Every Heartbeat, a timer pings each
// worker that has said hello and is neither draining nor failed, over its
// control socket; the worker package answers on its control reader's own
// goroutine, so an answer proves that the process runs and its Go runtime
// schedules, not that the program's handlers do (request timeouts are
// for that).
//
// A worker has one ping outstanding at a time. Its timeout counts from
// when that ping was sent, not from the last answer, so a master whose
// timer ran late does not blame the worker. One that has not answered
// within HeartbeatTimeout is hung: it is failed (routed around for good),
// counted in Stats.HeartbeatKills and killed (SIGQUIT for its goroutine
// dump, then SIGKILL after DumpWait: hung.go); what it never
// read comes back at its exit and is served elsewhere, and its slot
// restarts it as after a crash, backoff and MaxRestarts included, since a
// program that hangs is as broken as one that crashes. A worker is thus
// found hung between HeartbeatTimeout and HeartbeatTimeout + Heartbeat
// after it stops answering, and is gone at most DumpWait later.
//
// The timer runs under Balancer.mu and never blocks (TryWriteFrame; a
// ping that finds the control socket full is written again at the next
// beat, and the timeout still counts). It runs only with Heartbeat set,
// and stops at Shutdown.

// beat is the heartbeat timer's function.
func (b *Balancer) beat() {
	b.mu.Lock()
	if b.stopping || b.closed {
		b.mu.Unlock()
		return
	}
	now := time.Now()
	timeout := b.opts.heartbeatTimeout()
	var hung []*Worker
	for _, w := range b.workers {
		if w.state < StateOnline || !w.watchedLocked() {
			continue
		}
		f := &w.fleet
		waiting := !f.pingedAt.IsZero() && w.lastPong.Before(f.pingedAt)
		switch {
		case waiting && now.Sub(f.pingedAt) >= timeout:
			b.stats.heartbeatKills++
			b.failLocked(w)
			hung = append(hung, w)
			continue
		case !waiting:
			f.pingedAt = now
		case !f.pingFailed:
			continue // its ping is on its way: one at a time
		}
		f.pingFailed = w.ctl.TryWriteFrame(b.pingBuf) != nil
	}
	b.fleet.beat.Reset(b.opts.Heartbeat)
	b.mu.Unlock()
	for _, w := range hung {
		w.log.Error().Str("timeout", timeout.String()).Msg("worker left a heartbeat ping unanswered; killing it")
		go w.killHung("heartbeat") // ends within DumpWait
	}
}
