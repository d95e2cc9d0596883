//go:build linux

package balancer

import (
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"time"
)

// Recycling replaces a worker that is due, by Options.MaxRequests,
// MaxLifetime or MaxMemory, the way Reload replaces one (replace): its
// successor is forked into its slot, and only once that listens
// everywhere the old one did is the old one drained, so no request fails.
//
// One goroutine, recycleLoop, started by Start only if one of the three is
// set, does it all, so at most one recycling runs at a time. It holds
// reloadMu while it checks and replaces, taken with TryLock: while a Reload
// runs it skips its turn (the Reload replaces every worker anyway), and a
// Reload that comes during a recycling waits for it. It recycles only a
// worker that listens, has not failed, and has its slot to itself (no
// replacement or restart starting there), so none is recycled twice; if
// several are due, the oldest goes first. Its wakeups are bounded: every
// requestsTick with MaxRequests, every MemoryCheckInterval with MaxMemory,
// at the next worker's end of life with MaxLifetime, and at least every
// recycleMaxWait. It ends at Shutdown (stopFleetLocked), and Shutdown
// waits for it in Balancer.wg.
const (
	requestsTick   = 100 * time.Millisecond // how often MaxRequests is checked
	recycleMaxWait = time.Second            // the longest the recycler sleeps
	recycleMinWait = 10 * time.Millisecond  // the shortest, but after a recycling
	lifetimeJitter = 10                     // a lifetime is MaxLifetime less up to 1/lifetimeJitter of it
	// A recycling whose successor fails to come up (a broken binary on
	// disk) leaves the old worker serving and is retried after a delay
	// that doubles from recycleRetryMin to recycleRetryMax, so that a bad
	// deploy is not forked in a loop.
	recycleRetryMin = time.Second
	recycleRetryMax = time.Minute
)

// The reasons of a recycling, as Stats.Recycles counts them.
const (
	recycleRequests = "requests"
	recycleLifetime = "lifetime"
	recycleMemory   = "memory"
)

// fleet is the balancer's state for recycling (this file), the heartbeat
// (heartbeat.go) and crash loops (crashloop.go).
type fleet struct {
	// Set by Start under Balancer.mu, used by shutdown under it.
	stopRecycler context.CancelFunc // ends recycleLoop; nil if it does not run
	beat         *time.Timer        // the heartbeat timer; nil without Options.Heartbeat

	// Owned by the recycler goroutine.
	nextSample time.Time     // when it next reads the workers' RSS
	retryAt    time.Time     // no recycling before this, after a failed one
	retryDelay time.Duration // the delay after the next failure

	failed []*slot // slots stopped by a crash loop; under Balancer.mu
}

// workerFleet is one worker's state for recycling and the heartbeat,
// under Balancer.mu.
type workerFleet struct {
	lifetime   time.Duration // MaxLifetime less this worker's jitter, drawn at its first check; 0 until then
	rss        int64         // its last RSS sample, in bytes
	over       int           // RSS samples in a row above MaxMemory
	pingedAt   time.Time     // when its oldest unanswered heartbeat ping was sent; see beat
	pingFailed bool          // that ping could not be written: it is written again at the next beat
}

// recycling reports whether any recycling option is set.
func (o *Options) recycling() bool {
	return o.MaxRequests > 0 || o.MaxLifetime > 0 || o.MaxMemory > 0
}

// startFleetLocked starts the recycler and the heartbeat, for Start; with
// none of their options set nothing runs and nothing ticks.
func (b *Balancer) startFleetLocked() {
	if b.stopping {
		return
	}
	if b.opts.recycling() {
		ctx, cancel := context.WithCancel(context.Background())
		b.fleet.stopRecycler = cancel
		b.wg.Add(1)
		go b.recycleLoop(ctx)
	}
	if b.opts.Heartbeat > 0 {
		b.fleet.beat = time.AfterFunc(b.opts.Heartbeat, b.beat)
	}
}

// stopFleetLocked stops both, for Shutdown: a recycling in progress is
// cut short (its successor, if any, is drained with the others).
func (b *Balancer) stopFleetLocked() {
	if b.fleet.stopRecycler != nil {
		b.fleet.stopRecycler()
	}
	if b.fleet.beat != nil {
		b.fleet.beat.Stop()
	}
}

// recycleLoop is the recycler goroutine; it ends when ctx does.
func (b *Balancer) recycleLoop(ctx context.Context) {
	defer b.wg.Done()
	t := time.NewTimer(b.recycleOnce(ctx))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		t.Reset(b.recycleOnce(ctx))
	}
}

// recycleOnce samples what is due, recycles at most one worker, and
// returns how long to sleep before the next check.
func (b *Balancer) recycleOnce(ctx context.Context) time.Duration {
	now := time.Now()
	if now.Before(b.fleet.retryAt) {
		return min(b.fleet.retryAt.Sub(now), recycleMaxWait)
	}
	if !b.reloadMu.TryLock() {
		return requestsTick // a Reload runs: it replaces them all anyway
	}
	defer b.reloadMu.Unlock()
	if b.opts.MaxMemory > 0 && !now.Before(b.fleet.nextSample) {
		b.sampleMemory()
		b.fleet.nextSample = now.Add(MemoryCheckInterval)
	}
	b.mu.Lock()
	if b.stopping {
		b.mu.Unlock()
		return recycleMaxWait
	}
	old, reason := b.dueLocked(now)
	if old == nil {
		wait := b.recycleWaitLocked(now)
		b.mu.Unlock()
		return wait
	}
	figure := old.recycleFigureLocked(reason, now)
	b.mu.Unlock()

	l := old.log.With().Str("reason", reason).Fields(figure).Logger()
	l.Debug().Msg("recycling worker")
	nw, err := b.replace(ctx, old)
	switch {
	case err != nil && (ctx.Err() != nil || errors.Is(err, ErrClosed)):
		l.Info().Msg("recycling cut short by shutdown")
		return recycleMaxWait
	case err != nil:
		b.fleet.retryDelay = min(max(2*b.fleet.retryDelay, recycleRetryMin), recycleRetryMax)
		b.fleet.retryAt = time.Now().Add(b.fleet.retryDelay)
		l.Error().Err(err).Str("retry_in", b.fleet.retryDelay.String()).Msg("recycling failed: the old worker keeps serving")
		return b.fleet.retryDelay
	case nw == nil:
		return recycleMinWait // it left meanwhile: nothing was recycled
	}
	b.fleet.retryDelay = 0
	b.mu.Lock()
	if b.stats.recycles == nil {
		b.stats.recycles = make(map[string]uint64)
	}
	b.stats.recycles[reason]++
	b.mu.Unlock()
	l.Info().Int("replacement", nw.id).Msg("worker recycled")
	return recycleMinWait // another may be due
}

