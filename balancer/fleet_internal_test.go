//go:build linux

package balancer

import (
	"bytes"
	"context"
	"os"
	"testing"
	"time"

	"github.com/handoff-go/handoff/ipc"
	"golang.org/x/sys/unix"
)

// A worker's uptime, for the restart backoff, counts from when it first
// listened: one that ran long without ever listening was never up, and
// its slot's backoff keeps growing.
func TestBackoffCountsUptimeFromListening(t *testing.T) {
	t.Parallel()
	now := time.Now()
	tests := []struct {
		name     string
		listened time.Time // zero: never
		want     []time.Duration
	}{
		{name: "ran 10s, never listened", want: []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond}},
		{name: "listened 1s before its exit", listened: now.Add(-time.Second), want: []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond}},
		{name: "listened StableUptime before its exit", listened: now.Add(-StableUptime), want: []time.Duration{100 * time.Millisecond, 100 * time.Millisecond, 100 * time.Millisecond}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := &slot{}
			for i, want := range tt.want {
				w := &Worker{slot: s, born: now.Add(-10 * time.Second), listened: tt.listened}
				if got := w.backoffLocked(now); got != want {
					t.Errorf("exit %d: restart in %v, want %v", i+1, got, want)
				}
			}
		})
	}
}

// More than MaxRestarts unexpected exits within the window fail the
// slot; exits further apart than the window never do.
func TestCrashLoopCountsExitsWithinTheWindow(t *testing.T) {
	t.Parallel()
	b := &Balancer{opts: Options{MaxRestarts: 2, RestartWindow: time.Minute}}
	t0 := time.Now()
	apart := &slot{index: 0}
	for i := range 10 {
		if b.crashLoopLocked(apart, t0.Add(time.Duration(i)*61*time.Second)) {
			t.Fatalf("exit %d, each a minute and more after the last, failed the slot", i+1)
		}
	}
	near := &slot{index: 1}
	for i, want := range []bool{false, false, true} {
		if got := b.crashLoopLocked(near, t0.Add(time.Duration(i)*10*time.Second)); got != want {
			t.Fatalf("exit %d within the window: failed %v, want %v", i+1, got, want)
		}
	}
	if !near.failed || len(b.fleet.failed) != 1 || b.fleet.failed[0] != near || apart.failed {
		t.Errorf("failed slots %v", b.fleet.failed)
	}
	unlimited := &Balancer{opts: Options{RestartWindow: time.Minute}}
	for i := range 100 {
		if unlimited.crashLoopLocked(&slot{}, t0.Add(time.Duration(i))) {
			t.Fatal("MaxRestarts 0 failed a slot")
		}
	}
}

// Each worker's lifetime is MaxLifetime less its own jitter, at most a
// tenth: none outlives MaxLifetime, and workers started together do not
// all go at once.
func TestLifetimeJitterPerWorker(t *testing.T) {
	t.Parallel()
	const limit = 10 * time.Second
	seen := map[time.Duration]bool{}
	for range 100 {
		w := &Worker{}
		d := w.lifetimeLocked(limit)
		if d > limit || d < limit-limit/lifetimeJitter {
			t.Fatalf("lifetime %v, want %v to %v", d, limit-limit/lifetimeJitter, limit)
		}
		if again := w.lifetimeLocked(limit); again != d {
			t.Fatalf("lifetime drawn again: %v then %v", d, again)
		}
		seen[d] = true
	}
	if len(seen) < 50 {
		t.Errorf("100 workers got %d lifetimes: the jitter hardly varies", len(seen))
	}
}

