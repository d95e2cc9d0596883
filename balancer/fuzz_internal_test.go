//go:build linux

package balancer

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/fdtest"
	"github.com/handoff-go/handoff/internal/fuzzctl"
	"github.com/handoff-go/handoff/ipc"
	"github.com/handoff-go/handoff/scm"
	"golang.org/x/sys/unix"
)

// The input of FuzzMasterControl is a sequence of fuzzctl ops: each frame
// is written raw, as one message from the worker. An empty frame is
// skipped: no worker sends one, and it reads as end of stream. With bit 7
// of h set the op is a connect instead: once the master has read every
// frame before, a client connects to one of its listeners, frame[0]
// choosing which, and the test waits until the master has accepted and
// dispatched the conn, to this worker if it can take it. worker's
// FuzzWorkerControl reads the same format, but for bit 7.
const opConnect = 0x80

// connectOp connects a client to the master's listener i, counting from 0
// in the order they were opened.
func connectOp(i byte) fuzzctl.Op { return fuzzctl.Op{H: opConnect, Frame: []byte{i}} }

// fuzzWait bounds every wait for the master in FuzzMasterControl.
const fuzzWait = 10 * time.Second

// fuzzMaster is a balancer with one worker forked by forkWith, whose
// process is a harmless "sleep 60" and whose control socket's other end
// is the test's: the test plays the worker. A new balancer and
// process for each input keep inputs apart; the exec costs well under a
// millisecond.
type fuzzMaster struct {
	b    *Balancer
	w    *Worker
	peer *scm.Conn // the worker's end, written raw

	peerDone chan struct{} // closed when read returns
	mu       sync.Mutex
	replied  chan struct{} // a token after each ListenReply
	answered uint32        // the highest sync request answered
	held     []int         // fds the master sent: conns sockets of its replies
	bad      []error       // frames the master got wrong
	syncs    uint32        // the sync requests made: the next one's id is syncReqs+syncs+1
	clients  []net.Conn    // the clients connect made, closed by stop
}

