//go:build linux

package scm

import (
	"bytes"
	"errors"
	"io"
	"os"
	"testing"
	"time"
	"unsafe"

	"github.com/handoff-go/handoff/internal/fdtest"
	"github.com/handoff-go/handoff/internal/proctest"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// newPair returns both ends of a connected pair, closed at cleanup. The
// second end is made the way a worker makes its inherited end: the *os.File
// from Socketpair is dup'ed through SyscallConn().Control (never Fd(), which
// would flip the socket to blocking) and closed at once.
func newPair(tb testing.TB) (*Conn, *Conn) {
	tb.Helper()
	local, remote, err := Socketpair()
	if err != nil {
		tb.Fatalf("Socketpair: %v", err)
	}
	tb.Cleanup(func() { _ = local.Close() })
	peer := connFromFile(tb, remote)
	tb.Cleanup(func() { _ = peer.Close() })
	return local, peer
}

// connFromFile dups f's fd into a new Conn and closes f.
func connFromFile(tb testing.TB, f *os.File) *Conn {
	tb.Helper()
	defer func() { _ = f.Close() }()
	rc, err := f.SyscallConn()
	if err != nil {
		tb.Fatalf("SyscallConn: %v", err)
	}
	fd, derr := -1, error(nil)
	if err := rc.Control(func(s uintptr) {
		fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		tb.Fatalf("Control: %v", err)
	}
	if derr != nil {
		tb.Fatalf("dup: %v", derr)
	}
	c, err := NewConn(fd)
	if err != nil {
		tb.Fatalf("NewConn: %v", err)
	}
	return c
}

func TestRoundTrip(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		payload int
		nfds    int
	}{
		{name: "no fds", payload: 100, nfds: 0},
		{name: "one fd", payload: 1, nfds: 1},
		{name: "16 fds", payload: 16 * 8, nfds: 16},
		{name: "MaxFDs", payload: 4096, nfds: MaxFDs},
		{name: "large payload", payload: 60 << 10, nfds: 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			a, b := newPair(t)
			pipes := make([]*fdtest.Pipe, tt.nfds)
			sent := make([]int, tt.nfds)
			for i := range pipes {
				pipes[i] = fdtest.NewPipe(t)
				sent[i] = pipes[i].W
			}
			payload := make([]byte, tt.payload)
			for i := range payload {
				payload[i] = byte(i*7 + tt.nfds)
			}
			if err := a.WriteMsg(payload, sent); err != nil {
				t.Fatalf("WriteMsg: %v", err)
			}
			buf := make([]byte, 64<<10)
			var fds [MaxFDs]int
			n, nfds, err := b.ReadMsg(buf, fds[:])
			if err != nil {
				t.Fatalf("ReadMsg: %v", err)
			}
			got := fds[:nfds]
			t.Cleanup(func() { fdtest.Close(got) })
			if !bytes.Equal(buf[:n], payload) {
				t.Errorf("payload: got %d bytes, want %d bytes equal to those sent", n, len(payload))
			}
			if nfds != tt.nfds {
				t.Fatalf("got %d fds, want %d", nfds, tt.nfds)
			}
			// Each received fd is a new number for the same pipe, in order:
			// a byte written through it comes out of that pipe's read end.
			for i, fd := range got {
				fdtest.AssertCloexec(t, fd)
				if fd == sent[i] {
					t.Errorf("fd %d: received the sender's own number", i)
				}
				if _, err := unix.Write(fd, []byte{byte(i)}); err != nil {
					t.Fatalf("write through received fd %d: %v", i, err)
				}
				var b [2]byte
				n, err := unix.Read(pipes[i].R, b[:])
				if err != nil || n != 1 || b[0] != byte(i) {
					t.Errorf("pipe %d: read n=%d b=%d err=%v, want the byte written through its received fd", i, n, b[0], err)
				}
			}
		})
	}
}

