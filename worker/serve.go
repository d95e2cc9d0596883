package worker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/handoff-go/handoff/ipc"
)

// DefaultDrainTimeout bounds a drain when ServeConfig.DrainTimeout is 0.
// It matches the master's default shutdown timeout, after which the
// master kills the worker anyway.
const DefaultDrainTimeout = 30 * time.Second

// ErrDrainTimeout is returned by Serve when connections were still open
// at the end of the drain timeout; Serve closed them.
var ErrDrainTimeout = errors.New("worker: drain timed out; the connections still open were closed")

// listenerCloseWait is how long Serve, told to stop by a signal or its
// context under a master, waits for the master's Disconnect to close the
// listeners before it closes them itself. The master sends SIGTERM after
// the listeners closed, so this wait ends at once in the usual order;
// closing them first would send the connections queued for Accept back
// to a master that may have no other worker for them.
const listenerCloseWait = drainTimeout

// sweepMax bounds the interval at which a drain checks its connections.
const sweepMax = 50 * time.Millisecond

// DefaultIdleGrace is ServeConfig.IdleGrace when it is 0. A keep-alive
// client idle at the drain's start that sends again within it is
// answered, with "Connection: close"; docs/design.md has the figures
// behind it.
const DefaultIdleGrace = 3 * time.Second

// newIdleTimeout is how long a new connection may send nothing before a
// drain closes it as idle, as http.Server.Shutdown does.
const newIdleTimeout = 5 * time.Second

// ServeConfig configures Serve. Its zero value is ready to use.
type ServeConfig struct {
	// DrainTimeout bounds the drain, from its start to the last
	// connection closed. Zero means DefaultDrainTimeout. Past it, Serve
	// closes what is still open and returns ErrDrainTimeout.
	DrainTimeout time.Duration

	// MaxConnAge, if positive, ends keep-alive connections older than
	// this: the next response on such a connection carries
	// "Connection: close" (on HTTP/2, the server sends GOAWAY and ends
	// the connection once its streams are done). Clients then reconnect,
	// and the master places them again: long-lived clients spread over
	// the new workers after a rolling restart.
	MaxConnAge time.Duration

	// OnDrain, if set, is called once, on a goroutine of its own, when
	// the drain begins. It is the hook for hijacked connections, which
	// net/http does not track: a WebSocket server closes each of its
	// connections there with close code 1001 (going away). Serve waits
	// for hijacked connections to close, up to DrainTimeout. Hooks
	// registered with srv.RegisterOnShutdown run too, but later: when
	// Serve calls Shutdown, once no connection waits for its first
	// request.
	OnDrain func()

	// NoSignals stops Serve from draining on SIGTERM and SIGINT; the
	// program then stops it through ctx alone.
	NoSignals bool

	// IdleGrace is how long, once the drain has begun, an HTTP/1
	// keep-alive connection that is idle may still send a request, which
	// is answered with "Connection: close", before the drain closes it.
	// It counts from the drain's start, or from when the connection went
	// idle if later, and the drain never waits longer than DrainTimeout.
	// The drain ends as soon as no connection is left, so it costs
	// nothing when every client is busy or gone. Zero means
	// DefaultIdleGrace; a negative value closes idle connections at once,
	// as http.Server.Shutdown does.
	IdleGrace time.Duration
}

// Serve serves srv on lns with a zero ServeConfig; see ServeConfig.Serve.
func Serve(ctx context.Context, srv *http.Server, lns ...net.Listener) error {
	var sc ServeConfig
	return sc.Serve(ctx, srv, lns...)
}