// startFuzzMaster starts a balancer and its worker. The worker is on
// a retired slot, so its death is never followed by a restart, which
// would fork the test binary.
func startFuzzMaster(t *testing.T) *fuzzMaster {
	t.Helper()
	b, err := New(Options{OnEvent: func(Event) {}})
	if err != nil {
		t.Fatal(err)
	}
	fm := &fuzzMaster{b: b, peerDone: make(chan struct{}), replied: make(chan struct{}, 1)}
	t.Cleanup(func() { fm.stop(t) })

	w, err := b.forkWith(&slot{retired: true}, func(int, *slot) (*exec.Cmd, *ipc.Conn, *ipc.Page, error) {
		ctl, remote, err := ipc.Socketpair()
		if err != nil {
			return nil, nil, nil, err
		}
		cmd := exec.Command("sleep", "60")
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			_ = ctl.Close()
			_ = remote.Close()
			return nil, nil, nil, err
		}
		fd, err := unix.FcntlInt(fdOf(remote), unix.F_DUPFD_CLOEXEC, 0)
		_ = remote.Close()
		if err == nil {
			fm.peer, err = scm.NewConn(fd) // takes ownership of fd
		}
		if err != nil {
			_ = ctl.Close()
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			return nil, nil, nil, err
		}
		go fm.read()
		return cmd, ctl, nil, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	fm.w = w
	return fm
}

// read plays the worker's reader: it keeps the fds the master hands off
// until the end, as a worker that never accepts them would.
func (fm *fuzzMaster) read() {
	defer close(fm.peerDone)
	c := ipc.NewConn(fm.peer)
	var m ipc.Message
	for {
		fds, err := c.Read(&m)
		if err != nil {
			if ipc.IsProtocolError(err) || errors.Is(err, ipc.ErrFDsLost) {
				fm.mu.Lock()
				fm.bad = append(fm.bad, err)
				fm.mu.Unlock()
				continue
			}
			return
		}
		fm.mu.Lock()
		fm.held = append(fm.held, fds...)
		switch m.Kind {
		case ipc.KindDisconnect, ipc.KindUser, ipc.KindPing:
		case ipc.KindListenReply:
			if m.Req >= syncReqs {
				fm.answered = max(fm.answered, m.Req)
			}
			select {
			case fm.replied <- struct{}{}:
			default:
			}
		default:
			fm.bad = append(fm.bad, fmt.Errorf("the master sent a %s frame", m.Kind))
		}
		fm.mu.Unlock()
	}
}

// write sends one raw frame. It fails once the master has closed its end,
// after the worker died: the frame is then lost, as it would be.
func (fm *fuzzMaster) write(frame []byte, fds []int) {
	_ = fm.peer.WriteMsg(frame, fds)
}

// syncReqs is the first Listen request id of sync.
const syncReqs = 0xfff00000

// sync waits until the master has read every frame written so far: a
// Listen for a network that does not exist is answered at once, in order.
func (fm *fuzzMaster) sync(t *testing.T) {
	t.Helper()
	fm.syncs++
	req := syncReqs + fm.syncs
	fm.write(ipc.AppendListen(nil, req, "fuzz-sync", ""), nil)
	timeout := time.After(fuzzWait)
	for {
		fm.mu.Lock()
		done := fm.answered >= req
		fm.mu.Unlock()
		if done {
			return
		}
		select {
		case <-fm.replied:
		case <-fm.peerDone:
			return // the master closed its end: the worker is dead
		case <-timeout:
			t.Fatalf("the master did not answer Listen request %#x", req)
		}
	}
}

// connect connects a client to the master's listener i (mod their
// number), if it has any, and waits until the master has accepted the
// conn: dispatched it, queued it or closed it.
func (fm *fuzzMaster) connect(t *testing.T, i int) {
	t.Helper()
	fm.sync(t)
	b := fm.b
	b.mu.Lock()
	ls := append([]*listener(nil), b.listeners...)
	accepted := b.stats.accepted
	b.mu.Unlock()
	if len(ls) == 0 {
		return
	}
	l := ls[i%len(ls)]
	network := "tcp"
	if l.network == "unix" {
		network = "unix"
	}
	c, err := net.DialTimeout(network, l.bound.String(), fuzzWait)
	if err != nil {
		return // bound, but not to be reached: 0.0.0.0 or a multicast address
	}
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0) // no TIME_WAIT: fuzzing makes many
	}
	fm.clients = append(fm.clients, c)
	deadline := time.Now().Add(fuzzWait)
	for {
		b.mu.Lock()
		done := b.stats.accepted > accepted
		b.mu.Unlock()
		if done {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the master did not accept a conn on %s", l.bound)
		}
		time.Sleep(50 * time.Microsecond)
	}
}

// stop ends the worker as a crash would: its process dies and its end of
// the control socket closes. Then the balancer shuts down, which reaps the
// process, and stop closes what the test held. It is safe to call twice.
func (fm *fuzzMaster) stop(t *testing.T) {
	t.Helper()
	if fm.w != nil {
		_ = fm.w.Kill(syscall.SIGKILL)
	}
	if fm.peer != nil {
		_ = fm.peer.Close()
		select {
		case <-fm.peerDone:
		case <-time.After(fuzzWait):
			t.Errorf("the worker's reader did not end")
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), fuzzWait)
	defer cancel()
	if err := fm.b.Shutdown(ctx); err != nil {
		t.Errorf("shutdown: %v", err)
	}
	fm.mu.Lock()
	defer fm.mu.Unlock()
	for _, fd := range fm.held {
		closeFD(fd)
	}
	fm.held = nil
	for _, c := range fm.clients {
		_ = c.Close()
	}
	fm.clients = nil
	if len(fm.bad) > 0 {
		t.Errorf("the master broke the protocol: %v", fm.bad)
		fm.bad = nil
	}
}

