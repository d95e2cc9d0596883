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
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/handoff-go/handoff/ipc"
	"golang.org/x/sys/unix"
)

// masterListener opens the real listener that stands in for the master's,
// skipping the test where the network is not available.
func masterListener(t *testing.T, network string) net.Listener {
	t.Helper()
	var ln net.Listener
	var err error
	switch network {
	case "tcp", "tcp4":
		ln, err = net.Listen(network, "127.0.0.1:0")
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

func TestAcceptReturnsTheRealConn(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		network string
	}{
		{name: "tcp", network: "tcp"},
		{name: "tcp6", network: "tcp6"},
		{name: "unix", network: "unix"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ln := masterListener(t, tt.network)
			fm := startMaster(t)
			l := fm.listen(t, tt.network, ln.Addr().String())
			if l.Addr().Network() != ln.Addr().Network() || l.Addr().String() != ln.Addr().String() {
				t.Errorf("Addr %s %s, want the master's %s %s", l.Addr().Network(), l.Addr(), ln.Addr().Network(), ln.Addr())
			}
			const n = 3
			clients, fds := connectN(t, ln, n)
			if _, err := fm.handoff(l.id, fds); err != nil {
				t.Fatal(err)
			}
			// The worker received the fds close-on-exec, and they are queued.
			l.mu.Lock()
			queued := slices.Clone(l.fds[l.head:])
			l.mu.Unlock()
			if len(queued) != n {
				t.Fatalf("%d fds queued, want %d", len(queued), n)
			}
			for _, fd := range queued {
				if !cloexec(t, fd) {
					t.Errorf("received fd %d is not close-on-exec", fd)
				}
			}
			conns := acceptN(t, l, n)
			for i, c := range conns {
				var rc interface {
					Control(func(fd uintptr)) error
				}
				switch tt.network {
				case "unix":
					uc, ok := c.(*UnixConn)
					if !ok {
						t.Fatalf("Accept returned %T, want *UnixConn", c)
					}
					if uc.NetConn() == nil {
						t.Fatal("NetConn is nil")
					}
					rc, _ = uc.NetConn().SyscallConn()
					if got, want := c.LocalAddr().String(), ln.Addr().String(); got != want {
						t.Errorf("conn %d: LocalAddr %q, want %q", i, got, want)
					}
				default:
					tc, ok := c.(*TCPConn)
					if !ok {
						t.Fatalf("Accept returned %T, want *TCPConn", c)
					}
					if tc.NetConn() == nil {
						t.Fatal("NetConn is nil")
					}
					rc, _ = tc.NetConn().SyscallConn()
					// http.Server needs these of the real *net.TCPConn.
					if _, ok := c.(io.ReaderFrom); !ok {
						t.Error("conn is not an io.ReaderFrom: no sendfile or splice")
					}
					if _, ok := c.(interface{ CloseWrite() error }); !ok {
						t.Error("conn has no CloseWrite")
					}
					if got, want := c.RemoteAddr().String(), clients[i].LocalAddr().String(); got != want {
						t.Errorf("conn %d: RemoteAddr %s, want the client's address %s", i, got, want)
					}
					if got, want := c.LocalAddr().String(), clients[i].RemoteAddr().String(); got != want {
						t.Errorf("conn %d: LocalAddr %s, want %s", i, got, want)
					}
				}
				if err := rc.Control(func(fd uintptr) {
					if !cloexec(t, int(fd)) {
						t.Errorf("conn %d: fd %d is not close-on-exec", i, fd)
					}
				}); err != nil {
					t.Fatal(err)
				}
				// Each conn is the one its client dialed.
				msg := fmt.Sprintf("hello %d", i)
				if _, err := clients[i].Write([]byte(msg)); err != nil {
					t.Fatal(err)
				}
				buf := make([]byte, len(msg))
				_ = c.SetReadDeadline(time.Now().Add(waitTimeout))
				if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
					t.Fatalf("conn %d read %q, %v; want %q", i, buf, err, msg)
				}
			}
		})
	}
}

func TestEveryConnsFrameIsAcked(t *testing.T) {
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
			ln := masterListener(t, "tcp")
			fm := startMaster(t)
			l := fm.listen(t, "tcp", ln.Addr().String())
			var all []uint64
			var held []int
			t.Cleanup(func() { closeFDs(held) })
			for _, n := range tt.frames {
				_, fds := connectN(t, ln, n)
				held = append(held, fds...)
				ids, err := fm.send(l.id, fds)
				if err != nil {
					t.Fatal(err)
				}
				all = append(all, ids...)
			}
			fm.wait(t, "acks", func() bool {
				for _, id := range all {
					if fm.acked[id] == 0 {
						return false
					}
				}
				return true
			})
			fm.barrier(t)
			fm.mu.Lock()
			for id, k := range fm.acked {
				if k != 1 || !slices.Contains(all, id) {
					t.Errorf("conn %d acked %d times; handed off: %v", id, k, all)
				}
			}
			fm.mu.Unlock()
		})
	}
}

