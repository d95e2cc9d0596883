//go:build linux

package balancer_test

import (
	"context"
	"strings"

	"fmt"
	"golang.org/x/sys/unix"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/balancer"
	"github.com/handoff-go/handoff/internal/fdtest"
	"github.com/handoff-go/handoff/internal/loadtest"
	"github.com/handoff-go/handoff/internal/testworker"
)

// startHostile runs a balancer whose workers are internal/hostileworker,
// which behaves as the good test worker unless told otherwise by Fork's
// env, with one good worker listening.
func startHostile(t *testing.T, opts balancer.Options) *cluster {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	opts.Path = hostileBin
	opts.Env = append(opts.Env, "HANDOFF_HOSTILE_GOOD="+self)
	c := startCluster(t, 1, opts)
	c.waitListening(t, 1)
	return c
}

func TestHostileWorkersCannotHurtTheMaster(t *testing.T) {
	tests := []struct {
		name   string
		killed bool // the master must kill it; else it ignores the input
		pause  bool // hold OnEvent until the master has killed the worker
		done   func(s balancer.Stats, c *cluster, w *balancer.Worker) bool
	}{
		{name: "unknown-kind", killed: true},
		{name: "bad-version", killed: true},
		{name: "truncated", killed: true},
		{name: "oversized", killed: true},
		{name: "fds-hello", killed: true},
		{name: "conns-frame", killed: true},
		{name: "bad-json", killed: true},
		{name: "huge-message", killed: true},
		{name: "bad-returns", done: func(s balancer.Stats, _ *cluster, _ *balancer.Worker) bool { return s.BadReturns >= 3 }},
		{name: "bad-listen", done: func(s balancer.Stats, _ *cluster, _ *balancer.Worker) bool { return s.ListenErrors >= 400 }},
		// 100000 messages while OnEvent is stuck: past the event queue's
		// bound the flooding worker is killed.
		{name: "flood", killed: true, pause: true},
		{name: "noread-exit"},
		{name: "write-conns"},
		{name: "stuck", killed: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := startHostile(t, balancer.Options{HandoffTimeout: time.Second})
			client := newConnClient()
			url := "http://" + c.addr + "/"
			get(t, client, url)
			c.waitIdle(t)
			before := stableFDCount(t)
			if tt.pause {
				c.events.pause()
			}

			stop := make(chan struct{})
			res, wait := loadtest.Load{URL: url, NewConn: 4, PerClient: 100000, Timeout: 15 * time.Second}.Start(stop)
			hostile, err := c.b.Fork("HANDOFF_HOSTILE="+tt.name, "HANDOFF_HOSTILE_ONCE="+filepath.Join(t.TempDir(), "once"),
				testworker.EnvListen+"="+testworker.FormatAddrs([2]string{"tcp", c.addr}))
			if err != nil {
				t.Fatal(err)
			}
			if tt.pause {
				deadline := time.Now().Add(20 * time.Second)
				for c.b.Stats().ProtocolErrors == 0 {
					if time.Now().After(deadline) {
						c.events.resume()
						t.Fatalf("flooding worker not killed: %+v", c.b.Stats())
					}
					time.Sleep(10 * time.Millisecond)
				}
				c.events.resume()
			}
			switch {
			case tt.killed:
				ev := c.events.wait(t, "the hostile worker's exit", func(ev balancer.Event) bool {
					e, ok := ev.(balancer.ExitEvent)
					return ok && e.Worker == hostile
				}).(balancer.ExitEvent)
				// Killed: SIGKILL, or, for a hung worker, SIGQUIT first,
				// on which Go's runtime writes its goroutines and exits 2.
				if ev.Signal != syscall.SIGKILL && !(ev.Signal == nil && ev.Code == 2) {
					t.Errorf("hostile worker exited with %+v, want killed", ev)
				}
			case tt.done != nil:
				deadline := time.Now().Add(20 * time.Second)
				for !tt.done(c.b.Stats(), c, hostile) {
					if time.Now().After(deadline) {
						t.Fatalf("the master never saw the input: %+v", c.b.Stats())
					}
					time.Sleep(10 * time.Millisecond)
				}
			default: // it exits by itself, with connections waiting for it
				c.events.wait(t, "the hostile worker's exit", func(ev balancer.Event) bool {
					e, ok := ev.(balancer.ExitEvent)
					return ok && e.Worker == hostile
				})
			}
			time.Sleep(100 * time.Millisecond) // a little more load after it
			close(stop)
			wait()
			sent, failed, first := res.Counts()
			t.Logf("%d requests during the misbehaviour, %d failed; stats %+v", sent, failed, c.b.Stats())
			if failed > 0 {
				t.Errorf("%d of %d requests failed; first: %v", failed, sent, first)
			}
			// Back to the one good worker. A hostile that died is replaced
			// (by a good worker: the misbehaviour happens once); wait for
			// the replacement so that no restart comes after the count.
			if tt.killed || tt.done == nil {
				repl := c.events.wait(t, "the replacement", func(ev balancer.Event) bool {
					e, ok := ev.(balancer.ListeningEvent)
					return ok && e.Worker.ID() > hostile.ID()
				}).(balancer.ListeningEvent).Worker
				repl.Disconnect()
			} else {
				hostile.Disconnect()
			}
			deadline := time.Now().Add(20 * time.Second)
			for len(c.b.Workers()) != 1 {
				if time.Now().After(deadline) {
					t.Fatalf("%d workers left", len(c.b.Workers()))
				}
				time.Sleep(10 * time.Millisecond)
			}
			c.waitIdle(t)
			deadline = time.Now().Add(5 * time.Second)
			after := fdtest.Count(t)
			for after != before && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
				after = fdtest.Count(t)
			}
			if after != before {
				t.Errorf("master fds: %d before the hostile worker, %d after", before, after)
			}
		})
	}
}

