//go:build linux

package ipc_test

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/fdtest"
	"github.com/handoff-go/handoff/internal/proctest"
	"github.com/handoff-go/handoff/ipc"
	"github.com/handoff-go/handoff/scm"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
)

// newConnsPair returns a listener's conns socket, both ends, closed at
// cleanup.
func newConnsPair(tb testing.TB) (send, recv *ipc.ConnsSocket) {
	tb.Helper()
	send, recv, err := ipc.ConnsPair()
	if err != nil {
		tb.Fatalf("ConnsPair: %v", err)
	}
	tb.Cleanup(func() { _ = send.Close(); _ = recv.Close() })
	return send, recv
}

// newRawConnsPair returns a raw sending end and a ConnsSocket receiving
// end made with ConnsSocketFrom, as a worker makes it, so tests can send
// what a well-behaved master never would.
func newRawConnsPair(tb testing.TB) (*scm.Conn, *ipc.ConnsSocket) {
	tb.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		tb.Fatalf("socketpair: %v", err)
	}
	raw, err := scm.NewConn(fds[0])
	if err != nil {
		_ = unix.Close(fds[1])
		tb.Fatalf("scm.NewConn: %v", err)
	}
	tb.Cleanup(func() { _ = raw.Close() })
	sock, err := ipc.ConnsSocketFrom(fds[1])
	if err != nil {
		tb.Fatalf("ConnsSocketFrom: %v", err)
	}
	tb.Cleanup(func() { _ = sock.Close() })
	return raw, sock
}

