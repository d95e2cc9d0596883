package main

import (
	"context"
	"errors"
	"net"
	"os"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/handoff-go/handoff/worker"
	"github.com/valyala/fasthttp"
)

// How a server other than net/http drains without losing keep-alive
// requests, shown with fasthttp, which serves a worker.Listen listener
// unchanged.
//
// fasthttp's Shutdown closes every idle keep-alive connection at once
// (closeIdleConns, then every 100ms), so a client's next request meets a
// closed socket, as with http.Server.Shutdown; its CloseOnShutdown adds
// "Connection: close" only to responses written after Shutdown began,
// and by then the idle connections are gone. So serveFastHTTP does what
// worker.Serve does for net/http:
//
//  1. The drain begins when the listener closes (the master's
//     Disconnect: fasthttp's Serve returns) or at SIGTERM (it closes the
//     listener itself). Keep-alive connections are still served.
//  2. From then on every response says Connection: close
//     (ctx.SetConnectionClose), so a busy client closes after it and
//     reconnects, through the master, to another worker.
//  3. After a grace, or once no connection is open, it calls Shutdown,
//     which closes what is still idle and waits for the rest.
//
// A grace of 0 is a plain Shutdown, the control the tests measure
// against.

// fasthttpBody is what the fasthttp server answers.
const fasthttpBody = "hello from fasthttp\n"

// serveFastHTTP serves fasthttp on c.fasthttp until it has drained.
func serveFastHTTP(c config) error {
	ln, err := worker.Listen("tcp", c.fasthttp)
	if err != nil {
		return err
	}
	var draining atomic.Bool
	pid := strconv.Itoa(os.Getpid())
	srv := &fasthttp.Server{
		Handler: func(ctx *fasthttp.RequestCtx) {
			if draining.Load() {
				ctx.SetConnectionClose()
			}
			ctx.Response.Header.Set(headerPID, pid)
			ctx.SetBodyString(fasthttpBody)
		},
		Name: "compat",
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err = <-served: // the master's Disconnect closed the listener
	case <-sigs:
		_ = ln.Close()
		err = <-served
	}
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return err
	}
	draining.Store(true)
	deadline := time.Now().Add(c.fasthttpGrace)
	for srv.GetOpenConnectionsCount() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.drainTimeout)
	defer cancel()
	return srv.ShutdownWithContext(ctx)
}
