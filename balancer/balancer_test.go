//go:build linux

package balancer_test

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/balancer"
	"github.com/handoff-go/handoff/internal/loadtest"
	"github.com/handoff-go/handoff/internal/testworker"
	"github.com/handoff-go/handoff/ipc"
)

func TestRoundRobinIsExactAndLeaksNoFD(t *testing.T) {
	c := startCluster(t, 3, balancer.Options{})
	c.waitListening(t, 3)
	client := newConnClient()
	url := "http://" + c.addr + "/"
	for i := 0; i < 3; i++ {
		get(t, client, url) // warm up lazily made fds (epoll, timers)
	}
	c.waitIdle(t)
	before := stableFDCount(t)
	const n = 1500
	counts := map[int]int{}
	for i := 0; i < n; i++ {
		id, body := get(t, client, url)
		if body != "hello world\n" {
			t.Fatalf("request %d: body %q", i, body)
		}
		counts[id]++
	}
	if len(counts) != 3 {
		t.Fatalf("requests went to %d workers, want 3: %v", len(counts), counts)
	}
	// The rotation is exact, unless a worker was found not reading (a
	// stall: on a loaded machine a worker can go unscheduled for longer
	// than the stall check). It is then routed around until it answers,
	// and what it never read goes to the next: the split shifts, but every
	// connection is still served (checked above).
	st := c.b.Stats()
	for id, k := range counts {
		if k != n/3 && st.Stalls == 0 {
			t.Errorf("worker %d served %d of %d new connections, want exactly %d: %v", id, k, n, n/3, counts)
		}
	}
	t.Logf("split %v; %d stalls, %d reclaimed", counts, st.Stalls, st.Reclaimed)
	c.waitIdle(t)
	// Settled, as before was: the test's own client, in this process, may
	// still be closing its last connection.
	if after := stableFDCount(t); after != before {
		t.Errorf("master has %d fds after %d handoffs, %d before", after, n, before)
	}
}

// keepAlive opens a connection, makes one request on it and leaves it
// open; it returns the conn and the id of the worker serving it.
func keepAlive(t *testing.T, addr string) (net.Conn, int) {
	t.Helper()
	conn := dial(t, addr)
	if _, err := fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: test\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	id, _ := strconv.Atoi(resp.Header.Get("X-Worker-Id"))
	return conn, id
}

func TestLeastLoadedFollowsClosedConnections(t *testing.T) {
	c := startCluster(t, 3, balancer.Options{Policy: balancer.LeastLoaded})
	c.waitListening(t, 3)
	byWorker := map[int][]net.Conn{}
	for i := 0; i < 30; i++ {
		conn, id := keepAlive(t, c.addr)
		byWorker[id] = append(byWorker[id], conn)
	}
	if len(byWorker) != 3 {
		t.Fatalf("30 idle connections on %d workers, want 3", len(byWorker))
	}
	// Exact, unless a worker was found not reading meanwhile (a loaded
	// machine can leave one unscheduled for longer than the stall check):
	// it is then routed around for a moment, and the split shifts.
	stalls := c.b.Stats().Stalls
	for id, conns := range byWorker {
		if len(conns) != 10 && stalls == 0 {
			t.Fatalf("worker %d holds %d of 30 idle connections, want 10", id, len(conns))
		}
	}
	if stalls > 0 {
		t.Logf("%d stalls: split %d/%d/%d, not checked", stalls, len(byWorker[1]), len(byWorker[2]), len(byWorker[3]))
	}
	// Close 5 of one worker's connections and wait for the master to see it.
	var target *balancer.Worker
	for _, w := range c.b.Workers() {
		if w.ID() == c.b.Workers()[0].ID() {
			target = w
		}
	}
	for _, conn := range byWorker[target.ID()][:5] {
		conn.Close()
	}
	deadline := time.Now().Add(10 * time.Second)
	for target.Active() != 5 {
		if time.Now().After(deadline) {
			t.Fatalf("worker %d still has %d active connections, want 5", target.ID(), target.Active())
		}
		time.Sleep(5 * time.Millisecond)
	}
	for i := 0; i < 5; i++ {
		if _, id := keepAlive(t, c.addr); id != target.ID() {
			t.Fatalf("new connection %d went to worker %d, want the least loaded, %d", i, id, target.ID())
		}
	}
}

