//go:build linux

package ipc_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/handoff-go/handoff/internal/fdtest"
	"github.com/handoff-go/handoff/internal/proctest"
	"github.com/handoff-go/handoff/ipc"
	"github.com/handoff-go/handoff/scm"
	"go.uber.org/goleak"
	"golang.org/x/sync/errgroup"
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

// inet4 and inet6 are client addresses as accept4 fills them in: a raw
// sockaddr_in (16 bytes) and a raw sockaddr_in6 (28, MaxAddr).
func inet4(fd int, ip [4]byte, port uint16) ipc.Handoff {
	sa := unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: ip}
	binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:], port)
	h := ipc.Handoff{FD: int32(fd), AddrLen: unix.SizeofSockaddrInet4}
	copy(h.Addr[:], unsafe.Slice((*byte)(unsafe.Pointer(&sa)), unix.SizeofSockaddrInet4))
	return h
}

func inet6(fd int, ip [16]byte, port uint16, scope uint32) ipc.Handoff {
	sa := unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: ip, Scope_id: scope}
	binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:], port)
	h := ipc.Handoff{FD: int32(fd), AddrLen: unix.SizeofSockaddrInet6}
	copy(h.Addr[:], unsafe.Slice((*byte)(unsafe.Pointer(&sa)), unix.SizeofSockaddrInet6))
	return h
}

// handoffs returns n handoffs of fds[i] (or fd -1 where fds is short),
// their addresses cycling through a sockaddr_in, a sockaddr_in6 and none,
// each different.
func handoffs(n int, fds ...int) []ipc.Handoff {
	hs := make([]ipc.Handoff, n)
	for i := range hs {
		fd := -1
		if i < len(fds) {
			fd = fds[i]
		}
		switch i % 3 {
		case 0:
			hs[i] = inet4(fd, [4]byte{10, byte(i >> 8), byte(i), 1}, uint16(40000+i))
		case 1:
			hs[i] = inet6(fd, [16]byte{0: 0x20, 1: 0x01, 14: byte(i >> 8), 15: byte(i)}, uint16(50000+i), uint32(i))
		default:
			hs[i] = ipc.Handoff{FD: int32(fd)}
		}
	}
	return hs
}

// received is hs as a decoder gives it back: no fd yet.
func received(hs []ipc.Handoff) []ipc.Handoff {
	out := make([]ipc.Handoff, len(hs))
	for i, h := range hs {
		h.FD = -1
		out[i] = h
	}
	return out
}

// sameAddrs reports whether got carries want's addresses, in order.
func sameAddrs(got, want []ipc.Handoff) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		if got[i].AddrLen != want[i].AddrLen || got[i].Addr != want[i].Addr {
			return false
		}
	}
	return true
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
	if len(m.Handoffs) == 0 {
		m.Handoffs = nil
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
	fds   int // the fds the frame must carry: its NumFDs
}

