//go:build linux

package balancer_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/handoff-go/handoff/balancer"
	"github.com/handoff-go/handoff/internal/fdtest"
	"github.com/handoff-go/handoff/internal/proctest"
	"github.com/handoff-go/handoff/internal/testworker"
	"github.com/rs/zerolog"
)

// hostileBin is internal/hostileworker, built by TestMain.
var hostileBin string

func TestMain(m *testing.M) {
	testworker.Main()
	if addr := os.Getenv(envChildMaster); addr != "" {
		os.Exit(runChildMaster(addr))
	}
	bin, remove := proctest.Build("hostileworker", "../internal/hostileworker")
	hostileBin = bin
	proctest.Main(m, remove)
}

// envChildMaster makes the test binary a master in its own process,
// listening on the address it holds, with two workers: for tests that must
// change the master's process, such as its fd limit.
const envChildMaster = "HANDOFF_TEST_CHILD_MASTER"

// runChildMaster runs the master of envChildMaster through Run, so that
// signals sent to its process drive it as they drive the handoff command.
func runChildMaster(addr string) int {
	_ = os.Unsetenv(envChildMaster)
	b, err := balancer.New(balancer.Options{
		Workers: 2,
		Args:    []string{},
		Env:     []string{testworker.EnvListen + "=tcp!" + addr},
		Logger:  zerolog.New(os.Stderr),
	})
	if err == nil {
		_, err = b.Listen("tcp", addr)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "child master:", err)
		return 1
	}
	if err := b.Run(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, "child master:", err)
		return 1
	}
	return 0
}

// eventLog records a balancer's events.
type eventLog struct {
	mu     sync.Mutex
	events []balancer.Event
	wake   chan struct{}
	gate   chan struct{} // while set, add blocks: a stuck OnEvent
}

func newEventLog() *eventLog { return &eventLog{wake: make(chan struct{}, 1)} }

func (e *eventLog) add(ev balancer.Event) {
	e.mu.Lock()
	gate := e.gate
	e.mu.Unlock()
	if gate != nil {
		<-gate
	}
	e.mu.Lock()
	e.events = append(e.events, ev)
	e.mu.Unlock()
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

func (e *eventLog) pause() {
	e.mu.Lock()
	e.gate = make(chan struct{})
	e.mu.Unlock()
}

func (e *eventLog) resume() {
	e.mu.Lock()
	close(e.gate)
	e.gate = nil
	e.mu.Unlock()
}

func (e *eventLog) snapshot() []balancer.Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]balancer.Event(nil), e.events...)
}

// wait waits until some event satisfies ok, and returns it.
func (e *eventLog) wait(t *testing.T, what string, ok func(balancer.Event) bool) balancer.Event {
	t.Helper()
	deadline := time.After(20 * time.Second)
	seen := 0
	for {
		evs := e.snapshot()
		for _, ev := range evs[seen:] {
			if ok(ev) {
				return ev
			}
		}
		seen = len(evs)
		select {
		case <-e.wake:
		case <-deadline:
			t.Fatalf("timed out waiting for %s; events: %v", what, describe(evs))
		}
	}
}

func describe(evs []balancer.Event) []string {
	var out []string
	for _, ev := range evs {
		switch ev := ev.(type) {
		case balancer.ForkEvent:
			out = append(out, "fork "+strconv.Itoa(ev.Worker.ID()))
		case balancer.OnlineEvent:
			out = append(out, "online "+strconv.Itoa(ev.Worker.ID()))
		case balancer.ListeningEvent:
			out = append(out, "listening "+strconv.Itoa(ev.Worker.ID())+" "+ev.Address)
		case balancer.DisconnectEvent:
			out = append(out, "disconnect "+strconv.Itoa(ev.Worker.ID()))
		case balancer.ExitEvent:
			out = append(out, "exit "+strconv.Itoa(ev.Worker.ID())+" code "+strconv.Itoa(ev.Code))
		case balancer.MessageEvent:
			out = append(out, "message "+strconv.Itoa(ev.Worker.ID())+" "+string(ev.Payload))
		}
	}
	return out
}

// cluster is a running balancer whose workers are this test binary.
type cluster struct {
	b      *balancer.Balancer
	events *eventLog
	addr   string // the TCP listener's address
}

// startCluster runs a balancer with one TCP listener on loopback and
// n workers in the given test mode; opts may set anything else.
func startCluster(t testing.TB, n int, opts balancer.Options, env ...string) *cluster {
	t.Helper()
	c := &cluster{events: newEventLog()}
	opts.Workers = n
	opts.Args = []string{}
	user := opts.OnEvent
	opts.OnEvent = func(ev balancer.Event) {
		c.events.add(ev)
		if user != nil {
			user(ev)
		}
	}
	b, err := balancer.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	c.b = b
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := b.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	addr, err := b.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c.addr = addr.String()
	opts.Env = append(opts.Env, testworker.EnvListen+"="+testworker.FormatAddrs([2]string{"tcp", c.addr}))
	// Env is read at fork time; set it on the balancer through a fresh
	// Options value is not possible after New, so pass it per worker.
	for i := 0; i < n; i++ {
		if _, err := b.Fork(append(opts.Env, env...)...); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// waitListening waits until n workers are listening.
func (c *cluster) waitListening(t testing.TB, n int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		count := 0
		for _, w := range c.b.Workers() {
			if w.State() == balancer.StateListening {
				count++
			}
		}
		if count >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d workers listening; events: %v", count, n, describe(c.events.snapshot()))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// get makes one request on a new connection and returns the answering
// worker's id and the body.
func get(t *testing.T, client *http.Client, url string) (int, string) {
	t.Helper()
	resp, err := client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := strconv.Atoi(resp.Header.Get("X-Worker-Id"))
	return id, string(body)
}

func newConnClient() *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
}

// stableFDCount counts fds once the count has stopped moving, so that a
// client connection still closing in the background is not counted.
func stableFDCount(t *testing.T) int {
	t.Helper()
	last := fdtest.Count(t)
	for same := 0; same < 5; {
		time.Sleep(20 * time.Millisecond)
		n := fdtest.Count(t)
		if n == last {
			same++
		} else {
			last, same = n, 0
		}
	}
	return last
}

// dial opens a raw TCP connection.
func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// waitIdle waits until every worker has reported every connection closed,
// so the master holds no fd for any of them.
func (c *cluster) waitIdle(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		active := 0
		for _, w := range c.b.Workers() {
			active += w.Active()
		}
		if active == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d connections still active", active)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
