//go:build linux

package worker

import (
	"encoding/binary"
	"fmt"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/ipc"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
)

// The input of FuzzWorkerControl is a sequence of ops, each
//
//	h      1 byte
//	n      2 bytes, little-endian
//	frame  n bytes, cut short at the end of the input
//
// The frame is written raw, as one message, with h&3 fds attached (3
// means none). Bits 2-3 and 4-5 of h choose each fd (see fdKind). With
// bit 6 set the frame goes on the input's conns socket, the one that
// fdConns attaches, instead of the control socket. An empty frame is
// skipped: no peer sends one, and it reads as end of stream. With bit 7
// set the op is a sync instead and its frame is ignored: the test waits
// until the worker has read every frame before and the application has
// accepted every conn queued. balancer's FuzzMasterControl reads the same
// format, but for bits 6 and 7.
const maxFuzzOps = 256

// fdKind is what an fd attached to a fuzzed frame refers to.
type fdKind uint8

const (
	fdPipe  fdKind = iota // the write end of a pipe, checked for EOF
	fdTCP                 // a connected loopback TCP socket
	fdUnix                // a connected Unix stream socket
	fdConns               // the worker's end of the input's conns socket
)

type fuzzOp struct {
	h     byte
	frame []byte
}

// Bits of an op's h.
const (
	opConns = 0x40 // the frame goes on the conns socket
	opSync  = 0x80 // a sync, not a frame
)

var syncOp = fuzzOp{h: opSync}

// kinds returns what each fd of the op's frame is.
func (op fuzzOp) kinds() []fdKind {
	n := int(op.h&3) % 3
	k := make([]fdKind, n)
	for i := range k {
		k[i] = fdKind(op.h >> (2 + 2*i) & 3)
	}
	return k
}

func parseOps(in []byte) []fuzzOp {
	var ops []fuzzOp
	for len(in) >= 3 && len(ops) < maxFuzzOps {
		h, n := in[0], int(binary.LittleEndian.Uint16(in[1:3]))
		in = in[3:]
		n = min(n, len(in))
		ops = append(ops, fuzzOp{h: h, frame: in[:n]})
		in = in[n:]
	}
	return ops
}

// fuzzInput encodes ops for f.Add.
func fuzzInput(ops ...fuzzOp) []byte {
	var b []byte
	for _, op := range ops {
		b = append(b, op.h)
		b = binary.LittleEndian.AppendUint16(b, uint16(len(op.frame)))
		b = append(b, op.frame...)
	}
	return b
}

// withFDs is an op sending frame with fds of the given kinds, at most 2.
func withFDs(frame []byte, kinds ...fdKind) fuzzOp {
	h := byte(len(kinds))
	for i, k := range kinds {
		h |= byte(k) << (2 + 2*i)
	}
	return fuzzOp{h: h, frame: frame}
}

// fdSource holds the sockets whose fds fuzzed frames carry, for the whole
// fuzz run. Every frame carries its own copy, which the receiver owns.
type fdSource struct {
	tcp  int // the server end of a loopback TCP connection
	unix int // one end of a Unix stream socketpair
}

func newFDSource(f *testing.F) *fdSource {
	f.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	defer ln.Close()
	client, fd, err := connect(ln)
	if err != nil {
		f.Fatal(err)
	}
	_ = client.(*net.TCPConn).SetLinger(0)
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		_ = client.Close()
		closeFDs([]int{fd})
		f.Fatal(err)
	}
	f.Cleanup(func() {
		_ = client.Close()
		closeFDs([]int{fd, sp[0], sp[1]})
	})
	return &fdSource{tcp: fd, unix: sp[0]}
}

// fds returns the fds to attach to op's frame; pipe is this input's pipe
// and conns the worker's end of its conns socket. A frame on the conns
// socket carries the pipe instead of the socket itself: a socket in its
// own queue is freed only by the kernel's garbage collector, later.
// The caller keeps ownership: the kernel gives the receiver copies.
func (s *fdSource) fds(op fuzzOp, pipe, conns int) []int {
	var fds []int
	for _, k := range op.kinds() {
		switch {
		case k == fdTCP:
			fds = append(fds, s.tcp)
		case k == fdUnix:
			fds = append(fds, s.unix)
		case k == fdConns && op.h&opConns == 0:
			fds = append(fds, conns)
		default:
			fds = append(fds, pipe)
		}
	}
	return fds
}

// fuzzConns is the input's conns socket: the master's sending end, and
// the worker's end that ListenReply frames carry.
type fuzzConns struct{ send, recv int }

func newFuzzConns(t *testing.T) *fuzzConns {
	t.Helper()
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		t.Fatalf("socketpair: %v", err)
	}
	c := &fuzzConns{send: sp[0], recv: sp[1]}
	t.Cleanup(c.close)
	return c
}

