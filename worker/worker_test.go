//go:build linux

package worker

import (
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/fdtest"
	"github.com/handoff-go/handoff/ipc"
)

func TestOutsideAMaster(t *testing.T) {
	t.Parallel() // parallel tests never see a fake master installed
	if IsWorker() {
		t.Error("IsWorker() is true in a process no master started")
	}
	if id := ID(); id != 0 {
		t.Errorf("ID() = %d, want 0", id)
	}
	if err := Send("hello"); !errors.Is(err, ErrNotWorker) {
		t.Errorf("Send: %v, want ErrNotWorker", err)
	}
	if ch := Messages(); ch != nil {
		t.Error("Messages() is not nil")
	}
	tests := []struct {
		name    string
		network string
		address string
		want    func(net.Listener) bool
	}{
		{name: "tcp", network: "tcp", address: "127.0.0.1:0", want: func(ln net.Listener) bool {
			_, ok := ln.(*net.TCPListener)
			return ok
		}},
		{name: "unix", network: "unix", address: filepath.Join(t.TempDir(), "sock"), want: func(ln net.Listener) bool {
			_, ok := ln.(*net.UnixListener)
			return ok
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ln, err := Listen(tt.network, tt.address)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			if !tt.want(ln) {
				t.Errorf("Listen returned %T, want net.Listen's listener", ln)
			}
			c, err := net.Dial(tt.network, ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			sc, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			_ = sc.Close()
		})
	}
}

func TestListenReply(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		network  string
		address  string
		answer   listenAnswer
		wantAddr net.Addr
		wantErr  func(error) bool
		noFrame  bool // the worker refuses without asking the master
	}{
		{
			name: "tcp bound", network: "tcp", address: ":0",
			answer:   listenAnswer{listener: 4, address: "127.0.0.1:4321"},
			wantAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 4321},
		},
		{
			name: "tcp6 bound", network: "tcp6", address: "[::1]:0",
			answer:   listenAnswer{listener: 4, address: "[::1]:4321"},
			wantAddr: &net.TCPAddr{IP: net.IPv6loopback, Port: 4321},
		},
		{
			name: "unix", network: "unix", address: "/run/app.sock",
			answer:   listenAnswer{listener: 4, address: "/run/app.sock"},
			wantAddr: &net.UnixAddr{Name: "/run/app.sock", Net: "unix"},
		},
		{
			name: "address in use", network: "tcp", address: "127.0.0.1:80",
			answer: listenAnswer{errno: syscall.EADDRINUSE, syscall: "bind"},
			wantErr: func(err error) bool {
				var se *os.SyscallError
				return errors.Is(err, syscall.EADDRINUSE) && errors.As(err, &se) && se.Syscall == "bind"
			},
		},
		{
			name: "errno only", network: "tcp", address: "127.0.0.1:80",
			answer:  listenAnswer{errno: syscall.EACCES},
			wantErr: func(err error) bool { return errors.Is(err, syscall.EACCES) },
		},
		{
			name: "text only", network: "tcp", address: "nosuchhost.invalid:80",
			answer:  listenAnswer{err: "lookup nosuchhost.invalid: no such host"},
			wantErr: func(err error) bool { return strings.Contains(err.Error(), "no such host") },
		},
		{
			name: "udp is not handed off", network: "udp", address: "127.0.0.1:0", noFrame: true,
			wantErr: func(err error) bool { return strings.Contains(err.Error(), `"udp"`) },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			fm := startMaster(t)
			fm.mu.Lock()
			fm.onListen = func(network, address string) listenAnswer {
				if network != tt.network || address != tt.address {
					t.Errorf("master got Listen %s %s, want %s %s", network, address, tt.network, tt.address)
				}
				return tt.answer
			}
			fm.mu.Unlock()
			ln, err := fm.c.listen(tt.network, tt.address, false)
			if tt.wantErr != nil {
				var op *net.OpError
				if err == nil {
					_ = ln.Close()
					t.Fatal("listen succeeded, want an error")
				}
				if !tt.wantErr(err) || !errors.As(err, &op) || op.Op != "listen" || op.Net != tt.network || op.Addr.String() != tt.address {
					t.Errorf("listen: %#v (%v), not the expected *net.OpError", err, err)
				}
			} else {
				if err != nil {
					t.Fatal(err)
				}
				defer ln.Close()
				l := ln.(*Listener)
				if l.id != tt.answer.listener {
					t.Errorf("listener id %d, want %d", l.id, tt.answer.listener)
				}
				if a := ln.Addr(); a.Network() != tt.wantAddr.Network() || a.String() != tt.wantAddr.String() {
					t.Errorf("Addr %s %s, want %s %s", a.Network(), a, tt.wantAddr.Network(), tt.wantAddr)
				}
			}
			fm.barrier(t)
			fm.mu.Lock()
			defer fm.mu.Unlock()
			if want := map[bool]int{true: 0, false: 1}[tt.noFrame]; len(fm.listens) != want {
				t.Errorf("%d Listen frames, want %d", len(fm.listens), want)
			}
		})
	}
}

