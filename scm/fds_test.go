//go:build linux

package scm

import (
	"errors"
	"slices"
	"testing"

	"github.com/handoff-go/handoff/internal/fdtest"
	"github.com/handoff-go/handoff/internal/proctest"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
)

// The tests in this file that open fds at chosen numbers or count
// /proc/self/fd do not run in parallel.

// isOpen reports whether fd is an open fd number (F_GETFD succeeds).
func isOpen(tb testing.TB, fd int) bool {
	tb.Helper()
	_, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	switch {
	case err == nil:
		return true
	case errors.Is(err, unix.EBADF):
		return false
	}
	tb.Fatalf("F_GETFD %d: %v", fd, err)
	return false
}

// freeBlock returns the first of n consecutive fd numbers, none open, far
// above every open fd. The kernel hands out the lowest free number, so
// nothing else in this (non-parallel) test takes them.
func freeBlock(tb testing.TB, n int) int {
	tb.Helper()
	open, _ := fdtest.Open(tb)
	base := 0
	for fd := range open {
		base = max(base, fd+64)
	}
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		tb.Fatal(err)
	}
	if uint64(base+n) >= lim.Cur {
		tb.Skipf("RLIMIT_NOFILE %d leaves no room for a block of %d fds above %d", lim.Cur, n, base)
	}
	for fd := base; fd < base+n; fd++ {
		if isOpen(tb, fd) {
			tb.Fatalf("fd %d of the free block is open", fd)
		}
	}
	return base
}

// TestCloseFDs opens every number of a block, the ones to close as dups of
// one pipe's write end and the rest as dups of another's, and checks that
// CloseFDs closed exactly the ones it was given: those numbers are free
// and that pipe has no writer left, while every other number of the block,
// the first and last included, is still open and the other pipe still has
// its writers.
func TestCloseFDs(t *testing.T) {
	const size = 300 // offsets 1..size-2 are the field; 0 and size-1 always stay open
	span := func(lo, hi int) []int {
		var s []int
		for i := lo; i <= hi; i++ {
			s = append(s, i)
		}
		return s
	}
	reversed := func(s []int) []int { slices.Reverse(s); return s }
	tests := []struct {
		name  string
		close []int // offsets in the block, in the order given to CloseFDs
	}{
		{name: "none", close: nil},
		{name: "one", close: []int{5}},
		{name: "two apart", close: []int{3, 9}},
		{name: "two adjacent", close: []int{10, 11}},
		{name: "one run", close: span(2, 6)},
		{name: "runs and gaps", close: []int{1, 2, 3, 5, 7, 8, 12, 13, 14, 15}},
		{name: "unsorted runs", close: []int{9, 7, 8, 4, 2, 20, 3, 19}},
		{name: "gaps of one", close: []int{2, 4, 6, 8, 10}},
		{name: "right beside the kept ends", close: []int{1, size - 2}},
		{name: "long run", close: span(10, 260)},
		{name: "whole field reversed", close: reversed(span(1, size-2))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base := freeBlock(t, size)
			t.Cleanup(func() {
				for fd := base; fd < base+size; fd++ {
					_ = unix.Close(fd)
				}
			})
			closing, keeping := fdtest.NewPipe(t), fdtest.NewPipe(t)
			toClose := map[int]bool{}
			for _, off := range tt.close {
				toClose[off] = true
			}
			for off := range size {
				src := keeping.W
				if toClose[off] {
					src = closing.W
				}
				if err := unix.Dup3(src, base+off, unix.O_CLOEXEC); err != nil {
					t.Fatalf("dup3 to %d: %v", base+off, err)
				}
			}
			closing.CloseW()
			keeping.CloseW()
			fds := make([]int, len(tt.close))
			for i, off := range tt.close {
				fds[i] = base + off
			}

			CloseFDs(fds)

			for off := range size {
				if got := isOpen(t, base+off); got == toClose[off] {
					t.Errorf("fd %d (offset %d): open %v after CloseFDs, want %v", base+off, off, got, !toClose[off])
				}
			}
			closing.AssertNoWriters(t)
			var b [1]byte
			if _, err := unix.Read(keeping.R, b[:]); !errors.Is(err, unix.EAGAIN) {
				t.Errorf("read of the kept fds' pipe: %v, want EAGAIN: a kept fd was closed", err)
			}
		})
	}
}