// validFrames is one or more well-formed frames of every kind, with what
// they decode to. The fuzz targets use them as seeds.
func validFrames() []frameCase {
	long := strings.Repeat("a", 1500)
	hs3, hsMax := handoffs(3), handoffs(ipc.MaxConns)
	var full ipc.Handoff // every address byte set, so a cut one shows
	full.AddrLen = ipc.MaxAddr
	for i := range full.Addr {
		full.Addr[i] = 0xff - byte(i)
	}
	wide := make([]ipc.Handoff, ipc.MaxConns)
	for i := range wide {
		wide[i] = full
	}
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
			want: ipc.Message{Kind: ipc.KindListenReply, Req: 7, Listener: 3, Address: "[::]:8080"}, fds: 1},
		{name: "listen-reply success max listener and address", frame: ipc.AppendListenReply(nil, 1, 1<<32-1, 0, long, "", ""),
			want: ipc.Message{Kind: ipc.KindListenReply, Req: 1, Listener: 1<<32 - 1, Address: long[:1024]}, fds: 1},
		{name: "listen-reply failure", frame: ipc.AppendListenReply(nil, 8, 0, uint32(unix.EADDRINUSE), "", "bind", "address already in use"),
			want: ipc.Message{Kind: ipc.KindListenReply, Req: 8, Errno: uint32(unix.EADDRINUSE), Syscall: "bind", Err: "address already in use"}},
		{name: "listen-reply failure without errno", frame: ipc.AppendListenReply(nil, 9, 0, 0, "", "", "unknown network"),
			want: ipc.Message{Kind: ipc.KindListenReply, Req: 9, Err: "unknown network"}},
		{name: "listen-reply failure max strings", frame: ipc.AppendListenReply(nil, 1, 0, 3, long, long, long),
			want: ipc.Message{Kind: ipc.KindListenReply, Req: 1, Errno: 3, Address: long[:1024], Syscall: long[:1024], Err: long[:1024]}},
		{name: "conns none", frame: ipc.AppendConns(nil, 1, nil),
			want: ipc.Message{Kind: ipc.KindConns, Listener: 1}},
		{name: "conns one without address", frame: ipc.AppendConns(nil, 1, []ipc.Handoff{{FD: 5}}),
			want: ipc.Message{Kind: ipc.KindConns, Listener: 1, Handoffs: []ipc.Handoff{{FD: -1}}}, fds: 1},
		{name: "conns one inet4", frame: ipc.AppendConns(nil, 2, []ipc.Handoff{inet4(5, [4]byte{127, 0, 0, 1}, 8080)}),
			want: ipc.Message{Kind: ipc.KindConns, Listener: 2, Handoffs: []ipc.Handoff{inet4(-1, [4]byte{127, 0, 0, 1}, 8080)}}, fds: 1},
		{name: "conns one inet6", frame: ipc.AppendConns(nil, 2, []ipc.Handoff{inet6(5, [16]byte{15: 1}, 443, 2)}),
			want: ipc.Message{Kind: ipc.KindConns, Listener: 2, Handoffs: []ipc.Handoff{inet6(-1, [16]byte{15: 1}, 443, 2)}}, fds: 1},
		{name: "conns three of 16, 28 and 0 bytes", frame: ipc.AppendConns(nil, 2, hs3),
			want: ipc.Message{Kind: ipc.KindConns, Listener: 2, Handoffs: received(hs3)}, fds: 3},
		{name: "conns max", frame: ipc.AppendConns(nil, 1<<32-1, hsMax),
			want: ipc.Message{Kind: ipc.KindConns, Listener: 1<<32 - 1, Handoffs: received(hsMax)}, fds: ipc.MaxConns},
		{name: "conns max with every address MaxAddr", frame: ipc.AppendConns(nil, 4, wide),
			want: ipc.Message{Kind: ipc.KindConns, Listener: 4, Handoffs: received(wide)}, fds: ipc.MaxConns},
		{name: "return none", frame: ipc.AppendReturn(nil, 5, 0),
			want: ipc.Message{Kind: ipc.KindReturn, Listener: 5}},
		{name: "return two", frame: ipc.AppendReturn(nil, 5, 2),
			want: ipc.Message{Kind: ipc.KindReturn, Listener: 5, Count: 2}, fds: 2},
		{name: "return max", frame: ipc.AppendReturn(nil, 1<<32-1, ipc.MaxConns),
			want: ipc.Message{Kind: ipc.KindReturn, Listener: 1<<32 - 1, Count: ipc.MaxConns}, fds: ipc.MaxConns},
		{name: "disconnect", frame: ipc.AppendDisconnect(nil),
			want: ipc.Message{Kind: ipc.KindDisconnect}},
		{name: "ping", frame: ipc.AppendPing(nil),
			want: ipc.Message{Kind: ipc.KindPing}},
		{name: "pong", frame: ipc.AppendPong(nil),
			want: ipc.Message{Kind: ipc.KindPong}},
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
		{name: "listen", kind: ipc.KindListen, want: "listen"},
		{name: "listen-reply", kind: ipc.KindListenReply, want: "listen-reply"},
		{name: "conns", kind: ipc.KindConns, want: "conns"},
		{name: "return", kind: ipc.KindReturn, want: "return"},
		{name: "disconnect", kind: ipc.KindDisconnect, want: "disconnect"},
		{name: "user", kind: ipc.KindUser, want: "user"},
		{name: "ping", kind: ipc.KindPing, want: "ping"},
		{name: "pong", kind: ipc.KindPong, want: "pong"},
		{name: "past the end", kind: ipc.KindPong + 1, want: "kind(10)"},
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
			if got := m.NumFDs(); got != tt.fds {
				t.Errorf("NumFDs = %d, want %d", got, tt.fds)
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
	case ipc.KindConns:
		dst = ipc.AppendConns(dst, m.Listener, m.Handoffs)
	case ipc.KindReturn:
		dst = ipc.AppendReturn(dst, m.Listener, m.Count)
	case ipc.KindDisconnect:
		dst = ipc.AppendDisconnect(dst)
	case ipc.KindPing:
		dst = ipc.AppendPing(dst)
	case ipc.KindPong:
		dst = ipc.AppendPong(dst)
	case ipc.KindUser:
		return append(dst, userFrame(m.Flags, m.Payload)...)
	default:
		panic(fmt.Sprintf("reencode: kind %s", m.Kind))
	}
	// Only User frames have flags an encoder sets; carry the rest over.
	binary.LittleEndian.PutUint16(dst[start+2:], m.Flags)
	return dst
}

// TestAppendConnsCutsLongAddress: an AddrLen over MaxAddr (which no
// sockaddr that fits Addr has) is sent as MaxAddr bytes, and the frame
// still decodes.
func TestAppendConnsCutsLongAddress(t *testing.T) {
	t.Parallel()
	h := handoffs(2)[1] // a sockaddr_in6, MaxAddr bytes
	h.AddrLen = 255
	var m ipc.Message
	if err := ipc.Decode(ipc.AppendConns(nil, 1, []ipc.Handoff{h}), &m); err != nil {
		t.Fatalf("Decode: %v", err)
	}
	if len(m.Handoffs) != 1 || m.Handoffs[0].AddrLen != ipc.MaxAddr || m.Handoffs[0].Addr != h.Addr {
		t.Errorf("got %+v, want the address cut to MaxAddr", m.Handoffs)
	}
}

