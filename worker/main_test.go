//go:build linux

package worker

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/handoff-go/handoff/internal/fdtest"
	"github.com/handoff-go/handoff/ipc"
	"github.com/handoff-go/handoff/scm"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

// killed counts masterGone's calls to killSelf: a test process must not
// send itself SIGTERM.
var killed atomic.Int64

func TestMain(m *testing.M) {
	killSelf = func() { killed.Add(1) }
	goleak.VerifyTestMain(m)
}

// waitTimeout bounds every wait for the worker or the fake master.
const waitTimeout = 10 * time.Second

// fakeMaster plays the master in-process: it holds the master's end of a
// control socketpair, answers Listen frames with a conns socket per
// listener, hands off fds of real connections on those sockets and
// records what the worker sends. The worker side is a controlClient whose
// readLoop runs as it does in a worker process, with a counter page of its
// own (ctr).
type fakeMaster struct {
	ctl      *ipc.Conn      // the master's end of the control socket
	c        *controlClient // the worker's end, under test
	ctr      *ipc.Counters  // the worker's counter page
	loopDone chan struct{}  // closed when c.readLoop returns
	readDone chan struct{}  // closed when the master's reader returns

	mu           sync.Mutex    // guards the fields below
	changed      chan struct{} // closed and replaced on every frame
	onListen     func(network, address string) listenAnswer
	nextListener uint32                // the last listener id given out by default
	listens      [][2]string           // network and address of each Listen frame
	socks        map[uint32]*connsPair // the first conns socket made for each listener id
	allSocks     []*connsPair          // every conns socket made, closed by stop
	returns      []returned            // Return frames not yet taken
	users        [][]byte              // user messages, in order
	pongs        int                   // Pong frames
	barriers     int                   // barrier tags sent
	badFrames    []error               // what the worker got wrong
	readErr      error                 // why the reader stopped
}

// connsPair is the master's two ends of one listener's conns socket.
type connsPair struct {
	send *ipc.ConnsSocket // the master's sending end
	recv *ipc.ConnsSocket // the master's copy of the worker's end, to reclaim
}

// listenAnswer is the fake master's reply to one Listen frame.
type listenAnswer struct {
	hold     bool   // send no reply
	listener uint32 // the listener id; 0 for a failure
	address  string // the bound address
	errno    syscall.Errno
	syscall  string
	err      string
}

// returned is one Return frame. Its fds belong to the fake master, which
// closes them when it stops, unless a test takes them with takeReturn.
type returned struct {
	listener uint32 // the listener it is for
	fds      []int  // the conns handed back
}

// startMaster connects a controlClient with id 1 to a fake master and runs
// its readLoop. Cleanup closes the master's end, which ends the readLoop
// through masterGone, and waits for both sides' goroutines.
func startMaster(t *testing.T) *fakeMaster {
	t.Helper()
	mctl, f, err := ipc.Socketpair()
	if err != nil {
		t.Fatal(err)
	}
	fd, err := dupFD(f)
	_ = f.Close()
	if err != nil {
		_ = mctl.Close()
		t.Fatal(err)
	}
	sc, err := scm.NewConn(fd) // takes ownership of fd
	if err != nil {
		_ = mctl.Close()
		t.Fatal(err)
	}
	ctr := new(ipc.Counters)
	fm := &fakeMaster{
		ctl:      mctl,
		c:        newControlClient(1, ipc.NewConn(sc), ctr),
		ctr:      ctr,
		loopDone: make(chan struct{}),
		readDone: make(chan struct{}),
		changed:  make(chan struct{}),
		socks:    make(map[uint32]*connsPair),
	}
	go func() {
		defer close(fm.loopDone)
		fm.c.readLoop()
	}()
	go fm.read()
	t.Cleanup(func() { fm.stop(t) })
	return fm
}