// TestOpenFDs compares OpenFDs with a count of /proc/self/fd, whose
// listing includes the fd that reads it; OpenFDs does not count its own.
// With a thousand more fds open the listing takes several getdents64
// calls.
func TestOpenFDs(t *testing.T) {
	check := func(extra int) int {
		t.Helper()
		want := fdtest.Count(t) - 1
		got, err := OpenFDs()
		if err != nil {
			t.Fatalf("OpenFDs: %v", err)
		}
		if got != want {
			t.Fatalf("with %d extra fds: OpenFDs = %d, want %d (the /proc/self/fd entries minus one)", extra, got, want)
		}
		return got
	}
	before := check(0)
	p := fdtest.NewPipe(t)
	fds := make([]int, 0, 1000)
	t.Cleanup(func() { fdtest.Close(fds) })
	for range cap(fds) {
		fd, err := unix.FcntlInt(uintptr(p.W), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		fds = append(fds, fd)
	}
	if got := check(len(fds)); got != before+2+len(fds) {
		t.Errorf("OpenFDs = %d with a pipe and %d dups open, want %d", got, len(fds), before+2+len(fds))
	}
	fdtest.Close(fds)
	fds = fds[:0]
	p.CloseR()
	p.CloseW()
	if got := check(0); got != before {
		t.Errorf("OpenFDs = %d after closing them all, want %d", got, before)
	}
}

func TestFreeFDs(t *testing.T) {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	free := func() int {
		t.Helper()
		n, err := FreeFDs()
		if err != nil {
			t.Fatalf("FreeFDs: %v", err)
		}
		return n
	}
	f0 := free()
	open, err := OpenFDs()
	if err != nil {
		t.Fatal(err)
	}
	if lim.Cur < 1<<30 && f0 != int(lim.Cur)-open {
		t.Errorf("FreeFDs = %d, want the limit %d minus %d open", f0, lim.Cur, open)
	}
	fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if f1 := free(); f1 != f0-1 {
		t.Errorf("FreeFDs = %d with one more fd open, want %d", f1, f0-1)
	}
	if err := unix.Close(fd); err != nil {
		t.Fatal(err)
	}
	if f2 := free(); f2 != f0 {
		t.Errorf("FreeFDs = %d after closing it, want %d", f2, f0)
	}
}

func TestRoom(t *testing.T) {
	free, err := FreeFDs()
	if err != nil {
		t.Fatal(err)
	}
	if free < 2*roomSlack {
		t.Skipf("only %d free fds", free)
	}
	var r Room // the zero value is ready
	for _, tt := range []struct {
		name string
		n    int
		want bool
	}{
		{name: "none", n: 0, want: true},
		{name: "one", n: 1, want: true},
		{name: "a full frame", n: MaxFDs, want: true},
		{name: "every free fd", n: free, want: false}, // one must stay spare
		{name: "far more than free", n: free + 1000, want: false},
		{name: "one again after a no", n: 1, want: true},
	} {
		if got := r.For(tt.n); got != tt.want {
			t.Errorf("%s: For(%d) = %v with %d free, want %v", tt.name, tt.n, got, free, tt.want)
		}
	}
	// Taking nearly all that is free makes Room count again, and the
	// count shows the fds were never really taken.
	r.Took(free - 10)
	if !r.For(MaxFDs) {
		t.Errorf("For(%d) = false after Took: it must count again, not trust the estimate", MaxFDs)
	}
}

// TestRoomConcurrent runs For and Took from many goroutines, for the race
// detector.
func TestRoomConcurrent(t *testing.T) {
	var r Room
	var g errgroup.Group
	for range 8 {
		g.Go(func() error {
			for range 200 {
				if r.For(1) {
					r.Took(1)
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
}

// TestRoomAtLimit runs itself in a child process that lowers its
// RLIMIT_NOFILE so that no room, or a little, is left: lowering the test
// process's own limit would disturb everything else running in it.
func TestRoomAtLimit(t *testing.T) {
	proctest.InChild(t, "TestRoomAtLimit", roomAtLimitChild)
}

func roomAtLimitChild(t *testing.T) {
	// A message with fds in flight before the limit is lowered: they do
	// not count against this process until it reads them.
	a, b := newPair(t)
	p := fdtest.NewPipe(t)
	const inFlight = 4
	if err := a.WriteMsg([]byte("conns"), fdtest.Repeat(p.W, inFlight)); err != nil {
		t.Fatal(err)
	}
	p.CloseW()

	open, err := OpenFDs()
	if err != nil {
		t.Fatal(err)
	}
	var old unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	setLimit := func(cur uint64) {
		t.Helper()
		l := old
		l.Cur = cur
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &l); err != nil {
			t.Fatalf("setrlimit %d: %v", cur, err)
		}
	}
	t.Cleanup(func() { _ = unix.Setrlimit(unix.RLIMIT_NOFILE, &old) })

	tests := []struct {
		name     string
		limit    int // RLIMIT_NOFILE, as open fds plus this
		wantFree int // -1: FreeFDs may fail, since it may find no number for its own fd
		yes, no  []int
	}{
		{name: "no room", limit: 0, wantFree: -1, no: []int{1, inFlight, MaxFDs}},
		{name: "one spare", limit: 1, wantFree: 1, yes: []int{0}, no: []int{1, inFlight}},
		{name: "room for the message", limit: inFlight + 1, wantFree: inFlight + 1, yes: []int{1, inFlight}, no: []int{inFlight + 1, MaxFDs}},
		{name: "plenty", limit: 1000, wantFree: 1000, yes: []int{1, MaxFDs, 999}, no: []int{1000}},
	}
	for _, tt := range tests {
		setLimit(uint64(open + tt.limit))
		free, ferr := FreeFDs()
		var r Room
		var yes, no []bool
		for _, n := range tt.yes {
			yes = append(yes, r.For(n))
		}
		for _, n := range tt.no {
			no = append(no, r.For(n))
		}
		setLimit(old.Cur)
		switch {
		case tt.wantFree >= 0 && (ferr != nil || free != tt.wantFree):
			t.Errorf("%s: FreeFDs = %d, %v; want %d", tt.name, free, ferr, tt.wantFree)
		case tt.wantFree < 0 && ferr == nil && free != 0:
			t.Errorf("%s: FreeFDs = %d, want 0 or an error", tt.name, free)
		}
		for i, n := range tt.yes {
			if !yes[i] {
				t.Errorf("%s: For(%d) = false with %d free, want true", tt.name, n, free)
			}
		}
		for i, n := range tt.no {
			if no[i] {
				t.Errorf("%s: For(%d) = true with %d free, want false", tt.name, n, free)
			}
		}
	}

	// What Room is for: at one spare fd, a reader that asks it first
	// leaves the message in the socket instead of losing its fds; once
	// there is room the message reads whole.
	var r Room
	buf := make([]byte, 16)
	var fds [MaxFDs]int
	setLimit(uint64(open + 1))
	n, nfds, rerr := b.ReadMsgWhen(buf, fds[:], false, func() bool { return r.For(inFlight) })
	setLimit(old.Cur)
	if !errors.Is(rerr, ErrNoRoom) || n != 0 || nfds != 0 {
		t.Fatalf("ReadMsgWhen at the limit: n=%d nfds=%d err=%v, want ErrNoRoom", n, nfds, rerr)
	}
	n, nfds, rerr = b.ReadMsgWhen(buf, fds[:], false, func() bool { return r.For(inFlight) })
	if rerr != nil || string(buf[:n]) != "conns" || nfds != inFlight {
		t.Fatalf("ReadMsgWhen with room: %q, %d fds, %v; want the whole message", buf[:n], nfds, rerr)
	}
	fdtest.Close(fds[:nfds])
	p.AssertNoWriters(t)
}

// sendRaw sends payload with dups of p's write end, then closes p's own
// write end: after that, the only writers of p are the ones in flight.
func sendRaw(tb testing.TB, c *Conn, payload []byte, p *fdtest.Pipe, nfds int) {
	tb.Helper()
	if err := c.WriteMsg(payload, fdtest.Repeat(p.W, nfds)); err != nil {
		tb.Fatalf("WriteMsg: %v", err)
	}
	p.CloseW()
}

// TestReadMsgWhenNoRoom: while its condition says no, ReadMsgWhen reads
// nothing, with or without wait, and the message, fds and all, is still
// there for the next read.
func TestReadMsgWhenNoRoom(t *testing.T) {
	t.Parallel()
	a, b := newPair(t)
	p := fdtest.NewPipe(t)
	payload := []byte("a message with fds")
	sendRaw(t, a, payload, p, 3)
	buf := make([]byte, 64)
	var fds [MaxFDs]int
	for _, wait := range []bool{false, true} {
		calls := 0
		n, nfds, err := b.ReadMsgWhen(buf, fds[:], wait, func() bool { calls++; return false })
		if !errors.Is(err, ErrNoRoom) || n != 0 || nfds != 0 {
			t.Fatalf("ReadMsgWhen(wait %v) told no: n=%d nfds=%d err=%v, want ErrNoRoom", wait, n, nfds, err)
		}
		if calls != 1 {
			t.Errorf("ReadMsgWhen(wait %v): condition called %d times, want 1", wait, calls)
		}
		if q, err := b.Unread(); err != nil || q == 0 {
			t.Fatalf("Unread after ErrNoRoom: %d, %v; want the message still queued", q, err)
		}
	}
	n, nfds, err := b.ReadMsg(buf, fds[:])
	if err != nil || string(buf[:n]) != string(payload) || nfds != 3 {
		t.Fatalf("ReadMsg after ErrNoRoom: %q, %d fds, %v; want the message whole", buf[:n], nfds, err)
	}
	for i, fd := range fds[:nfds] {
		fdtest.AssertCloexec(t, fd)
		if _, err := unix.Write(fd, []byte{byte(i)}); err != nil {
			t.Errorf("write through fd %d: %v", i, err)
		}
	}
	fdtest.Close(fds[:nfds])
	var got [8]byte
	if n, err := unix.Read(p.R, got[:]); err != nil || n != 3 {
		t.Errorf("pipe: %d bytes, %v; want one through each fd", n, err)
	}
	p.AssertNoWriters(t)
}

func TestReadMsgWhenEmpty(t *testing.T) {
	t.Parallel()
	_, b := newPair(t)
	buf := make([]byte, 16)
	var fds [MaxFDs]int
	if _, _, err := b.ReadMsgWhen(buf, fds[:], false, func() bool { return true }); !errors.Is(err, unix.EAGAIN) {
		t.Errorf("ReadMsgWhen(no wait) on an empty socket, told yes: %v, want EAGAIN", err)
	}
	if _, _, err := b.ReadMsgWhen(buf, fds[:], false, nil); !errors.Is(err, unix.EAGAIN) {
		t.Errorf("ReadMsgWhen(no wait, nil) on an empty socket: %v, want EAGAIN", err)
	}
	// The condition is asked before the socket, so no beats empty.
	if _, _, err := b.ReadMsgWhen(buf, fds[:], true, func() bool { return false }); !errors.Is(err, ErrNoRoom) {
		t.Errorf("ReadMsgWhen(wait) on an empty socket, told no: %v, want ErrNoRoom", err)
	}
	if _, _, err := b.ReadMsgWhen(nil, fds[:], false, func() bool { return true }); !errors.Is(err, ErrEmpty) {
		t.Errorf("ReadMsgWhen into nil: %v, want ErrEmpty", err)
	}
}

// TestReadMsgWhenAsksAgainAfterWaiting: a reader that waits asks its
// condition again right before the read that follows the wait. Here it
// says yes before the wait and no after, so the message that ended the
// wait stays in the socket. (If the message beats the first read, there
// is no wait and no second question; the test checks that this is then
// what happened.)
func TestReadMsgWhenAsksAgainAfterWaiting(t *testing.T) {
	t.Parallel()
	a, b := newPair(t)
	asked := make(chan struct{})
	calls := 0
	done := make(chan error, 1)
	go func() {
		var fds [MaxFDs]int
		_, _, err := b.ReadMsgWhen(make([]byte, 16), fds[:], true, func() bool {
			calls++
			if calls == 1 {
				close(asked)
				return true
			}
			return false
		})
		done <- err
	}()
	<-asked
	if err := a.WriteMsg([]byte("late"), nil); err != nil {
		t.Fatal(err)
	}
	err := <-done
	switch {
	case errors.Is(err, ErrNoRoom):
		if calls != 2 {
			t.Errorf("ErrNoRoom after %d questions, want 2", calls)
		}
		buf := make([]byte, 16)
		var fds [MaxFDs]int
		if n, _, err := b.TryReadMsg(buf, fds[:]); err != nil || string(buf[:n]) != "late" {
			t.Errorf("TryReadMsg: %q %v, want the message left in the socket", buf[:n], err)
		}
	case err == nil:
		if calls != 1 {
			t.Errorf("read after %d questions with no wait, want 1", calls)
		}
	default:
		t.Fatalf("ReadMsgWhen: %v", err)
	}
}

// TestControl: Control gives f the socket's own fd, without making it
// blocking, and that fd can be handed on in a message: the copy that
// arrives is the same socket.
func TestControl(t *testing.T) {
	t.Parallel()
	a, b := newPair(t)
	c, d := newPair(t)
	calls := 0
	var typ, flags int
	var serr, ferr, werr error
	if err := a.Control(func(fd int) {
		calls++
		typ, serr = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
		flags, ferr = unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
		werr = c.WriteMsg([]byte("here is a"), []int{fd})
	}); err != nil {
		t.Fatalf("Control: %v", err)
	}
	if calls != 1 {
		t.Fatalf("f called %d times, want once", calls)
	}
	if serr != nil || typ != unix.SOCK_SEQPACKET {
		t.Errorf("SO_TYPE of the fd: %d, %v; want SOCK_SEQPACKET", typ, serr)
	}
	if ferr != nil || flags&unix.O_NONBLOCK == 0 {
		t.Errorf("F_GETFL of the fd: %#x, %v; want O_NONBLOCK still set", flags, ferr)
	}
	if werr != nil {
		t.Fatalf("WriteMsg of the fd: %v", werr)
	}
	var fds [MaxFDs]int
	buf := make([]byte, 16)
	_, nfds, err := d.ReadMsg(buf, fds[:])
	if err != nil || nfds != 1 {
		t.Fatalf("ReadMsg: %d fds, %v", nfds, err)
	}
	copyOfA, err := NewConn(fds[0])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = copyOfA.Close() })
	if err := copyOfA.WriteMsg([]byte("via the copy"), nil); err != nil {
		t.Fatal(err)
	}
	if n, _, err := b.ReadMsg(buf, fds[:]); err != nil || string(buf[:n]) != "via the copy" {
		t.Fatalf("b read %q %v, want what was sent through the copy of a", buf[:n], err)
	}
	if err := a.WriteMsg([]byte("a itself"), nil); err != nil {
		t.Fatalf("a after Control: %v", err)
	}
	if n, _, err := b.ReadMsg(buf, fds[:]); err != nil || string(buf[:n]) != "a itself" {
		t.Fatalf("b read %q %v", buf[:n], err)
	}

	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	calls = 0
	assertClosedErr(t, a.Control(func(int) { calls++ }))
	if calls != 0 {
		t.Errorf("f called on a closed Conn")
	}
}

// TestUnsentUnread: what one end sent is counted by its Unsent and by the
// peer's Unread until the peer reads it, and then by neither.
func TestUnsentUnread(t *testing.T) {
	t.Parallel()
	a, b := newPair(t)
	p := fdtest.NewPipe(t)
	queues := func() (aOut, aIn, bOut, bIn int) {
		t.Helper()
		var errs [4]error
		aOut, errs[0] = a.Unsent()
		aIn, errs[1] = a.Unread()
		bOut, errs[2] = b.Unsent()
		bIn, errs[3] = b.Unread()
		if err := errors.Join(errs[:]...); err != nil {
			t.Fatalf("Unsent/Unread: %v", err)
		}
		return
	}
	if aOut, aIn, bOut, bIn := queues(); aOut != 0 || aIn != 0 || bOut != 0 || bIn != 0 {
		t.Fatalf("fresh pair: a %d out %d in, b %d out %d in; want all 0", aOut, aIn, bOut, bIn)
	}
	payload := []byte("two fds and a payload")
	if err := a.WriteMsg(payload, fdtest.Repeat(p.W, 2)); err != nil {
		t.Fatal(err)
	}
	if aOut, aIn, bOut, bIn := queues(); aOut == 0 || bIn < len(payload) || aIn != 0 || bOut != 0 {
		t.Errorf("after a sent %d bytes: a %d out %d in, b %d out %d in; want a's out > 0 and b's in >= %d, the rest 0",
			len(payload), aOut, aIn, bOut, bIn, len(payload))
	}
	var fds [MaxFDs]int
	_, nfds, err := b.ReadMsg(make([]byte, 64), fds[:])
	if err != nil {
		t.Fatal(err)
	}
	fdtest.Close(fds[:nfds])
	if aOut, aIn, bOut, bIn := queues(); aOut != 0 || aIn != 0 || bOut != 0 || bIn != 0 {
		t.Errorf("after b read it: a %d out %d in, b %d out %d in; want all 0", aOut, aIn, bOut, bIn)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = b.Unsent()
	assertClosedErr(t, err)
	_, err = b.Unread()
	assertClosedErr(t, err)
}

// TestShutdownRead: once an end has shut its receiving side, the peer's
// sends fail with EPIPE, fds or none, while the other direction still
// works.
func TestShutdownRead(t *testing.T) {
	t.Parallel()
	a, b := newPair(t)
	p := fdtest.NewPipe(t)
	if err := b.ShutdownRead(); err != nil {
		t.Fatalf("ShutdownRead: %v", err)
	}
	if err := a.WriteMsg([]byte("x"), nil); !errors.Is(err, unix.EPIPE) {
		t.Errorf("WriteMsg to a peer shut for reading: %v, want EPIPE", err)
	}
	if err := a.TryWriteMsg([]byte("x"), []int{p.W}); !errors.Is(err, unix.EPIPE) {
		t.Errorf("TryWriteMsg with an fd to a peer shut for reading: %v, want EPIPE", err)
	}
	p.CloseW()
	p.AssertNoWriters(t) // the failed send kept no copy of the fd
	if err := b.WriteMsg([]byte("still sends"), nil); err != nil {
		t.Fatalf("WriteMsg from the end shut for reading: %v", err)
	}
	buf := make([]byte, 16)
	var fds [MaxFDs]int
	if n, _, err := a.ReadMsg(buf, fds[:]); err != nil || string(buf[:n]) != "still sends" {
		t.Fatalf("ReadMsg: %q %v", buf[:n], err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	assertClosedErr(t, b.ShutdownRead())
}
