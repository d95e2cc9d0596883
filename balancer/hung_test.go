//go:build linux

package balancer_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/handoff-go/handoff/balancer"
	"github.com/handoff-go/handoff/internal/proctest"
)

// TestHungWorkerDumpsGoroutines: a worker whose handler does not return
// does not drain within ShutdownTimeout. The master sends it SIGQUIT
// first, and Go's runtime writes every goroutine's stack, the stuck
// handler's among them, to the workers' stderr before the worker exits.
func TestHungWorkerDumpsGoroutines(t *testing.T) {
	t.Parallel()
	stderr := &proctest.Output{}
	c := startCluster(t, 1, balancer.Options{ShutdownTimeout: 300 * time.Millisecond, Stderr: stderr})
	c.waitListening(t, 1)
	w := c.b.Workers()[0]
	go func() {
		client := &http.Client{Timeout: 30 * time.Second}
		if resp, err := client.Get("http://" + c.addr + "/?delay=1m"); err == nil {
			resp.Body.Close()
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for w.Stats().Active == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // the request is in the handler
	start := time.Now()
	w.Disconnect()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for !w.IsDead() {
		if ctx.Err() != nil {
			t.Fatalf("the hung worker outlived its kill; stderr:\n%.3000s", stderr.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	took := time.Since(start)
	out := stderr.String()
	if !strings.Contains(out, "SIGQUIT: quit") || !strings.Contains(out, "testworker.Handler") {
		t.Errorf("no goroutine dump with the stuck handler on the worker's stderr:\n%.3000s", out)
	}
	if took > 300*time.Millisecond+balancer.DumpWait+5*time.Second {
		t.Errorf("the hung worker took %v to go", took)
	}
}
