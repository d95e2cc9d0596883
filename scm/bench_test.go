//go:build linux

package scm

import (
	"fmt"
	"github.com/handoff-go/handoff/internal/fdtest"
	"testing"
)

// BenchmarkSendRecv sends batches of fds and receives them, closing what
// arrives, and reports the cost per fd passed.
func BenchmarkSendRecv(b *testing.B) {
	for _, batch := range []int{1, 16, MaxFDs} {
		b.Run(fmt.Sprintf("fds=%d", batch), func(b *testing.B) {
			a, c := newPair(b)
			p := fdtest.NewPipe(b)
			sent := fdtest.Repeat(p.W, batch)
			payload := make([]byte, 4+8*batch) // about a Conns frame
			buf := make([]byte, 4096)
			var fds [MaxFDs]int
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if err := a.WriteMsg(payload, sent); err != nil {
					b.Fatal(err)
				}
				_, nfds, err := c.ReadMsg(buf, fds[:])
				if err != nil || nfds != batch {
					b.Fatalf("ReadMsg: %d fds, %v", nfds, err)
				}
				fdtest.Close(fds[:nfds])
			}
			b.StopTimer()
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batch), "ns/fd")
		})
	}
}

// BenchmarkSendRecvNoFDs is the floor: one small message, no fds.
func BenchmarkSendRecvNoFDs(b *testing.B) {
	a, c := newPair(b)
	payload := make([]byte, 16)
	buf := make([]byte, 4096)
	var fds [MaxFDs]int
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if err := a.WriteMsg(payload, nil); err != nil {
			b.Fatal(err)
		}
		if _, _, err := c.ReadMsg(buf, fds[:]); err != nil {
			b.Fatal(err)
		}
	}
}