// Serve serves srv on every listener in lns, as srv.Serve does, and
// drains it. It returns when the drain is over. The drain begins when ctx
// is done, when the process gets SIGTERM or SIGINT (unless NoSignals),
// when every listener has closed (under a master, its Disconnect closes
// them), or when serving one fails.
//
// The drain closes the listeners and lets every client close first:
// each response from then on carries "Connection: close" (on HTTP/2,
// the server sends GOAWAY), so a busy keep-alive client closes after
// its response and reconnects, through the master, to another worker.
// An HTTP/1 connection that is idle is closed only once it has stayed
// idle for IdleGrace, and not while a request waits unread on it; a new
// one once it has had its first request answered, or sent nothing for
// 5s. Only then does Serve call srv.Shutdown, which sends HTTP/2 clients
// GOAWAY and waits for the rest. Calling Shutdown at once would lose
// requests: it closes every connection idle at that instant, and a
// keep-alive client's next request, or a new connection's first, then
// meets a closed socket; neither wrk nor a proxy with a POST retries it.
// What is left is a request sent on an idle connection within the
// round trip of its close after IdleGrace (docs/design.md measures it).
// Hijacked connections are then waited for (see OnDrain and Draining).
//
// Signals: a signal begins the drain and a second one stops the process
// at once. Under a master, signals are absorbed for the whole drain (the
// master's SIGKILL bounds it), and after a drain begun by the master's
// Disconnect, Serve waits up to 500ms for the SIGTERM that follows it, so
// that the program's own code after Serve runs.
//
// Serve sets srv.ConnState, srv.BaseContext, srv.ConnContext and
// srv.Handler, each wrapping the value already set.
// Under a master it counts on the worker's counter page the connections
// with a request in flight, so that the master can balance on requests;
// hijacked connections are not counted.
//
// It returns nil after a full drain, ErrDrainTimeout if connections
// outlived DrainTimeout, or the error that stopped a listener other than
// its closing. Serve it once per srv.
func (sc *ServeConfig) Serve(ctx context.Context, srv *http.Server, lns ...net.Listener) error {
	switch {
	case len(lns) == 0:
		return errors.New("worker: Serve needs at least one listener")
	case sc.DrainTimeout < 0:
		return fmt.Errorf("worker: ServeConfig.DrainTimeout must not be negative, not %s", sc.DrainTimeout)
	case sc.MaxConnAge < 0:
		return fmt.Errorf("worker: ServeConfig.MaxConnAge must not be negative, not %s", sc.MaxConnAge)
	}
	t := newConnTracker(srv, client)
	closeWhenDone(srv, t, sc.MaxConnAge)
	var sigs chan os.Signal
	if !sc.NoSignals {
		sigs = make(chan os.Signal, 1)
		signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
		defer signal.Stop(sigs)
	}

	var wg sync.WaitGroup
	errs := make(chan error, len(lns))
	for _, ln := range lns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
				errs <- fmt.Errorf("worker: serving %s: %w", ln.Addr(), err)
			}
		}()
	}
	served := make(chan struct{}) // every srv.Serve returned
	go func() { wg.Wait(); close(served) }()

	var err error
	signaled, disconnected := false, false
	select {
	case <-served: // the master's Disconnect closed the listeners
		disconnected = true
	case err = <-errs:
	case <-ctx.Done():
		waitListeners(served)
	case <-sigs:
		signaled = true
		waitListeners(served)
	}
	underMaster := IsWorker()
	gotSignal := make(chan struct{}) // closed at the first signal during the drain
	drained := make(chan struct{})   // closed when the drain is over
	absorbed := make(chan struct{})  // closed when the absorbing goroutine returns
	switch {
	case sigs == nil:
		close(absorbed)
	case signaled && !underMaster:
		signal.Stop(sigs) // the next one stops the process
		close(absorbed)
	default:
		go func() {
			defer close(absorbed)
			for {
				select {
				case <-sigs:
					if !signaled {
						signaled = true
						close(gotSignal)
					}
					if !underMaster {
						signal.Stop(sigs) // absorbed one; the next stops the process
						return
					}
				case <-drained:
					return
				}
			}
		}()
	}
	if !t.drain(srv, lns, served, sc.drainTimeout(), sc.idleGrace(), sc.OnDrain) {
		err = errors.Join(err, ErrDrainTimeout)
	}
	if disconnected && underMaster && sigs != nil {
		// The master sends SIGTERM once the listeners are closed: take it
		// here rather than let it kill the process after Serve returns.
		waitAtMost(gotSignal, listenerCloseWait)
	}
	close(drained)
	<-absorbed
	<-served
	select {
	case e := <-errs: // a listener that failed as the drain began
		if err == nil || errors.Is(err, ErrDrainTimeout) {
			err = errors.Join(e, err)
		}
	default:
	}
	return err
}

