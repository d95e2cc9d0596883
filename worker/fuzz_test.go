//go:build linux

package worker

import (
	"encoding/binary"
	"fmt"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/fdtest"
	"github.com/handoff-go/handoff/internal/fuzzctl"
	"github.com/handoff-go/handoff/ipc"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
)

// The input of FuzzWorkerControl is a sequence of fuzzctl ops: each frame
// is written raw, as one message from the master. A frame may carry
// fdConns, the worker's end of the input's conns socket, besides the fds
// of fuzzctl.Source. With bit 6 of h set the frame goes on the conns
// socket instead of the control socket. An empty frame is skipped: no
// peer sends one, and it reads as end of stream. With bit 7 set the op is
// a sync instead and its frame is ignored: the test waits until the
// worker has read every frame before and the application has accepted
// every conn queued. balancer's FuzzMasterControl reads the same format,
// but for bits 6 and 7.
const fdConns = fuzzctl.Unix + 1

// Bits of an op's h.
const (
	opConns = 0x40 // the frame goes on the conns socket
	opSync  = 0x80 // a sync, not a frame
)

var syncOp = fuzzctl.Op{H: opSync}

// fuzzFDs returns the fds to attach to op's frame; pipe is this input's
// pipe and conns the worker's end of its conns socket. A frame on the
// conns socket carries the pipe instead of the socket itself: a socket in
// its own queue is freed only by the kernel's garbage collector, later.
// The caller keeps ownership: the kernel gives the receiver copies.
func fuzzFDs(src *fuzzctl.Source, op fuzzctl.Op, pipe, conns int) []int {
	var fds []int
	for _, k := range op.Kinds(int(fdConns) + 1) {
		if k == fdConns && op.H&opConns == 0 {
			fds = append(fds, conns)
		} else {
			fds = append(fds, src.FD(k, pipe))
		}
	}
	return fds
}

// fuzzConns is the input's conns socket: the master's sending end, and
// the worker's end that ListenReply frames carry.
type fuzzConns struct {
	send int // the master's end, which the test writes
	recv int // the worker's end, which ListenReply frames carry
}

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
		fdtest.Close([]int{c.send, c.recv})
		c.send, c.recv = -1, -1
	}
}

// fuzzListens are the worker.Listen calls pending when the input starts:
// their requests are 1 and 2, and the input's ListenReply frames answer
// them, or not.
var fuzzListens = [...][2]string{{"tcp", "127.0.0.1:0"}, {"unix", "/run/handoff-fuzz.sock"}}