func TestEventOrderAndDisconnect(t *testing.T) {
	c := startCluster(t, 2, balancer.Options{})
	c.waitListening(t, 2)
	w := c.b.Workers()[0]
	w.Disconnect()
	ev := c.events.wait(t, "exit", func(ev balancer.Event) bool {
		e, ok := ev.(balancer.ExitEvent)
		return ok && e.Worker == w
	}).(balancer.ExitEvent)
	if !ev.ExitedAfterDisconnect || ev.Code != 0 || ev.Signal != nil {
		t.Errorf("exit after disconnect: %+v, want code 0, no signal, ExitedAfterDisconnect", ev)
	}
	var order []string
	for _, ev := range c.events.snapshot() {
		var name string
		var who *balancer.Worker
		switch ev := ev.(type) {
		case balancer.ForkEvent:
			name, who = "fork", ev.Worker
		case balancer.OnlineEvent:
			name, who = "online", ev.Worker
		case balancer.ListeningEvent:
			name, who = "listening", ev.Worker
		case balancer.DisconnectEvent:
			name, who = "disconnect", ev.Worker
		case balancer.ExitEvent:
			name, who = "exit", ev.Worker
		}
		if who == w {
			order = append(order, name)
		}
	}
	if got, want := strings.Join(order, " "), "fork online listening disconnect exit"; got != want {
		t.Errorf("events of worker %d: %q, want %q", w.ID(), got, want)
	}
	if !w.IsDead() || w.IsConnected() {
		t.Errorf("after exit: IsDead %v, IsConnected %v", w.IsDead(), w.IsConnected())
	}
	// A disconnected worker is not replaced.
	time.Sleep(300 * time.Millisecond)
	if n := len(c.b.Workers()); n != 1 {
		t.Errorf("%d workers after disconnecting one of 2, want 1", n)
	}
}

func TestExitCodeAndSignal(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		env    []string
		kill   bool
		code   int
		signal syscall.Signal
	}{
		{name: "exit 42", env: []string{testworker.EnvMode + "=exit", testworker.EnvExitCode + "=42"}, code: 42},
		{name: "SIGKILL", kill: true, code: -1, signal: syscall.SIGKILL},
		{name: "SIGKILL in a busy loop", env: []string{testworker.EnvMode + "=busy"}, kill: true, code: -1, signal: syscall.SIGKILL},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := startCluster(t, 1, balancer.Options{}, tt.env...)
			w := c.b.Workers()[0]
			if tt.kill {
				c.waitListening(t, 1)
				if err := w.Kill(syscall.SIGKILL); err != nil {
					t.Fatal(err)
				}
			}
			ev := c.events.wait(t, "exit", func(ev balancer.Event) bool {
				e, ok := ev.(balancer.ExitEvent)
				return ok && e.Worker == w
			}).(balancer.ExitEvent)
			if ev.Code != tt.code || ev.ExitedAfterDisconnect {
				t.Errorf("exit: code %d, after disconnect %v; want code %d, false", ev.Code, ev.ExitedAfterDisconnect, tt.code)
			}
			if tt.signal == 0 && ev.Signal != nil {
				t.Errorf("exit: signal %v, want none", ev.Signal)
			}
			if tt.signal != 0 && ev.Signal != tt.signal {
				t.Errorf("exit: signal %v, want %v", ev.Signal, tt.signal)
			}
			// An unexpected exit is restarted, with a new id.
			c.events.wait(t, "a replacement", func(ev balancer.Event) bool {
				e, ok := ev.(balancer.ForkEvent)
				return ok && e.Worker.ID() > w.ID()
			})
		})
	}
}

func TestDisconnectedWorkerFinishesOpenRequest(t *testing.T) {
	c := startCluster(t, 1, balancer.Options{})
	c.waitListening(t, 1)
	w := c.b.Workers()[0]
	type result struct {
		body string
		err  error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := newConnClient().Get("http://" + c.addr + "/?delay=1s")
		if err != nil {
			done <- result{err: err}
			return
		}
		defer resp.Body.Close()
		var sb strings.Builder
		_, err = bufio.NewReader(resp.Body).WriteTo(&sb)
		done <- result{sb.String(), err}
	}()
	deadline := time.Now().Add(5 * time.Second)
	for w.Active() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	w.Disconnect()
	time.Sleep(300 * time.Millisecond)
	if w.IsDead() {
		t.Fatal("worker exited while a request was in flight")
	}
	r := <-done
	if r.err != nil || r.body != "hello world\n" {
		t.Fatalf("request in flight during disconnect: %q, %v", r.body, r.err)
	}
	ev := c.events.wait(t, "exit", func(ev balancer.Event) bool {
		e, ok := ev.(balancer.ExitEvent)
		return ok && e.Worker == w
	}).(balancer.ExitEvent)
	if !ev.ExitedAfterDisconnect {
		t.Errorf("exit %+v, want ExitedAfterDisconnect", ev)
	}
}