// The recycler takes a worker that is due, oldest first, and never one
// that is leaving, that failed, or whose slot has a successor starting.
func TestRecyclerPicksOnlyWorkersAloneInTheirSlot(t *testing.T) {
	b, _, ws := testBalancer(t, RoundRobin, 3)
	b.opts.MaxRequests = 10
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, w := range ws {
		w.slot = &slot{index: i}
		w.sent = 10
	}
	ws[0].state = StateDisconnecting
	ws[1].health = failed
	if w, _ := b.dueLocked(time.Now()); w != ws[2] {
		t.Fatalf("picked %v, want worker 3, the only one that may go", w)
	}
	// Worker 3's successor is starting in its slot.
	next := b.newWorker(4, ws[2].slot, nil, ws[2].ctl, nil)
	b.workers = append(b.workers, next)
	if w, _ := b.dueLocked(time.Now()); w != nil {
		t.Errorf("picked worker %d while its slot's successor starts", w.id)
	}
	b.workers = b.workers[:3]
	// What was taken back or handed back was not served.
	ws[2].reclaimed, ws[2].returned = 1, 1
	if w, _ := b.dueLocked(time.Now()); w != nil {
		t.Errorf("picked worker %d, which was handed 8 connections for good, under MaxRequests 10", w.id)
	}
	ws[2].sent = 12
	if w, reason := b.dueLocked(time.Now()); w != ws[2] || reason != recycleRequests {
		t.Errorf("picked %v for %q, want worker 3 for %q", w, reason, recycleRequests)
	}
}

// A worker that answers its ping is pinged again; one whose ping has gone
// unanswered for HeartbeatTimeout is failed and counted, even with no
// connection; one that has not said hello is not pinged.
func TestHeartbeatFailsOnlyTheSilent(t *testing.T) {
	b, _, ws := testBalancer(t, RoundRobin, 3)
	b.opts.Heartbeat = 100 * time.Millisecond
	b.fleet.beat = time.AfterFunc(time.Hour, func() {})
	t.Cleanup(func() { b.fleet.beat.Stop() })
	// The worker ends of their control sockets, to read the pings.
	peers := make([]*os.File, 3)
	for i, w := range ws {
		ctl, remote, err := ipc.Socketpair()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = ctl.Close(); _ = remote.Close() })
		w.ctl, peers[i] = ctl, remote
	}
	ws[2].state = StateStarting
	b.beat()
	pinged := func(i int) bool {
		raw, err := peers[i].SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, ipc.MaxFrame)
		n := -1
		_ = raw.Control(func(fd uintptr) { n, _, err = unix.Recvfrom(int(fd), buf, unix.MSG_DONTWAIT) })
		return err == nil && bytes.Equal(buf[:max(n, 0)], ipc.AppendPing(nil))
	}
	if !pinged(0) || !pinged(1) || pinged(2) {
		t.Fatal("the first beat pings the workers that said hello, and only them")
	}
	b.mu.Lock()
	ws[0].lastPong = time.Now()                             // worker 1 answered
	ws[1].fleet.pingedAt = time.Now().Add(-time.Second)     // worker 2 never did, for longer than 3 × 100ms
	ws[0].fleet.pingedAt = ws[0].lastPong.Add(-time.Second) // its answer came after its ping
	b.mu.Unlock()
	b.beat()
	b.mu.Lock()
	defer b.mu.Unlock()
	if ws[0].health != healthy || ws[1].health != failed || b.stats.heartbeatKills != 1 {
		t.Errorf("health %v and %v, kills %d: want the silent worker failed, only", ws[0].health, ws[1].health, b.stats.heartbeatKills)
	}
	if !pinged(0) || pinged(1) {
		t.Error("the worker that answered is pinged again; the hung one is not")
	}
}

// The recycler never recycles while a Reload holds reloadMu: it skips its
// turn and looks again soon.
func TestRecyclerSkipsItsTurnDuringAReload(t *testing.T) {
	b, _, ws := testBalancer(t, RoundRobin, 1)
	b.opts.MaxRequests = 1
	b.mu.Lock()
	ws[0].sent = 5
	due, _ := b.dueLocked(time.Now())
	b.mu.Unlock()
	if due != ws[0] {
		t.Fatal("the worker is not due")
	}
	b.reloadMu.Lock()
	wait := b.recycleOnce(context.Background())
	b.reloadMu.Unlock()
	if wait != requestsTick {
		t.Errorf("during a reload the recycler sleeps %v, want %v", wait, requestsTick)
	}
	st := b.Stats()
	if st.Forked != 0 || len(st.Recycles) != 0 || ws[0].State() != StateListening {
		t.Errorf("the recycler acted during a reload: %+v", st)
	}
}
