//go:build linux

package worker

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/fdtest"
	"golang.org/x/net/nettest"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
)

// connTimeout bounds every wait in the Conn tests.
const connTimeout = 10 * time.Second

// connTakeFD returns a close-on-exec, non-blocking dup of nc's fd, taken
// through SyscallConn().Control (never Fd), and closes nc: the caller owns
// the only fd of that socket, as a worker owns a handed-off one.
func connTakeFD(nc net.Conn) (int, error) {
	defer nc.Close()
	rc, err := nc.(syscall.Conn).SyscallConn()
	if err != nil {
		return -1, err
	}
	nfd := -1
	var derr error
	if err := rc.Control(func(fd uintptr) { nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, os.NewSyscallError("fcntl", derr)
	}
	if err := unix.SetNonblock(nfd, true); err != nil {
		_ = unix.Close(nfd)
		return -1, os.NewSyscallError("fcntl", err)
	}
	return nfd, nil
}

// connTCPPair returns the two ends of a loopback TCP connection: the
// accepted end as a *Conn given its addresses (as a handoff frame gives
// them), and the dialed end, as a *Conn too if both is set. It returns
// errors rather than failing a test, so MakePipe can use it.
func connTCPPair(both bool) (server *Conn, client net.Conn, err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	defer ln.Close()
	client, err = net.DialTimeout("tcp", ln.Addr().String(), connTimeout)
	if err != nil {
		return nil, nil, err
	}
	sc, err := ln.Accept()
	if err != nil {
		_ = client.Close()
		return nil, nil, err
	}
	laddr, raddr := sc.LocalAddr(), sc.RemoteAddr()
	fd, err := connTakeFD(sc)
	if err != nil {
		_ = client.Close()
		return nil, nil, err
	}
	server = newConn(fd, "tcp", laddr, raddr, nil)
	if both {
		laddr, raddr := client.LocalAddr(), client.RemoteAddr()
		fd, err := connTakeFD(client)
		if err != nil {
			_ = server.Close()
			return nil, nil, err
		}
		client = newConn(fd, "tcp", laddr, raddr, nil)
	}
	return server, client, nil
}

// connUnixPair returns both ends of a Unix stream socketpair as *Conns
// with lazy addresses; a's Close runs onClose.
func connUnixPair(onClose func()) (a, b *Conn, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, os.NewSyscallError("socketpair", err)
	}
	return newConn(fds[0], "unix", nil, nil, onClose), newConn(fds[1], "unix", nil, nil, nil), nil
}

// connTestPair is connUnixPair or connTCPPair(true) for a test; Cleanup
// closes both ends.
func connTestPair(t *testing.T, network string) (a, b *Conn) {
	t.Helper()
	var nc net.Conn
	var err error
	if network == "unix" {
		a, b, err = connUnixPair(nil)
	} else {
		a, nc, err = connTCPPair(true)
		if err == nil {
			b = nc.(*Conn)
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = a.Close(), b.Close() })
	return a, b
}

// connTestListener is a net.Listener whose Accept turns each connection
// that a real listener accepts into a *Conn, as the worker's Listener does
// with a handed-off fd.
type connTestListener struct {
	net.Listener        // the real listener
	onClose      func() // each Conn's onClose
}

func (l *connTestListener) Accept() (net.Conn, error) {
	nc, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	laddr, raddr := nc.LocalAddr(), nc.RemoteAddr()
	fd, err := connTakeFD(nc)
	if err != nil {
		return nil, err
	}
	return newConn(fd, "tcp", laddr, raddr, l.onClose), nil
}

// connSetSendfileHook makes testHookSendfile add to the returned counter
// until the test ends. Tests that call it must not run in parallel, and
// must see every conn that may call the hook closed before they end.
func connSetSendfileHook(t *testing.T) *atomic.Int64 {
	t.Helper()
	var sent atomic.Int64
	testHookSendfile = func(n int64) { sent.Add(n) }
	t.Cleanup(func() { testHookSendfile = nil })
	return &sent
}

// connTempFile writes size random bytes to a temp file and returns its
// path and contents.
func connTempFile(t *testing.T, size int) (string, []byte) {
	t.Helper()
	data := make([]byte, size)
	_, _ = rand.Read(data)
	path := filepath.Join(t.TempDir(), "blob.bin")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path, data
}

