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

	"github.com/handoff-go/handoff/internal/httpdrain"
	"github.com/handoff-go/handoff/worker"
	"github.com/rs/zerolog"
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

// demoDrainTimeout bounds the demo's drain; the master kills it after
// --shutdown-timeout anyway.
const demoDrainTimeout = maxDelay + 10*time.Second

// serveExitWait is how long the demo, on SIGTERM, waits for the master's
// Disconnect to close its listeners before it closes them itself.
const serveExitWait = 500 * time.Millisecond

// demoServer is the demo worker's http.Server, which logs through log.
func demoServer(id int, log zerolog.Logger) *http.Server {
	return &http.Server{
		Handler:           demoHandler(id),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          httpErrorLog(log, "demo worker"),
	}
}

// runDemoWorker serves the demo on every --listen address with an
// unmodified http.Server, and drains on SIGTERM without failing a request
// (see httpdrain.Drain). It logs as the master does (see logFormat), with
// the worker's id and pid on every line, the http.Server's included.
func runDemoWorker(c *config) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	log := newLogger(c).With().Int("worker", worker.ID()).Int("pid", os.Getpid()).Logger()
	srv := demoServer(worker.ID(), log)
	drain := httpdrain.New(srv)
	var lns []net.Listener
	for _, s := range c.specs {
		ln, err := worker.Listen(s.network, s.address)
		if err != nil {
			log.Error().Err(err).Str("address", s.address).Msg("demo worker cannot listen")
			for _, ln := range lns {
				_ = ln.Close()
			}
			return 1
		}
		lns = append(lns, ln)
	}
	log.Debug().Strs("listen", c.listen).Msg("demo worker serving")
	var wg sync.WaitGroup
	errs := make(chan error, len(lns))
	for _, ln := range lns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// net.ErrClosed: the master disconnected us, or we drain.
			if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
				errs <- err
			}
		}()
	}
	code := 0
	select {
	case <-ctx.Done():
	case err := <-errs:
		log.Error().Err(err).Msg("demo worker stopped serving")
		code = 1
	}
	// Under a master, SIGTERM comes after the master's Disconnect, which
	// closes the listeners: Serve returns once Accept has handed out what
	// was queued. Closing them ourselves first would send those
	// connections back to a master that may have no worker left to take
	// them. If the listeners stay open (SIGTERM from elsewhere), drain
	// closes them.
	served := make(chan struct{})
	go func() { wg.Wait(); close(served) }()
	select {
	case <-served:
	case <-time.After(serveExitWait):
	}
	if !drain.Close(lns, demoDrainTimeout) {
		log.Warn().Str("timeout", demoDrainTimeout.String()).Msg("demo worker: requests still running after the drain timeout; closed them")
	}
	wg.Wait()
	return code
}
