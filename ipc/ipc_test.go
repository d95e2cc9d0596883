package ipc_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/handoff-go/handoff/ipc"
	"github.com/handoff-go/handoff/scm"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// --- helpers ---

// newPair returns the master's end of a control socket as an *ipc.Conn and
// the worker's end as a raw *scm.Conn, so tests can send frames a
// well-behaved peer never would. Both are closed at cleanup.
func newPair(tb testing.TB) (*ipc.Conn, *scm.Conn) {
	tb.Helper()
	c, f, err := ipc.Socketpair()
	if err != nil {
		tb.Fatalf("Socketpair: %v", err)
	}
	tb.Cleanup(func() { _ = c.Close() })
	// Dup through Control rather than Fd(), which would make the socket
	// blocking, then close the file at once.
	rc, err := f.SyscallConn()
	if err != nil {
		tb.Fatalf("SyscallConn: %v", err)
	}
	fd, derr := -1, error(nil)
	if err := rc.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		tb.Fatalf("Control: %v", err)
	}
	_ = f.Close()
	if derr != nil {
		tb.Fatalf("dup: %v", derr)
	}
	peer, err := scm.NewConn(fd)
	if err != nil {
		tb.Fatalf("scm.NewConn: %v", err)
	}
	tb.Cleanup(func() { _ = peer.Close() })
	return c, peer
}

// newConnPair returns two framed ends of one control socket.
func newConnPair(tb testing.TB) (*ipc.Conn, *ipc.Conn) {
	tb.Helper()
	c, peer := newPair(tb)
	return c, ipc.NewConn(peer)
}

// testPipe is a non-blocking pipe whose ends the test owns until it closes
// them through closeR/closeW, so that cleanup never closes a number twice.
type testPipe struct{ r, w int }

func newPipe(tb testing.TB) *testPipe {
	tb.Helper()
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		tb.Fatalf("pipe2: %v", err)
	}
	tp := &testPipe{r: p[0], w: p[1]}
	tb.Cleanup(func() { tp.closeR(); tp.closeW() })
	return tp
}

func (p *testPipe) closeR() {
	if p.r >= 0 {
		_ = unix.Close(p.r)
		p.r = -1
	}
}

func (p *testPipe) closeW() {
	if p.w >= 0 {
		_ = unix.Close(p.w)
		p.w = -1
	}
}

// assertNoWriters checks that every copy of the write end was closed,
// here and in flight: an empty pipe then reads EOF rather than EAGAIN.
func (p *testPipe) assertNoWriters(tb testing.TB) {
	tb.Helper()
	var b [1]byte
	n, err := unix.Read(p.r, b[:])
	switch {
	case err == nil && n == 0:
	case errors.Is(err, unix.EAGAIN):
		tb.Errorf("pipe still has a writer: an fd was leaked")
	default:
		tb.Errorf("read pipe: n=%d err=%v", n, err)
	}
}

func repeat(fd, n int) []int {
	fds := make([]int, n)
	for i := range fds {
		fds[i] = fd
	}
	return fds
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		_ = unix.Close(fd)
	}
}

func countFDs(tb testing.TB) int {
	tb.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		tb.Fatalf("read /proc/self/fd: %v", err)
	}
	return len(ents)
}

// userFrame encodes a User frame by hand: there is no exported encoder for
// one fragment.
func userFrame(flags uint16, payload []byte) []byte {
	b := []byte{ipc.Version, byte(ipc.KindUser), byte(flags), byte(flags >> 8)}
	return append(b, payload...)
}

// payloadOf returns n deterministic pseudo-random bytes for seed.
func payloadOf(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, uint64(n)))
	b := make([]byte, n+8)
	for i := 0; i < n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	return b[:n:n]
}

func seqIDs(start uint64, n int) []uint64 {
	ids := make([]uint64, n)
	for i := range ids {
		ids[i] = start + uint64(i)*0x0101010101
	}
	return ids
}

// background runs f on its own goroutine. The returned wait gives f's
// error. At cleanup, c is closed first, so that a write f is blocked in
// returns, and then f is waited for: no goroutine outlives the test.
func background(tb testing.TB, c io.Closer, f func() error) (wait func() error) {
	tb.Helper()
	done := make(chan error, 1)
	go func() { done <- f() }()
	wait = sync.OnceValue(func() error { return <-done })
	tb.Cleanup(func() {
		_ = c.Close()
		_ = wait()
	})
	return wait
}

// readMsg reads one message and fails the test on error.
func readMsg(tb testing.TB, c *ipc.Conn, m *ipc.Message) []int {
	tb.Helper()
	fds, err := c.Read(m)
	if err != nil {
		tb.Fatalf("Read: %v", err)
	}
	return fds
}

func writeRaw(tb testing.TB, peer *scm.Conn, frame []byte, fds []int) {
	tb.Helper()
	if err := peer.WriteMsg(frame, fds); err != nil {
		tb.Fatalf("raw WriteMsg: %v", err)
	}
}

// normalize makes empty slices nil so messages compare with DeepEqual.
func normalize(m ipc.Message) ipc.Message {
	if len(m.IDs) == 0 {
		m.IDs = nil
	}
	if len(m.Closed) == 0 {
		m.Closed = nil
	}
	if len(m.Payload) == 0 {
		m.Payload = nil
	}
	return m
}

// --- encoding ---

type frameCase struct {
	name  string
	frame []byte
	want  ipc.Message
}

