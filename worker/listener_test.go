//go:build linux

package worker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/fdtest"
	"github.com/handoff-go/handoff/ipc"
	"github.com/handoff-go/handoff/scm"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
)

// masterListener opens the real listener that stands in for the master's,
// skipping the test where the network is not available. "tcp wildcard"
// listens on 0.0.0.0.
func masterListener(t *testing.T, network string) net.Listener {
	t.Helper()
	var ln net.Listener
	var err error
	switch network {
	case "tcp", "tcp4":
		ln, err = net.Listen(network, "127.0.0.1:0")
	case "tcp wildcard":
		ln, err = net.Listen("tcp4", "0.0.0.0:0")
	case "tcp6":
		ln, err = net.Listen(network, "[::1]:0")
		if err != nil {
			t.Skipf("no IPv6 loopback: %v", err)
		}
	case "unix":
		ln, err = net.Listen(network, filepath.Join(t.TempDir(), "sock"))
	default:
		t.Fatalf("no master listener for %q", network)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	return ln
}

// cloexec reports whether fd is close-on-exec.
func cloexec(t *testing.T, fd int) bool {
	t.Helper()
	flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	if err != nil {
		t.Fatalf("fcntl(%d, F_GETFD): %v", fd, err)
	}
	return flags&unix.FD_CLOEXEC != 0
}

func TestAcceptReturnsWorkingConns(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		listen   string // masterListener's network
		network  string // the worker's network
		wildcard bool   // the listener's address is 0.0.0.0: LocalAddr comes from the kernel
	}{
		{name: "tcp", listen: "tcp", network: "tcp"},
		{name: "tcp wildcard", listen: "tcp wildcard", network: "tcp", wildcard: true},
		{name: "tcp6", listen: "tcp6", network: "tcp6"},
		{name: "unix", listen: "unix", network: "unix"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ln := masterListener(t, tt.listen)
			fm := startMaster(t)
			l := fm.listen(t, tt.network, ln.Addr().String())
			if l.Addr().Network() != ln.Addr().Network() || l.Addr().String() != ln.Addr().String() {
				t.Errorf("Addr %s %s, want the master's %s %s", l.Addr().Network(), l.Addr(), ln.Addr().Network(), ln.Addr())
			}
			if got := l.laddr == nil; got != tt.wildcard {
				t.Errorf("listener's laddr is %v; want it nil only for a wildcard address", l.laddr)
			}
			const n = 3
			clients := fm.handOffNew(t, ln, l.id, n)
			// Nothing is read off the socket before Accept.
			if r := fm.ctr.Received.Load(); r != 0 {
				t.Errorf("%d conns received before any Accept", r)
			}
			conns := acceptN(t, l, n)
			for i, c := range conns {
				wc, ok := c.(*Conn)
				if !ok {
					t.Fatalf("Accept returned %T, want *Conn", c)
				}
				rc, err := wc.SyscallConn()
				if err != nil {
					t.Fatal(err)
				}
				if err := rc.Control(func(fd uintptr) {
					if !cloexec(t, int(fd)) {
						t.Errorf("conn %d: fd %d is not close-on-exec", i, fd)
					}
				}); err != nil {
					t.Fatal(err)
				}
				// http.Server reaches these through interfaces.
				if _, ok := c.(io.ReaderFrom); !ok {
					t.Error("conn is not an io.ReaderFrom: no sendfile")
				}
				if _, ok := c.(interface{ CloseWrite() error }); !ok {
					t.Error("conn has no CloseWrite")
				}
				if got, want := c.RemoteAddr().String(), clients[i].LocalAddr().String(); got != want {
					t.Errorf("conn %d: RemoteAddr %q, want the client's address %q", i, got, want)
				}
				if got, want := c.LocalAddr().String(), clients[i].RemoteAddr().String(); got != want {
					t.Errorf("conn %d: LocalAddr %q, want %q", i, got, want)
				}
				if got, want := c.RemoteAddr().Network(), clients[i].LocalAddr().Network(); got != want {
					t.Errorf("conn %d: RemoteAddr network %q, want %q", i, got, want)
				}
				// Each conn is the one its client dialed, both ways.
				msg := fmt.Sprintf("hello %d", i)
				if _, err := clients[i].Write([]byte(msg)); err != nil {
					t.Fatal(err)
				}
				buf := make([]byte, len(msg))
				_ = c.SetReadDeadline(time.Now().Add(waitTimeout))
				if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
					t.Fatalf("conn %d read %q, %v; want %q", i, buf, err, msg)
				}
				if _, err := c.Write(buf); err != nil {
					t.Fatal(err)
				}
				_ = clients[i].SetReadDeadline(time.Now().Add(waitTimeout))
				if _, err := io.ReadFull(clients[i], buf); err != nil || string(buf) != msg {
					t.Fatalf("client %d read %q, %v; want %q", i, buf, err, msg)
				}
			}
			fm.waitCounters(t, n, 0)
			for _, c := range conns {
				_ = c.Close()
			}
			fm.waitCounters(t, n, n)
			expectEOF(t, clients...)
		})
	}
}

