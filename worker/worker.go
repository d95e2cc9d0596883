//go:build linux

package worker

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strconv"
	"syscall"

	"github.com/handoff-go/handoff/ipc"
)

// IsWorker reports whether this process was started by a handoff master.
func IsWorker() bool { return client != nil }

// ID returns this worker's id (1, 2, ...), or 0 outside a master.
func ID() int {
	if client == nil {
		return 0
	}
	return client.id
}

// Listen has the signature and meaning of net.Listen. Under a master, for
// the networks "tcp", "tcp4", "tcp6" and "unix", it returns a *Listener
// fed by the master; an error is the one net.Listen would have given in the
// master. Outside a master it is net.Listen.
func Listen(network, address string) (net.Listener, error) {
	var lc ListenConfig
	return lc.Listen(network, address)
}

// Send sends v, marshalled as JSON, to the master. Messages arrive in
// the order sent (connections travel on sockets of their own, so there is
// no order between a message and a connection). A value larger
// than ipc.MaxMessage once marshalled returns an error matching
// ipc.ErrMessageTooLarge, and nothing is sent.
func Send(v any) error {
	if client == nil {
		return ErrNotWorker
	}
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return client.ctl.WriteUser(b)
}

// Messages returns the channel of the master's messages to this worker,
// in the order sent. It is closed when the master goes away. Outside a
// master it returns nil.
func Messages() <-chan json.RawMessage {
	if client == nil {
		return nil
	}
	return client.inbox.channel()
}

var client *controlClient

func init() {
	idText, ok := os.LookupEnv(ipc.EnvWorkerID)
	if !ok {
		return
	}
	// Children of this worker are not workers.
	_ = os.Unsetenv(ipc.EnvWorkerID)
	_ = os.Unsetenv(ipc.EnvControlFD)
	id, err := strconv.Atoi(idText)
	if err != nil || id <= 0 {
		fatalf("worker: bad %s=%q", ipc.EnvWorkerID, idText)
	}
	_ = os.Unsetenv(ipc.EnvPageFD)
	ctl, err := ipc.Inherited()
	if err != nil {
		fatalf("worker: control socket: %v", err)
	}
	page, err := ipc.InheritedPage()
	if err != nil {
		fatalf("worker: counter page: %v", err)
	}
	client = newControlClient(id, ctl, page.Counters())
	if err := ctl.WriteFrame(ipc.AppendHello(nil, os.Getpid()), nil); err != nil {
		fatalf("worker: hello: %v", err)
	}
	go client.readLoop()
}

func fatalf(format string, args ...any) {
	logError("handoff " + fmt.Sprintf(format, args...))
	os.Exit(2)
}

// logError writes msg to stderr, as a JSON line if the master logs JSON.
func logError(msg string) {
	if os.Getenv(EnvLogFormat) == "json" {
		b, _ := json.Marshal(struct {
			Level   string `json:"level"`
			PID     int    `json:"pid"`
			Message string `json:"message"`
		}{"error", os.Getpid(), msg})
		_, _ = os.Stderr.Write(append(b, '\n'))
		return
	}
	_, _ = os.Stderr.WriteString(msg + "\n")
}

// killSelf sends this process SIGTERM, so the program's own shutdown runs.
// It is a variable so that tests, which play the master in-process, can
// see it called without signalling the test binary.
var killSelf = func() { _ = syscall.Kill(os.Getpid(), syscall.SIGTERM) }