// validFrames is one or more well-formed frames of every kind, with what
// they decode to. The fuzz targets use them as seeds.
func validFrames() []frameCase {
	long := strings.Repeat("a", 1500)
	ids253 := seqIDs(1, ipc.MaxConns)
	acked, closed := seqIDs(100, 5000), seqIDs(1<<40, ipc.MaxReportIDs-5000)
	return []frameCase{
		{name: "hello", frame: ipc.AppendHello(nil, 4242),
			want: ipc.Message{Kind: ipc.KindHello, PID: 4242}},
		{name: "hello max pid", frame: ipc.AppendHello(nil, 1<<32-1),
			want: ipc.Message{Kind: ipc.KindHello, PID: 1<<32 - 1}},
		{name: "listen", frame: ipc.AppendListen(nil, 7, "tcp", "127.0.0.1:8080"),
			want: ipc.Message{Kind: ipc.KindListen, Req: 7, Network: "tcp", Address: "127.0.0.1:8080"}},
		{name: "listen empty strings", frame: ipc.AppendListen(nil, 0, "", ""),
			want: ipc.Message{Kind: ipc.KindListen}},
		{name: "listen long address cut", frame: ipc.AppendListen(nil, 1, "unix", long),
			want: ipc.Message{Kind: ipc.KindListen, Req: 1, Network: "unix", Address: long[:1024]}},
		{name: "listen-reply success", frame: ipc.AppendListenReply(nil, 7, 3, 0, "[::]:8080", "", ""),
			want: ipc.Message{Kind: ipc.KindListenReply, Req: 7, Listener: 3, Address: "[::]:8080"}},
		{name: "listen-reply failure", frame: ipc.AppendListenReply(nil, 8, 0, uint32(unix.EADDRINUSE), "", "bind", "address already in use"),
			want: ipc.Message{Kind: ipc.KindListenReply, Req: 8, Errno: uint32(unix.EADDRINUSE), Syscall: "bind", Err: "address already in use"}},
		{name: "listen-reply max strings", frame: ipc.AppendListenReply(nil, 1, 2, 3, long, long, long),
			want: ipc.Message{Kind: ipc.KindListenReply, Req: 1, Listener: 2, Errno: 3, Address: long[:1024], Syscall: long[:1024], Err: long[:1024]}},
		{name: "conns none", frame: ipc.AppendConns(nil, false, 1, nil),
			want: ipc.Message{Kind: ipc.KindConns, Listener: 1}},
		{name: "conns three", frame: ipc.AppendConns(nil, false, 2, []uint64{1, 1 << 63, 3}),
			want: ipc.Message{Kind: ipc.KindConns, Listener: 2, IDs: []uint64{1, 1 << 63, 3}}},
		{name: "conns max", frame: ipc.AppendConns(nil, false, 1<<32-1, ids253),
			want: ipc.Message{Kind: ipc.KindConns, Listener: 1<<32 - 1, IDs: ids253}},
		{name: "return", frame: ipc.AppendConns(nil, true, 5, []uint64{9, 10}),
			want: ipc.Message{Kind: ipc.KindReturn, Listener: 5, IDs: []uint64{9, 10}}},
		{name: "return max", frame: ipc.AppendConns(nil, true, 5, ids253),
			want: ipc.Message{Kind: ipc.KindReturn, Listener: 5, IDs: ids253}},
		{name: "report empty", frame: ipc.AppendReport(nil, nil, nil),
			want: ipc.Message{Kind: ipc.KindReport}},
		{name: "report acked", frame: ipc.AppendReport(nil, []uint64{1, 2}, nil),
			want: ipc.Message{Kind: ipc.KindReport, IDs: []uint64{1, 2}}},
		{name: "report closed", frame: ipc.AppendReport(nil, nil, []uint64{3}),
			want: ipc.Message{Kind: ipc.KindReport, Closed: []uint64{3}}},
		{name: "report both", frame: ipc.AppendReport(nil, []uint64{1}, []uint64{2, 3}),
			want: ipc.Message{Kind: ipc.KindReport, IDs: []uint64{1}, Closed: []uint64{2, 3}}},
		{name: "report max", frame: ipc.AppendReport(nil, acked, closed),
			want: ipc.Message{Kind: ipc.KindReport, IDs: acked, Closed: closed}},
		{name: "disconnect", frame: ipc.AppendDisconnect(nil),
			want: ipc.Message{Kind: ipc.KindDisconnect}},
		{name: "user empty", frame: userFrame(0, nil),
			want: ipc.Message{Kind: ipc.KindUser}},
		{name: "user", frame: userFrame(0, []byte(`{"hello":"world"}`)),
			want: ipc.Message{Kind: ipc.KindUser, Payload: []byte(`{"hello":"world"}`)}},
		{name: "user fragment", frame: userFrame(ipc.FlagMore, []byte(`{"a":`)),
			want: ipc.Message{Kind: ipc.KindUser, Flags: ipc.FlagMore, Payload: []byte(`{"a":`)}},
		{name: "user max frame", frame: userFrame(0, payloadOf(1, ipc.MaxFrame-ipc.HeaderSize)),
			want: ipc.Message{Kind: ipc.KindUser, Payload: payloadOf(1, ipc.MaxFrame-ipc.HeaderSize)}},
	}
}

func TestKindString(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		kind ipc.Kind
		want string
	}{
		{name: "invalid", kind: 0, want: "invalid"},
		{name: "hello", kind: ipc.KindHello, want: "hello"},
		{name: "listen-reply", kind: ipc.KindListenReply, want: "listen-reply"},
		{name: "user", kind: ipc.KindUser, want: "user"},
		{name: "past the end", kind: ipc.KindUser + 1, want: "kind(9)"},
		{name: "max", kind: 255, want: "kind(255)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.kind.String(); got != tt.want {
				t.Errorf("Kind(%d).String() = %q, want %q", uint8(tt.kind), got, tt.want)
			}
		})
	}
}

func TestEncodeDecode(t *testing.T) {
	t.Parallel()
	for _, tt := range validFrames() {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if len(tt.frame) > ipc.MaxFrame {
				t.Fatalf("frame is %d bytes, over MaxFrame", len(tt.frame))
			}
			if tt.frame[0] != ipc.Version || ipc.Kind(tt.frame[1]) != tt.want.Kind {
				t.Fatalf("header % x", tt.frame[:ipc.HeaderSize])
			}
			var m ipc.Message
			if err := ipc.Decode(tt.frame, &m); err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if got, want := normalize(m), normalize(tt.want); !reflect.DeepEqual(got, want) {
				t.Errorf("Decode:\n got %+v\nwant %+v", got, want)
			}
			if got, want := m.NumFDs(), len(tt.want.IDs); (m.Kind == ipc.KindConns || m.Kind == ipc.KindReturn) && got != want {
				t.Errorf("NumFDs = %d, want %d", got, want)
			}
			// The encoders append: a prefix in dst is kept.
			if enc := reencode(&m, []byte("prefix")); !bytes.Equal(enc, append([]byte("prefix"), tt.frame...)) {
				t.Errorf("re-encoding after a prefix differs")
			}
		})
	}
}