func TestEveryConnIsReceived(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		frames []int // conns per frame, sent back to back
	}{
		{name: "one conn", frames: []int{1}},
		{name: "a burst of frames", frames: []int{1, 2, 3, 5, 8, 13}},
		{name: "a full frame", frames: []int{ipc.MaxConns}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ln, fm, l := listening(t, "tcp")
			var clients []net.Conn
			for _, n := range tt.frames {
				clients = append(clients, fm.handOffNew(t, ln, l.id, n)...)
			}
			// Accept hands them out in the order the master sent them.
			conns := acceptN(t, l, len(clients))
			for i, c := range conns {
				if got, want := c.RemoteAddr().String(), clients[i].LocalAddr().String(); got != want {
					t.Fatalf("conn %d is from %s, want %s", i, got, want)
				}
			}
			total := uint64(len(clients))
			fm.waitCounters(t, total, 0)
			if n := fm.unread(t, l.id); n != 0 {
				t.Errorf("%d bytes left unread in the conns socket", n)
			}
			p, err := fm.sock(l.id)
			if err != nil {
				t.Fatal(err)
			}
			if n, err := p.send.Unsent(); err != nil || n != 0 {
				t.Errorf("master's end: Unsent %d, %v; want 0", n, err)
			}
			if fds := fm.reclaim(t, l.id); len(fds) != 0 {
				fdtest.Close(fds)
				t.Errorf("%d conns reclaimed, want none", len(fds))
			}
		})
	}
}

func TestConcurrentAccept(t *testing.T) {
	t.Parallel()
	ln, fm, l := listening(t, "tcp")
	const acceptors, n = 8, 2 * ipc.MaxConns
	var mu sync.Mutex
	var accepted []string // the clients' addresses, one per Accept
	var g errgroup.Group
	for range acceptors {
		g.Go(func() error {
			for {
				c, err := l.Accept()
				if isClosed(err) {
					return nil
				}
				if err != nil {
					return err
				}
				if _, ok := c.(*Conn); !ok {
					_ = c.Close()
					return fmt.Errorf("Accept returned %T", c)
				}
				mu.Lock()
				accepted = append(accepted, c.RemoteAddr().String())
				mu.Unlock()
				if err := c.Close(); err != nil {
					return err
				}
			}
		})
	}
	var want []string
	for _, k := range []int{ipc.MaxConns, 1, ipc.MaxConns - 1} {
		clients, fds := connectN(t, ln, k)
		for _, c := range clients {
			want = append(want, c.LocalAddr().String())
		}
		if err := fm.handoff(l.id, fds); err != nil {
			t.Fatal(err)
		}
	}
	fm.waitCounters(t, n, n)
	_ = l.Close()
	if err := g.Wait(); err != nil {
		t.Error(err)
	}
	slices.Sort(accepted)
	slices.Sort(want)
	if !slices.Equal(accepted, want) {
		t.Errorf("%d conns accepted, want each of %d once", len(accepted), n)
	}
	if r := fm.takeReturn(t, l.id); len(r.fds) != 0 {
		fdtest.Close(r.fds)
		t.Errorf("%d conns returned, want all accepted", len(r.fds))
	}
}

