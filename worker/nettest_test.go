//go:build linux

package worker

import (
	"fmt"
	"net"
	"testing"

	"golang.org/x/net/nettest"
)

// TestConnConformance runs the x/net/nettest net.Conn suite over handed-off
// connections: each pipe is a real connection dialed to the master's
// listener, whose server end went through the fake master to a Listener.
func TestConnConformance(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		network     string
		workerFirst bool // the handed-off conn is c1, the client c2
	}{
		{name: "tcp worker end first", network: "tcp", workerFirst: true},
		{name: "tcp client end first", network: "tcp"},
		{name: "unix worker end first", network: "unix", workerFirst: true},
		{name: "unix client end first", network: "unix"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ln, fm, l := listening(t, tt.network)
			// MakePipe runs on nettest's subtest goroutines: it returns
			// errors and never calls t.Fatal.
			nettest.TestConn(t, func() (c1, c2 net.Conn, stop func(), err error) {
				cc, fd, err := connect(ln)
				if err != nil {
					return nil, nil, nil, err
				}
				if err := fm.handoff(l.id, []int{fd}); err != nil {
					_ = cc.Close()
					return nil, nil, nil, err
				}
				wc, err := l.Accept()
				if err != nil {
					_ = cc.Close()
					return nil, nil, nil, err
				}
				switch wc.(type) {
				case *Conn:
				default:
					_, _ = wc.Close(), cc.Close()
					return nil, nil, nil, fmt.Errorf("Accept returned %T", wc)
				}
				stop = func() { _, _ = wc.Close(), cc.Close() }
				if tt.workerFirst {
					return wc, cc, stop, nil
				}
				return cc, wc, stop, nil
			})
		})
	}
}