// dupSocket returns a second ConnsSocket on a dup of s's fd, as a worker
// holds its copy of the end whose original the master keeps.
func dupSocket(tb testing.TB, s *ipc.ConnsSocket) *ipc.ConnsSocket {
	tb.Helper()
	fd, derr := -1, error(nil)
	if err := s.Fd(func(f int) { fd, derr = unix.FcntlInt(uintptr(f), unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		tb.Fatalf("Fd: %v", err)
	}
	if derr != nil {
		tb.Fatalf("dup: %v", derr)
	}
	d, err := ipc.ConnsSocketFrom(fd)
	if err != nil {
		tb.Fatalf("ConnsSocketFrom: %v", err)
	}
	tb.Cleanup(func() { _ = d.Close() })
	return d
}

// handoffFDs returns the fds of m's handoffs.
func handoffFDs(m *ipc.Message) []int {
	fds := make([]int, len(m.Handoffs))
	for i, h := range m.Handoffs {
		fds[i] = int(h.FD)
	}
	return fds
}

func TestConnsSocketCarriesFDs(t *testing.T) {
	t.Parallel()
	for _, n := range []int{1, 2, 3, 16, ipc.MaxConns} {
		t.Run(fmt.Sprintf("n=%d", n), func(t *testing.T) {
			t.Parallel()
			send, recv := newConnsPair(t)
			pipes := make([]*fdtest.Pipe, n)
			fds := make([]int, n)
			for i := range pipes {
				pipes[i] = fdtest.NewPipe(t)
				fds[i] = pipes[i].W
			}
			hs := handoffs(n, fds...)
			if err := send.TrySend(9, hs); err != nil {
				t.Fatalf("TrySend: %v", err)
			}
			for _, p := range pipes {
				p.CloseW() // the caller keeps ownership, and closes its copies
			}
			var m ipc.Message
			if err := recv.Recv(&m, true, nil); err != nil {
				t.Fatalf("Recv: %v", err)
			}
			got := handoffFDs(&m)
			t.Cleanup(func() { fdtest.Close(got) })
			if m.Kind != ipc.KindConns || m.Listener != 9 || m.NumFDs() != n {
				t.Fatalf("got %s listener %d NumFDs %d, want conns on 9 of %d", m.Kind, m.Listener, m.NumFDs(), n)
			}
			if !sameAddrs(m.Handoffs, hs) {
				t.Fatalf("addresses differ:\n got %+v\nwant %+v", m.Handoffs, hs)
			}
			for i, fd := range got {
				fdtest.AssertCloexec(t, fd)
				if _, err := unix.Write(fd, []byte{byte(i)}); err != nil {
					t.Fatalf("write through handoff %d: %v", i, err)
				}
				pipes[i].AssertReadsByte(t, byte(i), fmt.Sprintf("handoff %d", i))
			}
			fdtest.Close(got)
			got = nil
			for _, p := range pipes {
				p.AssertNoWriters(t)
			}
		})
	}
}

func TestConnsSocketTrySendArgs(t *testing.T) {
	t.Parallel()
	send, recv := newConnsPair(t)
	p := fdtest.NewPipe(t)
	tests := []struct {
		name string
		hs   []ipc.Handoff
	}{
		{name: "none", hs: nil},
		{name: "empty", hs: []ipc.Handoff{}},
		{name: "over MaxConns", hs: handoffs(ipc.MaxConns+1, fdtest.Repeat(p.W, ipc.MaxConns+1)...)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := send.TrySend(1, tt.hs); !errors.Is(err, ipc.ErrFDs) {
				t.Errorf("TrySend: %v, want ErrFDs", err)
			}
		})
	}
	var m ipc.Message
	if err := recv.Recv(&m, false, nil); !errors.Is(err, unix.EAGAIN) {
		t.Errorf("Recv: %v, want EAGAIN: nothing was to be sent", err)
	}
	p.CloseW()
	p.AssertNoWriters(t)
}

// TestConnsSocketFull: on a full socket TrySend says EAGAIN and sends
// nothing, fds included; the frames it did send arrive in order.
func TestConnsSocketFull(t *testing.T) {
	t.Parallel()
	send, recv := newConnsPair(t)
	p := fdtest.NewPipe(t)
	hs := handoffs(2, p.W, p.W)
	queued := 0
	for ; ; queued++ {
		err := send.TrySend(uint32(queued), hs)
		if errors.Is(err, unix.EAGAIN) {
			break
		}
		if err != nil {
			t.Fatalf("TrySend %d: %v", queued, err)
		}
		if queued > 100000 {
			t.Fatal("the socket never filled")
		}
	}
	if queued == 0 {
		t.Fatal("not one frame fit")
	}
	if n, err := send.Unsent(); err != nil || n == 0 {
		t.Errorf("Unsent of a full socket: %d, %v", n, err)
	}
	p.CloseW()
	var m ipc.Message
	for i := range queued {
		if err := recv.Recv(&m, false, nil); err != nil {
			t.Fatalf("Recv %d: %v", i, err)
		}
		fdtest.Close(handoffFDs(&m))
		if m.Listener != uint32(i) || len(m.Handoffs) != 2 {
			t.Fatalf("frame %d: listener %d with %d handoffs", i, m.Listener, len(m.Handoffs))
		}
	}
	if err := recv.Recv(&m, false, nil); !errors.Is(err, unix.EAGAIN) {
		t.Fatalf("after draining: %v, want EAGAIN", err)
	}
	p.AssertNoWriters(t) // the frame refused with EAGAIN took no fd
}

// TestConnsPairSendEndShut: the master's sending end is shut for reading,
// so the worker cannot send on its end, let alone fill the master's queue.
func TestConnsPairSendEndShut(t *testing.T) {
	t.Parallel()
	_, recv := newConnsPair(t)
	p := fdtest.NewPipe(t)
	if err := recv.TrySend(1, handoffs(1, p.W)); !errors.Is(err, unix.EPIPE) {
		t.Errorf("TrySend from the worker's end: %v, want EPIPE", err)
	}
	p.CloseW()
	p.AssertNoWriters(t)
}

// TestConnsSocketRecvRejects sends what is not a well-formed Conns frame
// with one fd per handoff. Recv drops each with a protocol error, closes
// its fds, and reads the next frame intact.
func TestConnsSocketRecvRejects(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		frame []byte
		nfds  int
		want  error
	}{
		{name: "conns short of fds", frame: ipc.AppendConns(nil, 1, handoffs(3)), nfds: 2, want: ipc.ErrFDs},
		{name: "conns with extra fds", frame: ipc.AppendConns(nil, 1, handoffs(2)), nfds: 3, want: ipc.ErrFDs},
		{name: "conns without fds", frame: ipc.AppendConns(nil, 1, handoffs(1)), nfds: 0, want: ipc.ErrFDs},
		{name: "conns of none with one", frame: ipc.AppendConns(nil, 1, nil), nfds: 1, want: ipc.ErrFDs},
		{name: "conns with a trailing byte", frame: append(ipc.AppendConns(nil, 1, handoffs(2)), 0), nfds: 2, want: ipc.ErrMalformed},
		{name: "conns cut in an address", frame: ipc.AppendConns(nil, 1, handoffs(2))[:4+6+17+5], nfds: 2, want: ipc.ErrMalformed},
		{name: "conns address over MaxAddr", frame: append(ipc.AppendConns(nil, 1, nil)[:8], 1, 0, 29), nfds: 1, want: ipc.ErrMalformed},
		{name: "conns of an old version", frame: append([]byte{1}, ipc.AppendConns(nil, 1, handoffs(1))[1:]...), nfds: 1, want: ipc.ErrVersion},
		{name: "return", frame: ipc.AppendReturn(nil, 1, 1), nfds: 1, want: ipc.ErrUnknownKind},
		{name: "listen-reply with a socket", frame: ipc.AppendListenReply(nil, 1, 2, 0, ":80", "", ""), nfds: 1, want: ipc.ErrUnknownKind},
		{name: "hello", frame: ipc.AppendHello(nil, 1), nfds: 0, want: ipc.ErrUnknownKind},
		{name: "ping", frame: ipc.AppendPing(nil), nfds: 2, want: ipc.ErrUnknownKind},
		{name: "user", frame: userFrame(0, []byte("{}")), nfds: 1, want: ipc.ErrUnknownKind},
		{name: "unknown kind", frame: []byte{ipc.Version, 200, 0, 0}, nfds: 3, want: ipc.ErrUnknownKind},
		{name: "short header", frame: []byte{ipc.Version, byte(ipc.KindConns)}, nfds: 1, want: ipc.ErrMalformed},
		{name: "one byte over MaxFrame", frame: userFrame(0, make([]byte, ipc.MaxFrame-ipc.HeaderSize+1)), nfds: 2, want: ipc.ErrMalformed},
		{name: "far over MaxFrame", frame: userFrame(0, make([]byte, ipc.MaxFrame+100)), nfds: 2, want: ipc.ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			raw, sock := newRawConnsPair(t)
			p, next := fdtest.NewPipe(t), fdtest.NewPipe(t)
			writeRaw(t, raw, tt.frame, fdtest.Repeat(p.W, tt.nfds))
			p.CloseW()
			writeRaw(t, raw, ipc.AppendConns(nil, 5, handoffs(1)), []int{next.W})
			next.CloseW()
			var m ipc.Message
			err := sock.Recv(&m, true, nil)
			if !errors.Is(err, tt.want) || !ipc.IsProtocolError(err) {
				t.Fatalf("Recv: %v, want a protocol error matching %v", err, tt.want)
			}
			p.AssertNoWriters(t)
			if err := sock.Recv(&m, true, nil); err != nil || m.Listener != 5 || len(m.Handoffs) != 1 {
				t.Fatalf("next Recv: listener %d, %d handoffs, %v; want the next frame", m.Listener, len(m.Handoffs), err)
			}
			fdtest.Close(handoffFDs(&m))
			next.AssertNoWriters(t)
		})
	}
}