func TestListenTwiceOnOneListenerID(t *testing.T) {
	t.Parallel()
	fm := startMaster(t)
	fm.mu.Lock()
	fm.onListen = func(network, address string) listenAnswer {
		return listenAnswer{listener: 7, address: address}
	}
	fm.mu.Unlock()
	fm.listen(t, "tcp", "127.0.0.1:8080")
	ln, err := fm.c.listen("tcp", "127.0.0.1:8080", false)
	if !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("a second listener with the same id: %v, %v; want EADDRINUSE", ln, err)
	}
}

func TestMessagesArriveInOrder(t *testing.T) {
	// Not parallel: it installs the package's client.
	fm := startMaster(t)
	fm.install(t)
	if !IsWorker() || ID() != 1 {
		t.Fatalf("IsWorker() %v, ID() %d under a master; want true, 1", IsWorker(), ID())
	}
	want := []string{
		`{"n":1}`,
		`"` + strings.Repeat("x", 1<<20) + `"`, // many frames
		`[1,2,3]`,
	}
	for i := range 100 {
		want = append(want, `{"i":`+strings.Repeat("1", i+1)+`}`)
	}
	// Nobody reads yet: the messages queue and the control socket keeps
	// moving, so a Ping behind them is still answered, and a listen.
	for _, m := range want {
		if err := fm.ctl.WriteUser([]byte(m)); err != nil {
			t.Fatal(err)
		}
	}
	if err := fm.ctl.WriteFrame(ipc.AppendPing(nil), nil); err != nil {
		t.Fatal(err)
	}
	fm.wait(t, "a Pong behind unread messages", func() bool { return fm.pongs == 1 })
	ln := masterListener(t, "tcp")
	l := fm.listen(t, "tcp", ln.Addr().String())
	fm.handOffNew(t, ln, l.id, 1)
	acceptN(t, l, 1)
	ch := Messages()
	if Messages() != ch {
		t.Error("Messages returned a different channel on a second call")
	}
	for i, w := range want {
		got := recv(t, ch, "a message")
		if string(got) != w {
			t.Fatalf("message %d: %.40q (%d bytes), want %.40q (%d bytes)", i, got, len(got), w, len(w))
		}
	}
	select {
	case m := <-ch:
		t.Errorf("unexpected message %.40q", m)
	default:
	}
}

