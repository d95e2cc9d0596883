package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/handoff-go/handoff/worker"
	"golang.org/x/sync/errgroup"
)

// config is what the flags choose to serve. An empty address serves
// nothing there.
type config struct {
	http          string        // address of the plain server: HTTP/1.1 and h2c
	tls           string        // address of the TLS server: HTTP/1.1 and h2
	grpc          string        // address of the gRPC server (h2c)
	fasthttp      string        // address of the fasthttp server (HTTP/1.1)
	fasthttpGrace time.Duration // how long its drain lets keep-alive clients close first
	certFile      string        // the TLS server's certificate (PEM); empty: a self-signed one made at start
	keyFile       string        // its key (PEM)
	dir           string        // the directory /file/ and /copy/ serve; "": none
	drainTimeout  time.Duration // bounds each server's drain
}

func parseFlags(args []string) (config, error) {
	var c config
	fs := flag.NewFlagSet("compat", flag.ContinueOnError)
	fs.StringVar(&c.http, "http", "", "serve HTTP/1.1 and h2c (prior knowledge) on this address: /echo, /file/, /copy/, /ws")
	fs.StringVar(&c.tls, "tls", "", "serve HTTP/1.1 and h2 over TLS on this address: the same handler")
	fs.StringVar(&c.grpc, "grpc", "", "serve gRPC on this address: compat.Echo and grpc.health.v1.Health")
	fs.StringVar(&c.fasthttp, "fasthttp", "", "serve fasthttp (github.com/valyala/fasthttp) on this address, drained as fasthttp.go says")
	fs.DurationVar(&c.fasthttpGrace, "fasthttp-grace", worker.DefaultIdleGrace, "how long the fasthttp server's drain answers with Connection: close before its Shutdown; 0 is a plain Shutdown")
	fs.StringVar(&c.certFile, "tls-cert", "", "certificate of the TLS server, PEM; empty: a self-signed one for 127.0.0.1 and localhost, made at start")
	fs.StringVar(&c.keyFile, "tls-key", "", "key of --tls-cert, PEM")
	fs.StringVar(&c.dir, "dir", "", "directory whose files /file/NAME (http.ServeFile) and /copy/NAME serve (default none)")
	fs.DurationVar(&c.drainTimeout, "drain-timeout", worker.DefaultDrainTimeout, "bounds each server's drain, after which what is still open is closed")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if c.http == "" && c.tls == "" && c.grpc == "" && c.fasthttp == "" {
		return c, errors.New("nothing to serve: give --http, --tls, --grpc or --fasthttp")
	}
	if c.fasthttp != "" && (c.http != "" || c.tls != "" || c.grpc != "") {
		return c, errors.New("--fasthttp serves alone: it handles SIGTERM itself, as worker.Serve does")
	}
	if c.fasthttpGrace < 0 {
		return c, fmt.Errorf("--fasthttp-grace %v: must not be negative", c.fasthttpGrace)
	}
	if (c.certFile == "") != (c.keyFile == "") {
		return c, errors.New("--tls-cert and --tls-key go together")
	}
	if c.drainTimeout <= 0 {
		return c, fmt.Errorf("--drain-timeout %v: must be positive", c.drainTimeout)
	}
	return c, nil
}

// run serves what c asks for until every server has drained.
func run(c config) error {
	// The HTTP servers drain on SIGTERM by themselves (worker.Serve);
	// the gRPC server has a signal context of its own.
	ctx := context.Background()
	var g errgroup.Group
	if c.http != "" {
		g.Go(func() error { return serveH2C(ctx, c) })
	}
	if c.tls != "" {
		g.Go(func() error { return serveTLS(ctx, c) })
	}
	if c.grpc != "" {
		g.Go(func() error { return serveGRPC(c) })
	}
	if c.fasthttp != "" {
		g.Go(func() error { return serveFastHTTP(c) })
	}
	return g.Wait()
}

func main() {
	c, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err == nil {
		err = run(c)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "compat (pid %d): %v\n", os.Getpid(), err)
		os.Exit(1)
	}
}