// write sends one frame without waiting; a full socket drops it, as the
// master would send it elsewhere.
func (c *fuzzConns) write(t *testing.T, frame []byte, fds []int) {
	t.Helper()
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if err := unix.Sendmsg(c.send, frame, oob, nil, unix.MSG_DONTWAIT); err != nil && err != unix.EAGAIN {
		t.Fatalf("writing a %d-byte frame on the conns socket: %v", len(frame), err)
	}
}

// unread returns the length of the next frame the worker has not read.
func (c *fuzzConns) unread() int {
	n, err := unix.IoctlGetInt(c.recv, unix.SIOCINQ)
	if err != nil {
		return 0
	}
	return n
}

func (c *fuzzConns) close() {
	if c.send >= 0 {
		closeFDs([]int{c.send, c.recv})
		c.send, c.recv = -1, -1
	}
}

// fuzzPipe is a pipe whose write end goes out with fuzzed frames: once
// every copy is closed, the empty pipe reads EOF instead of EAGAIN.
type fuzzPipe struct{ r, w int }

func newFuzzPipe(t *testing.T) *fuzzPipe {
	t.Helper()
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		t.Fatalf("pipe2: %v", err)
	}
	fp := &fuzzPipe{r: p[0], w: p[1]}
	t.Cleanup(func() { fp.closeW(); fp.closeR() })
	return fp
}

func (p *fuzzPipe) closeW() {
	if p.w >= 0 {
		_ = unix.Close(p.w)
		p.w = -1
	}
}

func (p *fuzzPipe) closeR() {
	if p.r >= 0 {
		_ = unix.Close(p.r)
		p.r = -1
	}
}

// hasWriters reports whether a copy of the write end is still open.
func (p *fuzzPipe) hasWriters() bool {
	var b [1]byte
	_, err := unix.Read(p.r, b[:])
	return err == unix.EAGAIN
}

// assertNoWriters checks that no copy of the write end is left open, in
// this process or in flight.
func (p *fuzzPipe) assertNoWriters(t *testing.T) {
	t.Helper()
	var b [1]byte
	n, err := unix.Read(p.r, b[:])
	switch {
	case err == nil && n == 0:
	case err == unix.EAGAIN:
		t.Errorf("a copy of the pipe's write end is still open: an fd was leaked")
	default:
		t.Errorf("read pipe: n=%d err=%v", n, err)
	}
}

// fuzzListens are the worker.Listen calls pending when the input starts:
// their requests are 1 and 2, and the input's ListenReply frames answer
// them, or not.
var fuzzListens = [...][2]string{{"tcp", "127.0.0.1:0"}, {"unix", "/run/handoff-fuzz.sock"}}