func TestSendSameFDManyTimes(t *testing.T) {
	t.Parallel()
	a, b := newPair(t)
	p := fdtest.NewPipe(t)
	if err := a.WriteMsg([]byte("x"), fdtest.Repeat(p.W, 5)); err != nil {
		t.Fatalf("WriteMsg: %v", err)
	}
	var fds [MaxFDs]int
	_, nfds, err := b.ReadMsg(make([]byte, 16), fds[:])
	if err != nil {
		t.Fatalf("ReadMsg: %v", err)
	}
	if nfds != 5 {
		t.Fatalf("got %d fds, want 5", nfds)
	}
	seen := map[int]bool{}
	for _, fd := range fds[:nfds] {
		if seen[fd] {
			t.Errorf("fd %d received twice", fd)
		}
		seen[fd] = true
	}
	fdtest.Close(fds[:nfds])
	p.CloseW()
	p.AssertNoWriters(t)
}

func TestWriteErrors(t *testing.T) {
	t.Parallel()
	a, _ := newPair(t)
	p := fdtest.NewPipe(t)
	tests := []struct {
		name    string
		payload []byte
		fds     []int
		want    error
	}{
		{name: "too many fds", payload: []byte("x"), fds: fdtest.Repeat(p.W, MaxFDs+1), want: ErrTooManyFDs},
		{name: "far too many fds", payload: []byte("x"), fds: fdtest.Repeat(p.W, 1000), want: ErrTooManyFDs},
		{name: "empty payload", payload: nil, fds: nil, want: ErrEmpty},
		{name: "empty payload with fds", payload: []byte{}, fds: []int{p.W}, want: ErrEmpty},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := a.WriteMsg(tt.payload, tt.fds); !errors.Is(err, tt.want) {
				t.Errorf("WriteMsg: got %v, want %v", err, tt.want)
			}
			if err := a.TryWriteMsg(tt.payload, tt.fds); !errors.Is(err, tt.want) {
				t.Errorf("TryWriteMsg: got %v, want %v", err, tt.want)
			}
		})
	}
}

func TestReadEmptyBuffer(t *testing.T) {
	t.Parallel()
	_, b := newPair(t)
	var fds [1]int
	if _, _, err := b.ReadMsg(nil, fds[:]); !errors.Is(err, ErrEmpty) {
		t.Errorf("ReadMsg(nil): got %v, want ErrEmpty", err)
	}
	if _, _, err := b.TryReadMsg([]byte{}, fds[:]); !errors.Is(err, ErrEmpty) {
		t.Errorf("TryReadMsg(empty): got %v, want ErrEmpty", err)
	}
}

func TestNewConnRejects(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		fd   func(t *testing.T) int
	}{
		{name: "pipe", fd: func(t *testing.T) int {
			p := fdtest.NewPipe(t)
			fd, err := unix.Dup(p.W)
			if err != nil {
				t.Fatal(err)
			}
			p.CloseW()
			// Keep p's read end to check that NewConn closed fd.
			t.Cleanup(func() { p.AssertNoWriters(t) })
			return fd
		}},
		{name: "stream socket", fd: func(t *testing.T) int {
			s, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				// NewConn closed s[0], so its peer reads EOF.
				var b [1]byte
				if err := unix.SetNonblock(s[1], true); err != nil {
					t.Error(err)
				}
				if n, err := unix.Read(s[1], b[:]); n != 0 || err != nil {
					t.Errorf("peer of rejected socket: n=%d err=%v, want EOF", n, err)
				}
				_ = unix.Close(s[1])
			})
			return s[0]
		}},
		{name: "datagram socket", fd: func(t *testing.T) int {
			s, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = unix.Close(s[1]) })
			return s[0]
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := NewConn(tt.fd(t))
			if err == nil {
				_ = c.Close()
				t.Fatal("NewConn succeeded, want an error")
			}
		})
	}
}

func TestEOF(t *testing.T) {
	t.Parallel()
	a, b := newPair(t)
	if err := a.WriteMsg([]byte("last"), nil); err != nil {
		t.Fatalf("WriteMsg: %v", err)
	}
	if err := a.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	buf := make([]byte, 16)
	var fds [MaxFDs]int
	// What was sent before Close is still delivered, then EOF.
	n, _, err := b.ReadMsg(buf, fds[:])
	if err != nil || string(buf[:n]) != "last" {
		t.Fatalf("ReadMsg: %q, %v; want \"last\"", buf[:n], err)
	}
	for _, read := range []func([]byte, []int) (int, int, error){b.ReadMsg, b.TryReadMsg} {
		n, nfds, err := read(buf, fds[:])
		if err != io.EOF || n != 0 || nfds != 0 {
			t.Errorf("after peer closed: n=%d nfds=%d err=%v, want io.EOF", n, nfds, err)
		}
	}
}