// reencode encodes m with the encoders, appending to dst.
func reencode(m *ipc.Message, dst []byte) []byte {
	start := len(dst)
	switch m.Kind {
	case ipc.KindHello:
		dst = ipc.AppendHello(dst, int(m.PID))
	case ipc.KindListen:
		dst = ipc.AppendListen(dst, m.Req, m.Network, m.Address)
	case ipc.KindListenReply:
		dst = ipc.AppendListenReply(dst, m.Req, m.Listener, m.Errno, m.Address, m.Syscall, m.Err)
	case ipc.KindConns, ipc.KindReturn:
		dst = ipc.AppendConns(dst, m.Kind == ipc.KindReturn, m.Listener, m.IDs)
	case ipc.KindReport:
		dst = ipc.AppendReport(dst, m.IDs, m.Closed)
	case ipc.KindDisconnect:
		dst = ipc.AppendDisconnect(dst)
	case ipc.KindUser:
		return append(dst, userFrame(m.Flags, m.Payload)...)
	default:
		panic(fmt.Sprintf("reencode: kind %s", m.Kind))
	}
	// Only User frames have flags an encoder sets; carry the rest over.
	binary.LittleEndian.PutUint16(dst[start+2:], m.Flags)
	return dst
}

func TestDecodeErrors(t *testing.T) {
	t.Parallel()
	hdr := func(version byte, kind ipc.Kind, body ...byte) []byte {
		return append([]byte{version, byte(kind), 0, 0}, body...)
	}
	u16 := func(v int) []byte { return binary.LittleEndian.AppendUint16(nil, uint16(v)) }
	conns := func(n int) []byte {
		b := append(hdr(ipc.Version, ipc.KindConns, 1, 0, 0, 0), u16(n)...)
		return append(b, make([]byte, 8*n)...)
	}
	report := func(na, nc int) []byte {
		b := append(hdr(ipc.Version, ipc.KindReport), u16(na)...)
		b = append(b, u16(nc)...)
		return append(b, make([]byte, 8*(na+nc))...)
	}
	listenStr := func(n int) []byte {
		b := append(hdr(ipc.Version, ipc.KindListen, 0, 0, 0, 0), u16(n)...)
		b = append(b, make([]byte, n)...)
		return append(b, 0, 0)
	}
	tests := []struct {
		name  string
		frame []byte
		want  error
	}{
		{name: "nil", frame: nil, want: ipc.ErrMalformed},
		{name: "one byte", frame: []byte{ipc.Version}, want: ipc.ErrMalformed},
		{name: "three bytes", frame: []byte{ipc.Version, byte(ipc.KindDisconnect), 0}, want: ipc.ErrMalformed},
		{name: "version 0", frame: hdr(0, ipc.KindDisconnect), want: ipc.ErrVersion},
		{name: "version 2", frame: hdr(2, ipc.KindDisconnect), want: ipc.ErrVersion},
		{name: "version 255", frame: append(hdr(255, ipc.KindHello), 1, 2, 3, 4), want: ipc.ErrVersion},
		{name: "kind 0", frame: hdr(ipc.Version, 0), want: ipc.ErrUnknownKind},
		{name: "kind past user", frame: hdr(ipc.Version, ipc.KindUser+1), want: ipc.ErrUnknownKind},
		{name: "kind 255", frame: hdr(ipc.Version, 255), want: ipc.ErrUnknownKind},
		{name: "conns over MaxConns", frame: conns(ipc.MaxConns + 1), want: ipc.ErrMalformed},
		{name: "conns count 65535", frame: conns(65535), want: ipc.ErrMalformed},
		{name: "conns count over body", frame: conns(3)[:4+4+2+8*2], want: ipc.ErrMalformed},
		{name: "report over MaxReportIDs", frame: report(ipc.MaxReportIDs, 1), want: ipc.ErrMalformed},
		{name: "report counts 65535", frame: report(65535, 65535)[:64], want: ipc.ErrMalformed},
		{name: "report closed over body", frame: report(1, 2)[:4+4+8*2], want: ipc.ErrMalformed},
		{name: "string over 1024", frame: listenStr(1025), want: ipc.ErrMalformed},
		{name: "string length over body", frame: listenStr(10)[:4+4+2+5], want: ipc.ErrMalformed},
		{name: "listen-reply missing strings", frame: hdr(ipc.Version, ipc.KindListenReply, make([]byte, 12)...), want: ipc.ErrMalformed},
		{name: "disconnect with body", frame: hdr(ipc.Version, ipc.KindDisconnect, 0), want: ipc.ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var m ipc.Message
			if err := ipc.Decode(tt.frame, &m); !errors.Is(err, tt.want) {
				t.Errorf("Decode: got %v, want %v", err, tt.want)
			}
		})
	}
}

// TestDecodeTruncatedAndTrailing cuts every valid frame short at every
// length, and adds a trailing byte to it: all must be rejected, except
// that a User frame's body is whatever follows the header.
func TestDecodeTruncatedAndTrailing(t *testing.T) {
	t.Parallel()
	for _, tt := range validFrames() {
		if tt.want.Kind == ipc.KindUser {
			continue
		}
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var m ipc.Message
			for n := 0; n < len(tt.frame); n++ {
				// Every short length of small frames; for large ones
				// (decoding is linear, so all lengths would be quadratic)
				// the start, the end and a sample in between.
				if n > 256 && n < len(tt.frame)-64 && n%997 != 0 {
					continue
				}
				if err := ipc.Decode(tt.frame[:n], &m); !errors.Is(err, ipc.ErrMalformed) {
					t.Fatalf("Decode of the first %d of %d bytes: %v, want ErrMalformed", n, len(tt.frame), err)
				}
			}
			for _, extra := range [][]byte{{0}, {1, 2, 3, 4, 5, 6, 7, 8}} {
				if err := ipc.Decode(append(bytes.Clone(tt.frame), extra...), &m); !errors.Is(err, ipc.ErrMalformed) {
					t.Fatalf("Decode with %d trailing bytes: %v, want ErrMalformed", len(extra), err)
				}
			}
		})
	}
}

