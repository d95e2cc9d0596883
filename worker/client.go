//go:build linux

package worker

import (
	"encoding/json"
	"errors"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/handoff-go/handoff/ipc"
	"github.com/handoff-go/handoff/scm"
	"golang.org/x/sys/unix"
)

// roomPoll bounds how long a reader without fd room waits before it
// counts again, when no conn closes meanwhile.
const roomPoll = 10 * time.Millisecond

// controlClient is the worker's end of the control socket. Its readLoop
// goroutine owns reading; writes are serialised by ipc.Conn.
type controlClient struct {
	id       int           // this worker's id, from the master
	ctl      *ipc.Conn     // the control socket, fd ipc.ControlFD
	ctr      *ipc.Counters // this worker's counter page
	inbox    *inbox        // the master's user messages, for Messages
	room     scm.Room      // fd room, shared by every listener's reader
	frameFDs int           // the most fds the master puts in one frame
	roomWake chan struct{} // a token when a conn closes

	mu        sync.Mutex               // guards the fields below
	nextReq   uint32                   // the id of the last Listen request
	requests  map[uint32]listenRequest // Listen requests awaiting a reply, by id
	listeners map[uint32]*Listener     // open listeners, by the master's listener id
	gone      bool                     // the master is gone: no more requests

	// connClosed is the onClose of every conn: built once, so that
	// handing it to a conn allocates nothing.
	connClosed func()
}

// listenRequest is a Listen waiting for the master's reply.
type listenRequest struct {
	network, address string            // as the caller asked
	std              bool              // ListenConfig.StdConns
	ch               chan listenResult // the reply, buffered for one
}

// listenResult is the outcome of a listenRequest.
type listenResult struct {
	l   *Listener // the listener, or nil
	err error     // or why not
}

func newControlClient(id int, ctl *ipc.Conn, ctr *ipc.Counters) *controlClient {
	c := &controlClient{
		id:        id,
		ctl:       ctl,
		ctr:       ctr,
		inbox:     newInbox(),
		requests:  make(map[uint32]listenRequest),
		listeners: make(map[uint32]*Listener),
		roomWake:  make(chan struct{}, 1),
	}
	var lim unix.Rlimit
	c.frameFDs = ipc.MaxConns
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &lim) == nil {
		c.frameFDs = ipc.FrameFDs(lim.Cur)
	}
	ctr.FrameFDs.Store(uint32(c.frameFDs))
	c.connClosed = func() {
		ctr.Closed.Add(1)
		select {
		case c.roomWake <- struct{}{}:
		default:
		}
	}
	return c
}

// waitForRoom waits, flagged on the counter page, until a conn closes,
// roomPoll passes, or done is closed.
func (c *controlClient) waitForRoom(done <-chan struct{}) {
	c.ctr.NoRoom.Store(1)
	t := time.NewTimer(roomPoll)
	select {
	case <-c.roomWake:
	case <-t.C:
	case <-done:
	}
	t.Stop()
	c.ctr.NoRoom.Store(0)
}

// fdsLost reports fds the kernel dropped on their way in.
func (c *controlClient) fdsLost(err error) {
	logError("handoff worker: " + err.Error())
}

func (c *controlClient) listen(network, address string, std bool) (net.Listener, error) {
	if err := ipc.CheckNetwork(network); err != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Addr: stringAddr{network, address}, Err: err}
	}
	ch := make(chan listenResult, 1)
	c.mu.Lock()
	if c.gone {
		c.mu.Unlock()
		return nil, &net.OpError{Op: "listen", Net: network, Addr: stringAddr{network, address}, Err: ErrMasterGone}
	}
	c.nextReq++
	req := c.nextReq
	c.requests[req] = listenRequest{network, address, std, ch}
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

// readLoop reads the control socket until the master goes away.
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
		case ipc.KindListenReply:
			c.listenReply(&m, fds)
		case ipc.KindDisconnect:
			c.drainListeners()
		case ipc.KindPing:
			_ = c.ctl.WriteFrame(ipc.AppendPong(nil), nil)
		case ipc.KindUser:
			c.inbox.push(json.RawMessage(m.Payload))
		default:
			// A frame only workers send is ignored, and its fds closed.
			for _, fd := range fds {
				_ = unix.Close(fd)
			}
		}
	}
}

