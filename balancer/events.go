package balancer

import (
	"encoding/json"
	"os"
	"sync"
)

// Event is one of the events below. Events reach Options.OnEvent, one at a
// time and in order, on a goroutine of the balancer's own, so a slow
// callback never delays dispatch. For each worker the order is always
// ForkEvent, OnlineEvent, ListeningEvent (once per address),
// DisconnectEvent, ExitEvent; MessageEvents come in the order sent.
//
// Callbacks were chosen over a channel so that a program that ignores
// events loses nothing and blocks nothing: with OnEvent nil no event is
// even queued. Shutdown delivers every queued event before it returns, so
// OnEvent must not wait for Shutdown itself: start it on a goroutine.
type Event interface{ event() }

// ForkEvent: a worker process was started.
type ForkEvent struct{ Worker *Worker }

// OnlineEvent: the worker process is running and said hello.
type OnlineEvent struct{ Worker *Worker }

// ListeningEvent: the worker's worker.Listen succeeded for an address.
type ListeningEvent struct {
	Worker  *Worker
	Network string
	Address string // the bound address, with the real port
}

// DisconnectEvent: the worker's control socket closed.
type DisconnectEvent struct{ Worker *Worker }

// ExitEvent: the worker process exited.
type ExitEvent struct {
	Worker *Worker
	// Code is the exit code, or -1 if a signal ended the process.
	Code int
	// Signal is the signal that ended the process, or nil.
	Signal os.Signal
	// ExitedAfterDisconnect is true when the exit followed Disconnect,
	// Reload or Shutdown, false when the worker died on its own or was
	// killed; only then is it restarted.
	ExitedAfterDisconnect bool
	// Active is the number of connections the worker had acknowledged and
	// not closed when it exited: the requests that were in progress on it.
	// Those it had not acknowledged are handed to other workers and are
	// not counted.
	Active int
}

// MessageEvent: the worker sent a message with worker.Send.
type MessageEvent struct {
	Worker  *Worker
	Payload json.RawMessage
}

func (ForkEvent) event()       {}
func (OnlineEvent) event()     {}
func (ListeningEvent) event()  {}
func (DisconnectEvent) event() {}
func (ExitEvent) event()       {}
func (MessageEvent) event()    {}

// maxQueuedEvents bounds the events waiting for a slow OnEvent. A worker
// whose messages would pass it is flooding the master and is killed.
const maxQueuedEvents = 1 << 16

// eventQueue delivers events to a callback on one goroutine.
type eventQueue struct {
	fn   func(Event)   // Options.OnEvent; nil: nothing is queued or run
	mu   sync.Mutex    // guards q
	q    []Event       // the events not yet delivered, oldest first
	wake chan struct{} // a token when q grows
	stop chan struct{} // closed by close: deliver what is queued and end
	done chan struct{} // closed when run has ended
}

func newEventQueue(fn func(Event)) *eventQueue {
	e := &eventQueue{fn: fn, wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	if fn == nil {
		close(e.done)
		return e
	}
	go e.run()
	return e
}

// push queues ev. A MessageEvent is refused, and push reports false, when
// maxQueuedEvents are already waiting; lifecycle events are always queued.
func (e *eventQueue) push(ev Event) bool {
	if e.fn == nil {
		return true
	}
	_, isMessage := ev.(MessageEvent)
	e.mu.Lock()
	if isMessage && len(e.q) >= maxQueuedEvents {
		e.mu.Unlock()
		return false
	}
	e.q = append(e.q, ev)
	e.mu.Unlock()
	select {
	case e.wake <- struct{}{}:
	default:
	}
	return true
}

// deliver calls fn for every event queued now, in order, outside the
// lock, and returns how many there were.
func (e *eventQueue) deliver() int {
	e.mu.Lock()
	q := e.q
	e.q = nil
	e.mu.Unlock()
	for _, ev := range q {
		e.fn(ev)
	}
	return len(q)
}

func (e *eventQueue) run() {
	defer close(e.done)
	for {
		if e.deliver() > 0 {
			continue
		}
		select {
		case <-e.wake:
		case <-e.stop:
			e.deliver()
			return
		}
	}
}

// close delivers what is queued and stops the goroutine.
func (e *eventQueue) close() {
	if e.fn != nil {
		select {
		case <-e.stop:
		default:
			close(e.stop)
		}
	}
	<-e.done
}