// TestDecodeReusesMessage decodes frames of different kinds into one
// Message: nothing of an earlier frame shows through a later one.
func TestDecodeReusesMessage(t *testing.T) {
	t.Parallel()
	var m ipc.Message
	for _, tt := range validFrames() {
		if err := ipc.Decode(tt.frame, &m); err != nil {
			t.Fatalf("%s: Decode: %v", tt.name, err)
		}
		if got, want := normalize(m), normalize(tt.want); !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: Decode into a used Message:\n got %+v\nwant %+v", tt.name, got, want)
		}
	}
	// Decode never keeps the frame: overwriting it changes nothing but a
	// User frame's Payload, which is documented to alias it.
	frame := ipc.AppendListen(nil, 1, "tcp", ":80")
	if err := ipc.Decode(frame, &m); err != nil {
		t.Fatal(err)
	}
	clear(frame)
	if m.Network != "tcp" || m.Address != ":80" {
		t.Errorf("strings changed with the frame: %q %q", m.Network, m.Address)
	}
}

// --- Conn ---

func TestConnsCarryFDs(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		n    int
		ret  bool
	}{
		{name: "none", n: 0},
		{name: "one", n: 1},
		{name: "16", n: 16},
		{name: "MaxConns", n: ipc.MaxConns},
		{name: "return 3", n: 3, ret: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			master, worker := newConnPair(t)
			pipes := make([]*testPipe, tt.n)
			sent := make([]int, tt.n)
			for i := range pipes {
				pipes[i] = newPipe(t)
				sent[i] = pipes[i].w
			}
			ids := seqIDs(1000, tt.n)
			var err error
			if tt.ret {
				err = worker.WriteFrame(ipc.AppendConns(nil, true, 9, ids), sent)
			} else {
				err = master.TryWriteConns(9, ids, sent)
			}
			if err != nil {
				t.Fatalf("write: %v", err)
			}
			from := worker
			if tt.ret {
				from = master
			}
			var m ipc.Message
			fds := readMsg(t, from, &m)
			t.Cleanup(func() { closeFDs(fds) })
			want := ipc.KindConns
			if tt.ret {
				want = ipc.KindReturn
			}
			if m.Kind != want || m.Listener != 9 || !slices.Equal(m.IDs, ids) {
				t.Fatalf("got %s listener %d ids %v", m.Kind, m.Listener, m.IDs)
			}
			if len(fds) != tt.n || m.NumFDs() != tt.n {
				t.Fatalf("got %d fds, NumFDs %d, want %d", len(fds), m.NumFDs(), tt.n)
			}
			for i, fd := range fds {
				flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
				if err != nil || flags&unix.FD_CLOEXEC == 0 {
					t.Errorf("fd %d: flags %#x err %v, want close-on-exec", i, flags, err)
				}
				if _, err := unix.Write(fd, []byte{byte(i)}); err != nil {
					t.Fatalf("write through fd %d: %v", i, err)
				}
				var b [2]byte
				if n, err := unix.Read(pipes[i].r, b[:]); n != 1 || err != nil || b[0] != byte(i) {
					t.Errorf("pipe %d: n=%d b=%d err=%v: fd %d is not conn %d's", i, n, b[0], err, i, ids[i])
				}
			}
		})
	}
}

func TestTryWriteConnsArgs(t *testing.T) {
	t.Parallel()
	master, _ := newPair(t)
	p := newPipe(t)
	tests := []struct {
		name string
		ids  []uint64
		fds  []int
	}{
		{name: "more ids than fds", ids: seqIDs(1, 2), fds: []int{p.w}},
		{name: "more fds than ids", ids: seqIDs(1, 1), fds: []int{p.w, p.w}},
		{name: "over MaxConns", ids: seqIDs(1, ipc.MaxConns+1), fds: repeat(p.w, ipc.MaxConns+1)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := master.TryWriteConns(1, tt.ids, tt.fds); !errors.Is(err, ipc.ErrFDs) {
				t.Errorf("TryWriteConns: %v, want ErrFDs", err)
			}
		})
	}
}

func TestWriteFrameTooLarge(t *testing.T) {
	t.Parallel()
	master, _ := newPair(t)
	if err := master.WriteFrame(userFrame(0, make([]byte, ipc.MaxFrame-ipc.HeaderSize+1)), nil); !errors.Is(err, ipc.ErrMalformed) {
		t.Errorf("WriteFrame of MaxFrame+1 bytes: %v, want ErrMalformed", err)
	}
}

// TestWrongFDs sends frames whose fds do not match their kind and body.
// Read drops each with ErrFDs, closes its fds, and reads on.
func TestWrongFDs(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		frame []byte
		nfds  int
	}{
		{name: "conns short of fds", frame: ipc.AppendConns(nil, false, 1, []uint64{1, 2}), nfds: 1},
		{name: "conns with extra fds", frame: ipc.AppendConns(nil, false, 1, []uint64{1, 2}), nfds: 3},
		{name: "conns of none with one", frame: ipc.AppendConns(nil, false, 1, nil), nfds: 1},
		{name: "conns without fds", frame: ipc.AppendConns(nil, false, 1, []uint64{1}), nfds: 0},
		{name: "return short of fds", frame: ipc.AppendConns(nil, true, 1, seqIDs(1, 16)), nfds: 15},
		{name: "report with one", frame: ipc.AppendReport(nil, []uint64{1}, nil), nfds: 1},
		{name: "report with MaxFDs", frame: ipc.AppendReport(nil, []uint64{1}, []uint64{2}), nfds: scm.MaxFDs},
		{name: "hello with two", frame: ipc.AppendHello(nil, 1), nfds: 2},
		{name: "disconnect with one", frame: ipc.AppendDisconnect(nil), nfds: 1},
		{name: "user with one", frame: userFrame(0, []byte("{}")), nfds: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, peer := newPair(t)
			p := newPipe(t)
			writeRaw(t, peer, tt.frame, repeat(p.w, tt.nfds))
			p.closeW()
			writeRaw(t, peer, ipc.AppendHello(nil, 77), nil)
			var m ipc.Message
			fds, err := c.Read(&m)
			if !errors.Is(err, ipc.ErrFDs) || fds != nil {
				t.Fatalf("Read: fds %v, err %v; want nil, ErrFDs", fds, err)
			}
			p.assertNoWriters(t)
			if fds := readMsg(t, c, &m); m.Kind != ipc.KindHello || m.PID != 77 || len(fds) != 0 {
				t.Fatalf("next Read: %s pid %d with %d fds, want the hello", m.Kind, m.PID, len(fds))
			}
		})
	}
}