func TestConnNettest(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		network   string
		connFirst bool // the *Conn is c1 and the *net.TCPConn c2
	}{
		{name: "tcp conn first", network: "tcp", connFirst: true},
		{name: "tcp conn second", network: "tcp"},
		{name: "unix both conns", network: "unix"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			nettest.TestConn(t, func() (c1, c2 net.Conn, stop func(), err error) {
				if tt.network == "unix" {
					c1, c2, err = connUnixPair(nil)
				} else {
					c1, c2, err = connTCPPair(false)
					if !tt.connFirst {
						c1, c2 = c2, c1
					}
				}
				if err != nil {
					return nil, nil, nil, err
				}
				return c1, c2, func() { _, _ = c1.Close(), c2.Close() }, nil
			})
		})
	}
}

// TestConnServesFilesWithSendfile serves a file over http.Server through
// *Conns and checks that the body arrived whole and went by sendfile(2).
// Not parallel: it sets testHookSendfile.
func TestConnServesFilesWithSendfile(t *testing.T) {
	sent := connSetSendfileHook(t)
	const size = 8 << 20
	path, data := connTempFile(t, size)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := make(chan struct{}, 16) // one per server conn closed
	srv := &http.Server{
		Handler:           http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { http.ServeFile(w, r, path) }),
		ReadHeaderTimeout: connTimeout,
	}
	var g errgroup.Group
	g.Go(func() error {
		if err := srv.Serve(&connTestListener{Listener: ln, onClose: func() { closed <- struct{}{} }}); err != http.ErrServerClosed {
			return err
		}
		return nil
	})
	defer func() {
		_ = srv.Close()
		if err := g.Wait(); err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()

	// No keep-alive: the server closes its conn after the response, so
	// the onClose signal orders its use of the hook before Cleanup.
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: connTimeout}
	resp, err := client.Get("http://" + ln.Addr().String() + "/blob.bin")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, data) {
		t.Fatalf("status %d, %d bytes, equal %v; want 200 and the %d bytes of the file", resp.StatusCode, len(body), bytes.Equal(body, data), size)
	}
	select {
	case <-closed:
	case <-time.After(connTimeout):
		t.Fatal("the server did not close its conn")
	}
	// net/http writes the first 512 bytes itself, to sniff them.
	if got := sent.Load(); got < size-512 {
		t.Errorf("sendfile sent %d bytes of %d: the copy went through a buffer", got, size)
	}
}

// TestConnReadFrom checks ReadFrom's sendfile path and its fallbacks.
// Not parallel: it sets testHookSendfile.
func TestConnReadFrom(t *testing.T) {
	sent := connSetSendfileHook(t)
	const size = 1 << 20
	path, data := connTempFile(t, size)
	tests := []struct {
		name     string
		source   func(t *testing.T) io.Reader
		want     []byte
		sendfile bool // sendfile must move the bytes
		pos      int64
	}{
		{name: "file", sendfile: true, want: data, pos: size, source: func(t *testing.T) io.Reader {
			return connOpen(t, path, 0)
		}},
		{name: "file from its position", sendfile: true, want: data[100:], pos: size, source: func(t *testing.T) io.Reader {
			return connOpen(t, path, 100)
		}},
		{name: "limited file", sendfile: true, want: data[:1000], pos: 1000, source: func(t *testing.T) io.Reader {
			return &io.LimitedReader{R: connOpen(t, path, 0), N: 1000}
		}},
		{name: "limit past the end", sendfile: true, want: data, pos: size, source: func(t *testing.T) io.Reader {
			return &io.LimitedReader{R: connOpen(t, path, 0), N: 2 * size}
		}},
		{name: "pipe", want: data[:1000], source: func(t *testing.T) io.Reader {
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = r.Close() })
			go func() {
				_, _ = w.Write(data[:1000])
				_ = w.Close()
			}()
			return r
		}},
		{name: "reader", want: data[:5000], source: func(t *testing.T) io.Reader {
			return bytes.NewReader(data[:5000])
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := tt.source(t)
			a, b := connTestPair(t, "unix")
			_ = b.SetDeadline(time.Now().Add(connTimeout))
			before := sent.Load()
			lr, limited := src.(*io.LimitedReader)
			var limit int64
			if limited {
				limit = lr.N
			}
			var g errgroup.Group
			var got []byte
			g.Go(func() error {
				var err error
				got, err = io.ReadAll(b)
				return err
			})
			n, err := a.ReadFrom(src)
			_ = a.CloseWrite()
			if werr := g.Wait(); werr != nil {
				t.Fatalf("peer: %v", werr)
			}
			if err != nil || n != int64(len(tt.want)) || !bytes.Equal(got, tt.want) {
				t.Fatalf("ReadFrom = %d, %v; peer read %d bytes; want %d bytes intact", n, err, len(got), len(tt.want))
			}
			if did := sent.Load() - before; tt.sendfile != (did > 0) || tt.sendfile && did != n {
				t.Errorf("sendfile sent %d bytes of %d; want sendfile %v", did, n, tt.sendfile)
			}
			if limited && lr.N != limit-n {
				t.Errorf("LimitedReader.N = %d after %d of %d bytes", lr.N, n, limit)
			}
			if tt.pos != 0 {
				f, _ := src.(*os.File)
				if limited {
					f = lr.R.(*os.File)
				}
				if pos, err := f.Seek(0, io.SeekCurrent); err != nil || pos != tt.pos {
					t.Errorf("file position %d, %v; want %d", pos, err, tt.pos)
				}
			}
		})
	}
}