func TestTryReadEmpty(t *testing.T) {
	t.Parallel()
	_, b := newPair(t)
	var fds [MaxFDs]int
	n, nfds, err := b.TryReadMsg(make([]byte, 16), fds[:])
	if !errors.Is(err, unix.EAGAIN) || n != 0 || nfds != 0 {
		t.Errorf("TryReadMsg on empty socket: n=%d nfds=%d err=%v, want EAGAIN", n, nfds, err)
	}
}

// fill writes small messages with TryWriteMsg until the socket is full and
// returns how many it wrote.
func fill(tb testing.TB, c *Conn) int {
	tb.Helper()
	for i := 0; i < 100000; i++ {
		err := c.TryWriteMsg([]byte{byte(i)}, nil)
		if errors.Is(err, unix.EAGAIN) {
			return i
		}
		if err != nil {
			tb.Fatalf("TryWriteMsg %d: %v", i, err)
		}
	}
	tb.Fatal("socket never filled")
	return 0
}

func TestTryWriteFull(t *testing.T) {
	t.Parallel()
	a, b := newPair(t)
	p := fdtest.NewPipe(t)
	n := fill(t, a)
	if n == 0 {
		t.Fatal("not one message fit")
	}
	// Nothing is sent on EAGAIN, fds included.
	if err := a.TryWriteMsg([]byte("fd"), []int{p.W}); !errors.Is(err, unix.EAGAIN) {
		t.Fatalf("TryWriteMsg with fds on a full socket: %v, want EAGAIN", err)
	}
	buf := make([]byte, 16)
	var fds [MaxFDs]int
	if _, _, err := b.ReadMsg(buf, fds[:]); err != nil {
		t.Fatalf("ReadMsg: %v", err)
	}
	// Room for one more now.
	if err := a.TryWriteMsg([]byte{byte(n)}, nil); err != nil {
		t.Fatalf("TryWriteMsg after a read: %v", err)
	}
	for i := 1; i <= n; i++ {
		m, nfds, err := b.TryReadMsg(buf, fds[:])
		if err != nil || m != 1 || nfds != 0 || buf[0] != byte(i) {
			t.Fatalf("message %d: n=%d nfds=%d b=%d err=%v", i, m, nfds, buf[0], err)
		}
	}
	if _, _, err := b.TryReadMsg(buf, fds[:]); !errors.Is(err, unix.EAGAIN) {
		t.Fatalf("after draining: %v, want EAGAIN", err)
	}
}

func TestWriteWaitsWhileFull(t *testing.T) {
	t.Parallel()
	a, b := newPair(t)
	n := fill(t, a)
	done := make(chan error, 1)
	go func() { done <- a.WriteMsg([]byte("waited"), nil) }()
	select {
	case err := <-done:
		t.Fatalf("WriteMsg on a full socket returned at once: %v", err)
	case <-time.After(20 * time.Millisecond):
	}
	buf := make([]byte, 16)
	var fds [MaxFDs]int
	for i := 0; i < n; i++ {
		if _, _, err := b.ReadMsg(buf, fds[:]); err != nil {
			t.Fatalf("ReadMsg: %v", err)
		}
	}
	if err := <-done; err != nil {
		t.Fatalf("WriteMsg: %v", err)
	}
	m, _, err := b.ReadMsg(buf, fds[:])
	if err != nil || string(buf[:m]) != "waited" {
		t.Fatalf("ReadMsg: %q %v", buf[:m], err)
	}
}