// TestUserMessages sends user messages of many sizes with Conns frames in
// between, all from one goroutine: they arrive intact and in order.
func TestUserMessages(t *testing.T) {
	t.Parallel()
	sizes := []int{0, 1, 10, ipc.MaxFrame - ipc.HeaderSize, ipc.MaxFrame - ipc.HeaderSize + 1, 3 * (ipc.MaxFrame - ipc.HeaderSize), 1 << 20, ipc.MaxMessage}
	master, worker := newConnPair(t)
	p := newPipe(t)
	wait := background(t, master, func() error {
		for i, n := range sizes {
			if err := master.WriteUser(payloadOf(uint64(i), n)); err != nil {
				return fmt.Errorf("WriteUser(%d bytes): %w", n, err)
			}
			if err := master.WriteFrame(ipc.AppendConns(nil, false, 1, []uint64{uint64(i)}), []int{p.w}); err != nil {
				return fmt.Errorf("WriteFrame(conns %d): %w", i, err)
			}
		}
		return nil
	})
	var m ipc.Message
	for i, n := range sizes {
		if fds := readMsg(t, worker, &m); m.Kind != ipc.KindUser || len(fds) != 0 {
			t.Fatalf("message %d: got %s with %d fds, want user", i, m.Kind, len(fds))
		}
		if !bytes.Equal(m.Payload, payloadOf(uint64(i), n)) {
			t.Fatalf("message %d: got %d bytes, want the %d sent", i, len(m.Payload), n)
		}
		if m.Flags&ipc.FlagMore != 0 {
			t.Errorf("message %d: FlagMore set on a whole message", i)
		}
		keep := m.Payload
		fds := readMsg(t, worker, &m)
		closeFDs(fds)
		if m.Kind != ipc.KindConns || len(m.IDs) != 1 || m.IDs[0] != uint64(i) || len(fds) != 1 {
			t.Fatalf("after message %d: got %s ids %v with %d fds, want conns %d", i, m.Kind, m.IDs, len(fds), i)
		}
		// The Payload is the caller's: later reads do not touch it.
		if !bytes.Equal(keep, payloadOf(uint64(i), n)) {
			t.Fatalf("message %d: Payload changed by a later Read", i)
		}
	}
	if err := wait(); err != nil {
		t.Fatal(err)
	}
}

