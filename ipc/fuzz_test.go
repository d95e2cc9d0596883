//go:build linux

package ipc_test

import (
	"bytes"
	"errors"
	"reflect"
	"slices"
	"testing"

	"github.com/handoff-go/handoff/internal/fdtest"
	"github.com/handoff-go/handoff/ipc"
	"golang.org/x/sys/unix"
)

// junkFrames are seeds that are not valid frames, or only just.
func junkFrames() [][]byte {
	return [][]byte{
		{},
		{ipc.Version},
		{ipc.Version, byte(ipc.KindHello), 0},
		{0, 0, 0, 0},
		{1, byte(ipc.KindHello), 0, 0, 1, 2, 3, 4},
		{3, byte(ipc.KindPing), 0, 0},
		{ipc.Version, 0, 0, 0},
		{ipc.Version, 255, 0xff, 0xff},
		{ipc.Version, byte(ipc.KindHello), 0xff, 0xff, 1, 2, 3, 4},
		{ipc.Version, byte(ipc.KindDisconnect), 1, 0},
		{ipc.Version, byte(ipc.KindPing), 0, 0, 0},
		{ipc.Version, byte(ipc.KindPong), 0xff, 0xff},
		{ipc.Version, byte(ipc.KindConns), 0, 0, 1, 0, 0, 0, 0xff, 0xff},
		// An address length byte past the end, and one over MaxAddr.
		{ipc.Version, byte(ipc.KindConns), 0, 0, 1, 0, 0, 0, 1, 0, 16, 2, 0},
		append([]byte{ipc.Version, byte(ipc.KindConns), 0, 0, 1, 0, 0, 0, 1, 0, ipc.MaxAddr + 1}, make([]byte, ipc.MaxAddr+1)...),
		// Version 1's Conns and Return, with a conn id.
		{ipc.Version, byte(ipc.KindConns), 0, 0, 1, 0, 0, 0, 1, 0, 1, 2, 3, 4, 5, 6, 7, 8},
		{ipc.Version, byte(ipc.KindReturn), 0, 0, 1, 0, 0, 0, 1, 0, 1, 2, 3, 4, 5, 6, 7, 8},
		{ipc.Version, byte(ipc.KindReturn), 0, 0, 1, 0, 0, 0, 0xfe, 0},
		{ipc.Version, byte(ipc.KindListen), 0, 0, 1, 0, 0, 0, 0x01, 0x04},
		{ipc.Version, byte(ipc.KindListen), 0, 0, 1, 0, 0, 0, 3, 0, 't', 'c', 'p', 5, 0, ':'},
		{ipc.Version, byte(ipc.KindListenReply), 0, 0, 1, 2, 3},
		// A listen-reply with a listener and an error.
		ipc.AppendListenReply(nil, 1, 2, 98, "", "bind", "address already in use"),
		{ipc.Version, byte(ipc.KindUser), ipc.FlagMore, 0, '{'},
		append(ipc.AppendHello(nil, 1), 0),
		append(ipc.AppendReturn(nil, 1, 2), 0, 0, 0, 0, 0, 0, 0, 0),
		append(ipc.AppendConns(nil, 1, handoffs(3)), 0),
	}
}

