package main

import (
	"net/http"
	"sync"

	"github.com/coder/websocket"
)

// goingAwayReason is the reason of the close frame a draining worker
// sends.
const goingAwayReason = "worker draining"

// wsHub serves WebSockets that echo each message, and knows the open
// ones, so that a drain can close each with 1001 (going away): net/http
// does not track hijacked connections, and its Shutdown would leave
// them to be cut when the process exits.
type wsHub struct {
	mu       sync.Mutex
	conns    map[*websocket.Conn]struct{} // the open WebSockets; guarded by mu
	draining bool                         // goAway was called; guarded by mu
}

func newWSHub() *wsHub {
	return &wsHub{conns: make(map[*websocket.Conn]struct{})}
}

// serve upgrades the request and echoes every message until the peer or
// a drain closes the WebSocket.
func (h *wsHub) serve(w http.ResponseWriter, r *http.Request) {
	c, err := websocket.Accept(w, r, nil)
	if err != nil {
		return // Accept has answered the request
	}
	if !h.add(c) {
		_ = c.Close(websocket.StatusGoingAway, goingAwayReason)
		return
	}
	defer h.remove(c)
	ctx := r.Context()
	for {
		typ, msg, err := c.Read(ctx)
		if err != nil {
			// The peer closed, or goAway's Close is under way: the
			// close handshake is coder/websocket's.
			_ = c.CloseNow()
			return
		}
		if err := c.Write(ctx, typ, msg); err != nil {
			_ = c.CloseNow()
			return
		}
	}
}

// add registers c, unless the drain has begun.
func (h *wsHub) add(c *websocket.Conn) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.draining {
		return false
	}
	h.conns[c] = struct{}{}
	return true
}

func (h *wsHub) remove(c *websocket.Conn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.conns, c)
}

// goAway is the server's ServeConfig.OnDrain: it sends every open
// WebSocket a close frame with 1001 (going away), and one goroutine per
// WebSocket waits for the peer's close frame (at most 5s, in
// coder/websocket) before closing the connection. worker.Serve waits
// for the hijacked connections to close.
func (h *wsHub) goAway() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.draining = true
	for c := range h.conns {
		go func() { _ = c.Close(websocket.StatusGoingAway, goingAwayReason) }()
	}
}
