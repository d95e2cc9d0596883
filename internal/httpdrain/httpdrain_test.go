package httpdrain

import (
	"net"
	"net/http"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// A connection that never sends a request must not hold the drain until
// its timeout.
func TestDrainClosesConnectionsThatNeverAsk(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})}
	d := New(srv)
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	time.Sleep(50 * time.Millisecond) // accepted: StateNew
	if !d.Close([]net.Listener{ln}, 20*time.Second) {
		t.Fatal("drain timed out with a connection that never sent a request")
	}
	<-done
}

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