func TestCloseUnblocks(t *testing.T) {
	t.Parallel()
	t.Run("read", func(t *testing.T) {
		t.Parallel()
		_, b := newPair(t)
		done := make(chan error, 1)
		go func() {
			var fds [MaxFDs]int
			_, _, err := b.ReadMsg(make([]byte, 16), fds[:])
			done <- err
		}()
		time.Sleep(10 * time.Millisecond) // let ReadMsg park, though either order must work
		if err := b.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		assertClosedErr(t, <-done)
	})
	t.Run("write", func(t *testing.T) {
		t.Parallel()
		a, _ := newPair(t)
		fill(t, a)
		done := make(chan error, 1)
		go func() { done <- a.WriteMsg([]byte("blocked"), nil) }()
		time.Sleep(10 * time.Millisecond)
		if err := a.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		assertClosedErr(t, <-done)
	})
	t.Run("after close", func(t *testing.T) {
		t.Parallel()
		a, _ := newPair(t)
		if err := a.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if err := a.Close(); err != nil {
			t.Errorf("second Close: %v, want nil", err)
		}
		var fds [MaxFDs]int
		_, _, err := a.ReadMsg(make([]byte, 16), fds[:])
		assertClosedErr(t, err)
		_, _, err = a.TryReadMsg(make([]byte, 16), fds[:])
		assertClosedErr(t, err)
		assertClosedErr(t, a.WriteMsg([]byte("x"), nil))
		assertClosedErr(t, a.TryWriteMsg([]byte("x"), nil))
	})
}

func assertClosedErr(tb testing.TB, err error) {
	tb.Helper()
	if !errors.Is(err, os.ErrClosed) {
		tb.Errorf("got %v, want an error matching os.ErrClosed", err)
	}
}

// The tests below count /proc/self/fd and so must not run in parallel.

func TestTruncatedClosesFDs(t *testing.T) {
	a, b := newPair(t)
	p := fdtest.NewPipe(t)
	if err := a.WriteMsg(bytes.Repeat([]byte("x"), 64), fdtest.Repeat(p.W, 16)); err != nil {
		t.Fatalf("WriteMsg: %v", err)
	}
	p.CloseW() // the only writers left are in flight
	before := fdtest.Count(t)
	var fds [MaxFDs]int
	n, nfds, err := b.ReadMsg(make([]byte, 8), fds[:])
	if !errors.Is(err, ErrTruncated) || n != 0 || nfds != 0 {
		t.Fatalf("ReadMsg into 8 bytes: n=%d nfds=%d err=%v, want ErrTruncated", n, nfds, err)
	}
	if after := fdtest.Count(t); after != before {
		t.Errorf("open fds: %d before, %d after a truncated read", before, after)
	}
	p.AssertNoWriters(t)

	// The truncated message is gone and the next one reads whole.
	if err := a.WriteMsg([]byte("next"), nil); err != nil {
		t.Fatalf("WriteMsg: %v", err)
	}
	buf := make([]byte, 8)
	n, _, err = b.ReadMsg(buf, fds[:])
	if err != nil || string(buf[:n]) != "next" {
		t.Fatalf("ReadMsg after truncation: %q %v", buf[:n], err)
	}
}

func TestFDsSliceTooShort(t *testing.T) {
	tests := []struct {
		name  string
		sent  int
		slice int
	}{
		{name: "none expected", sent: 1, slice: 0},
		{name: "one short", sent: 16, slice: 15},
		{name: "MaxFDs into 2", sent: MaxFDs, slice: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b := newPair(t)
			p := fdtest.NewPipe(t)
			if err := a.WriteMsg([]byte("x"), fdtest.Repeat(p.W, tt.sent)); err != nil {
				t.Fatalf("WriteMsg: %v", err)
			}
			p.CloseW()
			before := fdtest.Count(t)
			fds := make([]int, tt.slice)
			n, nfds, err := b.ReadMsg(make([]byte, 8), fds)
			if !errors.Is(err, ErrTooManyFDs) || n != 0 || nfds != 0 {
				t.Fatalf("ReadMsg: n=%d nfds=%d err=%v, want ErrTooManyFDs", n, nfds, err)
			}
			if after := fdtest.Count(t); after != before {
				t.Errorf("open fds: %d before, %d after", before, after)
			}
			p.AssertNoWriters(t)
		})
	}
}