// TestConnsSocketRecvNoRoom: while room says no, Recv reads nothing,
// waiting or not, and the frame, fds and all, stays in the socket for the
// next Recv.
func TestConnsSocketRecvNoRoom(t *testing.T) {
	t.Parallel()
	send, recv := newConnsPair(t)
	p := fdtest.NewPipe(t)
	hs := handoffs(3, p.W, p.W, p.W)
	if err := send.TrySend(2, hs); err != nil {
		t.Fatal(err)
	}
	p.CloseW()
	queued, err := recv.Unread()
	if err != nil || queued == 0 {
		t.Fatalf("Unread: %d, %v", queued, err)
	}
	var m ipc.Message
	for _, wait := range []bool{false, true} {
		asked := 0
		err := recv.Recv(&m, wait, func() bool { asked++; return false })
		if !errors.Is(err, scm.ErrNoRoom) || ipc.IsProtocolError(err) {
			t.Fatalf("Recv(wait %v) with no room: %v, want scm.ErrNoRoom", wait, err)
		}
		if asked != 1 {
			t.Errorf("Recv(wait %v): room asked %d times, want 1", wait, asked)
		}
		if n, err := recv.Unread(); err != nil || n != queued {
			t.Fatalf("Unread after ErrNoRoom: %d, %v; want %d, the frame still there", n, err, queued)
		}
	}
	if err := recv.Recv(&m, false, func() bool { return true }); err != nil {
		t.Fatalf("Recv with room: %v", err)
	}
	got := handoffFDs(&m)
	if m.Listener != 2 || !sameAddrs(m.Handoffs, hs) {
		fdtest.Close(got)
		t.Fatalf("got listener %d %+v, want the whole frame", m.Listener, m.Handoffs)
	}
	for _, fd := range got {
		fdtest.AssertCloexec(t, fd)
	}
	fdtest.Close(got)
	p.AssertNoWriters(t)
}

