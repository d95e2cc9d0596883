package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/handoff-go/handoff/worker"
)

// headerPID names the response header that carries the serving worker's
// pid, so that a client knows which process answered.
const headerPID = "X-Worker-Pid"

// maxEchoSize bounds /echo?size=N.
const maxEchoSize = 16 << 20

// handler serves:
//
//	GET  /echo?size=N   N bytes of a repeating pattern (see echoPattern)
//	POST /echo          the request body
//	GET  /file/NAME     dir/NAME through http.ServeFile (sendfile on HTTP/1);
//	                    with dir "", no /file/ and no /copy/
//	GET  /copy/NAME     the same, through a writer that hides io.ReaderFrom,
//	                    so the body is copied through user space: the
//	                    control for a sendfile check
//	GET  /ws            a WebSocket that echoes each message (see wsHub)
//
// Every response carries the worker's pid in X-Worker-Pid.
func handler(dir string, hub *wsHub) http.Handler {
	pid := strconv.Itoa(os.Getpid())
	mux := http.NewServeMux()
	mux.HandleFunc("GET /echo", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.Atoi(r.URL.Query().Get("size"))
		if err != nil || n < 0 || n > maxEchoSize {
			http.Error(w, "size: want 0 to 16777216", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(n))
		_, _ = w.Write(echoPattern(n))
	})
	mux.HandleFunc("POST /echo", func(w http.ResponseWriter, r *http.Request) {
		// The whole body first: once an HTTP/1 response has begun, net/http
		// ends reads of the request body.
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxEchoSize))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		_, _ = w.Write(body)
	})
	if dir != "" {
		mux.HandleFunc("GET /file/{name}", func(w http.ResponseWriter, r *http.Request) {
			http.ServeFile(w, r, filepath.Join(dir, filepath.Base(r.PathValue("name"))))
		})
		mux.HandleFunc("GET /copy/{name}", func(w http.ResponseWriter, r *http.Request) {
			http.ServeFile(writerOnly{w}, r, filepath.Join(dir, filepath.Base(r.PathValue("name"))))
		})
	}
	mux.HandleFunc("GET /ws", hub.serve)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(headerPID, pid)
		mux.ServeHTTP(w, r)
	})
}

// writerOnly is an http.ResponseWriter without ReadFrom, so io.Copy
// into it goes through a 32 KiB buffer and write(2), not sendfile(2).
type writerOnly struct{ w http.ResponseWriter }

func (o writerOnly) Header() http.Header         { return o.w.Header() }
func (o writerOnly) Write(p []byte) (int, error) { return o.w.Write(p) }
func (o writerOnly) WriteHeader(code int)        { o.w.WriteHeader(code) }

// echoPattern returns n bytes of "0123456789abcdef" repeated.
func echoPattern(n int) []byte {
	const digits = "0123456789abcdef"
	b := make([]byte, n)
	for i := range b {
		b[i] = digits[i%len(digits)]
	}
	return b
}

// newHTTPServer returns the server both the plain and the TLS listeners
// use, with p's protocols.
func newHTTPServer(c config, p *http.Protocols) (*http.Server, *wsHub) {
	hub := newWSHub()
	return &http.Server{
		Handler:           handler(c.dir, hub),
		Protocols:         p,
		ReadHeaderTimeout: 10 * time.Second,
	}, hub
}

// serveH2C serves HTTP/1.1 and unencrypted HTTP/2 (h2c with prior
// knowledge, Go's native support) on c.http until drained.
func serveH2C(ctx context.Context, c config) error {
	ln, err := worker.Listen("tcp", c.http)
	if err != nil {
		return err
	}
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	srv, hub := newHTTPServer(c, &p)
	sc := worker.ServeConfig{DrainTimeout: c.drainTimeout, OnDrain: hub.goAway}
	if err := sc.Serve(ctx, srv, ln); err != nil {
		return fmt.Errorf("--http %s: %w", c.http, err)
	}
	return nil
}

// serveTLS serves HTTP/1.1 and h2 (by ALPN) over TLS on c.tls until
// drained: tls.NewListener over the handed-off listener.
func serveTLS(ctx context.Context, c config) error {
	cert, err := loadOrMakeCert(c.certFile, c.keyFile)
	if err != nil {
		return err
	}
	ln, err := worker.Listen("tcp", c.tls)
	if err != nil {
		return err
	}
	tln := tls.NewListener(ln, &tls.Config{
		Certificates: []tls.Certificate{cert},
		NextProtos:   []string{"h2", "http/1.1"},
		MinVersion:   tls.VersionTLS12,
	})
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetHTTP2(true)
	srv, hub := newHTTPServer(c, &p)
	sc := worker.ServeConfig{DrainTimeout: c.drainTimeout, OnDrain: hub.goAway}
	if err := sc.Serve(ctx, srv, tln); err != nil {
		return fmt.Errorf("--tls %s: %w", c.tls, err)
	}
	return nil
}