func TestForkEnvReachesWorker(t *testing.T) {
	c := startCluster(t, 0, balancer.Options{})
	w, err := c.b.Fork(testworker.EnvEcho+"=HANDOFF_TEST_FORK_VALUE", "HANDOFF_TEST_FORK_VALUE=from fork", testworker.EnvListen+"=tcp!"+c.addr)
	if err != nil {
		t.Fatal(err)
	}
	ev := c.events.wait(t, "env message", func(ev balancer.Event) bool {
		e, ok := ev.(balancer.MessageEvent)
		return ok && e.Worker == w
	}).(balancer.MessageEvent)
	var v testworker.EnvValue
	if err := json.Unmarshal(ev.Payload, &v); err != nil || v.Value != "from fork" {
		t.Fatalf("worker saw %s (%v), want value %q", ev.Payload, err, "from fork")
	}
}

func TestMessagesRoundTripInOrder(t *testing.T) {
	c := startCluster(t, 1, balancer.Options{})
	c.waitListening(t, 1)
	w := c.b.Workers()[0]
	big := strings.Repeat("x", 1<<20)
	var sent []string
	for i := 0; i < 200; i++ {
		v := strconv.Itoa(i)
		if i == 100 {
			v = big
		}
		if err := w.Send(v); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
		sent = append(sent, v)
	}
	tooBig := strings.Repeat("y", ipc.MaxMessage)
	if err := w.Send(tooBig); !errors.Is(err, ipc.ErrMessageTooLarge) {
		t.Errorf("sending %d bytes: %v, want ipc.ErrMessageTooLarge", len(tooBig)+2, err)
	}
	if err := w.Send("last"); err != nil {
		t.Fatal(err)
	}
	sent = append(sent, "last")
	c.events.wait(t, "the last echo", func(ev balancer.Event) bool {
		e, ok := ev.(balancer.MessageEvent)
		return ok && string(e.Payload) == `"last"`
	})
	var got []string
	for _, ev := range c.events.snapshot() {
		if e, ok := ev.(balancer.MessageEvent); ok {
			var s string
			if err := json.Unmarshal(e.Payload, &s); err != nil {
				t.Fatalf("echo %s: %v", e.Payload, err)
			}
			got = append(got, s)
		}
	}
	if len(got) != len(sent) {
		t.Fatalf("got %d echoes, sent %d", len(got), len(sent))
	}
	for i := range sent {
		if got[i] != sent[i] {
			t.Fatalf("echo %d differs (%d bytes, want %d)", i, len(got[i]), len(sent[i]))
		}
	}
}

func TestWorkerListenErrorsAndPortZero(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0") // another owner of a port
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	c := startCluster(t, 0, balancer.Options{})
	_, err = c.b.Fork(testworker.EnvMode+"=report", testworker.EnvListen+"="+testworker.FormatAddrs(
		[2]string{"tcp", busy.Addr().String()},
		[2]string{"tcp", "127.0.0.1:0"},
		[2]string{"tcp", "no.such.host.invalid:80"},
	))
	if err != nil {
		t.Fatal(err)
	}
	results := map[string]testworker.ListenResult{}
	for len(results) < 3 {
		ev := c.events.wait(t, "listen results", func(ev balancer.Event) bool {
			e, ok := ev.(balancer.MessageEvent)
			if !ok {
				return false
			}
			var r testworker.ListenResult
			if json.Unmarshal(e.Payload, &r) != nil || r.Kind != "listen" {
				return false
			}
			_, seen := results[r.Requested]
			return !seen
		}).(balancer.MessageEvent)
		var r testworker.ListenResult
		_ = json.Unmarshal(ev.Payload, &r)
		results[r.Requested] = r
	}
	if r := results[busy.Addr().String()]; !r.InUse || !strings.Contains(r.Error, "address already in use") {
		t.Errorf("listen on a port in use: %+v, want EADDRINUSE as net.Listen gives it", r)
	}
	if r := results["no.such.host.invalid:80"]; r.Error == "" {
		t.Errorf("listen on a nonsense address: %+v, want an error", r)
	}
	r := results["127.0.0.1:0"]
	_, port, _ := net.SplitHostPort(r.Address)
	if r.Error != "" || port == "0" || port == "" {
		t.Fatalf("listen on port 0: %+v, want the real port", r)
	}
	ev := c.events.wait(t, "listening", func(ev balancer.Event) bool {
		_, ok := ev.(balancer.ListeningEvent)
		return ok
	}).(balancer.ListeningEvent)
	if ev.Address != r.Address {
		t.Errorf("listening event says %s, worker got %s", ev.Address, r.Address)
	}
	if _, body := get(t, newConnClient(), "http://"+r.Address+"/"); body != "hello world\n" {
		t.Errorf("request to the port-0 listener: %q", body)
	}
}