func TestFDLeak(t *testing.T) {
	a, b := newPair(t)
	p := fdtest.NewPipe(t)
	sent := fdtest.Repeat(p.W, 4)
	buf := make([]byte, 64)
	var fds [MaxFDs]int
	one := func(i int) {
		t.Helper()
		if err := a.WriteMsg(buf[:1+i%len(buf)], sent[:i%5]); err != nil {
			t.Fatalf("WriteMsg %d: %v", i, err)
		}
		switch i % 10 {
		case 3: // truncated: ReadMsg closes what arrived
			if _, _, err := b.ReadMsg(buf[:1], fds[:]); err != nil && !errors.Is(err, ErrTruncated) {
				t.Fatalf("ReadMsg %d: %v", i, err)
			}
		case 7: // fds slice too short: ReadMsg closes what arrived
			if _, _, err := b.ReadMsg(buf, fds[:1]); err != nil && !errors.Is(err, ErrTooManyFDs) {
				t.Fatalf("ReadMsg %d: %v", i, err)
			}
		default:
			_, nfds, err := b.ReadMsg(buf, fds[:])
			if err != nil {
				t.Fatalf("ReadMsg %d: %v", i, err)
			}
			if nfds != i%5 {
				t.Fatalf("ReadMsg %d: %d fds, want %d", i, nfds, i%5)
			}
			fdtest.Close(fds[:nfds])
		}
	}
	fdtest.Steady(t, 5000, one)
	p.CloseW()
	p.AssertNoWriters(t)
}

// TestControlTruncated runs itself in a child process whose RLIMIT_NOFILE
// is lowered so that only some of the fds sent can be installed: the kernel
// drops the rest and sets MSG_CTRUNC. Lowering the limit in the test
// process itself would disturb everything else running in it.
func TestControlTruncated(t *testing.T) {
	proctest.InChild(t, "TestControlTruncated", controlTruncatedChild)
}

func controlTruncatedChild(t *testing.T) {
	a, b := newPair(t)
	p := fdtest.NewPipe(t)
	const sent = 64
	if err := a.WriteMsg([]byte("x"), fdtest.Repeat(p.W, sent)); err != nil {
		t.Fatalf("WriteMsg: %v", err)
	}
	p.CloseW()

	// The limit is on fd numbers: AtLimit leaves two free numbers below
	// it, far fewer than the fds sent.
	before := fdtest.Count(t)
	var fds [MaxFDs]int
	var n, nfds int
	var rerr error
	fdtest.AtLimit(t, 2, func() { n, nfds, rerr = b.ReadMsg(make([]byte, 8), fds[:]) })
	// The data arrives whole (1 byte), the fds do not.
	if !errors.Is(rerr, ErrControlTruncated) || n != 1 || nfds != 0 {
		t.Fatalf("ReadMsg at the fd limit: n=%d nfds=%d err=%v, want n=1, nfds=0 and ErrControlTruncated", n, nfds, rerr)
	}
	if after := fdtest.Count(t); after != before {
		t.Errorf("open fds: %d before, %d after", before, after)
	}
	p.AssertNoWriters(t)
}

// rights builds an SCM_RIGHTS control message; appending several gives a
// buffer with several messages.
func rights(fds ...int) []byte { return unix.UnixRights(fds...) }

// setLen overwrites the length field of the control header at off.
func setLen(b []byte, off, l int) []byte {
	(*unix.Cmsghdr)(unsafe.Pointer(&b[off])).SetLen(l)
	return b
}