func TestDecodeErrors(t *testing.T) {
	t.Parallel()
	hdr := func(version byte, kind ipc.Kind, body ...byte) []byte {
		return append([]byte{version, byte(kind), 0, 0}, body...)
	}
	u16 := func(v int) []byte { return binary.LittleEndian.AppendUint16(nil, uint16(v)) }
	u32 := func(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }
	// conns is a Conns frame of listener 1 whose n addresses have the
	// given lengths, each followed by that many bytes.
	conns := func(n int, lens ...int) []byte {
		b := append(hdr(ipc.Version, ipc.KindConns, 1, 0, 0, 0), u16(n)...)
		for _, l := range lens {
			b = append(b, byte(l))
			b = append(b, make([]byte, l)...)
		}
		return b
	}
	zeros := func(n int) []int { return make([]int, n) }
	ret := func(n int) []byte { return append(hdr(ipc.Version, ipc.KindReturn, 1, 0, 0, 0), u16(n)...) }
	reply := func(listener, errno uint32, errText string) []byte {
		b := append(hdr(ipc.Version, ipc.KindListenReply), u32(7)...)
		b = append(append(b, u32(listener)...), u32(errno)...)
		b = append(append(b, 0, 0), 0, 0) // address, syscall
		return append(append(b, u16(len(errText))...), errText...)
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
		{name: "version 1", frame: hdr(1, ipc.KindDisconnect), want: ipc.ErrVersion},
		{name: "version 3", frame: hdr(3, ipc.KindDisconnect), want: ipc.ErrVersion},
		{name: "version 255", frame: append(hdr(255, ipc.KindHello), 1, 2, 3, 4), want: ipc.ErrVersion},
		{name: "version 1 conns of ids", frame: append(hdr(1, ipc.KindConns, 1, 0, 0, 0, 1, 0), make([]byte, 8)...), want: ipc.ErrVersion},
		{name: "kind 0", frame: hdr(ipc.Version, 0), want: ipc.ErrUnknownKind},
		{name: "kind past pong", frame: hdr(ipc.Version, ipc.KindPong+1), want: ipc.ErrUnknownKind},
		{name: "kind 255", frame: hdr(ipc.Version, 255), want: ipc.ErrUnknownKind},
		{name: "conns over MaxConns", frame: conns(ipc.MaxConns+1, zeros(ipc.MaxConns+1)...), want: ipc.ErrMalformed},
		{name: "conns count 65535", frame: conns(65535, zeros(300)...), want: ipc.ErrMalformed},
		{name: "conns count over body", frame: conns(3, 16, 0), want: ipc.ErrMalformed},
		{name: "conns without count", frame: hdr(ipc.Version, ipc.KindConns, 1, 0, 0, 0), want: ipc.ErrMalformed},
		{name: "conns address length byte missing", frame: conns(1), want: ipc.ErrMalformed},
		{name: "conns address length past the end", frame: conns(1, 16)[:4+4+2+1+10], want: ipc.ErrMalformed},
		{name: "conns last address length past the end", frame: append(conns(2, 16), 28, 1, 2, 3), want: ipc.ErrMalformed},
		{name: "conns address one over MaxAddr", frame: conns(1, ipc.MaxAddr+1), want: ipc.ErrMalformed},
		{name: "conns address of 255", frame: conns(2, 4, 255), want: ipc.ErrMalformed},
		{name: "conns trailing byte", frame: append(conns(1, 16), 0), want: ipc.ErrMalformed},
		{name: "return over MaxConns", frame: ret(ipc.MaxConns + 1), want: ipc.ErrMalformed},
		{name: "return count 65535", frame: ret(65535), want: ipc.ErrMalformed},
		{name: "return with ids", frame: append(ret(1), make([]byte, 8)...), want: ipc.ErrMalformed},
		{name: "return without count", frame: hdr(ipc.Version, ipc.KindReturn, 1, 0, 0, 0), want: ipc.ErrMalformed},
		{name: "string over 1024", frame: listenStr(1025), want: ipc.ErrMalformed},
		{name: "string length over body", frame: listenStr(10)[:4+4+2+5], want: ipc.ErrMalformed},
		{name: "listen-reply missing strings", frame: hdr(ipc.Version, ipc.KindListenReply, make([]byte, 12)...), want: ipc.ErrMalformed},
		{name: "listen-reply listener and errno", frame: reply(3, uint32(unix.EADDRINUSE), ""), want: ipc.ErrMalformed},
		{name: "listen-reply listener and error text", frame: reply(3, 0, "address already in use"), want: ipc.ErrMalformed},
		{name: "listen-reply listener, errno and error text", frame: reply(1<<32-1, 1, "x"), want: ipc.ErrMalformed},
		{name: "disconnect with body", frame: hdr(ipc.Version, ipc.KindDisconnect, 0), want: ipc.ErrMalformed},
		{name: "ping with body", frame: hdr(ipc.Version, ipc.KindPing, 1, 2, 3, 4), want: ipc.ErrMalformed},
		{name: "pong with body", frame: hdr(ipc.Version, ipc.KindPong, 0), want: ipc.ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var m ipc.Message
			if err := ipc.Decode(tt.frame, &m); !errors.Is(err, tt.want) {
				t.Errorf("Decode: got %v, want %v", err, tt.want)
			}
		})
	}
	// The reply builder makes valid frames when there is no conflict.
	var m ipc.Message
	for _, f := range [][]byte{reply(3, 0, ""), reply(0, 1, "x")} {
		if err := ipc.Decode(f, &m); err != nil {
			t.Errorf("Decode of a valid listen-reply: %v", err)
		}
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
	for range 2 { // the second time round, every slice has been grown
		for _, tt := range validFrames() {
			if err := ipc.Decode(tt.frame, &m); err != nil {
				t.Fatalf("%s: Decode: %v", tt.name, err)
			}
			if got, want := normalize(m), normalize(tt.want); !reflect.DeepEqual(got, want) {
				t.Fatalf("%s: Decode into a used Message:\n got %+v\nwant %+v", tt.name, got, want)
			}
		}
	}
	// A shorter Conns frame after a longer one reuses the slice, and
	// nothing of the longer one's handoffs shows.
	hs := handoffs(3, 7, 8, 9)
	if err := ipc.Decode(ipc.AppendConns(nil, 1, handoffs(ipc.MaxConns)), &m); err != nil {
		t.Fatal(err)
	}
	m.Handoffs[0].FD = 42 // as Recv fills it in
	if err := ipc.Decode(ipc.AppendConns(nil, 2, hs), &m); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(m.Handoffs, received(hs)) {
		t.Errorf("handoffs after a longer frame: %+v, want %+v", m.Handoffs, received(hs))
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
	frame = ipc.AppendConns(nil, 1, hs)
	if err := ipc.Decode(frame, &m); err != nil {
		t.Fatal(err)
	}
	clear(frame)
	if !reflect.DeepEqual(m.Handoffs, received(hs)) {
		t.Errorf("addresses changed with the frame: %+v", m.Handoffs)
	}
}

// --- Conn ---

// TestControlFramesCarryFDs sends the frames that carry fds on the
// control socket, Return and a successful ListenReply, and checks that the
// fds arrive close-on-exec, in order, each for the file that was sent.
func TestControlFramesCarryFDs(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		frame []byte
		n     int
		want  ipc.Message
	}{
		{name: "return none", frame: ipc.AppendReturn(nil, 9, 0), n: 0,
			want: ipc.Message{Kind: ipc.KindReturn, Listener: 9}},
		{name: "return one", frame: ipc.AppendReturn(nil, 9, 1), n: 1,
			want: ipc.Message{Kind: ipc.KindReturn, Listener: 9, Count: 1}},
		{name: "return 16", frame: ipc.AppendReturn(nil, 9, 16), n: 16,
			want: ipc.Message{Kind: ipc.KindReturn, Listener: 9, Count: 16}},
		{name: "return MaxConns", frame: ipc.AppendReturn(nil, 9, ipc.MaxConns), n: ipc.MaxConns,
			want: ipc.Message{Kind: ipc.KindReturn, Listener: 9, Count: ipc.MaxConns}},
		{name: "listen-reply success", frame: ipc.AppendListenReply(nil, 4, 9, 0, "127.0.0.1:8080", "", ""), n: 1,
			want: ipc.Message{Kind: ipc.KindListenReply, Req: 4, Listener: 9, Address: "127.0.0.1:8080"}},
		{name: "listen-reply failure", frame: ipc.AppendListenReply(nil, 4, 0, uint32(unix.EACCES), "", "bind", "permission denied"), n: 0,
			want: ipc.Message{Kind: ipc.KindListenReply, Req: 4, Errno: uint32(unix.EACCES), Syscall: "bind", Err: "permission denied"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			master, worker := newConnPair(t)
			pipes := make([]*fdtest.Pipe, tt.n)
			sent := make([]int, tt.n)
			for i := range pipes {
				pipes[i] = fdtest.NewPipe(t)
				sent[i] = pipes[i].W
			}
			if err := worker.WriteFrame(tt.frame, sent); err != nil {
				t.Fatalf("WriteFrame: %v", err)
			}
			var m ipc.Message
			fds := readMsg(t, master, &m)
			t.Cleanup(func() { fdtest.Close(fds) })
			if got, want := normalize(m), normalize(tt.want); !reflect.DeepEqual(got, want) {
				t.Fatalf("got %+v, want %+v", got, want)
			}
			if len(fds) != tt.n || m.NumFDs() != tt.n {
				t.Fatalf("got %d fds, NumFDs %d, want %d", len(fds), m.NumFDs(), tt.n)
			}
			for i, fd := range fds {
				fdtest.AssertCloexec(t, fd)
				if _, err := unix.Write(fd, []byte{byte(i)}); err != nil {
					t.Fatalf("write through fd %d: %v", i, err)
				}
				pipes[i].AssertReadsByte(t, byte(i), fmt.Sprintf("fd %d", i))
			}
		})
	}
}