func TestReloadUnderLoadFailsNothing(t *testing.T) {
	c := startCluster(t, 2, balancer.Options{})
	c.waitListening(t, 2)
	olds := map[int]bool{}
	for _, w := range c.b.Workers() {
		olds[w.ID()] = true
	}
	stop := make(chan struct{})
	res, wait := loadtest.Load{URL: "http://" + c.addr + "/", NewConn: 4, KeepAlive: 4, PerClient: 100000, Timeout: 10 * time.Second}.Start(stop)
	time.Sleep(200 * time.Millisecond)
	ctx := t.Context()
	if err := c.b.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	close(stop)
	wait()
	sent, failed, firstErr := res.Counts()
	t.Logf("reload under load: %d requests, %d failed", sent, failed)
	if failed > 0 {
		t.Errorf("%d of %d requests failed during reload; first: %v", failed, sent, firstErr)
	}
	for _, w := range c.b.Workers() {
		if olds[w.ID()] && w.State() != balancer.StateDisconnecting {
			t.Errorf("old worker %d is still %v after reload", w.ID(), w.State())
		}
	}
}

func TestReloadAbortsWhenReplacementFails(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "bad-deploy")
	c := startCluster(t, 2, balancer.Options{}, testworker.EnvFailIfExists+"="+marker)
	c.waitListening(t, 2)
	olds := c.b.Workers()
	if err := os.WriteFile(marker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	err := c.b.Reload(t.Context())
	if !errors.Is(err, balancer.ErrReloadAborted) {
		t.Fatalf("reload with a failing replacement: %v, want ErrReloadAborted", err)
	}
	// The old workers keep serving, and the failed replacement is not
	// restarted.
	time.Sleep(300 * time.Millisecond)
	ws := c.b.Workers()
	if len(ws) != 2 || ws[0] != olds[0] || ws[1] != olds[1] {
		t.Fatalf("workers after an aborted reload: %v, want the old %v", ws, olds)
	}
	for _, w := range ws {
		if w.State() != balancer.StateListening {
			t.Errorf("old worker %d is %v", w.ID(), w.State())
		}
	}
	client := newConnClient()
	seen := map[int]bool{}
	for i := 0; i < 4; i++ {
		id, body := get(t, client, "http://"+c.addr+"/")
		if body != "hello world\n" {
			t.Fatalf("body %q", body)
		}
		seen[id] = true
	}
	if !seen[olds[0].ID()] || !seen[olds[1].ID()] {
		t.Errorf("requests went to %v, want the old workers %d and %d", seen, olds[0].ID(), olds[1].ID())
	}
}

func TestBroadcastReachesEveryWorker(t *testing.T) {
	c := startCluster(t, 3, balancer.Options{})
	c.waitListening(t, 3)
	if err := c.b.Broadcast(map[string]string{"cmd": "ping"}); err != nil {
		t.Fatal(err)
	}
	for _, w := range c.b.Workers() {
		c.events.wait(t, fmt.Sprintf("worker %d's echo", w.ID()), func(ev balancer.Event) bool {
			e, ok := ev.(balancer.MessageEvent)
			return ok && e.Worker == w && string(e.Payload) == `{"cmd":"ping"}`
		})
	}
}

func TestReloadConcurrencyReplacesSeveralAtOnce(t *testing.T) {
	c := startCluster(t, 4, balancer.Options{ReloadConcurrency: 2})
	c.waitListening(t, 4)
	olds := map[*balancer.Worker]bool{}
	for _, w := range c.b.Workers() {
		olds[w] = true
	}
	if err := c.b.Reload(t.Context()); err != nil {
		t.Fatal(err)
	}
	// Two replacements run at once: the second is forked before the first
	// listens. (With concurrency 1 it is forked only after.)
	forks, firstListening, secondFork := 0, -1, -1
	for i, ev := range c.events.snapshot() {
		switch e := ev.(type) {
		case balancer.ForkEvent:
			if !olds[e.Worker] {
				forks++
				if forks == 2 {
					secondFork = i
				}
			}
		case balancer.ListeningEvent:
			if !olds[e.Worker] && firstListening < 0 {
				firstListening = i
			}
		}
	}
	if forks != 4 {
		t.Errorf("%d replacements forked, want 4", forks)
	}
	if secondFork < 0 || firstListening < 0 || secondFork > firstListening {
		t.Errorf("second replacement forked at event %d, first listening at %d: not concurrent", secondFork, firstListening)
	}
	c.waitListening(t, 4)
	for _, w := range c.b.Workers() {
		if olds[w] && w.State() != balancer.StateDisconnecting {
			t.Errorf("old worker %d is %v after the reload", w.ID(), w.State())
		}
	}
	if _, body := get(t, newConnClient(), "http://"+c.addr+"/"); body != "hello world\n" {
		t.Errorf("after the reload: %q", body)
	}
}