// FuzzDecode checks that Decode never panics, that what it accepts stays
// within the limits, and that encoding what it decoded gives back the very
// same bytes: the format has one encoding per message.
func FuzzDecode(f *testing.F) {
	for _, tt := range validFrames() {
		f.Add(tt.frame)
	}
	for _, b := range junkFrames() {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		var m ipc.Message
		err := ipc.Decode(frame, &m)
		if err != nil {
			if !errors.Is(err, ipc.ErrMalformed) && !errors.Is(err, ipc.ErrVersion) && !errors.Is(err, ipc.ErrUnknownKind) {
				t.Fatalf("Decode: unexpected error %v", err)
			}
			return
		}
		if m.Kind < ipc.KindHello || m.Kind > ipc.KindPong {
			t.Fatalf("Decode accepted kind %d", m.Kind)
		}
		if m.NumFDs() > ipc.MaxConns || m.NumFDs() < 0 {
			t.Fatalf("NumFDs %d out of range", m.NumFDs())
		}
		if len(m.Handoffs) > ipc.MaxConns || m.Count > ipc.MaxConns {
			t.Fatalf("%d handoffs, count %d, over MaxConns", len(m.Handoffs), m.Count)
		}
		for i, h := range m.Handoffs {
			if h.FD != -1 || h.AddrLen > ipc.MaxAddr {
				t.Fatalf("handoff %d: fd %d, address of %d bytes", i, h.FD, h.AddrLen)
			}
			if slices.ContainsFunc(h.Addr[h.AddrLen:], func(b byte) bool { return b != 0 }) {
				t.Fatalf("handoff %d: bytes past its address of %d", i, h.AddrLen)
			}
		}
		if m.Kind == ipc.KindListenReply && m.Listener != 0 && (m.Errno != 0 || m.Err != "") {
			t.Fatalf("accepted a listen-reply with listener %d and error %d %q", m.Listener, m.Errno, m.Err)
		}
		for _, s := range []string{m.Network, m.Address, m.Syscall, m.Err} {
			if len(s) > 1024 {
				t.Fatalf("string of %d bytes", len(s))
			}
		}
		if enc := reencode(&m, nil); !bytes.Equal(enc, frame) {
			t.Fatalf("re-encoded %s differs:\n got % x\nwant % x", m.Kind, enc, frame)
		}
		// Decoding again into the used Message gives the same message.
		want := normalize(m)
		want.Handoffs = slices.Clone(want.Handoffs)
		if err := ipc.Decode(frame, &m); err != nil {
			t.Fatalf("second Decode: %v", err)
		}
		if got := normalize(m); !reflect.DeepEqual(got, want) {
			t.Fatalf("second Decode into the same Message differs:\n got %+v\nwant %+v", got, want)
		}
	})
}

// addFrameSeeds adds to f's corpus every valid frame, with its own number
// of fds and with one, and the junk frames, with as many fds as their
// index: the seeds of FuzzConnRead and FuzzConnsRecv.
func addFrameSeeds(f *testing.F) {
	for _, tt := range validFrames() {
		f.Add(tt.frame, uint8(tt.fds))
		f.Add(tt.frame, uint8(1))
	}
	for i, b := range junkFrames() {
		f.Add(b, uint8(i))
	}
}