// waitListeners waits, under a master, for the master's Disconnect to
// close the listeners (served is closed then), up to listenerCloseWait.
func waitListeners(served <-chan struct{}) {
	if !IsWorker() {
		return
	}
	waitAtMost(served, listenerCloseWait)
}

// waitAtMost waits until ch is closed or d has passed.
func waitAtMost(ch <-chan struct{}, d time.Duration) {
	t := time.NewTimer(max(d, 0))
	defer t.Stop()
	select {
	case <-ch:
	case <-t.C:
	}
}

func (sc *ServeConfig) idleGrace() time.Duration {
	switch {
	case sc.IdleGrace > 0:
		return sc.IdleGrace
	case sc.IdleGrace < 0:
		return 0
	}
	return DefaultIdleGrace
}

func (sc *ServeConfig) drainTimeout() time.Duration {
	if sc.DrainTimeout > 0 {
		return sc.DrainTimeout
	}
	return DefaultDrainTimeout
}

// connTracker follows srv's connections through its ConnState hook.
type connTracker struct {
	ctr      *ipc.Counters // the worker's counter page; nil outside a master
	draining chan struct{} // closed when the drain begins; see Draining

	mu       sync.Mutex             // guards the fields below; nothing blocks under it
	state    map[net.Conn]connState // every connection seen new, not yet closed or hijacked
	hijacked map[net.Conn]struct{}  // hijacked, not yet seen closed
	swept    int                    // len(hijacked) after the last sweep of closed ones
}

// connState is a connection's last state, since when, and whether it
// speaks HTTP/2 over TLS (a drain leaves those to Shutdown's GOAWAY).
type connState struct {
	state http.ConnState
	since time.Time
	h2    bool
}

// drainingKey is the context key of a Serve's draining channel.
type drainingKey struct{}

// Draining returns a channel that is closed when the drain of the Serve
// that serves ctx's request begins, or nil for a request Serve does not
// serve. A handler that keeps its connection past its response (a
// WebSocket loop, a stream) selects on it to learn that it must finish,
// whenever it began: a connection hijacked after the drain began sees it
// closed already, which OnDrain, called once, cannot tell it.
func Draining(ctx context.Context) <-chan struct{} {
	ch, _ := ctx.Value(drainingKey{}).(chan struct{})
	return ch
}

func newConnTracker(srv *http.Server, c *controlClient) *connTracker {
	t := &connTracker{
		draining: make(chan struct{}),
		state:    make(map[net.Conn]connState),
		hijacked: make(map[net.Conn]struct{}),
	}
	if c != nil {
		t.ctr = c.ctr
		t.ctr.Serving.Store(1)
	}
	prev := srv.ConnState
	srv.ConnState = func(c net.Conn, s http.ConnState) {
		t.changed(c, s)
		if prev != nil {
			prev(c, s)
		}
	}
	prevBase := srv.BaseContext
	srv.BaseContext = func(ln net.Listener) context.Context {
		ctx := context.Background()
		if prevBase != nil {
			ctx = prevBase(ln)
		}
		return context.WithValue(ctx, drainingKey{}, t.draining)
	}
	return t
}

// changed records that c went to state s. A connection it never saw new
// is not tracked: x/net's h2c reports states for a wrapper of its own and
// never reports it closed.
func (t *connTracker) changed(c net.Conn, s http.ConnState) {
	t.mu.Lock()
	defer t.mu.Unlock()
	old, known := t.state[c]
	if known && old.state == s || !known && s != http.StateNew {
		return
	}
	if t.ctr != nil {
		t.countLocked(old.state, known, s)
	}
	switch s {
	case http.StateNew, http.StateActive, http.StateIdle:
		st := connState{state: s, h2: old.h2}
		if s != http.StateActive {
			st.since = time.Now() // a new or idle connection's age is read by the drain
		}
		if known && old.state == http.StateNew {
			st.h2 = isHTTP2(c) // its handshake is done
		}
		t.state[c] = st
	case http.StateHijacked:
		delete(t.state, c)
		t.hijacked[c] = struct{}{}
		if len(t.hijacked) >= 2*max(t.swept, 64) {
			// Forget the closed ones now and then, so that a worker
			// serving WebSockets for months does not hold them all.
			t.sweepLocked()
		}
	case http.StateClosed:
		delete(t.state, c)
	}
}

