//go:build !linux

package worker

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/handoff-go/handoff/ipc"
)

// A handoff master needs Linux, so outside Linux no process is a worker:
// the package behaves as it does on Linux in a process that no master
// started. Listener and Conn exist so that programs naming them build, but
// nothing makes one here; their methods fail with errNoMaster.

// client is the worker's end of its master's control socket: nil here,
// where no master runs.
var client *controlClient

// controlClient has here only what Serve reads of one.
type controlClient struct {
	ctr *ipc.Counters
}

// errNoMaster is the error of every method of a Listener or Conn here.
var errNoMaster = fmt.Errorf("worker: handed-off connections need a handoff master, which needs Linux: %w", errors.ErrUnsupported)

// IsWorker reports whether this process was started by a handoff master:
// outside Linux, never.
func IsWorker() bool { return false }

// ID returns this worker's id, or 0 outside a master: always 0 outside
// Linux.
func ID() int { return 0 }

// Listen is net.Listen outside a master, so always outside Linux.
func Listen(network, address string) (net.Listener, error) { return net.Listen(network, address) }

// Listen is net.Listen outside a master, so always outside Linux.
func (lc *ListenConfig) Listen(network, address string) (net.Listener, error) {
	return net.Listen(network, address)
}

// Send returns ErrNotWorker: outside Linux no master started this process.
func Send(v any) error { return ErrNotWorker }

// Messages returns the channel of the master's messages, nil outside a
// master: always nil outside Linux.
func Messages() <-chan json.RawMessage { return nil }

// Listener is a net.Listener fed by a master; outside Linux none is made.
type Listener struct{}

var _ net.Listener = (*Listener)(nil)

// Accept returns errNoMaster.
func (l *Listener) Accept() (net.Conn, error) { return nil, errNoMaster }

// Close does nothing.
func (l *Listener) Close() error { return nil }

// Addr returns nil.
func (l *Listener) Addr() net.Addr { return nil }

// Conn is a connection handed off by a master; outside Linux none is made.
// Its methods return errNoMaster, or nil addresses.
type Conn struct{}

var _ net.Conn = (*Conn)(nil)

func (c *Conn) Read(b []byte) (int, error)               { return 0, errNoMaster }
func (c *Conn) Write(b []byte) (int, error)              { return 0, errNoMaster }
func (c *Conn) Close() error                             { return errNoMaster }
func (c *Conn) LocalAddr() net.Addr                      { return nil }
func (c *Conn) RemoteAddr() net.Addr                     { return nil }
func (c *Conn) SetDeadline(t time.Time) error            { return errNoMaster }
func (c *Conn) SetReadDeadline(t time.Time) error        { return errNoMaster }
func (c *Conn) SetWriteDeadline(t time.Time) error       { return errNoMaster }
func (c *Conn) CloseRead() error                         { return errNoMaster }
func (c *Conn) CloseWrite() error                        { return errNoMaster }
func (c *Conn) SyscallConn() (syscall.RawConn, error)    { return nil, errNoMaster }
func (c *Conn) File() (*os.File, error)                  { return nil, errNoMaster }
func (c *Conn) SetNoDelay(noDelay bool) error            { return errNoMaster }
func (c *Conn) SetKeepAlive(keepAlive bool) error        { return errNoMaster }
func (c *Conn) SetKeepAlivePeriod(d time.Duration) error { return errNoMaster }
func (c *Conn) SetLinger(sec int) error                  { return errNoMaster }
func (c *Conn) ReadFrom(r io.Reader) (int64, error)      { return 0, errNoMaster }