// workerSeeds are valid frame sequences, one per case the worker handles,
// and the junk a broken master might send.
func workerSeeds() [][]byte {
	reply := func(req, lid uint32, addr string) fuzzctl.Op {
		return fuzzctl.WithFDs(ipc.AppendListenReply(nil, req, lid, 0, addr, "", ""), fdConns)
	}
	// conns is a Conns frame on the conns socket, with no client address
	// but for fuzzctl.TCP's, which carries a raw sockaddr_in.
	conns := func(kinds ...fuzzctl.Kind) fuzzctl.Op {
		hs := make([]ipc.Handoff, len(kinds))
		for i, k := range kinds {
			if k == fuzzctl.TCP {
				hs[i].AddrLen = unix.SizeofSockaddrInet4
				binary.NativeEndian.PutUint16(hs[i].Addr[:], unix.AF_INET)
				binary.BigEndian.PutUint16(hs[i].Addr[2:], 4321)
				copy(hs[i].Addr[4:], []byte{127, 0, 0, 1})
			}
		}
		op := fuzzctl.WithFDs(ipc.AppendConns(nil, 1, hs), kinds...)
		op.H |= opConns
		return op
	}
	onConns := func(op fuzzctl.Op) fuzzctl.Op { op.H |= opConns; return op }
	user := func(flags uint16, payload string) fuzzctl.Op {
		return fuzzctl.WithFDs(append([]byte{ipc.Version, byte(ipc.KindUser), byte(flags), byte(flags >> 8)}, payload...))
	}
	disconnect := fuzzctl.WithFDs(ipc.AppendDisconnect(nil))
	ping := fuzzctl.WithFDs(ipc.AppendPing(nil))
	return [][]byte{
		// Both listens succeed; conns of every kind are read, accepted
		// and closed; a message; a ping; Disconnect drains, and what
		// comes after it goes back or stays unread.
		fuzzctl.Input(reply(1, 1, "127.0.0.1:8080"), reply(2, 2, "/run/handoff-fuzz.sock"),
			conns(fuzzctl.Pipe), conns(fuzzctl.TCP, fuzzctl.Unix), user(0, `{"hello":1}`), ping, syncOp,
			conns(fuzzctl.TCP, fuzzctl.Pipe), disconnect, conns(fuzzctl.TCP)),
		// A wildcard listener; frames without a listen.
		fuzzctl.Input(conns(fuzzctl.Pipe, fuzzctl.Pipe), reply(1, 3, "0.0.0.0:1"), reply(2, 4, "[::]:1"),
			conns(), syncOp, conns(fuzzctl.TCP), ping, ping),
		// Failed listens; a fragmented message.
		fuzzctl.Input(fuzzctl.WithFDs(ipc.AppendListenReply(nil, 1, 0, uint32(syscall.EADDRINUSE), "127.0.0.1:80", "bind", "address already in use")),
			fuzzctl.WithFDs(ipc.AppendListenReply(nil, 2, 0, 0, "", "", "no such thing")),
			user(ipc.FlagMore, `{"a":`), user(ipc.FlagMore, `"b"`), user(0, `}`)),
		// One listener id twice; a reply to no request; two Disconnects.
		fuzzctl.Input(reply(1, 5, "127.0.0.1:1"), reply(2, 5, "127.0.0.1:2"), reply(7, 6, "x"),
			conns(fuzzctl.Pipe, fuzzctl.TCP), syncOp, conns(fuzzctl.Unix), disconnect, disconnect),
		// A success without its conns socket, or with something else;
		// a failure with an fd.
		fuzzctl.Input(fuzzctl.WithFDs(ipc.AppendListenReply(nil, 1, 1, 0, "127.0.0.1:1", "", "")),
			fuzzctl.WithFDs(ipc.AppendListenReply(nil, 1, 1, 0, "127.0.0.1:1", "", ""), fuzzctl.Pipe),
			fuzzctl.WithFDs(ipc.AppendListenReply(nil, 2, 2, 0, "127.0.0.1:1", "", ""), fuzzctl.Unix),
			fuzzctl.WithFDs(ipc.AppendListenReply(nil, 2, 0, 0, "", "", "no"), fdConns)),
		// Frames a master never sends, and wrong fd counts, on both
		// sockets.
		fuzzctl.Input(reply(1, 1, "127.0.0.1:1"),
			fuzzctl.WithFDs(ipc.AppendReturn(nil, 1, 1), fuzzctl.Pipe), fuzzctl.WithFDs(ipc.AppendReturn(nil, 1, 0)),
			fuzzctl.WithFDs(ipc.AppendPong(nil)), fuzzctl.WithFDs(ipc.AppendHello(nil, 1)),
			fuzzctl.WithFDs(ipc.AppendListen(nil, 1, "tcp", ":0")),
			fuzzctl.WithFDs(ipc.AppendConns(nil, 1, make([]ipc.Handoff, 1)), fuzzctl.TCP),
			onConns(fuzzctl.WithFDs(ipc.AppendConns(nil, 1, make([]ipc.Handoff, 2)), fuzzctl.Pipe)),
			onConns(fuzzctl.WithFDs(ipc.AppendConns(nil, 1, nil), fuzzctl.Pipe)),
			onConns(fuzzctl.WithFDs(ipc.AppendReturn(nil, 1, 1), fuzzctl.Pipe)),
			onConns(fuzzctl.WithFDs(ipc.AppendPing(nil))),
			user(0, "not json"), fuzzctl.WithFDs(ipc.AppendDisconnect(nil), fuzzctl.Unix), syncOp, conns(fuzzctl.TCP)),
		// A frame inside a fragmented message drops both.
		fuzzctl.Input(reply(1, 1, "127.0.0.1:1"), user(ipc.FlagMore, `{"a":`),
			ping, user(0, `1}`), user(0, `2`),
			user(ipc.FlagMore, `{"b":`), syncOp, conns(fuzzctl.TCP), syncOp),
		// Junk.
		fuzzctl.Input(fuzzctl.WithFDs([]byte{ipc.Version + 1, byte(ipc.KindListenReply), 0, 0}, fdConns),
			fuzzctl.WithFDs([]byte{ipc.Version, 200, 0, 0}, fuzzctl.TCP, fuzzctl.Unix),
			fuzzctl.WithFDs([]byte{ipc.Version}), fuzzctl.WithFDs([]byte{ipc.Version, byte(ipc.KindListenReply), 0, 0, 1}),
			fuzzctl.WithFDs(append(ipc.AppendPing(nil), 0), fuzzctl.Pipe),
			reply(2, 2, "127.0.0.1:2"),
			onConns(fuzzctl.WithFDs([]byte{ipc.Version, byte(ipc.KindConns), 0, 0}, fuzzctl.Pipe)),
			onConns(fuzzctl.WithFDs(append(ipc.AppendConns(nil, 1, make([]ipc.Handoff, 1)), 0), fuzzctl.Pipe))),
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
	src := fuzzctl.NewSource(f)
	f.Fuzz(func(t *testing.T, in []byte) {
		ops := fuzzctl.Parse(in)
		before := fdtest.Count(t)
		p := fdtest.NewPipe(t)
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
			case op.H&opSync != 0:
				fm.syncInput(t, i, cs)
			case len(op.Frame) == 0:
			case op.H&opConns != 0:
				cs.write(t, op.Frame, fuzzFDs(src, op, p.W, cs.recv))
			default:
				if err := fm.ctl.WriteFrame(op.Frame, fuzzFDs(src, op, p.W, cs.recv)); err != nil {
					t.Fatalf("writing a %d-byte frame: %v", len(op.Frame), err)
				}
			}
		}
		p.CloseW()
		fm.stop(t)
		// The master's ends of the conns socket go, and with them what
		// the worker never read.
		cs.close()
		if err := g.Wait(); err != nil {
			t.Error(err)
		}
		// A listener that a Disconnect frame drains closes on a goroutine
		// of its own, which may still be handing its queue back: allow it
		// a moment. p.R is the one fd open now that was not before.
		deadline := time.Now().Add(2 * drainTimeout)
		for (p.HasWriters() || fdtest.Count(t) != before+1) && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		p.AssertNoWriters(t)
		p.CloseR()
		if after := fdtest.Count(t); after != before {
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
	return fm.everyListener(func(l *Listener) bool { return l.closed || l.head == len(l.queue) })
}

// listening reports whether a listener is open.
func (fm *fakeMaster) listening() bool {
	return !fm.everyListener(func(l *Listener) bool { return l.closed })
}

// everyListener reports whether ok holds for every listener of the
// client, each checked under its mu.
func (fm *fakeMaster) everyListener(ok func(l *Listener) bool) bool {
	fm.c.mu.Lock()
	ls := make([]*Listener, 0, len(fm.c.listeners))
	for _, l := range fm.c.listeners {
		ls = append(ls, l)
	}
	fm.c.mu.Unlock()
	for _, l := range ls {
		l.mu.Lock()
		yes := ok(l)
		l.mu.Unlock()
		if !yes {
			return false
		}
	}
	return true
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