func TestCloseIsCountedOnce(t *testing.T) {
	t.Parallel()
	ln, fm, l := listening(t, "tcp")
	const n = 20
	clients := fm.handOffNew(t, ln, l.id, n)
	conns := acceptN(t, l, n)
	// Two Closes race on each conn: one closes it, the other gets
	// net.ErrClosed, and the page counts one.
	for i, c := range conns {
		var g errgroup.Group
		errs := make([]error, 2)
		for j := range errs {
			g.Go(func() error { errs[j] = c.Close(); return nil })
		}
		_ = g.Wait()
		if (errs[0] == nil) == (errs[1] == nil) {
			t.Errorf("conn %d: the two Closes returned %v and %v; want one nil", i, errs[0], errs[1])
		}
		for _, err := range errs {
			if err != nil && !isClosed(err) {
				t.Errorf("conn %d: the losing Close: %v, want net.ErrClosed", i, err)
			}
		}
		if err := c.Close(); !isClosed(err) {
			t.Errorf("conn %d: a third Close: %v, want net.ErrClosed", i, err)
		}
	}
	fm.waitCounters(t, n, n)
	time.Sleep(10 * time.Millisecond) // room for a wrong second count
	if c := fm.ctr.Closed.Load(); c != n {
		t.Errorf("%d closes counted, want %d", c, n)
	}
	// The worker's conn held the last copy of each fd: clients see EOF.
	expectEOF(t, clients...)
}

func TestListenerClose(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		read     int   // conns in the frame that Accept reads
		accepted int   // of which accepted before Close
		unread   []int // conns per frame handed off after it, never read
	}{
		{name: "nothing handed off"},
		{name: "all accepted", read: 2, accepted: 2},
		{name: "queued conns go back", read: 5, accepted: 2},
		{name: "a full frame goes back", read: ipc.MaxConns, accepted: 1},
		{name: "unread frames stay", read: 2, accepted: 1, unread: []int{3, 4}},
		{name: "a full unread frame stays", unread: []int{ipc.MaxConns}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ln, fm, l := listening(t, "tcp")
			var clients []net.Conn
			if tt.read > 0 {
				clients = append(clients, fm.handOffNew(t, ln, l.id, tt.read)...)
				acceptN(t, l, tt.accepted)
			}
			for _, k := range tt.unread {
				clients = append(clients, fm.handOffNew(t, ln, l.id, k)...)
			}
			// With nothing left queued, Accept blocks until Close.
			blocked := make(chan error, 1)
			if tt.accepted == tt.read && len(tt.unread) == 0 {
				go func() {
					c, err := l.Accept()
					if c != nil {
						_ = c.Close()
					}
					blocked <- err
				}()
				time.Sleep(5 * time.Millisecond) // let Accept block
			}
			for i := range 2 {
				if err := l.Close(); err != nil {
					t.Errorf("Close %d: %v", i+1, err)
				}
			}
			if tt.accepted == tt.read && len(tt.unread) == 0 {
				if err := recv(t, blocked, "the blocked Accept"); !isClosed(err) {
					t.Errorf("blocked Accept after Close: %v, want a *net.OpError matching net.ErrClosed", err)
				}
			}
			for range 2 {
				if c, err := l.Accept(); !isClosed(err) {
					t.Errorf("Accept after Close: %v, %v; want a *net.OpError matching net.ErrClosed", c, err)
				}
			}
			// One Return frame, even an empty one, carries what was read
			// and not accepted, in order.
			r := fm.takeReturn(t, l.id)
			t.Cleanup(func() { fdtest.Close(r.fds) })
			if want := tt.read - tt.accepted; len(r.fds) != want {
				t.Fatalf("Return frame with %d fds, want %d", len(r.fds), want)
			}
			fm.barrier(t)
			if n := fm.returnsFor(l.id); n != 0 {
				t.Errorf("%d more Return frames after a second Close", n)
			}
			// What was never read stays in the socket for the master.
			reclaimed := fm.reclaim(t, l.id)
			t.Cleanup(func() { fdtest.Close(reclaimed) })
			if want := sum(tt.unread); len(reclaimed) != want {
				t.Fatalf("%d conns reclaimed, want %d", len(reclaimed), want)
			}
			fm.waitCounters(t, uint64(tt.read), 0)
			// The fds the master got back are the unaccepted clients'
			// conns: it serves them, and when it closes its copies, the
			// last ones, the clients read EOF.
			back := append(slices.Clone(r.fds), reclaimed...)
			for i, fd := range back {
				echoThrough(t, fd, clients[tt.accepted+i])
			}
			fdtest.Close(r.fds)
			fdtest.Close(reclaimed)
			r.fds, reclaimed = nil, nil
			expectEOF(t, clients[tt.accepted:]...)
		})
	}
}