func TestWriteFrameTooLarge(t *testing.T) {
	t.Parallel()
	master, worker := newConnPair(t)
	big := userFrame(0, make([]byte, ipc.MaxFrame-ipc.HeaderSize+1))
	if err := master.WriteFrame(big, nil); !errors.Is(err, ipc.ErrMalformed) {
		t.Errorf("WriteFrame of MaxFrame+1 bytes: %v, want ErrMalformed", err)
	}
	if err := master.TryWriteFrame(big); !errors.Is(err, ipc.ErrMalformed) {
		t.Errorf("TryWriteFrame of MaxFrame+1 bytes: %v, want ErrMalformed", err)
	}
	var m ipc.Message
	if _, err := worker.TryRead(&m); !errors.Is(err, unix.EAGAIN) {
		t.Errorf("TryRead: %s, %v; want EAGAIN: nothing was to be sent", m.Kind, err)
	}
}

// TestPingPong: the master pings with TryWriteFrame, the worker answers.
func TestPingPong(t *testing.T) {
	t.Parallel()
	master, worker := newConnPair(t)
	var m ipc.Message
	for i := range 3 {
		if err := master.TryWriteFrame(ipc.AppendPing(nil)); err != nil {
			t.Fatalf("ping %d: %v", i, err)
		}
		if fds := readMsg(t, worker, &m); m.Kind != ipc.KindPing || len(fds) != 0 {
			t.Fatalf("worker got %s with %d fds, want ping", m.Kind, len(fds))
		}
		if err := worker.TryWriteFrame(ipc.AppendPong(nil)); err != nil {
			t.Fatalf("pong %d: %v", i, err)
		}
		if fds := readMsg(t, master, &m); m.Kind != ipc.KindPong || len(fds) != 0 {
			t.Fatalf("master got %s with %d fds, want pong", m.Kind, len(fds))
		}
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
		{name: "conns short of fds", frame: ipc.AppendConns(nil, 1, handoffs(2)), nfds: 1},
		{name: "conns with extra fds", frame: ipc.AppendConns(nil, 1, handoffs(2)), nfds: 3},
		{name: "conns of none with one", frame: ipc.AppendConns(nil, 1, nil), nfds: 1},
		{name: "conns without fds", frame: ipc.AppendConns(nil, 1, handoffs(1)), nfds: 0},
		{name: "return short of fds", frame: ipc.AppendReturn(nil, 1, 16), nfds: 15},
		{name: "return with extra fds", frame: ipc.AppendReturn(nil, 1, 2), nfds: 3},
		{name: "return of none with one", frame: ipc.AppendReturn(nil, 1, 0), nfds: 1},
		{name: "return without fds", frame: ipc.AppendReturn(nil, 1, ipc.MaxConns), nfds: 0},
		{name: "listen-reply success without the socket", frame: ipc.AppendListenReply(nil, 1, 2, 0, ":80", "", ""), nfds: 0},
		{name: "listen-reply success with two", frame: ipc.AppendListenReply(nil, 1, 2, 0, ":80", "", ""), nfds: 2},
		{name: "listen-reply failure with one", frame: ipc.AppendListenReply(nil, 1, 0, 1, "", "bind", "x"), nfds: 1},
		{name: "listen with one", frame: ipc.AppendListen(nil, 1, "tcp", ":80"), nfds: 1},
		{name: "hello with two", frame: ipc.AppendHello(nil, 1), nfds: 2},
		{name: "disconnect with one", frame: ipc.AppendDisconnect(nil), nfds: 1},
		{name: "ping with one", frame: ipc.AppendPing(nil), nfds: 1},
		{name: "pong with MaxFDs", frame: ipc.AppendPong(nil), nfds: scm.MaxFDs},
		{name: "user with one", frame: userFrame(0, []byte("{}")), nfds: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, peer := newPair(t)
			p := fdtest.NewPipe(t)
			writeRaw(t, peer, tt.frame, fdtest.Repeat(p.W, tt.nfds))
			p.CloseW()
			writeRaw(t, peer, ipc.AppendHello(nil, 77), nil)
			var m ipc.Message
			fds, err := c.Read(&m)
			if !errors.Is(err, ipc.ErrFDs) || fds != nil {
				t.Fatalf("Read: fds %v, err %v; want nil, ErrFDs", fds, err)
			}
			p.AssertNoWriters(t)
			if fds := readMsg(t, c, &m); m.Kind != ipc.KindHello || m.PID != 77 || len(fds) != 0 {
				t.Fatalf("next Read: %s pid %d with %d fds, want the hello", m.Kind, m.PID, len(fds))
			}
		})
	}
}