// stop closes the master's end and waits for the worker to see it, then
// closes every conns socket and every returned fd the master still holds.
func (fm *fakeMaster) stop(t *testing.T) {
	t.Helper()
	_ = fm.ctl.Close()
	for name, ch := range map[string]chan struct{}{"worker readLoop": fm.loopDone, "master reader": fm.readDone} {
		select {
		case <-ch:
		case <-time.After(waitTimeout):
			t.Errorf("%s did not end after the master closed", name)
			return
		}
	}
	// End the inbox's forwarding goroutine, if one started: the channel
	// closes once the queue is drained.
	if !drained(fm.c.inbox.channel()) {
		t.Error("Messages() not closed after the master went away")
	}
	fm.mu.Lock()
	defer fm.mu.Unlock()
	for i := range fm.returns {
		fdtest.Close(fm.returns[i].fds)
		fm.returns[i].fds = nil
	}
	for _, p := range fm.allSocks {
		_, _ = p.send.Close(), p.recv.Close()
	}
	fm.allSocks, fm.socks = nil, map[uint32]*connsPair{}
	if len(fm.badFrames) > 0 {
		t.Errorf("the worker broke the protocol: %v", fm.badFrames)
	}
}

// read records every frame the worker sends and answers Listen frames.
func (fm *fakeMaster) read() {
	defer close(fm.readDone)
	var m ipc.Message
	for {
		fds, err := fm.ctl.Read(&m)
		if err != nil && (ipc.IsProtocolError(err) || errors.Is(err, ipc.ErrFDsLost)) {
			fm.update(func() { fm.badFrames = append(fm.badFrames, err) })
			continue
		}
		if err != nil {
			fm.update(func() { fm.readErr = err })
			return
		}
		var reply []byte
		var sock *ipc.ConnsSocket
		fm.update(func() {
			switch m.Kind {
			case ipc.KindListen:
				fm.listens = append(fm.listens, [2]string{m.Network, m.Address})
				reply, sock, err = fm.answer(&m)
				if err != nil {
					fm.badFrames = append(fm.badFrames, fmt.Errorf("fake master: %w", err))
				}
			case ipc.KindReturn:
				fm.returns = append(fm.returns, returned{m.Listener, slices.Clone(fds)})
			case ipc.KindUser:
				fm.users = append(fm.users, m.Payload)
			case ipc.KindPong:
				fm.pongs++
			default:
				fdtest.Close(fds)
				fm.badFrames = append(fm.badFrames, fmt.Errorf("unexpected %s frame", m.Kind))
			}
		})
		switch {
		case sock != nil:
			// The worker gets its own copy of the conns socket's fd.
			var werr error
			if err := sock.Fd(func(fd int) { werr = fm.ctl.WriteFrame(reply, []int{fd}) }); err != nil {
				werr = err
			}
			_ = werr // the worker may be gone
		case reply != nil:
			_ = fm.ctl.WriteFrame(reply, nil)
		}
	}
}

// answer builds the reply to a Listen frame, or nil to hold it, and for a
// success the conns socket whose worker's end goes with it; under mu.
func (fm *fakeMaster) answer(m *ipc.Message) ([]byte, *ipc.ConnsSocket, error) {
	var a listenAnswer
	if fm.onListen != nil {
		a = fm.onListen(m.Network, m.Address)
	} else {
		fm.nextListener++
		a = listenAnswer{listener: fm.nextListener, address: m.Address}
	}
	if a.hold {
		return nil, nil, nil
	}
	reply := ipc.AppendListenReply(nil, m.Req, a.listener, uint32(a.errno), a.address, a.syscall, a.err)
	if a.listener == 0 {
		return reply, nil, nil
	}
	send, recv, err := ipc.ConnsPair()
	if err != nil {
		return nil, nil, err
	}
	p := &connsPair{send: send, recv: recv}
	fm.allSocks = append(fm.allSocks, p)
	if fm.socks[a.listener] == nil {
		fm.socks[a.listener] = p
	}
	return reply, recv, nil
}

// update runs f under mu and wakes every waiter.
func (fm *fakeMaster) update(f func()) {
	fm.mu.Lock()
	f()
	close(fm.changed)
	fm.changed = make(chan struct{})
	fm.mu.Unlock()
}

