//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/handoff-go/handoff/worker"
	"github.com/rs/zerolog"
)

// maxDelay bounds the demo's ?delay= parameter.
const maxDelay = 60 * time.Second

// maxGrown bounds the memory ?grow= keeps, in all, in one worker.
const maxGrown = 1 << 30

// grown is the memory ?grow= made resident: kept, so that it stays so,
// until the worker exits. It shows --max-memory at work.
var grown struct {
	mu     sync.Mutex
	chunks [][]byte
	total  int64
}

// grow makes n more bytes resident in this process, up to maxGrown in
// all: it allocates them and writes every page, which the kernel only
// then backs with memory.
func grow(n int64) error {
	grown.mu.Lock()
	defer grown.mu.Unlock()
	if n > maxGrown-grown.total {
		return fmt.Errorf("the demo keeps at most %s in all, and holds %s", formatSize(maxGrown), formatSize(grown.total))
	}
	p := make([]byte, n)
	for i := 0; i < len(p); i += os.Getpagesize() {
		p[i] = 1
	}
	grown.chunks = append(grown.chunks, p)
	grown.total += n
	return nil
}

// demoHandler answers "hello world\n" like the example in Node's cluster
// docs, with the header X-Worker-Id, after an optional ?delay=DURATION,
// and having kept ?grow=SIZE more bytes resident (see grow).
func demoHandler(id int) http.Handler {
	idText := strconv.Itoa(id)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Worker-Id", idText)
		var q url.Values // parsed only if there is a query: ParseQuery allocates
		if r.URL.RawQuery != "" {
			q = r.URL.Query()
		}
		if g := q.Get("grow"); g != "" {
			n, err := parseSize(g)
			if err == nil {
				err = grow(n)
			}
			if err != nil {
				http.Error(w, "bad grow: "+err.Error(), http.StatusBadRequest)
				return
			}
		}
		if d := q.Get("delay"); d != "" {
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

// demoServer is the demo worker's http.Server, which logs through log.
func demoServer(id int, log zerolog.Logger) *http.Server {
	return &http.Server{
		Handler:           demoHandler(id),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          httpErrorLog(log, "demo worker"),
	}
}

// runDemoWorker serves the demo on every --listen address with an
// unmodified http.Server through worker.Serve, which drains it on the
// master's Disconnect and on SIGTERM without failing a request, and ends
// keep-alive connections past --max-conn-age. It logs as the master does
// (see logFormat), with the worker's id and pid on every line, the
// http.Server's included.
func runDemoWorker(c *config) int {
	log := newLogger(c).With().Int("worker", worker.ID()).Int("pid", os.Getpid()).Logger()
	srv := demoServer(worker.ID(), log)
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
	// The master kills a worker --shutdown-timeout after SIGTERM: a
	// longer drain would never end by itself.
	sc := worker.ServeConfig{DrainTimeout: c.shutdownTimeout, MaxConnAge: c.maxConnAge, IdleGrace: c.idleGrace}
	err := sc.Serve(context.Background(), srv, lns...)
	switch {
	case errors.Is(err, worker.ErrDrainTimeout):
		log.Warn().Str("timeout", c.shutdownTimeout.String()).Msg("demo worker: requests still running after the drain timeout; closed them")
	case err != nil:
		log.Error().Err(err).Msg("demo worker stopped serving")
		return 1
	}
	return 0
}