func TestConcurrentAccept(t *testing.T) {
	t.Parallel()
	ln := masterListener(t, "tcp")
	fm := startMaster(t)
	l := fm.listen(t, "tcp", ln.Addr().String())
	const acceptors, n = 8, 2 * ipc.MaxConns
	type result struct {
		ids []uint64
		err error
	}
	results := make(chan result, acceptors)
	for range acceptors {
		go func() {
			var r result
			for {
				c, err := l.Accept()
				if err != nil {
					if !isClosed(err) {
						r.err = err
					}
					results <- r
					return
				}
				switch c := c.(type) {
				case *TCPConn:
					r.ids = append(r.ids, c.closer.id)
				default:
					r.err = fmt.Errorf("Accept returned %T", c)
				}
				_ = c.Close()
			}
		}()
	}
	var ids []uint64
	for _, k := range []int{ipc.MaxConns, 1, ipc.MaxConns - 1} {
		_, fds := connectN(t, ln, k)
		got, err := fm.handoff(l.id, fds)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, got...)
	}
	fm.waitClosed(t, ids)
	_ = l.Close()
	var accepted []uint64
	for range acceptors {
		r := recv(t, results, "an acceptor")
		if r.err != nil {
			t.Error(r.err)
		}
		accepted = append(accepted, r.ids...)
	}
	slices.Sort(accepted)
	if distinct := len(slices.Compact(slices.Clone(accepted))); len(accepted) != n || distinct != n {
		t.Errorf("%d conns accepted, %d of them distinct; want each of %d once", len(accepted), distinct, n)
	}
	if r := fm.takeReturn(t, l.id); len(r.ids) != 0 {
		closeFDs(r.fds)
		t.Errorf("conns %v returned, want all accepted", r.ids)
	}
}

func TestCloseIsReportedOnce(t *testing.T) {
	t.Parallel()
	ln := masterListener(t, "tcp")
	fm := startMaster(t)
	l := fm.listen(t, "tcp", ln.Addr().String())
	const n = 20
	clients, fds := connectN(t, ln, n)
	ids, err := fm.handoff(l.id, fds)
	if err != nil {
		t.Fatal(err)
	}
	conns := acceptN(t, l, n)
	for _, c := range conns {
		if err := c.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
		_ = c.Close() // a second Close must not be reported again
	}
	fm.waitClosed(t, ids)
	time.Sleep(10 * reportDelay) // room for a wrong second report
	fm.barrier(t)
	fm.mu.Lock()
	for _, id := range ids {
		if k := fm.closed[id]; k != 1 {
			t.Errorf("conn %d reported closed %d times, want once", id, k)
		}
	}
	if len(fm.closed) != n {
		t.Errorf("%d conns reported closed, want %d", len(fm.closed), n)
	}
	fm.mu.Unlock()
	// The worker's conn held the last copy of each fd: clients see EOF.
	expectEOF(t, clients...)
}

func TestListenerClose(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		queued   int // conns handed off
		accepted int // of which accepted before Close
	}{
		{name: "nothing queued", queued: 0},
		{name: "all accepted", queued: 2, accepted: 2},
		{name: "queued conns go back", queued: 5, accepted: 2},
		{name: "a full frame goes back", queued: ipc.MaxConns},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ln := masterListener(t, "tcp")
			fm := startMaster(t)
			l := fm.listen(t, "tcp", ln.Addr().String())
			clients, fds := connectN(t, ln, tt.queued)
			var ids []uint64
			if tt.queued > 0 {
				var err error
				if ids, err = fm.handoff(l.id, fds); err != nil {
					t.Fatal(err)
				}
			}
			acceptN(t, l, tt.accepted)
			// With nothing left queued, Accept blocks until Close.
			blocked := make(chan error, 1)
			if tt.accepted == tt.queued {
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
			if tt.accepted == tt.queued {
				if err := recv(t, blocked, "the blocked Accept"); !isClosed(err) {
					t.Errorf("blocked Accept after Close: %v, want a *net.OpError matching net.ErrClosed", err)
				}
			}
			for range 2 {
				if c, err := l.Accept(); !isClosed(err) {
					t.Errorf("Accept after Close: %v, %v; want a *net.OpError matching net.ErrClosed", c, err)
				}
			}
			// One Return frame, even an empty one, carries what was queued.
			r := fm.takeReturn(t, l.id)
			defer closeFDs(r.fds)
			if want := ids[tt.accepted:]; !slices.Equal(r.ids, want) {
				t.Errorf("Return frame ids %v, want %v", r.ids, want)
			}
			if len(r.fds) != len(r.ids) {
				t.Fatalf("Return frame has %d fds for %d ids", len(r.fds), len(r.ids))
			}
			fm.barrier(t)
			if n := fm.returnsFor(l.id); n != 0 {
				t.Errorf("%d more Return frames after a second Close", n)
			}
			// The returned fds are the unaccepted clients' conns.
			for i, fd := range r.fds {
				echoThrough(t, fd, clients[tt.accepted+i])
			}
		})
	}
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