// await waits until ok, called under mu, reports true. It is safe off the
// test goroutine.
func (fm *fakeMaster) await(what string, ok func() bool) error {
	deadline := time.NewTimer(waitTimeout)
	defer deadline.Stop()
	for {
		fm.mu.Lock()
		done, changed, readErr := ok(), fm.changed, fm.readErr
		fm.mu.Unlock()
		if done {
			return nil
		}
		if readErr != nil {
			return fmt.Errorf("waiting for %s: master's reader stopped: %w", what, readErr)
		}
		select {
		case <-changed:
		case <-deadline.C:
			return fmt.Errorf("timed out waiting for %s", what)
		}
	}
}

func (fm *fakeMaster) wait(t *testing.T, what string, ok func() bool) {
	t.Helper()
	if err := fm.await(what, ok); err != nil {
		t.Fatal(err)
	}
}

// listen calls the worker's listen and returns its *Listener, closed by
// Cleanup.
func (fm *fakeMaster) listen(t *testing.T, network, address string) *Listener {
	t.Helper()
	return fm.listenWith(t, network, address, ListenConfig{})
}

// listenWith is listen with lc's choices.
func (fm *fakeMaster) listenWith(t *testing.T, network, address string, lc ListenConfig) *Listener {
	t.Helper()
	ln, err := fm.c.listen(network, address, lc.StdConns)
	if err != nil {
		t.Fatalf("listen %s %s: %v", network, address, err)
	}
	l, ok := ln.(*Listener)
	if !ok {
		t.Fatalf("listen returned %T, want *Listener", ln)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l
}

// sock returns the master's ends of listener lid's conns socket.
func (fm *fakeMaster) sock(lid uint32) (*connsPair, error) {
	fm.mu.Lock()
	defer fm.mu.Unlock()
	p := fm.socks[lid]
	if p == nil {
		return nil, fmt.Errorf("fake master: no conns socket for listener %d", lid)
	}
	return p, nil
}

// send writes one Conns frame of fds, with their clients' addresses, on
// listener lid's conns socket, as the master does with TrySend; while the
// socket is full it retries. The caller keeps its copies of fds.
func (fm *fakeMaster) send(lid uint32, fds []int) error {
	p, err := fm.sock(lid)
	if err != nil {
		return err
	}
	hs := make([]ipc.Handoff, len(fds))
	for i, fd := range fds {
		hs[i] = handoffOf(fd)
	}
	deadline := time.Now().Add(waitTimeout)
	for {
		fm.mu.Lock() // TrySend is for one goroutine at a time
		err = p.send.TrySend(lid, hs)
		fm.mu.Unlock()
		if !errors.Is(err, unix.EAGAIN) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(time.Millisecond)
	}
}

// handoff hands fds to listener lid in one Conns frame and, as the real
// master does, closes its copies at once. The fds are closed on every
// path.
func (fm *fakeMaster) handoff(lid uint32, fds []int) error {
	defer fdtest.Close(fds)
	return fm.send(lid, fds)
}

// reclaim reads back, from the master's copy of the worker's end of lid's
// conns socket, every frame the worker never read, as a master does for a
// dead or departed worker. The caller owns the fds.
func (fm *fakeMaster) reclaim(t *testing.T, lid uint32) []int {
	t.Helper()
	p, err := fm.sock(lid)
	if err != nil {
		t.Fatal(err)
	}
	var fds []int
	var m ipc.Message
	for {
		err := p.recv.Recv(&m, false, nil)
		if errors.Is(err, unix.EAGAIN) {
			return fds
		}
		if err != nil {
			fdtest.Close(fds)
			t.Fatalf("reclaim: %v", err)
		}
		for _, h := range m.Handoffs {
			fds = append(fds, int(h.FD))
		}
	}
}

// unread returns how many bytes of lid's conns socket the worker has not
// read.
func (fm *fakeMaster) unread(t *testing.T, lid uint32) int {
	t.Helper()
	p, err := fm.sock(lid)
	if err != nil {
		t.Fatal(err)
	}
	n, err := p.recv.Unread()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// waitCounters waits until the worker's counter page says received conns
// were read off its conns sockets and closed of them were closed.
func (fm *fakeMaster) waitCounters(t *testing.T, received, closed uint64) {
	t.Helper()
	if err := fm.awaitCounters(received, closed); err != nil {
		t.Fatal(err)
	}
}

// awaitCounters is waitCounters, safe off the test goroutine. The page has
// no wakeup, as for the real master: it polls.
func (fm *fakeMaster) awaitCounters(received, closed uint64) error {
	deadline := time.Now().Add(waitTimeout)
	for {
		r, c := fm.ctr.Received.Load(), fm.ctr.Closed.Load()
		if r == received && c == closed {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("counter page: %d received, %d closed; want %d and %d", r, c, received, closed)
		}
		time.Sleep(time.Millisecond)
	}
}

// takeReturn waits for the first Return frame for listener lid and
// removes it; the caller owns its fds.
func (fm *fakeMaster) takeReturn(t *testing.T, lid uint32) returned {
	t.Helper()
	var r returned
	fm.wait(t, fmt.Sprintf("a Return frame for listener %d", lid), func() bool {
		i := slices.IndexFunc(fm.returns, func(r returned) bool { return r.listener == lid })
		if i < 0 {
			return false
		}
		r = fm.returns[i]
		fm.returns = slices.Delete(fm.returns, i, i+1)
		return true
	})
	return r
}

// returnsFor counts the Return frames for lid not yet taken.
func (fm *fakeMaster) returnsFor(lid uint32) int {
	fm.mu.Lock()
	defer fm.mu.Unlock()
	n := 0
	for _, r := range fm.returns {
		if r.listener == lid {
			n++
		}
	}
	return n
}

// barrier sends a user message from the worker and waits for the master
// to read it, so every frame the worker wrote before has been read too.
func (fm *fakeMaster) barrier(t *testing.T) {
	t.Helper()
	fm.mu.Lock()
	fm.barriers++
	tag := fmt.Sprintf(`{"barrier":%d}`, fm.barriers)
	fm.mu.Unlock()
	if err := fm.c.ctl.WriteUser([]byte(tag)); err != nil {
		t.Fatalf("barrier: %v", err)
	}
	fm.wait(t, "a barrier message", func() bool {
		return slices.ContainsFunc(fm.users, func(u []byte) bool { return string(u) == tag })
	})
}

// handoffOf returns the handoff of fd, the server end of a connection, with
// the client's raw address as accept4 gives it to the master.
func handoffOf(fd int) ipc.Handoff {
	h := ipc.Handoff{FD: int32(fd)}
	var sa unix.RawSockaddrAny
	salen := uint32(unix.SizeofSockaddrAny)
	_, _, e := unix.Syscall(unix.SYS_GETPEERNAME, uintptr(fd), uintptr(unsafe.Pointer(&sa)), uintptr(unsafe.Pointer(&salen)))
	if e == 0 && salen <= ipc.MaxAddr {
		h.AddrLen = uint8(salen)
		copy(h.Addr[:], (*[unix.SizeofSockaddrAny]byte)(unsafe.Pointer(&sa))[:salen])
	}
	return h
}

// recv receives from ch, failing the test after waitTimeout.
func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(waitTimeout):
		t.Fatalf("timed out waiting for %s", what)
	}
	var zero T
	return zero
}