// TestConcurrentWriters checks that fragments of messages written from
// many goroutines at once are never interleaved.
func TestConcurrentWriters(t *testing.T) {
	t.Parallel()
	const writers, perWriter, size = 4, 3, 150_000
	master, worker := newConnPair(t)
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Go(func() {
			for s := range perWriter {
				p := payloadOf(uint64(w*100+s), size)
				p[0], p[1] = byte(w), byte(s)
				if err := master.WriteUser(p); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	t.Cleanup(func() { _ = master.Close(); wg.Wait() })
	next := make([]int, writers)
	var m ipc.Message
	for range writers * perWriter {
		readMsg(t, worker, &m)
		if m.Kind != ipc.KindUser || len(m.Payload) != size {
			t.Fatalf("got %s of %d bytes", m.Kind, len(m.Payload))
		}
		w, s := int(m.Payload[0]), int(m.Payload[1])
		if w >= writers || s != next[w] {
			t.Fatalf("got message %d of writer %d, want %d", s, w, next[w])
		}
		want := payloadOf(uint64(w*100+s), size)
		want[0], want[1] = byte(w), byte(s)
		if !bytes.Equal(m.Payload, want) {
			t.Fatalf("message %d of writer %d is not what was sent", s, w)
		}
		next[w]++
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestWriteUserTooLarge(t *testing.T) {
	t.Parallel()
	master, worker := newConnPair(t)
	if err := master.WriteUser(make([]byte, ipc.MaxMessage+1)); !errors.Is(err, ipc.ErrMessageTooLarge) {
		t.Fatalf("WriteUser(MaxMessage+1): %v, want ErrMessageTooLarge", err)
	}
	var m ipc.Message
	if _, err := worker.TryRead(&m); !errors.Is(err, unix.EAGAIN) {
		t.Fatalf("TryRead: %v, want EAGAIN: nothing was to be sent", err)
	}
}

// TestReadMessageTooLarge has a peer send fragments adding up to more than
// MaxMessage. The reader gives ErrMessageTooLarge once, drops the rest of
// that message, and reads the next one whole.
func TestReadMessageTooLarge(t *testing.T) {
	t.Parallel()
	const chunk = ipc.MaxFrame - ipc.HeaderSize
	fits := ipc.MaxMessage / chunk // this many full fragments fit
	tests := []struct {
		name  string
		total int // fragments in the oversized message
	}{
		{name: "overflow on the last fragment", total: fits + 1},
		{name: "overflow mid-message", total: fits + 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, peer := newPair(t)
			p := newPipe(t)
			frag := payloadOf(1, chunk)
			wait := background(t, peer, func() error {
				for i := range tt.total {
					var flags uint16
					if i < tt.total-1 {
						flags = ipc.FlagMore
					}
					if err := peer.WriteMsg(userFrame(flags, frag), nil); err != nil {
						return err
					}
				}
				if err := peer.WriteMsg(userFrame(0, []byte(`"next"`)), nil); err != nil {
					return err
				}
				return peer.WriteMsg(ipc.AppendConns(nil, false, 1, []uint64{5}), []int{p.w})
			})
			var m ipc.Message
			if fds, err := c.Read(&m); !errors.Is(err, ipc.ErrMessageTooLarge) || fds != nil {
				t.Fatalf("Read: %v, want ErrMessageTooLarge", err)
			}
			if readMsg(t, c, &m); m.Kind != ipc.KindUser || string(m.Payload) != `"next"` {
				t.Fatalf("next Read: %s %q, want the next user message", m.Kind, m.Payload)
			}
			fds := readMsg(t, c, &m)
			closeFDs(fds)
			if m.Kind != ipc.KindConns || len(fds) != 1 {
				t.Fatalf("then: %s with %d fds, want conns", m.Kind, len(fds))
			}
			if err := wait(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestDroppedFrames has a peer break the protocol in the middle of a
// fragmented user message. The frame that breaks it is dropped with an
// error and its fds closed; the message it broke is dropped whole, never
// delivered with a hole in it nor as its tail alone; and the next message
// reads intact.
func TestDroppedFrames(t *testing.T) {
	t.Parallel()
	type raw struct {
		frame []byte
		nfds  int
	}
	more := func(s string) raw { return raw{frame: userFrame(ipc.FlagMore, []byte(s))} }
	last := func(s string) raw { return raw{frame: userFrame(0, []byte(s))} }
	tests := []struct {
		name   string
		frames []raw
		want   error
	}{
		{name: "hello between fragments", want: ipc.ErrFragment,
			frames: []raw{more("ab"), {frame: ipc.AppendHello(nil, 1)}, more("cd"), last("ef")}},
		{name: "conns between fragments", want: ipc.ErrFragment,
			frames: []raw{more("ab"), {frame: ipc.AppendConns(nil, false, 1, []uint64{1, 2}), nfds: 2}, last("ef")}},
		{name: "report right before the last fragment", want: ipc.ErrFragment,
			frames: []raw{more("ab"), more("cd"), {frame: ipc.AppendReport(nil, []uint64{1}, nil)}, last("ef")}},
		{name: "conns with wrong fds between fragments", want: ipc.ErrFDs,
			frames: []raw{more("ab"), {frame: ipc.AppendConns(nil, false, 1, []uint64{1, 2}), nfds: 1}, last("ef")}},
		{name: "unknown kind between fragments", want: ipc.ErrUnknownKind,
			frames: []raw{more("ab"), {frame: []byte{ipc.Version, 200, 0, 0}}, last("ef")}},
		{name: "bad version between fragments", want: ipc.ErrVersion,
			frames: []raw{more("ab"), {frame: []byte{9, byte(ipc.KindUser), 0, 0, 'x'}}, last("ef")}},
		{name: "fds on a middle fragment", want: ipc.ErrFDs,
			frames: []raw{more("ab"), {frame: userFrame(ipc.FlagMore, []byte("cd")), nfds: 1}, last("ef")}},
		{name: "fds on the first fragment", want: ipc.ErrFDs,
			frames: []raw{{frame: userFrame(ipc.FlagMore, []byte("ab")), nfds: 2}, more("cd"), last("ef")}},
		{name: "fds on the last fragment", want: ipc.ErrFDs,
			frames: []raw{more("ab"), more("cd"), {frame: userFrame(0, []byte("ef")), nfds: 1}}},
		{name: "oversized middle fragment", want: ipc.ErrMalformed,
			frames: []raw{more("ab"), more(strings.Repeat("x", ipc.MaxFrame-ipc.HeaderSize+1)), last("ef")}},
		{name: "far oversized middle fragment", want: ipc.ErrMalformed,
			frames: []raw{more("ab"), more(strings.Repeat("x", ipc.MaxFrame+100)), last("ef")}},
		{name: "oversized single frame", want: ipc.ErrMalformed,
			frames: []raw{last(strings.Repeat("x", ipc.MaxFrame+100))}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, peer := newPair(t)
			p := newPipe(t)
			for _, f := range tt.frames {
				writeRaw(t, peer, f.frame, repeat(p.w, f.nfds))
			}
			writeRaw(t, peer, userFrame(ipc.FlagMore, []byte(`"whole`)), nil)
			writeRaw(t, peer, userFrame(0, []byte(`"`)), nil)
			p.closeW()
			var m ipc.Message
			fds, err := c.Read(&m)
			if !errors.Is(err, tt.want) || fds != nil {
				t.Fatalf("Read: %s %q, %v; want %v", m.Kind, m.Payload, err, tt.want)
			}
			if fds := readMsg(t, c, &m); m.Kind != ipc.KindUser || string(m.Payload) != `"whole"` || len(fds) != 0 {
				t.Fatalf("next Read: %s %q, want the next whole message", m.Kind, m.Payload)
			}
			p.assertNoWriters(t)
			if _, err := c.TryRead(&m); !errors.Is(err, unix.EAGAIN) {
				t.Fatalf("then: %s %q, %v; want nothing more", m.Kind, m.Payload, err)
			}
		})
	}
}

func TestWriteReportSplits(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name          string
		acked, closed int
		wantFrames    int
	}{
		{name: "nothing", wantFrames: 0},
		{name: "small", acked: 3, closed: 2, wantFrames: 1},
		{name: "exactly one frame", acked: ipc.MaxReportIDs - 1, closed: 1, wantFrames: 1},
		{name: "one over", acked: ipc.MaxReportIDs, closed: 1, wantFrames: 2},
		{name: "many", acked: 10_000, closed: 9_000, wantFrames: 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			worker, master := newConnPair(t)
			acked, closed := seqIDs(1, tt.acked), seqIDs(1<<32, tt.closed)
			if err := worker.WriteReport(acked, closed); err != nil {
				t.Fatalf("WriteReport: %v", err)
			}
			var gotAcked, gotClosed []uint64
			var m ipc.Message
			frames := 0
			for {
				if _, err := master.TryRead(&m); errors.Is(err, unix.EAGAIN) {
					break
				} else if err != nil {
					t.Fatalf("TryRead: %v", err)
				}
				if m.Kind != ipc.KindReport {
					t.Fatalf("got %s, want report", m.Kind)
				}
				if len(m.IDs)+len(m.Closed) > ipc.MaxReportIDs {
					t.Fatalf("frame with %d ids", len(m.IDs)+len(m.Closed))
				}
				frames++
				gotAcked = append(gotAcked, m.IDs...)
				gotClosed = append(gotClosed, m.Closed...)
			}
			if frames != tt.wantFrames {
				t.Errorf("got %d frames, want %d", frames, tt.wantFrames)
			}
			if !slices.Equal(gotAcked, acked) || !slices.Equal(gotClosed, closed) {
				t.Errorf("got %d acked and %d closed ids, want %d and %d in order", len(gotAcked), len(gotClosed), len(acked), len(closed))
			}
		})
	}
}

func TestTryWriteConnsBusy(t *testing.T) {
	t.Parallel()
	master, worker := newConnPair(t)
	p := newPipe(t)
	// Fill the socket, then park a WriteUser on it: it holds the write lock.
	queued := 0
	for ; ; queued++ {
		err := master.TryWriteConns(1, []uint64{uint64(queued)}, []int{p.w})
		if errors.Is(err, unix.EAGAIN) {
			break
		}
		if err != nil {
			t.Fatalf("TryWriteConns: %v", err)
		}
	}
	wait := background(t, master, func() error { return master.WriteUser([]byte(`"late"`)) })
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := master.TryWriteConns(1, []uint64{99}, []int{p.w})
		if errors.Is(err, ipc.ErrBusy) {
			break
		}
		if !errors.Is(err, unix.EAGAIN) {
			t.Fatalf("TryWriteConns: %v, want EAGAIN or ErrBusy", err)
		}
		if time.Now().After(deadline) {
			t.Fatal("TryWriteConns never saw the write lock taken")
		}
		time.Sleep(time.Millisecond)
	}
	var m ipc.Message
	for i := range queued {
		fds := readMsg(t, worker, &m)
		closeFDs(fds)
		if m.Kind != ipc.KindConns || m.IDs[0] != uint64(i) {
			t.Fatalf("got %s %v, want conns %d", m.Kind, m.IDs, i)
		}
	}
	if readMsg(t, worker, &m); m.Kind != ipc.KindUser || string(m.Payload) != `"late"` {
		t.Fatalf("got %s %q, want the user message", m.Kind, m.Payload)
	}
	if err := wait(); err != nil {
		t.Fatal(err)
	}
}

func TestTryReadEmpty(t *testing.T) {
	t.Parallel()
	c, _ := newPair(t)
	var m ipc.Message
	if fds, err := c.TryRead(&m); !errors.Is(err, unix.EAGAIN) || fds != nil {
		t.Errorf("TryRead: %v %v, want EAGAIN", fds, err)
	}
}

// TestTryReadPartialMessage: TryRead in the middle of a fragmented message
// says EAGAIN and resumes the message on the next call.
func TestTryReadPartialMessage(t *testing.T) {
	t.Parallel()
	c, peer := newPair(t)
	writeRaw(t, peer, userFrame(ipc.FlagMore, []byte("ab")), nil)
	var m ipc.Message
	if _, err := c.TryRead(&m); !errors.Is(err, unix.EAGAIN) {
		t.Fatalf("TryRead: %v, want EAGAIN", err)
	}
	writeRaw(t, peer, userFrame(0, []byte("cd")), nil)
	if _, err := c.TryRead(&m); err != nil || string(m.Payload) != "abcd" {
		t.Fatalf("TryRead: %q %v, want \"abcd\"", m.Payload, err)
	}
}

func TestReadEOF(t *testing.T) {
	t.Parallel()
	master, worker := newConnPair(t)
	if err := worker.WriteFrame(ipc.AppendDisconnect(nil), nil); err != nil {
		t.Fatal(err)
	}
	if err := worker.Close(); err != nil {
		t.Fatal(err)
	}
	var m ipc.Message
	if readMsg(t, master, &m); m.Kind != ipc.KindDisconnect {
		t.Fatalf("got %s, want disconnect", m.Kind)
	}
	if fds, err := master.Read(&m); err != io.EOF || fds != nil {
		t.Fatalf("Read after the peer closed: %v, want io.EOF", err)
	}
}

func TestCloseUnblocksRead(t *testing.T) {
	t.Parallel()
	c, _ := newConnPair(t)
	done := make(chan error, 1)
	go func() {
		var m ipc.Message
		_, err := c.Read(&m)
		done <- err
	}()
	time.Sleep(10 * time.Millisecond)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, os.ErrClosed) {
		t.Fatalf("Read: %v, want an error matching os.ErrClosed", err)
	}
}

// TestInherited runs the worker side in a child process that finds the
// control socket on fd ControlFD, as a real worker does.
func TestInherited(t *testing.T) {
	if os.Getenv("IPC_TEST_CHILD") == "inherited" {
		inheritedChild(t)
		return
	}
	t.Parallel()
	master, f, err := ipc.Socketpair()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = master.Close() })
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// The child writes to a file, not a bytes.Buffer: reading a buffer that
	// exec's copying goroutine fills before Wait would be a data race.
	out, err := os.Create(t.TempDir() + "/child.out")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = out.Close() })
	output := func() string {
		b, _ := os.ReadFile(out.Name())
		return string(b)
	}
	cmd := exec.Command(exe, "-test.run=^TestInherited$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), "IPC_TEST_CHILD=inherited", ipc.EnvWorkerID+"=1",
		fmt.Sprintf("%s=%d", ipc.EnvControlFD, ipc.ControlFD), "GORACE="+os.Getenv("GORACE")+" atexit_sleep_ms=0")
	cmd.ExtraFiles = []*os.File{f}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		_ = f.Close()
		t.Fatal(err)
	}
	_ = f.Close()
	waited := false
	t.Cleanup(func() {
		if !waited {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})

	var m ipc.Message
	if readMsg(t, master, &m); m.Kind != ipc.KindHello || int(m.PID) != cmd.Process.Pid {
		t.Fatalf("got %s pid %d, want hello from %d\n%s", m.Kind, m.PID, cmd.Process.Pid, output())
	}
	p := newPipe(t)
	if err := master.TryWriteConns(1, []uint64{42}, []int{p.w}); err != nil {
		t.Fatal(err)
	}
	p.closeW()
	if readMsg(t, master, &m); m.Kind != ipc.KindReport || !slices.Equal(m.IDs, []uint64{42}) {
		t.Fatalf("got %s %v, want report of 42\n%s", m.Kind, m.IDs, output())
	}
	buf := make([]byte, 16)
	if n, err := unix.Read(p.r, buf); err != nil || string(buf[:n]) != "from child" {
		t.Fatalf("pipe: %q %v", buf[:n], err)
	}
	if err := master.WriteFrame(ipc.AppendDisconnect(nil), nil); err != nil {
		t.Fatal(err)
	}
	waited = true
	if err := cmd.Wait(); err != nil {
		t.Fatalf("child: %v\n%s", err, output())
	}
	if !strings.Contains(output(), "--- PASS: TestInherited") {
		t.Fatalf("child did not run the test:\n%s", output())
	}
	p.assertNoWriters(t) // the child closed the conn it was handed
}