// TestUserMessages sends user messages of many sizes with fd-carrying
// frames in between, all from one goroutine: they arrive intact and in
// order.
func TestUserMessages(t *testing.T) {
	t.Parallel()
	sizes := []int{0, 1, 10, ipc.MaxFrame - ipc.HeaderSize, ipc.MaxFrame - ipc.HeaderSize + 1, 3 * (ipc.MaxFrame - ipc.HeaderSize), 1 << 20, ipc.MaxMessage}
	master, worker := newConnPair(t)
	p := fdtest.NewPipe(t)
	wait := background(t, master, func() error {
		for i, n := range sizes {
			if err := master.WriteUser(payloadOf(uint64(i), n)); err != nil {
				return fmt.Errorf("WriteUser(%d bytes): %w", n, err)
			}
			if err := master.WriteFrame(ipc.AppendListenReply(nil, uint32(i), uint32(i)+1, 0, ":80", "", ""), []int{p.W}); err != nil {
				return fmt.Errorf("WriteFrame(listen-reply %d): %w", i, err)
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
		fdtest.Close(fds)
		if m.Kind != ipc.KindListenReply || m.Req != uint32(i) || m.Listener != uint32(i)+1 || len(fds) != 1 {
			t.Fatalf("after message %d: got %s req %d listener %d with %d fds, want listen-reply %d", i, m.Kind, m.Req, m.Listener, len(fds), i)
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
// many goroutines at once are never interleaved, not even with the pings
// that another goroutine writes with TryWriteFrame all the while.
func TestConcurrentWriters(t *testing.T) {
	t.Parallel()
	const writers, perWriter, size, pings = 4, 3, 150_000, 50
	master, worker := newConnPair(t)
	var g errgroup.Group
	for w := range writers {
		g.Go(func() error {
			for s := range perWriter {
				p := payloadOf(uint64(w*100+s), size)
				p[0], p[1] = byte(w), byte(s)
				if err := master.WriteUser(p); err != nil {
					return err
				}
			}
			return nil
		})
	}
	var busy int // times TryWriteFrame found the lock taken
	g.Go(func() error {
		for sent := 0; sent < pings; {
			err := master.TryWriteFrame(ipc.AppendPing(nil))
			switch {
			case err == nil:
				sent++
			case errors.Is(err, ipc.ErrBusy):
				busy++
			case !errors.Is(err, unix.EAGAIN):
				return fmt.Errorf("TryWriteFrame: %w", err)
			}
			time.Sleep(100 * time.Microsecond)
		}
		return nil
	})
	t.Cleanup(func() { _ = master.Close(); _ = g.Wait() })
	next := make([]int, writers)
	var m ipc.Message
	for got, gotPings := 0, 0; got < writers*perWriter || gotPings < pings; {
		readMsg(t, worker, &m)
		if m.Kind == ipc.KindPing {
			gotPings++
			continue
		}
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
		got++
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	t.Logf("TryWriteFrame found the write lock taken %d times", busy)
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
			p := fdtest.NewPipe(t)
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
				return peer.WriteMsg(ipc.AppendReturn(nil, 1, 1), []int{p.W})
			})
			var m ipc.Message
			if fds, err := c.Read(&m); !errors.Is(err, ipc.ErrMessageTooLarge) || fds != nil {
				t.Fatalf("Read: %v, want ErrMessageTooLarge", err)
			}
			if readMsg(t, c, &m); m.Kind != ipc.KindUser || string(m.Payload) != `"next"` {
				t.Fatalf("next Read: %s %q, want the next user message", m.Kind, m.Payload)
			}
			fds := readMsg(t, c, &m)
			fdtest.Close(fds)
			if m.Kind != ipc.KindReturn || m.Count != 1 || len(fds) != 1 {
				t.Fatalf("then: %s of %d with %d fds, want return of 1", m.Kind, m.Count, len(fds))
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
		{name: "return between fragments", want: ipc.ErrFragment,
			frames: []raw{more("ab"), {frame: ipc.AppendReturn(nil, 1, 2), nfds: 2}, last("ef")}},
		{name: "listen-reply with its socket between fragments", want: ipc.ErrFragment,
			frames: []raw{more("ab"), {frame: ipc.AppendListenReply(nil, 1, 2, 0, ":80", "", ""), nfds: 1}, last("ef")}},
		{name: "ping right before the last fragment", want: ipc.ErrFragment,
			frames: []raw{more("ab"), more("cd"), {frame: ipc.AppendPing(nil)}, last("ef")}},
		{name: "return with wrong fds between fragments", want: ipc.ErrFDs,
			frames: []raw{more("ab"), {frame: ipc.AppendReturn(nil, 1, 2), nfds: 1}, last("ef")}},
		{name: "listen-reply with listener and error between fragments", want: ipc.ErrMalformed,
			frames: []raw{more("ab"), {frame: ipc.AppendListenReply(nil, 1, 2, 98, "", "bind", "in use"), nfds: 1}, last("ef")}},
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
			p := fdtest.NewPipe(t)
			for _, f := range tt.frames {
				writeRaw(t, peer, f.frame, fdtest.Repeat(p.W, f.nfds))
			}
			writeRaw(t, peer, userFrame(ipc.FlagMore, []byte(`"whole`)), nil)
			writeRaw(t, peer, userFrame(0, []byte(`"`)), nil)
			p.CloseW()
			var m ipc.Message
			fds, err := c.Read(&m)
			if !errors.Is(err, tt.want) || fds != nil {
				t.Fatalf("Read: %s %q, %v; want %v", m.Kind, m.Payload, err, tt.want)
			}
			if fds := readMsg(t, c, &m); m.Kind != ipc.KindUser || string(m.Payload) != `"whole"` || len(fds) != 0 {
				t.Fatalf("next Read: %s %q, want the next whole message", m.Kind, m.Payload)
			}
			p.AssertNoWriters(t)
			if _, err := c.TryRead(&m); !errors.Is(err, unix.EAGAIN) {
				t.Fatalf("then: %s %q, %v; want nothing more", m.Kind, m.Payload, err)
			}
		})
	}
}

// TestTryWriteFrameBusy: TryWriteFrame says EAGAIN on a full socket and
// ErrBusy while a WriteUser waits holding the write lock, and never waits
// itself; what it did send arrives in order, before the user message.
func TestTryWriteFrameBusy(t *testing.T) {
	t.Parallel()
	master, worker := newConnPair(t)
	queued := 0
	for ; ; queued++ {
		err := master.TryWriteFrame(ipc.AppendHello(nil, queued))
		if errors.Is(err, unix.EAGAIN) {
			break
		}
		if err != nil {
			t.Fatalf("TryWriteFrame: %v", err)
		}
	}
	// Park a WriteUser on the full socket: it holds the write lock.
	wait := background(t, master, func() error { return master.WriteUser([]byte(`"late"`)) })
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := master.TryWriteFrame(ipc.AppendPing(nil))
		if errors.Is(err, ipc.ErrBusy) {
			break
		}
		if !errors.Is(err, unix.EAGAIN) {
			t.Fatalf("TryWriteFrame: %v, want EAGAIN or ErrBusy", err)
		}
		if time.Now().After(deadline) {
			t.Fatal("TryWriteFrame never saw the write lock taken")
		}
		time.Sleep(time.Millisecond)
	}
	var m ipc.Message
	for i := range queued {
		if readMsg(t, worker, &m); m.Kind != ipc.KindHello || m.PID != uint32(i) {
			t.Fatalf("got %s %d, want hello %d", m.Kind, m.PID, i)
		}
	}
	if readMsg(t, worker, &m); m.Kind != ipc.KindUser || string(m.Payload) != `"late"` {
		t.Fatalf("got %s %q, want the user message", m.Kind, m.Payload)
	}
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := worker.TryRead(&m); !errors.Is(err, unix.EAGAIN) {
		t.Fatalf("then: %s, %v; want nothing: no ping was sent", m.Kind, err)
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

// The conns the master hands off in TestInherited, with the addresses
// the worker must see.
var inheritedConns = []ipc.Handoff{
	inet4(-1, [4]byte{192, 0, 2, 1}, 54321),
	inet6(-1, [16]byte{0: 0x20, 1: 0x01, 2: 0x0d, 3: 0xb8, 15: 7}, 61000, 0),
}

// TestInherited runs the worker side in a child process that finds the
// control socket on fd ControlFD, as a real worker does, and goes through
// the protocol: hello, listen, a listen-reply carrying the listener's
// conns socket, conns on that socket (the worker serves one and returns
// the other), ping and pong, disconnect.
func TestInherited(t *testing.T) {
	if proctest.ChildMode() == "inherited" {
		inheritedChild(t)
		return
	}
	t.Parallel()
	master, f, err := ipc.Socketpair()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = master.Close() })
	cmd, wait, output := proctest.StartChild(t, "TestInherited", "inherited", []*os.File{f},
		ipc.EnvWorkerID+"=1", fmt.Sprintf("%s=%d", ipc.EnvControlFD, ipc.ControlFD))

	var m ipc.Message
	if readMsg(t, master, &m); m.Kind != ipc.KindHello || int(m.PID) != cmd.Process.Pid {
		t.Fatalf("got %s pid %d, want hello from %d\n%s", m.Kind, m.PID, cmd.Process.Pid, output())
	}
	if readMsg(t, master, &m); m.Kind != ipc.KindListen || m.Req != 7 || m.Network != "tcp" || m.Address != "127.0.0.1:0" {
		t.Fatalf("got %+v, want listen 7\n%s", m, output())
	}
	send, recv, err := ipc.ConnsPair()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = send.Close(); _ = recv.Close() })
	var werr error
	if err := recv.Fd(func(fd int) {
		werr = master.WriteFrame(ipc.AppendListenReply(nil, 7, 3, 0, "127.0.0.1:8080", "", ""), []int{fd})
	}); err != nil || werr != nil {
		t.Fatalf("listen-reply: %v %v", err, werr)
	}
	served, returned := fdtest.NewPipe(t), fdtest.NewPipe(t)
	hs := slices.Clone(inheritedConns)
	hs[0].FD, hs[1].FD = int32(served.W), int32(returned.W)
	if err := send.TrySend(3, hs); err != nil {
		t.Fatal(err)
	}
	served.CloseW()
	returned.CloseW()

	fds := readMsg(t, master, &m)
	if m.Kind != ipc.KindReturn || m.Listener != 3 || m.Count != 1 || len(fds) != 1 {
		fdtest.Close(fds)
		t.Fatalf("got %s listener %d count %d with %d fds, want return of 1 on 3\n%s", m.Kind, m.Listener, m.Count, len(fds), output())
	}
	_, err = unix.Write(fds[0], []byte{'r'})
	fdtest.Close(fds)
	if err != nil {
		t.Fatal(err)
	}
	returned.AssertReadsByte(t, 'r', "the returned conn")
	if err := master.TryWriteFrame(ipc.AppendPing(nil)); err != nil {
		t.Fatal(err)
	}
	if readMsg(t, master, &m); m.Kind != ipc.KindPong {
		t.Fatalf("got %s, want pong\n%s", m.Kind, output())
	}
	// The worker has read everything off its conns socket.
	if n, err := send.Unsent(); err != nil || n != 0 {
		t.Errorf("conns socket: %d bytes unsent, %v; want 0", n, err)
	}
	if n, err := recv.Unread(); err != nil || n != 0 {
		t.Errorf("conns socket: %d bytes unread, %v; want 0", n, err)
	}
	if err := master.WriteFrame(ipc.AppendDisconnect(nil), nil); err != nil {
		t.Fatal(err)
	}
	wait()
	buf := make([]byte, 16)
	if n, err := unix.Read(served.R, buf); err != nil || string(buf[:n]) != "from child" {
		t.Fatalf("served conn: %q %v", buf[:n], err)
	}
	// The child closed the conns it was handed, and the master its copy
	// of the one returned.
	served.AssertNoWriters(t)
	returned.AssertNoWriters(t)
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
	if err := c.WriteFrame(ipc.AppendListen(nil, 7, "tcp", "127.0.0.1:0"), nil); err != nil {
		t.Fatal(err)
	}
	var m ipc.Message
	fds := readMsg(t, c, &m)
	if m.Kind != ipc.KindListenReply || m.Req != 7 || m.Listener != 3 || len(fds) != 1 {
		fdtest.Close(fds)
		t.Fatalf("got %s req %d listener %d with %d fds, want listen-reply with the conns socket", m.Kind, m.Req, m.Listener, len(fds))
	}
	sock, err := ipc.ConnsSocketFrom(fds[0])
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sock.Close() }()
	var room scm.Room
	if err := sock.Recv(&m, true, func() bool { return room.For(ipc.MaxConns) }); err != nil {
		t.Fatalf("Recv: %v", err)
	}
	got := make([]int, len(m.Handoffs))
	for i, h := range m.Handoffs {
		got[i] = int(h.FD)
	}
	defer fdtest.Close(got)
	if m.Kind != ipc.KindConns || m.Listener != 3 || !sameAddrs(m.Handoffs, inheritedConns) {
		t.Fatalf("got %s listener %d %+v, want the two conns on 3 with their addresses", m.Kind, m.Listener, m.Handoffs)
	}
	if _, err := unix.Write(got[0], []byte("from child")); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteFrame(ipc.AppendReturn(nil, 3, 1), got[1:]); err != nil {
		t.Fatal(err)
	}
	if readMsg(t, c, &m); m.Kind != ipc.KindPing {
		t.Fatalf("got %s, want ping", m.Kind)
	}
	if err := c.WriteFrame(ipc.AppendPong(nil), nil); err != nil {
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
	p := fdtest.NewPipe(t)
	bad := []struct {
		frame []byte
		nfds  int
	}{
		{frame: ipc.AppendConns(nil, 1, handoffs(2)), nfds: 3},
		{frame: ipc.AppendReturn(nil, 1, 1), nfds: 2},
		{frame: ipc.AppendListenReply(nil, 1, 2, 0, ":80", "", ""), nfds: 2},
		{frame: ipc.AppendListenReply(nil, 1, 2, 98, ":80", "bind", "in use"), nfds: 1},
		{frame: ipc.AppendPing(nil), nfds: 2},
		{frame: userFrame(0, []byte("x")), nfds: 1},
		{frame: []byte{ipc.Version, 200, 0, 0}, nfds: 2},
		{frame: []byte{1, byte(ipc.KindReturn), 0, 0}, nfds: 1},
		{frame: []byte{ipc.Version}, nfds: 1},
		{frame: append(ipc.AppendReturn(nil, 1, 1), 0), nfds: 1},
		{frame: append(ipc.AppendConns(nil, 1, handoffs(1)), 0), nfds: 1},
		{frame: userFrame(0, make([]byte, ipc.MaxFrame)), nfds: 2},
	}
	var m ipc.Message
	one := func(i int) {
		t.Helper()
		b := bad[i%len(bad)]
		writeRaw(t, peer, b.frame, fdtest.Repeat(p.W, b.nfds))
		if fds, err := c.Read(&m); err == nil || fds != nil {
			t.Fatalf("Read of bad frame %d: %v, %v", i%len(bad), fds, err)
		}
		writeRaw(t, peer, ipc.AppendReturn(nil, 1, 2), []int{p.W, p.W})
		fds := readMsg(t, c, &m)
		fdtest.Close(fds)
	}
	fdtest.Steady(t, 2000, one)
	p.CloseW()
	p.AssertNoWriters(t)
}