func sum(ns []int) int {
	s := 0
	for _, n := range ns {
		s += n
	}
	return s
}

// echoThrough writes through the master's copy of a returned fd and checks
// that client reads it.
func echoThrough(t *testing.T, fd int, client net.Conn) {
	t.Helper()
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(dup), "returned")
	nc, err := net.FileConn(f)
	_ = f.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	msg := []byte("back at the master")
	if _, err := nc.Write(msg); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(msg))
	_ = client.SetReadDeadline(time.Now().Add(waitTimeout))
	if _, err := io.ReadFull(client, buf); err != nil || !bytes.Equal(buf, msg) {
		t.Errorf("client read %q, %v through a returned fd; want %q", buf, err, msg)
	}
}

func TestStdConns(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		network string
		want    func(net.Conn) bool
	}{
		{name: "tcp", network: "tcp", want: func(c net.Conn) bool { _, ok := c.(*net.TCPConn); return ok }},
		{name: "unix", network: "unix", want: func(c net.Conn) bool { _, ok := c.(*net.UnixConn); return ok }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ln := masterListener(t, tt.network)
			fm := startMaster(t)
			l := fm.listenWith(t, tt.network, ln.Addr().String(), ListenConfig{StdConns: true})
			clients := fm.handOffNew(t, ln, l.id, 2)
			for i, c := range acceptN(t, l, 2) {
				if !tt.want(c) {
					t.Fatalf("Accept returned %T with StdConns", c)
				}
				if got, want := c.RemoteAddr().String(), clients[i].LocalAddr().String(); got != want {
					t.Errorf("conn %d: RemoteAddr %q, want %q", i, got, want)
				}
				if _, err := c.Write([]byte("x")); err != nil {
					t.Fatal(err)
				}
				_ = c.Close()
			}
			// net.FileConn's dup is the conn's only fd: the received one
			// was closed, so the clients see EOF once the conns close.
			expectEOFAfter(t, "x", clients...)
			// The page cannot see such a conn close: it counts it closed
			// once Accept returned it, so that the master's cap does not
			// hold it for good.
			fm.waitCounters(t, 2, 2)
		})
	}
}

// expectEOFAfter checks that each client reads data and then end of
// stream.
func expectEOFAfter(t *testing.T, data string, clients ...net.Conn) {
	t.Helper()
	for i, c := range clients {
		_ = c.SetReadDeadline(time.Now().Add(waitTimeout))
		b, err := io.ReadAll(c)
		if err != nil || string(b) != data {
			t.Errorf("client %d: read %q, %v; want %q then EOF", i, b, err, data)
		}
	}
}

func TestStdConnsAcceptOfANonSocketFD(t *testing.T) {
	t.Parallel()
	ln := masterListener(t, "tcp")
	fm := startMaster(t)
	l := fm.listenWith(t, "tcp", ln.Addr().String(), ListenConfig{StdConns: true})
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[1])
	_, fds := connectN(t, ln, 1)
	if err := fm.handoff(l.id, []int{p[0], fds[0]}); err != nil {
		t.Fatal(err)
	}
	c, err := l.Accept()
	var op *net.OpError
	if err == nil || errors.Is(err, net.ErrClosed) || !errors.As(err, &op) || op.Op != "accept" {
		t.Fatalf("Accept of a pipe: %v, %v; want an accept *net.OpError", c, err)
	}
	fm.waitCounters(t, 2, 1) // the master's count stays true
	if !pipeReadsEOF(t, p[1]) {
		t.Error("the worker kept its copy of the pipe")
	}
	conns := acceptN(t, l, 1)
	if _, ok := conns[0].(*net.TCPConn); !ok {
		t.Errorf("the next Accept returned %T, want *net.TCPConn", conns[0])
	}
}

// pipeReadsEOF reports whether writing to w, a pipe's write end, fails
// with EPIPE: every copy of the read end is closed.
func pipeReadsEOF(t *testing.T, w int) bool {
	t.Helper()
	_, err := unix.Write(w, []byte{0})
	return errors.Is(err, unix.EPIPE)
}