func inheritedChild(t *testing.T) {
	c, err := ipc.Inherited()
	if err != nil {
		t.Fatalf("Inherited: %v", err)
	}
	defer func() { _ = c.Close() }()
	if err := c.WriteFrame(ipc.AppendHello(nil, os.Getpid()), nil); err != nil {
		t.Fatal(err)
	}
	var m ipc.Message
	fds := readMsg(t, c, &m)
	if m.Kind != ipc.KindConns || len(fds) != 1 {
		closeFDs(fds)
		t.Fatalf("got %s with %d fds, want conns with one", m.Kind, len(fds))
	}
	_, werr := unix.Write(fds[0], []byte("from child"))
	closeFDs(fds)
	if werr != nil {
		t.Fatal(werr)
	}
	if err := c.WriteReport(m.IDs, nil); err != nil {
		t.Fatal(err)
	}
	if readMsg(t, c, &m); m.Kind != ipc.KindDisconnect {
		t.Fatalf("got %s, want disconnect", m.Kind)
	}
}

// --- fds and allocations; these count fds and must not run in parallel ---

// TestFDLeak runs every way Read can drop a frame that carries fds, many
// times, and checks that the process ends with the fds it started with.
func TestFDLeak(t *testing.T) {
	c, peer := newPair(t)
	p := newPipe(t)
	bad := []struct {
		frame []byte
		nfds  int
	}{
		{frame: ipc.AppendConns(nil, false, 1, []uint64{1, 2}), nfds: 3},
		{frame: ipc.AppendReport(nil, []uint64{1}, nil), nfds: 2},
		{frame: userFrame(0, []byte("x")), nfds: 1},
		{frame: []byte{ipc.Version, 200, 0, 0}, nfds: 2},
		{frame: []byte{7, byte(ipc.KindConns), 0, 0}, nfds: 1},
		{frame: []byte{ipc.Version}, nfds: 1},
		{frame: append(ipc.AppendConns(nil, false, 1, []uint64{1}), 0), nfds: 1},
		{frame: userFrame(0, make([]byte, ipc.MaxFrame)), nfds: 2},
	}
	var m ipc.Message
	one := func(i int) {
		t.Helper()
		b := bad[i%len(bad)]
		writeRaw(t, peer, b.frame, repeat(p.w, b.nfds))
		if fds, err := c.Read(&m); err == nil || fds != nil {
			t.Fatalf("Read of bad frame %d: %v, %v", i%len(bad), fds, err)
		}
		writeRaw(t, peer, ipc.AppendConns(nil, false, 1, []uint64{1, 2}), []int{p.w, p.w})
		fds := readMsg(t, c, &m)
		closeFDs(fds)
	}
	one(0)
	before := countFDs(t)
	for i := range 2000 {
		one(i)
	}
	if after := countFDs(t); after != before {
		t.Errorf("open fds: %d before, %d after", before, after)
	}
	p.closeW()
	p.assertNoWriters(t)
}

