//go:build linux

package balancer

import "time"

// A slot whose worker exits unexpectedly is restarted after a backoff
// (backoffLocked). With Options.MaxRestarts set, a slot that has had more
// than MaxRestarts unexpected exits (or failed restarts) within
// RestartWindow is in a crash loop: it is failed, left empty and counted
// in Stats.FailedSlots, which the CLI's /healthz answers 503 for, and the
// master logs an error. It stays so until a Reload, a new deployment,
// which starts it again with a fresh history (reviveFailedSlots). All of
// it runs under Balancer.mu, in waitExit and restart.

// backoffLocked counts an unexpected exit of w in its slot's backoff and
// returns how long its restart waits. A worker that has listened for
// StableUptime resets the backoff first; one that never listened was never
// up, however long it ran, so a worker that fails during its start keeps
// its slot's backoff growing.
func (w *Worker) backoffLocked(now time.Time) time.Duration {
	s := w.slot
	if !w.listened.IsZero() && now.Sub(w.listened) >= StableUptime {
		s.crashes = 0
	}
	return s.backoffLocked()
}

// backoffLocked counts one more crash (or failed restart) of s and returns
// how long its restart waits: RestartBackoffMin, doubling with each crash
// up to RestartBackoffMax.
func (s *slot) backoffLocked() time.Duration {
	delay := min(RestartBackoffMin<<min(s.crashes, 20), RestartBackoffMax)
	s.crashes++
	return delay
}

// restartWindow is Options.RestartWindow, or its default.
func (b *Balancer) restartWindow() time.Duration {
	if b.opts.RestartWindow > 0 {
		return b.opts.RestartWindow
	}
	return DefaultRestartWindow
}

// crashLoopLocked records an unexpected exit of s's worker, or a failed
// restart, at now, and reports whether s is now past MaxRestarts within
// the window: it is then failed, and the caller does not restart it.
func (b *Balancer) crashLoopLocked(s *slot, now time.Time) bool {
	if b.opts.MaxRestarts == 0 {
		return false
	}
	window := b.restartWindow()
	keep := s.exits[:0]
	for _, t := range s.exits {
		if now.Sub(t) < window {
			keep = append(keep, t)
		}
	}
	s.exits = append(keep, now) // at most MaxRestarts+1 long
	if len(s.exits) <= b.opts.MaxRestarts {
		return false
	}
	s.failed = true
	b.fleet.failed = append(b.fleet.failed, s)
	return true
}

// logCrashLoop says that slot s is no longer restarted.
func (b *Balancer) logCrashLoop(s *slot) {
	b.log.Error().Int("slot", s.index).Int("exits", b.opts.MaxRestarts+1).Str("window", b.restartWindow().String()).
		Int("max_restarts", b.opts.MaxRestarts).
		Msg("crash loop: the worker slot exited unexpectedly more than max-restarts times within the window; it is no longer restarted until a reload (SIGHUP)")
}

// reviveFailedSlots restarts every slot failed by a crash loop, with a
// fresh history, for Reload.
func (b *Balancer) reviveFailedSlots() {
	b.mu.Lock()
	if b.stopping {
		b.mu.Unlock()
		return
	}
	failed := b.fleet.failed
	b.fleet.failed = nil
	for _, s := range failed {
		s.failed = false
		s.exits = nil
		s.crashes = 0
		if !s.retired && !b.restarting[s] && !b.slotFilledLocked(s) {
			b.scheduleRestartLocked(s, 0)
		}
	}
	if len(failed) > 0 {
		b.notifyLocked()
	}
	b.mu.Unlock()
	if len(failed) > 0 {
		b.log.Warn().Int("slots", len(failed)).Msg("reload: restarting the worker slots stopped by a crash loop, with a fresh history")
	}
}