// workerSeeds are valid frame sequences, one per case the worker handles,
// and the junk a broken master might send.
func workerSeeds() [][]byte {
	reply := func(req, lid uint32, addr string) fuzzOp {
		return withFDs(ipc.AppendListenReply(nil, req, lid, 0, addr, "", ""), fdConns)
	}
	// conns is a Conns frame on the conns socket, with no client address
	// but for fdTCP's, which carries a raw sockaddr_in.
	conns := func(kinds ...fdKind) fuzzOp {
		hs := make([]ipc.Handoff, len(kinds))
		for i, k := range kinds {
			if k == fdTCP {
				hs[i].AddrLen = unix.SizeofSockaddrInet4
				binary.NativeEndian.PutUint16(hs[i].Addr[:], unix.AF_INET)
				binary.BigEndian.PutUint16(hs[i].Addr[2:], 4321)
				copy(hs[i].Addr[4:], []byte{127, 0, 0, 1})
			}
		}
		op := withFDs(ipc.AppendConns(nil, 1, hs), kinds...)
		op.h |= opConns
		return op
	}
	onConns := func(op fuzzOp) fuzzOp { op.h |= opConns; return op }
	user := func(flags uint16, payload string) fuzzOp {
		return withFDs(append([]byte{ipc.Version, byte(ipc.KindUser), byte(flags), byte(flags >> 8)}, payload...))
	}
	disconnect := withFDs(ipc.AppendDisconnect(nil))
	ping := withFDs(ipc.AppendPing(nil))
	return [][]byte{
		// Both listens succeed; conns of every kind are read, accepted
		// and closed; a message; a ping; Disconnect drains, and what
		// comes after it goes back or stays unread.
		fuzzInput(reply(1, 1, "127.0.0.1:8080"), reply(2, 2, "/run/handoff-fuzz.sock"),
			conns(fdPipe), conns(fdTCP, fdUnix), user(0, `{"hello":1}`), ping, syncOp,
			conns(fdTCP, fdPipe), disconnect, conns(fdTCP)),
		// A wildcard listener; frames without a listen.
		fuzzInput(conns(fdPipe, fdPipe), reply(1, 3, "0.0.0.0:1"), reply(2, 4, "[::]:1"),
			conns(), syncOp, conns(fdTCP), ping, ping),
		// Failed listens; a fragmented message.
		fuzzInput(withFDs(ipc.AppendListenReply(nil, 1, 0, uint32(syscall.EADDRINUSE), "127.0.0.1:80", "bind", "address already in use")),
			withFDs(ipc.AppendListenReply(nil, 2, 0, 0, "", "", "no such thing")),
			user(ipc.FlagMore, `{"a":`), user(ipc.FlagMore, `"b"`), user(0, `}`)),
		// One listener id twice; a reply to no request; two Disconnects.
		fuzzInput(reply(1, 5, "127.0.0.1:1"), reply(2, 5, "127.0.0.1:2"), reply(7, 6, "x"),
			conns(fdPipe, fdTCP), syncOp, conns(fdUnix), disconnect, disconnect),
		// A success without its conns socket, or with something else;
		// a failure with an fd.
		fuzzInput(withFDs(ipc.AppendListenReply(nil, 1, 1, 0, "127.0.0.1:1", "", "")),
			withFDs(ipc.AppendListenReply(nil, 1, 1, 0, "127.0.0.1:1", "", ""), fdPipe),
			withFDs(ipc.AppendListenReply(nil, 2, 2, 0, "127.0.0.1:1", "", ""), fdUnix),
			withFDs(ipc.AppendListenReply(nil, 2, 0, 0, "", "", "no"), fdConns)),
		// Frames a master never sends, and wrong fd counts, on both
		// sockets.
		fuzzInput(reply(1, 1, "127.0.0.1:1"),
			withFDs(ipc.AppendReturn(nil, 1, 1), fdPipe), withFDs(ipc.AppendReturn(nil, 1, 0)),
			withFDs(ipc.AppendPong(nil)), withFDs(ipc.AppendHello(nil, 1)),
			withFDs(ipc.AppendListen(nil, 1, "tcp", ":0")),
			withFDs(ipc.AppendConns(nil, 1, make([]ipc.Handoff, 1)), fdTCP),
			onConns(withFDs(ipc.AppendConns(nil, 1, make([]ipc.Handoff, 2)), fdPipe)),
			onConns(withFDs(ipc.AppendConns(nil, 1, nil), fdPipe)),
			onConns(withFDs(ipc.AppendReturn(nil, 1, 1), fdPipe)),
			onConns(withFDs(ipc.AppendPing(nil))),
			user(0, "not json"), withFDs(ipc.AppendDisconnect(nil), fdUnix), syncOp, conns(fdTCP)),
		// A frame inside a fragmented message drops both.
		fuzzInput(reply(1, 1, "127.0.0.1:1"), user(ipc.FlagMore, `{"a":`),
			ping, user(0, `1}`), user(0, `2`),
			user(ipc.FlagMore, `{"b":`), syncOp, conns(fdTCP), syncOp),
		// Junk.
		fuzzInput(withFDs([]byte{ipc.Version + 1, byte(ipc.KindListenReply), 0, 0}, fdConns),
			withFDs([]byte{ipc.Version, 200, 0, 0}, fdTCP, fdUnix),
			withFDs([]byte{ipc.Version}), withFDs([]byte{ipc.Version, byte(ipc.KindListenReply), 0, 0, 1}),
			withFDs(append(ipc.AppendPing(nil), 0), fdPipe),
			reply(2, 2, "127.0.0.1:2"),
			onConns(withFDs([]byte{ipc.Version, byte(ipc.KindConns), 0, 0}, fdPipe)),
			onConns(withFDs(append(ipc.AppendConns(nil, 1, make([]ipc.Handoff, 1)), 0), fdPipe))),
		{0x02, 0xff, 0xff, ipc.Version, byte(ipc.KindListenReply)},
		{},
	}
}