func TestAllocs(t *testing.T) {
	master, worker := newConnPair(t)
	p := newPipe(t)
	ids := seqIDs(1, 16)
	sent := repeat(p.w, len(ids))
	acked, closed := seqIDs(1, 40), seqIDs(100, 10)
	conns := ipc.AppendConns(nil, false, 1, seqIDs(1, ipc.MaxConns))
	report := ipc.AppendReport(nil, acked, closed)
	var m ipc.Message
	tests := []struct {
		name string
		f    func()
	}{
		{name: "TryWriteConns+Read", f: func() {
			if err := master.TryWriteConns(1, ids, sent); err != nil {
				t.Fatal(err)
			}
			fds, err := worker.Read(&m)
			if err != nil || len(fds) != len(ids) {
				t.Fatalf("Read: %d fds, %v", len(fds), err)
			}
			closeFDs(fds)
		}},
		{name: "WriteReport+Read", f: func() {
			if err := worker.WriteReport(acked, closed); err != nil {
				t.Fatal(err)
			}
			if _, err := master.Read(&m); err != nil || m.Kind != ipc.KindReport {
				t.Fatalf("Read: %s %v", m.Kind, err)
			}
		}},
		{name: "Decode conns", f: func() {
			if err := ipc.Decode(conns, &m); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "Decode report", f: func() {
			if err := ipc.Decode(report, &m); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.f() // grow m's slices
			if allocs := testing.AllocsPerRun(200, tt.f); allocs != 0 {
				t.Errorf("%v allocations per call, want 0", allocs)
			}
		})
	}
}

func TestIsProtocolError(t *testing.T) {
	for _, tt := range []struct {
		name string
		err  error
		want bool
	}{
		{name: "malformed", err: fmt.Errorf("x: %w", ipc.ErrMalformed), want: true},
		{name: "fds", err: ipc.ErrFDs, want: true},
		{name: "too large", err: ipc.ErrMessageTooLarge, want: true},
		{name: "fds lost", err: ipc.ErrFDsLost},
		{name: "eof", err: io.EOF},
	} {
		if got := ipc.IsProtocolError(tt.err); got != tt.want {
			t.Errorf("%s: IsProtocolError = %v, want %v", tt.name, got, tt.want)
		}
	}
}