func TestSend(t *testing.T) {
	// Not parallel: it installs the package's client.
	fm := startMaster(t)
	fm.install(t)
	big := strings.Repeat("y", 1<<20)
	tests := []struct {
		name    string
		v       any
		want    string
		wantErr func(error) bool
	}{
		{name: "object", v: map[string]int{"a": 1}, want: `{"a":1}`},
		{name: "raw JSON", v: json.RawMessage(`[true,null]`), want: `[true,null]`},
		{name: "1 MiB", v: big, want: `"` + big + `"`},
		{name: "MaxMessage exactly", v: strings.Repeat("z", ipc.MaxMessage-2), want: `"` + strings.Repeat("z", ipc.MaxMessage-2) + `"`},
		{name: "over MaxMessage", v: strings.Repeat("z", ipc.MaxMessage-1), wantErr: func(err error) bool {
			return errors.Is(err, ipc.ErrMessageTooLarge)
		}},
		{name: "not JSON", v: func() {}, wantErr: func(err error) bool {
			var ute *json.UnsupportedTypeError
			return errors.As(err, &ute)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fm.mu.Lock()
			fm.users = nil
			fm.mu.Unlock()
			err := Send(tt.v)
			if tt.wantErr != nil {
				if err == nil || !tt.wantErr(err) {
					t.Fatalf("Send: %v, want a matching error", err)
				}
				// Nothing was sent: the next frame is the barrier.
				fm.barrier(t)
				fm.mu.Lock()
				defer fm.mu.Unlock()
				if len(fm.users) != 1 {
					t.Errorf("%d messages arrived for a failed Send and a barrier", len(fm.users))
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			fm.wait(t, "the message", func() bool { return len(fm.users) > 0 })
			fm.mu.Lock()
			defer fm.mu.Unlock()
			if got := string(fm.users[0]); got != tt.want {
				t.Errorf("master got %.40q (%d bytes), want %.40q (%d bytes)", got, len(got), tt.want, len(tt.want))
			}
		})
	}
}

func TestMasterGone(t *testing.T) {
	// Not parallel: it installs the package's client and counts killSelf.
	fm := startMaster(t)
	fm.install(t)
	ln := masterListener(t, "tcp")
	l1, err := Listen("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	l2, err := Listen("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	lid1 := l1.(*Listener).id
	// l1 has read a frame of three conns and accepted one, so two are
	// queued, and a frame of two more is unread; l2 has an Accept waiting.
	clients := fm.handOffNew(t, ln, lid1, 3)
	c, err := l1.Accept()
	if err != nil {
		t.Fatal(err)
	}
	unread := fm.handOffNew(t, ln, lid1, 2)
	acceptErr := acceptOnce(l2)
	// Two messages are queued for a reader that comes late.
	msgs := Messages()
	for _, m := range []string{"1", "2"} {
		if err := fm.ctl.WriteUser([]byte(m)); err != nil {
			t.Fatal(err)
		}
	}
	// A Listen the master never answers.
	fm.mu.Lock()
	fm.onListen = func(string, string) listenAnswer { return listenAnswer{hold: true} }
	fm.mu.Unlock()
	listenErr := make(chan error, 1)
	go func() {
		ln, err := Listen("tcp", "127.0.0.1:1")
		if ln != nil {
			_ = ln.Close()
		}
		listenErr <- err
	}()
	fm.wait(t, "the held Listen frame", func() bool { return len(fm.listens) == 3 })

	before := killed.Load()
	_ = fm.ctl.Close()

	var op *net.OpError
	if err := recv(t, listenErr, "the pending Listen"); !errors.Is(err, ErrMasterGone) || !errors.As(err, &op) {
		t.Errorf("pending Listen: %v, want a *net.OpError matching ErrMasterGone", err)
	}
	// No master is left to take back what l1 holds, so l1 serves it: the
	// two conns it queued, then the frame still unread in its socket.
	served := append(clients[1:], unread...)
	for i := range served {
		c, err := l1.Accept()
		if err != nil {
			t.Fatalf("Accept %d of %d conns handed over before the master went away: %v", i+1, len(served), err)
		}
		_ = c.Close()
	}
	expectEOF(t, served...)
	_ = c.Close()
	if err := recv(t, acceptErr, "the waiting Accept"); !isClosed(err) {
		t.Errorf("waiting Accept: %v, want net.ErrClosed", err)
	}
	if c, err := l1.Accept(); !isClosed(err) {
		t.Errorf("Accept once the handed-over conns were served: %v, %v; want net.ErrClosed", c, err)
	}
	for _, want := range []string{"1", "2"} {
		if got := recv(t, msgs, "a queued message"); string(got) != want {
			t.Errorf("message %q, want %q", got, want)
		}
	}
	if !drained(msgs) {
		t.Error("Messages() not closed after the master went away")
	}
	recv(t, fm.loopDone, "readLoop to end")
	if n := killed.Load() - before; n != 1 {
		t.Errorf("killSelf called %d times, want once", n)
	}
	if _, err := Listen("tcp", ln.Addr().String()); !errors.Is(err, ErrMasterGone) {
		t.Errorf("Listen after the master went away: %v, want ErrMasterGone", err)
	}
	if err := l1.Close(); err != nil {
		t.Errorf("Close after the master went away: %v", err)
	}
	want := uint64(len(clients) + len(unread))
	if r, cl := fm.ctr.Received.Load(), fm.ctr.Closed.Load(); r != want || cl != want {
		t.Errorf("counter page: %d received, %d closed; want %d and %d", r, cl, want, want)
	}
}

func TestDisconnectClosesListeners(t *testing.T) {
	t.Parallel()
	ln := masterListener(t, "tcp")
	fm := startMaster(t)
	l1 := fm.listen(t, "tcp", ln.Addr().String())
	l2 := fm.listen(t, "tcp", ln.Addr().String())
	fm.handOffNew(t, ln, l1.id, 1)
	acceptErr := acceptOnce(l2)
	start := time.Now()
	if err := fm.ctl.WriteFrame(ipc.AppendDisconnect(nil), nil); err != nil {
		t.Fatal(err)
	}
	if err := recv(t, acceptErr, "the waiting Accept"); !isClosed(err) {
		t.Errorf("Accept after Disconnect: %v, want net.ErrClosed", err)
	}
	if d := time.Since(start); d < drainGrace {
		t.Errorf("an idle listener closed %v after Disconnect, before drainGrace (%v)", d, drainGrace)
	}
	// What was handed off before the Disconnect is still served, though
	// it was still in the socket: Accept takes it during the drain, and
	// only then does the listener close.
	c, err := l1.Accept()
	if err != nil {
		t.Fatalf("Accept of the connection handed off before Disconnect: %v", err)
	}
	_ = c.Close()
	if c, err := l1.Accept(); !isClosed(err) {
		t.Errorf("Accept after the drain: %v, %v; want net.ErrClosed", c, err)
	}
	r1, r2 := fm.takeReturn(t, l1.id), fm.takeReturn(t, l2.id)
	defer fdtest.Close(r1.fds)
	defer fdtest.Close(r2.fds)
	if len(r1.fds) != 0 || len(r2.fds) != 0 {
		t.Errorf("Return frames with %d and %d fds, want both empty", len(r1.fds), len(r2.fds))
	}
	fm.waitCounters(t, 1, 1)
	// The worker is still connected: messages still flow, pings answered.
	if err := fm.ctl.WriteUser([]byte(`"still here"`)); err != nil {
		t.Fatal(err)
	}
	if m := recv(t, fm.c.inbox.channel(), "a message after Disconnect"); string(m) != `"still here"` {
		t.Errorf("message %q", m)
	}
	if err := fm.ctl.WriteFrame(ipc.AppendPing(nil), nil); err != nil {
		t.Fatal(err)
	}
	fm.wait(t, "a Pong after Disconnect", func() bool { return fm.pongs == 1 })
}

func TestDisconnectHandsBackWhatNobodyAccepts(t *testing.T) {
	t.Parallel()
	ln, fm, l := listening(t, "tcp")
	// A frame of three is read and one accepted; a frame of two stays
	// unread.
	clients := fm.handOffNew(t, ln, l.id, 3)
	acceptN(t, l, 1)
	unread := fm.handOffNew(t, ln, l.id, 2)
	start := time.Now()
	if err := fm.ctl.WriteFrame(ipc.AppendDisconnect(nil), nil); err != nil {
		t.Fatal(err)
	}
	// Nobody calls Accept: after the drain timeout, what was read comes
	// back, and what was not stays in the socket.
	r := fm.takeReturn(t, l.id)
	defer fdtest.Close(r.fds)
	if d := time.Since(start); d < drainTimeout {
		t.Errorf("the listener closed %v after Disconnect, before drainTimeout (%v)", d, drainTimeout)
	}
	if len(r.fds) != 2 {
		t.Fatalf("Return frame with %d fds, want 2", len(r.fds))
	}
	for i, fd := range r.fds {
		echoThrough(t, fd, clients[1+i])
	}
	back := fm.reclaim(t, l.id)
	defer fdtest.Close(back)
	if len(back) != 2 {
		t.Fatalf("%d conns reclaimed, want 2", len(back))
	}
	for i, fd := range back {
		echoThrough(t, fd, unread[i])
	}
	if c, err := l.Accept(); !isClosed(err) {
		t.Errorf("Accept after the drain: %v, %v; want net.ErrClosed", c, err)
	}
	fm.waitCounters(t, 3, 0)
}

func TestBadFramesAreSkipped(t *testing.T) {
	t.Parallel()
	ln, fm, l := listening(t, "tcp")
	clients, fds := connectN(t, ln, 2)
	hs := []ipc.Handoff{handoffOf(fds[0]), handoffOf(fds[1])}
	bad := []struct {
		name  string
		frame []byte
		fds   []int
	}{
		{name: "other version", frame: []byte{ipc.Version + 1, byte(ipc.KindUser), 0, 0, '1'}},
		{name: "unknown kind", frame: []byte{ipc.Version, 200, 0, 0}},
		{name: "short ListenReply", frame: []byte{ipc.Version, byte(ipc.KindListenReply), 0, 0, 1}},
		{name: "ListenReply without its fd", frame: ipc.AppendListenReply(nil, 1, 5, 0, "127.0.0.1:1", "", "")},
		{name: "Conns on the control socket", frame: ipc.AppendConns(nil, l.id, hs[:1]), fds: fds[:1]},
		{name: "Conns with too few fds", frame: ipc.AppendConns(nil, l.id, hs), fds: fds[1:]},
		{name: "Return to a worker", frame: ipc.AppendReturn(nil, l.id, 0)},
		{name: "Pong to a worker", frame: ipc.AppendPong(nil)},
	}
	for _, b := range bad {
		if err := fm.ctl.WriteFrame(b.frame, b.fds); err != nil {
			t.Fatalf("%s: %v", b.name, err)
		}
	}
	fdtest.Close(fds) // the worker closed its copies of the bad frames' fds
	if err := fm.ctl.WriteUser([]byte(`"after"`)); err != nil {
		t.Fatal(err)
	}
	if m := recv(t, fm.c.inbox.channel(), "a message after bad frames"); string(m) != `"after"` {
		t.Errorf("message %q, want %q", m, `"after"`)
	}
	expectEOF(t, clients...) // the worker closed the dropped fds
	// Handoffs still work.
	_, fds = connectN(t, ln, 1)
	if err := fm.handoff(l.id, fds); err != nil {
		t.Fatal(err)
	}
	acceptN(t, l, 1)
	fm.waitCounters(t, 1, 0)
}

func TestPingIsAnswered(t *testing.T) {
	t.Parallel()
	fm := startMaster(t)
	const n = 5
	for range n {
		if err := fm.ctl.WriteFrame(ipc.AppendPing(nil), nil); err != nil {
			t.Fatal(err)
		}
	}
	fm.wait(t, "Pongs", func() bool { return fm.pongs == n })
	fm.barrier(t)
	fm.mu.Lock()
	defer fm.mu.Unlock()
	if fm.pongs != n {
		t.Errorf("%d Pongs for %d Pings", fm.pongs, n)
	}
}