func TestHTTPServeAndShutdown(t *testing.T) {
	t.Parallel()
	ln, fm, l := listening(t, "tcp")

	// The master's accept loop hands every connection to l.
	acceptDone := make(chan error, 1)
	go func() {
		for {
			fd, err := serverFD(ln)
			if errors.Is(err, net.ErrClosed) {
				acceptDone <- nil
				return
			}
			if err == nil {
				err = fm.handoff(l.id, []int{fd})
			}
			if err != nil {
				acceptDone <- err
				return
			}
		}
	}()

	slowStarted, release := make(chan struct{}, 1), make(chan struct{})
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			slowStarted <- struct{}{}
			<-release
		}
		_, _ = io.WriteString(w, r.RemoteAddr)
	})}
	serveDone := make(chan error, 1)
	go func() { serveDone <- srv.Serve(l) }()

	var mu sync.Mutex
	var lastLocal string // the client address of the last dial
	tr := &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err == nil {
			mu.Lock()
			lastLocal = c.LocalAddr().String()
			mu.Unlock()
		}
		return c, err
	}}
	t.Cleanup(tr.CloseIdleConnections)
	client := &http.Client{Transport: tr, Timeout: waitTimeout}
	get := func(path string) (string, error) {
		resp, err := client.Get("http://" + ln.Addr().String() + path)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err == nil && resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("status %s", resp.Status)
		}
		return string(body), err
	}

	const n = 20
	for i := range n {
		body, err := get("/")
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		mu.Lock()
		want := lastLocal
		mu.Unlock()
		if body != want {
			t.Errorf("request %d: the handler saw RemoteAddr %q, want the client's %q", i, body, want)
		}
	}

	// Shutdown closes the listener at once and waits for the request in
	// flight.
	type result struct {
		body string
		err  error
	}
	slowDone := make(chan result, 1)
	go func() {
		body, err := get("/slow")
		slowDone <- result{body, err}
	}()
	recv(t, slowStarted, "the slow request")
	shutdownDone := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		shutdownDone <- srv.Shutdown(ctx)
	}()
	if err := recv(t, serveDone, "Serve to return"); !errors.Is(err, http.ErrServerClosed) {
		t.Errorf("Serve returned %v, want http.ErrServerClosed", err)
	}
	if r := fm.takeReturn(t, l.id); len(r.fds) != 0 {
		fdtest.Close(r.fds)
		t.Errorf("Shutdown returned %d conns to the master, want none", len(r.fds))
	}
	select {
	case err := <-shutdownDone:
		t.Fatalf("Shutdown returned %v with a request in flight", err)
	case <-time.After(20 * time.Millisecond):
	}
	close(release)
	if err := recv(t, shutdownDone, "Shutdown"); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if r := recv(t, slowDone, "the slow response"); r.err != nil {
		t.Errorf("the request in flight during Shutdown: %v", r.err)
	}

	_ = ln.Close()
	if err := recv(t, acceptDone, "the master's accept loop"); err != nil {
		t.Fatal(err)
	}
	// Every conn was received once and closed once.
	fm.waitCounters(t, n+1, n+1)
}