func TestConnsForAnUnknownListenerGoBack(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		closed bool // the listener existed and was closed
	}{
		{name: "never opened"},
		{name: "closed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ln := masterListener(t, "tcp")
			fm := startMaster(t)
			lid := uint32(99)
			if tt.closed {
				l := fm.listen(t, "tcp", ln.Addr().String())
				_ = l.Close()
				closeFDs(fm.takeReturn(t, l.id).fds)
				lid = l.id
			}
			clients, fds := connectN(t, ln, 3)
			t.Cleanup(func() { closeFDs(fds) })
			ids, err := fm.send(lid, fds)
			if err != nil {
				t.Fatal(err)
			}
			r := fm.takeReturn(t, lid)
			defer closeFDs(r.fds)
			if !slices.Equal(r.ids, ids) || len(r.fds) != len(ids) {
				t.Fatalf("Return frame: ids %v with %d fds, want %v with %d", r.ids, len(r.fds), ids, len(ids))
			}
			fm.barrier(t)
			fm.mu.Lock()
			for _, id := range ids {
				if fm.acked[id] != 0 {
					t.Errorf("conn %d for an unknown listener was acked", id)
				}
			}
			fm.mu.Unlock()
			for i, fd := range r.fds {
				echoThrough(t, fd, clients[i])
			}
		})
	}
}

func TestAcceptOfANonSocketFD(t *testing.T) {
	t.Parallel()
	ln := masterListener(t, "tcp")
	fm := startMaster(t)
	l := fm.listen(t, "tcp", ln.Addr().String())
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[1])
	_, fds := connectN(t, ln, 1)
	ids, err := fm.handoff(l.id, []int{p[0], fds[0]})
	if err != nil {
		t.Fatal(err)
	}
	c, err := l.Accept()
	var op *net.OpError
	if err == nil || errors.Is(err, net.ErrClosed) || !errors.As(err, &op) || op.Op != "accept" {
		t.Fatalf("Accept of a pipe: %v, %v; want an accept *net.OpError", c, err)
	}
	fm.waitClosed(t, ids[:1]) // the master's count stays true
	conns := acceptN(t, l, 1)
	if _, ok := conns[0].(*TCPConn); !ok {
		t.Errorf("the next Accept returned %T, want *TCPConn", conns[0])
	}
}

func TestHTTPServeAndShutdown(t *testing.T) {
	t.Parallel()
	ln := masterListener(t, "tcp")
	fm := startMaster(t)
	l := fm.listen(t, "tcp", ln.Addr().String())

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
				_, err = fm.handoff(l.id, []int{fd})
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
	if r := fm.takeReturn(t, l.id); len(r.ids) != 0 || len(r.fds) != 0 {
		closeFDs(r.fds)
		t.Errorf("Shutdown returned conns %v to the master, want none", r.ids)
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
	// Every conn was handed off once, acked once and reported closed once.
	fm.wait(t, "close reports", func() bool { return len(fm.closed) == len(fm.acked) })
	fm.mu.Lock()
	defer fm.mu.Unlock()
	if len(fm.acked) != n+1 {
		t.Errorf("%d conns handed off, want %d", len(fm.acked), n+1)
	}
	for id, k := range fm.closed {
		if k != 1 || fm.acked[id] != 1 {
			t.Errorf("conn %d: acked %d times, reported closed %d times; want once each", id, fm.acked[id], k)
		}
	}
}

// TestNoFDLeak counts this process's fds, both sides of the handoff,
// before and after thousands of handoffs. It is not parallel.
func TestNoFDLeak(t *testing.T) {
	ln := masterListener(t, "tcp")
	fm := startMaster(t)
	l := fm.listen(t, "tcp", ln.Addr().String())
	round := func(n int) {
		t.Helper()
		clients, fds := connectN(t, ln, n)
		ids, err := fm.handoff(l.id, fds)
		if err != nil {
			t.Fatal(err)
		}
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
		fm.waitClosed(t, ids)
	}
	round(10) // warm up: the poller, timers
	before := fdCount(t)
	sizes := []int{1, 7, 64, ipc.MaxConns}
	const total = 3000
	for i, done := 0, 0; done < total; i++ {
		n := min(sizes[i%len(sizes)], total-done)
		round(n)
		done += n
	}
	// Conns queued on a closed listener: the worker closes its copies.
	l2 := fm.listen(t, "tcp", ln.Addr().String())
	clients, fds := connectN(t, ln, 100)
	if _, err := fm.handoff(l2.id, fds); err != nil {
		t.Fatal(err)
	}
	_ = l2.Close()
	closeFDs(fm.takeReturn(t, l2.id).fds)
	for _, c := range clients {
		_ = c.Close()
	}
	if after := fdCount(t); after != before {
		t.Errorf("%d fds open after %d handoffs, %d before", after, total+100, before)
	}
}
