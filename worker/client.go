package worker

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/handoff-go/handoff/ipc"
	"golang.org/x/sys/unix"
)

// reportDelay is how long an ack or a close report may wait to be
// batched with others. Least-loaded balancing sees a worker's load this
// late at most, and the master holds each handed-off fd this much longer.
const reportDelay = time.Millisecond

// drainTimeout bounds how long a disconnecting worker waits for Accept to
// take the connections already queued before it closes its listeners and
// hands the rest back.
const drainTimeout = 500 * time.Millisecond

// controlClient is the worker's end of the control socket. Its readLoop
// goroutine owns reading; writes are serialised by ipc.Conn.
type controlClient struct {
	id    int
	ctl   *ipc.Conn
	inbox *inbox

	mu        sync.Mutex
	nextReq   uint32
	requests  map[uint32]listenRequest
	listeners map[uint32]*Listener
	gone      bool

	// Report state, under mu; sendMu serialises the senders of reports
	// and returns, and guards the send buffers.
	acked, closed    []uint64
	reportTimerArmed bool
	reportTimer      *time.Timer
	sendMu           sync.Mutex
	sendAcked        []uint64
	sendClosed       []uint64
}

type listenRequest struct {
	network, address string
	ch               chan listenResult
}

type listenResult struct {
	l   *Listener
	err error
}

func newControlClient(id int, ctl *ipc.Conn) *controlClient {
	c := &controlClient{
		id:        id,
		ctl:       ctl,
		inbox:     newInbox(),
		requests:  make(map[uint32]listenRequest),
		listeners: make(map[uint32]*Listener),
	}
	c.reportTimer = time.AfterFunc(time.Hour, c.reportTimerFired)
	c.reportTimer.Stop()
	return c
}

func (c *controlClient) listen(network, address string) (net.Listener, error) {
	switch network {
	case "tcp", "tcp4", "tcp6", "unix":
	default:
		return nil, &net.OpError{Op: "listen", Net: network, Addr: stringAddr{network, address},
			Err: fmt.Errorf("handoff masters hand off only tcp, tcp4, tcp6 and unix, not %q", network)}
	}
	ch := make(chan listenResult, 1)
	c.mu.Lock()
	if c.gone {
		c.mu.Unlock()
		return nil, &net.OpError{Op: "listen", Net: network, Addr: stringAddr{network, address}, Err: ErrMasterGone}
	}
	c.nextReq++
	req := c.nextReq
	c.requests[req] = listenRequest{network, address, ch}
	c.mu.Unlock()
	if err := c.ctl.WriteFrame(ipc.AppendListen(nil, req, network, address), nil); err != nil {
		c.mu.Lock()
		delete(c.requests, req)
		c.mu.Unlock()
		return nil, &net.OpError{Op: "listen", Net: network, Addr: stringAddr{network, address}, Err: err}
	}
	r := <-ch
	if r.err != nil {
		return nil, r.err
	}
	return r.l, nil
}

// readLoop reads the control socket until the master goes away. Acks
// wait, like close reports, up to reportDelay to be batched: one
// Report then carries every ack and close of that interval, which saves
// the master a wakeup per connection.
func (c *controlClient) readLoop() {
	var m ipc.Message
	for {
		fds, err := c.ctl.Read(&m)
		if err != nil {
			if ipc.IsProtocolError(err) || errors.Is(err, ipc.ErrFDsLost) {
				continue // a frame we cannot use; its fds were closed
			}
			c.masterGone()
			return
		}
		switch m.Kind {
		case ipc.KindConns:
			c.receiveConns(m.Listener, m.IDs, fds)
		case ipc.KindListenReply:
			c.listenReply(&m)
		case ipc.KindDisconnect:
			c.drainListeners()
		case ipc.KindUser:
			c.inbox.push(json.RawMessage(m.Payload))
		default:
			// A frame only workers send is ignored; a Return frame's
			// fds are closed.
			for _, fd := range fds {
				_ = unix.Close(fd)
			}
		}
	}
}

