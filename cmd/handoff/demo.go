package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/handoff-go/handoff/worker"
)

// maxDelay bounds the demo's ?delay= parameter.
const maxDelay = 60 * time.Second

// demoHandler answers "hello world\n" like the example in Node's cluster
// docs, with the header X-Worker-Id, after an optional ?delay=DURATION.
func demoHandler(id int) http.Handler {
	idText := strconv.Itoa(id)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Worker-Id", idText)
		if d := r.URL.Query().Get("delay"); d != "" {
			delay, err := time.ParseDuration(d)
			if err != nil || delay < 0 || delay > maxDelay {
				http.Error(w, fmt.Sprintf("bad delay %q: want a Go duration from 0 to %s, such as 250ms", d, maxDelay), http.StatusBadRequest)
				return
			}
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-r.Context().Done():
				t.Stop()
				return
			}
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("hello world\n"))
	})
}

// runDemoWorker serves the demo on every --listen address with an
// unmodified http.Server, and drains on SIGTERM.
func runDemoWorker(c *config) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	srv := &http.Server{Handler: demoHandler(worker.ID()), ReadHeaderTimeout: 10 * time.Second}
	var lns []net.Listener
	for _, a := range c.listen {
		network, address, _ := splitListen(a)
		ln, err := worker.Listen(network, address)
		if err != nil {
			fmt.Fprintf(os.Stderr, "handoff demo worker %d: %v\n", worker.ID(), err)
			for _, ln := range lns {
				_ = ln.Close()
			}
			return 1
		}
		lns = append(lns, ln)
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(lns))
	for _, ln := range lns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// net.ErrClosed: the master disconnected us; SIGTERM follows.
			if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
				errs <- err
			}
		}()
	}
	code := 0
	select {
	case <-ctx.Done():
	case err := <-errs:
		fmt.Fprintf(os.Stderr, "handoff demo worker %d: %v\n", worker.ID(), err)
		code = 1
	}
	// Drain: the master kills us after --shutdown-timeout anyway.
	_ = srv.Shutdown(context.Background())
	wg.Wait()
	return code
}