func TestChaosKillsLoseNothingUnstarted(t *testing.T) {
	if testing.Short() {
		t.Skip("20s of load")
	}
	c := startCluster(t, 3, balancer.Options{})
	c.waitListening(t, 3)
	url := "http://" + c.addr + "/"
	get(t, newConnClient(), url)
	c.waitIdle(t)
	fdsBefore, goroutinesBefore := stableFDCount(t), runtime.NumGoroutine()

	stop := make(chan struct{})
	res, wait := loadtest.Load{URL: url, NewConn: 6, KeepAlive: 2, PerClient: 1000000, Timeout: 15 * time.Second}.Start(stop)
	var killed []*balancer.Worker
	end := time.Now().Add(20 * time.Second)
	for time.Now().Before(end) {
		time.Sleep(time.Duration(700+rand.IntN(600)) * time.Millisecond)
		var alive []*balancer.Worker
		for _, w := range c.b.Workers() {
			if w.State() == balancer.StateListening {
				alive = append(alive, w)
			}
		}
		if len(alive) == 0 {
			continue
		}
		w := alive[rand.IntN(len(alive))]
		if err := w.Kill(syscall.SIGKILL); err == nil {
			killed = append(killed, w)
		}
	}
	close(stop)
	wait()
	inProgress := 0
	for _, w := range killed {
		ev := c.events.wait(t, "exit", func(ev balancer.Event) bool {
			e, ok := ev.(balancer.ExitEvent)
			return ok && e.Worker == w
		}).(balancer.ExitEvent)
		inProgress += ev.Active
	}
	sent, failed, first := res.Counts()
	s := c.b.Stats()
	t.Logf("chaos: %d workers SIGKILLed in 20s; %d requests sent, %d failed; %d connections were in progress on the killed workers; %d re-dispatched; %d restarts",
		len(killed), sent, failed, inProgress, s.Redispatched, s.Restarts)
	if failed > inProgress {
		t.Errorf("%d requests failed, more than the %d in progress on killed workers; first: %v", failed, inProgress, first)
	}
	if len(killed) < 10 {
		t.Errorf("only %d kills in 20s", len(killed))
	}
	// Back to 3 listening, idle workers: the master's fds and goroutines
	// must be what they were.
	c.waitListening(t, 3)
	deadline := time.Now().Add(20 * time.Second)
	for {
		c.waitIdle(t)
		fds, gs := fdtest.Count(t), runtime.NumGoroutine()
		if fds == fdsBefore && gs <= goroutinesBefore {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after chaos: %d fds (%d before), %d goroutines (%d before)", fds, fdsBefore, gs, goroutinesBefore)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestAllWorkersDownClientsWait(t *testing.T) {
	c := startCluster(t, 2, balancer.Options{})
	c.waitListening(t, 2)
	for _, w := range c.b.Workers() {
		if err := w.Kill(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
	}
	// No worker now (their replacements come after a backoff), and the
	// clients keep connecting: every one must get its answer.
	const clients = 20
	errs := make(chan error, clients)
	for i := 0; i < clients; i++ {
		go func() {
			errs <- loadtest.Get(newConnClient(), "http://"+c.addr+"/")
		}()
	}
	for i := 0; i < clients; i++ {
		if err := <-errs; err != nil {
			t.Errorf("client %d: %v", i, err)
		}
	}
	if s := c.b.Stats(); s.Restarts < 2 {
		t.Errorf("stats %+v: want 2 restarts", s)
	}
}

func TestUnixSocketListener(t *testing.T) {
	path := filepath.Join(t.TempDir(), "handoff.sock")
	c := startCluster(t, 0, balancer.Options{})
	if _, err := c.b.Listen("unix", path); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want 0600", fi.Mode().Perm())
	}
	if _, err := c.b.Fork(testworker.EnvListen + "=unix!" + path); err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", path)
		},
	}}
	for i := 0; i < 20; i++ {
		if _, body := get(t, client, "http://unix/"); body != "hello world\n" {
			t.Fatalf("over the unix socket: %q", body)
		}
	}
}