// install makes fm's client the package's client, as init does in a
// worker process, for the tests of the exported functions. Such tests
// must not be parallel.
func (fm *fakeMaster) install(t *testing.T) {
	t.Helper()
	if client != nil {
		t.Fatal("a client is already installed")
	}
	client = fm.c
	t.Cleanup(func() { client = nil })
}

// dupFD returns a close-on-exec dup of c's fd, which the caller owns,
// without Fd(), which would make the socket blocking.
func dupFD(c syscall.Conn) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	nfd := -1
	var derr error
	if err := rc.Control(func(fd uintptr) {
		nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, os.NewSyscallError("fcntl", derr)
	}
	return nfd, nil
}

// serverFD accepts one connection on ln and returns a dup of its fd, as
// the master's accept4 would; the accepted net.Conn is closed.
func serverFD(ln net.Listener) (int, error) {
	sc, err := ln.Accept()
	if err != nil {
		return -1, err
	}
	defer sc.Close()
	return dupFD(sc.(syscall.Conn))
}

// connect dials ln and returns the client's end and the fd of the
// server's end, which the caller owns.
func connect(ln net.Listener) (net.Conn, int, error) {
	cc, err := net.DialTimeout(ln.Addr().Network(), ln.Addr().String(), waitTimeout)
	if err != nil {
		return nil, -1, err
	}
	fd, err := serverFD(ln)
	if err != nil {
		_ = cc.Close()
		return nil, -1, err
	}
	return cc, fd, nil
}