func (c *controlClient) listenReply(m *ipc.Message, fds []int) {
	c.mu.Lock()
	r, ok := c.requests[m.Req]
	delete(c.requests, m.Req)
	c.mu.Unlock()
	if !ok {
		for _, fd := range fds {
			_ = unix.Close(fd)
		}
		return
	}
	ch := r.ch
	if m.Listener == 0 {
		ch <- listenResult{err: listenError(r.network, r.address, m)}
		return
	}
	sock, err := ipc.ConnsSocketFrom(fds[0]) // takes the fd, even on error
	if err != nil {
		ch <- listenResult{err: &net.OpError{Op: "listen", Net: r.network, Addr: stringAddr{r.network, r.address}, Err: err}}
		return
	}
	l := newListener(c, m.Listener, r.network, m.Address, sock, r.std)
	c.mu.Lock()
	if _, dup := c.listeners[m.Listener]; dup {
		c.mu.Unlock()
		_ = sock.Close()
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

// returnConns sends connections back to the master and closes them
// here. An empty hs still sends one Return frame: "no longer listening".
func (c *controlClient) returnConns(listener uint32, hs []ipc.Handoff) {
	var fds [ipc.MaxConns]int
	for first := true; first || len(hs) > 0; first = false {
		n := min(len(hs), ipc.MaxConns)
		for i := range hs[:n] {
			fds[i] = int(hs[i].FD)
		}
		_ = c.ctl.WriteFrame(ipc.AppendReturn(nil, listener, n), fds[:n])
		for _, fd := range fds[:n] {
			_ = unix.Close(fd)
		}
		hs = hs[n:]
	}
}

func (c *controlClient) listenerClosed(l *Listener, hs []ipc.Handoff) {
	c.mu.Lock()
	if c.listeners[l.id] == l {
		delete(c.listeners, l.id)
	}
	gone := c.gone
	c.mu.Unlock()
	if gone {
		for _, h := range hs {
			_ = unix.Close(int(h.FD))
		}
		return
	}
	// A Return frame, even an empty one, tells the master this worker no
	// longer listens there.
	c.returnConns(l.id, hs)
}

// drainListeners closes every listener once Accept has taken what is
// queued on it (or after drainTimeout), in the background: the master asked
// this worker to stop, and what it already handed over should be served,
// not handed back. New connections stopped coming before the request.
func (c *controlClient) drainListeners() {
	for _, l := range c.listenerList() {
		go l.closeWhenDrained(drainTimeout)
	}
}

// listenerList returns the listeners open now, so that they can be closed
// without c.mu held (a Listener's Close takes c.mu).
func (c *controlClient) listenerList() []*Listener {
	c.mu.Lock()
	defer c.mu.Unlock()
	ls := make([]*Listener, 0, len(c.listeners))
	for _, l := range c.listeners {
		ls = append(ls, l)
	}
	return ls
}

// masterGone runs once the control socket reads EOF: the master is dead.
// The connections it handed over are the clients' only hope, since no
// master is left to take them back: every listener serves what it holds
// and what is still in its socket, then closes (closeWhenDrained, at most
// drainTimeout), and only then does the worker send itself SIGTERM.
func (c *controlClient) masterGone() {
	c.mu.Lock()
	c.gone = true
	reqs := c.requests
	c.requests = map[uint32]listenRequest{}
	c.mu.Unlock()
	for _, r := range reqs {
		r.ch <- listenResult{err: &net.OpError{Op: "listen", Net: r.network, Addr: stringAddr{r.network, r.address}, Err: ErrMasterGone}}
	}
	c.inbox.close()
	_ = c.ctl.Close()
	var wg sync.WaitGroup
	for _, l := range c.listenerList() {
		wg.Go(func() { l.closeWhenDrained(drainTimeout) })
	}
	wg.Wait()
	killSelf()
}

// stringAddr is a net.Addr for an address that was never resolved.
type stringAddr struct{ network, address string }

func (a stringAddr) Network() string { return a.network }
func (a stringAddr) String() string  { return a.address }

// inbox queues the master's messages without bound and feeds a channel.
type inbox struct {
	mu    sync.Mutex           // guards queue and done
	queue []json.RawMessage    // messages not yet on ch, oldest first
	wake  chan struct{}        // a token when queue grows or done is set
	done  bool                 // the master is gone: close ch once queue is empty
	once  sync.Once            // starts forward, on the first channel call
	ch    chan json.RawMessage // what Messages returns
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