// connOpen opens path at offset; Cleanup closes it.
func connOpen(t *testing.T, path string, offset int64) *os.File {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.Close() })
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	return f
}

func TestConnHalfClose(t *testing.T) {
	t.Parallel()
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			t.Parallel()
			server, client := connTestPair(t, network)
			deadline := time.Now().Add(connTimeout)
			_, _ = server.SetDeadline(deadline), client.SetDeadline(deadline)
			var g errgroup.Group
			g.Go(func() error {
				req, err := io.ReadAll(server) // to the client's CloseWrite
				if err != nil {
					return err
				}
				if string(req) != "ping" {
					return errors.New("server read " + string(req))
				}
				if _, err := server.Write([]byte("pong")); err != nil {
					return err
				}
				return server.Close()
			})
			if _, err := client.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}
			if err := client.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			reply, err := io.ReadAll(client)
			if gerr := g.Wait(); gerr != nil {
				t.Fatalf("server: %v", gerr)
			}
			if err != nil || string(reply) != "pong" {
				t.Fatalf("client read %q, %v; want pong", reply, err)
			}
			if _, err := client.Write([]byte("x")); err == nil {
				t.Error("Write after CloseWrite succeeded")
			}
		})
	}
}

func TestConnCloseRead(t *testing.T) {
	t.Parallel()
	a, _ := connTestPair(t, "unix")
	if err := a.CloseRead(); err != nil {
		t.Fatal(err)
	}
	_ = a.SetReadDeadline(time.Now().Add(connTimeout))
	if n, err := a.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("Read after CloseRead = %d, %v; want EOF", n, err)
	}
}

func TestConnAddrs(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		listen func(t *testing.T) net.Listener
	}{
		{name: "tcp4", listen: func(t *testing.T) net.Listener { return connListen(t, "tcp", "127.0.0.1:0") }},
		{name: "tcp6", listen: func(t *testing.T) net.Listener { return connListen(t, "tcp", "[::1]:0") }},
		{name: "unix", listen: func(t *testing.T) net.Listener {
			return connListen(t, "unix", filepath.Join(t.TempDir(), "sock"))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ln := tt.listen(t)
			network := ln.Addr().Network()
			for _, given := range []bool{true, false} {
				cc, err := net.DialTimeout(network, ln.Addr().String(), connTimeout)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = cc.Close() })
				sc, err := ln.Accept()
				if err != nil {
					t.Fatal(err)
				}
				wantL, wantR := sc.LocalAddr(), sc.RemoteAddr()
				fd, err := connTakeFD(sc)
				if err != nil {
					t.Fatal(err)
				}
				var c *Conn
				if given {
					c = newConn(fd, network, wantL, wantR, nil)
				} else {
					c = newConn(fd, network, nil, nil, nil)
				}
				t.Cleanup(func() { _ = c.Close() })
				// Concurrent first calls, for the race detector.
				var g errgroup.Group
				locals, remotes := make([]net.Addr, 4), make([]net.Addr, 4)
				for i := range locals {
					g.Go(func() error {
						locals[i], remotes[i] = c.LocalAddr(), c.RemoteAddr()
						return nil
					})
				}
				_ = g.Wait()
				for i := range locals {
					if locals[i] != locals[0] || remotes[i] != remotes[0] {
						t.Fatalf("given %v: calls returned different addresses", given)
					}
				}
				gotL, gotR := locals[0], remotes[0]
				if given && (gotL != wantL || gotR != wantR) {
					t.Errorf("given addresses: got %v, %v; want the very values %v, %v", gotL, gotR, wantL, wantR)
				}
				if !reflect.DeepEqual(gotL, wantL) || !reflect.DeepEqual(gotR, wantR) {
					t.Errorf("given %v: got %#v, %#v; want %#v, %#v", given, gotL, gotR, wantL, wantR)
				}
			}
		})
	}
}