func TestAllocs(t *testing.T) {
	master, worker := newConnPair(t)
	send, recv := newConnsPair(t)
	p := fdtest.NewPipe(t)
	hs := handoffs(16, fdtest.Repeat(p.W, 16)...)
	sent := fdtest.Repeat(p.W, 16)
	room := func() bool { return true }
	conns := ipc.AppendConns(nil, 1, handoffs(ipc.MaxConns))
	ret := ipc.AppendReturn(nil, 1, len(sent))
	ping := ipc.AppendPing(nil)
	var m ipc.Message
	tests := []struct {
		name string
		f    func()
	}{
		{name: "ConnsSocket TrySend+Recv", f: func() {
			if err := send.TrySend(1, hs); err != nil {
				t.Fatal(err)
			}
			if err := recv.Recv(&m, true, room); err != nil || len(m.Handoffs) != len(hs) {
				t.Fatalf("Recv: %d handoffs, %v", len(m.Handoffs), err)
			}
			for _, h := range m.Handoffs {
				_ = unix.Close(int(h.FD))
			}
		}},
		{name: "ConnsSocket TrySend+Recv without room", f: func() {
			if err := send.TrySend(1, hs); err != nil {
				t.Fatal(err)
			}
			if err := recv.Recv(&m, false, nil); err != nil || len(m.Handoffs) != len(hs) {
				t.Fatalf("Recv: %d handoffs, %v", len(m.Handoffs), err)
			}
			for _, h := range m.Handoffs {
				_ = unix.Close(int(h.FD))
			}
		}},
		{name: "WriteFrame return+Read", f: func() {
			if err := worker.WriteFrame(ret, sent); err != nil {
				t.Fatal(err)
			}
			fds, err := master.Read(&m)
			if err != nil || len(fds) != len(sent) {
				t.Fatalf("Read: %d fds, %v", len(fds), err)
			}
			fdtest.Close(fds)
		}},
		{name: "TryWriteFrame ping+TryRead", f: func() {
			if err := master.TryWriteFrame(ping); err != nil {
				t.Fatal(err)
			}
			if _, err := worker.TryRead(&m); err != nil || m.Kind != ipc.KindPing {
				t.Fatalf("TryRead: %s %v", m.Kind, err)
			}
		}},
		{name: "Decode conns", f: func() {
			if err := ipc.Decode(conns, &m); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "Decode return", f: func() {
			if err := ipc.Decode(ret, &m); err != nil {
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
		{name: "version", err: ipc.ErrVersion, want: true},
		{name: "unknown kind", err: ipc.ErrUnknownKind, want: true},
		{name: "fds", err: ipc.ErrFDs, want: true},
		{name: "fragment", err: ipc.ErrFragment, want: true},
		{name: "too large", err: ipc.ErrMessageTooLarge, want: true},
		{name: "fds lost", err: ipc.ErrFDsLost},
		{name: "no room", err: scm.ErrNoRoom},
		{name: "busy", err: ipc.ErrBusy},
		{name: "eof", err: io.EOF},
	} {
		if got := ipc.IsProtocolError(tt.err); got != tt.want {
			t.Errorf("%s: IsProtocolError = %v, want %v", tt.name, got, tt.want)
		}
	}
}
