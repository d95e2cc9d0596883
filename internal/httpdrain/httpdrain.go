package httpdrain

import (
	"net"
	"net/http"
	"sync/atomic"
	"time"
)

// Drain drains an http.Server without failing a request.
//
// http.Server.Shutdown is not enough for a process that is handed new
// connections up to the moment it drains: once Shutdown has begun, a
// connection that was accepted but whose request had not yet been read
// is closed when the request arrives, unanswered (net/http's conn.serve
// checks shuttingDown after readRequest). Its client, which used a fresh
// connection, sees EOF and does not retry. So instead: stop accepting,
// turn keep-alives off (which closes the idle connections, whose clients
// do retry), let every other connection finish its request and close, and
// only then Close the server.
type Drain struct {
	srv  *http.Server
	open atomic.Int64 // connections not yet closed or hijacked
}

// New tracks srv's connections through its ConnState hook; it
// must be called before srv serves.
func New(srv *http.Server) *Drain {
	d := &Drain{srv: srv}
	prev := srv.ConnState
	srv.ConnState = func(c net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			d.open.Add(1)
		case http.StateClosed, http.StateHijacked:
			d.open.Add(-1)
		}
		if prev != nil {
			prev(c, s)
		}
	}
	return d
}

// Close closes lns (closing one twice is harmless), waits up to timeout
// for the connections in progress to finish, and closes the server. It
// reports whether every connection finished in time.
func (d *Drain) Close(lns []net.Listener, timeout time.Duration) bool {
	for _, ln := range lns {
		_ = ln.Close()
	}
	d.srv.SetKeepAlivesEnabled(false)
	deadline := time.Now().Add(timeout)
	wait := time.Millisecond
	for d.open.Load() > 0 && time.Now().Before(deadline) {
		time.Sleep(wait)
		wait = min(2*wait, 100*time.Millisecond)
		// Again and again, as Shutdown does: this also closes connections
		// that never sent a request once they are 5s old (an HTTP client
		// may dial one that it then leaves idle), which would otherwise
		// hold the drain until the timeout.
		d.srv.SetKeepAlivesEnabled(false)
	}
	done := d.open.Load() <= 0
	_ = d.srv.Close()
	return done
}