func TestAcceptBacksOffOnEMFILE(t *testing.T) {
	if os.Geteuid() != 0 {
		// For any other user the kernel caps the fds in flight on Unix
		// sockets (sendmsg's ETOOMANYREFS) at the sender's RLIMIT_NOFILE,
		// counted over every process of that user: with the master's
		// limit lowered to a few fds, the other test binaries of
		// `go test ./...` running as the same user fill it, and the
		// master's handoffs wait on them, for longer than the clients'
		// timeout. Root is exempt, as a master started by systemd is.
		t.Skip("needs root: as another user, sendmsg's limit on fds in flight is this master's lowered RLIMIT_NOFILE, shared with every process of the user")
	}
	// A master in its own process, so that its fd limit can be lowered.
	m := startChildMaster(t)
	addr, cmd, logs := m.addr, m.cmd, m.logs
	// Leave the master a handful of spare fds: a burst of connections
	// then runs it out while it holds their unacked fds.
	limit := uint64(fdtest.CountOf(t, cmd.Process.Pid) + 4)
	if err := unix.Prlimit(cmd.Process.Pid, unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: limit, Max: limit}, nil); err != nil {
		t.Fatal(err)
	}
	const clients = 100
	errs := make(chan error, clients)
	for i := 0; i < clients; i++ {
		go func() {
			errs <- loadtest.Get(newConnClient(), "http://"+addr+"/?delay=50ms")
		}()
	}
	failed := 0
	for i := 0; i < clients; i++ {
		if err := <-errs; err != nil {
			failed++
			if failed < 3 {
				t.Errorf("client %d: %v", i, err)
			}
		}
	}
	if failed > 0 {
		_ = cmd.Process.Signal(syscall.SIGQUIT)
		time.Sleep(500 * time.Millisecond)
		t.Fatalf("%d of %d clients failed; master log:\n%s", failed, clients, logs.String())
	}
	if !strings.Contains(logs.String(), "EMFILE") && !strings.Contains(logs.String(), "too many open files") {
		t.Errorf("the master never ran out of fds (limit %d), so EMFILE was not tested; log:\n%s", limit, logs.String())
	}
}

func TestShutdownServesEveryConnectionAlreadyMade(t *testing.T) {
	c := startCluster(t, 2, balancer.Options{})
	c.waitListening(t, 2)
	// Connections made before Shutdown, whether the master has accepted
	// them yet or they wait in the backlog, must all be answered.
	const n = 200
	conns := make([]net.Conn, n)
	for i := range conns {
		conns[i] = dial(t, c.addr)
		if _, err := fmt.Fprint(conns[i], "GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		done <- c.b.Shutdown(ctx)
	}()
	failed := 0
	for i, conn := range conns {
		_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
		b, err := io.ReadAll(conn)
		if err != nil || !strings.HasSuffix(string(b), "hello world\n") {
			failed++
			if failed <= 3 {
				t.Errorf("connection %d made before Shutdown: %q, %v", i, b, err)
			}
		}
	}
	if failed > 0 {
		t.Errorf("%d of %d connections made before Shutdown were not answered; stats %+v", failed, n, c.b.Stats())
	}
	if err := <-done; err != nil {
		t.Errorf("shutdown: %v", err)
	}
}