func TestConnsSocketRecvEmptyAndEOF(t *testing.T) {
	t.Parallel()
	send, recv := newConnsPair(t)
	var m ipc.Message
	if err := recv.Recv(&m, false, nil); !errors.Is(err, unix.EAGAIN) {
		t.Fatalf("Recv on an empty socket: %v, want EAGAIN", err)
	}
	if err := send.Close(); err != nil {
		t.Fatal(err)
	}
	for _, wait := range []bool{false, true} {
		if err := recv.Recv(&m, wait, nil); err != io.EOF {
			t.Errorf("Recv(wait %v) after the sender closed: %v, want io.EOF", wait, err)
		}
	}
}

func TestConnsSocketCloseUnblocksRecv(t *testing.T) {
	t.Parallel()
	_, master := newConnsPair(t)
	recv := dupSocket(t, master) // the worker's copy, which waits
	done := make(chan error, 1)
	go func() {
		var m ipc.Message
		done <- recv.Recv(&m, true, nil)
	}()
	time.Sleep(10 * time.Millisecond)
	if err := recv.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, os.ErrClosed) {
		t.Fatalf("Recv: %v, want an error matching os.ErrClosed", err)
	}
	if err := recv.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	assertClosed := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, os.ErrClosed) {
			t.Errorf("%s on a closed socket: %v, want an error matching os.ErrClosed", what, err)
		}
	}
	_, err := recv.Unsent()
	assertClosed("Unsent", err)
	_, err = recv.Unread()
	assertClosed("Unread", err)
	called := false
	assertClosed("Fd", recv.Fd(func(int) { called = true }))
	if called {
		t.Error("Fd ran f on a closed socket")
	}
}

// TestConnsSocketUnsent is how the master tells what a worker has not
// read yet: the sending end's Unsent and the receiving end's Unread count
// a frame until it is read, and then it is gone from both.
func TestConnsSocketUnsent(t *testing.T) {
	t.Parallel()
	send, recv := newConnsPair(t)
	p := fdtest.NewPipe(t)
	queues := func() (out, in int) {
		t.Helper()
		out, oerr := send.Unsent()
		in, ierr := recv.Unread()
		if err := errors.Join(oerr, ierr); err != nil {
			t.Fatal(err)
		}
		return out, in
	}
	if out, in := queues(); out != 0 || in != 0 {
		t.Fatalf("fresh pair: %d unsent, %d unread; want 0", out, in)
	}
	frame := ipc.AppendConns(nil, 1, handoffs(2))
	for i := range 2 {
		if err := send.TrySend(1, handoffs(2, p.W, p.W)); err != nil {
			t.Fatal(err)
		}
		if out, in := queues(); out == 0 || in < (i+1)*len(frame) {
			t.Errorf("after %d frames: %d unsent, %d unread; want unsent > 0 and unread >= %d", i+1, out, in, (i+1)*len(frame))
		}
	}
	var m ipc.Message
	for range 2 {
		if err := recv.Recv(&m, false, nil); err != nil {
			t.Fatal(err)
		}
		fdtest.Close(handoffFDs(&m))
	}
	if out, in := queues(); out != 0 || in != 0 {
		t.Errorf("after the reads: %d unsent, %d unread; want 0", out, in)
	}
}