// TestNoFDLeak counts this process's fds, both sides of the handoff,
// before and after thousands of handoffs. It is not parallel.
func TestNoFDLeak(t *testing.T) {
	ln, fm, l := listening(t, "tcp")
	ls := fm.listenWith(t, "tcp", ln.Addr().String(), ListenConfig{StdConns: true})
	var received, closed uint64
	round := func(l *Listener, n int) {
		t.Helper()
		clients := fm.handOffNew(t, ln, l.id, n)
		for range n {
			c, err := l.Accept()
			if err != nil {
				t.Fatal(err)
			}
			_ = c.Close()
		}
		for _, c := range clients {
			_ = c.Close()
		}
		// A std conn leaves the master's count when Accept returns it,
		// a *Conn when it closes: either way every one is counted closed.
		received += uint64(n)
		closed += uint64(n)
		fm.waitCounters(t, received, closed)
	}
	round(l, 10) // warm up: the poller, timers
	round(ls, 10)
	before := fdtest.Count(t)
	sizes := []int{1, 7, 64, ipc.MaxConns}
	const total = 3000
	for i, done := 0, 0; done < total; i++ {
		n := min(sizes[i%len(sizes)], total-done)
		round(l, n)
		done += n
	}
	round(ls, 100)
	// Conns read but not accepted by a closed listener go back, and the
	// worker closes its copies; unread ones stay with the master.
	l2 := fm.listen(t, "tcp", ln.Addr().String())
	clients := fm.handOffNew(t, ln, l2.id, 100)
	unreadClients := fm.handOffNew(t, ln, l2.id, 50)
	acceptN(t, l2, 1)[0].Close()
	_ = l2.Close()
	fdtest.Close(fm.takeReturn(t, l2.id).fds)
	fdtest.Close(fm.reclaim(t, l2.id))
	for _, c := range append(clients, unreadClients...) {
		_ = c.Close()
	}
	// l2's conns socket, which the master keeps, is the only new fd pair.
	if after := fdtest.Count(t); after != before+2 {
		t.Errorf("%d fds open after %d handoffs, %d before (and 2 for a new conns socket)", after, total+250, before)
	}
}

func TestBadConnsFramesAreSkipped(t *testing.T) {
	t.Parallel()
	ln := masterListener(t, "tcp")
	fm := startMaster(t)
	// The master answers with a conns socket whose sending end the test
	// writes raw frames on.
	fm.mu.Lock()
	fm.onListen = func(string, string) listenAnswer { return listenAnswer{hold: true} }
	fm.mu.Unlock()
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer fdtest.Close(sp[:])
	type listenResult struct {
		ln  net.Listener
		err error
	}
	done := make(chan listenResult, 1)
	go func() {
		ln, err := fm.c.listen("tcp", ln.Addr().String(), false)
		done <- listenResult{ln, err}
	}()
	fm.wait(t, "the Listen frame", func() bool { return len(fm.listens) == 1 })
	if err := fm.ctl.WriteFrame(ipc.AppendListenReply(nil, 1, 9, 0, ln.Addr().String(), "", ""), sp[1:]); err != nil {
		t.Fatal(err)
	}
	r := recv(t, done, "listen")
	if r.err != nil {
		t.Fatal(r.err)
	}
	l := r.ln.(*Listener)
	defer l.Close()
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[1])
	clients, fds := connectN(t, ln, 1)
	defer fdtest.Close(fds)
	bad := []struct {
		name  string
		frame []byte
		fds   []int
	}{
		{name: "other version", frame: []byte{ipc.Version + 1, byte(ipc.KindConns), 0, 0}, fds: p[:1]},
		{name: "not a Conns frame", frame: ipc.AppendReturn(nil, 9, 1), fds: p[:1]},
		{name: "Conns with too few fds", frame: ipc.AppendConns(nil, 9, make([]ipc.Handoff, 2)), fds: p[:1]},
		{name: "Conns with too many fds", frame: ipc.AppendConns(nil, 9, nil), fds: p[:1]},
		{name: "junk", frame: []byte{1, 2, 3}},
	}
	for _, b := range bad {
		var oob []byte
		if len(b.fds) > 0 {
			oob = unix.UnixRights(b.fds...)
		}
		if err := unix.Sendmsg(sp[0], b.frame, oob, nil, 0); err != nil {
			t.Fatalf("%s: %v", b.name, err)
		}
	}
	fdtest.Close(p[:1])
	good := handoffOf(fds[0])
	if err := unix.Sendmsg(sp[0], ipc.AppendConns(nil, 9, []ipc.Handoff{good}), unix.UnixRights(fds[0]), nil, 0); err != nil {
		t.Fatal(err)
	}
	// Accept skips the bad frames, closing their fds, and takes the good.
	c := acceptN(t, l, 1)[0]
	if got, want := c.RemoteAddr().String(), clients[0].LocalAddr().String(); got != want {
		t.Errorf("accepted the conn of %s, want %s", got, want)
	}
	if !pipeReadsEOF(t, p[1]) {
		t.Error("the worker kept a copy of a bad frame's fd")
	}
	if n := fm.ctr.Received.Load(); n != 1 {
		t.Errorf("%d conns received, want 1", n)
	}
}

