//go:build linux

package fuzzctl

import (
	"encoding/binary"
	"net"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// MaxOps is the most ops Parse reads from one input.
const MaxOps = 256

// Kind is what an fd attached to a fuzzed frame refers to. A fuzzer may
// add kinds of its own after Unix.
type Kind uint8

// The kinds of fd that Source provides.
const (
	Pipe Kind = iota // the write end of the input's pipe, checked for EOF
	TCP              // a connected loopback TCP socket
	Unix             // a connected Unix stream socket
)

// NumKinds is the number of kinds that Source provides.
const NumKinds = int(Unix) + 1

// Op is one op of an input.
type Op struct {
	H     byte   // fds in bits 0-5 (see the package doc); bits 6-7 the fuzzer's own
	Frame []byte // the frame, possibly empty or cut short
}

// Kinds returns what each fd of the op's frame is, for a fuzzer that
// knows n kinds: a choice past them wraps around.
func (op Op) Kinds(n int) []Kind {
	k := make([]Kind, int(op.H&3)%3)
	for i := range k {
		k[i] = Kind(op.H>>(2+2*i)&3) % Kind(n)
	}
	return k
}

// Parse decodes an input into at most MaxOps ops.
func Parse(in []byte) []Op {
	var ops []Op
	for len(in) >= 3 && len(ops) < MaxOps {
		h, n := in[0], int(binary.LittleEndian.Uint16(in[1:3]))
		in = in[3:]
		n = min(n, len(in))
		ops = append(ops, Op{H: h, Frame: in[:n]})
		in = in[n:]
	}
	return ops
}

// Input encodes ops, for f.Add.
func Input(ops ...Op) []byte {
	var b []byte
	for _, op := range ops {
		b = append(b, op.H)
		b = binary.LittleEndian.AppendUint16(b, uint16(len(op.Frame)))
		b = append(b, op.Frame...)
	}
	return b
}

// WithFDs is an op sending frame with fds of the given kinds, at most 2.
func WithFDs(frame []byte, kinds ...Kind) Op {
	h := byte(len(kinds))
	for i, k := range kinds {
		h |= byte(k) << (2 + 2*i)
	}
	return Op{H: h, Frame: frame}
}

// Source holds the sockets whose fds fuzzed frames carry, for the whole
// fuzz run. Every frame carries its own copy, which the receiver owns.
type Source struct {
	TCP  int // the server end of a loopback TCP connection
	Unix int // one end of a Unix stream socketpair
}

// NewSource opens a Source. Cleanup closes its sockets.
func NewSource(tb testing.TB) *Source {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	_ = client.(*net.TCPConn).SetLinger(0)
	server, err := ln.Accept()
	if err != nil {
		_ = client.Close()
		tb.Fatal(err)
	}
	// File dups the fd; File's own fd stays blocking, which no one minds
	// here: it is only ever sent.
	sf, err := server.(*net.TCPConn).File()
	_ = server.Close()
	if err != nil {
		_ = client.Close()
		tb.Fatal(err)
	}
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		_ = client.Close()
		_ = sf.Close()
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		_ = client.Close()
		_ = sf.Close()
		_ = unix.Close(sp[0])
		_ = unix.Close(sp[1])
	})
	return &Source{TCP: fileFD(sf), Unix: sp[0]}
}

// fileFD returns f's fd without Fd, which would make it blocking.
func fileFD(f *os.File) int {
	fd := -1
	if rc, err := f.SyscallConn(); err == nil {
		_ = rc.Control(func(x uintptr) { fd = int(x) })
	}
	return fd
}

// FD returns the fd of kind k: the TCP or Unix socket, and for any other
// kind pipe, the write end of the input's pipe. The caller keeps
// ownership: the kernel gives the receiver copies.
func (s *Source) FD(k Kind, pipe int) int {
	switch k {
	case TCP:
		return s.TCP
	case Unix:
		return s.Unix
	default:
		return pipe
	}
}

// FDs returns the fds to attach to op's frame, for a fuzzer that knows
// the kinds of Source alone; pipe is the input's pipe.
func (s *Source) FDs(op Op, pipe int) []int {
	var fds []int
	for _, k := range op.Kinds(NumKinds) {
		fds = append(fds, s.FD(k, pipe))
	}
	return fds
}