// TestParseRights crafts control buffers the kernel would not write, to
// reach the error paths of parseRights. Every fd in them is a dup of one
// pipe's write end, so the pipe reading EOF proves they were all closed.
func TestParseRights(t *testing.T) {
	tests := []struct {
		name    string
		nfds    int // dups placed in the buffer
		slice   int // len of the fds slice
		build   func(fds []int) []byte
		wantN   int
		wantErr error
	}{
		{name: "empty", slice: 4, build: func([]int) []byte { return nil }},
		{name: "short tail ignored", slice: 4, build: func([]int) []byte { return make([]byte, unix.SizeofCmsghdr-1) }},
		{name: "one message", nfds: 3, slice: 4, build: func(fds []int) []byte { return rights(fds...) }, wantN: 3},
		{name: "exact fit", nfds: 4, slice: 4, build: func(fds []int) []byte { return rights(fds...) }, wantN: 4},
		{name: "two messages", nfds: 5, slice: 8, build: func(fds []int) []byte {
			return append(rights(fds[:2]...), rights(fds[2:]...)...)
		}, wantN: 5},
		{name: "other control message skipped", nfds: 2, slice: 4, build: func(fds []int) []byte {
			cred := unix.UnixCredentials(&unix.Ucred{Pid: 1})
			return append(append(rights(fds[0]), cred...), rights(fds[1])...)
		}, wantN: 2},
		{name: "too many for slice", nfds: 5, slice: 3, build: func(fds []int) []byte { return rights(fds...) }, wantErr: ErrTooManyFDs},
		{name: "too many across messages", nfds: 4, slice: 3, build: func(fds []int) []byte {
			return append(rights(fds[:3]...), rights(fds[3:]...)...)
		}, wantErr: ErrTooManyFDs},
		{name: "slice of zero", nfds: 1, slice: 0, build: func(fds []int) []byte { return rights(fds...) }, wantErr: ErrTooManyFDs},
		{name: "header length under header size", nfds: 2, slice: 4, build: func(fds []int) []byte {
			b := rights(fds...)
			b = append(b, make([]byte, unix.CmsgSpace(0))...)
			return setLen(b, len(b)-unix.CmsgSpace(0), unix.SizeofCmsghdr-1)
		}, wantErr: ErrBadControl},
		{name: "header length zero", nfds: 2, slice: 4, build: func(fds []int) []byte {
			b := rights(fds...)
			b = append(b, make([]byte, unix.CmsgSpace(8))...)
			return setLen(b, len(b)-unix.CmsgSpace(8), 0)
		}, wantErr: ErrBadControl},
		{name: "header length past buffer", nfds: 2, slice: 4, build: func(fds []int) []byte {
			// The fds of a message whose header is bad cannot be found, so
			// this one carries none (-1 is never a real fd).
			b := append(rights(fds...), rights(-1)...)
			return setLen(b, len(rights(fds...)), 1<<20)
		}, wantErr: ErrBadControl},
		{name: "last message unpadded", nfds: 1, slice: 4, build: func(fds []int) []byte {
			return rights(fds...)[:unix.CmsgLen(4)]
		}, wantN: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := fdtest.NewPipe(t)
			in := make([]int, tt.nfds)
			for i := range in {
				fd, err := unix.FcntlInt(uintptr(p.W), unix.F_DUPFD_CLOEXEC, 0)
				if err != nil {
					t.Fatal(err)
				}
				in[i] = fd
			}
			p.CloseW()
			oob := tt.build(in)
			fds := make([]int, tt.slice)
			n, err := parseRights(oob, fds)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("parseRights: err %v, want %v", err, tt.wantErr)
			}
			if tt.wantErr != nil {
				if n != 0 {
					t.Errorf("parseRights: n=%d on error, want 0", n)
				}
			} else {
				if n != tt.wantN {
					t.Fatalf("parseRights: n=%d, want %d", n, tt.wantN)
				}
				for i := range n {
					if fds[i] != in[i] {
						t.Errorf("fds[%d] = %d, want %d", i, fds[i], in[i])
					}
				}
				fdtest.Close(fds[:n])
			}
			p.AssertNoWriters(t)
		})
	}
}

func TestAllocs(t *testing.T) {
	a, b := newPair(t)
	p := fdtest.NewPipe(t)
	sent := fdtest.Repeat(p.W, 16)
	payload := []byte("conns")
	buf := make([]byte, 64)
	var fds [MaxFDs]int
	tests := []struct {
		name string
		f    func()
	}{
		{name: "WriteMsg+ReadMsg", f: func() {
			if err := a.WriteMsg(payload, sent); err != nil {
				t.Fatal(err)
			}
			_, nfds, err := b.ReadMsg(buf, fds[:])
			if err != nil || nfds != len(sent) {
				t.Fatalf("ReadMsg: %d fds, %v", nfds, err)
			}
			fdtest.Close(fds[:nfds])
		}},
		{name: "TryWriteMsg+TryReadMsg", f: func() {
			if err := a.TryWriteMsg(payload, sent); err != nil {
				t.Fatal(err)
			}
			_, nfds, err := b.TryReadMsg(buf, fds[:])
			if err != nil || nfds != len(sent) {
				t.Fatalf("TryReadMsg: %d fds, %v", nfds, err)
			}
			fdtest.Close(fds[:nfds])
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if allocs := testing.AllocsPerRun(500, tt.f); allocs != 0 {
				t.Errorf("%v allocations per message, want 0", allocs)
			}
		})
	}
}