// checkGoroutines waits until no more goroutines run than the n before
// the input. It counts rather than calling goleak, whose stack parsing
// would feed the fuzzer coverage that varies from run to run.
func checkGoroutines(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(fuzzWait)
	for runtime.NumGoroutine() > n {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Errorf("%d goroutines before the input, %d after:\n%s", n, runtime.NumGoroutine(), buf)
			return
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// tameListen rewrites a Listen frame whose address would make the master
// bind a fixed port, create a socket file outside dir or look a name up
// in the DNS: fuzzing must not disturb the host. Such an address becomes
// one on an ephemeral port, or in dir; every other frame is left as is.
func tameListen(frame []byte, dir string) []byte {
	var m ipc.Message
	if ipc.Decode(frame, &m) != nil || m.Kind != ipc.KindListen {
		return frame
	}
	addr := m.Address
	switch m.Network {
	case "unix":
		if addr != "" && !strings.HasPrefix(addr, "@") { // not abstract
			addr = filepath.Join(dir, strconv.FormatUint(uint64(crc32.ChecksumIEEE([]byte(addr))), 36))
		}
	case "", "tcp", "tcp4", "tcp6":
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			break // refused before any lookup
		}
		if _, err := netip.ParseAddr(host); err != nil && host != "" {
			host = "127.0.0.1"
		}
		if n, err := strconv.ParseUint(port, 10, 64); port != "" && (err != nil || n <= 65535) {
			port = "0" // an invalid number is kept: it fails at once
		}
		addr = net.JoinHostPort(host, port)
	}
	if addr == m.Address {
		return frame
	}
	return ipc.AppendListen(nil, m.Req, m.Network, addr)
}

// masterSeeds are valid frame sequences, one per case the master
// handles, and the junk a hostile worker might send.
func masterSeeds() [][]byte {
	hello := fuzzctl.WithFDs(ipc.AppendHello(nil, 1))
	listen := func(req uint32, network, address string) fuzzctl.Op {
		return fuzzctl.WithFDs(ipc.AppendListen(nil, req, network, address))
	}
	ret := func(lid uint32, n int, kinds ...fuzzctl.Kind) fuzzctl.Op {
		return fuzzctl.WithFDs(ipc.AppendReturn(nil, lid, n), kinds...)
	}
	pong := fuzzctl.WithFDs(ipc.AppendPong(nil))
	user := func(flags uint16, payload string) fuzzctl.Op {
		return fuzzctl.WithFDs(append([]byte{ipc.Version, byte(ipc.KindUser), byte(flags), byte(flags >> 8)}, payload...))
	}
	return [][]byte{
		// A worker's life: hello, listen, take conns, send a message,
		// answer a ping, stop listening and hand one back.
		fuzzctl.Input(hello, listen(1, "tcp", "127.0.0.1:0"), connectOp(0), connectOp(0),
			user(0, `{"requests":1}`), pong, ret(1, 1, fuzzctl.TCP), connectOp(0)),
		// Two listeners, one shared by two requests; an unlisten with
		// nothing to return.
		fuzzctl.Input(hello, listen(1, "unix", "/run/handoff.sock"), listen(2, "tcp", "127.0.0.1:0"),
			listen(3, "tcp", "127.0.0.1:0"), connectOp(0), connectOp(1),
			ret(2, 0), connectOp(1), ret(1, 1, fuzzctl.Unix), connectOp(0)),
		// Unread conns go to no one when the worker dies.
		fuzzctl.Input(hello, listen(1, "tcp4", "127.0.0.1:0"), connectOp(0), connectOp(0), connectOp(0)),
		// Nonsense listens.
		fuzzctl.Input(listen(1, "udp", ":53"), listen(2, "tcp", "no-port"), listen(3, "tcp", "127.0.0.1:99999"),
			listen(4, "unix", "@handoff-fuzz"), listen(5, "tcp", "host.invalid:80"), listen(6, "", ":0"),
			listen(7, "tcp6", "[::1]:0"), listen(8, "unix", ""), listen(9, "tcp", "[fe80::1%lo]:0"),
			listen(10, "tcp", "1.2.3.4:0"), connectOp(1), connectOp(2)),
		// Returns of fds that are not the listener's conns, or for no
		// listener, and pongs nobody asked for.
		fuzzctl.Input(hello, listen(1, "tcp", "127.0.0.1:0"), connectOp(0), pong, pong,
			ret(9, 1, fuzzctl.TCP), ret(1, 2, fuzzctl.Pipe, fuzzctl.Pipe), ret(0, 1, fuzzctl.Unix), ret(1, 1, fuzzctl.TCP)),
		// Protocol errors: the worker is killed, and its frames after
		// that are read until it is gone.
		fuzzctl.Input(hello, listen(1, "tcp", "127.0.0.1:0"), connectOp(0), user(0, "not json"),
			connectOp(0), hello),
		fuzzctl.Input(fuzzctl.WithFDs(ipc.AppendConns(nil, 1, []ipc.Handoff{{}}), fuzzctl.Pipe),
			fuzzctl.WithFDs(ipc.AppendListenReply(nil, 1, 1, 0, "x", "", "")), fuzzctl.WithFDs(ipc.AppendDisconnect(nil), fuzzctl.TCP),
			fuzzctl.WithFDs(ipc.AppendPing(nil)), ret(1, 1), ret(1, 0, fuzzctl.Unix, fuzzctl.Pipe), fuzzctl.WithFDs(ipc.AppendPong(nil), fuzzctl.Pipe)),
		// Fragmented messages, whole and interrupted.
		fuzzctl.Input(hello, user(ipc.FlagMore, `{"a":`), user(ipc.FlagMore, `"b"`), user(0, `}`),
			user(ipc.FlagMore, `{"a":`), hello, user(0, `1}`)),
		// Junk.
		fuzzctl.Input(fuzzctl.WithFDs([]byte{ipc.Version + 1, byte(ipc.KindReturn), 0, 0}, fuzzctl.Pipe),
			fuzzctl.WithFDs([]byte{ipc.Version, 200, 0, 0}, fuzzctl.TCP, fuzzctl.Unix), fuzzctl.WithFDs([]byte{ipc.Version}),
			fuzzctl.WithFDs([]byte{ipc.Version, byte(ipc.KindListen), 0, 0, 1}),
			fuzzctl.WithFDs(append(ipc.AppendReturn(nil, 1, 0), 0), fuzzctl.Pipe)),
		{0x02, 0xff, 0xff, ipc.Version, byte(ipc.KindReturn)},
		{},
	}
}

// FuzzMasterControl writes the input's frames, with real fds attached, to
// the master's readLoop for a worker, and connects clients to the master's
// listeners where the input says, so that the master has real conns to
// hand off, take back and dispatch again. Then the worker's end closes and the balancer shuts
// down. The master must not panic, must stay within the protocol, and
// must leave no fd and no goroutine behind: the pipe reading EOF proves
// that every copy of it the master received was closed, and the open fd
// count and the number of goroutines, before and after each input, cover
// the rest. Each input gets a balancer and a worker process of its own.
func FuzzMasterControl(f *testing.F) {
	for _, seed := range masterSeeds() {
		f.Add(seed)
	}
	src := fuzzctl.NewSource(f)
	dir, err := os.MkdirTemp("", "handoff-fuzz")
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = os.RemoveAll(dir) })
	f.Fuzz(func(t *testing.T, in []byte) {
		ops := fuzzctl.Parse(in)
		goroutines := runtime.NumGoroutine()
		before := fdtest.Count(t)
		p := fdtest.NewPipe(t)
		fm := startFuzzMaster(t)
		for _, op := range ops {
			switch {
			case op.H&opConnect != 0:
				i := 0
				if len(op.Frame) > 0 {
					i = int(op.Frame[0])
				}
				fm.connect(t, i)
			case len(op.Frame) > 0:
				fm.write(tameListen(op.Frame, dir), src.FDs(op, p.W))
			}
		}
		p.CloseW()
		fm.stop(t)
		p.AssertNoWriters(t)
		p.CloseR()
		if after := fdtest.Count(t); after != before {
			t.Errorf("open fds: %d before, %d after", before, after)
		}
		checkGoroutines(t, goroutines)
	})
}