// countLocked moves the page's Busy and Idle counts from c's old state
// (if known) to s.
func (t *connTracker) countLocked(old http.ConnState, known bool, s http.ConnState) {
	if known {
		switch old {
		case http.StateActive:
			t.ctr.Busy.Add(^uint32(0))
		case http.StateIdle:
			t.ctr.Idle.Add(^uint32(0))
		}
	}
	switch s {
	case http.StateActive:
		t.ctr.Busy.Add(1)
	case http.StateIdle:
		t.ctr.Idle.Add(1)
	}
}

// sweepLocked forgets the hijacked connections that closed.
func (t *connTracker) sweepLocked() {
	for c := range t.hijacked {
		if connClosed(c) {
			delete(t.hijacked, c)
		}
	}
	t.swept = len(t.hijacked)
}

// sweep closes the connections a drain that began at start need no
// longer wait for: HTTP/1 connections idle for grace, counted from start
// or from when they went idle if later, and new ones that sent nothing
// for newIdleTimeout, except those with a request waiting unread. It
// returns how many connections the drain still waits for: HTTP/1 ones
// that are busy, new or idle (for less than grace), and those it spared.
// HTTP/2 connections are left to Shutdown.
func (t *connTracker) sweep(now, start time.Time, grace time.Duration) int {
	type candidate struct {
		c  net.Conn
		st connState
	}
	t.mu.Lock()
	var done []candidate
	n := 0
	for c, st := range t.state {
		switch {
		case st.h2:
			continue
		case st.state == http.StateIdle && now.Sub(maxTime(st.since, start)) >= grace,
			st.state == http.StateNew && now.Sub(st.since) >= newIdleTimeout:
			done = append(done, candidate{c, st})
		default:
			n++
		}
	}
	t.mu.Unlock()
	// Outside the lock: closing a *tls.Conn may block to send
	// close_notify. Each is looked at again just before, so that one that
	// got a request meanwhile is left to finish it; what is left is the
	// instant between that look and the close, which requestWaiting
	// narrows to bytes still in flight.
	for _, d := range done {
		t.mu.Lock()
		st, ok := t.state[d.c]
		t.mu.Unlock()
		switch {
		case !ok:
		case st != d.st || requestWaiting(d.c):
			n++
		default:
			_ = d.c.Close()
		}
	}
	return n
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// markHTTP2 records that c carries HTTP/2, once its first request says so.
func (t *connTracker) markHTTP2(c net.Conn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if st, ok := t.state[c]; ok && !st.h2 {
		st.h2 = true
		t.state[c] = st
	}
}

// isHTTP2 reports whether c is a TLS connection that negotiated HTTP/2.
func isHTTP2(c net.Conn) bool {
	tc, ok := c.(*tls.Conn)
	return ok && tc.ConnectionState().NegotiatedProtocol == "h2"
}

// open counts the connections still open: tracked by net/http, or
// hijacked.
func (t *connTracker) open() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.sweepLocked()
	return len(t.state) + len(t.hijacked)
}

// closeHijacked closes the hijacked connections still open, outside the
// lock: closing a *tls.Conn may block to send close_notify.
func (t *connTracker) closeHijacked() {
	t.mu.Lock()
	cs := make([]net.Conn, 0, len(t.hijacked))
	for c := range t.hijacked {
		cs = append(cs, c)
	}
	clear(t.hijacked)
	t.mu.Unlock()
	for _, c := range cs {
		_ = c.Close()
	}
}