// envNoRoomChild makes the test binary run TestNoRoom's scenario itself:
// it lowers its fd limit, which only a child process may do.
const envNoRoomChild = "HANDOFF_WORKER_TEST_NOROOM_CHILD"

// TestNoRoom re-executes the test binary to run noRoomScenario in a child
// whose fd limit is low enough to fill.
func TestNoRoom(t *testing.T) {
	if os.Getenv(envNoRoomChild) == "1" {
		noRoomScenario(t)
		return
	}
	if os.Geteuid() != 0 {
		// As TestAcceptBacksOffOnEMFILE in balancer: for another user,
		// sendmsg's cap on fds in flight is the child's lowered
		// RLIMIT_NOFILE counted over every process of the user, which the
		// other test binaries fill, and the fake master's listen reply
		// (it carries an fd) then never arrives (hung 279s non-root).
		t.Skip("needs root: as another user, the limit of 64 fds it sets caps the fds in flight of every process of the user")
	}
	t.Parallel()
	cmd := exec.Command(os.Args[0], "-test.run=^TestNoRoom$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), envNoRoomChild+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	if !bytes.Contains(out, []byte("--- PASS: TestNoRoom")) {
		t.Fatalf("the child did not run the scenario:\n%s", out)
	}
}

// noRoomScenario fills the fd table so that a listener's reader has no
// room for a whole frame: it must leave the frame in the socket, say so on
// the counter page, and read it once a conn closes.
func noRoomScenario(t *testing.T) {
	const limit = 64
	lim := unix.Rlimit{Cur: limit, Max: limit}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	ln := masterListener(t, "tcp")
	fm := startMaster(t)
	frameFDs := ipc.FrameFDs(limit)
	if got := fm.ctr.FrameFDs.Load(); got != uint32(frameFDs) {
		t.Fatalf("counter page FrameFDs %d, want %d for a limit of %d", got, frameFDs, limit)
	}
	l := fm.listen(t, "tcp", ln.Addr().String())
	clients, fds := connectN(t, ln, 2)
	if err := fm.handoff(l.id, fds[:1]); err != nil {
		t.Fatal(err)
	}
	first := acceptN(t, l, 1)[0]
	if err := fm.handoff(l.id, fds[1:]); err != nil {
		t.Fatal(err)
	}
	// Leave frameFDs fds free: one short of room for a frame.
	fill := fillFDs(t, frameFDs)
	defer fdtest.Close(fill)

	type result struct {
		c   net.Conn
		err error
	}
	accepted := make(chan result, 1)
	go func() {
		c, err := l.Accept()
		accepted <- result{c, err}
	}()
	deadline := time.Now().Add(waitTimeout)
	for fm.ctr.NoRoom.Load() != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the reader did not say it has no room")
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(3 * roomPoll) // it polls, and still finds no room
	select {
	case r := <-accepted:
		t.Fatalf("Accept returned %v, %v without fd room", r.c, r.err)
	default:
	}
	if n := fm.unread(t, l.id); n == 0 {
		t.Error("the frame is not in the socket any more")
	}
	if r := fm.ctr.Received.Load(); r != 1 {
		t.Errorf("%d conns received without room, want only the first", r)
	}
	// A conn closes: one fd more is free, and the frame fits.
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	r := recv(t, accepted, "Accept once there is room")
	if r.err != nil {
		t.Fatal(r.err)
	}
	defer r.c.Close()
	if got, want := r.c.RemoteAddr().String(), clients[1].LocalAddr().String(); got != want {
		t.Errorf("accepted the conn of %s, want %s", got, want)
	}
	fm.waitCounters(t, 2, 1)
	if fm.ctr.NoRoom.Load() != 0 {
		t.Error("NoRoom still set after the read")
	}
}

// fillFDs opens copies of /dev/null until only free fds are left free,
// and returns them for the caller to close.
func fillFDs(t *testing.T, free int) []int {
	t.Helper()
	var fds []int
	for {
		n, err := scm.FreeFDs()
		if err != nil {
			fdtest.Close(fds)
			t.Fatal(err)
		}
		if n <= free {
			if n < free {
				fdtest.Close(fds)
				t.Fatalf("%d fds free already, want %d", n, free)
			}
			return fds
		}
		fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			fdtest.Close(fds)
			t.Fatal(err)
		}
		fds = append(fds, fd)
	}
}
