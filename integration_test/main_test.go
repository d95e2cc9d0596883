//go:build linux

package integration_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/handoff-go/handoff/balancer"
	"github.com/handoff-go/handoff/internal/netnstest"
	"github.com/handoff-go/handoff/internal/proctest"
	"github.com/handoff-go/handoff/internal/testworker"
)

// handoffBin is the handoff CLI, built by TestMain, that the fleet tests
// run on every host, as a user would.
var handoffBin string

// TestMain is also the workers' main: a balancer or a handoff CLI
// re-executes this test binary, and a worker serves instead of running
// the tests.
func TestMain(m *testing.M) {
	fleetWorkerMain()
	testworker.Main()
	bin, remove := proctest.Build("handoff", "github.com/handoff-go/handoff/cmd/handoff", "-race")
	handoffBin = bin
	proctest.Main(m, remove)
}

// Bounds of every wait and request in this package.
const (
	startTimeout    = 20 * time.Second
	requestTimeout  = 10 * time.Second
	shutdownTimeout = 20 * time.Second
)

// master is a running balancer whose workers serve testworker.Handler.
type master struct {
	b *balancer.Balancer

	mu    sync.Mutex
	exits []balancer.ExitEvent
}

// startMaster opens network!address in the server host's namespace, then
// starts workers that serve it, and waits until they all listen. The
// balancer is shut down in t.Cleanup.
func startMaster(t *testing.T, server *netnstest.Host, workers int, network, address string) *master {
	t.Helper()
	m := &master{}
	b, err := balancer.New(balancer.Options{
		Workers: workers,
		Args:    []string{}, // the worker re-exec runs no test
		Env:     []string{testworker.EnvListen + "=" + testworker.FormatAddrs([2]string{network, address})},
		OnEvent: m.record,
	})
	if err != nil {
		t.Fatal(err)
	}
	m.b = b
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		defer cancel()
		if err := b.Shutdown(ctx); err != nil {
			t.Errorf("shutting the master down: %v", err)
		}
	})
	// The socket is created on a thread in the server's namespace and
	// stays there; workers asking for the same address share it.
	err = server.Do(func() error {
		_, err := b.Listen(network, address)
		return err
	})
	if err != nil {
		t.Fatalf("master listening on %s %s in the server host: %v", network, address, err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	m.waitListening(t, workers, 0)
	return m
}

func (m *master) record(ev balancer.Event) {
	if e, ok := ev.(balancer.ExitEvent); ok {
		m.mu.Lock()
		m.exits = append(m.exits, e)
		m.mu.Unlock()
	}
}

// waitListening waits until n workers with ids above minID are listening,
// and returns them.
func (m *master) waitListening(t *testing.T, n, minID int) []*balancer.Worker {
	t.Helper()
	deadline := time.Now().Add(startTimeout)
	for {
		var ready []*balancer.Worker
		for _, w := range m.b.Workers() {
			if w.ID() > minID && w.State() == balancer.StateListening {
				ready = append(ready, w)
			}
		}
		if len(ready) >= n {
			return ready
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d workers listening after %v", len(ready), n, startTimeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// exitOf waits for w's ExitEvent.
func (m *master) exitOf(t *testing.T, w *balancer.Worker) balancer.ExitEvent {
	t.Helper()
	deadline := time.Now().Add(startTimeout)
	for {
		m.mu.Lock()
		for _, e := range m.exits {
			if e.Worker == w {
				m.mu.Unlock()
				return e
			}
		}
		m.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatalf("no exit event for worker %d after %v", w.ID(), startTimeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// answer is what a testworker (or a test listener) said.
type answer struct {
	worker int    // X-Worker-Id, 0 if absent
	header string // the header asked for
	body   string
}

// get makes one request with client and reads the whole answer. It makes
// no assertion, so it is safe off the test goroutine.
func get(client *http.Client, url, header string) (answer, error) {
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return answer{}, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return answer{}, err
	}
	return readAnswer(resp, header)
}

// getOn makes one request on conn, which it closes.
func getOn(conn net.Conn, path, header string) (answer, error) {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(requestTimeout))
	req, err := http.NewRequest(http.MethodGet, "http://handoff.test"+path, nil)
	if err != nil {
		return answer{}, err
	}
	req.Close = true
	if err := req.Write(conn); err != nil {
		return answer{}, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		return answer{}, err
	}
	return readAnswer(resp, header)
}

func readAnswer(resp *http.Response, header string) (answer, error) {
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return answer{}, err
	}
	if resp.StatusCode != http.StatusOK {
		return answer{}, fmt.Errorf("status %s, body %q", resp.Status, body)
	}
	id, _ := strconv.Atoi(resp.Header.Get("X-Worker-Id"))
	a := answer{worker: id, body: string(body)}
	if header != "" {
		a.header = resp.Header.Get(header)
	}
	return a, nil
}

// spread returns max-min of the counts, over want buckets (missing ones
// count as 0).
func spread[K comparable](counts map[K]int, want int) int {
	vals := make([]int, 0, want)
	for _, v := range counts {
		vals = append(vals, v)
	}
	for len(vals) < want {
		vals = append(vals, 0)
	}
	return slices.Max(vals) - slices.Min(vals)
}