// TestConnsSocketSharedReaders reads one conns socket through two fds, the
// worker's copy and the master's, from two goroutines each, while frames
// are sent: every frame goes whole to exactly one reader, so no
// connection is ever handed to two processes, and none is lost.
func TestConnsSocketSharedReaders(t *testing.T) {
	t.Parallel()
	const frames = 300
	send, master := newConnsPair(t)
	worker := dupSocket(t, master)
	p := fdtest.NewPipe(t)
	pw := p.W
	var mu sync.Mutex
	seen := map[uint32]int{} // listener, which numbers the frame: how often read
	var g errgroup.Group
	g.Go(func() error {
		for i := 0; i < frames; {
			n := 1 + i%3
			err := send.TrySend(uint32(i), handoffs(n, fdtest.Repeat(pw, n)...))
			switch {
			case err == nil:
				i++
			case errors.Is(err, unix.EAGAIN):
				time.Sleep(50 * time.Microsecond)
			default:
				return fmt.Errorf("TrySend %d: %w", i, err)
			}
		}
		return send.Close() // the readers read on to EOF
	})
	// The master's copy is unpolled: it reads without waiting, as
	// reclaim does, under a lock of its own; the worker's copies wait.
	var masterMu sync.Mutex
	worker2 := dupSocket(t, master)
	for r, sock := range []*ipc.ConnsSocket{master, worker, master, worker2} {
		g.Go(func() error {
			var m ipc.Message
			for {
				var err error
				if sock == master {
					masterMu.Lock()
					err = sock.Recv(&m, false, nil)
					masterMu.Unlock()
					if errors.Is(err, unix.EAGAIN) {
						time.Sleep(20 * time.Microsecond)
						continue
					}
				} else {
					err = sock.Recv(&m, true, nil)
				}
				if err == io.EOF {
					return nil
				}
				if err != nil {
					return fmt.Errorf("reader %d: %w", r, err)
				}
				fds := handoffFDs(&m)
				fdtest.Close(fds)
				i := int(m.Listener)
				if want := handoffs(1 + i%3); !sameAddrs(m.Handoffs, want) {
					return fmt.Errorf("reader %d: frame %d has %d handoffs %+v, want %+v", r, i, len(fds), m.Handoffs, want)
				}
				mu.Lock()
				seen[m.Listener]++
				mu.Unlock()
			}
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	for i := range frames {
		if seen[uint32(i)] != 1 {
			t.Errorf("frame %d read %d times, want once", i, seen[uint32(i)])
		}
	}
	if len(seen) != frames {
		t.Errorf("%d distinct frames read, want %d", len(seen), frames)
	}
	p.CloseW()
	p.AssertNoWriters(t)
}

func TestConnsSocketFromRejects(t *testing.T) {
	t.Parallel()
	p := fdtest.NewPipe(t)
	fd, err := unix.FcntlInt(uintptr(p.W), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	p.CloseW()
	if s, err := ipc.ConnsSocketFrom(fd); err == nil {
		_ = s.Close()
		t.Fatal("ConnsSocketFrom of a pipe succeeded")
	}
	p.AssertNoWriters(t) // it took the fd, and closed it
}

// TestConnsSocketFDLeak runs every way Recv can drop a frame, and the
// ErrNoRoom path, many times: the process ends with the fds it started
// with. It counts fds and must not run in parallel.
func TestConnsSocketFDLeak(t *testing.T) {
	raw, sock := newRawConnsPair(t)
	p := fdtest.NewPipe(t)
	bad := []struct {
		frame []byte
		nfds  int
	}{
		{frame: ipc.AppendConns(nil, 1, handoffs(2)), nfds: 3},
		{frame: ipc.AppendConns(nil, 1, handoffs(2)), nfds: 1},
		{frame: append(ipc.AppendConns(nil, 1, handoffs(1)), 0), nfds: 1},
		{frame: ipc.AppendReturn(nil, 1, 2), nfds: 2},
		{frame: []byte{ipc.Version, 200, 0, 0}, nfds: 2},
		{frame: []byte{ipc.Version}, nfds: 1},
		{frame: userFrame(0, make([]byte, ipc.MaxFrame)), nfds: 2},
	}
	good := ipc.AppendConns(nil, 1, handoffs(2))
	no := func() bool { return false }
	var m ipc.Message
	one := func(i int) {
		t.Helper()
		b := bad[i%len(bad)]
		writeRaw(t, raw, b.frame, fdtest.Repeat(p.W, b.nfds))
		if err := sock.Recv(&m, true, nil); !ipc.IsProtocolError(err) {
			t.Fatalf("Recv of bad frame %d: %v, want a protocol error", i%len(bad), err)
		}
		writeRaw(t, raw, good, []int{p.W, p.W})
		if err := sock.Recv(&m, true, no); !errors.Is(err, scm.ErrNoRoom) {
			t.Fatalf("Recv with no room: %v", err)
		}
		if err := sock.Recv(&m, true, nil); err != nil {
			t.Fatalf("Recv: %v", err)
		}
		fdtest.Close(handoffFDs(&m))
	}
	fdtest.Steady(t, 2000, one)
	p.CloseW()
	p.AssertNoWriters(t)
}

// TestFDsLost runs in a child process whose RLIMIT_NOFILE is lowered so
// that the fds of a frame cannot all be installed: the kernel drops them
// (MSG_CTRUNC). Recv and Read say ErrFDsLost, which is not a protocol
// error, and close the fds that did arrive; a Recv whose room check says
// no leaves the frame for when there is room. Lowering the limit of the
// test process itself would disturb everything else running in it.
func TestFDsLost(t *testing.T) {
	if proctest.ChildMode() == "ctrunc" {
		fdsLostChild(t)
		return
	}
	t.Parallel()
	_, wait, _ := proctest.StartChild(t, "TestFDsLost", "ctrunc", nil)
	wait()
}

func fdsLostChild(t *testing.T) {
	const sent = 64
	send, recv := newConnsPair(t)
	master, worker := newConnPair(t)
	p := fdtest.NewPipe(t)
	hs := handoffs(sent, fdtest.Repeat(p.W, sent)...)
	for i := range 2 {
		if err := send.TrySend(uint32(i), hs); err != nil {
			t.Fatal(err)
		}
	}
	if err := worker.WriteFrame(ipc.AppendReturn(nil, 1, sent), fdtest.Repeat(p.W, sent)); err != nil {
		t.Fatal(err)
	}
	p.CloseW()

	// The limit is on fd numbers: AtLimit leaves two free numbers below
	// it, far fewer than the fds of a frame.
	before := fdtest.Count(t)
	var room scm.Room
	var m ipc.Message
	var recvErr, noRoomErr, readErr error
	var fds []int
	fdtest.AtLimit(t, 2, func() {
		recvErr = recv.Recv(&m, false, nil)
		noRoomErr = recv.Recv(&m, false, func() bool { return room.For(sent) })
		fds, readErr = master.Read(&m)
	})
	if !errors.Is(noRoomErr, scm.ErrNoRoom) {
		t.Errorf("Recv asking for room at the fd limit: %v, want scm.ErrNoRoom", noRoomErr)
	}
	for what, err := range map[string]error{"Recv": recvErr, "Read": readErr} {
		if !errors.Is(err, ipc.ErrFDsLost) || ipc.IsProtocolError(err) {
			t.Errorf("%s at the fd limit: %v, want ErrFDsLost, not a protocol error", what, err)
		}
	}
	if fds != nil {
		t.Errorf("Read returned fds %v with its error", fds)
	}
	if after := fdtest.Count(t); after != before {
		t.Errorf("open fds: %d before, %d after", before, after)
	}
	// The frame the room check left reads whole once there is room.
	if err := recv.Recv(&m, false, func() bool { return room.For(sent) }); err != nil || m.Listener != 1 || len(m.Handoffs) != sent {
		t.Fatalf("Recv with room: listener %d, %d handoffs, %v; want frame 1 whole", m.Listener, len(m.Handoffs), err)
	}
	fdtest.Close(handoffFDs(&m))
	p.AssertNoWriters(t)
}