// listening starts a fake master and a listener of the worker on a
// listener of the master's on network, which it returns too.
func listening(t *testing.T, network string) (net.Listener, *fakeMaster, *Listener) {
	t.Helper()
	ln := masterListener(t, network)
	fm := startMaster(t)
	return ln, fm, fm.listen(t, network, ln.Addr().String())
}

// acceptOnce accepts once from l on a goroutine of its own, closes the
// conn if there is one, and sends Accept's error.
func acceptOnce(l net.Listener) <-chan error {
	errc := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if c != nil {
			_ = c.Close()
		}
		errc <- err
	}()
	return errc
}

// handOffNew connects n clients to ln and hands their server ends off to
// the worker on listener lid, as the master would; Cleanup closes the
// clients, which it returns.
func (fm *fakeMaster) handOffNew(t *testing.T, ln net.Listener, lid uint32, n int) []net.Conn {
	t.Helper()
	clients, fds := connectN(t, ln, n)
	if err := fm.handoff(lid, fds); err != nil {
		t.Fatal(err)
	}
	return clients
}

// connectN opens n connections to ln; Cleanup closes the client ends.
func connectN(t *testing.T, ln net.Listener, n int) ([]net.Conn, []int) {
	t.Helper()
	clients := make([]net.Conn, 0, n)
	fds := make([]int, 0, n)
	t.Cleanup(func() {
		for _, c := range clients {
			_ = c.Close()
		}
	})
	for range n {
		cc, fd, err := connect(ln)
		if err != nil {
			fdtest.Close(fds)
			t.Fatal(err)
		}
		clients = append(clients, cc)
		fds = append(fds, fd)
	}
	return clients, fds
}

// tcpListener is a real loopback listener standing in for the master's.
func tcpListener(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	return ln
}

// acceptN accepts n conns from l; Cleanup closes them.
func acceptN(t *testing.T, l *Listener, n int) []net.Conn {
	t.Helper()
	conns := make([]net.Conn, 0, n)
	t.Cleanup(func() {
		for _, c := range conns {
			_ = c.Close()
		}
	})
	for range n {
		c, err := l.Accept()
		if err != nil {
			t.Fatalf("accept: %v", err)
		}
		conns = append(conns, c)
	}
	return conns
}

// drained reads ch until it is closed, and reports false if that takes
// longer than waitTimeout.
func drained[T any](ch <-chan T) bool {
	timeout := time.After(waitTimeout)
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return true
			}
		case <-timeout:
			return false
		}
	}
}

// expectEOF checks that each client reads end of stream: the last copy of
// the server end's fd was closed.
func expectEOF(t *testing.T, clients ...net.Conn) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for i, c := range clients {
		_ = c.SetReadDeadline(deadline)
		if n, err := c.Read(make([]byte, 1)); err != io.EOF {
			t.Errorf("client %d: read %d bytes, %v; want EOF", i, n, err)
		}
	}
}

// isClosed reports whether err says the listener or conn was closed.
func isClosed(err error) bool {
	var op *net.OpError
	return errors.Is(err, net.ErrClosed) && errors.As(err, &op)
}