// FuzzWorkerControl feeds the input's frames, with real fds attached, to
// a controlClient's readLoop through the fake master's end of the control
// socket, and to its listeners through the input's conns socket, while
// two listen calls wait for replies and every listener the input creates
// is accepted from and closed. Then the master's end closes, and so do the
// master's ends of the conns socket. The readLoop must not panic and must
// end; every fd the worker received must be closed by then: queued ones
// when its listeners closed, returned ones by the fake master, accepted
// ones by the acceptor, unread ones with the conns socket. The pipe
// reading EOF proves it for the pipe's copies, and the open fd count,
// taken before and after each input, for all of them; goleak, for the
// goroutines.
func FuzzWorkerControl(f *testing.F) {
	for _, seed := range workerSeeds() {
		f.Add(seed)
	}
	src := newFDSource(f)
	f.Fuzz(func(t *testing.T, in []byte) {
		ops := parseOps(in)
		before := fdCount(t)
		p := newFuzzPipe(t)
		cs := newFuzzConns(t)
		fm := startMaster(t)
		fm.mu.Lock()
		fm.onListen = func(string, string) listenAnswer { return listenAnswer{hold: true} }
		fm.mu.Unlock()

		var g errgroup.Group
		for i, a := range fuzzListens {
			g.Go(func() error {
				ln, err := fm.c.listen(a[0], a[1], false)
				if err != nil {
					return nil // refused by the input, or the master went away
				}
				return acceptAndClose(ln)
			})
			// One at a time, so that request i+1 is fuzzListens[i].
			fm.wait(t, "the listen request", func() bool { return len(fm.listens) == i+1 })
		}

		for i, op := range ops {
			switch {
			case op.h&opSync != 0:
				fm.syncInput(t, i, cs)
			case len(op.frame) == 0:
			case op.h&opConns != 0:
				cs.write(t, op.frame, src.fds(op, p.w, cs.recv))
			default:
				if err := fm.ctl.WriteFrame(op.frame, src.fds(op, p.w, cs.recv)); err != nil {
					t.Fatalf("writing a %d-byte frame: %v", len(op.frame), err)
				}
			}
		}
		p.closeW()
		fm.stop(t)
		// The master's ends of the conns socket go, and with them what
		// the worker never read.
		cs.close()
		if err := g.Wait(); err != nil {
			t.Error(err)
		}
		// A listener that a Disconnect frame drains closes on a goroutine
		// of its own, which may still be handing its queue back: allow it
		// a moment. p.r is the one fd open now that was not before.
		deadline := time.Now().Add(2 * drainTimeout)
		for (p.hasWriters() || fdCount(t) != before+1) && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		p.assertNoWriters(t)
		p.closeR()
		if after := fdCount(t); after != before {
			t.Errorf("open fds: %d before, %d after", before, after)
		}
	})
}

// syncInput waits until the worker has read every frame written so far,
// on the control socket and, while a listener is open, on the conns
// socket, and every listener's queue is empty. The first of two messages
// ends any fragmented message the input left open; the second then
// arrives alone.
func (fm *fakeMaster) syncInput(t *testing.T, n int, cs *fuzzConns) {
	t.Helper()
	tag := fmt.Sprintf(`{"fuzz-sync":%d}`, n)
	frame := append([]byte{ipc.Version, byte(ipc.KindUser), 0, 0}, tag...)
	for range 2 {
		if err := fm.ctl.WriteFrame(frame, nil); err != nil {
			t.Fatalf("sync: %v", err)
		}
	}
	timeout := time.After(waitTimeout)
	for done := false; !done; {
		select {
		case m := <-fm.c.inbox.channel():
			done = string(m) == tag
		case <-timeout:
			t.Fatalf("sync %d: the worker did not read its frames", n)
		}
	}
	for !fm.queuesEmpty() || (fm.listening() && cs.unread() > 0) {
		select {
		case <-timeout:
			t.Fatalf("sync %d: queued conns were not accepted", n)
		case <-time.After(100 * time.Microsecond):
		}
	}
}

// queuesEmpty reports whether every listener's queue is empty.
func (fm *fakeMaster) queuesEmpty() bool {
	fm.c.mu.Lock()
	ls := make([]*Listener, 0, len(fm.c.listeners))
	for _, l := range fm.c.listeners {
		ls = append(ls, l)
	}
	fm.c.mu.Unlock()
	for _, l := range ls {
		l.mu.Lock()
		empty := l.closed || l.head == len(l.queue)
		l.mu.Unlock()
		if !empty {
			return false
		}
	}
	return true
}

// listening reports whether a listener is open.
func (fm *fakeMaster) listening() bool {
	fm.c.mu.Lock()
	ls := make([]*Listener, 0, len(fm.c.listeners))
	for _, l := range fm.c.listeners {
		ls = append(ls, l)
	}
	fm.c.mu.Unlock()
	for _, l := range ls {
		l.mu.Lock()
		closed := l.closed
		l.mu.Unlock()
		if !closed {
			return true
		}
	}
	return false
}

// acceptAndClose accepts from ln and closes each conn until ln closes.
func acceptAndClose(ln net.Listener) error {
	for {
		c, err := ln.Accept()
		if isClosed(err) {
			return nil
		}
		if err != nil {
			continue
		}
		if _, ok := c.(*Conn); !ok {
			_ = c.Close()
			return fmt.Errorf("accepted a %T", c)
		}
		if err := c.Close(); err != nil {
			return fmt.Errorf("closing an accepted conn: %w", err)
		}
	}
}
