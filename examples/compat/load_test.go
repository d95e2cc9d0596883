//go:build linux

package main

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
)

// Bounds of every case's load.
const (
	opTimeout   = 10 * time.Second // one request, RPC, stream or message
	warmTimeout = 30 * time.Second // until the load is going before the SIGHUP
	afterWait   = 30 * time.Second // until the load has gone on after the restart
	maxErrs     = 10               // failures kept for the report
)

// tally counts one kind of operation of a case.
type tally struct {
	ok, failed atomic.Int64

	mu   sync.Mutex
	errs []string      // the first maxErrs failures; guarded by mu
	pids map[int]int64 // operations answered, by worker pid; guarded by mu
}

// add counts one operation, answered by pid (0 if unknown), that ended
// with err.
func (c *tally) add(pid int, err error) {
	if err == nil {
		c.ok.Add(1)
	} else {
		c.failed.Add(1)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil && len(c.errs) < maxErrs {
		c.errs = append(c.errs, fmt.Sprintf("%s: %v", time.Now().Format("15:04:05.000"), err))
	}
	if err == nil && pid != 0 {
		if c.pids == nil {
			c.pids = make(map[int]int64)
		}
		c.pids[pid]++
	}
}

// servedBy counts the operations that the workers in pids answered.
func (c *tally) servedBy(pids []int) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var n int64
	for pid, k := range c.pids {
		if slices.Contains(pids, pid) {
			n += k
		}
	}
	return n
}

// check fails the test if any operation failed, or if the restart's old
// or new workers answered none (with pids recorded).
func (c *tally) check(t *testing.T, what string, r restartResult) {
	t.Helper()
	if n := c.failed.Load(); n > 0 {
		c.mu.Lock()
		t.Errorf("%s: %d of %d failed; the first:\n\t%s", what, n, n+c.ok.Load(), strings.Join(c.errs, "\n\t"))
		c.mu.Unlock()
	}
	if c.ok.Load() == 0 {
		t.Errorf("%s: none succeeded", what)
	}
	c.mu.Lock()
	recorded := len(c.pids) > 0
	c.mu.Unlock()
	if recorded {
		if c.servedBy(r.old) == 0 {
			t.Errorf("%s: the old workers %v answered none", what, r.old)
		}
		if c.servedBy(r.new) == 0 {
			t.Errorf("%s: the new workers %v answered none", what, r.new)
		}
	}
}

// figures are the tally's numbers, for the report.
func (c *tally) figures(r restartResult) string {
	return fmt.Sprintf("%d ok, %d failed (old workers answered %d, new %d)",
		c.ok.Load(), c.failed.Load(), c.servedBy(r.old), c.servedBy(r.new))
}

// load runs op on n goroutines of g, one operation after another, until
// stop is closed or max operations have started, counting each in c. op
// gets its goroutine's number and the operation's, and returns the pid
// that answered (0 if unknown).
func load(g *errgroup.Group, n int, max int64, stop <-chan struct{}, c *tally, op func(w int, i int64) (int, error)) {
	var started atomic.Int64
	for w := range n {
		g.Go(func() error {
			for {
				select {
				case <-stop:
					return nil
				default:
				}
				i := started.Add(1)
				if i > max {
					return nil
				}
				pid, err := op(w, i)
				c.add(pid, err)
			}
		})
	}
}

// acrossRestart starts a case's load on g, waits until progress reaches
// warm, restarts the master, waits until progress has gone after more past
// its value at the end of the restart, then closes stop and waits for
// the load to end.
func acrossRestart(t *testing.T, m *master, warm, after int64, progress func() int64, start func(stop <-chan struct{}, g *errgroup.Group)) restartResult {
	t.Helper()
	mark := int64(-1) // progress at the end of the restart
	return acrossRestartUntil(t, m,
		func() bool { return progress() >= warm },
		func(restartResult) bool {
			if mark < 0 {
				mark = progress()
			}
			return progress() >= mark+after
		}, start)
}

// acrossRestartUntil starts a case's load on g, waits until warm holds,
// restarts the master, waits until settled holds, then closes stop and
// waits for the load to end.
func acrossRestartUntil(t *testing.T, m *master, warm func() bool, settled func(restartResult) bool, start func(stop <-chan struct{}, g *errgroup.Group)) restartResult {
	t.Helper()
	stop := make(chan struct{})
	var g errgroup.Group
	start(stop, &g)
	stopped := false
	end := func() {
		if !stopped {
			stopped = true
			close(stop)
			if err := g.Wait(); err != nil {
				t.Error(err)
			}
		}
	}
	defer end() // also when a wait below fails the test
	waitProgress(t, warmTimeout, "the load is going", warm)
	r := m.restart(t)
	waitProgress(t, afterWait, "the load goes on after the restart", func() bool { return settled(r) })
	end()
	return r
}

// waitProgress polls cond every 5ms until it holds, and fails the test
// if it does not within timeout.
func waitProgress(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waiting until %s: not within %v", what, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