// FuzzConnRead writes the input as one raw frame, with nfds%4 fds
// attached, to a fresh connection and reads it back. Read must not panic;
// on error it returns no fds; on success it returns exactly NumFDs of them.
// Every fd sent is a dup of one pipe's write end, closed by the test after
// the send, so the pipe reading EOF after each input proves that nothing
// that arrived was leaked. The open fd count is checked once at the end.
func FuzzConnRead(f *testing.F) {
	addFrameSeeds(f)
	f.Add(ipc.AppendConns(nil, 1, handoffs(3)), uint8(3))
	f.Add(ipc.AppendReturn(nil, 1, 2), uint8(2))
	f.Add(ipc.AppendListenReply(nil, 1, 2, 0, ":80", "", ""), uint8(1))
	f.Add(ipc.AppendPing(nil), uint8(0))
	f.Add(userFrame(0, make([]byte, ipc.MaxFrame)), uint8(0))
	f.Add(userFrame(0, make([]byte, ipc.MaxFrame-ipc.HeaderSize+1)), uint8(1))

	fdtest.CheckAtCleanup(f)
	f.Fuzz(func(t *testing.T, frame []byte, nfds uint8) {
		if len(frame) == 0 || len(frame) > ipc.MaxFrame+64 {
			return // scm sends no empty message; keep well under the socket buffer
		}
		c, peer := newPair(t)
		p := fdtest.NewPipe(t)
		k := int(nfds % 4)
		if err := peer.TryWriteMsg(frame, fdtest.Repeat(p.W, k)); err != nil {
			t.Fatalf("raw write of %d bytes: %v", len(frame), err)
		}
		p.CloseW()
		var m ipc.Message
		fds, err := c.TryRead(&m)
		switch {
		case err == nil:
			fdtest.Close(fds)
			if len(fds) != m.NumFDs() || len(fds) != k {
				t.Fatalf("%s frame: %d fds returned, NumFDs %d, %d sent", m.Kind, len(fds), m.NumFDs(), k)
			}
			if m.Kind == ipc.KindUser && !bytes.Equal(m.Payload, frame[ipc.HeaderSize:]) {
				t.Fatalf("user payload differs from the frame's body")
			}
		case fds != nil:
			fdtest.Close(fds)
			t.Fatalf("Read returned fds %v with error %v", fds, err)
		case errors.Is(err, unix.EAGAIN):
			// A first fragment: Read waits for the rest.
			if len(frame) < ipc.HeaderSize || ipc.Kind(frame[1]) != ipc.KindUser || frame[2]&ipc.FlagMore == 0 {
				t.Fatalf("Read: EAGAIN for a frame that is not a first fragment")
			}
		case errors.Is(err, ipc.ErrMalformed), errors.Is(err, ipc.ErrVersion),
			errors.Is(err, ipc.ErrUnknownKind), errors.Is(err, ipc.ErrFDs):
		default:
			t.Fatalf("Read: unexpected error %v", err)
		}
		p.AssertNoWriters(t)
	})
}

// FuzzConnsRecv is FuzzConnRead for a worker's conns socket: Recv must not
// panic; it accepts only a Conns frame with one fd per handoff, and then
// hands over exactly those fds; on any other frame it returns an error
// of the protocol (ErrMalformed, ErrVersion, ErrUnknownKind or ErrFDs) and
// has closed every fd that came with it.
func FuzzConnsRecv(f *testing.F) {
	addFrameSeeds(f)
	f.Add(ipc.AppendConns(nil, 1, handoffs(3)), uint8(2))
	f.Add(ipc.AppendConns(nil, 1, handoffs(7)), uint8(7))

	fdtest.CheckAtCleanup(f)
	f.Fuzz(func(t *testing.T, frame []byte, nfds uint8) {
		if len(frame) == 0 || len(frame) > ipc.MaxFrame+64 {
			return
		}
		raw, sock := newRawConnsPair(t)
		p := fdtest.NewPipe(t)
		k := int(nfds % 8)
		if err := raw.TryWriteMsg(frame, fdtest.Repeat(p.W, k)); err != nil {
			t.Fatalf("raw write of %d bytes: %v", len(frame), err)
		}
		p.CloseW()
		var m ipc.Message
		err := sock.Recv(&m, false, nil)
		switch {
		case err == nil:
			fds := handoffFDs(&m)
			for _, fd := range fds {
				fdtest.AssertCloexec(t, fd)
			}
			fdtest.Close(fds)
			if m.Kind != ipc.KindConns || len(fds) != k || m.NumFDs() != k {
				t.Fatalf("accepted %s with %d handoffs, %d fds sent", m.Kind, len(fds), k)
			}
			if enc := reencode(&m, nil); !bytes.Equal(enc, frame) {
				t.Fatalf("accepted frame re-encodes differently:\n got % x\nwant % x", enc, frame)
			}
		case errors.Is(err, ipc.ErrMalformed), errors.Is(err, ipc.ErrVersion),
			errors.Is(err, ipc.ErrUnknownKind), errors.Is(err, ipc.ErrFDs):
		default:
			t.Fatalf("Recv: unexpected error %v", err)
		}
		p.AssertNoWriters(t)
	})
}
