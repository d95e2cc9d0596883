//go:build linux

package ipc_test

import (
	"fmt"
	"testing"

	"github.com/handoff-go/handoff/internal/fdtest"
	"github.com/handoff-go/handoff/ipc"
	"github.com/handoff-go/handoff/scm"
)

func BenchmarkAppendConns(b *testing.B) {
	for _, n := range []int{1, 16, ipc.MaxConns} {
		b.Run(fmt.Sprintf("conns=%d", n), func(b *testing.B) {
			hs := handoffs(n)
			buf := make([]byte, 0, ipc.MaxFrame)
			b.SetBytes(int64(len(ipc.AppendConns(nil, 1, hs))))
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				buf = ipc.AppendConns(buf[:0], 1, hs)
			}
		})
	}
}

func BenchmarkDecode(b *testing.B) {
	tests := []struct {
		name  string
		frame []byte
	}{
		{name: "conns=253", frame: ipc.AppendConns(nil, 1, handoffs(ipc.MaxConns))},
		{name: "conns=16", frame: ipc.AppendConns(nil, 1, handoffs(16))},
		{name: "conns=1", frame: ipc.AppendConns(nil, 1, handoffs(1))},
		{name: "return", frame: ipc.AppendReturn(nil, 1, 16)},
		{name: "ping", frame: ipc.AppendPing(nil)},
		{name: "hello", frame: ipc.AppendHello(nil, 1234)},
		{name: "listen-reply", frame: ipc.AppendListenReply(nil, 1, 2, 0, "127.0.0.1:8080", "", "")},
		{name: "user=1KiB", frame: userFrame(0, make([]byte, 1024))},
	}
	for _, tt := range tests {
		b.Run(tt.name, func(b *testing.B) {
			var m ipc.Message
			if err := ipc.Decode(tt.frame, &m); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(len(tt.frame)))
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if err := ipc.Decode(tt.frame, &m); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkConnsRoundTrip is the hand-off path: the master's TrySend on a
// listener's conns socket, the worker's Recv (asking a Room first, as a
// worker does) on the other end, and the received fds closed in one go.
func BenchmarkConnsRoundTrip(b *testing.B) {
	for _, n := range []int{1, 16, scm.MaxFDs} {
		b.Run(fmt.Sprintf("fds=%d", n), func(b *testing.B) {
			send, recv := newConnsPair(b)
			p := fdtest.NewPipe(b)
			hs := handoffs(n, fdtest.Repeat(p.W, n)...)
			var room scm.Room
			roomFor := func() bool { return room.For(n) }
			got := make([]int, 0, n)
			var m ipc.Message
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if err := send.TrySend(1, hs); err != nil {
					b.Fatal(err)
				}
				if err := recv.Recv(&m, true, roomFor); err != nil || len(m.Handoffs) != n {
					b.Fatalf("Recv: %d handoffs, %v", len(m.Handoffs), err)
				}
				room.Took(n)
				got = got[:0]
				for _, h := range m.Handoffs {
					got = append(got, int(h.FD))
				}
				scm.CloseFDs(got)
			}
			b.StopTimer()
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/fd")
		})
	}
}

// BenchmarkReturnRoundTrip is the worker handing connections back on the
// control socket.
func BenchmarkReturnRoundTrip(b *testing.B) {
	for _, n := range []int{1, 16} {
		b.Run(fmt.Sprintf("fds=%d", n), func(b *testing.B) {
			master, worker := newConnPair(b)
			p := fdtest.NewPipe(b)
			frame, fds := ipc.AppendReturn(nil, 1, n), fdtest.Repeat(p.W, n)
			var m ipc.Message
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if err := worker.WriteFrame(frame, fds); err != nil {
					b.Fatal(err)
				}
				got, err := master.Read(&m)
				if err != nil || len(got) != n {
					b.Fatalf("Read: %d fds, %v", len(got), err)
				}
				fdtest.Close(got)
			}
		})
	}
}

func BenchmarkUserRoundTrip(b *testing.B) {
	for _, n := range []int{1 << 10, 1 << 20} {
		b.Run(fmt.Sprintf("bytes=%d", n), func(b *testing.B) {
			master, worker := newConnPair(b)
			payload := payloadOf(1, n)
			done := make(chan error, 1)
			var m ipc.Message
			b.SetBytes(int64(n))
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				// A message over the socket buffer needs a reader at
				// the same time.
				go func() { done <- master.WriteUser(payload) }()
				if _, err := worker.Read(&m); err != nil {
					b.Fatal(err)
				}
				if err := <-done; err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