func (c *controlClient) listenReply(m *ipc.Message) {
	c.mu.Lock()
	r, ok := c.requests[m.Req]
	delete(c.requests, m.Req)
	c.mu.Unlock()
	if !ok {
		return
	}
	ch := r.ch
	if m.Errno != 0 || m.Err != "" {
		ch <- listenResult{err: listenError(r.network, r.address, m)}
		return
	}
	l := newListener(c, m.Listener, r.network, m.Address)
	c.mu.Lock()
	if _, dup := c.listeners[m.Listener]; dup {
		c.mu.Unlock()
		ch <- listenResult{err: &net.OpError{Op: "listen", Net: l.network, Addr: l.addr,
			Err: os.NewSyscallError("bind", syscall.EADDRINUSE)}}
		return
	}
	c.listeners[m.Listener] = l
	c.mu.Unlock()
	ch <- listenResult{l: l}
}

// listenError rebuilds the error net.Listen gave in the master.
func listenError(network, address string, m *ipc.Message) error {
	var err error
	switch {
	case m.Errno != 0 && m.Syscall != "":
		err = os.NewSyscallError(m.Syscall, syscall.Errno(m.Errno))
	case m.Errno != 0:
		err = syscall.Errno(m.Errno)
	default:
		err = errors.New(m.Err)
	}
	return &net.OpError{Op: "listen", Net: network, Addr: stringAddr{network, address}, Err: err}
}

// receiveConns queues fds on their listener and records their acks, in
// one step under c.mu, so that a close report can never be flushed ahead
// of its conn's ack. Fds for a listener that is gone go back to the master.
func (c *controlClient) receiveConns(id uint32, ids []uint64, fds []int) {
	c.mu.Lock()
	l := c.listeners[id]
	ok := l != nil && l.enqueue(ids, fds)
	arm := false
	if ok {
		c.acked = append(c.acked, ids...)
		arm = c.armReportLocked()
	}
	c.mu.Unlock()
	if arm {
		c.reportTimer.Reset(reportDelay)
	}
	if !ok {
		c.returnConns(id, ids, fds)
	}
}

// returnConns sends fds back to the master, after any pending report so
// the master sees each ack before the return, and closes them here. An
// empty ids still sends one Return frame: "no longer listening".
func (c *controlClient) returnConns(listener uint32, ids []uint64, fds []int) {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	c.flushLocked()
	for first := true; first || len(ids) > 0; first = false {
		n := min(len(ids), ipc.MaxConns)
		_ = c.ctl.WriteFrame(ipc.AppendConns(nil, true, listener, ids[:n]), fds[:n])
		for _, fd := range fds[:n] {
			_ = unix.Close(fd)
		}
		ids, fds = ids[n:], fds[n:]
	}
}

// connClosed records that a handed-off conn was closed; the report goes
// out within reportDelay, batched with others.
func (c *controlClient) connClosed(id uint64) {
	c.mu.Lock()
	c.closed = append(c.closed, id)
	arm := c.armReportLocked()
	c.mu.Unlock()
	if arm {
		c.reportTimer.Reset(reportDelay)
	}
}

// armReportLocked marks the report timer armed, under c.mu, and reports
// whether the caller must start it: pending acks and close reports then go
// out within reportDelay.
func (c *controlClient) armReportLocked() bool {
	arm := !c.reportTimerArmed
	c.reportTimerArmed = true
	return arm
}

func (c *controlClient) reportTimerFired() {
	c.mu.Lock()
	c.reportTimerArmed = false
	c.mu.Unlock()
	c.flushReport()
}

// flushReport sends every pending ack and close report.
func (c *controlClient) flushReport() {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	c.flushLocked()
}

