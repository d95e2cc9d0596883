//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"golang.org/x/sync/errgroup"
)

// Bounds of the WebSocket case.
const (
	wsClients  = 20                    // WebSockets held open at once
	wsInterval = 10 * time.Millisecond // between one client's messages
	wsMaxDials = 50                    // connections per client, at most
)

// wsClient holds one WebSocket open at a time, sends a message every
// wsInterval and checks its echo, and reconnects when the server closes
// it with 1001 (going away).
type wsClient struct {
	id     int
	url    string
	msgs   atomic.Int64 // echoes received, on every connection
	pid    atomic.Int64 // the worker of the current connection
	onConn atomic.Int64 // echoes received on the current connection

	mu        sync.Mutex
	goingAway []int // the workers that sent a close frame 1001, in turn; guarded by mu
}

// run connects, and connects again after each close frame 1001, until
// stop is closed. Each connection counts in conns: ok when it ended with
// 1001 from the server or with our close at stop, failed otherwise.
func (c *wsClient) run(stop <-chan struct{}, conns *tally) {
	for range wsMaxDials {
		select {
		case <-stop:
			return
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		ws, resp, err := websocket.Dial(ctx, c.url, nil)
		cancel()
		if err != nil {
			conns.add(0, fmt.Errorf("client %d: dial: %w", c.id, err))
			time.Sleep(wsInterval)
			continue
		}
		pid, err := strconv.Atoi(resp.Header.Get(headerPID))
		if err != nil {
			_ = ws.CloseNow()
			conns.add(0, fmt.Errorf("client %d: handshake without %s: %w", c.id, headerPID, err))
			continue
		}
		c.onConn.Store(0)
		c.pid.Store(int64(pid))
		err = c.session(stop, ws, pid)
		_ = ws.CloseNow() // after a close handshake, only frees what is left
		conns.add(pid, err)
	}
}

// session exchanges messages on ws until stop is closed (then it closes
// ws with 1000) or the server closes it.
func (c *wsClient) session(stop <-chan struct{}, ws *websocket.Conn, pid int) error {
	tick := time.NewTicker(wsInterval)
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case <-stop:
			if err := ws.Close(websocket.StatusNormalClosure, "client done"); err != nil {
				return fmt.Errorf("client %d: closing at the end: %w", c.id, err)
			}
			return nil
		case <-tick.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		want := fmt.Sprintf("client %d message %d", c.id, i)
		err := ws.Write(ctx, websocket.MessageText, []byte(want))
		var got []byte
		if err == nil {
			_, got, err = ws.Read(ctx)
		} else {
			// The server may have closed meanwhile: its close frame
			// says why.
			_, _, err = ws.Read(ctx)
		}
		cancel()
		if err != nil {
			return c.ended(pid, err)
		}
		if string(got) != want {
			return fmt.Errorf("client %d: echo %q, want %q", c.id, got, want)
		}
		c.msgs.Add(1)
		c.onConn.Add(1)
	}
}

// ended tells a close frame 1001 from the worker, which is how a
// connection should end in a drain, from anything else.
func (c *wsClient) ended(pid int, err error) error {
	var ce websocket.CloseError
	if errors.As(err, &ce) && ce.Code == websocket.StatusGoingAway && ce.Reason == goingAwayReason {
		c.mu.Lock()
		c.goingAway = append(c.goingAway, pid)
		c.mu.Unlock()
		return nil
	}
	return fmt.Errorf("client %d: the connection to worker %d ended without a close frame 1001 (%v): %w", c.id, pid, websocket.CloseStatus(err), err)
}

// TestWebSocket: coder/websocket on both sides. wsClients WebSockets
// are held open across a rolling restart; each must get a close frame
// 1001 from its old worker (the server's OnDrain hook sends it, and
// worker.Serve waits for the hijacked connection) rather than a cut, and
// reconnect to a new worker.
func TestWebSocket(t *testing.T) {
	m := startMaster(t, "--http", "127.0.0.1:0")
	clients := make([]*wsClient, wsClients)
	for i := range clients {
		clients[i] = &wsClient{id: i, url: "ws://" + m.addr + "/ws"}
	}
	var conns tally
	// all holds when every client's current connection is on one of
	// pids and has echoed at least 3 messages.
	all := func(pids []int) bool {
		for _, c := range clients {
			if !slices.Contains(pids, int(c.pid.Load())) || c.onConn.Load() < 3 {
				return false
			}
		}
		return true
	}
	r := acrossRestartUntil(t, m,
		func() bool { return all(m.pids()) },
		func(r restartResult) bool { return all(r.new) },
		func(stop <-chan struct{}, g *errgroup.Group) {
			for _, c := range clients {
				g.Go(func() error { c.run(stop, &conns); return nil })
			}
		})
	conns.check(t, "websocket connections", r)
	var msgs int64
	goingAway := 0
	for _, c := range clients {
		msgs += c.msgs.Load()
		c.mu.Lock()
		if len(c.goingAway) == 0 {
			t.Errorf("client %d: got no close frame 1001 from the old workers %v", c.id, r.old)
		}
		for _, pid := range c.goingAway {
			if !slices.Contains(r.old, pid) {
				t.Errorf("client %d: close frame 1001 from worker %d, not one of the old %v", c.id, pid, r.old)
			}
		}
		goingAway += len(c.goingAway)
		c.mu.Unlock()
	}
	t.Logf("websocket: %d clients held open across the restart; connections %s; %d close frames 1001 from the old workers; %d messages echoed; %v",
		wsClients, conns.figures(r), goingAway, msgs, r)
}