// connListen listens on address, or skips the test if the network is
// missing here (no IPv6); Cleanup closes the listener.
func connListen(t *testing.T, network, address string) net.Listener {
	t.Helper()
	ln, err := net.Listen(network, address)
	if err != nil {
		t.Skipf("listen %s %s: %v", network, address, err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	return ln
}

func TestConnOnCloseRunsOnce(t *testing.T) {
	t.Parallel()
	const closers = 8
	for range 50 {
		var calls atomic.Int64
		a, b, err := connUnixPair(func() { calls.Add(1) })
		if err != nil {
			t.Fatal(err)
		}
		var g errgroup.Group
		errs := make([]error, closers)
		for i := range errs {
			g.Go(func() error {
				errs[i] = a.Close()
				return nil
			})
		}
		_ = g.Wait()
		_ = b.Close()
		if n := calls.Load(); n != 1 {
			t.Fatalf("onClose ran %d times", n)
		}
		succeeded := 0
		for _, err := range errs {
			var op *net.OpError
			switch {
			case err == nil:
				succeeded++
			case !errors.Is(err, net.ErrClosed) || !errors.As(err, &op) || op.Op != "close":
				t.Fatalf("a losing Close returned %v; want a close *net.OpError matching net.ErrClosed", err)
			}
		}
		if succeeded != 1 {
			t.Fatalf("%d Closes succeeded; want 1", succeeded)
		}
	}
}

// TestConnClosesItsFD checks that Close really closes the fd, before
// onClose runs. Not parallel: it counts the process's fds.
func TestConnClosesItsFD(t *testing.T) {
	// The first conn starts the runtime poller, which has fds of its own.
	a, b, err := connUnixPair(nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = a.Close(), b.Close()

	before := fdtest.Count(t)
	for range 100 {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		closedFirst := false
		a := newConn(fds[0], "unix", nil, nil, func() {
			_, err := unix.FcntlInt(uintptr(fds[0]), unix.F_GETFD, 0)
			closedFirst = err == unix.EBADF
		})
		b := newConn(fds[1], "unix", nil, nil, nil)
		if _, err := a.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		if _, err := b.Read(make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
		if err := a.Close(); err != nil {
			t.Fatal(err)
		}
		if !closedFirst {
			t.Fatal("onClose ran before the fd was closed")
		}
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if after := fdtest.Count(t); after != before {
		t.Errorf("%d fds open before, %d after 100 closed pairs", before, after)
	}
}

// TestConnReadWriteDoNotAllocate is not parallel: AllocsPerRun needs that.
func TestConnReadWriteDoNotAllocate(t *testing.T) {
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			a, b := connTestPair(t, network)
			out, in := []byte("x"), make([]byte, 1)
			allocs := testing.AllocsPerRun(200, func() {
				if _, err := a.Write(out); err != nil {
					panic(err)
				}
				if _, err := b.Read(in); err != nil {
					panic(err)
				}
			})
			if allocs != 0 {
				t.Errorf("a Write and a Read allocate %v times", allocs)
			}
		})
	}
}

func TestConnErrors(t *testing.T) {
	t.Parallel()
	laddr := &net.UnixAddr{Name: "local", Net: "unix"}
	raddr := &net.UnixAddr{Name: "remote", Net: "unix"}
	tests := []struct {
		name    string
		op      string // the *net.OpError's Op
		is      error  // what errors.Is must match
		timeout bool
		do      func(c, peer *Conn) error
	}{
		{name: "read after close", op: "read", is: net.ErrClosed, do: func(c, _ *Conn) error {
			_ = c.Close()
			_, err := c.Read(make([]byte, 1))
			return err
		}},
		{name: "write after close", op: "write", is: net.ErrClosed, do: func(c, _ *Conn) error {
			_ = c.Close()
			_, err := c.Write([]byte("x"))
			return err
		}},
		{name: "second close", op: "close", is: net.ErrClosed, do: func(c, _ *Conn) error {
			_ = c.Close()
			return c.Close()
		}},
		{name: "read interrupted by close", op: "read", is: net.ErrClosed, do: func(c, _ *Conn) error {
			time.AfterFunc(50*time.Millisecond, func() { _ = c.Close() })
			_, err := c.Read(make([]byte, 1))
			return err
		}},
		{name: "read deadline", op: "read", is: os.ErrDeadlineExceeded, timeout: true, do: func(c, _ *Conn) error {
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
			_, err := c.Read(make([]byte, 1))
			return err
		}},
		{name: "write deadline", op: "write", is: os.ErrDeadlineExceeded, timeout: true, do: func(c, _ *Conn) error {
			_ = c.SetWriteDeadline(time.Now().Add(10 * time.Millisecond))
			for {
				if _, err := c.Write(make([]byte, 64<<10)); err != nil {
					return err
				}
			}
		}},
		{name: "write to a closed peer", op: "write", is: syscall.EPIPE, do: func(c, peer *Conn) error {
			_ = peer.Close()
			_, err := c.Write([]byte("x"))
			return err
		}},
		{name: "set deadline after close", op: "set", is: net.ErrClosed, do: func(c, _ *Conn) error {
			_ = c.Close()
			return c.SetDeadline(time.Now())
		}},
		{name: "close write after close", op: "close", is: net.ErrClosed, do: func(c, _ *Conn) error {
			_ = c.Close()
			return c.CloseWrite()
		}},
		{name: "file after close", op: "file", is: net.ErrClosed, do: func(c, _ *Conn) error {
			_ = c.Close()
			_, err := c.File()
			return err
		}},
		{name: "readfrom after close", op: "readfrom", is: net.ErrClosed, do: func(c, _ *Conn) error {
			_ = c.Close()
			_, err := c.ReadFrom(strings.NewReader("x"))
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			c := newConn(fds[0], "unix", laddr, raddr, nil)
			peer := newConn(fds[1], "unix", nil, nil, nil)
			t.Cleanup(func() { _, _ = c.Close(), peer.Close() })
			err = tt.do(c, peer)
			var op *net.OpError
			if !errors.As(err, &op) || op.Op != tt.op || op.Net != "unix" || op.Source != laddr || op.Addr != raddr {
				t.Fatalf("got %#v; want a *net.OpError{Op: %q, Net: unix, Source: laddr, Addr: raddr}", err, tt.op)
			}
			if !errors.Is(err, tt.is) {
				t.Errorf("%v does not match %v", err, tt.is)
			}
			if op.Timeout() != tt.timeout {
				t.Errorf("%v: Timeout() = %v", err, op.Timeout())
			}
		})
	}
	t.Run("EOF", func(t *testing.T) {
		t.Parallel()
		c, peer := connTestPair(t, "unix")
		_ = peer.Close()
		if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
			t.Errorf("Read = %d, %v; want io.EOF itself", n, err)
		}
	})
}

func TestConnSocketOptions(t *testing.T) {
	t.Parallel()
	c, _ := connTestPair(t, "tcp")
	getInt := func(level, opt int) int {
		t.Helper()
		var v int
		var err error
		rc, _ := c.SyscallConn()
		if cerr := rc.Control(func(fd uintptr) { v, err = unix.GetsockoptInt(int(fd), level, opt) }); cerr != nil || err != nil {
			t.Fatal(cerr, err)
		}
		return v
	}
	getLinger := func() unix.Linger {
		t.Helper()
		var l *unix.Linger
		var err error
		rc, _ := c.SyscallConn()
		if cerr := rc.Control(func(fd uintptr) { l, err = unix.GetsockoptLinger(int(fd), unix.SOL_SOCKET, unix.SO_LINGER) }); cerr != nil || err != nil {
			t.Fatal(cerr, err)
		}
		return *l
	}
	tests := []struct {
		name string
		set  func() error
		get  func() int
		want int
	}{
		{name: "no delay off", set: func() error { return c.SetNoDelay(false) }, get: func() int { return getInt(unix.IPPROTO_TCP, unix.TCP_NODELAY) }, want: 0},
		{name: "no delay on", set: func() error { return c.SetNoDelay(true) }, get: func() int { return getInt(unix.IPPROTO_TCP, unix.TCP_NODELAY) }, want: 1},
		{name: "keep-alive on", set: func() error { return c.SetKeepAlive(true) }, get: func() int { return getInt(unix.SOL_SOCKET, unix.SO_KEEPALIVE) }, want: 1},
		{name: "keep-alive off", set: func() error { return c.SetKeepAlive(false) }, get: func() int { return getInt(unix.SOL_SOCKET, unix.SO_KEEPALIVE) }, want: 0},
		{name: "keep-alive period rounds up", set: func() error { return c.SetKeepAlivePeriod(1500 * time.Millisecond) }, get: func() int { return getInt(unix.IPPROTO_TCP, unix.TCP_KEEPIDLE) }, want: 2},
		{name: "keep-alive period default", set: func() error { return c.SetKeepAlivePeriod(0) }, get: func() int { return getInt(unix.IPPROTO_TCP, unix.TCP_KEEPIDLE) }, want: 15},
		{name: "keep-alive period negative", set: func() error { return c.SetKeepAlivePeriod(-1) }, get: func() int { return getInt(unix.IPPROTO_TCP, unix.TCP_KEEPIDLE) }, want: 15},
		{name: "linger 3s", set: func() error { return c.SetLinger(3) }, get: func() int { l := getLinger(); return int(l.Onoff)*100 + int(l.Linger) }, want: 103},
		{name: "linger off", set: func() error { return c.SetLinger(-1) }, get: func() int { return int(getLinger().Onoff) }, want: 0},
	}
	// Not parallel subtests: each one builds on the socket's state.
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.set(); err != nil {
				t.Fatal(err)
			}
			if got := tt.get(); got != tt.want {
				t.Errorf("got %d, want %d", got, tt.want)
			}
		})
	}
	t.Run("unix does nothing", func(t *testing.T) {
		u, _ := connTestPair(t, "unix")
		for _, err := range []error{u.SetNoDelay(true), u.SetKeepAlive(true), u.SetKeepAlivePeriod(time.Second), u.SetLinger(0)} {
			if err != nil {
				t.Errorf("on a unix conn: %v", err)
			}
		}
	})
	t.Run("after close", func(t *testing.T) {
		d, _ := connTestPair(t, "tcp")
		_ = d.Close()
		for _, err := range []error{d.SetNoDelay(true), d.SetKeepAlive(true), d.SetKeepAlivePeriod(time.Second), d.SetLinger(0)} {
			var op *net.OpError
			if !errors.Is(err, net.ErrClosed) || !errors.As(err, &op) || op.Op != "set" {
				t.Errorf("got %v; want a set *net.OpError matching net.ErrClosed", err)
			}
		}
	})
}

func TestConnFile(t *testing.T) {
	t.Parallel()
	c, peer := connTestPair(t, "unix")
	f, err := c.File()
	if err != nil {
		t.Fatal(err)
	}
	// The dup writes to the same socket, and closing it leaves c open.
	if _, err := f.Write([]byte("dup")); err != nil {
		t.Fatal(err)
	}
	rc, err := f.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var flags int
	var ferr error
	if err := rc.Control(func(fd uintptr) { flags, ferr = unix.FcntlInt(fd, unix.F_GETFD, 0) }); err != nil || ferr != nil {
		t.Fatal(err, ferr)
	}
	if flags&unix.FD_CLOEXEC == 0 {
		t.Error("the dup is not close-on-exec")
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("conn")); err != nil {
		t.Fatalf("write after closing the dup: %v", err)
	}
	_ = peer.SetReadDeadline(time.Now().Add(connTimeout))
	got := make([]byte, 7)
	if _, err := io.ReadFull(peer, got); err != nil || string(got) != "dupconn" {
		t.Fatalf("peer read %q, %v; want dupconn", got, err)
	}
}