// flushLocked sends the pending reports; c.sendMu is held.
func (c *controlClient) flushLocked() {
	c.mu.Lock()
	for len(c.acked)+len(c.closed) > 0 && !c.gone {
		c.acked, c.sendAcked = c.sendAcked[:0], c.acked
		c.closed, c.sendClosed = c.sendClosed[:0], c.closed
		c.mu.Unlock()
		_ = c.ctl.WriteReport(c.sendAcked, c.sendClosed)
		c.mu.Lock()
	}
	c.mu.Unlock()
}

func (c *controlClient) listenerClosed(l *Listener, ids []uint64, fds []int) {
	c.mu.Lock()
	if c.listeners[l.id] == l {
		delete(c.listeners, l.id)
	}
	gone := c.gone
	c.mu.Unlock()
	if gone {
		for _, fd := range fds {
			_ = unix.Close(fd)
		}
		return
	}
	// A Return frame, even an empty one, tells the master this worker no
	// longer listens there.
	c.returnConns(l.id, ids, fds)
}

// drainListeners closes every listener once Accept has taken what is
// queued on it (or after drainTimeout), in the background: the master asked
// this worker to stop, and what it already handed over should be served,
// not handed back. New connections stopped coming before the request.
func (c *controlClient) drainListeners() {
	c.mu.Lock()
	ls := make([]*Listener, 0, len(c.listeners))
	for _, l := range c.listeners {
		ls = append(ls, l)
	}
	c.mu.Unlock()
	for _, l := range ls {
		go l.closeWhenDrained(drainTimeout)
	}
}

func (c *controlClient) closeListeners() {
	c.mu.Lock()
	ls := make([]*Listener, 0, len(c.listeners))
	for _, l := range c.listeners {
		ls = append(ls, l)
	}
	c.mu.Unlock()
	for _, l := range ls {
		_ = l.Close()
	}
}

// masterGone runs once the control socket reads EOF: the master is dead.
func (c *controlClient) masterGone() {
	c.mu.Lock()
	c.gone = true
	reqs := c.requests
	c.requests = map[uint32]listenRequest{}
	c.mu.Unlock()
	for _, r := range reqs {
		r.ch <- listenResult{err: &net.OpError{Op: "listen", Net: r.network, Addr: stringAddr{r.network, r.address}, Err: ErrMasterGone}}
	}
	c.closeListeners()
	c.inbox.close()
	_ = c.ctl.Close()
	killSelf()
}

// stringAddr is a net.Addr for an address that was never resolved.
type stringAddr struct{ network, address string }

func (a stringAddr) Network() string { return a.network }
func (a stringAddr) String() string  { return a.address }

// inbox queues the master's messages without bound and feeds a channel.
type inbox struct {
	mu    sync.Mutex
	queue []json.RawMessage
	wake  chan struct{}
	done  bool
	once  sync.Once
	ch    chan json.RawMessage
}

func newInbox() *inbox {
	return &inbox{wake: make(chan struct{}, 1), ch: make(chan json.RawMessage)}
}

func (b *inbox) push(m json.RawMessage) {
	b.mu.Lock()
	b.queue = append(b.queue, m)
	b.mu.Unlock()
	b.signal()
}

func (b *inbox) close() {
	b.mu.Lock()
	b.done = true
	b.mu.Unlock()
	b.signal()
}

func (b *inbox) signal() {
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

func (b *inbox) channel() <-chan json.RawMessage {
	b.once.Do(func() { go b.forward() })
	return b.ch
}

// forward moves queued messages to the channel, in order, and closes it
// once the master is gone and the queue is empty.
func (b *inbox) forward() {
	for {
		b.mu.Lock()
		if len(b.queue) > 0 {
			m := b.queue[0]
			b.queue[0] = nil
			b.queue = b.queue[1:]
			b.mu.Unlock()
			b.ch <- m
			continue
		}
		done := b.done
		b.mu.Unlock()
		if done {
			close(b.ch)
			return
		}
		<-b.wake
	}
}
