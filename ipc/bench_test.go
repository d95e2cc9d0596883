package ipc_test

import (
	"fmt"
	"testing"

	"github.com/handoff-go/handoff/ipc"
	"github.com/handoff-go/handoff/scm"
)

func BenchmarkAppendConns(b *testing.B) {
	ids := seqIDs(1, ipc.MaxConns)
	buf := make([]byte, 0, ipc.MaxFrame)
	b.SetBytes(int64(len(ipc.AppendConns(nil, false, 1, ids))))
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		buf = ipc.AppendConns(buf[:0], false, 1, ids)
	}
}

func BenchmarkAppendReport(b *testing.B) {
	for _, n := range []int{16, ipc.MaxReportIDs} {
		b.Run(fmt.Sprintf("ids=%d", n), func(b *testing.B) {
			acked, closed := seqIDs(1, n/2), seqIDs(1<<32, n-n/2)
			buf := make([]byte, 0, ipc.MaxFrame)
			b.SetBytes(int64(len(ipc.AppendReport(nil, acked, closed))))
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				buf = ipc.AppendReport(buf[:0], acked, closed)
			}
		})
	}
}

func BenchmarkDecode(b *testing.B) {
	tests := []struct {
		name  string
		frame []byte
	}{
		{name: "conns=253", frame: ipc.AppendConns(nil, false, 1, seqIDs(1, ipc.MaxConns))},
		{name: "conns=1", frame: ipc.AppendConns(nil, false, 1, seqIDs(1, 1))},
		{name: "report=32", frame: ipc.AppendReport(nil, seqIDs(1, 16), seqIDs(100, 16))},
		{name: "report=max", frame: ipc.AppendReport(nil, seqIDs(1, ipc.MaxReportIDs/2), seqIDs(1<<32, ipc.MaxReportIDs-ipc.MaxReportIDs/2))},
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

// BenchmarkConnsRoundTrip is the master's hand-off path: TryWriteConns on
// one end, Read on the other, and the received fds closed.
func BenchmarkConnsRoundTrip(b *testing.B) {
	for _, n := range []int{1, 16, scm.MaxFDs} {
		b.Run(fmt.Sprintf("fds=%d", n), func(b *testing.B) {
			master, worker := newConnPair(b)
			p := newPipe(b)
			ids, fds := seqIDs(1, n), repeat(p.w, n)
			var m ipc.Message
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if err := master.TryWriteConns(1, ids, fds); err != nil {
					b.Fatal(err)
				}
				got, err := worker.Read(&m)
				if err != nil || len(got) != n {
					b.Fatalf("Read: %d fds, %v", len(got), err)
				}
				closeFDs(got)
			}
			b.StopTimer()
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/fd")
		})
	}
}

func BenchmarkReportRoundTrip(b *testing.B) {
	worker, master := newConnPair(b)
	acked, closed := seqIDs(1, 16), seqIDs(100, 16)
	var m ipc.Message
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if err := worker.WriteReport(acked, closed); err != nil {
			b.Fatal(err)
		}
		if _, err := master.Read(&m); err != nil {
			b.Fatal(err)
		}
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