// dueLocked returns the oldest worker that may be recycled and is due,
// and why, or nil.
func (b *Balancer) dueLocked(now time.Time) (*Worker, string) {
	for _, w := range b.workers { // by id: oldest first
		if !b.recyclableLocked(w) {
			continue
		}
		switch {
		case b.opts.MaxMemory > 0 && w.fleet.over >= MemoryChecks:
			return w, recycleMemory
		case b.opts.MaxRequests > 0 && w.servedLocked() >= uint64(b.opts.MaxRequests):
			return w, recycleRequests
		case b.opts.MaxLifetime > 0 && now.Sub(w.born) >= w.lifetimeLocked(b.opts.MaxLifetime):
			return w, recycleLifetime
		}
	}
	return nil, ""
}

// recyclableLocked reports whether w may be recycled: it listens, has not
// failed (a failed worker is being killed), and is alone in its slot, so
// that no successor is starting there already.
func (b *Balancer) recyclableLocked(w *Worker) bool {
	if w.state != StateListening || w.health == failed || b.restarting[w.slot] {
		return false
	}
	for _, x := range b.workers {
		if x != w && x.slot == w.slot && x.state < StateDisconnecting {
			return false
		}
	}
	return true
}

// servedLocked is what MaxRequests counts: the connections the master
// handed w for good, less those taken back unread or handed back. It is
// the master's own count, so a worker cannot dodge its recycling through
// its counter page.
func (w *Worker) servedLocked() uint64 {
	n := w.sent - min(w.reclaimed, w.sent)
	return n - min(w.returned, n)
}

// lifetimeLocked is how long w may live: limit less a random jitter of
// up to limit/lifetimeJitter, drawn once per worker.
func (w *Worker) lifetimeLocked(limit time.Duration) time.Duration {
	if w.fleet.lifetime == 0 {
		w.fleet.lifetime = limit - rand.N(limit/lifetimeJitter+1)
	}
	return w.fleet.lifetime
}

// recycleWaitLocked is how long the recycler may sleep when nothing is
// due.
func (b *Balancer) recycleWaitLocked(now time.Time) time.Duration {
	wait := recycleMaxWait
	if b.opts.MaxRequests > 0 {
		wait = requestsTick
	}
	if b.opts.MaxMemory > 0 {
		wait = min(wait, b.fleet.nextSample.Sub(now))
	}
	if b.opts.MaxLifetime > 0 {
		for _, w := range b.workers {
			if b.recyclableLocked(w) {
				wait = min(wait, w.born.Add(w.lifetimeLocked(b.opts.MaxLifetime)).Sub(now))
			}
		}
	}
	return max(wait, recycleMinWait)
}

// recycleFigureLocked is what made w due, as log fields.
func (w *Worker) recycleFigureLocked(reason string, now time.Time) map[string]any {
	o := &w.b.opts
	switch reason {
	case recycleMemory:
		return map[string]any{"rss": w.fleet.rss, "max_memory": o.MaxMemory, "checks": w.fleet.over}
	case recycleRequests:
		return map[string]any{"served": w.servedLocked(), "max_requests": o.MaxRequests}
	default:
		return map[string]any{"uptime": now.Sub(w.born).Round(time.Millisecond).String(), "lifetime": w.fleet.lifetime.String()}
	}
}

// sampleMemory reads the RSS of every worker that may be recycled and
// counts the samples in a row above MaxMemory. /proc is read outside
// Balancer.mu.
func (b *Balancer) sampleMemory() {
	b.mu.Lock()
	ws := make([]*Worker, 0, len(b.workers))
	for _, w := range b.workers {
		if w.state == StateListening && w.health != failed {
			ws = append(ws, w)
		}
	}
	b.mu.Unlock()
	rss := make([]int64, len(ws))
	for i, w := range ws {
		rss[i], _ = residentBytes(w.pid) // 0 if unreadable: not over
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, w := range ws {
		if w.state == StateDead {
			continue
		}
		w.fleet.rss = rss[i]
		if rss[i] > b.opts.MaxMemory {
			w.fleet.over++
		} else {
			w.fleet.over = 0
		}
	}
}

// residentBytes reads process pid's resident set size, in bytes, from
// /proc/PID/statm (its second field, in pages).
func residentBytes(pid int) (int64, error) {
	if pid <= 0 {
		return 0, errors.New("balancer: no process")
	}
	p, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/statm")
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(p))
	if len(f) < 2 {
		return 0, errors.New("balancer: /proc/" + strconv.Itoa(pid) + "/statm: too few fields")
	}
	pages, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		return 0, err
	}
	return pages * int64(os.Getpagesize()), nil
}