// drain drains srv (see ServeConfig.Serve), whose Serve calls close
// served when they return, and reports whether every connection closed
// within timeout.
func (t *connTracker) drain(srv *http.Server, lns []net.Listener, served <-chan struct{}, timeout, grace time.Duration, onDrain func()) bool {
	start := time.Now()
	deadline := start.Add(timeout)
	close(t.draining) // from here every response says Connection: close
	hookDone := make(chan struct{})
	if onDrain != nil {
		go func() {
			defer close(hookDone)
			onDrain()
		}()
	} else {
		close(hookDone)
	}
	for _, ln := range lns {
		_ = ln.Close() // closing one twice is harmless
	}
	// Let srv.Serve see its listeners closed and forget them: Shutdown
	// would close them again, and report that error.
	waitAtMost(served, time.Until(deadline))
	// Let the clients close first (see ServeConfig.Serve), then Shutdown.
	wait := time.Millisecond
	for now := time.Now(); now.Before(deadline) && t.sweep(now, start, grace) > 0; now = time.Now() {
		time.Sleep(min(wait, time.Until(deadline)))
		wait = min(2*wait, sweepMax)
	}
	srv.SetKeepAlivesEnabled(false)
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	_ = srv.Shutdown(ctx) // its only error that matters is ctx's
	// net/http forgets a hijacked connection before it reports the
	// hijack, so Shutdown can return before the tracker sees it: wait
	// until every connection it saw new is closed or hijacked, then for
	// the hijacked ones to close.
	wait = time.Millisecond
	for ctx.Err() == nil && t.open() > 0 {
		time.Sleep(min(wait, time.Until(deadline)))
		wait = min(2*wait, sweepMax)
	}
	ok := ctx.Err() == nil
	if !ok {
		_ = srv.Close()
		t.closeHijacked()
	}
	waitAtMost(hookDone, time.Until(deadline)) // OnDrain, as long as the drain may last
	return ok
}

// connClosed reports whether c, a connection net/http handed to a
// Hijacker, has been closed, as far as it can tell: through its fd (a
// closed one lends none), under any wrapper that has NetConn, as a
// *tls.Conn does. A connection it cannot see into counts as open.
func connClosed(c net.Conn) bool {
	for {
		switch x := c.(type) {
		case syscall.Conn:
			rc, err := x.SyscallConn()
			if err != nil {
				return true
			}
			return rc.Control(func(uintptr) {}) != nil
		case interface{ NetConn() net.Conn }:
			c = x.NetConn()
		default:
			return false
		}
	}
}

// connInfoKey is the context key of a connection's connInfo.
type connInfoKey struct{}

// connInfo is what a request's context knows of its connection.
type connInfo struct {
	c     net.Conn  // as ConnState sees it
	start time.Time // when it was accepted
}

// closeWhenDone makes srv end keep-alive connections once the drain of t
// has begun and, if age is positive, those older than age: their next
// response carries "Connection: close", after which net/http closes an
// HTTP/1 connection, and HTTP/2 sends GOAWAY (and strips the header). It
// also tells t which connections speak HTTP/2 (h2c included, which
// ConnState cannot tell from HTTP/1), so that the drain leaves them to
// Shutdown's GOAWAY.
func closeWhenDone(srv *http.Server, t *connTracker, age time.Duration) {
	prevCtx := srv.ConnContext
	srv.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		if prevCtx != nil {
			ctx = prevCtx(ctx, c)
		}
		return context.WithValue(ctx, connInfoKey{}, &connInfo{c: c, start: time.Now()})
	}
	h := srv.Handler
	if h == nil {
		h = http.DefaultServeMux
	}
	srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ci, _ := r.Context().Value(connInfoKey{}).(*connInfo)
		if ci != nil && r.ProtoMajor == 2 {
			t.markHTTP2(ci.c)
		}
		select {
		case <-t.draining:
			w.Header().Set("Connection", "close")
		default:
			if ci != nil && age > 0 && time.Since(ci.start) > age {
				w.Header().Set("Connection", "close")
			}
		}
		h.ServeHTTP(w, r)
	})
}
